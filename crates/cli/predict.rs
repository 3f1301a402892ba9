//! `fusekit predict`: run a trained detector on RGB + IR pairs.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use fusekit_cache::{BuildInput, Record, Sample, prepare_pair};
use fusekit_dataset::Dataset;
use fusekit_detect::{Detection, NmsOptions, non_max_suppression, weights};
use fusekit_loader::Letterbox;
use fusekit_train::parse_device;
use serde_json::json;
use tch::{Device, Tensor};

use crate::draw;
use crate::output::Format;

/// Detect objects in RGB + IR pairs with weights written by fusekit.
///
/// Give one pair as two paths, or `--source` a dataset (folder or data yaml) to predict every
/// RGB image that has an IR partner. Each pair is resized and letterboxed exactly as the cache
/// does; boxes are reported in original image pixels. Writes `predictions.jsonl` (one record
/// per pair) and, unless `--no-images`, a picture per pair with the boxes drawn on the RGB
/// and IR images side by side, into `--out`.
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
    #[arg(long, default_value_t = 640)]
    imgsz: u32,
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
    /// `human` prints a line per pair; `json` prints the JSONL records.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
}

/// Runs `fusekit predict`.
pub fn run(args: &PredictArgs) -> anyhow::Result<ExitCode> {
    execute(args, &mut std::io::stdout())?;
    Ok(ExitCode::SUCCESS)
}

/// Pairs predicted and detections kept.
pub struct Predicted {
    /// Pairs.
    pub pairs: usize,
    /// Detections over all pairs.
    pub detections: usize,
}

/// Predicts as `fusekit predict` does, writing its lines to `out`.
pub fn execute(args: &PredictArgs, out: &mut dyn Write) -> anyhow::Result<Predicted> {
    if args.imgsz == 0 || !args.imgsz.is_multiple_of(32) {
        bail!("--imgsz {} is not a positive multiple of 32", args.imgsz);
    }
    if !(0.0..=1.0).contains(&args.conf) || !(0.0..=1.0).contains(&args.iou) {
        bail!("--conf and --iou must lie between 0 and 1");
    }
    let device = parse_device(&args.device)?;
    let (_vs, model) = weights::load(&args.weights, device)?;
    let config = model.config().clone();
    let pairs = pairs(args)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let jsonl_path = args.out.join("predictions.jsonl");
    let mut jsonl = BufWriter::new(
        File::create(&jsonl_path).with_context(|| format!("creating {}", jsonl_path.display()))?,
    );
    let options = NmsOptions {
        conf: args.conf,
        iou: args.iou,
        max_det: args.max_det,
        ..NmsOptions::predict()
    };
    let size = args.imgsz as usize;
    let planes = config.input_planes() as usize;
    let mut input = vec![0u8; planes * size * size];
    let mut total = 0;
    for (index, pair) in pairs.iter().enumerate() {
        let record = prepare_pair(pair, args.imgsz, config.ir_channels as u8)?;
        let sample = sample_of(&record);
        let fit = Letterbox::new(
            [record.source_width, record.source_height],
            [record.width, record.height],
            args.imgsz,
        );
        fit.place(&sample, &mut input);
        let images = Tensor::from_slice(&input)
            .view([1, planes as i64, size as i64, size as i64])
            .to_device(device);
        let predictions = model.predict(&images);
        let detections = non_max_suppression(&predictions, &options).swap_remove(0);
        total += detections.len();
        let record_json = json!({
            "rgb": pair.rgb,
            "ir": pair.ir,
            "width": record.source_width,
            "height": record.source_height,
            "detections": detections.iter().map(|d| json!({
                "class": d.class,
                "name": config.names.get(d.class as usize),
                "score": d.score,
                "box": fit.to_original(d.bbox),
            })).collect::<Vec<_>>(),
        });
        writeln!(jsonl, "{record_json}")?;
        if !args.no_images {
            let picture_path = args.out.join(format!("{index:05}_{}.jpg", stem(&pair.rgb)));
            picture(&sample, config.ir_channels as usize, &detections, &fit)
                .save(&picture_path)
                .with_context(|| format!("writing {}", picture_path.display()))?;
        }
        match args.format {
            Format::Json => writeln!(out, "{record_json}")?,
            Format::Human => writeln!(
                out,
                "{}: {}",
                pair.rgb.display(),
                summary(&detections, &config.names)
            )?,
        }
    }
    jsonl.flush()?;
    if args.format == Format::Human {
        writeln!(
            out,
            "{} pairs, {total} detections on {} -> {}",
            pairs.len(),
            device_name(device),
            args.out.display()
        )?;
    }
    Ok(Predicted {
        pairs: pairs.len(),
        detections: total,
    })
}

fn pairs(args: &PredictArgs) -> anyhow::Result<Vec<BuildInput>> {
    if let [rgb, ir] = args.pair.as_slice() {
        for path in [rgb, ir] {
            if !path.is_file() {
                bail!("{}: no such image", path.display());
            }
        }
        return Ok(vec![BuildInput {
            name: rgb.display().to_string(),
            rgb: rgb.clone(),
            ir: ir.clone(),
            label: None,
        }]);
    }
    let Some(source) = &args.source else {
        bail!("give an RGB and an IR image, or --source");
    };
    let dataset = Dataset::open(source, None)?;
    let scan = dataset.scan();
    let pairs: Vec<BuildInput> = scan
        .pairs
        .iter()
        .filter_map(|p| {
            Some(BuildInput {
                name: p.rgb.display().to_string(),
                rgb: p.rgb.clone(),
                ir: p.ir.path()?.to_path_buf(),
                label: None,
            })
        })
        .collect();
    if pairs.is_empty() {
        bail!("{}: no RGB image with an IR partner", source.display());
    }
    Ok(pairs)
}

fn sample_of(record: &Record) -> Sample<'_> {
    Sample {
        height: record.height as usize,
        width: record.width as usize,
        planes: &record.planes,
        boxes: Vec::new(),
    }
}

/// The stored images side by side with the detections (network pixels) drawn.
fn picture(
    sample: &Sample<'_>,
    ir_planes: usize,
    detections: &[Detection],
    fit: &Letterbox,
) -> image::RgbImage {
    let mut picture = draw::side_by_side(sample, ir_planes);
    for d in detections {
        draw::draw_box(
            &mut picture,
            fit.to_stored(d.bbox),
            draw::class_colour(d.class),
        );
    }
    picture
}

fn summary(detections: &[Detection], names: &[String]) -> String {
    if detections.is_empty() {
        return "no detections".into();
    }
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for d in detections {
        let name = names.get(d.class as usize).map_or("?", String::as_str);
        *counts.entry(name).or_default() += 1;
    }
    counts
        .iter()
        .map(|(name, n)| format!("{n} {name}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    }
}
