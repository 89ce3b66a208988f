#include "runtime.h"

#ifdef _OPENMP
#include <omp.h>
#else  // built without OpenMP (e.g. the clang fuzz build): one thread
static int omp_get_max_threads() { return 1; }
static int omp_get_thread_num() { return 0; }
#endif

#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <iterator>
#include <mutex>
#include <new>

#include "../kernels/conv.h"
#include "../kernels/digest.h"

namespace dyninfer {

namespace {

std::string meta_str(const StFile& f, const char* key) {
  auto it = f.metadata.find(key);
  if (it == f.metadata.end()) throw ArtefactError(std::string("artefact metadata has no '") + key + "'");
  return it->second;
}

int64_t meta_int(const StFile& f, const char* key) {
  const std::string s = meta_str(f, key);
  if (s.empty() || s.size() > 12 || s.find_first_not_of("0123456789") != std::string::npos)
    throw ArtefactError(std::string("artefact metadata '") + key + "' is not a small non-negative integer: '" + s + "'");
  return std::stoll(s);
}

std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> out;
  if (s.empty()) return out;
  size_t a = 0;
  while (true) {
    const size_t b = s.find('\n', a);
    out.push_back(s.substr(a, b == std::string::npos ? std::string::npos : b - a));
    if (b == std::string::npos) return out;
    a = b + 1;
  }
}

const StTensor& tensor(const StFile& f, const std::string& name, const char* dtype) {
  auto it = f.tensors.find(name);
  if (it == f.tensors.end()) throw ArtefactError("artefact has no tensor '" + name + "'");
  if (it->second.dtype != dtype)
    throw ArtefactError("artefact tensor '" + name + "' is " + it->second.dtype + ", expected " + dtype);
  return it->second;
}

std::vector<int64_t> int_vector(const StFile& f, const std::string& name, size_t max_len) {
  const StTensor& t = tensor(f, name, "I64");
  if (t.shape.size() != 1) throw ArtefactError("artefact tensor '" + name + "' must be 1-d");
  if (static_cast<size_t>(t.shape[0]) > max_len)
    throw ArtefactError("artefact tensor '" + name + "' has " + std::to_string(t.shape[0]) + " entries, at most " +
                        std::to_string(max_len) + " allowed");
  std::vector<int64_t> v(static_cast<size_t>(t.shape[0]));
  if (!v.empty()) std::memcpy(v.data(), t.data, t.nbytes);  // little-endian host (x86-64)
  return v;
}

std::string weight_name(int64_t i) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "weight.%05lld", static_cast<long long>(i));
  return buf;
}

}  // namespace

std::unique_ptr<RtModel> load_artefact(const uint8_t* bytes, size_t n, bool verify) {
  const StFile f = parse_safetensors(bytes, n);
  const std::string format = meta_str(f, "format");
  if (format != kRuntimeFormat)
    throw ArtefactError("artefact format '" + format + "', expected '" + kRuntimeFormat + "'");
  const int64_t version = meta_int(f, "format_version");
  if (version != kRuntimeFormatVersion)
    throw ArtefactError("artefact format version " + std::to_string(version) + ", this runtime reads version " +
                        std::to_string(kRuntimeFormatVersion) + "; re-save it with a matching dyninfer");
  const int64_t plan_version = meta_int(f, "plan_version");
  if (plan_version != kPlanVersion)
    throw ArtefactError("plan version " + std::to_string(plan_version) + ", this runtime reads plan version " +
                        std::to_string(kPlanVersion) +
                        "; rebuild the engine from its checkpoint with this dyninfer and save it again");
  auto m = std::make_unique<RtModel>();
  const std::string gates = meta_str(f, "gates");
  if (gates != "learned" && gates != "open") throw ArtefactError("artefact 'gates' must be learned or open, got '" + gates + "'");
  m->open_gates = gates == "open";
  m->meta = int_vector(f, "plan.meta", 1u << 24);
  m->ops = int_vector(f, "plan.ops", 1u << 24);
  m->input_shape = int_vector(f, "plan.input_shape", 3);
  m->output_shape = int_vector(f, "plan.output_shape", 8);
  m->gate_sizes = int_vector(f, "plan.gate_sizes", 1u << 16);
  if (m->input_shape.size() != 3) throw ArtefactError("artefact tensor 'plan.input_shape' must hold C, H, W");
  m->conv_names = split_lines(meta_str(f, "conv_names"));
  m->gate_names = split_lines(meta_str(f, "gate_names"));
  if (m->gate_names.size() != m->gate_sizes.size())
    throw ArtefactError("artefact has " + std::to_string(m->gate_names.size()) + " gate names and " +
                        std::to_string(m->gate_sizes.size()) + " gate sizes");
  const int64_t n_weights = meta_int(f, "weight_count");
  if (n_weights > (1 << 20)) throw ArtefactError("artefact weight_count " + std::to_string(n_weights) + " is too large");
  if (static_cast<size_t>(n_weights) + 5 != f.tensors.size())
    throw ArtefactError("artefact holds " + std::to_string(f.tensors.size()) + " tensors, expected 5 plan tensors and " +
                        std::to_string(n_weights) + " weights");
  std::vector<const StTensor*> ws;
  size_t total = 0;
  for (int64_t i = 0; i < n_weights; ++i) {
    ws.push_back(&tensor(f, weight_name(i), "F32"));
    total += (static_cast<size_t>(ws.back()->numel()) + 15) & ~size_t(15);
  }
  // Weights go into the arena once (safetensors data need not be 4-byte aligned); the digest reads them there.
  const size_t arena_bytes = ((total > 0 ? total : 1) * sizeof(float) + 63) & ~size_t(63);  // a multiple of the alignment
  m->arena.reset(static_cast<float*>(std::aligned_alloc(64, arena_bytes)));
  if (!m->arena) throw std::bad_alloc();
  std::vector<WeightRef> refs;
  size_t off = 0;
  for (const StTensor* t : ws) {
    float* dst = m->arena.get() + off;
    if (t->nbytes) std::memcpy(dst, t->data, t->nbytes);
    refs.push_back({dst, t->numel()});
    m->weight_shapes.push_back(t->shape);
    off += (static_cast<size_t>(t->numel()) + 15) & ~size_t(15);
  }
  m->digest = meta_str(f, "digest");
  if (verify) {
    DigestInput d{m->meta, m->ops, {}, m->conv_names, m->open_gates, m->input_shape, m->output_shape,
                  m->gate_names, m->gate_sizes};
    for (size_t i = 0; i < refs.size(); ++i) d.weights.push_back({refs[i].data, m->weight_shapes[i]});
    const std::string got = plan_digest(d);
    if (got != m->digest)
      throw ArtefactError("artefact digest mismatch (stored " + m->digest.substr(0, 16) + "..., computed " +
                          got.substr(0, 16) + "...): the file is corrupt or was modified");
  }
  m->plan = std::make_unique<Plan>(m->meta, m->ops, std::move(refs), m->conv_names, detect_isa());
  // precision: optional (artefacts before it are fp32); the weights stay the fp32 ones above, a bf16
  // engine repacks them from those (deterministically), and a CPU without bf16 runs fp32.
  auto prec = f.metadata.find("precision");
  m->requested_precision = prec == f.metadata.end() ? "fp32" : prec->second;
  if (m->requested_precision != "fp32" && m->requested_precision != "bf16")
    throw ArtefactError("artefact 'precision' must be fp32 or bf16, got '" + m->requested_precision + "'");
  if (m->requested_precision != "fp32" && precision_supported(*m->plan, m->requested_precision))
    m->plan->set_precision(m->requested_precision);
  const Buffer& in = m->plan->input_buffer();
  if (in.C != m->input_shape[0] || in.H != m->input_shape[1] || in.W != m->input_shape[2])
    throw ArtefactError("artefact input_shape does not match the plan's input buffer");
  int64_t out_numel = 1, path = 0;
  for (int64_t s : m->output_shape) {
    if (s < 1 || s > (1 << 24) || out_numel > (int64_t(1) << 40) / s)  // no overflow on the product
      throw ArtefactError("artefact output_shape has a bad dimension " + std::to_string(s));
    out_numel *= s;
  }
  for (int64_t s : m->gate_sizes) {
    if (s < 0 || s > (1 << 24)) throw ArtefactError("artefact gate size " + std::to_string(s) + " out of range");
    path += s;  // at most 2^16 gates (int_vector's limit) of at most 2^24: no overflow
  }
  if (out_numel != m->plan->output_numel())
    throw ArtefactError("artefact output_shape does not match the plan's output buffer");
  if (path != m->plan->path_len()) throw ArtefactError("artefact gate_sizes do not add up to the plan's path length");
  return m;
}

bool precision_supported(const Plan& plan, const std::string& precision) {
  return plan.supports(precision);
}

std::unique_ptr<RtModel> load_artefact_file(const std::string& path, bool verify) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ArtefactError(path + ": cannot open the artefact");
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  try {
    return load_artefact(bytes.data(), bytes.size(), verify);
  } catch (const ArtefactError& e) {
    throw ArtefactError(path + ": " + e.what());
  } catch (const PlanError& e) {
    throw PlanError(path + ": " + e.what());
  }
}

void run_model(const RtModel& m, const float* x, int64_t batch, float* logits, float* path, int threads) {
  if (batch < 0) throw std::invalid_argument("dyninfer runtime: negative batch");
  if (batch == 0) return;
  if (x == nullptr || logits == nullptr) throw std::invalid_argument("dyninfer runtime: null input or output");
  if (!all_finite(x, batch * m.input_numel()))
    throw std::invalid_argument("dyninfer runtime: input contains NaN or Inf values");
#ifdef _OPENMP
  const int nt = threads > 0 ? threads : omp_get_max_threads();
#else
  const int nt = 1;  // without OpenMP the parallel region below would run its first chunk only
  (void)threads;
#endif
  ParallelFor pfor;
  if (nt > 1) {
    pfor = [nt](int64_t begin, int64_t end, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
      const int64_t n = end - begin;
      const int t = static_cast<int>(std::min<int64_t>(nt, n));
      if (t <= 1) {
        fn(begin, end);
        return;
      }
      std::exception_ptr err;
      std::mutex mu;
#pragma omp parallel num_threads(t)
      {
        const int i = omp_get_thread_num();
        const int64_t lo = begin + n * i / t, hi = begin + n * (i + 1) / t;
        try {
          if (lo < hi) fn(lo, hi);
        } catch (...) {
          std::lock_guard<std::mutex> lk(mu);
          if (!err) err = std::current_exception();
        }
      }
      if (err) std::rethrow_exception(err);
    };
  }
  m.plan->run(x, batch, logits, path, m.open_gates, pfor);
}

}  // namespace dyninfer
