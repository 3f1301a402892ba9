//! `fusekit run` driven as a user would: a full run, skipping what is current, reruns after a
//! parameter change, the plan, --from / --until, lint stopping the run, yaml errors, and
//! interrupted stages continuing.

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn fusekit(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fusekit"))
        .args(args)
        .current_dir(cwd)
        // Tests run in parallel on few cores: one libtorch thread each.
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("fusekit runs")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Asserts success; returns (stdout, stderr).
fn ok(output: &Output) -> (String, String) {
    let (out, err) = text(output);
    assert!(output.status.success(), "{out}\n{err}");
    (out, err)
}

/// A pipeline over a generated 24-pair dataset, trained tiny (imgsz 64, 8 samples).
fn pipeline(train_epochs: u32) -> String {
    format!(
        r"name: tiny
data: ds
synth:
  pairs: 24
  size: 96x80
  scenes: 4
split:
  val: 0.25
  group: '^(\d{{2}})'
imgsz: 64
train:
  fusion: [mid]
  epochs: {train_epochs}
  batch: 4
  limit: 8
  warmup_epochs: 0
  device: cpu
predict:
  conf: 0.01
  images: false
  save_json: true
"
    )
}

fn stage_dir(dir: &Path, stage: &str) -> std::path::PathBuf {
    dir.join("runs/pipeline/tiny").join(stage)
}

fn record(dir: &Path, stage: &str) -> serde_json::Value {
    let path = stage_dir(dir, stage).join("stage.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

const STAGES: [&str; 5] = ["lint", "split", "cache", "train-mid", "predict-mid"];

#[test]
fn runs_skips_reruns_what_changed_and_plans() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("p.yaml"), pipeline(1)).unwrap();

    let (out, err) = ok(&fusekit(&["run", "p.yaml"], d));
    assert!(
        err.contains("dataset ds is missing: generating it"),
        "{err}"
    );
    assert!(out.contains("5 run, 0 skipped"), "{out}");
    assert!(out.contains("train 18 / val 6 / test 0 pairs"), "{out}");
    assert!(out.contains("mid") && out.contains("mAP50"), "{out}");
    for stage in STAGES {
        let r = record(d, stage);
        assert_eq!(r["stage"], stage);
        assert_eq!(r["fingerprint"].as_str().unwrap().len(), 32);
    }
    assert!(stage_dir(d, "cache").join("train.fkc").is_file());
    assert!(
        stage_dir(d, "train-mid")
            .join("train/weights/best.safetensors")
            .is_file()
    );
    assert!(
        stage_dir(d, "predict-mid")
            .join("predictions.jsonl")
            .is_file()
    );
    // save_json: Ultralytics' COCO-style file beside it.
    let coco =
        std::fs::read_to_string(stage_dir(d, "predict-mid").join("predictions.json")).unwrap();
    assert!(
        serde_json::from_str::<serde_json::Value>(&coco)
            .unwrap()
            .is_array()
    );
    assert_eq!(record(d, "train-mid")["outcome"]["epochs"], 1);

    // Nothing changed: every stage is skipped and says so.
    let before = record(d, "train-mid");
    let (out, err) = ok(&fusekit(&["run", "p.yaml"], d));
    for stage in STAGES {
        assert!(
            err.contains(&format!("{stage}: skipped, up to date")),
            "{err}"
        );
    }
    assert!(out.contains("0 run, 5 skipped"), "{out}");
    assert_eq!(record(d, "train-mid"), before);

    // A training parameter: the plan says train and predict rerun, and nothing runs.
    std::fs::write(d.join("p.yaml"), pipeline(2)).unwrap();
    let (_, err) = ok(&fusekit(&["run", "p.yaml", "--dry-run"], d));
    let line = |stage: &str| {
        err.lines()
            .find(|l| l.trim_start().starts_with(&format!("{stage} ")))
            .unwrap_or_else(|| panic!("no plan line for {stage}:\n{err}"))
            .to_owned()
    };
    assert!(line("cache").contains("skip"), "{err}");
    assert!(
        line("train-mid").contains("run   parameters changed"),
        "{err}"
    );
    assert!(
        line("predict-mid").contains("run   inputs changed"),
        "{err}"
    );
    assert_eq!(record(d, "train-mid"), before);

    let (out, err) = ok(&fusekit(&["run", "p.yaml"], d));
    assert!(out.contains("2 run, 3 skipped"), "{out}\n{err}");
    for stage in ["lint", "split", "cache"] {
        assert!(err.contains(&format!("{stage}: skipped")), "{err}");
    }
    assert_eq!(record(d, "train-mid")["outcome"]["epochs"], 2);

    // The training size: every stage that uses it reruns (lint measures LBL011 at it, the
    // cache stores images at it), and the stages after them.
    let edited = pipeline(2).replace("imgsz: 64", "imgsz: 96");
    std::fs::write(d.join("p.yaml"), edited).unwrap();
    let (_, err) = ok(&fusekit(&["run", "p.yaml", "--dry-run"], d));
    let runs: Vec<&str> = err
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("run"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        runs,
        ["lint", "split", "cache", "train-mid", "predict-mid"],
        "{err}"
    );

    // --from / --until: only the cache stage, although it is current for the old file.
    std::fs::write(d.join("p.yaml"), pipeline(2)).unwrap();
    let (out, err) = ok(&fusekit(
        &["run", "p.yaml", "--from", "cache", "--until", "cache"],
        d,
    ));
    assert!(
        err.contains("cache: running (up to date, but --force or --from"),
        "{err}"
    );
    assert!(!err.contains("train-mid: running"), "{err}");
    assert!(out.contains("1 run, 0 skipped"), "{out}");
    let err = text(&fusekit(&["run", "p.yaml", "--from", "nope"], d)).1;
    assert!(
        err.contains(
            "no stage `nope` in this pipeline (stages: lint, split, cache, train-mid, predict-mid)"
        ),
        "{err}"
    );
}

/// A pipeline without training over `ds`, generated with one lint defect.
fn defective(dir: &Path, lint: &str) {
    if !dir.join("ds").exists() {
        ok(&fusekit(
            &[
                "synth", "--out", "ds", "--pairs", "16", "--size", "96x80", "--scenes", "4",
                "--inject", "PAIR001",
            ],
            dir,
        ));
    }
    let text = format!("name: tiny\ndata: ds\nimgsz: 64\n{lint}");
    std::fs::write(dir.join("p.yaml"), text).unwrap();
}

#[test]
fn lint_errors_stop_the_pipeline_unless_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    defective(d, "");
    let output = fusekit(&["run", "p.yaml"], d);
    let (_, err) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("findings with PAIR001 stop the pipeline"),
        "{err}"
    );
    let report = std::fs::read_to_string(stage_dir(d, "lint").join("report.txt")).unwrap();
    assert!(report.contains("PAIR001"), "{report}");
    assert!(!stage_dir(d, "lint").join("stage.json").exists());
    assert!(
        !stage_dir(d, "split").exists(),
        "nothing is built after a lint stop"
    );

    defective(d, "lint:\n  accept: [PAIR001]\n");
    let (out, _) = ok(&fusekit(&["run", "p.yaml"], d));
    assert!(out.contains("1 errors"), "{out}");
    assert!(out.contains("1 left out with lint errors"), "{out}");
    assert_eq!(record(d, "lint")["outcome"]["accepted"], 1);

    // Interrupted: a stage folder without stage.json reruns; the stages before it do not.
    std::fs::remove_file(stage_dir(d, "cache").join("stage.json")).unwrap();
    let (_, err) = ok(&fusekit(&["run", "p.yaml"], d));
    assert!(
        err.contains("lint: skipped") && err.contains("split: skipped"),
        "{err}"
    );
    assert!(
        err.contains("cache: running (interrupted; continues)"),
        "{err}"
    );
    assert!(record(d, "cache")["outcome"]["pairs"].as_u64().unwrap() > 0);
}

#[test]
fn yaml_errors_name_the_file_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases = [
        (
            pipeline(1).replace("  batch: 4", "  batch: 4\n  lr_0: 0.1"),
            "p.yaml:15: unknown key `lr_0`; did you mean `lr0`?",
        ),
        (
            pipeline(1).replace("val: 0.25", "val: 2"),
            "p.yaml:8: `split.val` must be in [0, 1), not 2",
        ),
        (
            pipeline(1).replace("scenes: 4", "scenes: 4\n  colour: red"),
            "p.yaml:7: unknown field `colour`",
        ),
        (
            pipeline(1).replace("[mid]", "[mid, mid]"),
            "p.yaml:12: `train.fusion` lists `mid` twice",
        ),
    ];
    for (yaml, expected) in cases {
        std::fs::write(d.join("p.yaml"), yaml).unwrap();
        let output = fusekit(&["run", "p.yaml", "--dry-run"], d);
        let (_, err) = text(&output);
        assert_eq!(output.status.code(), Some(2), "{err}");
        assert!(err.contains(expected), "{err}\nexpected: {expected}");
    }
    assert!(
        !d.join("ds").exists(),
        "nothing is generated for an invalid file"
    );
}

#[test]
fn training_killed_mid_run_continues_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("p.yaml"), pipeline(4)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fusekit"))
        .args(["run", "p.yaml"])
        .current_dir(d)
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let checkpoint = stage_dir(d, "train-mid").join("train/weights/last.ckpt");
    let started = std::time::Instant::now();
    while !checkpoint.exists() {
        assert!(
            started.elapsed().as_secs() < 300,
            "no checkpoint after 300 s"
        );
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !stage_dir(d, "train-mid").join("stage.json").exists(),
        "training finished before the kill"
    );
    let (out, err) = ok(&fusekit(&["run", "p.yaml"], d));
    assert!(
        err.contains("train-mid: running (interrupted; continues)"),
        "{err}"
    );
    assert!(err.contains("train-mid: continuing from"), "{err}");
    assert!(out.contains("2 run, 3 skipped"), "{out}");
    let results =
        std::fs::read_to_string(stage_dir(d, "train-mid").join("train/results.csv")).unwrap();
    assert_eq!(results.lines().count(), 1 + 4, "{results}");
}

/// `split: {keep: true}` trains on the dataset's own lists (LLVIP's official split after
/// `fusekit import llvip`) instead of writing new ones.
#[test]
fn split_keep_uses_the_datasets_own_lists() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&fusekit(
        &[
            "synth", "--out", "ds", "--pairs", "24", "--size", "96x80", "--scenes", "4",
        ],
        d,
    ));
    ok(&fusekit(&["split", "ds", "--val", "0.5"], d));
    std::fs::write(
        d.join("p.yaml"),
        "name: tiny\ndata: ds/split.yaml\nimgsz: 64\nsplit:\n  keep: true\n",
    )
    .unwrap();
    let (_, err) = ok(&fusekit(&["run", "p.yaml"], d));
    assert!(err.contains("split: keeping the lists of"), "{err}");
    assert!(!stage_dir(d, "split").join("split.yaml").exists());
    let listed = |name: &str| {
        std::fs::read_to_string(d.join("ds").join(name))
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
    };
    let files = record(d, "cache")["outcome"]["files"].clone();
    let pairs: Vec<u64> = files
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["pairs"].as_u64().unwrap())
        .collect();
    assert_eq!(
        pairs,
        vec![listed("train.txt") as u64, listed("val.txt") as u64],
        "{files}"
    );
}

/// Two `fusekit run` of one pipeline at once: the second waits for the first, then finds
/// every stage current; neither corrupts the other's files.
#[test]
fn two_runs_at_once_take_turns() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = "name: tiny\ndata: ds\nimgsz: 64\nsynth:\n  pairs: 24\n  size: 96x80\n  scenes: 4\n\
                split:\n  val: 0.25\n";
    std::fs::write(d.join("p.yaml"), text).unwrap();
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_fusekit"))
            .args(["run", "p.yaml", "--format", "json"])
            .current_dir(d)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (start(), start());
    let outcomes: Vec<serde_json::Value> = [first, second]
        .into_iter()
        .map(|child| {
            let output = child.wait_with_output().unwrap();
            let (out, err) = ok(&output);
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"))
        })
        .collect();
    let mut counts: Vec<(u64, u64)> = outcomes
        .iter()
        .map(|o| (o["ran"].as_u64().unwrap(), o["skipped"].as_u64().unwrap()))
        .collect();
    counts.sort();
    assert_eq!(counts, [(0, 3), (3, 0)], "{outcomes:?}");
    for stage in ["lint", "split", "cache"] {
        assert_eq!(record(d, stage)["stage"], stage);
    }
    let verify = fusekit(
        &["cache", "verify", "runs/pipeline/tiny/cache/train.fkc"],
        d,
    );
    ok(&verify);
}
