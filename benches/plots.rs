//! `cargo bench -p fusekit --bench plots`: what plotting adds to a short training run.
//!
//! The same short CPU run (a yolov8n on generated pairs, a few epochs with validation) is
//! trained with `--plots` and with `--no-plots`, alternately, `FUSEKIT_BENCH_REPEATS` times
//! each; the table gives the median wall time of each, their difference and ratio, and the
//! seconds the run itself spent drawing (`plot_seconds` of `--format json`). The issue's
//! target: plotting adds at most 2 s to a run.
//!
//! Overrides: `FUSEKIT_BENCH_PAIRS` (60), `_SIZE` (320x256), `_IMGSZ` (160), `_EPOCHS` (3),
//! `_BATCH` (8), `_THREADS` (1), `_REPEATS` (3).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// Runs `fusekit ARGS` in `dir` and returns its standard output; panics with its output when
/// it fails.
fn fusekit(dir: &Path, threads: &str, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_fusekit"))
        .args(args)
        .current_dir(dir)
        .env("OMP_NUM_THREADS", threads)
        .output()
        .expect("fusekit starts");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        panic!(
            "fusekit {args:?} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    stdout
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let [pairs, size, imgsz, epochs, batch, threads, repeats] = [
        ("PAIRS", "60"),
        ("SIZE", "320x256"),
        ("IMGSZ", "160"),
        ("EPOCHS", "3"),
        ("BATCH", "8"),
        ("THREADS", "1"),
        ("REPEATS", "3"),
    ]
    .map(|(name, default)| {
        std::env::var(format!("FUSEKIT_BENCH_{name}")).unwrap_or_else(|_| default.to_owned())
    });
    let repeats: usize = repeats.parse().expect("FUSEKIT_BENCH_REPEATS is a number");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join(format!("target/bench-data/plots-{pairs}-{size}-{imgsz}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    fusekit(
        &dir,
        &threads,
        &["synth", "--out", "ds", "--pairs", &pairs, "--size", &size],
    );
    fusekit(&dir, &threads, &["split", "ds", "--group", r"^(\d{2})"]);
    fusekit(
        &dir,
        &threads,
        &["cache", "build", "ds", "--imgsz", &imgsz, "--out", "cache"],
    );

    // (wall seconds, plot_seconds) per run, with plots and without.
    let mut with = (Vec::new(), Vec::new());
    let mut without = (Vec::new(), Vec::new());
    for repeat in 0..repeats {
        for plots in ["true", "false"] {
            let name = format!("plots-{plots}-{repeat}");
            let started = Instant::now();
            let args = format!(
                "train --cache cache --imgsz {imgsz} --epochs {epochs} --batch {batch} \
--device cpu --seed 0 --project runs --name {name} --format json --plots {plots}"
            );
            let summary = fusekit(&dir, &threads, &args.split(' ').collect::<Vec<_>>());
            let seconds = started.elapsed().as_secs_f64();
            let summary: serde_json::Value =
                serde_json::from_str(summary.trim()).expect("the JSON summary");
            let drawn = summary["plot_seconds"].as_f64().unwrap_or(0.0);
            let runs = if plots == "true" {
                &mut with
            } else {
                &mut without
            };
            runs.0.push(seconds);
            runs.1.push(drawn);
        }
    }
    let (wall_with, wall_without) = (median(&mut with.0), median(&mut without.0));
    let drawn = median(&mut with.1);
    println!(
        "{pairs} generated pairs ({size}), imgsz {imgsz}, {epochs} epochs of batch {batch}, \
{threads} intra-op thread(s), median of {repeats} runs each"
    );
    println!(
        "| --no-plots (reference) s | --plots s | added s | ratio | plot_seconds (in the run) |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {wall_without:.2} | {wall_with:.2} | {:.2} | {:.3} | {drawn:.2} |",
        wall_with - wall_without,
        wall_with / wall_without
    );
}
