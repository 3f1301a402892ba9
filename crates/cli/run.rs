//! `fusekit run`: a pipeline file's stages, each through its subcommand's own code.
//!
//! The pipeline crate reads the file, fingerprints the stages and plans the run; this module
//! executes the plan. Each stage builds its subcommand's clap arguments (so flags are checked
//! and defaulted exactly as on the command line), calls the function the subcommand calls, and
//! writes `stage.json` into its folder only after it succeeded. A stage folder without
//! `stage.json` is an interrupted stage: rerun from scratch, or continued when it was started
//! for the same fingerprint (training resumes from its last checkpoint).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, FromArgMatches};
use fusekit_cache::{Cache, MapMode};
use fusekit_dataset::Dataset;
use fusekit_lint::Severity;
use fusekit_pipeline::{
    Action, FailOn, Pipeline, Selection, Stage, StageKind, StageRecord, Status, Step,
    files_fingerprint, mark_started, plan,
};
use serde_json::{Value, json};

use crate::lint::{LintArgs, lint};
use crate::split::{SplitArgs, human, split};
use crate::synth::SynthArgs;

/// Run a pipeline file: lint, split, cache, train and predict, skipping what is current.
///
/// Each stage records in `RUNS/NAME/STAGE/stage.json` the fingerprint of what it consumed
/// (its parameters, and the dataset's files or the previous stage's fingerprint). A stage
/// whose fingerprint is unchanged is skipped; changing a parameter reruns that stage and the
/// ones after it. An interrupted stage reruns, and training continues from its checkpoint.
/// Error-level lint findings stop the pipeline unless the file accepts their codes.
#[derive(Args)]
#[command(
    after_long_help = "Exit status: 0 when every selected stage finished, 1 when lint stopped \
the pipeline, 2 for an invalid pipeline file or a failed stage.\n\n\
Stages: lint, split, cache, train-FUSION and predict-FUSION for each fusion mode of the train \
section. --from and --until take a stage name, or lint/split/cache/train/predict for the \
first (--from) or last (--until) stage of that kind."
)]
pub struct RunArgs {
    /// The pipeline file (`pipelines/NAME.yaml`).
    pipeline: PathBuf,
    /// Start at this stage: it and the later ones run even when up to date; the earlier ones
    /// must have finished and are used as they are.
    #[arg(long, value_name = "STAGE")]
    from: Option<String>,
    /// Stop after this stage.
    #[arg(long, value_name = "STAGE")]
    until: Option<String>,
    /// Rerun the selected stages even when up to date.
    #[arg(long)]
    force: bool,
    /// Print the plan (what runs, what is skipped and why) and exit.
    #[arg(long)]
    dry_run: bool,
}

/// Runs `fusekit run`.
pub fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let pipeline = Pipeline::load(&args.pipeline)?;
    for warning in &pipeline.warnings {
        eprintln!("warning: {warning}");
    }
    if !pipeline.data.exists() {
        match (&pipeline.synth, args.dry_run) {
            (None, _) => bail!(
                "{}: the dataset {} does not exist (import it, or add a `synth` section to \
                 generate a sample)",
                args.pipeline.display(),
                pipeline.data.display()
            ),
            (Some(_), true) => eprintln!(
                "dataset {} is missing: `fusekit synth` would generate it first",
                pipeline.data.display()
            ),
            (Some(synth), false) => {
                let parsed: SynthArgs = parse_args(
                    "synth",
                    [
                        "--out".into(),
                        pipeline.data.clone().into_os_string(),
                        "--pairs".into(),
                        synth.pairs.to_string().into(),
                        "--size".into(),
                        synth.size.clone().into(),
                        "--scenes".into(),
                        synth.scenes.to_string().into(),
                        "--seed".into(),
                        synth.seed.to_string().into(),
                    ],
                )?;
                eprintln!(
                    "dataset {} is missing: generating it",
                    pipeline.data.display()
                );
                crate::synth::run(&parsed)?;
            }
        }
    }
    let dataset_fingerprint = if pipeline.data.exists() {
        dataset_files(&pipeline.data)?
    } else {
        "missing".to_owned()
    };
    let selection = Selection {
        from: args.from.clone(),
        until: args.until.clone(),
        force: args.force,
    };
    let steps = plan(pipeline.stages(&dataset_fingerprint), &selection)?;
    eprint!("{}", render_plan(&pipeline, &steps));
    if args.dry_run {
        return Ok(ExitCode::SUCCESS);
    }

    let mut records: HashMap<String, StageRecord> = HashMap::new();
    let (mut ran, mut skipped) = (0, 0);
    for step in &steps {
        let name = step.stage.kind.name();
        match step.action {
            Action::After => continue,
            Action::Skip | Action::Before => {
                let record = match &step.status {
                    Status::Current(record) => (**record).clone(),
                    _ => StageRecord::read(&step.stage.dir)?
                        .with_context(|| format!("{name} has no stage.json"))?,
                };
                if step.action == Action::Skip {
                    eprintln!(
                        "{name}: skipped, up to date (inputs and parameters unchanged since {})",
                        when(record.started)
                    );
                    skipped += 1;
                }
                records.insert(name, record);
            }
            Action::Run => {
                eprintln!("{name}: running ({})", reason(step));
                let record = match run_stage(&pipeline, step, &records)? {
                    Some(record) => record,
                    None => return Ok(ExitCode::from(1)),
                };
                eprintln!("{name}: done in {:.1} s", record.seconds);
                records.insert(name, record);
                ran += 1;
            }
        }
    }
    print!(
        "{}",
        summary(&pipeline, &steps, &records, ran, skipped, started)
    );
    Ok(ExitCode::SUCCESS)
}

/// Parses a subcommand's arguments as its command line would.
fn parse_args<T: Args + FromArgMatches>(
    name: &'static str,
    argv: impl IntoIterator<Item = OsString>,
) -> anyhow::Result<T> {
    let command = T::augment_args(clap::Command::new(name).no_binary_name(true));
    let matches = command
        .try_get_matches_from(argv)
        .with_context(|| format!("arguments of the {name} stage"))?;
    Ok(T::from_arg_matches(&matches)?)
}

/// Fingerprint of the dataset: its description and every file under its root.
fn dataset_files(data: &Path) -> anyhow::Result<String> {
    let root = Dataset::open(data, None)
        .map(|d| d.root)
        .unwrap_or_else(|_| data.to_path_buf());
    let mut paths = vec![data];
    if root != data {
        paths.push(&root);
    }
    Ok(files_fingerprint(&paths)?)
}

fn reason(step: &Step) -> String {
    match (&step.status, step.action) {
        (Status::Current(_), _) => "up to date, but --force or --from asks for it".into(),
        (status, _) => status.describe(),
    }
}

/// The plan, one line per stage.
fn render_plan(pipeline: &Pipeline, steps: &[Step]) -> String {
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

/// Runs one stage in its folder; `None` when lint stopped the pipeline.
fn run_stage(
    pipeline: &Pipeline,
    step: &Step,
    records: &HashMap<String, StageRecord>,
) -> anyhow::Result<Option<StageRecord>> {
    let stage = &step.stage;
    let resumable = step.status == Status::Interrupted { same: true };
    if !resumable && stage.dir.exists() {
        std::fs::remove_dir_all(&stage.dir)
            .with_context(|| format!("clearing {}", stage.dir.display()))?;
    }
    std::fs::create_dir_all(&stage.dir)
        .with_context(|| format!("creating {}", stage.dir.display()))?;
    let _ = std::fs::remove_file(stage.dir.join(fusekit_pipeline::RECORD_FILE));
    mark_started(stage)?;
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let clock = Instant::now();
    let run_dir = pipeline.run_dir();
    let outcome = match stage.kind {
        StageKind::Lint => match lint_stage(pipeline, stage)? {
            Some(outcome) => outcome,
            None => return Ok(None),
        },
        StageKind::Split => split_stage(pipeline, stage, &run_dir)?,
        StageKind::Cache => cache_stage(pipeline, stage, &run_dir)?,
        #[cfg(feature = "train")]
        StageKind::Train(_) => train_stage(pipeline, stage, &run_dir, resumable)?,
        #[cfg(feature = "train")]
        StageKind::Predict(fusion) => predict_stage(pipeline, stage, &run_dir, records, fusion)?,
        #[cfg(not(feature = "train"))]
        StageKind::Train(_) | StageKind::Predict(_) => bail!(
            "{}: this fusekit was built without the `train` feature (libtorch)",
            stage.kind.name()
        ),
    };
    let _ = records;
    let record = StageRecord::new(stage, started_at, clock.elapsed().as_secs_f64(), outcome);
    record.write(&stage.dir)?;
    Ok(Some(record))
}

fn os(path: &Path) -> OsString {
    path.as_os_str().to_owned()
}

/// The `[lint]` levels of the pipeline, as a config file the lint, split and cache stages read.
fn lint_config(run_dir: &Path) -> PathBuf {
    run_dir.join("lint").join("lint.toml")
}

fn lint_stage(pipeline: &Pipeline, stage: &Stage) -> anyhow::Result<Option<Value>> {
    let section = &pipeline.lint;
    let list = |items: &[String]| {
        let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
        format!("[{}]", quoted.join(", "))
    };
    let mut config = format!(
        "# The lint levels of {}, written by `fusekit run`.\n[lint]\ndeny = {}\nwarn = {}\nallow = {}\n",
        pipeline.path.display(),
        list(&section.deny),
        list(&section.warn),
        list(&section.allow)
    );
    if let Some(decode) = &section.decode {
        let _ = writeln!(config, "decode = {decode:?}");
    }
    if let Some(imgsz) = section.imgsz {
        let _ = writeln!(config, "imgsz = {imgsz}");
    }
    let config_path = lint_config(&pipeline.run_dir());
    std::fs::write(&config_path, config)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let args: LintArgs = parse_args(
        "lint",
        [os(&pipeline.data), "--config".into(), os(&config_path)],
    )?;
    let linted = lint(&args)?;
    let report = &linted.report;
    let text_path = stage.dir.join("report.txt");
    let json_path = stage.dir.join("report.json");
    std::fs::write(&text_path, report.to_human(&linted.header, 0))
        .with_context(|| format!("writing {}", text_path.display()))?;
    std::fs::write(&json_path, report.to_json())
        .with_context(|| format!("writing {}", json_path.display()))?;
    eprint!("{}", report.to_human(&linted.header, 3));
    let stops = |severity: Severity| match section.fail_on {
        FailOn::Error => severity == Severity::Error,
        FailOn::Warning => severity <= Severity::Warning,
        FailOn::Never => false,
    };
    let mut blocking: Vec<String> = Vec::new();
    let mut accepted = 0;
    for finding in &report.findings {
        if !stops(finding.severity) {
            continue;
        }
        let code = finding.code.to_string();
        if section.accepts(&code, finding.code.family()) {
            accepted += 1;
        } else if !blocking.contains(&code) {
            blocking.push(code);
        }
    }
    if !blocking.is_empty() {
        eprintln!(
            "lint: findings with {} stop the pipeline before anything is built (report: {}). \
             Fix the dataset, or list the codes under `lint: accept:` in {} to go on without \
             those pairs.",
            blocking.join(", "),
            text_path.display(),
            pipeline.path.display()
        );
        return Ok(None);
    }
    let summary = &report.summary;
    Ok(Some(json!({
        "pairs": summary.pairs,
        "errors": summary.errors,
        "warnings": summary.warnings,
        "infos": summary.infos,
        "by_code": summary.by_code,
        "accepted": accepted,
        "report": text_path,
        "report_json": json_path,
    })))
}

/// The data the cache and predict stages read: the split stage's lists, or the dataset's own
/// with `split.keep`.
fn split_data(pipeline: &Pipeline, run_dir: &Path) -> PathBuf {
    if pipeline.split.keep {
        pipeline.data.clone()
    } else {
        run_dir.join("split").join(fusekit_split::SPLIT_YAML)
    }
}

fn split_stage(pipeline: &Pipeline, stage: &Stage, run_dir: &Path) -> anyhow::Result<Value> {
    let section = &pipeline.split;
    if section.keep {
        eprintln!(
            "split: keeping the lists of {} (split.keep)",
            pipeline.data.display()
        );
        return Ok(json!({"kept": true, "data": pipeline.data}));
    }
    let mut argv: Vec<OsString> = vec![
        os(&pipeline.data),
        "--out".into(),
        os(&stage.dir),
        "--val".into(),
        section.val.to_string().into(),
        "--test".into(),
        section.test.to_string().into(),
        "--seed".into(),
        section.seed.to_string().into(),
        "--stratify".into(),
        match section.stratify {
            fusekit_pipeline::Stratify::Classes => "classes".into(),
            fusekit_pipeline::Stratify::None => "none".into(),
        },
        "--config".into(),
        os(&lint_config(run_dir)),
    ];
    if let Some(group) = &section.group {
        argv.extend(["--group".into(), group.into()]);
    }
    if section.group_by_folder {
        argv.push("--group-by-folder".into());
    }
    let args: SplitArgs = parse_args("split", argv)?;
    let (outcome, manifest, out) = split(&args)?;
    eprint!(
        "{}",
        human(
            &pipeline.data.display().to_string(),
            &manifest,
            &outcome,
            &out
        )
    );
    Ok(json!({
        "pairs": manifest.pairs,
        "excluded": manifest.excluded.len(),
        "data": out.join(fusekit_split::SPLIT_YAML),
    }))
}

fn cache_stage(pipeline: &Pipeline, stage: &Stage, run_dir: &Path) -> anyhow::Result<Value> {
    let section = &pipeline.cache;
    let args: crate::cache::BuildArgs = parse_args(
        "cache build",
        [
            os(&split_data(pipeline, run_dir)),
            "--imgsz".into(),
            section.imgsz.to_string().into(),
            "--mode".into(),
            match section.mode {
                fusekit_pipeline::CacheMode::Ram => "ram".into(),
                fusekit_pipeline::CacheMode::Disk => "disk".into(),
            },
            "--out".into(),
            os(&stage.dir),
            "--config".into(),
            os(&lint_config(run_dir)),
        ],
    )?;
    let clock = Instant::now();
    if crate::cache::build_caches(&args)? != ExitCode::SUCCESS {
        bail!("building the caches in {} failed", stage.dir.display());
    }
    let seconds = clock.elapsed().as_secs_f64();
    let mut files = Vec::new();
    let (mut pairs, mut bytes) = (0usize, 0u64);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&stage.dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "fkc"))
        .collect();
    entries.sort();
    for path in entries {
        let cache = Cache::open(&path, Some(MapMode::Disk))
            .with_context(|| format!("opening {}", path.display()))?;
        let size = path.metadata()?.len();
        pairs += cache.len();
        bytes += size;
        files.push(json!({"path": path, "pairs": cache.len(), "bytes": size}));
    }
    Ok(json!({
        "files": files,
        "pairs": pairs,
        "bytes": bytes,
        "build_seconds": seconds,
        "pairs_per_second": pairs as f64 / seconds.max(1e-9),
    }))
}

#[cfg(feature = "train")]
/// The trainer's run folder inside a train stage's folder.
fn train_run_dir(stage_dir: &Path) -> PathBuf {
    stage_dir.join("train")
}

#[cfg(feature = "train")]
fn train_stage(
    pipeline: &Pipeline,
    stage: &Stage,
    run_dir: &Path,
    resumable: bool,
) -> anyhow::Result<Value> {
    let section = pipeline
        .train
        .as_ref()
        .context("a train stage without a train section")?;
    let StageKind::Train(fusion) = stage.kind else {
        bail!("{} is not a train stage", stage.kind.name());
    };
    let trainer_dir = train_run_dir(&stage.dir);
    let checkpoint = fusekit_train::RunFiles::new(&trainer_dir).checkpoint;
    let mut argv: Vec<OsString> = vec![
        "--cache".into(),
        os(&run_dir.join("cache")),
        "--project".into(),
        os(&stage.dir),
        "--name".into(),
        "train".into(),
        "--device".into(),
        section.device.clone().into(),
    ];
    if let Some(limit) = section.limit {
        argv.extend(["--limit".into(), limit.to_string().into()]);
    }
    if resumable && checkpoint.is_file() {
        eprintln!(
            "{}: continuing from {} (same fingerprint)",
            stage.kind.name(),
            checkpoint.display()
        );
        argv.push("--resume".into());
    } else {
        if trainer_dir.exists() {
            std::fs::remove_dir_all(&trainer_dir)
                .with_context(|| format!("clearing {}", trainer_dir.display()))?;
        }
        let mut hyp = section.hyp.clone();
        hyp.fusion = fusion;
        let hyp_path = stage.dir.join("hyp.yaml");
        std::fs::write(&hyp_path, hyp.to_yaml()?)
            .with_context(|| format!("writing {}", hyp_path.display()))?;
        argv.extend(["--hyp".into(), os(&hyp_path)]);
    }
    let args: crate::train::TrainArgs = parse_args("train", argv)?;
    let trained = crate::train::execute(&args, &mut std::io::stderr())?
        .context("the trainer returned no run")?;
    let mut outcome = trained.to_json();
    outcome["fusion"] = json!(fusion.as_str());
    Ok(outcome)
}

#[cfg(feature = "train")]
fn predict_stage(
    pipeline: &Pipeline,
    stage: &Stage,
    run_dir: &Path,
    records: &HashMap<String, StageRecord>,
    fusion: fusekit_hyp::Fusion,
) -> anyhow::Result<Value> {
    let section = pipeline
        .predict
        .as_ref()
        .context("a predict stage without a predict section")?;
    let train = StageKind::Train(fusion).name();
    let weights = records
        .get(&train)
        .and_then(|r| r.outcome["weights"]["best"].as_str().map(PathBuf::from))
        .with_context(|| format!("{train} recorded no weights"))?;
    let device = pipeline
        .train
        .as_ref()
        .map_or("auto".to_owned(), |t| t.device.clone());
    let mut argv: Vec<OsString> = vec![
        "--weights".into(),
        os(&weights),
        "--source".into(),
        os(&split_data(pipeline, run_dir)),
        "--imgsz".into(),
        pipeline.cache.imgsz.to_string().into(),
        "--conf".into(),
        section.conf.to_string().into(),
        "--iou".into(),
        section.iou.to_string().into(),
        "--out".into(),
        os(&stage.dir),
        "--device".into(),
        device.into(),
    ];
    if !section.images {
        argv.push("--no-images".into());
    }
    let args: crate::predict::PredictArgs = parse_args("predict", argv)?;
    let mut log = Vec::new();
    let predicted = crate::predict::execute(&args, &mut log)?;
    let log_path = stage.dir.join("predict.log");
    std::fs::write(&log_path, &log).with_context(|| format!("writing {}", log_path.display()))?;
    if let Some(last) = String::from_utf8_lossy(&log).lines().last() {
        eprintln!("{last}");
    }
    Ok(json!({
        "pairs": predicted.pairs,
        "detections": predicted.detections,
        "predictions": stage.dir.join("predictions.jsonl"),
        "pictures": if section.images { predicted.pairs } else { 0 },
    }))
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

/// The closing table: what each stage found or made, and where the results are.
fn summary(
    pipeline: &Pipeline,
    steps: &[Step],
    records: &HashMap<String, StageRecord>,
    ran: usize,
    skipped: usize,
    started: Instant,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\npipeline {}: {} stages, {ran} run, {skipped} skipped, {:.1} s; records in {}/*/stage.json",
        pipeline.name,
        steps.len(),
        started.elapsed().as_secs_f64(),
        pipeline.run_dir().display()
    );
    let outcome = |name: &str| records.get(name).map(|r| &r.outcome);
    if let Some(o) = outcome("lint") {
        let by_code: Vec<String> = o["by_code"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k} x{v}")).collect())
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  lint     {} pairs: {} errors, {} warnings, {} infos{}",
            o["pairs"],
            o["errors"],
            o["warnings"],
            o["infos"],
            if by_code.is_empty() {
                String::new()
            } else {
                format!(" ({})", by_code.join(", "))
            }
        );
    }
    if let Some(o) = outcome("split") {
        let _ = writeln!(
            s,
            "  split    train {} / val {} / test {} pairs, {} left out with lint errors",
            o["pairs"]["train"], o["pairs"]["val"], o["pairs"]["test"], o["excluded"]
        );
    }
    if let Some(o) = outcome("cache") {
        let _ = writeln!(
            s,
            "  cache    {} pairs in {} files, {:.1} MB, built at {:.1} pairs/s",
            o["pairs"],
            o["files"].as_array().map_or(0, Vec::len),
            o["bytes"].as_f64().unwrap_or(0.0) / 1e6,
            o["pairs_per_second"].as_f64().unwrap_or(0.0)
        );
    }
    let trained: Vec<&Step> = steps
        .iter()
        .filter(|st| matches!(st.stage.kind, StageKind::Train(_)))
        .filter(|st| records.contains_key(&st.stage.kind.name()))
        .collect();
    if !trained.is_empty() {
        let _ = writeln!(
            s,
            "  train    fusion  epochs    time   final mAP50  mAP50-95   best mAP50  mAP50-95"
        );
        for step in &trained {
            let record = &records[&step.stage.kind.name()];
            let o = &record.outcome;
            let metric = |r: &Value, k: &str| r[k].as_f64().unwrap_or(0.0);
            let _ = writeln!(
                s,
                "           {:<6} {:>7} {:>6.0} s  {:>11.3} {:>9.3} {:>12.3} {:>9.3}",
                o["fusion"].as_str().unwrap_or("?"),
                o["epochs"],
                record.seconds,
                metric(&o["last"], "mAP50"),
                metric(&o["last"], "mAP50-95"),
                metric(&o["best"], "mAP50"),
                metric(&o["best"], "mAP50-95"),
            );
        }
    }
    for step in steps {
        let name = step.stage.kind.name();
        let Some(o) = outcome(&name) else { continue };
        match step.stage.kind {
            StageKind::Train(_) => {
                let _ = writeln!(
                    s,
                    "  {name:<14} results {}\n  {:<14} weights {}",
                    o["results"].as_str().unwrap_or("?"),
                    "",
                    o["weights"]["best"].as_str().unwrap_or("?")
                );
            }
            StageKind::Predict(_) => {
                let _ = writeln!(
                    s,
                    "  {name:<14} {} pairs, {} detections, {} pictures in {}",
                    o["pairs"],
                    o["detections"],
                    o["pictures"],
                    step.stage.dir.display()
                );
            }
            _ => {}
        }
    }
    s
}
