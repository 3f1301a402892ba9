//! `fusekit device`: what the linked libtorch offers here.

use std::process::ExitCode;

use fusekit_train::RuntimeInfo;

/// Prints CUDA, cuDNN and CPU thread information.
pub fn run() -> anyhow::Result<ExitCode> {
    let info = RuntimeInfo::detect();
    println!(
        "cuda: {}",
        if info.cuda {
            "available"
        } else {
            "not available"
        }
    );
    println!("cuda devices: {}", info.cuda_devices);
    println!(
        "cudnn: {}",
        if info.cudnn {
            "available"
        } else {
            "not available"
        }
    );
    println!("cpu threads: {}", info.cpu_threads);
    println!("mkl: {}", info.mkl);
    println!(
        "default device: {}",
        if info.cuda { "cuda:0" } else { "cpu" }
    );
    Ok(ExitCode::SUCCESS)
}
