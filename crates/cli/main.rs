//! `fusekit`: lint, split, cache and train paired RGB + infrared detection datasets.

mod cache;
#[cfg(feature = "train")]
mod device;
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Lint(args) => lint::run(args),
        Command::Rules(args) => rules::run(&args),
        Command::Cache(args) => cache::run(args),
        Command::Split(args) => split::run(&args),
        Command::Synth(args) => synth::run(&args),
        Command::Import(args) => import::run(&args),
        Command::Run(args) => run::run(&args),
        #[cfg(feature = "train")]
        Command::Device(args) => device::run(&args),
        #[cfg(feature = "train")]
        Command::Predict(args) => predict::run(&args),
        #[cfg(feature = "train")]
        Command::Models(args) => models::run(&args),
        #[cfg(feature = "train")]
        Command::Val(args) => val::run(&args),
        #[cfg(feature = "train")]
        Command::Train(args) => train::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
