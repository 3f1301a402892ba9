//! `fusekit train`: train the dual-stream detector from a prepared cache.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use fusekit_cache::Cache;
use std::sync::Arc;
use std::time::Duration;

use fusekit_detect::NmsOptions;
use fusekit_dist::{Backend, DistError, ProcessGroup};
use fusekit_hyp::{
    Accumulate, BatchPlan, Fusion, Hyp, HypOverrides, LrScaling, ModelScale, NanPolicy, Optimizer,
    Schedule, render_table,
};
use fusekit_train::{
    Event, Faults, RunFiles, SimulatedOom, TrainError, TrainOptions, parse_device, train,
};
use serde_json::json;
use tch::Device;

use crate::cache::build_for_training;
use crate::output::Format;
use crate::progress;
use crate::val::{print_table, validate_weights};

/// Train the dual-stream detector from a fusekit cache.
///
/// The batch arithmetic is done for you: `--accumulate auto` makes the effective batch close
/// to `--nbs` (64) as Ultralytics does, and `--lr-scaling linear` scales lr0 and weight decay
/// by effective / nbs, so `--batch 8 --accumulate 4` trains like batch 32 at half the
/// nominal lr. The line printed at start shows the numbers. Every flag can also be set in
/// `--hyp hyp.yaml` under Ultralytics' names (command-line values win).
///
/// Writes `PROJECT/NAME/` (NAME, NAME2, ... when taken): `args.yaml`, `results.csv` with
/// Ultralytics' columns, `weights/last.safetensors` and `weights/best.safetensors` (EMA
/// weights, for `fusekit predict`) and `weights/last.ckpt` (for `--resume`).
#[derive(Args)]
pub struct TrainArgs {
    /// A cache folder with train.fkc and val.fkc (from `fusekit cache build`).
    #[arg(long, conflicts_with = "data", required_unless_present = "data")]
    cache: Option<PathBuf>,
    /// A dataset (data yaml or folder): its caches are built first, or reused when current.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Hyperparameters in a yaml file with Ultralytics' keys.
    #[arg(long)]
    hyp: Option<PathBuf>,
    /// YOLOv8 scale.
    #[arg(long, value_parser = parse_word::<ModelScale>)]
    model: Option<ModelScale>,
    /// rgb, ir (single stream), early (input concat), mid (P3-P5 fusion), late (two detectors).
    #[arg(long, value_parser = parse_word::<Fusion>)]
    fusion: Option<Fusion>,
    /// Training epochs.
    #[arg(long)]
    epochs: Option<u32>,
    /// Images per micro-batch (per device).
    #[arg(long)]
    batch: Option<u32>,
    /// Image size: by default the cache's (it knows the size it was built at) or, with
    /// --data, 640; a value that differs from the cache's is an error.
    #[arg(long)]
    imgsz: Option<u32>,
    /// Micro-batches per optimizer step: `auto` (round(nbs / batch)) or a number.
    #[arg(long, value_parser = parse_word::<Accumulate>)]
    accumulate: Option<Accumulate>,
    /// Nominal batch size the learning rate and weight decay are given for.
    #[arg(long)]
    nbs: Option<u32>,
    /// Initial learning rate at nbs images per step.
    #[arg(long)]
    lr0: Option<f64>,
    /// Final learning rate as a fraction of lr0.
    #[arg(long)]
    lrf: Option<f64>,
    /// `linear`: scale lr0 and weight decay by effective batch / nbs; `none`: weight decay only.
    #[arg(long, value_parser = parse_word::<LrScaling>)]
    lr_scaling: Option<LrScaling>,
    /// Warmup epochs (0 for none, e.g. when fine-tuning).
    #[arg(long)]
    warmup_epochs: Option<f64>,
    /// Cosine learning-rate decay instead of linear.
    #[arg(long)]
    cos_lr: bool,
    /// SGD (Nesterov, momentum 0.937) or AdamW.
    #[arg(long, value_parser = parse_word::<Optimizer>)]
    optimizer: Option<Optimizer>,
    /// Turn mosaic off for the last N epochs.
    #[arg(long)]
    close_mosaic: Option<u32>,
    /// Epochs without improvement before stopping (0: never).
    #[arg(long)]
    patience: Option<u32>,
    /// Random seed (order and augmentation).
    #[arg(long)]
    seed: Option<u64>,
    /// `stop`, or `rollback` to the epoch's start at half the lr.
    #[arg(long, value_parser = parse_word::<NanPolicy>)]
    nan_policy: Option<NanPolicy>,
    /// Validate and save the raw weights instead of an exponential moving average.
    #[arg(long)]
    no_ema: bool,
    /// Mixed precision on CUDA (fp16 autocast); CPU always trains in f32.
    #[arg(long)]
    amp: bool,
    /// Train on this fraction of the training set (its first samples).
    #[arg(long, conflicts_with = "limit")]
    fraction: Option<f64>,
    /// Train on the first N samples of the training set.
    #[arg(long)]
    limit: Option<usize>,
    /// Initial weights: fusekit `.safetensors`, or an Ultralytics state dict as safetensors.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Continue the run NAME (or the latest run in PROJECT) from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Run name (default `train`; with --resume, the latest run).
    #[arg(long)]
    name: Option<String>,
    /// Folder of runs.
    #[arg(long, default_value = "runs/fuse")]
    project: PathBuf,
    /// `auto` (CUDA 0 when present), `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Print the learning rate of each group and the momentum at every batch, then exit.
    #[arg(long)]
    print_schedule: bool,
    /// `human` prints progress; `json` prints one summary object at the end.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
    /// Start N local ranks of data-parallel training (each with --batch images per step and
    /// its shard of the cache), as `torchrun --nproc_per_node=N --no-python fusekit train ...`
    /// would; torchrun itself works too (RANK, WORLD_SIZE, MASTER_ADDR, ... are read).
    #[arg(long)]
    nproc: Option<usize>,
    /// Seconds a rank waits for the others in a collective before failing (data-parallel).
    #[arg(long, default_value_t = 1800)]
    dist_timeout: u64,
    /// Backend of the data-parallel collectives: `auto` (NCCL when training on CUDA, Gloo
    /// otherwise), `gloo`, or `nccl` (every rank needs CUDA device LOCAL_RANK).
    #[arg(long, value_enum, default_value_t = DistBackend::Auto)]
    dist_backend: DistBackend,
    /// Synchronised BatchNorm (data-parallel): normalise with the statistics of the global
    /// batch, every rank's images, instead of each rank's own. Worth it when the per-device
    /// batch is small (under ~8 images); costs two small collectives per BatchNorm layer.
    #[arg(long)]
    sync_bn: bool,
    /// Testing aid: micro-batches of more than N images fail like a CUDA out-of-memory error,
    /// so the fallback (halve the micro-batch, double accumulation) runs without a GPU.
    #[arg(long, hide = true)]
    simulate_oom_above: Option<usize>,
}

/// `--dist-backend`.
#[derive(Clone, Copy, ValueEnum)]
enum DistBackend {
    /// NCCL when training on CUDA, Gloo otherwise.
    Auto,
    /// Gloo (CUDA gradients pass through host memory).
    Gloo,
    /// NCCL (CUDA only).
    Nccl,
}

fn parse_word<T: std::str::FromStr>(text: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e: T::Err| e.to_string())
}

impl TrainArgs {
    fn overrides(&self) -> HypOverrides {
        HypOverrides {
            model_scale: self.model,
            fusion: self.fusion,
            epochs: self.epochs,
            batch: self.batch,
            imgsz: self.imgsz,
            accumulate: self.accumulate,
            nbs: self.nbs,
            lr0: self.lr0,
            lrf: self.lrf,
            lr_scaling: self.lr_scaling,
            warmup_epochs: self.warmup_epochs,
            cos_lr: self.cos_lr.then_some(true),
            optimizer: self.optimizer,
            close_mosaic: self.close_mosaic,
            patience: self.patience,
            seed: self.seed,
            nan_policy: self.nan_policy,
            ema: self.no_ema.then_some(false),
            amp: self.amp.then_some(true),
            ..HypOverrides::default()
        }
    }
}

/// A finished training run.
pub struct Trained {
    /// The run folder.
    pub run_dir: PathBuf,
    /// Epochs, best and last metrics, time.
    pub summary: fusekit_train::TrainSummary,
    /// This process is rank 0 (or the only one): it wrote the run and reports it.
    pub main: bool,
    /// Where it trained.
    pub device: Device,
    /// The validation cache, if there was one.
    pub val_cache: Option<PathBuf>,
}

impl Trained {
    /// The run as `fusekit train --format json` prints it.
    pub fn to_json(&self) -> serde_json::Value {
        let summary = &self.summary;
        let files = RunFiles::new(&self.run_dir);
        let record = |r: &Option<fusekit_train::EpochRecord>| {
            r.as_ref().map(|r| {
                json!({"epoch": r.epoch, "precision": r.precision, "recall": r.recall,
                       "mAP50": r.map50, "mAP50-95": r.map50_95, "train_loss": r.train_loss,
                       "val_loss": r.val_loss})
            })
        };
        json!({
            "run": self.run_dir,
            "epochs": summary.epochs,
            "best_epoch": summary.best_epoch,
            "best": record(&summary.best),
            "last": record(&summary.last),
            "stopped_early": summary.stopped_early,
            "seconds": summary.seconds,
            "images_per_second": summary.images_per_second,
            "data_wait": summary.data_wait,
            "results": files.results,
            "weights": {"best": files.best, "last": files.last},
        })
    }
}

/// Runs `fusekit train`.
pub fn run(args: &TrainArgs) -> anyhow::Result<ExitCode> {
    if let Some(n) = args.nproc.filter(|&n| n > 1) {
        return launch_ranks(n);
    }
    let Some(trained) = execute(args, &mut std::io::stdout())? else {
        return Ok(ExitCode::SUCCESS);
    };
    if !trained.main {
        return Ok(ExitCode::SUCCESS);
    }
    let Trained {
        run_dir, summary, ..
    } = &trained;
    let files = RunFiles::new(run_dir);
    if args.format == Format::Human {
        if let Some(best) = &summary.best {
            println!(
                "best epoch {}: mAP50 {:.3} mAP50-95 {:.3}; {} epochs in {:.1} s ({:.1} images/s, \
{:.1}% of the time waiting for data)",
                summary.best_epoch,
                best.map50,
                best.map50_95,
                summary.epochs,
                summary.seconds,
                summary.images_per_second,
                summary.data_wait * 100.0
            );
        }
        if let Some(val) = &trained.val_cache {
            // Ultralytics' closing table: the best weights, per class.
            println!("validating {}", files.best.display());
            let (result, names) = validate_weights(
                &files.best,
                val,
                trained.device,
                VAL_BATCH,
                &NmsOptions::default(),
            )?;
            print_table(&result, &names);
        }
        println!(
            "results: {}\nweights: {} (best), {} (last)",
            files.results.display(),
            files.best.display(),
            files.last.display()
        );
    } else {
        println!("{}", trained.to_json());
    }
    Ok(ExitCode::SUCCESS)
}

/// Trains as `fusekit train` does, writing its progress lines to `out`; `None` after
/// `--print-schedule`. Joins the data-parallel group when torchrun's environment names one.
pub fn execute(args: &TrainArgs, out: &mut dyn Write) -> anyhow::Result<Option<Trained>> {
    let requested = parse_device(&args.device)?;
    let backend = match args.dist_backend {
        DistBackend::Auto => Backend::for_device(requested),
        DistBackend::Gloo => Backend::Gloo,
        DistBackend::Nccl => Backend::Nccl,
    };
    let group = ProcessGroup::from_env_with(Duration::from_secs(args.dist_timeout), backend)
        .with_context(|| format!("joining the data-parallel group ({backend})"))?
        .map(Arc::new);
    let main = group.as_ref().is_none_or(|g| g.is_main());
    let run_dir = if args.resume {
        resume_dir(&args.project, args.name.as_deref())?
    } else {
        fresh_dir(&args.project, args.name.as_deref().unwrap_or("train"))
    };
    let hyp_file = if args.resume {
        Some(RunFiles::new(&run_dir).args)
    } else {
        args.hyp.clone()
    };
    let loaded = Hyp::resolve(hyp_file.as_deref(), &args.overrides())?;
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    let imgsz_given = loaded.given.iter().any(|key| key == "imgsz");
    let mut hyp = loaded.hyp;
    let cache_dir = match (&args.cache, &args.data) {
        (Some(cache), _) => cache.clone(),
        (None, Some(data)) => build_for_training(data, hyp.imgsz)?,
        (None, None) => bail!("give --cache DIR or --data DATA"),
    };
    let train_cache = cache_dir.join("train.fkc");
    if !train_cache.is_file() {
        bail!(
            "{}: no train.fkc (build it with `fusekit cache build DATA --out {}`)",
            cache_dir.display(),
            cache_dir.display()
        );
    }
    let val_cache = cache_dir.join("val.fkc");
    let val_cache = if val_cache.is_file() {
        Some(val_cache)
    } else {
        eprintln!(
            "warning: {} has no val.fkc: training without validation (metrics stay 0; \
fusekit never validates on the training set)",
            cache_dir.display()
        );
        None
    };
    let cache = Cache::open(&train_cache, None)?;
    if !imgsz_given {
        // The cache knows the size it was built at.
        hyp.imgsz = cache.meta().imgsz;
    }
    let samples = cache.len();
    drop(cache);
    let limit = match (args.limit, args.fraction) {
        (Some(n), _) => Some(n),
        (None, Some(f)) if f > 0.0 && f <= 1.0 => {
            Some(((samples as f64 * f).round() as usize).max(1))
        }
        (None, Some(f)) => bail!("--fraction {f} is not in (0, 1]"),
        (None, None) => None,
    };
    if args.print_schedule {
        let images = limit.map_or(samples, |n| n.min(samples));
        let plan = BatchPlan::from_hyp(&hyp, 1)?;
        let batches = images.div_ceil(hyp.batch as usize) as u64;
        let schedule = Schedule::new(&hyp, &plan, batches, hyp.epochs)?.with_min_warmup(MIN_WARMUP);
        writeln!(out, "{plan}")?;
        write!(out, "{}", render_table(schedule.rows()))?;
        return Ok(None);
    }
    let device = match (requested, &group) {
        // One GPU per local rank.
        (Device::Cuda(_), Some(g)) => Device::Cuda(g.local_rank()),
        (device, _) => device,
    };
    if hyp.amp && !device.is_cuda() && args.amp {
        eprintln!("note: --amp applies on CUDA only; training in f32 on the CPU");
    }
    let world = group.as_ref().map_or(1, |g| g.world_size());
    let options = TrainOptions {
        hyp: hyp.clone(),
        train_cache,
        val_cache,
        device,
        run_dir: run_dir.clone(),
        weights: args.weights.clone(),
        resume: args.resume,
        limit,
        min_warmup: MIN_WARMUP,
        faults: Faults {
            out_of_memory: args.simulate_oom_above.map(|above| SimulatedOom {
                above,
                from_batch: 0,
            }),
            non_finite: None,
            out_of_memory_validating: false,
        },
        group,
        sync_bn: args.sync_bn,
    };
    let human = args.format == Format::Human && main;
    let mut bar: Option<indicatif::ProgressBar> = None;
    let mut observer = |event: Event<'_>| match event {
        Event::Started {
            plan,
            config,
            parameters,
            images,
            batches,
            warmup,
            start_epoch,
        } if human => {
            let _ = writeln!(out, "{plan}");
            let _ = writeln!(
                out,
                "model: yolov8{} {} fusion, {} classes, {} IR plane{}, {:.2}M parameters, on {}",
                config.scale,
                config.fusion,
                config.names.len(),
                config.ir_channels,
                if config.ir_channels == 1 { "" } else { "s" },
                parameters as f64 / 1e6,
                device_name(device)
            );
            let _ = writeln!(
                out,
                "data: {}, warmup {warmup} batches{}",
                data_summary(images, batches, world),
                if start_epoch > 0 {
                    format!(", resuming at epoch {}", start_epoch + 1)
                } else {
                    String::new()
                }
            );
            let _ = writeln!(out, "run: {}", run_dir.display());
        }
        Event::Batch {
            epoch,
            batch,
            batches,
            loss,
            images,
            seconds,
            lr,
        } if human => {
            let bar = bar.get_or_insert_with(|| progress::bar("train", batches, "batches"));
            if batch == 0 {
                bar.reset();
                bar.set_length(batches);
            }
            bar.set_prefix(format!("epoch {}/{}", epoch + 1, hyp.epochs));
            bar.set_message(format!(
                "box {:.3} cls {:.3} dfl {:.3}  lr {lr:.5}  {:.1} img/s",
                loss[0],
                loss[1],
                loss[2],
                images as f64 / seconds.max(1e-9)
            ));
            bar.set_position(batch + 1);
        }
        Event::Epoch(record) if human => {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            let _ = writeln!(
                out,
                "epoch {:>3}/{}  box {:.3} cls {:.3} dfl {:.3}  P {:.3} R {:.3} mAP50 {:.3} mAP50-95 {:.3}  lr {:.5}  {:.1}s",
                record.epoch,
                hyp.epochs,
                record.train_loss[0],
                record.train_loss[1],
                record.train_loss[2],
                record.precision,
                record.recall,
                record.map50,
                record.map50_95,
                record.lr[0],
                record.time
            );
        }
        Event::Note(note) => eprintln!("note: {note}"),
        _ => {}
    };
    let summary = train(&options, &mut observer).map_err(|err| {
        let lost_peer = matches!(err, TrainError::Dist(DistError::Collective { .. }));
        let err = anyhow::Error::new(err);
        let err = if lost_peer {
            // Gloo says "Connection closed by peer" or just "Operation timed out!": say what
            // that means for a training run and how to continue it.
            err.context(format!(
                "lost contact with the other ranks: another rank probably failed, was killed or \
stopped responding for --dist-timeout {} s (its own output says why); `--resume` continues \
from the last finished epoch",
                args.dist_timeout
            ))
        } else {
            err
        };
        err.context(format!("training run {}", run_dir.display()))
    })?;
    Ok(Some(Trained {
        run_dir,
        summary,
        main,
        device,
        val_cache: options.val_cache,
    }))
}

/// Runs this command line again as `n` local ranks (RANK, LOCAL_RANK, WORLD_SIZE and a free
/// MASTER_PORT on 127.0.0.1, torchrun's contract) and waits for all of them. As torchrun does,
/// the first rank that fails stops the others: they get [`RANK_GRACE`] to print their own
/// error (a lost peer shows up in their next collective), then they are killed, so a crashed
/// rank never leaves the others waiting for `--dist-timeout`.
fn launch_ranks(n: usize) -> anyhow::Result<ExitCode> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let exe = std::env::current_exe()?;
    let mut args: Vec<String> = Vec::new();
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        if arg == "--nproc" {
            given.next();
        } else if !arg.starts_with("--nproc=") {
            args.push(arg);
        }
    }
    let mut children = Vec::with_capacity(n);
    for rank in 0..n {
        let child = std::process::Command::new(&exe)
            .args(&args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .spawn();
        match child {
            Ok(child) => children.push(child),
            Err(err) => {
                // The ranks already started would wait for this one until the timeout.
                stop_all(&mut children);
                return Err(err)
                    .with_context(|| format!("starting rank {rank} ({})", exe.display()));
            }
        }
    }
    match supervise(children, RANK_GRACE).context("waiting for the ranks")? {
        None => Ok(ExitCode::SUCCESS),
        Some(failure) => bail!("data-parallel training failed: {failure}"),
    }
}

/// How long the other ranks may keep running after one failed, so that their own error
/// (naming the failed collective) prints before they are stopped.
const RANK_GRACE: Duration = Duration::from_secs(5);

/// Kills and reaps every child still running.
fn stop_all(children: &mut [std::process::Child]) {
    for child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// How a group of ranks failed, in the order the failures were seen.
#[derive(Debug)]
struct RankFailure {
    /// Ranks that exited unsuccessfully, first failure first.
    failed: Vec<(usize, std::process::ExitStatus)>,
    /// Ranks still running after the grace period, then killed.
    stopped: Vec<usize>,
    /// The grace period they had.
    grace: Duration,
}

impl std::fmt::Display for RankFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut failed = self.failed.iter();
        if let Some((rank, status)) = failed.next() {
            write!(f, "rank {rank} failed first ({status})")?;
        }
        for (rank, status) in failed {
            write!(f, ", then rank {rank} ({status})")?;
        }
        if !self.stopped.is_empty() {
            let ranks: Vec<String> = self.stopped.iter().map(|r| r.to_string()).collect();
            write!(
                f,
                "; stopped rank{} {} (still running {:.0} s later)",
                if ranks.len() == 1 { "" } else { "s" },
                ranks.join(", "),
                self.grace.as_secs_f64()
            )?;
        }
        Ok(())
    }
}

/// Waits for every child (child `i` is rank `i`); once one has failed, the others still
/// running after `grace` are killed. `None` when all succeeded.
fn supervise(
    mut children: Vec<std::process::Child>,
    grace: Duration,
) -> std::io::Result<Option<RankFailure>> {
    let mut running: Vec<bool> = vec![true; children.len()];
    let mut failed = Vec::new();
    let mut first_failure: Option<std::time::Instant> = None;
    let mut stopped = Vec::new();
    while running.iter().any(|&r| r) {
        for (rank, child) in children.iter_mut().enumerate() {
            if !running[rank] {
                continue;
            }
            let status = match child.try_wait() {
                Ok(status) => status,
                Err(err) => {
                    stop_all(&mut children);
                    return Err(err);
                }
            };
            if let Some(status) = status {
                running[rank] = false;
                if !status.success() {
                    failed.push((rank, status));
                    first_failure.get_or_insert_with(std::time::Instant::now);
                }
            }
        }
        if first_failure.is_some_and(|at| at.elapsed() >= grace) {
            for (rank, child) in children.iter_mut().enumerate() {
                if running[rank] {
                    let _ = child.kill();
                    let _ = child.wait();
                    running[rank] = false;
                    stopped.push(rank);
                }
            }
        }
        if running.iter().any(|&r| r) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok((!failed.is_empty()).then_some(RankFailure {
        failed,
        stopped,
        grace,
    }))
}

/// The data part of the line printed at start: with several ranks, the train images are the
/// whole (limited) cache while batches are counted per rank, so both are named.
fn data_summary(images: (usize, usize), batches: u64, world: usize) -> String {
    let (train, val) = images;
    if world <= 1 {
        return format!("{train} train / {val} val images, {batches} batches per epoch");
    }
    // Every rank gets ceil(train / world) samples (the first ones repeat to even the shards).
    let per_rank = train.div_ceil(world);
    let repeated = per_rank * world - train;
    let repeated = match repeated {
        0 => String::new(),
        1 => ", 1 image repeated to even the shards".into(),
        n => format!(", {n} images repeated to even the shards"),
    };
    format!(
        "{train} train images ({per_rank} per rank x {world} ranks{repeated}), {val} val images \
(rank 0), {batches} batches per epoch per rank"
    )
}

/// Images per batch of the closing validation.
const VAL_BATCH: usize = 32;

/// Warmup lasts at least this many batches when warmup_epochs > 0.
const MIN_WARMUP: u64 = 100;

/// `project/name`, or `name2`, `name3`, ... when taken.
fn fresh_dir(project: &Path, name: &str) -> PathBuf {
    let first = project.join(name);
    if !first.exists() {
        return first;
    }
    (2..)
        .map(|i| project.join(format!("{name}{i}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

/// The run to resume: `project/name`, or without a name the most recent run in `project`
/// that has a checkpoint.
fn resume_dir(project: &Path, name: Option<&str>) -> anyhow::Result<PathBuf> {
    if let Some(name) = name {
        let named = project.join(name);
        if !RunFiles::new(&named).checkpoint.is_file() {
            bail!(
                "--resume: {} has no weights/last.ckpt (it never finished an epoch)",
                named.display()
            );
        }
        return Ok(named);
    }
    let latest = std::fs::read_dir(project)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter_map(|dir| {
            let checkpoint = RunFiles::new(&dir).checkpoint;
            let modified = checkpoint.metadata().ok()?.modified().ok()?;
            Some((modified, dir))
        })
        .max();
    match latest {
        Some((_, dir)) => Ok(dir),
        None => bail!(
            "--resume: no run with weights/last.ckpt in {} (nothing to resume)",
            project.display()
        ),
    }
}

fn device_name(device: tch::Device) -> String {
    match device {
        tch::Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::process::{Child, Command};
    use std::time::Instant;

    fn sh(script: &str) -> Child {
        Command::new("sh").args(["-c", script]).spawn().unwrap()
    }

    #[test]
    fn ranks_that_all_succeed_report_nothing() {
        let outcome = supervise(vec![sh("sleep 0.2"), sh("exit 0")], RANK_GRACE).unwrap();
        assert!(outcome.is_none(), "{outcome:?}");
    }

    #[test]
    fn a_failed_rank_stops_the_others_after_the_grace_period() {
        let start = Instant::now();
        // Rank 0 would wait for its dead peer far longer than the grace period.
        let failure = supervise(
            vec![sh("exec sleep 60"), sh("sleep 0.1; exit 3")],
            Duration::from_millis(300),
        )
        .unwrap()
        .expect("a rank failed");
        assert!(start.elapsed() < Duration::from_secs(10), "{failure}");
        assert_eq!(failure.failed.len(), 1, "{failure}");
        assert_eq!(failure.failed[0].0, 1);
        assert_eq!(failure.failed[0].1.code(), Some(3));
        assert_eq!(failure.stopped, [0]);
        let text = failure.to_string();
        assert!(
            text.starts_with("rank 1 failed first (exit status: 3); stopped rank 0"),
            "{text}"
        );
    }

    #[test]
    fn ranks_that_fail_on_their_own_within_the_grace_period_are_reported_in_order() {
        let start = Instant::now();
        let failure = supervise(
            vec![sh("sleep 0.5; exit 2"), sh("exit 3")],
            Duration::from_secs(30),
        )
        .unwrap()
        .expect("ranks failed");
        // Returns as soon as the last rank exits, not after the grace period.
        assert!(start.elapsed() < Duration::from_secs(10), "{failure}");
        assert!(failure.stopped.is_empty(), "{failure}");
        assert_eq!(
            failure.to_string(),
            "rank 1 failed first (exit status: 3), then rank 0 (exit status: 2)"
        );
    }
}
