//! YOLOv8 building blocks with Ultralytics' parameter names.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use tch::Tensor;
use tch::nn::{self, ModuleT};

thread_local! {
    /// Multiply-accumulates of convolutions run on this thread while counting is on.
    static MACS: Cell<Option<u64>> = const { Cell::new(None) };
    /// The batch normalisation that training-mode `Conv`s on this thread use instead of their
    /// layer's own, while one is installed.
    static BATCH_NORM: RefCell<Option<Rc<BatchNormFn>>> = const { RefCell::new(None) };
}

/// BatchNorm epsilon of every `Conv` (Ultralytics' value).
pub const BATCH_NORM_EPS: f64 = 1e-3;

/// BatchNorm momentum of every `Conv` (Ultralytics' 0.03, in PyTorch's convention: the weight
/// of the new batch statistics in the running ones).
pub const BATCH_NORM_MOMENTUM: f64 = 0.03;

/// Training-mode batch normalisation computed elsewhere than in the layer, for example with
/// statistics synchronised across processes: called with the convolution's output, the layer
/// (its affine parameters and running statistics), epsilon and momentum.
pub type BatchNormFn = dyn Fn(&Tensor, &nn::BatchNorm, f64, f64) -> Tensor;

/// Runs `f` with every training-mode `Conv` on this thread normalising through `norm`
/// (evaluation mode keeps the running statistics); the previous setting returns afterwards,
/// also when `f` panics.
pub fn with_batch_norm<T>(norm: Rc<BatchNormFn>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Rc<BatchNormFn>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            BATCH_NORM.with(|cell| *cell.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(BATCH_NORM.with(|cell| cell.borrow_mut().replace(norm)));
    f()
}

/// Runs `f` and returns its result with the multiply-accumulates of every convolution it ran
/// on this thread (the basis of Ultralytics' GFLOPs figure, which is 2 x MACs).
pub fn count_macs<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let previous = MACS.replace(Some(0));
    let value = f();
    let macs = MACS.replace(previous).unwrap_or(0);
    (value, macs)
}

/// Adds a convolution's multiply-accumulates to the counter, when counting.
pub(crate) fn record_conv(weight: &Tensor, output: &Tensor) {
    MACS.with(|m| {
        if let Some(total) = m.get() {
            let w = weight.size();
            let o = output.size();
            let per_output: i64 = w[1..].iter().product();
            let outputs: i64 = o.iter().product();
            m.set(Some(total + (per_output * outputs) as u64));
        }
    });
}

/// PyTorch's default initialisation for a convolution with `fan_in` inputs per output:
/// uniform in +-1/sqrt(fan_in) for weights and biases (tch's own default is larger).
pub(crate) fn torch_default_init(fan_in: i64) -> nn::Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    nn::Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// A plain 1x1 convolution with bias (the last layer of each head branch).
pub(crate) fn conv1x1_with_bias(path: &nn::Path, c_in: i64, c_out: i64) -> nn::Conv2D {
    let init = torch_default_init(c_in);
    let config = nn::ConvConfig {
        ws_init: init,
        bs_init: init,
        ..Default::default()
    };
    nn::conv2d(path, c_in, c_out, 1, config)
}

/// Ultralytics' `Conv`: a bias-free 2-D convolution with "same" padding, BatchNorm
/// (eps 1e-3, momentum 0.03) and SiLU. Parameters are named `conv.weight` and
/// `bn.{weight,bias,running_mean,running_var}` below the given path.
#[derive(Debug)]
pub struct Conv {
    pub(crate) conv: nn::Conv2D,
    pub(crate) bn: nn::BatchNorm,
    pub(crate) stride: i64,
}

impl Conv {
    /// A `k`x`k` convolution from `c_in` to `c_out` channels with stride `s`.
    pub fn new(path: &nn::Path, c_in: i64, c_out: i64, k: i64, s: i64) -> Self {
        let conv_config = nn::ConvConfig {
            stride: s,
            padding: k / 2,
            bias: false,
            ws_init: torch_default_init(c_in * k * k),
            ..Default::default()
        };
        let bn_config = nn::BatchNormConfig {
            eps: BATCH_NORM_EPS,
            momentum: BATCH_NORM_MOMENTUM,
            ..Default::default()
        };
        Self {
            conv: nn::conv2d(path / "conv", c_in, c_out, k, conv_config),
            bn: nn::batch_norm2d(path / "bn", c_out, bn_config),
            stride: s,
        }
    }
}

impl ModuleT for Conv {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = xs.apply(&self.conv);
        record_conv(&self.conv.ws, &ys);
        let norm = if train {
            BATCH_NORM.with(|cell| cell.borrow().clone())
        } else {
            None
        };
        match norm {
            Some(norm) => norm(&ys, &self.bn, BATCH_NORM_EPS, BATCH_NORM_MOMENTUM),
            None => ys.apply_t(&self.bn, train),
        }
        .silu()
    }
}

/// Two 3x3 `Conv`s with an optional residual connection (`cv1`, `cv2`).
#[derive(Debug)]
pub struct Bottleneck {
    pub(crate) cv1: Conv,
    pub(crate) cv2: Conv,
    pub(crate) add: bool,
}

impl Bottleneck {
    /// A bottleneck from `c_in` to `c_out` channels (expansion 1.0, as inside C2f).
    pub fn new(path: &nn::Path, c_in: i64, c_out: i64, shortcut: bool) -> Self {
        Self {
            cv1: Conv::new(&(path / "cv1"), c_in, c_out, 3, 1),
            cv2: Conv::new(&(path / "cv2"), c_out, c_out, 3, 1),
            add: shortcut && c_in == c_out,
        }
    }
}

impl ModuleT for Bottleneck {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = self.cv2.forward_t(&self.cv1.forward_t(xs, train), train);
        if self.add { xs + ys } else { ys }
    }
}

/// YOLOv8's C2f: split, `n` bottlenecks each fed the previous output, concatenate, fuse.
#[derive(Debug)]
pub struct C2f {
    pub(crate) cv1: Conv,
    pub(crate) cv2: Conv,
    pub(crate) m: Vec<Bottleneck>,
}

impl C2f {
    /// A C2f from `c_in` to `c_out` channels with `n` bottlenecks.
    pub fn new(path: &nn::Path, c_in: i64, c_out: i64, n: i64, shortcut: bool) -> Self {
        let hidden = c_out / 2;
        Self {
            cv1: Conv::new(&(path / "cv1"), c_in, 2 * hidden, 1, 1),
            cv2: Conv::new(&(path / "cv2"), (2 + n) * hidden, c_out, 1, 1),
            m: (0..n)
                .map(|i| Bottleneck::new(&(path / "m" / i), hidden, hidden, shortcut))
                .collect(),
        }
    }
}

impl ModuleT for C2f {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut parts = self.cv1.forward_t(xs, train).chunk(2, 1);
        for bottleneck in &self.m {
            let next = bottleneck.forward_t(&parts[parts.len() - 1], train);
            parts.push(next);
        }
        self.cv2.forward_t(&Tensor::cat(&parts, 1), train)
    }
}

/// Spatial pyramid pooling, fast: three chained 5x5 max pools concatenated.
#[derive(Debug)]
pub struct Sppf {
    pub(crate) cv1: Conv,
    pub(crate) cv2: Conv,
}

impl Sppf {
    /// An SPPF from `c_in` to `c_out` channels.
    pub fn new(path: &nn::Path, c_in: i64, c_out: i64) -> Self {
        let hidden = c_in / 2;
        Self {
            cv1: Conv::new(&(path / "cv1"), c_in, hidden, 1, 1),
            cv2: Conv::new(&(path / "cv2"), hidden * 4, c_out, 1, 1),
        }
    }
}

impl ModuleT for Sppf {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut parts = vec![self.cv1.forward_t(xs, train)];
        for _ in 0..3 {
            let pooled = parts[parts.len() - 1].max_pool2d([5, 5], [1, 1], [2, 2], [1, 1], false);
            parts.push(pooled);
        }
        self.cv2.forward_t(&Tensor::cat(&parts, 1), train)
    }
}

/// Nearest-neighbour 2x upsampling.
pub(crate) fn upsample2(xs: &Tensor) -> Tensor {
    let size = xs.size();
    xs.upsample_nearest2d([size[2] * 2, size[3] * 2], 2.0, 2.0)
}

/// Number of elements of every parameter (not BatchNorm running statistics) in `vs`, as
/// Ultralytics counts `model.parameters()`.
pub fn parameter_count(vs: &nn::VarStore) -> i64 {
    vs.variables()
        .iter()
        .filter(|(name, _)| !name.ends_with("running_mean") && !name.ends_with("running_var"))
        .map(|(_, t)| t.numel() as i64)
        .sum()
}
