//! Weights files: safetensors holding every variable under its Ultralytics-style name
//! (f32, BatchNorm running statistics included), with the [`ModelConfig`] as JSON in the
//! header metadata so that a file alone rebuilds its detector.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use atomic_write_file::AtomicWriteFile;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::model::{Detector, ModelConfig};

/// A safetensors file's tensors by name and its string metadata.
pub type TensorFile = (HashMap<String, Tensor>, HashMap<String, String>);

/// Metadata key holding the model configuration.
pub const CONFIG_KEY: &str = "fusekit.model";

/// Why weights could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The weights file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid safetensors file.
    #[error("{path}: not a valid safetensors file: {message}")]
    Format {
        /// The weights file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// The metadata has no or an invalid model configuration.
    #[error("{path}: no usable `{CONFIG_KEY}` model configuration in the metadata: {message}")]
    Config {
        /// The weights file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A tensor is missing, has the wrong shape or type.
    #[error("{path}: tensor `{name}`: {message}")]
    Tensor {
        /// The weights file.
        path: PathBuf,
        /// Variable name.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// Writes every variable of `vs` and `config` to `path` (a temporary file renamed into place).
pub fn save(vs: &VarStore, config: &ModelConfig, path: &Path) -> Result<(), WeightsError> {
    let config_json = serde_json::to_string(config).map_err(|e| WeightsError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let metadata = HashMap::from([(CONFIG_KEY.to_string(), config_json)]);
    write_tensors(path, vs.variables(), metadata)
}

/// Writes named tensors (as f32) and string metadata to the safetensors file `path`,
/// through a temporary file renamed into place.
pub fn write_tensors(
    path: &Path,
    tensors: impl IntoIterator<Item = (String, Tensor)>,
    metadata: HashMap<String, String>,
) -> Result<(), WeightsError> {
    let io = |source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut named: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, tensor)| {
            let cpu = tensor
                .detach()
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous();
            let shape = cpu.size().iter().map(|&d| d as usize).collect();
            let values = Vec::<f32>::try_from(cpu.flatten(0, -1)).unwrap_or_default();
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name, shape, bytes)
        })
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let views = named
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|view| (name.as_str(), view))
                .map_err(|e| WeightsError::Tensor {
                    path: path.to_path_buf(),
                    name: name.clone(),
                    message: format!("{e:?}"),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = safetensors::tensor::serialize(views, &Some(metadata)).map_err(|e| {
        WeightsError::Format {
            path: path.to_path_buf(),
            message: format!("{e:?}"),
        }
    })?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    // Atomic and durable: a checkpoint is what a resume trusts.
    let mut file = AtomicWriteFile::open(path).map_err(io)?;
    file.write_all(&bytes).map_err(io)?;
    file.commit().map_err(io)
}

/// Reads every tensor (f32 or f16, returned as f32 on the CPU) and the metadata of the
/// safetensors file `path`.
pub fn read_tensors(path: &Path) -> Result<TensorFile, WeightsError> {
    let bytes = read(path)?;
    let format = |e: safetensors::SafeTensorError| WeightsError::Format {
        path: path.to_path_buf(),
        message: format!("{e:?}"),
    };
    let (_, metadata) = SafeTensors::read_metadata(&bytes).map_err(format)?;
    let file = SafeTensors::deserialize(&bytes).map_err(format)?;
    let mut tensors = HashMap::new();
    for (name, view) in file.tensors() {
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let values = tensor_values(&view).map_err(|message| WeightsError::Tensor {
            path: path.to_path_buf(),
            name: name.clone(),
            message,
        })?;
        tensors.insert(name, Tensor::from_slice(&values).view(shape.as_slice()));
    }
    Ok((tensors, metadata.metadata().clone().unwrap_or_default()))
}

/// Reads the model configuration stored in `path`.
pub fn read_config(path: &Path) -> Result<ModelConfig, WeightsError> {
    let (_, metadata) = read_tensors(path)?;
    config_of(path, &metadata)
}

/// Builds the detector stored in `path` on `device`, with its variables loaded.
pub fn load(path: &Path, device: Device) -> Result<(VarStore, Detector), WeightsError> {
    let (tensors, metadata) = read_tensors(path)?;
    let config = config_of(path, &metadata)?;
    let vs = VarStore::new(device);
    let detector = Detector::new(&vs.root(), config);
    copy_into(&vs, path, &tensors, "")?;
    Ok((vs, detector))
}

fn read(path: &Path) -> Result<Vec<u8>, WeightsError> {
    std::fs::read(path).map_err(|source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The model configuration in a file's `metadata`.
pub fn config_of(
    path: &Path,
    metadata: &HashMap<String, String>,
) -> Result<ModelConfig, WeightsError> {
    let config_error = |message: String| WeightsError::Config {
        path: path.to_path_buf(),
        message,
    };
    let json = metadata
        .get(CONFIG_KEY)
        .ok_or_else(|| config_error("the key is missing (not a fusekit weights file?)".into()))?;
    let config: ModelConfig =
        serde_json::from_str(json).map_err(|e| config_error(e.to_string()))?;
    if config.names.is_empty() || !(1..=3).contains(&config.ir_channels) {
        return Err(config_error(format!(
            "{} classes and {} IR channels",
            config.names.len(),
            config.ir_channels
        )));
    }
    Ok(config)
}

/// Copies every variable of `vs` from `tensors[prefix + name]`; each must be present with
/// the same shape.
pub fn copy_into(
    vs: &VarStore,
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    prefix: &str,
) -> Result<(), WeightsError> {
    for (name, mut var) in vs.variables() {
        let key = format!("{prefix}{name}");
        let tensor_error = |message: String| WeightsError::Tensor {
            path: path.to_path_buf(),
            name: key.clone(),
            message,
        };
        let source = tensors
            .get(&key)
            .ok_or_else(|| tensor_error("missing from the file".into()))?;
        if source.size() != var.size() {
            return Err(tensor_error(format!(
                "shape {:?} in the file, the model has {:?}",
                source.size(),
                var.size()
            )));
        }
        tch::no_grad(|| var.copy_(&source.to_kind(var.kind())));
    }
    Ok(())
}

/// What [`import_ultralytics`] did besides copying tensors one to one.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ImportReport {
    /// Variables copied unchanged.
    pub copied: usize,
    /// First convolutions adapted to another number of input planes (name, from, to).
    pub adapted_inputs: Vec<(String, i64, i64)>,
    /// Class-head variables left at their initial values because the class count differs.
    pub reinitialised: Vec<String>,
    /// Variables the checkpoint has no counterpart for (fusion layers, skipped streams).
    pub untouched: Vec<String>,
}

/// Initialises the streams of a detector from an Ultralytics YOLOv8 state dict saved as
/// safetensors (keys `model.N...`). A variable `<stream>.model.N.rest` (and, for mid fusion,
/// `head.model.N.rest`) takes `model.N.rest` when `<stream>` is in `streams` (`rgb`, `ir`,
/// `early`; `head` is implied by `rgb` or `ir`). A first convolution with other input planes
/// is adapted (summed to one plane for grey IR; the mean RGB filter for extra planes); the
/// class branch (`cv3`) of another class count keeps its initialisation.
pub fn import_ultralytics(
    vs: &VarStore,
    path: &Path,
    streams: &[&str],
) -> Result<ImportReport, WeightsError> {
    let bytes = read(path)?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| WeightsError::Format {
        path: path.to_path_buf(),
        message: format!("{e:?}"),
    })?;
    let tensor_error = |name: &str, message: String| WeightsError::Tensor {
        path: path.to_path_buf(),
        name: name.to_string(),
        message,
    };
    let mut report = ImportReport::default();
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, mut var) in variables {
        let Some((stream, key)) = name.split_once('.') else {
            report.untouched.push(name);
            continue;
        };
        let wanted = streams.contains(&stream)
            || (stream == "head" && streams.iter().any(|s| *s == "rgb" || *s == "ir"));
        let source = match file.tensor(key) {
            Ok(view) if wanted && key.starts_with("model.") => view,
            _ => {
                report.untouched.push(name);
                continue;
            }
        };
        let shape: Vec<i64> = source.shape().iter().map(|&d| d as i64).collect();
        let values = tensor_values(&source).map_err(|m| tensor_error(key, m))?;
        let source = Tensor::from_slice(&values).view(shape.as_slice());
        let target = var.size();
        let value = if shape == target {
            report.copied += 1;
            source
        } else if key.ends_with(".0.conv.weight")
            && key.starts_with("model.0.")
            && shape.len() == 4
            && shape[0] == target[0]
            && shape[2..] == target[2..]
        {
            report
                .adapted_inputs
                .push((name.clone(), shape[1], target[1]));
            adapt_input_planes(&source, target[1])
        } else if key.contains(".cv3.") {
            // The class branch's width and output depend on the class count.
            report.reinitialised.push(name);
            continue;
        } else {
            return Err(tensor_error(
                &name,
                format!(
                    "shape {:?} in the checkpoint, the model has {:?}",
                    shape, target
                ),
            ));
        };
        tch::no_grad(|| var.copy_(&value.to_kind(var.kind())));
    }
    Ok(report)
}

fn tensor_values(view: &TensorView<'_>) -> Result<Vec<f32>, String> {
    let data = view.data();
    match view.dtype() {
        Dtype::F32 => Ok(data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()),
        Dtype::F16 => Ok(data
            .chunks_exact(2)
            .map(|b| half_to_f32(u16::from_le_bytes([b[0], b[1]])))
            .collect()),
        other => Err(format!("stored as {other:?}, expected F32 or F16")),
    }
}

/// IEEE half to f32 (Ultralytics checkpoints store f16).
fn half_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((h >> 10) & 0x1f);
    let mantissa = f32::from(h & 0x3ff);
    match exponent {
        0 => sign * mantissa * 2f32.powi(-24),
        31 if mantissa == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        e => sign * (1.0 + mantissa / 1024.0) * 2f32.powi(e - 15),
    }
}

/// A first-layer filter bank `[out, 3, k, k]` for `planes` inputs: one plane gets the sum of
/// the RGB filters (a grey image seen as R = G = B gives the same response); more planes keep
/// the RGB filters and repeat their mean for each extra plane.
fn adapt_input_planes(weight: &Tensor, planes: i64) -> Tensor {
    let rgb = weight.narrow(1, 0, weight.size()[1].min(3));
    if planes == 1 {
        return rgb.sum_dim_intlist(1, true, Kind::Float);
    }
    let kept = weight.narrow(1, 0, weight.size()[1].min(planes));
    let extra = planes - kept.size()[1];
    if extra <= 0 {
        return kept;
    }
    let mean = rgb.mean_dim(1, true, Kind::Float).repeat([1, extra, 1, 1]);
    Tensor::cat(&[kept, mean], 1)
}
