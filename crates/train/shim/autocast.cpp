// Autocast state for fusekit-train's guard: libtorch's per-device-type autocast flag and
// dtype, which tch exposes only for CUDA and without the dtype.
//
// The functions never throw: a C++ exception must not cross into Rust.

#include <ATen/autocast_mode.h>

namespace {

c10::DeviceType device_type(int code) {
  return code == 1 ? c10::DeviceType::CUDA : c10::DeviceType::CPU;
}

}  // namespace

extern "C" {

// Turns autocast on or off for `device` (0: CPU, 1: CUDA) with `dtype` (a c10::ScalarType
// code; negative: keep the current one), entering one nesting level; writes the state it replaces. Returns 0, or 1 when
// libtorch refused (the state is then unchanged).
int fk_autocast_enter(int device, bool enabled, int dtype, bool* was_enabled, int* was_dtype) {
  try {
    auto type = device_type(device);
    *was_enabled = at::autocast::is_autocast_enabled(type);
    *was_dtype = static_cast<int>(at::autocast::get_autocast_dtype(type));
    if (dtype >= 0) {
      at::autocast::set_autocast_dtype(type, static_cast<c10::ScalarType>(dtype));
    }
    at::autocast::set_autocast_enabled(type, enabled);
    at::autocast::increment_nesting();
    return 0;
  } catch (...) {
    return 1;
  }
}

// Leaves the nesting level `fk_autocast_enter` entered: restores the state it wrote and, when
// the outermost level is left, drops autocast's cache of casted weights.
void fk_autocast_exit(int device, bool was_enabled, int was_dtype) {
  try {
    auto type = device_type(device);
    at::autocast::set_autocast_enabled(type, was_enabled);
    at::autocast::set_autocast_dtype(type, static_cast<c10::ScalarType>(was_dtype));
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
  } catch (...) {
  }
}

// Whether autocast is on for `device`, and its dtype code.
bool fk_autocast_state(int device, int* dtype) {
  auto type = device_type(device);
  *dtype = static_cast<int>(at::autocast::get_autocast_dtype(type));
  return at::autocast::is_autocast_enabled(type);
}

}  // extern "C"
