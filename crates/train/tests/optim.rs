//! The optimizer against hand-computed PyTorch updates, its groups, clipping, state, and the
//! accumulation convention (batch 8 x accumulate 4 updates like batch 32).

use std::collections::HashMap;

use fusekit_hyp::{Optimizer as Kind, ParamGroup};
use fusekit_train::{Optimizer, StepSettings, param_group};
use tch::{Device, Tensor};

fn values(t: &Tensor) -> Vec<f64> {
    Vec::try_from(t.to_kind(tch::Kind::Double).flatten(0, -1)).unwrap()
}

fn close(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
    }
}

#[test]
fn groups_follow_ultralytics() {
    assert_eq!(param_group("rgb.model.0.conv.weight"), ParamGroup::Weight);
    assert_eq!(param_group("rgb.model.0.bn.weight"), ParamGroup::Norm);
    assert_eq!(param_group("rgb.model.0.bn.bias"), ParamGroup::Bias);
    assert_eq!(param_group("head.model.22.cv2.0.2.bias"), ParamGroup::Bias);
    assert_eq!(
        param_group("head.model.22.cv2.0.2.weight"),
        ParamGroup::Weight
    );
}

fn one_param(name: &str, value: &[f32], grad: &[f32]) -> (Tensor, HashMap<String, Tensor>) {
    let var = Tensor::from_slice(value).set_requires_grad(true);
    let g = Tensor::from_slice(grad);
    (&var * &g).sum(tch::Kind::Float).backward();
    let map = HashMap::from([(name.to_string(), var.shallow_clone())]);
    (var, map)
}

#[test]
fn sgd_nesterov_with_decay_matches_pytorch_by_hand() {
    let (var, vars) = one_param("m.conv.weight", &[1.0, -2.0], &[0.5, 0.25]);
    let mut opt = Optimizer::new(Kind::Sgd, vars);
    let settings = StepSettings {
        lr: [0.1, 0.2, 0.3],
        momentum: 0.9,
        weight_decay: 0.01,
    };
    opt.step(&settings);
    // d = g + wd p; buf = d; update = d + m buf; p -= lr update
    let d = [0.5 + 0.01 * 1.0, 0.25 + 0.01 * -2.0];
    let p1 = [
        1.0 - 0.1 * (d[0] + 0.9 * d[0]),
        -2.0 - 0.1 * (d[1] + 0.9 * d[1]),
    ];
    close(&values(&var), &p1);
    // Second step with the same gradient: buf = m buf + d'.
    opt.step(&settings);
    let d2 = [0.5 + 0.01 * p1[0], 0.25 + 0.01 * p1[1]];
    let buf = [0.9 * d[0] + d2[0], 0.9 * d[1] + d2[1]];
    let p2 = [
        p1[0] - 0.1 * (d2[0] + 0.9 * buf[0]),
        p1[1] - 0.1 * (d2[1] + 0.9 * buf[1]),
    ];
    close(&values(&var), &p2);
}

#[test]
fn biases_and_norm_weights_are_not_decayed_and_use_their_lr() {
    let (bias, vars) = one_param("m.bn.bias", &[1.0], &[0.5]);
    let mut opt = Optimizer::new(Kind::Sgd, vars);
    opt.step(&StepSettings {
        lr: [0.1, 0.2, 0.3],
        momentum: 0.0,
        weight_decay: 0.5,
    });
    close(&values(&bias), &[1.0 - 0.3 * 0.5]);
}

#[test]
fn adamw_matches_pytorch_by_hand() {
    let (var, vars) = one_param("m.conv.weight", &[1.0], &[0.5]);
    let mut opt = Optimizer::new(Kind::AdamW, vars);
    opt.step(&StepSettings {
        lr: [0.01, 0.0, 0.0],
        momentum: 0.9,
        weight_decay: 0.1,
    });
    // p *= 1 - lr wd; m = 0.1 g; v = 0.001 g^2; mhat = g; vhat = g^2; p -= lr g / (|g| + eps)
    let p = 1.0 * (1.0 - 0.01 * 0.1) - 0.01 * 0.5 / (0.5 + 1e-8);
    close(&values(&var), &[p]);
}

#[test]
fn adamw_over_groups_and_steps_matches_pytorch_by_hand() {
    // A decayed weight and a bias, three steps with the same gradients: each group's lr, decay
    // only on the weight, and bias corrections that change with the step.
    let weight = Tensor::from_slice(&[1.0f32, -0.5]).set_requires_grad(true);
    let bias = Tensor::from_slice(&[0.25f32]).set_requires_grad(true);
    let grads = [[0.5, -0.25], [2.0, 0.0]];
    let loss = (&weight * Tensor::from_slice(&[0.5f32, -0.25])).sum(tch::Kind::Float)
        + (&bias * 2.0).sum(tch::Kind::Float);
    loss.backward();
    let vars = HashMap::from([
        ("m.conv.weight".to_string(), weight.shallow_clone()),
        ("m.conv.bias".to_string(), bias.shallow_clone()),
    ]);
    let mut opt = Optimizer::new(Kind::AdamW, vars);
    let (lr, beta1, decay) = ([0.01, 0.0, 0.02], 0.9, 0.1);
    let mut params = [vec![1.0, -0.5], vec![0.25]];
    let mut m = [vec![0.0; 2], vec![0.0]];
    let mut v = [vec![0.0; 2], vec![0.0]];
    for t in 1..=3 {
        opt.step(&StepSettings {
            lr,
            momentum: beta1,
            weight_decay: decay,
        });
        for (k, (group, wd)) in [(0, decay), (2, 0.0)].into_iter().enumerate() {
            for i in 0..params[k].len() {
                let g = grads[k][i];
                params[k][i] *= 1.0 - lr[group] * wd;
                m[k][i] = beta1 * m[k][i] + (1.0 - beta1) * g;
                v[k][i] = 0.999 * v[k][i] + 0.001 * g * g;
                let m_hat = m[k][i] / (1.0 - beta1.powi(t));
                let v_hat = v[k][i] / (1.0 - 0.999f64.powi(t));
                params[k][i] -= lr[group] * m_hat / (v_hat.sqrt() + 1e-8);
            }
        }
        close(&values(&weight), &params[0]);
        close(&values(&bias), &params[1]);
    }
}

#[test]
fn clipping_scales_the_global_norm_to_10() {
    let (var, vars) = one_param("m.conv.weight", &[0.0, 0.0], &[30.0, 40.0]);
    let mut opt = Optimizer::new(Kind::Sgd, vars);
    let norm = opt.clip_grad_norm(10.0).double_value(&[]);
    assert!((norm - 50.0).abs() < 1e-6);
    close(&values(&var.grad()), &[6.0, 8.0]);
    // Under the limit the gradients stay exactly as they are.
    let (under, vars) = one_param("m.conv.weight", &[0.0, 0.0], &[3.0, 4.0]);
    let mut opt = Optimizer::new(Kind::Sgd, vars);
    assert_eq!(opt.clip_grad_norm(10.0).double_value(&[]), 5.0);
    assert_eq!(values(&under.grad()), [3.0, 4.0]);
}

#[test]
fn state_round_trips_so_resume_is_exact() {
    let settings = StepSettings {
        lr: [0.1, 0.1, 0.1],
        momentum: 0.9,
        weight_decay: 0.0,
    };
    let (a, vars) = one_param("w.conv.weight", &[1.0], &[1.0]);
    let mut straight = Optimizer::new(Kind::Sgd, vars);
    straight.step(&settings);
    straight.step(&settings);

    let (b, vars) = one_param("w.conv.weight", &[1.0], &[1.0]);
    let shared: HashMap<String, Tensor> = vars
        .iter()
        .map(|(k, v)| (k.clone(), v.shallow_clone()))
        .collect();
    let mut first = Optimizer::new(Kind::Sgd, shared);
    first.step(&settings);
    let (state, steps) = first.state();
    let saved: HashMap<String, Tensor> = state.into_iter().collect();
    let mut resumed = Optimizer::new(Kind::Sgd, vars);
    resumed.restore(&saved, steps).unwrap();
    resumed.step(&settings);
    assert_eq!(resumed.steps(), 2);
    close(&values(&b), &values(&a));
}

/// Ultralytics' convention, kept by the trainer: each micro-batch backpropagates its mean
/// loss x its size, and gradients add up until the step. Four micro-batches of 8 then give
/// exactly the gradient of one batch of 32.
#[test]
fn accumulating_four_batches_of_8_equals_one_batch_of_32() {
    tch::manual_seed(0);
    let x = Tensor::randn([32, 3], (tch::Kind::Float, Device::Cpu));
    let y = Tensor::randn([32, 1], (tch::Kind::Float, Device::Cpu));
    let init = Tensor::randn([3, 1], (tch::Kind::Float, Device::Cpu));
    let run = |chunks: i64| {
        let w = init.copy().set_requires_grad(true);
        let vars = HashMap::from([("m.conv.weight".to_string(), w.shallow_clone())]);
        let mut opt = Optimizer::new(Kind::Sgd, vars);
        let size = 32 / chunks;
        for c in 0..chunks {
            let xb = x.narrow(0, c * size, size);
            let yb = y.narrow(0, c * size, size);
            let mean = (xb.matmul(&w) - yb).square().mean(tch::Kind::Float);
            (mean * size as f64).backward();
        }
        opt.step(&StepSettings {
            lr: [0.01; 3],
            momentum: 0.937,
            weight_decay: 0.0005,
        });
        values(&w)
    };
    close(&run(4), &run(1));
}

/// One non-finite value in any gradient makes the (fused) check fail; saved gradients come
/// back exactly, and a variable saved without a gradient gets zeros.
#[test]
fn finite_check_and_saved_gradients() {
    let a = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
    let b = Tensor::from_slice(&[3.0f32]).set_requires_grad(true);
    (&a * Tensor::from_slice(&[0.5f32, 0.25]))
        .sum(tch::Kind::Float)
        .backward();
    (&b * 2.0).sum(tch::Kind::Float).backward();
    let vars = HashMap::from([
        ("m.conv.weight".to_string(), a.shallow_clone()),
        ("m.bn.bias".to_string(), b.shallow_clone()),
    ]);
    let mut opt = Optimizer::new(Kind::Sgd, vars);
    assert!(opt.grads_finite());
    let saved = opt.gradients();
    let _ = b.grad().fill_(f64::NAN);
    assert!(!opt.grads_finite());
    let _ = b.grad().fill_(f64::INFINITY);
    assert!(!opt.grads_finite());
    opt.set_gradients(&saved);
    assert!(opt.grads_finite());
    close(&values(&a.grad()), &[0.5, 0.25]);
    close(&values(&b.grad()), &[2.0]);
    let none: Vec<Option<Tensor>> = saved.iter().map(|_| None).collect();
    opt.set_gradients(&none);
    close(&values(&a.grad()), &[0.0, 0.0]);
    close(&values(&b.grad()), &[0.0]);
}
