//! Running a planned pipeline: each stage through its typed entry point in `fusekit-stages`.
//!
//! A stage's `Params` are built here from the pipeline's sections (no argv, no parameter
//! files); its `Outcome` is stored in the stage's `stage.json` only after it succeeded. A stage
//! folder without `stage.json` is an interrupted stage: rerun from scratch, or continued when
//! it was started for the same fingerprint (training resumes from its last checkpoint). One
//! `fusekit run` of a pipeline at a time: a second waits for the first's lock on the run
//! folder, then finds its stages current.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use fusekit_stages::{Progress, cache, lint, split};
use serde::{Deserialize, Serialize};

use crate::{
    Action, Pipeline, PipelineError, RECORD_FILE, Selection, Stage, StageKind, StageRecord, Status,
    Step, files_fingerprint, mark_started, plan,
};

/// The lock file of a run folder, held while `fusekit run` works in it (hidden; empty).
pub const RUN_LOCK: &str = ".fusekit-run.lock";

/// Why a run could not finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The file, its plan or a record.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// A stage failed.
    #[error("{stage}")]
    Stage {
        /// The stage's name.
        stage: String,
        /// Why.
        #[source]
        source: Box<fusekit_stages::StageError>,
    },
    /// Generating the missing dataset failed.
    #[error("generating {}", path.display())]
    Synth {
        /// The dataset folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: fusekit_synth::SynthError,
    },
    /// A stage record whose outcome is not that stage's.
    #[error("{}: the outcome is not a {stage} outcome: {message}", path.display())]
    Outcome {
        /// The record.
        path: PathBuf,
        /// The stage.
        stage: String,
        /// What serde said.
        message: String,
    },
    /// A stage needs a section the file does not have.
    #[error("{0}")]
    Unsupported(String),
}

/// What one stage produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StageOutcome {
    /// `lint`.
    Lint(Box<lint::Outcome>),
    /// `split`.
    Split(Box<split::Outcome>),
    /// `cache`.
    Cache(cache::Outcome),
    /// `train-FUSION`.
    #[cfg(feature = "train")]
    Train(Box<fusekit_stages::train::Outcome>),
    /// `predict-FUSION`.
    #[cfg(feature = "train")]
    Predict(fusekit_stages::predict::Outcome),
    /// A train or predict outcome read by a build without libtorch.
    #[cfg(not(feature = "train"))]
    Other(serde_json::Value),
}

/// One stage of a finished run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageRun {
    /// Its name.
    pub stage: String,
    /// It ran now (not skipped as current).
    pub ran: bool,
    /// Its folder.
    pub dir: PathBuf,
    /// Seconds it took when it ran.
    pub seconds: f64,
    /// What it produced.
    pub outcome: StageOutcome,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunOutcome {
    /// The pipeline's name.
    pub pipeline: String,
    /// The run folder.
    pub run_dir: PathBuf,
    /// Stages run now.
    pub ran: usize,
    /// Stages skipped as current.
    pub skipped: usize,
    /// Seconds the run took.
    pub seconds: f64,
    /// The stages up to `--until` (or the lint that stopped the run), in order.
    pub stages: Vec<StageRun>,
    /// Lint findings stopped the run before anything was built: these codes.
    pub stopped_by_lint: Option<Vec<String>>,
    /// Stages in the plan (including those after `--until`).
    pub planned: usize,
}

impl RunOutcome {
    /// The closing table: what each stage found or made, and where the results are.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\npipeline {}: {} stages, {} run, {} skipped, {:.1} s; records in {}/*/stage.json",
            self.pipeline,
            self.planned,
            self.ran,
            self.skipped,
            self.seconds,
            self.run_dir.display()
        );
        for stage in &self.stages {
            match &stage.outcome {
                StageOutcome::Lint(o) => {
                    let by_code: Vec<String> = o
                        .summary
                        .by_code
                        .iter()
                        .map(|(k, v)| format!("{k} x{v}"))
                        .collect();
                    let _ = writeln!(
                        s,
                        "  lint     {} pairs: {} errors, {} warnings, {} infos{}",
                        o.summary.pairs,
                        o.summary.errors,
                        o.summary.warnings,
                        o.summary.infos,
                        if by_code.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", by_code.join(", "))
                        }
                    );
                }
                StageOutcome::Split(o) => {
                    if let Some(m) = &o.manifest {
                        let _ = writeln!(
                            s,
                            "  split    train {} / val {} / test {} pairs, {} left out with lint \
                             errors",
                            m.pairs.train,
                            m.pairs.val,
                            m.pairs.test,
                            m.excluded.len()
                        );
                    } else {
                        let _ = writeln!(s, "  split    the dataset's own lists (split.keep)");
                    }
                }
                StageOutcome::Cache(o) => {
                    let _ = writeln!(
                        s,
                        "  cache    {} pairs in {} files, {:.1} MB, built at {:.1} pairs/s",
                        o.pairs,
                        o.files.len(),
                        o.bytes as f64 / 1e6,
                        o.pairs_per_second
                    );
                }
                #[cfg(feature = "train")]
                StageOutcome::Train(_) | StageOutcome::Predict(_) => {}
                #[cfg(not(feature = "train"))]
                StageOutcome::Other(_) => {}
            }
        }
        #[cfg(feature = "train")]
        self.train_summary(&mut s);
        s
    }

    /// The train table, then where each train and predict stage put its results.
    #[cfg(feature = "train")]
    fn train_summary(&self, s: &mut String) {
        let trained: Vec<(&StageRun, &fusekit_stages::train::Outcome)> = self
            .stages
            .iter()
            .filter_map(|run| match &run.outcome {
                StageOutcome::Train(o) => Some((run, &**o)),
                _ => None,
            })
            .collect();
        if !trained.is_empty() {
            let _ = writeln!(
                s,
                "  train    fusion  epochs    time   final mAP50  mAP50-95   best mAP50  mAP50-95"
            );
        }
        for (run, o) in &trained {
            let metric = |m: &Option<fusekit_stages::train::EpochMetrics>| {
                m.as_ref().map_or((0.0, 0.0), |m| (m.map50, m.map50_95))
            };
            let (last50, last) = metric(&o.last);
            let (best50, best) = metric(&o.best);
            let _ = writeln!(
                s,
                "           {:<6} {:>7} {:>6.0} s  {last50:>11.3} {last:>9.3} {best50:>12.3} {best:>9.3}",
                o.fusion.as_str(),
                o.epochs,
                run.seconds,
            );
        }
        for run in &self.stages {
            let name = &run.stage;
            match &run.outcome {
                StageOutcome::Train(o) => {
                    let _ = writeln!(
                        s,
                        "  {name:<14} results {}\n  {:<14} weights {}",
                        o.results.display(),
                        "",
                        o.weights.best.display()
                    );
                }
                StageOutcome::Predict(o) => {
                    let _ = writeln!(
                        s,
                        "  {name:<14} {} pairs, {} detections, {} pictures in {}",
                        o.pairs,
                        o.detections,
                        o.pictures,
                        run.dir.display()
                    );
                }
                _ => {}
            }
        }
    }
}

/// What the runner reports to while it works: progress and notes of every stage, and (with
/// libtorch) the train stages' reports.
#[cfg(feature = "train")]
pub trait Observer: fusekit_stages::train::Observer {}
#[cfg(feature = "train")]
impl<T: fusekit_stages::train::Observer + ?Sized> Observer for T {}

/// What the runner reports to while it works: progress and notes of every stage.
#[cfg(not(feature = "train"))]
pub trait Observer: Progress {}
#[cfg(not(feature = "train"))]
impl<T: Progress + ?Sized> Observer for T {}

/// Generates the dataset when it is missing and the file has a `synth` section; the dataset's
/// fingerprint (its description and every file under its root).
pub fn prepare_dataset(pipeline: &Pipeline, progress: &dyn Progress) -> Result<String, RunError> {
    if !pipeline.data.exists() {
        let Some(synth) = &pipeline.synth else {
            return Err(RunError::Unsupported(format!(
                "{}: the dataset {} does not exist (import it, or add a `synth` section to \
                 generate a sample)",
                pipeline.path.display(),
                pipeline.data.display()
            )));
        };
        progress.note(&format!(
            "dataset {} is missing: generating it",
            pipeline.data.display()
        ));
        let options = synth.options().map_err(RunError::Unsupported)?;
        progress.begin("synth", options.pairs as u64, "pairs");
        let generated = fusekit_synth::generate(&pipeline.data, &options, &|| progress.advance());
        progress.end();
        generated.map_err(|source| RunError::Synth {
            path: pipeline.data.clone(),
            source,
        })?;
    }
    let root = fusekit_dataset::Dataset::open(&pipeline.data, None)
        .map(|d| d.root)
        .unwrap_or_else(|_| pipeline.data.clone());
    let mut paths = vec![pipeline.data.as_path()];
    if root != pipeline.data {
        paths.push(&root);
    }
    Ok(files_fingerprint(&paths)?)
}

/// Holds the run folder's lock; the second `fusekit run` of a pipeline waits here.
pub fn lock_run_dir(
    pipeline: &Pipeline,
    progress: &dyn Progress,
) -> Result<std::fs::File, RunError> {
    let dir = pipeline.run_dir();
    std::fs::create_dir_all(&dir).map_err(|source| PipelineError::Io {
        path: dir.clone(),
        source,
    })?;
    let path = dir.join(RUN_LOCK);
    let io = |source| PipelineError::Io {
        path: path.clone(),
        source,
    };
    let lock = std::fs::File::create(&path).map_err(io)?;
    if lock.try_lock().is_err() {
        progress.note(&format!(
            "another `fusekit run` is working in {}: waiting for it to finish",
            dir.display()
        ));
        lock.lock().map_err(io)?;
    }
    Ok(lock)
}

/// Runs the planned `steps` of `pipeline`.
pub fn execute(
    pipeline: &Pipeline,
    steps: &[Step],
    observer: &mut dyn Observer,
) -> Result<RunOutcome, RunError> {
    let started = Instant::now();
    let mut outcome = RunOutcome {
        pipeline: pipeline.name.clone(),
        run_dir: pipeline.run_dir(),
        ran: 0,
        skipped: 0,
        seconds: 0.0,
        stages: Vec::new(),
        stopped_by_lint: None,
        planned: steps.len(),
    };
    let mut records: HashMap<String, StageOutcome> = HashMap::new();
    for step in steps {
        let name = step.stage.kind.name();
        let (record, ran) = match step.action {
            Action::After => continue,
            Action::Skip | Action::Before => {
                let record = match &step.status {
                    Status::Current(record) => (**record).clone(),
                    _ => StageRecord::read(&step.stage.dir)?.ok_or_else(|| {
                        RunError::Unsupported(format!("{name} has no {RECORD_FILE}"))
                    })?,
                };
                if step.action == Action::Skip {
                    observer.note(&format!(
                        "{name}: skipped, up to date (inputs and parameters unchanged since {})",
                        when(record.started)
                    ));
                    outcome.skipped += 1;
                }
                (record, false)
            }
            Action::Run => {
                observer.note(&format!("{name}: running ({})", reason(step)));
                let (record, blocking) = run_stage(pipeline, step, &records, observer)?;
                if let Some(codes) = blocking {
                    outcome.stopped_by_lint = Some(codes);
                    outcome.stages.push(stage_run(step, &record, true)?);
                    break;
                }
                observer.note(&format!("{name}: done in {:.1} s", record.seconds));
                outcome.ran += 1;
                (record, true)
            }
        };
        let run = stage_run(step, &record, ran)?;
        records.insert(name, run.outcome.clone());
        outcome.stages.push(run);
    }
    outcome.seconds = started.elapsed().as_secs_f64();
    Ok(outcome)
}

fn stage_run(step: &Step, record: &StageRecord, ran: bool) -> Result<StageRun, RunError> {
    let stage = &step.stage;
    let name = stage.kind.name();
    let parse_error = |e: serde_json::Error| RunError::Outcome {
        path: stage.dir.join(RECORD_FILE),
        stage: name.clone(),
        message: e.to_string(),
    };
    let value = record.outcome.clone();
    let outcome = match stage.kind {
        StageKind::Lint => StageOutcome::Lint(serde_json::from_value(value).map_err(parse_error)?),
        StageKind::Split => {
            StageOutcome::Split(serde_json::from_value(value).map_err(parse_error)?)
        }
        StageKind::Cache => {
            StageOutcome::Cache(serde_json::from_value(value).map_err(parse_error)?)
        }
        #[cfg(feature = "train")]
        StageKind::Train(_) => {
            StageOutcome::Train(serde_json::from_value(value).map_err(parse_error)?)
        }
        #[cfg(feature = "train")]
        StageKind::Predict(_) => {
            StageOutcome::Predict(serde_json::from_value(value).map_err(parse_error)?)
        }
        #[cfg(not(feature = "train"))]
        StageKind::Train(_) | StageKind::Predict(_) => StageOutcome::Other(value),
    };
    Ok(StageRun {
        stage: name,
        ran,
        dir: stage.dir.clone(),
        seconds: record.seconds,
        outcome,
    })
}

fn reason(step: &Step) -> String {
    match &step.status {
        Status::Current(_) => "up to date, but --force or --from asks for it".into(),
        status => status.describe(),
    }
}

/// The plan, one line per stage.
pub fn render_plan(pipeline: &Pipeline, steps: &[Step]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "pipeline {} ({}): dataset {}, run folder {}",
        pipeline.name,
        pipeline.path.display(),
        pipeline.data.display(),
        pipeline.run_dir().display()
    );
    for step in steps {
        let (action, why) = match step.action {
            Action::Run => ("run", reason(step)),
            Action::Skip => ("skip", step.status.describe()),
            Action::Before => ("use", "before --from: its output is used as it is".into()),
            Action::After => ("stop", "after --until".into()),
        };
        let _ = writeln!(
            s,
            "  {:<14} {action:<5} {why}  [{}]",
            step.stage.kind.name(),
            &step.stage.fingerprint[..12]
        );
    }
    s
}

/// Plans the run of `pipeline` for `selection` against the dataset's fingerprint.
pub fn plan_run(
    pipeline: &Pipeline,
    dataset_fingerprint: &str,
    selection: &Selection,
) -> Result<Vec<Step>, RunError> {
    Ok(plan(pipeline.stages(dataset_fingerprint), selection)?)
}

/// Runs one stage in its folder; the record, and the codes that stop the run when lint
/// found blocking findings.
fn run_stage(
    pipeline: &Pipeline,
    step: &Step,
    records: &HashMap<String, StageOutcome>,
    observer: &mut dyn Observer,
) -> Result<(StageRecord, Option<Vec<String>>), RunError> {
    let stage = &step.stage;
    let resumable = step.status == Status::Interrupted { same: true };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PipelineError::Io { path, source }
    };
    if !resumable && stage.dir.exists() {
        std::fs::remove_dir_all(&stage.dir).map_err(io(&stage.dir))?;
    }
    std::fs::create_dir_all(&stage.dir).map_err(io(&stage.dir))?;
    let record_path = stage.dir.join(RECORD_FILE);
    match std::fs::remove_file(&record_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io(&record_path)(e).into());
        }
        _ => {}
    }
    mark_started(stage)?;
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let clock = Instant::now();
    let failed = |source| RunError::Stage {
        stage: stage.kind.name(),
        source: Box::new(source),
    };
    let mut blocking = None;
    let outcome = match stage.kind {
        StageKind::Lint => {
            let outcome = lint::run(&lint_params(pipeline, stage), &*observer).map_err(failed)?;
            let header = outcome.header(&pipeline.data, None);
            observer.note(outcome.report.to_human(&header, 3).trim_end());
            if !outcome.blocking.is_empty() {
                let report = outcome.reports.first().cloned().unwrap_or_default();
                observer.note(&format!(
                    "lint: findings with {} stop the pipeline before anything is built (report: \
                     {}). Fix the dataset, or list the codes under `lint: accept:` in {} to go \
                     on without those pairs.",
                    outcome.blocking.join(", "),
                    report.display(),
                    pipeline.path.display()
                ));
                blocking = Some(outcome.blocking.clone());
            }
            to_value(&outcome)
        }
        StageKind::Split => {
            let outcome = split::run(&split_params(pipeline, stage), &*observer).map_err(failed)?;
            observer.note(outcome.human(&pipeline.data).trim_end());
            to_value(&outcome)
        }
        StageKind::Cache => {
            let params = cache_params(pipeline, stage);
            let outcome = cache::run(&params, &*observer).map_err(failed)?;
            observer.note(outcome.human().trim_end());
            to_value(&outcome)
        }
        #[cfg(feature = "train")]
        StageKind::Train(fusion) => {
            let params = train_params(pipeline, stage, fusion, resumable, &*observer)?;
            let outcome = fusekit_stages::train::run(&params, observer).map_err(failed)?;
            to_value(&outcome)
        }
        #[cfg(feature = "train")]
        StageKind::Predict(fusion) => {
            let params = predict_params(pipeline, stage, records, fusion)?;
            let outcome = fusekit_stages::predict::run(&params, &mut |_| {}).map_err(failed)?;
            observer.note(&format!(
                "{} pairs, {} detections on {} -> {}",
                outcome.pairs,
                outcome.detections,
                outcome.device,
                stage.dir.display()
            ));
            to_value(&outcome)
        }
        #[cfg(not(feature = "train"))]
        StageKind::Train(_) | StageKind::Predict(_) => {
            return Err(RunError::Unsupported(format!(
                "{}: this fusekit was built without the `train` feature (libtorch)",
                stage.kind.name()
            )));
        }
    };
    let _ = records;
    let record = StageRecord::new(stage, started_at, clock.elapsed().as_secs_f64(), outcome);
    if blocking.is_none() {
        record.write(&stage.dir)?;
    }
    Ok((record, blocking))
}

fn to_value(outcome: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(outcome).expect("an outcome serialises")
}

/// The data the cache and predict stages read: the split stage's lists, or the dataset's own
/// with `split.keep`.
fn split_data(pipeline: &Pipeline) -> PathBuf {
    if pipeline.split.keep {
        pipeline.data.clone()
    } else {
        split_dir(pipeline).join(fusekit_split::SPLIT_YAML)
    }
}

fn split_dir(pipeline: &Pipeline) -> PathBuf {
    pipeline.run_dir().join(StageKind::Split.name())
}

/// The lint stage's parameters: the `lint:` section at the pipeline's `imgsz`.
pub fn lint_params(pipeline: &Pipeline, stage: &Stage) -> lint::Params {
    lint::Params {
        report_dir: Some(stage.dir.clone()),
        settings: pipeline.lint.clone(),
        ..lint::Params::new(&pipeline.data, pipeline.imgsz)
    }
}

/// The split stage's parameters: the `split:` section, pairs left out at the lint levels.
pub fn split_params(pipeline: &Pipeline, stage: &Stage) -> split::Params {
    split::Params {
        data: pipeline.data.clone(),
        names: None,
        levels: pipeline.lint.selectors(),
        out: Some(stage.dir.clone()),
        force: false,
        settings: pipeline.split.clone(),
    }
}

/// The cache stage's parameters: the `cache:` section at the pipeline's `imgsz`.
pub fn cache_params(pipeline: &Pipeline, stage: &Stage) -> cache::Params {
    cache::Params {
        levels: pipeline.lint.selectors(),
        out: Some(stage.dir.clone()),
        settings: pipeline.cache.clone(),
        ..cache::Params::new(split_data(pipeline), pipeline.imgsz)
    }
}

/// The trainer's run folder inside a train stage's folder.
pub fn train_run_dir(stage_dir: &Path) -> PathBuf {
    stage_dir.join("train")
}

/// A train stage's parameters: the `train:` section's hyperparameters for one fusion mode,
/// at the pipeline's `imgsz`, on the cache stage's files.
#[cfg(feature = "train")]
pub fn train_params(
    pipeline: &Pipeline,
    stage: &Stage,
    fusion: fusekit_hyp::Fusion,
    resumable: bool,
    progress: &dyn Progress,
) -> Result<fusekit_stages::train::Params, RunError> {
    use fusekit_stages::train::{Distributed, Params, Subset, TrainData};
    let section = pipeline
        .train
        .as_ref()
        .ok_or_else(|| RunError::Unsupported("a train stage without a train section".into()))?;
    let run_dir = train_run_dir(&stage.dir);
    let checkpoint = fusekit_train::RunFiles::new(&run_dir).checkpoint;
    let resume = resumable && checkpoint.is_file();
    if resume {
        progress.note(&format!(
            "{}: continuing from {} (same fingerprint)",
            stage.kind.name(),
            checkpoint.display()
        ));
    } else if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir).map_err(|source| PipelineError::Io {
            path: run_dir.clone(),
            source,
        })?;
    }
    let mut hyp = section.hyp.clone();
    hyp.fusion = fusion;
    Ok(Params {
        data: TrainData::Cache(pipeline.run_dir().join(StageKind::Cache.name())),
        hyp,
        imgsz: Some(pipeline.imgsz),
        run_dir,
        resume,
        weights: None,
        device: section.device.clone(),
        subset: section.limit.map_or(Subset::All, Subset::First),
        distributed: Distributed::default(),
        simulate_oom_above: None,
    })
}

/// A predict stage's parameters: the `predict:` section with the weights its train stage
/// recorded, on every pair of the split.
#[cfg(feature = "train")]
pub fn predict_params(
    pipeline: &Pipeline,
    stage: &Stage,
    records: &HashMap<String, StageOutcome>,
    fusion: fusekit_hyp::Fusion,
) -> Result<fusekit_stages::predict::Params, RunError> {
    use fusekit_stages::predict::{Params, Source};
    let section = pipeline
        .predict
        .as_ref()
        .ok_or_else(|| RunError::Unsupported("a predict stage without a predict section".into()))?;
    let train = StageKind::Train(fusion).name();
    let Some(StageOutcome::Train(trained)) = records.get(&train) else {
        return Err(RunError::Unsupported(format!(
            "{train} recorded no weights"
        )));
    };
    Ok(Params {
        weights: trained.weights.best.clone(),
        source: Source::Dataset(split_data(pipeline)),
        imgsz: pipeline.imgsz,
        // The IR normalisation the caches were built with.
        ir_norm: pipeline.cache.ir_norm,
        nms: fusekit_detect::NmsOptions {
            conf: section.conf,
            iou: section.iou,
            max_det: section.max_det,
            ..fusekit_detect::NmsOptions::predict()
        },
        out: stage.dir.clone(),
        device: pipeline
            .train
            .as_ref()
            .map_or("auto".to_owned(), |t| t.device.clone()),
        pictures: section.images,
        save: fusekit_stages::predict::SaveOptions {
            txt: section.save_txt,
            conf: section.save_conf,
            json: section.save_json,
        },
    })
}

fn when(unix: u64) -> String {
    let ago = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .saturating_sub(unix);
    match ago {
        0..120 => format!("{ago} s ago"),
        120..7200 => format!("{} min ago", ago / 60),
        _ => format!("{} h ago", ago / 3600),
    }
}
