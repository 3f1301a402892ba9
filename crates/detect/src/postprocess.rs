//! From decoded predictions to detections: confidence filter, class-aware NMS, `max_det`, and
//! mapping letterboxed boxes back to the original image.

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

/// How an image was fitted into a square network input: scaled by `gain` per axis, then
/// shifted by `pad` (left, top).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    /// Scale from original to network pixels along x and y: the stored size over the original
    /// size. The cache rounds the short side up to whole pixels, so the two can differ a little
    /// (200 x 120 at 64 is stored as 64 x 39: 0.32 along x, 0.325 along y).
    pub gain: [f32; 2],
    /// Left and top padding in network pixels.
    pub pad: [f32; 2],
    /// Original width and height.
    pub original: [u32; 2],
}

impl Letterbox {
    /// The letterbox of an `original` (width, height) image stored at `scaled` size (long side
    /// equal to `size`) and centred in a `size` x `size` input, as the cache and loader do.
    pub fn new(original: [u32; 2], scaled: [u32; 2], size: u32) -> Self {
        let gain = [0, 1].map(|i| scaled[i] as f32 / original[i].max(1) as f32);
        let pad = scaled.map(|v| (size.saturating_sub(v) / 2) as f32);
        Self {
            gain,
            pad,
            original,
        }
    }

    /// `bbox` (network pixels) in original image pixels, clipped to the image.
    pub fn to_original(&self, bbox: [f32; 4]) -> [f32; 4] {
        let [w, h] = self.original.map(|v| v as f32);
        let x = |v: f32| ((v - self.pad[0]) / self.gain[0]).clamp(0.0, w);
        let y = |v: f32| ((v - self.pad[1]) / self.gain[1]).clamp(0.0, h);
        [x(bbox[0]), y(bbox[1]), x(bbox[2]), y(bbox[3])]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A box in original pixels as the cache and loader place it in the network input: its
    /// normalised coordinates times the stored size, plus the padding.
    fn forward(original: [u32; 2], scaled: [u32; 2], size: u32, bbox: [f32; 4]) -> [f32; 4] {
        let pad = scaled.map(|v| ((size - v) / 2) as f32);
        std::array::from_fn(|i| {
            let axis = i % 2;
            bbox[i] / original[axis] as f32 * scaled[axis] as f32 + pad[axis]
        })
    }

    fn assert_near(got: [f32; 4], expected: [f32; 4], tolerance: f32) {
        assert!(
            got.iter()
                .zip(expected)
                .all(|(g, e)| (g - e).abs() <= tolerance),
            "{got:?} vs {expected:?}"
        );
    }

    /// (original, stored size at 64 as the cache's `stored_size` gives it): long side 64, the
    /// other rounded up.
    const CASES: [([u32; 2], [u32; 2]); 4] = [
        // Landscape: padding top and bottom; 120 x 0.32 = 38.4 is stored as 39 rows.
        ([200, 120], [64, 39]),
        // Portrait: padding left and right.
        ([120, 200], [39, 64]),
        // An exact fit (no rounding) and an upscaled small image.
        ([640, 480], [64, 48]),
        ([40, 24], [64, 39]),
    ];

    #[test]
    fn boxes_map_back_to_original_pixels_in_portrait_and_landscape() {
        for (original, scaled) in CASES {
            let fit = Letterbox::new(original, scaled, 64);
            let [w, h] = original.map(|v| v as f32);
            let boxes = [
                [0.1 * w, 0.15 * h, 0.4 * w, 0.5 * h],
                [0.55 * w, 0.6 * h, 0.97 * w, 0.9 * h],
                [0.0, 0.0, w, h],
            ];
            for bbox in boxes {
                let network = forward(original, scaled, 64, bbox);
                assert_near(fit.to_original(network), bbox, 0.5);
            }
        }
        // The padding is on the short axis only.
        assert_eq!(Letterbox::new([200, 120], [64, 39], 64).pad, [0.0, 12.0]);
        assert_eq!(Letterbox::new([120, 200], [39, 64], 64).pad, [12.0, 0.0]);
    }

    #[test]
    fn boxes_reaching_into_the_padding_are_clipped_to_the_image() {
        for (original, scaled) in CASES {
            let fit = Letterbox::new(original, scaled, 64);
            let [w, h] = original.map(|v| v as f32);
            // The whole network input, padding included, is the whole image.
            assert_near(
                fit.to_original([-3.0, -3.0, 67.0, 67.0]),
                [0.0, 0.0, w, h],
                0.0,
            );
            // A box crossing the left/top edge keeps its inner corner.
            let inner = [0.5 * w, 0.5 * h];
            let network = forward(original, scaled, 64, [0.0, 0.0, inner[0], inner[1]]);
            let crossing = [network[0] - 5.0, network[1] - 5.0, network[2], network[3]];
            assert_near(
                fit.to_original(crossing),
                [0.0, 0.0, inner[0], inner[1]],
                0.5,
            );
        }
    }
}
