//! The paired RGB + IR detection dataset model shared by every fusekit stage.
//!
//! - [`Dataset`] reads an Ultralytics-style data yaml (or a bare `images/ imagesIR/ labels/`
//!   folder) and knows how to find each RGB image's IR partner and label file
//!   ([`ComponentSwap`]).
//! - [`Dataset::scan`] walks the dataset and pairs files by name ([`Scan`]).
//! - [`probe_image`] reads an image's header (or decodes it fully) and reports what it found,
//!   with a [`ContentSample`] of the file; [`content_identities`] turns the samples of a set of
//!   files into exact content identities, reading whole only the files whose samples collide.
//! - [`normalise_ir`] maps an IR image of any bit depth onto the 8-bit plane fusekit caches,
//!   by the dataset's [`IrNorm`].
//! - [`Thumbnail`] is the small brightness image a full decode keeps of each picture, for
//!   comparing the geometry of the two images of a pair.
//! - [`parse_labels`] parses a YOLO txt label file row by row, keeping every problem.

mod config;
mod content;
mod ir;
mod label;
mod probe;
mod scan;
mod swap;
mod thumbnail;

pub use config::{ConfigError, DATA_YAML, Dataset, Source, Split};
pub use content::{CONTENT_EDGE, ContentSample, ReadCounter, content_identities};
/// Image formats as reported by [`ImageInfo::format`].
pub use image::ImageFormat;
pub use ir::{IrNorm, bits_per_sample, grey_levels, normalise_ir};
pub use label::{BoxRow, LabelLine, RowError, RowKind, parse_labels};
pub use probe::{
    DecodeLevel, ImageInfo, PixelSummary, ProbeError, SUPPORTED_EXTENSIONS, UNSUPPORTED_EXTENSIONS,
    is_image_path, perceptual_hash, probe_bytes, probe_image,
};
pub use scan::{
    IrPartner, MissingListed, Orphan, OrphanKind, PairRecord, Scan, StemClash, images_by_stem,
};
pub use swap::ComponentSwap;
pub use thumbnail::{MIN_THUMBNAIL_SIDE, THUMBNAIL_SIDE, Thumbnail};
