// The one CPU-feature dispatch site for the conv kernels.
#include "conv.h"

namespace dyninfer {

double fma_peak_avx2(int64_t iters);
double fma_peak_portable(int64_t iters);

int conv_vector_width(Isa) { return 8; }

void conv_run(Isa isa, const ConvCall& call) {
  switch (isa) {
    case Isa::kAvx512:
    case Isa::kAvx2: conv_run_avx2(call); return;
    default: conv_run_portable(call); return;
  }
}

double fma_peak_probe(Isa isa, int64_t iters) {
  switch (isa) {
    case Isa::kAvx512:
    case Isa::kAvx2: return fma_peak_avx2(iters);
    default: return fma_peak_portable(iters);
  }
}

}  // namespace dyninfer
