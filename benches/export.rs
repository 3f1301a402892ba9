//! `cargo bench -p fusekit --bench export`: how long `fusekit export` takes for yolov8n at 640
//! (80 classes, the goal being under 10 s on the CPU for mid fusion), from exec to exit
//! (libtorch start-up included), against Ultralytics 8.4 exporting its own yolov8n to ONNX in
//! the same run (`model.export(format="onnx", simplify=False)`, the call alone), each the
//! median of 3 runs. The Ultralytics side needs `FUSEKIT_PYTHON` (`cargo xtask bench` sets it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fusekit_detect::{Detector, Fusion, ModelConfig, ModelScale, weights};
use tch::Device;
use tch::nn::VarStore;

const RUNS: usize = 3;

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn save_untrained(fusion: Fusion, path: &Path) {
    let vs = VarStore::new(Device::Cpu);
    let config = ModelConfig {
        scale: ModelScale::N,
        fusion,
        names: (0..80).map(|i| format!("class{i}")).collect(),
        ir_channels: 1,
    };
    let _ = Detector::new(&vs.root(), config.clone());
    weights::save(&vs, &config, path).expect("weights written");
}

fn fusekit_export(weights: &Path, format: &str, out: &Path) -> Duration {
    median(
        (0..RUNS)
            .map(|_| {
                let start = Instant::now();
                let status = Command::new(env!("CARGO_BIN_EXE_fusekit"))
                    .args(["export", "--imgsz", "640", "--format", format, "--weights"])
                    .arg(weights)
                    .arg("--out")
                    .arg(out)
                    .stdout(Stdio::null())
                    .status()
                    .expect("fusekit starts");
                assert!(status.success(), "fusekit export failed");
                start.elapsed()
            })
            .collect(),
    )
}

/// Seconds Ultralytics' `export(format="onnx")` of yolov8n.yaml takes, median of [`RUNS`].
fn ultralytics_export(python: &Path, dir: &Path) -> Option<Duration> {
    let script = format!(
        "import time\nfrom ultralytics import YOLO\ntimes = []\nfor _ in range({RUNS}):\n    \
model = YOLO('yolov8n.yaml')\n    start = time.perf_counter()\n    \
model.export(format='onnx', imgsz=640, simplify=False, verbose=False)\n    \
times.append(time.perf_counter() - start)\nprint(sorted(times)[len(times) // 2])\n"
    );
    let output = Command::new(python)
        .args(["-c", &script])
        .current_dir(dir)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let seconds: f64 = text.lines().last()?.trim().parse().ok()?;
    Some(Duration::from_secs_f64(seconds))
}

fn main() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    println!("export of yolov8n at 640 (80 classes), median of {RUNS} runs");
    let reference = std::env::var_os("FUSEKIT_PYTHON")
        .map(PathBuf::from)
        .and_then(|python| ultralytics_export(&python, dir.path()));
    match reference {
        Some(t) => println!(
            "  Ultralytics yolov8n (RGB) to ONNX     {:6.2} s (the export call)",
            t.as_secs_f64()
        ),
        None => println!("  Ultralytics: FUSEKIT_PYTHON unset or failed, no reference"),
    }
    for fusion in [Fusion::Rgb, Fusion::Mid] {
        let weights = dir.path().join(format!("{fusion}.safetensors"));
        save_untrained(fusion, &weights);
        for format in ["onnx", "torchscript"] {
            let out = dir.path().join(format!("{fusion}.{format}"));
            let t = fusekit_export(&weights, format, &out);
            let ratio = reference
                .map(|r| {
                    format!(
                        "  ({:.2}x Ultralytics' time)",
                        t.as_secs_f64() / r.as_secs_f64()
                    )
                })
                .unwrap_or_default();
            println!(
                "  fusekit yolov8n {fusion:<4} to {format:<12}{:6.2} s (whole process; goal < 10 s){ratio}",
                t.as_secs_f64()
            );
        }
    }
}
