//! AP as pycocotools' `COCOeval` (bbox, area range all, maxDets 100) computes it.

use std::collections::BTreeMap;

use crate::boxes::{iou_coco, xywh_f64};
use crate::metrics::CocoMetrics;
use crate::numeric::linspace;
use crate::{Groups, Prediction, Truth, descending};

/// Detections kept per image and class.
const MAX_DETS: usize = 100;
/// Index of IoU 0.75 among the ten thresholds.
const IOU_75: usize = 5;

/// A detection after matching: its score and whether it matched, per IoU threshold.
struct Matched {
    score: f32,
    matched: [bool; 10],
}

pub(crate) fn evaluate(
    groups: &Groups,
    predictions: &[Prediction],
    truths: &[Truth],
) -> CocoMetrics {
    // `iouThrs` and `recThrs` exactly as COCOeval builds them with np.linspace.
    let iou_thresholds = linspace(0.5, 0.95, 10);
    let recall_thresholds = linspace(0.0, 1.0, 101);

    let mut per_class: BTreeMap<u32, (usize, Vec<Matched>)> = BTreeMap::new();
    for (&(_, class), g) in groups {
        let dets: Vec<&Prediction> = g
            .predictions
            .iter()
            .take(MAX_DETS)
            .map(|&i| &predictions[i])
            .collect();
        let gts: Vec<[f64; 4]> = g
            .truths
            .iter()
            .map(|&i| xywh_f64(&truths[i].bbox))
            .collect();
        let entry = per_class.entry(class).or_default();
        entry.0 += gts.len();
        entry
            .1
            .extend(match_image_class(&dets, &gts, &iou_thresholds));
    }

    let (mut sum_all, mut sum_50, mut sum_75, mut classes) = (0.0, 0.0, 0.0, 0usize);
    for (n_truths, mut dets) in per_class.into_values() {
        if n_truths == 0 {
            continue;
        }
        classes += 1;
        // Stable, as COCOeval's mergesort: equal scores stay by image, then rank in image.
        dets.sort_by(|a, b| descending(a.score, b.score));
        for t in 0..iou_thresholds.len() {
            let sum = precision_sum(&dets, t, n_truths, &recall_thresholds);
            sum_all += sum;
            if t == 0 {
                sum_50 += sum;
            }
            if t == IOU_75 {
                sum_75 += sum;
            }
        }
    }
    if classes == 0 {
        return CocoMetrics {
            map50_95: 0.0,
            map50: 0.0,
            map75: 0.0,
        };
    }
    let per_threshold = (classes * recall_thresholds.len()) as f64;
    CocoMetrics {
        map50_95: sum_all / (per_threshold * iou_thresholds.len() as f64),
        map50: sum_50 / per_threshold,
        map75: sum_75 / per_threshold,
    }
}

/// `evaluateImg` for one image and class without crowd or ignored truths: at each threshold,
/// detections by descending score take the unmatched truth of highest IoU at or above the
/// threshold (the last one on ties).
fn match_image_class(dets: &[&Prediction], gts: &[[f64; 4]], thresholds: &[f64]) -> Vec<Matched> {
    let ious: Vec<Vec<f64>> = dets
        .iter()
        .map(|d| {
            let d = xywh_f64(&d.bbox);
            gts.iter().map(|g| iou_coco(&d, g)).collect()
        })
        .collect();
    let mut matched = vec![[false; 10]; dets.len()];
    for (t, &threshold) in thresholds.iter().enumerate() {
        let mut taken = vec![false; gts.len()];
        for (row, matched) in ious.iter().zip(matched.iter_mut()) {
            let mut best = threshold.min(1.0 - 1e-10);
            let mut m = None;
            for (g, &iou) in row.iter().enumerate() {
                if !taken[g] && iou >= best {
                    best = iou;
                    m = Some(g);
                }
            }
            if let Some(g) = m {
                taken[g] = true;
                matched[t] = true;
            }
        }
    }
    dets.iter()
        .zip(matched)
        .map(|(d, matched)| Matched {
            score: d.score,
            matched,
        })
        .collect()
}

/// The sum over recall thresholds of the interpolated precision of one class at one IoU
/// threshold, as `accumulate` fills it (0 beyond the highest recall reached).
fn precision_sum(dets: &[Matched], t: usize, n_truths: usize, recall_thresholds: &[f64]) -> f64 {
    let (mut tp, mut fp) = (0.0f64, 0.0f64);
    let mut recall = Vec::with_capacity(dets.len());
    let mut precision = Vec::with_capacity(dets.len());
    for d in dets {
        if d.matched[t] {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        recall.push(tp / n_truths as f64);
        precision.push(tp / (fp + tp + f64::EPSILON));
    }
    for i in (1..precision.len()).rev() {
        if precision[i] > precision[i - 1] {
            precision[i - 1] = precision[i];
        }
    }
    recall_thresholds
        .iter()
        .map(|&r| recall.partition_point(|&v| v < r))
        .map_while(|i| precision.get(i))
        .sum()
}
