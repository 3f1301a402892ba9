//! The detector as TorchScript, traced through libtorch: `forward(rgb, ir)` (the inputs
//! [`Detector::input_names`] lists) returns the decoded `[batch, 4 + nc, anchors]` tensor.
//! The model's metadata goes into the archive as `extra/config.txt`, where Ultralytics keeps
//! it, for `torch.jit.load(path, _extra_files={"config.txt": ""})` to read.
//!
//! Tracing records the shapes of the example inputs: the file runs at the batch and image size
//! it was traced at.

use std::ffi::{CString, c_char, c_int, c_long};
use std::path::Path;

use tch::{CModule, Device, Kind, Tensor};

use crate::Detector;

/// Name of the metadata file inside the archive.
pub const METADATA_FILE: &str = "config.txt";

/// Problems tracing, saving or reading a TorchScript file.
#[derive(Debug, thiserror::Error)]
pub enum TorchScriptError {
    /// libtorch failed (tracing, saving, loading).
    #[error("{path}: {message}")]
    Torch {
        /// The file.
        path: String,
        /// libtorch's message.
        message: String,
    },
}

unsafe extern "C" {
    fn fk_jit_save_with_extra(
        source: *const c_char,
        target: *const c_char,
        name: *const c_char,
        contents: *const c_char,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
    fn fk_jit_read_extra(
        path: *const c_char,
        name: *const c_char,
        contents: *mut c_char,
        contents_len: usize,
    ) -> c_long;
}

/// Traces `detector` in evaluation mode on zero inputs of `batch` x `imgsz` x `imgsz` on
/// `device` and writes it to `path` with `metadata` (JSON) as `extra/config.txt`.
pub fn save(
    detector: &Detector,
    batch: i64,
    imgsz: i64,
    device: Device,
    metadata: &str,
    path: &Path,
) -> Result<(), TorchScriptError> {
    let fail = |message: String| TorchScriptError::Torch {
        path: path.display().to_string(),
        message,
    };
    let ir_planes = detector.config().ir_channels;
    let inputs: Vec<Tensor> = detector
        .input_names()
        .iter()
        .map(|name| {
            let planes = if *name == crate::onnx::RGB_INPUT {
                3
            } else {
                ir_planes
            };
            Tensor::zeros([batch, planes, imgsz, imgsz], (Kind::Float, device))
        })
        .collect();
    let module = tch::no_grad(|| {
        CModule::create_by_tracing("FusekitDetector", "forward", &inputs, &mut |xs| {
            let refs: Vec<&Tensor> = xs.iter().collect();
            vec![detector.decode(&detector.forward_inputs(&refs, false))]
        })
    })
    .map_err(|e| fail(e.to_string()))?;
    // Saved plain first, then rewritten with the metadata by the shim.
    let plain = path.with_extension("trace.tmp");
    module.save(&plain).map_err(|e| fail(e.to_string()))?;
    let result = add_metadata(&plain, path, metadata).map_err(fail);
    let _ = std::fs::remove_file(&plain);
    result
}

fn add_metadata(plain: &Path, path: &Path, metadata: &str) -> Result<(), String> {
    let c_path =
        |p: &Path| CString::new(p.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string());
    let (source, target) = (c_path(plain)?, c_path(path)?);
    let name = CString::new(METADATA_FILE).expect("no NUL");
    let contents = CString::new(metadata).map_err(|e| e.to_string())?;
    let mut error = vec![0u8; 4096];
    // SAFETY: every pointer is a live NUL-terminated string or a buffer of the length passed.
    let status = unsafe {
        fk_jit_save_with_extra(
            source.as_ptr(),
            target.as_ptr(),
            name.as_ptr(),
            contents.as_ptr(),
            error.as_mut_ptr().cast(),
            error.len(),
        )
    };
    if status == 0 {
        Ok(())
    } else {
        Err(c_message(&error))
    }
}

/// The metadata (`extra/config.txt`) of a TorchScript file written by [`save`].
pub fn read_metadata(path: &Path) -> Result<String, TorchScriptError> {
    let fail = |message: String| TorchScriptError::Torch {
        path: path.display().to_string(),
        message,
    };
    let c_path =
        CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| fail(e.to_string()))?;
    let name = CString::new(METADATA_FILE).expect("no NUL");
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        // SAFETY: the path and name are NUL-terminated; the buffer has the length passed.
        let length = unsafe {
            fk_jit_read_extra(
                c_path.as_ptr(),
                name.as_ptr(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
            )
        };
        if length < 0 {
            return Err(fail(c_message(&buffer)));
        }
        let length = length as usize;
        if length < buffer.len() {
            return Ok(String::from_utf8_lossy(&buffer[..length]).into_owned());
        }
        buffer.resize(length + 1, 0);
    }
}

fn c_message(buffer: &[u8]) -> String {
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}
