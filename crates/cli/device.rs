//! `fusekit device`: what the linked libtorch offers here.

use std::process::ExitCode;

use clap::Args;
use fusekit_train::RuntimeInfo;

use crate::output::Format;

/// Arguments of `fusekit device`.
#[derive(Args)]
pub struct DeviceArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
}

/// Prints CUDA (each GPU's name, compute capability and memory; runtime, driver and cuDNN
/// versions), CPU thread and MKL information.
pub fn run(args: &DeviceArgs) -> anyhow::Result<ExitCode> {
    let info = RuntimeInfo::detect();
    if args.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(ExitCode::SUCCESS);
    }
    let available = |yes: bool| if yes { "available" } else { "not available" };
    let version = |v: &Option<String>| v.clone().unwrap_or_else(|| "not loaded".to_owned());
    println!("cuda: {}", available(info.cuda));
    println!("cuda devices: {}", info.cuda_devices);
    for device in &info.devices {
        println!(
            "  cuda:{}: {}, compute capability {}.{}, {:.1} GiB",
            device.index,
            device.name,
            device.capability.0,
            device.capability.1,
            device.total_memory as f64 / (1u64 << 30) as f64
        );
    }
    println!("cuda runtime: {}", version(&info.cuda_runtime));
    println!("cuda driver: {}", version(&info.cuda_driver));
    println!("cudnn: {}", available(info.cudnn));
    println!("cudnn version: {}", version(&info.cudnn_version));
    println!("cpu threads: {}", info.cpu_threads);
    println!("mkl: {}", info.mkl);
    println!(
        "default device: {}",
        if info.cuda { "cuda:0" } else { "cpu" }
    );
    Ok(ExitCode::SUCCESS)
}
