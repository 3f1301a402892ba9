//! `fusekit train` driven as a user would: batch arithmetic, results.csv, weights, resume
//! after kill -9 (of the only process or of one rank), the NaN guard, hyp.yaml errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// `fusekit ARGS` in `cwd`, with one libtorch thread.
fn fusekit_command(args: &[&str], cwd: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fusekit"));
    command
        .args(args)
        .current_dir(cwd)
        // Tests run in parallel on few cores: one libtorch thread each avoids OpenMP threads
        // waiting for a time slice on every operation.
        .env("OMP_NUM_THREADS", "1");
    command
}

fn fusekit(args: &[&str], cwd: &Path) -> Output {
    fusekit_command(args, cwd).output().expect("fusekit runs")
}

/// Waits (up to 120 s) until the run `name` has finished its first epoch.
fn wait_for_checkpoint(dir: &Path, name: &str) {
    let checkpoint = dir.join(format!("runs/fuse/{name}/weights/last.ckpt"));
    let start = std::time::Instant::now();
    while !checkpoint.is_file() && start.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(checkpoint.is_file(), "the first epoch never ended");
}

/// Asserts that the runs `a` and `b` ended with byte-identical last.safetensors.
fn assert_same_last_weights(dir: &Path, a: &str, b: &str) {
    let last =
        |name: &str| std::fs::read(dir.join(format!("runs/fuse/{name}/weights/last.safetensors")));
    assert!(
        last(a).unwrap() == last(b).unwrap(),
        "resumed weights differ from an uninterrupted run"
    );
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A generated dataset split by scene and cached at 64: returns the cache folder.
fn cached_dataset(dir: &Path) -> PathBuf {
    ok(&fusekit(
        &[
            "synth", "--out", "ds", "--pairs", "24", "--size", "96x80", "--scenes", "4",
        ],
        dir,
    ));
    ok(&fusekit(&["split", "ds", "--group", r"^(\d{2})"], dir));
    ok(&fusekit(
        &["cache", "build", "ds", "--imgsz", "64", "--out", "cache"],
        dir,
    ));
    dir.join("cache")
}

const FAST: &[&str] = &["--imgsz", "64", "--device", "cpu"];

fn train_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["train", "--cache", "cache"];
    args.extend_from_slice(FAST);
    args.extend_from_slice(extra);
    args
}

#[test]
fn prints_the_batch_arithmetic_and_the_schedule() {
    let dir = tempfile::tempdir().unwrap();
    cached_dataset(dir.path());
    let out = ok(&fusekit(
        &train_args(&[
            "--batch",
            "8",
            "--accumulate",
            "4",
            "--print-schedule",
            "--epochs",
            "2",
            "--plot",
            "schedule.png",
        ]),
        dir.path(),
    ));
    assert!(
        out.contains("batch 8 x accumulate 4 x 1 device = 32 effective; lr0 0.01 @ nbs 64 -> 0.005 (linear), weight_decay 0.0005 -> 0.00025"),
        "{out}"
    );
    // One row per batch: 2 epochs of ceil(16 / 8) batches (16 train pairs).
    let rows = out
        .lines()
        .filter(|l| l.trim_start().starts_with(char::is_numeric))
        .count();
    assert!(rows >= 4, "{out}");
    // The plot: three panels (learning rates, momentum, accumulation), each group's line in
    // its own colour in the top one.
    let plot = image::open(dir.path().join("schedule.png"))
        .unwrap()
        .into_rgb8();
    assert_eq!(plot.dimensions(), (1400, 1200));
    let colours: std::collections::HashSet<[u8; 3]> = plot.pixels().map(|p| p.0).collect();
    assert!(colours.len() > 50, "{} colours", colours.len());
    let top_panel = |colour: [u8; 3]| {
        (0..400)
            .flat_map(|y| (0..1400).map(move |x| (x, y)))
            .filter(|&(x, y)| plot.get_pixel(x, y).0 == colour)
            .count()
    };
    for group in 0..3 {
        let colour = fusekit_plots::class_rgb(group);
        assert!(top_panel(colour) > 200, "group {group}'s line is missing");
    }

    let auto = ok(&fusekit(
        &train_args(&["--batch", "4", "--print-schedule"]),
        dir.path(),
    ));
    assert!(
        auto.contains(
            "batch 4 x accumulate 16 x 1 device = 64 effective; lr0 0.01 @ nbs 64 -> 0.01 (linear)"
        ),
        "{auto}"
    );
}

#[test]
fn trains_writes_ultralytics_results_and_weights_that_predict_reads() {
    let dir = tempfile::tempdir().unwrap();
    cached_dataset(dir.path());
    let out = ok(&fusekit(
        &train_args(&["--batch", "4", "--epochs", "2", "--fusion", "late"]),
        dir.path(),
    ));
    assert!(out.contains("yolov8n late fusion"), "{out}");
    let run = dir.path().join("runs/fuse/train");
    let results = std::fs::read_to_string(run.join("results.csv")).unwrap();
    let mut lines = results.lines();
    assert_eq!(
        lines.next().unwrap(),
        "epoch,time,train/box_loss,train/cls_loss,train/dfl_loss,metrics/precision(B),\
metrics/recall(B),metrics/mAP50(B),metrics/mAP50-95(B),val/box_loss,val/cls_loss,val/dfl_loss,\
lr/pg0,lr/pg1,lr/pg2"
    );
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 2);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.len(), 15);
        assert_eq!(row[0], (i + 1) as f64);
        assert!(
            row[2..5].iter().all(|v| v.is_finite() && *v > 0.0),
            "{row:?}"
        );
        assert!(row[5..9].iter().all(|v| (0.0..=1.0).contains(v)), "{row:?}");
    }
    let args = std::fs::read_to_string(run.join("args.yaml")).unwrap();
    assert!(
        args.contains("lr0: 0.01") && args.contains("fusion: late"),
        "{args}"
    );
    for file in [
        "weights/best.safetensors",
        "weights/last.safetensors",
        "weights/last.ckpt",
    ] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    // A second run gets its own folder.
    ok(&fusekit(
        &train_args(&["--batch", "4", "--epochs", "1", "--fusion", "rgb"]),
        dir.path(),
    ));
    assert!(dir.path().join("runs/fuse/train2/results.csv").is_file());

    let predicted = ok(&fusekit(
        &[
            "predict",
            "--weights",
            "runs/fuse/train/weights/best.safetensors",
            "--source",
            "ds",
            "--imgsz",
            "64",
            "--device",
            "cpu",
            "--no-images",
        ],
        dir.path(),
    ));
    assert!(predicted.contains("24 pairs"), "{predicted}");

    let validated = ok(&fusekit(
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
        ],
        dir.path(),
    ));
    let report: serde_json::Value = serde_json::from_str(validated.trim()).unwrap();
    assert_eq!(report["images"], 6);
    let map50 = report["metrics"]["map50"].as_f64().unwrap();
    // best.safetensors is the best epoch's EMA: `val` reproduces that epoch's mAP50.
    assert!(rows.iter().any(|r| (r[7] - map50).abs() < 1e-5), "{report}");
}

#[test]
fn resume_after_kill_9_ends_with_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    cached_dataset(dir.path());
    let common = [
        "--batch",
        "4",
        "--epochs",
        "3",
        "--accumulate",
        "1",
        "--warmup-epochs",
        "0",
        "--fusion",
        "rgb",
    ];
    ok(&fusekit(
        &train_args(&[&common[..], &["--name", "straight"]].concat()),
        dir.path(),
    ));

    let mut child = fusekit_command(
        &train_args(&[&common[..], &["--name", "killed"]].concat()),
        dir.path(),
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let results = dir.path().join("runs/fuse/killed/results.csv");
    wait_for_checkpoint(dir.path(), "killed");
    child.kill().unwrap();
    let _ = child.wait();
    let out = ok(&fusekit(
        &train_args(&["--resume", "--name", "killed"]),
        dir.path(),
    ));
    assert!(out.contains("resuming at epoch"), "{out}");
    let csv = std::fs::read_to_string(&results).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");

    assert_same_last_weights(dir.path(), "straight", "killed");
}

#[test]
fn a_diverging_run_names_the_batch_and_the_learning_rate() {
    let dir = tempfile::tempdir().unwrap();
    cached_dataset(dir.path());
    let output = fusekit(
        &train_args(&[
            "--batch",
            "4",
            "--epochs",
            "2",
            "--lr0",
            "1e12",
            "--warmup-epochs",
            "0",
            "--accumulate",
            "1",
            "--nan-policy",
            "stop",
            "--fusion",
            "rgb",
        ]),
        dir.path(),
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not finite"), "{stderr}");
    assert!(stderr.contains("images/"), "{stderr}");
    assert!(stderr.contains("lr"), "{stderr}");
}

/// The default suite's learning check (the long mid-vs-rgb comparison is in BENCHMARKS.md):
/// 20 short epochs from scratch on a small generated set, then the losses must have fallen and
/// mAP50 must be far above chance (a from-scratch detector scores ~0). The model is early
/// fusion, as cheap as RGB alone (one backbone, four input channels): in these night scenes
/// the people are faint in RGB and bright in IR. RGB alone passed on some machines but stayed
/// at chance on others (best mAP50 <= 0.01 with seeds 0, 1 and 2 on an AVX2-only AMD EPYC),
/// while the fused input reaches mAP50 0.90 and 0.98 there (seeds 0 and 1).
#[test]
fn training_lowers_the_loss_and_raises_map50_above_chance() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    ok(&fusekit(
        &[
            "synth", "--out", "ds", "--pairs", "128", "--size", "160x128", "--scenes", "4",
        ],
        cwd,
    ));
    ok(&fusekit(&["split", "ds", "--val", "0.25"], cwd));
    ok(&fusekit(
        &["cache", "build", "ds", "--imgsz", "128", "--out", "cache"],
        cwd,
    ));
    ok(&fusekit(
        &[
            "train",
            "--cache",
            "cache",
            "--imgsz",
            "128",
            "--device",
            "cpu",
            "--fusion",
            "early",
            "--epochs",
            "20",
            "--batch",
            "16",
            "--accumulate",
            "1",
            "--lr-scaling",
            "none",
            "--warmup-epochs",
            "0",
            "--close-mosaic",
            "3",
        ],
        cwd,
    ));
    let results = std::fs::read_to_string(cwd.join("runs/fuse/train/results.csv")).unwrap();
    let rows: Vec<Vec<f64>> = results
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|v| v.trim().parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 20, "{results}");
    let loss = |row: &[f64]| row[2] + row[3] + row[4];
    assert!(
        loss(&rows[19]) < 0.6 * loss(&rows[0]),
        "train loss did not fall:\n{results}"
    );
    let best_map50 = rows.iter().map(|r| r[7]).fold(0.0, f64::max);
    assert!(best_map50 > 0.3, "mAP50 stayed near chance:\n{results}");
}

/// `--nproc 2` starts two local ranks through libtorch's c10d (TCPStore + Gloo), as torchrun
/// would: the arithmetic counts both devices, each rank trains its shard, rank 0 alone reports
/// and writes the run.
#[test]
fn two_local_ranks_train_one_run() {
    let dir = tempfile::tempdir().unwrap();
    cached_dataset(dir.path());
    let output = fusekit(
        &train_args(&[
            "--nproc",
            "2",
            "--batch",
            "4",
            "--epochs",
            "2",
            "--fusion",
            "rgb",
            "--dist-timeout",
            "120",
        ]),
        dir.path(),
    );
    let stdout = ok(&output);
    assert!(
        stdout.contains("batch 4 x accumulate 8 x 2 devices = 64 effective"),
        "{stdout}"
    );
    // One report, from rank 0: 18 train pairs in shards of 9, so 3 batches (4, 4, 1) per rank.
    assert_eq!(stdout.matches("run: ").count(), 1, "{stdout}");
    assert!(
        stdout.contains(
            "data: 18 train images (9 per rank x 2 ranks), 6 val images (rank 0), 3 batches per \
epoch per rank"
        ),
        "{stdout}"
    );
    let run = dir.path().join("runs/fuse/train");
    let results = std::fs::read_to_string(run.join("results.csv")).unwrap();
    assert_eq!(results.lines().count(), 3, "{results}");
    assert!(run.join("weights/best.safetensors").is_file());
    assert!(!dir.path().join("runs/fuse/train2").exists());
}

/// A rank killed with SIGKILL after the first epoch makes rank 0 stop within seconds (not
/// after `--dist-timeout`) with an error that names the failed collective and says a peer was
/// lost; `--nproc 2 --resume` then finishes the run with the weights of an uninterrupted one.
#[test]
fn a_killed_rank_stops_the_other_with_a_clear_error_and_resume_finishes_the_run() {
    let dir = tempfile::tempdir().unwrap();
    cached_dataset(dir.path());
    let common = [
        "--batch",
        "4",
        "--epochs",
        "3",
        "--accumulate",
        "1",
        "--warmup-epochs",
        "0",
        "--fusion",
        "rgb",
        "--dist-timeout",
        "30",
    ];
    // Two ranks started as torchrun would (`--nproc` hides the ranks' process ids).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let rank = |rank: &str| {
        fusekit_command(
            &train_args(&[&common[..], &["--name", "killed"]].concat()),
            dir.path(),
        )
        .env("RANK", rank)
        .env("LOCAL_RANK", rank)
        .env("WORLD_SIZE", "2")
        .env("LOCAL_WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let rank0 = rank("0");
    let mut rank1 = rank("1");
    wait_for_checkpoint(dir.path(), "killed");
    rank1.kill().unwrap();
    let killed = std::time::Instant::now();
    let _ = rank1.wait();
    let output = rank0.wait_with_output().unwrap();
    let waited = killed.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    // Gloo sees the closed connection at rank 0's next collective: seconds, not the timeout.
    assert!(waited.as_secs() < 15, "rank 0 took {waited:?}: {stderr}");
    assert!(stderr.contains("failed on rank 0 of 2"), "{stderr}");
    assert!(
        stderr.contains("lost contact with the other ranks: another rank probably failed"),
        "{stderr}"
    );
    assert!(stderr.contains("`--resume` continues"), "{stderr}");
    eprintln!("rank 0 stopped {waited:?} after rank 1 was killed");

    let out = ok(&fusekit(
        &train_args(&[
            "--nproc",
            "2",
            "--resume",
            "--name",
            "killed",
            "--dist-timeout",
            "30",
        ]),
        dir.path(),
    ));
    assert!(out.contains("resuming at epoch 2"), "{out}");
    let csv = std::fs::read_to_string(dir.path().join("runs/fuse/killed/results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");

    // Gloo's sum over two ranks does not depend on their order and each rank's shard of an
    // epoch depends only on the seed and the epoch, so the resumed run is bit-identical.
    ok(&fusekit(
        &train_args(&[&common[..], &["--nproc", "2", "--name", "straight"]].concat()),
        dir.path(),
    ));
    assert_same_last_weights(dir.path(), "straight", "killed");
}

/// `--sync-bn` normalises with both ranks' statistics: the run completes as one run and ends
/// with other weights than per-rank BatchNorm gives; running out of memory stops with advice
/// instead of splitting the batch on one rank.
#[test]
fn sync_bn_trains_two_ranks_on_the_global_batch_statistics() {
    let dir = tempfile::tempdir().unwrap();
    cached_dataset(dir.path());
    let common = [
        "--nproc",
        "2",
        "--batch",
        "4",
        "--epochs",
        "1",
        "--accumulate",
        "1",
        "--warmup-epochs",
        "0",
        "--fusion",
        "rgb",
        "--dist-timeout",
        "120",
    ];
    ok(&fusekit(
        &train_args(&[&common[..], &["--name", "per-rank"]].concat()),
        dir.path(),
    ));
    let stdout = ok(&fusekit(
        &train_args(&[&common[..], &["--name", "synced", "--sync-bn"]].concat()),
        dir.path(),
    ));
    assert_eq!(stdout.matches("run: ").count(), 1, "{stdout}");
    let runs = dir.path().join("runs/fuse");
    let results = std::fs::read_to_string(runs.join("synced/results.csv")).unwrap();
    assert_eq!(results.lines().count(), 2, "{results}");
    let weights = |name: &str| std::fs::read(runs.join(name).join("weights/last.safetensors"));
    assert!(
        weights("per-rank").unwrap() != weights("synced").unwrap(),
        "--sync-bn changed nothing"
    );

    let output = fusekit(
        &train_args(&[&common[..], &["--sync-bn", "--simulate-oom-above", "2"]].concat()),
        dir.path(),
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("with --sync-bn every rank must run the same passes"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn out_of_memory_halves_the_micro_batch_and_keeps_the_effective_batch() {
    let dir = tempfile::tempdir().unwrap();
    cached_dataset(dir.path());
    // Micro-batches above 3 images fail like CUDA's allocator does: 8 -> 4 -> 2.
    let base = [
        "--batch",
        "8",
        "--accumulate",
        "2",
        "--epochs",
        "1",
        "--fusion",
        "rgb",
        "--simulate-oom-above",
    ];
    let mut args = base.to_vec();
    args.push("3");
    let output = fusekit(&train_args(&args), dir.path());
    let stdout = ok(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "out of memory with a micro-batch of 8: continuing with micro-batch 4 x accumulate 4 \
(16 images per optimizer step and lr unchanged"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "out of memory with a micro-batch of 4: continuing with micro-batch 2 x accumulate 8"
        ),
        "{stderr}"
    );
    // The simulated panics are handled, not printed.
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stdout.contains("best epoch 1"), "{stdout}");
    let results = std::fs::read_to_string(dir.path().join("runs/fuse/train/results.csv")).unwrap();
    assert_eq!(results.lines().count(), 2, "{results}");

    // At one image per micro-batch there is nothing left to halve: stop with advice.
    let mut args = base.to_vec();
    args.push("0");
    let output = fusekit(&train_args(&args), dir.path());
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("out of memory with a micro-batch of 1 image"),
        "{stderr}"
    );
    assert!(stderr.contains("--imgsz"), "{stderr}");
    assert!(stderr.contains("--mode disk"), "{stderr}");
}

#[test]
fn hyp_yaml_errors_name_the_line_and_suggest_a_key() {
    let dir = tempfile::tempdir().unwrap();
    cached_dataset(dir.path());
    std::fs::write(dir.path().join("hyp.yaml"), "epochs: 1\nlr_0: 0.02\n").unwrap();
    let output = fusekit(&train_args(&["--hyp", "hyp.yaml"]), dir.path());
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("hyp.yaml:2") && stderr.contains("lr0"),
        "{stderr}"
    );
}

/// The cache knows the size it was built at: `--cache` alone trains at it, and a different
/// `--imgsz` (or hyp.yaml `imgsz`) is refused before anything is trained.
#[test]
fn imgsz_comes_from_the_cache_unless_given() {
    let dir = tempfile::tempdir().unwrap();
    cached_dataset(dir.path());
    let common = [
        "train", "--cache", "cache", "--device", "cpu", "--epochs", "1", "--batch", "8",
        "--fusion", "rgb",
    ];
    ok(&fusekit(&common, dir.path()));
    let args = std::fs::read_to_string(dir.path().join("runs/fuse/train/args.yaml")).unwrap();
    assert!(args.lines().any(|l| l == "imgsz: 64"), "{args}");

    let given = [&common[..], &["--imgsz", "128"]].concat();
    let output = fusekit(&given, dir.path());
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("was built at imgsz 64, but imgsz is 128")
            && stderr.contains("train at 64"),
        "{stderr}"
    );
    // A run that cannot start leaves no folder: the next one is not pushed to train3.
    assert!(!dir.path().join("runs/fuse/train2").exists());
    std::fs::write(dir.path().join("hyp.yaml"), "imgsz: 96\n").unwrap();
    let from_file = [&common[..], &["--hyp", "hyp.yaml"]].concat();
    let output = fusekit(&from_file, dir.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("but imgsz is 96"), "{stderr}");
}

/// Ultralytics' `--device 0,1` starts one data-parallel rank per listed GPU; a list that cannot
/// be used is refused before any rank starts or any run folder exists.
#[test]
fn device_lists_are_checked_before_ranks_start() {
    let dir = tempfile::tempdir().unwrap();
    let train = |device: &str, extra: &[&str]| {
        let mut args = vec!["train", "--cache", "cache", "--device", device];
        args.extend_from_slice(extra);
        let output = fusekit(&args, dir.path());
        assert_eq!(output.status.code(), Some(2), "{device}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let stderr = train("cpu,0", &[]);
    assert!(stderr.contains("device list `cpu,0`"), "{stderr}");
    let stderr = train("0,1", &["--nproc", "2"]);
    assert!(stderr.contains("not both"), "{stderr}");
    let gpus = tch::Cuda::device_count();
    if gpus < 2 {
        let stderr = train("0,1", &[]);
        assert!(
            stderr.contains(&format!(
                "device `0,1` asked for, but {gpus} CUDA device(s) are available"
            )),
            "{stderr}"
        );
    } else {
        eprintln!("skipped the unavailable-list case: {gpus} CUDA devices here");
    }
    assert!(!dir.path().join("runs").exists());
}
