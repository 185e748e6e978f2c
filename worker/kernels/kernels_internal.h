/* Private to lbk: the CPUID dispatch every public kernel asks, and the target attributes its
 * AVX-512 and AVX2 variants are compiled with. */
#ifndef LAYERBANK_KERNELS_INTERNAL_H
#define LAYERBANK_KERNELS_INTERNAL_H

#include "kernels.h"

/* AVX-512 F+DQ+BW+VL (and the FMA/AVX2 they imply) for one function, whatever -march says. */
#define LBK_TARGET_AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")))

/* AVX2 and FMA (Haswell and later, Zen): the tier below AVX-512. */
#define LBK_TARGET_AVX2 __attribute__((target("avx2,fma")))

/* Nonzero when the AVX-512 variants may run: the CPU has them and no test forced them off. */
static inline int lbk_use_avx512(void)
{
	return lbk_isa() >= LBK_ISA_AVX512;
}

#endif
