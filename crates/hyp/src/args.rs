//! `Hyp`: training hyperparameters under Ultralytics' names; hyp.yaml, overrides, args.yaml.
//!
//! A hyp.yaml is a flat mapping of Ultralytics keys (plus fusekit's own, listed in
//! [`Hyp::KEYS`]). Missing keys and keys with an empty (null) value keep their defaults.
//! Keys Ultralytics has but fusekit does not use (`data`, `device`, `mixup`, `degrees`, ...)
//! are accepted and ignored, each reported as a [`HypWarning`] for the caller to show, so an
//! Ultralytics `args.yaml` can be reused; any other key is an error naming its line and the
//! closest known key.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::{Accumulate, Amp, LrScaling};

named_enum! {
    /// The optimizer (Ultralytics' names, case-insensitive). Ultralytics' `auto`, `Adam`,
    /// `MuSGD` and the rest are not supported.
    Optimizer, "optimizer" {
        /// SGD with Nesterov momentum `momentum`.
        Sgd = "SGD",
        /// AdamW with betas `(momentum, 0.999)`.
        AdamW = "AdamW",
    }
}

named_enum! {
    /// Where the RGB and infrared streams meet.
    Fusion, "fusion" {
        /// RGB only.
        Rgb = "rgb",
        /// Infrared only.
        Ir = "ir",
        /// Input channels stacked before the backbone.
        Early = "early",
        /// Two backbones, features fused before the neck.
        Mid = "mid",
        /// Two detectors, predictions fused.
        Late = "late",
    }
}

named_enum! {
    /// YOLOv8 model scale.
    ModelScale, "model scale" {
        /// Nano.
        N = "n",
        /// Small.
        S = "s",
        /// Medium.
        M = "m",
    }
}

named_enum! {
    /// What to do when the loss or fitness becomes NaN / infinite.
    NanPolicy, "nan policy" {
        /// Stop training with an error.
        Stop = "stop",
        /// Reload the last good checkpoint and redo the epoch (Ultralytics' behaviour).
        Rollback = "rollback",
    }
}

macro_rules! key_of {
    ($field:ident) => {
        stringify!($field)
    };
    ($field:ident $key:literal) => {
        $key
    };
}

/// Defines `Hyp`, `HypOverrides`, the yaml reading struct and the key table from one list.
macro_rules! hyp_fields {
    (
        $(
            $(#[doc = $doc:expr])*
            $field:ident $(as $key:literal)? : $ty:ty = $default:expr, $expect:literal;
        )*
    ) => {
        /// Resolved training hyperparameters; field names are Ultralytics' keys (except
        /// `box_gain`, whose key is `box`), defaults are Ultralytics 8.4's unless noted.
        #[derive(Debug, Clone, PartialEq, Serialize)]
        pub struct Hyp {
            $(
                $(#[doc = $doc])*
                $(#[serde(rename = $key)])?
                pub $field: $ty,
            )*
        }

        impl Default for Hyp {
            fn default() -> Self {
                Hyp { $($field: $default,)* }
            }
        }

        impl Hyp {
            /// Every key fusekit reads, in `args.yaml` order.
            pub const KEYS: &'static [&'static str] = &[$(key_of!($field $($key)?)),*];

            /// What each key accepts, for messages.
            const EXPECTED: &'static [(&'static str, &'static str)] =
                &[$((key_of!($field $($key)?), $expect)),*];
        }

        /// Explicit values (from the command line) laid over a [`Hyp`]; `None` keeps it.
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct HypOverrides {
            $(
                $(#[doc = $doc])*
                pub $field: Option<$ty>,
            )*
        }

        impl HypOverrides {
            /// Writes the set values into `hyp`; returns their keys.
            fn apply_to(&self, hyp: &mut Hyp) -> Vec<&'static str> {
                let mut set = Vec::new();
                $(
                    if let Some(value) = &self.$field {
                        hyp.$field = value.clone();
                        set.push(key_of!($field $($key)?));
                    }
                )*
                set
            }

            /// The keys of the set values.
            pub fn keys(&self) -> Vec<&'static str> {
                let mut set = Vec::new();
                $(
                    if self.$field.is_some() {
                        set.push(key_of!($field $($key)?));
                    }
                )*
                set
            }

            /// Whether no value is set.
            pub fn is_empty(&self) -> bool {
                true $(&& self.$field.is_none())*
            }
        }

        #[cfg(feature = "clap")]
        impl HypOverrides {
            /// One `--KEY` flag per hyperparameter (underscores as dashes), its help the
            /// key's documentation.
            pub(crate) fn flags() -> Vec<clap::Arg> {
                vec![$(
                    crate::flags::flag::<$ty>(
                        key_of!($field $($key)?),
                        &[$($doc),*],
                        $expect,
                    ),
                )*]
            }

            /// The values of the flags that [`HypOverrides::flags`] defined.
            pub(crate) fn from_flags(matches: &clap::ArgMatches) -> HypOverrides {
                HypOverrides {
                    $($field: matches.get_one::<$ty>(key_of!($field $($key)?)).cloned(),)*
                }
            }
        }

        /// hyp.yaml as written: every key optional, null meaning "default".
        #[derive(Debug, Deserialize)]
        struct RawHyp {
            $(
                $(#[serde(rename = $key)])?
                $field: Option<$ty>,
            )*
        }

        impl RawHyp {
            fn merge_into(self, hyp: &mut Hyp) {
                $(
                    if let Some(value) = self.$field {
                        hyp.$field = value;
                    }
                )*
            }
        }
    };
}

hyp_fields! {
    /// Training epochs.
    epochs: u32 = 100, "a whole number >= 1";
    /// Epochs without validation improvement before stopping early (0: never).
    patience: u32 = 100, "a whole number >= 0";
    /// Micro-batch per device (Ultralytics' `batch` is the total over devices; AutoBatch `-1`
    /// and memory fractions are not supported).
    batch: u32 = 16, "a whole number >= 1 (images per device; AutoBatch is not supported)";
    /// Square training image size, a multiple of 32.
    imgsz: u32 = 640, "a positive multiple of 32";
    /// Optimizer; fusekit's default is SGD (Ultralytics' default `auto` is not supported).
    optimizer: Optimizer = Optimizer::Sgd,
        "SGD or AdamW (Ultralytics' auto, Adam, MuSGD, ... are not supported)";
    /// Random seed.
    seed: u64 = 0, "a whole number >= 0";
    /// Cosine instead of linear epoch lambda.
    cos_lr: bool = false, "true or false";
    /// Turn mosaic off for the last N epochs (0: never).
    close_mosaic: u32 = 10, "a whole number >= 0";
    /// Mixed precision: `auto` (Ultralytics' `true`: bf16 on CUDA 8.0+, fp16 with loss
    /// scaling on older GPUs, f32 on the CPU), `bf16`, `fp16` or `off` (`false`).
    amp: Amp = Amp::Auto, "auto, bf16, fp16 or off (or true, false)";
    /// Initial learning rate, at `nbs` images per optimizer step.
    lr0: f64 = 0.01, "a number > 0";
    /// Final learning rate as a fraction of `lr0`.
    lrf: f64 = 0.01, "a number > 0";
    /// SGD momentum, or AdamW beta1.
    momentum: f64 = 0.937, "a number in [0, 1)";
    /// Weight decay at `nbs` images per optimizer step (decayed weights only).
    weight_decay: f64 = 0.0005, "a number >= 0";
    /// Warmup length in epochs (fractions allowed; 0 disables).
    warmup_epochs: f64 = 3.0, "a number >= 0";
    /// SGD momentum at the start of warmup.
    warmup_momentum: f64 = 0.8, "a number in [0, 1)";
    /// Bias learning rate at the start of warmup.
    warmup_bias_lr: f64 = 0.1, "a number >= 0";
    /// Box (IoU) loss gain; the yaml key is `box`.
    box_gain as "box": f64 = 7.5, "a number >= 0";
    /// Classification loss gain.
    cls: f64 = 0.5, "a number >= 0";
    /// Distribution focal loss gain.
    dfl: f64 = 1.5, "a number >= 0";
    /// Nominal batch size.
    nbs: u32 = 64, "a whole number >= 1";
    /// HSV hue augmentation (fraction).
    hsv_h: f64 = 0.015, "a number in [0, 1]";
    /// HSV saturation augmentation (fraction).
    hsv_s: f64 = 0.7, "a number in [0, 1]";
    /// HSV value augmentation (fraction).
    hsv_v: f64 = 0.4, "a number in [0, 1]";
    /// Translation augmentation (+/- fraction).
    translate: f64 = 0.1, "a number in [0, 1]";
    /// Scale augmentation gain (+/-).
    scale: f64 = 0.5, "a number in [0, 1)";
    /// Horizontal flip probability.
    fliplr: f64 = 0.5, "a number in [0, 1]";
    /// Mosaic probability.
    mosaic: f64 = 1.0, "a number in [0, 1]";
    /// fusekit: micro-batches per optimizer step, `auto` (Ultralytics' rule) or a number.
    accumulate: Accumulate = Accumulate::Auto, "auto or a whole number >= 1";
    /// fusekit: scale `lr0` with the effective batch (`linear`) or not (`none`).
    lr_scaling: LrScaling = LrScaling::Linear, "linear or none";
    /// fusekit: where the RGB and IR streams are fused.
    fusion: Fusion = Fusion::Mid, "one of rgb, ir, early, mid, late";
    /// fusekit: YOLOv8 model scale.
    model_scale: ModelScale = ModelScale::N, "one of n, s, m";
    /// fusekit: keep an exponential moving average of the weights.
    ema: bool = true, "true or false";
    /// fusekit: what to do on a NaN / infinite loss.
    nan_policy: NanPolicy = NanPolicy::Rollback, "stop or rollback";
    /// Write the run's plots: results.png each epoch, labels.jpg, train_batch0-2.jpg, and from
    /// the last validation the curves, confusion matrices and val_batch0 pictures.
    plots: bool = true, "true or false";
}

/// Ultralytics keys (8.4 `default.yaml` and a few older ones found in `args.yaml` files) that
/// fusekit accepts in a hyp.yaml and ignores with a warning.
const IGNORED_KEYS: &[&str] = &[
    "task",
    "mode",
    "model",
    "data",
    "time",
    "save",
    "save_period",
    "cache",
    "device",
    "workers",
    "project",
    "name",
    "exist_ok",
    "pretrained",
    "cls_remap",
    "verbose",
    "deterministic",
    "single_cls",
    "rect",
    "resume",
    "fraction",
    "profile",
    "freeze",
    "multi_scale",
    "compile",
    "channels_last",
    "overlap_mask",
    "mask_ratio",
    "dropout",
    "val",
    "split",
    "save_json",
    "conf",
    "iou",
    "max_det",
    "quantize",
    "dnn",
    "nms",
    "source",
    "vid_stride",
    "stream_buffer",
    "visualize",
    "augment",
    "agnostic_nms",
    "classes",
    "retina_masks",
    "embed",
    "show",
    "save_frames",
    "save_txt",
    "save_conf",
    "save_crop",
    "show_labels",
    "show_conf",
    "show_boxes",
    "line_width",
    "format",
    "optimize",
    "dynamic",
    "simplify",
    "opset",
    "workspace",
    "distill_model",
    "dis",
    "cls_pw",
    "pose",
    "kobj",
    "rle",
    "angle",
    "dlog",
    "dgrad",
    "dlam",
    "degrees",
    "shear",
    "perspective",
    "flipud",
    "bgr",
    "mixup",
    "cutmix",
    "copy_paste",
    "copy_paste_mode",
    "auto_augment",
    "erasing",
    "cfg",
    "tracker",
    "save_dir",
    "half",
    "int8",
    "keras",
    "label_smoothing",
    "save_hybrid",
    "boxes",
    "crop_fraction",
    "line_thickness",
    "hide_labels",
    "hide_conf",
];

/// Why hyperparameters could not be loaded, resolved or written.
#[derive(Debug, thiserror::Error)]
pub enum HypError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not a YAML mapping, or a syntax error.
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Yaml {
        /// The file.
        path: PathBuf,
        /// 1-based line, when known.
        line: Option<u64>,
        /// What is wrong.
        message: String,
    },
    /// A key that is neither fusekit's nor Ultralytics'.
    #[error(
        "{}:{line}: unknown key `{key}`{}",
        path.display(),
        suggestion.as_ref().map(|s| format!("; did you mean `{s}`?")).unwrap_or_default()
    )]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: u64,
        /// The key.
        key: String,
        /// The closest known key, if any is close.
        suggestion: Option<String>,
    },
    /// A value of the wrong type.
    #[error("{}:{line}: `{key}` must be {expected}; {message}", path.display())]
    WrongType {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: u64,
        /// The key.
        key: &'static str,
        /// What the key accepts.
        expected: &'static str,
        /// The parser's complaint.
        message: String,
    },
    /// A value of the right type out of its range.
    #[error("{origin}: `{key}` {message}")]
    Invalid {
        /// Where the value came from: `FILE:LINE` or `command line`.
        origin: String,
        /// The key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The arguments could not be written as YAML.
    #[error("could not write args yaml: {0}")]
    Serialize(String),
}

/// An Ultralytics key in a hyp.yaml that fusekit ignores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HypWarning {
    /// The file.
    pub path: PathBuf,
    /// 1-based line.
    pub line: u64,
    /// The key.
    pub key: String,
}

impl fmt::Display for HypWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: `{}` is an Ultralytics setting fusekit does not use; ignored",
            self.path.display(),
            self.line,
            self.key
        )
    }
}

/// Hyperparameters with the warnings met while loading them.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The validated hyperparameters.
    pub hyp: Hyp,
    /// Ignored keys, in file order.
    pub warnings: Vec<HypWarning>,
    /// The keys a file or the command line set (the others hold defaults).
    pub given: Vec<String>,
}

impl Hyp {
    /// Reads a hyp.yaml over the defaults and validates the result.
    pub fn from_yaml_file(path: &Path) -> Result<Loaded, HypError> {
        let text = std::fs::read_to_string(path).map_err(|source| HypError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml_str(&text, path)
    }

    /// Parses hyp.yaml text over the defaults and validates it; `path` names it in messages.
    pub fn from_yaml_str(text: &str, path: &Path) -> Result<Loaded, HypError> {
        let keys = match serde_saphyr::from_str::<KeyLines>(text) {
            Ok(keys) => keys.0,
            Err(e) => return Err(yaml_error(text, path, &e)),
        };
        let mut warnings = Vec::new();
        for (key, line) in &keys {
            if Hyp::KEYS.contains(&key.as_str()) {
                continue;
            }
            if IGNORED_KEYS.contains(&key.as_str()) {
                warnings.push(HypWarning {
                    path: path.to_path_buf(),
                    line: *line,
                    key: key.clone(),
                });
                continue;
            }
            return Err(HypError::UnknownKey {
                path: path.to_path_buf(),
                line: *line,
                key: key.clone(),
                suggestion: closest_key(key).map(str::to_owned),
            });
        }
        let raw: RawHyp = serde_saphyr::from_str(text).map_err(|e| yaml_error(text, path, &e))?;
        let mut hyp = Hyp::default();
        raw.merge_into(&mut hyp);
        hyp.check().map_err(|(key, message)| {
            let origin = match keys.iter().find(|(k, _)| k == key) {
                Some((_, line)) => format!("{}:{line}", path.display()),
                None => "default".to_owned(),
            };
            HypError::Invalid {
                origin,
                key,
                message,
            }
        })?;
        let given = keys
            .into_iter()
            .map(|(key, _)| key)
            .filter(|key| Hyp::KEYS.contains(&key.as_str()))
            .collect();
        Ok(Loaded {
            hyp,
            warnings,
            given,
        })
    }

    /// Defaults, then `file` when given, then `overrides`; validated.
    pub fn resolve(file: Option<&Path>, overrides: &HypOverrides) -> Result<Loaded, HypError> {
        let Loaded {
            hyp,
            warnings,
            mut given,
        } = match file {
            Some(path) => Self::from_yaml_file(path)?,
            None => Loaded {
                hyp: Hyp::default(),
                warnings: Vec::new(),
                given: Vec::new(),
            },
        };
        given.extend(overrides.keys().into_iter().map(str::to_owned));
        Ok(Loaded {
            hyp: hyp.with_overrides(overrides)?,
            warnings,
            given,
        })
    }

    /// These values with `overrides` laid over them; validated (errors say `command line`).
    pub fn with_overrides(mut self, overrides: &HypOverrides) -> Result<Hyp, HypError> {
        let set = overrides.apply_to(&mut self);
        self.check().map_err(|(key, message)| HypError::Invalid {
            origin: if set.contains(&key) {
                "command line".to_owned()
            } else {
                "hyp".to_owned()
            },
            key,
            message,
        })?;
        Ok(self)
    }

    /// Checks every value's range.
    pub fn validate(&self) -> Result<(), HypError> {
        self.check().map_err(|(key, message)| HypError::Invalid {
            origin: "hyp".to_owned(),
            key,
            message,
        })
    }

    /// The flat `key: value` YAML written as `args.yaml`; [`Hyp::from_yaml_str`] reads it back.
    pub fn to_yaml(&self) -> Result<String, HypError> {
        serde_saphyr::to_string(self).map_err(|e| HypError::Serialize(e.to_string()))
    }

    /// What `key` accepts, e.g. `"a number > 0"` for `lr0`; `None` for unknown keys.
    pub fn expected(key: &str) -> Option<&'static str> {
        Self::EXPECTED
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, e)| *e)
    }

    /// The first out-of-range value: its key and what is wrong.
    fn check(&self) -> Result<(), (&'static str, String)> {
        fn at_least_one(key: &'static str, v: u32) -> Result<(), (&'static str, String)> {
            if v == 0 {
                return Err((key, "must be at least 1".to_owned()));
            }
            Ok(())
        }
        fn range(
            key: &'static str,
            v: f64,
            min: f64,
            max: Option<(f64, bool)>,
            min_inclusive: bool,
        ) -> Result<(), (&'static str, String)> {
            let above = if min_inclusive { v >= min } else { v > min };
            let below = match max {
                None => v.is_finite(),
                Some((max, true)) => v <= max,
                Some((max, false)) => v < max,
            };
            if above && below {
                return Ok(());
            }
            let expected = Hyp::expected(key).unwrap_or("in range");
            Err((key, format!("must be {expected}, not {v}")))
        }
        at_least_one("epochs", self.epochs)?;
        at_least_one("batch", self.batch)?;
        at_least_one("nbs", self.nbs)?;
        if let Err(err) = crate::Imgsz::new(self.imgsz) {
            let message = err.to_string();
            let message = message.strip_prefix("imgsz ").unwrap_or(&message);
            return Err(("imgsz", message.to_owned()));
        }
        if self.accumulate == Accumulate::Fixed(0) {
            return Err(("accumulate", "must be auto or at least 1".to_owned()));
        }
        let unit = Some((1.0, true));
        let below_one = Some((1.0, false));
        range("lr0", self.lr0, 0.0, None, false)?;
        range("lrf", self.lrf, 0.0, None, false)?;
        range("momentum", self.momentum, 0.0, below_one, true)?;
        range("weight_decay", self.weight_decay, 0.0, None, true)?;
        range("warmup_epochs", self.warmup_epochs, 0.0, None, true)?;
        range(
            "warmup_momentum",
            self.warmup_momentum,
            0.0,
            below_one,
            true,
        )?;
        range("warmup_bias_lr", self.warmup_bias_lr, 0.0, None, true)?;
        range("box", self.box_gain, 0.0, None, true)?;
        range("cls", self.cls, 0.0, None, true)?;
        range("dfl", self.dfl, 0.0, None, true)?;
        range("hsv_h", self.hsv_h, 0.0, unit, true)?;
        range("hsv_s", self.hsv_s, 0.0, unit, true)?;
        range("hsv_v", self.hsv_v, 0.0, unit, true)?;
        range("translate", self.translate, 0.0, unit, true)?;
        range("scale", self.scale, 0.0, below_one, true)?;
        range("fliplr", self.fliplr, 0.0, unit, true)?;
        range("mosaic", self.mosaic, 0.0, unit, true)?;
        Ok(())
    }
}

/// The top-level keys of a mapping with their 1-based lines, in order.
struct KeyLines(Vec<(String, u64)>);

impl<'de> Deserialize<'de> for KeyLines {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeysVisitor;

        impl<'de> Visitor<'de> for KeysVisitor {
            type Value = KeyLines;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of `key: value` lines")
            }

            fn visit_unit<E>(self) -> Result<KeyLines, E> {
                Ok(KeyLines(Vec::new()))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeyLines, A::Error> {
                let mut keys = Vec::new();
                while let Some(key) = map.next_key::<serde_saphyr::Spanned<String>>()? {
                    map.next_value::<IgnoredAny>()?;
                    keys.push((key.value, key.referenced.line()));
                }
                Ok(KeyLines(keys))
            }
        }

        deserializer.deserialize_map(KeysVisitor)
    }
}

/// A parser error as a [`HypError`]: a type error when it points into a known key's value.
fn yaml_error(text: &str, path: &Path, error: &serde_saphyr::Error) -> HypError {
    let location = error.location().filter(|l| l.line() > 0);
    let line = location.map(|l| l.line());
    let mut message = error.without_snippet().to_string();
    if let Some(at) = message.rfind(" at line ") {
        message.truncate(at);
    }
    if let Some(rest) = message.strip_prefix("duplicate mapping key: ") {
        let key = rest.split(',').next().unwrap_or(rest);
        message = format!("duplicate key `{key}`");
    }
    let in_value = location.and_then(|l| {
        let (key, key_line) = key_at_line(text, l.line())?;
        // An error on the key itself (a duplicate, say) is not about the value's type.
        let on_key = key_line == l.line() && l.column() <= key.chars().count() as u64 + 1;
        let known = Hyp::EXPECTED.iter().find(|(k, _)| *k == key)?;
        (!on_key).then_some(*known)
    });
    match (line, in_value) {
        (Some(line), Some((key, expected))) => HypError::WrongType {
            path: path.to_path_buf(),
            line,
            key,
            expected,
            message,
        },
        _ => HypError::Yaml {
            path: path.to_path_buf(),
            line,
            message,
        },
    }
}

/// The top-level key whose entry contains 1-based `line`, with its own line: the last `key:`
/// at column 0 on or before it.
fn key_at_line(text: &str, line: u64) -> Option<(&str, u64)> {
    let limit = usize::try_from(line).ok()?;
    text.lines()
        .take(limit)
        .zip(1u64..)
        .filter_map(|(l, n)| {
            let first = l.chars().next()?;
            if first.is_whitespace() || matches!(first, '#' | '-' | '{' | '[') {
                return None;
            }
            let (key, _) = l.split_once(':')?;
            Some((key.trim().trim_matches(|c| c == '"' || c == '\''), n))
        })
        .last()
}

/// The known key (fusekit's or an ignored Ultralytics one) closest to `key`, if close enough.
fn closest_key(key: &str) -> Option<&'static str> {
    let lower = key.to_ascii_lowercase();
    let budget = (lower.chars().count() / 3).max(2);
    Hyp::KEYS
        .iter()
        .chain(IGNORED_KEYS)
        .map(|&k| (edit_distance(&lower, k), k))
        .filter(|&(d, _)| d <= budget)
        .min_by_key(|&(d, _)| d)
        .map(|(_, k)| k)
}

/// Levenshtein distance over chars, counting an adjacent swap as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = d;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("lr0", "lr0"), 0);
        assert_eq!(edit_distance("lr_0", "lr0"), 1);
        assert_eq!(edit_distance("moemntum", "momentum"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn suggestions() {
        assert_eq!(closest_key("lr_0"), Some("lr0"));
        assert_eq!(closest_key("LR0"), Some("lr0"));
        assert_eq!(closest_key("warmup_epoch"), Some("warmup_epochs"));
        assert_eq!(closest_key("epoch"), Some("epochs"));
        assert_eq!(closest_key("completely_different"), None);
    }

    #[test]
    fn key_lines() {
        let text = "# c\nlr0: 1\nfreeze:\n  - 1\n  - 2\n'cls': 3\n";
        assert_eq!(key_at_line(text, 1), None);
        assert_eq!(key_at_line(text, 2), Some(("lr0", 2)));
        assert_eq!(key_at_line(text, 5), Some(("freeze", 3)));
        assert_eq!(key_at_line(text, 6), Some(("cls", 6)));
    }

    #[test]
    fn ignored_and_known_keys_are_disjoint() {
        for key in IGNORED_KEYS {
            assert!(!Hyp::KEYS.contains(key), "{key}");
        }
        assert_eq!(Hyp::KEYS.len(), Hyp::EXPECTED.len());
    }

    #[test]
    fn overrides_empty() {
        assert!(HypOverrides::default().is_empty());
        let o = HypOverrides {
            lr0: Some(0.02),
            ..HypOverrides::default()
        };
        assert!(!o.is_empty());
    }
}
