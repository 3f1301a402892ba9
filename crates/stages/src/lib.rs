//! One typed entry point per fusekit stage: parameters in, outcome out.
//!
//! Each module is a stage with the same shape:
//!
//! - `Params`: everything the stage needs, typed. Its knobs are a serde `Settings` struct,
//!   which is exactly what the stage's section of a pipeline file deserializes into; the
//!   command line converts its flags into the same `Params`.
//! - `run(&Params, &dyn Progress) -> Result<Outcome, StageError>`: does the work and reports
//!   progress through [`Progress`] (the CLI draws bars and prints notes on stderr; tests pass
//!   [`Silent`]). Nothing is printed to stdout here.
//! - `Outcome`: serialisable; what `fusekit run` stores in `stage.json` and what
//!   `--format json` prints.
//!
//! | stage | entry point |
//! | --- | --- |
//! | lint | [`lint::run`] |
//! | split | [`split::run`] |
//! | cache build | [`cache::run`] |
//! | import | [`import::run`] |
//! | train | `train::run` (feature `train`) |
//! | val | `val::run` (feature `train`) |
//! | predict | `predict::run` (feature `train`) |
//! | export | `export::run` (feature `train`) |
//!
//! The lint, split and cache stages share one preamble, [`lint_first`]: open the dataset and
//! lint it, so that pairs with error-level findings are left out the same way everywhere.

pub mod cache;
pub mod draw;
mod error;
pub mod import;
pub mod lint;
mod progress;
pub mod split;

#[cfg(feature = "train")]
pub mod export;
#[cfg(feature = "train")]
pub mod predict;
#[cfg(feature = "train")]
pub mod train;
#[cfg(feature = "train")]
pub mod val;

pub use error::StageError;
pub use progress::{Progress, Silent};

use std::path::{Path, PathBuf};

use fusekit_dataset::Dataset;
use fusekit_lint::{LevelSelectors, Levels, LintOptions, LintRun, lint_scan, pairs_to_check};

/// Opens `data` (a data yaml or a dataset folder) and lints it with `options`: the preamble
/// of every stage that reads pairs. Progress counts checked pairs as task `lint`.
pub fn lint_first(
    data: &Path,
    names: Option<Vec<String>>,
    options: &LintOptions,
    progress: &dyn Progress,
) -> Result<(Dataset, LintRun), StageError> {
    let dataset = Dataset::open(data, names).map_err(StageError::Dataset)?;
    let scan = dataset.scan();
    progress.begin("lint", pairs_to_check(&scan, options) as u64, "pairs");
    let run = lint_scan(&dataset, &scan, options, &|| progress.advance());
    progress.end();
    Ok((dataset, run))
}

/// Lint options that only decide which pairs are usable: the default checks at `levels`.
pub fn usability_options(levels: &LevelSelectors) -> Result<LintOptions, StageError> {
    let mut resolved = Levels::default();
    resolved.apply(levels)?;
    Ok(LintOptions {
        levels: resolved,
        ..LintOptions::default()
    })
}

/// The dataset description a stage reads from `data`: a folder's `split.yaml` (written by
/// `fusekit split`) when there is one, else `data` itself.
pub fn split_or_data(data: &Path) -> PathBuf {
    let split_yaml = data.join(fusekit_split::SPLIT_YAML);
    if data.is_dir() && split_yaml.is_file() {
        split_yaml
    } else {
        data.to_path_buf()
    }
}
