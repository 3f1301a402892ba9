//! Parity with Ultralytics: the same weights, inputs and targets give the same raw outputs,
//! decoded boxes, assigned targets, loss parts and NMS results, and one SGD step with
//! fusekit's parameter groups gives the same weights. Runs `tests/parity/reference.py` with the python named by
//! `FUSEKIT_PYTHON` (which must import ultralytics and safetensors); skipped, with a note,
//! when it is not set.

use std::path::{Path, PathBuf};
use std::process::Command;

use fusekit_detect::{
    DetectionLoss, Detector, Fusion, ModelConfig, ModelScale, NmsOptions, non_max_suppression,
    weights,
};
use fusekit_hyp::Optimizer as OptimizerKind;
use fusekit_train::{Optimizer, StepSettings};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn python() -> Option<PathBuf> {
    let python = std::env::var_os("FUSEKIT_PYTHON").map(PathBuf::from);
    if python.is_none() {
        eprintln!("FUSEKIT_PYTHON is not set: skipping the Ultralytics parity check");
    }
    python
}

fn reference(python: &Path, dir: &Path, scale: &str, nc: usize) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity/reference.py");
    let output = Command::new(python)
        .arg(&script)
        .arg(dir)
        .args([scale, &nc.to_string(), "0"])
        .output()
        .expect("running the reference script");
    assert!(
        output.status.success(),
        "reference.py failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn load(path: &Path) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

/// Largest |a - b| relative to the largest |b|.
fn relative_difference(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    let scale = b.abs().max().double_value(&[]).max(1e-12);
    (a - b).abs().max().double_value(&[]) / scale
}

fn check(scale: ModelScale, nc: usize) {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    reference(&python, dir.path(), scale.as_str(), nc);
    let vs = VarStore::new(Device::Cpu);
    let config = ModelConfig {
        scale,
        fusion: Fusion::Rgb,
        names: (0..nc).map(|i| format!("c{i}")).collect(),
        ir_channels: 1,
    };
    let model = Detector::new(&vs.root(), config);
    let report =
        weights::import_ultralytics(&vs, &dir.path().join("model.safetensors"), &["rgb"]).unwrap();
    assert!(report.adapted_inputs.is_empty() && report.reinitialised.is_empty());
    assert_eq!(report.untouched, Vec::<String>::new());
    let r = load(&dir.path().join("reference.safetensors"));
    // The model's IR plane is unused by `rgb` fusion; append a zero plane.
    let rgb = &r["images"];
    let size = rgb.size();
    let images = Tensor::cat(
        &[
            rgb,
            &Tensor::zeros([size[0], 1, size[2], size[3]], (Kind::Float, Device::Cpu)),
        ],
        1,
    );

    let decoded = model.predict(&images);
    let d = relative_difference(&decoded, &r["decoded"]);
    assert!(d < 1e-4, "{scale}: decoded outputs differ by {d:e}");

    let outputs = model.forward_t(&images, true);
    let levels = &outputs[0];
    let batch = size[0];
    let flat: Vec<Tensor> = levels
        .iter()
        .map(|l| l.view([batch, l.size()[1], -1]))
        .collect();
    let raw = Tensor::cat(&flat, 2);
    let parts = raw.split_with_sizes([64, nc as i64], 1);
    let d_boxes = relative_difference(&parts[0], &r["train_boxes"]);
    let d_scores = relative_difference(&parts[1], &r["train_scores"]);
    assert!(
        d_boxes < 1e-4 && d_scores < 1e-4,
        "{scale}: train outputs differ by {d_boxes:e} / {d_scores:e}"
    );

    let assignment = DetectionLoss::default()
        .assignment(&outputs[0], &r["targets_several"])
        .unwrap();
    let d = relative_difference(&assignment.scores, &r["assigned_scores"]);
    assert!(d < 1e-4, "{scale}: assigned class targets differ by {d:e}");
    let d = relative_difference(
        &assignment.foreground.to_kind(Kind::Float),
        &r["assigned_foreground"],
    );
    assert!(d == 0.0, "{scale}: foreground anchors differ");

    for name in ["several", "empty"] {
        let loss = DetectionLoss::default()
            .compute(&outputs, &r[&format!("targets_{name}")])
            .unwrap();
        let expected: Vec<f64> =
            Vec::try_from(r[&format!("loss_{name}")].to_kind(Kind::Double)).unwrap();
        for (part, (got, want)) in loss.parts.iter().zip(&expected).enumerate() {
            let tolerance = 1e-4 * want.abs().max(1e-3);
            assert!(
                (got - want).abs() <= tolerance,
                "{scale} {name}: loss part {part} is {got}, Ultralytics {want}"
            );
        }
        eprintln!(
            "{scale} {name}: loss {:?} vs Ultralytics {expected:?}",
            loss.parts
        );
    }

    // Class-aware NMS keeps the same boxes, scores and classes as Ultralytics'.
    let options = NmsOptions {
        conf: 0.25,
        ..NmsOptions::default()
    };
    for (i, detections) in non_max_suppression(&r["nms_input"], &options)
        .iter()
        .enumerate()
    {
        let expected = &r[&format!("nms_output_{i}")];
        assert_eq!(
            detections.len() as i64,
            expected.size()[0],
            "{scale}: NMS image {i}"
        );
        for (k, d) in detections.iter().enumerate() {
            let row: Vec<f32> = Vec::try_from(expected.get(k as i64)).unwrap();
            let got = [
                d.bbox[0],
                d.bbox[1],
                d.bbox[2],
                d.bbox[3],
                d.score,
                d.class as f32,
            ];
            for (a, b) in got.iter().zip(&row) {
                assert!(
                    (a - b).abs() < 1e-4,
                    "{scale}: NMS image {i} row {k}: {got:?} vs {row:?}"
                );
            }
        }
    }

    // One SGD step with fusekit's parameter groups gives Ultralytics' weights.
    let mut optimizer = Optimizer::new(OptimizerKind::Sgd, vs.variables());
    optimizer.zero_grad();
    let loss = DetectionLoss::default()
        .compute(&outputs, &r["targets_several"])
        .unwrap();
    loss.total.backward();
    let _ = optimizer.clip_grad_norm(10.0);
    optimizer.step(&StepSettings {
        lr: [0.01, 0.02, 0.05],
        momentum: 0.9,
        weight_decay: 5e-4,
    });
    let stepped = load(&dir.path().join("stepped.safetensors"));
    let mut worst = 0.0f64;
    for (name, var) in vs.variables() {
        let expected = &stepped[name.trim_start_matches("rgb.")];
        let d = (&var - expected).abs().max().double_value(&[]);
        worst = worst.max(d);
        assert!(
            d < 1e-5,
            "{scale}: {name} differs by {d:e} after one SGD step"
        );
    }
    eprintln!("{scale}: weights after one SGD step within {worst:e} of Ultralytics'");
}

#[test]
fn yolov8n_matches_ultralytics() {
    tch::set_num_threads(1);
    check(ModelScale::N, 3);
}

#[test]
fn yolov8s_matches_ultralytics() {
    tch::set_num_threads(1);
    check(ModelScale::S, 5);
}
