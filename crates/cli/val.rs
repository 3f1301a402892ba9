//! `fusekit val`: validate weights on a cache.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use fusekit_cache::Cache;
use fusekit_detect::{DetectionLoss, NmsOptions, weights};
use fusekit_loader::{Loader, LoaderOptions};
use fusekit_train::{Validation, parse_device, validate};
use serde_json::json;
use tch::Device;

use crate::output::Format;

/// Validate weights on a cache: precision, recall, mAP50, mAP50-95 (Ultralytics' and COCO's)
/// and per-class AP, with Ultralytics' validation settings by default.
#[derive(Args)]
pub struct ValArgs {
    /// Weights written by `fusekit train`.
    #[arg(long)]
    weights: PathBuf,
    /// The cache to validate on (e.g. cache/NAME-640/val.fkc).
    #[arg(long)]
    cache: PathBuf,
    /// Images per batch.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Minimum confidence of a detection.
    #[arg(long, default_value_t = 0.001)]
    conf: f32,
    /// NMS IoU threshold.
    #[arg(long, default_value_t = 0.7)]
    iou: f32,
    /// Detections kept per image.
    #[arg(long, default_value_t = 300)]
    max_det: usize,
    /// `auto` (CUDA 0 when present), `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto")]
    device: String,
    /// `human` prints a table; `json` one object.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
}

/// Runs `fusekit val`.
pub fn run(args: &ValArgs) -> anyhow::Result<ExitCode> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let device = parse_device(&args.device)?;
    let options = NmsOptions {
        conf: args.conf,
        iou: args.iou,
        max_det: args.max_det,
        ..NmsOptions::default()
    };
    let (result, names) =
        validate_weights(&args.weights, &args.cache, device, args.batch, &options)?;
    match args.format {
        Format::Json => println!(
            "{}",
            json!({"images": result.images, "metrics": result.metrics, "val_loss": result.loss})
        ),
        Format::Human => print_table(&result, &names),
    }
    Ok(ExitCode::SUCCESS)
}

/// Validates the weights file `weights` on the cache `cache` (no augmentation, fixed order);
/// returns the result and the model's class names.
pub fn validate_weights(
    weights: &Path,
    cache: &Path,
    device: Device,
    batch: usize,
    nms: &NmsOptions,
) -> anyhow::Result<(Validation, Vec<String>)> {
    let (_vs, model) = weights::load(weights, device)?;
    let cache_file = Arc::new(Cache::open(cache, None)?);
    let config = model.config();
    if cache_file.meta().names.len() != config.names.len()
        || i64::from(cache_file.meta().ir_channels) != config.ir_channels
    {
        bail!(
            "{} has {} classes and {} IR planes, the weights {} and {}",
            cache.display(),
            cache_file.meta().names.len(),
            cache_file.meta().ir_channels,
            config.names.len(),
            config.ir_channels
        );
    }
    let loader = Loader::new(
        cache_file,
        LoaderOptions {
            batch,
            shuffle: false,
            ..LoaderOptions::default()
        },
    );
    let result = validate(&model, &loader, device, &DetectionLoss::default(), nms)
        .with_context(|| format!("validating {}", weights.display()))?;
    Ok((result, config.names.clone()))
}

/// Prints Ultralytics' validation table: all classes, then one row per class, then COCO's
/// numbers and the validation losses.
pub fn print_table(result: &Validation, names: &[String]) {
    let m = &result.metrics;
    println!(
        "{:<12} {:>7} {:>9} {:>7} {:>7} {:>7} {:>9}",
        "class", "images", "instances", "P", "R", "mAP50", "mAP50-95"
    );
    let instances: usize = m.classes.iter().map(|c| c.truths).sum();
    println!(
        "{:<12} {:>7} {:>9} {:>7.3} {:>7.3} {:>7.3} {:>9.3}",
        "all", result.images, instances, m.precision, m.recall, m.map50, m.map50_95
    );
    for c in &m.classes {
        let name = names.get(c.class as usize).map_or("?", String::as_str);
        println!(
            "{:<12} {:>7} {:>9} {:>7.3} {:>7.3} {:>7.3} {:>9.3}",
            name, c.images, c.truths, c.precision, c.recall, c.ap50, c.ap50_95
        );
    }
    println!(
        "COCO: mAP50-95 {:.3} mAP50 {:.3} mAP75 {:.3}; val loss box {:.3} cls {:.3} dfl {:.3}",
        m.coco.map50_95, m.coco.map50, m.coco.map75, result.loss[0], result.loss[1], result.loss[2]
    );
}
