//! The YOLOv8 detection loss: task-aligned assignment, CIoU box loss, distribution focal loss
//! and BCE class loss, with Ultralytics' gains and normalisation.

use std::f64::consts::PI;

use tch::{Device, Kind, Reduction, Tensor};

use crate::model::HeadOutputs;
use crate::yolo::{REG_MAX, STRIDES, distances_to_boxes, distribution_to_distances, make_anchors};

/// Complete IoU of paired xyxy boxes `[.., 4]`, `[..]` out (Ultralytics' `bbox_iou` with
/// `CIoU=True`, eps 1e-7). The aspect-ratio weight is computed without gradient.
pub fn ciou(a: &Tensor, b: &Tensor) -> Tensor {
    let eps = 1e-7;
    let a = a.unbind(-1);
    let b = b.unbind(-1);
    let (w1, h1) = (&a[2] - &a[0], &a[3] - &a[1] + eps);
    let (w2, h2) = (&b[2] - &b[0], &b[3] - &b[1] + eps);
    let inter = (a[2].minimum(&b[2]) - a[0].maximum(&b[0])).clamp_min(0.0)
        * (a[3].minimum(&b[3]) - a[1].maximum(&b[1])).clamp_min(0.0);
    let union = &w1 * &h1 + &w2 * &h2 - &inter + eps;
    let iou = &inter / union;
    let cw = a[2].maximum(&b[2]) - a[0].minimum(&b[0]);
    let ch = a[3].maximum(&b[3]) - a[1].minimum(&b[1]);
    let c2 = cw.square() + ch.square() + eps;
    let rho2 =
        ((&b[0] + &b[2] - &a[0] - &a[2]).square() + (&b[1] + &b[3] - &a[1] - &a[3]).square()) / 4.0;
    let v = ((&w2 / &h2).atan() - (&w1 / &h1).atan()).square() * (4.0 / (PI * PI));
    let alpha = {
        let _no_grad = tch::no_grad_guard();
        &v / (&v - &iou + (1.0 + eps))
    };
    iou - (rho2 / c2 + v * alpha)
}

/// Ultralytics' task-aligned assigner: for each ground truth, the `topk` anchors inside it
/// with the highest `score^alpha * ciou^beta`, each anchor kept by its best-overlapping
/// ground truth; soft class targets scaled by the normalised alignment.
#[derive(Debug, Clone, Copy)]
pub struct Assigner {
    /// Candidates per ground truth.
    pub topk: i64,
    /// Exponent of the class score in the alignment metric.
    pub alpha: f64,
    /// Exponent of the CIoU in the alignment metric.
    pub beta: f64,
    /// Ground-truth sides shorter than this (pixels) are widened to it about their centre
    /// when choosing candidate anchors, so that tiny objects still get anchors.
    pub min_side: f64,
}

impl Default for Assigner {
    fn default() -> Self {
        Self {
            topk: 10,
            alpha: 0.5,
            beta: 6.0,
            min_side: STRIDES[1] as f64,
        }
    }
}

/// What the assigner gives each anchor.
#[derive(Debug)]
pub struct Assignment {
    /// Assigned box, xyxy pixels, `[batch, anchors, 4]` (zeros-box 0 for background).
    pub boxes: Tensor,
    /// Soft class targets `[batch, anchors, nc]`.
    pub scores: Tensor,
    /// Foreground anchors `[batch, anchors]` (bool).
    pub foreground: Tensor,
}

impl Assigner {
    /// Assigns anchors. `scores` `[b, a, nc]` are probabilities, `boxes` `[b, a, 4]` and
    /// `anchors` `[a, 2]` in pixels; `gt_labels` `[b, m, 1]`, `gt_boxes` `[b, m, 4]` xyxy
    /// pixels, `gt_mask` `[b, m, 1]` marks real (non-padding) ground truths. Labels must lie
    /// in `0..nc` (unchecked here; [`DetectionLoss`] checks its targets before assigning).
    pub fn assign(
        &self,
        scores: &Tensor,
        boxes: &Tensor,
        anchors: &Tensor,
        gt_labels: &Tensor,
        gt_boxes: &Tensor,
        gt_mask: &Tensor,
    ) -> Assignment {
        let _no_grad = tch::no_grad_guard();
        let size = scores.size();
        let (batch, num_anchors, nc) = (size[0], size[1], size[2]);
        let max_boxes = gt_boxes.size()[1];
        let device = scores.device();
        if max_boxes == 0 {
            return Assignment {
                boxes: boxes.zeros_like(),
                scores: scores.zeros_like(),
                foreground: Tensor::zeros([batch, num_anchors], (Kind::Bool, device)),
            };
        }
        let gt_mask_b = gt_mask.to_kind(Kind::Bool); // [b, m, 1]
        let inside = self.anchors_inside(anchors, gt_boxes, &gt_mask_b); // [b, m, a] bool
        let candidates = inside.logical_and(&gt_mask_b);
        // Alignment metric and CIoU only where an anchor lies inside a real ground truth.
        let index = candidates.nonzero(); // [k, 3]: b, m, a
        let (bi, mi, ai) = (index.select(1, 0), index.select(1, 1), index.select(1, 2));
        let labels = gt_labels
            .squeeze_dim(-1)
            .to_kind(Kind::Int64)
            .index(&[Some(&bi), Some(&mi)]);
        let pair_scores = scores.index(&[Some(&bi), Some(&ai), Some(&labels)]);
        let pair_gt = gt_boxes.index(&[Some(&bi), Some(&mi)]);
        let pair_pred = boxes
            .index(&[Some(&bi), Some(&ai)])
            .to_kind(gt_boxes.kind());
        let pair_overlaps = ciou(&pair_gt, &pair_pred).clamp_min(0.0);
        let pair_align =
            pair_scores.pow_tensor_scalar(self.alpha) * pair_overlaps.pow_tensor_scalar(self.beta);
        let dense = |values: &Tensor| {
            let mut t = Tensor::zeros([batch, max_boxes, num_anchors], (values.kind(), device));
            t.index_put_(&[Some(&bi), Some(&mi), Some(&ai)], values, false)
        };
        let mut overlaps = dense(&pair_overlaps);
        let mut align = dense(&pair_align);

        // Top-k anchors per ground truth; an anchor picked twice by one row is dropped.
        let k = self.topk.min(num_anchors);
        let (_, top) = align.topk(k, -1, true, true);
        let top = top.masked_fill(
            &gt_mask_b.expand([batch, max_boxes, k], false).logical_not(),
            0,
        );
        let mut count = Tensor::zeros([batch, max_boxes, num_anchors], (Kind::Int8, device));
        let _ = count.scatter_add_(-1, &top, &Tensor::ones_like(&top).to_kind(Kind::Int8));
        let count = count.masked_fill(&count.gt(1), 0);
        let mut positive = count * inside.to_kind(Kind::Int8) * gt_mask_b.to_kind(Kind::Int8);

        // An anchor claimed by several ground truths keeps the one it overlaps most.
        let claimed = positive.sum_dim_intlist(-2, false, Kind::Int64); // [b, a]
        let multi = claimed
            .unsqueeze(1)
            .gt(1)
            .expand([batch, max_boxes, num_anchors], false);
        let best = overlaps.argmax(1, false); // [b, a]
        let is_best = Tensor::zeros_like(&positive).scatter_value(1, &best.unsqueeze(1), 1);
        positive = is_best.where_self(&multi, &positive);
        let (foreground, gt_index) = positive.max_dim(-2, false); // [b, a]

        // Targets of each anchor from its ground truth.
        let offsets = Tensor::arange(batch, (Kind::Int64, device)).unsqueeze(-1) * max_boxes;
        let flat_index = &gt_index + offsets;
        let target_labels = gt_labels
            .to_kind(Kind::Int64)
            .flatten(0, -1)
            .index(&[Some(&flat_index)])
            .clamp_min(0);
        let target_boxes = gt_boxes.view([-1, 4]).index(&[Some(&flat_index)]);
        let foreground = foreground.gt(0);
        let one_hot = target_labels.one_hot(nc).to_kind(Kind::Float)
            * foreground.unsqueeze(-1).to_kind(Kind::Float);

        // Normalise: each ground truth's best anchor gets its best CIoU as target score.
        let positive_f = positive.to_kind(align.kind());
        align *= &positive_f;
        let max_align = align.amax([-1], true);
        overlaps *= positive_f;
        let max_overlap = overlaps.amax([-1], true);
        let normalised = (align * max_overlap / (max_align + 1e-9))
            .amax([-2], false)
            .unsqueeze(-1);
        Assignment {
            boxes: target_boxes,
            scores: one_hot * normalised,
            foreground,
        }
    }

    /// `[b, m, a]`: anchor centres strictly inside each ground truth (after widening sides
    /// shorter than `min_side`).
    fn anchors_inside(&self, anchors: &Tensor, gt_boxes: &Tensor, gt_mask: &Tensor) -> Tensor {
        let corners = gt_boxes.unbind(-1);
        let centre_x = (&corners[0] + &corners[2]) / 2.0;
        let centre_y = (&corners[1] + &corners[3]) / 2.0;
        let mask = gt_mask.squeeze_dim(-1);
        let widen = |side: Tensor| {
            let small = side.lt(self.min_side).logical_and(&mask);
            side.masked_fill(&small, self.min_side)
        };
        let w = widen(&corners[2] - &corners[0]);
        let h = widen(&corners[3] - &corners[1]);
        let eps = 1e-9;
        let ax = anchors.select(1, 0).view([1, 1, -1]);
        let ay = anchors.select(1, 1).view([1, 1, -1]);
        let left = (&centre_x - &w / 2.0).unsqueeze(-1);
        let right = (&centre_x + &w / 2.0).unsqueeze(-1);
        let top = (&centre_y - &h / 2.0).unsqueeze(-1);
        let bottom = (&centre_y + &h / 2.0).unsqueeze(-1);
        (&ax - left)
            .gt(eps)
            .logical_and(&(&ay - top).gt(eps))
            .logical_and(&(right - &ax).gt(eps))
            .logical_and(&(bottom - &ay).gt(eps))
    }
}

/// Distribution focal loss of DFL logits `[n, 16]` against continuous targets `[n / 4, 4]`
/// (in cells, clamped to 0..14.99): cross-entropy to the two nearest bins weighted by
/// proximity, averaged over the four sides, `[n / 4, 1]` out.
pub fn distribution_focal_loss(logits: &Tensor, targets: &Tensor) -> Tensor {
    let targets = targets.clamp(0.0, (REG_MAX - 1) as f64 - 0.01);
    let left = targets.to_kind(Kind::Int64);
    let right = &left + 1;
    let weight_left = right.to_kind(targets.kind()) - &targets;
    let weight_right = 1.0 - &weight_left;
    let log_p = logits.log_softmax(1, Kind::Float);
    let shape = targets.size();
    let pick = |bins: &Tensor| {
        log_p
            .gather(1, &bins.view([-1, 1]), false)
            .view(shape.as_slice())
    };
    let picked: Tensor = pick(&left) * weight_left + pick(&right) * weight_right;
    -picked.mean_dim(-1, true, Kind::Float)
}

/// Loss gains (Ultralytics' `box`, `cls`, `dfl`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossGains {
    /// CIoU box loss gain.
    pub box_gain: f64,
    /// BCE class loss gain.
    pub cls_gain: f64,
    /// DFL gain.
    pub dfl_gain: f64,
}

impl Default for LossGains {
    fn default() -> Self {
        Self {
            box_gain: 7.5,
            cls_gain: 0.5,
            dfl_gain: 1.5,
        }
    }
}

/// Targets the loss cannot be computed for.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LossError {
    /// A target's class id is not an integer in `0..nc`. Checked on the host before any
    /// indexing by class: on CUDA, libtorch skips its range checks and an out-of-range class
    /// id would end in a device-side assert that poisons the CUDA context.
    #[error(
        "target {row} (image {image}) has class id {class}, not in 0..{nc}: the model has \
         {nc} classes (do the labels and the model's `names` agree?)"
    )]
    ClassOutOfRange {
        /// Row of the targets tensor.
        row: usize,
        /// Image index in the batch.
        image: usize,
        /// The class id as given.
        class: f32,
        /// Classes of the model.
        nc: i64,
    },
}

/// One batch's loss.
#[derive(Debug)]
pub struct Loss {
    /// What to backpropagate: (box + cls + dfl) x batch size, as Ultralytics does; summed
    /// over detectors for late fusion.
    pub total: Tensor,
    /// Box, class and DFL losses after gains, per image (detached; averaged over detectors
    /// for late fusion so they read like a single detector's).
    pub parts: [f64; 3],
}

/// The v8 detection loss.
#[derive(Debug, Clone, Copy, Default)]
pub struct DetectionLoss {
    /// Loss gains.
    pub gains: LossGains,
    /// The assigner.
    pub assigner: Assigner,
}

impl DetectionLoss {
    /// The loss of `outputs` against `targets` `[n, 6]` (image index, class, normalised
    /// centre x, y, w, h), on the outputs' device.
    /// Targets it cannot use (a class id outside `0..nc`) are an error on every device.
    pub fn compute(&self, outputs: &HeadOutputs, targets: &Tensor) -> Result<Loss, LossError> {
        let mut total: Option<Tensor> = None;
        let mut parts = [0.0; 3];
        for levels in outputs {
            let (t, p) = self.compute_one(levels, targets)?;
            total = Some(match total {
                Some(sum) => sum + t,
                None => t,
            });
            for (acc, v) in parts.iter_mut().zip(p) {
                *acc += v / outputs.len() as f64;
            }
        }
        Ok(Loss {
            total: total.unwrap_or_else(|| Tensor::zeros([], (Kind::Float, Device::Cpu))),
            parts,
        })
    }

    /// Loss components (after gains) of one detector's levels, as a `[3]` tensor, and the
    /// backpropagated total.
    fn compute_one(
        &self,
        levels: &[Tensor],
        targets: &Tensor,
    ) -> Result<(Tensor, [f64; 3]), LossError> {
        let components = self.components(levels, targets)?;
        let batch = levels[0].size()[0] as f64;
        let parts: Vec<f64> = Vec::try_from(components.detach().to_kind(Kind::Double))
            .unwrap_or_else(|_| vec![f64::NAN; 3]);
        Ok((
            components.sum(Kind::Float) * batch,
            [parts[0], parts[1], parts[2]],
        ))
    }

    /// `[box, cls, dfl]` after gains for one detector's level outputs.
    /// Errors as [`DetectionLoss::compute`] does.
    /// The loss is computed in f32 whatever the head's dtype (bf16 or fp16 under autocast).
    pub fn components(&self, levels: &[Tensor], targets: &Tensor) -> Result<Tensor, LossError> {
        let levels: Vec<Tensor> = levels.iter().map(|l| l.to_kind(Kind::Float)).collect();
        let levels = levels.as_slice();
        let Prepared {
            pred_dist,
            pred_logits,
            pred_boxes,
            anchors,
            strides,
            assignment,
        } = self.prepare(levels, targets)?;
        let score_sum = assignment.scores.sum(Kind::Float).clamp_min(1.0);
        let cls = pred_logits
            .binary_cross_entropy_with_logits::<Tensor>(
                &assignment.scores.to_kind(pred_logits.kind()),
                None,
                None,
                Reduction::None,
            )
            .sum(Kind::Float)
            / &score_sum;

        // Box losses over foreground anchors, in cells.
        let fg = assignment.foreground.nonzero();
        let (fb, fa) = (fg.select(1, 0), fg.select(1, 1));
        let target_boxes = (&assignment.boxes / &strides).index(&[Some(&fb), Some(&fa)]);
        let weight = assignment
            .scores
            .index(&[Some(&fb), Some(&fa)])
            .sum_dim_intlist(-1, true, Kind::Float);
        let iou = ciou(&pred_boxes.index(&[Some(&fb), Some(&fa)]), &target_boxes).unsqueeze(-1);
        let misfit: Tensor = (1.0 - iou) * &weight;
        let box_loss = misfit.sum(Kind::Float) / &score_sum;
        let fg_anchors = anchors.index(&[Some(&fa)]);
        let target_distances = Tensor::cat(
            &[
                &fg_anchors - target_boxes.narrow(-1, 0, 2),
                target_boxes.narrow(-1, 2, 2) - &fg_anchors,
            ],
            -1,
        )
        .clamp(0.0, (REG_MAX - 1) as f64 - 0.01);
        let fg_dist = pred_dist.index(&[Some(&fb), Some(&fa)]).view([-1, REG_MAX]);
        let dfl = (distribution_focal_loss(&fg_dist, &target_distances) * weight).sum(Kind::Float)
            / &score_sum;

        Ok(Tensor::stack(
            &[
                box_loss * self.gains.box_gain,
                cls * self.gains.cls_gain,
                dfl * self.gains.dfl_gain,
            ],
            0,
        ))
    }
}

/// Predictions of one detector split and decoded, and their assignment.
struct Prepared {
    pred_dist: Tensor,
    pred_logits: Tensor,
    /// xyxy in cells.
    pred_boxes: Tensor,
    anchors: Tensor,
    strides: Tensor,
    assignment: Assignment,
}

impl DetectionLoss {
    /// The assigner's targets for one detector's level outputs and `targets` `[n, 6]`.
    /// Errors as [`DetectionLoss::compute`] does.
    pub fn assignment(&self, levels: &[Tensor], targets: &Tensor) -> Result<Assignment, LossError> {
        Ok(self.prepare(levels, targets)?.assignment)
    }

    fn prepare(&self, levels: &[Tensor], targets: &Tensor) -> Result<Prepared, LossError> {
        let device = levels[0].device();
        let size = levels[0].size();
        let batch = size[0];
        let channels = size[1];
        let nc = channels - 4 * REG_MAX;
        let flat: Vec<Tensor> = levels
            .iter()
            .map(|l| l.view([batch, channels, -1]))
            .collect();
        let x = Tensor::cat(&flat, 2).permute([0, 2, 1]); // [b, a, no]
        let mut split = x.split_with_sizes([4 * REG_MAX, nc], -1);
        let pred_logits = split.pop().expect("two parts");
        let pred_dist = split.pop().expect("two parts");
        let (anchors, strides) = make_anchors(levels, device);
        let image_h = (size[2] * STRIDES[0]) as f64;
        let image_w = (size[3] * STRIDES[0]) as f64;

        let (gt_labels, gt_boxes) = pad_targets(targets, batch, nc, image_w, image_h, device)?;
        let gt_mask = gt_boxes.sum_dim_intlist(-1, true, Kind::Float).gt(0.0);

        let bins = Tensor::arange(REG_MAX, (Kind::Float, device));
        let pred_boxes = distances_to_boxes(
            &distribution_to_distances(&pred_dist, &bins),
            &anchors,
            false,
        );
        let assignment = self.assigner.assign(
            &pred_logits.detach().sigmoid(),
            &(pred_boxes.detach() * &strides),
            &(&anchors * &strides),
            &gt_labels,
            &gt_boxes,
            &gt_mask,
        );
        Ok(Prepared {
            pred_dist,
            pred_logits,
            pred_boxes,
            anchors,
            strides,
            assignment,
        })
    }
}

/// Targets `[n, 6]` padded per image: labels `[b, m, 1]` and xyxy pixel boxes `[b, m, 4]`,
/// where `m` is the most boxes any image has (zero rows pad). Every class id must be an
/// integer in `0..nc`: the targets are on the host here, so the check costs nothing.
fn pad_targets(
    targets: &Tensor,
    batch: i64,
    nc: i64,
    image_w: f64,
    image_h: f64,
    device: Device,
) -> Result<(Tensor, Tensor), LossError> {
    let rows: Vec<f32> = Vec::try_from(
        targets
            .to_kind(Kind::Float)
            .to_device(Device::Cpu)
            .flatten(0, -1),
    )
    .unwrap_or_default();
    let mut per_image: Vec<Vec<[f32; 5]>> = vec![Vec::new(); batch.max(0) as usize];
    for (index, row) in rows.chunks_exact(6).enumerate() {
        let image = row[0] as usize;
        let class = row[1];
        if !(class >= 0.0 && class < nc as f32 && class.fract() == 0.0) {
            return Err(LossError::ClassOutOfRange {
                row: index,
                image,
                class,
                nc,
            });
        }
        if let Some(list) = per_image.get_mut(image) {
            // Scale first, then convert centre-xywh to corners, in f32 as Ultralytics does.
            let (x, y) = (row[2] * image_w as f32, row[3] * image_h as f32);
            let (half_w, half_h) = (row[4] * image_w as f32 / 2.0, row[5] * image_h as f32 / 2.0);
            list.push([row[1], x - half_w, y - half_h, x + half_w, y + half_h]);
        }
    }
    let max_boxes = per_image.iter().map(Vec::len).max().unwrap_or(0);
    let mut padded = vec![0f32; batch.max(0) as usize * max_boxes * 5];
    for (i, list) in per_image.iter().enumerate() {
        for (j, row) in list.iter().enumerate() {
            let at = (i * max_boxes + j) * 5;
            padded[at..at + 5].copy_from_slice(row);
        }
    }
    // Non-blocking: a host-to-device copy from pageable memory is staged before the call
    // returns, so the device need not be synchronised (a blocking copy would wait for the
    // forward pass queued before it).
    let padded = Tensor::from_slice(&padded)
        .view([batch, max_boxes as i64, 5])
        .to_device_(device, Kind::Float, true, false);
    let split = padded.split_with_sizes([1, 4], -1);
    Ok((split[0].shallow_clone(), split[1].shallow_clone()))
}
