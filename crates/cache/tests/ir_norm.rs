//! 16-bit and TIFF IR through the cache builder: every `ir_norm` mode, measured by how far the
//! warm objects stand out of the cached IR plane, and the same planes through `prepare_pair`.

mod common;

use std::path::Path;

use fusekit_cache::{
    BuildError, BuildInput, BuildOptions, BuildOutcome, Cache, IrChannels, IrNorm, MapMode, build,
    fingerprint, prepare_pair,
};
use fusekit_synth::{FileFormat, SynthOptions, generate};

const IMGSZ: u32 = 128;

fn sixteen_bit(dir: &Path, format: FileFormat) -> Vec<BuildInput> {
    let options = SynthOptions {
        pairs: 8,
        width: 160,
        height: 128,
        scenes: 2,
        ir_channels: 1,
        ir_bits: 16,
        format,
        ..SynthOptions::default()
    };
    generate(dir, &options, &|| {}).unwrap();
    common::synth_inputs(dir, &options)
}

fn options(ir_norm: IrNorm) -> BuildOptions {
    BuildOptions {
        ir_norm,
        ..common::options(IMGSZ)
    }
}

/// Mean IR grey inside the boxes and outside all boxes, over every sample of the cache, and
/// the grey levels used.
fn inside_outside(cache: &Cache) -> (f64, f64, usize) {
    let (mut inside, mut outside) = ((0.0, 0usize), (0.0, 0usize));
    let mut seen = [false; 256];
    for i in 0..cache.len() {
        let sample = cache.sample(i).unwrap();
        let (w, h) = (sample.width, sample.height);
        let ir = &sample.planes[3 * w * h..4 * w * h];
        for y in 0..h {
            for x in 0..w {
                let (fx, fy) = ((x as f32 + 0.5) / w as f32, (y as f32 + 0.5) / h as f32);
                let in_box = sample
                    .boxes
                    .iter()
                    .any(|b| (fx - b[1]).abs() < b[3] / 2.0 && (fy - b[2]).abs() < b[4] / 2.0);
                let v = ir[y * w + x];
                seen[v as usize] = true;
                let sum = if in_box { &mut inside } else { &mut outside };
                sum.0 += f64::from(v);
                sum.1 += 1;
            }
        }
    }
    (
        inside.0 / inside.1 as f64,
        outside.0 / outside.1 as f64,
        seen.iter().filter(|&&s| s).count(),
    )
}

#[test]
fn warm_objects_stand_out_in_16_bit_png_and_tiff_ir_except_under_none() {
    let fixed = IrNorm::Fixed {
        lo: 27_500,
        hi: 29_000,
    };
    for format in [FileFormat::Png, FileFormat::Tiff] {
        let dir = tempfile::tempdir().unwrap();
        let inputs = sixteen_bit(&dir.path().join("data"), format);
        for mode in [IrNorm::Auto, IrNorm::MinMax, fixed, IrNorm::None] {
            let target = dir.path().join(format!("cache/{mode}.fkc"));
            let outcome = build(&target, &inputs, &options(mode), &|| {}).unwrap();
            assert!(matches!(
                outcome,
                BuildOutcome::Built { ir_channels: 1, .. }
            ));
            let cache = Cache::open(&target, Some(MapMode::Disk)).unwrap();
            assert_eq!(cache.meta().ir_norm, mode);
            let (inside, outside, levels) = inside_outside(&cache);
            let contrast = inside - outside;
            println!(
                "{format:?} {mode}: inside {inside:.1}, outside {outside:.1}, {levels} levels"
            );
            if mode == IrNorm::None {
                // The raw counts' high byte: a flat grey plane, the problem lint warns about.
                assert!(
                    contrast < 4.0 && levels < 32,
                    "{format:?} {mode}: {inside:.1} vs {outside:.1}, {levels} levels"
                );
            } else {
                assert!(
                    contrast > 40.0 && levels > 100,
                    "{format:?} {mode}: {inside:.1} vs {outside:.1}, {levels} levels"
                );
            }
            // Predictions decode pairs through the same function: the same planes.
            let record = prepare_pair(&inputs[0], IMGSZ, 1, mode).unwrap();
            assert_eq!(record.planes, cache.sample(0).unwrap().planes, "{mode}");
        }
    }
}

#[test]
fn the_fingerprint_and_the_cache_follow_ir_norm() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = sixteen_bit(&dir.path().join("data"), FileFormat::Png);
    let modes = [
        IrNorm::Auto,
        IrNorm::MinMax,
        IrNorm::None,
        IrNorm::Fixed { lo: 1, hi: 2 },
        IrNorm::Fixed { lo: 1, hi: 3 },
    ];
    let prints: std::collections::BTreeSet<String> = modes
        .iter()
        .map(|&mode| fingerprint(&inputs, &options(mode)))
        .collect();
    assert_eq!(prints.len(), modes.len());
    let target = dir.path().join("cache/train.fkc");
    build(&target, &inputs, &options(IrNorm::Auto), &|| {}).unwrap();
    let kept = build(&target, &inputs, &options(IrNorm::Auto), &|| {}).unwrap();
    assert_eq!(kept, BuildOutcome::UpToDate);
    let rebuilt = build(&target, &inputs, &options(IrNorm::None), &|| {}).unwrap();
    assert!(matches!(rebuilt, BuildOutcome::Built { .. }));
    assert_eq!(
        Cache::open(&target, None).unwrap().meta().ir_norm,
        IrNorm::None
    );
}

#[test]
fn eight_bit_jpeg_ir_is_unchanged_by_auto_and_stretched_by_minmax() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = common::dataset(&dir.path().join("data"), 2);
    // At the source size (200 x 160): no resize averages the extremes away.
    let planes = |mode| prepare_pair(&inputs[0], 200, 1, mode).unwrap().planes;
    let (auto, none, minmax) = (
        planes(IrNorm::Auto),
        planes(IrNorm::None),
        planes(IrNorm::MinMax),
    );
    assert_eq!(auto, none);
    let n = auto.len() / 4;
    assert_eq!(
        auto[..3 * n],
        minmax[..3 * n],
        "RGB planes are never normalised"
    );
    let ir = &minmax[3 * n..];
    assert_eq!((ir.iter().min(), ir.iter().max()), (Some(&0), Some(&255)));
    assert_ne!(auto[3 * n..], minmax[3 * n..]);
}

#[test]
fn sixteen_bit_rgb_png_is_scaled_to_8_bits() {
    let dir = tempfile::tempdir().unwrap();
    let (rgb, ir) = (dir.path().join("rgb.png"), dir.path().join("ir.png"));
    let colour = image::ImageBuffer::from_fn(40, 32, |x, y| {
        image::Rgb([257 * (x as u16 * 6), 257 * (y as u16 * 7), 257 * 200])
    });
    image::DynamicImage::ImageRgb16(colour).save(&rgb).unwrap();
    let grey = image::ImageBuffer::from_fn(40, 32, |x, _| image::Luma([28_000 + 10 * x as u16]));
    image::DynamicImage::ImageLuma16(grey).save(&ir).unwrap();
    let input = BuildInput {
        name: "rgb.png".into(),
        rgb,
        ir,
        label: None,
    };
    let record = prepare_pair(&input, 40, 1, IrNorm::MinMax).unwrap();
    let n = 40 * 32;
    assert_eq!(record.planes.len(), 4 * n);
    assert_eq!(record.planes[5], 30, "R of pixel (5, 0) is 257 * 30");
    assert_eq!(record.planes[n + 40], 7, "G of pixel (0, 1) is 257 * 7");
    assert_eq!(record.planes[2 * n], 200);
    let ir_row = &record.planes[3 * n..3 * n + 40];
    assert_eq!((ir_row[0], ir_row[39]), (0, 255));
}

#[test]
fn a_corrupt_16_bit_tiff_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut inputs = sixteen_bit(&dir.path().join("data"), FileFormat::Tiff);
    let broken = inputs[1].ir.clone();
    let bytes = std::fs::read(&broken).unwrap();
    std::fs::write(&broken, &bytes[..bytes.len() / 3]).unwrap();
    inputs.truncate(2);
    let err = build(
        &dir.path().join("cache/train.fkc"),
        &inputs,
        &BuildOptions {
            ir_channels: IrChannels::Grey,
            ..options(IrNorm::Auto)
        },
        &|| {},
    )
    .unwrap_err();
    assert!(matches!(err, BuildError::Decode { .. }), "{err}");
    assert!(
        err.to_string().contains(&broken.display().to_string()),
        "{err}"
    );
}
