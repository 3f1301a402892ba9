// The CUDA side of fusekit-train's feed: batches copied from pinned host memory to the device
// on a side stream, so that a batch's copy runs while the previous batch computes.
//
// Only c10's device-generic stream and event API is used (no CUDA headers): the CUDA
// implementation behind it is the one libtorch_cuda registers when it is loaded.
//
// Tensors cross as `at::Tensor*`, the handles tch's C API uses; a tensor written to an out
// parameter is a new handle that the Rust side owns and frees. The functions never throw: a C++
// exception must not cross into Rust; each failure writes its message into `error`.

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/Event.h>
#include <c10/core/Stream.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <cstdio>
#include <exception>
#include <optional>

namespace {

void write_error(const std::exception& e, char* error, size_t error_len) {
  std::snprintf(error, error_len, "%s", e.what());
}

const c10::impl::DeviceGuardImplInterface* cuda() {
  return c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
}

}  // namespace

// A CUDA device and a stream of libtorch's pool on it, which the copies run on.
struct FkStager {
  c10::Device device;
  c10::Stream side;
};

// One batch's copy in flight: its device tensor and the event that marks its end.
struct FkStaged {
  at::Tensor images;
  c10::Event copied;
};

extern "C" {

// A stager for CUDA device `index`, or NULL with the reason in `error`.
FkStager* fk_stager_new(int index, char* error, size_t error_len) {
  try {
    c10::Device device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(index));
    c10::Stream side = cuda()->getStreamFromGlobalPool(device, /*isHighPriority=*/false);
    return new FkStager{device, side};
  } catch (const std::exception& e) {
    write_error(e, error, error_len);
    return nullptr;
  }
}

void fk_stager_free(FkStager* stager) { delete stager; }

// A copy of the host tensor `images` in pinned memory (a new handle; the caller may reuse the
// source's buffer once this returns), or NULL with the reason in `error`. Any thread may call
// it: the stager's device is made current first, so that the pinned memory belongs to its
// context and no other device's context is created.
at::Tensor* fk_pin(FkStager* stager, const at::Tensor* images, char* error, size_t error_len) {
  try {
    c10::DeviceGuard on_device(stager->device);
    return new at::Tensor(images->pin_memory());
  } catch (const std::exception& e) {
    write_error(e, error, error_len);
    return nullptr;
  }
}

// Starts the copy of the pinned host tensor `pinned` to the device on the side stream and
// returns at once. NULL with the reason in `error` when libtorch refused.
FkStaged* fk_stage(FkStager* stager, const at::Tensor* pinned, char* error, size_t error_len) {
  try {
    c10::StreamGuard on_side(stager->side);
    // A non-blocking copy from pinned memory: the host returns at once, and libtorch's pinned
    // allocator keeps the pinned block from reuse until the copy has read it, even once the
    // caller drops its handle.
    auto staged = new FkStaged{
        pinned->to(at::TensorOptions().device(stager->device), /*non_blocking=*/true),
        c10::Event(c10::DeviceType::CUDA)};
    staged->copied.record(stager->side);
    return staged;
  } catch (const std::exception& e) {
    write_error(e, error, error_len);
    return nullptr;
  }
}

// Makes the device's current stream (the one computing) wait for `staged`'s copy, without
// blocking the host, and hands its tensor over as a new handle. The device memory was
// allocated on the side stream, so it is marked as used by the current stream too: the caching
// allocator then does not give it to a later copy before the current stream is done with it.
// Frees `staged` in every case. Returns 0, or 1 with the reason in `error`.
int fk_staged_take(FkStager* stager, FkStaged* staged, at::Tensor** images, char* error,
                   size_t error_len) {
  int status = 0;
  try {
    c10::Stream current = cuda()->getStream(stager->device);
    staged->copied.block(current);
    if (staged->images.numel() > 0) {
      cuda()->recordDataPtrOnStream(staged->images.storage().data_ptr(), current);
    }
    *images = new at::Tensor(staged->images);
  } catch (const std::exception& e) {
    write_error(e, error, error_len);
    status = 1;
  }
  delete staged;
  return status;
}

// Drops a staged batch that will not be used (its copy finishes on its own).
void fk_staged_free(FkStaged* staged) { delete staged; }

}  // extern "C"
