//! Detection evaluation without libtorch.
//!
//! - [`iou`] of two `[x1, y1, x2, y2]` boxes and class-aware greedy [`nms`].
//! - [`evaluate`]: precision, recall and mAP of [`Prediction`]s against [`Truth`]s, as
//!   Ultralytics 8.4 reports them for detection validation ([`Metrics`]), plus the COCO
//!   numbers that pycocotools would give for the same boxes ([`CocoMetrics`]), and the
//!   precision / recall / F1 / PR [`Curves`] behind them, for plots.
//! - [`ConfusionMatrix`]: predicted against true class with a background row and column, as
//!   Ultralytics' validation draws it.
//!
//! The two families differ on purpose: Ultralytics matches each prediction to its best
//! unclaimed ground truth per image without a detection cap and integrates a 101-point
//! interpolated curve with the trapezoid rule; COCO keeps at most 100 predictions per image
//! and class and averages the precision envelope at 101 recall thresholds. Both average
//! over the classes that have ground truth. `tests/fixtures/reference.py` computes the same
//! numbers with the real Ultralytics and pycocotools code.
//!
//! ```
//! use fusekit_eval::{Prediction, Truth, evaluate, nms};
//!
//! let boxes = [[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [20.0, 20.0, 30.0, 30.0]];
//! let keep = nms(&boxes, &[0.9, 0.8, 0.7], &[0, 0, 1], 0.7, 300);
//! assert_eq!(keep, vec![0, 2]);
//!
//! let predictions: Vec<Prediction> = keep
//!     .iter()
//!     .map(|&i| Prediction { image: 0, class: [0, 0, 1][i], score: [0.9, 0.8, 0.7][i], bbox: boxes[i] })
//!     .collect();
//! let truths = [Truth { image: 0, class: 0, bbox: [0.0, 0.0, 10.0, 10.0] }];
//! let metrics = evaluate(&predictions, &truths, 2)?;
//! assert!((metrics.map50_95 - 0.995).abs() < 1e-9); // the trapezoid loses half a step
//! assert!((metrics.coco.map50_95 - 1.0).abs() < 1e-9);
//! assert_eq!(metrics.classes.len(), 1); // class 1 has no ground truth
//! # Ok::<(), fusekit_eval::EvalError>(())
//! ```

mod boxes;
mod coco;
mod confusion;
mod metrics;
mod nms;
mod numeric;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use boxes::iou;
pub use confusion::{CONFUSION_CONF, CONFUSION_IOU, ConfusionMatrix};
pub use metrics::{ClassCurve, ClassMetrics, CocoMetrics, Curves, Metrics};
pub use nms::nms;

/// One detection: image index, class, confidence and `[x1, y1, x2, y2]` box.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Index of the image the detection belongs to.
    pub image: usize,
    /// Predicted class id.
    pub class: u32,
    /// Confidence; must be finite.
    pub score: f32,
    /// Box `[x1, y1, x2, y2]`, in the same coordinates as the ground truth.
    pub bbox: [f32; 4],
}

/// One ground-truth object: image index, class and `[x1, y1, x2, y2]` box.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Truth {
    /// Index of the image the object belongs to.
    pub image: usize,
    /// Class id.
    pub class: u32,
    /// Box `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
}

/// Input that [`evaluate`] rejects.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalError {
    /// A class id is not below `num_classes`.
    ClassOutOfRange {
        /// `"prediction"` or `"truth"`.
        kind: &'static str,
        /// Position in its slice.
        index: usize,
        /// The offending class id.
        class: u32,
        /// The number of classes given.
        num_classes: usize,
    },
    /// A prediction score is NaN or infinite.
    NonFiniteScore {
        /// Position in the predictions.
        index: usize,
    },
    /// A box has a NaN or infinite coordinate.
    NonFiniteBox {
        /// `"prediction"` or `"truth"`.
        kind: &'static str,
        /// Position in its slice.
        index: usize,
    },
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvalError::ClassOutOfRange {
                kind,
                index,
                class,
                num_classes,
            } => write!(
                f,
                "{kind} {index} has class {class}, but there are only {num_classes} classes"
            ),
            EvalError::NonFiniteScore { index } => {
                write!(f, "prediction {index} has a score that is not finite")
            }
            EvalError::NonFiniteBox { kind, index } => {
                write!(f, "{kind} {index} has a box coordinate that is not finite")
            }
        }
    }
}

impl std::error::Error for EvalError {}

/// Evaluates `predictions` against `truths` for classes `0..num_classes`.
///
/// Predictions are used as given (run [`nms`] and any confidence filter first); COCO numbers
/// additionally keep only the 100 best per image and class. Equal scores are ranked by image
/// index, then by position in `predictions`. Classes without ground truth do not enter any
/// average, and their predictions are ignored; with no ground truth at all every number is 0.
///
/// # Errors
///
/// [`EvalError`] for a class id `>= num_classes`, a non-finite score or a non-finite box
/// coordinate; nothing is evaluated then.
pub fn evaluate(
    predictions: &[Prediction],
    truths: &[Truth],
    num_classes: usize,
) -> Result<Metrics, EvalError> {
    validate(predictions, truths, num_classes)?;
    let groups = group(predictions, truths);
    let coco = coco::evaluate(&groups, predictions, truths);
    Ok(metrics::evaluate(&groups, predictions, truths, coco))
}

fn validate(
    predictions: &[Prediction],
    truths: &[Truth],
    num_classes: usize,
) -> Result<(), EvalError> {
    let check_class = |kind, index, class: u32| {
        if usize::try_from(class).is_ok_and(|c| c < num_classes) {
            Ok(())
        } else {
            Err(EvalError::ClassOutOfRange {
                kind,
                index,
                class,
                num_classes,
            })
        }
    };
    let check_box = |kind, index, bbox: &[f32; 4]| {
        if bbox.iter().all(|v| v.is_finite()) {
            Ok(())
        } else {
            Err(EvalError::NonFiniteBox { kind, index })
        }
    };
    for (index, p) in predictions.iter().enumerate() {
        check_class("prediction", index, p.class)?;
        if !p.score.is_finite() {
            return Err(EvalError::NonFiniteScore { index });
        }
        check_box("prediction", index, &p.bbox)?;
    }
    for (index, t) in truths.iter().enumerate() {
        check_class("truth", index, t.class)?;
        check_box("truth", index, &t.bbox)?;
    }
    Ok(())
}

/// The predictions and ground truths of one image and class, as indices into the inputs.
#[derive(Debug, Default)]
pub(crate) struct Group {
    /// Highest score first; equal scores in input order.
    pub(crate) predictions: Vec<usize>,
    /// In input order.
    pub(crate) truths: Vec<usize>,
}

/// Groups keyed by `(image, class)`, iterated by image, then class.
pub(crate) type Groups = BTreeMap<(usize, u32), Group>;

fn group(predictions: &[Prediction], truths: &[Truth]) -> Groups {
    let mut groups = Groups::new();
    for (i, p) in predictions.iter().enumerate() {
        groups
            .entry((p.image, p.class))
            .or_default()
            .predictions
            .push(i);
    }
    for (i, t) in truths.iter().enumerate() {
        groups.entry((t.image, t.class)).or_default().truths.push(i);
    }
    for g in groups.values_mut() {
        // Stable, so equal scores keep input order.
        g.predictions
            .sort_by(|&a, &b| descending(predictions[a].score, predictions[b].score));
    }
    groups
}

/// High scores first (scores are finite after validation).
pub(crate) fn descending(a: f32, b: f32) -> std::cmp::Ordering {
    b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal)
}
