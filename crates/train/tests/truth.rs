//! The trainer as a whole, proven by the weights `train()` ends with.
//!
//! Every run here trains on a cache whose samples are copies of one painted pair, with
//! augmentation and EMA off. That is what makes the equalities exact: BatchNorm normalises
//! with the statistics of the images in a forward pass, and the v8 loss divides its box and
//! class terms by the batch's own target-score sum (Ultralytics' convention), so on distinct
//! images 4 passes of 8 images and 1 pass of 32 genuinely differ. On copies of one image each
//! pass has the same statistics and per-image loss (its objects are large, so that the loss's
//! normaliser `max(target score sum, 1)` is not clamped for passes of 4 images or more), so
//! "batch 8 x accumulate 4" and "batch 32", or "2 ranks x 4" and "1 rank x 8", must give the
//! same gradient up to float32 rounding.
//! Rounding is the only difference left, so the tolerance is a small fraction of how far
//! training moved the weights: [`assert_same_training`].
//!
//! Multi-rank cases re-run this test binary as the ranks of a loopback group (torchrun's
//! variables); rank 0 writes the run's weights, which the test compares with a one-rank run.

mod common;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use fusekit_cache::Cache;
use fusekit_detect::{DetectionLoss, Detector, LossGains, ModelConfig};
use fusekit_dist::ProcessGroup;
use fusekit_hyp::{Accumulate, BatchPlan, Fusion, Hyp, NanPolicy, Schedule};
use fusekit_loader::{Augment, Loader, LoaderOptions};
use fusekit_train::{
    Faults, MAX_GRAD_NORM, Optimizer, PoisonedBatch, SimulatedOom, StepSettings, TrainError,
    TrainOptions, TrainSummary, batch_tensors, train,
};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Copies of the pair in each test cache: 5 batches of 8, or one of 32 and one of 8.
const COPIES: usize = 40;

/// Hyperparameters of every run here: no augmentation, no EMA, no warmup, one image stream,
/// and loss gains at a thousandth of Ultralytics', for two reasons. The gradient norm of 32
/// images (about 2.4 at the start) stays under the clip at [`MAX_GRAD_NORM`], which would
/// rescale a wrongly scaled gradient back to the right norm and hide the errors looked for.
/// And training stays in the regime where float32 rounding differences stay at rounding
/// level: with gains at a hundredth, splitting batches of 8 into passes of 4 (the same
/// arithmetic in another order) ended three warmup epochs 2-3% apart (relative to how far the
/// weights moved), at a thousandth 0.009%.
fn plain_hyp() -> Hyp {
    Hyp {
        epochs: 2,
        batch: 8,
        imgsz: 64,
        fusion: Fusion::Rgb,
        accumulate: Accumulate::Fixed(1),
        warmup_epochs: 0.0,
        close_mosaic: 0,
        mosaic: 0.0,
        fliplr: 0.0,
        scale: 0.0,
        translate: 0.0,
        hsv_h: 0.0,
        hsv_s: 0.0,
        hsv_v: 0.0,
        ema: false,
        box_gain: 0.0075,
        cls: 0.0005,
        dfl: 0.0015,
        ..Hyp::default()
    }
}

fn options(dir: &Path, name: &str, hyp: Hyp, faults: Faults) -> TrainOptions {
    TrainOptions {
        hyp,
        train_cache: dir.join("copies.fkc"),
        val_cache: None,
        device: Device::Cpu,
        run_dir: dir.join(name),
        weights: None,
        resume: false,
        limit: None,
        min_warmup: 0,
        faults,
        group: None,
        sync_bn: false,
    }
}

/// The cache of [`COPIES`] copies in `dir` (made once per directory).
fn copies(dir: &Path) -> PathBuf {
    let path = dir.join("copies.fkc");
    if !path.exists() {
        common::same_pair_cache(dir, "copies", COPIES);
    }
    path
}

/// Trains in this process; returns the summary and the weights the run saved.
fn run(options: &TrainOptions) -> (TrainSummary, HashMap<String, Tensor>) {
    let summary = train(options, &mut |_| {}).expect("training");
    (summary, saved_weights(&options.run_dir))
}

fn saved_weights(run_dir: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(run_dir.join("weights/last.safetensors"))
        .expect("reading weights/last.safetensors")
        .into_iter()
        .collect()
}

/// The weights a run starts from (the trainer seeds libtorch with `hyp.seed`, then builds the
/// model).
fn initial_weights(dir: &Path, hyp: &Hyp) -> HashMap<String, Tensor> {
    let (vs, _) = model(dir, hyp);
    vs.variables()
        .into_iter()
        .map(|(name, t)| (name, t.detach().copy()))
        .collect()
}

fn model(dir: &Path, hyp: &Hyp) -> (VarStore, Detector) {
    let cache = Cache::open(&dir.join("copies.fkc"), None).expect("opening the cache");
    let meta = cache.meta();
    tch::manual_seed(hyp.seed as i64);
    let vs = VarStore::new(Device::Cpu);
    let config = ModelConfig {
        scale: hyp.model_scale,
        fusion: hyp.fusion,
        names: meta.names.clone(),
        ir_channels: i64::from(meta.ir_channels),
    };
    let detector = Detector::new(&vs.root(), config);
    (vs, detector)
}

/// Largest absolute difference between two sets of trainable weights. BatchNorm's running
/// statistics are left out: they do not take part in training-mode passes, and their
/// unbiased-variance correction `n / (n - 1)` differs with the pass size by design.
fn max_difference(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> f64 {
    let mut worst = 0.0f64;
    let mut compared = 0;
    for (name, t) in a {
        if name.contains("running_") {
            continue;
        }
        let other = b
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from the other run"));
        worst = worst.max((t - other).abs().max().double_value(&[]));
        compared += 1;
    }
    assert!(compared > 100, "only {compared} tensors compared");
    worst
}

/// `got` and `want` ended training at the same weights: their difference is under 0.1% of how
/// far training moved the weights from `start`. Float32 rounding over a few steps stays well
/// under that; a step with a different gradient, lr or set of images does not (the checks that
/// these tests fail on the old trainer show 5% and more).
fn assert_same_training(
    what: &str,
    start: &HashMap<String, Tensor>,
    got: &HashMap<String, Tensor>,
    want: &HashMap<String, Tensor>,
) {
    let moved = max_difference(want, start);
    let apart = max_difference(got, want);
    eprintln!("{what}: weights moved by {moved:.3e}, the runs differ by {apart:.3e}");
    // Rounding differences are ~1e-7: the runs must have moved far beyond that.
    assert!(
        moved > 1e-4,
        "{what}: training barely moved the weights ({moved:e})"
    );
    assert!(
        apart <= 1e-3 * moved,
        "{what}: the runs differ by {apart:e}, {:.2}% of the {moved:e} that training moved the \
weights",
        100.0 * apart / moved
    );
}

/// Serialises the tests of this file: each seeds libtorch's one global generator and then
/// builds models (in `train` and here), so two at once would draw from each other's stream
/// and start from different weights.
static SERIAL: Mutex<()> = Mutex::new(());

/// A directory holding the copies cache, and this test's turn (hold it to the end).
fn setup() -> (MutexGuard<'static, ()>, tempfile::TempDir) {
    let turn = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    copies(dir.path());
    (turn, dir)
}

/// `--batch 8 --accumulate 4` steps like `--batch 32 --accumulate 1`: 40 images per epoch are
/// 5 batches of 8 (a step after the 4th, and one after the 5th: the epoch's last, partial
/// window) or a batch of 32 and one of 8, over two epochs.
#[test]
fn accumulating_4_batches_of_8_trains_like_batches_of_32() {
    let (_turn, dir) = setup();
    let d = dir.path();
    let accumulated = Hyp {
        batch: 8,
        accumulate: Accumulate::Fixed(4),
        ..plain_hyp()
    };
    let whole = Hyp {
        batch: 32,
        accumulate: Accumulate::Fixed(1),
        ..plain_hyp()
    };
    let (a, got) = run(&options(
        d,
        "accumulated",
        accumulated.clone(),
        Faults::default(),
    ));
    let (b, want) = run(&options(d, "whole", whole, Faults::default()));
    assert_eq!((a.optimizer_steps, b.optimizer_steps), (4, 4));
    assert_same_training(
        "batch 8 x accumulate 4 vs batch 32",
        &initial_weights(d, &accumulated),
        &got,
        &want,
    );
}

/// During warmup accumulation ramps from 1 to `accumulate` (Ultralytics' `np.interp`, rounded
/// half to even): with 5 batches of 8 per epoch, `--accumulate 4` and one warmup epoch, the
/// windows are 1, 2, 2 (the epoch's last, partial) batches in epoch 0, then 4 and 1 per epoch.
/// The trainer's weights equal those of this file's own loop over the same batches, which
/// steps by Ultralytics' rule with the schedule's lr, momentum and accumulation at each batch.
#[test]
fn warmup_ramps_accumulation_as_ultralytics_does() {
    let (_turn, dir) = setup();
    let d = dir.path();
    let hyp = Hyp {
        epochs: 3,
        batch: 8,
        accumulate: Accumulate::Fixed(4),
        warmup_epochs: 1.0,
        ..plain_hyp()
    };
    let (summary, got) = run(&options(d, "warmup", hyp.clone(), Faults::default()));
    let (steps, want) = reference_run(d, &hyp);
    assert_eq!(steps, 7, "the reference loop's windows");
    assert_eq!(summary.optimizer_steps, steps);
    assert_same_training(
        "trainer vs reference loop",
        &initial_weights(d, &hyp),
        &got,
        &want,
    );
}

/// A plain training loop over the copies cache, written from Ultralytics' `_do_train`: at each
/// loader batch take the schedule's settings, backpropagate the batch's loss (its mean times
/// its size), and step when `accumulate` batches have gone by since the last step, or at the
/// last batch of the epoch (fusekit's rule: no window spans two epochs). Returns the steps
/// taken and the final weights.
fn reference_run(dir: &Path, hyp: &Hyp) -> (u64, HashMap<String, Tensor>) {
    let cache = Arc::new(Cache::open(&dir.join("copies.fkc"), None).unwrap());
    let loader = Loader::new(
        cache,
        LoaderOptions {
            batch: hyp.batch as usize,
            augment: Some(Augment {
                fliplr: 0.0,
                mosaic: 0.0,
                scale: 0.0,
                translate: 0.0,
                hsv_h: 0.0,
                hsv_s: 0.0,
                hsv_v: 0.0,
            }),
            ..LoaderOptions::default()
        },
    );
    let batches = loader.batches_per_epoch() as u64;
    let plan = BatchPlan::from_hyp(hyp, 1).unwrap();
    let schedule = Schedule::new(hyp, &plan, batches, hyp.epochs).unwrap();
    let (vs, detector) = model(dir, hyp);
    let loss = DetectionLoss {
        gains: LossGains {
            box_gain: hyp.box_gain,
            cls_gain: hyp.cls,
            dfl_gain: hyp.dfl,
        },
        ..DetectionLoss::default()
    };
    let mut optimizer = Optimizer::new(hyp.optimizer, vs.variables());
    for epoch in 0..hyp.epochs {
        optimizer.zero_grad();
        let mut last_step = None;
        for (i, batch) in loader.epoch(u64::from(epoch)).enumerate() {
            let batch = batch.unwrap();
            let i = i as u64;
            let step = schedule.at(epoch, i);
            let tensors = batch_tensors(&batch, Device::Cpu);
            let input = tensors.images.to_kind(Kind::Float) / 255.0;
            let outputs = detector.forward_t(&input, true);
            loss.compute(&outputs, &tensors.targets)
                .unwrap()
                .total
                .backward();
            let window = last_step.map_or(i + 1, |s| i - s);
            if window >= u64::from(step.accumulate) || i + 1 == batches {
                let _ = optimizer.clip_grad_norm(MAX_GRAD_NORM);
                optimizer.step(&StepSettings {
                    lr: step.lr,
                    momentum: step.momentum,
                    weight_decay: plan.weight_decay(),
                });
                optimizer.zero_grad();
                last_step = Some(i);
            }
        }
    }
    let weights = vs
        .variables()
        .into_iter()
        .map(|(name, t)| (name, t.detach().copy()))
        .collect();
    (optimizer.steps(), weights)
}

/// After an out-of-memory error halves the micro-batch part-way through an accumulation window
/// (the 2nd batch of a window of 4), the run ends where one that never ran out of memory
/// does: the window keeps its earlier batch's gradients, and the failed batch starts over in
/// two micro-batches of 4.
#[test]
fn out_of_memory_mid_window_ends_with_the_weights_of_a_clean_run() {
    let (_turn, dir) = setup();
    let d = dir.path();
    let hyp = Hyp {
        batch: 8,
        accumulate: Accumulate::Fixed(4),
        ..plain_hyp()
    };
    let faults = Faults {
        out_of_memory: Some(SimulatedOom {
            above: 4,
            from_batch: 1,
        }),
        ..Faults::default()
    };
    let mut notes = Vec::new();
    let summary = train(&options(d, "oom", hyp.clone(), faults), &mut |event| {
        if let fusekit_train::Event::Note(note) = event {
            notes.push(note);
        }
    })
    .expect("training through the simulated out-of-memory error");
    assert!(
        notes
            .iter()
            .any(|n| n.contains("out of memory with a micro-batch of 8")),
        "{notes:?}"
    );
    let got = saved_weights(&d.join("oom"));
    let (clean, want) = run(&options(d, "clean", hyp.clone(), Faults::default()));
    assert_eq!(summary.optimizer_steps, clean.optimizer_steps);
    assert_same_training(
        "out of memory at batch 1 vs no error",
        &initial_weights(d, &hyp),
        &got,
        &want,
    );
}

/// `--nan-policy rollback` (the default): a NaN loss at the 3rd batch of epoch 1 (after two
/// optimizer steps) restores the weights of the epoch's start, starts a new optimizer and
/// reruns the epoch at half the learning rate. Poisoning the first epoch makes that start the
/// initial weights, so the run must end exactly like a clean run at half `lr0`.
#[test]
fn a_nan_batch_rolls_back_and_continues_at_half_the_lr() {
    let (_turn, dir) = setup();
    let d = dir.path();
    let hyp = plain_hyp();
    let faults = Faults {
        non_finite: Some(PoisonedBatch {
            epoch: 0,
            batch: 2,
            rank: 0,
        }),
        ..Faults::default()
    };
    let mut notes = Vec::new();
    train(&options(d, "poisoned", hyp.clone(), faults), &mut |event| {
        if let fusekit_train::Event::Note(note) = event {
            notes.push(note);
        }
    })
    .expect("a rolled-back run finishes");
    assert!(notes.iter().any(|n| n.contains("rolled back")), "{notes:?}");
    let got = saved_weights(&d.join("poisoned"));
    let halved = Hyp {
        lr0: hyp.lr0 / 2.0,
        ..hyp.clone()
    };
    let (_, want) = run(&options(d, "half-lr", halved, Faults::default()));
    assert_same_training(
        "rolled back vs clean at half lr0",
        &initial_weights(d, &hyp),
        &got,
        &want,
    );
    // results.csv states the halved lr: the same columns as the clean half-lr run.
    let lr_columns = |name: &str| -> Vec<String> {
        std::fs::read_to_string(d.join(name).join("results.csv"))
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split(',').skip(12).collect::<Vec<_>>().join(","))
            .collect()
    };
    assert_eq!(lr_columns("poisoned"), lr_columns("half-lr"));

    // `--nan-policy stop` names the batch instead.
    let stop = Hyp {
        nan_policy: NanPolicy::Stop,
        ..hyp
    };
    let error = train(&options(d, "stopped", stop, faults), &mut |_| {}).unwrap_err();
    match error {
        TrainError::NonFinite { epoch, batch, .. } => assert_eq!((epoch, batch), (1, 2)),
        other => panic!("expected a non-finite loss, got {other}"),
    }
}

const DIR: &str = "FUSEKIT_TRAIN_TRUTH_DIR";
const CASE: &str = "FUSEKIT_TRAIN_TRUTH_CASE";

/// Two ranks of a data-parallel run; started by the tests below, as child processes.
#[test]
#[ignore = "a rank of the multi-process tests, started by them"]
fn truth_rank_worker() {
    tch::set_num_threads(1);
    let dir = PathBuf::from(std::env::var(DIR).expect("started by a multi-process test"));
    let case = std::env::var(CASE).unwrap();
    let group = ProcessGroup::from_env(Duration::from_secs(60))
        .expect("joining the group")
        .map(Arc::new)
        .expect("WORLD_SIZE > 1");
    let (hyp, faults, sync_bn) = rank_case(&case);
    let options = TrainOptions {
        group: Some(group),
        sync_bn,
        ..options(&dir, &format!("{case}-2x4"), hyp, faults)
    };
    train(&options, &mut |_| {}).expect("training");
}

/// What each multi-rank case trains, per rank (the one-rank comparison doubles `batch`).
fn rank_case(case: &str) -> (Hyp, Faults, bool) {
    match case {
        // Warmup (with its accumulation ramp 1 -> 2) and accumulation 2, synchronised
        // BatchNorm, three epochs.
        "dp" => (
            Hyp {
                epochs: 3,
                batch: 4,
                accumulate: Accumulate::Fixed(2),
                warmup_epochs: 1.0,
                ..plain_hyp()
            },
            Faults::default(),
            true,
        ),
        // Rank 1 alone sees a NaN loss at batch 2 of epoch 0: both ranks must roll back.
        "nan" => (
            Hyp {
                batch: 4,
                ..plain_hyp()
            },
            Faults {
                non_finite: Some(PoisonedBatch {
                    epoch: 0,
                    batch: 2,
                    rank: 1,
                }),
                ..Faults::default()
            },
            false,
        ),
        other => panic!("unknown case {other}"),
    }
}

/// Runs `case` on two ranks of a loopback group; returns rank 0's saved weights.
fn two_ranks(dir: &Path, case: &str) -> HashMap<String, Tensor> {
    common::run_two_ranks(
        "truth_rank_worker",
        &[(DIR, dir.as_os_str()), (CASE, OsStr::new(case))],
    );
    saved_weights(&dir.join(format!("{case}-2x4")))
}

/// 2 ranks x 4 images step like 1 rank x 8: the ranks' gradients are summed, not averaged
/// (each rank's loss adds up over its images), through warmup and accumulation 2.
#[test]
fn two_ranks_of_4_train_like_one_rank_of_8() {
    let (_turn, dir) = setup();
    let d = dir.path();
    let got = two_ranks(d, "dp");
    let (per_rank, _, _) = rank_case("dp");
    let one_rank = Hyp {
        batch: 8,
        ..per_rank
    };
    let (_, want) = run(&options(d, "dp-1x8", one_rank.clone(), Faults::default()));
    assert_same_training(
        "2 ranks x 4 vs 1 rank x 8",
        &initial_weights(d, &one_rank),
        &got,
        &want,
    );
}

/// A NaN on rank 1 alone rolls both ranks back together: the run ends like a clean one-rank
/// run of the same global batch at half `lr0`.
#[test]
fn a_nan_on_one_rank_rolls_every_rank_back() {
    let (_turn, dir) = setup();
    let d = dir.path();
    let got = two_ranks(d, "nan");
    let (per_rank, _, _) = rank_case("nan");
    let reference = Hyp {
        batch: 8,
        lr0: per_rank.lr0 / 2.0,
        ..per_rank
    };
    let (_, want) = run(&options(d, "nan-1x8", reference.clone(), Faults::default()));
    assert_same_training(
        "2 ranks, NaN on rank 1, vs 1 rank at half lr0",
        &initial_weights(d, &reference),
        &got,
        &want,
    );
}

/// Out of memory outside the training step (here: validation) is no silent exit: `train`
/// returns an error that says what the trainer was doing.
#[test]
fn out_of_memory_outside_the_step_is_an_error_naming_the_phase() {
    let (_turn, dir) = setup();
    let d = dir.path();
    let options = TrainOptions {
        val_cache: Some(copies(d)),
        ..options(
            d,
            "validation-oom",
            Hyp {
                epochs: 1,
                ..plain_hyp()
            },
            Faults {
                out_of_memory_validating: true,
                ..Faults::default()
            },
        )
    };
    let error = train(&options, &mut |_| {}).unwrap_err();
    assert!(
        matches!(error, TrainError::DeviceOutOfMemory { during, .. } if during.starts_with("validating")),
        "{error}"
    );
    let text = error.to_string();
    assert!(text.contains("out of memory while validating"), "{text}");
}
