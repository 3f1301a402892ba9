//! The predict stage: a trained detector on RGB + IR pairs, boxes in original pixels.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use fusekit_cache::{BuildInput, Record, Sample, prepare_pair};
use fusekit_dataset::{Dataset, IrNorm, normalise_ir};
use fusekit_detect::{NmsOptions, non_max_suppression, weights};
use fusekit_hyp::Imgsz;
use fusekit_loader::Letterbox;
use fusekit_plots::{Detected, paired_detections};
use fusekit_train::parse_device;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::StageError;
use crate::lint::write_file;
use crate::train::device_name;

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
    /// Labels and COCO-style JSON written beside the pictures.
    pub save: SaveOptions,
}

/// What a prediction run writes besides `predictions.jsonl` and the pictures (Ultralytics'
/// `save_txt`, `save_conf` and `save_json`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaveOptions {
    /// `labels/<stem>.txt` per pair with detections: YOLO rows `class cx cy w h`, normalised
    /// to the source image.
    pub txt: bool,
    /// Append each detection's score to its YOLO row.
    pub conf: bool,
    /// `predictions.json`: COCO-style detections (`image_id`, `category_id`, `bbox` as x, y,
    /// width, height in source pixels, `score`).
    pub json: bool,
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
    /// The folder of YOLO label files, when asked for.
    #[serde(default)]
    pub labels: Option<PathBuf>,
    /// `predictions.json`, when asked for.
    #[serde(default)]
    pub json: Option<PathBuf>,
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
    let labels_dir = params.out.join("labels");
    if params.save.txt {
        std::fs::create_dir_all(&labels_dir).map_err(StageError::io("creating", &labels_dir))?;
    }
    let mut coco = Vec::new();
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
            let picture_path = params.out.join(format!(
                "{index:05}_{}.{}",
                stem(&pair.rgb),
                picture_extension(&pair.rgb)
            ));
            picture(&predicted, ir_norm, &picture_path)?;
            pictures += 1;
        }
        if params.save.txt {
            let path = labels_dir.join(format!("{}.txt", stem(&pair.rgb)));
            save_yolo_rows(&path, &predicted, params.save.conf)?;
        }
        if params.save.json {
            coco.extend(coco_detections(&predicted));
        }
        each(&predicted);
    }
    io_result
        .and_then(|()| jsonl.flush())
        .map_err(write_error)?;
    let json_path = params.out.join("predictions.json");
    if params.save.json {
        let text = serde_json::to_string(&coco).expect("detections serialise");
        write_file(&json_path, text.as_bytes())?;
    }
    Ok(Outcome {
        pairs: pairs.len(),
        detections: total,
        predictions: jsonl_path,
        pictures,
        labels: params.save.txt.then_some(labels_dir),
        json: params.save.json.then_some(json_path),
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

/// Writes `predicted`'s pair at its source resolution, RGB and IR (mapped to 8 bits by
/// `ir_norm`, as the network saw it) side by side, each detection outlined with its class name
/// and score.
fn picture(predicted: &PairPrediction, ir_norm: IrNorm, path: &Path) -> Result<(), StageError> {
    let open = |image_path: &Path| {
        image::open(image_path).map_err(|e| StageError::Io {
            action: "decoding",
            path: image_path.to_path_buf(),
            source: std::io::Error::other(e),
        })
    };
    let rgb = open(&predicted.rgb)?.into_rgb8();
    let ir = normalise_ir(open(&predicted.ir)?, ir_norm).into_rgb8();
    let detected: Vec<Detected> = predicted
        .detections
        .iter()
        .map(|d| Detected {
            class: d.class,
            corners: d.bbox,
            label: match &d.name {
                Some(name) => format!("{name} {:.2}", d.score),
                None => format!("{} {:.2}", d.class, d.score),
            },
        })
        .collect();
    Ok(paired_detections(&rgb, &ir, &detected, path)?)
}

/// The picture of a pair keeps a JPEG source's format and is a PNG otherwise.
fn picture_extension(rgb: &Path) -> &'static str {
    let jpeg = rgb
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"));
    if jpeg { "jpg" } else { "png" }
}

/// Writes `predicted`'s YOLO rows to `path`; as Ultralytics, no file for no detections (and
/// none left from an earlier run into the same folder).
fn save_yolo_rows(path: &Path, predicted: &PairPrediction, conf: bool) -> Result<(), StageError> {
    if !predicted.detections.is_empty() {
        return write_file(path, yolo_rows(predicted, conf).as_bytes());
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(StageError::io("removing", path)(e))
        }
        _ => Ok(()),
    }
}

/// `predicted`'s detections as YOLO label rows, `class cx cy w h` normalised to the source
/// image, with the score appended when `conf`.
fn yolo_rows(predicted: &PairPrediction, conf: bool) -> String {
    let (w, h) = (predicted.width as f32, predicted.height as f32);
    let mut text = String::new();
    for d in &predicted.detections {
        let [x0, y0, x1, y1] = d.bbox;
        text.push_str(&format!(
            "{} {:.6} {:.6} {:.6} {:.6}",
            d.class,
            (x0 + x1) / 2.0 / w,
            (y0 + y1) / 2.0 / h,
            (x1 - x0) / w,
            (y1 - y0) / h
        ));
        if conf {
            text.push_str(&format!(" {:.6}", d.score));
        }
        text.push('\n');
    }
    text
}

/// `predicted`'s detections as COCO results: `image_id` is the RGB file's stem (a number when
/// it is one, as Ultralytics writes it), `bbox` is x, y, width, height in source pixels.
fn coco_detections(predicted: &PairPrediction) -> Vec<serde_json::Value> {
    let stem = stem(&predicted.rgb);
    let image_id = stem
        .parse::<u64>()
        .map_or_else(|_| serde_json::Value::from(stem.clone()), Into::into);
    predicted
        .detections
        .iter()
        .map(|d| {
            let [x0, y0, x1, y1] = d.bbox;
            serde_json::json!({
                "image_id": image_id,
                "category_id": d.class,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "score": d.score,
            })
        })
        .collect()
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}
