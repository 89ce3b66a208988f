// sha256 of a compiled plan and its artefact fields, the one implementation dyninfer.deploy
// (through dyninfer._C.plan_digest) and examples/cpp both call. Torch-free.
//
// Byte layout: every item is a tag (UTF-8, NUL-terminated) followed by int64 little-endian counts
// and values; weights add their shape and float32 little-endian data; strings are an int64 byte
// length and UTF-8 bytes. Items in order: meta, ops, weights, conv_names, open_gates, input_shape,
// output_shape, gate_names, gate_sizes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dyninfer {

struct DigestWeight {
  const float* data = nullptr;
  std::vector<int64_t> shape;  // numel = product of shape
};

struct DigestInput {
  std::vector<int64_t> meta, ops;
  std::vector<DigestWeight> weights;
  std::vector<std::string> conv_names;
  bool open_gates = false;
  std::vector<int64_t> input_shape, output_shape;
  std::vector<std::string> gate_names;
  std::vector<int64_t> gate_sizes;
};

// Lower-case hex sha256 of `in` in the layout above.
std::string plan_digest(const DigestInput& in);

}  // namespace dyninfer
