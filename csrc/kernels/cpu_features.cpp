#include "cpu_features.h"

#include <cstdlib>
#include <cstring>

namespace dyninfer {

Isa detect_isa() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  // DYNINFER_ISA=portable|avx2|avx512 caps the choice (tests use it to compare paths).
  const char* cap = std::getenv("DYNINFER_ISA");
  int limit = 2;
  if (cap != nullptr) {
    if (std::strcmp(cap, "portable") == 0) limit = 0;
    else if (std::strcmp(cap, "avx2") == 0) limit = 1;
  }
  // The AVX-512 kernels also use VL (ymm with 32 registers, masked ymm) and DQ instructions.
  if (limit >= 2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma"))
    return Isa::kAvx512;
  if (limit >= 1 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kPortable;
}

bool asm_kernels_enabled() {
  const char* e = std::getenv("DYNINFER_NO_ASM");
  return !(e != nullptr && *e != '\0' && std::strcmp(e, "0") != 0);
}

bool winograd_enabled() {
  const char* e = std::getenv("DYNINFER_WINOGRAD");
  return !(e != nullptr && std::strcmp(e, "0") == 0);
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "portable";
  }
}

}  // namespace dyninfer
