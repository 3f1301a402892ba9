//! Rule levels and lint options, from flags and from the `[lint]` section of `fusekit.toml`.

use std::path::{Path, PathBuf};

use fusekit_dataset::{DecodeLevel, IrNorm};
use serde::Deserialize;

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
}

impl Default for LintOptions {
    fn default() -> Self {
        Self {
            decode: DecodeLevel::Header,
            imgsz: 640,
            limit: None,
            levels: Levels::default(),
            ir_norm: None,
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
