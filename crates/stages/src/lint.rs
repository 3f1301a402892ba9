//! The lint stage: check a paired dataset, apply safe label fixes, decide whether it passes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use fusekit_dataset::{Dataset, DecodeLevel, IrNorm};
use fusekit_hyp::Imgsz;
use fusekit_lint::{
    LevelSelectors, Levels, LintOptions, LintSection, MaxOffset, Report, Severity, Summary,
    apply_fixes,
};
use serde::{Deserialize, Serialize};

use crate::{Progress, StageError, lint_first};

/// Which findings fail the stage (exit status 1 of `fusekit lint`, a stopped pipeline).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailOn {
    /// Error-level findings (the default).
    #[default]
    Error,
    /// Error- and warning-level findings (`fusekit lint --strict`).
    Warning,
    /// None: findings are reported only.
    Never,
}

/// The lint knobs: a pipeline file's `lint:` section, `fusekit.toml`'s `[lint]` plus the
/// flags of `fusekit lint`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Codes or families (PAIR, IMG, LBL, DS, ALL) reported as errors.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Codes or families reported as warnings.
    #[serde(default)]
    pub warn: Vec<String>,
    /// Codes or families not reported.
    #[serde(default)]
    pub allow: Vec<String>,
    /// `header` (headers, end markers, a partial content hash) or `full` (every pixel).
    #[serde(default)]
    pub decode: DecodeLevel,
    /// Which findings fail the stage.
    #[serde(default)]
    pub fail_on: FailOn,
    /// Codes or families whose findings do not fail the stage (they are still reported, and
    /// pairs with error-level findings are still left out of the split and the caches).
    #[serde(default)]
    pub accept: Vec<String>,
    /// The largest RGB-IR shift not reported as PAIR007 / DS005 (default 2% of the width).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_offset: Option<MaxOffset>,
}

impl Settings {
    /// The settings of a `fusekit.toml` `[lint]` section (its `imgsz` is returned apart: it
    /// is the training size, not a lint knob).
    pub fn from_config(section: &LintSection) -> Result<(Settings, Option<u32>), StageError> {
        let decode = match &section.decode {
            Some(text) => fusekit_lint::parse_decode(text).map_err(StageError::Invalid)?,
            None => DecodeLevel::Header,
        };
        let settings = Settings {
            deny: section.deny.clone(),
            warn: section.warn.clone(),
            allow: section.allow.clone(),
            decode,
            fail_on: if section.strict == Some(true) {
                FailOn::Warning
            } else {
                FailOn::Error
            },
            accept: Vec::new(),
            max_offset: section.max_offset,
        };
        Ok((settings, section.imgsz))
    }

    /// The level selectors (deny, warn, allow).
    pub fn selectors(&self) -> LevelSelectors {
        LevelSelectors {
            deny: self.deny.clone(),
            warn: self.warn.clone(),
            allow: self.allow.clone(),
        }
    }

    /// Checks the selectors and the accept list name known codes or families.
    pub fn check(&self) -> Result<(), StageError> {
        Levels::default().apply(&self.selectors())?;
        Levels::default().apply(&LevelSelectors {
            deny: self.accept.clone(),
            ..LevelSelectors::default()
        })?;
        Ok(())
    }

    /// Whether a finding of `code` (in `family`) is accepted.
    pub fn accepts(&self, code: &str, family: &str) -> bool {
        self.accept
            .iter()
            .any(|a| a.eq_ignore_ascii_case("ALL") || a.eq_ignore_ascii_case(code) || a == family)
    }

    fn fails(&self, severity: Severity) -> bool {
        match self.fail_on {
            FailOn::Error => severity == Severity::Error,
            FailOn::Warning => severity <= Severity::Warning,
            FailOn::Never => false,
        }
    }
}

/// Everything a lint needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// A data yaml, or a dataset folder.
    pub data: PathBuf,
    /// Class names for a folder without data.yaml.
    pub names: Option<Vec<String>>,
    /// The training size: boxes too small to learn at it are LBL011.
    pub imgsz: Imgsz,
    /// Levels, decode depth, what fails.
    pub settings: Settings,
    /// Check only the first N pairs (in path order).
    pub limit: Option<usize>,
    /// Apply the safe label fixes, copying every changed file under this folder first.
    pub fix_backup: Option<PathBuf>,
    /// Also write `report.txt` (human, every finding) and `report.json` into this folder.
    pub report_dir: Option<PathBuf>,
}

impl Params {
    /// Linting `data` at `imgsz` with default settings.
    pub fn new(data: impl Into<PathBuf>, imgsz: Imgsz) -> Params {
        Params {
            data: data.into(),
            names: None,
            imgsz,
            settings: Settings::default(),
            limit: None,
            fix_backup: None,
            report_dir: None,
        }
    }
}

/// A finished lint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Counts: pairs, errors, warnings, infos, per code, fixed.
    pub summary: Summary,
    /// Pairs per split of the dataset, in the data yaml's order.
    pub pairs_per_split: Vec<(String, usize)>,
    /// How deep the images were read.
    pub decode: DecodeLevel,
    /// Seconds the lint took.
    pub seconds: f64,
    /// Codes whose findings fail the stage, in report order.
    pub blocking: Vec<String>,
    /// Findings that would fail the stage but are accepted.
    pub accepted: usize,
    /// Label files rewritten by the fixes.
    pub fixed_files: usize,
    /// The dataset description could not be used (DS001).
    pub invalid_dataset: bool,
    /// `report.txt` and `report.json`, when asked for.
    pub reports: Vec<PathBuf>,
    /// The full report (not stored in `stage.json`; `fusekit lint --format json` prints it).
    #[serde(skip)]
    pub report: Report,
    /// The dataset root, when the description could be used.
    #[serde(skip)]
    pub root: Option<PathBuf>,
    /// The dataset's `ir_norm:` (how its IR images become 8 bits, for pictures of them).
    #[serde(skip)]
    pub ir_norm: IrNorm,
}

impl Outcome {
    /// `fusekit lint`'s exit status: 0 passed, 1 failing findings, 2 invalid dataset.
    pub fn exit_code(&self) -> u8 {
        if self.invalid_dataset {
            2
        } else if self.blocking.is_empty() {
            0
        } else {
            1
        }
    }

    /// The first line of the human report.
    pub fn header(&self, data: &Path, config: Option<&Path>) -> String {
        let splits: Vec<String> = self
            .pairs_per_split
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        format!(
            "fusekit lint {}: {} pairs checked ({}), decode {}, {:.2} s, {:.1} MB read{}",
            data.display(),
            self.summary.pairs,
            splits.join(", "),
            match self.decode {
                DecodeLevel::Full => "full",
                DecodeLevel::Header => "header",
            },
            self.seconds,
            self.summary.bytes_read as f64 / 1e6,
            config
                .map(|p| format!(", config {}", p.display()))
                .unwrap_or_default()
        )
    }
}

/// Lints `params.data`: every pair, both images, labels, then the dataset as a whole; applies
/// the safe fixes when asked; decides which findings fail the stage.
pub fn run(params: &Params, progress: &dyn Progress) -> Result<Outcome, StageError> {
    let started = Instant::now();
    params.settings.check()?;
    let mut levels = Levels::default();
    levels.apply(&params.settings.selectors())?;
    let options = LintOptions {
        decode: params.settings.decode,
        imgsz: params.imgsz.get(),
        limit: params.limit,
        levels,
        ir_norm: None,
        max_offset: params.settings.max_offset.unwrap_or_default(),
    };
    let (dataset, mut lint_run) =
        match lint_first(&params.data, params.names.clone(), &options, progress) {
            Ok(linted) => linted,
            Err(StageError::Dataset(err)) => {
                let report = Report::invalid_dataset(err.to_string());
                return finish(params, report, Vec::new(), 0, None, started);
            }
            Err(err) => return Err(err),
        };
    let fixed_files = match &params.fix_backup {
        Some(backup_dir) if !lint_run.fixes.is_empty() => {
            fix_labels(&dataset, &mut lint_run, backup_dir, progress)?
        }
        _ => 0,
    };
    let mut per_split = vec![0usize; dataset.splits.len()];
    for pair in &lint_run.pairs {
        for &split in &pair.splits {
            per_split[split] += 1;
        }
    }
    let pairs_per_split = dataset
        .splits
        .iter()
        .zip(per_split)
        .map(|(s, n)| (s.name.clone(), n))
        .collect();
    finish(
        params,
        lint_run.report,
        pairs_per_split,
        fixed_files,
        Some((dataset.root, dataset.ir_norm)),
        started,
    )
}

/// Writes the fixes with backups and marks the findings they resolve; returns the number of
/// files rewritten.
fn fix_labels(
    dataset: &Dataset,
    lint_run: &mut fusekit_lint::LintRun,
    backup_dir: &Path,
    progress: &dyn Progress,
) -> Result<usize, StageError> {
    apply_fixes(&lint_run.fixes, &dataset.root, backup_dir).map_err(StageError::Fix)?;
    let fixed: Vec<(String, Vec<fusekit_lint::Code>)> = lint_run
        .fixes
        .iter()
        .map(|f| {
            let label = dataset.relative(&f.label).display().to_string();
            (label, f.codes.clone())
        })
        .collect();
    lint_run.report.mark_fixed(|finding| {
        fixed.iter().any(|(label, codes)| {
            finding.label.as_deref() == Some(label) && codes.contains(&finding.code)
        })
    });
    let files = lint_run.fixes.len();
    progress.note(&format!(
        "fixed {files} label file{}; originals copied to {}",
        if files == 1 { "" } else { "s" },
        backup_dir.display()
    ));
    Ok(files)
}

fn finish(
    params: &Params,
    report: Report,
    pairs_per_split: Vec<(String, usize)>,
    fixed_files: usize,
    dataset: Option<(PathBuf, IrNorm)>,
    started: Instant,
) -> Result<Outcome, StageError> {
    let (root, ir_norm) = match dataset {
        Some((root, ir_norm)) => (Some(root), ir_norm),
        None => (None, IrNorm::default()),
    };
    let settings = &params.settings;
    let mut blocking: Vec<String> = Vec::new();
    let mut accepted = 0;
    for finding in &report.findings {
        if !settings.fails(finding.severity) {
            continue;
        }
        let code = finding.code.to_string();
        if settings.accepts(&code, finding.code.family()) {
            accepted += 1;
        } else if !blocking.contains(&code) {
            blocking.push(code);
        }
    }
    let mut outcome = Outcome {
        summary: report.summary.clone(),
        pairs_per_split,
        decode: settings.decode,
        seconds: started.elapsed().as_secs_f64(),
        blocking,
        accepted,
        fixed_files,
        invalid_dataset: report.has_config_error(),
        reports: Vec::new(),
        report,
        root,
        ir_norm,
    };
    if let Some(dir) = &params.report_dir {
        let text = dir.join("report.txt");
        let json = dir.join("report.json");
        let header = outcome.header(&params.data, None);
        write_file(&text, outcome.report.to_human(&header, 0).as_bytes())?;
        write_file(&json, outcome.report.to_json().as_bytes())?;
        outcome.reports = vec![text, json];
    }
    Ok(outcome)
}

/// Writes a whole file atomically (a temporary file in the same folder, then a rename).
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), StageError> {
    use std::io::Write as _;
    let mut file =
        atomic_write_file::AtomicWriteFile::open(path).map_err(StageError::io("writing", path))?;
    file.write_all(bytes)
        .map_err(StageError::io("writing", path))?;
    file.commit().map_err(StageError::io("writing", path))
}
