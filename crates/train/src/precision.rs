//! Mixed precision: which arithmetic a run uses on its device ([`Precision::resolve`]), and
//! [`Autocast`], the guard that turns libtorch's autocast on with that dtype and restores the
//! previous state on every exit path, unwinding included.

use fusekit_hyp::Amp;
use tch::Device;

use crate::device::cuda_capability;

/// The arithmetic of a run's forward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Precision {
    /// f32 throughout.
    F32,
    /// bf16 autocast (f32's range: no loss scaling).
    Bf16,
    /// fp16 autocast with dynamic loss scaling.
    Fp16,
}

/// `--amp` asks for what the device cannot do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrecisionError {
    /// fp16 autocast was asked for on the CPU.
    #[error("--amp fp16 needs a CUDA device; on the CPU use --amp bf16 or --amp off")]
    Fp16OnCpu,
    /// bf16 was asked for on a GPU older than Ampere.
    #[error(
        "--amp bf16 needs CUDA compute capability 8.0 or newer; {device} has {major}.{minor}: \
use --amp fp16 (or auto, which picks it)"
    )]
    Bf16Unsupported {
        /// The device.
        device: String,
        /// Compute capability, major.
        major: i32,
        /// Compute capability, minor.
        minor: i32,
    },
}

impl Precision {
    /// What `amp` means on `device`, whose CUDA compute capability is `capability` (`None`
    /// for the CPU, or when it could not be read: then bf16 is assumed unsupported).
    ///
    /// `auto` is bf16 from capability 8.0 (no loss scaling), fp16 on older GPUs and f32 on
    /// the CPU, as Ultralytics trains with AMP on CUDA only; an explicit `bf16` on the CPU
    /// uses the CPU's bf16 autocast.
    pub fn resolve(
        amp: Amp,
        device: Device,
        capability: Option<(i32, i32)>,
    ) -> Result<Self, PrecisionError> {
        let bf16_ok = capability.is_some_and(|(major, _)| major >= 8);
        match (amp, device.is_cuda()) {
            (Amp::Off, _) | (Amp::Auto, false) => Ok(Precision::F32),
            (Amp::Auto, true) if bf16_ok => Ok(Precision::Bf16),
            (Amp::Auto | Amp::Fp16, true) => Ok(Precision::Fp16),
            (Amp::Fp16, false) => Err(PrecisionError::Fp16OnCpu),
            (Amp::Bf16, false) => Ok(Precision::Bf16),
            (Amp::Bf16, true) if bf16_ok => Ok(Precision::Bf16),
            (Amp::Bf16, true) => {
                let (major, minor) = capability.unwrap_or((0, 0));
                Err(PrecisionError::Bf16Unsupported {
                    device: format!("{device:?}"),
                    major,
                    minor,
                })
            }
        }
    }

    /// [`Precision::resolve`] with the device's own capability.
    pub fn for_device(amp: Amp, device: Device) -> Result<Self, PrecisionError> {
        let capability = match device {
            Device::Cuda(index) => cuda_capability(index),
            _ => None,
        };
        Self::resolve(amp, device, capability)
    }

    /// Whether losses are scaled (fp16 only).
    pub fn scales_loss(self) -> bool {
        self == Precision::Fp16
    }

    /// The name `results` and reports use: `f32`, `bf16` or `fp16`.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }

    /// The autocast dtype as libtorch's `c10::ScalarType` code, `None` for f32.
    fn autocast_dtype_code(self) -> Option<i32> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(BFLOAT16_CODE),
            Precision::Fp16 => Some(HALF_CODE),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

mod ffi {
    use std::os::raw::c_int;

    unsafe extern "C" {
        pub fn fk_autocast_enter(
            device: c_int,
            enabled: bool,
            dtype: c_int,
            was_enabled: *mut bool,
            was_dtype: *mut c_int,
        ) -> c_int;
        pub fn fk_autocast_exit(device: c_int, was_enabled: bool, was_dtype: c_int);
        pub fn fk_autocast_state(device: c_int, dtype: *mut c_int) -> bool;
    }
}

/// libtorch's device type codes (`c10::DeviceType`) for the two autocast backends used.
fn device_code(device: Device) -> i32 {
    if device.is_cuda() { 1 } else { 0 }
}

/// `c10::ScalarType::Half`.
const HALF_CODE: i32 = 5;
/// `c10::ScalarType::BFloat16`.
const BFLOAT16_CODE: i32 = 15;

fn kind_of_code(code: i32) -> tch::Kind {
    match code {
        HALF_CODE => tch::Kind::Half,
        BFLOAT16_CODE => tch::Kind::BFloat16,
        _ => tch::Kind::Float,
    }
}

/// Autocast on (or explicitly off) for one device type while alive: entered with
/// [`Autocast::enter`], the previous flag and dtype come back when it is dropped, also when
/// the code inside panics (a caught CUDA out-of-memory error cannot leave autocast on for
/// validation), and autocast's cache of casted weights is cleared when the outermost guard
/// ends.
#[must_use = "autocast ends when the guard is dropped"]
pub struct Autocast {
    device: i32,
    was_enabled: bool,
    was_dtype: i32,
}

impl Autocast {
    /// Enters autocast for `device`'s type with `precision`'s dtype (f32: autocast off).
    ///
    /// # Panics
    /// If libtorch refuses the state (it accepts every dtype and device type used here).
    pub fn enter(precision: Precision, device: Device) -> Self {
        let code = device_code(device);
        let dtype = precision.autocast_dtype_code();
        let (mut was_enabled, mut was_dtype) = (false, 0);
        // SAFETY: plain values in, two valid out-pointers; the shim catches C++ exceptions.
        let status = unsafe {
            ffi::fk_autocast_enter(
                code,
                dtype.is_some(),
                dtype.unwrap_or(-1),
                &mut was_enabled,
                &mut was_dtype,
            )
        };
        assert_eq!(status, 0, "libtorch refused the autocast state");
        Autocast {
            device: code,
            was_enabled,
            was_dtype,
        }
    }

    /// Whether autocast is on for `device`'s type, and with which dtype.
    pub fn state(device: Device) -> (bool, tch::Kind) {
        let mut dtype = 0;
        // SAFETY: one valid out-pointer; the shim reads two flags.
        let enabled = unsafe { ffi::fk_autocast_state(device_code(device), &mut dtype) };
        (enabled, kind_of_code(dtype))
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // SAFETY: plain values; the shim catches C++ exceptions.
        unsafe { ffi::fk_autocast_exit(self.device, self.was_enabled, self.was_dtype) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn auto_follows_the_device() {
        let cuda = Device::Cuda(0);
        let resolve = |amp, device, capability| Precision::resolve(amp, device, capability);
        assert_eq!(resolve(Amp::Auto, Device::Cpu, None), Ok(Precision::F32));
        assert_eq!(resolve(Amp::Auto, cuda, Some((9, 0))), Ok(Precision::Bf16));
        assert_eq!(resolve(Amp::Auto, cuda, Some((8, 0))), Ok(Precision::Bf16));
        assert_eq!(resolve(Amp::Auto, cuda, Some((7, 5))), Ok(Precision::Fp16));
        assert_eq!(resolve(Amp::Auto, cuda, None), Ok(Precision::Fp16));
        assert_eq!(resolve(Amp::Off, cuda, Some((9, 0))), Ok(Precision::F32));
        assert!(
            resolve(Amp::Fp16, cuda, Some((9, 0)))
                .unwrap()
                .scales_loss()
        );
        assert!(
            !resolve(Amp::Auto, cuda, Some((9, 0)))
                .unwrap()
                .scales_loss()
        );
    }

    #[test]
    fn explicit_dtypes_the_device_cannot_use_are_refused() {
        assert_eq!(
            Precision::resolve(Amp::Fp16, Device::Cpu, None),
            Err(PrecisionError::Fp16OnCpu)
        );
        assert_eq!(
            Precision::resolve(Amp::Bf16, Device::Cpu, None),
            Ok(Precision::Bf16)
        );
        let error = Precision::resolve(Amp::Bf16, Device::Cuda(0), Some((7, 5))).unwrap_err();
        assert!(error.to_string().contains("has 7.5"), "{error}");
    }

    fn conv_output_kind() -> Kind {
        let input = Tensor::ones([1, 3, 8, 8], (Kind::Float, Device::Cpu));
        let weight = Tensor::ones([4, 3, 3, 3], (Kind::Float, Device::Cpu));
        input
            .conv2d(&weight, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1)
            .kind()
    }

    #[test]
    fn the_guard_sets_the_dtype_and_restores_the_state() {
        assert!(!Autocast::state(Device::Cpu).0);
        assert_eq!(conv_output_kind(), Kind::Float);
        {
            let _bf16 = Autocast::enter(Precision::Bf16, Device::Cpu);
            assert_eq!(Autocast::state(Device::Cpu), (true, Kind::BFloat16));
            assert_eq!(conv_output_kind(), Kind::BFloat16);
            {
                // An inner f32 region (validation inside a training step, say).
                let _off = Autocast::enter(Precision::F32, Device::Cpu);
                assert!(!Autocast::state(Device::Cpu).0);
                assert_eq!(conv_output_kind(), Kind::Float);
            }
            assert_eq!(Autocast::state(Device::Cpu), (true, Kind::BFloat16));
        }
        assert!(!Autocast::state(Device::Cpu).0);
        assert_eq!(conv_output_kind(), Kind::Float);
    }

    #[test]
    fn a_panic_inside_autocast_restores_the_state() {
        let before = Autocast::state(Device::Cpu);
        let caught = std::panic::catch_unwind(|| {
            let _bf16 = Autocast::enter(Precision::Bf16, Device::Cpu);
            panic!("CUDA out of memory (simulated)");
        });
        assert!(caught.is_err());
        assert_eq!(Autocast::state(Device::Cpu), before);
        assert_eq!(conv_output_kind(), Kind::Float);
    }
}
