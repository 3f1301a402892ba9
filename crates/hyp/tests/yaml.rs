//! hyp.yaml loading, errors, overrides and the args.yaml round trip.

use std::path::Path;

use fusekit_hyp::{
    Accumulate, Amp, Fusion, Hyp, HypError, HypOverrides, LrScaling, ModelScale, NanPolicy,
    Optimizer,
};
use proptest::prelude::*;

fn load(text: &str) -> Result<Hyp, HypError> {
    Hyp::from_yaml_str(text, Path::new("hyp.yaml")).map(|l| l.hyp)
}

fn error(text: &str) -> String {
    load(text).expect_err("should fail").to_string()
}

#[test]
fn defaults_are_ultralytics() {
    let h = Hyp::default();
    assert_eq!(
        (h.epochs, h.batch, h.imgsz, h.nbs, h.patience),
        (100, 16, 640, 64, 100)
    );
    assert_eq!(
        (h.lr0, h.lrf, h.momentum, h.weight_decay),
        (0.01, 0.01, 0.937, 0.0005)
    );
    assert_eq!(
        (h.warmup_epochs, h.warmup_momentum, h.warmup_bias_lr),
        (3.0, 0.8, 0.1)
    );
    assert_eq!((h.box_gain, h.cls, h.dfl), (7.5, 0.5, 1.5));
    assert_eq!((h.hsv_h, h.hsv_s, h.hsv_v), (0.015, 0.7, 0.4));
    assert_eq!(
        (h.translate, h.scale, h.fliplr, h.mosaic),
        (0.1, 0.5, 0.5, 1.0)
    );
    assert_eq!(
        (h.close_mosaic, h.seed, h.cos_lr, h.amp),
        (10, 0, false, Amp::Auto)
    );
    assert_eq!(h.optimizer, Optimizer::Sgd);
    assert_eq!(h.accumulate, Accumulate::Auto);
    assert_eq!(h.lr_scaling, LrScaling::Linear);
    assert_eq!((h.fusion, h.model_scale), (Fusion::Mid, ModelScale::N));
    assert!(h.ema);
    assert_eq!(h.nan_policy, NanPolicy::Rollback);
    assert!(h.plots);
    h.validate().unwrap();
    assert_eq!(load("").unwrap(), h);
    assert_eq!(load("# nothing\n").unwrap(), h);
}

#[test]
fn loads_a_full_file() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hyp_full.yaml");
    let loaded = Hyp::from_yaml_file(&path).unwrap();
    let h = loaded.hyp;
    let expected = Hyp {
        epochs: 300,
        patience: 30,
        batch: 8,
        imgsz: 512,
        optimizer: Optimizer::AdamW,
        seed: 7,
        cos_lr: true,
        close_mosaic: 5,
        amp: Amp::Off,
        lr0: 0.002,
        lrf: 0.05,
        momentum: 0.9,
        weight_decay: 0.05,
        warmup_epochs: 1.5,
        warmup_momentum: 0.7,
        warmup_bias_lr: 0.0,
        box_gain: 5.0,
        cls: 1.0,
        dfl: 2.0,
        nbs: 32,
        hsv_h: 0.0,
        hsv_s: 0.5,
        hsv_v: 0.3,
        translate: 0.2,
        scale: 0.4,
        fliplr: 0.0,
        mosaic: 0.5,
        accumulate: Accumulate::Fixed(2),
        lr_scaling: LrScaling::None,
        fusion: Fusion::Late,
        model_scale: ModelScale::S,
        ema: false,
        nan_policy: NanPolicy::Stop,
        plots: false,
    };
    assert_eq!(h, expected);
    let ignored: Vec<(&str, u64)> = loaded
        .warnings
        .iter()
        .map(|w| (w.key.as_str(), w.line))
        .collect();
    assert_eq!(
        ignored,
        [("data", 37), ("device", 38), ("freeze", 39), ("mixup", 42)]
    );
    let text = loaded.warnings[3].to_string();
    assert!(
        text.ends_with(
            "hyp_full.yaml:42: `mixup` is an Ultralytics setting fusekit does not use; ignored"
        ),
        "{text}"
    );
}

#[test]
fn null_values_keep_defaults() {
    let h = load("epochs:\nlr0: ~\nbatch: 4\n").unwrap();
    assert_eq!((h.epochs, h.lr0, h.batch), (100, 0.01, 4));
}

#[test]
fn unknown_key_names_line_and_suggestion() {
    let e = error("epochs: 10\n\nlr_0: 0.02\n");
    assert_eq!(e, "hyp.yaml:3: unknown key `lr_0`; did you mean `lr0`?");
    assert_eq!(
        error("warmup_epoch: 1\n"),
        "hyp.yaml:1: unknown key `warmup_epoch`; did you mean `warmup_epochs`?"
    );
    assert_eq!(
        error("# x\nzzzzzzzzzzzz: 1\n"),
        "hyp.yaml:2: unknown key `zzzzzzzzzzzz`"
    );
    match load("epochs: 1\nmomentun: 0.9\n") {
        Err(HypError::UnknownKey {
            line,
            key,
            suggestion,
            ..
        }) => {
            assert_eq!(
                (line, key.as_str(), suggestion.as_deref()),
                (2, "momentun", Some("momentum"))
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn wrong_type_names_key_and_line() {
    let e = error("lr0: 0.01\nepochs: ten\n");
    assert!(
        e.starts_with("hyp.yaml:2: `epochs` must be a whole number >= 1; "),
        "{e}"
    );
    let e = error("lr0: [1, 2]\n");
    assert!(
        e.starts_with("hyp.yaml:1: `lr0` must be a number > 0; "),
        "{e}"
    );
    let e = error("epochs: 3\noptimizer: auto\n");
    assert!(
        e.starts_with("hyp.yaml:2: `optimizer` must be SGD or AdamW"),
        "{e}"
    );
    assert!(e.contains("`auto` is not a valid optimizer"), "{e}");
    let e = error("batch: -1\n");
    assert!(
        e.starts_with("hyp.yaml:1: `batch` must be a whole number >= 1"),
        "{e}"
    );
    let e = error("accumulate: sometimes\n");
    assert!(
        e.starts_with("hyp.yaml:1: `accumulate` must be auto or a whole number >= 1"),
        "{e}"
    );
    let e = error("amp: fp8\n");
    assert!(
        e.starts_with("hyp.yaml:1: `amp` must be auto, bf16, fp16 or off (or true, false)"),
        "{e}"
    );
    match load("\n\ncos_lr: maybe\n") {
        Err(HypError::WrongType { line, key, .. }) => assert_eq!((line, key), (3, "cos_lr")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn out_of_range_values_name_key_and_line() {
    assert_eq!(
        error("epochs: 3\nmomentum: 1.5\n"),
        "hyp.yaml:2: `momentum` must be a number in [0, 1), not 1.5"
    );
    assert_eq!(
        error("imgsz: 500\n"),
        "hyp.yaml:1: `imgsz` must be a positive multiple of 32 (the largest stride), not 500; try 512"
    );
    assert_eq!(
        error("accumulate: 0\n"),
        "hyp.yaml:1: `accumulate` must be auto or at least 1"
    );
    assert_eq!(
        error("epochs: 0\n"),
        "hyp.yaml:1: `epochs` must be at least 1"
    );
    assert!(error("lr0: .nan\n").starts_with("hyp.yaml:1: `lr0`"));
}

#[test]
fn malformed_documents() {
    assert!(matches!(load("- a\n- b\n"), Err(HypError::Yaml { .. })));
    let dup = load("lr0: 1\nlr0: 2\n");
    assert!(
        matches!(dup, Err(HypError::Yaml { line: Some(2), .. })),
        "{dup:?}"
    );
    assert_eq!(error("lr0: 1\nlr0: 2\n"), "hyp.yaml:2: duplicate key `lr0`");
    assert!(matches!(
        load("lr0: [1\n"),
        Err(HypError::Yaml { .. }) | Err(HypError::WrongType { .. })
    ));
    let missing = Hyp::from_yaml_file(Path::new("/nonexistent/hyp.yaml"));
    assert!(matches!(missing, Err(HypError::Read { .. })));
}

#[test]
fn spellings_are_case_insensitive() {
    let h = load("optimizer: SGD\nfusion: EARLY\nnan_policy: Rollback\nlr_scaling: Linear\naccumulate: AUTO\n").unwrap();
    assert_eq!(h.optimizer, Optimizer::Sgd);
    assert_eq!(h.fusion, Fusion::Early);
    assert_eq!(h.accumulate, Accumulate::Auto);
    // Unquoted `n` / `y` are YAML 1.1 booleans elsewhere, but read as words here.
    assert_eq!(load("model_scale: n\n").unwrap().model_scale, ModelScale::N);
    assert_eq!(load("model_scale: m\n").unwrap().model_scale, ModelScale::M);
    assert_eq!("adamW".parse::<Optimizer>(), Ok(Optimizer::AdamW));
    assert!("Adam".parse::<Optimizer>().is_err());
}

#[test]
fn layering_defaults_file_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hyp.yaml");
    std::fs::write(&path, "lr0: 0.02\nepochs: 50\nmixup: 0.2\n").unwrap();
    let overrides = HypOverrides {
        epochs: Some(10),
        fusion: Some(Fusion::Early),
        ..HypOverrides::default()
    };
    let loaded = Hyp::resolve(Some(&path), &overrides).unwrap();
    assert_eq!(loaded.hyp.lr0, 0.02); // file over default
    assert_eq!(loaded.hyp.epochs, 10); // command line over file
    assert_eq!(loaded.hyp.fusion, Fusion::Early);
    assert_eq!(loaded.hyp.batch, 16); // default
    assert_eq!(loaded.warnings.len(), 1);
    // What was given, by the file or the command line (ignored keys are not), so that a
    // caller can fill the rest from elsewhere (the trainer's imgsz from its cache).
    assert_eq!(loaded.given, ["lr0", "epochs", "epochs", "fusion"]);
    let bad = HypOverrides {
        mosaic: Some(2.0),
        ..HypOverrides::default()
    };
    assert_eq!(
        Hyp::resolve(None, &bad).unwrap_err().to_string(),
        "command line: `mosaic` must be a number in [0, 1], not 2"
    );
    assert_eq!(
        Hyp::resolve(None, &HypOverrides::default()).unwrap().hyp,
        Hyp::default()
    );
}

#[test]
fn args_yaml_round_trip() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hyp_full.yaml");
    for hyp in [Hyp::default(), Hyp::from_yaml_file(&path).unwrap().hyp] {
        let text = hyp.to_yaml().unwrap();
        let back = Hyp::from_yaml_str(&text, Path::new("args.yaml")).unwrap();
        assert_eq!(back.hyp, hyp, "{text}");
        assert!(back.warnings.is_empty());
        let keys: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, Hyp::KEYS);
    }
    let text = Hyp::default().to_yaml().unwrap();
    for line in [
        "optimizer: SGD",
        "box: 7.5",
        "accumulate: auto",
        "lr_scaling: linear",
        "model_scale: \"n\"",
        "weight_decay: 0.0005",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    let fixed = Hyp {
        accumulate: Accumulate::Fixed(3),
        ..Hyp::default()
    }
    .to_yaml()
    .unwrap();
    assert!(fixed.lines().any(|l| l == "accumulate: 3"), "{fixed}");
    // Ultralytics' booleans stay booleans; a named dtype is written by name.
    assert!(text.lines().any(|l| l == "amp: true"), "{text}");
    for amp in Amp::ALL {
        let text = Hyp {
            amp,
            ..Hyp::default()
        }
        .to_yaml()
        .unwrap();
        let back = Hyp::from_yaml_str(&text, Path::new("args.yaml")).unwrap();
        assert_eq!(back.hyp.amp, amp, "{text}");
    }
    assert_eq!(load("amp: false\n").unwrap().amp, Amp::Off);
    assert_eq!(load("amp: bf16\n").unwrap().amp, Amp::Bf16);
}

proptest! {
    #[test]
    fn round_trip_any_valid_numbers(
        lr0 in 1e-9f64..10.0,
        weight_decay in 0.0f64..1.0,
        warmup_epochs in 0.0f64..50.0,
        momentum in 0.0f64..0.999,
        epochs in 1u32..10_000,
        seed in any::<u64>(),
        accumulate in prop_oneof![Just(Accumulate::Auto), (1u32..1000).prop_map(Accumulate::Fixed)],
    ) {
        let hyp = Hyp { lr0, weight_decay, warmup_epochs, momentum, epochs, seed, accumulate, ..Hyp::default() };
        let text = hyp.to_yaml().unwrap();
        let back = Hyp::from_yaml_str(&text, Path::new("args.yaml")).unwrap().hyp;
        prop_assert_eq!(back, hyp);
    }
}
