//! The train stage: the dual-stream detector from a cache (or a dataset, cached first).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fusekit_cache::{Cache, MapMode};
use fusekit_dist::{Backend, DistError, ProcessGroup};
use fusekit_hyp::{BatchPlan, Fusion, Hyp, Imgsz, PARAM_GROUPS, Schedule, render_table};
use fusekit_plots::ScheduleStep;
use fusekit_train::{
    EpochRecord, Event, Faults, RunFiles, SimulatedOom, TrainError, TrainOptions, TrainSummary,
    parse_devices, train,
};
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::{Progress, StageError, cache};

/// Warmup lasts at least this many batches when `warmup_epochs > 0` (Ultralytics' rule).
pub const MIN_WARMUP: u64 = 100;

/// What the detector trains on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrainData {
    /// A cache folder with `train.fkc` and (for validation) `val.fkc`.
    Cache(PathBuf),
    /// A dataset: its caches are built first (or reused when current) in the default folder.
    Dataset(PathBuf),
}

/// Which part of the training set is used.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum Subset {
    /// Every sample.
    #[default]
    All,
    /// The first N samples.
    First(usize),
    /// This fraction of the samples (the first ones), in (0, 1].
    Fraction(f64),
}

impl Subset {
    fn limit(self, samples: usize) -> Result<Option<usize>, StageError> {
        match self {
            Subset::All => Ok(None),
            Subset::First(n) => Ok(Some(n)),
            Subset::Fraction(f) if f > 0.0 && f <= 1.0 => {
                Ok(Some(((samples as f64 * f).round() as usize).max(1)))
            }
            Subset::Fraction(f) => Err(StageError::Invalid(format!(
                "fraction {f} is not in (0, 1]"
            ))),
        }
    }
}

/// The backend of data-parallel collectives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DistBackend {
    /// NCCL when training on CUDA, Gloo otherwise.
    #[default]
    Auto,
    /// Gloo.
    Gloo,
    /// NCCL (CUDA only).
    Nccl,
}

/// Data-parallel settings, used when torchrun's environment names a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Distributed {
    /// How long a rank waits for the others in a collective.
    pub timeout: Duration,
    /// The collectives' backend.
    pub backend: DistBackend,
    /// Normalise with the global batch's statistics.
    pub sync_bn: bool,
}

impl Default for Distributed {
    fn default() -> Self {
        Distributed {
            timeout: Duration::from_secs(1800),
            backend: DistBackend::Auto,
            sync_bn: false,
        }
    }
}

/// Everything a training run needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// The cache or dataset.
    pub data: TrainData,
    /// Hyperparameters (resolved: defaults < hyp.yaml < command line). Their `imgsz` is
    /// replaced by [`Params::imgsz`] or the cache's.
    pub hyp: Hyp,
    /// The training size when given; `None`: the cache's (a cache knows its size), or 640
    /// when caching a dataset. A given size that differs from the cache's is an error.
    pub imgsz: Option<Imgsz>,
    /// The run folder.
    pub run_dir: PathBuf,
    /// Continue `run_dir` from its checkpoint.
    pub resume: bool,
    /// Initial weights (fusekit or Ultralytics safetensors).
    pub weights: Option<PathBuf>,
    /// `auto`, `cpu`, `cuda`, `cuda:N`, or a list of CUDA devices (`0,1`), one per rank.
    pub device: String,
    /// Which samples of the training set are used.
    pub subset: Subset,
    /// Data-parallel settings.
    pub distributed: Distributed,
    /// Testing aid: micro-batches of more than N images fail like a CUDA out-of-memory error.
    pub simulate_oom_above: Option<usize>,
}

/// One epoch's metrics in the outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epoch, 1-based.
    pub epoch: u32,
    /// Precision.
    pub precision: f64,
    /// Recall.
    pub recall: f64,
    /// mAP at IoU 0.5.
    #[serde(rename = "mAP50")]
    pub map50: f64,
    /// mAP over IoU 0.5:0.95.
    #[serde(rename = "mAP50-95")]
    pub map50_95: f64,
    /// Box, class and DFL training losses.
    pub train_loss: [f64; 3],
    /// Box, class and DFL validation losses.
    pub val_loss: [f64; 3],
}

impl From<&EpochRecord> for EpochMetrics {
    fn from(r: &EpochRecord) -> Self {
        EpochMetrics {
            epoch: r.epoch,
            precision: r.precision,
            recall: r.recall,
            map50: r.map50,
            map50_95: r.map50_95,
            train_loss: r.train_loss,
            val_loss: r.val_loss,
        }
    }
}

/// The weights files of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Weights {
    /// EMA weights of the best epoch.
    pub best: PathBuf,
    /// EMA weights after the last epoch.
    pub last: PathBuf,
}

/// A finished training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The run folder.
    pub run: PathBuf,
    /// The fusion mode trained.
    pub fusion: Fusion,
    /// The training size.
    pub imgsz: Imgsz,
    /// Images per micro-batch.
    pub batch: u32,
    /// Epochs completed in total.
    pub epochs: u32,
    /// Epoch (1-based) with the best fitness.
    pub best_epoch: u32,
    /// The best epoch.
    pub best: Option<EpochMetrics>,
    /// The last epoch.
    pub last: Option<EpochMetrics>,
    /// Patience ran out.
    pub stopped_early: bool,
    /// Seconds spent in this process.
    pub seconds: f64,
    /// Training images per second.
    pub images_per_second: f64,
    /// Fraction of the time spent waiting for data.
    pub data_wait: f64,
    /// The forward passes' arithmetic: `f32`, `bf16` or `fp16` (`--amp` on this device).
    pub precision: String,
    /// How batches reached the device: `view` (CPU), `pinned` (side-stream copies one batch
    /// ahead) or `pageable` (`PIN_MEMORY=false`, or the pinned feed fell back).
    #[serde(default)]
    pub feed: String,
    /// `results.csv`.
    pub results: PathBuf,
    /// The plots in the run folder (`results.png`, curves, confusion matrices, `labels.jpg`,
    /// `train_batchN.jpg`, `val_batch0_labels.jpg`, `val_batch0_pred.jpg`); none with `plots`
    /// off.
    #[serde(default)]
    pub plots: Vec<PathBuf>,
    /// Seconds this process spent drawing plots.
    #[serde(default)]
    pub plot_seconds: f64,
    /// Weights files.
    pub weights: Weights,
    /// The validation cache, when there was one.
    pub val_cache: Option<PathBuf>,
    /// Where it trained: `cpu` or `cuda:N`.
    pub device: String,
    /// This process is rank 0 (or the only one): it wrote the run.
    pub main: bool,
}

/// What the train stage reports while it runs.
pub enum Report<'a> {
    /// The run is set up: where it writes, on which device, with how many ranks.
    Setup {
        /// The run folder.
        run_dir: &'a Path,
        /// The device.
        device: Device,
        /// Ranks in the data-parallel group (1 without one).
        world: usize,
        /// This process writes the run and reports it.
        main: bool,
        /// The resolved hyperparameters.
        hyp: &'a Hyp,
    },
    /// The trainer's own events.
    Trainer(Event<'a>),
}

/// Receives a training run's progress: notes and tasks as every stage's, plus its
/// [`Report`]s.
pub trait Observer: Progress {
    /// The setup, then every trainer event.
    fn report(&mut self, report: Report<'_>);
}

/// The caches a run reads, and the hyperparameters with their size settled.
struct Prepared {
    train_cache: PathBuf,
    val_cache: Option<PathBuf>,
    hyp: Hyp,
    samples: usize,
}

/// Settles the cache folder (building it from a dataset when asked) and the image size.
fn prepare(params: &Params, progress: &dyn Progress) -> Result<Prepared, StageError> {
    let cache_dir = match &params.data {
        TrainData::Cache(dir) => dir.clone(),
        TrainData::Dataset(data) => {
            let imgsz = params.imgsz.unwrap_or_default();
            let built = cache::run(&cache::Params::new(data, imgsz), progress)?;
            built.out
        }
    };
    let train_cache = cache_dir.join("train.fkc");
    if !train_cache.is_file() {
        return Err(StageError::Invalid(format!(
            "{}: no train.fkc (build it with `fusekit cache build DATA --out {}`)",
            cache_dir.display(),
            cache_dir.display()
        )));
    }
    let val_cache = cache_dir.join("val.fkc");
    let val_cache = if val_cache.is_file() {
        Some(val_cache)
    } else {
        progress.note(&format!(
            "warning: {} has no val.fkc: training without validation (metrics stay 0; fusekit \
never validates on the training set)",
            cache_dir.display()
        ));
        None
    };
    // Only the metadata and the sample count are needed here: map lazily, whatever mode the
    // cache was built for (the trainer opens it again in that mode).
    let cache = Cache::open(&train_cache, Some(MapMode::Disk))?;
    let mut hyp = params.hyp.clone();
    // The cache knows the size it was built at; the trainer checks a given size against it.
    hyp.imgsz = params.imgsz.map_or(cache.meta().imgsz, Imgsz::get);
    Ok(Prepared {
        train_cache,
        val_cache,
        hyp,
        samples: cache.len(),
    })
}

/// A run's batch arithmetic and its per-batch schedule, worked out without training.
#[derive(Debug, Clone)]
pub struct PlannedSchedule {
    /// Batch, accumulation and the scaled learning rate and weight decay.
    pub plan: BatchPlan,
    /// Learning rates, momentum and accumulation at every batch.
    pub schedule: Schedule,
}

impl PlannedSchedule {
    /// The batch arithmetic, then a table row per batch (what `--print-schedule` prints).
    pub fn table(&self) -> String {
        format!("{}\n{}", self.plan, render_table(self.schedule.rows()))
    }

    /// Draws the learning rate of each parameter group, the momentum and the accumulation
    /// per batch into `path` (PNG).
    pub fn plot(&self, path: &Path) -> Result<(), StageError> {
        let steps: Vec<ScheduleStep> = self
            .schedule
            .rows()
            .map(|row| ScheduleStep {
                lr: row.step.lr,
                momentum: row.step.momentum,
                accumulate: row.step.accumulate,
            })
            .collect();
        let groups = PARAM_GROUPS.map(|g| g.label());
        fusekit_plots::schedule(&steps, groups, self.schedule.batches_per_epoch(), path)?;
        Ok(())
    }
}

/// The batch arithmetic and the learning rate of each group, the momentum and the
/// accumulation at every batch of the run `params` describes; nothing is trained.
pub fn schedule(params: &Params, progress: &dyn Progress) -> Result<PlannedSchedule, StageError> {
    let prepared = prepare(params, progress)?;
    let hyp = &prepared.hyp;
    let samples = prepared.samples;
    let images = params
        .subset
        .limit(samples)?
        .map_or(samples, |n| n.min(samples));
    let plan = BatchPlan::from_hyp(hyp, 1)?;
    let batches = images.div_ceil(hyp.batch as usize) as u64;
    let schedule = Schedule::new(hyp, &plan, batches, hyp.epochs)?.with_min_warmup(MIN_WARMUP);
    Ok(PlannedSchedule { plan, schedule })
}

/// Whether a `--device` value names one CUDA device (`cuda:N` or `N`) rather than leaving
/// the choice to the local rank (`cuda`, `auto`).
fn names_one_gpu(device: &str) -> bool {
    let device = device.trim();
    !device.contains(',')
        && device
            .strip_prefix("cuda:")
            .unwrap_or(device)
            .parse::<usize>()
            .is_ok()
}

/// Trains; joins the data-parallel group when torchrun's environment names one. `observer`
/// receives the setup, the trainer's events and the notes.
pub fn run(params: &Params, observer: &mut dyn Observer) -> Result<Outcome, StageError> {
    let devices = parse_devices(&params.device)?;
    let requested = devices[0];
    let backend = match params.distributed.backend {
        DistBackend::Auto => Backend::for_device(requested),
        DistBackend::Gloo => Backend::Gloo,
        DistBackend::Nccl => Backend::Nccl,
    };
    let group = ProcessGroup::from_env_with(params.distributed.timeout, backend)
        .map_err(|source| StageError::Group { backend, source })?
        .map(Arc::new);
    let main = group.as_ref().is_none_or(|g| g.is_main());
    let prepared = prepare(params, &*observer)?;
    let limit = params.subset.limit(prepared.samples)?;
    let device = match (requested, &group) {
        // One GPU per local rank: the listed ones (`--device 0,1`), else CUDA LOCAL_RANK.
        (Device::Cuda(_), Some(g)) if devices.len() > 1 => {
            *devices.get(g.local_rank()).ok_or_else(|| {
                StageError::Invalid(format!(
                    "local rank {} has no device in `--device {}`",
                    g.local_rank(),
                    params.device
                ))
            })?
        }
        // One named GPU (`cuda:0`, `0`): every rank shares it, which Gloo allows and NCCL
        // refuses.
        (Device::Cuda(index), Some(g)) if names_one_gpu(&params.device) => {
            if g.world_size() > 1 && backend == Backend::Nccl {
                return Err(StageError::Invalid(format!(
                    "{} ranks cannot share `--device {}` over NCCL (one GPU per rank); \
share it with --dist-backend gloo, or list one device per rank (0,1)",
                    g.world_size(),
                    params.device
                )));
            }
            Device::Cuda(index)
        }
        (Device::Cuda(_), Some(g)) => Device::Cuda(g.local_rank()),
        (device, _) => device,
    };
    let world = group.as_ref().map_or(1, |g| g.world_size());
    let options = TrainOptions {
        hyp: prepared.hyp.clone(),
        train_cache: prepared.train_cache,
        val_cache: prepared.val_cache.clone(),
        device,
        run_dir: params.run_dir.clone(),
        weights: params.weights.clone(),
        resume: params.resume,
        limit,
        min_warmup: MIN_WARMUP,
        faults: Faults {
            out_of_memory: params.simulate_oom_above.map(|above| SimulatedOom {
                above,
                from_batch: 0,
            }),
            non_finite: None,
            out_of_memory_validating: false,
        },
        group,
        sync_bn: params.distributed.sync_bn,
    };
    observer.report(Report::Setup {
        run_dir: &params.run_dir,
        device,
        world,
        main,
        hyp: &options.hyp,
    });
    let summary = train(&options, &mut |event| {
        observer.report(Report::Trainer(event));
    })
    .map_err(|err| train_error(err, &params.run_dir, params.distributed.timeout))?;
    Ok(outcome(params, &options, &summary, main))
}

/// A lost peer in a collective means another rank failed: say so, and how to continue.
fn train_error(err: TrainError, run: &Path, timeout: Duration) -> StageError {
    if let TrainError::Dist(DistError::Collective { .. }) = &err {
        // Gloo says "Connection closed by peer" or just "Operation timed out!".
        return StageError::LostPeer {
            run: run.to_path_buf(),
            timeout_seconds: timeout.as_secs(),
            source: err,
        };
    }
    StageError::Train {
        run: run.to_path_buf(),
        source: err,
    }
}

/// The plot files present in `run_dir`, in a fixed order.
fn plot_files(run_dir: &Path) -> Vec<PathBuf> {
    let batches = (0..fusekit_plots::TRAIN_BATCH_PLOTS).map(fusekit_plots::train_batch_name);
    let fixed = [
        fusekit_plots::RESULTS_PNG,
        fusekit_plots::LABELS_JPG,
        fusekit_plots::LABELS_VAL_JPG,
    ]
    .into_iter()
    .chain(fusekit_plots::CURVE_PNGS)
    .chain(fusekit_plots::CONFUSION_PNGS)
    .chain([
        fusekit_plots::VAL_BATCH_LABELS_JPG,
        fusekit_plots::VAL_BATCH_PRED_JPG,
    ])
    .map(str::to_owned);
    fixed
        .chain(batches)
        .map(|name| run_dir.join(name))
        .filter(|path| path.is_file())
        .collect()
}

fn outcome(params: &Params, options: &TrainOptions, summary: &TrainSummary, main: bool) -> Outcome {
    let files = RunFiles::new(&params.run_dir);
    Outcome {
        run: params.run_dir.clone(),
        fusion: options.hyp.fusion,
        imgsz: Imgsz::new(options.hyp.imgsz).unwrap_or_default(),
        batch: options.hyp.batch,
        epochs: summary.epochs,
        best_epoch: summary.best_epoch,
        best: summary.best.as_ref().map(EpochMetrics::from),
        last: summary.last.as_ref().map(EpochMetrics::from),
        stopped_early: summary.stopped_early,
        seconds: summary.seconds,
        images_per_second: summary.images_per_second,
        data_wait: summary.data_wait,
        precision: summary.precision.to_string(),
        feed: summary.feed.as_str().to_owned(),
        results: files.results,
        plots: plot_files(&params.run_dir),
        plot_seconds: summary.plot_seconds,
        weights: Weights {
            best: files.best,
            last: files.last,
        },
        val_cache: options.val_cache.clone(),
        device: device_name(options.device),
        main,
    }
}

/// `cpu` or `cuda:N`.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    }
}

/// `project/name`, or `name2`, `name3`, ... when taken.
pub fn fresh_run_dir(project: &Path, name: &str) -> PathBuf {
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
pub fn resume_run_dir(project: &Path, name: Option<&str>) -> Result<PathBuf, StageError> {
    if let Some(name) = name {
        let named = project.join(name);
        if !RunFiles::new(&named).checkpoint.is_file() {
            return Err(StageError::Invalid(format!(
                "--resume: {} has no weights/last.ckpt (it never finished an epoch)",
                named.display()
            )));
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
        None => Err(StageError::Invalid(format!(
            "--resume: no run with weights/last.ckpt in {} (nothing to resume)",
            project.display()
        ))),
    }
}
