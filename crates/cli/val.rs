//! `fusekit val`: validate weights on a cache.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use fusekit_cache::{Cache, Loader, LoaderOptions};
use fusekit_detect::{DetectionLoss, NmsOptions, weights};
use fusekit_train::{parse_device, validate};
use serde_json::json;

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
    let (_vs, model) = weights::load(&args.weights, device)?;
    let cache = Arc::new(Cache::open(&args.cache, None)?);
    let config = model.config();
    if cache.meta().names.len() != config.names.len()
        || i64::from(cache.meta().ir_channels) != config.ir_channels
    {
        bail!(
            "{} has {} classes and {} IR planes, the weights {} and {}",
            args.cache.display(),
            cache.meta().names.len(),
            cache.meta().ir_channels,
            config.names.len(),
            config.ir_channels
        );
    }
    let loader = Loader::new(
        cache,
        LoaderOptions {
            batch: args.batch,
            shuffle: false,
            ..LoaderOptions::default()
        },
    );
    let options = NmsOptions {
        conf: args.conf,
        iou: args.iou,
        max_det: args.max_det,
        ..NmsOptions::default()
    };
    let result = validate(&model, &loader, device, &DetectionLoss::default(), &options)
        .with_context(|| format!("validating {}", args.weights.display()))?;
    let m = &result.metrics;
    match args.format {
        Format::Json => println!(
            "{}",
            json!({"images": result.images, "metrics": m, "val_loss": result.loss})
        ),
        Format::Human => {
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
                let name = config
                    .names
                    .get(c.class as usize)
                    .map_or("?", String::as_str);
                println!(
                    "{:<12} {:>7} {:>9} {:>7.3} {:>7.3} {:>7.3} {:>9.3}",
                    name, c.images, c.truths, c.precision, c.recall, c.ap50, c.ap50_95
                );
            }
            println!(
                "COCO: mAP50-95 {:.3} mAP50 {:.3} mAP75 {:.3}; val loss box {:.3} cls {:.3} dfl {:.3}",
                m.coco.map50_95,
                m.coco.map50,
                m.coco.map75,
                result.loss[0],
                result.loss[1],
                result.loss[2]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
