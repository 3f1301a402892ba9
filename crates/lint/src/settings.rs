//! Rule levels and lint options, from flags and from the `[lint]` section of `fusekit.toml`.

use std::path::{Path, PathBuf};

use fusekit_dataset::{DecodeLevel, IrNorm};
use serde::{Deserialize, Serialize};

use crate::codes::{Code, Severity};

/// A problem with lint options or the config file (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A selector names no code or family.
    #[error(
        "unknown rule `{0}`: expected a code such as LBL009, a family (PAIR, IMG, LBL, DS) or ALL"
    )]
    UnknownRule(String),
    /// The config file cannot be read or parsed.
    #[error("{path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong, with line and column when the parser gives them.
        message: String,
    },
}

/// The level chosen for a selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Report as an error.
    Deny,
    /// Report as a warning.
    Warn,
    /// Do not report.
    Allow,
}

/// The severity of every code (`None`: not reported).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Levels {
    severities: Vec<Option<Severity>>,
}

impl Default for Levels {
    fn default() -> Self {
        Self {
            severities: Code::ALL
                .iter()
                .map(|c| Some(c.default_severity()))
                .collect(),
        }
    }
}

impl Levels {
    /// The severity of `code`, or `None` when it is allowed (off).
    pub fn severity(&self, code: Code) -> Option<Severity> {
        self.severities[index(code)]
    }

    /// Whether `code` is reported at all.
    pub fn enabled(&self, code: Code) -> bool {
        self.severity(code).is_some()
    }

    /// Sets the level of every code matched by `selector` (a code, a family or `ALL`).
    pub fn set(&mut self, selector: &str, level: Level) -> Result<(), SettingsError> {
        let codes = select(selector)?;
        for code in codes {
            self.severities[index(code)] = match level {
                Level::Deny => Some(Severity::Error),
                Level::Warn => Some(Severity::Warning),
                Level::Allow => None,
            };
        }
        Ok(())
    }

    /// Applies `allow`, then `warn`, then `deny` selectors.
    pub fn apply(&mut self, selectors: &LevelSelectors) -> Result<(), SettingsError> {
        for (list, level) in [
            (&selectors.allow, Level::Allow),
            (&selectors.warn, Level::Warn),
            (&selectors.deny, Level::Deny),
        ] {
            for selector in list {
                self.set(selector, level)?;
            }
        }
        Ok(())
    }
}

fn index(code: Code) -> usize {
    Code::ALL
        .iter()
        .position(|&c| c == code)
        .expect("every code is in ALL")
}

fn select(selector: &str) -> Result<Vec<Code>, SettingsError> {
    let selector = selector.trim();
    if selector.eq_ignore_ascii_case("ALL") {
        return Ok(Code::ALL.to_vec());
    }
    if let Some(code) = Code::parse(selector) {
        return Ok(vec![code]);
    }
    let family: Vec<Code> = Code::ALL
        .iter()
        .copied()
        .filter(|c| c.family().eq_ignore_ascii_case(selector))
        .collect();
    if family.is_empty() {
        return Err(SettingsError::UnknownRule(selector.to_owned()));
    }
    Ok(family)
}

/// Rule selectors for each level, as given by flags or the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LevelSelectors {
    /// Reported as errors.
    pub deny: Vec<String>,
    /// Reported as warnings.
    pub warn: Vec<String>,
    /// Not reported.
    pub allow: Vec<String>,
}

/// The `[lint]` section of `fusekit.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LintSection {
    /// Reported as errors.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Reported as warnings.
    #[serde(default)]
    pub warn: Vec<String>,
    /// Not reported.
    #[serde(default)]
    pub allow: Vec<String>,
    /// `header` or `full`.
    pub decode: Option<String>,
    /// Training image size for LBL011.
    pub imgsz: Option<u32>,
    /// Warnings fail too.
    pub strict: Option<bool>,
    /// The largest RGB-IR shift that is not reported as PAIR007 / DS005.
    pub max_offset: Option<MaxOffset>,
}

impl LintSection {
    /// The section's rule selectors.
    pub fn selectors(&self) -> LevelSelectors {
        LevelSelectors {
            deny: self.deny.clone(),
            warn: self.warn.clone(),
            allow: self.allow.clone(),
        }
    }
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    lint: LintSection,
}

/// The config file name looked for next to the dataset and in the working directory.
pub const CONFIG_FILE: &str = "fusekit.toml";

/// Reads the `[lint]` section of a config file.
pub fn read_config(path: &Path) -> Result<LintSection, SettingsError> {
    let config_error = |message: String| SettingsError::Config {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| config_error(e.to_string()))?;
    let file: ConfigFile = toml::from_str(&text).map_err(|e| config_error(e.to_string()))?;
    if let Some(decode) = &file.lint.decode {
        parse_decode(decode).map_err(config_error)?;
    }
    Levels::default().apply(&file.lint.selectors())?;
    Ok(file.lint)
}

/// The first `fusekit.toml` in `dirs`, in order.
pub fn find_config(dirs: &[&Path]) -> Option<PathBuf> {
    dirs.iter()
        .map(|d| d.join(CONFIG_FILE))
        .find(|p| p.is_file())
}

/// Parses `header` or `full`.
pub fn parse_decode(text: &str) -> Result<DecodeLevel, String> {
    match text {
        "header" => Ok(DecodeLevel::Header),
        "full" => Ok(DecodeLevel::Full),
        other => Err(format!("decode must be `header` or `full`, not `{other}`")),
    }
}

/// The largest shift between the RGB and IR images of a pair that lint accepts (PAIR007,
/// DS005): written as a number below 1 (a fraction of the image width, `0.02`), a percentage
/// of the width (`"2%"`) or pixels (`"12px"`). The default is 2% of the width.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "MaxOffsetText", into = "String")]
pub enum MaxOffset {
    /// A fraction of the image width, in (0, 1).
    Fraction(f64),
    /// Pixels of the original image, above 0.
    Pixels(f64),
}

// Parsing refuses every value that is not finite and positive, so no NaN is ever held.
impl Eq for MaxOffset {}

impl Default for MaxOffset {
    fn default() -> Self {
        MaxOffset::Fraction(0.02)
    }
}

impl MaxOffset {
    /// The limit in pixels for an image `width` pixels wide.
    pub fn pixels(self, width: u32) -> f64 {
        match self {
            MaxOffset::Fraction(fraction) => fraction * f64::from(width),
            MaxOffset::Pixels(pixels) => pixels,
        }
    }
}

impl std::fmt::Display for MaxOffset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaxOffset::Fraction(fraction) => write!(f, "{}%", (fraction * 1e4).round() / 1e2),
            MaxOffset::Pixels(pixels) => write!(f, "{pixels}px"),
        }
    }
}

impl std::str::FromStr for MaxOffset {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let number = |digits: &str| {
            digits
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v > 0.0)
                .ok_or_else(|| {
                    format!("max_offset `{text}` is not a positive number (e.g. 0.02, \"2%\" or \"12px\")")
                })
        };
        if let Some(pixels) = text.strip_suffix("px") {
            return Ok(MaxOffset::Pixels(number(pixels)?));
        }
        let fraction = match text.strip_suffix('%') {
            Some(percent) => number(percent)? / 100.0,
            None => number(text)?,
        };
        if fraction >= 1.0 {
            return Err(format!(
                "max_offset `{text}` is a whole image width or more: write a fraction below 1 (0.02), a percentage (\"2%\") or pixels (\"12px\")"
            ));
        }
        Ok(MaxOffset::Fraction(fraction))
    }
}

impl From<MaxOffset> for String {
    fn from(value: MaxOffset) -> String {
        value.to_string()
    }
}

/// `max_offset` as written in a file: a number or a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum MaxOffsetText {
    Number(f64),
    Text(String),
}

impl TryFrom<MaxOffsetText> for MaxOffset {
    type Error = String;

    fn try_from(value: MaxOffsetText) -> Result<Self, Self::Error> {
        match value {
            MaxOffsetText::Number(number) => number.to_string().parse(),
            MaxOffsetText::Text(text) => text.parse(),
        }
    }
}

/// Everything that shapes a lint run.
#[derive(Debug, Clone)]
pub struct LintOptions {
    /// How much of each image to read.
    pub decode: DecodeLevel,
    /// Training image size (long side) for LBL011.
    pub imgsz: u32,
    /// Check only the first N pairs (in path order).
    pub limit: Option<usize>,
    /// Severity of each code.
    pub levels: Levels,
    /// The IR normalisation the caches will use when it is not the dataset's own `ir_norm`
    /// (`fusekit cache build --ir-norm`).
    pub ir_norm: Option<IrNorm>,
    /// The largest RGB-IR shift not reported (PAIR007, DS005; full decode only).
    pub max_offset: MaxOffset,
}

impl Default for LintOptions {
    fn default() -> Self {
        Self {
            decode: DecodeLevel::Header,
            imgsz: 640,
            limit: None,
            levels: Levels::default(),
            ir_norm: None,
            max_offset: MaxOffset::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_by_code_family_and_all() {
        let mut levels = Levels::default();
        levels.set("lbl", Level::Allow).unwrap();
        assert!(!levels.enabled(Code::LBL003));
        levels.set("LBL003", Level::Warn).unwrap();
        assert_eq!(levels.severity(Code::LBL003), Some(Severity::Warning));
        levels.set("ALL", Level::Deny).unwrap();
        assert_eq!(levels.severity(Code::DS003), Some(Severity::Error));
        assert!(matches!(
            levels.set("NOPE1", Level::Deny),
            Err(SettingsError::UnknownRule(_))
        ));
    }

    #[test]
    fn config_file_section_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE);
        std::fs::write(&path, "[lint]\ndeny = [\"LBL009\"]\nallow = [\"LBL001\"]\ndecode = \"full\"\n[cache]\nimgsz = 1\n").unwrap();
        let section = read_config(&path).unwrap();
        assert_eq!(section.deny, ["LBL009"]);
        assert_eq!(
            find_config(&[Path::new("/nonexistent"), dir.path()]),
            Some(path.clone())
        );
        std::fs::write(&path, "[lint]\nmax_offset = \"12px\"\n").unwrap();
        assert_eq!(
            read_config(&path).unwrap().max_offset,
            Some(MaxOffset::Pixels(12.0))
        );
        std::fs::write(&path, "[lint]\nmax_offset = 0.03\n").unwrap();
        assert_eq!(
            read_config(&path)
                .unwrap()
                .max_offset
                .map(|m| m.pixels(200)),
            Some(6.0)
        );
        std::fs::write(&path, "[lint]\nmax_offset = 2\n").unwrap();
        let err = read_config(&path).unwrap_err().to_string();
        assert!(
            err.contains("whole image width") && err.contains("line 2"),
            "{err}"
        );
        std::fs::write(&path, "[lint]\ndeny = [\"XYZ\"]\n").unwrap();
        assert!(matches!(
            read_config(&path),
            Err(SettingsError::UnknownRule(_))
        ));
        std::fs::write(&path, "[lint]\ndenny = []\n").unwrap();
        let err = read_config(&path).unwrap_err().to_string();
        assert!(err.contains("denny") && err.contains("line 2"), "{err}");
    }
}
