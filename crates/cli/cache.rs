//! `fusekit cache`: build, verify, inspect and look at paired-tensor caches.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use fusekit_cache::{
    BuildInput, BuildOptions, BuildOutcome, Cache, IrChannels, MapMode, available_memory, build,
    estimate_bytes,
};
use fusekit_dataset::Dataset;
use fusekit_lint::{Levels, LintOptions, lint_scan, pairs_to_check};
use serde_json::json;

use crate::draw;
use crate::lint::load_config;
use crate::output::Format;
use crate::progress;

/// Arguments of `fusekit cache`.
#[derive(Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    command: CacheCommand,
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Build one cache file per split: every usable pair resized to --imgsz (long side).
    Build(BuildArgs),
    /// Check the header, index and every record checksum of a cache.
    Verify {
        /// The cache file (.fkc).
        cache: PathBuf,
    },
    /// Print a cache's header, build parameters, sizes and boxes per class.
    Inspect {
        /// The cache file (.fkc).
        cache: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Write sample N's RGB and IR side by side with its boxes drawn, as a PNG.
    Show {
        /// The cache file (.fkc).
        cache: PathBuf,
        /// Sample index (0-based; `inspect` gives the count).
        index: usize,
        /// The PNG to write.
        #[arg(long, default_value = "pair.png")]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Ram,
    Disk,
}

#[derive(Clone, Copy, ValueEnum)]
enum IrArg {
    Auto,
    #[value(name = "1")]
    One,
    #[value(name = "3")]
    Three,
}

/// Arguments of `fusekit cache build`.
#[derive(Args)]
#[command(
    after_long_help = "The dataset is linted first; pairs with error-level findings are \
left out and listed. When DATA is a folder holding split.yaml (written by `fusekit split`), \
its train/val/test lists are used.\n\n\
Each cache is written to a temporary file and renamed into place when complete: an interrupted \
build leaves the previous cache intact, and a rerun starts cleanly. A cache whose inputs \
(paths, sizes, modification times, label contents) and parameters are unchanged is kept."
)]
pub struct BuildArgs {
    /// A data yaml, or a dataset folder (split.yaml is preferred over data.yaml there).
    data: PathBuf,
    /// Which split to cache: a split name of the data yaml, or `all` for each of them.
    #[arg(long, default_value = "all")]
    split: String,
    /// Long side of the stored images (aspect kept; letterboxing happens in the loader).
    #[arg(long, default_value_t = 640)]
    imgsz: u32,
    /// `ram`: the loader maps the file into memory up front (checked to fit before building);
    /// `disk`: pages are read from disk on demand.
    #[arg(long, value_enum, default_value_t = ModeArg::Ram)]
    mode: ModeArg,
    /// IR planes: 1 when the IR images are grey (detected by `auto`), else 3.
    #[arg(long, value_enum, default_value_t = IrArg::Auto)]
    ir_channels: IrArg,
    /// Output folder (default: cache/<dataset folder>-<imgsz>).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Rebuild even when the cache is current.
    #[arg(long)]
    force: bool,
    /// Class names, comma-separated, for a dataset folder without data.yaml.
    #[arg(long, value_delimiter = ',')]
    names: Option<Vec<String>>,
    /// Config file with a [lint] section whose levels decide which pairs are left out
    /// (default: fusekit.toml next to the dataset, then in the working directory).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Runs a cache subcommand.
pub fn run(args: CacheArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        CacheCommand::Build(args) => build_caches(&args),
        CacheCommand::Verify { cache } => verify(&cache),
        CacheCommand::Inspect { cache, format } => inspect(&cache, format),
        CacheCommand::Show { cache, index, out } => show(&cache, index, &out),
    }
}

fn open_dataset(data: &Path, names: Option<Vec<String>>) -> anyhow::Result<Dataset> {
    let split_yaml = data.join(fusekit_split::SPLIT_YAML);
    let source = if data.is_dir() && split_yaml.is_file() {
        split_yaml
    } else {
        data.to_path_buf()
    };
    Dataset::open(&source, names).context("DS001: the dataset description cannot be used")
}

/// `cache/<dataset folder>-<imgsz>`.
fn default_out_dir(dataset: &Dataset, imgsz: u32) -> PathBuf {
    let root = std::path::absolute(&dataset.root).unwrap_or(dataset.root.clone());
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset".into());
    PathBuf::from("cache").join(format!("{name}-{imgsz}"))
}

#[cfg(feature = "train")]
/// Builds (or keeps, when current) the caches of every split of `data` at `imgsz` in the
/// default folder, as `fusekit cache build DATA --imgsz N` would; returns that folder.
pub fn build_for_training(data: &Path, imgsz: u32) -> anyhow::Result<PathBuf> {
    let dataset = open_dataset(data, None)?;
    let out = default_out_dir(&dataset, imgsz);
    let args = BuildArgs {
        data: data.to_path_buf(),
        split: "all".into(),
        imgsz,
        mode: ModeArg::Ram,
        ir_channels: IrArg::Auto,
        out: Some(out.clone()),
        force: false,
        names: None,
        config: None,
    };
    let code = build_caches(&args)?;
    if code != ExitCode::SUCCESS {
        bail!("building the caches of {} failed", data.display());
    }
    Ok(out)
}

/// Runs `fusekit cache build`.
pub fn build_caches(args: &BuildArgs) -> anyhow::Result<ExitCode> {
    let dataset = open_dataset(&args.data, args.names.clone())?;
    let (_, section) = load_config(&args.data, args.config.as_deref())?;
    let mut levels = Levels::default();
    levels.apply(&section.selectors())?;
    let options = LintOptions {
        levels,
        ..LintOptions::default()
    };
    let scan = dataset.scan();
    let bar = progress::bar("lint", pairs_to_check(&scan, &options) as u64, "pairs");
    let run = lint_scan(&dataset, &scan, &options, &|| bar.inc(1));
    bar.finish_and_clear();

    let splits: Vec<usize> = if args.split == "all" {
        (0..dataset.splits.len()).collect()
    } else {
        match dataset.splits.iter().position(|s| s.name == args.split) {
            Some(i) => vec![i],
            None => {
                let names: Vec<&str> = dataset.splits.iter().map(|s| s.name.as_str()).collect();
                bail!(
                    "--split {}: the dataset has {} (or use all)",
                    args.split,
                    names.join(", ")
                );
            }
        }
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| default_out_dir(&dataset, args.imgsz));
    let relative = |p: &Path| dataset.relative(p).to_string_lossy().into_owned();
    for split in splits {
        let name = &dataset.splits[split].name;
        let in_split: Vec<_> = run
            .pairs
            .iter()
            .filter(|p| p.splits.contains(&split))
            .collect();
        let skipped: Vec<String> = in_split
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
        let ir_channels = match args.ir_channels {
            IrArg::Auto => IrChannels::Auto,
            IrArg::One => IrChannels::Grey,
            IrArg::Three => IrChannels::Colour,
        };
        let mode = match args.mode {
            ModeArg::Ram => MapMode::Ram,
            ModeArg::Disk => MapMode::Disk,
        };
        let planes = if matches!(ir_channels, IrChannels::Colour) {
            3
        } else {
            1
        };
        let estimate = estimate_bytes(&inputs, args.imgsz, planes)
            .with_context(|| format!("estimating {}", target.display()))?;
        let memory = available_memory()
            .map(|m| format!(", {:.2} GiB of memory available", gib(m)))
            .unwrap_or_default();
        eprintln!(
            "{name}: {} pairs ({} left out with lint errors) -> {}, about {:.2} GiB{memory}",
            inputs.len(),
            skipped.len(),
            target.display(),
            gib(estimate)
        );
        let options = BuildOptions {
            imgsz: args.imgsz,
            mode,
            ir_channels,
            split: name.clone(),
            names: dataset.names.clone(),
            skipped: skipped.clone(),
            force: args.force,
        };
        let started = Instant::now();
        let bar = progress::bar("cache", inputs.len() as u64, "pairs");
        let outcome = build(&target, &inputs, &options, &|| bar.inc(1));
        bar.finish_and_clear();
        match outcome.with_context(|| format!("building {}", target.display()))? {
            BuildOutcome::UpToDate => println!(
                "{}: up to date (same inputs and parameters); kept",
                target.display()
            ),
            BuildOutcome::Built {
                samples,
                bytes,
                ir_channels,
            } => {
                let seconds = started.elapsed().as_secs_f64();
                // YOLOFuse's RAM cache holds the same resized pairs as 6-channel arrays.
                let yolofuse: u64 = Cache::open(&target, Some(MapMode::Disk))
                    .map(|c| {
                        (0..c.len())
                            .map(|i| u64::from(c.row(i).height) * u64::from(c.row(i).width) * 6)
                            .sum()
                    })
                    .unwrap_or(0);
                println!(
                    "{}: {samples} pairs, {:.1} MB ({:.2} MB per pair, RGB + {ir_channels} IR plane{}; {:.2}x a 6-channel cache), {:.1} s, {:.1} pairs/s",
                    target.display(),
                    bytes as f64 / 1e6,
                    bytes as f64 / 1e6 / samples as f64,
                    if ir_channels == 1 { "" } else { "s" },
                    bytes as f64 / yolofuse.max(1) as f64,
                    seconds,
                    samples as f64 / seconds
                );
            }
        }
        if !skipped.is_empty() {
            println!(
                "  left out ({}): {}{}",
                skipped.len(),
                skipped
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                if skipped.len() > 5 { ", ..." } else { "" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

fn verify(path: &Path) -> anyhow::Result<ExitCode> {
    let cache = Cache::open(path, Some(MapMode::Disk))?;
    let bar = progress::bar("verify", cache.len() as u64, "records");
    let failed = cache.verify_all(&|| bar.inc(1));
    bar.finish_and_clear();
    if failed.is_empty() {
        println!(
            "{}: header, index and {} records verified",
            path.display(),
            cache.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for &i in &failed {
        println!(
            "{}: record {i} ({}) fails its checksum",
            path.display(),
            cache.meta().samples[i]
        );
    }
    println!(
        "{} of {} records corrupted; rebuild with `fusekit cache build --force`",
        failed.len(),
        cache.len()
    );
    Ok(ExitCode::from(1))
}

fn inspect(path: &Path, format: Format) -> anyhow::Result<ExitCode> {
    let cache = Cache::open(path, Some(MapMode::Disk))?;
    let meta = cache.meta();
    let mut boxes = vec![0u64; meta.names.len()];
    let mut background = 0;
    for i in 0..cache.len() {
        let sample = cache.sample(i)?;
        background += usize::from(sample.boxes.is_empty());
        for b in &sample.boxes {
            let class = b[0] as usize;
            if class >= boxes.len() {
                boxes.resize(class + 1, 0);
            }
            boxes[class] += 1;
        }
    }
    let bytes = cache.header().file_len;
    let classes: Vec<_> = boxes
        .iter()
        .enumerate()
        .map(|(id, &n)| json!({"id": id, "name": meta.names.get(id).cloned().unwrap_or_else(|| format!("class{id}")), "boxes": n}))
        .collect();
    let report = json!({
        "path": path,
        "format_version": fusekit_cache::format::FORMAT_VERSION,
        "samples": cache.len(),
        "bytes": bytes,
        "bytes_per_sample": bytes as f64 / cache.len().max(1) as f64,
        "imgsz": meta.imgsz,
        "planes": {"rgb": 3, "ir": meta.ir_channels},
        "mode": meta.mode,
        "split": meta.split,
        "fingerprint": meta.fingerprint,
        "written_by": meta.written_by,
        "skipped": meta.skipped,
        "background_images": background,
        "classes": classes,
    });
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Human => {
            println!(
                "{} (fusekit cache v{}, {})",
                path.display(),
                fusekit_cache::format::FORMAT_VERSION,
                meta.written_by
            );
            println!(
                "  split {}: {} samples, {:.1} MB ({:.2} MB per sample)",
                meta.split,
                cache.len(),
                bytes as f64 / 1e6,
                bytes as f64 / 1e6 / cache.len().max(1) as f64
            );
            println!(
                "  imgsz {} (long side), planes: 3 RGB + {} IR, u8, mode {}",
                meta.imgsz, meta.ir_channels, meta.mode
            );
            println!(
                "  fingerprint {}; {} pairs left out at build",
                meta.fingerprint,
                meta.skipped.len()
            );
            println!("  background images: {background}");
            for c in &classes {
                println!(
                    "  class {} {}: {} boxes",
                    c["id"],
                    c["name"].as_str().unwrap_or(""),
                    c["boxes"]
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show(path: &Path, index: usize, out: &Path) -> anyhow::Result<ExitCode> {
    let cache = Cache::open(path, Some(MapMode::Disk))?;
    if index >= cache.len() {
        bail!(
            "{}: sample {index} does not exist (the cache has {})",
            path.display(),
            cache.len()
        );
    }
    let sample = cache.sample(index)?;
    let (w, h) = (sample.width as f32, sample.height as f32);
    let mut picture = draw::side_by_side(&sample, cache.meta().ir_channels as usize);
    for b in &sample.boxes {
        let corners = [
            (b[1] - b[3] / 2.0) * w,
            (b[2] - b[4] / 2.0) * h,
            (b[1] + b[3] / 2.0) * w,
            (b[2] + b[4] / 2.0) * h,
        ];
        draw::draw_box(&mut picture, corners, draw::class_colour(0));
    }
    picture
        .save(out)
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "{}: sample {index} ({}), {} boxes -> {}",
        path.display(),
        cache.meta().samples[index],
        sample.boxes.len(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}
