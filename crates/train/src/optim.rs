//! Optimizers with Ultralytics' three parameter groups, written over plain tensors so that
//! their state (momentum buffers, Adam moments) is saved with checkpoints and resume is exact.

use std::collections::HashMap;

use fusekit_hyp::{Optimizer as OptimizerKind, ParamGroup};
use tch::{Kind, Tensor};

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

    /// Sets every gradient to zero.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            let mut grad = p.var.grad();
            if grad.defined() {
                let _ = grad.zero_();
            }
        }
    }

    /// Scales the gradients so that their global L2 norm is at most `max_norm` (PyTorch's
    /// `clip_grad_norm_`); returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let grads: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| p.var.grad())
            .filter(Tensor::defined)
            .collect();
        if grads.is_empty() {
            return 0.0;
        }
        let norms: Vec<Tensor> = grads
            .iter()
            .map(|g| g.norm().to_kind(Kind::Float))
            .collect();
        let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
        let coefficient = max_norm / (total + 1e-6);
        if coefficient < 1.0 {
            for mut g in grads {
                let _ = g.g_mul_scalar_(coefficient);
            }
        }
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
        for p in &self.params {
            let mut g = p.var.grad();
            if g.defined() {
                let _ = g.g_mul_scalar_(factor);
            }
        }
    }

    /// One update with `settings`, as PyTorch's SGD (nesterov, no dampening) or AdamW
    /// (betas `(momentum, 0.999)`, eps 1e-8) would make it.
    pub fn step(&mut self, settings: &StepSettings) {
        self.steps += 1;
        let t = self.steps as i32;
        let kind = self.kind;
        tch::no_grad(|| {
            for p in &mut self.params {
                let grad = p.var.grad();
                if !grad.defined() {
                    continue;
                }
                let lr = settings.lr[p.group.index()];
                let decay = if p.group.decays() {
                    settings.weight_decay
                } else {
                    0.0
                };
                match kind {
                    OptimizerKind::Sgd => {
                        let d = if decay > 0.0 {
                            &grad + &p.var * decay
                        } else {
                            grad.shallow_clone()
                        };
                        let buffer = match p.first.take() {
                            Some(mut b) => {
                                let _ = b.g_mul_scalar_(settings.momentum).g_add_(&d);
                                b
                            }
                            None => d.copy(),
                        };
                        let update = &d + &buffer * settings.momentum;
                        let _ = p.var.g_sub_(&(update * lr));
                        p.first = Some(buffer);
                    }
                    OptimizerKind::AdamW => {
                        let (beta1, beta2, eps) = (settings.momentum, 0.999, 1e-8);
                        if decay > 0.0 {
                            let _ = p.var.g_mul_scalar_(1.0 - lr * decay);
                        }
                        let mut m = p.first.take().unwrap_or_else(|| grad.zeros_like());
                        let mut v = p.second.take().unwrap_or_else(|| grad.zeros_like());
                        let _ = m.g_mul_scalar_(beta1).g_add_(&(&grad * (1.0 - beta1)));
                        let _ = v
                            .g_mul_scalar_(beta2)
                            .g_add_(&(grad.square() * (1.0 - beta2)));
                        let correction1 = 1.0 - beta1.powi(t);
                        let correction2 = 1.0 - beta2.powi(t);
                        let denominator = (&v / correction2).sqrt() + eps;
                        let _ = p.var.g_sub_(&(&m / denominator * (lr / correction1)));
                        p.first = Some(m);
                        p.second = Some(v);
                    }
                }
            }
        });
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
