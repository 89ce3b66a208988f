// C++ face of libdyninfer_rt: RAII and exceptions over the C API (dyninfer_rt.h), header only.
//
//   dyninfer::rt::Model model = dyninfer::rt::Model::load_file("model.dyninfer");
//   dyninfer::rt::Result r = model.run(x.data(), batch);      // r.logits, r.path (0/1 per gated channel)
//
// Every failure throws dyninfer::rt::Error with the runtime's message (file, op, field, value).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "dyninfer_rt.h"

namespace dyninfer {
namespace rt {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Result {
  int64_t batch = 0;
  std::vector<float> logits;  // batch x output_numel
  std::vector<float> path;    // batch x path_len, or empty when not asked for
};

class Model {
 public:
  // verify: check the artefact's sha256 (false skips only that; every structural check runs).
  static Model load_file(const std::string& path, bool verify = true) {
    return Model(dyninfer_load_file(path.c_str(), verify ? 1 : 0));
  }
  static Model load_bytes(const void* data, size_t size, bool verify = true) {
    return Model(dyninfer_load_bytes(data, size, verify ? 1 : 0));
  }

  std::array<int64_t, 3> input_shape() const {  // C, H, W of one sample
    std::array<int64_t, 3> s{};
    dyninfer_input_shape(m_.get(), s.data());
    return s;
  }
  int64_t input_numel() const {
    const auto s = input_shape();
    return s[0] * s[1] * s[2];
  }
  int64_t output_numel() const { return dyninfer_output_numel(m_.get()); }
  int64_t path_len() const { return dyninfer_path_len(m_.get()); }
  std::string digest() const { return dyninfer_digest(m_.get()); }
  static std::string isa() { return dyninfer_isa(); }
  // "fp32" | "bf16": the artefact's precision where this CPU supports it, else fp32.
  std::string precision() const { return dyninfer_precision(m_.get()); }
  // Not while another thread runs the model. Throws Error naming a missing CPU feature.
  void set_precision(const std::string& precision) {
    if (dyninfer_set_precision(m_.get(), precision.c_str()) != 0) throw Error(dyninfer_last_error());
  }

  // x: batch x C x H x W float32, contiguous. threads <= 0: every core. Safe from several threads.
  Result run(const float* x, int64_t batch, bool return_path = false, int threads = 1) const {
    if (batch < 0) throw Error("dyninfer::rt::Model::run: batch must be >= 0, got " + std::to_string(batch));
    Result r;
    r.batch = batch;
    r.logits.resize(static_cast<size_t>(batch * output_numel()));
    if (return_path) r.path.resize(static_cast<size_t>(batch * path_len()));
    if (batch > 0 && dyninfer_run(m_.get(), x, batch, r.logits.data(), return_path ? r.path.data() : nullptr,
                                  threads) != 0)
      throw Error(dyninfer_last_error());
    return r;
  }
  Result run(const std::vector<float>& x, bool return_path = false, int threads = 1) const {
    const int64_t n = input_numel();
    if (n <= 0 || static_cast<int64_t>(x.size()) % n != 0)
      throw Error("dyninfer::rt::Model::run: " + std::to_string(x.size()) + " input values are not a whole number "
                  "of samples of " + std::to_string(n));
    return run(x.data(), static_cast<int64_t>(x.size()) / n, return_path, threads);
  }

 private:
  struct Free {
    void operator()(dyninfer_model* m) const { dyninfer_free(m); }
  };
  explicit Model(dyninfer_model* m) : m_(m) {
    if (!m_) throw Error(dyninfer_last_error());
  }
  std::unique_ptr<dyninfer_model, Free> m_;
};

}  // namespace rt
}  // namespace dyninfer
