//! `fusekit predict`: run a trained detector on RGB + IR pairs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use fusekit_detect::NmsOptions;
use fusekit_hyp::Imgsz;
use fusekit_stages::predict::{PairPrediction, Params, SaveOptions, Source};

use crate::output::Format;

/// Detect objects in RGB + IR pairs with weights written by fusekit.
///
/// Give one pair as two paths, or `--source` a dataset (folder or data yaml) to predict every
/// RGB image that has an IR partner. Each pair is resized and letterboxed exactly as the cache
/// does; boxes are reported in original image pixels. Writes `predictions.jsonl` (one record
/// per pair) and, unless `--no-images`, a picture per pair at the source resolution: the RGB
/// and IR images side by side, each box outlined on both in its class colour with its class
/// name and score (JPEG for a JPEG source, PNG otherwise), into `--out`.
#[derive(Args)]
pub struct PredictArgs {
    /// Weights (`.safetensors` written by fusekit, model configuration included).
    #[arg(long)]
    weights: PathBuf,
    /// An RGB image and its IR partner.
    #[arg(num_args = 2, value_names = ["RGB", "IR"], required_unless_present = "source")]
    pair: Vec<PathBuf>,
    /// A dataset folder or data yaml: predict every pair in it.
    #[arg(long, conflicts_with = "pair")]
    source: Option<PathBuf>,
    /// Network input size (long side), a multiple of 32.
    #[arg(long, default_value_t = Imgsz::DEFAULT)]
    imgsz: Imgsz,
    /// How IR samples become 8 bits, as the training cache was built (`fusekit cache inspect`
    /// shows it): auto, minmax, fixed:LO,HI or none. Default: the --source data yaml's
    /// `ir_norm:`, else auto.
    #[arg(long, value_name = "MODE")]
    ir_norm: Option<fusekit_dataset::IrNorm>,
    /// Minimum confidence of a detection.
    #[arg(long, default_value_t = 0.25)]
    conf: f32,
    /// NMS IoU threshold (same class).
    #[arg(long, default_value_t = 0.7)]
    iou: f32,
    /// Detections kept per pair.
    #[arg(long, default_value_t = 300)]
    max_det: usize,
    /// Output folder.
    #[arg(long, default_value = "runs/predict")]
    out: PathBuf,
    /// `auto` (CUDA 0 when present), `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Only write predictions.jsonl, no pictures.
    #[arg(long)]
    no_images: bool,
    /// Write `labels/<stem>.txt` per pair with detections: YOLO rows `class cx cy w h`,
    /// normalised to the source image.
    #[arg(long)]
    save_txt: bool,
    /// With --save-txt, append each detection's score to its row.
    #[arg(long, requires = "save_txt")]
    save_conf: bool,
    /// Write `predictions.json`: COCO-style detections (image_id = the RGB file's stem,
    /// category_id, bbox x y w h in source pixels, score).
    #[arg(long)]
    save_json: bool,
    /// `human` prints a line per pair; `json` prints the JSONL records.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
}

impl PredictArgs {
    /// The stage's parameters.
    fn params(&self) -> anyhow::Result<Params> {
        let source = match (self.pair.as_slice(), &self.source) {
            ([rgb, ir], _) => Source::Pair {
                rgb: rgb.clone(),
                ir: ir.clone(),
            },
            (_, Some(source)) => Source::Dataset(source.clone()),
            _ => bail!("give an RGB and an IR image, or --source"),
        };
        Ok(Params {
            weights: self.weights.clone(),
            source,
            imgsz: self.imgsz,
            ir_norm: self.ir_norm,
            nms: NmsOptions {
                conf: self.conf,
                iou: self.iou,
                max_det: self.max_det,
                ..NmsOptions::predict()
            },
            out: self.out.clone(),
            device: self.device.clone(),
            pictures: !self.no_images,
            save: SaveOptions {
                txt: self.save_txt,
                conf: self.save_conf,
                json: self.save_json,
            },
        })
    }
}

/// Runs `fusekit predict`: a line (or a JSON record) per pair.
pub fn run(args: &PredictArgs) -> anyhow::Result<ExitCode> {
    let outcome = fusekit_stages::predict::run(&args.params()?, &mut |pair| match args.format {
        Format::Json => println!(
            "{}",
            serde_json::to_string(pair).expect("a prediction serialises")
        ),
        Format::Human => println!("{}: {}", pair.rgb.display(), summary(pair)),
    })?;
    if args.format == Format::Human {
        println!(
            "{} pairs, {} detections on {} -> {}",
            outcome.pairs,
            outcome.detections,
            outcome.device,
            args.out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn summary(pair: &PairPrediction) -> String {
    if pair.detections.is_empty() {
        return "no detections".into();
    }
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for d in &pair.detections {
        *counts.entry(d.name.as_deref().unwrap_or("?")).or_default() += 1;
    }
    counts
        .iter()
        .map(|(name, n)| format!("{n} {name}"))
        .collect::<Vec<_>>()
        .join(", ")
}
