//! Synthetic datasets and caches shared by the integration tests; `fusekit-loader`'s tests and
//! cache bench include this file too (by path: the dependency runs one way, loader to cache).

// Each test binary that includes this module uses some of its helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use fusekit_cache::{BuildInput, BuildOptions, IrChannels, IrNorm, MapMode, build};
use fusekit_synth::{SynthOptions, generate};

/// The build inputs of the pairs `options` generates (or generated) into `dir`.
pub fn synth_inputs(dir: &Path, options: &SynthOptions) -> Vec<BuildInput> {
    (0..options.pairs)
        .map(|i| {
            let stem = fusekit_synth::pair_stem(options, i);
            let ext = options.format.extension();
            BuildInput {
                name: format!("images/{stem}.{ext}"),
                rgb: dir.join(format!("images/{stem}.{ext}")),
                ir: dir.join(format!("imagesIR/{stem}.{ext}")),
                label: Some(dir.join(format!("labels/{stem}.txt"))),
            }
        })
        .collect()
}

/// Generates `pairs` 200 x 160 pairs into `dir`; returns their build inputs.
pub fn dataset(dir: &Path, pairs: usize) -> Vec<BuildInput> {
    let options = SynthOptions {
        pairs,
        width: 200,
        height: 160,
        scenes: 2,
        ..SynthOptions::default()
    };
    generate(dir, &options, &|| {}).unwrap();
    synth_inputs(dir, &options)
}

/// Build options at `imgsz`: disk mode, IR planes detected, split `train`, class `person`.
pub fn options(imgsz: u32) -> BuildOptions {
    BuildOptions {
        imgsz,
        mode: MapMode::Disk,
        ir_channels: IrChannels::Auto,
        ir_norm: IrNorm::Auto,
        split: "train".into(),
        names: vec!["person".into()],
        skipped: vec![],
        force: false,
    }
}

/// `pairs` generated pairs in `dir/data`, cached at imgsz 100 as `dir/cache/train.fkc`; returns
/// the cache's path and the build inputs.
pub fn built(dir: &Path, pairs: usize) -> (PathBuf, Vec<BuildInput>) {
    let inputs = dataset(&dir.join("data"), pairs);
    let target = dir.join("cache/train.fkc");
    build(&target, &inputs, &options(100), &|| {}).unwrap();
    (target, inputs)
}
