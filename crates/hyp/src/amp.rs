//! `amp`: mixed precision, as Ultralytics' `amp: true|false` or a named dtype.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The mixed precision a run asks for (`amp:` in a hyp file, `--amp` on the command line).
///
/// Ultralytics' booleans are accepted: `true` is [`Amp::Auto`], `false` is [`Amp::Off`].
/// Which arithmetic a run then uses depends on the device; the trainer resolves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Amp {
    /// bf16 autocast where the device supports it (CUDA compute capability 8.0 or newer: no
    /// loss scaling), fp16 autocast with dynamic loss scaling on older CUDA devices, f32 on
    /// the CPU (Ultralytics' `amp: true`).
    #[default]
    Auto,
    /// bf16 autocast (CUDA 8.0+, or the CPU's own bf16 autocast), no loss scaling.
    Bf16,
    /// fp16 autocast with dynamic loss scaling (CUDA only).
    Fp16,
    /// f32 throughout (Ultralytics' `amp: false`).
    Off,
}

impl Amp {
    /// Every value, in the order `--help` lists them.
    pub const ALL: [Amp; 4] = [Amp::Auto, Amp::Bf16, Amp::Fp16, Amp::Off];

    /// The canonical spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Amp::Auto => "auto",
            Amp::Bf16 => "bf16",
            Amp::Fp16 => "fp16",
            Amp::Off => "off",
        }
    }
}

impl fmt::Display for Amp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Amp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "true" => Ok(Amp::Auto),
            "bf16" | "bfloat16" => Ok(Amp::Bf16),
            "fp16" | "float16" | "half" => Ok(Amp::Fp16),
            "off" | "false" | "fp32" | "f32" => Ok(Amp::Off),
            other => Err(format!(
                "`{other}` is not one of auto, bf16, fp16, off (or true, false)"
            )),
        }
    }
}

/// Written as Ultralytics writes it where it can be (`true` / `false`), so an `args.yaml`
/// with the default stays readable by Ultralytics; a named dtype as its name.
impl Serialize for Amp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Amp::Auto => serializer.serialize_bool(true),
            Amp::Off => serializer.serialize_bool(false),
            named => serializer.serialize_str(named.as_str()),
        }
    }
}

impl<'de> Deserialize<'de> for Amp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AmpVisitor;

        impl Visitor<'_> for AmpVisitor {
            type Value = Amp;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false, auto, bf16, fp16 or off")
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Amp, E> {
                Ok(if v { Amp::Auto } else { Amp::Off })
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Amp, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_any(AmpVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ultralytics_booleans_and_dtype_names_parse() {
        for (text, amp) in [
            ("true", Amp::Auto),
            ("auto", Amp::Auto),
            ("false", Amp::Off),
            ("off", Amp::Off),
            ("BF16", Amp::Bf16),
            ("bfloat16", Amp::Bf16),
            ("fp16", Amp::Fp16),
            ("half", Amp::Fp16),
        ] {
            assert_eq!(text.parse::<Amp>().unwrap(), amp, "{text}");
        }
        let error = "fp8".parse::<Amp>().unwrap_err();
        assert!(error.contains("auto, bf16, fp16, off"), "{error}");
    }

    #[test]
    fn every_value_round_trips_through_its_name() {
        for amp in Amp::ALL {
            assert_eq!(amp.as_str().parse::<Amp>().unwrap(), amp);
        }
    }
}
