// Run-time CPU feature probe: the one dispatch site turns it into a kernel choice.
#pragma once

namespace dyninfer {

enum class Isa : int { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };

// Best instruction set this CPU supports among those compiled in.
Isa detect_isa();
const char* isa_name(Isa isa);
// False when DYNINFER_NO_ASM=1: plans built afterwards run the intrinsics loops instead of the
// hand-allocated assembly tiles (same sums; tests compare the two).
bool asm_kernels_enabled();
// False when DYNINFER_WINOGRAD=0: plans built afterwards run every 3x3 conv directly (bit-for-bit
// the direct kernels' sums) instead of through Winograd F(2x2, 3x3) where that pays.
bool winograd_enabled();

}  // namespace dyninfer
