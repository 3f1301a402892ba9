//! One loader batch through the model: forward, loss and backward in micro-batches (split
//! further after an out-of-memory error), synchronised BatchNorm, and fp16 loss scaling.

use std::panic;
use std::rc::Rc;
use std::sync::Arc;

use fusekit_detect::{BatchNormFn, DetectionLoss, Detector, LossError, with_batch_norm};
use fusekit_dist::{DistError, ProcessGroup};
use tch::{Device, Tensor};

use crate::guard::{DeviceFailure, catch_device_failure, is_out_of_memory};
use crate::optim::Optimizer;
use crate::precision::{Autocast, Precision};

/// Whether `flag` is set on any rank.
pub(crate) fn any_rank(group: &ProcessGroup, flag: bool) -> Result<bool, DistError> {
    let mut flags = [Tensor::from_slice(&[f32::from(u8::from(flag))])];
    group.all_reduce_sum(&mut flags)?;
    Ok(flags[0].double_value(&[0]) > 0.0)
}

/// Why a batch's backward pass did not complete.
pub(crate) enum MicroBatchFailure {
    /// A loss part was NaN or infinite (on any rank, with synchronised BatchNorm).
    NonFinite,
    /// The device ran out of memory (the error's text).
    OutOfMemory(String),
    /// A collective of synchronised BatchNorm failed.
    Dist(DistError),
    /// The batch's targets do not fit the model (a class id out of range).
    Targets(LossError),
}

impl From<LossError> for MicroBatchFailure {
    fn from(error: LossError) -> Self {
        Self::Targets(error)
    }
}

impl From<DeviceFailure> for MicroBatchFailure {
    fn from(failure: DeviceFailure) -> Self {
        match failure {
            DeviceFailure::OutOfMemory(text) => Self::OutOfMemory(text),
            DeviceFailure::Dist(error) => Self::Dist(error),
        }
    }
}

/// Forward, loss and backward of one loader batch in micro-batches.
pub(crate) struct MicroBatches<'a> {
    pub(crate) model: &'a Detector,
    pub(crate) loss: &'a DetectionLoss,
    /// The forward passes' arithmetic, applied through an [`Autocast`] guard.
    pub(crate) precision: Precision,
    /// The device the batch is on (autocast is set per device type).
    pub(crate) device: Device,
    /// The group whose ranks' statistics BatchNorm uses (`--sync-bn`).
    pub(crate) sync_bn: Option<Arc<ProcessGroup>>,
}

impl MicroBatches<'_> {
    /// Backpropagates `input` (`[b, planes, s, s]`) against `targets` in `split` micro-batches
    /// of `ceil(b / split)` images, each loss multiplied by `scale`. Gradients add up as they
    /// do across accumulated batches (each micro-batch's loss is its mean times its size), so
    /// the sum matches one pass over the whole batch. Returns the batch's loss parts
    /// (micro-batches weighted by size). With `oom_limit`, micro-batches of more images fail
    /// as a CUDA out-of-memory error does ([`crate::SimulatedOom`]).
    pub(crate) fn backward(
        &self,
        input: &Tensor,
        targets: &Tensor,
        split: usize,
        scale: f64,
        oom_limit: Option<usize>,
    ) -> Result<[f64; 3], MicroBatchFailure> {
        let total = input.size()[0];
        let size = (total as usize).div_ceil(split) as i64;
        let mut parts = [0.0; 3];
        let mut start = 0;
        while start < total {
            let len = size.min(total - start);
            let (images, targets) = if len == total {
                (input.shallow_clone(), targets.shallow_clone())
            } else {
                micro_batch(input, targets, start, len)
            };
            let forward = || {
                if oom_limit.is_some_and(|limit| len as usize > limit) {
                    panic!("CUDA out of memory (simulated: a micro-batch of {len} images)");
                }
                let outputs = self.model.forward_t(&images, true);
                self.loss.compute(&outputs, &targets)
            };
            // The guard restores autocast's state (and clears its cache of casted weights)
            // however the forward pass ends, a caught out-of-memory panic included.
            let loss = {
                let _autocast = Autocast::enter(self.precision, self.device);
                catch_device_failure(|| match &self.sync_bn {
                    Some(group) => with_batch_norm(synchronised_batch_norm(group), forward),
                    None => forward(),
                })
            }??;
            let finite = loss.parts.iter().all(|p| p.is_finite());
            // With synchronised BatchNorm the backward passes exchange statistics: all ranks
            // run them, or none.
            let finite = match &self.sync_bn {
                Some(group) => !any_rank(group, !finite).map_err(MicroBatchFailure::Dist)?,
                None => finite,
            };
            if !finite {
                return Err(MicroBatchFailure::NonFinite);
            }
            catch_device_failure(|| (&loss.total * scale).f_backward())?
                .map_err(|error| self.backward_failure(error.to_string()))?;
            for (sum, part) in parts.iter_mut().zip(loss.parts) {
                *sum += part * len as f64 / total as f64;
            }
            start += len;
        }
        Ok(parts)
    }

    /// The failure a libtorch error in the backward pass stands for.
    fn backward_failure(&self, text: String) -> MicroBatchFailure {
        if is_out_of_memory(&text) {
            return MicroBatchFailure::OutOfMemory(text);
        }
        match &self.sync_bn {
            Some(group) if text.contains("sync_batch_norm") => {
                MicroBatchFailure::Dist(DistError::Collective {
                    op: "sync_batch_norm (backward)",
                    rank: group.rank(),
                    world_size: group.world_size(),
                    message: text,
                })
            }
            // Anything else is a bug, reported as tch reports libtorch errors.
            _ => panic!("{text}"),
        }
    }
}

/// BatchNorm over every rank's images; a failed collective unwinds the forward pass as a
/// [`DistError`] panic payload, which [`catch_device_failure`] turns back into an error.
fn synchronised_batch_norm(group: &Arc<ProcessGroup>) -> Rc<BatchNormFn> {
    let group = group.clone();
    Rc::new(move |xs, bn, eps, momentum| {
        group
            .sync_batch_norm(xs, bn, eps, momentum)
            .unwrap_or_else(|error| match &error {
                // The device's own failure, handled as every out-of-memory error is.
                DistError::Collective { message, .. } if is_out_of_memory(message) => {
                    panic!("{message}")
                }
                _ => panic::panic_any(error),
            })
    })
}

/// Images `start..start + len` of a batch and their targets, renumbered from 0.
fn micro_batch(input: &Tensor, targets: &Tensor, start: i64, len: i64) -> (Tensor, Tensor) {
    let image = targets.select(1, 0);
    let keep = image
        .ge(start as f64)
        .logical_and(&image.lt((start + len) as f64))
        .nonzero()
        .squeeze_dim(1);
    let rows = targets.index_select(0, &keep);
    if rows.size()[0] > 0 {
        let mut column = rows.narrow(1, 0, 1);
        let _ = column.g_sub_scalar_(start as f64);
    }
    (input.narrow(0, start, len), rows)
}

/// Dynamic loss scaling for fp16 training (PyTorch's GradScaler rule): losses are multiplied
/// by `scale` before backward; a step whose unscaled gradients are not finite is skipped and
/// halves the scale; 2000 good steps in a row double it. Disabled, the scale stays 1.
pub(crate) struct LossScaler {
    enabled: bool,
    pub(crate) scale: f64,
    good_steps: u32,
}

impl LossScaler {
    pub(crate) fn new(enabled: bool) -> Self {
        Self {
            enabled,
            scale: if enabled { 65536.0 } else { 1.0 },
            good_steps: 0,
        }
    }

    /// Whether losses are scaled (fp16 autocast on CUDA).
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// The scale and its run of good steps, for the checkpoint (`None` when disabled).
    pub(crate) fn state(&self) -> Option<(f64, u32)> {
        self.enabled.then_some((self.scale, self.good_steps))
    }

    /// Continues from a checkpoint's [`LossScaler::state`].
    pub(crate) fn restore(&mut self, (scale, good_steps): (f64, u32)) {
        self.scale = scale;
        self.good_steps = good_steps;
    }

    /// Unscales the gradients; `false` when the step must be skipped.
    pub(crate) fn unscale(&mut self, optimizer: &mut Optimizer) -> bool {
        if !self.enabled {
            return true;
        }
        optimizer.scale_grads(1.0 / self.scale);
        if optimizer.grads_finite() {
            self.good_steps += 1;
            if self.good_steps == 2000 {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
            true
        } else {
            self.scale /= 2.0;
            self.good_steps = 0;
            false
        }
    }
}
