//! The predict stage: a trained detector on RGB + IR pairs, boxes in original pixels.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use fusekit_cache::{BuildInput, Record, Sample, prepare_pair};
use fusekit_dataset::{Dataset, IrNorm};
use fusekit_detect::{Detection, NmsOptions, non_max_suppression, weights};
use fusekit_hyp::Imgsz;
use fusekit_loader::Letterbox;
use fusekit_train::parse_device;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::train::device_name;
use crate::{StageError, draw};

/// What to predict on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// One RGB image and its IR partner.
    Pair {
        /// The RGB image.
        rgb: PathBuf,
        /// The IR image.
        ir: PathBuf,
    },
    /// Every RGB image with an IR partner in a dataset (folder or data yaml).
    Dataset(PathBuf),
}

/// Everything a prediction run needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// Weights written by fusekit (model configuration included).
    pub weights: PathBuf,
    /// The pairs.
    pub source: Source,
    /// Network input size.
    pub imgsz: Imgsz,
    /// How IR samples become 8 bits, when not the dataset's `ir_norm:` (`auto` for a pair):
    /// the mode the training cache was built with.
    pub ir_norm: Option<IrNorm>,
    /// Minimum confidence, NMS IoU threshold, detections per pair.
    pub nms: NmsOptions,
    /// Output folder: `predictions.jsonl` and the pictures.
    pub out: PathBuf,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Write a picture per pair.
    pub pictures: bool,
}

/// One detection, in original image pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictedBox {
    /// Class id.
    pub class: u32,
    /// Class name, when the weights know it.
    pub name: Option<String>,
    /// Confidence.
    pub score: f32,
    /// Corners x1, y1, x2, y2 in original pixels.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
}

/// One pair's predictions: a line of `predictions.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairPrediction {
    /// The RGB image.
    pub rgb: PathBuf,
    /// The IR image.
    pub ir: PathBuf,
    /// Original width.
    pub width: u32,
    /// Original height.
    pub height: u32,
    /// Detections, best first.
    pub detections: Vec<PredictedBox>,
}

/// A finished prediction run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Pairs predicted.
    pub pairs: usize,
    /// Detections over all pairs.
    pub detections: usize,
    /// `predictions.jsonl`.
    pub predictions: PathBuf,
    /// Pictures written.
    pub pictures: usize,
    /// `cpu` or `cuda:N`.
    pub device: String,
}

/// Predicts every pair of `params.source`; `each` sees every pair's predictions as they come.
pub fn run(params: &Params, each: &mut dyn FnMut(&PairPrediction)) -> Result<Outcome, StageError> {
    let nms = &params.nms;
    if !(0.0..=1.0).contains(&nms.conf) || !(0.0..=1.0).contains(&nms.iou) {
        return Err(StageError::Invalid(
            "conf and iou must lie between 0 and 1".into(),
        ));
    }
    let device = parse_device(&params.device)?;
    let (_vs, model) = weights::load(&params.weights, device)?;
    let config = model.config().clone();
    let (pairs, source_ir_norm) = pairs(&params.source)?;
    let ir_norm = params.ir_norm.unwrap_or(source_ir_norm);
    std::fs::create_dir_all(&params.out).map_err(StageError::io("creating", &params.out))?;
    let jsonl_path = params.out.join("predictions.jsonl");
    let write_error = StageError::io("writing", &jsonl_path);
    let mut jsonl =
        BufWriter::new(File::create(&jsonl_path).map_err(StageError::io("creating", &jsonl_path))?);
    let imgsz = params.imgsz.get();
    let size = imgsz as usize;
    let planes = config.input_planes() as usize;
    let mut input = vec![0u8; planes * size * size];
    let (mut total, mut pictures) = (0, 0);
    let mut io_result = Ok(());
    for (index, pair) in pairs.iter().enumerate() {
        let record =
            prepare_pair(pair, imgsz, config.ir_channels as u8, ir_norm).map_err(|source| {
                StageError::Build {
                    path: pair.rgb.clone(),
                    source,
                }
            })?;
        let sample = sample_of(&record);
        let fit = Letterbox::new(
            [record.source_width, record.source_height],
            [record.width, record.height],
            imgsz,
        );
        fit.place(&sample, &mut input);
        let images = Tensor::from_slice(&input)
            .view([1, planes as i64, size as i64, size as i64])
            .to_device(device);
        let predictions = model.predict(&images);
        let detections = non_max_suppression(&predictions, nms).swap_remove(0);
        total += detections.len();
        let predicted = PairPrediction {
            rgb: pair.rgb.clone(),
            ir: pair.ir.clone(),
            width: record.source_width,
            height: record.source_height,
            detections: detections
                .iter()
                .map(|d| PredictedBox {
                    class: d.class,
                    name: config.names.get(d.class as usize).cloned(),
                    score: d.score,
                    bbox: fit.to_original(d.bbox),
                })
                .collect(),
        };
        let line = serde_json::to_string(&predicted).expect("a prediction serialises");
        io_result = io_result.and_then(|()| writeln!(jsonl, "{line}"));
        if params.pictures {
            let picture_path = params
                .out
                .join(format!("{index:05}_{}.jpg", stem(&pair.rgb)));
            picture(&sample, config.ir_channels as usize, &detections, &fit)
                .save(&picture_path)
                .map_err(|e| StageError::Io {
                    action: "writing",
                    path: picture_path.clone(),
                    source: std::io::Error::other(e),
                })?;
            pictures += 1;
        }
        each(&predicted);
    }
    io_result
        .and_then(|()| jsonl.flush())
        .map_err(write_error)?;
    Ok(Outcome {
        pairs: pairs.len(),
        detections: total,
        predictions: jsonl_path,
        pictures,
        device: device_name(device),
    })
}

/// The pairs of `source` and the IR normalisation it asks for (a dataset's `ir_norm:`).
fn pairs(source: &Source) -> Result<(Vec<BuildInput>, IrNorm), StageError> {
    let dataset = match source {
        Source::Pair { rgb, ir } => {
            for path in [rgb, ir] {
                if !path.is_file() {
                    return Err(StageError::Invalid(format!(
                        "{}: no such image",
                        path.display()
                    )));
                }
            }
            let pair = BuildInput {
                name: rgb.display().to_string(),
                rgb: rgb.clone(),
                ir: ir.clone(),
                label: None,
            };
            return Ok((vec![pair], IrNorm::default()));
        }
        Source::Dataset(dataset) => dataset,
    };
    let opened = Dataset::open(dataset, None).map_err(StageError::Dataset)?;
    let pairs: Vec<BuildInput> = opened
        .scan()
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
        return Err(StageError::Invalid(format!(
            "{}: no RGB image with an IR partner",
            dataset.display()
        )));
    }
    Ok((pairs, opened.ir_norm))
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

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}
