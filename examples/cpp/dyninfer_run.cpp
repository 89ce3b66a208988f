// Runs a dyninfer runtime artefact (engine.save(path), format 2) from C++ with libdyninfer_rt and its
// header-only wrapper csrc/runtime/dyninfer_rt.hpp: no torch, no Python.
//
//   dyninfer_run_cpp MODEL                       load and verify, run one all-zero sample, print a summary
//   dyninfer_run_cpp MODEL INPUT.f32 BATCH OUT   run BATCH samples read as raw float32 (B, C, H, W);
//                                                write OUT.logits.f32 and OUT.path.f32 (raw float32)
//
// Exit status 0 on success, 2 with a one-line message on stderr for a bad artefact or input.
#include <dyninfer_rt.hpp>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

namespace {

std::vector<float> read_input(const std::string& file, int64_t batch, int64_t per_sample) {
  std::ifstream f(file, std::ios::binary);
  if (!f) throw dyninfer::rt::Error("cannot open the input file " + file);
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const size_t want = static_cast<size_t>(batch * per_sample) * sizeof(float);
  if (bytes.size() != want)
    throw dyninfer::rt::Error(file + " has " + std::to_string(bytes.size()) + " bytes, expected " +
                              std::to_string(want) + " for " + std::to_string(batch) + " samples of " +
                              std::to_string(per_sample) + " float32");
  std::vector<float> x(static_cast<size_t>(batch * per_sample));
  std::copy(bytes.begin(), bytes.end(), reinterpret_cast<char*>(x.data()));
  return x;
}

void write_output(const std::string& file, const std::vector<float>& v) {
  std::ofstream f(file, std::ios::binary);
  f.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(float)));
  if (!f) throw dyninfer::rt::Error("cannot write " + file);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2 && argc != 5) {
    std::cerr << "usage: " << argv[0] << " MODEL [INPUT.f32 BATCH OUT_PREFIX]\n";
    return 2;
  }
  try {
    const auto model = dyninfer::rt::Model::load_file(argv[1]);
    int64_t batch = 1;
    std::vector<float> x;
    if (argc == 5) {
      try {
        size_t used = 0;
        batch = std::stoll(argv[3], &used);
        if (used != std::string(argv[3]).size() || batch < 1 || batch > 1000000) throw std::invalid_argument("");
      } catch (const std::exception&) {
        throw dyninfer::rt::Error(std::string("BATCH must be a positive integer, got '") + argv[3] + "'");
      }
      x = read_input(argv[2], batch, model.input_numel());
    } else {
      x.assign(static_cast<size_t>(model.input_numel()), 0.f);
    }
    const dyninfer::rt::Result r = model.run(x.data(), batch, /*return_path=*/true);
    if (argc == 5) {
      write_output(std::string(argv[4]) + ".logits.f32", r.logits);
      write_output(std::string(argv[4]) + ".path.f32", r.path);
    }
    const auto s = model.input_shape();
    const int64_t n_out = model.output_numel(), n_path = model.path_len();
    std::cout << "model " << argv[1] << ": input " << s[0] << " x " << s[1] << " x " << s[2] << ", " << n_out
              << " logits, " << n_path << " gated channels, isa " << dyninfer::rt::Model::isa() << ", sha256 "
              << model.digest().substr(0, 16) << "...\npredictions:";
    for (int64_t b = 0; b < batch; ++b) {
      const auto first = r.logits.begin() + b * n_out;
      std::cout << ' ' << std::distance(first, std::max_element(first, first + n_out));
    }
    std::cout << '\n';
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "dyninfer_run_cpp: " << e.what() << '\n';
    return 2;
  }
}
