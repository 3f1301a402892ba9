//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

use fusekit_cache::{BuildInput, BuildOptions, MapMode, build};
use fusekit_synth::{SynthOptions, generate};

/// Generates `options`' pairs into `dir/NAME-data` and caches them at imgsz 64 (disk mode) into
/// `dir/NAME.fkc`, which it returns.
pub fn synth_cache(dir: &Path, name: &str, options: &SynthOptions) -> PathBuf {
    let data = dir.join(format!("{name}-data"));
    generate(&data, options, &|| {}).unwrap();
    let inputs: Vec<BuildInput> = (0..options.pairs)
        .map(|i| {
            let stem = fusekit_synth::pair_stem(options, i);
            BuildInput {
                name: stem.clone(),
                rgb: data.join(format!("images/{stem}.jpg")),
                ir: data.join(format!("imagesIR/{stem}.jpg")),
                label: Some(data.join(format!("labels/{stem}.txt"))),
            }
        })
        .collect();
    let target = dir.join(format!("{name}.fkc"));
    let build_options = BuildOptions {
        imgsz: 64,
        mode: MapMode::Disk,
        names: vec!["person".into()],
        ..BuildOptions::default()
    };
    build(&target, &inputs, &build_options, &|| {}).unwrap();
    target
}
