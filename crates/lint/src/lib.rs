//! The lint stage: checks a paired RGB + IR dataset and reports findings with stable codes.
//!
//! [`lint`] scans a [`fusekit_dataset::Dataset`], checks every pair in parallel (images of both
//! modalities, pairing, labels) and then the dataset as a whole (duplicates, split overlap,
//! class usage). The [`Report`] renders as human text, JSON, SARIF or a self-contained HTML
//! page with thumbnails; [`apply_fixes`] writes the safe label fixes with backups.

mod check;
mod codes;
mod fix;
mod html;
mod register;
mod report;
mod settings;

pub use check::{LintRun, PairFacts, PendingFix, lint, lint_scan, pairs_to_check};
pub use codes::{Code, Severity};
pub use fix::{FixError, apply_fixes};
pub use html::{HtmlOptions, THUMBNAILS_PER_CODE};
pub use report::{Finding, REPORT_VERSION, Report, Subject, Summary};
pub use settings::{
    CONFIG_FILE, Level, LevelSelectors, Levels, LintOptions, LintSection, MaxOffset, SettingsError,
    find_config, parse_decode, read_config,
};
