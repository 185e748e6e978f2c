/* Private hooks of the fingerprint code (libclient/fingerprint.c) for its tests: run one code
 * path on purpose, so the test can compare the AVX-512 kernels with the scalar reference. */
#ifndef LAYERBANK_LIBCLIENT_FINGERPRINT_INTERNAL_H
#define LAYERBANK_LIBCLIENT_FINGERPRINT_INTERNAL_H

#include <stdint.h>

#include "layerbank/layerbank.h"

enum lbi_fp_path {
	LBI_FP_AUTO = 0,   /* what lb_fingerprint does: AVX-512 when the CPU has it */
	LBI_FP_SCALAR = 1, /* plain C reference */
	LBI_FP_AVX512 = 2, /* AVX-512F kernels */
};

/* 1 when the AVX-512 path can run on this CPU and OS, else 0. */
int lbi_fp_have_avx512(void);

/*
 * lb_fingerprint on the given path.
 * @return as lb_fingerprint; -EOPNOTSUPP for LBI_FP_AVX512 on a CPU without AVX-512F;
 *         -EINVAL for an unknown path.
 */
int lbi_fingerprint_path(const struct lb_fp_proj *p, const float *emb, uint32_t n_tokens,
			 uint64_t out[LB_FP_BITS / 64], int path);

#endif
