//! `evaluate` on hand-checkable cases and edge cases.

use fusekit_eval::{EvalError, Metrics, Prediction, Truth, evaluate};

fn pred(image: usize, class: u32, score: f32, bbox: [f32; 4]) -> Prediction {
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

const A: [f32; 4] = [0.0, 0.0, 10.0, 10.0];
const B: [f32; 4] = [20.0, 20.0, 30.0, 30.0];

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

fn assert_all_zero(m: &Metrics) {
    let values = [m.precision, m.recall, m.map50, m.map50_95, m.map75];
    assert!(values.iter().all(|&v| v == 0.0), "{m:?}");
    let coco = [m.coco.map50_95, m.coco.map50, m.coco.map75];
    assert!(coco.iter().all(|&v| v == 0.0), "{m:?}");
}

/// Two truths; a hit (0.9), a duplicate on the same truth (0.8) and a hit (0.7), all at IoU 1.
/// Recall 1/2, 1/2, 1; precision 1, 1/2, 2/3; envelope 1 up to recall 1/2, then 2/3.
#[test]
fn hand_checked_ap() {
    let truths = [truth(0, 0, A), truth(0, 0, B)];
    let preds = [pred(0, 0, 0.9, A), pred(0, 0, 0.8, A), pred(0, 0, 0.7, B)];
    let m = evaluate(&preds, &truths, 1).unwrap();

    // Ultralytics: the envelope sampled at recall 0, 0.01, .., 1 is 1 for 50 points, 2/3 for
    // 50 points and 0 at recall 1 (the sentinel); the trapezoid rule gives
    // 0.49 + 0.01 * (1 + 2/3) / 2 + 0.49 * 2/3 + 0.01 * (2/3) / 2 = 248.5 / 300.
    let ap = 248.5 / 300.0;
    assert!(close(m.map50, ap), "{}", m.map50);
    assert!(close(m.map50_95, ap), "{}", m.map50_95);
    assert!(close(m.map75, ap));
    // Best F1 (0.8) holds for every confidence up to 0.7: precision 2/3, recall 1.
    assert!(close(m.precision, 2.0 / 3.0), "{}", m.precision);
    assert!(close(m.recall, 1.0), "{}", m.recall);
    let c = &m.classes[0];
    assert_eq!((c.class, c.truths, c.images), (0, 2, 1));
    assert!(close(c.ap50, ap) && close(c.ap50_95, ap));

    // COCO: 51 recall thresholds (0 to 0.5) at precision 1, 50 at 2/3: (51 + 100/3) / 101.
    let coco = 253.0 / 303.0;
    assert!(close(m.coco.map50, coco), "{}", m.coco.map50);
    assert!(close(m.coco.map50_95, coco));
    assert!(close(m.coco.map75, coco));
}

#[test]
fn iou_thresholds_are_inclusive() {
    // IoU exactly 0.5 counts at 0.5 and at no higher threshold.
    let truths = [truth(0, 0, A)];
    let preds = [pred(0, 0, 0.9, [0.0, 0.0, 10.0, 20.0])];
    let m = evaluate(&preds, &truths, 1).unwrap();
    // AP 1 at the first of ten thresholds (the trapezoid loses half a step at recall 1).
    assert!(close(m.map50, 0.995), "{}", m.map50);
    assert!(close(m.map50_95, 0.0995), "{}", m.map50_95);
    assert!(close(m.coco.map50, 1.0));
    assert!(close(m.coco.map50_95, 0.1));
}

#[test]
fn best_iou_truth_is_claimed_and_classes_never_match() {
    // The 0.9 prediction overlaps both truths and must take the better one (B2), leaving A2
    // to the 0.8 prediction; the class-1 prediction on A2 is a false positive for class 1.
    let a2 = [0.0, 0.0, 10.0, 12.0];
    let b2 = [0.0, 0.0, 10.0, 11.0];
    let truths = [truth(0, 0, a2), truth(0, 0, b2)];
    let preds = [
        pred(0, 0, 0.9, [0.0, 0.0, 10.0, 11.0]),
        pred(0, 0, 0.8, [0.0, 0.0, 10.0, 12.0]),
        pred(0, 1, 0.95, a2),
    ];
    let m = evaluate(&preds, &truths, 2).unwrap();
    assert_eq!(m.classes.len(), 1, "class 1 has no truth");
    assert!(close(m.classes[0].ap50_95, 0.995), "{:?}", m.classes[0]);
    assert!(close(m.coco.map50_95, 1.0));
}

#[test]
fn no_predictions() {
    let truths = [truth(0, 0, A), truth(1, 0, B), truth(1, 2, B)];
    let m = evaluate(&[], &truths, 3).unwrap();
    assert_all_zero(&m);
    let summary: Vec<_> = m
        .classes
        .iter()
        .map(|c| (c.class, c.truths, c.images))
        .collect();
    assert_eq!(summary, vec![(0, 2, 2), (2, 1, 1)]);
}

#[test]
fn no_truths() {
    let preds = [pred(0, 0, 0.9, A), pred(3, 1, 0.5, B)];
    let m = evaluate(&preds, &[], 2).unwrap();
    assert_all_zero(&m);
    assert!(m.classes.is_empty());
    let empty = evaluate(&[], &[], 0).unwrap();
    assert_all_zero(&empty);
}

#[test]
fn predictions_of_classes_without_truth_are_ignored() {
    let truths = [truth(0, 0, A), truth(1, 0, B)];
    let preds = vec![
        pred(0, 0, 0.9, A),
        pred(1, 0, 0.4, [20.0, 21.0, 30.0, 33.0]),
    ];
    let base = evaluate(&preds, &truths, 3).unwrap();
    let mut more = preds.clone();
    more.extend([pred(0, 2, 0.99, A), pred(2, 1, 0.95, B)]);
    assert_eq!(evaluate(&more, &truths, 3).unwrap(), base);
}

#[test]
fn result_does_not_depend_on_prediction_order() {
    let truths = [truth(0, 0, A), truth(0, 1, B), truth(1, 0, B)];
    let mut preds = vec![
        pred(0, 0, 0.9, [1.0, 0.0, 11.0, 10.0]),
        pred(0, 0, 0.3, A),
        pred(0, 1, 0.6, [20.0, 22.0, 30.0, 31.0]),
        pred(1, 0, 0.8, [25.0, 20.0, 35.0, 30.0]),
        pred(1, 0, 0.7, B),
        pred(1, 1, 0.75, A),
    ];
    let m = evaluate(&preds, &truths, 2).unwrap();
    preds.reverse();
    assert_eq!(evaluate(&preds, &truths, 2).unwrap(), m);
}

#[test]
fn invalid_input_is_rejected() {
    let t = [truth(0, 0, A)];
    let err = evaluate(&[pred(0, 0, f32::NAN, A)], &t, 1).unwrap_err();
    assert_eq!(err, EvalError::NonFiniteScore { index: 0 });
    assert_eq!(
        err.to_string(),
        "prediction 0 has a score that is not finite"
    );
    let err = evaluate(&[pred(0, 0, 0.5, A), pred(0, 1, 0.5, A)], &t, 1).unwrap_err();
    assert_eq!(
        err,
        EvalError::ClassOutOfRange {
            kind: "prediction",
            index: 1,
            class: 1,
            num_classes: 1
        }
    );
    let err = evaluate(&[], &[truth(0, 0, [0.0, f32::INFINITY, 1.0, 1.0])], 1).unwrap_err();
    assert_eq!(
        err,
        EvalError::NonFiniteBox {
            kind: "truth",
            index: 0
        }
    );
    assert!(evaluate(&[], &t, 0).is_err());
}

#[test]
fn metrics_serialize() {
    let m = evaluate(&[pred(0, 0, 0.9, A)], &[truth(0, 0, A)], 1).unwrap();
    let json = serde_json::to_value(&m).unwrap();
    assert_eq!(json["classes"][0]["truths"], 1);
    assert!(json["coco"]["map50_95"].is_number());
}

/// The curves kept for plots: the hand-checked case above, read back from them.
#[test]
fn curves_behind_the_numbers() {
    let truths = [truth(0, 0, A), truth(0, 0, B), truth(1, 1, A)];
    let preds = [pred(0, 0, 0.9, A), pred(0, 0, 0.8, A), pred(0, 0, 0.7, B)];
    let m = evaluate(&preds, &truths, 2).unwrap();
    let curves = &m.curves;
    assert_eq!(curves.points.len(), 1000);
    assert_eq!(curves.classes.len(), 2, "one per class with ground truth");
    let class0 = &curves.classes[0];
    assert!(close(class0.ap50, m.classes[0].ap50));
    // Precision envelope against recall: 1 up to recall 1/2, 2/3 after it.
    assert!(close(class0.pr[100], 1.0));
    assert!(close(class0.pr[900], 2.0 / 3.0));
    // Against confidence, interpolated between the detections' scores: between 0.9 and 0.8
    // recall stays 1/2 and precision falls from 1 to 1/2; above 0.9 nothing is detected
    // (recall 0, precision 1, Ultralytics' values left of the first score).
    let at = |c: f64| (c * 999.0).round() as usize;
    let (p, r) = (class0.precision[at(0.85)], class0.recall[at(0.85)]);
    assert!(close(r, 0.5));
    assert!(p > 0.7 && p < 0.8, "{p}");
    assert!(close(class0.f1[at(0.85)], 2.0 * p * r / (p + r + 1e-16)));
    assert_eq!(class0.recall[at(0.95)], 0.0);
    assert_eq!(class0.precision[at(0.95)], 1.0);
    // Class 1 has no detection: every curve is 0.
    let class1 = &curves.classes[1];
    assert!(class1.pr.iter().chain(&class1.f1).all(|&v| v == 0.0));
    // All classes: the mean, and smoothing keeps the length.
    let mean_pr = curves.mean(|c| &c.pr);
    assert!(close(mean_pr[100], 0.5));
    assert_eq!(curves.smoothed_mean(|c| &c.f1, 0.05).len(), 1000);
}
