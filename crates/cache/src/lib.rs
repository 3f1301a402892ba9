//! The cache stage: one memory-mapped file per split holding every usable pair resized to
//! `imgsz` (long side, aspect kept) as R, G, B and IR planes with its boxes, shared by every
//! reader through the OS page cache, and the loader that turns it into training batches.
//!
//! - [`format`]: the byte layout (the contract between the pipeline and the trainer).
//! - [`build`]: decode, resize, write atomically, skip when current ([`fingerprint`]).
//! - [`Cache`]: open and validate, read samples with checksums, [`Cache::verify_all`].
//! - [`Loader`]: letterboxed, channel-first u8 batches in a seeded order, sharded by rank,
//!   prefetched in the background, with paired augmentation ([`Augment`]).

pub mod format;

mod augment;
mod builder;
mod loader;
mod reader;
mod writer;

pub use augment::Augment;
pub use builder::{
    BuildError, BuildInput, BuildOptions, BuildOutcome, IrChannels, available_memory, build,
    estimate_bytes, fingerprint, prepare_pair, stored_size,
};
pub use loader::{
    Batch, BatchBox, EpochBatches, Loader, LoaderOptions, epoch_order, equal_epoch_order, letterbox,
};
pub use reader::{Cache, CacheError, MapMode, Sample};
pub use writer::{CacheWriter, Record, partial_path};
