//! The val stage: precision, recall and mAP of weights on a cache.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fusekit_cache::Cache;
use fusekit_detect::{DetectionLoss, NmsOptions, weights};
use fusekit_eval::Metrics;
use fusekit_loader::{Loader, LoaderOptions};
use fusekit_train::{Validation, parse_device, plot_validation, validate};
use serde::Serialize;

use crate::StageError;

/// Everything a validation needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// Weights written by `fusekit train`.
    pub weights: PathBuf,
    /// The cache to validate on.
    pub cache: PathBuf,
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

/// Validates `params.weights` on `params.cache` (no augmentation, fixed order).
pub fn run(params: &Params) -> Result<Outcome, StageError> {
    if params.batch == 0 {
        return Err(StageError::Invalid("batch must be at least 1".into()));
    }
    let device = parse_device(&params.device)?;
    let (_vs, model) = weights::load(&params.weights, device)?;
    let cache = Arc::new(Cache::open(&params.cache, None)?);
    let config = model.config();
    let meta = cache.meta();
    if meta.names.len() != config.names.len() || i64::from(meta.ir_channels) != config.ir_channels {
        return Err(StageError::Invalid(format!(
            "{} has {} classes and {} IR planes, the weights {} and {}",
            params.cache.display(),
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
        device,
        &DetectionLoss::default(),
        &params.nms,
    )
    .map_err(|source| StageError::Validate {
        weights: params.weights.clone(),
        source,
    })?;
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

/// Writes the plots of `result` into `dir` (created if missing); returns the files.
fn plot(result: &Validation, names: &[String], dir: &Path) -> Result<Vec<PathBuf>, StageError> {
    std::fs::create_dir_all(dir).map_err(StageError::io("creating", dir))?;
    Ok(plot_validation(result, names, dir)?)
}
