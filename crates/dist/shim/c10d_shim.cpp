// C ABI over libtorch's c10d: a TCPStore rendezvous and a Gloo or NCCL backend (the latter in
// nccl_backend.cpp), with bucketed collectives.
//
// Every entry point returns NULL on success or a heap-allocated error message (free it with
// fk_free_error); no C++ exception crosses the boundary. Tensors are tch's C_tensor handles,
// which in torch-sys are `at::Tensor*`.
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/version.h>

#include "nccl_backend.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <exception>
#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

// The Gloo headers come from Debian's libgloo-dev, which is older than the Gloo that libtorch was
// built with. Only the size of ProcessGroupGloo (allocated here, constructed by libtorch) and of
// its Options depend on what this translation unit sees; all Gloo types sit behind smart pointers.
// These sizes were read from libtorch_cpu.so (operator new in ProcessGroupGloo::split and in
// Options::create_default) of torch 2.13.0 (the main build) and 2.11.0 (the GPU machine's, for
// `cargo xtask gpu-bundle`); another torch version must be checked the same way before use.
#if TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR == 13
static_assert(sizeof(c10d::ProcessGroupGloo) == 0x1e8, "ProcessGroupGloo layout differs from libtorch 2.13");
static_assert(sizeof(c10d::ProcessGroupGloo::Options) == 0xb8, "ProcessGroupGloo::Options layout differs from libtorch 2.13");
#elif TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR == 11
static_assert(sizeof(c10d::ProcessGroupGloo) == 0x1e8, "ProcessGroupGloo layout differs from libtorch 2.11");
static_assert(sizeof(c10d::ProcessGroupGloo::Options) == 0xb0, "ProcessGroupGloo::Options layout differs from libtorch 2.11");
#else
#error "fusekit-dist: ProcessGroupGloo's layout was verified for torch 2.13 and 2.11 only; re-verify (see crate docs)"
#endif

namespace {

// Collectives on more than this many bytes of one dtype are split into several buckets.
constexpr int64_t kBucketBytes = 64LL << 20;

// The backends of fk_group_create, as numbered in the Rust crate.
constexpr int kGloo = 0;
constexpr int kNccl = 1;

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  // Where the backend's collectives run (CPU for Gloo, the bound CUDA device for NCCL); tensors
  // elsewhere are copied there and back.
  c10::Device device;
  std::chrono::milliseconds timeout;
  int rank;
  int world;
};

char* dup_message(const std::string& message) {
  char* out = static_cast<char*>(std::malloc(message.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, message.c_str(), message.size() + 1);
  }
  return out;
}

template <typename F>
char* guarded(F&& body) {
  try {
    body();
    return nullptr;
  } catch (const std::exception& e) {
    // Not `catch (const c10::Error&)`: a handler's type is referenced from the exception
    // tables, which the linker keeps even where the code is unused, and that reference alone
    // would make the libtorch-free `fusekit` binary load libc10.
    if (const auto* error = dynamic_cast<const c10::Error*>(&e)) {
      return dup_message(error->what_without_backtrace());
    }
    return dup_message(e.what());
  } catch (...) {
    return dup_message("unknown C++ exception");
  }
}

void wait(const Group& g, const c10::intrusive_ptr<c10d::Work>& work) {
  work->wait(g.timeout);
}

// Groups tensors by (dtype, device), preserving order, then cuts each group into buckets of at
// most kBucketBytes (a tensor larger than that is a bucket of its own).
std::vector<std::vector<at::Tensor>> buckets(const std::vector<at::Tensor>& tensors) {
  std::map<std::pair<int, std::string>, std::vector<at::Tensor>> groups;
  std::vector<std::pair<int, std::string>> order;
  for (const auto& t : tensors) {
    auto key = std::make_pair(static_cast<int>(t.scalar_type()), t.device().str());
    auto it = groups.find(key);
    if (it == groups.end()) {
      order.push_back(key);
      it = groups.emplace(key, std::vector<at::Tensor>{}).first;
    }
    it->second.push_back(t);
  }
  std::vector<std::vector<at::Tensor>> out;
  for (const auto& key : order) {
    std::vector<at::Tensor> current;
    int64_t bytes = 0;
    for (const auto& t : groups[key]) {
      int64_t size = t.numel() * static_cast<int64_t>(t.element_size());
      if (!current.empty() && bytes + size > kBucketBytes) {
        out.push_back(std::move(current));
        current.clear();
        bytes = 0;
      }
      current.push_back(t);
      bytes += size;
    }
    if (!current.empty()) {
      out.push_back(std::move(current));
    }
  }
  return out;
}

// One fresh 1-D tensor on `device` holding the bucket's elements in order.
at::Tensor flatten(const std::vector<at::Tensor>& bucket, c10::Device device) {
  if (bucket.size() == 1) {
    return bucket[0].reshape({-1}).to(device, /*non_blocking=*/false, /*copy=*/true);
  }
  std::vector<at::Tensor> flat;
  flat.reserve(bucket.size());
  for (const auto& t : bucket) {
    flat.push_back(t.reshape({-1}));
  }
  return at::cat(flat).to(device);
}

void unflatten_into(const at::Tensor& flat, const std::vector<at::Tensor>& bucket) {
  int64_t offset = 0;
  for (const auto& t : bucket) {
    t.copy_(flat.narrow(0, offset, t.numel()).view(t.sizes()));
    offset += t.numel();
  }
}

std::vector<at::Tensor> collect(at::Tensor* const* tensors, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK(tensors[i] != nullptr && tensors[i]->defined(), "tensor ", i, " is undefined");
    out.push_back(*tensors[i]);
  }
  return out;
}

// Sums (and with `mean`, averages) tensors across ranks in place, one all-reduce per bucket, all
// buckets in flight at once.
void all_reduce(const Group& g, const std::vector<at::Tensor>& tensors, bool mean) {
  at::NoGradGuard no_grad;
  auto parts = buckets(tensors);
  std::vector<at::Tensor> flats;
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  for (const auto& bucket : parts) {
    std::vector<at::Tensor> io{flatten(bucket, g.device)};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    opts.timeout = g.timeout;
    works.push_back(g.backend->allreduce(io, opts));
    flats.push_back(io[0]);
  }
  for (size_t i = 0; i < parts.size(); ++i) {
    wait(g, works[i]);
    if (mean) {
      if (at::isIntegralType(flats[i].scalar_type(), /*includeBool=*/true)) {
        flats[i].div_(g.world, "floor");
      } else {
        flats[i].div_(g.world);
      }
    }
    unflatten_into(flats[i], parts[i]);
  }
}

// Gathers every rank's dtype and shape (one small all-gather) and fails on all ranks alike when
// they differ, instead of letting Gloo exchange buffers of different sizes.
void check_same_layout(const Group& g, const at::Tensor& t) {
  constexpr int64_t kMaxDims = 8;
  TORCH_CHECK(t.dim() <= kMaxDims, "all_gather supports at most ", kMaxDims, " dimensions, got ",
              t.dim());
  std::vector<int64_t> values(kMaxDims + 2, -1);
  values[0] = static_cast<int64_t>(t.scalar_type());
  values[1] = t.dim();
  for (int64_t d = 0; d < t.dim(); ++d) {
    values[d + 2] = t.size(d);
  }
  auto meta = at::tensor(values, at::kLong).to(g.device);
  std::vector<at::Tensor> in{meta};
  std::vector<std::vector<at::Tensor>> out(1);
  for (int r = 0; r < g.world; ++r) {
    out[0].push_back(at::empty_like(meta));
  }
  c10d::AllgatherOptions opts;
  opts.timeout = g.timeout;
  wait(g, g.backend->allgather(out, in, opts));
  for (int r = 0; r < g.world; ++r) {
    TORCH_CHECK(at::equal(out[0][r], out[0][0]), "all_gather needs the same dtype and shape on ",
                "every rank; rank ", r, " differs from rank 0");
  }
}


// Synchronised batch normalisation (training mode): the batch statistics of every rank's input
// are combined before normalising, and the backward pass all-reduces the two per-channel sums
// the input gradient depends on, so each rank's gradient is that of the whole global batch.
// Forward: per-rank count, mean and biased variance are all-gathered and merged exactly (the
// parallel variance formula); running statistics move by `momentum` towards the global mean
// and unbiased variance, as torch.nn.SyncBatchNorm does. Backward: grad_weight and grad_bias
// stay local (the trainer sums parameter gradients over ranks afterwards), and
//   grad_input = weight * invstd * (dy - sum(dy) / n - xhat * sum(dy * xhat) / n)
// with both sums and n taken over all ranks.
struct SyncBatchNorm : public torch::autograd::Function<SyncBatchNorm> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& weight, const at::Tensor& bias,
                            const at::Tensor& running_mean, const at::Tensor& running_var,
                            double eps, double momentum,
                            const c10::intrusive_ptr<c10d::Backend>& backend,
                            c10::Device comm_device, int64_t timeout_ms) {
    const int64_t channels = input.size(1);
    const auto dims = reduced_dims(input);
    auto x = input.to(at::kFloat);
    const int64_t local_count = channels == 0 ? 0 : input.numel() / channels;
    at::Tensor mean = at::zeros({channels}, x.options());
    at::Tensor var = at::zeros({channels}, x.options());
    if (local_count > 0) {
      std::tie(var, mean) = at::var_mean(x, dims, /*correction=*/0, /*keepdim=*/false);
    }
    // [count, mean..., var...] of every rank, merged in double precision.
    auto local = at::cat({at::full({1}, static_cast<double>(local_count), x.options().dtype(at::kDouble)),
                          mean.to(at::kDouble), var.to(at::kDouble)});
    std::vector<at::Tensor> in{local.to(comm_device)};
    std::vector<std::vector<at::Tensor>> out(1);
    for (int r = 0; r < backend->getSize(); ++r) {
      out[0].push_back(at::empty_like(in[0]));
    }
    c10d::AllgatherOptions opts;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    backend->allgather(out, in, opts)->wait(opts.timeout);
    auto stats = at::stack(out[0]).to(x.device());
    auto counts = stats.narrow(1, 0, 1);
    auto means = stats.narrow(1, 1, channels);
    auto vars = stats.narrow(1, 1 + channels, channels);
    const double n = counts.sum().item<double>();
    TORCH_CHECK(n > 1, "sync_batch_norm: expected more than 1 value per channel over all ranks, got ",
                n);
    auto global_mean = (counts * means).sum(0) / n;
    auto global_var = (counts * (vars + (means - global_mean).pow(2))).sum(0) / n;
    running_mean.mul_(1 - momentum).add_(global_mean.to(running_mean.scalar_type()), momentum);
    running_var.mul_(1 - momentum)
        .add_((global_var * (n / (n - 1))).to(running_var.scalar_type()), momentum);
    auto mean_f = global_mean.to(at::kFloat);
    auto var_f = global_var.to(at::kFloat);
    auto weight_f = weight.to(at::kFloat);
    // Libtorch's evaluation-mode kernel normalises with given statistics in one pass.
    auto y = at::batch_norm(x, weight_f, bias.to(at::kFloat), mean_f, var_f, /*training=*/false,
                            0.0, eps, /*cudnn_enabled=*/true);
    ctx->save_for_backward({input, weight_f, mean_f, var_f});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["count"] = n;
    ctx->saved_data["backend"] = c10::IValue::make_capsule(backend);
    ctx->saved_data["comm_device"] = comm_device;
    ctx->saved_data["timeout_ms"] = timeout_ms;
    return y.to(input.scalar_type());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto& input = saved[0];
    const auto& weight = saved[1];
    const auto& mean = saved[2];
    const auto& var = saved[3];
    const double eps = ctx->saved_data["eps"].toDouble();
    const double n = ctx->saved_data["count"].toDouble();
    auto backend = c10::static_intrusive_pointer_cast<c10d::Backend>(
        ctx->saved_data["backend"].toCapsule());
    const auto timeout = std::chrono::milliseconds(ctx->saved_data["timeout_ms"].toInt());
    const auto shape = channel_shape(input);
    const int64_t channels = input.size(1);
    auto dy = grads[0].to(at::kFloat);
    auto x = input.to(at::kFloat);
    // The evaluation-mode backward kernel gives, in one reduction, the local sums of dy * xhat
    // and of dy, and weight * invstd * dy: the global terms are added below.
    auto [grad_input, sum_dy_xhat, sum_dy] = at::native_batch_norm_backward(
        dy, x, weight, mean, var, at::Tensor(), at::Tensor(), /*train=*/false, eps,
        {true, true, true});
    const auto comm_device = ctx->saved_data["comm_device"].toDevice();
    std::vector<at::Tensor> io{at::cat({sum_dy, sum_dy_xhat}).to(comm_device)};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    opts.timeout = timeout;
    try {
      backend->allreduce(io, opts)->wait(timeout);
    } catch (const std::exception& e) {
      TORCH_CHECK(false, "sync_batch_norm backward: all-reduce failed on rank ",
                  backend->getRank(), " of ", backend->getSize(), ": ", e.what());
    }
    auto sums = io[0].to(dy.device());
    auto mean_dy = sums.narrow(0, 0, channels) / n;
    auto mean_dy_xhat = sums.narrow(0, channels, channels) / n;
    // weight * invstd * (mean_dy + xhat * mean_dy_xhat), written as x * slope + offset.
    auto invstd = (var + eps).rsqrt();
    auto scale = invstd * weight;
    auto slope = scale * mean_dy_xhat * invstd;
    auto offset = scale * mean_dy - slope * mean;
    grad_input.sub_(offset.view(shape)).addcmul_(x, slope.view(shape), -1);
    return {grad_input.to(input.scalar_type()), sum_dy_xhat, sum_dy, at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }

  // [1, C, 1, ...]: per-channel values broadcast over an input of the same rank.
  static std::vector<int64_t> channel_shape(const at::Tensor& input) {
    std::vector<int64_t> shape(static_cast<size_t>(input.dim()), 1);
    shape[1] = input.size(1);
    return shape;
  }

  // Every dimension but the channels'.
  static std::vector<int64_t> reduced_dims(const at::Tensor& input) {
    std::vector<int64_t> dims{0};
    for (int64_t d = 2; d < input.dim(); ++d) {
      dims.push_back(d);
    }
    return dims;
  }
};

}  // namespace

extern "C" {

typedef struct Group fk_group;

void fk_free_error(char* message) { std::free(message); }

// NULL when the NCCL backend is compiled in, otherwise why not (free it with fk_free_error).
char* fk_nccl_unavailable() {
  auto reason = fusekit::nccl_unavailable_reason();
  return reason.empty() ? nullptr : dup_message(reason);
}

// Joins a group on `backend` (kGloo or kNccl); NCCL uses CUDA device `device_index`.
char* fk_group_create(int rank, int world, const char* master_addr, uint16_t master_port,
                      int64_t timeout_ms, bool host_store, const char* prefix, int backend,
                      int device_index, fk_group** out) {
  *out = nullptr;
  return guarded([&] {
    TORCH_CHECK(backend == kGloo || backend == kNccl, "unknown backend ", backend);
    TORCH_CHECK(world >= 1, "world size must be at least 1, got ", world);
    TORCH_CHECK(rank >= 0 && rank < world, "rank ", rank, " is outside world size ", world);
    TORCH_CHECK(timeout_ms > 0, "timeout must be positive");
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions store_opts;
    store_opts.port = master_port;
    store_opts.isServer = host_store;
    store_opts.numWorkers = static_cast<size_t>(world);
    // Both backends' own rendezvous waits (within `timeout`) for the ranks' keys in the store.
    store_opts.waitWorkers = false;
    store_opts.timeout = timeout;
    c10::intrusive_ptr<c10d::Store> tcp =
        c10::make_intrusive<c10d::TCPStore>(std::string(master_addr), store_opts);
    auto store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
    if (backend == kNccl) {
      auto nccl = fusekit::make_nccl_backend(store, rank, world, timeout, device_index);
      c10::Device device(c10::kCUDA, static_cast<c10::DeviceIndex>(device_index));
      *out = new Group{store, nccl, device, timeout, rank, world};
    } else {
      auto options = c10d::ProcessGroupGloo::Options::create_default(timeout);
      auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
      *out = new Group{store, gloo, c10::Device(c10::kCPU), timeout, rank, world};
    }
  });
}

// Shuts the backend down (NCCL destroys its communicators, as destroy_process_group does) or,
// after a failed collective, aborts it; then frees the group.
void fk_group_destroy(fk_group* group, bool failed) {
  try {
    if (failed) {
      group->backend->abort();
    } else {
      group->backend->shutdown();
    }
  } catch (...) {
  }
  try {
    delete group;
  } catch (...) {
  }
}

char* fk_group_barrier(fk_group* group) {
  return guarded([&] {
    c10d::BarrierOptions opts;
    opts.timeout = group->timeout;
    wait(*group, group->backend->barrier(opts));
  });
}

char* fk_group_broadcast(fk_group* group, at::Tensor* const* tensors, size_t n, int root) {
  return guarded([&] {
    TORCH_CHECK(root >= 0 && root < group->world, "root ", root, " is outside world size ",
                group->world);
    at::NoGradGuard no_grad;
    auto parts = buckets(collect(tensors, n));
    std::vector<at::Tensor> flats;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (const auto& bucket : parts) {
      std::vector<at::Tensor> io{flatten(bucket, group->device)};
      c10d::BroadcastOptions opts;
      opts.rootRank = root;
      opts.timeout = group->timeout;
      works.push_back(group->backend->broadcast(io, opts));
      flats.push_back(io[0]);
    }
    for (size_t i = 0; i < parts.size(); ++i) {
      wait(*group, works[i]);
      if (group->rank != root) {
        unflatten_into(flats[i], parts[i]);
      }
    }
  });
}

char* fk_group_all_reduce(fk_group* group, at::Tensor* const* tensors, size_t n, bool mean) {
  return guarded([&] { all_reduce(*group, collect(tensors, n), mean); });
}

// Sums the gradients of `vars` across ranks; a variable without a gradient on this rank
// contributes zeros (and gets a zero gradient), so every rank takes part in the same buckets.
char* fk_group_sum_grads(fk_group* group, at::Tensor* const* vars, size_t n) {
  return guarded([&] {
    std::vector<at::Tensor> grads;
    grads.reserve(n);
    for (const auto& v : collect(vars, n)) {
      auto& grad = v.mutable_grad();
      if (!grad.defined()) {
        grad = at::zeros_like(v);
      }
      grads.push_back(grad);
    }
    all_reduce(*group, grads, /*mean=*/false);
  });
}

// Gathers `input` from every rank; on success `outputs[r]` is a new tensor holding rank r's input
// (free each with tch's at_free, i.e. by dropping the tch::Tensor that takes it over).
char* fk_group_all_gather(fk_group* group, const at::Tensor* input, at::Tensor** outputs) {
  return guarded([&] {
    TORCH_CHECK(input != nullptr && input->defined(), "input tensor is undefined");
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> in{input->contiguous().to(group->device)};
    check_same_layout(*group, in[0]);
    std::vector<std::vector<at::Tensor>> out(1);
    for (int r = 0; r < group->world; ++r) {
      out[0].push_back(at::empty_like(in[0]));
    }
    c10d::AllgatherOptions opts;
    opts.timeout = group->timeout;
    wait(*group, group->backend->allgather(out, in, opts));
    for (int r = 0; r < group->world; ++r) {
      outputs[r] = new at::Tensor(out[0][r].to(input->device()));
    }
  });
}

// Training-mode batch normalisation of `input` with statistics over every rank's input (see
// SyncBatchNorm); `weight` and `bias` may be NULL (a layer without affine parameters), the
// running statistics may not. On success `*output` is a new tensor (taken over by tch) whose
// gradient flows back through the group.
char* fk_sync_batch_norm(fk_group* group, const at::Tensor* input, const at::Tensor* weight,
                         const at::Tensor* bias, const at::Tensor* running_mean,
                         const at::Tensor* running_var, double eps, double momentum,
                         at::Tensor** output) {
  *output = nullptr;
  return guarded([&] {
    TORCH_CHECK(input != nullptr && input->defined(), "input tensor is undefined");
    TORCH_CHECK(input->dim() >= 2, "sync_batch_norm expects [N, C, ...] input, got ",
                input->dim(), " dimensions");
    TORCH_CHECK(running_mean != nullptr && running_mean->defined() && running_var != nullptr &&
                    running_var->defined(),
                "sync_batch_norm needs the layer's running statistics");
    // Without affine parameters: a constant scale of 1 and shift of 0, which need no gradient.
    auto constant = [&](const at::Tensor* t, double value) {
      return t != nullptr && t->defined()
                 ? *t
                 : at::full({input->size(1)}, value, input->options().dtype(at::kFloat));
    };
    at::Tensor y = SyncBatchNorm::apply(*input, constant(weight, 1.0), constant(bias, 0.0),
                                        *running_mean, *running_var, eps, momentum,
                                        group->backend, group->device,
                                        static_cast<int64_t>(group->timeout.count()));
    *output = new at::Tensor(std::move(y));
  });
}

}  // extern "C"
