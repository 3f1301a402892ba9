//! YOLOv8 building blocks.

use tch::Tensor;
use tch::nn::{self, ModuleT};

/// Ultralytics' `Conv`: a bias-free 2-D convolution with "same" padding, BatchNorm
/// (eps 1e-3, momentum 0.03) and SiLU. Parameters are named `conv.weight` and
/// `bn.{weight,bias,running_mean,running_var}` below the given path, as in Ultralytics'
/// state dicts.
#[derive(Debug)]
pub struct ConvBnSilu {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

impl ConvBnSilu {
    /// A `k`x`k` convolution from `c_in` to `c_out` channels with stride `s`.
    pub fn new(path: &nn::Path, c_in: i64, c_out: i64, k: i64, s: i64) -> Self {
        let conv_config = nn::ConvConfig {
            stride: s,
            padding: k / 2,
            bias: false,
            ..Default::default()
        };
        let bn_config = nn::BatchNormConfig {
            eps: 1e-3,
            momentum: 0.03,
            ..Default::default()
        };
        Self {
            conv: nn::conv2d(path / "conv", c_in, c_out, k, conv_config),
            bn: nn::batch_norm2d(path / "bn", c_out, bn_config),
        }
    }
}

impl ModuleT for ConvBnSilu {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply(&self.conv).apply_t(&self.bn, train).silu()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn forward_and_backward_on_cpu() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let block = ConvBnSilu::new(&(vs.root() / "model" / "0"), 3, 16, 3, 2);
        let xs = Tensor::randn([2, 3, 32, 40], (Kind::Float, Device::Cpu));
        let ys = block.forward_t(&xs, true);
        assert_eq!(ys.size(), [2, 16, 16, 20]);
        ys.square().mean(Kind::Float).backward();
        let vars = vs.variables();
        let mut names: Vec<_> = vars.keys().cloned().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "model.0.bn.bias",
                "model.0.bn.running_mean",
                "model.0.bn.running_var",
                "model.0.bn.weight",
                "model.0.conv.weight"
            ]
        );
        for (name, var) in vars.iter().filter(|(_, v)| v.requires_grad()) {
            let grad = var.grad();
            assert!(grad.defined(), "{name} has no gradient");
            assert!(
                grad.abs().sum(Kind::Float).double_value(&[]) > 0.0,
                "{name} gradient is zero"
            );
        }
        // Eval mode uses the running statistics updated by the training pass.
        let eval = block.forward_t(&xs, false);
        assert_eq!(eval.size(), ys.size());
        assert!(eval.isfinite().all().int64_value(&[]) == 1);
    }
}
