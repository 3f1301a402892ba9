//! The detection confusion matrix as Ultralytics' validation draws it: classes plus a
//! background row and column, detections above confidence 0.25 matched to ground truth of any
//! class at IoU above 0.45.

use std::collections::BTreeMap;

use crate::boxes::iou_ultralytics;
use crate::{EvalError, Prediction, Truth, descending, validate};

/// Detections at or below this confidence are left out of the matrix.
pub const CONFUSION_CONF: f32 = 0.25;
/// A detection and a ground-truth object match when their IoU is above this.
pub const CONFUSION_IOU: f32 = 0.45;

/// Counts of (predicted, true) class pairs over a data set; index `num_classes` is the
/// background (a missed object in the background row, a false detection in the background
/// column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfusionMatrix {
    num_classes: usize,
    /// Row-major: `counts[predicted * (num_classes + 1) + truth]`.
    counts: Vec<u64>,
}

impl ConfusionMatrix {
    /// The matrix of `predictions` against `truths` for classes `0..num_classes`.
    ///
    /// Per image, detections with a score above [`CONFUSION_CONF`] are matched to ground
    /// truth whatever the classes: every (truth, detection) pair with IoU above
    /// [`CONFUSION_IOU`] is a candidate; each detection keeps its best candidate, then each
    /// truth keeps the best of those. A matched pair counts at (detection class, truth class),
    /// an unmatched truth at (background, truth class), an unmatched detection at (detection
    /// class, background).
    ///
    /// # Errors
    ///
    /// [`EvalError`] for the input [`crate::evaluate`] rejects.
    pub fn new(
        predictions: &[Prediction],
        truths: &[Truth],
        num_classes: usize,
    ) -> Result<Self, EvalError> {
        validate(predictions, truths, num_classes)?;
        let mut matrix = ConfusionMatrix {
            num_classes,
            counts: vec![0; (num_classes + 1) * (num_classes + 1)],
        };
        let mut images: BTreeMap<usize, (Vec<&Prediction>, Vec<&Truth>)> = BTreeMap::new();
        for p in predictions.iter().filter(|p| p.score > CONFUSION_CONF) {
            images.entry(p.image).or_default().0.push(p);
        }
        for t in truths {
            images.entry(t.image).or_default().1.push(t);
        }
        for (detections, objects) in images.values() {
            matrix.add_image(detections, objects);
        }
        Ok(matrix)
    }

    /// Counts one image's detections and ground truth.
    fn add_image(&mut self, detections: &[&Prediction], objects: &[&Truth]) {
        let background = self.num_classes;
        let pairs = match_pairs(detections, objects);
        let mut detection_matched = vec![false; detections.len()];
        for (t, object) in objects.iter().enumerate() {
            let truth = object.class as usize;
            match pairs.iter().find(|&&(pt, _)| pt == t) {
                Some(&(_, d)) => {
                    detection_matched[d] = true;
                    self.add(detections[d].class as usize, truth);
                }
                None => self.add(background, truth),
            }
        }
        for (detection, _) in detections
            .iter()
            .zip(&detection_matched)
            .filter(|(_, matched)| !**matched)
        {
            self.add(detection.class as usize, background);
        }
    }

    fn index(&self, predicted: usize, truth: usize) -> usize {
        predicted * (self.num_classes + 1) + truth
    }

    fn add(&mut self, predicted: usize, truth: usize) {
        let index = self.index(predicted, truth);
        self.counts[index] += 1;
    }

    /// Number of classes, without the background.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// How often class `truth` was detected as class `predicted`; either may be
    /// [`ConfusionMatrix::num_classes`], the background. 0 past the matrix.
    pub fn count(&self, predicted: usize, truth: usize) -> u64 {
        if predicted > self.num_classes || truth > self.num_classes {
            return 0;
        }
        self.counts[self.index(predicted, truth)]
    }

    /// The share of each true class (column) that went to each predicted class (row):
    /// row-major like the counts, each non-empty column summing to 1, empty columns 0.
    pub fn normalized(&self) -> Vec<f64> {
        let side = self.num_classes + 1;
        let column_sums: Vec<u64> = (0..side)
            .map(|truth| (0..side).map(|p| self.count(p, truth)).sum())
            .collect();
        (0..side * side)
            .map(|i| {
                let total = column_sums[i % side];
                if total == 0 {
                    0.0
                } else {
                    self.counts[i] as f64 / total as f64
                }
            })
            .collect()
    }
}

/// Ultralytics' matching of one image: the (truth, detection) pairs whose IoU is above
/// [`CONFUSION_IOU`], best IoU first; each detection keeps its first (best) pair, then each
/// truth keeps its first of those.
fn match_pairs(detections: &[&Prediction], objects: &[&Truth]) -> Vec<(usize, usize)> {
    let mut candidates: Vec<(usize, usize, f32)> = Vec::new();
    for (t, object) in objects.iter().enumerate() {
        for (d, detection) in detections.iter().enumerate() {
            let iou = iou_ultralytics(&object.bbox, &detection.bbox);
            if iou > CONFUSION_IOU {
                candidates.push((t, d, iou));
            }
        }
    }
    candidates.sort_by(|a, b| descending(a.2, b.2));
    let mut detection_taken = vec![false; detections.len()];
    let per_detection: Vec<(usize, usize)> = candidates
        .into_iter()
        .filter(|&(_, d, _)| !std::mem::replace(&mut detection_taken[d], true))
        .map(|(t, d, _)| (t, d))
        .collect();
    let mut truth_taken = vec![false; objects.len()];
    per_detection
        .into_iter()
        .filter(|&(t, _)| !std::mem::replace(&mut truth_taken[t], true))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prediction(image: usize, class: u32, score: f32, bbox: [f32; 4]) -> Prediction {
        Prediction {
            image,
            class,
            score,
            bbox,
        }
    }

    fn truth(image: usize, class: u32, bbox: [f32; 4]) -> Truth {
        Truth { image, class, bbox }
    }

    #[test]
    fn counts_hits_confusions_misses_and_false_detections() {
        let truths = [
            truth(0, 0, [0.0, 0.0, 10.0, 10.0]),   // found as class 0
            truth(0, 1, [20.0, 20.0, 30.0, 30.0]), // found as class 0: a confusion
            truth(1, 1, [0.0, 0.0, 10.0, 10.0]),   // missed: background row
        ];
        let predictions = [
            prediction(0, 0, 0.9, [0.0, 0.0, 10.0, 10.0]),
            prediction(0, 0, 0.8, [20.0, 20.0, 30.0, 31.0]),
            prediction(0, 1, 0.7, [50.0, 50.0, 60.0, 60.0]), // nothing there: background column
            prediction(1, 1, 0.2, [0.0, 0.0, 10.0, 10.0]),   // below 0.25: left out
            prediction(2, 0, 0.5, [0.0, 0.0, 5.0, 5.0]),     // image without truth
        ];
        let m = ConfusionMatrix::new(&predictions, &truths, 2).unwrap();
        assert_eq!(m.num_classes(), 2);
        assert_eq!(m.count(0, 0), 1);
        assert_eq!(m.count(0, 1), 1);
        assert_eq!(m.count(1, 1), 0);
        assert_eq!(m.count(2, 1), 1, "missed class 1");
        assert_eq!(m.count(1, 2), 1, "class 1 detected on background");
        assert_eq!(
            m.count(0, 2),
            1,
            "class 0 detected on an image without truth"
        );
        let total: u64 = (0..3)
            .flat_map(|p| (0..3).map(move |t| (p, t)))
            .map(|(p, t)| m.count(p, t))
            .sum();
        assert_eq!(total, 5, "3 truths, 2 unmatched detections");
        assert_eq!(m.count(3, 0), 0, "past the matrix");
    }

    #[test]
    fn each_truth_and_detection_matches_once() {
        // Two detections on one object: the better overlap matches, the other is a false
        // detection.
        let truths = [truth(0, 0, [0.0, 0.0, 10.0, 10.0])];
        let predictions = [
            prediction(0, 0, 0.6, [0.0, 0.0, 10.0, 10.0]),
            prediction(0, 0, 0.9, [0.0, 0.0, 10.0, 12.0]),
        ];
        let m = ConfusionMatrix::new(&predictions, &truths, 1).unwrap();
        assert_eq!(m.count(0, 0), 1);
        assert_eq!(m.count(0, 1), 1);
        assert_eq!(m.count(1, 0), 0);
    }

    #[test]
    fn a_detection_keeps_only_its_best_truth() {
        // d1 overlaps t0 best (0.67) and t1 less (0.54); t0 goes to d0 (IoU 1). Ultralytics'
        // matching does not fall back to t1 for d1 (a greedy one-to-one matching would): t1 is
        // missed and d1 is a false detection.
        let truths = [
            truth(0, 0, [0.0, 0.0, 10.0, 10.0]),
            truth(0, 0, [5.0, 0.0, 15.0, 10.0]),
        ];
        let predictions = [
            prediction(0, 0, 0.9, [0.0, 0.0, 10.0, 10.0]),
            prediction(0, 0, 0.8, [2.0, 0.0, 12.0, 10.0]),
        ];
        let m = ConfusionMatrix::new(&predictions, &truths, 1).unwrap();
        assert_eq!(m.count(0, 0), 1);
        assert_eq!(m.count(1, 0), 1, "t1 missed");
        assert_eq!(m.count(0, 1), 1, "d1 on background");
    }

    #[test]
    fn iou_at_or_below_045_does_not_match() {
        // IoU of these two boxes is 50 / 150 = 0.33.
        let truths = [truth(0, 0, [0.0, 0.0, 10.0, 10.0])];
        let predictions = [prediction(0, 0, 0.9, [5.0, 0.0, 15.0, 10.0])];
        let m = ConfusionMatrix::new(&predictions, &truths, 1).unwrap();
        assert_eq!(m.count(0, 0), 0);
        assert_eq!(m.count(1, 0), 1);
        assert_eq!(m.count(0, 1), 1);
    }

    #[test]
    fn normalized_columns_sum_to_one() {
        let truths = [
            truth(0, 0, [0.0, 0.0, 10.0, 10.0]),
            truth(1, 0, [0.0, 0.0, 10.0, 10.0]),
            truth(2, 0, [0.0, 0.0, 10.0, 10.0]),
        ];
        let predictions = [
            prediction(0, 0, 0.9, [0.0, 0.0, 10.0, 10.0]),
            prediction(1, 1, 0.9, [0.0, 0.0, 10.0, 10.0]),
        ];
        let m = ConfusionMatrix::new(&predictions, &truths, 2).unwrap();
        let n = m.normalized();
        assert_eq!(n.len(), 9);
        let share = |p: usize, t: usize| n[p * 3 + t];
        assert!((share(0, 0) - 1.0 / 3.0).abs() < 1e-12);
        assert!((share(1, 0) - 1.0 / 3.0).abs() < 1e-12);
        assert!((share(2, 0) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(share(0, 1), 0.0, "class 1 has no truth: an empty column");
    }

    #[test]
    fn rejects_what_evaluate_rejects() {
        let truths = [truth(0, 5, [0.0, 0.0, 1.0, 1.0])];
        assert!(matches!(
            ConfusionMatrix::new(&[], &truths, 2),
            Err(EvalError::ClassOutOfRange { class: 5, .. })
        ));
        let predictions = [prediction(0, 0, f32::NAN, [0.0, 0.0, 1.0, 1.0])];
        assert!(ConfusionMatrix::new(&predictions, &[], 2).is_err());
    }
}
