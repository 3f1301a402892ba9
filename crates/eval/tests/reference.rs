//! The fixture in `tests/fixtures/` against the numbers Ultralytics and pycocotools give for it:
//! always against the stored `expected.json`, and against a live run of `reference.py` when
//! `FUSEKIT_PYTHON` names a python with `ultralytics` and `pycocotools`.

use std::path::{Path, PathBuf};
use std::process::Command;

use fusekit_eval::{Metrics, Prediction, Truth, evaluate};
use serde::Deserialize;
use serde_json::Value;

const TOLERANCE: f64 = 1e-4;

#[derive(Deserialize)]
struct Fixture {
    num_classes: usize,
    predictions: Vec<Prediction>,
    truths: Vec<Truth>,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn computed() -> Metrics {
    let text = std::fs::read_to_string(fixtures().join("fixture.json")).unwrap();
    let fx: Fixture = serde_json::from_str(&text).unwrap();
    evaluate(&fx.predictions, &fx.truths, fx.num_classes).unwrap()
}

/// Compares `metrics` with an expected JSON document; returns the largest absolute difference.
fn compare(metrics: &Metrics, expected: &Value, source: &str) -> f64 {
    let got = serde_json::to_value(metrics).unwrap();
    let mut worst = 0.0f64;
    let mut check = |what: String, got: &Value, want: &Value| {
        let (g, w) = (got.as_f64().unwrap(), want.as_f64().unwrap());
        let diff = (g - w).abs();
        worst = worst.max(diff);
        assert!(
            diff <= TOLERANCE,
            "{source}: {what} is {g}, expected {w} (difference {diff:e})"
        );
    };
    let ultra = &expected["ultralytics"];
    for key in ["precision", "recall", "map50", "map50_95", "map75"] {
        check(key.to_string(), &got[key], &ultra[key]);
    }
    let (got_classes, want_classes) = (
        got["classes"].as_array().unwrap(),
        ultra["classes"].as_array().unwrap(),
    );
    assert_eq!(got_classes.len(), want_classes.len(), "{source}: classes");
    for (g, w) in got_classes.iter().zip(want_classes) {
        for key in ["class", "truths", "images"] {
            assert_eq!(g[key], w[key], "{source}: class {} {key}", w["class"]);
        }
        for key in ["precision", "recall", "ap50", "ap50_95"] {
            check(format!("class {} {key}", w["class"]), &g[key], &w[key]);
        }
    }
    for key in ["map50_95", "map50", "map75"] {
        check(
            format!("coco {key}"),
            &got["coco"][key],
            &expected["coco"][key],
        );
    }
    worst
}

#[test]
fn fixture_matches_stored_reference() {
    let metrics = computed();
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    let expected: Value = serde_json::from_str(&text).unwrap();
    let worst = compare(&metrics, &expected, "expected.json");
    println!(
        "ultralytics mAP50 {:.6} mAP50-95 {:.6} mAP75 {:.6} P {:.6} R {:.6}; \
         coco mAP50-95 {:.6} mAP50 {:.6} mAP75 {:.6}; max |diff| {worst:e}",
        metrics.map50,
        metrics.map50_95,
        metrics.map75,
        metrics.precision,
        metrics.recall,
        metrics.coco.map50_95,
        metrics.coco.map50,
        metrics.coco.map75
    );
    // The fixture is built so that the two conventions disagree.
    assert!((metrics.map50_95 - metrics.coco.map50_95).abs() > 1e-3);
}

#[test]
fn fixture_matches_live_reference() {
    let Some(python) = std::env::var_os("FUSEKIT_PYTHON") else {
        println!("note: FUSEKIT_PYTHON is not set; live reference check skipped");
        return;
    };
    let importable = Command::new(&python)
        .args(["-c", "import ultralytics, pycocotools"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !importable {
        println!(
            "note: {} cannot import ultralytics and pycocotools; live reference check skipped",
            python.to_string_lossy()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("expected.json");
    let status = Command::new(&python)
        .arg(fixtures().join("reference.py"))
        .arg("expected")
        .arg(fixtures().join("fixture.json"))
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "reference.py failed: {status}");
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    let worst = compare(&computed(), &expected, "reference.py");
    println!(
        "live reference {}: max |diff| {worst:e}",
        expected["versions"]
    );
}
