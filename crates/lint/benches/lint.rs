//! `cargo bench -p fusekit-lint --bench lint` (or `cargo xtask bench`): lint throughput on 300
//! generated 1280x1024 JPEG pairs, and the bytes each mode reads per pair (the lint report's
//! `summary.bytes_read`), side by side with its references measured in the same run:
//! - the decode floor: every image read and decoded once with the same decoder on all cores;
//! - full decode with the misregistration estimate (PAIR007, DS005) turned off, which shows
//!   what that estimate costs;
//! - Ultralytics' label scan (`verify_image_label` over the RGB images, on its own thread pool),
//!   when `FUSEKIT_BENCH_PYTHON` names a Python with ultralytics installed.
//!
//! Prints a Markdown table for BENCHMARKS.md. `FUSEKIT_BENCH_PAIRS` changes the pair count.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fusekit_dataset::{Dataset, DecodeLevel};
use fusekit_lint::{Level, Levels, LintOptions, lint};
use fusekit_synth::{SynthOptions, generate};
use rayon::prelude::*;

const RUNS: usize = 3;

fn main() {
    let pairs: usize = std::env::var("FUSEKIT_BENCH_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let data =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../target/bench-data/lint-{pairs}"));
    if !data.join("data.yaml").is_file() {
        eprintln!("generating {pairs} 1280x1024 pairs in {}", data.display());
        let options = SynthOptions {
            pairs,
            width: 1280,
            height: 1024,
            scenes: 12,
            ..SynthOptions::default()
        };
        generate(&data, &options, &|| {}).expect("generating the benchmark dataset");
    }
    let dataset =
        Dataset::open(&data.join("data.yaml"), None).expect("the generated dataset opens");
    let images: Vec<PathBuf> = dataset
        .scan()
        .pairs
        .iter()
        .flat_map(|p| {
            [
                p.rgb.clone(),
                p.ir.path()
                    .expect("every generated pair has IR")
                    .to_path_buf(),
            ]
        })
        .collect();
    let bytes: u64 = images
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    // Warm the page cache so that every measurement reads from memory.
    images.par_iter().for_each(|p| drop(std::fs::read(p)));

    let (floor, ()) = best(|| {
        images.par_iter().for_each(|p| {
            let file = std::fs::read(p).expect("readable");
            image::load_from_memory(&file).expect("decodable");
        })
    });
    let (header, header_read) = best(|| check_clean(&dataset, DecodeLevel::Header, true));
    let (full, full_read) = best(|| check_clean(&dataset, DecodeLevel::Full, true));
    let (unregistered, _) = best(|| check_clean(&dataset, DecodeLevel::Full, false));
    let ultralytics = ultralytics_images_per_second(&data);

    let threads = rayon::current_num_threads();
    let rate = |d: Duration| pairs as f64 / d.as_secs_f64();
    let per_pair = |bytes: u64| bytes as f64 / pairs as f64 / 1e3;
    println!(
        "| measure ({pairs} pairs, {:.0} KB per image on average, {threads} threads) | time | rate |",
        bytes as f64 / images.len() as f64 / 1e3
    );
    println!("| --- | --- | --- |");
    println!(
        "| decode floor (read + decode RGB and IR once, all cores) | {:.3} s | {:.0} pairs/s |",
        floor.as_secs_f64(),
        rate(floor)
    );
    println!(
        "| fusekit lint --decode header ({:.0} KB read per pair) | {:.3} s | {:.0} pairs/s |",
        per_pair(header_read),
        header.as_secs_f64(),
        rate(header)
    );
    println!(
        "| fusekit lint --decode full ({:.0} KB read per pair) | {:.3} s | {:.0} pairs/s |",
        per_pair(full_read),
        full.as_secs_f64(),
        rate(full)
    );
    println!(
        "| fusekit lint --decode full, PAIR007 and DS005 allowed (no shift estimate) | {:.3} s | {:.0} pairs/s |",
        unregistered.as_secs_f64(),
        rate(unregistered)
    );
    match ultralytics {
        Some(images_per_second) => {
            println!("| Ultralytics label scan (RGB only) | | {images_per_second:.0} images/s |");
            println!();
            println!(
                "header pair rate / Ultralytics image rate: **{:.2}x** (goal >= 2)",
                rate(header) / images_per_second
            );
        }
        None => println!(
            "\nUltralytics not measured: set FUSEKIT_BENCH_PYTHON (cargo xtask bench does)."
        ),
    }
    println!(
        "full decode time / decode floor: **{:.2}x** (goal <= 1.3)",
        full.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "shift estimate (PAIR007, DS005): {:.2}x the full decode without it",
        full.as_secs_f64() / unregistered.as_secs_f64()
    );
    println!(
        "header mode reads {:.0} KB per pair of {:.0} KB on disk ({:.1}%)",
        per_pair(header_read),
        per_pair(bytes),
        100.0 * header_read as f64 / bytes as f64
    );
}

/// Lints the dataset (`registration`: with PAIR007 and DS005, whose shift estimate the
/// full decode otherwise skips), checks it is clean, and returns the bytes read from image
/// files.
fn check_clean(dataset: &Dataset, decode: DecodeLevel, registration: bool) -> u64 {
    let mut levels = Levels::default();
    if !registration {
        for code in ["PAIR007", "DS005"] {
            levels.set(code, Level::Allow).expect("known codes");
        }
    }
    let run = lint(
        dataset,
        &LintOptions {
            decode,
            levels,
            ..LintOptions::default()
        },
        &|| {},
    );
    assert_eq!(
        run.report.summary.errors, 0,
        "the benchmark dataset lints clean"
    );
    assert_eq!(
        run.report.summary.warnings, 0,
        "the benchmark dataset's pairs are registered: no PAIR007 / DS005"
    );
    run.report.summary.bytes_read
}

/// The fastest of [`RUNS`] runs of `f`, with what that run returned.
fn best<T>(mut f: impl FnMut() -> T) -> (Duration, T) {
    (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            let value = f();
            (start.elapsed(), value)
        })
        .min_by_key(|(elapsed, _)| *elapsed)
        .expect("RUNS > 0")
}

fn ultralytics_images_per_second(data: &Path) -> Option<f64> {
    let python = std::env::var_os("FUSEKIT_BENCH_PYTHON")?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/ultralytics_scan.py");
    let output = Command::new(python)
        .arg(script)
        .arg(data.join("images"))
        .arg(RUNS.to_string())
        .output()
        .ok()?;
    if !output.status.success() {
        eprintln!(
            "ultralytics scan failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        return None;
    }
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .lines()
        .last()?
        .parse()
        .ok()
}
