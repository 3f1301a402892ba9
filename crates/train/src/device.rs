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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
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
    /// Each CUDA device.
    pub devices: Vec<CudaDevice>,
    /// The CUDA runtime's version (`13.0`), when the CUDA runtime is loaded.
    pub cuda_runtime: Option<String>,
    /// The newest CUDA version the driver supports, when a driver is there.
    pub cuda_driver: Option<String>,
    /// cuDNN's version (`9.19.0`), when cuDNN is loaded.
    pub cudnn_version: Option<String>,
}

/// One CUDA device, as the CUDA runtime and driver describe it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CudaDevice {
    /// Its index (`cuda:N`).
    pub index: usize,
    /// Its name (`NVIDIA H200`).
    pub name: String,
    /// Compute capability (major, minor).
    pub capability: (i32, i32),
    /// Memory, in bytes.
    pub total_memory: u64,
}

impl RuntimeInfo {
    /// Asks libtorch, and the CUDA libraries it loaded.
    pub fn detect() -> Self {
        let cuda_devices = Cuda::device_count().max(0) as usize;
        Self {
            cuda: Cuda::is_available(),
            cuda_devices,
            cudnn: Cuda::cudnn_is_available(),
            cpu_threads: tch::get_num_threads().max(0) as usize,
            mkl: tch::utils::has_mkl(),
            devices: (0..cuda_devices).filter_map(cuda::device).collect(),
            cuda_runtime: cuda::runtime_version(),
            cuda_driver: cuda::driver_version(),
            cudnn_version: cuda::cudnn_version(),
        }
    }
}

/// The compute capability of CUDA device `index`, `None` without one (or without a CUDA
/// runtime).
pub(crate) fn cuda_capability(index: usize) -> Option<(i32, i32)> {
    cuda::device(index).map(|device| device.capability)
}

/// The CUDA runtime, driver and cuDNN, asked through the symbols libtorch's CUDA build loaded
/// into this process (`dlsym`): no CUDA header or library is needed to build fusekit, and a
/// CPU-only libtorch simply has none of them.
mod cuda {
    use std::ffi::{CStr, c_char, c_int, c_void};

    use super::CudaDevice;

    /// `cudaDevAttrComputeCapabilityMajor` and `...Minor`.
    const CAPABILITY_MAJOR: c_int = 75;
    const CAPABILITY_MINOR: c_int = 76;

    /// A symbol of the process's global scope, or of the already loaded `library`.
    fn symbol(library: Option<&CStr>, name: &CStr) -> Option<*mut c_void> {
        // SAFETY: dlopen with RTLD_NOLOAD only looks up a loaded library; dlsym reads tables.
        let pointer = unsafe {
            let handle = match library {
                None => libc::RTLD_DEFAULT,
                Some(library) => {
                    let handle = libc::dlopen(library.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
                    if handle.is_null() {
                        return None;
                    }
                    handle
                }
            };
            libc::dlsym(handle, name.as_ptr())
        };
        (!pointer.is_null()).then_some(pointer)
    }

    /// Calls a CUDA `int f(int*)` version getter.
    fn version_of(library: Option<&CStr>, name: &CStr) -> Option<c_int> {
        let pointer = symbol(library, name)?;
        // SAFETY: the CUDA runtime's and driver's version getters have this signature.
        let get: extern "C" fn(*mut c_int) -> c_int = unsafe { std::mem::transmute(pointer) };
        let mut version = 0;
        (get(&mut version) == 0 && version > 0).then_some(version)
    }

    /// `13000` as `13.0`.
    fn cuda_version_text(version: c_int) -> String {
        format!("{}.{}", version / 1000, version % 1000 / 10)
    }

    pub(super) fn runtime_version() -> Option<String> {
        version_of(None, c"cudaRuntimeGetVersion").map(cuda_version_text)
    }

    pub(super) fn driver_version() -> Option<String> {
        version_of(None, c"cudaDriverGetVersion").map(cuda_version_text)
    }

    pub(super) fn cudnn_version() -> Option<String> {
        let pointer = symbol(None, c"cudnnGetVersion")
            .or_else(|| symbol(Some(c"libcudnn.so.9"), c"cudnnGetVersion"))?;
        // SAFETY: `size_t cudnnGetVersion(void)`.
        let get: extern "C" fn() -> usize = unsafe { std::mem::transmute(pointer) };
        let version = get();
        // cuDNN 9 encodes major * 10000 + minor * 100 + patch.
        (version > 0).then(|| {
            format!(
                "{}.{}.{}",
                version / 10000,
                version % 10000 / 100,
                version % 100
            )
        })
    }

    /// Device `index`: capability from the runtime, name and memory from the driver.
    pub(super) fn device(index: usize) -> Option<CudaDevice> {
        let ordinal = c_int::try_from(index).ok()?;
        let attribute = symbol(None, c"cudaDeviceGetAttribute")?;
        // SAFETY: `cudaError_t cudaDeviceGetAttribute(int*, cudaDeviceAttr, int)`.
        let attribute: extern "C" fn(*mut c_int, c_int, c_int) -> c_int =
            unsafe { std::mem::transmute(attribute) };
        let (mut major, mut minor) = (0, 0);
        if attribute(&mut major, CAPABILITY_MAJOR, ordinal) != 0
            || attribute(&mut minor, CAPABILITY_MINOR, ordinal) != 0
        {
            return None;
        }
        let (name, total_memory) = driver_description(ordinal).unwrap_or_default();
        Some(CudaDevice {
            index,
            name,
            capability: (major, minor),
            total_memory,
        })
    }

    /// The driver's name and memory size of device `ordinal` (the runtime has initialised
    /// the driver by then).
    fn driver_description(ordinal: c_int) -> Option<(String, u64)> {
        let driver = Some(c"libcuda.so.1");
        let get = symbol(driver, c"cuDeviceGet")?;
        let name = symbol(driver, c"cuDeviceGetName")?;
        let memory = symbol(driver, c"cuDeviceTotalMem_v2")?;
        // SAFETY: the driver API's signatures (CUdevice is an int, CUresult an int).
        let (get, name, memory) = unsafe {
            (
                std::mem::transmute::<*mut c_void, extern "C" fn(*mut c_int, c_int) -> c_int>(get),
                std::mem::transmute::<*mut c_void, extern "C" fn(*mut c_char, c_int, c_int) -> c_int>(
                    name,
                ),
                std::mem::transmute::<*mut c_void, extern "C" fn(*mut usize, c_int) -> c_int>(
                    memory,
                ),
            )
        };
        let mut device = 0;
        if get(&mut device, ordinal) != 0 {
            return None;
        }
        let mut buffer = [0 as c_char; 256];
        let mut bytes = 0usize;
        if name(buffer.as_mut_ptr(), buffer.len() as c_int, device) != 0
            || memory(&mut bytes, device) != 0
        {
            return None;
        }
        // SAFETY: the driver wrote a NUL-terminated name into the buffer.
        let text = unsafe { CStr::from_ptr(buffer.as_ptr()) };
        Some((text.to_string_lossy().into_owned(), bytes as u64))
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
        assert_eq!(info.devices.len(), info.cuda_devices);
        for device in &info.devices {
            assert!(device.capability.0 >= 3, "{device:?}");
            assert!(
                device.total_memory > 0 && !device.name.is_empty(),
                "{device:?}"
            );
        }
        if info.cuda {
            assert!(info.cuda_runtime.is_some());
        } else {
            eprintln!("no CUDA device here: device descriptions not checked");
        }
        // A CUDA build of libtorch loads the CUDA runtime even without a device.
        if let Some(version) = &info.cuda_runtime {
            assert!(version.split('.').count() == 2, "{version}");
        }
    }
}
