//! [`StageError`]: why a stage could not run or finish.

use std::path::PathBuf;

/// Why a stage failed. Messages name the file, and the parameter that is wrong.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// A parameter that cannot be used (the message names it).
    #[error("{0}")]
    Invalid(String),
    /// The dataset description (data yaml or folder) cannot be used.
    #[error("DS001: the dataset description cannot be used")]
    Dataset(#[source] fusekit_dataset::ConfigError),
    /// A rule selector or config section that is not valid.
    #[error(transparent)]
    Levels(#[from] fusekit_lint::SettingsError),
    /// Label fixes could not be written.
    #[error("writing label fixes")]
    Fix(#[source] fusekit_lint::FixError),
    /// The split could not be written.
    #[error(transparent)]
    Split(#[from] fusekit_split::SplitError),
    /// A cache could not be built.
    #[error("building {}", path.display())]
    Build {
        /// The cache file.
        path: PathBuf,
        /// Why.
        #[source]
        source: fusekit_cache::BuildError,
    },
    /// A cache could not be opened or read.
    #[error(transparent)]
    Cache(#[from] fusekit_cache::CacheError),
    /// The import failed.
    #[error(transparent)]
    Import(#[from] fusekit_import::ImportError),
    /// A file or folder could not be read or written.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done: `writing`, `creating`, ...
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Hyperparameters that cannot be used.
    #[error(transparent)]
    Hyp(#[from] fusekit_hyp::HypError),
    /// Batch arithmetic that cannot be done.
    #[error(transparent)]
    Batch(#[from] fusekit_hyp::BatchError),
    /// A schedule that cannot be made.
    #[error(transparent)]
    Schedule(#[from] fusekit_hyp::ScheduleError),
    /// Training failed (the message names the run folder).
    #[cfg(feature = "train")]
    #[error("training run {}", run.display())]
    Train {
        /// The run folder.
        run: PathBuf,
        /// Why.
        #[source]
        source: fusekit_train::TrainError,
    },
    /// A data-parallel collective failed: another rank probably failed first.
    #[cfg(feature = "train")]
    #[error(
        "training run {}: lost contact with the other ranks: another rank probably failed, was \
killed or stopped responding for --dist-timeout {timeout_seconds} s (its own output says why); \
`--resume` continues from the last finished epoch",
        run.display()
    )]
    LostPeer {
        /// The run folder.
        run: PathBuf,
        /// The collective timeout.
        timeout_seconds: u64,
        /// Why.
        #[source]
        source: fusekit_train::TrainError,
    },
    /// Validation failed.
    #[cfg(feature = "train")]
    #[error("validating {}", weights.display())]
    Validate {
        /// The weights being validated.
        weights: PathBuf,
        /// Why.
        #[source]
        source: fusekit_train::TrainError,
    },
    /// The device could not be used.
    #[cfg(feature = "train")]
    #[error(transparent)]
    Device(#[from] fusekit_train::DeviceError),
    /// Weights could not be read.
    #[cfg(feature = "train")]
    #[error(transparent)]
    Weights(#[from] fusekit_detect::weights::WeightsError),
    /// The ONNX graph could not be made.
    #[cfg(feature = "train")]
    #[error(transparent)]
    Graph(#[from] fusekit_detect::onnx::GraphError),
    /// The TorchScript file could not be traced or written.
    #[cfg(feature = "train")]
    #[error(transparent)]
    TorchScript(#[from] fusekit_detect::torchscript::TorchScriptError),
    /// Plots could not be written.
    #[cfg(feature = "train")]
    #[error(transparent)]
    Plot(#[from] fusekit_plots::PlotError),
    /// The data-parallel group could not be joined.
    #[cfg(feature = "train")]
    #[error("joining the data-parallel group ({backend})")]
    Group {
        /// The backend asked for.
        backend: fusekit_dist::Backend,
        /// Why.
        #[source]
        source: fusekit_dist::DistError,
    },
}

impl StageError {
    /// An I/O error while doing `action` to `path`.
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| StageError::Io {
            action,
            path,
            source,
        }
    }
}
