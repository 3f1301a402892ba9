//! `weights/last.ckpt`: everything a resume needs (model, EMA and optimizer tensors, and the
//! training state as JSON metadata), written after every epoch and read by `--resume`.

use std::collections::HashMap;
use std::path::Path;

use fusekit_detect::{ModelConfig, weights};
use tch::Tensor;
use tch::nn::VarStore;

use crate::TrainError;
use crate::optim::Optimizer;

/// Metadata key of a checkpoint's training state (JSON).
const STATE_KEY: &str = "fusekit.train_state";

/// The resumable state saved with each checkpoint.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct TrainState {
    /// Epochs completed.
    pub(crate) epochs_done: u32,
    pub(crate) best_fitness: f64,
    pub(crate) best_epoch: u32,
    pub(crate) optimizer_steps: u64,
    pub(crate) ema_updates: u64,
    /// Learning-rate multiplier after NaN rollbacks.
    pub(crate) lr_factor: f64,
    /// Training seconds before this process (results.csv's time continues).
    pub(crate) seconds: f64,
    /// The last finished epoch's results row, rewritten on resume when a kill came between
    /// the checkpoint and the results append.
    #[serde(default)]
    pub(crate) last_row: String,
    /// fp16 loss scale and its run of good steps (AMP on CUDA), so a resumed run neither
    /// restarts the scale at 65536 nor forgets how close it was to doubling.
    #[serde(default)]
    pub(crate) loss_scale: Option<(f64, u32)>,
    pub(crate) hyp: String,
    pub(crate) train_cache: String,
}

/// Writes the checkpoint (atomically, through [`weights::write_tensors`]).
pub(crate) fn save(
    path: &Path,
    vs: &VarStore,
    ema_vs: &VarStore,
    optimizer: &Optimizer,
    config: &ModelConfig,
    state: &TrainState,
) -> Result<(), TrainError> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    tensors.extend(
        vs.variables()
            .into_iter()
            .map(|(n, t)| (format!("model/{n}"), t)),
    );
    tensors.extend(
        ema_vs
            .variables()
            .into_iter()
            .map(|(n, t)| (format!("ema/{n}"), t)),
    );
    let (buffers, _) = optimizer.state();
    tensors.extend(buffers.into_iter().map(|(n, t)| (format!("optim/{n}"), t)));
    let metadata = HashMap::from([
        (
            weights::CONFIG_KEY.to_string(),
            serde_json::to_string(config).map_err(|e| TrainError::Numeric(e.to_string()))?,
        ),
        (
            STATE_KEY.to_string(),
            serde_json::to_string(state).map_err(|e| TrainError::Numeric(e.to_string()))?,
        ),
    ]);
    weights::write_tensors(path, tensors, metadata)?;
    Ok(())
}

/// Restores the model, EMA and optimizer of a checkpoint; returns its training state.
pub(crate) fn restore(
    path: &Path,
    vs: &VarStore,
    ema_vs: &VarStore,
    optimizer: &mut Optimizer,
) -> Result<TrainState, TrainError> {
    if !path.is_file() {
        return Err(TrainError::Resume(format!(
            "{}: no checkpoint to resume from (was this run started?)",
            path.display()
        )));
    }
    let (tensors, metadata) = weights::read_tensors(path)?;
    let state: TrainState = metadata
        .get(STATE_KEY)
        .and_then(|json| serde_json::from_str(json).ok())
        .ok_or_else(|| {
            TrainError::Resume(format!("{}: no training state in the file", path.display()))
        })?;
    weights::copy_into(vs, path, &tensors, "model/")?;
    weights::copy_into(ema_vs, path, &tensors, "ema/")?;
    let buffers: HashMap<String, Tensor> = tensors
        .iter()
        .filter_map(|(n, t)| Some((n.strip_prefix("optim/")?.to_string(), t.shallow_clone())))
        .collect();
    optimizer
        .restore(&buffers, state.optimizer_steps)
        .map_err(|m| TrainError::Resume(format!("{}: {m}", path.display())))?;
    Ok(state)
}
