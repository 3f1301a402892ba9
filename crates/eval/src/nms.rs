//! Class-aware greedy non-maximum suppression.

use std::cmp::Ordering;
use std::collections::HashMap;

use crate::boxes::iou;

/// Class-aware greedy NMS; returns the indices of the kept boxes, highest score first.
///
/// Candidates are visited by descending score (equal scores by ascending index, NaN scores
/// last). A candidate is kept unless a kept box of the same class overlaps it with
/// [`iou`] strictly greater than `iou_threshold`, as `torchvision.ops.nms` on per-class
/// offset boxes decides; boxes of different classes never suppress each other. At most
/// `max_det` indices are returned. Each candidate is compared only with the kept boxes of its
/// class, so the cost is one sort plus at most `boxes.len() * max_det` IoUs.
///
/// # Panics
///
/// If `boxes`, `scores` and `classes` differ in length.
pub fn nms(
    boxes: &[[f32; 4]],
    scores: &[f32],
    classes: &[u32],
    iou_threshold: f32,
    max_det: usize,
) -> Vec<usize> {
    assert!(
        boxes.len() == scores.len() && boxes.len() == classes.len(),
        "nms: {} boxes, {} scores and {} classes",
        boxes.len(),
        scores.len(),
        classes.len()
    );
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_unstable_by(|&a, &b| descending_score(scores[a], scores[b]).then(a.cmp(&b)));

    let mut keep = Vec::new();
    let mut kept_by_class: HashMap<u32, Vec<[f32; 4]>> = HashMap::new();
    for i in order {
        if keep.len() >= max_det {
            break;
        }
        let kept = kept_by_class.entry(classes[i]).or_default();
        if kept.iter().all(|k| iou(k, &boxes[i]) <= iou_threshold) {
            kept.push(boxes[i]);
            keep.push(i);
        }
    }
    keep
}

/// Orders scores from high to low with NaN after everything else.
fn descending_score(a: f32, b: f32) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (false, false) => b.partial_cmp(&a).unwrap_or(Ordering::Equal),
        (a_nan, b_nan) => a_nan.cmp(&b_nan),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Textbook NMS: repeatedly keep the best remaining box and drop every remaining box of
    /// its class that overlaps it by more than the threshold.
    fn brute_force(
        boxes: &[[f32; 4]],
        scores: &[f32],
        classes: &[u32],
        iou_threshold: f32,
        max_det: usize,
    ) -> Vec<usize> {
        let mut remaining: Vec<usize> = (0..boxes.len()).collect();
        let mut keep = Vec::new();
        while keep.len() < max_det {
            let Some(pos) = (0..remaining.len()).min_by(|&x, &y| {
                let (a, b) = (remaining[x], remaining[y]);
                descending_score(scores[a], scores[b]).then(a.cmp(&b))
            }) else {
                break;
            };
            let best = remaining.swap_remove(pos);
            keep.push(best);
            remaining.retain(|&j| {
                classes[j] != classes[best] || iou(&boxes[best], &boxes[j]) <= iou_threshold
            });
        }
        keep
    }

    fn candidate() -> impl Strategy<Value = ([f32; 4], f32, u32)> {
        // Coarse coordinates and scores so that ties, identical and zero-area boxes occur.
        (0u8..20, 0u8..20, 0u8..12, 0u8..12, 0u8..16, 0u32..3).prop_map(|(x, y, w, h, s, c)| {
            let (x, y) = (f32::from(x) * 2.0, f32::from(y) * 2.0);
            let bbox = [x, y, x + f32::from(w) * 2.0, y + f32::from(h) * 2.0];
            (bbox, f32::from(s) / 16.0, c)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn matches_brute_force(
            candidates in proptest::collection::vec(candidate(), 0..80),
            threshold in prop_oneof![Just(0.0f32), Just(0.5), Just(0.7), 0.0f32..1.0],
            max_det in 0usize..100,
        ) {
            let boxes: Vec<[f32; 4]> = candidates.iter().map(|c| c.0).collect();
            let scores: Vec<f32> = candidates.iter().map(|c| c.1).collect();
            let classes: Vec<u32> = candidates.iter().map(|c| c.2).collect();
            prop_assert_eq!(
                nms(&boxes, &scores, &classes, threshold, max_det),
                brute_force(&boxes, &scores, &classes, threshold, max_det)
            );
        }
    }

    #[test]
    fn empty_input() {
        assert!(nms(&[], &[], &[], 0.5, 300).is_empty());
    }

    #[test]
    fn identical_boxes_keep_the_best_then_lowest_index() {
        let b = [10.0, 10.0, 50.0, 50.0];
        assert_eq!(
            nms(&[b; 4], &[0.5, 0.9, 0.9, 0.1], &[0; 4], 0.5, 10),
            vec![1]
        );
        // IoU 1 is not greater than a threshold of 1.
        assert_eq!(
            nms(&[b; 3], &[0.2, 0.9, 0.9], &[0; 3], 1.0, 10),
            vec![1, 2, 0]
        );
    }

    #[test]
    fn zero_area_boxes_never_suppress() {
        let p = [5.0, 5.0, 5.0, 5.0];
        assert_eq!(
            nms(&[p; 3], &[0.3, 0.2, 0.1], &[0; 3], 0.0, 10),
            vec![0, 1, 2]
        );
    }

    #[test]
    fn different_classes_never_suppress_each_other() {
        let b = [0.0, 0.0, 10.0, 10.0];
        assert_eq!(
            nms(&[b; 3], &[0.9, 0.8, 0.7], &[0, 1, 2], 0.1, 10),
            vec![0, 1, 2]
        );
        assert_eq!(
            nms(&[b; 4], &[0.9, 0.8, 0.7, 0.95], &[0, 1, 0, 1], 0.1, 10),
            vec![3, 0]
        );
    }

    #[test]
    fn threshold_is_strict() {
        let a = [0.0, 0.0, 10.0, 10.0];
        let b = [0.0, 0.0, 10.0, 20.0]; // IoU exactly 0.5
        assert_eq!(nms(&[a, b], &[0.9, 0.8], &[0, 0], 0.5, 10), vec![0, 1]);
        assert_eq!(nms(&[a, b], &[0.9, 0.8], &[0, 0], 0.49, 10), vec![0]);
    }

    #[test]
    fn max_det_and_nan_scores() {
        let boxes: Vec<[f32; 4]> = (0..5)
            .map(|i| {
                let x = i as f32 * 20.0;
                [x, 0.0, x + 10.0, 10.0]
            })
            .collect();
        let scores = [0.1, f32::NAN, 0.7, f32::NEG_INFINITY, 0.7];
        assert_eq!(nms(&boxes, &scores, &[0; 5], 0.5, 10), vec![2, 4, 0, 3, 1]);
        assert_eq!(nms(&boxes, &scores, &[0; 5], 0.5, 2), vec![2, 4]);
        assert!(nms(&boxes, &scores, &[0; 5], 0.5, 0).is_empty());
    }

    #[test]
    #[should_panic(expected = "nms: 2 boxes, 1 scores")]
    fn mismatched_lengths_panic() {
        nms(&[[0.0; 4]; 2], &[0.5], &[0, 0], 0.5, 10);
    }

    #[test]
    fn thirty_thousand_candidates() {
        // A deterministic LCG; heavy overlap within 80 classes.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        let n = 30_000;
        let mut boxes = Vec::with_capacity(n);
        let mut scores = Vec::with_capacity(n);
        let mut classes = Vec::with_capacity(n);
        for _ in 0..n {
            let (x, y) = (next() * 600.0, next() * 600.0);
            let (w, h) = (5.0 + next() * 100.0, 5.0 + next() * 100.0);
            boxes.push([x, y, x + w, y + h]);
            scores.push(next());
            classes.push((next() * 80.0) as u32);
        }
        let keep = nms(&boxes, &scores, &classes, 0.7, 300);
        assert_eq!(keep.len(), 300);
        assert!(keep.windows(2).all(|w| scores[w[0]] >= scores[w[1]]));
        assert_eq!(keep, brute_force(&boxes, &scores, &classes, 0.7, 300));
    }
}
