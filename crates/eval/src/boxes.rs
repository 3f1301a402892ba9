//! Box overlap for `[x1, y1, x2, y2]` boxes in pixel coordinates.

/// Intersection over union of two xyxy boxes.
///
/// Uses the torchvision formula `inter / (area_a + area_b - inter)` in `f32` and returns 0
/// when the union is not positive (zero-area boxes) or the result is not finite.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let inter = intersection(a, b);
    let union = area(a) + area(b) - inter;
    let value = inter / union;
    if union > 0.0 && value.is_finite() {
        value
    } else {
        0.0
    }
}

/// IoU as Ultralytics' `box_iou` computes it: `f32`, the same operation order, and `1e-7`
/// added to the union, so that threshold comparisons agree bit for bit.
pub(crate) fn iou_ultralytics(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let inter = intersection(a, b);
    inter / (area(a) + area(b) - inter + 1e-7)
}

/// IoU as pycocotools' `bbIou` computes it: `f64` on `[x, y, w, h]` boxes, 0 unless both
/// overlaps are positive.
pub(crate) fn iou_coco(d: &[f64; 4], g: &[f64; 4]) -> f64 {
    let w = (d[0] + d[2]).min(g[0] + g[2]) - d[0].max(g[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (d[1] + d[3]).min(g[1] + g[3]) - d[1].max(g[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let inter = w * h;
    inter / (d[2] * d[3] + g[2] * g[3] - inter)
}

/// An xyxy box as pycocotools' `[x, y, w, h]` in `f64`.
pub(crate) fn xywh_f64(b: &[f32; 4]) -> [f64; 4] {
    let [x1, y1, x2, y2] = b.map(f64::from);
    [x1, y1, x2 - x1, y2 - y1]
}

fn intersection(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    w * h
}

fn area(b: &[f32; 4]) -> f32 {
    (b[2] - b[0]) * (b[3] - b[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_of_simple_boxes() {
        let a = [0.0, 0.0, 10.0, 10.0];
        assert_eq!(iou(&a, &a), 1.0);
        assert_eq!(iou(&a, &[0.0, 0.0, 10.0, 20.0]), 0.5);
        assert!((iou(&a, &[5.0, 5.0, 15.0, 15.0]) - 25.0 / 175.0).abs() < 1e-7);
        assert_eq!(iou(&a, &[10.0, 0.0, 20.0, 10.0]), 0.0, "touching edges");
        assert_eq!(iou(&a, &[20.0, 20.0, 30.0, 30.0]), 0.0, "disjoint");
    }

    #[test]
    fn iou_of_degenerate_boxes_is_zero() {
        let point = [3.0, 3.0, 3.0, 3.0];
        assert_eq!(iou(&point, &point), 0.0);
        assert_eq!(iou(&point, &[0.0, 0.0, 10.0, 10.0]), 0.0);
        let line = [0.0, 5.0, 10.0, 5.0];
        assert_eq!(iou(&line, &line), 0.0);
        assert_eq!(iou(&[f32::NAN, 0.0, 1.0, 1.0], &[0.0, 0.0, 1.0, 1.0]), 0.0);
    }

    #[test]
    fn iou_is_symmetric() {
        let a = [1.5, 2.0, 40.0, 33.0];
        let b = [10.0, -4.0, 52.5, 20.0];
        assert_eq!(iou(&a, &b), iou(&b, &a));
        assert_eq!(iou_ultralytics(&a, &b), iou_ultralytics(&b, &a));
        let (ca, cb) = (xywh_f64(&a), xywh_f64(&b));
        assert_eq!(iou_coco(&ca, &cb), iou_coco(&cb, &ca));
        assert!((iou_coco(&ca, &cb) - f64::from(iou(&a, &b))).abs() < 1e-6);
    }
}
