//! `Schedule`: per-batch learning rates, momentum and warmup accumulation; `ema_decay`.
//!
//! Follows Ultralytics 8.4's `BaseTrainer`: the epoch lambda of `_setup_scheduler` (applied at
//! the start of each epoch), the warmup length of `_get_warmup_iterations`, and the warmup
//! block of `_do_train`, evaluated once per loader batch `ni = batch + epoch * batches`.

use std::f64::consts::PI;
use std::fmt::{self, Write as _};

use crate::{BatchPlan, Hyp, Optimizer, fmt_sig};

/// An optimizer parameter group, in Ultralytics 8.4's order (`lr/pg0`, `lr/pg1`, `lr/pg2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamGroup {
    /// pg0: conv / linear weights, with weight decay.
    Weight,
    /// pg1: normalization-layer weights, no decay (Ultralytics calls it `bn`).
    Norm,
    /// pg2: every bias (normalization biases included), no decay; warms up from
    /// `warmup_bias_lr`.
    Bias,
}

/// The parameter groups in optimizer order: `PARAM_GROUPS[i]` is `lr/pg{i}`.
pub const PARAM_GROUPS: [ParamGroup; 3] = [ParamGroup::Weight, ParamGroup::Norm, ParamGroup::Bias];

impl ParamGroup {
    /// Position in the optimizer (the `i` of `lr/pg{i}`).
    pub const fn index(self) -> usize {
        match self {
            ParamGroup::Weight => 0,
            ParamGroup::Norm => 1,
            ParamGroup::Bias => 2,
        }
    }

    /// Ultralytics' `param_group` label: `weight`, `bn` or `bias`.
    pub const fn label(self) -> &'static str {
        match self {
            ParamGroup::Weight => "weight",
            ParamGroup::Norm => "bn",
            ParamGroup::Bias => "bias",
        }
    }

    /// Whether the group gets weight decay.
    pub const fn decays(self) -> bool {
        matches!(self, ParamGroup::Weight)
    }
}

/// Optimizer settings for one loader batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepLr {
    /// Learning rate per parameter group, indexed by [`ParamGroup::index`].
    pub lr: [f64; 3],
    /// SGD momentum, or AdamW beta1 (constant: Ultralytics warms up only SGD momentum).
    pub momentum: f64,
    /// Micro-batches per optimizer step at this batch: ramps from 1 during warmup, as
    /// Ultralytics does; step when `ni - last_step_ni >= accumulate`.
    pub accumulate: u32,
}

impl StepLr {
    /// The learning rate of one group.
    pub fn group(&self, group: ParamGroup) -> f64 {
        self.lr[group.index()]
    }
}

/// One line of the schedule table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleRow {
    /// 0-based epoch.
    pub epoch: u32,
    /// 0-based loader batch within the epoch.
    pub batch: u64,
    /// 0-based batch over the run (`ni`).
    pub global: u64,
    /// The settings at that batch.
    pub step: StepLr,
}

/// Invalid schedule inputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// No batches per epoch.
    #[error("an epoch must have at least one batch")]
    NoBatches,
    /// No epochs.
    #[error("training needs at least one epoch")]
    NoEpochs,
}

/// Ultralytics 8.4's warmup length in loader batches:
/// `round(min(warmup_epochs, max(epochs - 1, 0)) * batches)` when `warmup_epochs > 0`, else 0.
///
/// Warmup never covers the last epoch; Python's half-to-even rounding is kept.
pub fn warmup_iterations(warmup_epochs: f64, epochs: u32, batches_per_epoch: u64) -> u64 {
    let capped = warmup_epochs.min(f64::from(epochs.saturating_sub(1)));
    if capped > 0.0 {
        // Saturating float-to-int cast; the product is non-negative.
        (capped * batches_per_epoch as f64).round_ties_even() as u64
    } else {
        0
    }
}

/// The learning-rate / momentum schedule of a run.
///
/// Time is counted in loader batches (micro-batches), as Ultralytics counts `ni`: call
/// [`Schedule::at`] before every batch, set each group's lr (and momentum) and step the
/// optimizer when [`StepLr::accumulate`] batches have gone by. The epoch lambda is linear
/// `max(1 - e/E, 0) * (1 - lrf) + lrf` or cosine `max((1 - cos(e*pi/E)) / 2, 0) * (lrf - 1) + 1`,
/// evaluated at the 0-based epoch `e`, so epoch 0 trains at `lr0` and the last epoch at
/// `lr0 * lambda(E - 1)`, slightly above `lr0 * lrf`. During warmup (`ni <= nw`) every value is
/// interpolated linearly in `ni` between its start and `lr0 * lambda(epoch)`: bias lr from
/// `warmup_bias_lr`, other lrs from 0, SGD momentum from `warmup_momentum`, accumulation from 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    optimizer: Optimizer,
    cos_lr: bool,
    lr0: f64,
    lrf: f64,
    momentum: f64,
    warmup_momentum: f64,
    warmup_bias_lr: f64,
    warmup_epochs: f64,
    epochs: u32,
    batches_per_epoch: u64,
    warmup: u64,
    accumulate: u32,
}

impl Schedule {
    /// The schedule for `epochs` epochs of `batches_per_epoch` loader batches, with the
    /// plan's (scaled) `lr0` and accumulation.
    pub fn new(
        hyp: &Hyp,
        plan: &BatchPlan,
        batches_per_epoch: u64,
        epochs: u32,
    ) -> Result<Self, ScheduleError> {
        if batches_per_epoch == 0 {
            return Err(ScheduleError::NoBatches);
        }
        if epochs == 0 {
            return Err(ScheduleError::NoEpochs);
        }
        Ok(Schedule {
            optimizer: hyp.optimizer,
            cos_lr: hyp.cos_lr,
            lr0: plan.lr0(),
            lrf: hyp.lrf,
            momentum: hyp.momentum,
            warmup_momentum: hyp.warmup_momentum,
            warmup_bias_lr: hyp.warmup_bias_lr,
            warmup_epochs: hyp.warmup_epochs,
            epochs,
            batches_per_epoch,
            warmup: warmup_iterations(hyp.warmup_epochs, epochs, batches_per_epoch),
            accumulate: plan.accumulate(),
        })
    }

    /// Lengthens a non-zero warmup to at least `min` batches; `with_min_warmup(100)` gives the
    /// older Ultralytics rule `max(round(warmup_epochs * batches), 100)` (8.4 has no floor).
    pub fn with_min_warmup(mut self, min: u64) -> Self {
        if self.warmup_epochs > 0.0 {
            self.warmup = self.warmup.max(min);
        }
        self
    }

    /// Warmup length in loader batches (`nw`); batches `0..=nw` are interpolated.
    pub fn warmup_batches(&self) -> u64 {
        self.warmup
    }

    /// Epochs in the run.
    pub fn epochs(&self) -> u32 {
        self.epochs
    }

    /// Loader batches per epoch.
    pub fn batches_per_epoch(&self) -> u64 {
        self.batches_per_epoch
    }

    /// The base learning rate (the plan's scaled `lr0`).
    pub fn lr0(&self) -> f64 {
        self.lr0
    }

    /// The epoch lambda: the fraction of `lr0` used in 0-based `epoch` after warmup.
    pub fn lambda(&self, epoch: u32) -> f64 {
        let e = f64::from(epoch);
        let total = f64::from(self.epochs);
        if self.cos_lr {
            ((1.0 - (e * PI / total).cos()) / 2.0).max(0.0) * (self.lrf - 1.0) + 1.0
        } else {
            (1.0 - e / total).max(0.0) * (1.0 - self.lrf) + self.lrf
        }
    }

    /// Settings for loader batch `batch` of 0-based `epoch`. Batches past the end of an epoch
    /// or epochs past the run are extrapolated, never rejected.
    pub fn at(&self, epoch: u32, batch: u64) -> StepLr {
        let ni = u64::from(epoch)
            .saturating_mul(self.batches_per_epoch)
            .saturating_add(batch);
        let target = self.lr0 * self.lambda(epoch);
        if self.warmup > 0 && ni <= self.warmup {
            let ramp = |start: f64, end: f64| interp(ni, self.warmup, start, end);
            let mut lr = [ramp(0.0, target); 3];
            lr[ParamGroup::Bias.index()] = ramp(self.warmup_bias_lr, target);
            let momentum = match self.optimizer {
                Optimizer::Sgd => ramp(self.warmup_momentum, self.momentum),
                Optimizer::AdamW => self.momentum,
            };
            // At most `accumulate`, so the cast cannot truncate.
            let accumulate = ramp(1.0, f64::from(self.accumulate)).round_ties_even() as u32;
            StepLr {
                lr,
                momentum,
                accumulate: accumulate.max(1),
            }
        } else {
            StepLr {
                lr: [target; 3],
                momentum: self.momentum,
                accumulate: self.accumulate,
            }
        }
    }

    /// Settings for run-wide loader batch `ni`.
    pub fn at_global(&self, ni: u64) -> StepLr {
        let epoch = u32::try_from(ni / self.batches_per_epoch).unwrap_or(u32::MAX);
        self.at(epoch, ni % self.batches_per_epoch)
    }

    /// Settings at the last batch of `epoch`: what Ultralytics logs as `lr/pg*` in results.csv.
    pub fn epoch_end(&self, epoch: u32) -> StepLr {
        self.at(epoch, self.batches_per_epoch - 1)
    }

    fn row(&self, epoch: u32, batch: u64) -> ScheduleRow {
        ScheduleRow {
            epoch,
            batch,
            global: u64::from(epoch) * self.batches_per_epoch + batch,
            step: self.at(epoch, batch),
        }
    }

    /// Every batch of the run, in order.
    pub fn rows(&self) -> impl Iterator<Item = ScheduleRow> + '_ {
        (0..self.epochs)
            .flat_map(move |epoch| (0..self.batches_per_epoch).map(move |b| self.row(epoch, b)))
    }

    /// The last batch of each epoch (results.csv's values).
    pub fn epoch_rows(&self) -> impl Iterator<Item = ScheduleRow> + '_ {
        (0..self.epochs).map(move |epoch| self.row(epoch, self.batches_per_epoch - 1))
    }

    /// A readable summary: first and last batch of every epoch, and the end of warmup.
    pub fn key_rows(&self) -> Vec<ScheduleRow> {
        let last = self.batches_per_epoch - 1;
        let mut rows = Vec::new();
        for epoch in 0..self.epochs {
            let start = u64::from(epoch) * self.batches_per_epoch;
            let mut batches = vec![0, last];
            if self.warmup > start && self.warmup - start < last {
                batches.push(self.warmup - start);
            }
            batches.sort_unstable();
            batches.dedup();
            rows.extend(batches.into_iter().map(|b| self.row(epoch, b)));
        }
        rows
    }
}

impl fmt::Display for Schedule {
    /// `SGD, linear lambda, lr0 0.01 -> 0.0001, 100 epochs x 50 batches, warmup 150 batches`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, {} lambda, lr0 {} -> {}, {} epochs x {} batches, warmup {} batches",
            self.optimizer,
            if self.cos_lr { "cosine" } else { "linear" },
            fmt_sig(self.lr0),
            fmt_sig(self.lr0 * self.lrf),
            self.epochs,
            self.batches_per_epoch,
            self.warmup,
        )
    }
}

/// `np.interp(x, [0, n], [start, end])` for `0 <= x <= n`, with numpy's arithmetic.
fn interp(x: u64, n: u64, start: f64, end: f64) -> f64 {
    if x >= n {
        end
    } else {
        (end - start) / n as f64 * x as f64 + start
    }
}

const HEADER: [&str; 8] = [
    "epoch",
    "batch",
    "global",
    "lr/pg0",
    "lr/pg1",
    "lr/pg2",
    "momentum",
    "accumulate",
];

fn cells(row: &ScheduleRow, number: impl Fn(f64) -> String) -> [String; 8] {
    [
        row.epoch.to_string(),
        row.batch.to_string(),
        row.global.to_string(),
        number(row.step.lr[0]),
        number(row.step.lr[1]),
        number(row.step.lr[2]),
        number(row.step.momentum),
        row.step.accumulate.to_string(),
    ]
}

/// Right-aligned text columns (6 significant digits), one line per row, with a header.
pub fn render_table(rows: impl IntoIterator<Item = ScheduleRow>) -> String {
    let body: Vec<[String; 8]> = rows.into_iter().map(|r| cells(&r, fmt_sig)).collect();
    let mut widths = HEADER.map(str::len);
    for cells in &body {
        for (w, c) in widths.iter_mut().zip(cells) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let header = HEADER.map(str::to_owned);
    for cells in std::iter::once(&header).chain(&body) {
        let line: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  "));
    }
    out
}

/// CSV with a header and full-precision numbers.
pub fn render_csv(rows: impl IntoIterator<Item = ScheduleRow>) -> String {
    let mut out = HEADER.join(",");
    out.push('\n');
    for row in rows {
        out.push_str(&cells(&row, |x| format!("{x}")).join(","));
        out.push('\n');
    }
    out
}

/// Ultralytics' `ModelEMA` default maximum decay.
pub const EMA_DECAY: f64 = 0.9999;

/// Ultralytics' `ModelEMA` default ramp time constant, in updates.
pub const EMA_TAU: f64 = 2000.0;

/// EMA decay for an update: `decay * (1 - exp(-updates / tau))`.
///
/// `ModelEMA` counts the update before computing the decay, so pass 1 for the first update
/// (one update per optimizer step). A `tau` that is not > 0 gives `decay` (no ramp).
pub fn ema_decay(updates: u64, decay: f64, tau: f64) -> f64 {
    if tau > 0.0 {
        decay * (1.0 - (-(updates as f64) / tau).exp())
    } else {
        decay
    }
}
