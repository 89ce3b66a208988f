// A strict reader of the safetensors container (8-byte little-endian header length, a JSON header,
// then the raw tensor bytes). Torch-free; used by the runtime's artefact loader.
//
// Only what a safetensors header can hold is accepted: one JSON object whose values are either
// {"dtype": str, "shape": [int...], "data_offsets": [begin, end]} or, under "__metadata__", an
// object of string values. Every offset is checked against the data section and against the dtype
// and shape; a malformed file raises ArtefactError naming the tensor and the field.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace dyninfer {

struct ArtefactError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct StTensor {
  std::string dtype;           // "F32", "I64", ...
  std::vector<int64_t> shape;  // numel = product (1 for a scalar)
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  int64_t numel() const;
};

struct StFile {
  std::map<std::string, StTensor> tensors;
  std::map<std::string, std::string> metadata;
};

// Parses `n` bytes at `bytes`; tensors point into `bytes`, which must outlive the result.
StFile parse_safetensors(const uint8_t* bytes, size_t n);

}  // namespace dyninfer
