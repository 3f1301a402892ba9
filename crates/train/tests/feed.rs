//! Cache batches reach libtorch without a copy on the CPU.

mod common;

use std::sync::Arc;

use fusekit_cache::Cache;
use fusekit_loader::{Loader, LoaderOptions};
use fusekit_synth::SynthOptions;
use fusekit_train::batch_tensors;
use tch::{Device, Kind};

#[test]
fn batch_images_are_a_zero_copy_view_and_targets_follow() {
    let dir = tempfile::tempdir().unwrap();
    let options = SynthOptions {
        pairs: 3,
        width: 96,
        height: 64,
        scenes: 1,
        ..SynthOptions::default()
    };
    let target = common::synth_cache(dir.path(), "d", &options);
    let cache = Arc::new(Cache::open(&target, None).unwrap());
    let loader = Loader::new(
        cache,
        LoaderOptions {
            batch: 3,
            shuffle: false,
            ..LoaderOptions::default()
        },
    );
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
