// The few libtorch calls tch does not expose, for bcl::exec: autocast to bfloat16 on a device
// type (tch's autocast is CUDA float16 only) and the channels-last memory layout. A C ABI; C++
// exceptions never cross it (each entry point catches and returns the message).
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>

#include <cstring>
#include <string>

namespace {
char* dup(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) std::memcpy(out, s.c_str(), s.size() + 1);
  return out;
}

at::DeviceType device_type(int cuda) { return cuda ? at::kCUDA : at::kCPU; }
}  // namespace

extern "C" {

// Enables bfloat16 autocast on the device type (cuda != 0: CUDA, else CPU) for this thread.
// Writes the previous enabled flag and dtype into *prev_enabled / *prev_dtype (as ScalarType).
// Returns nullptr, or an error message (free with bcl_exec_free).
char* bcl_exec_autocast_enter(int cuda, int* prev_enabled, int* prev_dtype) {
  try {
    auto t = device_type(cuda);
    *prev_enabled = at::autocast::is_autocast_enabled(t) ? 1 : 0;
    *prev_dtype = static_cast<int>(at::autocast::get_autocast_dtype(t));
    at::autocast::set_autocast_dtype(t, at::kBFloat16);
    at::autocast::set_autocast_enabled(t, true);
    at::autocast::increment_nesting();
    return nullptr;
  } catch (const std::exception& e) {
    return dup(e.what());
  }
}

// Restores what bcl_exec_autocast_enter changed; the cast cache is cleared when the outermost
// autocast region ends (as torch.autocast does).
char* bcl_exec_autocast_exit(int cuda, int prev_enabled, int prev_dtype) {
  try {
    auto t = device_type(cuda);
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(t, prev_enabled != 0);
    at::autocast::set_autocast_dtype(t, static_cast<at::ScalarType>(prev_dtype));
    return nullptr;
  } catch (const std::exception& e) {
    return dup(e.what());
  }
}

// A new tensor holding `t`'s values in the channels-last layout (t must be 4-D), in *out.
// `to` rather than `contiguous`, as torch's `Module.to(memory_format=...)`: for a tensor with
// one channel (a grey-scale stem's weight) contiguous() sees both layouts at once and keeps the
// NCHW strides, which then made the stem's output NCHW and every residual add mix layouts.
char* bcl_exec_channels_last(const at::Tensor* t, at::Tensor** out) {
  try {
    *out = new at::Tensor(t->to(t->options(), /*non_blocking=*/false, /*copy=*/false,
                                at::MemoryFormat::ChannelsLast));
    return nullptr;
  } catch (const std::exception& e) {
    return dup(e.what());
  }
}

// Whether `t` is laid out channels-last.
int bcl_exec_is_channels_last(const at::Tensor* t) {
  return t->is_contiguous(at::MemoryFormat::ChannelsLast) ? 1 : 0;
}

void bcl_exec_free(char* p) { std::free(p); }
}
