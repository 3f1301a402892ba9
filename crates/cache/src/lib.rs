//! The cache stage: one memory-mapped file per split holding every usable pair resized to
//! `imgsz` (long side, aspect kept) as R, G, B and IR planes with its boxes, shared by every
//! reader through the OS page cache. Turning it into training batches is `fusekit-loader`'s job.
//!
//! - [`format`](mod@format): the byte layout (the contract between the pipeline and the trainer).
//! - [`build`]: decode, resize, write atomically, skip when current ([`fingerprint`]).
//! - [`Cache`]: open and validate, read samples with checksums, [`Cache::verify_all`].

pub mod format;

mod builder;
mod reader;
mod writer;

pub use builder::{
    BuildError, BuildInput, BuildOptions, BuildOutcome, IrChannels, available_memory, build,
    estimate_bytes, fingerprint, prepare_pair, stored_size,
};
/// The IR normalisation of [`BuildOptions::ir_norm`] and [`format::Metadata::ir_norm`].
pub use fusekit_dataset::IrNorm;
pub use reader::{Cache, CacheError, MapMode, Sample};
pub use writer::{CacheWriter, Record, partial_path};
