//! The `fusekit` command line, as two binaries built from this one library:
//!
//! - `fusekit` runs the dataset commands (lint, split, cache, rules, import, synth) without
//!   loading libtorch, so they start in milliseconds and run where libtorch is missing; for
//!   the commands that need it (train, val, predict, export, models, device, run) it hands over to
//!   `fusekit-torch`, which it finds beside itself ([`delegate`]);
//! - `fusekit-torch` runs every command in-process.
//!
//! A binary links libtorch only when it references it: the dataset binary's code path never
//! calls into the libtorch-backed commands, and the linker leaves libtorch out of it.

mod cache;
#[cfg(feature = "train")]
mod device;
#[cfg(feature = "train")]
mod export;
mod import;
mod lint;
#[cfg(feature = "train")]
mod models;
mod output;
#[cfg(feature = "train")]
mod predict;
mod progress;
mod rules;
mod run;
mod split;
mod synth;
#[cfg(feature = "train")]
mod train;
#[cfg(feature = "train")]
mod val;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Tools for RGB + infrared (thermal) object detection datasets.
///
/// Datasets follow the Ultralytics layout with an IR folder beside the RGB one:
/// `images/`, `imagesIR/` (same file names) and `labels/` (YOLO txt), described by a data
/// yaml or given as a folder.
#[derive(Parser)]
#[command(name = "fusekit", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a paired dataset: pairing, both images of every pair, labels, splits.
    Lint(lint::LintArgs),
    /// Write deterministic, stratified, leak-free train/val(/test) lists and a data yaml.
    Split(split::SplitArgs),
    /// Build, verify, inspect or look at memory-mapped paired-tensor caches.
    Cache(cache::CacheArgs),
    /// List the lint rules with their codes, default levels and descriptions.
    Rules(rules::RulesArgs),
    /// Convert LLVIP or another Pascal VOC style RGB + IR dataset into fusekit's layout.
    Import(import::ImportArgs),
    /// Write a deterministic LLVIP-like sample dataset (optionally with defects injected).
    Synth(synth::SynthArgs),
    /// Run a pipeline file (lint, split, cache, train, predict), skipping what is up to date.
    Run(Box<run::RunArgs>),
    /// Show what libtorch offers on this machine (GPUs, compute capability, memory, CUDA and
    /// cuDNN versions, threads).
    #[cfg(feature = "train")]
    Device(device::DeviceArgs),
    /// Train the dual-stream detector from a cache (batch arithmetic, schedule, EMA, mAP).
    #[cfg(feature = "train")]
    Train(Box<train::TrainArgs>),
    /// Validate weights on a cache: P, R, mAP50, mAP50-95 overall and per class.
    #[cfg(feature = "train")]
    Val(val::ValArgs),
    /// Parameters and GFLOPs of every model scale and fusion mode.
    #[cfg(feature = "train")]
    Models(models::ModelsArgs),
    /// Detect objects in RGB + IR pairs with trained weights (JSON records and pictures).
    #[cfg(feature = "train")]
    Predict(predict::PredictArgs),
    /// Export trained weights to ONNX or TorchScript for ONNX Runtime, TensorRT and PyTorch.
    #[cfg(feature = "train")]
    Export(export::ExportArgs),
}

/// The dataset commands, in-process; `None` for a command that needs libtorch.
fn run_dataset_command(command: Command) -> Option<anyhow::Result<ExitCode>> {
    Some(match command {
        Command::Lint(args) => lint::run(args),
        Command::Rules(args) => rules::run(&args),
        Command::Cache(args) => cache::run(args),
        Command::Split(args) => split::run(&args),
        Command::Synth(args) => synth::run(&args),
        Command::Import(args) => import::run(&args),
        // Without libtorch a pipeline has no train or predict stage to run.
        #[cfg(not(feature = "train"))]
        Command::Run(args) => run::run(&args),
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

/// `fusekit`: the dataset commands in-process, the others through `fusekit-torch`.
pub fn dataset_main() -> ExitCode {
    let cli = Cli::parse();
    let result = match run_dataset_command(cli.command) {
        Some(result) => result,
        None => delegate(),
    };
    exit(result)
}

/// `fusekit-torch`: every command in-process.
#[cfg(feature = "train")]
pub fn torch_main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(&args),
        Command::Device(args) => device::run(&args),
        Command::Predict(args) => predict::run(&args),
        Command::Export(args) => export::run(&args),
        Command::Models(args) => models::run(&args),
        Command::Val(args) => val::run(&args),
        Command::Train(args) => train::run(&args),
        dataset => run_dataset_command(dataset).expect("a dataset command"),
    };
    exit(result)
}

/// Replaces this process with `fusekit-torch` (beside this executable) on the same
/// arguments; returns only when that fails.
fn delegate() -> anyhow::Result<ExitCode> {
    use std::os::unix::process::CommandExt;

    let exe = std::env::current_exe()?;
    let torch = exe.with_file_name(TORCH_BINARY);
    let error = std::process::Command::new(&torch)
        .args(std::env::args_os().skip(1))
        .exec();
    anyhow::bail!(
        "this command needs libtorch, which fusekit runs through {TORCH_BINARY}: starting {} \
failed ({error}); install both binaries side by side (`cargo install --path .` does)",
        torch.display()
    )
}

/// The binary that runs the commands needing libtorch.
const TORCH_BINARY: &str = "fusekit-torch";

fn exit(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
