//! Stages, their fingerprints and records (`stage.json`), and the plan of a run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use atomic_write_file::AtomicWriteFile;
use fusekit_hyp::Fusion;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use xxhash_rust::xxh3::xxh3_128;

use crate::{Pipeline, PipelineError};

/// What a stage does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageKind {
    /// Lint the dataset; error findings stop the pipeline.
    Lint,
    /// Write the train/val(/test) lists.
    Split,
    /// Build the caches of every side.
    Cache,
    /// Train one fusion mode.
    Train(Fusion),
    /// Predict with one trained fusion mode's best weights.
    Predict(Fusion),
}

impl StageKind {
    /// `lint`, `split`, `cache`, `train` or `predict`.
    pub fn word(self) -> &'static str {
        match self {
            StageKind::Lint => "lint",
            StageKind::Split => "split",
            StageKind::Cache => "cache",
            StageKind::Train(_) => "train",
            StageKind::Predict(_) => "predict",
        }
    }

    /// The stage's name and folder: the word, with `-FUSION` for train and predict.
    pub fn name(self) -> String {
        match self {
            StageKind::Train(f) | StageKind::Predict(f) => format!("{}-{f}", self.word()),
            _ => self.word().to_owned(),
        }
    }
}

/// One stage of a pipeline with what it consumes.
#[derive(Debug, Clone)]
pub struct Stage {
    /// What it does.
    pub kind: StageKind,
    /// Its folder under the run folder.
    pub dir: PathBuf,
    /// Its parameters, as recorded.
    pub parameters: Value,
    /// What it consumes: the dataset's fingerprint or the upstream stage's.
    pub inputs: Value,
    /// Index of the stage whose output it reads, if any.
    pub upstream: Option<usize>,
    /// xxh3-128 (hex) of the parameters.
    pub parameters_hash: String,
    /// xxh3-128 (hex) of the inputs.
    pub inputs_hash: String,
    /// xxh3-128 (hex) of the stage name, parameters and inputs: unchanged means skippable.
    pub fingerprint: String,
}

/// A section as JSON (sections are plain data; they always serialise).
fn to_json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// xxh3-128 of a JSON value (maps are ordered by key), in hex.
pub fn hash_json(value: &Value) -> String {
    format!("{:032x}", xxh3_128(value.to_string().as_bytes()))
}

/// Fingerprint of files: every file under each path (a folder is walked, sorted) with its
/// path relative to that folder, size and modification time; where the folders are does not
/// count.
pub fn files_fingerprint(paths: &[&Path]) -> Result<String, PipelineError> {
    let mut text = String::new();
    for root in paths {
        text.push_str("root\n");
        let walk = walkdir::WalkDir::new(root)
            .sort_by_file_name()
            .follow_links(true);
        for entry in walk {
            let entry = entry.map_err(|e| PipelineError::Io {
                path: e.path().unwrap_or(root).to_path_buf(),
                source: e.into(),
            })?;
            if !entry.file_type().is_file() {
                continue;
            }
            let meta = entry.metadata().map_err(|e| PipelineError::Io {
                path: entry.path().to_path_buf(),
                source: e.into(),
            })?;
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            let relative = entry.path().strip_prefix(root).unwrap_or(entry.path());
            text.push_str(&format!(
                "{}\t{}\t{mtime}\n",
                relative.display(),
                meta.len()
            ));
        }
    }
    Ok(format!("{:032x}", xxh3_128(text.as_bytes())))
}

impl Pipeline {
    /// The stages in order, given the dataset's fingerprint ([`files_fingerprint`]).
    pub fn stages(&self, dataset_fingerprint: &str) -> Vec<Stage> {
        let run = self.run_dir();
        let mut stages: Vec<Stage> = Vec::new();
        let mut push = |kind: StageKind, parameters: Value, upstream: Option<usize>| {
            let inputs = match upstream {
                Some(i) => json!({ stages[i].kind.name(): stages[i].fingerprint }),
                None => json!({ "dataset": dataset_fingerprint }),
            };
            let name = kind.name();
            let fingerprint = hash_json(&json!([name, parameters, inputs]));
            stages.push(Stage {
                kind,
                dir: run.join(&name),
                parameters_hash: hash_json(&parameters),
                inputs_hash: hash_json(&inputs),
                parameters,
                inputs,
                upstream,
                fingerprint,
            });
            stages.len() - 1
        };
        // imgsz is a parameter of lint (LBL011 is measured at it), cache and train.
        let imgsz = self.imgsz.get();
        let lint = push(
            StageKind::Lint,
            json!({"lint": to_json(&self.lint), "imgsz": imgsz}),
            None,
        );
        let split = push(StageKind::Split, to_json(&self.split), Some(lint));
        let cache = push(
            StageKind::Cache,
            json!({"cache": to_json(&self.cache), "imgsz": imgsz}),
            Some(split),
        );
        if let Some(train) = &self.train {
            let mut trained = Vec::new();
            for &fusion in &train.fusions {
                let mut hyp = train.hyp.clone();
                hyp.fusion = fusion;
                let parameters = json!({
                    "hyp": to_json(&hyp),
                    "limit": train.limit,
                    "device": train.device,
                });
                trained.push((
                    fusion,
                    push(StageKind::Train(fusion), parameters, Some(cache)),
                ));
            }
            if let Some(predict) = &self.predict {
                for (fusion, stage) in trained {
                    push(StageKind::Predict(fusion), to_json(predict), Some(stage));
                }
            }
        }
        stages
    }
}

/// `stage.json`: what a finished stage consumed and produced, written after it succeeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// Format version.
    pub version: u32,
    /// Stage name.
    pub stage: String,
    /// The stage's fingerprint when it ran.
    pub fingerprint: String,
    /// Hash of its parameters.
    pub parameters_hash: String,
    /// Hash of its inputs.
    pub inputs_hash: String,
    /// Its parameters.
    pub parameters: Value,
    /// Its inputs (the dataset's or upstream stage's fingerprint).
    pub inputs: Value,
    /// Start, in seconds since the Unix epoch.
    pub started: u64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// What it produced (counts, files, metrics), stage-specific.
    pub outcome: Value,
}

/// Version of [`StageRecord`].
pub const RECORD_VERSION: u32 = 1;
/// A finished stage's record.
pub const RECORD_FILE: &str = "stage.json";
/// Written when a stage starts: the fingerprint it runs for.
pub const STARTED_FILE: &str = "started.json";

impl StageRecord {
    /// The record of `stage` after a run that began at `started` and took `seconds`.
    pub fn new(stage: &Stage, started: u64, seconds: f64, outcome: Value) -> StageRecord {
        StageRecord {
            version: RECORD_VERSION,
            stage: stage.kind.name(),
            fingerprint: stage.fingerprint.clone(),
            parameters_hash: stage.parameters_hash.clone(),
            inputs_hash: stage.inputs_hash.clone(),
            parameters: stage.parameters.clone(),
            inputs: stage.inputs.clone(),
            started,
            seconds,
            outcome,
        }
    }

    /// The record in `dir`, if the stage finished there.
    pub fn read(dir: &Path) -> Result<Option<StageRecord>, PipelineError> {
        let path = dir.join(RECORD_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(PipelineError::Io { path, source }),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| PipelineError::Record {
                path,
                message: e.to_string(),
            })
    }

    /// Writes the record into `dir` atomically.
    pub fn write(&self, dir: &Path) -> Result<(), PipelineError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| PipelineError::Record {
            path: dir.join(RECORD_FILE),
            message: e.to_string(),
        })?;
        write_atomic(&dir.join(RECORD_FILE), &text)
    }
}

/// Records that `stage` started in its folder (so that a rerun knows what an unfinished
/// folder was for).
pub fn mark_started(stage: &Stage) -> Result<(), PipelineError> {
    let text = json!({"stage": stage.kind.name(), "fingerprint": stage.fingerprint}).to_string();
    write_atomic(&stage.dir.join(STARTED_FILE), &text)
}

/// The fingerprint an unfinished stage folder was started for.
pub fn started_fingerprint(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(STARTED_FILE)).ok()?;
    let value: Value = serde_json::from_str(&text).ok()?;
    value["fingerprint"].as_str().map(str::to_owned)
}

fn write_atomic(path: &Path, text: &str) -> Result<(), PipelineError> {
    let io = |source| PipelineError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut file = AtomicWriteFile::open(path).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.commit().map_err(io)
}

/// Where a stage stands against its folder.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// Finished with the same fingerprint.
    Current(Box<StageRecord>),
    /// Never started.
    New,
    /// Started but not finished; `same` when it was started for the same fingerprint.
    Interrupted {
        /// Started for the current fingerprint (its partial output can be resumed).
        same: bool,
    },
    /// Finished with another fingerprint.
    Changed {
        /// The parameters differ.
        parameters: bool,
        /// The inputs differ.
        inputs: bool,
    },
}

impl Status {
    /// Reads the status of `stage` from its folder.
    pub fn of(stage: &Stage) -> Result<Status, PipelineError> {
        if let Some(record) = StageRecord::read(&stage.dir)? {
            if record.fingerprint == stage.fingerprint {
                return Ok(Status::Current(Box::new(record)));
            }
            return Ok(Status::Changed {
                parameters: record.parameters_hash != stage.parameters_hash,
                inputs: record.inputs_hash != stage.inputs_hash,
            });
        }
        if stage.dir.exists() {
            let same = started_fingerprint(&stage.dir).as_deref() == Some(&stage.fingerprint);
            return Ok(Status::Interrupted { same });
        }
        Ok(Status::New)
    }

    /// Words for the plan: why it runs, or that it is current.
    pub fn describe(&self) -> String {
        match self {
            Status::Current(_) => "up to date".into(),
            Status::New => "never ran".into(),
            Status::Interrupted { same: true } => "interrupted; continues".into(),
            Status::Interrupted { same: false } => "interrupted with other inputs; reruns".into(),
            Status::Changed {
                parameters: true,
                inputs: true,
            } => "parameters and inputs changed".into(),
            Status::Changed {
                parameters: true, ..
            } => "parameters changed".into(),
            Status::Changed { .. } => "inputs changed (an earlier stage or the dataset)".into(),
        }
    }
}

/// What the run does with a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Run it.
    Run,
    /// Keep its finished output.
    Skip,
    /// Before `--from`: its finished output is used as it is.
    Before,
    /// After `--until`: not run.
    After,
}

/// Which stages `--from`, `--until` and `--force` select.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// First stage to run (a stage name, or a word such as `train` for the first of its kind).
    pub from: Option<String>,
    /// Last stage to run (a stage name, or a word for the last of its kind).
    pub until: Option<String>,
    /// Rerun selected stages even when up to date.
    pub force: bool,
}

/// A stage with its status and what the run will do with it.
#[derive(Debug, Clone)]
pub struct Step {
    /// The stage.
    pub stage: Stage,
    /// Its status before the run.
    pub status: Status,
    /// What the run does.
    pub action: Action,
}

/// Decides each stage's action. `--from` reruns that stage and the later ones even when they
/// are up to date; the earlier ones must have finished.
pub fn plan(stages: Vec<Stage>, selection: &Selection) -> Result<Vec<Step>, PipelineError> {
    let find = |name: &str, last: bool| -> Result<usize, PipelineError> {
        let matches = |s: &Stage| s.kind.name() == name || s.kind.word() == name;
        let found = if last {
            stages.iter().rposition(matches)
        } else {
            stages.iter().position(matches)
        };
        found.ok_or_else(|| PipelineError::UnknownStage {
            name: name.to_owned(),
            stages: stages
                .iter()
                .map(|s| s.kind.name())
                .collect::<Vec<_>>()
                .join(", "),
        })
    };
    let from = selection
        .from
        .as_deref()
        .map(|n| find(n, false))
        .transpose()?;
    let until = selection
        .until
        .as_deref()
        .map(|n| find(n, true))
        .transpose()?;
    if let (Some(from), Some(until)) = (from, until)
        && from > until
    {
        return Err(PipelineError::EmptySelection {
            from: stages[from].kind.name(),
            until: stages[until].kind.name(),
        });
    }
    let mut steps = Vec::new();
    for (i, stage) in stages.into_iter().enumerate() {
        let status = Status::of(&stage)?;
        let action = if from.is_some_and(|f| i < f) {
            if !matches!(status, Status::Current(_) | Status::Changed { .. }) {
                return Err(PipelineError::NotFinished {
                    stage: stage.kind.name(),
                });
            }
            Action::Before
        } else if until.is_some_and(|u| i > u) {
            Action::After
        } else if selection.force || from.is_some() || !matches!(status, Status::Current(_)) {
            Action::Run
        } else {
            Action::Skip
        };
        steps.push(Step {
            stage,
            status,
            action,
        });
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(extra: &str, runs: &Path) -> Pipeline {
        let text = format!(
            "data: d\nruns: {}\nimgsz: 64\ntrain:\n  fusion: [mid, rgb]\n  epochs: 1\n{extra}",
            runs.display()
        );
        Pipeline::parse(&text, Path::new("p.yaml")).unwrap()
    }

    fn finish(stage: &Stage) {
        std::fs::create_dir_all(&stage.dir).unwrap();
        StageRecord::new(stage, 0, 1.0, json!({}))
            .write(&stage.dir)
            .unwrap();
    }

    #[test]
    fn a_parameter_changes_its_stage_and_the_later_ones_only() {
        let dir = tempfile::tempdir().unwrap();
        let a = pipeline("", dir.path()).stages("data");
        let b = pipeline("  lr0: 0.02\n", dir.path()).stages("data");
        let names: Vec<String> = a.iter().map(|s| s.kind.name()).collect();
        assert_eq!(names, ["lint", "split", "cache", "train-mid", "train-rgb"]);
        let same: Vec<bool> = a
            .iter()
            .zip(&b)
            .map(|(a, b)| a.fingerprint == b.fingerprint)
            .collect();
        assert_eq!(same, [true, true, true, false, false]);
        let other_data = pipeline("", dir.path()).stages("changed");
        assert!(
            a.iter()
                .zip(&other_data)
                .all(|(a, b)| a.fingerprint != b.fingerprint)
        );
    }

    #[test]
    fn plan_skips_current_stages_and_explains_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let stages = pipeline("", dir.path()).stages("data");
        for stage in &stages[..3] {
            finish(stage);
        }
        std::fs::create_dir_all(&stages[3].dir).unwrap();
        mark_started(&stages[3]).unwrap();
        let steps = plan(stages.clone(), &Selection::default()).unwrap();
        let actions: Vec<Action> = steps.iter().map(|s| s.action).collect();
        assert_eq!(
            actions,
            [
                Action::Skip,
                Action::Skip,
                Action::Skip,
                Action::Run,
                Action::Run
            ]
        );
        assert_eq!(steps[3].status, Status::Interrupted { same: true });
        assert_eq!(steps[4].status, Status::New);

        let selection = Selection {
            from: Some("cache".into()),
            until: Some("train-mid".into()),
            force: false,
        };
        let actions: Vec<Action> = plan(stages.clone(), &selection)
            .unwrap()
            .iter()
            .map(|s| s.action)
            .collect();
        assert_eq!(
            actions,
            [
                Action::Before,
                Action::Before,
                Action::Run,
                Action::Run,
                Action::After
            ]
        );
        let selection = Selection {
            from: Some("train-rgb".into()),
            ..Selection::default()
        };
        let err = plan(stages.clone(), &selection).unwrap_err().to_string();
        assert!(err.contains("train-mid has not finished"), "{err}");
        let selection = Selection {
            from: Some("nope".into()),
            ..Selection::default()
        };
        let err = plan(stages, &selection).unwrap_err().to_string();
        assert!(
            err.contains("lint, split, cache, train-mid, train-rgb"),
            "{err}"
        );
    }
}
