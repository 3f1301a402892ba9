//! Batches from a cache: letterboxed to `imgsz` x `imgsz`, channel-first u8 (R, G, B, IR...),
//! in a seeded order per epoch, sharded by rank, built on a background thread (and rayon)
//! ahead of the consumer.

use std::sync::Arc;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use fusekit_cache::{Cache, CacheError};

use crate::augment::{Augment, augment_sample};
use crate::background::Background;
use crate::letterbox::Letterbox;

/// How batches are formed.
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderOptions {
    /// Images per batch.
    pub batch: usize,
    /// Shuffle each epoch (seeded by `seed` and the epoch).
    pub shuffle: bool,
    /// Seed of the order and the augmentation.
    pub seed: u64,
    /// This process's rank in data-parallel training.
    pub rank: usize,
    /// Number of ranks.
    pub world: usize,
    /// Paired augmentation (None: letterbox only, for validation).
    pub augment: Option<Augment>,
    /// Batches built ahead of the consumer.
    pub prefetch: usize,
    /// Use only the first N samples of the cache (Ultralytics' `fraction`, as a count); mosaic
    /// partners are drawn from them too.
    pub limit: Option<usize>,
    /// With several ranks, repeat the first samples of the epoch's permutation so that every
    /// rank gets `ceil(len / world)` samples and the same number of batches, as PyTorch's
    /// `DistributedSampler` does (data-parallel training needs equal step counts); without it
    /// the ranks together see every sample exactly once.
    pub equal_shards: bool,
}

impl Default for LoaderOptions {
    fn default() -> Self {
        Self {
            batch: 16,
            shuffle: true,
            seed: 0,
            rank: 0,
            world: 1,
            augment: None,
            prefetch: 2,
            limit: None,
            equal_shards: false,
        }
    }
}

/// A box in a batch, normalised to the `imgsz` square.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchBox {
    /// Image index within the batch.
    pub image: u32,
    /// Class id.
    pub class: u32,
    /// Centre x.
    pub x: f32,
    /// Centre y.
    pub y: f32,
    /// Width.
    pub w: f32,
    /// Height.
    pub h: f32,
}

/// One batch: `len() x planes x imgsz x imgsz` bytes, channel-first, plus its boxes. Dropping
/// it hands its pixel buffer back to the loader, so that steady-state batches reuse memory
/// instead of faulting in fresh pages.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Side of the square images.
    pub imgsz: usize,
    /// Planes per image (3 RGB + IR).
    pub planes: usize,
    /// The pixels.
    pub images: Vec<u8>,
    /// Cache index of each image.
    pub samples: Vec<usize>,
    /// Every box of every image.
    pub boxes: Vec<BatchBox>,
    recycle: Option<BufferPool>,
}

impl PartialEq for Batch {
    fn eq(&self, other: &Self) -> bool {
        (
            self.imgsz,
            self.planes,
            &self.images,
            &self.samples,
            &self.boxes,
        ) == (
            other.imgsz,
            other.planes,
            &other.images,
            &other.samples,
            &other.boxes,
        )
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if let Some(pool) = &self.recycle {
            pool.give(std::mem::take(&mut self.images));
        }
    }
}

/// Pixel buffers of dropped batches, for the next ones.
#[derive(Debug, Clone, Default)]
struct BufferPool(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl BufferPool {
    const KEEP: usize = 8;

    /// A buffer of exactly `len` bytes, reused when one is free (its bytes are stale: callers
    /// overwrite every byte).
    fn take(&self, len: usize) -> Vec<u8> {
        let reused = self.0.lock().map(|mut pool| pool.pop()).unwrap_or(None);
        let mut buffer = reused.unwrap_or_default();
        buffer.resize(len, 0);
        buffer
    }

    fn give(&self, buffer: Vec<u8>) {
        if buffer.capacity() > 0
            && let Ok(mut pool) = self.0.lock()
            && pool.len() < Self::KEEP
        {
            pool.push(buffer);
        }
    }
}

impl Batch {
    /// Images in the batch.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether the batch holds no image.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Image `i`'s planes.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.planes * self.imgsz * self.imgsz;
        &self.images[i * n..(i + 1) * n]
    }
}

/// The sample order of one epoch for one rank: a seeded permutation (or 0..len), of which rank
/// `r` takes positions `r, r + world, ...`, so that the ranks together cover every sample once.
pub fn epoch_order(
    len: usize,
    seed: u64,
    epoch: u64,
    shuffle: bool,
    rank: usize,
    world: usize,
) -> Vec<usize> {
    shard(permutation(len, seed, epoch, shuffle), rank, world)
}

/// Like [`epoch_order`], with the permutation padded by its own first samples to a multiple
/// of `world`, so that every rank gets `ceil(len / world)` samples.
pub fn equal_epoch_order(
    len: usize,
    seed: u64,
    epoch: u64,
    shuffle: bool,
    rank: usize,
    world: usize,
) -> Vec<usize> {
    let mut order = permutation(len, seed, epoch, shuffle);
    let padded = len.div_ceil(world.max(1)) * world.max(1);
    let extra: Vec<usize> = order.iter().copied().cycle().take(padded - len).collect();
    order.extend(extra);
    shard(order, rank, world)
}

fn permutation(len: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(
            seed ^ epoch.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        ));
    }
    order
}

fn shard(order: Vec<usize>, rank: usize, world: usize) -> Vec<usize> {
    order.into_iter().skip(rank).step_by(world.max(1)).collect()
}

/// Batches over a cache.
#[derive(Debug, Clone)]
pub struct Loader {
    cache: Arc<Cache>,
    options: LoaderOptions,
    buffers: BufferPool,
}

impl Loader {
    /// A loader; `options.batch` and `options.world` must be at least 1.
    pub fn new(cache: Arc<Cache>, options: LoaderOptions) -> Self {
        assert!(
            options.batch > 0 && options.world > 0 && options.rank < options.world,
            "batch, world and rank must be valid"
        );
        Self {
            cache,
            options,
            buffers: BufferPool::default(),
        }
    }

    /// The cache.
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// Samples the loader draws from: the cache's, or the first `limit` of them.
    pub fn len(&self) -> usize {
        self.options
            .limit
            .map_or(self.cache.len(), |n| n.min(self.cache.len()))
    }

    /// `true` when the loader has no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Batches this rank yields per epoch (the last one may be smaller).
    pub fn batches_per_epoch(&self) -> usize {
        let mine = self.order(0).len();
        mine.div_ceil(self.options.batch)
    }

    /// Builds one batch of the given cache indices; `epoch` seeds the augmentation.
    pub fn make_batch(&self, samples: &[usize], epoch: u64) -> Result<Batch, CacheError> {
        let size = self.cache.meta().imgsz as usize;
        let planes = self.cache.meta().planes();
        let per_image = planes * size * size;
        let mut images = self.buffers.take(samples.len() * per_image);
        let boxes: Vec<Vec<[f32; 5]>> = images
            .par_chunks_mut(per_image)
            .zip(samples.par_iter())
            .map(|(out, &index)| match &self.options.augment {
                Some(augment) => {
                    let seed = self.options.seed
                        ^ epoch.wrapping_mul(0xA076_1D64_78BD_642F)
                        ^ (index as u64).wrapping_mul(0xE703_7ED1_A0B4_28DB);
                    augment_sample(
                        &self.cache,
                        self.len(),
                        index,
                        augment,
                        &mut ChaCha8Rng::seed_from_u64(seed),
                        out,
                    )
                }
                None => {
                    let sample = self.cache.sample(index)?;
                    let fit = Letterbox::of_sample(&self.cache, index);
                    fit.place(&sample, out);
                    let [left, top] = fit.offsets();
                    let (sx, sy) = (
                        sample.width as f32 / size as f32,
                        sample.height as f32 / size as f32,
                    );
                    let (ox, oy) = (left as f32 / size as f32, top as f32 / size as f32);
                    Ok(sample
                        .boxes
                        .iter()
                        .map(|b| [b[0], b[1] * sx + ox, b[2] * sy + oy, b[3] * sx, b[4] * sy])
                        .collect())
                }
            })
            .collect::<Result<_, CacheError>>()?;
        let boxes = boxes
            .into_iter()
            .enumerate()
            .flat_map(|(image, list)| {
                list.into_iter().map(move |b| BatchBox {
                    image: image as u32,
                    class: b[0] as u32,
                    x: b[1],
                    y: b[2],
                    w: b[3],
                    h: b[4],
                })
            })
            .collect();
        Ok(Batch {
            imgsz: size,
            planes,
            images,
            samples: samples.to_vec(),
            boxes,
            recycle: Some(self.buffers.clone()),
        })
    }

    /// This rank's samples of `epoch`, in order.
    fn order(&self, epoch: u64) -> Vec<usize> {
        let o = &self.options;
        let order = if o.equal_shards {
            equal_epoch_order
        } else {
            epoch_order
        };
        order(self.len(), o.seed, epoch, o.shuffle, o.rank, o.world)
    }

    /// The batches of `epoch`, built ahead on a background thread.
    pub fn epoch(&self, epoch: u64) -> EpochBatches {
        let order = self.order(epoch);
        let size = self.options.batch.max(1);
        let loader = self.clone();
        Background::spawn(
            "fusekit-loader",
            self.options.prefetch,
            0..order.len().div_ceil(size),
            move |i| {
                let chunk = &order[i * size..((i + 1) * size).min(order.len())];
                let batch = loader.make_batch(chunk, epoch);
                let failed = batch.is_err();
                (batch, failed)
            },
        )
    }
}

/// The batches of one epoch; dropping it stops the background thread.
pub type EpochBatches = Background<Result<Batch, CacheError>>;
