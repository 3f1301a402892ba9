//! The v8 loss on hand-worked cases: CIoU, DFL, the task-aligned assigner and whole batches
//! with and without boxes.

use fusekit_detect::{
    Assigner, DetectionLoss, Detector, Fusion, LossError, ModelConfig, ModelScale, REG_MAX, ciou,
    distribution_focal_loss, make_anchors,
};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

fn boxes(rows: &[[f32; 4]]) -> Tensor {
    Tensor::from_slice(rows.as_flattened()).view([rows.len() as i64, 4])
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

/// CIoU computed by hand in f64 from the paper's definition.
fn ciou_by_hand(a: [f64; 4], b: [f64; 4]) -> f64 {
    let (w1, h1, w2, h2) = (a[2] - a[0], a[3] - a[1], b[2] - b[0], b[3] - b[1]);
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let iou = iw * ih / (w1 * h1 + w2 * h2 - iw * ih);
    let cw = a[2].max(b[2]) - a[0].min(b[0]);
    let ch = a[3].max(b[3]) - a[1].min(b[1]);
    let dx = (b[0] + b[2] - a[0] - a[2]) / 2.0;
    let dy = (b[1] + b[3] - a[1] - a[3]) / 2.0;
    let v = 4.0 / std::f64::consts::PI.powi(2) * ((w2 / h2).atan() - (w1 / h1).atan()).powi(2);
    let aspect = if v == 0.0 {
        0.0
    } else {
        v * v / (v - iou + 1.0)
    };
    iou - ((dx * dx + dy * dy) / (cw * cw + ch * ch) + aspect)
}

#[test]
fn ciou_matches_hand_computation() {
    tch::set_num_threads(1);
    let cases = [
        ([0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0]),
        ([0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]), // 1/7 - 1/9
        ([0.0, 0.0, 4.0, 2.0], [0.0, 0.0, 2.0, 4.0]), // aspect term
        ([0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 7.0, 9.0]), // disjoint: negative
    ];
    let a = boxes(&cases.map(|(a, _)| a.map(|v| v as f32)));
    let b = boxes(&cases.map(|(_, b)| b.map(|v| v as f32)));
    let got = values(&ciou(&a, &b));
    for (i, (x, y)) in cases.iter().enumerate() {
        let expected = ciou_by_hand(*x, *y);
        assert!(
            (got[i] - expected).abs() < 1e-5,
            "case {i}: {} vs {expected}",
            got[i]
        );
    }
    assert!((got[1] - (1.0 / 7.0 - 1.0 / 9.0)).abs() < 1e-5);
    assert!(got[3] < 0.0);
}

#[test]
fn dfl_is_cross_entropy_to_the_two_nearest_bins() {
    tch::set_num_threads(1);
    // Uniform logits: every bin has probability 1/16, so the loss is ln 16 for any target.
    let uniform = Tensor::zeros([4, REG_MAX], CPU);
    let targets = Tensor::from_slice(&[0.0f32, 3.5, 7.25, 20.0]).view([1, 4]);
    let loss = values(&distribution_focal_loss(&uniform, &targets));
    assert_eq!(loss.len(), 1);
    assert!((loss[0] - 16f64.ln()).abs() < 1e-5, "{loss:?}");

    // A confident distribution on bin 3 costs ~0 for target 3.0 and ~ln(2)-ish mass for 3.5.
    let mut peaked = vec![-50f32; 16];
    peaked[3] = 50.0;
    let logits = Tensor::from_slice(&peaked)
        .view([1, REG_MAX])
        .repeat([4, 1]);
    let exact = Tensor::from_slice(&[3.0f32; 4]).view([1, 4]);
    assert!(values(&distribution_focal_loss(&logits, &exact))[0] < 1e-6);
    let half = Tensor::from_slice(&[3.5f32; 4]).view([1, 4]);
    let cost = values(&distribution_focal_loss(&logits, &half))[0];
    assert!(
        (cost - 50.0).abs() < 1e-3,
        "half weight on a bin with log-probability -100: {cost}"
    );
}

/// Level tensors of a 64x64 input (8x8, 4x4, 2x2 cells), only their shapes matter.
fn levels_64() -> Vec<Tensor> {
    [8, 4, 2]
        .map(|s| Tensor::zeros([1, 1, s, s], CPU))
        .into_iter()
        .collect()
}

struct Assigned {
    foreground: Vec<i64>,
    scores: Vec<f64>,
    boxes: Vec<f64>,
}

/// Assigns one image whose every anchor predicts `pred_box` with probability 0.5 for two
/// classes, against `gts` (class, xyxy pixels).
fn assign_one(pred_box: [f32; 4], gts: &[(f32, [f32; 4])]) -> Assigned {
    let (anchors, strides) = make_anchors(&levels_64(), Device::Cpu);
    let n = anchors.size()[0];
    let scores = Tensor::full([1, n, 2], 0.5, CPU);
    let pred = Tensor::from_slice(&pred_box)
        .view([1, 1, 4])
        .repeat([1, n, 1]);
    let labels: Vec<f32> = gts.iter().map(|g| g.0).collect();
    let gt_boxes: Vec<[f32; 4]> = gts.iter().map(|g| g.1).collect();
    let m = gts.len() as i64;
    let labels = Tensor::from_slice(&labels).view([1, m, 1]);
    let gt = boxes(&gt_boxes).view([1, m, 4]);
    let mask = Tensor::ones([1, m, 1], CPU);
    let a = Assigner::default().assign(&scores, &pred, &(&anchors * &strides), &labels, &gt, &mask);
    let fg = a.foreground.squeeze_dim(0).nonzero().squeeze_dim(1);
    Assigned {
        foreground: Vec::try_from(&fg).unwrap(),
        scores: values(&a.scores),
        boxes: values(&a.boxes),
    }
}

fn anchor_centres() -> Vec<(f64, f64)> {
    let (anchors, strides) = make_anchors(&levels_64(), Device::Cpu);
    let xy = values(&(anchors * strides));
    xy.chunks(2).map(|c| (c[0], c[1])).collect()
}

#[test]
fn assigner_takes_the_top_10_anchors_inside_the_box() {
    tch::set_num_threads(1);
    let gt = [16.0, 16.0, 48.0, 48.0];
    // Every anchor predicts the box exactly, so the metric ties inside the box: 20 anchor
    // centres lie strictly inside (16 of stride 8, 4 of stride 16), top-k keeps 10.
    let a = assign_one(gt, &[(1.0, gt)]);
    assert_eq!(a.foreground.len(), 10);
    let centres = anchor_centres();
    for &i in &a.foreground {
        let (x, y) = centres[i as usize];
        assert!(
            x > 16.0 && x < 48.0 && y > 16.0 && y < 48.0,
            "anchor {i} at {x},{y}"
        );
        // Class 1 target = normalised alignment = best CIoU of the gt = 1; class 0 stays 0.
        assert!((a.scores[i as usize * 2 + 1] - 1.0).abs() < 1e-4);
        assert_eq!(a.scores[i as usize * 2], 0.0);
        let b = &a.boxes[i as usize * 4..i as usize * 4 + 4];
        assert_eq!(b, [16.0, 16.0, 48.0, 48.0]);
    }
    let total: f64 = a.scores.iter().sum();
    assert!((total - 10.0).abs() < 1e-3, "{total}");
}

#[test]
fn assigner_gives_a_box_smaller_than_a_cell_its_nearby_anchors() {
    tch::set_num_threads(1);
    // A 2x2 pixel object between stride-8 centres: widened to 16x16 about its centre it
    // covers four stride-8 centres (28, 36)^2 and one stride-16 centre (24, 24).
    let tiny = [30.0, 30.0, 32.0, 32.0];
    let a = assign_one(tiny, &[(0.0, tiny)]);
    assert_eq!(a.foreground.len(), 5, "{:?}", a.foreground);
}

#[test]
fn assigner_handles_boxes_on_the_border_and_no_boxes() {
    tch::set_num_threads(1);
    let corner = [0.0, 0.0, 10.0, 10.0];
    let a = assign_one(corner, &[(0.0, corner), (1.0, [40.0, 0.0, 64.0, 64.0])]);
    assert!(!a.foreground.is_empty());
    let centres = anchor_centres();
    assert!(a.foreground.iter().any(|&i| centres[i as usize].0 < 16.0));
    assert!(a.scores.iter().all(|s| s.is_finite()));

    let (anchors, strides) = make_anchors(&levels_64(), Device::Cpu);
    let n = anchors.size()[0];
    let none = Assigner::default().assign(
        &Tensor::full([2, n, 3], 0.5, CPU),
        &Tensor::zeros([2, n, 4], CPU),
        &(&anchors * &strides),
        &Tensor::zeros([2, 0, 1], CPU),
        &Tensor::zeros([2, 0, 4], CPU),
        &Tensor::zeros([2, 0, 1], CPU),
    );
    assert_eq!(none.foreground.sum(Kind::Int64).int64_value(&[]), 0);
    assert_eq!(none.scores.sum(Kind::Float).double_value(&[]), 0.0);
}

fn small_model(fusion: Fusion) -> (VarStore, Detector) {
    tch::manual_seed(3);
    let vs = VarStore::new(Device::Cpu);
    let config = ModelConfig {
        scale: ModelScale::N,
        fusion,
        names: vec!["person".into(), "car".into()],
        ir_channels: 1,
    };
    let model = Detector::new(&vs.root(), config);
    (vs, model)
}

#[test]
fn batches_without_boxes_have_class_loss_only() {
    tch::set_num_threads(1);
    let (_vs, model) = small_model(Fusion::Mid);
    let images = Tensor::rand([2, 4, 64, 64], CPU);
    let outputs = model.forward_t(&images, true);
    let loss = DetectionLoss::default()
        .compute(&outputs, &Tensor::zeros([0, 6], CPU))
        .unwrap();
    assert_eq!(loss.parts[0], 0.0);
    assert_eq!(loss.parts[2], 0.0);
    assert!(loss.parts[1] > 0.0 && loss.parts[1].is_finite());
    loss.total.backward();

    // One image with a box, one without: all three parts are positive and finite.
    let outputs = model.forward_t(&images, true);
    let targets = Tensor::from_slice(&[1f32, 1.0, 0.5, 0.5, 0.5, 0.5]).view([1, 6]);
    let loss = DetectionLoss::default()
        .compute(&outputs, &targets)
        .unwrap();
    assert!(
        loss.parts.iter().all(|p| *p > 0.0 && p.is_finite()),
        "{:?}",
        loss.parts
    );
    let sum: f64 = loss.parts.iter().sum();
    let total = loss.total.double_value(&[]);
    assert!(
        (total - sum * 2.0).abs() < 1e-4 * total,
        "total = parts x batch"
    );
}

#[test]
fn late_fusion_sums_both_detectors_and_reports_their_mean() {
    tch::set_num_threads(1);
    let (_vs, model) = small_model(Fusion::Late);
    let images = Tensor::rand([1, 4, 64, 64], CPU);
    let outputs = model.forward_t(&images, true);
    let targets = Tensor::from_slice(&[0f32, 0.0, 0.3, 0.3, 0.2, 0.4]).view([1, 6]);
    let loss = DetectionLoss::default();
    let whole = loss.compute(&outputs, &targets).unwrap();
    let each: Vec<Vec<f64>> = outputs
        .iter()
        .map(|levels| values(&loss.components(levels, &targets).unwrap()))
        .collect();
    for (part, reported) in whole.parts.iter().enumerate() {
        let mean = (each[0][part] + each[1][part]) / 2.0;
        assert!((reported - mean).abs() < 1e-5);
    }
    let sum: f64 = each.iter().flatten().sum();
    assert!((whole.total.double_value(&[]) - sum).abs() < 1e-4);
}

#[test]
fn a_class_id_outside_the_model_is_a_clear_error_before_any_indexing() {
    tch::set_num_threads(1);
    let (_vs, model) = small_model(Fusion::Mid);
    let images = Tensor::rand([2, 4, 64, 64], CPU);
    let outputs = model.forward_t(&images, false);
    let loss = DetectionLoss::default();
    // Two classes (person, car): ids 2 and -1 name none of them, 0 and 1 are fine.
    let targets = |class: f32| {
        Tensor::from_slice(&[
            0f32, 1.0, 0.5, 0.5, 0.2, 0.2, 1.0, class, 0.3, 0.3, 0.2, 0.2,
        ])
        .view([2, 6])
    };
    for bad in [2.0, 7.0, -1.0] {
        let error = loss.compute(&outputs, &targets(bad)).unwrap_err();
        assert_eq!(
            error,
            LossError::ClassOutOfRange {
                row: 1,
                image: 1,
                class: bad,
                nc: 2
            }
        );
        let message = error.to_string();
        assert!(
            message.contains(&format!("class id {bad}")) && message.contains("0..2"),
            "{message}"
        );
        // The other entry points check the same way.
        assert_eq!(
            loss.assignment(&outputs[0], &targets(bad)).unwrap_err(),
            error
        );
    }
    assert!(loss.compute(&outputs, &targets(1.0)).is_ok());
}
