//! Exponential moving average of a model's weights (Ultralytics' `ModelEMA`).

use tch::Tensor;
use tch::nn::VarStore;

use fusekit_hyp::ema_decay;

/// A moving average of every floating-point variable of a model (BatchNorm running
/// statistics included): `ema = d * ema + (1 - d) * model` with
/// `d = decay * (1 - exp(-updates / tau))`.
#[derive(Debug)]
pub struct Ema {
    pairs: Vec<(Tensor, Tensor)>,
    updates: u64,
    decay: f64,
    tau: f64,
}

impl Ema {
    /// An average of `model`'s variables kept in `ema` (a store with the same names),
    /// starting equal to the model.
    pub fn new(model: &VarStore, ema: &VarStore, decay: f64, tau: f64) -> Self {
        let average = Self::resume(model, ema, decay, tau, 0);
        tch::no_grad(|| {
            for (average, live) in &average.pairs {
                average.shallow_clone().copy_(live);
            }
        });
        average
    }

    /// Continues an average that `ema` already holds (restored from a checkpoint) after
    /// `updates` updates.
    pub fn resume(model: &VarStore, ema: &VarStore, decay: f64, tau: f64, updates: u64) -> Self {
        let source = model.variables();
        let mut pairs: Vec<(String, (Tensor, Tensor))> = ema
            .variables()
            .into_iter()
            .filter_map(|(name, average)| {
                let live = source.get(&name)?.shallow_clone();
                Some((name, (average, live)))
            })
            .collect();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        Self {
            pairs: pairs.into_iter().map(|(_, p)| p).collect(),
            updates,
            decay,
            tau,
        }
    }

    /// Updates after an optimizer step.
    pub fn update(&mut self) {
        self.updates += 1;
        let d = ema_decay(self.updates, self.decay, self.tau);
        tch::no_grad(|| {
            for (average, live) in &self.pairs {
                let mut average = average.shallow_clone();
                let _ = average.g_mul_scalar_(d);
                let _ = average.g_add_(&(live.detach() * (1.0 - d)));
            }
        });
    }

    /// Updates made so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }
}
