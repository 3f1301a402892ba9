//! Two real ranks train one run: the test binary re-runs itself as the ranks of a loopback
//! group (torchrun's variables), each calls `train` with its process group and writes what
//! it ended with; the test compares them.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fusekit_dist::ProcessGroup;
use fusekit_hyp::{Accumulate, Fusion, Hyp};
use fusekit_synth::SynthOptions;
use fusekit_train::{Faults, TrainOptions, train};
use tch::Device;

const DIR: &str = "FUSEKIT_TRAIN_RANKS_DIR";

/// A rank of `every_rank_ends_with_rank_0s_metrics`; run only by it, as a child process.
#[test]
#[ignore = "a rank of the multi-process test, started by it"]
fn rank_worker() {
    tch::set_num_threads(1);
    let dir = PathBuf::from(std::env::var(DIR).expect("started by the multi-process test"));
    let group = ProcessGroup::from_env(Duration::from_secs(60))
        .expect("joining the group")
        .map(Arc::new)
        .expect("WORLD_SIZE > 1");
    let options = TrainOptions {
        hyp: Hyp {
            epochs: 2,
            batch: 4,
            imgsz: 64,
            fusion: Fusion::Rgb,
            accumulate: Accumulate::Fixed(1),
            warmup_epochs: 0.0,
            close_mosaic: 0,
            ..Hyp::default()
        },
        train_cache: dir.join("train.fkc"),
        val_cache: Some(dir.join("val.fkc")),
        device: Device::Cpu,
        run_dir: dir.join("run"),
        weights: None,
        resume: false,
        limit: None,
        min_warmup: 0,
        faults: Faults::default(),
        group: Some(group),
        sync_bn: false,
    };
    let rank = options.group.as_ref().map_or(0, |g| g.rank());
    let summary = train(&options, &mut |_| {}).expect("training");
    let rows: Vec<String> = summary
        .last
        .iter()
        .chain(&summary.best)
        .map(|record| record.csv_row())
        .collect();
    let ended = format!(
        "epochs {} best {} stopped_early {}\n{}\n",
        summary.epochs,
        summary.best_epoch,
        summary.stopped_early,
        rows.join("\n")
    );
    std::fs::write(dir.join(format!("rank{rank}.txt")), ended).unwrap();
}

/// `pairs` generated pairs (seeded by `seed`) cached at imgsz 64 as `dir/NAME.fkc`.
fn cache(dir: &Path, name: &str, pairs: usize, seed: u64) -> PathBuf {
    let options = SynthOptions {
        pairs,
        width: 96,
        height: 80,
        scenes: 2,
        seed,
        ..SynthOptions::default()
    };
    common::synth_cache(dir, name, &options)
}

/// Rank 0 alone validates; every rank must end with its metrics (validation losses, precision,
/// mAP, time), so that they agree on the best epoch and on early stopping. Rank 1 has no
/// validation data of its own: without the exchange its rows would hold zeros and its own time.
#[test]
fn every_rank_ends_with_rank_0s_metrics() {
    let dir = tempfile::tempdir().unwrap();
    cache(dir.path(), "train", 12, 1);
    cache(dir.path(), "val", 4, 2);
    common::run_two_ranks("rank_worker", &[(DIR, dir.path().as_os_str())]);
    let ended = |rank: usize| std::fs::read_to_string(dir.path().join(format!("rank{rank}.txt")));
    let (rank0, rank1) = (ended(0).unwrap(), ended(1).unwrap());
    assert!(rank0.starts_with("epochs 2 "), "{rank0}");
    assert_eq!(rank0, rank1, "the ranks ended with different records");
    // The exchanged numbers are rank 0's validation: its losses are not all zero.
    let last = rank0.lines().nth(1).unwrap();
    let val_loss: f64 = last
        .split(',')
        .skip(9)
        .take(3)
        .map(|v| v.trim().parse::<f64>().unwrap())
        .sum();
    assert!(val_loss > 0.0, "{rank0}");
    // Only rank 0 writes the run.
    let results = std::fs::read_to_string(dir.path().join("run/results.csv")).unwrap();
    assert_eq!(results.lines().count(), 3, "{results}");
}
