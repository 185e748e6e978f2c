/* CPUID dispatch: which instruction set the lbk_* kernels run with, detected once, capped by
 * $LBK_ISA and lowered on request by lbk_force_isa (tests run every kernel on each path). */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels_internal.h"

/* -1 until first detection; then the detected ISA. Written once, read by any thread. */
static atomic_int g_detected = -1;
/* The ceiling a test asked for with lbk_force_isa; LBK_ISA_AVX512 means "no ceiling". */
static atomic_int g_ceiling = LBK_ISA_AVX512;

static int cpu_isa(void)
{
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
	    __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
	    __builtin_cpu_supports("fma"))
		return LBK_ISA_AVX512;
	if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
		return LBK_ISA_AVX2;
	return LBK_ISA_SCALAR;
}

/* The CPU's ISA, capped by $LBK_ISA (avx512, avx2 or scalar): a whole program, a worker or
 * the benchmark, can then be run on a lower tier. A value that names no tier is ignored
 * with one line on stderr. */
static const char *const isa_names[] = { "scalar", "avx2", "avx512" };

const char *lbk_isa_name(enum lbk_isa isa)
{
	return (unsigned)isa < 3 ? isa_names[isa] : "?";
}

static int detect(void)
{
	int isa = cpu_isa();
	const char *env = getenv("LBK_ISA");
	if (!env || !*env)
		return isa;
	for (int i = 0; i < 3; i++)
		if (!strcmp(env, isa_names[i]))
			return i < isa ? i : isa;
	fprintf(stderr, "lbk: LBK_ISA=%s ignored (avx512, avx2 or scalar)\n", env);
	return isa;
}

enum lbk_isa lbk_isa(void)
{
	int d = atomic_load_explicit(&g_detected, memory_order_relaxed);
	if (d < 0) {
		/* Idempotent: racing threads compute and store the same value (a bad $LBK_ISA may
		 * then be reported more than once). */
		d = detect();
		atomic_store_explicit(&g_detected, d, memory_order_relaxed);
	}
	int c = atomic_load_explicit(&g_ceiling, memory_order_relaxed);
	return (enum lbk_isa)(d < c ? d : c);
}

void lbk_force_isa(enum lbk_isa isa)
{
	int v = (int)isa;
	if (v < LBK_ISA_SCALAR)
		v = LBK_ISA_SCALAR;
	if (v > LBK_ISA_AVX512)
		v = LBK_ISA_AVX512;
	atomic_store_explicit(&g_ceiling, v, memory_order_relaxed);
}
