/* Caps the instruction set every library in this process sees at AVX2 + FMA (no AVX-512, no AMX,
 * no AVX-VNNI), so that dyninfer and its dense peers (PyTorch/oneDNN, ONNX Runtime/MLAS,
 * OpenVINO) are all measured on equal terms as on an AVX2 machine such as AMD Zen 3.
 *
 * How: Linux CPUID faulting (arch_prctl ARCH_SET_CPUID, CPU flag "cpuid_fault"): after
 * dyninfer_cap_avx2() every CPUID instruction of this process traps; the SIGSEGV handler runs
 * the real CPUID with faulting briefly off, clears the feature bits above and resumes after the
 * instruction. Libraries that probe the CPU after the cap (import them after calling it) pick
 * their AVX2 kernels. Benchmark tooling only: not part of the dyninfer library. */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

static struct sigaction previous;

static long set_cpuid(unsigned long on) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, on); }

static void on_segv(int sig, siginfo_t* info, void* vctx) {
  ucontext_t* uc = (ucontext_t*)vctx;
  greg_t* g = uc->uc_mcontext.gregs;
  const unsigned char* ip = (const unsigned char*)g[REG_RIP];
  if (ip[0] != 0x0f || ip[1] != 0xa2) {  /* not CPUID: hand over to whoever handled SIGSEGV before */
    if (previous.sa_flags & SA_SIGINFO) {
      previous.sa_sigaction(sig, info, vctx);
    } else if (previous.sa_handler != SIG_IGN && previous.sa_handler != SIG_DFL) {
      previous.sa_handler(sig);
    } else {
      signal(SIGSEGV, SIG_DFL); /* re-executes the faulting instruction and dies as it would have */
    }
    return;
  }
  const unsigned leaf = (unsigned)g[REG_RAX], sub = (unsigned)g[REG_RCX];
  unsigned a, b, c, d;
  set_cpuid(1);
  __cpuid_count(leaf, sub, a, b, c, d);
  set_cpuid(0);
  if (leaf == 7 && sub == 0) {
    /* EBX: AVX512F 16, DQ 17, IFMA 21, PF 26, ER 27, CD 28, BW 30, VL 31 */
    b &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31));
    /* ECX: VBMI 1, VBMI2 6, VNNI 11, BITALG 12, VPOPCNTDQ 14 */
    c &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
    /* EDX: 4VNNIW 2, 4FMAPS 3, VP2INTERSECT 8, AMX-BF16 22, AVX512-FP16 23, AMX-TILE 24, AMX-INT8 25 */
    d &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25));
  } else if (leaf == 7 && sub == 1) {
    /* EAX: AVX-VNNI 4, AVX512-BF16 5, AMX-FP16 21, AVX-IFMA 23 */
    a &= ~((1u << 4) | (1u << 5) | (1u << 21) | (1u << 23));
  } else if (leaf == 0xd && sub == 0) {
    /* XSAVE state components: opmask 5, ZMM_Hi256 6, Hi16_ZMM 7, AMX 17-18 */
    a &= ~((1u << 5) | (1u << 6) | (1u << 7) | (1u << 17) | (1u << 18));
  }
  g[REG_RAX] = a;
  g[REG_RBX] = b;
  g[REG_RCX] = c;
  g[REG_RDX] = d;
  g[REG_RIP] += 2;
}

/* 0 on success; -1 when the kernel or CPU has no CPUID faulting (nothing is changed then). */
int dyninfer_cap_avx2(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGSEGV, &sa, &previous) != 0) return -1;
  if (set_cpuid(0) != 0) {
    sigaction(SIGSEGV, &previous, NULL);
    return -1;
  }
  return 0;
}
