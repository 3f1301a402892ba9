// The NCCL backend of the c10d shim. build.rs defines USE_C10D_NCCL (and adds the NCCL and CUDA
// include folders) only when it found all of them next to a CUDA build of libtorch; otherwise it
// defines FUSEKIT_NO_NCCL_REASON and this file compiles to a variant that reports that reason.
// ProcessGroupNCCL's layout comes from the same libtorch's own headers (unlike Gloo's), and its
// constructor and members are exported by libtorch_cuda.so.
#include "nccl_backend.h"

#ifdef USE_C10D_NCCL

#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <c10/cuda/CUDAFunctions.h>
#include <c10/util/Exception.h>
#include <torch/version.h>

// What libtorch 2.13.0 itself allocates for these classes (operator new in
// ProcessGroupNCCL::split and in libtorch_python's Options bindings): headers from elsewhere
// (FUSEKIT_CUDA_INCLUDE pointing at another nccl.h, say) must not change them.
#if TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR == 13
static_assert(sizeof(c10d::ProcessGroupNCCL) == 0x480,
              "ProcessGroupNCCL layout differs from libtorch 2.13");
static_assert(sizeof(c10d::ProcessGroupNCCL::Options) == 0x100,
              "ProcessGroupNCCL::Options layout differs from libtorch 2.13");
#endif

namespace fusekit {

std::string nccl_unavailable_reason() { return {}; }

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    int rank, int world,
                                                    std::chrono::milliseconds timeout,
                                                    int device_index) {
  auto devices = static_cast<int>(c10::cuda::device_count());
  TORCH_CHECK(device_index >= 0 && device_index < devices, "NCCL needs CUDA device ",
              device_index, " but this process sees ", devices, " CUDA device(s)");
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  auto backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, options);
  at::Device device(at::kCUDA, static_cast<c10::DeviceIndex>(device_index));
  backend->setBoundDeviceId(device);
  backend->eagerConnectSingleDevice(device);
  return backend;
}

}  // namespace fusekit

#else

#ifndef FUSEKIT_NO_NCCL_REASON
#error "build.rs defines either USE_C10D_NCCL or FUSEKIT_NO_NCCL_REASON"
#endif

#include <stdexcept>

namespace fusekit {

std::string nccl_unavailable_reason() { return FUSEKIT_NO_NCCL_REASON; }

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>&, int,
                                                    int, std::chrono::milliseconds, int) {
  throw std::runtime_error(std::string("this libtorch has no NCCL: ") + FUSEKIT_NO_NCCL_REASON);
}

}  // namespace fusekit

#endif
