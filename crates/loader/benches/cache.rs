//! `cargo bench -p fusekit-loader --bench cache` (or `cargo xtask bench`): the cache stage on 300
//! generated 1280x1024 JPEG pairs at imgsz 640, each number beside its reference from the same
//! run:
//! - build rate vs the decode floor (both images of every pair decoded once, all cores) and vs
//!   Ultralytics' `cache=ram` (when `FUSEKIT_BENCH_PYTHON` has ultralytics), halved per pair;
//! - bytes per pair vs YOLOFuse's 6-channel RAM layout at the same size;
//! - an epoch of letterboxed batches from a warm cache vs single-thread memcpy bandwidth;
//! - an epoch with augmentation, in pairs/s per core.
//!
//! It lives here rather than in `fusekit-cache` because it measures the whole stage, the
//! loader's reads included.

#[path = "../../cache/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fusekit_cache::{BuildOptions, Cache, IrChannels, IrNorm, MapMode, build};
use fusekit_loader::{Augment, Loader, LoaderOptions};
use fusekit_synth::{SynthOptions, generate};
use rayon::prelude::*;

const IMGSZ: u32 = 640;

fn main() {
    let pairs: usize = std::env::var("FUSEKIT_BENCH_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let data =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../target/bench-data/lint-{pairs}"));
    let options = SynthOptions {
        pairs,
        width: 1280,
        height: 1024,
        scenes: 12,
        ..SynthOptions::default()
    };
    if !data.join("data.yaml").is_file() {
        eprintln!("generating {pairs} 1280x1024 pairs in {}", data.display());
        generate(&data, &options, &|| {}).expect("generating the benchmark dataset");
    }
    let inputs = common::synth_inputs(&data, &options);
    inputs.par_iter().for_each(|i| {
        drop(std::fs::read(&i.rgb));
        drop(std::fs::read(&i.ir));
    });
    let threads = rayon::current_num_threads();

    let floor = best_of_3(|| {
        inputs.par_iter().for_each(|i| {
            for path in [&i.rgb, &i.ir] {
                image::load_from_memory(&std::fs::read(path).expect("readable"))
                    .expect("decodable");
            }
        })
    });
    let out = tempdir();
    let target = out.join("train.fkc");
    let build_options = BuildOptions {
        imgsz: IMGSZ,
        mode: MapMode::Ram,
        ir_channels: IrChannels::Auto,
        ir_norm: IrNorm::Auto,
        split: "train".into(),
        names: vec!["person".into()],
        skipped: vec![],
        force: true,
    };
    let build_time = best_of_3(|| {
        build(&target, &inputs, &build_options, &|| {}).expect("the cache builds");
    });
    let ultralytics = ultralytics_images_per_second(&data.join("images"));

    let cache = Arc::new(Cache::open(&target, Some(MapMode::Ram)).expect("the cache opens"));
    let bytes = cache.header().file_len as f64 / pairs as f64;
    let six: f64 = (0..cache.len())
        .map(|i| f64::from(cache.row(i).height) * f64::from(cache.row(i).width) * 6.0)
        .sum::<f64>()
        / pairs as f64;

    let memcpy = memcpy_bandwidth();
    let plain = Loader::new(
        cache.clone(),
        LoaderOptions {
            batch: 16,
            ..LoaderOptions::default()
        },
    );
    let _warm: usize = plain.epoch(0).map(|b| b.expect("batch").len()).sum();
    let mut produced = 0usize;
    let read_time =
        time(|| produced = plain.epoch(1).map(|b| b.expect("batch").images.len()).sum());
    let read_bandwidth = produced as f64 / read_time.as_secs_f64();
    let augmented = Loader::new(
        cache.clone(),
        LoaderOptions {
            batch: 16,
            augment: Some(Augment::default()),
            ..LoaderOptions::default()
        },
    );
    let augment_time = time(|| {
        let n: usize = augmented.epoch(1).map(|b| b.expect("batch").len()).sum();
        assert_eq!(n, pairs);
    });

    let rate = |d: Duration| pairs as f64 / d.as_secs_f64();
    let gib = |b: f64| b / (1u64 << 30) as f64;
    println!(
        "| measure ({pairs} pairs of 1280x1024, imgsz {IMGSZ}, {threads} threads) | result | reference | ratio |"
    );
    println!("| --- | --- | --- | --- |");
    println!(
        "| build (decode, resize, checksum, write) | {:.1} pairs/s | decode floor {:.1} pairs/s | {:.2} of the floor |",
        rate(build_time),
        rate(floor),
        rate(build_time) / rate(floor)
    );
    if let Some(images) = ultralytics {
        println!(
            "| build vs Ultralytics cache=ram | {:.1} pairs/s | {:.1} images/s = {:.1} pairs/s | **{:.2}x** (goal >= 3) |",
            rate(build_time),
            images,
            images / 2.0,
            rate(build_time) / (images / 2.0)
        );
    }
    println!(
        "| bytes per pair | {:.2} MB | 6-channel layout {:.2} MB | **{:.3}x** (goal <= 0.7) |",
        bytes / 1e6,
        six / 1e6,
        bytes / six
    );
    println!(
        "| epoch of letterboxed batches, warm, no augmentation | {:.2} GiB/s | memcpy (1 thread) {:.2} GiB/s | **{:.0}%** (goal >= 70%) |",
        gib(read_bandwidth),
        gib(memcpy),
        100.0 * read_bandwidth / memcpy
    );
    println!(
        "| epoch with augmentation (mosaic, affine, flip, hsv) | {:.1} pairs/s | {threads} cores | {:.1} pairs/s per core |",
        rate(augment_time),
        rate(augment_time) / threads as f64
    );
    let _ = std::fs::remove_dir_all(&out);
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("fusekit-cache-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    dir
}

fn best_of_3(mut f: impl FnMut()) -> Duration {
    (0..3).map(|_| time(&mut f)).min().expect("three runs")
}

fn time(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

/// Single-thread memcpy of a 256 MiB buffer, best of 5.
fn memcpy_bandwidth() -> f64 {
    let src = vec![7u8; 256 << 20];
    let mut dst = vec![0u8; 256 << 20];
    let best = (0..5)
        .map(|_| {
            let start = Instant::now();
            dst.copy_from_slice(&src);
            std::hint::black_box(&dst);
            start.elapsed()
        })
        .min()
        .expect("five runs");
    src.len() as f64 / best.as_secs_f64()
}

fn ultralytics_images_per_second(images: &Path) -> Option<f64> {
    let python = std::env::var_os("FUSEKIT_BENCH_PYTHON")?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/ultralytics_cache.py");
    let output = Command::new(python)
        .arg(script)
        .arg(images)
        .arg(IMGSZ.to_string())
        .output()
        .ok()?;
    if !output.status.success() {
        eprintln!(
            "ultralytics cache failed: {}",
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
