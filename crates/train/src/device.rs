//! Devices and what libtorch offers on this machine.

use tch::{Cuda, Device};

/// A `--device` value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Not `auto`, `cpu`, `cuda`, `cuda:N` or `N`.
    #[error("unknown device `{0}`: expected auto, cpu, cuda or cuda:N")]
    Unknown(String),
    /// A device list (`0,1`) that names a device twice, or a non-CUDA device.
    #[error("device list `{0}`: list distinct CUDA devices, such as 0,1 or cuda:0,cuda:1")]
    BadList(String),
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

/// Parses a `--device` value that may list several CUDA devices, Ultralytics' `0,1`: one
/// data-parallel rank per listed device. A single value is [`parse_device`]'s.
pub fn parse_devices(text: &str) -> Result<Vec<Device>, DeviceError> {
    if !text.contains(',') {
        return Ok(vec![parse_device(text)?]);
    }
    let mut devices = Vec::new();
    for item in text.split(',').map(str::trim) {
        let named_cuda = item.parse::<usize>().is_ok() || item.starts_with("cuda:");
        if !named_cuda {
            return Err(DeviceError::BadList(text.trim().to_owned()));
        }
        let device = parse_device(item).map_err(|err| match err {
            DeviceError::Unavailable { available, .. } => DeviceError::Unavailable {
                asked: text.trim().to_owned(),
                available,
            },
            other => other,
        })?;
        if devices.contains(&device) {
            return Err(DeviceError::BadList(text.trim().to_owned()));
        }
        devices.push(device);
    }
    Ok(devices)
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
    fn device_lists_name_distinct_cuda_devices() {
        assert_eq!(parse_devices("cpu").unwrap(), [Device::Cpu]);
        for bad in ["cpu,0", "0,auto", "0,0", "cuda:1, 1", "0,,1"] {
            let cuda = Cuda::device_count() as usize;
            match parse_devices(bad) {
                Err(DeviceError::BadList(list)) => assert_eq!(list, bad),
                // Without two CUDA devices, availability may fail first.
                Err(DeviceError::Unavailable { asked, .. }) => {
                    assert!(cuda < 2, "{bad}");
                    assert_eq!(asked, bad);
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        let cuda = Cuda::device_count() as usize;
        match parse_devices("0, 1") {
            Ok(devices) => assert_eq!(devices, [Device::Cuda(0), Device::Cuda(1)]),
            Err(DeviceError::Unavailable { asked, available }) => {
                assert_eq!((asked.as_str(), available), ("0, 1", cuda));
                assert!(cuda < 2);
                eprintln!("skipped the success case: {cuda} CUDA device(s) here, 2 needed");
            }
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn runtime_info_is_consistent() {
        let info = RuntimeInfo::detect();
        assert_eq!(info.cuda, info.cuda_devices > 0);
        assert!(info.cpu_threads >= 1);
    }
}
