//! Data-parallel collectives for fusekit through libtorch's own c10d.
//!
//! A [`ProcessGroup`] is a c10d `TCPStore` rendezvous plus a c10d backend, Gloo or NCCL
//! ([`Backend`]), reached through a small C++ shim (`shim/c10d_shim.cpp`, and
//! `shim/nccl_backend.cpp` for NCCL) compiled against the libtorch that torch-sys links. No
//! collective or wire protocol is implemented here: every byte moves through libtorch's Gloo or
//! NCCL. [`Backend::for_device`] picks as `torch.distributed` does: NCCL to train on CUDA, Gloo
//! otherwise; [`ProcessGroup::from_env`] and [`ProcessGroup::new`] use Gloo.
//!
//! # Launching
//! [`ProcessGroup::from_env`] reads torchrun's environment contract (`RANK`, `WORLD_SIZE`,
//! `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`), so
//! `torchrun --nproc_per_node=N --no-python fusekit train ...` starts N ranks. Without
//! `WORLD_SIZE`, or with `WORLD_SIZE=1`, it returns `None`: the trainer runs single-process.
//! When torchrun's agent hosts the store (`TORCHELASTIC_USE_AGENT_STORE=True`, torchrun's
//! default) every rank connects as a client under the restart attempt's prefix; otherwise rank 0
//! hosts it on `MASTER_ADDR:MASTER_PORT`.
//!
//! # Use in a trainer
//! 1. `let pg = ProcessGroup::from_env_with(timeout, Backend::for_device(device))?;` once,
//!    before building the model; on CUDA, train on device [`ProcessGroup::local_rank`] (the
//!    device NCCL is bound to).
//! 2. After building (or loading) the model: [`ProcessGroup::broadcast_var_store`] from rank 0,
//!    so that every rank starts from rank 0's parameters and buffers.
//! 3. Each optimizer step: backward on the local batch (batch size per rank) of a loss that
//!    sums over the rank's images (Ultralytics' `loss x batch`), then
//!    [`ProcessGroup::sum_gradients`] once (with gradient accumulation: once, just before the
//!    optimizer step), then the step: the summed gradient is that of the global batch, so N
//!    ranks x B images step as one rank with N x B would. Loss scaling, clipping and the step
//!    itself are unchanged; the summed gradients are identical on every rank, so the weights
//!    stay equal. (A loss that is a mean over the rank's images would need the average.)
//! 4. Metrics: [`ProcessGroup::all_reduce_sum`] of counts and sums, or
//!    [`ProcessGroup::all_gather`] of per-rank tensors; only rank 0 writes files.
//! 5. Any error is fatal for the run: return it. A rank that dies makes the others' next
//!    collective fail (at most after the timeout) with [`DistError::Collective`].
//!
//! # Limits
//! NCCL is compiled, linked and its failure paths are tested, but no NCCL collective has run in
//! this crate's tests: they run on machines without a GPU, where [`ProcessGroup::new_with`]
//! fails with [`DistError::NoCudaDevice`] (or [`DistError::NcclUnavailable`] for a build
//! without NCCL) before contacting anyone. What the Gloo tests check of timeouts and dead peers
//! is not checked for NCCL, whose failures go through libtorch's NCCL watchdog: per its
//! `TORCH_NCCL_*` settings, a timed-out or failed collective may end the process instead of
//! returning [`DistError::Collective`]. With Gloo, CUDA tensors are staged through host memory;
//! with NCCL, CPU tensors (small metric tensors, say) are staged through the rank's device.
//!
//! # NCCL in the build
//! `build.rs` compiles `shim/nccl_backend.cpp` with `USE_C10D_NCCL` when libtorch has
//! `libtorch_cuda.so` and `ProcessGroupNCCL.hpp` and it finds `nccl.h`, the CUDA runtime,
//! `crt/`, CCCL (`nv/target`), cuBLAS, cuSPARSE and cuSOLVER headers, in `$FUSEKIT_CUDA_INCLUDE`
//! (folders separated by `:`), the torch wheel's `nvidia/*/include` folders, or
//! `~/.cache/fusekit/cuda-headers/nvidia/*/include` (`$FUSEKIT_HOME/cuda-headers`), where
//! `cargo xtask setup` installs the `crt` and `cccl` parts of the CUDA toolkit that torch
//! pins (the wheel's own dependencies lack them), and the CUDA runtime headers are the release
//! libtorch was built with (`cuda` in `torch/version.py`). It then links `torch_cuda` and
//! `c10_cuda`. Otherwise the file compiles to a variant that reports why (a cargo warning says
//! so too when libtorch is a CUDA build), and NCCL fails with [`DistError::NcclUnavailable`].
//! Unlike Gloo's, `ProcessGroupNCCL`'s layout comes from the same torch build's own headers;
//! for torch 2.13.0 the shim's `sizeof` of the class and of its `Options` (0x480, 0x100) equal
//! what libtorch allocates (`operator new` in `ProcessGroupNCCL::split` and in
//! libtorch_python's `Options` bindings), and the constructor and `Options(bool)` are exported
//! by `libtorch_cuda.so`. Header folders installed after a build are seen once the build script
//! reruns (`cargo clean -p fusekit-dist`).
//!
//! # Synchronised batch norm
//! [`ProcessGroup::sync_batch_norm`] is a libtorch autograd function written in the shim (tch
//! has no custom autograd functions): the forward all-gathers each rank's count, mean and
//! variance, and its backward all-reduces the two per-channel gradient sums. The autograd node
//! keeps the c10d backend alive, so a graph may outlive the `ProcessGroup` value.
//!
//! # Why Gloo through Debian's headers
//! PyPI's torch wheel ships `ProcessGroupGloo.hpp` but not the `gloo/*.h` it includes, and
//! libtorch has no factory that returns a Gloo backend without that class definition (no C++
//! backend registry, no TorchScript class, `split`/`merge` need an existing Gloo group: checked
//! with `nm -DC libtorch_cpu.so`). The shim therefore compiles `ProcessGroupGloo.hpp` against
//! Debian's `libgloo-dev` headers (Gloo of 2022-05, older than libtorch's). That is sound for
//! what the shim does because it only allocates the class and its `Options` and calls exported,
//! out-of-line members (constructor, `Options::create_default`, virtual collectives through
//! `c10d::Backend`); every Gloo type in those classes sits behind `std::shared_ptr` or
//! `std::unique_ptr`, so their layouts do not depend on the Gloo version. The two sizes that do
//! matter are pinned with `static_assert`s to the values libtorch itself allocates: 2.13.0
//! (`operator new(0x1e8)` in `ProcessGroupGloo::split`, `operator new(0xb8)` in
//! `Options::create_default`) and 2.11.0, the GPU bundle's (`0x1e8`, `0xb0`); another torch
//! version fails to compile until re-checked. The
//! build looks for the headers in `$FUSEKIT_GLOO_INCLUDE`, then where `cargo xtask setup`
//! unpacks the package (`~/.cache/fusekit/libgloo-dev/usr/include`, or under `$FUSEKIT_HOME`),
//! then `/usr/include` (`apt-get install libgloo-dev`); only libtorch's own Gloo is linked.

use std::ffi::{CStr, CString, c_char};
use std::ptr::NonNull;
use std::time::Duration;

use tch::Tensor;
use tch::nn::{self, VarStore};
use torch_sys::C_tensor;

mod ffi {
    use super::{C_tensor, c_char};

    /// The shim's process group (opaque).
    #[repr(C)]
    pub struct FkGroup {
        _private: [u8; 0],
    }

    unsafe extern "C" {
        pub fn fk_free_error(message: *mut c_char);
        pub fn fk_group_create(
            rank: i32,
            world: i32,
            master_addr: *const c_char,
            master_port: u16,
            timeout_ms: i64,
            host_store: bool,
            prefix: *const c_char,
            backend: i32,
            device_index: i32,
            out: *mut *mut FkGroup,
        ) -> *mut c_char;
        pub fn fk_nccl_unavailable() -> *mut c_char;
        pub fn fk_group_destroy(group: *mut FkGroup, failed: bool);
        pub fn fk_group_barrier(group: *mut FkGroup) -> *mut c_char;
        pub fn fk_group_broadcast(
            group: *mut FkGroup,
            tensors: *const *mut C_tensor,
            n: usize,
            root: i32,
        ) -> *mut c_char;
        pub fn fk_group_all_reduce(
            group: *mut FkGroup,
            tensors: *const *mut C_tensor,
            n: usize,
            mean: bool,
        ) -> *mut c_char;
        pub fn fk_group_sum_grads(
            group: *mut FkGroup,
            vars: *const *mut C_tensor,
            n: usize,
        ) -> *mut c_char;
        pub fn fk_group_all_gather(
            group: *mut FkGroup,
            input: *const C_tensor,
            outputs: *mut *mut C_tensor,
        ) -> *mut c_char;
        pub fn fk_sync_batch_norm(
            group: *mut FkGroup,
            input: *const C_tensor,
            weight: *const C_tensor,
            bias: *const C_tensor,
            running_mean: *const C_tensor,
            running_var: *const C_tensor,
            eps: f64,
            momentum: f64,
            output: *mut *mut C_tensor,
        ) -> *mut c_char;
    }
}

/// Errors of the distributed runtime.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// A variable of torchrun's contract is missing while `WORLD_SIZE` asks for several ranks.
    #[error("environment variable {name} is not set (torchrun sets it when WORLD_SIZE > 1)")]
    MissingEnv {
        /// The variable's name.
        name: &'static str,
    },
    /// A variable of torchrun's contract does not parse.
    #[error("environment variable {name}={value:?} is not {expected}")]
    InvalidEnv {
        /// The variable's name.
        name: &'static str,
        /// Its value.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
    /// The rendezvous settings are inconsistent (before anything is contacted).
    #[error("invalid process group settings: {0}")]
    InvalidConfig(String),
    /// NCCL was asked for, but this build has no NCCL backend (before anything is contacted).
    #[error("the NCCL backend is not available: {reason}")]
    NcclUnavailable {
        /// Why the build left it out (for example a CPU-only libtorch).
        reason: String,
    },
    /// NCCL was asked for, but this process sees no CUDA device `LOCAL_RANK` (before anything
    /// is contacted).
    #[error(
        "the NCCL backend needs CUDA device {local_rank} (LOCAL_RANK), but this process sees {available} CUDA device(s)"
    )]
    NoCudaDevice {
        /// The device the rank would use.
        local_rank: usize,
        /// How many CUDA devices libtorch sees.
        available: usize,
    },
    /// The rendezvous or the backend's connections could not be set up.
    #[error(
        "process group init failed for rank {rank} of {world_size} (store {master_addr}:{master_port}): {message}"
    )]
    Init {
        /// This process's rank.
        rank: usize,
        /// The number of ranks.
        world_size: usize,
        /// The store's host.
        master_addr: String,
        /// The store's port.
        master_port: u16,
        /// libtorch's message.
        message: String,
    },
    /// A collective failed: a peer died or closed, the timeout passed, or bad input.
    #[error("{op} failed on rank {rank} of {world_size}: {message}")]
    Collective {
        /// The collective.
        op: &'static str,
        /// This process's rank.
        rank: usize,
        /// The number of ranks.
        world_size: usize,
        /// libtorch's message.
        message: String,
    },
}

/// The c10d backend that carries a group's collectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Gloo: collectives on CPU tensors; CUDA tensors are copied to the host and back.
    Gloo,
    /// NCCL: collectives on CUDA device `LOCAL_RANK`; tensors elsewhere (CPU tensors too) are
    /// copied there and back. Needs a build with NCCL (see the crate docs) and that device.
    Nccl,
}

impl Backend {
    /// NCCL for a CUDA device, Gloo otherwise: what `torch.distributed` picks by default.
    pub fn for_device(device: tch::Device) -> Self {
        if device.is_cuda() {
            Self::Nccl
        } else {
            Self::Gloo
        }
    }

    /// Whether this build has the backend; `Err` says why not.
    pub fn check_built(self) -> Result<(), DistError> {
        match self {
            Self::Gloo => Ok(()),
            // SAFETY: no arguments; a non-null result is an owned message.
            Self::Nccl => match take_error(unsafe { ffi::fk_nccl_unavailable() }) {
                None => Ok(()),
                Some(reason) => Err(DistError::NcclUnavailable { reason }),
            },
        }
    }

    /// The shim's number for the backend.
    fn code(self) -> i32 {
        match self {
            Self::Gloo => 0,
            Self::Nccl => 1,
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Gloo => "gloo",
            Self::Nccl => "nccl",
        })
    }
}

/// Where and how a rank joins its group: torchrun's environment contract, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    /// This process's rank in `0..world_size`.
    pub rank: usize,
    /// The number of ranks.
    pub world_size: usize,
    /// This process's index on its machine (the CUDA device to use).
    pub local_rank: usize,
    /// Host of the TCPStore.
    pub master_addr: String,
    /// Port of the TCPStore.
    pub master_port: u16,
    /// Whether this process hosts the TCPStore (rank 0, unless torchrun's agent hosts it).
    pub host_store: bool,
    /// Key prefix in the store, so that restarts and other users of the store do not collide.
    pub prefix: String,
}

impl Rendezvous {
    /// Reads torchrun's variables from the process environment; `None` for a single process.
    pub fn from_env() -> Result<Option<Self>, DistError> {
        Self::from_lookup(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    }

    /// Like [`Rendezvous::from_env`], with `get` standing for the environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, DistError> {
        let Some(world) = get("WORLD_SIZE") else {
            return Ok(None);
        };
        let world_size: usize = parse("WORLD_SIZE", &world, "a positive integer")?;
        if world_size == 0 {
            return Err(DistError::InvalidEnv {
                name: "WORLD_SIZE",
                value: world,
                expected: "a positive integer",
            });
        }
        if world_size == 1 {
            return Ok(None);
        }
        let required = |name: &'static str| get(name).ok_or(DistError::MissingEnv { name });
        let rank_value = required("RANK")?;
        let rank: usize = parse("RANK", &rank_value, "a rank below WORLD_SIZE")?;
        if rank >= world_size {
            return Err(DistError::InvalidEnv {
                name: "RANK",
                value: rank_value,
                expected: "a rank below WORLD_SIZE",
            });
        }
        let local_rank = match get("LOCAL_RANK") {
            Some(value) => parse("LOCAL_RANK", &value, "a non-negative integer")?,
            None => rank,
        };
        let master_addr = required("MASTER_ADDR")?;
        if master_addr.is_empty() {
            return Err(DistError::InvalidEnv {
                name: "MASTER_ADDR",
                value: master_addr,
                expected: "a host name or address",
            });
        }
        let port = required("MASTER_PORT")?;
        let master_port: u16 = parse("MASTER_PORT", &port, "a TCP port")?;
        let agent_store = get("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v == "True");
        let attempt = get("TORCHELASTIC_RESTART_COUNT").unwrap_or_else(|| "0".to_owned());
        Ok(Some(Self {
            rank,
            world_size,
            local_rank,
            master_addr,
            master_port,
            host_store: rank == 0 && !agent_store,
            prefix: format!("/worker/attempt_{attempt}/fusekit/"),
        }))
    }
}

fn parse<T: std::str::FromStr>(
    name: &'static str,
    value: &str,
    expected: &'static str,
) -> Result<T, DistError> {
    value.trim().parse().map_err(|_| DistError::InvalidEnv {
        name,
        value: value.to_owned(),
        expected,
    })
}

/// A joined c10d process group (Gloo or NCCL backend); dropping it closes the connections.
///
/// Every rank must call the same collectives in the same order with matching tensors.
pub struct ProcessGroup {
    group: NonNull<ffi::FkGroup>,
    backend: Backend,
    rank: usize,
    world_size: usize,
    local_rank: usize,
    /// A collective failed: the group is aborted on drop instead of shut down.
    failed: std::cell::Cell<bool>,
}

// The shim's group is owned by this value alone and c10d backends may be used from any thread;
// it is not `Sync`, so collectives are issued from one thread at a time, in order.
unsafe impl Send for ProcessGroup {}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("backend", &self.backend)
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("local_rank", &self.local_rank)
            .finish()
    }
}

impl ProcessGroup {
    /// Joins the Gloo group that torchrun's environment describes; `None` for a single process.
    ///
    /// `timeout` bounds the rendezvous and every collective: a missing or dead peer turns into
    /// an error after at most that long, never a hang.
    pub fn from_env(timeout: Duration) -> Result<Option<Self>, DistError> {
        Self::from_env_with(timeout, Backend::Gloo)
    }

    /// Like [`ProcessGroup::from_env`], on `backend` (for NCCL, see the crate's Limits on
    /// timeouts).
    pub fn from_env_with(timeout: Duration, backend: Backend) -> Result<Option<Self>, DistError> {
        Rendezvous::from_env()?
            .map(|rdzv| Self::new_with(&rdzv, timeout, backend))
            .transpose()
    }

    /// Joins the Gloo group described by `rdzv`, waiting at most `timeout` for the other ranks.
    pub fn new(rdzv: &Rendezvous, timeout: Duration) -> Result<Self, DistError> {
        Self::new_with(rdzv, timeout, Backend::Gloo)
    }

    /// Like [`ProcessGroup::new`], on `backend`. NCCL fails with
    /// [`DistError::NcclUnavailable`] or [`DistError::NoCudaDevice`] before contacting anyone
    /// when this build lacks it or CUDA device `rdzv.local_rank` does not exist.
    pub fn new_with(
        rdzv: &Rendezvous,
        timeout: Duration,
        backend: Backend,
    ) -> Result<Self, DistError> {
        let invalid = |message: String| DistError::InvalidConfig(message);
        if rdzv.world_size == 0 || rdzv.rank >= rdzv.world_size {
            return Err(invalid(format!(
                "rank {} is outside world size {}",
                rdzv.rank, rdzv.world_size
            )));
        }
        let world = i32::try_from(rdzv.world_size)
            .map_err(|_| invalid(format!("world size {} is too large", rdzv.world_size)))?;
        let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        if timeout_ms == 0 {
            return Err(invalid("the timeout must be at least 1 ms".to_owned()));
        }
        let addr = CString::new(rdzv.master_addr.as_str())
            .map_err(|_| invalid("MASTER_ADDR contains a NUL byte".to_owned()))?;
        let prefix = CString::new(rdzv.prefix.as_str())
            .map_err(|_| invalid("the store prefix contains a NUL byte".to_owned()))?;
        backend.check_built()?;
        if backend == Backend::Nccl {
            let available = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
            if rdzv.local_rank >= available {
                return Err(DistError::NoCudaDevice {
                    local_rank: rdzv.local_rank,
                    available,
                });
            }
        }
        let device_index = i32::try_from(rdzv.local_rank)
            .map_err(|_| invalid(format!("LOCAL_RANK {} is too large", rdzv.local_rank)))?;
        let mut group = std::ptr::null_mut();
        // SAFETY: the strings outlive the call; `group` is written only on success.
        let error = unsafe {
            ffi::fk_group_create(
                rdzv.rank as i32,
                world,
                addr.as_ptr(),
                rdzv.master_port,
                timeout_ms,
                rdzv.host_store,
                prefix.as_ptr(),
                backend.code(),
                device_index,
                &mut group,
            )
        };
        if let Some(message) = take_error(error) {
            return Err(DistError::Init {
                rank: rdzv.rank,
                world_size: rdzv.world_size,
                master_addr: rdzv.master_addr.clone(),
                master_port: rdzv.master_port,
                message,
            });
        }
        let group = NonNull::new(group).ok_or_else(|| DistError::Init {
            rank: rdzv.rank,
            world_size: rdzv.world_size,
            master_addr: rdzv.master_addr.clone(),
            master_port: rdzv.master_port,
            message: "the shim returned no group".to_owned(),
        })?;
        Ok(Self {
            group,
            backend,
            rank: rdzv.rank,
            world_size: rdzv.world_size,
            local_rank: rdzv.local_rank,
            failed: std::cell::Cell::new(false),
        })
    }

    /// The backend that carries the collectives.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// This process's rank in `0..world_size()`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// This process's index on its machine (the CUDA device to train on).
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Whether this is rank 0, the one that writes files.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// Waits until every rank has reached this call.
    pub fn barrier(&self) -> Result<(), DistError> {
        // SAFETY: the group is alive for `self`'s lifetime.
        let error = unsafe { ffi::fk_group_barrier(self.group.as_ptr()) };
        self.check("barrier", error)
    }

    /// Overwrites `tensors` on every rank with `root`'s (bucketed by dtype).
    pub fn broadcast(&self, tensors: &mut [Tensor], root: usize) -> Result<(), DistError> {
        let root = self.root(root)?;
        let ptrs: Vec<*mut C_tensor> = tensors.iter_mut().map(Tensor::as_mut_ptr).collect();
        // SAFETY: the pointers are live tensors borrowed for the call.
        let error = unsafe {
            ffi::fk_group_broadcast(self.group.as_ptr(), ptrs.as_ptr(), ptrs.len(), root)
        };
        self.check("broadcast", error)
    }

    /// Replaces `tensors` in place by their element-wise sum over ranks (bucketed by dtype).
    pub fn all_reduce_sum(&self, tensors: &mut [Tensor]) -> Result<(), DistError> {
        self.all_reduce("all_reduce_sum", tensors, false)
    }

    /// Replaces `tensors` in place by their element-wise mean over ranks (bucketed by dtype;
    /// integer tensors are floor-divided).
    pub fn all_reduce_mean(&self, tensors: &mut [Tensor]) -> Result<(), DistError> {
        self.all_reduce("all_reduce_mean", tensors, true)
    }

    /// Every rank's `tensor`, indexed by rank; all ranks must pass the same dtype and shape.
    pub fn all_gather(&self, tensor: &Tensor) -> Result<Vec<Tensor>, DistError> {
        let mut outputs: Vec<*mut C_tensor> = vec![std::ptr::null_mut(); self.world_size];
        // SAFETY: `outputs` has one slot per rank, filled with owned tensors on success only.
        let error = unsafe {
            ffi::fk_group_all_gather(self.group.as_ptr(), tensor.as_ptr(), outputs.as_mut_ptr())
        };
        self.check("all_gather", error)?;
        Ok(outputs
            .into_iter()
            // SAFETY: each pointer is a fresh `at::Tensor*` whose ownership passes to tch.
            .map(|ptr| unsafe { Tensor::from_ptr(ptr) })
            .collect())
    }

    /// Copies every variable (parameters and buffers) of `vs` from rank `root` to all ranks.
    pub fn broadcast_var_store(&self, vs: &VarStore, root: usize) -> Result<(), DistError> {
        let mut vars = sorted_variables(vs);
        self.broadcast(&mut vars, root)
    }

    /// Copies `vs`'s non-trainable variables (BatchNorm statistics) from rank `root` to all
    /// ranks, as PyTorch's DDP does with its buffers.
    pub fn broadcast_buffers(&self, vs: &VarStore, root: usize) -> Result<(), DistError> {
        let mut buffers: Vec<Tensor> = sorted_variables(vs)
            .into_iter()
            .filter(|t| !t.requires_grad())
            .collect();
        self.broadcast(&mut buffers, root)
    }

    /// Sums the gradients of `vs`'s trainable variables over ranks, in buckets (call once per
    /// optimizer step). A variable without a gradient on this rank counts as a zero gradient.
    ///
    /// Summing, not averaging, is right for losses that add up over images (fusekit's and
    /// Ultralytics' `loss x batch`): the result is the gradient of the global batch's loss, so
    /// the step of N ranks x B images equals one rank's step over the same N x B images.
    /// (Ultralytics gets the same by multiplying the loss by the world size before DDP
    /// averages.)
    pub fn sum_gradients(&self, vs: &VarStore) -> Result<(), DistError> {
        let mut vars: Vec<Tensor> = sorted_variables(vs)
            .into_iter()
            .filter(Tensor::requires_grad)
            .collect();
        let ptrs: Vec<*mut C_tensor> = vars.iter_mut().map(Tensor::as_mut_ptr).collect();
        // SAFETY: the pointers are live tensors borrowed for the call.
        let error =
            unsafe { ffi::fk_group_sum_grads(self.group.as_ptr(), ptrs.as_ptr(), ptrs.len()) };
        self.check("sum_gradients", error)
    }

    /// Training-mode batch normalisation of `input` (`[N, C, ...]`) with the mean and variance
    /// of every rank's input together, as `torch.nn.SyncBatchNorm`: `bn`'s running statistics
    /// move towards the global ones (by `momentum`, PyTorch's convention), and the backward
    /// pass all-reduces the per-channel gradient sums, so the input gradient is that of the
    /// global batch. Parameter gradients stay local, to be summed by
    /// [`ProcessGroup::sum_gradients`] as usual.
    ///
    /// Every rank must call it for the same layers in the same order (forward and backward).
    /// A failure in the backward pass comes out of libtorch's backward as an error naming
    /// `sync_batch_norm`.
    pub fn sync_batch_norm(
        &self,
        input: &Tensor,
        bn: &nn::BatchNorm,
        eps: f64,
        momentum: f64,
    ) -> Result<Tensor, DistError> {
        let optional = |t: Option<&Tensor>| t.map_or(std::ptr::null(), Tensor::as_ptr);
        let mut output = std::ptr::null_mut();
        // SAFETY: the tensors are alive for the call; `output` is written only on success.
        let error = unsafe {
            ffi::fk_sync_batch_norm(
                self.group.as_ptr(),
                input.as_ptr(),
                optional(bn.ws.as_ref()),
                optional(bn.bs.as_ref()),
                bn.running_mean.as_ptr(),
                bn.running_var.as_ptr(),
                eps,
                momentum,
                &mut output,
            )
        };
        self.check("sync_batch_norm", error)?;
        // SAFETY: a fresh `at::Tensor*` whose ownership passes to tch.
        Ok(unsafe { Tensor::from_ptr(output) })
    }

    fn all_reduce(
        &self,
        op: &'static str,
        tensors: &mut [Tensor],
        mean: bool,
    ) -> Result<(), DistError> {
        let ptrs: Vec<*mut C_tensor> = tensors.iter_mut().map(Tensor::as_mut_ptr).collect();
        // SAFETY: the pointers are live tensors borrowed for the call.
        let error = unsafe {
            ffi::fk_group_all_reduce(self.group.as_ptr(), ptrs.as_ptr(), ptrs.len(), mean)
        };
        self.check(op, error)
    }

    fn root(&self, root: usize) -> Result<i32, DistError> {
        if root >= self.world_size {
            return Err(DistError::InvalidConfig(format!(
                "root {root} is outside world size {}",
                self.world_size
            )));
        }
        Ok(root as i32)
    }

    fn check(&self, op: &'static str, error: *mut c_char) -> Result<(), DistError> {
        match take_error(error) {
            None => Ok(()),
            Some(message) => {
                self.failed.set(true);
                Err(DistError::Collective {
                    op,
                    rank: self.rank,
                    world_size: self.world_size,
                    message,
                })
            }
        }
    }
}

impl Drop for ProcessGroup {
    /// Shuts the backend down (NCCL destroys its communicators, as PyTorch's
    /// `destroy_process_group` does) or, after a failed collective, aborts it, so that no
    /// rank waits on a peer that is gone.
    fn drop(&mut self) {
        // SAFETY: the group was created by fk_group_create and is destroyed once.
        unsafe { ffi::fk_group_destroy(self.group.as_ptr(), self.failed.get()) }
    }
}

/// The variables of `vs` sorted by name, the same order on every rank.
fn sorted_variables(vs: &VarStore) -> Vec<Tensor> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named.into_iter().map(|(_, t)| t).collect()
}

/// Takes over the shim's error message, `None` for success.
fn take_error(error: *mut c_char) -> Option<String> {
    if error.is_null() {
        return None;
    }
    // SAFETY: a non-null result is a NUL-terminated string from malloc, freed here once.
    let message = unsafe { CStr::from_ptr(error) }
        .to_string_lossy()
        .into_owned();
    unsafe { ffi::fk_free_error(error) };
    Some(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn backend_follows_the_device() {
        assert_eq!(Backend::for_device(tch::Device::Cuda(1)), Backend::Nccl);
        assert_eq!(Backend::for_device(tch::Device::Cpu), Backend::Gloo);
        assert_eq!(Backend::Nccl.to_string(), "nccl");
        assert!(Backend::Gloo.check_built().is_ok());
    }

    #[test]
    fn single_process_without_world_size_or_with_one() {
        assert_eq!(Rendezvous::from_lookup(lookup(&[])).unwrap(), None);
        let one = lookup(&[("WORLD_SIZE", "1"), ("RANK", "0")]);
        assert_eq!(Rendezvous::from_lookup(one).unwrap(), None);
    }

    #[test]
    fn torchrun_contract_parses() {
        let env = lookup(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "2"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "1"),
        ]);
        let rdzv = Rendezvous::from_lookup(env).unwrap().unwrap();
        assert_eq!(
            rdzv,
            Rendezvous {
                rank: 2,
                world_size: 4,
                local_rank: 0,
                master_addr: "10.0.0.1".to_owned(),
                master_port: 29500,
                host_store: false,
                prefix: "/worker/attempt_1/fusekit/".to_owned(),
            }
        );
    }

    #[test]
    fn rank_zero_hosts_the_store_without_torchrun_agent() {
        let env = lookup(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "0"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "1234"),
        ]);
        let rdzv = Rendezvous::from_lookup(env).unwrap().unwrap();
        assert!(rdzv.host_store);
        assert_eq!(rdzv.local_rank, 0);
    }

    #[test]
    fn bad_contract_gives_clear_errors() {
        let missing = lookup(&[("WORLD_SIZE", "2"), ("RANK", "0")]);
        let err = Rendezvous::from_lookup(missing).unwrap_err();
        assert!(
            matches!(
                err,
                DistError::MissingEnv {
                    name: "MASTER_ADDR"
                }
            ),
            "{err}"
        );
        let bad_port = lookup(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "1"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "70000"),
        ]);
        let err = Rendezvous::from_lookup(bad_port).unwrap_err().to_string();
        assert!(
            err.contains("MASTER_PORT=\"70000\" is not a TCP port"),
            "{err}"
        );
        let bad_rank = lookup(&[("WORLD_SIZE", "2"), ("RANK", "2")]);
        let err = Rendezvous::from_lookup(bad_rank).unwrap_err().to_string();
        assert!(err.contains("RANK=\"2\""), "{err}");
        let zero = lookup(&[("WORLD_SIZE", "0")]);
        assert!(Rendezvous::from_lookup(zero).is_err());
    }
}
