//! The cache build stage: one memory-mapped paired-tensor file per split.

use std::path::{Path, PathBuf};
use std::time::Instant;

use fusekit_cache::{
    BuildInput, BuildOptions, BuildOutcome, Cache, IrChannels, MapMode, available_memory, build,
    estimate_bytes,
};
use fusekit_dataset::{Dataset, IrNorm};
use fusekit_hyp::Imgsz;
use fusekit_lint::LevelSelectors;
use serde::{Deserialize, Serialize};

use crate::{Progress, StageError, lint_first, split_or_data, usability_options};

/// The cache knobs: a pipeline file's `cache:` section, and flags of `fusekit cache build`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `ram`: the loader maps the file into memory up front (checked to fit before building);
    /// `disk`: pages are read on demand.
    #[serde(default)]
    pub mode: MapMode,
    /// IR planes: `1` when the IR images are grey (detected by `auto`), else `3`.
    #[serde(default)]
    pub ir_channels: IrChannels,
    /// How IR samples become 8-bit planes, when not the data yaml's `ir_norm:` (whose default
    /// is `auto`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ir_norm: Option<IrNorm>,
}

/// Everything a cache build needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// A data yaml, or a dataset folder (its `split.yaml` is preferred over `data.yaml`).
    pub data: PathBuf,
    /// Class names for a folder without data.yaml.
    pub names: Option<Vec<String>>,
    /// Lint levels that decide which pairs are left out (those with error-level findings).
    pub levels: LevelSelectors,
    /// One split by name, or every split of the dataset.
    pub split: Option<String>,
    /// Long side of the stored images (aspect kept; the loader letterboxes).
    pub imgsz: Imgsz,
    /// Output folder (default: [`default_out_dir`]).
    pub out: Option<PathBuf>,
    /// Rebuild even when a cache is current.
    pub force: bool,
    /// Mapping mode, IR planes.
    pub settings: Settings,
}

impl Params {
    /// Every split of `data` at `imgsz` into the default folder, default settings.
    pub fn new(data: impl Into<PathBuf>, imgsz: Imgsz) -> Params {
        Params {
            data: data.into(),
            names: None,
            levels: LevelSelectors::default(),
            split: None,
            imgsz,
            out: None,
            force: false,
            settings: Settings::default(),
        }
    }
}

/// One cache file of the outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheFile {
    /// The split it holds.
    pub split: String,
    /// The file.
    pub path: PathBuf,
    /// Pairs in it.
    pub pairs: usize,
    /// File size.
    pub bytes: u64,
    /// IR planes stored.
    pub ir_planes: u8,
    /// How IR samples were mapped to 8 bits.
    #[serde(default)]
    pub ir_norm: IrNorm,
    /// Size against a YOLOFuse-style 6-channel cache of the same resized pairs.
    pub of_six_channels: f64,
    /// The file was current and kept.
    pub up_to_date: bool,
    /// Seconds the build took (0 when kept).
    pub seconds: f64,
    /// Pairs left out with error-level lint findings (dataset-relative RGB paths).
    pub left_out: Vec<String>,
}

/// A finished cache build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The output folder.
    pub out: PathBuf,
    /// One file per split, in the dataset's order.
    pub files: Vec<CacheFile>,
    /// Pairs over all files.
    pub pairs: usize,
    /// Bytes over all files.
    pub bytes: u64,
    /// Seconds of building (kept files count 0).
    pub build_seconds: f64,
    /// Pairs per second over the files built.
    pub pairs_per_second: f64,
}

/// `cache/<dataset folder>-<imgsz>`, relative to the working directory.
pub fn default_out_dir(dataset: &Dataset, imgsz: Imgsz) -> PathBuf {
    let root = std::path::absolute(&dataset.root).unwrap_or(dataset.root.clone());
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset".into());
    PathBuf::from("cache").join(format!("{name}-{imgsz}"))
}

/// Lints the dataset, then builds (or keeps, when current) one cache per split.
pub fn run(params: &Params, progress: &dyn Progress) -> Result<Outcome, StageError> {
    let mut options = usability_options(&params.levels)?;
    options.ir_norm = params.settings.ir_norm;
    let source = split_or_data(&params.data);
    let (dataset, lint_run) = lint_first(&source, params.names.clone(), &options, progress)?;
    let splits: Vec<usize> = match &params.split {
        None => (0..dataset.splits.len()).collect(),
        Some(wanted) => match dataset.splits.iter().position(|s| &s.name == wanted) {
            Some(i) => vec![i],
            None => {
                let names: Vec<&str> = dataset.splits.iter().map(|s| s.name.as_str()).collect();
                return Err(StageError::Invalid(format!(
                    "split {wanted}: the dataset has {} (or use all)",
                    names.join(", ")
                )));
            }
        },
    };
    let out = params
        .out
        .clone()
        .unwrap_or_else(|| default_out_dir(&dataset, params.imgsz));
    let relative = |p: &Path| dataset.relative(p).to_string_lossy().into_owned();
    let mut files = Vec::with_capacity(splits.len());
    for split in splits {
        let name = &dataset.splits[split].name;
        let in_split: Vec<_> = lint_run
            .pairs
            .iter()
            .filter(|p| p.splits.contains(&split))
            .collect();
        let left_out: Vec<String> = in_split
            .iter()
            .filter(|p| !p.usable)
            .map(|p| relative(&p.rgb))
            .collect();
        let inputs: Vec<BuildInput> = in_split
            .iter()
            .filter(|p| p.usable)
            .filter_map(|p| {
                Some(BuildInput {
                    name: relative(&p.rgb),
                    rgb: p.rgb.clone(),
                    ir: p.ir.clone()?,
                    label: dataset.label_path(&p.rgb),
                })
            })
            .collect();
        let target = out.join(format!("{name}.fkc"));
        let build_options = BuildOptions {
            imgsz: params.imgsz.get(),
            mode: params.settings.mode,
            ir_channels: params.settings.ir_channels,
            ir_norm: params.settings.ir_norm.unwrap_or(dataset.ir_norm),
            split: name.clone(),
            names: dataset.names.clone(),
            skipped: left_out.clone(),
            force: params.force,
        };
        files.push(build_one(&target, &inputs, build_options, progress)?);
    }
    let built: Vec<&CacheFile> = files.iter().filter(|f| !f.up_to_date).collect();
    let build_seconds: f64 = built.iter().map(|f| f.seconds).sum();
    let built_pairs: usize = built.iter().map(|f| f.pairs).sum();
    Ok(Outcome {
        out,
        pairs: files.iter().map(|f| f.pairs).sum(),
        bytes: files.iter().map(|f| f.bytes).sum(),
        build_seconds,
        pairs_per_second: built_pairs as f64 / build_seconds.max(1e-9),
        files,
    })
}

/// Builds (or keeps) one cache file and describes it.
fn build_one(
    target: &Path,
    inputs: &[BuildInput],
    options: BuildOptions,
    progress: &dyn Progress,
) -> Result<CacheFile, StageError> {
    let planes = if options.ir_channels == IrChannels::Colour {
        3
    } else {
        1
    };
    let build_error = |source| StageError::Build {
        path: target.to_path_buf(),
        source,
    };
    let estimate = estimate_bytes(inputs, options.imgsz, planes).map_err(build_error)?;
    let memory = available_memory()
        .map(|m| format!(", {:.2} GiB of memory available", gib(m)))
        .unwrap_or_default();
    progress.note(&format!(
        "{}: {} pairs ({} left out with lint errors) -> {}, about {:.2} GiB{memory}",
        options.split,
        inputs.len(),
        options.skipped.len(),
        target.display(),
        gib(estimate)
    ));
    let started = Instant::now();
    progress.begin("cache", inputs.len() as u64, "pairs");
    let outcome = build(target, inputs, &options, &|| progress.advance());
    progress.end();
    let outcome = outcome.map_err(build_error)?;
    let seconds = started.elapsed().as_secs_f64();
    let cache = Cache::open(target, Some(MapMode::Disk))?;
    // YOLOFuse's RAM cache holds the same resized pairs as 6-channel arrays.
    let six_channels: u64 = (0..cache.len())
        .map(|i| u64::from(cache.row(i).height) * u64::from(cache.row(i).width) * 6)
        .sum();
    let bytes = cache.header().file_len;
    Ok(CacheFile {
        split: options.split,
        path: target.to_path_buf(),
        pairs: cache.len(),
        bytes,
        ir_planes: cache.meta().ir_channels,
        ir_norm: cache.meta().ir_norm,
        of_six_channels: bytes as f64 / six_channels.max(1) as f64,
        up_to_date: outcome == BuildOutcome::UpToDate,
        seconds: if outcome == BuildOutcome::UpToDate {
            0.0
        } else {
            seconds
        },
        left_out: options.skipped,
    })
}

impl Outcome {
    /// A line per cache file (and the pairs left out of it).
    pub fn human(&self) -> String {
        use std::fmt::Write as _;
        let outcome = self;
        let mut s = String::new();
        for file in &outcome.files {
            let target = file.path.display();
            if file.up_to_date {
                let _ = writeln!(s, "{target}: up to date (same inputs and parameters); kept");
            } else {
                let megabytes = file.bytes as f64 / 1e6;
                let _ = writeln!(
                    s,
                    "{target}: {} pairs, {megabytes:.1} MB ({:.2} MB per pair, RGB + {} IR plane{} \
(ir_norm {}); {:.2}x a 6-channel cache), {:.1} s, {:.1} pairs/s",
                    file.pairs,
                    megabytes / file.pairs.max(1) as f64,
                    file.ir_planes,
                    if file.ir_planes == 1 { "" } else { "s" },
                    file.ir_norm,
                    file.of_six_channels,
                    file.seconds,
                    file.pairs as f64 / file.seconds.max(1e-9)
                );
            }
            if !file.left_out.is_empty() {
                let shown: Vec<&str> = file.left_out.iter().take(5).map(String::as_str).collect();
                let _ = writeln!(
                    s,
                    "  left out ({}): {}{}",
                    file.left_out.len(),
                    shown.join(", "),
                    if file.left_out.len() > 5 { ", ..." } else { "" }
                );
            }
        }
        s
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}
