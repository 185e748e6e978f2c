/* CPUID dispatch: which instruction set the lbk_* kernels run with, detected once, capped by
 * $LBK_ISA and lowered on request by lbk_force_isa (tests run every kernel on each path); and
 * whether the AVX-512 tier also has AVX512_BF16. */
#include <cpuid.h>
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

/*
 * AVX512_BF16 usable: CPUID leaf 7 subleaf 1 EAX bit 5 (leaf 7 reporting that subleaf), and the
 * OS saving the zmm state: CPUID.1 ECX.OSXSAVE, then XCR0 bits 1-2 (SSE, AVX) and 5-7 (opmask,
 * the upper halves of zmm0-15, zmm16-31).
 */
static int cpu_bf16(void)
{
	unsigned a, b, c, d;
	if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27)))
		return 0;
	unsigned lo, hi;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	if ((lo & 0xe6) != 0xe6)
		return 0;
	if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || a < 1)
		return 0;
	__get_cpuid_count(7, 1, &a, &b, &c, &d);
	return (a >> 5) & 1;
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

/* -1 until first asked; then whether the CPU has AVX512_BF16 usable. */
static atomic_int g_bf16 = -1;

int lbk_has_bf16(void)
{
	int b = atomic_load_explicit(&g_bf16, memory_order_relaxed);
	if (b < 0) {
		b = cpu_bf16(); /* idempotent, as in lbk_isa */
		atomic_store_explicit(&g_bf16, b, memory_order_relaxed);
	}
	return b && lbk_isa() == LBK_ISA_AVX512;
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
