//! Precision, recall and mAP as Ultralytics 8.4 computes them in detection validation
//! (`DetectionValidator.match_predictions`, `ap_per_class`, `compute_ap`).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::boxes::iou_ultralytics;
use crate::numeric::{box_filter, interp, linspace, trapezoid};
use crate::{Groups, Prediction, Truth, descending};

/// The IoU thresholds 0.50:0.05:0.95 as the `f32` values `torch.linspace(0.5, 0.95, 10)` holds.
const IOU_THRESHOLDS: [f32; 10] = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95];
/// Index of IoU 0.75 in [`IOU_THRESHOLDS`].
const IOU_75: usize = 5;
/// Confidence points of the precision, recall and F1 curves.
const CURVE_POINTS: usize = 1000;
/// The mean F1 curve is box-filtered over this fraction of its points before its maximum
/// picks the confidence of [`Metrics::precision`] and [`Metrics::recall`].
const F1_SMOOTH_FRACTION: f64 = 0.1;
/// Added to denominators, as Ultralytics does.
const EPS: f64 = 1e-16;

/// Evaluation results; see [`crate::evaluate`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    /// Mean over classes of the precision at the confidence of maximal mean F1.
    pub precision: f64,
    /// Mean over classes of the recall at the confidence of maximal mean F1.
    pub recall: f64,
    /// Mean AP at IoU 0.5.
    pub map50: f64,
    /// Mean AP over IoU 0.50:0.05:0.95.
    pub map50_95: f64,
    /// Mean AP at IoU 0.75.
    pub map75: f64,
    /// Per class with ground truth, by class id.
    pub classes: Vec<ClassMetrics>,
    /// The COCO (pycocotools) numbers for the same input.
    pub coco: CocoMetrics,
    /// The curves behind the numbers, for plots; not serialised (thousands of points).
    #[serde(skip)]
    pub curves: Curves,
}

/// Ultralytics' precision, recall and F1 curves against confidence and precision against
/// recall, each sampled at the same [`Curves::points`] (`0..=1`, 1000 points).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Curves {
    /// The sample points: confidence thresholds, or recall for [`ClassCurve::pr`].
    pub points: Vec<f64>,
    /// One per class with ground truth, by class id (as [`Metrics::classes`]).
    pub classes: Vec<ClassCurve>,
}

/// The curves of one class.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassCurve {
    /// Class id.
    pub class: u32,
    /// AP at IoU 0.5 (the area under [`ClassCurve::pr`]).
    pub ap50: f64,
    /// Precision at IoU 0.5 of the detections at or above each confidence point.
    pub precision: Vec<f64>,
    /// Recall at IoU 0.5 of the detections at or above each confidence point.
    pub recall: Vec<f64>,
    /// F1 of [`ClassCurve::precision`] and [`ClassCurve::recall`] at each confidence point.
    pub f1: Vec<f64>,
    /// The precision envelope at IoU 0.5, at each recall point.
    pub pr: Vec<f64>,
}

impl Curves {
    /// The mean over classes of the curve `which` picks, point by point (empty without
    /// classes).
    pub fn mean(&self, which: impl Fn(&ClassCurve) -> &[f64]) -> Vec<f64> {
        let mut sum = vec![0.0; self.points.len()];
        for class in &self.classes {
            for (s, v) in sum.iter_mut().zip(which(class)) {
                *s += v;
            }
        }
        if self.classes.is_empty() {
            return Vec::new();
        }
        let n = self.classes.len() as f64;
        sum.into_iter().map(|s| s / n).collect()
    }

    /// [`Curves::mean`] smoothed with a centred box filter `fraction` of the points wide
    /// (Ultralytics draws the all-classes confidence curves with 0.05).
    pub fn smoothed_mean(&self, which: impl Fn(&ClassCurve) -> &[f64], fraction: f64) -> Vec<f64> {
        box_filter(&self.mean(which), filter_width(self.points.len(), fraction))
    }
}

/// Results of one class that has ground truth.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassMetrics {
    /// Class id.
    pub class: u32,
    /// Number of ground-truth objects.
    pub truths: usize,
    /// Number of images with at least one ground-truth object of the class.
    pub images: usize,
    /// Precision at the confidence of maximal mean F1.
    pub precision: f64,
    /// Recall at the confidence of maximal mean F1.
    pub recall: f64,
    /// AP at IoU 0.5.
    pub ap50: f64,
    /// AP averaged over IoU 0.50:0.05:0.95.
    pub ap50_95: f64,
}

/// COCO-standard AP (pycocotools: greedy matching by score, 100 detections per image and
/// class, area range all, 101 recall thresholds), averaged over classes with ground truth.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CocoMetrics {
    /// AP over IoU 0.50:0.05:0.95.
    pub map50_95: f64,
    /// AP at IoU 0.5.
    pub map50: f64,
    /// AP at IoU 0.75.
    pub map75: f64,
}

/// One prediction after matching: its score and whether it is a true positive per threshold.
struct Matched {
    score: f32,
    correct: [bool; 10],
}

/// Per-class curves and AP, before the F1-optimal confidence is chosen.
struct ClassCurves {
    class: u32,
    truths: usize,
    images: usize,
    ap: [f64; 10],
    precision: Vec<f64>,
    recall: Vec<f64>,
    /// Precision envelope at IoU 0.5 sampled at the recall points.
    pr: Vec<f64>,
}

pub(crate) fn evaluate(
    groups: &Groups,
    predictions: &[Prediction],
    truths: &[Truth],
    coco: CocoMetrics,
) -> Metrics {
    // Matched predictions and (truths, images) per class, over images in ascending order.
    let mut matched: BTreeMap<u32, Vec<Matched>> = BTreeMap::new();
    let mut counts: BTreeMap<u32, (usize, usize)> = BTreeMap::new();
    for (&(_, class), g) in groups {
        let preds: Vec<&Prediction> = g.predictions.iter().map(|&i| &predictions[i]).collect();
        let gts: Vec<&Truth> = g.truths.iter().map(|&i| &truths[i]).collect();
        let correct = match_image_class(&preds, &gts);
        matched
            .entry(class)
            .or_default()
            .extend(preds.iter().zip(correct).map(|(p, correct)| Matched {
                score: p.score,
                correct,
            }));
        if !gts.is_empty() {
            let c = counts.entry(class).or_default();
            c.0 += gts.len();
            c.1 += 1;
        }
    }

    let x = linspace(0.0, 1.0, CURVE_POINTS);
    let curves: Vec<ClassCurves> = counts
        .iter()
        .map(|(&class, &(n_truths, n_images))| {
            let mut preds = matched.remove(&class).unwrap_or_default();
            // Stable: equal scores stay by image, then input order.
            preds.sort_by(|a, b| descending(a.score, b.score));
            class_curves(class, n_truths, n_images, &preds, &x)
        })
        .collect();

    let best = best_f1_index(&curves);
    let classes: Vec<ClassMetrics> = curves
        .iter()
        .map(|c| ClassMetrics {
            class: c.class,
            truths: c.truths,
            images: c.images,
            precision: c.precision.get(best).copied().unwrap_or(0.0),
            recall: c.recall.get(best).copied().unwrap_or(0.0),
            ap50: c.ap[0],
            ap50_95: mean(c.ap.iter().copied()),
        })
        .collect();
    Metrics {
        precision: mean(classes.iter().map(|c| c.precision)),
        recall: mean(classes.iter().map(|c| c.recall)),
        map50: mean(curves.iter().map(|c| c.ap[0])),
        map50_95: mean(curves.iter().flat_map(|c| c.ap)),
        map75: mean(curves.iter().map(|c| c.ap[IOU_75])),
        classes,
        coco,
        curves: Curves {
            points: x,
            classes: curves.into_iter().map(ClassCurve::from).collect(),
        },
    }
}

impl From<ClassCurves> for ClassCurve {
    fn from(c: ClassCurves) -> Self {
        let f1 = c
            .precision
            .iter()
            .zip(&c.recall)
            .map(|(&p, &r)| f1(p, r))
            .collect();
        ClassCurve {
            class: c.class,
            ap50: c.ap[0],
            precision: c.precision,
            recall: c.recall,
            f1,
            pr: c.pr,
        }
    }
}

/// The harmonic mean of precision and recall, with Ultralytics' epsilon.
fn f1(precision: f64, recall: f64) -> f64 {
    2.0 * precision * recall / (precision + recall + EPS)
}

/// Ultralytics' box-filter width for `fraction` of `points`, `round(2 n f) / 2 + 1` (101 for
/// 0.1 of 1000 points), made odd so that the window is centred.
fn filter_width(points: usize, fraction: f64) -> usize {
    ((points as f64 * fraction * 2.0).round() as usize / 2 + 1) | 1
}

/// `match_predictions` restricted to one class of one image (other classes have their IoU
/// zeroed there, so they never match): at each threshold, predictions in descending score
/// order claim their highest-IoU unclaimed truth (the first on ties) if that IoU reaches
/// the threshold.
fn match_image_class(preds: &[&Prediction], gts: &[&Truth]) -> Vec<[bool; 10]> {
    let mut correct = vec![[false; 10]; preds.len()];
    if gts.is_empty() {
        return correct;
    }
    let ious: Vec<Vec<f32>> = preds
        .iter()
        .map(|p| {
            gts.iter()
                .map(|t| iou_ultralytics(&t.bbox, &p.bbox))
                .collect()
        })
        .collect();
    for (t, &threshold) in IOU_THRESHOLDS.iter().enumerate() {
        let mut claimed = vec![false; gts.len()];
        for (row, correct) in ious.iter().zip(correct.iter_mut()) {
            let mut best: Option<(usize, f32)> = None;
            for (k, &iou) in row.iter().enumerate() {
                if !claimed[k] && best.is_none_or(|(_, b)| iou > b) {
                    best = Some((k, iou));
                }
            }
            if let Some((k, iou)) = best
                && iou >= threshold
            {
                claimed[k] = true;
                correct[t] = true;
            }
        }
    }
    correct
}

/// The body of `ap_per_class` for one class; `preds` sorted by descending score.
fn class_curves(
    class: u32,
    truths: usize,
    images: usize,
    preds: &[Matched],
    x: &[f64],
) -> ClassCurves {
    let mut curves = ClassCurves {
        class,
        truths,
        images,
        ap: [0.0; 10],
        precision: vec![0.0; x.len()],
        recall: vec![0.0; x.len()],
        pr: vec![0.0; x.len()],
    };
    if preds.is_empty() {
        return curves;
    }
    let neg_conf: Vec<f64> = preds.iter().map(|p| -f64::from(p.score)).collect();
    let n_l = truths as f64 + EPS;
    for t in 0..IOU_THRESHOLDS.len() {
        let (mut tp, mut fp) = (0u64, 0u64);
        let mut recall = Vec::with_capacity(preds.len());
        let mut precision = Vec::with_capacity(preds.len());
        for p in preds {
            if p.correct[t] {
                tp += 1;
            } else {
                fp += 1;
            }
            recall.push(tp as f64 / n_l);
            precision.push(tp as f64 / (tp + fp) as f64);
        }
        if t == 0 {
            let (last_r, last_p) = (recall[recall.len() - 1], precision[precision.len() - 1]);
            for (i, &xi) in x.iter().enumerate() {
                curves.recall[i] = interp(-xi, &neg_conf, &recall, 0.0, last_r);
                curves.precision[i] = interp(-xi, &neg_conf, &precision, 1.0, last_p);
            }
        }
        let (mrec, mpre) = precision_envelope(&recall, &precision);
        if t == 0 {
            for (pr, &xi) in curves.pr.iter_mut().zip(x) {
                *pr = interp(xi, &mrec, &mpre, mpre[0], 0.0);
            }
        }
        curves.ap[t] = average_precision(&mrec, &mpre);
    }
    curves
}

/// `compute_ap`'s envelope: recall with sentinels 0 and 1, and the running maximum of the
/// precision from the right. `recall` is non-empty.
fn precision_envelope(recall: &[f64], precision: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let last_recall = recall.last().copied().unwrap_or(1.0);
    let mut mrec = Vec::with_capacity(recall.len() + 3);
    mrec.push(0.0);
    mrec.extend_from_slice(recall);
    mrec.extend([last_recall, 1.0]);
    let mut mpre = Vec::with_capacity(precision.len() + 3);
    mpre.push(1.0);
    mpre.extend_from_slice(precision);
    mpre.extend([0.0, 0.0]);
    for i in (0..mpre.len() - 1).rev() {
        mpre[i] = mpre[i].max(mpre[i + 1]);
    }
    (mrec, mpre)
}

/// `compute_ap` with method "interp": the envelope ([`precision_envelope`]) sampled at 101
/// recall points, integrated with the trapezoid rule.
fn average_precision(mrec: &[f64], mpre: &[f64]) -> f64 {
    let points = linspace(0.0, 1.0, 101);
    let sampled: Vec<f64> = points
        .iter()
        .map(|&r| interp(r, mrec, mpre, mpre[0], 0.0))
        .collect();
    trapezoid(&sampled, &points)
}

/// Index of the maximum of the box-filtered mean F1 curve (0 without classes).
fn best_f1_index(curves: &[ClassCurves]) -> usize {
    if curves.is_empty() {
        return 0;
    }
    let mut mean_f1 = vec![0.0; CURVE_POINTS];
    for c in curves {
        for (m, (&p, &r)) in mean_f1.iter_mut().zip(c.precision.iter().zip(&c.recall)) {
            *m += f1(p, r);
        }
    }
    let n = curves.len() as f64;
    mean_f1.iter_mut().for_each(|m| *m /= n);
    let smoothed = box_filter(&mean_f1, filter_width(CURVE_POINTS, F1_SMOOTH_FRACTION));
    let mut best = (0, f64::NEG_INFINITY);
    for (i, &value) in smoothed.iter().enumerate() {
        if value > best.1 {
            best = (i, value);
        }
    }
    best.0
}

/// Arithmetic mean; 0 for no values.
fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { 0.0 } else { sum / n as f64 }
}
