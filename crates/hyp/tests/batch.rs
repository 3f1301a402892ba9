//! Batch arithmetic: auto accumulation, scaling, the one-line summary, OOM halving.

use fusekit_hyp::{
    Accumulate, BatchError, BatchInputs, BatchPlan, Hyp, LrScaling, auto_accumulate,
};

fn inputs(batch: u32, accumulate: Accumulate, devices: u32, lr_scaling: LrScaling) -> BatchInputs {
    BatchInputs {
        batch,
        accumulate,
        devices,
        nbs: 64,
        lr_scaling,
        lr0: 0.01,
        weight_decay: 0.0005,
    }
}

fn plan(batch: u32, accumulate: Accumulate, devices: u32, lr_scaling: LrScaling) -> BatchPlan {
    BatchPlan::new(inputs(batch, accumulate, devices, lr_scaling)).expect("valid plan")
}

#[test]
fn display_matches_the_spec() {
    let p = plan(8, Accumulate::Fixed(4), 1, LrScaling::Linear);
    assert_eq!(
        p.to_string(),
        "batch 8 x accumulate 4 x 1 device = 32 effective; lr0 0.01 @ nbs 64 -> 0.005 (linear), \
         weight_decay 0.0005 -> 0.00025"
    );
    let p = plan(32, Accumulate::Auto, 2, LrScaling::Linear);
    assert_eq!(
        p.to_string(),
        "batch 32 x accumulate 1 x 2 devices = 64 effective; lr0 0.01 @ nbs 64 -> 0.01 (linear), \
         weight_decay 0.0005 -> 0.0005"
    );
    let p = plan(8, Accumulate::Fixed(4), 1, LrScaling::None);
    assert_eq!(
        p.to_string(),
        "batch 8 x accumulate 4 x 1 device = 32 effective; lr0 0.01 @ nbs 64 -> 0.01 (none), \
         weight_decay 0.0005 -> 0.00025"
    );
}

#[test]
fn auto_accumulate_cases() {
    for (batch, devices, expected) in [
        (16, 1, 4),
        (24, 1, 3),
        (64, 1, 1),
        (128, 1, 1),
        (8, 1, 8),
        (1, 1, 64),
        (16, 2, 2),
        (24, 2, 1),
        (64, 2, 1),
        (128, 2, 1),
    ] {
        let p = plan(batch, Accumulate::Auto, devices, LrScaling::Linear);
        assert_eq!(
            p.accumulate(),
            expected,
            "batch {batch} on {devices} devices"
        );
        assert_eq!(p.effective(), u64::from(batch * devices * expected));
    }
    // Python rounds half to even: 60 / 24 = 2.5 -> 2.
    assert_eq!(auto_accumulate(60, 24, 1), 2);
    assert_eq!(auto_accumulate(64, 0, 1), 1);
}

#[test]
fn linear_scaling_scales_lr_and_weight_decay() {
    let p = plan(24, Accumulate::Auto, 1, LrScaling::Linear);
    assert_eq!(p.effective(), 72);
    assert!((p.scale() - 72.0 / 64.0).abs() < 1e-15);
    assert!((p.lr0() - 0.01 * 72.0 / 64.0).abs() < 1e-15);
    assert!((p.weight_decay() - 0.0005 * 72.0 / 64.0).abs() < 1e-15);
}

#[test]
fn no_scaling_keeps_lr_and_scales_weight_decay() {
    let p = plan(128, Accumulate::Auto, 1, LrScaling::None);
    assert_eq!(p.lr0(), 0.01);
    assert!((p.weight_decay() - 0.001).abs() < 1e-15);
    let p = plan(8, Accumulate::Fixed(2), 1, LrScaling::None);
    assert_eq!(p.lr0(), 0.01);
    assert!((p.weight_decay() - 0.000125).abs() < 1e-15);
}

/// `batch.csv`: accumulation and weight decay from Ultralytics' `_build_train_pipeline`.
#[test]
fn weight_decay_matches_ultralytics() {
    let text = include_str!("fixtures/batch.csv");
    let mut n = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')).skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let nbs: u32 = f[0].parse().unwrap();
        let batch: u32 = f[1].parse().unwrap();
        let accumulate: u32 = f[2].parse().unwrap();
        let wd: f64 = f[3].parse().unwrap();
        let base_wd = if batch == 40 { 1e-3 } else { 5e-4 };
        let p = BatchPlan::new(BatchInputs {
            nbs,
            weight_decay: base_wd,
            ..inputs(batch, Accumulate::Auto, 1, LrScaling::None)
        })
        .unwrap();
        assert_eq!(p.accumulate(), accumulate, "{line}");
        assert_eq!(p.weight_decay(), wd, "{line}");
        n += 1;
    }
    assert_eq!(n, 5);
}

#[test]
fn invalid_inputs_are_typed_errors() {
    let ok = inputs(16, Accumulate::Auto, 1, LrScaling::Linear);
    let cases = [
        (BatchInputs { batch: 0, ..ok }, BatchError::ZeroBatch),
        (
            BatchInputs {
                accumulate: Accumulate::Fixed(0),
                ..ok
            },
            BatchError::ZeroAccumulate,
        ),
        (BatchInputs { devices: 0, ..ok }, BatchError::ZeroDevices),
        (BatchInputs { nbs: 0, ..ok }, BatchError::ZeroNbs),
        (BatchInputs { lr0: -1.0, ..ok }, BatchError::Lr0(-1.0)),
        (
            BatchInputs {
                weight_decay: -1.0,
                ..ok
            },
            BatchError::WeightDecay(-1.0),
        ),
        (
            BatchInputs {
                batch: u32::MAX,
                accumulate: Accumulate::Fixed(u32::MAX),
                devices: u32::MAX,
                ..ok
            },
            BatchError::Overflow,
        ),
    ];
    for (input, error) in cases {
        assert_eq!(BatchPlan::new(input), Err(error));
    }
    assert!(matches!(
        BatchPlan::new(BatchInputs {
            lr0: f64::NAN,
            ..ok
        }),
        Err(BatchError::Lr0(_))
    ));
}

#[test]
fn from_hyp_uses_per_device_batch() {
    let hyp = Hyp {
        batch: 8,
        ..Hyp::default()
    };
    let p = BatchPlan::from_hyp(&hyp, 2).unwrap();
    assert_eq!(
        (p.batch(), p.accumulate(), p.devices(), p.effective()),
        (8, 4, 2, 64)
    );
}
