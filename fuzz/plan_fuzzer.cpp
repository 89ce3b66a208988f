// libFuzzer target for the plan parser, validator and interpreter (csrc/kernels, torch-free).
//
// Input: little-endian int64 words [n_meta, meta..., n_ops, ops..., n_weights, numel...]; the
// weights are filled with small deterministic values (their sizes matter to the validator, their
// values only to the arithmetic). A plan the validator refuses must throw PlanError; a plan it
// accepts runs one sample. Anything else (a crash, a sanitizer report, another exception type) is
// a finding. Seeds: fuzz/make_corpus.py writes the plans of the registered models.
#include <cstdint>
#include <cstring>
#include <functional>
#include <new>
#include <string>
#include <vector>

#include "kernels/cpu_features.h"
#include "kernels/plan.h"
#include "kernels/plan_schema.h"

namespace {

struct Reader {
  const uint8_t* p;
  size_t n;
  bool ok = true;
  int64_t next() {
    if (n < 8) {
      ok = false;
      return 0;
    }
    int64_t v;
    std::memcpy(&v, p, 8);
    p += 8, n -= 8;
    return v;
  }
  bool list(std::vector<int64_t>& out, int64_t max_len) {
    const int64_t len = next();
    if (!ok || len < 0 || len > max_len || static_cast<uint64_t>(len) * 8 > n) return false;
    out.resize(static_cast<size_t>(len));
    for (auto& v : out) v = next();
    return ok;
  }
};

// Skip plans with more than 2^19 activation floats: the validator allows
// up to 1 GiB per buffer, which is legitimate for real models and useless here.
bool small_enough(const std::vector<int64_t>& meta) {
  using namespace dyninfer::schema;
  if (meta.empty()) return true;
  const int64_t nb = meta[0];
  if (nb < 0 || nb > 4096) return true;  // the parser refuses these itself
  int64_t total = 0;
  for (int64_t b = 0; b < nb; ++b) {
    const size_t base = 1 + static_cast<size_t>(b) * buffer::kCount;
    if (base + buffer::kCount > meta.size()) return true;
    const int64_t C = meta[base + buffer::C], H = meta[base + buffer::H], W = meta[base + buffer::W],
                  B = meta[base + buffer::border];
    if (C <= 0 || H <= 0 || W <= 0 || B < 0 || C > 4096 || H > 1024 || W > 1024 || B > 64) return true;
    total += C * (H + 2 * B) * (W + 2 * B);
    if (total > (int64_t{1} << 19)) return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader r{data, size};
  std::vector<int64_t> meta, ops, numels;
  if (!r.list(meta, 1 << 16) || !r.list(ops, 1 << 18) || !r.list(numels, 4096)) return 0;
  if (!small_enough(meta)) return 0;
  int64_t total = 0;
  for (int64_t n : numels) {
    if (n < 0 || n > (int64_t{1} << 22)) return 0;
    total += n;
  }
  if (total > (int64_t{1} << 24)) return 0;
  std::vector<std::vector<float>> store;
  std::vector<dyninfer::WeightRef> refs;
  for (int64_t n : numels) {
    store.emplace_back(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) store.back()[i] = 0.01f * static_cast<float>((i * 7 + n) % 13 - 6);
    refs.push_back({store.back().data(), n});
  }
  try {
    dyninfer::Plan plan(meta, ops, refs, {}, dyninfer::detect_isa());
    std::vector<float> x(static_cast<size_t>(plan.input_numel()));
    for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 17) * 0.1f - 0.8f;
    std::vector<float> logits(static_cast<size_t>(plan.output_numel())), path(static_cast<size_t>(plan.path_len()));
    const dyninfer::ParallelFor serial = [](int64_t b, int64_t e, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
      fn(b, e);
    };
    plan.run(x.data(), 1, logits.data(), path.empty() ? nullptr : path.data(), false, serial);
    plan.run(x.data(), 1, logits.data(), path.empty() ? nullptr : path.data(), true, serial);
  } catch (const dyninfer::PlanError&) {
    // refused: what a malformed plan must do
  }
  return 0;
}
