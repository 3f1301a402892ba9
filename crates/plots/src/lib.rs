//! Training plots with Ultralytics' file names, drawn with `plotters` on an in-memory RGB
//! buffer and written atomically (temporary file, then rename):
//!
//! - [`results`]: `results.png`, one panel per `results.csv` column (losses, precision,
//!   recall, mAP), raw and smoothed.
//! - [`curves`]: `BoxPR_curve.png`, `BoxF1_curve.png`, `BoxP_curve.png`, `BoxR_curve.png`
//!   from [`fusekit_eval::Curves`].
//! - [`confusion_matrix`]: `confusion_matrix.png` and `confusion_matrix_normalized.png` from a
//!   [`fusekit_eval::ConfusionMatrix`].
//! - [`labels`]: `labels.jpg`, instances per class and box centre / size histograms.
//! - [`schedule`]: the learning rate per parameter group, momentum and accumulation per batch
//!   (`fusekit train --print-schedule --plot`).
//! - [`paired_detections`]: a prediction picture, a pair's RGB and IR images at their own
//!   resolution with labelled boxes (what `fusekit predict` writes).
//! - [`paired_batch`]: `train_batchN.jpg`, `val_batch0_labels.jpg` and `val_batch0_pred.jpg`,
//!   each image of a batch as RGB and IR side by side with its boxes, class names and (for
//!   predictions) scores.
//!
//! Text uses DejaVu Sans embedded in the crate (`fonts/`), never a font of the machine.

mod batch;
mod canvas;
mod confusion;
mod curves;
mod detections;
mod font;
mod labels;
mod results;
mod schedule;
mod style;

use std::path::PathBuf;

pub use batch::{BatchView, MAX_TILES, paired_batch};
pub use confusion::confusion_matrix;
pub use curves::curves;
pub use detections::{Detected, PAIR_GAP, class_rgb, draw_outline, line_width, paired_detections};
pub use labels::labels;
pub use results::results;
pub use schedule::{ScheduleStep, schedule};

/// `results.png`.
pub const RESULTS_PNG: &str = "results.png";
/// The four curve files, in the order [`curves`] writes them.
pub const CURVE_PNGS: [&str; 4] = [
    "BoxPR_curve.png",
    "BoxF1_curve.png",
    "BoxP_curve.png",
    "BoxR_curve.png",
];
/// The two confusion-matrix files, in the order [`confusion_matrix`] writes them.
pub const CONFUSION_PNGS: [&str; 2] = ["confusion_matrix.png", "confusion_matrix_normalized.png"];
/// `labels.jpg`: the training split's labels.
pub const LABELS_JPG: &str = "labels.jpg";
/// The same picture of the validation split's labels (Ultralytics draws the training split's
/// only), to compare the two splits' class balance, positions and sizes at a glance.
pub const LABELS_VAL_JPG: &str = "labels_val.jpg";

/// Training batches a run draws, as Ultralytics: the first three of its first epoch.
pub const TRAIN_BATCH_PLOTS: usize = 3;

/// The first validation batch with its ground truth.
pub const VAL_BATCH_LABELS_JPG: &str = "val_batch0_labels.jpg";
/// The first validation batch with its predictions.
pub const VAL_BATCH_PRED_JPG: &str = "val_batch0_pred.jpg";
/// Predictions drawn on [`VAL_BATCH_PRED_JPG`] score above this, as in Ultralytics' pictures.
pub const PICTURE_CONF: f32 = 0.25;

/// The file name of the `index`-th plotted training batch, `train_batch{index}.jpg`.
pub fn train_batch_name(index: usize) -> String {
    format!("train_batch{index}.jpg")
}

/// One labelled or predicted box, normalised to the image (`0..=1`), centre and size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LabelBox {
    /// Image index (within a batch; ignored by [`labels`]).
    pub image: usize,
    /// Class id.
    pub class: u32,
    /// Centre x.
    pub x: f32,
    /// Centre y.
    pub y: f32,
    /// Width.
    pub w: f32,
    /// Height.
    pub h: f32,
    /// The confidence of a prediction (drawn after the class name); `None` for ground truth.
    pub score: Option<f32>,
}

/// Why a plot was not written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The embedded font did not parse (a broken build).
    #[error("the embedded plot font could not be loaded")]
    Font,
    /// Reading an input or writing a plot failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A line of `results.csv` could not be read.
    #[error("{}, line {line}: {message}", path.display())]
    Csv {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The input cannot be plotted (lengths that disagree, no data, ...).
    #[error("cannot plot {what}: {message}")]
    Input {
        /// The plot.
        what: &'static str,
        /// What is wrong.
        message: String,
    },
    /// plotters failed while drawing.
    #[error("drawing {what}: {message}")]
    Draw {
        /// The plot.
        what: &'static str,
        /// plotters' message.
        message: String,
    },
    /// The picture could not be encoded.
    #[error("encoding {}: {source}", path.display())]
    Encode {
        /// The file.
        path: PathBuf,
        /// The encoder's error.
        source: image::ImageError,
    },
}
