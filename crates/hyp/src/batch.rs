//! `BatchPlan`: micro-batch, gradient accumulation, devices, and the lr / weight decay they imply.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Hyp, Plural, fmt_sig};

/// How many micro-batches are accumulated per optimizer step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Accumulate {
    /// Ultralytics' rule: `max(round(nbs / (batch * devices)), 1)`, see [`auto_accumulate`].
    #[default]
    Auto,
    /// Exactly this many (must be >= 1).
    Fixed(u32),
}

impl fmt::Display for Accumulate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Accumulate::Auto => f.write_str("auto"),
            Accumulate::Fixed(n) => write!(f, "{n}"),
        }
    }
}

impl std::str::FromStr for Accumulate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Accumulate::Auto);
        }
        s.parse::<u32>()
            .map(Accumulate::Fixed)
            .map_err(|_| format!("`{s}` is neither `auto` nor a whole number"))
    }
}

impl Serialize for Accumulate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Accumulate::Auto => serializer.serialize_str("auto"),
            Accumulate::Fixed(n) => serializer.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for Accumulate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AccumulateVisitor;

        impl Visitor<'_> for AccumulateVisitor {
            type Value = Accumulate;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`auto` or a whole number >= 1")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Accumulate, E> {
                u32::try_from(v)
                    .map(Accumulate::Fixed)
                    .map_err(|_| E::custom(format!("{v} is too large")))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Accumulate, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("{v} is negative")))
                    .and_then(|v| self.visit_u64(v))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Accumulate, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_any(AccumulateVisitor)
    }
}

named_enum! {
    /// Whether `lr0` follows the effective batch size.
    LrScaling, "lr scaling" {
        /// `lr0` and `weight_decay` are both multiplied by `effective / nbs` (fusekit's default).
        Linear = "linear",
        /// `lr0` is used as given; `weight_decay` is still scaled, as Ultralytics always does.
        None = "none",
    }
}

/// Ultralytics' automatic accumulation: `max(round(nbs / (batch * devices)), 1)`.
///
/// Rounds half to even, as Python's `round` does (nbs 60, batch 24 gives 2, not 3). Zero
/// inputs give 1; [`BatchPlan::new`] rejects them first.
pub fn auto_accumulate(nbs: u32, batch: u32, devices: u32) -> u32 {
    let total = f64::from(batch) * f64::from(devices);
    if total <= 0.0 {
        return 1;
    }
    // The ratio is at most u32::MAX, so the cast is exact after rounding.
    ((f64::from(nbs) / total).round_ties_even() as u32).max(1)
}

/// What a [`BatchPlan`] is computed from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchInputs {
    /// Micro-batch per device (fusekit's `batch`; Ultralytics' `batch` is the total over devices).
    pub batch: u32,
    /// Accumulation rule.
    pub accumulate: Accumulate,
    /// Data-parallel world size.
    pub devices: u32,
    /// Nominal batch size the base `lr0` and `weight_decay` are meant for.
    pub nbs: u32,
    /// Whether `lr0` is scaled with the effective batch.
    pub lr_scaling: LrScaling,
    /// Base initial learning rate.
    pub lr0: f64,
    /// Base weight decay.
    pub weight_decay: f64,
}

impl BatchInputs {
    /// The inputs from resolved hyperparameters and a device count.
    pub fn from_hyp(hyp: &Hyp, devices: u32) -> Self {
        BatchInputs {
            batch: hyp.batch,
            accumulate: hyp.accumulate,
            devices,
            nbs: hyp.nbs,
            lr_scaling: hyp.lr_scaling,
            lr0: hyp.lr0,
            weight_decay: hyp.weight_decay,
        }
    }
}

/// Invalid [`BatchInputs`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatchError {
    /// `batch` was 0.
    #[error("batch must be at least 1")]
    ZeroBatch,
    /// `accumulate` was `Fixed(0)`.
    #[error("accumulate must be `auto` or at least 1")]
    ZeroAccumulate,
    /// `devices` was 0.
    #[error("the device count must be at least 1")]
    ZeroDevices,
    /// `nbs` was 0.
    #[error("nbs must be at least 1")]
    ZeroNbs,
    /// `lr0` was not a finite number > 0.
    #[error("lr0 must be a finite number > 0, not {0}")]
    Lr0(f64),
    /// `weight_decay` was not a finite number >= 0.
    #[error("weight_decay must be a finite number >= 0, not {0}")]
    WeightDecay(f64),
    /// `batch * accumulate * devices` does not fit in 64 bits.
    #[error("batch x accumulate x devices overflows")]
    Overflow,
}

/// A resolved micro-batch / accumulation / device plan and the lr and weight decay it implies.
///
/// `effective = batch * accumulate * devices`; with [`LrScaling::Linear`] both `lr0` and
/// `weight_decay` are multiplied by `effective / nbs`, with [`LrScaling::None`] only
/// `weight_decay` is (Ultralytics' behaviour). `Display` gives a one-line summary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchPlan {
    inputs: BatchInputs,
    accumulate: u32,
    effective: u64,
}

impl BatchPlan {
    /// Validates the inputs and resolves the accumulation.
    pub fn new(inputs: BatchInputs) -> Result<Self, BatchError> {
        if inputs.batch == 0 {
            return Err(BatchError::ZeroBatch);
        }
        if inputs.devices == 0 {
            return Err(BatchError::ZeroDevices);
        }
        if inputs.nbs == 0 {
            return Err(BatchError::ZeroNbs);
        }
        if !(inputs.lr0.is_finite() && inputs.lr0 > 0.0) {
            return Err(BatchError::Lr0(inputs.lr0));
        }
        if !(inputs.weight_decay.is_finite() && inputs.weight_decay >= 0.0) {
            return Err(BatchError::WeightDecay(inputs.weight_decay));
        }
        let accumulate = match inputs.accumulate {
            Accumulate::Auto => auto_accumulate(inputs.nbs, inputs.batch, inputs.devices),
            Accumulate::Fixed(0) => return Err(BatchError::ZeroAccumulate),
            Accumulate::Fixed(n) => n,
        };
        let effective = u64::from(inputs.batch)
            .checked_mul(u64::from(accumulate))
            .and_then(|n| n.checked_mul(u64::from(inputs.devices)))
            .ok_or(BatchError::Overflow)?;
        Ok(BatchPlan {
            inputs,
            accumulate,
            effective,
        })
    }

    /// The plan for resolved hyperparameters on `devices` devices.
    pub fn from_hyp(hyp: &Hyp, devices: u32) -> Result<Self, BatchError> {
        Self::new(BatchInputs::from_hyp(hyp, devices))
    }

    /// The inputs this plan was made from (base, unscaled `lr0` and `weight_decay`).
    pub fn inputs(&self) -> &BatchInputs {
        &self.inputs
    }

    /// Micro-batch per device.
    pub fn batch(&self) -> u32 {
        self.inputs.batch
    }

    /// Resolved micro-batches per optimizer step.
    pub fn accumulate(&self) -> u32 {
        self.accumulate
    }

    /// Data-parallel world size.
    pub fn devices(&self) -> u32 {
        self.inputs.devices
    }

    /// Nominal batch size.
    pub fn nbs(&self) -> u32 {
        self.inputs.nbs
    }

    /// Samples per optimizer step: `batch * accumulate * devices`.
    pub fn effective(&self) -> u64 {
        self.effective
    }

    /// Whether `lr0` is scaled.
    pub fn lr_scaling(&self) -> LrScaling {
        self.inputs.lr_scaling
    }

    /// `effective / nbs`.
    pub fn scale(&self) -> f64 {
        self.effective as f64 / f64::from(self.inputs.nbs)
    }

    /// The `lr0` to train with (the schedule's base learning rate).
    pub fn lr0(&self) -> f64 {
        match self.inputs.lr_scaling {
            LrScaling::Linear => self.scaled(self.inputs.lr0),
            LrScaling::None => self.inputs.lr0,
        }
    }

    /// The weight decay to give the decayed parameter group (always scaled, as Ultralytics does).
    pub fn weight_decay(&self) -> f64 {
        self.scaled(self.inputs.weight_decay)
    }

    /// `x * effective / nbs`, multiplied in Ultralytics' order (`x * batch * accumulate / nbs`,
    /// `batch` over all devices) so results agree to the last bit.
    fn scaled(&self, x: f64) -> f64 {
        let batch = u64::from(self.inputs.batch) * u64::from(self.inputs.devices);
        x * batch as f64 * f64::from(self.accumulate) / f64::from(self.inputs.nbs)
    }
}

impl fmt::Display for BatchPlan {
    /// `batch 8 x accumulate 4 x 1 device = 32 effective; lr0 0.01 @ nbs 64 -> 0.005 (linear),
    /// weight_decay 0.0005 -> 0.00025`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "batch {} x accumulate {} x {} = {} effective; lr0 {} @ nbs {} -> {} ({}), weight_decay {} -> {}",
            self.inputs.batch,
            self.accumulate,
            Plural(u64::from(self.inputs.devices), "device"),
            self.effective,
            fmt_sig(self.inputs.lr0),
            self.inputs.nbs,
            fmt_sig(self.lr0()),
            self.inputs.lr_scaling,
            fmt_sig(self.inputs.weight_decay),
            fmt_sig(self.weight_decay()),
        )
    }
}
