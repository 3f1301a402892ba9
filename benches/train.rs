//! `cargo bench -p fusekit --bench train`: `fusekit train` against Ultralytics training the same
//! yolov8n on the same images, side by side in one run.
//!
//! Both start from the same weights (Ultralytics' yolov8n built from its yaml with seed 0 for
//! the dataset's classes; fusekit imports them into its `rgb` stream), train `rgb` only with
//! the same hyperparameters (batch 16, nbs 64 so accumulate 4, SGD lr0 0.01, no warmup, linear
//! decay) and every augmentation off (mosaic, flips, HSV, scale, translate), on the same
//! generated images (a grouped split's train list; Ultralytics reads them with cache=ram,
//! fusekit from its cache). The table gives, per epoch, each trainer's mean box/cls/dfl losses
//! and training images per second (no validation in either), and fusekit's share of time spent
//! waiting for data. Data order differs (each shuffles with its own generator).
//!
//! Needs `FUSEKIT_BENCH_PYTHON` (a python with Ultralytics; `cargo xtask bench` sets it).
//! Overrides: `FUSEKIT_BENCH_PAIRS` (300), `_SIZE` (320x256), `_IMGSZ` (160), `_EPOCHS` (3),
//! `_BATCH` (16), `_THREADS` (1: what Ultralytics picks for CPU training on this machine).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("the command starts");
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn fusekit(dir: &Path, threads: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fusekit"));
    command.current_dir(dir).env("OMP_NUM_THREADS", threads);
    command
}

/// One epoch of one trainer: seconds of training, images, mean box/cls/dfl losses.
#[derive(Debug, Clone, Copy)]
struct Epoch {
    seconds: f64,
    images: f64,
    loss: [f64; 3],
}

/// fusekit's epochs from results.csv (its `time` column is cumulative; no validation ran).
fn fusekit_epochs(results: &Path, images: f64) -> Vec<Epoch> {
    let text = std::fs::read_to_string(results).expect("results.csv");
    let mut previous = 0.0;
    text.lines()
        .skip(1)
        .map(|line| {
            let v: Vec<f64> = line.split(',').map(|f| f.trim().parse().unwrap()).collect();
            let seconds = v[1] - previous;
            previous = v[1];
            Epoch {
                seconds,
                images,
                loss: [v[2], v[3], v[4]],
            }
        })
        .collect()
}

fn ultralytics_epochs(json: &Value) -> Vec<Epoch> {
    json["epochs"]
        .as_array()
        .expect("epochs")
        .iter()
        .map(|e| Epoch {
            seconds: e["seconds"].as_f64().unwrap(),
            images: e["images"].as_f64().unwrap(),
            loss: [
                e["box"].as_f64().unwrap(),
                e["cls"].as_f64().unwrap(),
                e["dfl"].as_f64().unwrap(),
            ],
        })
        .collect()
}

fn main() {
    let Some(python) = std::env::var_os("FUSEKIT_BENCH_PYTHON").map(PathBuf::from) else {
        eprintln!(
            "train bench: set FUSEKIT_BENCH_PYTHON to a python with Ultralytics (cargo xtask bench does)"
        );
        return;
    };
    let pairs = env_or("FUSEKIT_BENCH_PAIRS", "300");
    let size = env_or("FUSEKIT_BENCH_SIZE", "320x256");
    let imgsz = env_or("FUSEKIT_BENCH_IMGSZ", "160");
    let epochs = env_or("FUSEKIT_BENCH_EPOCHS", "3");
    let batch = env_or("FUSEKIT_BENCH_BATCH", "16");
    let threads = env_or("FUSEKIT_BENCH_THREADS", "1");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join(format!("target/bench-data/train-{pairs}-{size}-{imgsz}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    run(fusekit(&dir, &threads).args(["synth", "--out", "ds", "--pairs", &pairs, "--size", &size]));
    run(fusekit(&dir, &threads).args(["split", "ds", "--group", r"^(\d{2})", "--val", "0.2"]));
    run(fusekit(&dir, &threads).args([
        "cache", "build", "ds", "--split", "train", "--imgsz", &imgsz, "--out", "cache",
    ]));
    let script = root.join("benches/ultralytics_train.py");
    run(Command::new(&python)
        .current_dir(&dir)
        .arg(&script)
        .args(["init", "1", "yolov8n.pt"]));
    run(Command::new(&python)
        .current_dir(&dir)
        .arg(root.join("tools/ultralytics_to_safetensors.py"))
        .args(["yolov8n.pt", "yolov8n.safetensors"]));
    std::fs::write(
        dir.join("hyp.yaml"),
        "mosaic: 0\nfliplr: 0\nhsv_h: 0\nhsv_s: 0\nhsv_v: 0\nscale: 0\ntranslate: 0\n",
    )
    .unwrap();

    let summary = run(fusekit(&dir, &threads).args([
        "train",
        "--cache",
        "cache",
        "--hyp",
        "hyp.yaml",
        "--fusion",
        "rgb",
        "--model-scale",
        "n",
        "--weights",
        "yolov8n.safetensors",
        "--imgsz",
        &imgsz,
        "--epochs",
        &epochs,
        "--batch",
        &batch,
        "--warmup-epochs",
        "0",
        "--close-mosaic",
        "0",
        "--optimizer",
        "sgd",
        "--lr0",
        "0.01",
        "--device",
        "cpu",
        "--project",
        "runs",
        "--name",
        "fusekit",
        "--format",
        "json",
        // The Ultralytics reference runs with plots=False.
        "--no-plots",
    ]));
    let summary: Value = serde_json::from_str(summary.trim()).expect("fusekit's JSON summary");
    let reference = run(Command::new(&python).current_dir(&dir).arg(&script).args([
        "train",
        "yolov8n.pt",
        "ds/split.yaml",
        &epochs,
        &batch,
        &imgsz,
        &threads,
        dir.join("runs").to_str().unwrap(),
    ]));
    let reference: Value =
        serde_json::from_str(reference.lines().last().unwrap()).expect("the reference's JSON");
    let theirs = ultralytics_epochs(&reference);
    let images = theirs.first().map_or(0.0, |e| e.images);
    let ours = fusekit_epochs(&dir.join("runs/fusekit/results.csv"), images);

    println!(
        "{pairs} generated pairs ({size}), {images} train images, imgsz {imgsz}, batch {batch}, \
{threads} intra-op thread(s), rgb yolov8n, same initial weights, augmentation off"
    );
    println!(
        "| epoch | fusekit box / cls / dfl | Ultralytics box / cls / dfl | loss ratio (box, cls, dfl) | fusekit img/s | Ultralytics img/s | speed ratio |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        let ratio = [0, 1, 2].map(|k| a.loss[k] / b.loss[k]);
        let (ra, rb) = (a.images / a.seconds, b.images / b.seconds);
        println!(
            "| {} | {:.3} / {:.3} / {:.3} | {:.3} / {:.3} / {:.3} | {:.3}, {:.3}, {:.3} | {ra:.1} | {rb:.1} | {:.2}x |",
            i + 1,
            a.loss[0],
            a.loss[1],
            a.loss[2],
            b.loss[0],
            b.loss[1],
            b.loss[2],
            ratio[0],
            ratio[1],
            ratio[2],
            ra / rb
        );
    }
    println!(
        "fusekit: {:.1} images/s over the run, {:.1}% of training time waiting for data",
        summary["images_per_second"].as_f64().unwrap_or(0.0),
        summary["data_wait"].as_f64().unwrap_or(0.0) * 100.0
    );
}
