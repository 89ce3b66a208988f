// libFuzzer target for the runtime's artefact loader (csrc/runtime: safetensors container, format
// and version checks, plan construction and validation) and one run of what it accepts.
//
// Input: the bytes of an artefact file (format 2). The digest check is skipped (verify = false),
// as a crafted file would simply carry a matching digest; every structural check still runs. A
// file the loader refuses must throw ArtefactError or PlanError; an accepted one runs one
// all-zero sample. Anything else (a crash, a sanitizer report, another exception type) is a
// finding. Seeds: fuzz/make_corpus.py --artefacts writes artefacts of small models.
#include <cstdint>
#include <new>
#include <vector>

#include "runtime/runtime.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::unique_ptr<dyninfer::RtModel> m;
  try {
    m = dyninfer::load_artefact(data, size, /*verify=*/false);
  } catch (const dyninfer::ArtefactError&) {
    return 0;
  } catch (const dyninfer::PlanError&) {
    return 0;
  }
  const int64_t in = m->input_numel(), out = m->output_numel(), path = m->path_len();
  if (in > (1 << 22) || out > (1 << 22) || path > (1 << 22)) return 0;  // valid but too big to run here
  std::vector<float> x(static_cast<size_t>(in)), logits(static_cast<size_t>(out)), p(static_cast<size_t>(path));
  try {
    dyninfer::run_model(*m, x.data(), 1, logits.data(), p.data(), 1);
  } catch (const dyninfer::PlanError&) {
  } catch (const std::bad_alloc&) {
  }
  return 0;
}
