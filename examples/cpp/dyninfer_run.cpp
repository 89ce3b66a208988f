// Loads a dyninfer artefact (written by engine.save() in Python) with libtorch, verifies it the way
// dyninfer.load does (format version, shapes, sha256 of the plan) and runs it.
//
//   dyninfer_run MODEL.dyninfer                         verify, run one all-zero sample, print a summary
//   dyninfer_run MODEL.dyninfer INPUT.f32 BATCH OUT     run BATCH samples read as raw float32 (B, C, H, W),
//                                                       write OUT.logits.f32 and OUT.path.f32 (raw float32)
//
// Exit status 0 on success, 2 with a one-line message on stderr for a bad artefact or input.
#include <caffe2/serialize/inline_container.h>
#include <torch/script.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---- SHA-256 (FIPS 180-4), enough for dyninfer.deploy.plan_digest ----------------------------
class Sha256 {
 public:
  void update(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    total_ += n;
    while (n > 0) {
      const size_t take = std::min(n, 64 - fill_);
      std::memcpy(block_ + fill_, p, take);
      fill_ += take, p += take, n -= take;
      if (fill_ == 64) compress(), fill_ = 0;
    }
  }
  std::string hex() {
    const uint64_t bits = total_ * 8;
    const uint8_t pad = 0x80, zero = 0;
    update(&pad, 1);
    while (fill_ != 56) update(&zero, 1);
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(bits >> (56 - 8 * i));
    update(len, 8);
    std::ostringstream out;
    for (uint32_t v : h_)
      for (int s = 24; s >= 0; s -= 8) out << "0123456789abcdef"[(v >> (s + 4)) & 15] << "0123456789abcdef"[(v >> s) & 15];
    return out.str();
  }

 private:
  static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }
  void compress() {
    static const uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
        0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
        0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
        0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
        0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
        0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2};
    uint32_t w[64];
    for (int i = 0; i < 16; ++i)
      w[i] = uint32_t(block_[4 * i]) << 24 | uint32_t(block_[4 * i + 1]) << 16 | uint32_t(block_[4 * i + 2]) << 8 |
             block_[4 * i + 3];
    for (int i = 16; i < 64; ++i) {
      const uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      const uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h_[0], b = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6], h = h_[7];
    for (int i = 0; i < 64; ++i) {
      const uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      const uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    const uint32_t add[8] = {a, b, c, d, e, f, g, h};
    for (int i = 0; i < 8; ++i) h_[i] += add[i];
  }
  std::array<uint32_t, 8> h_{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                             0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  uint8_t block_[64];
  size_t fill_ = 0;
  uint64_t total_ = 0;
};

// The byte layout of dyninfer.deploy.plan_digest (little-endian host assumed, as x86-64 is).
struct Digest {
  Sha256 sha;
  void tag(const std::string& name) { sha.update(name.c_str(), name.size() + 1); }
  void i64(int64_t v) { sha.update(&v, 8); }
  void ints(const std::string& name, const std::vector<int64_t>& v) {
    tag(name);
    i64(static_cast<int64_t>(v.size()));
    for (int64_t x : v) i64(x);
  }
  void strings(const std::string& name, const std::vector<std::string>& v) {
    tag(name);
    i64(static_cast<int64_t>(v.size()));
    for (const auto& s : v) i64(static_cast<int64_t>(s.size())), sha.update(s.data(), s.size());
  }
};

std::vector<int64_t> int_list(const c10::IValue& v) { return v.toIntVector(); }
std::vector<std::string> str_list(const c10::IValue& v) {
  std::vector<std::string> out;
  for (const auto& s : v.toListRef()) out.push_back(s.toStringRef());
  return out;
}

std::string json_field(const std::string& json, const std::string& key) {
  // The metadata is flat JSON written by json.dumps(sort_keys=True): "key": value
  std::smatch m;
  const std::regex re("\"" + key + "\"\\s*:\\s*(\"[^\"]*\"|-?[0-9]+)");
  if (!std::regex_search(json, m, re)) throw Failure("not a dyninfer artefact: extra/dyninfer.json has no '" + key + "'");
  std::string v = m[1];
  return v.front() == '"' ? v.substr(1, v.size() - 2) : v;
}

struct Engine {
  torch::jit::script::Module module;
  std::vector<int64_t> input_shape, output_shape, gate_sizes;
  bool open_gates = false;
};

// extra/dyninfer.json straight from the zip, before TorchScript deserialises anything (which
// would build the plan): the format and its version are checked first.
std::string read_metadata(const std::string& path) {
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    if (!reader.hasRecord("extra/dyninfer.json")) throw Failure("not a dyninfer artefact: no extra/dyninfer.json");
    auto record = reader.getRecord("extra/dyninfer.json");
    return std::string(static_cast<const char*>(std::get<0>(record).get()), std::get<1>(record));
  } catch (const c10::Error& err) {
    throw Failure(std::string("truncated, corrupt or not a dyninfer artefact: ") + err.what_without_backtrace());
  }
}

Engine load_verified(const std::string& path) {
  std::ifstream probe(path, std::ios::binary);
  if (!probe) throw Failure("cannot open the artefact");
  const std::string json = read_metadata(path);
  if (json.empty()) throw Failure("not a dyninfer artefact: extra/dyninfer.json is empty");
  if (json_field(json, "format") != "dyninfer-engine") throw Failure("metadata 'format' is not dyninfer-engine");
  if (json_field(json, "format_version") != "1")
    throw Failure("artefact format version " + json_field(json, "format_version") + ", this program reads version 1");
  torch::jit::ExtraFilesMap extra{{"dyninfer.json", ""}};
  Engine e;
  try {
    e.module = torch::jit::load(path, torch::kCPU, extra);
  } catch (const c10::Error& err) {
    throw Failure(std::string("truncated, corrupt or not a dyninfer artefact: ") + err.what_without_backtrace());
  }
  if (extra["dyninfer.json"] != json) throw Failure("extra/dyninfer.json changed while loading");
  e.open_gates = e.module.attr("open_gates").toBool();
  e.input_shape = int_list(e.module.attr("input_shape"));
  e.output_shape = int_list(e.module.attr("output_shape"));
  e.gate_sizes = int_list(e.module.attr("gate_sizes"));
  if (e.input_shape.size() != 3) throw Failure("module attribute 'input_shape' is not (C, H, W)");

  // sha256 over the plan state and the shape fields, exactly as dyninfer.deploy.plan_digest.
  const auto state = e.module.run_method("plan_state").toTuple();
  Digest d;
  d.ints("meta", int_list(state->elements()[0]));
  d.ints("ops", int_list(state->elements()[1]));
  const auto weights = state->elements()[2].toTensorVector();
  d.tag("weights");
  d.i64(static_cast<int64_t>(weights.size()));
  for (const auto& w0 : weights) {
    const at::Tensor w = w0.contiguous();
    if (w.scalar_type() != at::kFloat) throw Failure("a plan weight is not float32");
    d.ints("shape", w.sizes().vec());
    d.sha.update(w.data_ptr<float>(), static_cast<size_t>(w.numel()) * sizeof(float));
  }
  d.strings("conv_names", str_list(state->elements()[3]));
  d.ints("open_gates", {e.open_gates ? 1 : 0});
  d.ints("input_shape", e.input_shape);
  d.ints("output_shape", e.output_shape);
  d.strings("gate_names", str_list(e.module.attr("gate_names")));
  d.ints("gate_sizes", e.gate_sizes);
  const std::string digest = d.sha.hex(), recorded = json_field(json, "sha256");
  if (digest != recorded)
    throw Failure("corrupt or modified: sha256 of the plan is " + digest.substr(0, 16) + "..., the metadata records " +
                  recorded.substr(0, 16) + "...");
  return e;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2 && argc != 5) {
    std::cerr << "usage: " << argv[0] << " MODEL.dyninfer [INPUT.f32 BATCH OUT_PREFIX]\n";
    return 2;
  }
  const std::string path = argv[1];
  try {
    torch::NoGradGuard no_grad;
    Engine e = load_verified(path);
    const auto& s = e.input_shape;
    const int64_t per_sample = s[0] * s[1] * s[2];
    int64_t batch = 1;
    at::Tensor x = torch::zeros({1, s[0], s[1], s[2]});
    if (argc == 5) {
      batch = std::stoll(argv[3]);
      if (batch <= 0) throw Failure("BATCH must be positive");
      std::ifstream in(argv[2], std::ios::binary | std::ios::ate);
      if (!in) throw Failure(std::string("cannot open input ") + argv[2]);
      const int64_t bytes = in.tellg();
      if (bytes != batch * per_sample * 4)
        throw Failure(std::string("input ") + argv[2] + " has " + std::to_string(bytes) + " bytes, expected " +
                      std::to_string(batch * per_sample * 4) + " for (" + std::to_string(batch) + ", " +
                      std::to_string(s[0]) + ", " + std::to_string(s[1]) + ", " + std::to_string(s[2]) + ") float32");
      x = torch::empty({batch, s[0], s[1], s[2]});
      in.seekg(0);
      in.read(reinterpret_cast<char*>(x.data_ptr<float>()), bytes);
    }
    const auto out = e.module.run_method("run", x, true).toTuple();
    const at::Tensor logits = out->elements()[0].toTensor().contiguous();
    const at::Tensor path_z = out->elements()[1].toTensor().contiguous();
    std::cout << "artefact " << path << ": verified (format 1, sha256 ok), gates "
              << (e.open_gates ? "open" : "learned") << ", input " << s[0] << "x" << s[1] << "x" << s[2] << ", "
              << e.gate_sizes.size() << " gated layers\n";
    std::cout << "batch " << batch << ": logits " << logits.sizes() << ", path " << path_z.sizes()
              << ", mean kept fraction " << (path_z.numel() ? path_z.mean().item<double>() : 1.0) << "\n";
    std::cout << "predictions:";
    const at::Tensor pred = logits.reshape({batch, -1}).argmax(1);
    for (int64_t i = 0; i < batch; ++i) std::cout << " " << pred[i].item<int64_t>();
    std::cout << "\n";
    if (argc == 5) {
      const std::string prefix = argv[4];
      for (const auto& [suffix, t] : {std::pair<std::string, at::Tensor>{".logits.f32", logits}, {".path.f32", path_z}}) {
        std::ofstream f(prefix + suffix, std::ios::binary);
        f.write(reinterpret_cast<const char*>(t.data_ptr<float>()), t.numel() * 4);
        if (!f) throw Failure("cannot write " + prefix + suffix);
      }
    }
  } catch (const Failure& err) {
    std::cerr << "dyninfer_run: " << path << ": " << err.what() << "\n";
    return 2;
  } catch (const c10::Error& err) {
    std::cerr << "dyninfer_run: " << path << ": " << err.what_without_backtrace() << "\n";
    return 2;
  } catch (const std::exception& err) {
    std::cerr << "dyninfer_run: " << path << ": " << err.what() << "\n";
    return 2;
  }
  return 0;
}
