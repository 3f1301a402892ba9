//! Turning cache loader batches into tensors.

use std::marker::PhantomData;

use fusekit_loader::Batch;
use tch::{Device, Kind, Tensor};

/// A batch's tensors. On the CPU `images` views the batch's own buffer (no copy), so it must
/// not outlive the batch; on CUDA the u8 pixels are copied to the device as they are (a
/// quarter of the bytes of f32), on the compute stream: the copy does not overlap the step.
#[derive(Debug)]
pub struct BatchTensors<'a> {
    /// u8 images, `[batch, planes, imgsz, imgsz]`: R, G, B, then the IR plane(s).
    pub images: Tensor,
    /// f32 targets, `[boxes, 6]`: image index in the batch, class, x, y, w, h (normalised),
    /// as Ultralytics' `batch_idx`, `cls` and `bboxes`.
    pub targets: Tensor,
    _batch: PhantomData<&'a Batch>,
}

/// The tensors of `batch` on `device`.
pub fn batch_tensors(batch: &Batch, device: Device) -> BatchTensors<'_> {
    let shape = [
        batch.len() as i64,
        batch.planes as i64,
        batch.imgsz as i64,
        batch.imgsz as i64,
    ];
    // SAFETY: the buffer holds exactly `shape` u8 values and outlives the returned tensors
    // (BatchTensors borrows the batch); the tensor is never resized.
    let view =
        unsafe { Tensor::from_blob(batch.images.as_ptr(), &shape, &[], Kind::Uint8, Device::Cpu) };
    // No pinned staging: libtorch's `pin_memory(device)`, the form tch offers, prints a
    // deprecation warning per call, and a pinned copy on the compute stream would not overlap
    // the step anyway.
    let images = match device {
        Device::Cpu => view,
        accelerator => view.to_device(accelerator),
    };
    let rows: Vec<f32> = batch
        .boxes
        .iter()
        .flat_map(|b| [b.image as f32, b.class as f32, b.x, b.y, b.w, b.h])
        .collect();
    let targets = Tensor::from_slice(&rows)
        .reshape([batch.boxes.len() as i64, 6])
        .to_device(device);
    BatchTensors {
        images,
        targets,
        _batch: PhantomData,
    }
}
