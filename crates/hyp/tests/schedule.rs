//! The schedule against values replayed on the installed Ultralytics (fixtures/schedule.csv).

use fusekit_hyp::{
    Accumulate, BatchPlan, EMA_DECAY, EMA_TAU, Hyp, LrScaling, Optimizer, PARAM_GROUPS, ParamGroup,
    Schedule, ScheduleError, ema_decay, render_csv, render_table, warmup_iterations,
};

/// One case of `fixtures/gen_ultralytics.py`.
struct Case {
    name: &'static str,
    optimizer: Optimizer,
    cos_lr: bool,
    epochs: u32,
    batches: u64,
    warmup_epochs: f64,
    lr0: f64,
    lrf: f64,
    accumulate: u32,
}

impl Case {
    const fn new(name: &'static str, optimizer: Optimizer, cos_lr: bool, epochs: u32) -> Self {
        Case {
            name,
            optimizer,
            cos_lr,
            epochs,
            batches: 10,
            warmup_epochs: 3.0,
            lr0: 0.01,
            lrf: 0.01,
            accumulate: 1,
        }
    }

    fn schedule(&self) -> Schedule {
        let hyp = Hyp {
            optimizer: self.optimizer,
            cos_lr: self.cos_lr,
            epochs: self.epochs,
            warmup_epochs: self.warmup_epochs,
            lr0: self.lr0,
            lrf: self.lrf,
            accumulate: Accumulate::Fixed(self.accumulate),
            lr_scaling: LrScaling::None,
            ..Hyp::default()
        };
        let plan = BatchPlan::from_hyp(&hyp, 1).unwrap();
        Schedule::new(&hyp, &plan, self.batches, self.epochs).unwrap()
    }
}

/// The same cases as `CASES` in `fixtures/gen_ultralytics.py`.
const CASES: [Case; 5] = [
    Case {
        batches: 7,
        warmup_epochs: 1.5,
        accumulate: 4,
        ..Case::new("sgd_linear", Optimizer::Sgd, false, 5)
    },
    Case {
        lr0: 0.002,
        lrf: 0.05,
        accumulate: 2,
        ..Case::new("adamw_cosine", Optimizer::AdamW, true, 4)
    },
    Case {
        batches: 6,
        warmup_epochs: 5.0,
        lrf: 0.1,
        ..Case::new("sgd_capped", Optimizer::Sgd, false, 3)
    },
    Case {
        batches: 4,
        warmup_epochs: 0.0,
        lr0: 0.02,
        lrf: 0.2,
        ..Case::new("sgd_nowarmup", Optimizer::Sgd, true, 3)
    },
    Case {
        batches: 5,
        ..Case::new("sgd_one_epoch", Optimizer::Sgd, false, 1)
    },
];

fn case(name: &str) -> Schedule {
    CASES.iter().find(|c| c.name == name).unwrap().schedule()
}

fn sgd(cos_lr: bool, warmup_epochs: f64) -> Schedule {
    Case {
        warmup_epochs,
        ..Case::new("", Optimizer::Sgd, cos_lr, 100)
    }
    .schedule()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1e-12)
}

#[test]
fn matches_ultralytics_replay() {
    let text = include_str!("fixtures/schedule.csv");
    let mut checked = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')).skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let s = case(f[0]);
        let epoch: u32 = f[1].parse().unwrap();
        let batch: u64 = f[2].parse().unwrap();
        let ni: u64 = f[3].parse().unwrap();
        let nw: u64 = f[4].parse().unwrap();
        let accumulate: u32 = f[5].parse().unwrap();
        let num = |i: usize| f[i].parse::<f64>().unwrap();
        assert_eq!(s.warmup_batches(), nw, "{line}");
        let step = s.at(epoch, batch);
        assert_eq!(s.at_global(ni), step, "{line}");
        for (g, i) in [(0, 6), (1, 7), (2, 8)] {
            assert!(close(step.lr[g], num(i)), "{line}: pg{g} {}", step.lr[g]);
        }
        assert!(
            close(step.momentum, num(9)),
            "{line}: momentum {}",
            step.momentum
        );
        assert_eq!(step.accumulate, accumulate, "{line}");
        checked += 1;
    }
    assert_eq!(checked, 5 * 7 + 4 * 10 + 3 * 6 + 3 * 4 + 5);
}

#[test]
fn param_group_order_is_ultralytics_84() {
    assert_eq!(
        PARAM_GROUPS.map(ParamGroup::label),
        ["weight", "bn", "bias"]
    );
    for (i, g) in PARAM_GROUPS.iter().enumerate() {
        assert_eq!(g.index(), i);
    }
    assert!(
        ParamGroup::Weight.decays() && !ParamGroup::Norm.decays() && !ParamGroup::Bias.decays()
    );
}

#[test]
fn warmup_endpoints_and_monotonic() {
    let s = case("sgd_linear");
    let nw = s.warmup_batches();
    assert_eq!(nw, 10);
    let first = s.at(0, 0);
    assert_eq!(first.lr, [0.0, 0.0, 0.1]);
    assert_eq!(first.momentum, 0.8);
    assert_eq!(first.accumulate, 1);
    let end = s.at_global(nw);
    let target = 0.01 * s.lambda(1);
    assert_eq!(end.lr, [target; 3]);
    assert_eq!(end.momentum, 0.937);
    assert_eq!(end.accumulate, 4);
    let mut prev = first;
    for ni in 1..=nw {
        let step = s.at_global(ni);
        assert!(step.momentum > prev.momentum);
        assert!(step.accumulate >= prev.accumulate);
        assert!(step.group(ParamGroup::Bias) < prev.group(ParamGroup::Bias));
        // Within an epoch the weight lr rises; at an epoch boundary the target itself drops.
        if ni % s.batches_per_epoch() != 0 {
            assert!(step.group(ParamGroup::Weight) > prev.group(ParamGroup::Weight));
        }
        prev = step;
    }
}

#[test]
fn no_warmup_when_warmup_epochs_is_zero() {
    let s = case("sgd_nowarmup");
    assert_eq!(s.warmup_batches(), 0);
    let step = s.at(0, 0);
    assert_eq!(step.lr, [0.02; 3]);
    assert_eq!(step.momentum, 0.937);
    assert_eq!(warmup_iterations(0.0, 100, 50), 0);
    // Warmup never reaches the last epoch, and a single epoch has none.
    assert_eq!(warmup_iterations(5.0, 3, 6), 12);
    assert_eq!(warmup_iterations(3.0, 1, 5), 0);
    assert_eq!(warmup_iterations(3.0, 100, 50), 150);
    // Python rounding: 0.5 * 5 = 2.5 -> 2.
    assert_eq!(warmup_iterations(0.5, 10, 5), 2);
}

#[test]
fn legacy_minimum_warmup() {
    let s = case("sgd_linear").with_min_warmup(100);
    assert_eq!(s.warmup_batches(), 100);
    assert_eq!(
        case("sgd_nowarmup").with_min_warmup(100).warmup_batches(),
        0
    );
}

#[test]
fn adamw_keeps_beta1() {
    let s = case("adamw_cosine");
    for row in s.rows() {
        assert_eq!(row.step.momentum, 0.937);
    }
}

#[test]
fn lambda_endpoints() {
    for cos in [false, true] {
        let s = sgd(cos, 3.0);
        assert_eq!(s.lambda(0), 1.0);
        assert_eq!(sgd(cos, 0.0).at(0, 9).lr, [0.01; 3]);
        assert!(close(s.epoch_end(10).lr[0], 0.01 * s.lambda(10)));
        // Ultralytics evaluates the lambda at the 0-based epoch: the last epoch stays above lrf.
        let last = s.epoch_end(99).lr[0];
        assert!(last > 0.01 * 0.01 && last < 0.01 * 0.03, "{cos}: {last}");
        assert!(close(s.lambda(100), 0.01));
        for e in 1..100 {
            assert!(s.lambda(e) < s.lambda(e - 1));
        }
    }
    let linear = sgd(false, 0.0);
    assert!(close(linear.lambda(99), 0.01 + 0.99 / 100.0));
}

#[test]
fn schedule_uses_the_scaled_lr() {
    let hyp = Hyp {
        batch: 8,
        accumulate: Accumulate::Fixed(4),
        warmup_epochs: 0.0,
        ..Hyp::default()
    };
    let plan = BatchPlan::from_hyp(&hyp, 1).unwrap();
    let s = Schedule::new(&hyp, &plan, 10, 100).unwrap();
    assert_eq!(s.lr0(), 0.005);
    assert_eq!(s.at(0, 0).lr, [0.005; 3]);
}

#[test]
fn invalid_schedules() {
    let hyp = Hyp::default();
    let plan = BatchPlan::from_hyp(&hyp, 1).unwrap();
    assert_eq!(
        Schedule::new(&hyp, &plan, 0, 10),
        Err(ScheduleError::NoBatches)
    );
    assert_eq!(
        Schedule::new(&hyp, &plan, 10, 0),
        Err(ScheduleError::NoEpochs)
    );
}

#[test]
fn tables() {
    let s = case("sgd_linear");
    assert_eq!(s.rows().count(), 35);
    assert_eq!(s.epoch_rows().count(), 5);
    let key: Vec<(u32, u64)> = s.key_rows().iter().map(|r| (r.epoch, r.batch)).collect();
    assert_eq!(key[..5], [(0, 0), (0, 6), (1, 0), (1, 3), (1, 6)]);
    let text = render_table(s.key_rows());
    let first = text.lines().next().unwrap();
    assert!(
        first.contains("lr/pg0") && first.contains("momentum"),
        "{text}"
    );
    assert_eq!(text.lines().count(), s.key_rows().len() + 1);
    assert!(text.lines().nth(1).unwrap().trim_start().starts_with("0  "));
    let csv = render_csv(s.rows());
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("epoch,batch,global,lr/pg0,lr/pg1,lr/pg2,momentum,accumulate")
    );
    assert_eq!(lines.next(), Some("0,0,0,0,0,0.1,0.8,1"));
    assert_eq!(csv.lines().count(), 36);
    assert_eq!(
        s.to_string(),
        "SGD, linear lambda, lr0 0.01 -> 0.0001, 5 epochs x 7 batches, warmup 10 batches"
    );
}

/// `ema.csv`: `ModelEMA(model).decay(updates)` from the installed Ultralytics.
#[test]
fn ema_decay_matches_ultralytics() {
    let text = include_str!("fixtures/ema.csv");
    for line in text.lines().filter(|l| !l.starts_with('#')).skip(1) {
        let (updates, decay) = line.split_once(',').unwrap();
        let got = ema_decay(updates.parse().unwrap(), EMA_DECAY, EMA_TAU);
        assert!(close(got, decay.parse().unwrap()), "{line}: {got}");
    }
    assert_eq!(ema_decay(0, EMA_DECAY, EMA_TAU), 0.0);
    assert_eq!(ema_decay(5, 0.99, 0.0), 0.99);
}
