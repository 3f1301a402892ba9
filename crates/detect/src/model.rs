//! Fusion variants of the detector and the model configuration stored with weights.

use fusekit_hyp::{Fusion, ModelScale};
use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

use crate::blocks::Conv;
use crate::onnx::{IR_INPUT, RGB_INPUT};
use crate::yolo::{Backbone, Head, Neck, decode, level_channels};

/// Everything needed to rebuild a detector; stored in the weights file's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// YOLOv8 scale.
    pub scale: ModelScale,
    /// Fusion mode.
    pub fusion: Fusion,
    /// Class names, in class-id order.
    pub names: Vec<String>,
    /// IR planes in the input (1 for grey thermal images, 3 otherwise).
    pub ir_channels: i64,
}

impl ModelConfig {
    /// Number of classes.
    pub fn num_classes(&self) -> i64 {
        self.names.len() as i64
    }

    /// Input planes the model expects: 3 RGB, then the IR planes.
    pub fn input_planes(&self) -> i64 {
        3 + self.ir_channels
    }
}

/// One complete YOLOv8 network (backbone, neck, head) under `<prefix>.model.N`.
#[derive(Debug)]
pub(crate) struct Stream {
    pub(crate) backbone: Backbone,
    pub(crate) neck: Neck,
    pub(crate) head: Head,
}

impl Stream {
    fn new(path: &nn::Path, c_in: i64, scale: ModelScale, num_classes: i64) -> Self {
        let model = path / "model";
        Self {
            backbone: Backbone::new(&model, c_in, scale),
            neck: Neck::new(&model, scale),
            head: Head::new(&(&model / 22), level_channels(scale), num_classes),
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Vec<Tensor> {
        let features = self.backbone.forward_t(xs, train);
        let necked = self.neck.forward_t(&features, train);
        self.head.forward_t(&necked, train)
    }
}

/// Mid fusion: two backbones, a 1x1 Conv per level over the concatenated features, one neck
/// and head (`head.model.10-22`).
#[derive(Debug)]
pub(crate) struct MidFusion {
    pub(crate) rgb: Backbone,
    pub(crate) ir: Backbone,
    pub(crate) fuse: [Conv; 3],
    pub(crate) neck: Neck,
    pub(crate) head: Head,
}

#[derive(Debug)]
pub(crate) enum Network {
    Single { input: Input, stream: Box<Stream> },
    Mid(Box<MidFusion>),
    Late { rgb: Box<Stream>, ir: Box<Stream> },
}

/// Which input planes a single-stream network reads.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Input {
    Rgb,
    Ir,
    All,
}

/// The raw outputs of one forward pass: one entry per detector (two for late fusion), each
/// the three level tensors `[batch, 64 + nc, h, w]`.
pub type HeadOutputs = Vec<Vec<Tensor>>;

/// A dual-stream YOLOv8 detector. Inputs are `[batch, 3 + ir_channels, h, w]` floats in
/// 0..1 (R, G, B, then IR), `h` and `w` multiples of 32.
#[derive(Debug)]
pub struct Detector {
    config: ModelConfig,
    pub(crate) network: Network,
}

impl Detector {
    /// Creates the detector's variables under `path` (normally a VarStore's root).
    pub fn new(path: &nn::Path, config: ModelConfig) -> Self {
        let (scale, nc) = (config.scale, config.num_classes());
        let network = match config.fusion {
            Fusion::Rgb => Network::Single {
                input: Input::Rgb,
                stream: Box::new(Stream::new(&(path / "rgb"), 3, scale, nc)),
            },
            Fusion::Ir => Network::Single {
                input: Input::Ir,
                stream: Box::new(Stream::new(&(path / "ir"), config.ir_channels, scale, nc)),
            },
            Fusion::Early => Network::Single {
                input: Input::All,
                stream: Box::new(Stream::new(
                    &(path / "early"),
                    config.input_planes(),
                    scale,
                    nc,
                )),
            },
            Fusion::Mid => {
                let channels = level_channels(scale);
                let head_model = path / "head" / "model";
                let fuse_path = path / "fuse";
                Network::Mid(Box::new(MidFusion {
                    rgb: Backbone::new(&(path / "rgb" / "model"), 3, scale),
                    ir: Backbone::new(&(path / "ir" / "model"), config.ir_channels, scale),
                    fuse: [0, 1, 2].map(|i| {
                        let name = ["p3", "p4", "p5"][i];
                        Conv::new(&(&fuse_path / name), 2 * channels[i], channels[i], 1, 1)
                    }),
                    neck: Neck::new(&head_model, scale),
                    head: Head::new(&(&head_model / 22), channels, nc),
                }))
            }
            Fusion::Late => Network::Late {
                rgb: Box::new(Stream::new(&(path / "rgb"), 3, scale, nc)),
                ir: Box::new(Stream::new(&(path / "ir"), config.ir_channels, scale, nc)),
            },
        };
        Self { config, network }
    }

    /// The configuration the detector was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Raw head outputs for `images` (see [`HeadOutputs`]).
    pub fn forward_t(&self, images: &Tensor, train: bool) -> HeadOutputs {
        if let Network::Single {
            input: Input::All,
            stream,
        } = &self.network
        {
            // Early fusion reads all planes as they are: no copy into separate inputs.
            return vec![stream.forward_t(images, train)];
        }
        let rgb = images.narrow(1, 0, 3);
        let ir = images.narrow(1, 3, self.config.ir_channels);
        let inputs: Vec<&Tensor> = self
            .input_names()
            .iter()
            .map(|name| if *name == RGB_INPUT { &rgb } else { &ir })
            .collect();
        self.forward_inputs(&inputs, train)
    }

    /// The inputs the network reads, in the order [`forward_inputs`](Self::forward_inputs)
    /// takes them: `rgb` `[batch, 3, h, w]`, `ir` `[batch, ir_channels, h, w]` or both (an
    /// exported model's inputs).
    pub fn input_names(&self) -> Vec<&'static str> {
        match &self.network {
            Network::Single {
                input: Input::Rgb, ..
            } => vec![RGB_INPUT],
            Network::Single {
                input: Input::Ir, ..
            } => vec![IR_INPUT],
            _ => vec![RGB_INPUT, IR_INPUT],
        }
    }

    /// Raw head outputs for separate inputs, as [`input_names`](Self::input_names) lists them.
    ///
    /// # Panics
    /// When the number of inputs differs from the names'.
    pub fn forward_inputs(&self, inputs: &[&Tensor], train: bool) -> HeadOutputs {
        assert_eq!(
            inputs.len(),
            self.input_names().len(),
            "one tensor per input"
        );
        match &self.network {
            Network::Single { input, stream } => {
                let x = match input {
                    Input::Rgb | Input::Ir => inputs[0].shallow_clone(),
                    Input::All => Tensor::cat(inputs, 1),
                };
                vec![stream.forward_t(&x, train)]
            }
            Network::Mid(mid) => {
                let a = mid.rgb.forward_t(inputs[0], train);
                let b = mid.ir.forward_t(inputs[1], train);
                let fused = [0, 1, 2]
                    .map(|i| mid.fuse[i].forward_t(&Tensor::cat(&[&a[i], &b[i]], 1), train));
                vec![
                    mid.head
                        .forward_t(&mid.neck.forward_t(&fused, train), train),
                ]
            }
            Network::Late { rgb: r, ir: i } => {
                vec![r.forward_t(inputs[0], train), i.forward_t(inputs[1], train)]
            }
        }
    }

    /// The detection heads, in the order of [`HeadOutputs`].
    pub fn heads(&self) -> Vec<&Head> {
        match &self.network {
            Network::Single { stream, .. } => vec![&stream.head],
            Network::Mid(mid) => vec![&mid.head],
            Network::Late { rgb, ir } => vec![&rgb.head, &ir.head],
        }
    }

    /// Anchors of the decoded output at `imgsz` x `imgsz`: one per cell of the three levels,
    /// per detector (late fusion has two).
    pub fn anchors(&self, imgsz: i64) -> i64 {
        let cells: i64 = crate::STRIDES
            .iter()
            .map(|s| (imgsz / s) * (imgsz / s))
            .sum();
        cells * self.heads().len() as i64
    }

    /// Decoded predictions `[batch, 4 + nc, anchors]` (centre-xywh in input pixels, class
    /// probabilities). Late fusion concatenates both detectors' anchors so that NMS merges
    /// their detections.
    pub fn decode(&self, outputs: &HeadOutputs) -> Tensor {
        let decoded: Vec<Tensor> = outputs
            .iter()
            .zip(self.heads())
            .map(|(levels, head)| decode(levels, head))
            .collect();
        Tensor::cat(&decoded, 2)
    }

    /// Giga floating-point operations (2 x multiply-accumulates of the convolutions, as
    /// Ultralytics reports GFLOPs) of one eval forward pass at `imgsz` x `imgsz`.
    pub fn gflops(&self, imgsz: i64) -> f64 {
        let device = self
            .heads()
            .first()
            .map_or(tch::Device::Cpu, |h| h.bins().device());
        let images = Tensor::zeros(
            [1, self.config.input_planes(), imgsz, imgsz],
            (Kind::Float, device),
        );
        let (_, macs) =
            crate::blocks::count_macs(|| tch::no_grad(|| self.forward_t(&images, false)));
        2.0 * macs as f64 / 1e9
    }

    /// Eval-mode forward and decode of `images` (u8 or float 0..1).
    pub fn predict(&self, images: &Tensor) -> Tensor {
        let x = if images.kind() == Kind::Uint8 {
            images.to_kind(Kind::Float) / 255.0
        } else {
            images.shallow_clone()
        };
        tch::no_grad(|| self.decode(&self.forward_t(&x, false)))
    }
}
