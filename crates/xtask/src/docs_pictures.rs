//! `cargo xtask docs-pictures`: the README's pictures, made by the commands a user runs.
//!
//! Generates the demo's dataset, trains a mid-fusion yolov8n on it with the demo's settings
//! (`pipelines/sample.yaml`: 10 epochs at 128 on the CPU; the run's plots),
//! predicts one pair, writes the HTML lint report of a dataset with defects and screenshots it
//! with headless Chromium, plots the learning-rate schedule; then writes each picture, scaled
//! down until it is under [`MAX_BYTES`], as a PNG under `docs/`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, ensure};
use image::codecs::png::{CompressionType, FilterType as PngFilter, PngEncoder};
use image::imageops::FilterType;
use image::{DynamicImage, ImageEncoder};

use crate::{apt_tool, cargo, run, setup};

/// Largest committed picture, in bytes.
const MAX_BYTES: usize = 150_000;
/// Widest committed picture, in pixels.
const MAX_WIDTH: u32 = 900;

/// (file in the work folder, picture under `docs/`).
const PICTURES: [(&str, &str); 9] = [
    ("runs/docs/results.png", "results.png"),
    ("runs/docs/BoxPR_curve.png", "BoxPR_curve.png"),
    ("runs/docs/confusion_matrix.png", "confusion_matrix.png"),
    ("runs/docs/labels.jpg", "labels.png"),
    ("runs/docs/train_batch0.jpg", "train_batch0.png"),
    ("runs/docs/val_batch0_pred.jpg", "val_batch0_pred.png"),
    ("predict/00000_010003.jpg", "predict.png"),
    ("lint-report.png", "lint_report.png"),
    ("schedule.png", "schedule.png"),
];

/// Makes the pictures in `target/docs-pictures` and writes them under `docs/`.
pub(crate) fn docs_pictures(root: &Path) -> anyhow::Result<()> {
    setup(root)?;
    apt_tool("chromium", "--version", "the lint report's screenshot")?;
    cargo(
        root,
        &["build", "--bin", "fusekit", "--bin", "fusekit-torch"],
    )?;
    let work = root.join("target/docs-pictures");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    std::fs::create_dir_all(&work)?;
    let fusekit = root.join("target/debug/fusekit");
    let step = |args: &[&str]| {
        run(Command::new(&fusekit)
            .args(args)
            .current_dir(&work)
            .env("OMP_NUM_THREADS", "2"))
    };
    step(&[
        "synth", "--out", "ds", "--pairs", "300", "--size", "320x256", "--scenes", "15",
    ])?;
    step(&["split", "ds", "--group", r"^(\d{2})", "--val", "0.2"])?;
    step(&["cache", "build", "ds", "--imgsz", "128", "--out", "cache"])?;
    // The demo's training settings (pipelines/sample.yaml), mid fusion.
    let train = "train --cache cache --imgsz 128 --batch 16 --accumulate 1 --lr-scaling none \
--lr0 0.01 --warmup-epochs 1 --close-mosaic 5 --fusion mid --device cpu --epochs 10";
    for extra in [
        "--project runs --name docs",
        "--print-schedule --plot schedule.png",
    ] {
        let args = format!("{train} {extra}");
        step(&args.split(' ').collect::<Vec<_>>())?;
    }
    step(&[
        "predict",
        "--weights",
        "runs/docs/weights/best.safetensors",
        "ds/images/010003.jpg",
        "ds/imagesIR/010003.jpg",
        "--imgsz",
        "128",
        "--device",
        "cpu",
        "--out",
        "predict",
    ])?;
    step(&[
        "synth",
        "--out",
        "defects",
        "--pairs",
        "20",
        "--size",
        "320x256",
        "--scenes",
        "2",
        "--inject",
        "PAIR003,IMG001,LBL007,LBL009,LBL001",
    ])?;
    // Lint exits 1 on findings: run it directly and check the report instead of the status.
    Command::new(&fusekit)
        .args([
            "lint",
            "defects",
            "--format",
            "html",
            "--out",
            "lint-report.html",
        ])
        .current_dir(&work)
        .status()
        .context("running fusekit lint")?;
    run(Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1100,1400",
        ])
        .arg(format!(
            "--screenshot={}",
            work.join("lint-report.png").display()
        ))
        .arg(format!(
            "file://{}",
            work.join("lint-report.html").display()
        )))?;
    let docs = root.join("docs");
    std::fs::create_dir_all(&docs)?;
    let mut total = 0;
    for (source, name) in PICTURES {
        let source = work.join(source);
        let picture =
            image::open(&source).with_context(|| format!("reading {}", source.display()))?;
        let bytes = small_png(&picture)?;
        std::fs::write(docs.join(name), &bytes)?;
        eprintln!("docs/{name}: {} KB", bytes.len() / 1000);
        total += bytes.len();
    }
    eprintln!("{} pictures, {} KB in all", PICTURES.len(), total / 1000);
    Ok(())
}

/// `picture` as a PNG of at most [`MAX_WIDTH`] pixels and [`MAX_BYTES`], scaled down in
/// steps of 20 % until it fits.
fn small_png(picture: &DynamicImage) -> anyhow::Result<Vec<u8>> {
    let mut width = picture.width().min(MAX_WIDTH);
    loop {
        let height = (f64::from(picture.height()) * f64::from(width) / f64::from(picture.width()))
            .round()
            .max(1.0) as u32;
        let scaled = picture
            .resize_exact(width, height, FilterType::Lanczos3)
            .into_rgb8();
        let mut bytes = Vec::new();
        PngEncoder::new_with_quality(&mut bytes, CompressionType::Best, PngFilter::Adaptive)
            .write_image(&scaled, width, height, image::ExtendedColorType::Rgb8)?;
        if bytes.len() <= MAX_BYTES {
            return Ok(bytes);
        }
        ensure!(width > 100, "cannot make a PNG under {MAX_BYTES} bytes");
        width = width * 4 / 5;
    }
}
