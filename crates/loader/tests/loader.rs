//! The loader and the augmentation through their public interface, on caches built by
//! `fusekit-cache`.

#[path = "../../cache/tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fusekit_cache::format::Metadata;
use fusekit_cache::{Cache, CacheWriter, Record};
use fusekit_loader::{Augment, Letterbox, Loader, LoaderOptions, epoch_order, equal_epoch_order};

use common::built;

#[test]
fn letterbox_keeps_boxes_on_their_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let (target, _) = built(dir.path(), 2);
    let cache = Arc::new(Cache::open(&target, None).unwrap());
    let loader = Loader::new(
        cache.clone(),
        LoaderOptions {
            batch: 2,
            shuffle: false,
            ..LoaderOptions::default()
        },
    );
    let batch = loader.epoch(0).next().unwrap().unwrap();
    assert_eq!((batch.len(), batch.planes, batch.imgsz), (2, 4, 100));
    let sample = cache.sample(0).unwrap();
    let top = (100 - 80) / 2;
    let image = batch.image(0);
    assert_eq!(image[0], 114, "padding");
    assert_eq!(&image[top * 100..top * 100 + 100], &sample.plane(0)[..100]);
    let b = batch.boxes.iter().find(|b| b.image == 0).unwrap();
    let original = sample.boxes[0];
    assert!((b.x - original[1]).abs() < 1e-6);
    assert!((b.y * 100.0 - (original[2] * 80.0 + top as f32)).abs() < 1e-3);
    assert!((b.h * 100.0 - original[4] * 80.0).abs() < 1e-3);
}

#[test]
fn batch_order_is_seeded_and_shards_cover_every_sample_once() {
    assert_eq!(
        epoch_order(100, 3, 1, true, 0, 1),
        epoch_order(100, 3, 1, true, 0, 1)
    );
    assert_ne!(
        epoch_order(100, 3, 1, true, 0, 1),
        epoch_order(100, 3, 2, true, 0, 1)
    );
    assert_eq!(epoch_order(5, 3, 1, false, 0, 1), vec![0, 1, 2, 3, 4]);
    for world in 1..5 {
        let mut seen: Vec<usize> = (0..world)
            .flat_map(|rank| epoch_order(103, 9, 4, true, rank, world))
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..103).collect::<Vec<_>>(), "world {world}");
        // Equal shards (data-parallel training): same count on every rank, every sample at
        // least once, only the permutation's first `padded - len` samples twice.
        let shards: Vec<Vec<usize>> = (0..world)
            .map(|rank| equal_epoch_order(103, 9, 4, true, rank, world))
            .collect();
        assert!(shards.iter().all(|s| s.len() == 103usize.div_ceil(world)));
        let mut seen: Vec<usize> = shards.concat();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen, (0..103).collect::<Vec<_>>(), "world {world}");
        assert_eq!(
            shards.concat().len() - 103,
            103usize.div_ceil(world) * world - 103
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let (target, _) = built(dir.path(), 5);
    let cache = Arc::new(Cache::open(&target, None).unwrap());
    let options = LoaderOptions {
        batch: 2,
        augment: Some(Augment::default()),
        seed: 5,
        ..LoaderOptions::default()
    };
    let a: Vec<_> = Loader::new(cache.clone(), options.clone())
        .epoch(3)
        .map(Result::unwrap)
        .collect();
    let b: Vec<_> = Loader::new(cache.clone(), options)
        .epoch(3)
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        a, b,
        "same seed and epoch, same batches, augmentation included"
    );
    assert_eq!(a.iter().map(|b| b.len()).collect::<Vec<_>>(), vec![2, 2, 1]);
    let samples: BTreeSet<usize> = a.iter().flat_map(|b| b.samples.clone()).collect();
    assert_eq!(samples.len(), 5);
}

/// A cache whose IR plane is a copy of its R plane: any misalignment between modalities after
/// augmentation shows as a difference between the two.
fn mirrored_cache(dir: &Path) -> PathBuf {
    let target = dir.join("mirror.fkc");
    let mut writer = CacheWriter::create(&target).unwrap();
    let mut samples = Vec::new();
    for i in 0..6u32 {
        let (w, h) = (64u32, 48u32);
        let r: Vec<u8> = (0..w * h)
            .map(|p| ((p % w) * 3 + (p / w) * 2 + i * 17) as u8)
            .collect();
        let mut planes = r.clone();
        planes.extend(r.iter().map(|v| v.wrapping_mul(3)));
        planes.extend(r.iter().map(|v| v.wrapping_add(50)));
        planes.extend(&r);
        writer
            .push(&Record {
                height: h,
                width: w,
                source_height: h,
                source_width: w,
                planes,
                boxes: vec![[0.0, 0.5, 0.5, 0.5, 0.5]],
            })
            .unwrap();
        samples.push(format!("s{i}"));
    }
    let meta = Metadata {
        imgsz: 64,
        ir_channels: 1,
        ir_norm: Default::default(),
        mode: "disk".into(),
        names: vec!["thing".into()],
        split: "train".into(),
        samples,
        fingerprint: String::new(),
        skipped: vec![],
        written_by: "test".into(),
    };
    writer.finish(&meta).unwrap();
    target
}

#[test]
fn augmentation_moves_rgb_and_ir_together() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(Cache::open(&mirrored_cache(dir.path()), None).unwrap());
    let geometric = Augment {
        hsv_h: 0.0,
        hsv_s: 0.0,
        hsv_v: 0.0,
        ..Augment::default()
    };
    let options = LoaderOptions {
        batch: 6,
        augment: Some(geometric),
        seed: 1,
        ..LoaderOptions::default()
    };
    for epoch in 0..4 {
        let batch = Loader::new(cache.clone(), options.clone())
            .make_batch(&[0, 1, 2, 3, 4, 5], epoch)
            .unwrap();
        for i in 0..batch.len() {
            let image = batch.image(i);
            let n = 64 * 64;
            assert_eq!(
                &image[..n],
                &image[3 * n..],
                "epoch {epoch} image {i}: IR and R planes differ"
            );
        }
        for b in &batch.boxes {
            assert!(
                b.w > 0.0 && b.h > 0.0 && b.x - b.w / 2.0 >= -1e-4 && b.x + b.w / 2.0 <= 1.0 + 1e-4,
                "{b:?}"
            );
        }
    }
    // Colour jitter changes RGB only.
    let colour = Augment {
        mosaic: 0.0,
        scale: 0.0,
        translate: 0.0,
        fliplr: 0.0,
        hsv_h: 0.0,
        hsv_s: 0.0,
        hsv_v: 0.9,
    };
    let jittered = Loader::new(
        cache.clone(),
        LoaderOptions {
            augment: Some(colour),
            ..options.clone()
        },
    )
    .make_batch(&[0], 0)
    .unwrap();
    let plain = Loader::new(
        cache.clone(),
        LoaderOptions {
            augment: None,
            ..options
        },
    )
    .make_batch(&[0], 0)
    .unwrap();
    let n = 64 * 64;
    assert_eq!(&jittered.images[3 * n..], &plain.images[3 * n..]);
    assert_ne!(&jittered.images[..n], &plain.images[..n]);
}

#[test]
fn letterbox_fills_padding_and_copies_rows() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(&mirrored_cache(dir.path()), None).unwrap();
    let sample = cache.sample(2).unwrap();
    let mut out = vec![0u8; 4 * 64 * 64];
    let fit = Letterbox::of_sample(&cache, 2);
    fit.place(&sample, &mut out);
    assert_eq!(fit.offsets(), [0, 8]);
    assert!(out[..8 * 64].iter().all(|&v| v == 114));
    assert_eq!(&out[8 * 64..9 * 64], &sample.plane(0)[..64]);
}
