//! The detector as an ONNX graph: every block written as the operators it computes in
//! evaluation mode, BatchNorm folded into the convolution before it (as Ultralytics' export
//! fuses them), and the decoding (DFL expectation, anchors, strides, class sigmoid) in the graph,
//! so the output is the `[batch, 4 + nc, anchors]` tensor [`Detector::predict`] returns.
//!
//! Anchor points are computed in the graph from the feature maps' shapes, so one graph serves
//! fixed and dynamic sizes; runtimes fold them to constants when the size is fixed.

use fusekit_onnx::{Attribute, Dim, GraphBuilder, OnnxError, Precision, proto::ModelProto};
use tch::nn;
use tch::{Device, Kind, Tensor};

use crate::blocks::{Bottleneck, C2f, Conv, Sppf};
use crate::model::{Detector, Input, MidFusion, Network, Stream};
use crate::yolo::{Backbone, Branch, Head, Neck, REG_MAX, STRIDES};

/// Name of the RGB input.
pub const RGB_INPUT: &str = "rgb";
/// Name of the IR input.
pub const IR_INPUT: &str = "ir";
/// Name of the output (Ultralytics' name for a detector's output).
pub const OUTPUT: &str = "output0";

/// The shape and number format of an exported graph.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphOptions {
    /// Input height and width (multiples of 32) when fixed.
    pub imgsz: i64,
    /// Batch size when fixed.
    pub batch: i64,
    /// Batch, height and width chosen at run time (`batch`, `height`, `width`).
    pub dynamic: bool,
    /// Float16 inputs, weights and output.
    pub half: bool,
    /// ONNX operator set.
    pub opset: i64,
    /// The model's metadata properties (class names, image size, ...).
    pub metadata: Vec<(String, String)>,
    /// Producer version written in the file.
    pub producer_version: String,
}

/// Problems turning a detector into a graph.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// The graph could not be made (bad opset, ...).
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    /// A weight could not be read.
    #[error("reading a weight: {0}")]
    Torch(#[from] tch::TchError),
}

/// `detector` as an ONNX model.
pub fn to_onnx(detector: &Detector, options: &GraphOptions) -> Result<ModelProto, GraphError> {
    let precision = if options.half {
        Precision::Float16
    } else {
        Precision::Float32
    };
    let mut g = GraphBuilder::new("fusekit_detector", precision);
    let dims = |planes: i64| {
        if options.dynamic {
            vec![
                Dim::Named("batch".into()),
                Dim::Fixed(planes),
                Dim::Named("height".into()),
                Dim::Named("width".into()),
            ]
        } else {
            vec![
                Dim::Fixed(options.batch),
                Dim::Fixed(planes),
                Dim::Fixed(options.imgsz),
                Dim::Fixed(options.imgsz),
            ]
        }
    };
    let ir_planes = detector.config().ir_channels;
    let mut rgb = || g.input(RGB_INPUT, &dims(3));
    let decoded = match &detector.network {
        Network::Single { input, stream } => {
            let x = match input {
                Input::Rgb => rgb(),
                Input::Ir => g.input(IR_INPUT, &dims(ir_planes)),
                Input::All => {
                    let r = rgb();
                    let i = g.input(IR_INPUT, &dims(ir_planes));
                    g.op("Concat", &[&r, &i], vec![Attribute::int("axis", 1)])
                }
            };
            stream_graph(&mut g, stream, &x)?
        }
        Network::Mid(mid) => {
            let r = rgb();
            let i = g.input(IR_INPUT, &dims(ir_planes));
            mid_graph(&mut g, mid, &r, &i)?
        }
        Network::Late { rgb: r, ir } => {
            let rgb_input = rgb();
            let ir_input = g.input(IR_INPUT, &dims(ir_planes));
            let a = stream_graph(&mut g, r, &rgb_input)?;
            let b = stream_graph(&mut g, ir, &ir_input)?;
            g.op("Concat", &[&a, &b], vec![Attribute::int("axis", 2)])
        }
    };
    let outputs = 4 + detector.config().num_classes();
    let output_dims = if options.dynamic {
        vec![
            Dim::Named("batch".into()),
            Dim::Fixed(outputs),
            Dim::Named("anchors".into()),
        ]
    } else {
        vec![
            Dim::Fixed(options.batch),
            Dim::Fixed(outputs),
            Dim::Fixed(detector.anchors(options.imgsz)),
        ]
    };
    g.output(&decoded, OUTPUT, &output_dims);
    Ok(g.finish(
        options.opset,
        &options.metadata,
        ("fusekit", &options.producer_version),
    )?)
}

fn stream_graph(g: &mut GraphBuilder, stream: &Stream, x: &str) -> Result<String, GraphError> {
    let features = backbone(g, &stream.backbone, x)?;
    let necked = neck(g, &stream.neck, &features)?;
    head(g, &stream.head, &necked)
}

fn mid_graph(
    g: &mut GraphBuilder,
    mid: &MidFusion,
    rgb: &str,
    ir: &str,
) -> Result<String, GraphError> {
    let a = backbone(g, &mid.rgb, rgb)?;
    let b = backbone(g, &mid.ir, ir)?;
    let mut fused = Vec::with_capacity(3);
    for ((a, b), fuse) in a.iter().zip(&b).zip(&mid.fuse) {
        let both = g.op("Concat", &[a, b], vec![Attribute::int("axis", 1)]);
        fused.push(conv(g, fuse, &both)?);
    }
    let fused: [String; 3] = fused.try_into().expect("three levels");
    let necked = neck(g, &mid.neck, &fused)?;
    head(g, &mid.head, &necked)
}

/// The values of `tensor` as f32, on the CPU, row-major.
fn values(tensor: &Tensor) -> Result<Vec<f32>, GraphError> {
    let flat = tensor
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous()
        .view([-1]);
    Ok(Vec::<f32>::try_from(&flat)?)
}

/// A weight tensor as a graph constant of the same shape.
fn constant(g: &mut GraphBuilder, tensor: &Tensor) -> Result<String, GraphError> {
    Ok(g.float_constant(&tensor.size(), &values(tensor)?)?)
}

/// Ultralytics' `Conv` with its BatchNorm folded in, then SiLU (as x * sigmoid(x)).
fn conv(g: &mut GraphBuilder, block: &Conv, x: &str) -> Result<String, GraphError> {
    let (weight, bias) = tch::no_grad(|| fold_batch_norm(&block.conv.ws, &block.bn));
    let y = conv_op(g, x, &weight, Some(&bias), block.stride)?;
    let gate = g.op("Sigmoid", &[&y], Vec::new());
    Ok(g.op("Mul", &[&y, &gate], Vec::new()))
}

/// Weight and bias of a bias-free convolution followed by `bn` in evaluation mode.
fn fold_batch_norm(weight: &Tensor, bn: &nn::BatchNorm) -> (Tensor, Tensor) {
    let scale = match &bn.ws {
        Some(gamma) => gamma / (&bn.running_var + crate::BATCH_NORM_EPS).sqrt(),
        None => (&bn.running_var + crate::BATCH_NORM_EPS).rsqrt(),
    };
    let shift = match &bn.bs {
        Some(beta) => beta - &bn.running_mean * &scale,
        None => -(&bn.running_mean * &scale),
    };
    (weight * scale.view([-1, 1, 1, 1]), shift)
}

/// A square convolution with "same" padding.
fn conv_op(
    g: &mut GraphBuilder,
    x: &str,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: i64,
) -> Result<String, GraphError> {
    let kernel = weight.size()[2];
    let pad = kernel / 2;
    let w = constant(g, weight)?;
    let mut inputs = vec![x.to_string(), w];
    if let Some(bias) = bias {
        inputs.push(constant(g, bias)?);
    }
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    Ok(g.op(
        "Conv",
        &inputs,
        vec![
            Attribute::ints("kernel_shape", &[kernel, kernel]),
            Attribute::ints("strides", &[stride, stride]),
            Attribute::ints("pads", &[pad, pad, pad, pad]),
        ],
    ))
}

fn bottleneck(g: &mut GraphBuilder, block: &Bottleneck, x: &str) -> Result<String, GraphError> {
    let y = conv(g, &block.cv1, x)?;
    let y = conv(g, &block.cv2, &y)?;
    Ok(if block.add {
        g.op("Add", &[x, &y], Vec::new())
    } else {
        y
    })
}

fn c2f(g: &mut GraphBuilder, block: &C2f, x: &str) -> Result<String, GraphError> {
    let y = conv(g, &block.cv1, x)?;
    let half = block.cv1.conv.ws.size()[0] / 2;
    let mut parts = split(g, &y, &[half, half], 1)?;
    for inner in &block.m {
        let next = bottleneck(g, inner, parts.last().expect("two halves"))?;
        parts.push(next);
    }
    let cat = concat(g, &parts, 1);
    conv(g, &block.cv2, &cat)
}

fn sppf(g: &mut GraphBuilder, block: &Sppf, x: &str) -> Result<String, GraphError> {
    let mut parts = vec![conv(g, &block.cv1, x)?];
    for _ in 0..3 {
        let pooled = g.op(
            "MaxPool",
            &[parts.last().expect("one part")],
            vec![
                Attribute::ints("kernel_shape", &[5, 5]),
                Attribute::ints("strides", &[1, 1]),
                Attribute::ints("pads", &[2, 2, 2, 2]),
            ],
        );
        parts.push(pooled);
    }
    let cat = concat(g, &parts, 1);
    conv(g, &block.cv2, &cat)
}

/// Nearest-neighbour 2x upsampling as PyTorch computes it (source index = floor(dest / 2)).
fn upsample2(g: &mut GraphBuilder, x: &str) -> Result<String, GraphError> {
    let scales = g.f32_constant(&[4], &[1.0, 1.0, 2.0, 2.0])?;
    Ok(g.op(
        "Resize",
        &[x, "", &scales],
        vec![
            Attribute::string("mode", "nearest"),
            Attribute::string("coordinate_transformation_mode", "asymmetric"),
            Attribute::string("nearest_mode", "floor"),
        ],
    ))
}

fn backbone(g: &mut GraphBuilder, b: &Backbone, x: &str) -> Result<[String; 3], GraphError> {
    let x = conv(g, &b.stem[0], x)?;
    let x = conv(g, &b.stem[1], &x)?;
    let x = c2f(g, &b.c2f2, &x)?;
    let x = conv(g, &b.conv3, &x)?;
    let p3 = c2f(g, &b.c2f4, &x)?;
    let x = conv(g, &b.conv5, &p3)?;
    let p4 = c2f(g, &b.c2f6, &x)?;
    let x = conv(g, &b.conv7, &p4)?;
    let x = c2f(g, &b.c2f8, &x)?;
    let p5 = sppf(g, &b.sppf9, &x)?;
    Ok([p3, p4, p5])
}

fn neck(g: &mut GraphBuilder, n: &Neck, features: &[String; 3]) -> Result<[String; 3], GraphError> {
    let [p3, p4, p5] = features;
    let up = upsample2(g, p5)?;
    let h12 = concat(g, &[up, p4.clone()], 1);
    let h12 = c2f(g, &n.c2f12, &h12)?;
    let up = upsample2(g, &h12)?;
    let h15 = concat(g, &[up, p3.clone()], 1);
    let h15 = c2f(g, &n.c2f15, &h15)?;
    let down = conv(g, &n.conv16, &h15)?;
    let h18 = concat(g, &[down, h12], 1);
    let h18 = c2f(g, &n.c2f18, &h18)?;
    let down = conv(g, &n.conv19, &h18)?;
    let h21 = concat(g, &[down, p5.clone()], 1);
    let h21 = c2f(g, &n.c2f21, &h21)?;
    Ok([h15, h18, h21])
}

fn branch(g: &mut GraphBuilder, b: &Branch, x: &str) -> Result<String, GraphError> {
    let y = conv(g, &b.convs[0], x)?;
    let y = conv(g, &b.convs[1], &y)?;
    conv_op(g, &y, &b.out.ws, b.out.bs.as_ref(), 1)
}

/// The head and the decoding: `[batch, 4 + nc, anchors]`.
fn head(g: &mut GraphBuilder, h: &Head, features: &[String; 3]) -> Result<String, GraphError> {
    let nc = h.num_classes;
    let outputs = 4 * REG_MAX + nc;
    let flat_shape = g.int_constant(&[3], &[0, outputs, -1])?;
    let mut levels = Vec::with_capacity(3);
    let mut points = Vec::with_capacity(3);
    let mut strides = Vec::with_capacity(3);
    for (((x, b), c), stride) in features
        .iter()
        .zip(&h.box_branches)
        .zip(&h.class_branches)
        .zip(STRIDES)
    {
        let boxes = branch(g, b, x)?;
        let classes = branch(g, c, x)?;
        let level = concat(g, &[boxes, classes], 1);
        let (p, s) = anchors(g, &level, stride)?;
        points.push(p);
        strides.push(s);
        levels.push(g.op("Reshape", &[&level, &flat_shape], Vec::new()));
    }
    let all = concat(g, &levels, 2);
    let points = concat(g, &points, 1);
    let strides = concat(g, &strides, 1);
    let [distribution, logits]: [String; 2] = split(g, &all, &[4 * REG_MAX, nc], 1)?
        .try_into()
        .expect("two parts");
    // DFL: the expectation of each side's 16-bin distribution.
    let bins_shape = g.int_constant(&[4], &[0, 4, REG_MAX, -1])?;
    let bins = g.op("Reshape", &[&distribution, &bins_shape], Vec::new());
    let probabilities = g.op("Softmax", &[&bins], vec![Attribute::int("axis", 2)]);
    let bin_values = values(&h.bins)?;
    let bin_values = g.float_constant(&[1, 1, REG_MAX, 1], &bin_values)?;
    let weighted = g.op("Mul", &[&probabilities, &bin_values], Vec::new());
    let axis = g.int_constant(&[1], &[2])?;
    let distances = g.op(
        "ReduceSum",
        &[&weighted, &axis],
        vec![Attribute::int("keepdims", 0)],
    );
    // Sides to centre-xywh around the anchor points, then to pixels.
    let [near, far]: [String; 2] = split(g, &distances, &[2, 2], 1)?
        .try_into()
        .expect("two parts");
    let top_left = g.op("Sub", &[&points, &near], Vec::new());
    let bottom_right = g.op("Add", &[&points, &far], Vec::new());
    let sum = g.op("Add", &[&top_left, &bottom_right], Vec::new());
    let two = g.scalar(2.0);
    let centre = g.op("Div", &[&sum, &two], Vec::new());
    let size = g.op("Sub", &[&bottom_right, &top_left], Vec::new());
    let cells = concat(g, &[centre, size], 1);
    let pixels = g.op("Mul", &[&cells, &strides], Vec::new());
    let scores = g.op("Sigmoid", &[&logits], Vec::new());
    Ok(concat(g, &[pixels, scores], 1))
}

/// The anchor points `[2, h * w]` (cell centres x, y, row-major) and their stride `[1, h * w]`
/// of a level, from its shape.
fn anchors(g: &mut GraphBuilder, level: &str, stride: i64) -> Result<(String, String), GraphError> {
    let shape = g.op("Shape", &[level], Vec::new());
    let mut side = |axis: i64| -> Result<String, GraphError> {
        let index = g.int_constant(&[], &[axis])?;
        Ok(g.op("Gather", &[&shape, &index], vec![Attribute::int("axis", 0)]))
    };
    let height = side(2)?;
    let width = side(3)?;
    let zero = g.int_constant(&[], &[0])?;
    let one = g.int_constant(&[], &[1])?;
    let half = g.scalar(0.5);
    let mut centres = |count: &str| {
        let index = g.op("Range", &[&zero, count, &one], Vec::new());
        let index = g.cast_to_float(&index);
        g.op("Add", &[&index, &half], Vec::new())
    };
    let xs = centres(&width);
    let ys = centres(&height);
    let axis0 = g.int_constant(&[1], &[0])?;
    let axis1 = g.int_constant(&[1], &[1])?;
    let h1 = g.op("Unsqueeze", &[&height, &axis0], Vec::new());
    let w1 = g.op("Unsqueeze", &[&width, &axis0], Vec::new());
    let grid = concat(g, &[h1, w1], 0);
    let row = g.op("Unsqueeze", &[&xs, &axis0], Vec::new());
    let column = g.op("Unsqueeze", &[&ys, &axis1], Vec::new());
    let grid_x = g.op("Expand", &[&row, &grid], Vec::new());
    let grid_y = g.op("Expand", &[&column, &grid], Vec::new());
    let flat = g.int_constant(&[2], &[1, -1])?;
    let grid_x = g.op("Reshape", &[&grid_x, &flat], Vec::new());
    let grid_y = g.op("Reshape", &[&grid_y, &flat], Vec::new());
    let points = concat(g, &[grid_x, grid_y], 0);
    let cells = g.op("Mul", &[&height, &width], Vec::new());
    let cells = g.op("Unsqueeze", &[&cells, &axis0], Vec::new());
    let leading = g.int_constant(&[1], &[1])?;
    let strides_shape = concat(g, &[leading, cells], 0);
    let stride = g.float_constant(&[1, 1], &[stride as f32])?;
    let strides = g.op("Expand", &[&stride, &strides_shape], Vec::new());
    Ok((points, strides))
}

fn concat(g: &mut GraphBuilder, parts: &[String], axis: i64) -> String {
    let inputs: Vec<&str> = parts.iter().map(String::as_str).collect();
    g.op("Concat", &inputs, vec![Attribute::int("axis", axis)])
}

fn split(
    g: &mut GraphBuilder,
    x: &str,
    sizes: &[i64],
    axis: i64,
) -> Result<Vec<String>, GraphError> {
    let sizes_name = g.int_constant(&[sizes.len() as i64], sizes)?;
    Ok(g.op_n(
        "Split",
        &[x, &sizes_name],
        sizes.len(),
        vec![Attribute::int("axis", axis)],
    ))
}
