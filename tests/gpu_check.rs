//! The GPU bundle's device check, `tools/gpu-check/gpu-check.sh --device cpu --quick`, run
//! against this build's fusekit: every step of the check the GPU machine runs, smaller and on
//! the CPU, so the script cannot rot between the rare calls to that machine.
#![cfg(feature = "train")]

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn step<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {report:#}"))
}

#[test]
fn the_quick_cpu_check_runs_every_step() {
    let out = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/gpu-check/gpu-check.sh");
    let mut command = Command::new("bash");
    command
        .arg(&script)
        .args(["--device", "cpu", "--quick"])
        .env("OUT", out.path())
        .env("FUSEKIT_BIN", env!("CARGO_BIN_EXE_fusekit"))
        // Tests run in parallel on few cores: one libtorch thread per process.
        .env("OMP_NUM_THREADS", "1");
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report_text = std::fs::read_to_string(out.path().join("report.json"))
        .unwrap_or_else(|e| panic!("no report.json ({e}):\n{stderr}"));
    let report: Value = serde_json::from_str(&report_text).unwrap();
    assert!(output.status.success(), "{report:#}\n{stderr}");
    assert_eq!(report["passed"], true);
    assert_eq!(report["mode"], "cpu quick");
    let markdown = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(markdown.contains("| train | ok |"), "{markdown}");

    assert!(
        step(&report, "device")["facts"]["cpu_threads"]
            .as_u64()
            .unwrap()
            >= 1
    );
    // f32 and bf16 (the CPU's autocast) train with finite losses; fp16 is refused on the CPU.
    let runs = step(&report, "train")["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 6);
    for run in runs {
        match run["amp"].as_str().unwrap() {
            "fp16" => {
                assert_eq!(run["status"], "refused", "{run}");
                assert!(
                    run["error"]
                        .as_str()
                        .unwrap()
                        .contains("needs a CUDA device")
                );
            }
            amp => {
                assert_eq!(run["status"], "ok", "{run}");
                let expected = if amp == "off" { "f32" } else { "bf16" };
                assert_eq!(run["precision"], expected, "{run}");
                assert_eq!(run["losses_finite"], true, "{run}");
                assert!(run["images_per_second"].as_f64().unwrap() > 0.0, "{run}");
                assert_eq!(run["feed"], "view", "{run}");
            }
        }
    }
    let oom = step(&report, "out-of-memory fallback");
    assert_eq!(oom["status"], "ok", "{oom}");
    assert_eq!(oom["simulated"], true);
    assert!(!oom["fallbacks"].as_array().unwrap().is_empty(), "{oom}");
    // On the CPU both feeds are views; the step still trains and validates with each.
    let feed = step(&report, "feed: pinned vs pageable");
    assert_eq!(feed["status"], "ok", "{feed}");
    assert_eq!(feed["pageable_run"]["feed"], "view", "{feed}");
    assert_eq!(feed["pinned_run"]["feed"], "view", "{feed}");
    assert_eq!(feed["val_metric_diff"], 0.0, "{feed}");
    assert_eq!(step(&report, "val and predict vs cpu")["status"], "ok");
    assert_eq!(step(&report, "two ranks (gloo)")["status"], "ok");
    // Ultralytics runs where the reference python is installed (`cargo xtask test` sets it).
    let ultralytics = step(&report, "ultralytics");
    if std::env::var_os("FUSEKIT_PYTHON").is_some() {
        assert_eq!(ultralytics["status"], "ok", "{ultralytics}");
        assert!(ultralytics["images_per_second"].as_f64().unwrap() > 0.0);
    } else {
        eprintln!("FUSEKIT_PYTHON is not set: the Ultralytics step was {ultralytics}");
    }
}
