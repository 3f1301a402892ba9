//! From decoded predictions to detections: confidence filter, class-aware NMS, `max_det`.
//! Mapping letterboxed boxes back to image pixels is `fusekit_loader::Letterbox`'s.

use serde::Serialize;
use tch::{Device, Kind, Tensor};

/// One detection, xyxy in the coordinates of the tensor it came from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Detection {
    /// Corners x1, y1, x2, y2.
    pub bbox: [f32; 4],
    /// Confidence (class probability).
    pub score: f32,
    /// Class id.
    pub class: u32,
}

/// Settings of [`non_max_suppression`]; the defaults are Ultralytics' validation settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NmsOptions {
    /// Minimum class probability of a candidate.
    pub conf: f32,
    /// IoU above which a lower-scoring box of the same class is suppressed.
    pub iou: f32,
    /// Detections kept per image.
    pub max_det: usize,
    /// Candidates (highest scores) considered per image before NMS.
    pub max_candidates: usize,
    /// One candidate per (anchor, class) above `conf` rather than per anchor (its best class).
    pub multi_label: bool,
}

impl Default for NmsOptions {
    fn default() -> Self {
        Self {
            conf: 0.001,
            iou: 0.7,
            max_det: 300,
            max_candidates: 30_000,
            multi_label: true,
        }
    }
}

impl NmsOptions {
    /// Prediction settings: conf 0.25, IoU 0.7, best class per anchor.
    pub fn predict() -> Self {
        Self {
            conf: 0.25,
            multi_label: false,
            ..Self::default()
        }
    }
}

/// Detections per image from decoded predictions `[batch, 4 + nc, anchors]` (centre-xywh).
pub fn non_max_suppression(predictions: &Tensor, options: &NmsOptions) -> Vec<Vec<Detection>> {
    let predictions = predictions.to_device(Device::Cpu).to_kind(Kind::Float);
    let batch = predictions.size()[0];
    (0..batch)
        .map(|i| image_detections(&predictions.get(i).transpose(0, 1), options))
        .collect()
}

fn image_detections(rows: &Tensor, options: &NmsOptions) -> Vec<Detection> {
    let nc = rows.size()[1] - 4;
    let boxes = rows.narrow(1, 0, 4);
    let probabilities = rows.narrow(1, 4, nc);
    let (anchor, class, score) = if options.multi_label {
        let hits = probabilities.gt(options.conf as f64).nonzero();
        let (a, c) = (hits.select(1, 0), hits.select(1, 1));
        let s = probabilities.index(&[Some(&a), Some(&c)]);
        (a, c, s)
    } else {
        let (s, c) = probabilities.max_dim(1, false);
        let keep = s.gt(options.conf as f64).nonzero().squeeze_dim(1);
        (
            keep.shallow_clone(),
            c.index_select(0, &keep),
            s.index_select(0, &keep),
        )
    };
    let mut order = score.argsort(0, true);
    if order.size()[0] > options.max_candidates as i64 {
        order = order.narrow(0, 0, options.max_candidates as i64);
    }
    let anchor = anchor.index_select(0, &order);
    let class = class.index_select(0, &order);
    let score = score.index_select(0, &order);
    let xywh = boxes.index_select(0, &anchor);
    let centre = xywh.narrow(1, 0, 2);
    let half = xywh.narrow(1, 2, 2) / 2.0;
    let xyxy = Tensor::cat(&[&centre - &half, &centre + &half], 1);
    let corners: Vec<f32> = Vec::try_from(xyxy.flatten(0, -1)).unwrap_or_default();
    let corners: Vec<[f32; 4]> = corners
        .chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect();
    let scores: Vec<f32> = Vec::try_from(&score).unwrap_or_default();
    let classes: Vec<u32> = Vec::<i64>::try_from(&class)
        .unwrap_or_default()
        .into_iter()
        .map(|c| c as u32)
        .collect();
    fusekit_eval::nms(&corners, &scores, &classes, options.iou, options.max_det)
        .into_iter()
        .map(|k| Detection {
            bbox: corners[k],
            score: scores[k],
            class: classes[k],
        })
        .collect()
}
