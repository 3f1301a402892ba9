// The NCCL backend of the c10d shim, in its own translation unit (shim/nccl_backend.cpp), which
// build.rs compiles with USE_C10D_NCCL only when libtorch, NCCL and CUDA headers are all there.
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <string>

namespace fusekit {

// Empty when the NCCL backend is compiled in; otherwise why it is not.
std::string nccl_unavailable_reason();

// A ProcessGroupNCCL on CUDA device `device_index`, bound to that device (so that barriers use
// it) and connected eagerly. Throws when NCCL is not compiled in or the device does not exist.
c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    int rank, int world,
                                                    std::chrono::milliseconds timeout,
                                                    int device_index);

}  // namespace fusekit
