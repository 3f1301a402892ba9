//! The val stage: precision, recall and mAP of weights on a cache, or on a dataset's split
//! decoded by the cache builder into a temporary cache.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fusekit_cache::{Cache, IrChannels, MapMode};
use fusekit_dataset::IrNorm;
use fusekit_detect::{DetectionLoss, NmsOptions, weights};
use fusekit_eval::Metrics;
use fusekit_loader::{Loader, LoaderOptions};
use fusekit_train::{Feed, Validation, parse_device, plot_validation, validate};
use serde::Serialize;

use fusekit_hyp::Imgsz;
use fusekit_lint::LevelSelectors;

use crate::{Progress, StageError};

/// What to validate on.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A cache file written by `fusekit cache build`.
    Cache(PathBuf),
    /// One split of a dataset (a data yaml or folder, its `split.yaml` first), decoded exactly
    /// as `fusekit cache build` decodes it (in parallel, pairs with error-level lint findings
    /// left out) into a temporary cache that is removed afterwards.
    Dataset {
        /// The data yaml or dataset folder.
        data: PathBuf,
        /// The split (`val`, `test`, ...).
        split: String,
        /// The size the images are stored and letterboxed at.
        imgsz: Imgsz,
        /// How IR samples become 8 bits, when not the data yaml's `ir_norm:`.
        ir_norm: Option<IrNorm>,
    },
}

/// Everything a validation needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// Weights written by `fusekit train`.
    pub weights: PathBuf,
    /// The cache or dataset split to validate on.
    pub source: Source,
    /// Images per batch.
    pub batch: usize,
    /// Confidence, IoU threshold and detections per image (Ultralytics' validation settings
    /// by default).
    pub nms: NmsOptions,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// A folder (created if missing) for the PR / F1 / P / R curves and the confusion
    /// matrices; `None` draws nothing.
    pub plots: Option<PathBuf>,
}

/// What a validation measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// Images evaluated.
    pub images: usize,
    /// Precision, recall, mAP overall, per class and COCO's.
    pub metrics: Metrics,
    /// Box, class and DFL validation losses.
    pub val_loss: [f64; 3],
    /// The model's class names, by id.
    pub names: Vec<String>,
    /// The plots written (into [`Params::plots`]).
    pub plots: Vec<PathBuf>,
}

/// Validates `params.weights` on `params.source` (no augmentation, fixed order); `progress`
/// sees the decoding of a dataset source.
pub fn run(params: &Params, progress: &dyn Progress) -> Result<Outcome, StageError> {
    if params.batch == 0 {
        return Err(StageError::Invalid("batch must be at least 1".into()));
    }
    let device = parse_device(&params.device)?;
    let (_vs, model) = weights::load(&params.weights, device)?;
    let config = model.config();
    // Held until the end: dropping it removes the temporary cache.
    let mut temporary = None;
    let cache_path = match &params.source {
        Source::Cache(path) => path.clone(),
        Source::Dataset {
            data,
            split,
            imgsz,
            ir_norm,
        } => {
            let dir = tempfile::Builder::new()
                .prefix("fusekit-val-")
                .tempdir()
                .map_err(StageError::io("creating a folder in", std::env::temp_dir()))?;
            let path = decode_split(
                data,
                split,
                *imgsz,
                *ir_norm,
                config.ir_channels,
                dir.path(),
                progress,
            )?;
            temporary = Some(dir);
            path
        }
    };
    let cache = Arc::new(Cache::open(&cache_path, None)?);
    let meta = cache.meta();
    if meta.names.len() != config.names.len() || i64::from(meta.ir_channels) != config.ir_channels {
        return Err(StageError::Invalid(format!(
            "{} has {} classes and {} IR planes, the weights {} and {}",
            cache_path.display(),
            meta.names.len(),
            meta.ir_channels,
            config.names.len(),
            config.ir_channels
        )));
    }
    let loader = Loader::new(
        cache,
        LoaderOptions {
            batch: params.batch,
            shuffle: false,
            ..LoaderOptions::default()
        },
    );
    let result = validate(
        &model,
        &loader,
        &Feed::for_device(device),
        &DetectionLoss::default(),
        &params.nms,
    )
    .map_err(|source| StageError::Validate {
        weights: params.weights.clone(),
        source,
    })?;
    drop(temporary);
    let plots = match &params.plots {
        Some(dir) => plot(&result, &config.names, dir)?,
        None => Vec::new(),
    };
    Ok(Outcome {
        images: result.images,
        metrics: result.metrics,
        val_loss: result.loss,
        names: config.names.clone(),
        plots,
    })
}

/// Builds the cache of `split` of `data` into `dir` as `fusekit cache build` would, with the
/// model's IR planes; returns the cache file.
fn decode_split(
    data: &Path,
    split: &str,
    imgsz: Imgsz,
    ir_norm: Option<IrNorm>,
    ir_planes: i64,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<PathBuf, StageError> {
    let params = crate::cache::Params {
        data: data.to_path_buf(),
        names: None,
        levels: LevelSelectors::default(),
        split: Some(split.to_string()),
        imgsz,
        out: Some(dir.to_path_buf()),
        force: true,
        settings: crate::cache::Settings {
            mode: MapMode::Disk,
            ir_channels: if ir_planes == 1 {
                IrChannels::Grey
            } else {
                IrChannels::Colour
            },
            ir_norm,
        },
    };
    let built = crate::cache::run(&params, progress)?;
    built
        .files
        .into_iter()
        .next()
        .map(|file| file.path)
        .ok_or_else(|| StageError::Invalid(format!("{}: no split named {split}", data.display())))
}

/// Writes the plots of `result` into `dir` (created if missing); returns the files.
fn plot(result: &Validation, names: &[String], dir: &Path) -> Result<Vec<PathBuf>, StageError> {
    std::fs::create_dir_all(dir).map_err(StageError::io("creating", dir))?;
    Ok(plot_validation(result, names, dir)?)
}
