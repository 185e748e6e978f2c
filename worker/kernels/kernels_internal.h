/* Private to lbk: the CPUID dispatch every public kernel asks, the target attributes its
 * AVX-512 and AVX2 variants are compiled with, and the GEMMs' panel threads. */
#ifndef LAYERBANK_KERNELS_INTERNAL_H
#define LAYERBANK_KERNELS_INTERNAL_H

#include "kernels.h"

/* AVX-512 F+DQ+BW+VL (and the FMA/AVX2 they imply) for one function, whatever -march says. */
#define LBK_TARGET_AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")))

/* AVX2 and FMA (Haswell and later, Zen): the tier below AVX-512. */
#define LBK_TARGET_AVX2 __attribute__((target("avx2,fma")))

/* The AVX-512 tier plus AVX512_BF16 (vdpbf16ps, vcvtne2ps2bf16), for the bf16 GEMM. */
#define LBK_TARGET_AVX512_BF16                                                                 \
	__attribute__((target("avx512bf16,avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")))

/* Nonzero when the AVX-512 variants may run: the CPU has them and no test forced them off. */
static inline int lbk_use_avx512(void)
{
	return lbk_isa() >= LBK_ISA_AVX512;
}

/*
 * Runs fn(op, p0, p1) over panels [0, panels) split into contiguous ranges, one per thread, on
 * up to threads threads (the caller's own among them; the persistent pool of gemm.c, or threads
 * made for the call when another call holds it). Returns when every range is done.
 */
typedef void lbk_panel_fn(const void *op, int64_t p0, int64_t p1);
void lbk_run_panels(lbk_panel_fn *fn, const void *op, int64_t panels, int threads);

#endif
