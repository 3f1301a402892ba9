//! Devices and what libtorch offers on this machine.

use tch::{Cuda, Device};

/// A `--device` value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Not `auto`, `cpu`, `cuda`, `cuda:N` or `N`.
    #[error("unknown device `{0}`: expected auto, cpu, cuda or cuda:N")]
    Unknown(String),
    /// A CUDA device was asked for but is not there.
    #[error("device `{asked}` asked for, but {available} CUDA device(s) are available")]
    Unavailable {
        /// The value given.
        asked: String,
        /// How many CUDA devices libtorch sees.
        available: usize,
    },
}

/// Parses `auto` (CUDA 0 when present, else CPU), `cpu`, `cuda`, `cuda:N` or a bare index `N`.
pub fn parse_device(text: &str) -> Result<Device, DeviceError> {
    let text = text.trim();
    let index = match text {
        "auto" => return Ok(Device::cuda_if_available()),
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => other
            .strip_prefix("cuda:")
            .unwrap_or(other)
            .parse::<usize>()
            .map_err(|_| DeviceError::Unknown(text.to_owned()))?,
    };
    let available = Cuda::device_count().max(0) as usize;
    if index >= available {
        return Err(DeviceError::Unavailable {
            asked: text.to_owned(),
            available,
        });
    }
    Ok(Device::Cuda(index))
}

/// What the linked libtorch offers here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeInfo {
    /// CUDA is usable.
    pub cuda: bool,
    /// Number of CUDA devices.
    pub cuda_devices: usize,
    /// cuDNN is usable.
    pub cudnn: bool,
    /// Intra-op CPU threads libtorch uses.
    pub cpu_threads: usize,
    /// libtorch was built with MKL.
    pub mkl: bool,
}

impl RuntimeInfo {
    /// Asks libtorch.
    pub fn detect() -> Self {
        Self {
            cuda: Cuda::is_available(),
            cuda_devices: Cuda::device_count().max(0) as usize,
            cudnn: Cuda::cudnn_is_available(),
            cpu_threads: tch::get_num_threads().max(0) as usize,
            mkl: tch::utils::has_mkl(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert!(matches!(parse_device("gpu"), Err(DeviceError::Unknown(_))));
        let cuda = Cuda::device_count() as usize;
        assert_eq!(parse_device("cuda:0").is_ok(), cuda > 0);
        assert!(matches!(
            parse_device("cuda:99"),
            Err(DeviceError::Unavailable { .. })
        ));
        let auto = parse_device("auto").unwrap();
        assert_eq!(auto.is_cuda(), cuda > 0);
    }

    #[test]
    fn runtime_info_is_consistent() {
        let info = RuntimeInfo::detect();
        assert_eq!(info.cuda, info.cuda_devices > 0);
        assert!(info.cpu_threads >= 1);
    }
}
