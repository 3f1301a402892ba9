//! `fusekit train`: train the dual-stream detector from a prepared cache.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use fusekit_detect::NmsOptions;
use fusekit_hyp::{Hyp, HypOverrides, Imgsz};
use fusekit_stages::Progress;
use fusekit_stages::train::{
    DistBackend, Distributed, Observer, Params, Report, Subset, TrainData, device_name,
    fresh_run_dir, resume_run_dir,
};
use fusekit_train::{Event, RunFiles, parse_devices};

use crate::output::Format;
use crate::progress::{self, Bars};
use crate::val::print_table;

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
/// weights, for `fusekit predict`) and `weights/last.ckpt` (for `--resume`), and unless
/// `--no-plots` Ultralytics' plots: `results.png` (redrawn each epoch), `labels.jpg`,
/// `train_batch0.jpg`..`train_batch2.jpg` (RGB and IR side by side), and from the closing
/// validation of the best weights `BoxPR_curve.png`, `BoxF1_curve.png`, `BoxP_curve.png`,
/// `BoxR_curve.png`, `confusion_matrix.png`, `confusion_matrix_normalized.png`,
/// `val_batch0_labels.jpg` and `val_batch0_pred.jpg`.
#[derive(Args)]
pub struct TrainArgs {
    /// A cache folder with train.fkc and val.fkc (from `fusekit cache build`).
    #[arg(long, conflicts_with = "data", required_unless_present = "data")]
    cache: Option<PathBuf>,
    /// A dataset (data yaml or folder): its caches are built first, or reused when current.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Hyperparameters in a yaml file with Ultralytics' keys (the flags below win).
    #[arg(long = "hyp", value_name = "FILE")]
    hyp_file: Option<PathBuf>,
    #[command(flatten)]
    hyp: HypOverrides,
    /// Write no plots (the same as `--plots false`).
    #[arg(long, conflicts_with = "plots")]
    no_plots: bool,
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
    /// `auto` (CUDA 0 when present), `cpu`, `cuda`, `cuda:N`, or several CUDA devices
    /// (`0,1`, as Ultralytics writes it): one data-parallel rank per listed device, as --nproc
    /// starts them. With --nproc, `cuda` gives rank N device N, and one named device
    /// (`cuda:0`) is shared by every rank (with --dist-backend gloo; NCCL needs one GPU each).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Print the learning rate of each group and the momentum at every batch, then exit.
    #[arg(long)]
    print_schedule: bool,
    /// With --print-schedule, also draw it into FILE (PNG): the learning rate per parameter
    /// group, the momentum and the accumulation per batch.
    #[arg(long, value_name = "FILE", requires = "print_schedule")]
    plot: Option<PathBuf>,
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
    #[arg(long, value_enum, default_value_t = DistBackendArg::Auto)]
    dist_backend: DistBackendArg,
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
enum DistBackendArg {
    /// NCCL when training on CUDA, Gloo otherwise.
    Auto,
    /// Gloo (CUDA gradients pass through host memory).
    Gloo,
    /// NCCL (CUDA only).
    Nccl,
}

impl TrainArgs {
    /// The stage's parameters: the run folder chosen (or found, with --resume) and the
    /// hyperparameters resolved (defaults < hyp.yaml or the run's args.yaml < flags).
    fn params(&self) -> anyhow::Result<Params> {
        let run_dir = if self.resume {
            resume_run_dir(&self.project, self.name.as_deref())?
        } else {
            fresh_run_dir(&self.project, self.name.as_deref().unwrap_or("train"))
        };
        let hyp_file = if self.resume {
            Some(RunFiles::new(&run_dir).args)
        } else {
            self.hyp_file.clone()
        };
        let mut overrides = self.hyp.clone();
        if self.no_plots {
            overrides.plots = Some(false);
        }
        let loaded = Hyp::resolve(hyp_file.as_deref(), &overrides)?;
        for warning in &loaded.warnings {
            eprintln!("warning: {warning}");
        }
        let imgsz = if loaded.given.iter().any(|key| key == "imgsz") {
            Some(Imgsz::new(loaded.hyp.imgsz)?)
        } else {
            None
        };
        let data = match (&self.cache, &self.data) {
            (Some(cache), _) => TrainData::Cache(cache.clone()),
            (None, Some(data)) => TrainData::Dataset(data.clone()),
            (None, None) => bail!("give --cache DIR or --data DATA"),
        };
        let subset = match (self.limit, self.fraction) {
            (Some(n), _) => Subset::First(n),
            (None, Some(f)) => Subset::Fraction(f),
            (None, None) => Subset::All,
        };
        Ok(Params {
            data,
            hyp: loaded.hyp,
            imgsz,
            run_dir,
            resume: self.resume,
            weights: self.weights.clone(),
            device: self.device.clone(),
            subset,
            distributed: Distributed {
                timeout: Duration::from_secs(self.dist_timeout),
                backend: match self.dist_backend {
                    DistBackendArg::Auto => DistBackend::Auto,
                    DistBackendArg::Gloo => DistBackend::Gloo,
                    DistBackendArg::Nccl => DistBackend::Nccl,
                },
                sync_bn: self.sync_bn,
            },
            simulate_oom_above: self.simulate_oom_above,
        })
    }
}

/// Runs `fusekit train`.
pub fn run(args: &TrainArgs) -> anyhow::Result<ExitCode> {
    if args.nproc.is_some() && args.device.contains(',') {
        bail!("give --nproc N or a device list such as --device 0,1, not both");
    }
    if let Some(n) = args.nproc.filter(|&n| n > 1) {
        return launch_ranks(n);
    }
    // Ultralytics' `--device 0,1`: one data-parallel rank per listed GPU (unless this process
    // already is one of those ranks).
    if args.device.contains(',') && std::env::var_os("WORLD_SIZE").is_none() {
        let devices = parse_devices(&args.device)?;
        return launch_ranks(devices.len());
    }
    let params = args.params()?;
    let bars = Bars::default();
    if args.print_schedule {
        let planned = fusekit_stages::train::schedule(&params, &bars)?;
        print!("{}", planned.table());
        if let Some(path) = &args.plot {
            planned.plot(path)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let human = args.format == Format::Human;
    let mut view = TrainView {
        bars,
        report: reporter(std::io::stdout(), human),
    };
    let trained = fusekit_stages::train::run(&params, &mut view)?;
    if !trained.main {
        return Ok(ExitCode::SUCCESS);
    }
    if !human {
        println!("{}", serde_json::to_string(&trained)?);
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(best) = &trained.best {
        println!(
            "best epoch {}: mAP50 {:.3} mAP50-95 {:.3}; {} epochs in {:.1} s ({:.1} images/s in \
{}, {:.1}% of the time waiting for data)",
            trained.best_epoch,
            best.map50,
            best.map50_95,
            trained.epochs,
            trained.seconds,
            trained.images_per_second,
            trained.precision,
            trained.data_wait * 100.0
        );
    }
    if let Some(val) = &trained.val_cache {
        // Ultralytics' closing table: the best weights, per class.
        println!("validating {}", trained.weights.best.display());
        let validated = fusekit_stages::val::run(
            &fusekit_stages::val::Params {
                weights: trained.weights.best.clone(),
                source: fusekit_stages::val::Source::Cache(val.clone()),
                batch: VAL_BATCH,
                nms: NmsOptions::default(),
                device: trained.device.clone(),
                // The run's curves and matrices, now of the best weights, as Ultralytics' final
                // validation draws them.
                plots: (!trained.plots.is_empty()).then(|| trained.run.clone()),
            },
            &fusekit_stages::Silent,
        )?;
        print_table(&validated);
    }
    println!(
        "results: {}\nweights: {} (best), {} (last)",
        trained.results.display(),
        trained.weights.best.display(),
        trained.weights.last.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// What a training run shows: the stage's progress as bars, its reports through `report`.
pub struct TrainView<F> {
    /// Bars and notes.
    pub bars: Bars,
    /// Draws the reports.
    pub report: F,
}

impl<F: Sync> Progress for TrainView<F> {
    fn begin(&self, task: &'static str, total: u64, unit: &'static str) {
        self.bars.begin(task, total, unit);
    }

    fn advance(&self) {
        self.bars.advance();
    }

    fn end(&self) {
        self.bars.end();
    }

    fn note(&self, line: &str) {
        self.bars.note(line);
    }
}

impl<F: FnMut(Report<'_>) + Sync> Observer for TrainView<F> {
    fn report(&mut self, report: Report<'_>) {
        (self.report)(report);
    }
}

/// Prints a training run for people on `out` (the plan, a bar per epoch, a line per epoch),
/// or nothing but notes when `human` is false or this is not rank 0.
pub fn reporter(mut out: impl Write + Sync, human: bool) -> impl FnMut(Report<'_>) + Sync {
    let mut bar: Option<indicatif::ProgressBar> = None;
    let mut shown = human;
    let mut epochs = 0;
    let mut world = 1;
    let mut device = String::new();
    let mut run = String::new();
    move |report| match report {
        Report::Setup {
            run_dir,
            device: on,
            world: ranks,
            main,
            hyp,
        } => {
            shown = human && main;
            epochs = hyp.epochs;
            world = ranks;
            device = device_name(on);
            run = run_dir.display().to_string();
        }
        Report::Trainer(Event::Started {
            plan,
            config,
            parameters,
            images,
            batches,
            warmup,
            start_epoch,
            precision,
            feed,
        }) if shown => {
            let _ = writeln!(out, "{plan}");
            let _ = writeln!(
                out,
                "model: yolov8{} {} fusion, {} classes, {} IR plane{}, {:.2}M parameters, on {device} \
in {precision}, {} feed",
                config.scale,
                config.fusion,
                config.names.len(),
                config.ir_channels,
                if config.ir_channels == 1 { "" } else { "s" },
                parameters as f64 / 1e6,
                feed.as_str(),
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
            let _ = writeln!(out, "run: {run}");
        }
        Report::Trainer(Event::Batch {
            epoch,
            batch,
            batches,
            loss,
            images,
            seconds,
            lr,
        }) if shown => {
            let bar = bar.get_or_insert_with(|| progress::bar("train", batches, "batches"));
            if batch == 0 {
                bar.reset();
                bar.set_length(batches);
            }
            bar.set_prefix(format!("epoch {}/{epochs}", epoch + 1));
            bar.set_message(format!(
                "box {:.3} cls {:.3} dfl {:.3}  lr {lr:.5}  {:.1} img/s",
                loss[0],
                loss[1],
                loss[2],
                images as f64 / seconds.max(1e-9)
            ));
            bar.set_position(batch + 1);
        }
        Report::Trainer(Event::Epoch(record)) if shown => {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            let _ = writeln!(
                out,
                "epoch {:>3}/{epochs}  box {:.3} cls {:.3} dfl {:.3}  P {:.3} R {:.3} mAP50 {:.3} mAP50-95 {:.3}  lr {:.5}  {:.1}s",
                record.epoch,
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
        Report::Trainer(Event::Note(note)) => eprintln!("note: {note}"),
        _ => {}
    }
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
