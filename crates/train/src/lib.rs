//! The libtorch (tch) side of fusekit.
//!
//! Today: choosing a device ([`parse_device`]), reporting what libtorch offers on this machine
//! ([`RuntimeInfo`]), the YOLOv8 `Conv` block ([`ConvBnSilu`]) that the detector is built from,
//! and feeding cache batches to libtorch without copies ([`batch_tensors`]). Only this crate and the CLI's `train` feature link libtorch.

mod blocks;
mod device;
mod feed;

pub use blocks::ConvBnSilu;
pub use device::{DeviceError, RuntimeInfo, parse_device};
pub use feed::{BatchTensors, batch_tensors};
