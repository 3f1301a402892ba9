//! `fusekit models`: parameters and GFLOPs of every model scale and fusion mode.

use std::process::ExitCode;

use clap::Args;
use fusekit_detect::{Detector, Fusion, ModelConfig, ModelScale, parameter_count};
use serde_json::json;
use tch::Device;
use tch::nn::VarStore;

use crate::output::Format;

/// Print parameters and GFLOPs of every (scale, fusion), measured on the models themselves.
///
/// GFLOPs are 2 x the multiply-accumulates of all convolutions in one forward pass at
/// `--imgsz` (Ultralytics counts a little more: BatchNorm, activations and pooling).
#[derive(Args)]
pub struct ModelsArgs {
    /// Number of classes.
    #[arg(long, default_value_t = 80)]
    classes: usize,
    /// IR planes (1 for grey thermal images).
    #[arg(long, default_value_t = 1)]
    ir_channels: i64,
    /// Input size.
    #[arg(long, default_value_t = 640)]
    imgsz: i64,
    /// `human` prints a table; `json` one record per model.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
}

/// Runs `fusekit models`.
pub fn run(args: &ModelsArgs) -> anyhow::Result<ExitCode> {
    if args.classes == 0 || !(1..=3).contains(&args.ir_channels) {
        anyhow::bail!("--classes must be >= 1 and --ir-channels 1, 2 or 3");
    }
    if args.format == Format::Human {
        println!("| model | fusion | parameters | GFLOPs @ {} |", args.imgsz);
        println!("| --- | --- | ---: | ---: |");
    }
    for &scale in ModelScale::ALL {
        for &fusion in Fusion::ALL {
            let vs = VarStore::new(Device::Cpu);
            let model = Detector::new(
                &vs.root(),
                ModelConfig {
                    scale,
                    fusion,
                    names: (0..args.classes).map(|i| i.to_string()).collect(),
                    ir_channels: args.ir_channels,
                },
            );
            let parameters = parameter_count(&vs);
            let gflops = model.gflops(args.imgsz);
            match args.format {
                Format::Human => println!(
                    "| yolov8{scale} | {fusion} | {:.2} M | {gflops:.1} |",
                    parameters as f64 / 1e6
                ),
                Format::Json => println!(
                    "{}",
                    json!({"scale": scale.as_str(), "fusion": fusion.as_str(),
                           "parameters": parameters, "gflops": gflops, "imgsz": args.imgsz})
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
