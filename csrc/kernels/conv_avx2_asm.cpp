// Hand-allocated AVX2 micro-kernels for the hot case: 3x3 stride-1 direct conv, M <= 3 output
// channels x 4 vectors of 8 pixels. conv_impl.h `micro` computes the same sums in the same order;
// this is that loop with every register fixed.
//
// Why assembly: with 16 ymm registers the tile needs all of them (12 accumulators, 3 broadcast
// weights, 1 input vector). GCC's allocator rotates accumulators through dying registers and
// then spills all 12 to the stack on every back edge of the tap-row loop — 24 extra memory
// operations per 36 FMAs. Here the accumulators stay in ymm0-11 for the whole input-channel loop.
//
// Registers: rdi args; r8 r9 r10 r11 the four input-vector pointers of the current channel; rcx
// the padded row stride in bytes; rsi the in_real cursor; rax the current channel's weight
// offset (36 * in_real bytes); rbx rdx r12 the weight rows of output channels 0-2; ymm12-14 the
// broadcast weights of a tap; ymm15 the input vector.
#if defined(__x86_64__)
#include <cstddef>

#include "conv_avx2_asm.h"

namespace dyninfer {
namespace avx2 {
static_assert(offsetof(AsmArgs, in) == 0 && offsetof(AsmArgs, off) == 8 && offsetof(AsmArgs, rs) == 40 &&
                  offsetof(AsmArgs, cstride) == 48 && offsetof(AsmArgs, in_real) == 56 &&
                  offsetof(AsmArgs, in_real_end) == 64 && offsetof(AsmArgs, w) == 72 && offsetof(AsmArgs, acc) == 96,
              "the assembly below hard-codes these offsets");
}  // namespace avx2
}  // namespace dyninfer

// Broadcast tap t of the M weight rows.
#define DI_B1(t) "vbroadcastss " #t "*4(%rbx,%rax),%ymm12\n\t"
#define DI_B2(t) DI_B1(t) "vbroadcastss " #t "*4(%rdx,%rax),%ymm13\n\t"
#define DI_B3(t) DI_B2(t) "vbroadcastss " #t "*4(%r12,%rax),%ymm14\n\t"
// The M FMAs of one input vector into accumulators a0 (channel 0), a1, a2.
#define DI_F1(a0, a1, a2) "vfmadd231ps %ymm15,%ymm12,%ymm" #a0 "\n\t"
#define DI_F2(a0, a1, a2) DI_F1(a0, a1, a2) "vfmadd231ps %ymm15,%ymm13,%ymm" #a1 "\n\t"
#define DI_F3(a0, a1, a2) DI_F2(a0, a1, a2) "vfmadd231ps %ymm15,%ymm14,%ymm" #a2 "\n\t"
#define DI_LD(Q, d, IDX) "vmovups " #d "(" Q IDX "),%ymm15\n\t"
// Tap t = 3*ky + kx: input displacement d = 4*kx bytes, IDX picks row ky ("", ",%rcx,1", ",%rcx,2").
#define DI_TAP(M, t, d, IDX)                                                                   \
  DI_B##M(t) DI_LD("%r8", d, IDX) DI_F##M(0, 4, 8) DI_LD("%r9", d, IDX) DI_F##M(1, 5, 9)        \
      DI_LD("%r10", d, IDX) DI_F##M(2, 6, 10) DI_LD("%r11", d, IDX) DI_F##M(3, 7, 11)
// Column-buffer tap (3x3 convs through im2col, strided): tap kx of the current row group is the
// kx-th tap plane, IDX = "", ",%rcx,1", ",%rcx,2" with rcx the tap plane size in bytes.
#define DI_TAPC(M, t, IDX)                                                                            \
  DI_B##M(t) DI_LD("%r8", 0, IDX) DI_F##M(0, 4, 8) DI_LD("%r9", 0, IDX) DI_F##M(1, 5, 9)              \
      DI_LD("%r10", 0, IDX) DI_F##M(2, 6, 10) DI_LD("%r11", 0, IDX) DI_F##M(3, 7, 11)
// Next row group: three tap planes on (cstride holds 3 tap planes for the column kernels).
#define DI_NEXT_ROWS "add 48(%rdi),%r8\n\tadd 48(%rdi),%r9\n\tadd 48(%rdi),%r10\n\tadd 48(%rdi),%r11\n\t"
#define DI_ST(r) "vmovups %ymm" #r "," #r "*32(%rax)\n\t"
#define DI_ST1 DI_ST(0) DI_ST(1) DI_ST(2) DI_ST(3)
#define DI_ST2 DI_ST1 DI_ST(4) DI_ST(5) DI_ST(6) DI_ST(7)
#define DI_ST3 DI_ST2 DI_ST(8) DI_ST(9) DI_ST(10) DI_ST(11)
#define DI_Z(r) "vxorps %ymm" #r ",%ymm" #r ",%ymm" #r "\n\t"

// void <NAME>(const AsmArgs* a); requires a->in_real < a->in_real_end. BODY: the taps of one
// input channel, leaving r8-r11 on its planes (DI_DIRECT) or on the next channel's (DI_COLUMNS).
#define DI_KERNEL(NAME, M, BODY)                                                                             \
  asm(".text\n\t"                                                                                            \
      ".p2align 6\n\t"                                                                                       \
      ".globl " #NAME "\n\t"                                                                                 \
      ".hidden " #NAME "\n\t"                                                                                \
      ".type " #NAME ",@function\n"                                                                          \
      #NAME ":\n\t"                                                                                          \
      "push %rbx\n\tpush %r12\n\t"                                                                           \
      "mov 0(%rdi),%rax\n\t"                                                                                 \
      "mov 8(%rdi),%r8\n\tadd %rax,%r8\n\t"                                                                  \
      "mov 16(%rdi),%r9\n\tadd %rax,%r9\n\t"                                                                 \
      "mov 24(%rdi),%r10\n\tadd %rax,%r10\n\t"                                                               \
      "mov 32(%rdi),%r11\n\tadd %rax,%r11\n\t"                                                               \
      "mov 40(%rdi),%rcx\n\t"                                                                                \
      "mov 56(%rdi),%rsi\n\t"                                                                                \
      "mov 72(%rdi),%rbx\n\tmov 80(%rdi),%rdx\n\tmov 88(%rdi),%r12\n\t"                                    \
      DI_Z(0) DI_Z(1) DI_Z(2) DI_Z(3) DI_Z(4) DI_Z(5) DI_Z(6) DI_Z(7) DI_Z(8) DI_Z(9) DI_Z(10) DI_Z(11)       \
      ".p2align 5\n"                                                                                         \
      "1:\n\t"                                                                                               \
      "movslq (%rsi),%rax\n\t"                                                                               \
      "lea (%rax,%rax,8),%rax\n\t"                                                                           \
      "shl $2,%rax\n\t"                                                                                      \
      BODY(M)                                                                                                \
      "add $4,%rsi\n\t"                                                                                      \
      "cmp 64(%rdi),%rsi\n\t"                                                                                \
      "jne 1b\n\t"                                                                                           \
      "mov 96(%rdi),%rax\n\t"                                                                                \
      DI_ST##M                                                                                               \
      "pop %r12\n\tpop %rbx\n\t"                                                                             \
      "ret\n\t"                                                                                              \
      ".size " #NAME ", .-" #NAME "\n\t"                                                                     \
      ".previous\n");

// Direct: rows ky at rcx*ky bytes, taps kx at 4*kx bytes, then the next channel (cstride).
#define DI_DIRECT(M)                                                                                \
  DI_TAP(M, 0, 0, "") DI_TAP(M, 1, 4, "") DI_TAP(M, 2, 8, "")                                        \
  DI_TAP(M, 3, 0, ",%rcx,1") DI_TAP(M, 4, 4, ",%rcx,1") DI_TAP(M, 5, 8, ",%rcx,1")                   \
  DI_TAP(M, 6, 0, ",%rcx,2") DI_TAP(M, 7, 4, ",%rcx,2") DI_TAP(M, 8, 8, ",%rcx,2")                   \
  "add 48(%rdi),%r8\n\tadd 48(%rdi),%r9\n\tadd 48(%rdi),%r10\n\tadd 48(%rdi),%r11\n\t"
// Columns: nine consecutive tap planes of rcx bytes per channel, in three row groups.
#define DI_COLUMNS(M)                                                                               \
  DI_TAPC(M, 0, "") DI_TAPC(M, 1, ",%rcx,1") DI_TAPC(M, 2, ",%rcx,2") DI_NEXT_ROWS                  \
  DI_TAPC(M, 3, "") DI_TAPC(M, 4, ",%rcx,1") DI_TAPC(M, 5, ",%rcx,2") DI_NEXT_ROWS                  \
  DI_TAPC(M, 6, "") DI_TAPC(M, 7, ",%rcx,1") DI_TAPC(M, 8, ",%rcx,2") DI_NEXT_ROWS

DI_KERNEL(dyninfer_avx2_c3x3_m1x4, 1, DI_DIRECT)
DI_KERNEL(dyninfer_avx2_c3x3_m2x4, 2, DI_DIRECT)
DI_KERNEL(dyninfer_avx2_c3x3_m3x4, 3, DI_DIRECT)
DI_KERNEL(dyninfer_avx2_col9_m1x4, 1, DI_COLUMNS)
DI_KERNEL(dyninfer_avx2_col9_m2x4, 2, DI_COLUMNS)
DI_KERNEL(dyninfer_avx2_col9_m3x4, 3, DI_COLUMNS)

#endif
