// Plan execution: the workspace pool and the interpreter that runs a built plan sample by sample
// (gates, then only the kept channels of each conv). Construction lives in plan_build.cpp.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>

#include "conv.h"
#include "plan.h"
#include "plan_internal.h"

namespace dyninfer {

using namespace plan_detail;

bool all_finite(const float* x, int64_t n) {
  // x*0 is 0 for finite x and NaN for NaN/Inf, so one vectorisable reduction tells.
  float probe = 0.f;
#pragma omp simd reduction(+ : probe)
  for (int64_t i = 0; i < n; ++i) probe += x[i] * 0.f;
  return probe == 0.f;
}

void Plan::set_profiling(bool on) const {
  std::lock_guard<std::mutex> lk(pool_mu_);
  profiling_ = on;
  std::fill(op_ns_.begin(), op_ns_.end(), 0.0);
}

std::vector<double> Plan::op_times_ns() const {
  std::lock_guard<std::mutex> lk(pool_mu_);
  return op_ns_;
}

std::unique_ptr<Workspace> Plan::acquire() const {
  {
    std::lock_guard<std::mutex> lk(pool_mu_);
    if (!pool_.empty()) {
      auto ws = std::move(pool_.back());
      pool_.pop_back();
      return ws;
    }
  }
  auto ws = std::make_unique<Workspace>();
  // Slots (and the column buffer) start at staggered offsets modulo 4 KiB: large allocations are
  // page aligned, and a conv reading one slot while writing another at the same page offset pays
  // 4K-aliasing stalls on its loads (measured ~2x on im2col).
  std::vector<float*> slot_ptr;
  for (size_t k = 0; k < slot_floats_.size(); ++k) {
    const int64_t shift = static_cast<int64_t>((k * 5 + 1) % 16) * 64;  // floats: 256-byte steps
    ws->slots.push_back(alloc_zeroed(slot_floats_[k] + shift));
    slot_ptr.push_back(ws->slots.back().get() + shift);
  }
  for (const Buffer& b : buffers_) {
    ws->buf_data.push_back(slot_ptr[b.slot]);
    ws->active.emplace_back();
    ws->active.back().reserve(b.C);
    ws->sums.emplace_back(b.C, 0.f);
  }
  ws->sums_valid.assign(buffers_.size(), 0);
  for (int n : gate_sizes_) {
    ws->kept.emplace_back();
    ws->kept.back().reserve(n);
    ws->scale.emplace_back(n, 1.f);
  }
  ws->col_raw = alloc_zeroed((col_floats_ > 0 ? col_floats_ : 16) + 512);
  ws->col = ws->col_raw.get() + 8 * 64 + 32;
  const int mc = max_channels_ + 8;
  ws->vsums_raw = alloc_zeroed(static_cast<int64_t>(mc) * 16);
  ws->vsums = ws->vsums_raw.get();
  ws->out_real.resize(mc);
  ws->group_start.resize(mc);
  ws->group_size.resize(mc);
  ws->tmp.resize(mc);
  ws->tmp2.resize(mc);
  ws->in_local.resize(mc);
  ws->lin_x.resize(max_linear_in_ + 16);
  ws->lin_k.resize(max_linear_in_ + 16);
  ws->lin_acc.resize(max_linear_out_ + 16);
  ws->out_plane.resize(mc);
  ws->res_plane.resize(mc);
  ws->gvec.resize(mc);
  ws->hidden.resize(std::max(mc, max_hidden_ + 8));
  ws->glog.resize(mc);
  return ws;
}

void Plan::release(std::unique_ptr<Workspace> ws) const {
  std::lock_guard<std::mutex> lk(pool_mu_);
  pool_.push_back(std::move(ws));
}

// ---------------------------------------------------------------------------------------------
// Execution

struct Executor {
  const Plan& P;
  Workspace& ws;
  const ParallelFor* pfor;  // non-null: split conv channel groups across threads (batch 1)
  bool open;

  float* plane(int b, int pos) const { return ws.buf_data[b] + pos * P.buffers_[b].plane; }
  float* interior(int b, int pos) const {
    const Buffer& B = P.buffers_[b];
    return plane(b, pos) + static_cast<int64_t>(B.B) * B.Wp + B.B;
  }

  void channel_sums(int b) {
    if (ws.sums_valid[b]) return;
    const Buffer& B = P.buffers_[b];
    auto& s = ws.sums[b];
    std::fill(s.begin(), s.end(), 0.f);
    const auto& act = ws.active[b];
    for (size_t i = 0; i < act.size(); ++i) {
      const float* p = interior(b, static_cast<int>(i));
      double acc = 0;
      for (int y = 0; y < B.H; ++y)
        for (int x = 0; x < B.W; ++x) acc += p[y * B.Wp + x];
      s[act[i]] = static_cast<float>(acc);
    }
    ws.sums_valid[b] = 1;
  }

  void set_input(const float* x) {
    const int b = P.input_;
    const Buffer& B = P.buffers_[b];
    auto& act = ws.active[b];
    act.resize(B.C);
    for (int c = 0; c < B.C; ++c) {
      act[c] = c;
      float* dst = interior(b, c);
      const float* src = x + static_cast<int64_t>(c) * B.H * B.W;
      for (int y = 0; y < B.H; ++y) std::memcpy(dst + y * B.Wp, src + y * B.W, sizeof(float) * B.W);
    }
  }

  void gate(const GateOp& g, float* path) {
    auto& kept = ws.kept[g.gate];
    kept.clear();
    if (open) {
      for (int n = 0; n < g.N; ++n) kept.push_back(n);
    } else {
      const float* lg = squeeze(g.in, g.w1, g.b1, g.hidden, 1, g.w2, g.b2, g.N);
      if (g.force_k >= 0) {
        auto& idx = ws.tmp;
        for (int n = 0; n < g.N; ++n) idx[n] = n;
        std::partial_sort(idx.begin(), idx.begin() + g.force_k, idx.begin() + g.N, [&](int a, int b) {
          return lg[a] > lg[b] || (lg[a] == lg[b] && a < b);
        });
        kept.assign(idx.begin(), idx.begin() + g.force_k);
        std::sort(kept.begin(), kept.end());
      } else {
        for (int n = 0; n < g.N; ++n)
          if (lg[n] > 0.f) kept.push_back(n);
      }
      if (g.boost) {
        float* s = ws.scale[g.gate].data();
        for (int n : kept) s[n] = 2.f / (1.f + std::exp(-lg[n]));
      }
    }
    if (path) {
      float* z = path + P.gate_path_off_[g.gate];
      std::fill(z, z + g.N, 0.f);
      for (int n : kept) z[n] = 1.f;
    }
  }

  void conv(int ci) {
    const ConvOp& c = P.convs_[ci];
    const Buffer &bi = P.buffers_[c.in], &bo = P.buffers_[c.out];
    const auto& in_act = ws.active[c.in];
    const int n_in = static_cast<int>(in_act.size());
    // Kept output channels (sorted) and the output's active list (∪ residual's).
    const std::vector<int32_t>* keptp = nullptr;
    std::vector<int32_t>& all = ws.tmp;
    if (c.gate >= 0 && !open) {
      keptp = &ws.kept[c.gate];
    } else if (c.follow) {
      keptp = &in_act;  // depthwise: output channel c exists where input channel c does
    } else {
      all.resize(c.O);
      std::iota(all.begin(), all.end(), 0);
      keptp = &all;
    }
    const auto& kept = *keptp;
    auto& out_act = ws.active[c.out];
    out_act.clear();
    auto& sums = ws.sums[c.out];
    std::fill(sums.begin(), sums.end(), 0.f);
    int nk = 0;
    const std::vector<int32_t>* res_act = c.res >= 0 ? &ws.active[c.res] : nullptr;
    const size_t nr = res_act ? res_act->size() : 0;
    if (c.inplace) {
      // The output lives in the residual's memory. Residual planes move (back to front) to their
      // positions in the merged list; kept channels not in the residual get the freed positions.
      auto& pos = ws.tmp2;
      pos.resize(nr);
      size_t i = 0, j = 0;
      while (i < kept.size() || j < nr) {
        const int a = i < kept.size() ? kept[i] : INT32_MAX;
        const int r = j < nr ? (*res_act)[j] : INT32_MAX;
        if (r <= a) pos[j++] = static_cast<int32_t>(out_act.size());
        if (a <= r) ++i;
        out_act.push_back(std::min(a, r));
      }
      const int64_t plane_floats = bo.plane;
      for (size_t q = nr; q-- > 0;)
        if (pos[q] != static_cast<int32_t>(q))
          std::memcpy(plane(c.out, pos[q]), plane(c.out, static_cast<int>(q)), sizeof(float) * plane_floats);
      const auto& rsums = ws.sums[c.res];
      const bool rsums_ok = ws.sums_valid[c.res];
      const bool rnonneg = P.buffers_[c.res].nonneg;
      i = 0;
      j = 0;
      while (i < kept.size() || j < nr) {
        const int a = i < kept.size() ? kept[i] : INT32_MAX;
        const int r = j < nr ? (*res_act)[j] : INT32_MAX;
        if (a <= r) {
          ws.out_real[nk] = a;
          ++nk;
          ++i;
          if (a == r) ++j;
        } else {
          float* d = interior(c.out, pos[j]);
          if (c.act == 1 && !rnonneg) {
            sums[r] = plane_copy(P.isa_, d, bo.Wp, d, bo.Wp, bo.H, bo.W, true);
          } else if (rsums_ok) {
            sums[r] = rsums[r];
          } else {
            sums[r] = plane_copy(P.isa_, d, bo.Wp, d, bo.Wp, bo.H, bo.W, false);
          }
          ++j;
        }
      }
      // Planes of the computed channels: walk the merged list once more.
      {
        size_t k = 0, jj = 0;
        for (size_t p = 0; p < out_act.size(); ++p) {
          const int ch = out_act[p];
          const bool in_res = jj < nr && (*res_act)[jj] == ch;
          const bool computed = k < static_cast<size_t>(nk) && ws.out_real[k] == ch;
          if (computed) {
            ws.out_plane[k] = plane(c.out, static_cast<int>(p));
            ws.res_plane[k] = in_res ? plane(c.out, static_cast<int>(p)) : nullptr;
            ++k;
          }
          if (in_res) ++jj;
        }
      }
    } else {
      size_t i = 0, j = 0;
      while (i < kept.size() || j < nr) {
        const int a = i < kept.size() ? kept[i] : INT32_MAX;
        const int r = j < nr ? (*res_act)[j] : INT32_MAX;
        const int pos = static_cast<int>(out_act.size());
        if (a <= r) {
          out_act.push_back(a);
          ws.out_real[nk] = a;
          ws.out_plane[nk] = plane(c.out, pos);
          ws.res_plane[nk] = (a == r) ? plane(c.res, static_cast<int>(j)) : nullptr;
          ++nk;
          ++i;
          if (a == r) ++j;
        } else {
          // Channel only in the residual: out = relu?(res).
          out_act.push_back(r);
          const Buffer& br = P.buffers_[c.res];
          sums[r] = plane_copy(P.isa_, interior(c.res, static_cast<int>(j)), br.Wp, interior(c.out, pos), bo.Wp,
                               bo.H, bo.W, c.act == 1);
          ++j;
        }
      }
    }
    ws.sums_valid[c.out] = 1;
    if (nk == 0) return;
    // Channel groups of near-equal size up to the kernel's register-tile height.
    const int ng = conv_make_groups(nk, c.max_group, ws.group_start.data(), ws.group_size.data());
    ConvCall call;
    call.n_in = n_in;
    call.in_real = in_act.data();
    call.w = c.w;
    call.w_ostride = static_cast<int64_t>(c.I / c.groups) * c.kh * c.kw;
    call.n_vec = static_cast<int>(c.out_off.size());
    call.in_off = c.in_off.data();
    call.out_off = c.out_off.data();
    call.res_off = c.res >= 0 ? c.res_off.data() : nullptr;
    call.lanes = c.lanes.data();
    call.out_real = ws.out_real.data();
    call.out_plane = ws.out_plane.data();
    call.res_plane = c.res >= 0 ? ws.res_plane.data() : nullptr;
    call.bias = c.bias;
    call.act = c.act;
    call.act_lo = c.act_lo;
    call.act_hi = c.act_hi;
    if (c.gate >= 0 && !open && P.gate_boost_[c.gate]) {
      call.scale = ws.scale[c.gate].data();
      call.scale_first = c.res >= 0;
    }
    call.sums = sums.data();
    call.vsums = ws.vsums;
    call.group_start = ws.group_start.data();
    call.group_size = ws.group_size.data();
    call.vw = c.vw;
    call.stride2 = c.stride2;
    call.use_asm = P.asm_;
    call.pairs = c.pairs;
    call.out_wp = bo.Wp;
    call.prefetch_next = static_cast<int64_t>(nk) * bo.plane * static_cast<int64_t>(sizeof(float)) >= kPrefetchOutputMinBytes;
    call.res_wp = c.res >= 0 ? P.buffers_[c.res].Wp : 0;
    if (c.direct) {
      call.in = ws.buf_data[c.in];
      call.cstride = bi.plane;
      call.kh = c.kh;
      call.kw = c.kw;
      call.rs = bi.Wp;
    } else {
      const int64_t tap = static_cast<int64_t>(bo.H) * c.col_rows;
      call.cstride = tap * c.kh * c.kw;
      call.kh = c.kh * c.kw;
      call.kw = 1;
      call.rs = tap;
    }
    if (!c.wino_u.empty() && wino_pays(n_in, nk, bo.H, bo.W))  // in bf16 too, where wino_u16 is packed
      return winograd(c, call, in_act, nk, work_macs(c, n_in, nk));
    if (!c.bf16_w.empty()) return conv_bf16(c, call, in_act, ng, work_macs(c, n_in, nk));
    if (c.groups > 1) return grouped(c, call, in_act, nk);
    if (!c.direct) {
      im2col(c, n_in, 0);
      call.in = ws.col;
    }
    // Split channel groups across threads only when the conv is big enough to repay the fork/join
    // (about 1 µs): splitting every conv made the gated ResNet-56 at batch 1 slower on 2 threads
    // than on 1.
    const int64_t work = work_macs(c, n_in, nk);
    if (pfor && ng > 1 && work >= kParallelMinMacs) {
      (*pfor)(0, ng, 1, [&](int64_t g0, int64_t g1) {
        ConvCall part = call;
        part.g_begin = static_cast<int>(g0);
        part.g_end = static_cast<int>(g1);
        conv_run(P.isa_, part);
      });
    } else {
      call.g_begin = 0;
      call.g_end = ng;
      conv_run(P.isa_, call);
    }
  }

  // bf16 (Plan::set_precision): the live inputs (or, for a column-buffer conv, their columns)
  // rounded into pair planes (channels 2r and 2r+1 of the real numbering in one 32-bit lane; a pair
  // with one live channel gets 0 in the other half), then the kernels over the live pairs with the
  // packed weights.
  // The live pairs of the (sorted) live inputs: ws.pair_r their indices r, ws.pair_a / pair_b the
  // compact planes of channels 2r and 2r+1 (-1: dead, the half gets 0). Returns their count.
  int live_pairs(const std::vector<int32_t>& in_act) {
    const int n_in = static_cast<int>(in_act.size());
    auto &pa = ws.pair_a, &pb = ws.pair_b, &pr = ws.pair_r;
    pa.clear();
    pb.clear();
    pr.clear();
    for (int j = 0; j < n_in; ++j) {
      const int32_t ch = in_act[j];
      const bool both = (ch % 2 == 0) && j + 1 < n_in && in_act[j + 1] == ch + 1;
      pr.push_back(ch / 2);
      pa.push_back(ch % 2 == 0 ? j : -1);
      pb.push_back(both ? j + 1 : (ch % 2 == 1 ? j : -1));
      if (both) ++j;
    }
    return static_cast<int>(pr.size());
  }

  float* bf16_scratch(int64_t need) {
    if (ws.bf16_floats < need) {
      const int64_t n = std::max(need, P.bf16_floats_);
      ws.bf16_raw = plan_detail::alloc_zeroed(n);
      ws.bf16_floats = n;
    }
    return ws.bf16_raw.get();
  }

  void conv_bf16(const ConvOp& c, ConvCall call, const std::vector<int32_t>& in_act, int ng, int64_t work) {
    const Buffer& bi = P.buffers_[c.in];
    const int n_in = static_cast<int>(in_act.size());
    const int np = live_pairs(in_act);
    auto &pa = ws.pair_a, &pb = ws.pair_b, &pr = ws.pair_r;
    const float* src = ws.buf_data[c.in];
    int64_t plane = bi.plane;
    if (!c.direct) {  // column buffer: call.cstride floats per input channel (its taps' planes)
      im2col(c, n_in, 0);
      src = ws.col;
      plane = call.cstride;
    }
    float* pairs = bf16_scratch(static_cast<int64_t>(np) * plane + 64);
    bf16_pack_pairs(src, plane, pa.data(), pb.data(), np, plane, plane, pairs);
    call.in = pairs;
    call.n_in = np;
    call.in_real = pr.data();
    call.w = reinterpret_cast<const float*>(c.bf16_w.data());
    call.w_ostride = static_cast<int64_t>((c.I + 1) / 2) * c.kh * c.kw;
    call.use_asm = false;
    if (pfor && ng > 1 && work >= kParallelMinMacs) {
      (*pfor)(0, ng, 1, [&](int64_t g0, int64_t g1) {
        ConvCall part = call;
        part.g_begin = static_cast<int>(g0);
        part.g_end = static_cast<int>(g1);
        conv_run_bf16(part);
      });
    } else {
      call.g_begin = 0;
      call.g_end = ng;
      conv_run_bf16(call);
    }
  }

  int64_t work_macs(const ConvOp& c, int n_in, int nk) const {
    const Buffer& bo = P.buffers_[c.out];
    return static_cast<int64_t>(nk) * n_in * c.kh * c.kw * bo.H * bo.W;
  }

  // Winograd F(2x2, 3x3) (conv.h): the input transform over the live inputs, the 16 GEMMs, the output
  // transform with the direct path's epilogue; each phase split across threads when the conv is big
  // enough, as the direct path splits its channel groups. V and M live in the column buffer, which a
  // direct conv does not use.
  //
  // In bf16 (wino_u16 packed) the input transform runs in fp32 over live channel pairs and writes V
  // as bf16 pair planes, the GEMMs run vdpbf16ps on the packed U, and the output transform reads
  // the fp32 M as before.
  void winograd(const ConvOp& c, const ConvCall& call, const std::vector<int32_t>& in_act, int nk, int64_t work) {
    const Buffer &bi = P.buffers_[c.in], &bo = P.buffers_[c.out];
    WinoCall w;
    w.in = ws.buf_data[c.in];
    w.cstride = bi.plane;
    w.in_wp = bi.Wp;
    w.in_hp = bi.Hp;
    w.in_b = bi.B;
    w.H = bo.H;
    w.W = bo.W;
    w.n_in = call.n_in;
    w.in_real = call.in_real;
    w.u = c.wino_u.data();
    w.u_o = c.O;
    w.u_i = c.I;
    w.n_out = nk;
    w.out_real = call.out_real;
    w.out_plane = call.out_plane;
    w.out_wp = bo.Wp;
    w.out_b = bo.B;
    if (c.res >= 0) {
      w.res_plane = call.res_plane;
      w.res_wp = P.buffers_[c.res].Wp;
      w.res_b = P.buffers_[c.res].B;
    }
    w.bias = call.bias;
    w.act = call.act;
    w.act_lo = call.act_lo;
    w.act_hi = call.act_hi;
    w.scale = call.scale;
    w.scale_first = call.scale_first;
    w.sums = call.sums;
    w.v = ws.col;
    const bool bf16 = !c.wino_u16.empty();
    WinoCall w16 = w;  // bf16: V as pair planes (and M after them) in the bf16 scratch
    if (bf16) {
      const int np = live_pairs(in_act);
      w16.v = bf16_scratch(wino_scratch_floats(w.H, w.W, np, nk, 16) + 64);
      w16.n_in = np;
      w16.in_real = ws.pair_r.data();
      w16.u = reinterpret_cast<const float*>(c.wino_u16.data());
      w16.u_i = (c.I + 1) / 2;
      phase_run(np, work, [&](int b, int e) {
        conv_winograd_input_bf16(w16, ws.pair_a.data(), ws.pair_b.data(), b, e);
      });
      phase_run(16, work, [&](int b, int e) { conv_winograd_gemm_bf16(w16, b, e); });
      phase_run(nk, work, [&](int b, int e) { conv_winograd(P.isa_, w16, 2, b, e); });
      return;
    }
    const int counts[3] = {w.n_in, 16, nk};
    for (int phase = 0; phase < 3; ++phase)
      phase_run(counts[phase], work, [&](int b, int e) { conv_winograd(P.isa_, w, phase, b, e); });
  }

  // fn(begin, end) over [0, n): split across threads when the conv is big enough.
  template <class F>
  void phase_run(int n, int64_t work, F&& fn) {
    if (pfor && work >= kParallelMinMacs) {
      (*pfor)(0, n, 1, [&](int64_t b, int64_t e) { fn(static_cast<int>(b), static_cast<int>(e)); });
    } else {
      fn(0, n);
    }
  }

  // A grouped conv, one group at a time: the group's live inputs are a run of the (sorted) compact
  // input planes and its computed outputs a run of the computed channels. A group with no live
  // input still computes its kept outputs (bias, then the activation), as PyTorch does for zeros.
  void grouped(const ConvOp& c, const ConvCall& call, const std::vector<int32_t>& in_act, int nk) {
    const Buffer& bi = P.buffers_[c.in];
    const int ig = c.I / c.groups, og = c.O / c.groups;
    auto& loc = ws.in_local;
    size_t ip = 0;
    int k = 0;
    for (int g = 0; g < c.groups && k < nk; ++g) {
      const int k0 = k;
      while (k < nk && ws.out_real[k] < (g + 1) * og) ++k;
      const size_t i0 = ip;
      while (ip < in_act.size() && in_act[ip] < (g + 1) * ig) ++ip;
      if (k == k0) continue;
      const int n = static_cast<int>(ip - i0);
      for (int i = 0; i < n; ++i) loc[i] = in_act[i0 + i] - g * ig;  // weight column within the group
      ConvCall part = call;
      part.n_in = n;
      part.in_real = loc.data();
      part.out_real = ws.out_real.data() + k0;
      part.out_plane = ws.out_plane.data() + k0;
      part.res_plane = call.res_plane ? ws.res_plane.data() + k0 : nullptr;
      part.use_asm = call.use_asm && n > 0;
      part.g_begin = 0;
      part.g_end = conv_make_groups(k - k0, c.max_group, ws.group_start.data(), ws.group_size.data());
      if (c.direct) {
        part.in = ws.buf_data[c.in] + static_cast<int64_t>(i0) * bi.plane;
      } else {
        im2col(c, n, static_cast<int>(i0));
        part.in = ws.col;
      }
      conv_run(P.isa_, part);
    }
  }

  void im2col(const ConvOp& c, int n_in, int first) {
    // col[c][ky][kx][y][x'] (rows padded to col_rows) from the padded input planes first, ...
    const Buffer &bi = P.buffers_[c.in], &bo = P.buffers_[c.out];
    Im2colCall a;
    a.in = ws.buf_data[c.in] + static_cast<int64_t>(first) * bi.plane;
    a.plane = bi.plane;
    a.border = bi.B;
    a.hi = bi.H;
    a.wi = bi.W;
    a.wp = bi.Wp;
    a.n_in = n_in;
    a.kh = c.kh;
    a.kw = c.kw;
    a.sh = c.sh;
    a.sw = c.sw;
    a.ph = c.ph;
    a.pw = c.pw;
    a.dh = c.dh;
    a.dw = c.dw;
    a.ho = bo.H;
    a.wo = bo.W;
    a.col_rows = c.col_rows;
    a.col = ws.col;
    conv_im2col(P.isa_, a);
  }

  void pool(const PoolOp& p) {
    const Buffer &bi = P.buffers_[p.in], &bo = P.buffers_[p.out];
    ws.active[p.out] = ws.active[p.in];
    ws.sums_valid[p.out] = 0;
    if (!p.max && ws.sums_valid[p.in] && bo.H == 1 && bo.W == 1 && p.kh == bi.H && p.kw == bi.W && p.ph == 0 &&
        p.pw == 0 && (p.divisor <= 0 || p.divisor == bi.H * bi.W)) {
      // Global average pooling of planes whose channel sums the producing conv's epilogue already
      // took: one division per live channel instead of a pass over the planes.
      const float inv = 1.0f / static_cast<float>(bi.H * bi.W);
      const auto& act = ws.active[p.in];
      const auto& s = ws.sums[p.in];
      for (size_t i = 0; i < act.size(); ++i) *interior(p.out, static_cast<int>(i)) = s[act[i]] * inv;
      return;
    }
    PoolCall pc;
    pc.in = interior(p.in, 0);
    pc.in_cstride = bi.plane;
    pc.in_wp = bi.Wp;
    pc.out = interior(p.out, 0);
    pc.out_cstride = bo.plane;
    pc.out_wp = bo.Wp;
    pc.n = static_cast<int>(ws.active[p.in].size());
    pc.kh = p.kh;
    pc.kw = p.kw;
    pc.sh = p.sh;
    pc.sw = p.sw;
    pc.ph = p.ph;
    pc.pw = p.pw;
    pc.ho = bo.H;
    pc.wo = bo.W;
    pc.hi = bi.H;
    pc.wi = bi.W;
    pc.border = bi.B;
    pc.max = p.max;
    pc.nonneg = bi.nonneg;
    pc.count_include_pad = p.count_include_pad;
    pc.divisor = p.divisor;
    dyninfer::pool(P.isa_, pc);  // the kernels choose vectors or the scalar loop
  }

  void linear(const LinearOp& l) {
    const Buffer &bi = P.buffers_[l.in], &bo = P.buffers_[l.out];
    const auto& act = ws.active[l.in];
    const int hw = bi.H * bi.W;
    auto& out_act = ws.active[l.out];
    out_act.resize(bo.C);
    ws.sums_valid[l.out] = 0;
    // The live input features in order (dead channels are zero and add nothing), then one pass
    // over the transposed weight for all outputs at once.
    float* xs = ws.lin_x.data();
    int32_t* ks = ws.lin_k.data();
    int n = 0;
    for (size_t i = 0; i < act.size(); ++i) {
      const float* src = interior(l.in, static_cast<int>(i));
      for (int y = 0; y < bi.H; ++y)
        for (int x = 0; x < bi.W; ++x) {
          xs[n] = src[y * bi.Wp + x];
          ks[n++] = act[i] * hw + y * bi.W + x;
        }
    }
    float* acc = ws.lin_acc.data();
    std::fill(acc, acc + l.out_features, 0.f);
    linear_acc(P.isa_, l.wt, l.out_features, xs, ks, n, acc);
    for (int o = 0; o < l.out_features; ++o) {
      float a = acc[o];
      if (l.b) a += l.b[o];
      if (l.act == 1) a = a > 0.f ? a : 0.f;
      if (l.act == 3) a = a * std::min(std::max(a + 3.f, 0.f), 6.f) / 6.f;
      out_act[o] = o;
      *interior(l.out, o) = a;
    }
  }

  void concat(const ConcatOp& c) {
    const Buffer& bo = P.buffers_[c.out];
    auto& out_act = ws.active[c.out];
    out_act.clear();
    bool sums_ok = true;
    for (size_t k = 0; k < c.ins.size(); ++k) {
      const int b = c.ins[k];
      const Buffer& bi = P.buffers_[b];
      const auto& act = ws.active[b];
      sums_ok = sums_ok && ws.sums_valid[b];
      for (size_t i = 0; i < act.size(); ++i) {
        const int pos = static_cast<int>(out_act.size());
        out_act.push_back(act[i] + c.offsets[k]);
        const float* s = interior(b, static_cast<int>(i));
        float* d = interior(c.out, pos);
        for (int y = 0; y < bo.H; ++y) std::memcpy(d + y * bo.Wp, s + y * bi.Wp, sizeof(float) * bo.W);
      }
    }
    if (sums_ok) {
      auto& s = ws.sums[c.out];
      for (size_t k = 0; k < c.ins.size(); ++k) {
        const auto& si = ws.sums[c.ins[k]];
        std::copy(si.begin(), si.end(), s.begin() + c.offsets[k]);
      }
    }
    ws.sums_valid[c.out] = sums_ok;
  }

  void add(const AddOp& a) {
    const Buffer& bo = P.buffers_[a.out];
    const auto &aa = ws.active[a.a], &ab = ws.active[a.b];
    auto& out_act = ws.active[a.out];
    out_act.clear();
    size_t i = 0, j = 0;
    while (i < aa.size() || j < ab.size()) {
      const int x = i < aa.size() ? aa[i] : INT32_MAX;
      const int y = j < ab.size() ? ab[j] : INT32_MAX;
      const int pos = static_cast<int>(out_act.size());
      const float* pa = x <= y ? interior(a.a, static_cast<int>(i)) : nullptr;
      const float* pb = y <= x ? interior(a.b, static_cast<int>(j)) : nullptr;
      const int wa = P.buffers_[a.a].Wp, wb = P.buffers_[a.b].Wp;
      add_planes(P.isa_, pa, wa, pb, wb, interior(a.out, pos), bo.Wp, bo.H, bo.W, a.relu);
      out_act.push_back(std::min(x, y));
      if (x <= y) ++i;
      if (y <= x) ++j;
    }
    ws.sums_valid[a.out] = 0;
  }

  void affine(const AffineOp& a) {
    const Buffer &bi = P.buffers_[a.in], &bo = P.buffers_[a.out];
    const auto& act = ws.active[a.in];
    auto& out_act = ws.active[a.out];
    out_act.clear();
    size_t i = 0;
    for (int c = 0; c < bo.C; ++c) {
      const bool live = i < act.size() && act[i] == c;
      float* d = interior(a.out, static_cast<int>(out_act.size()));
      if (!live) {
        float v = a.shift[c];
        if (a.relu) v = v > 0.f ? v : 0.f;
        if (v == 0.f) continue;  // stays inactive (exactly zero)
        affine_plane(P.isa_, nullptr, 0, 1.f, a.shift[c], d, bo.Wp, bo.H, bo.W, a.relu);
      } else {
        affine_plane(P.isa_, interior(a.in, static_cast<int>(i)), bi.Wp, a.scale[c], a.shift[c], d, bo.Wp, bo.H,
                     bo.W, a.relu);
        ++i;
      }
      out_act.push_back(c);
    }
    ws.sums_valid[a.out] = 0;
  }

  void shortcut(const ShortcutOp& s) {
    const Buffer &bi = P.buffers_[s.in], &bo = P.buffers_[s.out];
    const auto& act = ws.active[s.in];
    auto& out_act = ws.active[s.out];
    out_act.resize(act.size());
    for (size_t i = 0; i < act.size(); ++i) {
      out_act[i] = act[i] + s.pad;
      const float* src = interior(s.in, static_cast<int>(i));
      float* d = interior(s.out, static_cast<int>(i));
      if (s.stride == 2 && subsample2(P.isa_, src, bi.Wp, d, bo.Wp, bo.H, bo.W)) continue;
      for (int y = 0; y < bo.H; ++y)
        for (int x = 0; x < bo.W; ++x) d[y * bo.Wp + x] = src[(y * s.stride) * bi.Wp + x * s.stride];
    }
    ws.sums_valid[s.out] = 0;
  }

  // The squeeze both a gate and a squeeze-and-excitation op start with: GAP of buffer `in`'s live
  // channels (a dropped channel is zero and skipped) -> FC (w1, b1) -> act1 (1 ReLU, 2 SiLU) -> FC
  // (w2, b2); returns the n outputs (in ws.glog).
  const float* squeeze(int in, const float* w1, const float* b1, int hidden, int act1, const float* w2,
                       const float* b2, int n) {
    channel_sums(in);
    const Buffer& B = P.buffers_[in];
    const float inv = 1.0f / static_cast<float>(B.H * B.W);
    const auto& act = ws.active[in];
    const auto& s = ws.sums[in];
    float* sv = ws.gvec.data();
    for (int c : act) sv[c] = s[c] * inv;
    float* h = ws.hidden.data();
    gemv(P.isa_, w1, sv, act.data(), static_cast<int>(act.size()), b1, h, hidden, act1 == 1);
    if (act1 == 2)
      for (int j = 0; j < hidden; ++j) h[j] = h[j] / (1.f + std::exp(-h[j]));  // SiLU
    float* out = ws.glog.data();
    gemv(P.isa_, w2, h, nullptr, hidden, b2, out, n, false);
    return out;
  }

  // Squeeze-and-excitation: per-channel scales from the GAP of the live channels (dropped ones are
  // zero: they add nothing to fc1 and stay zero when scaled), then each live plane times its scale.
  void se(const SeOp& e) {
    const Buffer &bi = P.buffers_[e.in], &bo = P.buffers_[e.out];
    const float* g = squeeze(e.in, e.w1, e.b1, e.hidden, e.act1, e.w2, e.b2, e.C);
    const auto& act = ws.active[e.in];
    ws.active[e.out] = act;
    ws.sums_valid[e.out] = 0;
    for (size_t i = 0; i < act.size(); ++i) {
      const float v = g[act[i]];
      const float scale = e.gate_act == 0 ? std::min(std::max(v + 3.f, 0.f), 6.f) / 6.f : 1.f / (1.f + std::exp(-v));
      affine_plane(P.isa_, interior(e.in, static_cast<int>(i)), bi.Wp, scale, 0.f, interior(e.out, static_cast<int>(i)),
                   bo.Wp, bo.H, bo.W, false);
    }
  }

  void output(float* out) {
    const int b = P.output_;
    const Buffer& B = P.buffers_[b];
    const int64_t hw = static_cast<int64_t>(B.H) * B.W;
    std::fill(out, out + B.C * hw, 0.f);
    const auto& act = ws.active[b];
    for (size_t i = 0; i < act.size(); ++i) {
      const float* s = interior(b, static_cast<int>(i));
      float* d = out + act[i] * hw;
      for (int y = 0; y < B.H; ++y) std::memcpy(d + y * B.W, s + y * B.Wp, sizeof(float) * B.W);
    }
  }

  void dispatch(const Op& op, float* path) {
    switch (op.kind) {
      case kConv: conv(op.index); break;
      case kGate: gate(P.gates_[op.index], path); break;
      case kMaxPool:
      case kAvgPool: pool(P.pools_[op.index]); break;
      case kLinear: linear(P.linears_[op.index]); break;
      case kConcat: concat(P.concats_[op.index]); break;
      case kAdd: add(P.adds_[op.index]); break;
      case kAffine: affine(P.affines_[op.index]); break;
      case kShortcut: shortcut(P.shortcuts_[op.index]); break;
      case kSe: se(P.ses_[op.index]); break;
    }
  }

  void run_sample(const float* x, float* out, float* path) {
    std::fill(ws.sums_valid.begin(), ws.sums_valid.end(), 0);
    const bool prof = P.profiling_;
    auto t_prev = prof ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
    set_input(x);
    for (size_t i = 0; i < P.ops_.size(); ++i) {
      dispatch(P.ops_[i], path);
      if (prof) {
        const auto t = std::chrono::steady_clock::now();
        std::lock_guard<std::mutex> lk(P.pool_mu_);
        P.op_ns_[i] += std::chrono::duration<double, std::nano>(t - t_prev).count();
        t_prev = t;
      }
    }
    output(out);
  }
};

void Plan::run(const float* x, int64_t batch, float* logits, float* path, bool open_gates,
               const ParallelFor& pfor) const {
  const int64_t in_n = input_numel(), out_n = output_numel();
  auto one = [&](Workspace& ws, int64_t b, const ParallelFor* inner) {
    Executor ex{*this, ws, inner, open_gates};
    ex.run_sample(x + b * in_n, logits + b * out_n, path ? path + b * path_len_ : nullptr);
  };
  if (batch == 1 || !pfor) {
    auto ws = acquire();
    try {
      for (int64_t b = 0; b < batch; ++b) one(*ws, b, pfor ? &pfor : nullptr);
    } catch (...) {
      release(std::move(ws));
      throw;
    }
    release(std::move(ws));
    return;
  }
  pfor(0, batch, 1, [&](int64_t b0, int64_t b1) {
    auto ws = acquire();
    for (int64_t b = b0; b < b1; ++b) one(*ws, b, nullptr);
    release(std::move(ws));
  });
}

}  // namespace dyninfer
