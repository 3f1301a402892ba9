//! Validation: losses, NMS and mAP of a model over a cache.

use fusekit_detect::{Detection, DetectionLoss, Detector, NmsOptions, non_max_suppression};
use fusekit_eval::{ConfusionMatrix, Metrics, Prediction, Truth, evaluate};
use fusekit_loader::{Batch, Loader};
use fusekit_plots::{LabelBox, MAX_TILES, PICTURE_CONF};
use tch::Kind;

use crate::TrainError;
use crate::feed::Feed;
use crate::plots::truth_box;

/// What one validation pass measured.
#[derive(Debug, Clone)]
pub struct Validation {
    /// Precision, recall and mAP as Ultralytics reports them (plus COCO's numbers and the
    /// curves).
    pub metrics: Metrics,
    /// Predicted against true classes, as Ultralytics' validation counts them.
    pub confusion: ConfusionMatrix,
    /// Box, class and DFL losses, mean over batches.
    pub loss: [f64; 3],
    /// Images evaluated.
    pub images: usize,
    /// The first images of the first batch, for pictures; `None` for an empty cache.
    pub first_batch: Option<FirstBatch>,
}

/// The first images of a validation batch (at most [`MAX_TILES`]) with their ground truth and
/// their predictions above [`PICTURE_CONF`], boxes normalised to the square image.
#[derive(Debug, Clone)]
pub struct FirstBatch {
    /// Side of the square images.
    pub imgsz: usize,
    /// Planes per image (3 RGB + IR).
    pub planes: usize,
    /// The pixels, channel first.
    pub images: Vec<u8>,
    /// Ground-truth boxes.
    pub truths: Vec<LabelBox>,
    /// Predicted boxes, with scores.
    pub predictions: Vec<LabelBox>,
}

impl FirstBatch {
    /// The first images of `batch` and their `detections` (pixel corners in the batch's
    /// square images).
    fn of(batch: &Batch, detections: &[Vec<Detection>]) -> Self {
        let shown = batch.len().min(MAX_TILES);
        let bytes = shown * batch.planes * batch.imgsz * batch.imgsz;
        let size = batch.imgsz as f32;
        let truths = batch
            .boxes
            .iter()
            .filter(|b| (b.image as usize) < shown)
            .map(truth_box)
            .collect();
        let predictions = detections
            .iter()
            .take(shown)
            .enumerate()
            .flat_map(|(image, found)| {
                found
                    .iter()
                    .filter(|d| d.score > PICTURE_CONF)
                    .map(move |d| {
                        let [x1, y1, x2, y2] = d.bbox;
                        LabelBox {
                            image,
                            class: d.class,
                            x: (x1 + x2) / 2.0 / size,
                            y: (y1 + y2) / 2.0 / size,
                            w: (x2 - x1) / size,
                            h: (y2 - y1) / size,
                            score: Some(d.score),
                        }
                    })
            })
            .collect();
        FirstBatch {
            imgsz: batch.imgsz,
            planes: batch.planes,
            images: batch.images[..bytes].to_vec(),
            truths,
            predictions,
        }
    }
}

/// Validates `model` in eval mode on every batch of `loader` (no augmentation, fixed order)
/// with Ultralytics' validation NMS settings.
pub fn validate(
    model: &Detector,
    loader: &Loader,
    feed: &Feed,
    loss: &DetectionLoss,
    options: &NmsOptions,
) -> Result<Validation, TrainError> {
    let num_classes = model.config().names.len();
    let mut predictions = Vec::new();
    let mut truths = Vec::new();
    let mut loss_sum = [0.0; 3];
    let mut batches = 0usize;
    let mut images = 0usize;
    let mut first_batch = None;
    // Each batch's copy to the device starts while the previous batch computes.
    for staged in feed.ahead(loader.epoch(0)) {
        let fed = staged?.into_fed();
        let batch = fed.batch();
        let tensors = fed.tensors();
        let size = batch.imgsz as f32;
        let input = tensors.images.to_kind(Kind::Float) / 255.0;
        let (parts, detections) = tch::no_grad(|| {
            let outputs = model.forward_t(&input, false);
            let parts = loss.compute(&outputs, &tensors.targets).map(|l| l.parts);
            let detections = non_max_suppression(&model.decode(&outputs), options);
            (parts, detections)
        });
        let parts = parts?;
        for (sum, part) in loss_sum.iter_mut().zip(parts) {
            *sum += part;
        }
        batches += 1;
        if first_batch.is_none() {
            first_batch = Some(FirstBatch::of(batch, &detections));
        }
        for (i, image_detections) in detections.iter().enumerate() {
            predictions.extend(image_detections.iter().map(|d| Prediction {
                image: images + i,
                class: d.class,
                score: d.score,
                bbox: d.bbox,
            }));
        }
        truths.extend(batch.boxes.iter().map(|b| Truth {
            image: images + b.image as usize,
            class: b.class,
            bbox: [
                (b.x - b.w / 2.0) * size,
                (b.y - b.h / 2.0) * size,
                (b.x + b.w / 2.0) * size,
                (b.y + b.h / 2.0) * size,
            ],
        }));
        images += batch.len();
    }
    let invalid = |e: fusekit_eval::EvalError| TrainError::Numeric(format!("validation: {e}"));
    let metrics = evaluate(&predictions, &truths, num_classes).map_err(invalid)?;
    let confusion = ConfusionMatrix::new(&predictions, &truths, num_classes).map_err(invalid)?;
    let mean = |s: f64| {
        if batches == 0 {
            0.0
        } else {
            s / batches as f64
        }
    };
    Ok(Validation {
        metrics,
        confusion,
        loss: loss_sum.map(mean),
        images,
        first_batch,
    })
}
