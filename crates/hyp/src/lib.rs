//! Training hyperparameters, batch arithmetic and learning-rate schedules.
//!
//! Everything the trainer needs to know about its numbers, without libtorch:
//!
//! - [`Hyp`]: the training arguments under Ultralytics' names and defaults, loaded from a
//!   `hyp.yaml` ([`Hyp::from_yaml_file`]), overlaid with command-line values
//!   ([`HypOverrides`], [`Hyp::resolve`]) and written back as `args.yaml` ([`Hyp::to_yaml`]).
//!   Layering is defaults < hyp.yaml < command line.
//! - [`BatchPlan`]: micro-batch x accumulate x devices, the effective batch, and `lr0` /
//!   `weight_decay` scaled to it against the nominal batch size `nbs`.
//! - [`Schedule`]: learning rate of each parameter group and momentum at every loader batch,
//!   warmup included, following Ultralytics 8.4's `BaseTrainer`; [`ema_decay`] for `ModelEMA`.
//!
//! Parameter groups are in Ultralytics 8.4's optimizer order, so `lr/pg0`, `lr/pg1` and
//! `lr/pg2` in `results.csv` mean the same as there: see [`ParamGroup`].

use std::fmt;
use std::str::FromStr;

/// Defines a fieldless enum spelled as a word in yaml and on the command line: canonical
/// spelling for output, case-insensitive parsing, serde through that word.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The canonical spelling, as written to `args.yaml`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::ParseNameError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $crate::parse_name(s, $what, Self::ALL, |v| v.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

mod amp;
mod args;
mod batch;
#[cfg(feature = "clap")]
mod flags;
mod imgsz;
mod schedule;

pub use amp::Amp;
pub use args::{
    Fusion, Hyp, HypError, HypOverrides, HypWarning, Loaded, ModelScale, NanPolicy, Optimizer,
};
pub use batch::{Accumulate, BatchError, BatchInputs, BatchPlan, LrScaling, auto_accumulate};
pub use imgsz::{Imgsz, ImgszError};
pub use schedule::{
    EMA_DECAY, EMA_TAU, PARAM_GROUPS, ParamGroup, Schedule, ScheduleError, ScheduleRow, StepLr,
    ema_decay, render_csv, render_table, warmup_iterations,
};

/// A word that is none of an enum's spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a valid {what} (one of {expected})")]
pub struct ParseNameError {
    /// What was being parsed, e.g. `optimizer`.
    pub what: &'static str,
    /// The text given.
    pub value: String,
    /// The accepted spellings, comma separated.
    pub expected: String,
}

fn parse_name<T: Copy>(
    text: &str,
    what: &'static str,
    all: &[T],
    name: impl Fn(T) -> &'static str,
) -> Result<T, ParseNameError> {
    let text = text.trim();
    all.iter()
        .copied()
        .find(|&v| name(v).eq_ignore_ascii_case(text))
        .ok_or_else(|| ParseNameError {
            what,
            value: text.to_owned(),
            expected: all.iter().map(|&v| name(v)).collect::<Vec<_>>().join(", "),
        })
}

/// A number with at most 6 significant digits, shortest form: `0.0005`, `0.00075`, `64`.
pub(crate) fn fmt_sig(x: f64) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    let rounded = f64::from_str(&format!("{x:.5e}")).unwrap_or(x);
    format!("{rounded}")
}

/// `fmt::Display` helper for "1 device" / "2 devices".
pub(crate) struct Plural<'a>(pub u64, pub &'a str);

impl fmt::Display for Plural<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.0 == 1 { "" } else { "s" };
        write!(f, "{} {}{s}", self.0, self.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fmt_sig_trims_float_noise() {
        assert_eq!(fmt_sig(0.0007500000000000001), "0.00075");
        assert_eq!(fmt_sig(0.005), "0.005");
        assert_eq!(fmt_sig(64.0), "64");
        assert_eq!(fmt_sig(0.30000000000000004), "0.3");
        assert_eq!(fmt_sig(1.234_567_89e-5), "0.0000123457");
    }

    #[test]
    fn plural() {
        assert_eq!(Plural(1, "device").to_string(), "1 device");
        assert_eq!(Plural(2, "device").to_string(), "2 devices");
    }
}
