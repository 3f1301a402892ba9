//! The export stage: trained weights to a file that deployment runtimes load.
//!
//! - `onnx`: the detector written as an ONNX graph by fusekit (`fusekit_detect::onnx`), for
//!   ONNX Runtime and TensorRT; batch and size fixed or `--dynamic`; float32 or `--half`.
//! - `torchscript`: the detector traced through libtorch (`fusekit_detect::torchscript`), for
//!   `torch.jit.load` and `tch::CModule::load`; fixed batch and size, float32.
//!
//! Both take the inputs `rgb` `[B, 3, H, W]` and `ir` `[B, C, H, W]` (only its own for a
//! single-stream model), floats in 0..1 letterboxed with grey [`PAD_VALUE`] as the cache stores
//! them, and return `output0` `[B, 4 + nc, anchors]`: box centre x, y, width, height in input
//! pixels, then the class scores. NMS is left to the consumer. The metadata (class names, image
//! size, fusion mode, IR planes, pad value) travels inside the file.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use fusekit_cache::format::PAD_VALUE;
use fusekit_detect::onnx::{GraphOptions, OUTPUT};
use fusekit_detect::{Detector, STRIDES, torchscript, weights};
use fusekit_hyp::Imgsz;
use fusekit_train::parse_device;
use serde::{Deserialize, Serialize};

use crate::StageError;

/// The file format to export to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// ONNX (`.onnx`).
    Onnx,
    /// TorchScript (`.torchscript`), as Ultralytics names it.
    Torchscript,
}

impl Format {
    /// The file extension Ultralytics uses for the format.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Onnx => "onnx",
            Format::Torchscript => "torchscript",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.extension())
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "onnx" => Ok(Format::Onnx),
            "torchscript" => Ok(Format::Torchscript),
            other => Err(format!("format must be onnx or torchscript, not `{other}`")),
        }
    }
}

/// Everything an export needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// Weights written by fusekit (model configuration included).
    pub weights: PathBuf,
    /// The file format.
    pub format: Format,
    /// Input height and width.
    pub imgsz: Imgsz,
    /// Batch size (the fixed one; with `dynamic`, the size written in the metadata).
    pub batch: i64,
    /// Batch, height and width chosen at run time (ONNX only).
    pub dynamic: bool,
    /// Float16 inputs, weights and output (ONNX only).
    pub half: bool,
    /// ONNX operator set.
    pub opset: i64,
    /// The file to write; default: the weights' path with the format's extension.
    pub out: Option<PathBuf>,
    /// Where TorchScript is traced: `cpu`, `cuda` or `cuda:N` (`auto`: CUDA 0 when present).
    pub device: String,
}

/// Ultralytics' default opset for ONNX exports of detectors.
pub const DEFAULT_OPSET: i64 = 17;

/// One input or output of the exported model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// Its name in the graph.
    pub name: String,
    /// Its dimensions: sizes, or the names of dynamic ones.
    pub shape: Vec<String>,
}

/// A finished export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The file written.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// Its size in bytes.
    pub bytes: u64,
    /// The model's inputs.
    pub inputs: Vec<TensorSpec>,
    /// The model's output.
    pub output: TensorSpec,
    /// The metadata stored in the file.
    pub metadata: BTreeMap<String, String>,
    /// Seconds the export took (loading the weights included).
    pub seconds: f64,
}

/// Exports `params.weights`.
pub fn run(params: &Params) -> Result<Outcome, StageError> {
    let started = Instant::now();
    check(params)?;
    let device = match params.format {
        Format::Onnx => tch::Device::Cpu,
        Format::Torchscript => parse_device(&params.device)?,
    };
    let (mut vs, model) = weights::load(&params.weights, device)?;
    // Inference only: tracing refuses weights that require gradients.
    vs.freeze();
    let path = params
        .out
        .clone()
        .unwrap_or_else(|| params.weights.with_extension(params.format.extension()));
    let metadata = metadata(&model, params);
    let imgsz = i64::from(params.imgsz.get());
    match params.format {
        Format::Onnx => {
            let options = GraphOptions {
                imgsz,
                batch: params.batch,
                dynamic: params.dynamic,
                half: params.half,
                opset: params.opset,
                metadata: metadata.clone().into_iter().collect(),
                producer_version: env!("CARGO_PKG_VERSION").into(),
            };
            let graph = fusekit_detect::onnx::to_onnx(&model, &options)?;
            crate::lint::write_file(&path, &fusekit_onnx::encode(&graph))?;
        }
        Format::Torchscript => {
            let json = serde_json::to_string(&metadata).expect("metadata serialises");
            let partial = partial_path(&path);
            let saved = torchscript::save(&model, params.batch, imgsz, device, &json, &partial)
                .map_err(StageError::from)
                .and_then(|()| {
                    std::fs::rename(&partial, &path).map_err(StageError::io("writing", &path))
                });
            if saved.is_err() {
                let _ = std::fs::remove_file(&partial);
            }
            saved?;
        }
    }
    let bytes = std::fs::metadata(&path)
        .map_err(StageError::io("reading", &path))?
        .len();
    let (inputs, output) = specs(&model, params);
    Ok(Outcome {
        path,
        format: params.format,
        bytes,
        inputs,
        output,
        metadata,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn check(params: &Params) -> Result<(), StageError> {
    if params.batch < 1 {
        return Err(StageError::Invalid(format!(
            "--batch must be at least 1, not {}",
            params.batch
        )));
    }
    if params.format == Format::Torchscript && params.dynamic {
        return Err(StageError::Invalid(
            "--dynamic is for ONNX: a traced TorchScript model runs at the batch and size it was \
traced at"
                .into(),
        ));
    }
    if params.format == Format::Torchscript && params.half {
        return Err(StageError::Invalid(
            "--half is for ONNX: TorchScript is traced in float32 (call .half() on the loaded \
module on a GPU)"
                .into(),
        ));
    }
    if params.format == Format::Onnx && !fusekit_onnx::OPSETS.contains(&params.opset) {
        return Err(StageError::Invalid(format!(
            "--opset must lie between {} and {}, not {}",
            fusekit_onnx::OPSETS.start(),
            fusekit_onnx::OPSETS.end(),
            params.opset
        )));
    }
    Ok(())
}

/// The metadata, with Ultralytics' keys (its `names` a Python dict literal, as it writes
/// them) and fusekit's own: `fusion`, `ir_channels`, `inputs`, `input_range`, `pad_value`.
fn metadata(model: &Detector, params: &Params) -> BTreeMap<String, String> {
    let config = model.config();
    let names = config
        .names
        .iter()
        .enumerate()
        .map(|(i, name)| format!("{i}: {}", python_string(name)))
        .collect::<Vec<_>>()
        .join(", ");
    let imgsz = params.imgsz.get();
    let python_bool = |b: bool| if b { "True" } else { "False" };
    let entries = [
        (
            "description",
            format!(
                "fusekit YOLOv8{} {} fusion RGB-IR detector",
                config.scale, config.fusion
            ),
        ),
        ("author", "fusekit".into()),
        ("version", env!("CARGO_PKG_VERSION").into()),
        ("task", "detect".into()),
        ("stride", STRIDES[2].to_string()),
        ("batch", params.batch.to_string()),
        ("imgsz", format!("[{imgsz}, {imgsz}]")),
        ("names", format!("{{{names}}}")),
        ("half", python_bool(params.half).into()),
        ("dynamic", python_bool(params.dynamic).into()),
        ("fusion", config.fusion.to_string()),
        ("scale", config.scale.to_string()),
        ("ir_channels", config.ir_channels.to_string()),
        ("inputs", model.input_names().join(",")),
        ("input_range", "0-1".into()),
        ("pad_value", PAD_VALUE.to_string()),
    ];
    entries
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect()
}

/// `text` as a single-quoted Python string literal.
fn python_string(text: &str) -> String {
    let escaped = text.replace('\\', "\\\\").replace('\'', "\\'");
    format!("'{escaped}'")
}

fn specs(model: &Detector, params: &Params) -> (Vec<TensorSpec>, TensorSpec) {
    let imgsz = params.imgsz.get().to_string();
    let dim = |name: &str, fixed: String| {
        if params.dynamic {
            name.to_string()
        } else {
            fixed
        }
    };
    let config = model.config();
    let inputs = model
        .input_names()
        .into_iter()
        .map(|name| {
            let planes = if name == fusekit_detect::onnx::RGB_INPUT {
                3
            } else {
                config.ir_channels
            };
            TensorSpec {
                name: name.into(),
                shape: vec![
                    dim("batch", params.batch.to_string()),
                    planes.to_string(),
                    dim("height", imgsz.clone()),
                    dim("width", imgsz.clone()),
                ],
            }
        })
        .collect();
    let anchors = model.anchors(i64::from(params.imgsz.get()));
    let output = TensorSpec {
        name: OUTPUT.into(),
        shape: vec![
            dim("batch", params.batch.to_string()),
            (4 + config.num_classes()).to_string(),
            dim("anchors", anchors.to_string()),
        ],
    };
    (inputs, output)
}

fn partial_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.partial"))
}
