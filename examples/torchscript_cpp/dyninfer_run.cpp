// Loads a dyninfer TorchScript artefact (format 1, written by engine.save(path, format="torchscript") in Python) with libtorch, verifies it the way
// dyninfer.load does (format version, shapes, sha256 of the plan) and runs it.
//
//   dyninfer_run MODEL.dyninfer                         verify, run one all-zero sample, print a summary
//   dyninfer_run MODEL.dyninfer INPUT.f32 BATCH OUT     run BATCH samples read as raw float32 (B, C, H, W),
//                                                       write OUT.logits.f32 and OUT.path.f32 (raw float32)
//
// Exit status 0 on success, 2 with a one-line message on stderr for a bad artefact or input.
#include <caffe2/serialize/inline_container.h>
#include <kernels/digest.h>
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

  // sha256 over the plan state and the shape fields: dyninfer's own plan_digest (kernels/digest.h).
  const auto state = e.module.run_method("plan_state").toTuple();
  dyninfer::DigestInput in;
  in.meta = int_list(state->elements()[0]);
  in.ops = int_list(state->elements()[1]);
  std::vector<at::Tensor> weights;
  for (const auto& w0 : state->elements()[2].toTensorVector()) {
    if (w0.scalar_type() != at::kFloat) throw Failure("a plan weight is not float32");
    weights.push_back(w0.contiguous());
    in.weights.push_back({weights.back().data_ptr<float>(), weights.back().sizes().vec()});
  }
  in.conv_names = str_list(state->elements()[3]);
  in.open_gates = e.open_gates;
  in.input_shape = e.input_shape;
  in.output_shape = e.output_shape;
  in.gate_names = str_list(e.module.attr("gate_names"));
  in.gate_sizes = e.gate_sizes;
  const std::string digest = dyninfer::plan_digest(in), recorded = json_field(json, "sha256");
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
