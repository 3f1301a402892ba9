//! The training loop: batches from a cache, v8 loss, accumulation, the scheduled optimizer,
//! EMA, validation, `results.csv`, weights and resumable checkpoints.

use std::cell::Cell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fusekit_cache::Cache;
use fusekit_detect::{
    DetectionLoss, Detector, Fusion, LossGains, ModelConfig, NmsOptions, parameter_count, weights,
};
use fusekit_dist::ProcessGroup;
use fusekit_hyp::{BatchPlan, EMA_DECAY, EMA_TAU, Hyp, NanPolicy, Schedule};
use fusekit_loader::{Augment, Loader, LoaderOptions};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::TrainError;
use crate::checkpoint::{self, TrainState};
use crate::ema::Ema;
use crate::feed::{Fed, Feed, FeedMode};
use crate::guard::{DeviceFailure, QuietDeviceFailures, catch_device_failure};
use crate::optim::{Optimizer, StepSettings};
use crate::plots::Plots;
use crate::precision::Precision;
use crate::results::{self, EpochRecord, append_results, truncate_results};
use crate::step::{LossScaler, MicroBatchFailure, MicroBatches, any_rank};
use crate::validate::{Validation, validate};

/// Gradient-norm clipping threshold applied before every optimizer step.
pub const MAX_GRAD_NORM: f64 = 10.0;

/// Everything a training run needs.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Resolved hyperparameters.
    pub hyp: Hyp,
    /// The training cache (`train.fkc`).
    pub train_cache: PathBuf,
    /// The validation cache; `None` trains without validation (metrics stay 0).
    pub val_cache: Option<PathBuf>,
    /// Where to compute.
    pub device: Device,
    /// The run folder (`weights/`, `results.csv`, `args.yaml`); created if missing.
    pub run_dir: PathBuf,
    /// Initial weights: a fusekit weights file, or an Ultralytics state dict as safetensors.
    pub weights: Option<PathBuf>,
    /// Continue from `run_dir/weights/last.ckpt`.
    pub resume: bool,
    /// Train on the first N samples only.
    pub limit: Option<usize>,
    /// Warmup lasts at least this many batches (when warmup_epochs > 0).
    pub min_warmup: u64,
    /// Failures injected on purpose (tests and hidden testing flags); none by default.
    pub faults: Faults,
    /// Data-parallel training: this process's c10d group (`None`: one process). Every rank
    /// trains on its shard of the cache; only rank 0 validates, writes files and reports.
    pub group: Option<Arc<ProcessGroup>>,
    /// Synchronised BatchNorm: with several ranks, training-mode BatchNorm uses the statistics
    /// of the global batch (every rank's images) instead of each rank's own.
    pub sync_bn: bool,
}

/// Failures injected on purpose, so that tests exercise the trainer's recovery paths (the
/// out-of-memory fallback, NaN rollback, agreement across ranks) without a GPU or bad data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Simulated out-of-memory errors.
    pub out_of_memory: Option<SimulatedOom>,
    /// A batch whose loss is made NaN.
    pub non_finite: Option<PoisonedBatch>,
    /// Validation fails the way a CUDA out-of-memory error does: outside the training step,
    /// where no fallback applies.
    pub out_of_memory_validating: bool,
}

/// Micro-batches of more than `above` images fail the way a CUDA out-of-memory error does,
/// from run-wide loader batch `from_batch` (0-based, `epoch * batches + batch`) on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimulatedOom {
    /// Largest micro-batch that still fits.
    pub above: usize,
    /// First run-wide loader batch that can fail.
    pub from_batch: u64,
}

/// The first pass of `rank` over loader batch `batch` of `epoch` (both 0-based) gets NaN
/// pixels, so its loss is not finite; a rerun of the epoch after a rollback is clean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoisonedBatch {
    /// Epoch, 0-based.
    pub epoch: u32,
    /// Loader batch within the epoch, 0-based.
    pub batch: u64,
    /// The rank that sees it (0 in a single process).
    pub rank: usize,
}

/// Progress reported while training.
#[derive(Debug)]
pub enum Event<'a> {
    /// Training is about to start.
    Started {
        /// The batch arithmetic.
        plan: &'a BatchPlan,
        /// The model.
        config: &'a ModelConfig,
        /// Parameters of the model.
        parameters: i64,
        /// Train and validation images.
        images: (usize, usize),
        /// Batches per epoch.
        batches: u64,
        /// Warmup length in batches.
        warmup: u64,
        /// First epoch to run (0-based; > 0 when resuming).
        start_epoch: u32,
        /// The arithmetic of the forward passes (`--amp` on this device).
        precision: Precision,
        /// How batches reach the device.
        feed: FeedMode,
    },
    /// A training batch finished.
    Batch {
        /// Epoch, 0-based.
        epoch: u32,
        /// Batch within the epoch, 0-based.
        batch: u64,
        /// Batches per epoch.
        batches: u64,
        /// Running mean of box, class and DFL losses this epoch.
        loss: [f64; 3],
        /// Images trained on this epoch so far.
        images: usize,
        /// Seconds since the epoch started.
        seconds: f64,
        /// Learning rate of the weight group for this batch.
        lr: f64,
    },
    /// An epoch finished and was validated.
    Epoch(&'a EpochRecord),
    /// Something the user should know (a rollback, mosaic closed, weights imported).
    Note(String),
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Epochs completed in total (including before a resume).
    pub epochs: u32,
    /// Epoch (1-based) with the best fitness.
    pub best_epoch: u32,
    /// The last epoch's record.
    pub last: Option<EpochRecord>,
    /// The best epoch's record.
    pub best: Option<EpochRecord>,
    /// `true` when patience ran out.
    pub stopped_early: bool,
    /// Seconds spent in this process.
    pub seconds: f64,
    /// Training images per second (forward + backward + step), this process.
    pub images_per_second: f64,
    /// Fraction of the training time spent waiting for the loader's next batch.
    pub data_wait: f64,
    /// Optimizer steps taken by the optimizer the run ended with (including before a resume;
    /// a NaN rollback starts a new optimizer).
    pub optimizer_steps: u64,
    /// The arithmetic of the forward passes (`--amp` on this device).
    pub precision: Precision,
    /// How batches reached the device (pageable after a pinned feed fell back).
    pub feed: FeedMode,
    /// Seconds spent drawing plots (0 with `plots` off).
    pub plot_seconds: f64,
}

/// Where a run's files are.
#[derive(Debug, Clone)]
pub struct RunFiles {
    /// `results.csv`.
    pub results: PathBuf,
    /// `weights/last.safetensors` (EMA weights after the last epoch).
    pub last: PathBuf,
    /// `weights/best.safetensors` (EMA weights of the best epoch).
    pub best: PathBuf,
    /// `weights/last.ckpt` (everything needed to resume).
    pub checkpoint: PathBuf,
    /// `args.yaml`.
    pub args: PathBuf,
}

impl RunFiles {
    /// The files of the run in `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            results: dir.join("results.csv"),
            last: dir.join("weights/last.safetensors"),
            best: dir.join("weights/best.safetensors"),
            checkpoint: dir.join("weights/last.ckpt"),
            args: dir.join("args.yaml"),
        }
    }
}

/// Cache loader options for training with `hyp`'s augmentation.
fn train_loader_options(
    hyp: &Hyp,
    limit: Option<usize>,
    mosaic: bool,
    (rank, world): (usize, usize),
) -> LoaderOptions {
    LoaderOptions {
        batch: hyp.batch as usize,
        shuffle: true,
        seed: hyp.seed,
        rank,
        world,
        equal_shards: true,
        augment: Some(Augment {
            fliplr: hyp.fliplr as f32,
            mosaic: if mosaic { hyp.mosaic as f32 } else { 0.0 },
            scale: hyp.scale as f32,
            translate: hyp.translate as f32,
            hsv_h: hyp.hsv_h as f32,
            hsv_s: hyp.hsv_s as f32,
            hsv_v: hyp.hsv_v as f32,
        }),
        limit,
        ..LoaderOptions::default()
    }
}

/// Which streams an Ultralytics checkpoint initialises for each fusion mode.
fn import_streams(fusion: Fusion) -> &'static [&'static str] {
    match fusion {
        Fusion::Rgb => &["rgb"],
        Fusion::Ir => &["ir"],
        Fusion::Early => &["early"],
        Fusion::Mid | Fusion::Late => &["rgb", "ir"],
    }
}

/// Trains as `options` say, reporting progress to `observer`.
///
/// An out-of-memory error inside a training step halves the micro-batch (see
/// [`TrainError::OutOfMemory`]); one anywhere else (preparing a batch, the optimizer's state,
/// validation, checkpoints) ends the run with [`TrainError::DeviceOutOfMemory`], naming where.
pub fn train(
    options: &TrainOptions,
    observer: &mut dyn FnMut(Event<'_>),
) -> Result<TrainSummary, TrainError> {
    let phase = Cell::new(Phase::Starting);
    let _quiet = QuietDeviceFailures::install();
    match catch_device_failure(|| run(options, observer, &phase)) {
        Ok(outcome) => outcome,
        Err(DeviceFailure::OutOfMemory(message)) => Err(TrainError::DeviceOutOfMemory {
            during: phase.get().describe(),
            message,
        }),
        Err(DeviceFailure::Dist(error)) => Err(error.into()),
    }
}

/// What the trainer is doing, for an out-of-memory error outside the guarded training step.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Starting,
    PreparingBatch,
    Stepping,
    Validating,
    Saving,
}

impl Phase {
    fn describe(self) -> &'static str {
        match self {
            Phase::Starting => "building the model",
            Phase::PreparingBatch => "moving a batch to the device",
            Phase::Stepping => "updating the weights (optimizer state, EMA)",
            Phase::Validating => "validating (at twice --batch per batch)",
            Phase::Saving => "saving weights and the checkpoint",
        }
    }
}

fn run(
    options: &TrainOptions,
    observer: &mut dyn FnMut(Event<'_>),
    phase: &Cell<Phase>,
) -> Result<TrainSummary, TrainError> {
    let main = options.group.as_ref().is_none_or(|g| g.is_main());
    // Only rank 0 reports.
    let mut quiet = |_: Event<'_>| {};
    let observer: &mut dyn FnMut(Event<'_>) = if main { observer } else { &mut quiet };
    Trainer::start(options, phase, observer)?.run(observer)
}

/// How an epoch's training pass ended.
enum EpochEnd {
    /// Every batch trained: the epoch's mean box, class and DFL losses.
    Trained([f64; 3]),
    /// A batch's loss was not finite on some rank ([`TrainError::NonFinite`]).
    NonFinite(TrainError),
}

/// A run in progress, in its phases: [`Trainer::start`] (data, model, resume), then per epoch
/// [`Trainer::begin_epoch`], [`Trainer::train_epoch`] (batches, each through
/// [`Trainer::backward`] and, at the end of a window, [`Trainer::optimizer_step`]),
/// [`Trainer::roll_back`] after a non-finite loss, [`Trainer::validate_epoch`] and
/// [`Trainer::save_epoch`]; [`Trainer::run`] strings them together and stops early.
struct Trainer<'a> {
    options: &'a TrainOptions,
    phase: &'a Cell<Phase>,
    /// (rank, world size).
    shard: (usize, usize),
    main: bool,
    files: RunFiles,
    train_cache: Arc<Cache>,
    loader: Loader,
    val_loader: Option<Loader>,
    /// Moves batches to the device (training and validation).
    feed: Feed,
    /// Whether the feed's fallback, if any, has been reported.
    feed_fallback_noted: bool,
    /// Epochs trained with mosaic (before `close_mosaic`).
    mosaic_epochs: u32,
    config: ModelConfig,
    vs: VarStore,
    model: Detector,
    ema_vs: VarStore,
    ema_model: Detector,
    optimizer: Optimizer,
    ema: Ema,
    loss: DetectionLoss,
    scaler: LossScaler,
    precision: Precision,
    sync_bn: Option<Arc<ProcessGroup>>,
    plan: BatchPlan,
    schedule: Schedule,
    batches: u64,
    state: TrainState,
    /// Each loader batch runs as `split` micro-batches; doubled on out-of-memory errors.
    split: usize,
    poison: Option<PoisonedBatch>,
    /// The weights at the start of the epoch, for a NaN rollback.
    good_state: Option<HashMap<String, Tensor>>,
    started: Instant,
    trained_images: usize,
    train_seconds: f64,
    data_wait: Duration,
    plots: Plots,
}

impl<'a> Trainer<'a> {
    /// Opens the caches, builds the model and its average, and resumes or initialises them.
    fn start(
        options: &'a TrainOptions,
        phase: &'a Cell<Phase>,
        observer: &mut dyn FnMut(Event<'_>),
    ) -> Result<Self, TrainError> {
        let group = options.group.as_deref();
        let shard = group.map_or((0, 1), |g| (g.rank(), g.world_size()));
        let main = shard.0 == 0;
        let hyp = &options.hyp;
        let device = options.device;
        let files = RunFiles::new(&options.run_dir);

        let Caches {
            train: train_cache,
            loader,
            val_loader,
            mosaic_epochs,
        } = open_caches(options, shard)?;
        let meta = train_cache.meta();

        let config = ModelConfig {
            scale: hyp.model_scale,
            fusion: hyp.fusion,
            names: meta.names.clone(),
            ir_channels: i64::from(meta.ir_channels),
        };
        tch::manual_seed(hyp.seed as i64);
        let vs = VarStore::new(device);
        let model = Detector::new(&vs.root(), config.clone());
        let ema_vs = VarStore::new(device);
        let ema_model = Detector::new(&ema_vs.root(), config.clone());

        let plan = BatchPlan::from_hyp(hyp, shard.1 as u32)?;
        let batches = loader.batches_per_epoch() as u64;
        let schedule =
            Schedule::new(hyp, &plan, batches, hyp.epochs)?.with_min_warmup(options.min_warmup);
        let mut optimizer = Optimizer::new(hyp.optimizer, vs.variables());

        let state = resume_or_initialise(
            options,
            &files,
            (&vs, &ema_vs, &mut optimizer),
            &config,
            observer,
        )?;
        if main {
            // Only now, past every check: a run that cannot start leaves no folder behind (nor
            // pushes the next run to NAME2).
            std::fs::create_dir_all(options.run_dir.join("weights"))
                .map_err(io(&options.run_dir))?;
            std::fs::write(&files.args, hyp.to_yaml()?).map_err(io(&files.args))?;
        }
        let ema = if options.resume {
            // The checkpoint's average is in ema_vs already.
            Ema::resume(&vs, &ema_vs, EMA_DECAY, EMA_TAU, state.ema_updates)
        } else {
            Ema::new(&vs, &ema_vs, EMA_DECAY, EMA_TAU)
        };
        // Every rank starts from rank 0's model and average (parameters and BatchNorm
        // buffers).
        if let Some(g) = group {
            g.broadcast_var_store(&vs, 0)?;
            g.broadcast_var_store(&ema_vs, 0)?;
        }

        let loss = DetectionLoss {
            gains: LossGains {
                box_gain: hyp.box_gain,
                cls_gain: hyp.cls,
                dfl_gain: hyp.dfl,
            },
            ..DetectionLoss::default()
        };
        let precision = Precision::for_device(hyp.amp, device)?;
        let feed = Feed::for_device(device);
        observer(Event::Started {
            plan: &plan,
            config: &config,
            parameters: parameter_count(&vs),
            images: (loader.len(), val_loader.as_ref().map_or(0, |l| l.len())),
            batches,
            warmup: schedule.warmup_batches(),
            start_epoch: state.epochs_done,
            precision,
            feed: feed.mode(),
        });

        // Dynamic loss scaling for fp16 autocast only (bf16 has f32's range).
        let mut scaler = LossScaler::new(precision.scales_loss());
        if let Some(saved) = state.loss_scale.filter(|_| scaler.enabled()) {
            scaler.restore(saved);
        }
        if device.is_cuda() {
            // Every training batch has the same shape: let cuDNN pick its fastest kernels
            // once.
            tch::Cuda::cudnn_set_benchmark(true);
        }
        let sync_bn = options.group.clone().filter(|_| options.sync_bn);
        if options.sync_bn && sync_bn.is_none() {
            observer(Event::Note(
                "--sync-bn has no effect in a single process".to_owned(),
            ));
        }
        Ok(Self {
            options,
            phase,
            shard,
            main,
            files,
            train_cache,
            loader,
            val_loader,
            feed,
            feed_fallback_noted: false,
            mosaic_epochs,
            config,
            vs,
            model,
            ema_vs,
            ema_model,
            optimizer,
            ema,
            loss,
            scaler,
            precision,
            sync_bn,
            plan,
            schedule,
            batches,
            state,
            split: 1,
            poison: options.faults.non_finite.filter(|p| p.rank == shard.0),
            good_state: None,
            started: Instant::now(),
            trained_images: 0,
            train_seconds: 0.0,
            data_wait: Duration::ZERO,
            plots: Plots::new(main && hyp.plots, &options.run_dir),
        })
    }

    /// Trains the remaining epochs; stops early when patience runs out.
    fn run(mut self, observer: &mut dyn FnMut(Event<'_>)) -> Result<TrainSummary, TrainError> {
        let hyp = &self.options.hyp;
        let start_epoch = self.state.epochs_done;
        let previous_seconds = self.state.seconds;
        let mut epoch = start_epoch;
        let mut last_record = None;
        let mut best_record = None;
        let mut last_validation = None;
        let mut stopped_early = false;
        while epoch < hyp.epochs {
            self.begin_epoch(epoch, start_epoch, observer);
            let train_loss = match self.train_epoch(epoch, observer)? {
                EpochEnd::Trained(loss) => loss,
                EpochEnd::NonFinite(error) => {
                    self.roll_back(error, observer)?;
                    continue;
                }
            };
            let (record, validation) = self.validate_epoch(epoch, train_loss, previous_seconds)?;
            if self.save_epoch(&record, previous_seconds)? {
                best_record = Some(record.clone());
            }
            observer(Event::Epoch(&record));
            self.plots.results(&self.files.results, observer);
            if record.epoch == 1 {
                let train_samples = self.loader.len();
                self.plots.labels(
                    &self.train_cache,
                    train_samples,
                    fusekit_plots::LABELS_JPG,
                    observer,
                );
                if let Some(val) = &self.val_loader {
                    let cache = val.cache();
                    self.plots
                        .labels(cache, cache.len(), fusekit_plots::LABELS_VAL_JPG, observer);
                }
            }
            last_record = Some(record);
            last_validation = validation.or(last_validation);
            epoch += 1;
            let best = self.state.best_epoch;
            if hyp.patience > 0 && epoch - best >= hyp.patience && epoch < hyp.epochs {
                observer(Event::Note(format!(
                    "no improvement for {} epochs (best: epoch {best}): stopping early",
                    hyp.patience
                )));
                stopped_early = true;
                break;
            }
        }
        if best_record.is_none() && self.state.best_epoch > 0 && self.main {
            best_record = results::read_record(&self.files.results, self.state.best_epoch);
        }
        if let Some(validation) = &last_validation {
            self.plots
                .validation(validation, &self.config.names, observer);
        }
        let train_seconds = self.train_seconds.max(1e-9);
        Ok(TrainSummary {
            epochs: self.state.epochs_done,
            best_epoch: self.state.best_epoch,
            last: last_record,
            best: best_record,
            stopped_early,
            seconds: self.started.elapsed().as_secs_f64(),
            images_per_second: self.trained_images as f64 / train_seconds,
            data_wait: self.data_wait.as_secs_f64() / train_seconds,
            optimizer_steps: self.optimizer.steps(),
            precision: self.precision,
            feed: self.feed.mode(),
            plot_seconds: self.plots.seconds(),
        })
    }

    /// Closes mosaic when its epochs are over and keeps the epoch's first state for a
    /// rollback.
    fn begin_epoch(&mut self, epoch: u32, start_epoch: u32, observer: &mut dyn FnMut(Event<'_>)) {
        let hyp = &self.options.hyp;
        if epoch == self.mosaic_epochs && hyp.mosaic > 0.0 && hyp.close_mosaic > 0 {
            observer(Event::Note(format!(
                "mosaic off for the last {} epochs (close_mosaic {})",
                hyp.epochs - epoch,
                hyp.close_mosaic
            )));
        }
        // Mosaic closes once: at its epoch, or at the first epoch of a resumed run past it.
        if epoch == self.mosaic_epochs.max(start_epoch) {
            self.loader = Loader::new(
                self.train_cache.clone(),
                train_loader_options(hyp, self.options.limit, false, self.shard),
            );
        }
        if self.good_state.is_none() && hyp.nan_policy == NanPolicy::Rollback {
            self.good_state = Some(snapshot(&self.vs));
        }
    }

    /// Every batch of `epoch`: backward passes, and an optimizer step at the end of each
    /// accumulation window (the epoch's last batch ends the last, maybe short, window).
    fn train_epoch(
        &mut self,
        epoch: u32,
        observer: &mut dyn FnMut(Event<'_>),
    ) -> Result<EpochEnd, TrainError> {
        let epoch_start = Instant::now();
        let mut sums = [0.0; 3];
        let mut seen = 0u64;
        let mut epoch_images = 0usize;
        // The batch (within this epoch) of the last optimizer step.
        let mut last_step: Option<u64> = None;
        self.optimizer.zero_grad();
        // Each batch's copy to the device starts while the previous batch computes.
        let mut batches_of_epoch = self
            .feed
            .ahead(self.loader.epoch(u64::from(epoch)))
            .enumerate();
        let end = loop {
            // Pulling a batch stages the next one.
            self.phase.set(Phase::PreparingBatch);
            let waiting = Instant::now();
            let Some((i, staged)) = batches_of_epoch.next() else {
                break EpochEnd::Trained(sums.map(|s| s / seen.max(1) as f64));
            };
            self.data_wait += waiting.elapsed();
            self.note_feed_fallback(observer);
            let fed = staged?.into_fed();
            let batch = fed.batch();
            let i = i as u64;
            let step = self.schedule.at(epoch, i);
            let lr = step.lr.map(|lr| lr * self.state.lr_factor);
            // Loader batches in this step's window, this one included (Ultralytics' rule
            // `ni - last_opt_step >= accumulate`, counted from the epoch's start).
            let window = last_step.map_or(i + 1, |s| i - s);
            if epoch == 0 {
                self.plots
                    .train_batch(i, batch, &self.config.names, observer);
            }
            let Some(parts) = self.backward(&fed, epoch, i, window, observer)? else {
                let meta = self.train_cache.meta();
                let samples = batch
                    .samples
                    .iter()
                    .filter_map(|&s| meta.samples.get(s).cloned())
                    .collect();
                break EpochEnd::NonFinite(TrainError::NonFinite {
                    epoch: epoch + 1,
                    batch: i,
                    samples,
                    lr: lr[0],
                });
            };
            self.trained_images += batch.len() * self.shard.1;
            epoch_images += batch.len() * self.shard.1;
            if window >= u64::from(step.accumulate.max(1)) || i + 1 == self.batches {
                self.optimizer_step(lr, step.momentum)?;
                last_step = Some(i);
            }
            for (sum, part) in sums.iter_mut().zip(parts) {
                *sum += part;
            }
            seen += 1;
            observer(Event::Batch {
                epoch,
                batch: i,
                batches: self.batches,
                loss: sums.map(|s| s / seen as f64),
                images: epoch_images,
                seconds: epoch_start.elapsed().as_secs_f64(),
                lr: lr[0],
            });
        };
        self.train_seconds += epoch_start.elapsed().as_secs_f64();
        Ok(end)
    }

    /// Tells the user, once, that the pinned feed fell back to pageable copies.
    fn note_feed_fallback(&mut self, observer: &mut dyn FnMut(Event<'_>)) {
        if self.feed_fallback_noted {
            return;
        }
        if let Some(why) = self.feed.fallback() {
            self.feed_fallback_noted = true;
            observer(Event::Note(format!(
                "batches go to the device as pageable copies without overlap: {why}"
            )));
        }
    }

    /// Backpropagates loader batch `i` of `epoch` (the `window`-th of its accumulation
    /// window), halving the micro-batch on out-of-memory errors; `None` when its loss is not
    /// finite on some rank.
    fn backward(
        &mut self,
        fed: &Fed,
        epoch: u32,
        i: u64,
        window: u64,
        observer: &mut dyn FnMut(Event<'_>),
    ) -> Result<Option<[f64; 3]>, TrainError> {
        let batch = fed.batch();
        let tensors = fed.tensors();
        let mut input = tensors.images.to_kind(Kind::Float) / 255.0;
        if self
            .poison
            .is_some_and(|p| (p.epoch, p.batch) == (epoch, i))
        {
            input *= f64::NAN;
            self.poison = None;
        }
        // The window's gradients so far, kept so that an out-of-memory error part-way through
        // this batch can start the batch over without losing them. Only where the fallback
        // can run: it is for a device allocator's "out of memory" (libtorch's CPU allocator
        // says "can't allocate memory", which stays an error), so on the CPU, bar a simulated
        // error, the copy would be work for nothing on every batch.
        let fallback =
            self.options.device != Device::Cpu || self.options.faults.out_of_memory.is_some();
        let kept = (window > 1 && fallback).then(|| self.optimizer.gradients());
        let global = u64::from(epoch) * self.batches + i;
        let oom_limit = self
            .options
            .faults
            .out_of_memory
            .filter(|f| global >= f.from_batch)
            .map(|f| f.above);
        let micro = MicroBatches {
            model: &self.model,
            loss: &self.loss,
            precision: self.precision,
            device: self.options.device,
            sync_bn: self.sync_bn.clone(),
        };
        let parts = loop {
            let scale = self.scaler.scale;
            match micro.backward(&input, &tensors.targets, self.split, scale, oom_limit) {
                Err(MicroBatchFailure::OutOfMemory(message)) => {
                    // Gradients of the interrupted batch's finished micro-batches are dropped;
                    // those of the window's earlier batches are put back.
                    match &kept {
                        Some(kept) => self.optimizer.set_gradients(kept),
                        None => self.optimizer.zero_grad(),
                    }
                    let size = batch.len().div_ceil(self.split);
                    if micro.sync_bn.is_some() {
                        // Ranks splitting on their own would run different numbers of
                        // synchronised BatchNorm collectives.
                        return Err(TrainError::OutOfMemorySyncBn { size, message });
                    }
                    if size <= 1 {
                        return Err(TrainError::OutOfMemory { message });
                    }
                    self.split *= 2;
                    observer(Event::Note(format!(
                        "out of memory with a micro-batch of {size}: continuing with \
micro-batch {} x accumulate {} ({} images per optimizer step and lr unchanged; the batch \
starts over, the step's earlier batches are kept)",
                        batch.len().div_ceil(self.split),
                        u64::from(self.plan.accumulate()) * self.split as u64,
                        self.plan.effective()
                    )));
                }
                Err(MicroBatchFailure::Dist(error)) => return Err(error.into()),
                Err(MicroBatchFailure::Targets(error)) => return Err(error.into()),
                other => break other,
            }
        };
        // A rank whose loss is not finite stops every rank at the same batch (with
        // synchronised BatchNorm the ranks agreed on it before the backward pass already).
        let failed = match self.options.group.as_deref() {
            Some(g) if self.sync_bn.is_none() => any_rank(g, parts.is_err())?,
            _ => parts.is_err(),
        };
        Ok(parts.ok().filter(|_| !failed))
    }

    /// Sums the gradients over ranks, unscales, clips and steps (unless fp16 overflowed),
    /// then follows rank 0's BatchNorm statistics and updates the average.
    fn optimizer_step(&mut self, lr: [f64; 3], momentum: f64) -> Result<(), TrainError> {
        self.phase.set(Phase::Stepping);
        let group = self.options.group.as_deref();
        if let Some(g) = group {
            // One all-reduce per optimizer step, not per micro-batch: the sum of the ranks'
            // gradients is the global batch's (the loss adds up over images).
            g.sum_gradients(&self.vs)?;
        }
        if self.scaler.unscale(&mut self.optimizer) {
            let _ = self.optimizer.clip_grad_norm(MAX_GRAD_NORM);
            self.optimizer.step(&StepSettings {
                lr,
                momentum,
                weight_decay: self.plan.weight_decay(),
            });
            if let Some(g) = group {
                // As DDP does: BatchNorm statistics follow rank 0's.
                g.broadcast_buffers(&self.vs, 0)?;
            }
            self.ema.update();
        }
        self.optimizer.zero_grad();
        Ok(())
    }

    /// After a non-finite loss: with `--nan-policy rollback` (and lr left to halve), back to
    /// the epoch's first weights with a new optimizer and average at half the lr; else the
    /// error.
    fn roll_back(
        &mut self,
        error: TrainError,
        observer: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), TrainError> {
        let hyp = &self.options.hyp;
        match (&hyp.nan_policy, &self.good_state) {
            (NanPolicy::Rollback, Some(saved)) if self.state.lr_factor > 1e-3 => {
                restore_snapshot(&self.vs, saved);
                self.optimizer = Optimizer::new(hyp.optimizer, self.vs.variables());
                self.ema = Ema::new(&self.vs, &self.ema_vs, EMA_DECAY, EMA_TAU);
                self.state.lr_factor /= 2.0;
                observer(Event::Note(format!(
                    "{error}; rolled back to the start of the epoch, continuing at {}x lr",
                    self.state.lr_factor
                )));
                Ok(())
            }
            _ => Err(error),
        }
    }

    /// The epoch's record: rank 0's validation (of the EMA model when `ema` is on), shared
    /// with every rank so that all agree on the best epoch and early stopping; and the
    /// validation itself where it ran (rank 0 with a validation cache).
    fn validate_epoch(
        &self,
        epoch: u32,
        train_loss: [f64; 3],
        previous_seconds: f64,
    ) -> Result<(EpochRecord, Option<Validation>), TrainError> {
        self.phase.set(Phase::Validating);
        let validation = match &self.val_loader {
            Some(val) => {
                if self.options.faults.out_of_memory_validating {
                    panic!("CUDA out of memory (simulated: validation)");
                }
                let nms = NmsOptions::default();
                let eval_model = if self.options.hyp.ema {
                    &self.ema_model
                } else {
                    &self.model
                };
                Some(validate(eval_model, val, &self.feed, &self.loss, &nms)?)
            }
            // Without validation every number is 0.
            None => None,
        };
        let [precision, recall, map50, map50_95] = validation.as_ref().map_or([0.0; 4], |v| {
            let m = &v.metrics;
            [m.precision, m.recall, m.map50, m.map50_95]
        });
        let record = EpochRecord {
            epoch: epoch + 1,
            time: previous_seconds + self.started.elapsed().as_secs_f64(),
            train_loss,
            precision,
            recall,
            map50,
            map50_95,
            val_loss: validation.as_ref().map_or([0.0; 3], |v| v.loss),
            lr: self
                .schedule
                .epoch_end(epoch)
                .lr
                .map(|lr| lr * self.state.lr_factor),
        };
        let record = match self.options.group.as_deref() {
            Some(g) => share_record(g, record)?,
            None => record,
        };
        Ok((record, validation))
    }

    /// Writes `last` (and `best` when this epoch is the best so far: returns whether it is),
    /// then the checkpoint and after it the results row; keeps the weights for a rollback.
    fn save_epoch(
        &mut self,
        record: &EpochRecord,
        previous_seconds: f64,
    ) -> Result<bool, TrainError> {
        self.phase.set(Phase::Saving);
        let hyp = &self.options.hyp;
        let files = &self.files;
        let saved_vs = if hyp.ema { &self.ema_vs } else { &self.vs };
        if self.main {
            weights::save(saved_vs, &self.config, &files.last)?;
        }
        let state = &mut self.state;
        let fitness = record.fitness();
        let best = fitness > state.best_fitness || state.best_epoch == 0;
        if best {
            state.best_fitness = fitness;
            state.best_epoch = record.epoch;
            if self.main {
                weights::save(saved_vs, &self.config, &files.best)?;
            }
        }
        state.epochs_done = record.epoch;
        state.optimizer_steps = self.optimizer.steps();
        state.ema_updates = self.ema.updates();
        state.seconds = previous_seconds + self.started.elapsed().as_secs_f64();
        state.last_row = record.csv_row();
        state.loss_scale = self.scaler.state();
        if self.main {
            // The checkpoint is the truth a resume starts from; the results row follows it.
            checkpoint::save(
                &files.checkpoint,
                &self.vs,
                &self.ema_vs,
                &self.optimizer,
                &self.config,
                state,
            )?;
            append_results(&files.results, record).map_err(io(&files.results))?;
        }
        if hyp.nan_policy == NanPolicy::Rollback {
            self.good_state = Some(snapshot(&self.vs));
        }
        Ok(best)
    }
}

/// A run's caches: the training cache, its loader (mosaic on while `mosaic_epochs` last) and
/// rank 0's validation loader.
struct Caches {
    train: Arc<Cache>,
    loader: Loader,
    val_loader: Option<Loader>,
    mosaic_epochs: u32,
}

/// Opens the caches, checking that they fit `options` and each other.
fn open_caches(options: &TrainOptions, shard: (usize, usize)) -> Result<Caches, TrainError> {
    let hyp = &options.hyp;
    let train = Arc::new(Cache::open(&options.train_cache, None)?);
    let meta = train.meta();
    if meta.imgsz != hyp.imgsz {
        return Err(TrainError::Incompatible(format!(
            "{} was built at imgsz {}, but imgsz is {}: train at {} (what `fusekit train \
--cache` does when imgsz is not given) or rebuild the cache at {}",
            options.train_cache.display(),
            meta.imgsz,
            hyp.imgsz,
            meta.imgsz,
            hyp.imgsz
        )));
    }
    let mosaic_epochs = hyp.epochs.saturating_sub(hyp.close_mosaic);
    let loader = Loader::new(
        train.clone(),
        train_loader_options(hyp, options.limit, mosaic_epochs > 0, shard),
    );
    if loader.is_empty() {
        return Err(TrainError::Incompatible(format!(
            "{} holds no samples",
            options.train_cache.display()
        )));
    }
    let val_loader = match options.val_cache.as_ref().filter(|_| shard.0 == 0) {
        Some(path) => {
            let cache = Arc::new(Cache::open(path, None)?);
            let val_meta = cache.meta();
            if val_meta.names != meta.names || val_meta.ir_channels != meta.ir_channels {
                return Err(TrainError::Incompatible(format!(
                    "{} and {} differ in class names or IR planes",
                    options.train_cache.display(),
                    path.display()
                )));
            }
            Some(Loader::new(
                cache,
                LoaderOptions {
                    batch: (hyp.batch as usize * 2).max(1),
                    shuffle: false,
                    ..LoaderOptions::default()
                },
            ))
        }
        None => None,
    };
    Ok(Caches {
        train,
        loader,
        val_loader,
        mosaic_epochs,
    })
}

/// With `--resume`: the model, average and optimizer of the checkpoint, and its state (and
/// results.csv cut back to it). Otherwise: `--weights` when given, a new results.csv and a
/// fresh state.
fn resume_or_initialise(
    options: &TrainOptions,
    files: &RunFiles,
    (vs, ema_vs, optimizer): (&VarStore, &VarStore, &mut Optimizer),
    config: &ModelConfig,
    observer: &mut dyn FnMut(Event<'_>),
) -> Result<TrainState, TrainError> {
    let main = options.group.as_ref().is_none_or(|g| g.is_main());
    if options.resume {
        let state = checkpoint::restore(&files.checkpoint, vs, ema_vs, optimizer)?;
        if main {
            truncate_results(&files.results, state.epochs_done, &state.last_row)
                .map_err(io(&files.results))?;
        }
        observer(Event::Note(format!(
            "resuming {} after epoch {}",
            files.checkpoint.display(),
            state.epochs_done
        )));
        return Ok(state);
    }
    if let Some(path) = &options.weights {
        observer(Event::Note(initialise(vs, config, path)?));
    }
    if main {
        let _ = std::fs::remove_file(&files.results);
    }
    Ok(TrainState {
        epochs_done: 0,
        best_fitness: f64::NEG_INFINITY,
        best_epoch: 0,
        optimizer_steps: 0,
        ema_updates: 0,
        lr_factor: 1.0,
        seconds: 0.0,
        last_row: String::new(),
        loss_scale: None,
        hyp: options.hyp.to_yaml()?,
        train_cache: options.train_cache.display().to_string(),
    })
}

/// The error for a file that could not be written.
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + use<> {
    let path = path.to_path_buf();
    move |source| TrainError::Io { path, source }
}

/// The same epoch record on every rank: rank 0's validation and time, and the training losses
/// averaged over the ranks (each rank trained on its own shard; every rank ran the same number
/// of batches).
fn share_record(group: &ProcessGroup, record: EpochRecord) -> Result<EpochRecord, TrainError> {
    let r = &record;
    let values = [
        r.time,
        r.precision,
        r.recall,
        r.map50,
        r.map50_95,
        r.val_loss[0],
        r.val_loss[1],
        r.val_loss[2],
    ];
    let mut shared = [Tensor::from_slice(&values)];
    group.broadcast(&mut shared, 0)?;
    let mut train_loss = [Tensor::from_slice(&r.train_loss)];
    group.all_reduce_mean(&mut train_loss)?;
    let numeric = |e: tch::TchError| TrainError::Numeric(e.to_string());
    let v = Vec::<f64>::try_from(&shared[0]).map_err(numeric)?;
    let loss = Vec::<f64>::try_from(&train_loss[0]).map_err(numeric)?;
    Ok(EpochRecord {
        train_loss: [loss[0], loss[1], loss[2]],
        time: v[0],
        precision: v[1],
        recall: v[2],
        map50: v[3],
        map50_95: v[4],
        val_loss: [v[5], v[6], v[7]],
        ..record
    })
}

/// Initialises `vs` from `path`: a fusekit weights file of the same model layout, or an
/// Ultralytics state dict. Returns a note for the user.
fn initialise(vs: &VarStore, config: &ModelConfig, path: &Path) -> Result<String, TrainError> {
    let (tensors, metadata) = weights::read_tensors(path)?;
    if metadata.contains_key(weights::CONFIG_KEY) {
        let saved = weights::config_of(path, &metadata)?;
        if saved.fusion != config.fusion || saved.scale != config.scale {
            return Err(TrainError::Incompatible(format!(
                "{} holds a {}/{} model, this run trains {}/{}",
                path.display(),
                saved.scale,
                saved.fusion,
                config.scale,
                config.fusion
            )));
        }
        weights::copy_into(vs, path, &tensors, "")?;
        return Ok(format!("initialised from {}", path.display()));
    }
    let report = weights::import_ultralytics(vs, path, import_streams(config.fusion))?;
    let mut note = format!(
        "imported {} tensors from {} into {}",
        report.copied,
        path.display(),
        import_streams(config.fusion).join(" + ")
    );
    for (name, from, to) in &report.adapted_inputs {
        note.push_str(&format!("; {name}: {from} input planes adapted to {to}"));
    }
    if !report.reinitialised.is_empty() {
        note.push_str(&format!(
            "; the class count differs, so the {} class-head tensors keep their initial values",
            report.reinitialised.len()
        ));
    }
    Ok(note)
}

fn snapshot(vs: &VarStore) -> HashMap<String, Tensor> {
    vs.variables()
        .into_iter()
        .map(|(name, t)| (name, t.detach().copy()))
        .collect()
}

fn restore_snapshot(vs: &VarStore, saved: &HashMap<String, Tensor>) {
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            if let Some(value) = saved.get(&name) {
                var.copy_(value);
            }
        }
    });
}
