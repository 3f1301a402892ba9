//! `fusekit synth`: a deterministic sample dataset.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use fusekit_synth::{Defect, FileFormat, SynthOptions, generate};

use crate::progress;

/// Arguments of `fusekit synth`.
#[derive(Args)]
pub struct SynthArgs {
    /// Output folder (created; an earlier synth output there is replaced, anything else refused).
    #[arg(long, default_value = "datasets/sample")]
    out: PathBuf,
    /// Number of pairs.
    #[arg(long, default_value_t = 200)]
    pairs: usize,
    /// Image size, WIDTHxHEIGHT (LLVIP is 1280x1024).
    #[arg(long, default_value = "640x512", value_parser = fusekit_synth::parse_size)]
    size: (u32, u32),
    /// Random seed; the same options write byte-identical files.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Number of scenes (groups of consecutive frames, named SSFFFF like LLVIP).
    #[arg(long, default_value_t = 10)]
    scenes: usize,
    /// Class names, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "person")]
    names: Vec<String>,
    /// Channels of the IR images: 3 (grey content, as LLVIP) or 1.
    #[arg(long, default_value_t = 3)]
    ir_channels: u8,
    /// Bits per IR sample: 8, or 16 (raw counts of a radiometric camera, background near
    /// 28,000, warm objects a few hundred above; written as PNG unless --ir-format says tiff).
    #[arg(long, default_value_t = 8)]
    ir_bits: u8,
    /// File format of the images of every pair: jpeg, png or tiff (default: jpeg, or png with
    /// --ir-bits 16). RGB images take the same format, since pairs share name and extension.
    #[arg(long)]
    ir_format: Option<FileFormat>,
    /// JPEG quality.
    #[arg(long, default_value_t = 90)]
    quality: u8,
    /// Lint codes to inject one defect each for (comma-separated), or `all` (every per-pair
    /// defect). `DS005` instead shifts the IR content of every pair by 3% of the width right
    /// and 2% of the height up (a misaligned camera rig); name it on its own or with others.
    #[arg(long, value_delimiter = ',')]
    inject: Vec<String>,
    /// Pixels DX,DY (right, down; negative for left, up) by which the IR content of every
    /// pair is shifted against the RGB content.
    #[arg(long, value_parser = fusekit_synth::parse_shift, allow_hyphen_values = true)]
    ir_shift: Option<(i32, i32)>,
}

/// Generates the dataset and prints where it is.
pub fn run(args: &SynthArgs) -> anyhow::Result<ExitCode> {
    let mut inject = Vec::new();
    let mut ir_shift = args.ir_shift.unwrap_or((0, 0));
    for code in &args.inject {
        if code.eq_ignore_ascii_case("DS005") {
            if args.ir_shift.is_some() {
                bail!("--inject DS005 shifts every pair by its own offset; drop it or --ir-shift");
            }
            ir_shift = fusekit_synth::dataset_shift(args.size.0, args.size.1);
        } else if code.eq_ignore_ascii_case("all") {
            inject.extend_from_slice(Defect::ALL);
        } else if let Some(defect) = Defect::parse(code) {
            inject.push(defect);
        } else {
            bail!(
                "--inject: no defect for `{code}` (DS001 cannot be injected into a valid dataset)"
            );
        }
    }
    let options = SynthOptions {
        pairs: args.pairs,
        width: args.size.0,
        height: args.size.1,
        seed: args.seed,
        scenes: args.scenes,
        names: args.names.clone(),
        ir_channels: args.ir_channels,
        ir_bits: args.ir_bits,
        format: args.ir_format.unwrap_or(if args.ir_bits == 16 {
            FileFormat::Png
        } else {
            FileFormat::Jpeg
        }),
        quality: args.quality,
        inject,
        ir_shift,
    };
    let started = std::time::Instant::now();
    let bar = progress::bar("synth", options.pairs as u64, "pairs");
    let summary = generate(&args.out, &options, &|| bar.inc(1));
    bar.finish_and_clear();
    let summary = summary.with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "wrote {} pairs ({} objects) to {} in {:.1} s; data yaml: {}",
        summary.pairs,
        summary.objects,
        args.out.display(),
        started.elapsed().as_secs_f64(),
        summary.data_yaml.display()
    );
    for (defect, stem) in &summary.injected {
        eprintln!("  injected {} into {stem}", defect.code());
    }
    if options.ir_shift != (0, 0) {
        let (dx, dy) = options.ir_shift;
        eprintln!("  IR of every pair shifted by {dx:+},{dy:+} px");
    }
    Ok(ExitCode::SUCCESS)
}
