// The C API of libdyninfer_rt (dyninfer_rt.h) over runtime.h. No exception crosses it.
#include "dyninfer_rt.h"

#include <exception>
#include <new>
#include <string>

#include "runtime.h"

struct dyninfer_model {
  std::unique_ptr<dyninfer::RtModel> m;
};

namespace {

thread_local std::string g_error;

template <class F>
auto guarded(F&& f, decltype(f()) on_error) -> decltype(f()) {
  try {
    g_error.clear();
    return f();
  } catch (const std::bad_alloc&) {
    g_error = "dyninfer: out of memory";
  } catch (const std::exception& e) {
    g_error = e.what();
  } catch (...) {
    g_error = "dyninfer: unknown error";
  }
  return on_error;
}

}  // namespace

extern "C" {

dyninfer_model* dyninfer_load_file(const char* path, int verify) {
  return guarded(
      [&]() -> dyninfer_model* {
        if (!path) throw std::invalid_argument("dyninfer_load_file: path is NULL");
        return new dyninfer_model{dyninfer::load_artefact_file(path, verify != 0)};
      },
      nullptr);
}

dyninfer_model* dyninfer_load_bytes(const void* data, size_t size, int verify) {
  return guarded(
      [&]() -> dyninfer_model* {
        if (!data && size) throw std::invalid_argument("dyninfer_load_bytes: data is NULL");
        return new dyninfer_model{dyninfer::load_artefact(static_cast<const uint8_t*>(data), size, verify != 0)};
      },
      nullptr);
}

void dyninfer_free(dyninfer_model* model) { delete model; }

int dyninfer_input_shape(const dyninfer_model* model, int64_t shape[3]) {
  return guarded(
      [&]() -> int {
        if (!model || !shape) throw std::invalid_argument("dyninfer_input_shape: NULL argument");
        for (int i = 0; i < 3; ++i) shape[i] = model->m->input_shape[i];
        return 0;
      },
      1);
}

int64_t dyninfer_output_numel(const dyninfer_model* model) { return model ? model->m->output_numel() : -1; }
int64_t dyninfer_path_len(const dyninfer_model* model) { return model ? model->m->path_len() : -1; }
const char* dyninfer_digest(const dyninfer_model* model) { return model ? model->m->digest.c_str() : ""; }
const char* dyninfer_isa(void) { return dyninfer::isa_name(dyninfer::detect_isa()); }
const char* dyninfer_precision(const dyninfer_model* model) {
  return model ? model->m->plan->precision().c_str() : "";
}

int dyninfer_set_precision(dyninfer_model* model, const char* precision) {
  return guarded(
      [&]() -> int {
        if (!model || !precision) throw std::invalid_argument("dyninfer_set_precision: NULL argument");
        model->m->plan->set_precision(precision);  // PlanError names the missing CPU feature
        return 0;
      },
      1);
}

int dyninfer_run(const dyninfer_model* model, const float* x, int64_t batch, float* logits, float* path,
                 int threads) {
  return guarded(
      [&]() -> int {
        if (!model) throw std::invalid_argument("dyninfer_run: model is NULL");
        dyninfer::run_model(*model->m, x, batch, logits, path, threads);
        return 0;
      },
      1);
}

const char* dyninfer_last_error(void) { return g_error.c_str(); }

}  // extern "C"
