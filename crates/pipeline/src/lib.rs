//! Pipeline files for `fusekit run`, without libtorch.
//!
//! - [`Pipeline`]: a `pipelines/NAME.yaml` naming the dataset and each stage's parameters
//!   (lint levels and when findings stop the run, split, cache, train hyperparameters under
//!   hyp.yaml's keys with a list of fusion modes, predict), validated with messages that name
//!   the file, line and key.
//! - [`Stage`]: each stage with the fingerprint of what it consumes: its parameters plus the
//!   dataset's files ([`files_fingerprint`]) or the upstream stage's fingerprint, so changing
//!   a parameter changes that stage and the later ones only.
//! - [`StageRecord`]: the `stage.json` a stage writes (atomically) into its folder after it
//!   succeeded; [`plan`] compares records with fingerprints and decides what runs.
//!
//! - [`execute()`]: runs the planned steps, each stage through its typed entry point in
//!   `fusekit-stages` with `Params` built from the sections ([`lint_params`],
//!   [`split_params`], [`cache_params`], ...), storing each `Outcome` in `stage.json`.

pub mod execute;
mod file;
mod stage;

pub use execute::{
    Observer, RunError, RunOutcome, StageOutcome, StageRun, cache_params, execute, lint_params,
    lock_run_dir, plan_run, prepare_dataset, render_plan, split_params,
};
#[cfg(feature = "train")]
pub use execute::{predict_params, train_params};

use std::path::PathBuf;

pub use file::{Pipeline, PredictSection, SynthSection, TrainSection, key_line};
pub use stage::{
    Action, RECORD_FILE, RECORD_VERSION, STARTED_FILE, Selection, Stage, StageKind, StageRecord,
    Status, Step, files_fingerprint, hash_json, mark_started, plan, started_fingerprint,
};

/// Why a pipeline could not be loaded or planned.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The pipeline file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not YAML, an unknown key or a value of the wrong type.
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Yaml {
        /// The file.
        path: PathBuf,
        /// 1-based line, when known.
        line: Option<u64>,
        /// What is wrong.
        message: String,
    },
    /// A value the stage cannot use.
    #[error("{}{}: `{key}` {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the key (or its section), when found.
        line: Option<u64>,
        /// The key, dotted (`split.val`).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The train section as a hyp.yaml (its messages name the pipeline file and line).
    #[error(transparent)]
    Hyp(#[from] fusekit_hyp::HypError),
    /// A file of the dataset or of the run folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A `stage.json` that is not a stage record.
    #[error("{}: not a stage record: {message}", path.display())]
    Record {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// `--from` or `--until` names no stage.
    #[error("no stage `{name}` in this pipeline (stages: {stages})")]
    UnknownStage {
        /// The name given.
        name: String,
        /// The pipeline's stages.
        stages: String,
    },
    /// `--from` comes after `--until`.
    #[error("--from {from} comes after --until {until}")]
    EmptySelection {
        /// The `--from` stage.
        from: String,
        /// The `--until` stage.
        until: String,
    },
    /// `--from` skips a stage that never finished.
    #[error("{stage} has not finished, so the stages after it cannot start; run without --from")]
    NotFinished {
        /// The unfinished stage.
        stage: String,
    },
}
