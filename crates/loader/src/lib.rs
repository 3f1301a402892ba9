//! Training batches from a cache built by `fusekit-cache`: each sample letterboxed to `imgsz` x
//! `imgsz`, channel-first u8 (R, G, B, IR...), in a seeded order per epoch, sharded by rank,
//! prefetched on a background thread, with paired RGB + IR augmentation for training.
//!
//! - [`Loader`]: batches ([`Batch`]) of an epoch ([`Loader::epoch`]) or of given samples
//!   ([`Loader::make_batch`]), as [`LoaderOptions`] say; [`epoch_order`] and
//!   [`equal_epoch_order`] are the orders it draws.
//! - [`Augment`]: mosaic, scale and translation, flip and colour jitter, every geometric change
//!   applied to all planes at once.
//! - [`Background`]: items made on a thread of their own, a bounded number ahead (the loader's
//!   prefetch; fusekit-train's pinning thread).
//! - [`Letterbox`]: the one owner of letterbox geometry, from the pixel copy into the network
//!   input to mapping detections back to stored or original image pixels.
//!
//! Modules depend one way: `loader` uses `augment` and `letterbox`, `augment` uses `letterbox`.

mod augment;
mod background;
mod letterbox;
mod loader;

pub use augment::Augment;
pub use background::Background;
pub use letterbox::Letterbox;
pub use loader::{
    Batch, BatchBox, EpochBatches, Loader, LoaderOptions, epoch_order, equal_epoch_order,
};
