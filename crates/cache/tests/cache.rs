//! The cache format, builder and reader through their public interface.

mod common;

use std::path::Path;

use fusekit_cache::format::HEADER_LEN;
use fusekit_cache::{
    BuildError, BuildInput, BuildOptions, BuildOutcome, Cache, CacheError, CacheWriter, Record,
    build, partial_path,
};

use common::{built, options};

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
    // Header fields pointing outside the file never cause an out-of-bounds read (each byte
    // flipped, so that a byte already 0xFF in this build still changes).
    for at in (16..HEADER_LEN).step_by(8) {
        let mut bad = bytes.clone();
        bad[at + 5] ^= 0xFF;
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
