//! `fusekit export`: trained weights to ONNX or TorchScript.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use fusekit_hyp::Imgsz;
use fusekit_stages::export::{DEFAULT_OPSET, Format, Outcome, Params};

use crate::output;

/// Export trained weights for deployment: ONNX (ONNX Runtime, TensorRT) or TorchScript
/// (`torch.jit.load`, libtorch).
///
/// The model takes `rgb` [B,3,H,W] and `ir` [B,C,H,W] (a single-stream model only its own),
/// floats in 0-1, letterboxed with grey 114 as `fusekit predict` does, and returns `output0`
/// [B, 4+nc, anchors]: box centre x, y, width, height in input pixels, then the class scores.
/// NMS is left to the consumer. Class names, image size, fusion mode, IR planes and the pad
/// value are stored in the file (ONNX metadata properties; TorchScript `extra/config.txt`).
#[derive(Args)]
pub struct ExportArgs {
    /// Weights (`.safetensors` written by fusekit, model configuration included).
    #[arg(long)]
    weights: PathBuf,
    /// File format: `onnx` or `torchscript`.
    #[arg(long, default_value = "onnx")]
    format: Format,
    /// Input height and width, a multiple of 32.
    #[arg(long, default_value_t = Imgsz::DEFAULT)]
    imgsz: Imgsz,
    /// Batch size of the inputs (with --dynamic, the one written in the metadata).
    #[arg(long, default_value_t = 1)]
    batch: i64,
    /// ONNX only: batch, height and width chosen at run time.
    #[arg(long)]
    dynamic: bool,
    /// ONNX only: float16 inputs, weights and output (half the file; for GPUs and TensorRT).
    #[arg(long)]
    half: bool,
    /// ONNX operator set (13 to 21).
    #[arg(long, default_value_t = DEFAULT_OPSET)]
    opset: i64,
    /// The file to write. Default: the weights' path with `.onnx` or `.torchscript`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// TorchScript only: where to trace, `cpu`, `cuda` or `cuda:N` (a traced model runs on the
    /// device it was traced on).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// `human` prints a summary; `json` the export's record.
    #[arg(long, value_enum, default_value_t = output::Format::Human)]
    report: output::Format,
}

/// Runs `fusekit export`.
pub fn run(args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let params = Params {
        weights: args.weights.clone(),
        format: args.format,
        imgsz: args.imgsz,
        batch: args.batch,
        dynamic: args.dynamic,
        half: args.half,
        opset: args.opset,
        out: args.out.clone(),
        device: args.device.clone(),
    };
    let outcome = fusekit_stages::export::run(&params)?;
    match args.report {
        output::Format::Human => print_summary(&outcome),
        output::Format::Json => println!("{}", serde_json::to_string(&outcome)?),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(outcome: &Outcome) {
    println!(
        "exported {} ({}, {:.1} MB) in {:.1} s",
        outcome.path.display(),
        outcome.format,
        outcome.bytes as f64 / 1e6,
        outcome.seconds
    );
    for input in &outcome.inputs {
        println!("  input  {} [{}]", input.name, input.shape.join(", "));
    }
    println!(
        "  output {} [{}]",
        outcome.output.name,
        outcome.output.shape.join(", ")
    );
}
