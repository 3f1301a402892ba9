//! The training loop: batches from a cache, v8 loss, accumulation, the scheduled optimizer,
//! EMA, validation, `results.csv`, weights and resumable checkpoints.

use std::any::Any;
use std::cell::Cell;
use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe, PanicHookInfo};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fusekit_cache::{Augment, Cache, Loader, LoaderOptions};
use fusekit_detect::{
    BatchNormFn, DetectionLoss, Detector, Fusion, LossError, LossGains, ModelConfig, NmsOptions,
    parameter_count, weights, with_batch_norm,
};
use fusekit_dist::{DistError, ProcessGroup};
use fusekit_hyp::{BatchPlan, EMA_DECAY, EMA_TAU, Hyp, NanPolicy, Schedule};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::TrainError;
use crate::ema::Ema;
use crate::feed::batch_tensors;
use crate::optim::{Optimizer, StepSettings};
use crate::results::{EpochRecord, append_results, truncate_results};
use crate::validate::{Validation, validate};

/// Metadata key of a checkpoint's training state (JSON).
const STATE_KEY: &str = "fusekit.train_state";

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

/// The resumable state saved with each checkpoint.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct TrainState {
    /// Epochs completed.
    epochs_done: u32,
    best_fitness: f64,
    best_epoch: u32,
    optimizer_steps: u64,
    ema_updates: u64,
    /// Learning-rate multiplier after NaN rollbacks.
    lr_factor: f64,
    /// Training seconds before this process (results.csv's time continues).
    seconds: f64,
    /// The last finished epoch's results row, rewritten on resume when a kill came between
    /// the checkpoint and the results append.
    #[serde(default)]
    last_row: String,
    /// fp16 loss scale and its run of good steps (AMP on CUDA), so a resumed run neither
    /// restarts the scale at 65536 nor forgets how close it was to doubling.
    #[serde(default)]
    loss_scale: Option<(f64, u32)>,
    hyp: String,
    train_cache: String,
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
    let group = options.group.as_deref();
    let shard = group.map_or((0, 1), |g| (g.rank(), g.world_size()));
    let main = shard.0 == 0;
    // Only rank 0 reports.
    let mut quiet = |_: Event<'_>| {};
    let observer: &mut dyn FnMut(Event<'_>) = if main { observer } else { &mut quiet };
    let hyp = &options.hyp;
    let device = options.device;
    let files = RunFiles::new(&options.run_dir);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TrainError::Io { path, source }
    };
    if main {
        std::fs::create_dir_all(options.run_dir.join("weights")).map_err(io(&options.run_dir))?;
    }

    let train_cache = Arc::new(Cache::open(&options.train_cache, None)?);
    let meta = train_cache.meta().clone();
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
    let mut loader = Loader::new(
        train_cache.clone(),
        train_loader_options(hyp, options.limit, mosaic_epochs > 0, shard),
    );
    if loader.is_empty() {
        return Err(TrainError::Incompatible(format!(
            "{} holds no samples",
            options.train_cache.display()
        )));
    }
    let val_loader = match options.val_cache.as_ref().filter(|_| main) {
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

    let mut state = TrainState {
        epochs_done: 0,
        best_fitness: f64::NEG_INFINITY,
        best_epoch: 0,
        optimizer_steps: 0,
        ema_updates: 0,
        lr_factor: 1.0,
        seconds: 0.0,
        last_row: String::new(),
        loss_scale: None,
        hyp: hyp.to_yaml()?,
        train_cache: options.train_cache.display().to_string(),
    };
    if options.resume {
        state = restore_checkpoint(&files.checkpoint, &vs, &ema_vs, &mut optimizer)?;
        if main {
            truncate_results(&files.results, state.epochs_done, &state.last_row)
                .map_err(io(&files.results))?;
        }
        observer(Event::Note(format!(
            "resuming {} after epoch {}",
            files.checkpoint.display(),
            state.epochs_done
        )));
    } else {
        if let Some(path) = &options.weights {
            observer(Event::Note(initialise(&vs, &config, path)?));
        }
        if main {
            let _ = std::fs::remove_file(&files.results);
        }
    }
    if main {
        std::fs::write(&files.args, hyp.to_yaml()?).map_err(io(&files.args))?;
    }
    let mut ema = if options.resume {
        // The checkpoint's average is in ema_vs already.
        Ema::resume(&vs, &ema_vs, EMA_DECAY, EMA_TAU, state.ema_updates)
    } else {
        Ema::new(&vs, &ema_vs, EMA_DECAY, EMA_TAU)
    };
    // Every rank starts from rank 0's model and average (parameters and BatchNorm buffers).
    if let Some(g) = group {
        g.broadcast_var_store(&vs, 0)?;
        g.broadcast_var_store(&ema_vs, 0)?;
    }

    let loss_fn = DetectionLoss {
        gains: LossGains {
            box_gain: hyp.box_gain,
            cls_gain: hyp.cls,
            dfl_gain: hyp.dfl,
        },
        ..DetectionLoss::default()
    };
    observer(Event::Started {
        plan: &plan,
        config: &config,
        parameters: parameter_count(&vs),
        images: (loader.len(), val_loader.as_ref().map_or(0, |l| l.len())),
        batches,
        warmup: schedule.warmup_batches(),
        start_epoch: state.epochs_done,
    });

    // Mixed precision only on CUDA (fp16 autocast with dynamic loss scaling).
    let amp = hyp.amp && device.is_cuda();
    let mut scaler = LossScaler::new(amp);
    if let Some(saved) = state.loss_scale.filter(|_| amp) {
        scaler.restore(saved);
    }
    if device.is_cuda() {
        // Every training batch has the same shape: let cuDNN pick its fastest kernels once.
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let sync_bn = options.group.clone().filter(|_| options.sync_bn);
    if options.sync_bn && sync_bn.is_none() {
        observer(Event::Note(
            "--sync-bn has no effect in a single process".to_owned(),
        ));
    }
    let started = Instant::now();
    let previous_seconds = state.seconds;
    let mut trained_images = 0usize;
    let mut train_seconds = 0.0;
    let mut last_record = None;
    let mut best_record = None;
    let mut stopped_early = false;
    let start_epoch = state.epochs_done;
    let mut epoch = start_epoch;
    let mut good_state: Option<HashMap<String, Tensor>> = None;
    let mut data_wait = Duration::ZERO;
    // Each loader batch runs as `split` micro-batches; doubled on out-of-memory errors.
    let mut split = 1usize;
    let micro = MicroBatches {
        model: &model,
        loss: &loss_fn,
        amp,
        sync_bn,
    };
    let mut poison = options.faults.non_finite.filter(|p| p.rank == shard.0);
    while epoch < hyp.epochs {
        if epoch == mosaic_epochs && hyp.mosaic > 0.0 && hyp.close_mosaic > 0 {
            observer(Event::Note(format!(
                "mosaic off for the last {} epochs (close_mosaic {})",
                hyp.epochs - epoch,
                hyp.close_mosaic
            )));
        }
        // Mosaic closes once: at its epoch, or at the first epoch of a resumed run past it.
        if epoch == mosaic_epochs.max(start_epoch) {
            loader = Loader::new(
                train_cache.clone(),
                train_loader_options(hyp, options.limit, false, shard),
            );
        }
        if good_state.is_none() && hyp.nan_policy == NanPolicy::Rollback {
            good_state = Some(snapshot(&vs));
        }
        let epoch_start = Instant::now();
        let mut sums = [0.0; 3];
        let mut seen = 0u64;
        let mut epoch_images = 0usize;
        // The batch (within this epoch) of the last optimizer step; every epoch ends with a
        // step, so each starts a new accumulation window.
        let mut last_step: Option<u64> = None;
        let mut failure = None;
        optimizer.zero_grad();
        let mut batches_of_epoch = loader.epoch(u64::from(epoch)).enumerate();
        loop {
            let waiting = Instant::now();
            let Some((i, batch)) = batches_of_epoch.next() else {
                break;
            };
            data_wait += waiting.elapsed();
            let batch = batch?;
            let i = i as u64;
            let global = u64::from(epoch) * batches + i;
            let step = schedule.at(epoch, i);
            let lr = step.lr.map(|lr| lr * state.lr_factor);
            phase.set(Phase::PreparingBatch);
            let tensors = batch_tensors(&batch, device);
            let mut input = tensors.images.to_kind(Kind::Float) / 255.0;
            if poison.is_some_and(|p| (p.epoch, p.batch) == (epoch, i)) {
                input *= f64::NAN;
                poison = None;
            }
            // Loader batches in this step's window, this one included (Ultralytics' rule
            // `ni - last_opt_step >= accumulate`, counted from the epoch's start).
            let window = last_step.map_or(i + 1, |s| i - s);
            // The window's gradients so far, kept so that an out-of-memory error part-way
            // through this batch can start the batch over without losing them.
            let kept = (window > 1).then(|| optimizer.gradients());
            let oom_limit = options
                .faults
                .out_of_memory
                .filter(|f| global >= f.from_batch)
                .map(|f| f.above);
            let parts = loop {
                match micro.backward(&input, &tensors.targets, split, scaler.scale, oom_limit) {
                    Err(MicroBatchFailure::OutOfMemory(message)) => {
                        // Gradients of the interrupted batch's finished micro-batches are
                        // dropped; those of the window's earlier batches are put back.
                        match &kept {
                            Some(kept) => optimizer.set_gradients(kept),
                            None => optimizer.zero_grad(),
                        }
                        let size = batch.len().div_ceil(split);
                        if micro.sync_bn.is_some() {
                            // Ranks splitting on their own would run different numbers of
                            // synchronised BatchNorm collectives.
                            return Err(TrainError::OutOfMemorySyncBn { size, message });
                        }
                        if size <= 1 {
                            return Err(TrainError::OutOfMemory { message });
                        }
                        split *= 2;
                        observer(Event::Note(format!(
                            "out of memory with a micro-batch of {size}: continuing with \
micro-batch {} x accumulate {} ({} images per optimizer step and lr unchanged; the batch \
starts over, the step's earlier batches are kept)",
                            batch.len().div_ceil(split),
                            u64::from(plan.accumulate()) * split as u64,
                            plan.effective()
                        )));
                    }
                    Err(MicroBatchFailure::Dist(error)) => return Err(error.into()),
                    Err(MicroBatchFailure::Targets(error)) => return Err(error.into()),
                    other => break other,
                }
            };
            drop(kept);
            // A rank whose loss is not finite stops every rank at the same batch (with
            // synchronised BatchNorm the ranks agreed on it before the backward pass already).
            let failed = match group {
                Some(g) if micro.sync_bn.is_none() => any_rank(g, parts.is_err())?,
                _ => parts.is_err(),
            };
            let Some(parts) = parts.ok().filter(|_| !failed) else {
                let names = batch
                    .samples
                    .iter()
                    .filter_map(|&s| meta.samples.get(s).cloned())
                    .collect();
                failure = Some((i, names, lr[0]));
                break;
            };
            trained_images += batch.len() * shard.1;
            epoch_images += batch.len() * shard.1;
            if window >= u64::from(step.accumulate.max(1)) || i + 1 == batches {
                phase.set(Phase::Stepping);
                if let Some(g) = group {
                    // One all-reduce per optimizer step, not per micro-batch: the sum of the
                    // ranks' gradients is the global batch's (the loss adds up over images).
                    g.sum_gradients(&vs)?;
                }
                if scaler.unscale(&mut optimizer) {
                    let _ = optimizer.clip_grad_norm(MAX_GRAD_NORM);
                    optimizer.step(&StepSettings {
                        lr,
                        momentum: step.momentum,
                        weight_decay: plan.weight_decay(),
                    });
                    if let Some(g) = group {
                        // As DDP does: BatchNorm statistics follow rank 0's.
                        g.broadcast_buffers(&vs, 0)?;
                    }
                    ema.update();
                }
                optimizer.zero_grad();
                last_step = Some(i);
            }
            for (sum, part) in sums.iter_mut().zip(parts) {
                *sum += part;
            }
            seen += 1;
            observer(Event::Batch {
                epoch,
                batch: i,
                batches,
                loss: sums.map(|s| s / seen as f64),
                images: epoch_images,
                seconds: epoch_start.elapsed().as_secs_f64(),
                lr: lr[0],
            });
        }
        train_seconds += epoch_start.elapsed().as_secs_f64();
        if let Some((batch, samples, lr)) = failure {
            let error = TrainError::NonFinite {
                epoch: epoch + 1,
                batch,
                samples,
                lr,
            };
            match (&hyp.nan_policy, &good_state) {
                (NanPolicy::Rollback, Some(saved)) if state.lr_factor > 1e-3 => {
                    restore_snapshot(&vs, saved);
                    optimizer = Optimizer::new(hyp.optimizer, vs.variables());
                    ema = Ema::new(&vs, &ema_vs, EMA_DECAY, EMA_TAU);
                    state.lr_factor /= 2.0;
                    observer(Event::Note(format!(
                        "{error}; rolled back to the start of the epoch, continuing at {}x lr",
                        state.lr_factor
                    )));
                    continue;
                }
                _ => return Err(error),
            }
        }

        phase.set(Phase::Validating);
        let validation = match &val_loader {
            Some(val) => {
                if options.faults.out_of_memory_validating {
                    panic!("CUDA out of memory (simulated: validation)");
                }
                let nms = NmsOptions::default();
                let eval_model = if hyp.ema { &ema_model } else { &model };
                validate(eval_model, val, device, &loss_fn, &nms)?
            }
            None => Validation {
                metrics: fusekit_eval::evaluate(&[], &[], config.names.len())
                    .map_err(|e| TrainError::Numeric(e.to_string()))?,
                loss: [0.0; 3],
                images: 0,
            },
        };
        let record = EpochRecord {
            epoch: epoch + 1,
            time: previous_seconds + started.elapsed().as_secs_f64(),
            train_loss: sums.map(|s| s / seen.max(1) as f64),
            precision: validation.metrics.precision,
            recall: validation.metrics.recall,
            map50: validation.metrics.map50,
            map50_95: validation.metrics.map50_95,
            val_loss: validation.loss,
            lr: schedule.epoch_end(epoch).lr.map(|lr| lr * state.lr_factor),
        };
        // Rank 0 validated; every rank takes its numbers so that all agree on the best epoch
        // and early stopping.
        let record = match group {
            Some(g) => share_record(g, record)?,
            None => record,
        };
        phase.set(Phase::Saving);
        let saved_vs = if hyp.ema { &ema_vs } else { &vs };
        if main {
            weights::save(saved_vs, &config, &files.last)?;
        }
        let fitness = record.fitness();
        if fitness > state.best_fitness || state.best_epoch == 0 {
            state.best_fitness = fitness;
            state.best_epoch = record.epoch;
            if main {
                weights::save(saved_vs, &config, &files.best)?;
            }
            best_record = Some(record.clone());
        }
        state.epochs_done = epoch + 1;
        state.optimizer_steps = optimizer.steps();
        state.ema_updates = ema.updates();
        state.seconds = previous_seconds + started.elapsed().as_secs_f64();
        state.last_row = record.csv_row();
        state.loss_scale = scaler.state();
        if main {
            // The checkpoint is the truth a resume starts from; the results row follows it.
            save_checkpoint(&files.checkpoint, &vs, &ema_vs, &optimizer, &config, &state)?;
            append_results(&files.results, &record).map_err(io(&files.results))?;
        }
        if hyp.nan_policy == NanPolicy::Rollback {
            good_state = Some(snapshot(&vs));
        }
        observer(Event::Epoch(&record));
        last_record = Some(record);
        epoch += 1;
        if hyp.patience > 0 && epoch - state.best_epoch >= hyp.patience && epoch < hyp.epochs {
            observer(Event::Note(format!(
                "no improvement for {} epochs (best: epoch {}): stopping early",
                hyp.patience, state.best_epoch
            )));
            stopped_early = true;
            break;
        }
    }
    if best_record.is_none() && state.best_epoch > 0 && main {
        best_record = read_record(&files.results, state.best_epoch);
    }
    Ok(TrainSummary {
        epochs: state.epochs_done,
        best_epoch: state.best_epoch,
        last: last_record,
        best: best_record,
        stopped_early,
        seconds: started.elapsed().as_secs_f64(),
        images_per_second: trained_images as f64 / train_seconds.max(1e-9),
        data_wait: data_wait.as_secs_f64() / train_seconds.max(1e-9),
        optimizer_steps: optimizer.steps(),
    })
}

/// Whether `flag` is set on any rank.
fn any_rank(group: &ProcessGroup, flag: bool) -> Result<bool, DistError> {
    let mut flags = [Tensor::from_slice(&[f32::from(u8::from(flag))])];
    group.all_reduce_sum(&mut flags)?;
    Ok(flags[0].double_value(&[0]) > 0.0)
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

/// Why a batch's backward pass did not complete.
enum MicroBatchFailure {
    /// A loss part was NaN or infinite (on any rank, with synchronised BatchNorm).
    NonFinite,
    /// The device ran out of memory (the error's text).
    OutOfMemory(String),
    /// A collective of synchronised BatchNorm failed.
    Dist(DistError),
    /// The batch's targets do not fit the model (a class id out of range).
    Targets(LossError),
}

impl From<LossError> for MicroBatchFailure {
    fn from(error: LossError) -> Self {
        Self::Targets(error)
    }
}

impl From<DeviceFailure> for MicroBatchFailure {
    fn from(failure: DeviceFailure) -> Self {
        match failure {
            DeviceFailure::OutOfMemory(text) => Self::OutOfMemory(text),
            DeviceFailure::Dist(error) => Self::Dist(error),
        }
    }
}

/// Forward, loss and backward of one loader batch in micro-batches.
struct MicroBatches<'a> {
    model: &'a Detector,
    loss: &'a DetectionLoss,
    amp: bool,
    /// The group whose ranks' statistics BatchNorm uses (`--sync-bn`).
    sync_bn: Option<Arc<ProcessGroup>>,
}

impl MicroBatches<'_> {
    /// Backpropagates `input` (`[b, planes, s, s]`) against `targets` in `split` micro-batches
    /// of `ceil(b / split)` images, each loss multiplied by `scale`. Gradients add up as they
    /// do across accumulated batches (each micro-batch's loss is its mean times its size), so
    /// the sum matches one pass over the whole batch. Returns the batch's loss parts
    /// (micro-batches weighted by size). With `oom_limit`, micro-batches of more images fail
    /// as a CUDA out-of-memory error does ([`SimulatedOom`]).
    fn backward(
        &self,
        input: &Tensor,
        targets: &Tensor,
        split: usize,
        scale: f64,
        oom_limit: Option<usize>,
    ) -> Result<[f64; 3], MicroBatchFailure> {
        let total = input.size()[0];
        let size = (total as usize).div_ceil(split) as i64;
        let mut parts = [0.0; 3];
        let mut start = 0;
        while start < total {
            let len = size.min(total - start);
            let (images, targets) = if len == total {
                (input.shallow_clone(), targets.shallow_clone())
            } else {
                micro_batch(input, targets, start, len)
            };
            let forward = || {
                if oom_limit.is_some_and(|limit| len as usize > limit) {
                    panic!("CUDA out of memory (simulated: a micro-batch of {len} images)");
                }
                let outputs = self.model.forward_t(&images, true);
                self.loss.try_compute(&outputs, &targets)
            };
            // The panic of a failed forward pass is caught inside autocast, so that autocast
            // always restores its state and clears its cache of fp16 weight copies.
            let loss = tch::autocast(self.amp, || {
                catch_device_failure(|| match &self.sync_bn {
                    Some(group) => with_batch_norm(synchronised_batch_norm(group), forward),
                    None => forward(),
                })
            })??;
            let finite = loss.parts.iter().all(|p| p.is_finite());
            // With synchronised BatchNorm the backward passes exchange statistics: all ranks
            // run them, or none.
            let finite = match &self.sync_bn {
                Some(group) => !any_rank(group, !finite).map_err(MicroBatchFailure::Dist)?,
                None => finite,
            };
            if !finite {
                return Err(MicroBatchFailure::NonFinite);
            }
            catch_device_failure(|| (&loss.total * scale).f_backward())?
                .map_err(|error| self.backward_failure(error.to_string()))?;
            for (sum, part) in parts.iter_mut().zip(loss.parts) {
                *sum += part * len as f64 / total as f64;
            }
            start += len;
        }
        Ok(parts)
    }

    /// The failure a libtorch error in the backward pass stands for.
    fn backward_failure(&self, text: String) -> MicroBatchFailure {
        if is_out_of_memory(&text) {
            return MicroBatchFailure::OutOfMemory(text);
        }
        match &self.sync_bn {
            Some(group) if text.contains("sync_batch_norm") => {
                MicroBatchFailure::Dist(DistError::Collective {
                    op: "sync_batch_norm (backward)",
                    rank: group.rank(),
                    world_size: group.world_size(),
                    message: text,
                })
            }
            // Anything else is a bug, reported as tch reports libtorch errors.
            _ => panic!("{text}"),
        }
    }
}

/// BatchNorm over every rank's images; a failed collective unwinds the forward pass as a
/// [`DistError`] panic payload, which [`catch_device_failure`] turns back into an error.
fn synchronised_batch_norm(group: &Arc<ProcessGroup>) -> Rc<BatchNormFn> {
    let group = group.clone();
    Rc::new(move |xs, bn, eps, momentum| {
        group
            .sync_batch_norm(xs, bn, eps, momentum)
            .unwrap_or_else(|error| match &error {
                // The device's own failure, handled as every out-of-memory error is.
                DistError::Collective { message, .. } if is_out_of_memory(message) => {
                    panic!("{message}")
                }
                _ => panic::panic_any(error),
            })
    })
}

/// Images `start..start + len` of a batch and their targets, renumbered from 0.
fn micro_batch(input: &Tensor, targets: &Tensor, start: i64, len: i64) -> (Tensor, Tensor) {
    let image = targets.select(1, 0);
    let keep = image
        .ge(start as f64)
        .logical_and(&image.lt((start + len) as f64))
        .nonzero()
        .squeeze_dim(1);
    let rows = targets.index_select(0, &keep);
    if rows.size()[0] > 0 {
        let mut column = rows.narrow(1, 0, 1);
        let _ = column.g_sub_scalar_(start as f64);
    }
    (input.narrow(0, start, len), rows)
}

/// A device failure caught as a panic: tch panics on libtorch errors, and synchronised
/// BatchNorm unwinds with a [`DistError`].
enum DeviceFailure {
    /// The device ran out of memory (the error's text).
    OutOfMemory(String),
    /// A collective failed.
    Dist(DistError),
}

thread_local! {
    /// How many [`catch_device_failure`] calls this thread is inside: their out-of-memory and
    /// [`DistError`] panics become errors, so the panic hook prints nothing for them.
    static CATCHING: Cell<u32> = const { Cell::new(0) };
}

/// Runs `f`, turning a panic that reports an out-of-memory error or carries a [`DistError`]
/// into `Err`; other panics continue.
fn catch_device_failure<T>(f: impl FnOnce() -> T) -> Result<T, DeviceFailure> {
    CATCHING.with(|depth| depth.set(depth.get() + 1));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|depth| depth.set(depth.get() - 1));
    result.map_err(|payload| {
        if let Some(text) = panic_text(&*payload).filter(|text| is_out_of_memory(text)) {
            return DeviceFailure::OutOfMemory(text.to_owned());
        }
        match payload.downcast::<DistError>() {
            Ok(error) => DeviceFailure::Dist(*error),
            Err(payload) => panic::resume_unwind(payload),
        }
    })
}

fn panic_text(payload: &(dyn Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
}

/// libtorch's allocation failures: the caching allocator's and cuBLAS'.
fn is_out_of_memory(text: &str) -> bool {
    text.contains("out of memory") || text.contains("CUBLAS_STATUS_ALLOC_FAILED")
}

type PanicHook = dyn Fn(&PanicHookInfo<'_>) + Sync + Send + 'static;

/// While alive, the out-of-memory and [`DistError`] panics that a [`catch_device_failure`] on
/// the same thread turns into errors print nothing (the trainer reports them itself); every
/// other panic, on any thread, goes to the previous hook, which is restored on drop.
struct QuietDeviceFailures {
    previous: Arc<PanicHook>,
}

impl QuietDeviceFailures {
    fn install() -> Self {
        let previous: Arc<PanicHook> = Arc::from(panic::take_hook());
        let fallback = previous.clone();
        panic::set_hook(Box::new(move |info| {
            let caught = CATCHING.with(Cell::get) > 0
                && (panic_text(info.payload()).is_some_and(is_out_of_memory)
                    || info.payload().is::<DistError>());
            if !caught {
                fallback(info);
            }
        }));
        Self { previous }
    }
}

impl Drop for QuietDeviceFailures {
    fn drop(&mut self) {
        drop(panic::take_hook());
        let previous = self.previous.clone();
        panic::set_hook(Box::new(move |info| previous(info)));
    }
}

/// Dynamic loss scaling for fp16 training (PyTorch's GradScaler rule): losses are multiplied
/// by `scale` before backward; a step whose unscaled gradients are not finite is skipped and
/// halves the scale; 2000 good steps in a row double it. Disabled, the scale stays 1.
struct LossScaler {
    enabled: bool,
    scale: f64,
    good_steps: u32,
}

impl LossScaler {
    fn new(enabled: bool) -> Self {
        Self {
            enabled,
            scale: if enabled { 65536.0 } else { 1.0 },
            good_steps: 0,
        }
    }

    /// The scale and its run of good steps, for the checkpoint (`None` when disabled).
    fn state(&self) -> Option<(f64, u32)> {
        self.enabled.then_some((self.scale, self.good_steps))
    }

    /// Continues from a checkpoint's [`LossScaler::state`].
    fn restore(&mut self, (scale, good_steps): (f64, u32)) {
        self.scale = scale;
        self.good_steps = good_steps;
    }

    /// Unscales the gradients; `false` when the step must be skipped.
    fn unscale(&mut self, optimizer: &mut Optimizer) -> bool {
        if !self.enabled {
            return true;
        }
        optimizer.scale_grads(1.0 / self.scale);
        if optimizer.grads_finite() {
            self.good_steps += 1;
            if self.good_steps == 2000 {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
            true
        } else {
            self.scale /= 2.0;
            self.good_steps = 0;
            false
        }
    }
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

fn save_checkpoint(
    path: &Path,
    vs: &VarStore,
    ema_vs: &VarStore,
    optimizer: &Optimizer,
    config: &ModelConfig,
    state: &TrainState,
) -> Result<(), TrainError> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    tensors.extend(
        vs.variables()
            .into_iter()
            .map(|(n, t)| (format!("model/{n}"), t)),
    );
    tensors.extend(
        ema_vs
            .variables()
            .into_iter()
            .map(|(n, t)| (format!("ema/{n}"), t)),
    );
    let (buffers, _) = optimizer.state();
    tensors.extend(buffers.into_iter().map(|(n, t)| (format!("optim/{n}"), t)));
    let metadata = HashMap::from([
        (
            weights::CONFIG_KEY.to_string(),
            serde_json::to_string(config).map_err(|e| TrainError::Numeric(e.to_string()))?,
        ),
        (
            STATE_KEY.to_string(),
            serde_json::to_string(state).map_err(|e| TrainError::Numeric(e.to_string()))?,
        ),
    ]);
    weights::write_tensors(path, tensors, metadata)?;
    Ok(())
}

fn restore_checkpoint(
    path: &Path,
    vs: &VarStore,
    ema_vs: &VarStore,
    optimizer: &mut Optimizer,
) -> Result<TrainState, TrainError> {
    if !path.is_file() {
        return Err(TrainError::Resume(format!(
            "{}: no checkpoint to resume from (was this run started?)",
            path.display()
        )));
    }
    let (tensors, metadata) = weights::read_tensors(path)?;
    let state: TrainState = metadata
        .get(STATE_KEY)
        .and_then(|json| serde_json::from_str(json).ok())
        .ok_or_else(|| {
            TrainError::Resume(format!("{}: no training state in the file", path.display()))
        })?;
    weights::copy_into(vs, path, &tensors, "model/")?;
    weights::copy_into(ema_vs, path, &tensors, "ema/")?;
    let buffers: HashMap<String, Tensor> = tensors
        .iter()
        .filter_map(|(n, t)| Some((n.strip_prefix("optim/")?.to_string(), t.shallow_clone())))
        .collect();
    optimizer
        .restore(&buffers, state.optimizer_steps)
        .map_err(|m| TrainError::Resume(format!("{}: {m}", path.display())))?;
    Ok(state)
}

/// The record of `epoch` in an existing `results.csv`.
fn read_record(path: &Path, epoch: u32) -> Option<EpochRecord> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .filter_map(EpochRecord::from_csv_row)
        .find(|record| record.epoch == epoch)
}
