//! The run folder's plots, as a user gets them from `fusekit train` and `fusekit val`: every
//! file is written, decodes, has its size and shows something; `--no-plots` writes none.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Output};

/// `fusekit ARGS` in `cwd`, with one libtorch thread; panics unless it succeeds.
fn fusekit(args: &[&str], cwd: &Path) -> String {
    let output: Output = Command::new(env!("CARGO_BIN_EXE_fusekit"))
        .args(args)
        .current_dir(cwd)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("fusekit runs");
    assert!(
        output.status.success(),
        "fusekit {args:?}\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A generated dataset (16 train, 6 val pairs after the split), cached at 64 under `cache/`.
fn cached_dataset(dir: &Path) {
    fusekit(
        &[
            "synth", "--out", "ds", "--pairs", "24", "--size", "96x80", "--scenes", "4",
        ],
        dir,
    );
    fusekit(&["split", "ds", "--group", r"^(\d{2})"], dir);
    fusekit(
        &["cache", "build", "ds", "--imgsz", "64", "--out", "cache"],
        dir,
    );
}

/// Asserts that `path` decodes to a `size` picture that is not blank: many colours, and some
/// share of pixels that are not the background white.
fn assert_picture(path: &Path, size: (u32, u32)) {
    let picture = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    assert_eq!(picture.dimensions(), size, "{}", path.display());
    let colours: HashSet<[u8; 3]> = picture.pixels().map(|p| p.0).collect();
    assert!(
        colours.len() > 50,
        "{}: {} colours",
        path.display(),
        colours.len()
    );
    let ink = picture
        .pixels()
        .filter(|p| p.0.iter().any(|&c| c < 245))
        .count();
    let share = ink as f64 / f64::from(size.0 * size.1);
    assert!(
        share > 0.01,
        "{}: {share} of the pixels drawn",
        path.display()
    );
}

/// Every plot and its size (train batch 4: 2 x 2 tiles of two 64-pixel squares; the 6 val
/// images: 3 x 2 tiles). Those of a validation are the 3rd to the 10th.
const RUN_PLOTS: [(&str, (u32, u32)); 15] = [
    ("results.png", (2400, 1200)),
    ("labels.jpg", (1600, 1600)),
    ("BoxPR_curve.png", (1800, 1200)),
    ("BoxF1_curve.png", (1800, 1200)),
    ("BoxP_curve.png", (1800, 1200)),
    ("BoxR_curve.png", (1800, 1200)),
    ("confusion_matrix.png", (1600, 1300)),
    ("confusion_matrix_normalized.png", (1600, 1300)),
    ("val_batch0_labels.jpg", (384, 128)),
    ("val_batch0_pred.jpg", (384, 128)),
    ("train_batch0.jpg", (256, 128)),
    ("train_batch1.jpg", (256, 128)),
    ("train_batch2.jpg", (256, 128)),
    ("labels_val.jpg", (1600, 1600)),
    // Listed last: the first batches are the only ones drawn.
    ("train_batch3.jpg", (0, 0)),
];

#[test]
fn a_training_run_writes_every_plot_and_val_writes_curves_and_matrices() {
    let dir = tempfile::tempdir().unwrap();
    cached_dataset(dir.path());
    let train = [
        "train", "--cache", "cache", "--imgsz", "64", "--device", "cpu", "--batch", "4",
        "--epochs", "2", "--format", "json",
    ];
    let outcome: serde_json::Value =
        serde_json::from_str(fusekit(&train, dir.path()).trim()).expect("one JSON object");
    let run = dir.path().join("runs/fuse/train");
    let (drawn, absent) = RUN_PLOTS.split_at(RUN_PLOTS.len() - 1);
    for (name, size) in drawn {
        assert_picture(&run.join(name), *size);
    }
    assert!(
        !run.join(absent[0].0).exists(),
        "only three batches are drawn"
    );
    let listed = outcome["plots"].as_array().expect("plots listed");
    assert_eq!(listed.len(), drawn.len(), "{listed:?}");
    let seconds = outcome["plot_seconds"].as_f64().unwrap();
    assert!(seconds > 0.0 && seconds < 2.0, "plotting took {seconds} s");
    let leftovers: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    let val = dir.path().join("val-plots");
    let report: serde_json::Value = serde_json::from_str(
        fusekit(
            &[
                "val",
                "--weights",
                "runs/fuse/train/weights/best.safetensors",
                "--cache",
                "cache/val.fkc",
                "--device",
                "cpu",
                "--format",
                "json",
                "--out",
                "val-plots",
            ],
            dir.path(),
        )
        .trim(),
    )
    .unwrap();
    assert_eq!(report["plots"].as_array().unwrap().len(), 8);
    for (name, size) in &drawn[2..10] {
        assert_picture(&val.join(name), *size);
    }
    assert!(!val.join("results.png").exists());

    fusekit(
        &[
            "train",
            "--cache",
            "cache",
            "--imgsz",
            "64",
            "--device",
            "cpu",
            "--batch",
            "4",
            "--epochs",
            "1",
            "--no-plots",
            "--name",
            "quiet",
        ],
        dir.path(),
    );
    let quiet = dir.path().join("runs/fuse/quiet");
    assert!(quiet.join("results.csv").is_file());
    for (name, _) in RUN_PLOTS {
        assert!(!quiet.join(name).exists(), "{name} written with --no-plots");
    }
}
