/* layerbank-bench, peak module: one core's fp32 FMA peak on the instruction-set tier the lbk_*
 * kernels run with, and its bf16 dot-product (vdpbf16ps) peak — independent chains in
 * registers, nothing loaded or stored. */
#include "bench.h"

#include <immintrin.h>
#include <time.h>

#include "kernels.h"

#define RUNS 15
#define RUN_S 0.02 /* each run long enough for the clock's granularity, short enough to
		    * find a slice of time the other jobs on the machine leave alone */

/*
 * CHAINS accumulators, each its own dependency chain: a core with two FMA pipes of latency L
 * needs 2L chains in flight (8 on Zen 4/5 and Skylake-X, L = 4); 16 covers latencies up to 8.
 * The start values come from a volatile so that the compiler cannot prove two chains equal
 * and fold them into one (which would time one chain's latency, not the pipes' throughput).
 */
#define CHAINS 16
#define CHAINS2 12 /* AVX2: 16 ymm registers, 12 chains + 2 operands */

/* The chains must stay in registers: fully unrolled (clang reads "GCC unroll" as a count). */
#if defined(__clang__)
#define UNROLL _Pragma("unroll")
#else
#define UNROLL _Pragma("GCC unroll 16")
#endif

static volatile float seed[CHAINS] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 };
static volatile float sink;

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* iters iterations of CHAINS 16-lane FMAs; the chains stay finite and normal (1e-7 a step). */
__attribute__((target("avx512f,fma"))) static void fma512(long iters)
{
	__m512 acc[CHAINS];
	const __m512 x = _mm512_set1_ps(seed[0] * 1e-7f), y = _mm512_set1_ps(seed[0]);
	for (int c = 0; c < CHAINS; c++)
		acc[c] = _mm512_set1_ps(seed[c]);
	for (long i = 0; i < iters; i++) {
		UNROLL
		for (int c = 0; c < CHAINS; c++)
			acc[c] = _mm512_fmadd_ps(x, y, acc[c]);
	}
	__m512 s = acc[0];
	for (int c = 1; c < CHAINS; c++)
		s = _mm512_add_ps(s, acc[c]);
	sink = _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma"))) static void fma256(long iters)
{
	__m256 acc[CHAINS2];
	const __m256 x = _mm256_set1_ps(seed[0] * 1e-7f), y = _mm256_set1_ps(seed[0]);
	for (int c = 0; c < CHAINS2; c++)
		acc[c] = _mm256_set1_ps(seed[c]);
	for (long i = 0; i < iters; i++) {
		UNROLL
		for (int c = 0; c < CHAINS2; c++)
			acc[c] = _mm256_fmadd_ps(x, y, acc[c]);
	}
	__m256 s = acc[0];
	for (int c = 1; c < CHAINS2; c++)
		s = _mm256_add_ps(s, acc[c]);
	float f[8];
	_mm256_storeu_ps(f, s);
	sink = f[0] + f[7];
}

/*
 * iters iterations of CHAINS vdpbf16ps, each 16 lanes x 2 bf16 products added into an fp32
 * chain. The operands (bf16 of 1e-7 and 1, from the volatile) keep the chains finite and normal.
 */
__attribute__((target("avx512bf16,avx512f,avx512bw"))) static void dpbf16_512(long iters)
{
	__m512 acc[CHAINS];
	const __m512bh x = _mm512_cvtne2ps_pbh(_mm512_set1_ps(seed[0] * 1e-7f),
					       _mm512_set1_ps(seed[0] * 1e-7f));
	const __m512bh y = _mm512_cvtne2ps_pbh(_mm512_set1_ps(seed[0]), _mm512_set1_ps(seed[0]));
	for (int c = 0; c < CHAINS; c++)
		acc[c] = _mm512_set1_ps(seed[c]);
	for (long i = 0; i < iters; i++) {
		UNROLL
		for (int c = 0; c < CHAINS; c++)
			acc[c] = _mm512_dpbf16_ps(acc[c], x, y);
	}
	__m512 s = acc[0];
	for (int c = 1; c < CHAINS; c++)
		s = _mm512_add_ps(s, acc[c]);
	sink = _mm512_reduce_add_ps(s);
}

/* GFLOP/s of run(iters), flop flops an iteration: the best of RUNS runs of about RUN_S. */
static double best_gflops(void (*run)(long), double flop)
{
	long iters = 1000;
	double t;
	/* grow the run until it lasts RUN_S (the first calls also warm the clock up) */
	for (;;) {
		double t0 = now_s();
		run(iters);
		t = now_s() - t0;
		if (t >= RUN_S || iters > (1L << 40))
			break;
		iters *= t > RUN_S / 16 ? 2 : 8;
	}
	double best = t;
	for (int r = 0; r < RUNS; r++) {
		double t0 = now_s();
		run(iters);
		t = now_s() - t0;
		if (t < best)
			best = t;
	}
	return flop * (double)iters / best * 1e-9;
}

double lbb_fma_peak_gflops(void)
{
	enum lbk_isa isa = lbk_isa();
	if (isa == LBK_ISA_SCALAR)
		return -1;
	/* flops of one iteration: chains x lanes x 2 (a multiply and an add) */
	return isa == LBK_ISA_AVX512 ? best_gflops(fma512, CHAINS * 16 * 2)
				     : best_gflops(fma256, CHAINS2 * 8 * 2);
}

double lbb_bf16_peak_gflops(void)
{
	if (!lbk_has_bf16())
		return -1;
	/* an instruction: 16 lanes x 2 bf16 multiply-adds x 2 flops = 64 */
	return best_gflops(dpbf16_512, CHAINS * 16 * 2 * 2);
}
