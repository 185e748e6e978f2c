/* The bf16 GEMM (lbk_gemm_bf16): the rounding, the reference against an fp64 product of the
 * rounded inputs, the vdpbf16ps kernel against the reference and against the fp32 product on
 * odd sizes, threads 1 and 2, and the fallback of the tiers without AVX512_BF16. ctest runs it
 * twice: as is, and with LBK_ISA=avx2 (test_kernels_bf16_noisa), where only the fallback runs. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

static uint64_t rng_state = 0x243f6a8885a308d3ull;

/* Uniform in [-1, 1), deterministic. */
static float frand(void)
{
	rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
	return (float)((double)(rng_state >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

static float *rand_buf(int64_t n)
{
	float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
	assert_non_null(p);
	for (int64_t i = 0; i < n; i++)
		p[i] = frand();
	return p;
}

static float from_bits(uint32_t u)
{
	float f;
	memcpy(&f, &u, sizeof(f));
	return f;
}

static float bf16_value(float f)
{
	return from_bits((uint32_t)lbk_bf16_round(f) << 16);
}

/* The same fp32-order tolerance as test_kernels' dot_tol: |a - b| <= 4e-6 sqrt(k) (1 + |b|) for
 * two fp32 sums of k products of magnitude <= 1 taken in different orders (a random walk of
 * ~k roundings of partial sums of size ~sqrt(k)); an indexing bug is O(1) off. */
static double dot_tol(int64_t k)
{
	return 4e-6 * sqrt((double)k);
}

/* ---- rounding ---- */

static void test_bf16_round(void **state)
{
	(void)state;
	static const struct {
		uint32_t in;
		uint16_t out;
		const char *why;
	} cases[] = {
		{ 0x3f800000u, 0x3f80, "1.0 exact" },
		{ 0x3f808000u, 0x3f80, "tie, even below: down" },
		{ 0x3f818000u, 0x3f82, "tie, odd below: up" },
		{ 0x3f808001u, 0x3f81, "above the tie: up" },
		{ 0x3f807fffu, 0x3f80, "below the tie: down" },
		{ 0xbf808001u, 0xbf81, "negative, away from zero" },
		{ 0x7f7fffffu, 0x7f80, "FLT_MAX rounds to inf" },
		{ 0x7f800000u, 0x7f80, "inf" },
		{ 0xff800000u, 0xff80, "-inf" },
		{ 0x00000000u, 0x0000, "+0" },
		{ 0x80000000u, 0x8000, "-0" },
		{ 0x007fffffu, 0x0000, "denormal to +0" },
		{ 0x80400000u, 0x8000, "negative denormal to -0" },
		{ 0x7f800001u, 0x7fc0, "signalling NaN made quiet" },
		{ 0xffc12345u, 0xffc1, "quiet NaN kept" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint16_t got = lbk_bf16_round(from_bits(cases[i].in));
		if (got != cases[i].out)
			fail_msg("lbk_bf16_round(%08x): %04x, want %04x (%s)", cases[i].in, got,
				 cases[i].out, cases[i].why);
	}
}

/* ---- the reference ---- */

/*
 * lbk_gemm_bf16_ref against the exact (fp64) product of the bf16-rounded inputs: the products
 * are exact in fp32 (8 x 8 significant bits), so the only difference is the fp32 accumulation,
 * held to dot_tol. A wrong rounding, pair order slip or pad shows as an O(2^-9) relative error
 * per term, far above it at these k.
 */
static void test_bf16_ref_vs_fp64(void **state)
{
	(void)state;
	static const int64_t sizes[][3] = { { 1, 1, 1 }, { 3, 17, 33 }, { 5, 33, 257 }, { 2, 65, 1537 },
					    { 4, 7, 3073 } };
	for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
		int64_t m = sizes[s][0], n = sizes[s][1], k = sizes[s][2];
		float *x = rand_buf(m * k), *w = rand_buf(n * k), *bias = rand_buf(n);
		float *y = malloc((size_t)(m * n) * sizeof(float));
		assert_non_null(y);
		lbk_gemm_bf16_ref(y, x, w, bias, m, n, k);
		for (int64_t i = 0; i < m; i++) {
			for (int64_t j = 0; j < n; j++) {
				double exact = 0;
				for (int64_t l = 0; l < k; l++)
					exact += (double)bf16_value(x[i * k + l]) * (double)bf16_value(w[j * k + l]);
				exact += bias[j];
				double d = fabs(y[i * n + j] - exact), tol = dot_tol(k) * (1 + fabs(exact));
				if (!(d <= tol))
					fail_msg("ref m=%lld n=%lld k=%lld [%lld][%lld]: %.9g, exact %.9g (%.3g > %.3g)",
						 (long long)m, (long long)n, (long long)k, (long long)i,
						 (long long)j, (double)y[i * n + j], exact, d, tol);
			}
		}
		free(x);
		free(w);
		free(bias);
		free(y);
	}
}

/* ---- lbk_gemm_bf16 on odd sizes ---- */

/* Counted over a test: outputs equal to the reference's bit for bit, and all compared. */
static int64_t n_same, n_all;

/*
 * lbk_gemm_bf16 at threads 1 and 2 (the same bits) against
 *  - lbk_gemm_bf16_ref: the same rounded inputs, so only the fp32 accumulation can differ:
 *    dot_tol. (Where vdpbf16ps adds as the SDM writes it, the two agree bit for bit; n_same
 *    counts how often they do, printed, not asserted.)
 *  - lbk_matmul_ref, the fp32 product of the unrounded inputs: rounding x and w to bf16 (8
 *    significant bits, to nearest: relative error <= u = 2^-8 each) changes a product by at
 *    most (2u + u^2) |x w|, so the sum by at most (2^-7 + 2^-16) sum_l |x_l w_l|, computed per
 *    output; plus the two fp32 accumulations, dot_tol again. (On random signs the typical
 *    error is ~sqrt(k) times smaller than this worst case; the bound is what is proven.)
 */
static void check_bf16(int64_t m, int64_t n, int64_t k, int with_bias)
{
	float *x = rand_buf(m * k), *w = rand_buf(n * k);
	float *bias = with_bias ? rand_buf(n) : NULL;
	float *y1 = rand_buf(m * n), *y2 = rand_buf(m * n), *r = rand_buf(m * n), *r32 = rand_buf(m * n);
	lbk_gemm_bf16_ref(r, x, w, bias, m, n, k);
	lbk_matmul_ref(r32, x, w, bias, m, n, k);
	struct lbk_packed_bf16 *p = lbk_pack_bf16(w, n, k);
	assert_non_null(p);
	lbk_gemm_bf16(y1, x, p, bias, m, 1);
	lbk_gemm_bf16(y2, x, p, bias, m, 2);
	const double rb = ldexp(1, -7) + ldexp(1, -16);
	for (int64_t i = 0; i < m; i++) {
		for (int64_t j = 0; j < n; j++) {
			int64_t e = i * n + j;
			if (memcmp(&y1[e], &y2[e], sizeof(float)) != 0)
				fail_msg("bf16 m=%lld n=%lld k=%lld [%lld][%lld]: threads 1 %.9g, 2 %.9g",
					 (long long)m, (long long)n, (long long)k, (long long)i,
					 (long long)j, (double)y1[e], (double)y2[e]);
			double d = fabs((double)y1[e] - r[e]), tol = dot_tol(k) * (1 + fabs(r[e]));
			if (!(d <= tol))
				fail_msg("bf16 m=%lld n=%lld k=%lld bias=%d [%lld][%lld]: %.9g, ref %.9g (%.3g > %.3g)",
					 (long long)m, (long long)n, (long long)k, with_bias, (long long)i,
					 (long long)j, (double)y1[e], (double)r[e], d, tol);
			n_same += memcmp(&y1[e], &r[e], sizeof(float)) == 0;
			n_all++;
			double mag = 0;
			for (int64_t l = 0; l < k; l++)
				mag += fabs((double)x[i * k + l] * (double)w[j * k + l]);
			double d32 = fabs((double)y1[e] - r32[e]);
			double tol32 = rb * mag + dot_tol(k) * (1 + fabs(r32[e]));
			if (!(d32 <= tol32))
				fail_msg("bf16 m=%lld n=%lld k=%lld [%lld][%lld]: %.9g, fp32 %.9g (%.3g > %.3g)",
					 (long long)m, (long long)n, (long long)k, (long long)i,
					 (long long)j, (double)y1[e], (double)r32[e], d32, tol32);
		}
	}
	lbk_packed_bf16_free(p);
	free(x);
	free(w);
	free(bias);
	free(y1);
	free(y2);
	free(r);
	free(r32);
}

static void run_odd_sizes(void)
{
	/* m across the 8-row tile, n across the 48-column panel, k odd and even */
	static const int64_t ms[] = { 1, 3, 8, 9, 17, 33, 65 };
	static const int64_t ns[] = { 1, 17, 47, 49, 65, 257 };
	static const int64_t ks[] = { 1, 2, 3, 17, 33, 65, 257 };
	n_same = n_all = 0;
	int c = 0;
	for (size_t a = 0; a < sizeof(ms) / sizeof(ms[0]); a++)
		for (size_t b = 0; b < sizeof(ns) / sizeof(ns[0]); b++)
			for (size_t d = 0; d < sizeof(ks) / sizeof(ks[0]); d++)
				check_bf16(ms[a], ns[b], ks[d], c++ & 1);
	/* k across the 1536 slice: one slice and one more pair, two, three with a last of one
	 * element (the pad); n across several panels */
	check_bf16(13, 97, 1537, 1);
	check_bf16(16, 200, 3072, 0);
	check_bf16(9, 150, 3073, 1);
	/* a BERT-base shape, several m blocks */
	check_bf16(128, 768, 768, 1);
	printf("%s: %lld of %lld outputs equal the reference bit for bit\n",
	       lbk_has_bf16() ? "vdpbf16ps" : "fallback", (long long)n_same, (long long)n_all);
}

static void test_bf16_gemm_odd(void **state)
{
	(void)state;
	const char *env = getenv("LBK_ISA");
	printf("AVX512_BF16 kernel: %s (lbk_isa %s, LBK_ISA %s)\n", lbk_has_bf16() ? "yes" : "no",
	       lbk_isa_name(lbk_isa()), env ? env : "unset");
	if (env && (!strcmp(env, "avx2") || !strcmp(env, "scalar")))
		assert_false(lbk_has_bf16());
	run_odd_sizes();
}

/* The fallback, forced: on tiers below AVX-512 lbk_gemm_bf16 runs the plain-C loop, whose sums
 * are the reference's: bit for bit, threads 1 and 2. */
static void test_bf16_fallback(void **state)
{
	(void)state;
	static const enum lbk_isa tiers[] = { LBK_ISA_AVX2, LBK_ISA_SCALAR };
	for (size_t t = 0; t < sizeof(tiers) / sizeof(tiers[0]); t++) {
		lbk_force_isa(tiers[t]);
		assert_false(lbk_has_bf16());
		run_odd_sizes();
		assert_int_equal(n_same, n_all);
	}
	lbk_force_isa(LBK_ISA_AVX512);
}

/* Bad arguments: NULL with EINVAL; nothing done for m < 1 or w NULL. */
static void test_bf16_refused(void **state)
{
	(void)state;
	float w[4] = { 1, 2, 3, 4 }, y[2] = { 7, 7 };
	static const int64_t bad[][2] = { { 0, 2 }, { 2, 0 }, { -1, 2 } };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		errno = 0;
		assert_null(lbk_pack_bf16(w, bad[i][0], bad[i][1]));
		assert_int_equal(errno, EINVAL);
	}
	assert_null(lbk_pack_bf16(NULL, 2, 2));
	lbk_gemm_bf16(y, w, NULL, NULL, 1, 1);
	struct lbk_packed_bf16 *p = lbk_pack_bf16(w, 2, 2);
	assert_non_null(p);
	lbk_gemm_bf16(y, w, p, NULL, 0, 1);
	assert_true(y[0] == 7 && y[1] == 7);
	lbk_gemm_bf16(y, w, p, NULL, 1, 1); /* x = (1, 2): y = (1+4, 3+8) */
	assert_true(y[0] == 5 && y[1] == 11);
	lbk_packed_bf16_free(p);
	lbk_packed_bf16_free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bf16_round),
		cmocka_unit_test(test_bf16_ref_vs_fp64),
		cmocka_unit_test(test_bf16_gemm_odd),
		cmocka_unit_test(test_bf16_fallback),
		cmocka_unit_test(test_bf16_refused),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
