//! Optimizers with Ultralytics' three parameter groups, written over plain tensors so that
//! their state (momentum buffers, Adam moments) is saved with checkpoints and resume is exact.
//! Updates, clipping and zeroing work on whole lists of tensors through libtorch's `_foreach_*`
//! operations, the arithmetic of torch.optim's default (foreach) SGD and AdamW and of
//! `clip_grad_norm_`: on CUDA a few kernel launches per list instead of several per tensor.

use std::collections::HashMap;

use fusekit_hyp::{Optimizer as OptimizerKind, ParamGroup};
use tch::{Kind, Tensor};

use crate::foreach;

/// The group of a variable by its name: BatchNorm weights (`.bn.weight`) are `Norm`, every
/// bias (BatchNorm's included) is `Bias`, other weights `Weight`. Running statistics and
/// frozen variables are not optimised.
pub fn param_group(name: &str) -> ParamGroup {
    if name.ends_with(".bias") {
        ParamGroup::Bias
    } else if name.ends_with(".bn.weight") {
        ParamGroup::Norm
    } else {
        ParamGroup::Weight
    }
}

/// One optimised variable.
#[derive(Debug)]
struct Param {
    name: String,
    var: Tensor,
    group: ParamGroup,
    /// SGD momentum buffer, or Adam's first moment.
    first: Option<Tensor>,
    /// Adam's second moment.
    second: Option<Tensor>,
}

/// Learning rate, momentum and weight decay of one step, per group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepSettings {
    /// Learning rate per group, in [`ParamGroup::index`] order.
    pub lr: [f64; 3],
    /// SGD momentum, or AdamW beta1.
    pub momentum: f64,
    /// Weight decay of the decayed group.
    pub weight_decay: f64,
}

/// SGD (Nesterov) or AdamW over the trainable variables of a model, grouped as Ultralytics
/// groups them.
#[derive(Debug)]
pub struct Optimizer {
    kind: OptimizerKind,
    params: Vec<Param>,
    steps: u64,
}

impl Optimizer {
    /// An optimizer over the trainable `variables` (name, tensor).
    pub fn new(kind: OptimizerKind, variables: HashMap<String, Tensor>) -> Self {
        let mut params: Vec<Param> = variables
            .into_iter()
            .filter(|(_, var)| var.requires_grad())
            .map(|(name, var)| Param {
                group: param_group(&name),
                name,
                var,
                first: None,
                second: None,
            })
            .collect();
        params.sort_by(|a, b| a.name.cmp(&b.name));
        Self {
            kind,
            params,
            steps: 0,
        }
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The gradients that exist (a variable gets one at its first backward pass).
    fn grads(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .map(|p| p.var.grad())
            .filter(Tensor::defined)
            .collect()
    }

    /// Sets every gradient to zero.
    pub fn zero_grad(&mut self) {
        foreach::zero_(&self.grads());
    }

    /// Scales the gradients so that their global L2 norm is at most `max_norm` (PyTorch's
    /// `clip_grad_norm_`, whose arithmetic this is); returns the norm before clipping, a
    /// 0-dimensional f32 tensor on the gradients' device. Nothing is read back to the host, so
    /// the device is not synchronised; reading the norm does that.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Tensor {
        let grads = self.grads();
        if grads.is_empty() {
            return Tensor::from(0.0f32);
        }
        let norms: Vec<Tensor> = foreach::norm(&grads)
            .into_iter()
            .map(|n| n.to_kind(Kind::Float))
            .collect();
        let total = Tensor::stack(&norms, 0).norm();
        let coefficient = (max_norm / (&total + 1e-6)).clamp_max(1.0);
        foreach::mul_by_(&grads, &coefficient);
        total
    }

    /// `true` when every gradient is finite. One device-to-host read for all of them.
    pub fn grads_finite(&self) -> bool {
        let checks: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| p.var.grad())
            .filter(Tensor::defined)
            .map(|g| g.isfinite().all())
            .collect();
        checks.is_empty() || Tensor::stack(&checks, 0).all().int64_value(&[]) == 1
    }

    /// Copies of the current gradients, in [`Optimizer::set_gradients`]' order (`None` for a
    /// variable without one).
    pub fn gradients(&self) -> Vec<Option<Tensor>> {
        self.params
            .iter()
            .map(|p| {
                let g = p.var.grad();
                g.defined().then(|| g.copy())
            })
            .collect()
    }

    /// Puts back gradients saved by [`Optimizer::gradients`]: a variable saved without one gets
    /// zeros.
    pub fn set_gradients(&mut self, saved: &[Option<Tensor>]) {
        for (p, saved) in self.params.iter().zip(saved) {
            let mut grad = p.var.grad();
            if !grad.defined() {
                continue;
            }
            match saved {
                Some(value) => grad.copy_(value),
                None => {
                    let _ = grad.zero_();
                }
            }
        }
    }

    /// Multiplies every gradient by `factor` (loss-scale removal).
    pub fn scale_grads(&mut self, factor: f64) {
        foreach::mul_(&self.grads(), factor);
    }

    /// One update with `settings`, as PyTorch's SGD (nesterov, no dampening) or AdamW
    /// (betas `(momentum, 0.999)`, eps 1e-8) would make it with their default multi-tensor
    /// implementation: one list per parameter group.
    pub fn step(&mut self, settings: &StepSettings) {
        self.steps += 1;
        let t = self.steps as i32;
        let kind = self.kind;
        for group in [ParamGroup::Weight, ParamGroup::Norm, ParamGroup::Bias] {
            let lr = settings.lr[group.index()];
            let decay = if group.decays() {
                settings.weight_decay
            } else {
                0.0
            };
            let mut members: Vec<&mut Param> = self
                .params
                .iter_mut()
                .filter(|p| p.group == group && p.var.grad().defined())
                .collect();
            if members.is_empty() {
                continue;
            }
            tch::no_grad(|| match kind {
                OptimizerKind::Sgd => sgd_step(&mut members, lr, settings.momentum, decay),
                OptimizerKind::AdamW => adamw_step(&mut members, lr, settings.momentum, decay, t),
            });
        }
    }

    /// The state to checkpoint: `(name, tensor)` for every buffer, keyed
    /// `<variable>/first` and `<variable>/second`, and the step count.
    pub fn state(&self) -> (Vec<(String, Tensor)>, u64) {
        let mut state = Vec::new();
        for p in &self.params {
            if let Some(first) = &p.first {
                state.push((format!("{}/first", p.name), first.shallow_clone()));
            }
            if let Some(second) = &p.second {
                state.push((format!("{}/second", p.name), second.shallow_clone()));
            }
        }
        (state, self.steps)
    }

    /// Restores buffers saved by [`Optimizer::state`]; buffers of other shapes are an error
    /// naming the variable.
    pub fn restore(&mut self, state: &HashMap<String, Tensor>, steps: u64) -> Result<(), String> {
        for p in &mut self.params {
            for (suffix, slot) in [("first", &mut p.first), ("second", &mut p.second)] {
                if let Some(saved) = state.get(&format!("{}/{suffix}", p.name)) {
                    if saved.size() != p.var.size() {
                        return Err(format!(
                            "optimizer buffer of `{}` has shape {:?}, the variable {:?}",
                            p.name,
                            saved.size(),
                            p.var.size()
                        ));
                    }
                    *slot = Some(saved.to_device(p.var.device()).to_kind(p.var.kind()));
                }
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// Nesterov SGD without dampening over one group (torch's `_multi_tensor_sgd`): `d = g + decay
/// p`, `buf = momentum buf + d` (a copy of `d` at first), `p -= lr (d + momentum buf)`.
fn sgd_step(members: &mut [&mut Param], lr: f64, momentum: f64, decay: f64) {
    let vars: Vec<Tensor> = members.iter().map(|p| p.var.shallow_clone()).collect();
    let grads: Vec<Tensor> = members.iter().map(|p| p.var.grad()).collect();
    let decayed = if decay > 0.0 {
        foreach::add(&grads, &vars, decay)
    } else {
        grads
    };
    let (mut old, mut old_d) = (Vec::new(), Vec::new());
    for (p, d) in members.iter_mut().zip(&decayed) {
        match &p.first {
            Some(buffer) => {
                old.push(buffer.shallow_clone());
                old_d.push(d.shallow_clone());
            }
            None => p.first = Some(d.copy()),
        }
    }
    foreach::mul_(&old, momentum);
    foreach::add_(&old, &old_d, 1.0);
    let buffers: Vec<Tensor> = members
        .iter()
        .map(|p| p.first.as_ref().expect("set above").shallow_clone())
        .collect();
    let update = foreach::add(&decayed, &buffers, momentum);
    foreach::add_(&vars, &update, -lr);
}

/// AdamW over one group (torch's `_multi_tensor_adamw`, eps 1e-8, beta2 0.999): `p *= 1 - lr
/// decay`, `m` lerps towards `g` by `1 - beta1`, `v = beta2 v + (1 - beta2) g^2`, then `p -= lr /
/// (1 - beta1^t) m / (sqrt(v) / sqrt(1 - beta2^t) + eps)`.
fn adamw_step(members: &mut [&mut Param], lr: f64, beta1: f64, decay: f64, t: i32) {
    let (beta2, eps) = (0.999, 1e-8);
    let vars: Vec<Tensor> = members.iter().map(|p| p.var.shallow_clone()).collect();
    let grads: Vec<Tensor> = members.iter().map(|p| p.var.grad()).collect();
    if decay > 0.0 {
        foreach::mul_(&vars, 1.0 - lr * decay);
    }
    for (p, g) in members.iter_mut().zip(&grads) {
        p.first.get_or_insert_with(|| g.zeros_like());
        p.second.get_or_insert_with(|| g.zeros_like());
    }
    let moment = |pick: fn(&Param) -> &Option<Tensor>| -> Vec<Tensor> {
        members
            .iter()
            .map(|p| pick(p).as_ref().expect("set above").shallow_clone())
            .collect()
    };
    let (m, v) = (moment(|p| &p.first), moment(|p| &p.second));
    foreach::lerp_(&m, &grads, 1.0 - beta1);
    foreach::mul_(&v, beta2);
    foreach::addcmul_(&v, &grads, &grads, 1.0 - beta2);
    let correction1 = 1.0 - beta1.powi(t);
    let correction2 = 1.0 - beta2.powi(t);
    let denominator = foreach::sqrt(&v);
    foreach::div_(&denominator, correction2.sqrt());
    foreach::add_scalar_(&denominator, eps);
    foreach::addcdiv_(&vars, &m, &denominator, -lr / correction1);
}
