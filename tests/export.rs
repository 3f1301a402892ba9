//! `fusekit export` writes ONNX and TorchScript files that ONNX Runtime, PyTorch and tch run
//! to the same numbers as fusekit's own forward pass, and that reproduce `fusekit predict`.
//!
//! The Python side (`tests/export_check.py`, `examples/onnx_predict.py`) runs under
//! `FUSEKIT_PYTHON` (the reference environment `cargo xtask test` provides, with onnx and
//! onnxruntime); without it those checks are skipped with a note.

use std::path::{Path, PathBuf};
use std::process::Command;

use fusekit_detect::{Detector, Fusion, ModelConfig, ModelScale, weights};
use serde_json::Value;
use tch::nn::VarStore;
use tch::{CModule, Device, Kind, Tensor};

/// Largest difference allowed between an exported float32 model and fusekit's forward pass,
/// relative to the value (absolute below 1).
const F32_TOLERANCE: f64 = 1e-4;
/// The same for `--half` (float16 weights and arithmetic).
const HALF_TOLERANCE: f64 = 1e-2;

/// libtorch's random generator is global: tests hold this from a seed to the model's
/// initialisation, and while drawing inputs, so that each model is the same on every run.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Saves a yolov8 `scale` of `fusion` (two classes, one IR plane) whose BatchNorm statistics
/// and affine parameters are drawn at random, so that folding them into the convolutions is
/// really exercised, to `path`.
fn save_model(scale: ModelScale, fusion: Fusion, seed: i64, path: &Path) {
    let config = ModelConfig {
        scale,
        fusion,
        names: vec!["person".into(), "it's a car".into()],
        ir_channels: 1,
    };
    let vs = VarStore::new(Device::Cpu);
    {
        let _rng = TORCH_RNG.lock().unwrap_or_else(|p| p.into_inner());
        tch::manual_seed(seed);
        let _ = Detector::new(&vs.root(), config.clone());
        tch::no_grad(|| {
            for (name, mut t) in vs.variables() {
                let shape = t.size();
                let random = if name.ends_with("running_mean") || name.ends_with("bn.bias") {
                    Tensor::randn(&shape, (Kind::Float, Device::Cpu)) * 0.1
                } else if name.ends_with("running_var") {
                    Tensor::rand(&shape, (Kind::Float, Device::Cpu)) + 0.5
                } else if name.ends_with("bn.weight") {
                    Tensor::randn(&shape, (Kind::Float, Device::Cpu)) * 0.1 + 1.0
                } else {
                    continue;
                };
                t.copy_(&random);
            }
        });
    }
    weights::save(&vs, &config, path).unwrap();
}

/// Runs `fusekit export` on `weights` into `out` with `extra` flags; returns its JSON record.
fn export(weights: &Path, out: &Path, format: &str, extra: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_fusekit"))
        .args(["export", "--weights"])
        .arg(weights)
        .args(["--format", format, "--imgsz", "64", "--report", "json"])
        .args(extra)
        .arg("--out")
        .arg(out)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "fusekit export {format} {extra:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Writes one test case: random inputs of `batch` x `size` for the model's inputs, and what
/// fusekit's forward pass makes of them.
fn write_case(model: &Detector, dir: &Path, case: usize, batch: i64, size: i64) -> Vec<Tensor> {
    // Drawn under the lock, so that no model initialised alongside sees a different stream.
    let (rgb, ir) = {
        let _rng = TORCH_RNG.lock().unwrap_or_else(|p| p.into_inner());
        (
            Tensor::rand([batch, 3, size, size], (Kind::Float, Device::Cpu)),
            Tensor::rand([batch, 1, size, size], (Kind::Float, Device::Cpu)),
        )
    };
    let expected = model.predict(&Tensor::cat(&[&rgb, &ir], 1));
    expected
        .write_npy(dir.join(format!("case{case}_expected.npy")))
        .unwrap();
    let mut inputs = Vec::new();
    for (name, tensor) in [("rgb", rgb), ("ir", ir)] {
        tensor
            .write_npy(dir.join(format!("case{case}_{name}.npy")))
            .unwrap();
        if model.input_names().contains(&name) {
            inputs.push(tensor);
        }
    }
    inputs
}

fn python() -> Option<PathBuf> {
    let python = std::env::var_os("FUSEKIT_PYTHON").map(PathBuf::from);
    if python.is_none() {
        eprintln!("note: FUSEKIT_PYTHON is not set: ONNX Runtime and PyTorch checks skipped");
    }
    python
}

fn check_in_python(python: &Path, dir: &Path) -> Value {
    let output = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/export_check.py"
        ))
        .arg(dir)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "export_check.py: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&output.stdout));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn max_relative_difference(a: &Tensor, b: &Tensor) -> f64 {
    let diff = (a - b).abs() / b.abs().clamp_min(1.0);
    diff.max().double_value(&[])
}

/// Exports `fusion` at `scale` to both formats and checks them against fusekit's forward pass:
/// in ONNX Runtime, in PyTorch (`torch.jit.load`) and in tch (`CModule::load`).
fn formats_match_forward(scale: ModelScale, fusion: Fusion, seed: i64) {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let weights_path = dir.path().join("model.safetensors");
    save_model(scale, fusion, seed, &weights_path);
    let onnx = export(&weights_path, &dir.path().join("model.onnx"), "onnx", &[]);
    let script_path = dir.path().join("model.torchscript");
    let script = export(&weights_path, &script_path, "torchscript", &[]);
    // 8x8 + 4x4 + 2x2 cells at 64 pixels, per detector (late fusion has two).
    let anchors = if fusion == Fusion::Late { 168 } else { 84 };
    assert_eq!(
        onnx["output"]["shape"],
        serde_json::json!(["1", "6", anchors.to_string()])
    );
    let expected_inputs: &[&str] = match fusion {
        Fusion::Rgb => &["rgb"],
        Fusion::Ir => &["ir"],
        _ => &["rgb", "ir"],
    };
    let names: Vec<&str> = onnx["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, expected_inputs);
    assert_eq!(script["metadata"]["fusion"], fusion.as_str());

    let (_vs, model) = weights::load(&weights_path, Device::Cpu).unwrap();
    let inputs = write_case(&model, dir.path(), 0, 1, 64);
    let expected = model.predict(&Tensor::cat(
        &[
            Tensor::read_npy(dir.path().join("case0_rgb.npy")).unwrap(),
            Tensor::read_npy(dir.path().join("case0_ir.npy")).unwrap(),
        ],
        1,
    ));
    // tch: the TorchScript file loads and runs in Rust.
    let module = CModule::load(&script_path).unwrap();
    let traced = module.forward_ts(&inputs).unwrap();
    let difference = max_relative_difference(&traced, &expected);
    assert!(
        difference < F32_TOLERANCE,
        "{fusion}: TorchScript in tch differs by {difference}"
    );
    let metadata: Value =
        serde_json::from_str(&fusekit_detect::torchscript::read_metadata(&script_path).unwrap())
            .unwrap();
    assert_eq!(metadata["names"], "{0: 'person', 1: 'it\\'s a car'}");

    let Some(python) = python() else { return };
    let report = check_in_python(&python, dir.path());
    assert_eq!(report["checker"], "ok", "{report}");
    let difference = report["onnx"]["case0"].as_f64().unwrap();
    assert!(
        difference < F32_TOLERANCE,
        "{fusion}: ONNX Runtime differs by {difference}"
    );
    let difference = report["torchscript"].as_f64().unwrap();
    assert!(
        difference < F32_TOLERANCE,
        "{fusion}: torch.jit.load differs by {difference}"
    );
    let metadata = &report["metadata"];
    assert_eq!(metadata["names"], "{0: 'person', 1: 'it\\'s a car'}");
    assert_eq!(metadata["imgsz"], "[64, 64]");
    assert_eq!(metadata["fusion"], fusion.as_str());
    assert_eq!(metadata["ir_channels"], "1");
    assert_eq!(metadata["pad_value"], "114");
    assert_eq!(report["torchscript_metadata"]["fusion"], fusion.as_str());
}

#[test]
fn rgb_model_exports_match_forward() {
    formats_match_forward(ModelScale::N, Fusion::Rgb, 1);
}

#[test]
fn ir_model_exports_match_forward() {
    formats_match_forward(ModelScale::N, Fusion::Ir, 2);
}

#[test]
fn early_fusion_exports_match_forward() {
    formats_match_forward(ModelScale::N, Fusion::Early, 3);
}

#[test]
fn mid_fusion_exports_match_forward() {
    formats_match_forward(ModelScale::N, Fusion::Mid, 4);
}

#[test]
fn late_fusion_exports_match_forward() {
    formats_match_forward(ModelScale::N, Fusion::Late, 5);
}

#[test]
fn small_scale_mid_fusion_exports_match_forward() {
    formats_match_forward(ModelScale::S, Fusion::Mid, 6);
}

#[test]
fn dynamic_onnx_runs_at_two_batch_sizes_and_two_image_sizes() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let weights_path = dir.path().join("model.safetensors");
    save_model(ModelScale::N, Fusion::Mid, 7, &weights_path);
    let record = export(
        &weights_path,
        &dir.path().join("model.onnx"),
        "onnx",
        &["--dynamic"],
    );
    assert_eq!(
        record["output"]["shape"],
        serde_json::json!(["batch", "6", "anchors"])
    );
    let (_vs, model) = weights::load(&weights_path, Device::Cpu).unwrap();
    write_case(&model, dir.path(), 0, 1, 64);
    write_case(&model, dir.path(), 1, 2, 96);
    let Some(python) = python() else { return };
    let report = check_in_python(&python, dir.path());
    for case in ["case0", "case1"] {
        let difference = report["onnx"][case].as_f64().unwrap();
        assert!(
            difference < F32_TOLERANCE,
            "{case}: {difference} ({report})"
        );
    }
}

#[test]
fn half_onnx_stays_within_its_tolerance_and_halves_the_file() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let weights_path = dir.path().join("model.safetensors");
    save_model(ModelScale::N, Fusion::Mid, 8, &weights_path);
    let full = export(&weights_path, &dir.path().join("full.onnx"), "onnx", &[]);
    let half = export(
        &weights_path,
        &dir.path().join("model.onnx"),
        "onnx",
        &["--half"],
    );
    let ratio = half["bytes"].as_f64().unwrap() / full["bytes"].as_f64().unwrap();
    assert!((0.45..0.55).contains(&ratio), "half / full size {ratio}");
    let (_vs, model) = weights::load(&weights_path, Device::Cpu).unwrap();
    write_case(&model, dir.path(), 0, 1, 64);
    let Some(python) = python() else { return };
    let report = check_in_python(&python, dir.path());
    assert_eq!(report["inputs"][0][1], "tensor(float16)", "{report}");
    let difference = report["onnx"]["case0"].as_f64().unwrap();
    assert!(difference < HALF_TOLERANCE, "half differs by {difference}");
}

#[test]
fn bad_export_requests_are_refused_with_the_flag_named() {
    let dir = tempfile::tempdir().unwrap();
    let weights_path = dir.path().join("model.safetensors");
    save_model(ModelScale::N, Fusion::Rgb, 9, &weights_path);
    for (flags, expected) in [
        (
            &["--format", "torchscript", "--dynamic"][..],
            "--dynamic is for ONNX",
        ),
        (
            &["--format", "torchscript", "--half"][..],
            "--half is for ONNX",
        ),
        (&["--opset", "11"][..], "--opset must lie between 13 and 21"),
        (&["--batch", "0"][..], "--batch must be at least 1"),
        (&["--format", "tflite"][..], "onnx or torchscript"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_fusekit"))
            .args(["export", "--weights"])
            .arg(&weights_path)
            .args(flags)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{flags:?} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{flags:?}: {stderr}");
    }
    let missing = dir.path().join("missing.safetensors");
    let output = Command::new(env!("CARGO_BIN_EXE_fusekit"))
        .args(["export", "--weights"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing.safetensors"));
}

/// Writes `count` pairs of `width` x `height` noise images (RGB and grey IR PNGs) under
/// `root/images` and `root/imagesIR`; returns the (RGB, IR) paths.
fn write_noise_pairs(
    root: &Path,
    count: usize,
    width: u32,
    height: u32,
) -> Vec<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(root.join("images")).unwrap();
    std::fs::create_dir_all(root.join("imagesIR")).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 56) as u8
    };
    (0..count)
        .map(|i| {
            let rgb = image::RgbImage::from_fn(width, height, |_, _| {
                image::Rgb([next(), next(), next()])
            });
            let ir = image::GrayImage::from_fn(width, height, |_, _| image::Luma([next()]));
            let paths = (
                root.join(format!("images/n{i}.png")),
                root.join(format!("imagesIR/n{i}.png")),
            );
            rgb.save(&paths.0).unwrap();
            ir.save(&paths.1).unwrap();
            paths
        })
        .collect()
}

/// The README's ONNX Runtime example (`examples/onnx_predict.py`: letterbox, run, decode,
/// NMS) finds the same boxes as `fusekit predict` on the same pairs.
#[test]
fn onnx_runtime_example_reproduces_fusekit_predict() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let weights_path = dir.path().join("model.safetensors");
    save_model(ModelScale::N, Fusion::Mid, 10, &weights_path);
    let model_path = dir.path().join("model.onnx");
    export(&weights_path, &model_path, "onnx", &[]);
    // 64 x 48 at imgsz 64: letterboxing pads, and no resampling filter is compared.
    let pairs = write_noise_pairs(&dir.path().join("data"), 3, 64, 48);
    // An untrained head scores near its bias priors (about 0.0004, 0.0016 and 0.006 for the
    // three strides with two classes): a threshold between two of them, not at one, keeps the
    // comparison from hinging on the last bit of a score.
    let conf = "0.001";
    let mut compared = 0;
    for (rgb, ir) in &pairs {
        let output = Command::new(env!("CARGO_BIN_EXE_fusekit"))
            .args(["predict", "--weights"])
            .arg(&weights_path)
            .args([rgb, ir])
            .args([
                "--imgsz",
                "64",
                "--device",
                "cpu",
                "--no-images",
                "--format",
                "json",
            ])
            .args(["--conf", conf, "--out"])
            .arg(dir.path().join("predict"))
            .env("OMP_NUM_THREADS", "1")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let ours: Value = serde_json::from_slice(&output.stdout).unwrap();
        let output = Command::new(&python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/examples/onnx_predict.py"
            ))
            .arg(&model_path)
            .args([rgb, ir])
            .args(["--conf", conf])
            .env("OMP_NUM_THREADS", "1")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let theirs: Value = serde_json::from_slice(&output.stdout).unwrap();
        let ours = ours["detections"].as_array().unwrap();
        let theirs = theirs["detections"].as_array().unwrap();
        assert_eq!(ours.len(), theirs.len(), "{ours:?}\nvs\n{theirs:?}");
        for (a, b) in ours.iter().zip(theirs) {
            assert_eq!(a["class"], b["class"]);
            assert_eq!(a["name"], b["name"]);
            let score = (a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs();
            assert!(score < 1e-5, "scores {a} vs {b}");
            for k in 0..4 {
                let side = (a["box"][k].as_f64().unwrap() - b["box"][k].as_f64().unwrap()).abs();
                assert!(side < 1e-3, "boxes {a} vs {b}");
            }
        }
        compared += ours.len();
    }
    assert!(compared > 0, "no detection to compare at conf {conf}");
    eprintln!("{compared} detections compared");
}
