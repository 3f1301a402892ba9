// libtorch's multi-tensor (`_foreach_*`) operations for fusekit-train's optimizer, gradient
// clipping and weight average, which tch does not expose. On CUDA each call updates a whole list
// of tensors in a few kernel launches instead of one per tensor, as torch.optim's default
// (foreach) implementations and clip_grad_norm_ do; on the CPU libtorch runs the same per-tensor
// operations in a loop.
//
// Lists cross as arrays of `at::Tensor*` (tch's tensor handles). In-place functions end in `_`;
// the others write new handles, owned by the Rust side, into `out`. Every function runs without
// autograd (they update parameters and optimizer state), never throws (a C++ exception must not
// cross into Rust), and returns 0, or 1 with libtorch's message in `error`.

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cstdio>
#include <exception>
#include <vector>

namespace {

std::vector<at::Tensor> list(at::Tensor* const* tensors, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(*tensors[i]);
  }
  return out;
}

void hand_over(const std::vector<at::Tensor>& tensors, at::Tensor** out) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    out[i] = new at::Tensor(tensors[i]);
  }
}

// Runs `body` without autograd, turning a C++ exception into status 1 and its message.
template <typename Body>
int guarded(char* error, size_t error_len, Body body) {
  try {
    at::NoGradGuard no_grad;
    body();
    return 0;
  } catch (const std::exception& e) {
    std::snprintf(error, error_len, "%s", e.what());
    return 1;
  }
}

}  // namespace

extern "C" {

// self[i] *= scalar
int fk_foreach_mul_scalar_(at::Tensor** self, size_t n, double scalar, char* error,
                           size_t error_len) {
  return guarded(error, error_len, [&] { at::_foreach_mul_(list(self, n), scalar); });
}

// self[i] *= factor (a one-element tensor, read on the device: no host synchronisation)
int fk_foreach_mul_tensor_(at::Tensor** self, size_t n, const at::Tensor* factor, char* error,
                           size_t error_len) {
  return guarded(error, error_len, [&] { at::_foreach_mul_(list(self, n), *factor); });
}

// self[i] += alpha * other[i]
int fk_foreach_add_list_(at::Tensor** self, at::Tensor** other, size_t n, double alpha,
                         char* error, size_t error_len) {
  return guarded(error, error_len,
                 [&] { at::_foreach_add_(list(self, n), list(other, n), alpha); });
}

// out[i] = self[i] + alpha * other[i]
int fk_foreach_add_list(at::Tensor** self, at::Tensor** other, size_t n, double alpha,
                        at::Tensor** out, char* error, size_t error_len) {
  return guarded(error, error_len,
                 [&] { hand_over(at::_foreach_add(list(self, n), list(other, n), alpha), out); });
}

// self[i] += scalar
int fk_foreach_add_scalar_(at::Tensor** self, size_t n, double scalar, char* error,
                           size_t error_len) {
  return guarded(error, error_len, [&] { at::_foreach_add_(list(self, n), scalar); });
}

// self[i] /= scalar
int fk_foreach_div_scalar_(at::Tensor** self, size_t n, double scalar, char* error,
                           size_t error_len) {
  return guarded(error, error_len, [&] { at::_foreach_div_(list(self, n), scalar); });
}

// self[i] += weight * (end[i] - self[i])
int fk_foreach_lerp_scalar_(at::Tensor** self, at::Tensor** end, size_t n, double weight,
                            char* error, size_t error_len) {
  return guarded(error, error_len,
                 [&] { at::_foreach_lerp_(list(self, n), list(end, n), weight); });
}

// self[i] += value * a[i] * b[i]
int fk_foreach_addcmul_(at::Tensor** self, at::Tensor** a, at::Tensor** b, size_t n,
                        double value, char* error, size_t error_len) {
  return guarded(error, error_len, [&] {
    at::_foreach_addcmul_(list(self, n), list(a, n), list(b, n), value);
  });
}

// self[i] += value * a[i] / b[i]
int fk_foreach_addcdiv_(at::Tensor** self, at::Tensor** a, at::Tensor** b, size_t n,
                        double value, char* error, size_t error_len) {
  return guarded(error, error_len, [&] {
    at::_foreach_addcdiv_(list(self, n), list(a, n), list(b, n), value);
  });
}

// out[i] = sqrt(self[i])
int fk_foreach_sqrt(at::Tensor** self, size_t n, at::Tensor** out, char* error,
                    size_t error_len) {
  return guarded(error, error_len, [&] { hand_over(at::_foreach_sqrt(list(self, n)), out); });
}

// out[i] = the L2 norm of self[i] (0-dimensional)
int fk_foreach_norm(at::Tensor** self, size_t n, at::Tensor** out, char* error,
                    size_t error_len) {
  return guarded(error, error_len, [&] { hand_over(at::_foreach_norm(list(self, n), 2), out); });
}

// self[i] = 0
int fk_foreach_zero_(at::Tensor** self, size_t n, char* error, size_t error_len) {
  return guarded(error, error_len, [&] { at::_foreach_zero_(list(self, n)); });
}

}  // extern "C"
