//! The libtorch (tch) side of fusekit.
//!
//! Today: choosing a device ([`parse_device`]), reporting what libtorch offers on this machine
//! ([`RuntimeInfo`]) and the YOLOv8 `Conv` block ([`ConvBnSilu`]) that the detector is built
//! from. Only this crate and the CLI's `train` feature link libtorch.

mod blocks;
mod device;

pub use blocks::ConvBnSilu;
pub use device::{DeviceError, RuntimeInfo, parse_device};
