//! The YOLOv8 detection network: backbone (layers 0-9), PAN neck (10-21) and the decoupled
//! DFL head (22), with Ultralytics' layer numbers as parameter names.

use fusekit_hyp::ModelScale;
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use crate::blocks::{C2f, Conv, Sppf, conv1x1_with_bias, upsample2};

/// Distribution bins per box side (DFL).
pub const REG_MAX: i64 = 16;
/// Output strides of the three detection levels (P3, P4, P5).
pub const STRIDES: [i64; 3] = [8, 16, 32];

fn multipliers(scale: ModelScale) -> (f64, f64, i64) {
    match scale {
        ModelScale::N => (0.33, 0.25, 1024),
        ModelScale::S => (0.33, 0.50, 1024),
        ModelScale::M => (0.67, 0.75, 768),
    }
}

/// Output channels at `scale` of a layer declared with `c` channels in the yolov8 yaml
/// (Ultralytics' depth/width multipliers: n 0.33/0.25, s 0.33/0.50, m 0.67/0.75 and at most
/// 768 channels).
pub fn scaled_channels(scale: ModelScale, c: i64) -> i64 {
    let (_, width, max_channels) = multipliers(scale);
    let scaled = c.min(max_channels) as f64 * width;
    ((scaled / 8.0).ceil() as i64) * 8
}

/// Repeats at `scale` of a block declared with `n` repeats in the yolov8 yaml.
pub fn scaled_repeats(scale: ModelScale, n: i64) -> i64 {
    let (depth, _, _) = multipliers(scale);
    if n > 1 {
        ((n as f64 * depth).round() as i64).max(1)
    } else {
        n
    }
}

/// Channels of the P3, P4 and P5 features, which are also those of the neck's outputs.
pub fn level_channels(scale: ModelScale) -> [i64; 3] {
    [256, 512, 1024].map(|c| scaled_channels(scale, c))
}

/// Layers 0-9: the CSP-Darknet backbone, returning the P3, P4 and P5 features (outputs of
/// layers 4, 6 and 9).
#[derive(Debug)]
pub struct Backbone {
    pub(crate) stem: [Conv; 2],
    pub(crate) c2f2: C2f,
    pub(crate) conv3: Conv,
    pub(crate) c2f4: C2f,
    pub(crate) conv5: Conv,
    pub(crate) c2f6: C2f,
    pub(crate) conv7: Conv,
    pub(crate) c2f8: C2f,
    pub(crate) sppf9: Sppf,
}

impl Backbone {
    /// A backbone under `path` (the stream's `model` path) taking `c_in` input channels.
    pub fn new(path: &nn::Path, c_in: i64, scale: ModelScale) -> Self {
        let ch = |c| scaled_channels(scale, c);
        let n = |r| scaled_repeats(scale, r);
        Self {
            stem: [
                Conv::new(&(path / 0), c_in, ch(64), 3, 2),
                Conv::new(&(path / 1), ch(64), ch(128), 3, 2),
            ],
            c2f2: C2f::new(&(path / 2), ch(128), ch(128), n(3), true),
            conv3: Conv::new(&(path / 3), ch(128), ch(256), 3, 2),
            c2f4: C2f::new(&(path / 4), ch(256), ch(256), n(6), true),
            conv5: Conv::new(&(path / 5), ch(256), ch(512), 3, 2),
            c2f6: C2f::new(&(path / 6), ch(512), ch(512), n(6), true),
            conv7: Conv::new(&(path / 7), ch(512), ch(1024), 3, 2),
            c2f8: C2f::new(&(path / 8), ch(1024), ch(1024), n(3), true),
            sppf9: Sppf::new(&(path / 9), ch(1024), ch(1024)),
        }
    }

    /// The P3, P4 and P5 features of `xs`.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> [Tensor; 3] {
        let x = self.stem[1].forward_t(&self.stem[0].forward_t(xs, train), train);
        let x = self.conv3.forward_t(&self.c2f2.forward_t(&x, train), train);
        let p3 = self.c2f4.forward_t(&x, train);
        let p4 = self
            .c2f6
            .forward_t(&self.conv5.forward_t(&p3, train), train);
        let x = self
            .c2f8
            .forward_t(&self.conv7.forward_t(&p4, train), train);
        let p5 = self.sppf9.forward_t(&x, train);
        [p3, p4, p5]
    }
}

/// Layers 10-21: the PAN neck (top-down then bottom-up), returning the three head inputs
/// (outputs of layers 15, 18 and 21).
#[derive(Debug)]
pub struct Neck {
    pub(crate) c2f12: C2f,
    pub(crate) c2f15: C2f,
    pub(crate) conv16: Conv,
    pub(crate) c2f18: C2f,
    pub(crate) conv19: Conv,
    pub(crate) c2f21: C2f,
}

impl Neck {
    /// A neck under `path` (the `model` path holding layers 10-22).
    pub fn new(path: &nn::Path, scale: ModelScale) -> Self {
        let ch = |c| scaled_channels(scale, c);
        let n = scaled_repeats(scale, 3);
        let [c3, c4, c5] = level_channels(scale);
        Self {
            c2f12: C2f::new(&(path / 12), c5 + c4, ch(512), n, false),
            c2f15: C2f::new(&(path / 15), ch(512) + c3, ch(256), n, false),
            conv16: Conv::new(&(path / 16), ch(256), ch(256), 3, 2),
            c2f18: C2f::new(&(path / 18), ch(256) + ch(512), ch(512), n, false),
            conv19: Conv::new(&(path / 19), ch(512), ch(512), 3, 2),
            c2f21: C2f::new(&(path / 21), ch(512) + c5, ch(1024), n, false),
        }
    }

    /// The head inputs for backbone features `[p3, p4, p5]`.
    pub fn forward_t(&self, features: &[Tensor; 3], train: bool) -> [Tensor; 3] {
        let [p3, p4, p5] = features;
        let h12 = self
            .c2f12
            .forward_t(&Tensor::cat(&[upsample2(p5), p4.shallow_clone()], 1), train);
        let h15 = self.c2f15.forward_t(
            &Tensor::cat(&[upsample2(&h12), p3.shallow_clone()], 1),
            train,
        );
        let x = Tensor::cat(&[self.conv16.forward_t(&h15, train), h12], 1);
        let h18 = self.c2f18.forward_t(&x, train);
        let x = Tensor::cat(&[self.conv19.forward_t(&h18, train), p5.shallow_clone()], 1);
        let h21 = self.c2f21.forward_t(&x, train);
        [h15, h18, h21]
    }
}

/// One branch of the head: two 3x3 `Conv`s and a 1x1 convolution with bias.
#[derive(Debug)]
pub(crate) struct Branch {
    pub(crate) convs: [Conv; 2],
    pub(crate) out: nn::Conv2D,
}

impl Branch {
    fn new(path: &nn::Path, c_in: i64, hidden: i64, c_out: i64, bias: f64) -> Self {
        let branch = Self {
            convs: [
                Conv::new(&(path / 0), c_in, hidden, 3, 1),
                Conv::new(&(path / 1), hidden, hidden, 3, 1),
            ],
            out: conv1x1_with_bias(&(path / 2), hidden, c_out),
        };
        if let Some(b) = &branch.out.bs {
            tch::no_grad(|| {
                let _ = b.shallow_clone().fill_(bias);
            });
        }
        branch
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let x = self.convs[1].forward_t(&self.convs[0].forward_t(xs, train), train);
        let ys = x.apply(&self.out);
        crate::blocks::record_conv(&self.out.ws, &ys);
        ys
    }
}

/// Layer 22: the decoupled head. For each level, `cv2` predicts the 4 x 16 box distribution
/// and `cv3` the class logits; `dfl.conv.weight` holds the fixed bin values 0..15.
#[derive(Debug)]
pub struct Head {
    pub(crate) box_branches: Vec<Branch>,
    pub(crate) class_branches: Vec<Branch>,
    pub(crate) bins: Tensor,
    pub(crate) num_classes: i64,
}

impl Head {
    /// A head under `path` (layer 22) over inputs with `channels`, for `num_classes`.
    /// Biases start as Ultralytics' `bias_init`: 2.0 for boxes, log(5 / nc / (640 / s)^2)
    /// for classes.
    pub fn new(path: &nn::Path, channels: [i64; 3], num_classes: i64) -> Self {
        let box_hidden = 16.max(channels[0] / 4).max(4 * REG_MAX);
        let class_hidden = channels[0].max(num_classes.min(100));
        let box_branches = channels
            .iter()
            .enumerate()
            .map(|(i, &c)| Branch::new(&(path / "cv2" / i), c, box_hidden, 4 * REG_MAX, 2.0))
            .collect();
        let class_branches = channels
            .iter()
            .zip(STRIDES)
            .enumerate()
            .map(|(i, (&c, stride))| {
                let prior = (5.0 / num_classes as f64 / (640.0 / stride as f64).powi(2)).ln();
                Branch::new(&(path / "cv3" / i), c, class_hidden, num_classes, prior)
            })
            .collect();
        let bins = (path / "dfl" / "conv").zeros_no_train("weight", &[1, REG_MAX, 1, 1]);
        tch::no_grad(|| {
            let values = Tensor::arange(REG_MAX, (Kind::Float, bins.device()));
            bins.shallow_clone().copy_(&values.view([1, REG_MAX, 1, 1]));
        });
        Self {
            box_branches,
            class_branches,
            bins,
            num_classes,
        }
    }

    /// Raw outputs per level, `[batch, 64 + nc, h, w]` (box distribution, then class logits).
    pub fn forward_t(&self, features: &[Tensor; 3], train: bool) -> Vec<Tensor> {
        features
            .iter()
            .zip(self.box_branches.iter().zip(&self.class_branches))
            .map(|(x, (b, c))| Tensor::cat(&[b.forward_t(x, train), c.forward_t(x, train)], 1))
            .collect()
    }

    /// Number of classes.
    pub fn num_classes(&self) -> i64 {
        self.num_classes
    }

    /// The fixed DFL bin values, `[16]`.
    pub fn bins(&self) -> Tensor {
        self.bins.view([REG_MAX])
    }
}

/// Anchor points (cell centres, in cells) `[anchors, 2]` and their strides `[anchors, 1]` for
/// level outputs `levels`, row-major within each level, levels in order.
pub fn make_anchors(levels: &[Tensor], device: Device) -> (Tensor, Tensor) {
    let mut points = Vec::with_capacity(levels.len());
    let mut strides = Vec::with_capacity(levels.len());
    for (level, stride) in levels.iter().zip(STRIDES) {
        let size = level.size();
        let (h, w) = (size[2], size[3]);
        let options = (Kind::Float, device);
        let xs = Tensor::arange(w, options) + 0.5;
        let ys = Tensor::arange(h, options) + 0.5;
        let grid = Tensor::meshgrid_indexing(&[ys, xs], "ij");
        points.push(Tensor::stack(&[&grid[1], &grid[0]], -1).view([-1, 2]));
        strides.push(Tensor::full([h * w, 1], stride as f64, options));
    }
    (Tensor::cat(&points, 0), Tensor::cat(&strides, 0))
}

/// Box side distances `[.., 4]` (left, top, right, bottom) from `[.., 64]` DFL logits: the
/// expectation over the 16 bins.
pub fn distribution_to_distances(logits: &Tensor, bins: &Tensor) -> Tensor {
    let mut shape = logits.size();
    let last = shape.len() - 1;
    shape[last] = 4;
    let mut split = shape.clone();
    split.push(REG_MAX);
    logits
        .view(split.as_slice())
        .softmax(-1, Kind::Float)
        .matmul(&bins.to_kind(Kind::Float))
        .view(shape.as_slice())
}

/// Decoded predictions of one detector, `[batch, 4 + nc, anchors]`: box centre x, y, width,
/// height in input pixels, then class probabilities, as Ultralytics' eval output.
pub fn decode(levels: &[Tensor], head: &Head) -> Tensor {
    let batch = levels[0].size()[0];
    let nc = head.num_classes();
    let flat: Vec<Tensor> = levels
        .iter()
        .map(|l| l.view([batch, 4 * REG_MAX + nc, -1]))
        .collect();
    let x = Tensor::cat(&flat, 2).transpose(1, 2); // [b, a, no]
    let parts = x.split_with_sizes([4 * REG_MAX, nc], -1);
    let distances = distribution_to_distances(&parts[0], &head.bins());
    let (anchors, strides) = make_anchors(levels, x.device());
    let boxes = distances_to_boxes(&distances, &anchors, true) * strides;
    Tensor::cat(&[boxes, parts[1].sigmoid()], -1).transpose(1, 2)
}

/// Boxes from side distances around anchor points: xyxy, or centre-xywh when `xywh`.
pub fn distances_to_boxes(distances: &Tensor, anchors: &Tensor, xywh: bool) -> Tensor {
    let sides = distances.chunk(2, -1);
    let top_left = anchors - &sides[0];
    let bottom_right = anchors + &sides[1];
    if xywh {
        let centre = (&top_left + &bottom_right) / 2.0;
        Tensor::cat(&[centre, bottom_right - top_left], -1)
    } else {
        Tensor::cat(&[top_left, bottom_right], -1)
    }
}
