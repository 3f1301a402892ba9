//! `fusekit cache`: build, verify, inspect and look at paired-tensor caches.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use fusekit_cache::{Cache, IrChannels, MapMode};
use fusekit_dataset::IrNorm;
use fusekit_hyp::Imgsz;
use fusekit_stages::cache::{Params, Settings};
use fusekit_stages::draw;
use serde_json::json;

use crate::lint::config_levels;
use crate::output::Format;
use crate::progress::{self, Bars};

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
    /// Long side of the stored images, a multiple of 32: the size you will train at (aspect
    /// kept; letterboxing happens in the loader).
    #[arg(long, default_value_t = Imgsz::DEFAULT)]
    imgsz: Imgsz,
    /// `ram`: the loader maps the file into memory up front (checked to fit before building);
    /// `disk`: pages are read from disk on demand.
    #[arg(long, default_value = "ram")]
    mode: MapMode,
    /// IR planes: `1` when the IR images are grey (detected by `auto`), else `3`.
    #[arg(long, default_value = "auto")]
    ir_channels: IrChannels,
    /// How IR samples become 8-bit planes: auto (8-bit kept, 16-bit stretched per image from
    /// the 1st to the 99th percentile), minmax, fixed:LO,HI (one mapping for every image, in
    /// raw counts), none (16-bit shifted to 8 bits). Default: the data yaml's `ir_norm:`, else
    /// auto.
    #[arg(long, value_name = "MODE")]
    ir_norm: Option<IrNorm>,
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

impl BuildArgs {
    /// The stage's parameters; the config file's `[lint]` levels decide which pairs are out.
    fn params(&self) -> anyhow::Result<Params> {
        Ok(Params {
            data: self.data.clone(),
            names: self.names.clone(),
            levels: config_levels(&self.data, self.config.as_deref())?,
            split: (self.split != "all").then(|| self.split.clone()),
            imgsz: self.imgsz,
            out: self.out.clone(),
            force: self.force,
            settings: Settings {
                mode: self.mode,
                ir_channels: self.ir_channels,
                ir_norm: self.ir_norm,
            },
        })
    }
}

/// Runs `fusekit cache build`: progress and plans on stderr, a line per cache on stdout.
fn build_caches(args: &BuildArgs) -> anyhow::Result<ExitCode> {
    let outcome = fusekit_stages::cache::run(&args.params()?, &Bars::default())?;
    print!("{}", outcome.human());
    Ok(ExitCode::SUCCESS)
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
        "ir_norm": meta.ir_norm,
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
                "  imgsz {} (long side), planes: 3 RGB + {} IR (ir_norm {}), u8, mode {}",
                meta.imgsz, meta.ir_channels, meta.ir_norm, meta.mode
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
