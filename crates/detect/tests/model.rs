//! Model structure: parameter counts, output shapes and strides, names, gradients, weights.

use fusekit_detect::{
    BATCH_NORM_EPS, BATCH_NORM_MOMENTUM, DetectionLoss, Detector, Fusion, ModelConfig, ModelScale,
    REG_MAX, STRIDES, parameter_count, weights, with_batch_norm,
};
use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;

use safetensors::SafeTensors;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn config(scale: ModelScale, fusion: Fusion, classes: usize, ir_channels: i64) -> ModelConfig {
    ModelConfig {
        scale,
        fusion,
        names: (0..classes).map(|i| format!("class{i}")).collect(),
        ir_channels,
    }
}

#[test]
fn rgb_yolov8n_has_ultralytics_parameter_count() {
    tch::set_num_threads(1);
    let vs = VarStore::new(Device::Cpu);
    let _ = Detector::new(&vs.root(), config(ModelScale::N, Fusion::Rgb, 80, 1));
    assert_eq!(parameter_count(&vs), 3_157_200);
}

#[test]
fn rgb_yolov8n_has_ultralytics_gflops_at_640() {
    tch::set_num_threads(1);
    let vs = VarStore::new(Device::Cpu);
    let model = Detector::new(&vs.root(), config(ModelScale::N, Fusion::Rgb, 80, 1));
    // 2 x convolution MACs at 640: 8.74. Ultralytics 8.4's thop-based figure is 8.86: thop
    // also counts BatchNorm, activations and pooling, within 1.5% of the convolutions alone.
    let gflops = model.gflops(640);
    assert!((gflops - 8.743).abs() < 0.005, "{gflops}");
}

#[test]
fn every_scale_and_fusion_gives_three_levels_at_strides_8_16_32() {
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let (h, w) = (64, 96);
    for &scale in ModelScale::ALL {
        for &fusion in Fusion::ALL {
            let nc = 3;
            let vs = VarStore::new(Device::Cpu);
            let model = Detector::new(&vs.root(), config(scale, fusion, nc, 1));
            let images = Tensor::rand([2, 4, h, w], (Kind::Float, Device::Cpu));
            let outputs = tch::no_grad(|| model.forward_t(&images, false));
            let detectors = if fusion == Fusion::Late { 2 } else { 1 };
            assert_eq!(outputs.len(), detectors, "{scale} {fusion}");
            for levels in &outputs {
                for (level, stride) in levels.iter().zip(STRIDES) {
                    assert_eq!(
                        level.size(),
                        [2, 4 * REG_MAX + nc as i64, h / stride, w / stride],
                        "{scale} {fusion}"
                    );
                }
            }
            let anchors: i64 = STRIDES.iter().map(|s| (h / s) * (w / s)).sum();
            let decoded = model.decode(&outputs);
            assert_eq!(
                decoded.size(),
                [2, 4 + nc as i64, anchors * detectors as i64],
                "{scale} {fusion}"
            );
        }
    }
}

/// An installed batch norm replaces every BatchNorm layer in training mode only, sees
/// Ultralytics' settings, and gives the layer's own result when it computes the same thing.
#[test]
fn installed_batch_norm_replaces_every_layer_in_training_only() {
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let model = Detector::new(&vs.root(), config(ModelScale::N, Fusion::Mid, 2, 1));
    let layers = vs
        .variables()
        .keys()
        .filter(|name| name.ends_with("bn.running_mean"))
        .count();
    let images = Tensor::rand([2, 4, 64, 64], (Kind::Float, Device::Cpu));
    let plain = tch::no_grad(|| model.forward_t(&images, true));
    let calls = Rc::new(Cell::new(0usize));
    let counted = calls.clone();
    let norm = Rc::new(
        move |xs: &Tensor, bn: &tch::nn::BatchNorm, eps: f64, momentum: f64| {
            assert_eq!((eps, momentum), (BATCH_NORM_EPS, BATCH_NORM_MOMENTUM));
            counted.set(counted.get() + 1);
            Tensor::batch_norm(
                xs,
                bn.ws.as_ref(),
                bn.bs.as_ref(),
                Some(&bn.running_mean),
                Some(&bn.running_var),
                true,
                momentum,
                eps,
                false,
            )
        },
    );
    let hooked = tch::no_grad(|| with_batch_norm(norm.clone(), || model.forward_t(&images, true)));
    assert_eq!(calls.get(), layers);
    for (a, b) in plain[0].iter().zip(&hooked[0]) {
        assert!(a.allclose(b, 1e-5, 1e-5, false));
    }
    tch::no_grad(|| with_batch_norm(norm, || model.forward_t(&images, false)));
    assert_eq!(
        calls.get(),
        layers,
        "evaluation mode uses the running statistics"
    );
    tch::no_grad(|| model.forward_t(&images, true));
    assert_eq!(
        calls.get(),
        layers,
        "the hook is gone after with_batch_norm"
    );
}

#[test]
fn streams_use_ultralytics_names_under_their_prefix() {
    tch::set_num_threads(1);
    let names = |fusion| {
        let vs = VarStore::new(Device::Cpu);
        let _ = Detector::new(&vs.root(), config(ModelScale::N, fusion, 2, 1));
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        names
    };
    let mid = names(Fusion::Mid);
    for expected in [
        "rgb.model.0.conv.weight",
        "ir.model.0.conv.weight",
        "rgb.model.9.cv2.bn.running_var",
        "fuse.p3.conv.weight",
        "head.model.12.m.0.cv1.conv.weight",
        "head.model.22.cv2.0.2.bias",
        "head.model.22.cv3.2.1.bn.weight",
        "head.model.22.dfl.conv.weight",
    ] {
        assert!(mid.contains(&expected.to_string()), "{expected} missing");
    }
    assert!(
        !mid.iter()
            .any(|n| n.starts_with("rgb.model.1") && n.contains("model.12"))
    );
    let late = names(Fusion::Late);
    assert!(late.contains(&"ir.model.22.dfl.conv.weight".to_string()));
    assert!(late.contains(&"rgb.model.22.dfl.conv.weight".to_string()));
    let ir = names(Fusion::Ir);
    assert!(ir.iter().all(|n| n.starts_with("ir.model.")));
}

#[test]
fn single_channel_ir_and_three_channel_ir_set_input_planes() {
    tch::set_num_threads(1);
    for (fusion, ir_channels, first, c_in) in [
        (Fusion::Ir, 1, "ir.model.0.conv.weight", 1),
        (Fusion::Ir, 3, "ir.model.0.conv.weight", 3),
        (Fusion::Early, 1, "early.model.0.conv.weight", 4),
        (Fusion::Early, 3, "early.model.0.conv.weight", 6),
    ] {
        let vs = VarStore::new(Device::Cpu);
        let _ = Detector::new(&vs.root(), config(ModelScale::N, fusion, 2, ir_channels));
        assert_eq!(
            vs.variables()[first].size()[1],
            c_in,
            "{fusion} {ir_channels}"
        );
    }
}

#[test]
fn gradients_reach_every_trainable_parameter_in_every_fusion() {
    tch::set_num_threads(1);
    tch::manual_seed(1);
    let targets = Tensor::from_slice(&[
        0f32, 0.0, 0.5, 0.5, 0.4, 0.3, //
        1.0, 1.0, 0.25, 0.3, 0.2, 0.2, //
        1.0, 0.0, 0.7, 0.7, 0.3, 0.4,
    ])
    .view([3, 6]);
    for &fusion in Fusion::ALL {
        let vs = VarStore::new(Device::Cpu);
        let model = Detector::new(&vs.root(), config(ModelScale::N, fusion, 2, 1));
        let images = Tensor::rand([2, 4, 64, 64], (Kind::Float, Device::Cpu));
        let outputs = model.forward_t(&images, true);
        let loss = DetectionLoss::default()
            .compute(&outputs, &targets)
            .unwrap();
        assert!(
            loss.parts.iter().all(|p| p.is_finite() && *p > 0.0),
            "{fusion} {:?}",
            loss.parts
        );
        loss.total.backward();
        for (name, var) in vs.variables() {
            if !var.requires_grad() {
                continue;
            }
            let grad = var.grad();
            assert!(grad.defined(), "{fusion}: {name} has no gradient");
            let norm = grad.abs().sum(Kind::Float).double_value(&[]);
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{fusion}: {name} gradient {norm}"
            );
        }
    }
}

#[test]
fn weights_round_trip_through_safetensors() {
    tch::set_num_threads(1);
    tch::manual_seed(2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let vs = VarStore::new(Device::Cpu);
    let cfg = config(ModelScale::N, Fusion::Mid, 3, 1);
    let model = Detector::new(&vs.root(), cfg.clone());
    // Move the BatchNorm statistics away from their initial values.
    let images = Tensor::rand([2, 4, 64, 64], (Kind::Float, Device::Cpu));
    let _ = tch::no_grad(|| model.forward_t(&images, true));
    weights::save(&vs, &cfg, &path).unwrap();
    let (_, loaded) = weights::load(&path, Device::Cpu).unwrap();
    assert_eq!(loaded.config(), &cfg);
    let a = model.predict(&images);
    let b = loaded.predict(&images);
    assert_eq!(a.size(), b.size());
    let diff = (a - b).abs().max().double_value(&[]);
    assert!(diff == 0.0, "outputs differ by {diff}");
    assert_eq!(weights::read_config(&path).unwrap(), cfg);
}

#[test]
fn weights_errors_name_the_file_and_the_tensor() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"not safetensors at all").unwrap();
    let err = weights::load(&garbage, Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("garbage.safetensors"), "{err}");
    assert!(err.contains("not a valid safetensors"), "{err}");

    // A file saved for 3 classes whose metadata claims 2: the class head does not fit.
    let path = dir.path().join("w.safetensors");
    let vs = VarStore::new(Device::Cpu);
    let cfg = config(ModelScale::N, Fusion::Rgb, 3, 1);
    let _ = Detector::new(&vs.root(), cfg.clone());
    weights::save(&vs, &cfg, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let two = serde_json::to_string(&config(ModelScale::N, Fusion::Rgb, 2, 1)).unwrap();
    let metadata = Some(HashMap::from([(weights::CONFIG_KEY.to_string(), two)]));
    let edited = safetensors::tensor::serialize(file.tensors(), &metadata).unwrap();
    std::fs::write(&path, edited).unwrap();
    let err = weights::load(&path, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("w.safetensors"), "{err}");
    assert!(err.contains("rgb.model.22.cv3"), "{err}");
    assert!(err.contains("shape"), "{err}");

    // Plain safetensors without fusekit's metadata.
    let plain = dir.path().join("plain.safetensors");
    Tensor::write_safetensors(
        &[("x", Tensor::zeros([2], (Kind::Float, Device::Cpu)))],
        &plain,
    )
    .unwrap();
    let err = weights::load(&plain, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("not a fusekit weights file"), "{err}");
}

#[test]
fn ultralytics_state_dicts_initialise_both_streams_adapting_ir_and_class_head() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    // An Ultralytics-named state dict (`model.N...`) of a 3-class single-stream model.
    let source = VarStore::new(Device::Cpu);
    let _ = Detector::new(&source.root(), config(ModelScale::N, Fusion::Rgb, 3, 1));
    let renamed: Vec<(String, Tensor)> = source
        .variables()
        .into_iter()
        .map(|(n, t)| (n.trim_start_matches("rgb.").to_string(), t))
        .collect();
    let path = dir.path().join("yolov8n.safetensors");
    weights::write_tensors(&path, renamed, HashMap::new()).unwrap();

    let target = VarStore::new(Device::Cpu);
    let _ = Detector::new(&target.root(), config(ModelScale::N, Fusion::Mid, 2, 1));
    let report = weights::import_ultralytics(&target, &path, &["rgb", "ir"]).unwrap();
    assert_eq!(
        report.adapted_inputs,
        [("ir.model.0.conv.weight".to_string(), 3, 1)]
    );
    assert!(report.reinitialised.iter().all(|n| n.contains(".cv3.")));
    assert!(!report.reinitialised.is_empty());
    assert!(report.untouched.iter().any(|n| n.starts_with("fuse.")));
    let vars = target.variables();
    let src = source.variables();
    let rgb0 = &src["rgb.model.0.conv.weight"];
    let diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
    assert_eq!(diff(&vars["rgb.model.0.conv.weight"], rgb0), 0.0);
    let summed = rgb0.sum_dim_intlist(1, true, Kind::Float);
    assert!(diff(&vars["ir.model.0.conv.weight"], &summed) < 1e-6);
    assert_eq!(
        diff(
            &vars["head.model.15.cv1.conv.weight"],
            &src["rgb.model.15.cv1.conv.weight"]
        ),
        0.0
    );
}
