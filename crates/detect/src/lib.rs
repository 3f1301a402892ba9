//! The dual-stream YOLOv8 detector on libtorch (tch).
//!
//! [`Detector`] builds a YOLOv8 n/s/m network for one of five [`Fusion`] modes with
//! Ultralytics' parameter names inside each stream (`rgb.model.0.conv.weight`, ...);
//! [`DetectionLoss`] is the v8 loss (task-aligned assigner, CIoU, DFL, BCE);
//! [`non_max_suppression`] turns decoded predictions into [`Detection`]s, and [`weights`]
//! saves and loads models as safetensors with their [`ModelConfig`].

mod blocks;
mod loss;
mod model;
pub mod onnx;
mod postprocess;
pub mod torchscript;
pub mod weights;
mod yolo;

pub use blocks::{
    BATCH_NORM_EPS, BATCH_NORM_MOMENTUM, BatchNormFn, Bottleneck, C2f, Conv, Sppf, count_macs,
    parameter_count, with_batch_norm,
};
pub use fusekit_hyp::{Fusion, ModelScale};
pub use loss::{
    Assigner, Assignment, DetectionLoss, Loss, LossError, LossGains, ciou, distribution_focal_loss,
};
pub use model::{Detector, HeadOutputs, ModelConfig};
pub use postprocess::{Detection, NmsOptions, non_max_suppression};
pub use yolo::{
    Backbone, Head, Neck, REG_MAX, STRIDES, decode, distances_to_boxes, distribution_to_distances,
    level_channels, make_anchors, scaled_channels, scaled_repeats,
};
