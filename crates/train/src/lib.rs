//! The trainer: batches from a fusekit cache through the dual-stream detector.
//!
//! [`train`] runs the loop (accumulation, the scheduled [`Optimizer`] with Ultralytics'
//! parameter groups, gradient clipping, [`Ema`], validation, `results.csv`, weights and
//! resumable checkpoints); [`validate`] measures a model on a cache; [`parse_device`] and
//! [`RuntimeInfo`] choose and describe devices; [`Feed`] moves cache batches to the device (a
//! view on the CPU; pinned copies on a side stream, one batch ahead, on CUDA).

mod checkpoint;
mod device;
mod ema;
mod feed;
mod foreach;
mod guard;
mod optim;
mod plots;
mod precision;
mod results;
mod shim_error;
mod step;
mod trainer;
mod validate;

use std::path::PathBuf;

pub use device::{CudaDevice, DeviceError, RuntimeInfo, parse_device, parse_devices};
pub use ema::Ema;
pub use feed::{Ahead, BatchTensors, Fed, Feed, FeedMode, Staged, batch_tensors};
pub use optim::{Optimizer, StepSettings, param_group};
pub use plots::plot_validation;
pub use precision::{Autocast, Precision, PrecisionError};
pub use results::{EpochRecord, RESULTS_HEADER, append_results, truncate_results};
pub use trainer::{
    Event, Faults, MAX_GRAD_NORM, PoisonedBatch, RunFiles, SimulatedOom, TrainOptions,
    TrainSummary, train,
};
pub use validate::{FirstBatch, Validation, validate};

/// Why training stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A cache could not be opened or read.
    #[error(transparent)]
    Cache(#[from] fusekit_cache::CacheError),
    /// Weights or a checkpoint could not be read or written.
    #[error(transparent)]
    Weights(#[from] fusekit_detect::weights::WeightsError),
    /// Hyperparameters are invalid.
    #[error(transparent)]
    Hyp(#[from] fusekit_hyp::HypError),
    /// The batch arithmetic is invalid.
    #[error(transparent)]
    Batch(#[from] fusekit_hyp::BatchError),
    /// A batch's targets do not fit the model (a class id outside the model's classes).
    #[error(transparent)]
    Targets(#[from] fusekit_detect::LossError),
    /// The schedule is invalid.
    #[error(transparent)]
    Schedule(#[from] fusekit_hyp::ScheduleError),
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The loss became NaN or infinite.
    #[error(
        "the loss is not finite at epoch {epoch}, batch {batch} (lr {lr:.3e}); pairs in the \
batch: {}; likely causes: a learning rate too high for this batch size, a misaligned RGB/IR \
pair, or a degenerate box (run `fusekit lint`)",
        samples.join(", ")
    )]
    NonFinite {
        /// Epoch, 1-based.
        epoch: u32,
        /// Batch within the epoch, 0-based.
        batch: u64,
        /// The batch's samples.
        samples: Vec<String>,
        /// Learning rate of the weight group at that moment.
        lr: f64,
    },
    /// A collective of data-parallel training failed (a rank died, or the timeout passed).
    #[error(transparent)]
    Dist(#[from] fusekit_dist::DistError),
    /// The device ran out of memory even with one image per micro-batch.
    #[error(
        "out of memory with a micro-batch of 1 image ({message}); train at a smaller --imgsz \
or --model-scale, or free the device; if host memory is what is short, build the cache with \
`--mode disk`"
    )]
    OutOfMemory {
        /// libtorch's error text.
        message: String,
    },
    /// The device ran out of memory outside the training step, where halving the micro-batch
    /// cannot help.
    #[error(
        "out of memory while {during} ({message}); lower --batch or --imgsz, train a smaller \
--model-scale, or free the device"
    )]
    DeviceOutOfMemory {
        /// What the trainer was doing.
        during: &'static str,
        /// libtorch's error text.
        message: String,
    },
    /// The device ran out of memory while BatchNorm is synchronised, which rules out
    /// splitting the batch on one rank.
    #[error(
        "out of memory with a micro-batch of {size} images ({message}); with --sync-bn every \
rank must run the same passes, so the batch cannot be split on one rank: lower --batch (and \
raise --accumulate to keep the effective batch), or train without --sync-bn"
    )]
    OutOfMemorySyncBn {
        /// Images in the micro-batch that failed.
        size: usize,
        /// libtorch's error text.
        message: String,
    },
    /// `--amp` asks for an arithmetic the device cannot do.
    #[error(transparent)]
    Precision(#[from] PrecisionError),
    /// Inputs that do not go together (cache vs imgsz, weights vs model, train vs val).
    #[error("{0}")]
    Incompatible(String),
    /// A run cannot be resumed.
    #[error("{0}")]
    Resume(String),
    /// A numeric or serialisation failure.
    #[error("{0}")]
    Numeric(String),
}
