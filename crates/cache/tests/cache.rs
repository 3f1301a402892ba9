//! The cache format, builder, reader and loader through their public interface.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fusekit_cache::format::{HEADER_LEN, Metadata};
use fusekit_cache::{
    Augment, BuildError, BuildInput, BuildOptions, BuildOutcome, Cache, CacheError, CacheWriter,
    IrChannels, Loader, LoaderOptions, MapMode, Record, build, epoch_order, equal_epoch_order,
    letterbox, partial_path,
};
use fusekit_synth::{SynthOptions, generate};

fn dataset(dir: &Path, pairs: usize) -> Vec<BuildInput> {
    let options = SynthOptions {
        pairs,
        width: 200,
        height: 160,
        scenes: 2,
        ..SynthOptions::default()
    };
    generate(dir, &options, &|| {}).unwrap();
    (0..pairs)
        .map(|i| {
            let stem = fusekit_synth::pair_stem(&options, i);
            BuildInput {
                name: format!("images/{stem}.jpg"),
                rgb: dir.join(format!("images/{stem}.jpg")),
                ir: dir.join(format!("imagesIR/{stem}.jpg")),
                label: Some(dir.join(format!("labels/{stem}.txt"))),
            }
        })
        .collect()
}

fn options(imgsz: u32) -> BuildOptions {
    BuildOptions {
        imgsz,
        mode: MapMode::Disk,
        ir_channels: IrChannels::Auto,
        split: "train".into(),
        names: vec!["person".into()],
        skipped: vec![],
        force: false,
    }
}

fn built(dir: &Path, pairs: usize) -> (PathBuf, Vec<BuildInput>) {
    let inputs = dataset(&dir.join("data"), pairs);
    let target = dir.join("cache/train.fkc");
    build(&target, &inputs, &options(100), &|| {}).unwrap();
    (target, inputs)
}

/// An independent 2x2 area average of each decoded source (RGB planes, then the IR luma), as
/// the stored `w / 2` x `h / 2` planes.
fn area_average(input: &BuildInput, w: u32, h: u32) -> Vec<Vec<u8>> {
    let rgb = image::open(&input.rgb).unwrap().into_rgb8();
    let ir = image::open(&input.ir).unwrap().into_luma8();
    (0..4usize)
        .map(|k| {
            let value = |sx: u32, sy: u32| -> u32 {
                if k < 3 {
                    u32::from(rgb.get_pixel(sx, sy)[k])
                } else {
                    u32::from(ir.get_pixel(sx, sy)[0])
                }
            };
            let mut plane = Vec::with_capacity((w * h) as usize);
            for y in 0..h {
                for x in 0..w {
                    let sum = value(2 * x, 2 * y)
                        + value(2 * x + 1, 2 * y)
                        + value(2 * x, 2 * y + 1)
                        + value(2 * x + 1, 2 * y + 1);
                    plane.push(((sum + 2) / 4) as u8);
                }
            }
            plane
        })
        .collect()
}

/// The pairs re-encoded losslessly as PNG, which the builder decodes in full and area-resizes.
fn as_png(dir: &Path, inputs: &[BuildInput]) -> Vec<BuildInput> {
    std::fs::create_dir_all(dir).unwrap();
    inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let rgb = dir.join(format!("{i}.png"));
            let ir = dir.join(format!("{i}_ir.png"));
            image::open(&input.rgb).unwrap().save(&rgb).unwrap();
            image::open(&input.ir).unwrap().save(&ir).unwrap();
            BuildInput {
                rgb,
                ir,
                ..input.clone()
            }
        })
        .collect()
}

#[test]
fn round_trip_pixels_and_boxes() {
    let dir = tempfile::tempdir().unwrap();
    let (_, jpegs) = built(dir.path(), 4);
    // PNG sources take the full decode and the area resize: stored pixels must be the 2x2 area
    // average of the source within rounding.
    let inputs = as_png(&dir.path().join("png"), &jpegs);
    let target = dir.path().join("cache/png.fkc");
    build(&target, &inputs, &options(100), &|| {}).unwrap();
    let cache = Cache::open(&target, None).unwrap();
    assert_eq!(cache.len(), 4);
    assert_eq!(
        cache.meta().ir_channels,
        1,
        "grey IR is stored as one plane"
    );
    for (i, input) in inputs.iter().enumerate() {
        let sample = cache.sample(i).unwrap();
        assert_eq!((sample.width, sample.height), (100, 80));
        let expected = area_average(input, 100, 80);
        for (k, plane) in expected.iter().enumerate() {
            let worst = plane
                .iter()
                .zip(sample.plane(k))
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            assert!(
                worst <= 1,
                "sample {i} plane {k} differs by {worst} grey levels"
            );
        }
        let label = std::fs::read_to_string(input.label.as_ref().unwrap()).unwrap();
        let expected: Vec<[f32; 5]> = label
            .lines()
            .map(|l| {
                let v: Vec<f32> = l.split_whitespace().map(|t| t.parse().unwrap()).collect();
                [v[0], v[1], v[2], v[3], v[4]]
            })
            .collect();
        assert_eq!(sample.boxes, expected);
    }
}

/// A JPEG shrunk at least 2x is decoded by libjpeg straight to the reduced size (DCT scaling), so
/// its stored planes are not a spatial 2x2 average of the full decode. They must be exactly
/// libjpeg's half-size decode, and the same picture as the source: a DCT-domain reduction keeps
/// each 8x8 source block's DC coefficient (its mean) and its lowest frequencies and drops the
/// rest instead of aliasing it, so each stored 4x4 block (one source block) has the mean of the
/// area average over it, while single pixels at edges differ by the detail the area average
/// folds in. Block means may still differ by rounding and clamping: the colour conversion rounds
/// Y, Cb and Cr per pixel at both sizes (blue = Y + 1.772 Cb carries the most), and ringing
/// clamped at 0 or 255 in dark or bright blocks is clamped differently at the two sizes; the
/// synthetic night scenes measured up to 1.44 levels (blue; grey IR 0.56), so 2 is the bound.
#[test]
fn scaled_jpeg_decode_is_a_dct_domain_resize() {
    let dir = tempfile::tempdir().unwrap();
    let (target, inputs) = built(dir.path(), 4);
    let cache = Cache::open(&target, None).unwrap();
    let half = |path: &Path, grey: bool| -> Vec<u8> {
        let mut decompress = mozjpeg::Decompress::new_path(path).unwrap();
        decompress.scale(4);
        let mut started = if grey {
            decompress.grayscale()
        } else {
            decompress.rgb()
        }
        .unwrap();
        let pixels = started.read_scanlines().unwrap();
        started.finish().unwrap();
        pixels
    };
    for (i, input) in inputs.iter().enumerate() {
        let sample = cache.sample(i).unwrap();
        assert_eq!((sample.width, sample.height), (100, 80));
        let rgb = half(&input.rgb, false);
        for k in 0..3 {
            let stored: Vec<u8> = rgb.iter().skip(k).step_by(3).copied().collect();
            assert_eq!(sample.plane(k), &stored[..], "sample {i} plane {k}");
        }
        assert_eq!(sample.plane(3), &half(&input.ir, true)[..], "sample {i} IR");

        let expected = area_average(input, 100, 80);
        for (k, area) in expected.iter().enumerate() {
            let stored = sample.plane(k);
            let block_mean = |plane: &[u8], bx: usize, by: usize| -> f64 {
                let sum: u32 = (0..16)
                    .map(|j| u32::from(plane[(by * 4 + j / 4) * 100 + bx * 4 + j % 4]))
                    .sum();
                f64::from(sum) / 16.0
            };
            let worst = (0..20)
                .flat_map(|by| (0..25).map(move |bx| (bx, by)))
                .map(|(bx, by)| (block_mean(stored, bx, by) - block_mean(area, bx, by)).abs())
                .fold(0.0, f64::max);
            assert!(
                worst <= 2.0,
                "sample {i} plane {k}: a block mean differs by {worst:.2} grey levels"
            );
        }
    }
}

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
fn a_flipped_byte_is_caught_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let (target, _) = built(dir.path(), 3);
    let offset = Cache::open(&target, None).unwrap().row(1).offset as usize;
    let mut bytes = std::fs::read(&target).unwrap();
    bytes[offset + 10] ^= 0x40;
    std::fs::write(&target, &bytes).unwrap();
    let cache = Cache::open(&target, None).unwrap();
    assert!(cache.sample(0).is_ok());
    let err = cache.sample(1).unwrap_err();
    assert!(matches!(err, CacheError::Record { index: 1, .. }), "{err}");
    assert!(err.to_string().contains("images/010002.jpg"), "{err}");
    assert_eq!(cache.verify_all(&|| {}), vec![1]);
    // A flipped byte in the index is caught when opening.
    let index_at = cache.header().index_offset as usize;
    bytes[offset + 10] ^= 0x40;
    bytes[index_at + 3] ^= 0x01;
    std::fs::write(&target, &bytes).unwrap();
    let err = Cache::open(&target, None).unwrap_err().to_string();
    assert!(err.contains("checksum"), "{err}");
}

#[test]
fn truncated_foreign_and_old_files_are_rejected_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (target, _) = built(dir.path(), 2);
    let bytes = std::fs::read(&target).unwrap();
    let cut = dir.path().join("cut.fkc");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    assert!(
        Cache::open(&cut, None)
            .unwrap_err()
            .to_string()
            .contains("truncated")
    );
    std::fs::write(&cut, &bytes[..100]).unwrap();
    assert!(
        Cache::open(&cut, None)
            .unwrap_err()
            .to_string()
            .contains("truncated")
    );
    let foreign = dir.path().join("foreign.fkc");
    std::fs::write(&foreign, vec![7u8; 10_000]).unwrap();
    let err = Cache::open(&foreign, None).unwrap_err().to_string();
    assert!(
        err.contains("not a fusekit cache") && err.contains("foreign.fkc"),
        "{err}"
    );
    let mut old = bytes.clone();
    old[8] = 9;
    std::fs::write(&foreign, &old).unwrap();
    assert!(
        Cache::open(&foreign, None)
            .unwrap_err()
            .to_string()
            .contains("format version 9")
    );
    // Header fields pointing outside the file never cause an out-of-bounds read.
    for at in (16..HEADER_LEN).step_by(8) {
        let mut bad = bytes.clone();
        bad[at + 5] = 0xFF;
        std::fs::write(&foreign, &bad).unwrap();
        assert!(Cache::open(&foreign, None).is_err(), "byte {at}");
    }
}

#[test]
fn an_interrupted_write_leaves_the_old_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (target, _) = built(dir.path(), 2);
    let before = std::fs::read(&target).unwrap();
    {
        let mut writer = CacheWriter::create(&target).unwrap();
        writer
            .push(&Record {
                height: 2,
                width: 2,
                source_height: 2,
                source_width: 2,
                planes: vec![1; 16],
                boxes: vec![],
            })
            .unwrap();
        assert!(partial_path(&target, &std::process::id().to_string()).exists());
        // Dropped without finish: as if the build were interrupted.
    }
    assert_eq!(std::fs::read(&target).unwrap(), before);
    assert!(!partial_path(&target, &std::process::id().to_string()).exists());
}

#[test]
fn builds_are_skipped_when_current_and_locked_against_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let (target, inputs) = built(dir.path(), 2);
    assert_eq!(
        build(&target, &inputs, &options(100), &|| {}).unwrap(),
        BuildOutcome::UpToDate
    );
    let label = inputs[0].label.as_ref().unwrap();
    let text = std::fs::read_to_string(label).unwrap();
    std::fs::write(label, format!("{text}0 0.5 0.5 0.1 0.1\n")).unwrap();
    assert!(matches!(
        build(&target, &inputs, &options(100), &|| {}).unwrap(),
        BuildOutcome::Built { .. }
    ));
    let lock = std::fs::File::create(target.with_extension("lock")).unwrap();
    lock.lock().unwrap();
    let err = build(
        &target,
        &inputs,
        &BuildOptions {
            force: true,
            ..options(100)
        },
        &|| {},
    )
    .unwrap_err();
    assert!(matches!(err, BuildError::Locked(_)), "{err}");
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
    assert_eq!(letterbox(&sample, 64, &mut out), (0, 8));
    assert!(out[..8 * 64].iter().all(|&v| v == 114));
    assert_eq!(&out[8 * 64..9 * 64], &sample.plane(0)[..64]);
}
