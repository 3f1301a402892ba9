//! `fusekit val`: validate weights on a cache or straight from a dataset.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use fusekit_detect::NmsOptions;
use fusekit_hyp::Imgsz;
use fusekit_stages::val::{Outcome, Params, Source};
use serde_json::json;

use crate::output::Format;

/// Validate weights on a cache, or straight from a dataset: precision, recall, mAP50,
/// mAP50-95 (Ultralytics' and COCO's) and per-class AP, with Ultralytics' validation settings
/// by default.
///
/// With `--data`, the split is decoded exactly as `fusekit cache build` decodes it (in
/// parallel, IR mapped by `--ir-norm`, pairs with error-level lint findings left out) into a
/// temporary cache in the system's temporary folder, removed afterwards: the numbers are those
/// of a cache built from the same dataset.
#[derive(Args)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["cache", "data"]))]
pub struct ValArgs {
    /// Weights written by `fusekit train`.
    #[arg(long)]
    weights: PathBuf,
    /// The cache to validate on (e.g. cache/NAME-640/val.fkc).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// A data yaml or dataset folder (its split.yaml first) to validate on without a cache.
    #[arg(long)]
    data: Option<PathBuf>,
    /// With --data: the split to validate on.
    #[arg(long, default_value = "val", requires = "data")]
    split: String,
    /// With --data: the size images are stored and letterboxed at (a multiple of 32).
    #[arg(long, default_value_t = Imgsz::DEFAULT, requires = "data")]
    imgsz: Imgsz,
    /// With --data: how IR samples become 8 bits (auto, minmax, fixed:LO,HI or none), as the
    /// training cache was built. Default: the data yaml's `ir_norm:`, else auto.
    #[arg(long, value_name = "MODE", requires = "data")]
    ir_norm: Option<fusekit_dataset::IrNorm>,
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
    /// Write the PR / F1 / P / R curves, the confusion matrices and the first batch's
    /// pictures (`val_batch0_labels.jpg`, `val_batch0_pred.jpg`) into this folder, under
    /// Ultralytics' file names.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// Runs `fusekit val`.
pub fn run(args: &ValArgs) -> anyhow::Result<ExitCode> {
    let source = match (&args.cache, &args.data) {
        (Some(cache), _) => Source::Cache(cache.clone()),
        (None, Some(data)) => Source::Dataset {
            data: data.clone(),
            split: args.split.clone(),
            imgsz: args.imgsz,
            ir_norm: args.ir_norm,
        },
        (None, None) => anyhow::bail!("give --cache or --data"),
    };
    let params = Params {
        weights: args.weights.clone(),
        source,
        batch: args.batch,
        nms: NmsOptions {
            conf: args.conf,
            iou: args.iou,
            max_det: args.max_det,
            ..NmsOptions::default()
        },
        device: args.device.clone(),
        plots: args.out.clone(),
    };
    let outcome = fusekit_stages::val::run(&params, &crate::progress::Bars::default())?;
    match args.format {
        Format::Json => println!(
            "{}",
            json!({"images": outcome.images, "metrics": outcome.metrics, "val_loss": outcome.val_loss, "plots": outcome.plots})
        ),
        Format::Human => {
            print_table(&outcome);
            if let Some(dir) = &args.out {
                println!("plots: {}", dir.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints Ultralytics' validation table: all classes, then one row per class, then COCO's
/// numbers and the validation losses.
pub fn print_table(result: &Outcome) {
    let m = &result.metrics;
    let names = &result.names;
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
        m.coco.map50_95,
        m.coco.map50,
        m.coco.map75,
        result.val_loss[0],
        result.val_loss[1],
        result.val_loss[2]
    );
}
