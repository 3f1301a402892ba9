// Rewrites a TorchScript archive with one extra file (`extra/<name>` in the archive), which
// `torch.jit.load(path, _extra_files=...)` and `torch::jit::load` read back: where Ultralytics
// keeps an exported model's metadata (`config.txt`). tch's `CModule::save` has no way to add one.
#include <torch/script.h>

#include <cstdio>
#include <exception>
#include <optional>
#include <string>

extern "C" int fk_jit_save_with_extra(const char* source, const char* target, const char* name,
                                      const char* contents, char* error, size_t error_len) {
  try {
    torch::jit::Module module = torch::jit::load(source);
    torch::jit::ExtraFilesMap extra{{name, contents}};
    module.save(target, extra);
    return 0;
  } catch (const std::exception& e) {
    std::snprintf(error, error_len, "%s", e.what());
    return 1;
  }
}

// Reads the extra file `name` of a TorchScript archive into `contents` (at most `contents_len`
// bytes, NUL-terminated); returns its full length, or -1 with `contents` holding the error.
extern "C" long fk_jit_read_extra(const char* path, const char* name, char* contents,
                                  size_t contents_len) {
  try {
    torch::jit::ExtraFilesMap extra{{name, ""}};
    torch::jit::load(path, std::nullopt, extra);
    const std::string& value = extra[name];
    std::snprintf(contents, contents_len, "%s", value.c_str());
    return static_cast<long>(value.size());
  } catch (const std::exception& e) {
    std::snprintf(contents, contents_len, "%s", e.what());
    return -1;
  }
}
