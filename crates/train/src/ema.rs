//! Exponential moving average of a model's weights (Ultralytics' `ModelEMA`).

use tch::Tensor;
use tch::nn::VarStore;

use crate::foreach;

use fusekit_hyp::ema_decay;

/// A moving average of every floating-point variable of a model (BatchNorm running
/// statistics included): `ema = d * ema + (1 - d) * model` with
/// `d = decay * (1 - exp(-updates / tau))`.
#[derive(Debug)]
pub struct Ema {
    /// The averages, in name order.
    averages: Vec<Tensor>,
    /// The model's variables they follow, in the same order.
    lives: Vec<Tensor>,
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
            for (average, live) in average.averages.iter().zip(&average.lives) {
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
        let (averages, lives) = pairs.into_iter().map(|(_, p)| p).unzip();
        Self {
            averages,
            lives,
            updates,
            decay,
            tau,
        }
    }

    /// Updates after an optimizer step: `average = d average + (1 - d) live` over every
    /// pair, as two multi-tensor operations (a few kernel launches on CUDA, not two per
    /// tensor).
    pub fn update(&mut self) {
        self.updates += 1;
        let d = ema_decay(self.updates, self.decay, self.tau);
        foreach::mul_(&self.averages, d);
        foreach::add_(&self.averages, &self.lives, 1.0 - d);
    }

    /// Updates made so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }
}
