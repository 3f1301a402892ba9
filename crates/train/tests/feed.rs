//! Cache batches reach libtorch: without a copy on the CPU, staged one batch ahead, and on
//! CUDA (when there is one) through pinned memory with the same bytes.

mod common;

use std::sync::Arc;

use fusekit_cache::{Cache, CacheError};
use fusekit_loader::{Batch, Loader, LoaderOptions};
use fusekit_synth::SynthOptions;
use fusekit_train::{Feed, FeedMode, batch_tensors};
use tch::{Device, Kind};

/// A loader over a synthetic cache of `pairs` pairs at imgsz 64, in order.
fn loader(dir: &std::path::Path, pairs: usize, batch: usize) -> Loader {
    let options = SynthOptions {
        pairs,
        width: 96,
        height: 64,
        scenes: 1,
        ..SynthOptions::default()
    };
    let target = common::synth_cache(dir, "d", &options);
    let cache = Arc::new(Cache::open(&target, None).unwrap());
    Loader::new(
        cache,
        LoaderOptions {
            batch,
            shuffle: false,
            ..LoaderOptions::default()
        },
    )
}

#[test]
fn batch_images_are_a_zero_copy_view_and_targets_follow() {
    let dir = tempfile::tempdir().unwrap();
    let loader = loader(dir.path(), 3, 3);
    let batch = loader.epoch(0).next().unwrap().unwrap();
    let tensors = batch_tensors(&batch, Device::Cpu);
    assert_eq!(tensors.images.size(), [3, 4, 64, 64]);
    assert_eq!(tensors.images.kind(), Kind::Uint8);
    assert_eq!(
        tensors.images.data_ptr() as *const u8,
        batch.images.as_ptr(),
        "no copy on the CPU"
    );
    let sum = tensors
        .images
        .to_kind(Kind::Int64)
        .sum(Kind::Int64)
        .int64_value(&[]);
    assert_eq!(sum, batch.images.iter().map(|&v| i64::from(v)).sum::<i64>());
    assert_eq!(tensors.targets.size(), [batch.boxes.len() as i64, 6]);
    let first = &batch.boxes[0];
    let row: Vec<f32> = Vec::try_from(tensors.targets.get(0)).unwrap();
    assert_eq!(
        row,
        vec![
            first.image as f32,
            first.class as f32,
            first.x,
            first.y,
            first.w,
            first.h
        ]
    );
}

/// Counts how many batches have been pulled from the loader.
struct Counted<I> {
    inner: I,
    pulled: Arc<std::sync::atomic::AtomicUsize>,
}

impl<I: Iterator<Item = Result<Batch, CacheError>>> Iterator for Counted<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.inner.next()?;
        self.pulled
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Some(item)
    }
}

#[test]
fn the_feed_stages_one_batch_ahead_in_loader_order() {
    let dir = tempfile::tempdir().unwrap();
    let loader = loader(dir.path(), 7, 2);
    let feed = Feed::new(Device::Cpu, true);
    assert_eq!(feed.mode(), FeedMode::View);
    assert_eq!(feed.fallback(), None);
    let expected: Vec<Batch> = loader.epoch(0).map(Result::unwrap).collect();
    assert_eq!(expected.len(), 4);
    let pulled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let batches = Counted {
        inner: loader.epoch(0),
        pulled: Arc::clone(&pulled),
    };
    let mut seen = 0;
    for (i, staged) in feed.ahead(batches).enumerate() {
        // While batch i is in the caller's hands, batch i + 1 is already staged.
        let ahead = pulled.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(ahead, (i + 2).min(expected.len()), "batch {i}");
        let fed = staged.unwrap().into_fed();
        assert_eq!(fed.batch(), &expected[i]);
        let tensors = fed.tensors();
        assert_eq!(
            tensors.images.data_ptr() as *const u8,
            fed.batch().images.as_ptr(),
            "no copy on the CPU"
        );
        assert_eq!(tensors.targets.size(), [fed.batch().boxes.len() as i64, 6]);
        seen += 1;
    }
    assert_eq!(seen, expected.len());
}

#[test]
fn a_loader_error_ends_the_staged_batches_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let loader = loader(dir.path(), 4, 2);
    let mut batches: Vec<Result<Batch, CacheError>> = loader.epoch(0).collect();
    batches.insert(
        1,
        Err(CacheError::Record {
            path: "train.fkc".into(),
            index: 3,
            sample: "images/3.jpg".into(),
        }),
    );
    let items: Vec<_> = Feed::new(Device::Cpu, true)
        .ahead(batches.into_iter())
        .collect();
    assert_eq!(items.len(), 2, "the batch before the error, then the error");
    assert!(items[0].is_ok());
    assert!(items[1].is_err());
}

#[test]
fn pinned_feed_on_cuda_delivers_the_loader_bytes_or_falls_back_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let loader = loader(dir.path(), 6, 3);
    let feed = Feed::new(Device::Cuda(0), true);
    if !tch::Cuda::is_available() {
        // No GPU here: libtorch gives no side stream, and the feed says so.
        assert_eq!(feed.mode(), FeedMode::Pageable);
        let why = feed.fallback().expect("a reason for the fallback");
        assert!(why.contains("cuda:0"), "{why}");
        eprintln!("no CUDA device: the pinned copies themselves were not exercised ({why})");
        return;
    }
    assert_eq!(feed.mode(), FeedMode::Pinned, "{:?}", feed.fallback());
    for staged in feed.ahead(loader.epoch(0)) {
        let fed = staged.unwrap().into_fed();
        let tensors = fed.tensors();
        assert_eq!(tensors.images.device(), Device::Cuda(0));
        // Work on the compute stream after the copy sees every byte of the batch.
        let on_host =
            Vec::<u8>::try_from(tensors.images.flatten(0, -1).to_device(Device::Cpu)).unwrap();
        assert_eq!(on_host, fed.batch().images);
        // Targets stay on the host: the loss pads them there.
        assert_eq!(tensors.targets.device(), Device::Cpu);
        let cpu = batch_tensors(fed.batch(), Device::Cpu);
        assert!(tensors.targets.equal(&cpu.targets));
    }
    assert_eq!(feed.mode(), FeedMode::Pinned, "{:?}", feed.fallback());
}
