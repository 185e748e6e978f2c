/* lbk_* kernels: every variant (AVX-512, AVX2, scalar: each tier forced in turn with
 * lbk_force_isa) against its plain-C reference on odd sizes, threaded packed GEMM, the
 * norms/RoPE against double-precision formulas, and paged attention's batch invariance (bit for
 * bit) over blocks mapped apart. Prints GEMM GFLOP/s on the BERT-base shapes and m=1 GEMV GB/s
 * (no timed asserts). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kernels.h"

static const int64_t odd[] = { 1, 7, 17, 65, 129 };
#define N_ODD ((int)(sizeof(odd) / sizeof(odd[0])))

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

/* Uniform in [-1, 1), deterministic. */
static float frand(void)
{
	rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
	return (float)((double)(rng_state >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

static float *rand_buf(int64_t n, float scale, float offset)
{
	float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
	assert_non_null(p);
	for (int64_t i = 0; i < n; i++)
		p[i] = frand() * scale + offset;
	return p;
}

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Fails with the first element where |got - want| > rel * (abs + |want|). */
static void expect_close(const float *got, const float *want, int64_t n, double rel, double abs,
			 const char *what)
{
	for (int64_t i = 0; i < n; i++) {
		double d = fabs((double)got[i] - (double)want[i]);
		double tol = rel * (abs + fabs((double)want[i]));
		if (!(d <= tol)) {
			fail_msg("%s: element %lld: got %.9g want %.9g (|diff| %.3g > tol %.3g)", what,
				 (long long)i, (double)got[i], (double)want[i], d, tol);
		}
	}
}

/* Fails at the first float of got [rows][width] whose bits differ from want's. */
static void expect_rows_equal(const float *got, const float *want, int64_t rows, int64_t width,
			      const char *what)
{
	for (int64_t i = 0; i < rows * width; i++)
		if (memcmp(&got[i], &want[i], sizeof(float)) != 0)
			fail_msg("%s: row %lld column %lld: %.9g (%08x), want %.9g (%08x)", what,
				 (long long)(i / width), (long long)(i % width), (double)got[i],
				 *(const uint32_t *)&got[i], (double)want[i], *(const uint32_t *)&want[i]);
}

/*
 * Dot-product tolerance: |fast - ref| <= 4e-6 * sqrt(k) * (1 + |ref|), inputs in [-1, 1].
 * Both sums are fp32 in different orders (sequential vs 16 lanes + FMA). Each rounds ~k partial
 * sums of size O(sqrt(k)) here, so the difference is a random walk of about
 * FLT_EPSILON * sqrt(k) * sqrt(k) / 3; |ref| is itself ~sqrt(k)/3, and the "1 +" covers outputs
 * that cancel to near 0. 4e-6 is about 32 FLT_EPSILON: margin for the unlucky elements without
 * hiding an indexing bug (those are O(1) off).
 */
static double dot_tol(int64_t k)
{
	return 4e-6 * sqrt((double)k);
}

static const char *isa_name(enum lbk_isa isa)
{
	return isa == LBK_ISA_AVX512 ? "avx512" : isa == LBK_ISA_AVX2 ? "avx2" : "scalar";
}

/*
 * Tiered tests run once per tier, their state the tier to force: the kernels then take that
 * variant (or its reference, for the scalar tier). A tier this CPU lacks is skipped with a
 * note; the teardown lifts the ceiling again.
 */
static void use_tier(void **state)
{
	enum lbk_isa want = *(const enum lbk_isa *)*state;
	lbk_force_isa(LBK_ISA_AVX512);
	enum lbk_isa best = lbk_isa();
	if (want > best) {
		printf("SKIP: this CPU has no %s (best: %s)\n", isa_name(want), isa_name(best));
		skip();
	}
	lbk_force_isa(want);
	assert_int_equal(lbk_isa(), want);
}

static int lift_tier(void **state)
{
	(void)state;
	lbk_force_isa(LBK_ISA_AVX512);
	lbk_attention_scratch_limit(SIZE_MAX);
	return 0;
}

static const enum lbk_isa tier_avx512 = LBK_ISA_AVX512, tier_avx2 = LBK_ISA_AVX2,
			  tier_scalar = LBK_ISA_SCALAR;

/* The three runs of a tiered test, named "test avx512" and so on. */
#define TIERED(fn)                                                                          \
	{ #fn " avx512", fn, NULL, lift_tier, (void *)&tier_avx512 },                     \
	{ #fn " avx2", fn, NULL, lift_tier, (void *)&tier_avx2 },                         \
	{ #fn " scalar", fn, NULL, lift_tier, (void *)&tier_scalar }

static void test_isa_force(void **state)
{
	(void)state;
	enum lbk_isa best = lbk_isa();
	printf("lbk_isa: %s\n", best == LBK_ISA_AVX512 ? "avx512"
			       : best == LBK_ISA_AVX2	? "avx2"
							: "scalar");
	if (best < LBK_ISA_AVX512)
		printf("note: no AVX-512 here; its tier's tests are skipped\n");
	lbk_force_isa(LBK_ISA_SCALAR);
	assert_int_equal(lbk_isa(), LBK_ISA_SCALAR);
	lbk_force_isa(LBK_ISA_AVX2);
	assert_int_equal(lbk_isa(), best < LBK_ISA_AVX2 ? best : LBK_ISA_AVX2);
	lbk_force_isa(LBK_ISA_AVX512);
	assert_int_equal(lbk_isa(), best);
}

/* ---- matmul and packed GEMM ---- */

static void check_matmul(int64_t m, int64_t n, int64_t k, int with_bias)
{
	float *x = rand_buf(m * k, 1, 0), *w = rand_buf(n * k, 1, 0);
	float *bias = with_bias ? rand_buf(n, 1, 0) : NULL;
	float *y = rand_buf(m * n, 1, 0), *r = rand_buf(m * n, 1, 0);
	char what[96];
	snprintf(what, sizeof(what), "matmul m=%lld n=%lld k=%lld bias=%d isa=%d", (long long)m,
		 (long long)n, (long long)k, with_bias, (int)lbk_isa());
	lbk_matmul_ref(r, x, w, bias, m, n, k);
	lbk_matmul(y, x, w, bias, m, n, k);
	expect_close(y, r, m * n, dot_tol(k), 1.0, what);
	free(x);
	free(w);
	free(bias);
	free(y);
	free(r);
}

static void test_matmul_odd(void **state)
{
	use_tier(state);
	static const int64_t ms[] = { 1, 2, 3, 4, 5, 7, 17 };
	for (int a = 0; a < (int)(sizeof(ms) / sizeof(ms[0])); a++)
		for (int b = 0; b < N_ODD; b++)
			for (int c = 0; c < N_ODD; c++)
				check_matmul(ms[a], odd[b], odd[c], (a + b + c) & 1);
	check_matmul(1, 33, 300, 1);
	check_matmul(9, 100, 513, 0);
}

/* lbk_gemm with threads 1, 2 and 3 against the reference; thread counts must agree exactly
 * (each output is computed by one thread with the same micro-kernel and k order). */
static void check_gemm(int64_t m, int64_t n, int64_t k, int with_bias)
{
	float *x = rand_buf(m * k, 1, 0), *w = rand_buf(n * k, 1, 0);
	float *bias = with_bias ? rand_buf(n, 1, 0) : NULL;
	float *r = rand_buf(m * n, 1, 0);
	float *y[3];
	char what[96];
	lbk_matmul_ref(r, x, w, bias, m, n, k);
	struct lbk_packed *p = lbk_pack(w, n, k);
	assert_non_null(p);
	for (int t = 0; t < 3; t++) {
		y[t] = rand_buf(m * n, 1, 0);
		lbk_gemm(y[t], x, p, bias, m, t + 1);
		snprintf(what, sizeof(what), "gemm m=%lld n=%lld k=%lld threads=%d isa=%d",
			 (long long)m, (long long)n, (long long)k, t + 1, (int)lbk_isa());
		expect_close(y[t], r, m * n, dot_tol(k), 1.0, what);
	}
	assert_memory_equal(y[0], y[1], (size_t)(m * n) * sizeof(float));
	assert_memory_equal(y[0], y[2], (size_t)(m * n) * sizeof(float));
	lbk_packed_free(p);
	for (int t = 0; t < 3; t++)
		free(y[t]);
	free(x);
	free(w);
	free(bias);
	free(r);
}

static void gemm_odd_sizes(void)
{
	static const int64_t ms[] = { 1, 7, 8, 9, 17, 65, 129 };
	for (int a = 0; a < (int)(sizeof(ms) / sizeof(ms[0])); a++)
		for (int b = 0; b < N_ODD; b++)
			for (int c = 0; c < N_ODD; c++)
				check_gemm(ms[a], odd[b], odd[c], (a + b + c) & 1);
	/* k across the cache block (768: one slice and one more k step, two slices, three with a
	 * last slice of one step, where the next-slice prefetch wraps to the first panel), n
	 * across several 48-column panels */
	check_gemm(13, 97, 769, 1);
	check_gemm(16, 200, 1200, 0);
	check_gemm(9, 150, 1537, 1);
}

static void test_gemm_odd(void **state)
{
	use_tier(state);
	gemm_odd_sizes();
}

/*
 * lbk_gemm_ex's epilogue (residual, GELU) against the two-pass composition it replaces: lbk_gemm,
 * then res added, then lbk_gelu on the same tier. Bit for bit, since the epilogue runs the same
 * operations in the same order on the same values; and threads 1 and 2 agree.
 */
static void check_gemm_ex(int64_t m, int64_t n, int64_t k, int with_bias, int with_res,
			  enum lbk_act act)
{
	float *x = rand_buf(m * k, 1, 0), *w = rand_buf(n * k, 1, 0);
	float *bias = with_bias ? rand_buf(n, 1, 0) : NULL, *res = with_res ? rand_buf(m * n, 2, 0) : NULL;
	float *y = rand_buf(m * n, 1, 0), *y2 = rand_buf(m * n, 1, 0), *want = rand_buf(m * n, 1, 0);
	struct lbk_packed *p = lbk_pack(w, n, k);
	assert_non_null(p);
	lbk_gemm(want, x, p, bias, m, 1);
	if (res)
		for (int64_t i = 0; i < m * n; i++)
			want[i] += res[i];
	if (act == LBK_ACT_GELU)
		lbk_gelu(want, m * n);
	lbk_gemm_ex(y, x, p, bias, res, m, 1, act);
	lbk_gemm_ex(y2, x, p, bias, res, m, 2, act);
	for (int64_t i = 0; i < m * n; i++)
		if (memcmp(&y[i], &want[i], sizeof(float)) != 0 || memcmp(&y2[i], &want[i], sizeof(float)) != 0)
			fail_msg("gemm_ex m=%lld n=%lld k=%lld bias=%d res=%d act=%d isa=%s [%lld]: %.9g / %.9g, want %.9g",
				 (long long)m, (long long)n, (long long)k, with_bias, with_res, (int)act,
				 isa_name(lbk_isa()), (long long)i, (double)y[i], (double)y2[i], (double)want[i]);
	lbk_packed_free(p);
	free(x);
	free(w);
	free(bias);
	free(res);
	free(y);
	free(y2);
	free(want);
}

static void test_gemm_epilogue(void **state)
{
	use_tier(state);
	static const int64_t ms[] = { 1, 7, 9, 17 };
	for (int a = 0; a < 4; a++)
		for (int b = 0; b < N_ODD; b++)
			for (int c = 0; c < 4; c++)
				check_gemm_ex(ms[a], odd[b], odd[(b + c) % N_ODD], c & 1, (c >> 1) & 1,
					      (a + b + c) & 1 ? LBK_ACT_GELU : LBK_ACT_NONE);
	/* k across the cache block (768): the epilogue runs on the last slice only */
	check_gemm_ex(13, 97, 1200, 1, 1, LBK_ACT_GELU);
	check_gemm_ex(8, 48, 769, 0, 1, LBK_ACT_NONE);
	check_gemm_ex(9, 150, 1537, 1, 1, LBK_ACT_GELU);
	check_gemm_ex(128, 3072, 768, 1, 0, LBK_ACT_GELU);
	check_gemm_ex(128, 768, 3072, 1, 1, LBK_ACT_NONE);
}

/*
 * Row invariance: a GEMM over some rows of x, gathered, gives those rows of the GEMM over all of
 * x bit for bit, with the residual and GELU epilogue too (each row's sums run in one order
 * whatever tile holds it). A layer computed for chosen positions only builds on this.
 */
static void check_gemm_rows(int64_t m, int64_t n, int64_t k, const int64_t *rows, int64_t nr)
{
	float *x = rand_buf(m * k, 1, 0), *w = rand_buf(n * k, 1, 0), *bias = rand_buf(n, 1, 0);
	float *res = rand_buf(m * n, 2, 0), *full = rand_buf(m * n, 1, 0);
	float *xs = rand_buf(nr * k, 1, 0), *rs = rand_buf(nr * n, 1, 0), *ys = rand_buf(nr * n, 1, 0);
	float *want = rand_buf(nr * n, 1, 0);
	struct lbk_packed *p = lbk_pack(w, n, k);
	assert_non_null(p);
	for (int64_t r = 0; r < nr; r++) {
		memcpy(xs + r * k, x + rows[r] * k, (size_t)k * sizeof(float));
		memcpy(rs + r * n, res + rows[r] * n, (size_t)n * sizeof(float));
	}
	char what[128];
	for (int epi = 0; epi < 2; epi++) {
		enum lbk_act act = epi ? LBK_ACT_GELU : LBK_ACT_NONE;
		lbk_gemm_ex(full, x, p, bias, epi ? res : NULL, m, 1, act);
		lbk_gemm_ex(ys, xs, p, bias, epi ? rs : NULL, nr, 1, act);
		for (int64_t r = 0; r < nr; r++)
			memcpy(want + r * n, full + rows[r] * n, (size_t)n * sizeof(float));
		snprintf(what, sizeof(what), "gemm rows m=%lld n=%lld k=%lld %lld rows epilogue=%d isa=%s",
			 (long long)m, (long long)n, (long long)k, (long long)nr, epi,
			 isa_name(lbk_isa()));
		expect_rows_equal(ys, want, nr, n, what);
	}
	lbk_packed_free(p);
	free(x);
	free(w);
	free(bias);
	free(res);
	free(full);
	free(xs);
	free(rs);
	free(ys);
	free(want);
}

static void test_gemm_rows(void **state)
{
	use_tier(state);
	static const int64_t one[] = { 0 }, last[] = { 16 }, some[] = { 0, 3, 4, 5, 9, 15, 16 };
	static const int64_t spread[] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 20, 40, 63, 64 };
	static const struct {
		int64_t m, n, k;
		const int64_t *rows;
		int64_t nr;
	} cases[] = {
		{ 17, 65, 129, one, 1 },   { 17, 65, 129, last, 1 }, { 17, 97, 769, some, 7 },
		{ 65, 150, 1537, spread, 13 }, { 1, 7, 17, one, 1 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		check_gemm_rows(cases[i].m, cases[i].n, cases[i].k, cases[i].rows, cases[i].nr);
}

static void test_gemm_bert(void **state)
{
	(void)state;
	static const int64_t shapes[3][2] = { { 768, 768 }, { 3072, 768 }, { 768, 3072 } };
	const int64_t m = 128;
	for (int s = 0; s < 3; s++) {
		int64_t n = shapes[s][0], k = shapes[s][1];
		float *x = rand_buf(m * k, 1, 0), *w = rand_buf(n * k, 1, 0);
		float *bias = rand_buf(n, 1, 0);
		float *y = rand_buf(m * n, 1, 0), *r = rand_buf(m * n, 1, 0);
		struct lbk_packed *p = lbk_pack(w, n, k);
		assert_non_null(p);
		lbk_matmul_ref(r, x, w, bias, m, n, k);
		for (int threads = 1; threads <= 2; threads++) {
			char what[64];
			snprintf(what, sizeof(what), "gemm bert n=%lld k=%lld threads=%d",
				 (long long)n, (long long)k, threads);
			lbk_gemm(y, x, p, bias, m, threads);
			expect_close(y, r, m * n, dot_tol(k), 1.0, what);
			int iters = 0;
			double t0 = now_s(), dt;
			do {
				lbk_gemm(y, x, p, bias, m, threads);
				iters++;
				dt = now_s() - t0;
			} while (dt < 0.4);
			printf("gemm M=%lld N=%lld K=%lld threads=%d: %.1f GFLOP/s\n", (long long)m,
			       (long long)n, (long long)k, threads,
			       2.0 * (double)(m * n * k) * iters / dt / 1e9);
		}
		lbk_packed_free(p);
		free(x);
		free(w);
		free(bias);
		free(y);
		free(r);
	}
}

static void test_gemv_bandwidth(void **state)
{
	(void)state;
	const int64_t n = 4096, k = 4096; /* 64 MiB of W: larger than the caches */
	float *x = rand_buf(k, 1, 0), *w = rand_buf(n * k, 1, 0);
	float *y = rand_buf(n, 1, 0), *r = rand_buf(n, 1, 0);
	lbk_matmul_ref(r, x, w, NULL, 1, n, k);
	lbk_matmul(y, x, w, NULL, 1, n, k);
	expect_close(y, r, n, dot_tol(k), 1.0, "gemv 4096x4096");
	int iters = 0;
	double t0 = now_s(), dt;
	do {
		lbk_matmul(y, x, w, NULL, 1, n, k);
		iters++;
		dt = now_s() - t0;
	} while (dt < 0.4);
	printf("matmul m=1 N=%lld K=%lld: %.1f GB/s (%.1f GFLOP/s)\n", (long long)n, (long long)k,
	       (double)(n * k) * 4.0 * iters / dt / 1e9, 2.0 * (double)(n * k) * iters / dt / 1e9);
	free(x);
	free(w);
	free(y);
	free(r);
}

/* ---- softmax, activations ---- */

/*
 * Softmax tolerance: relative (8 + 2 sqrt(n)) FLT_EPSILON. The exponentials differ by a few ulp
 * (the AVX-512 polynomial against libm expf) and the normalising sums by the fp32 order
 * (random walk ~sqrt(n) FLT_EPSILON); 1e-30 absolute for outputs that underflow to 0.
 */
static void check_softmax(int64_t n, float scale)
{
	float *a = rand_buf(n, scale, 0), *b = malloc((size_t)n * sizeof(float));
	assert_non_null(b);
	memcpy(b, a, (size_t)n * sizeof(float));
	lbk_softmax(a, n);
	lbk_softmax_ref(b, n);
	double sum = 0;
	for (int64_t i = 0; i < n; i++) {
		assert_true(isfinite(a[i]) && a[i] >= 0.0f);
		sum += a[i];
	}
	/* |sum - 1|: n roundings of the divided values, each <= FLT_EPSILON/2 relative */
	assert_true(fabs(sum - 1.0) <= (double)n * FLT_EPSILON + 1e-6);
	for (int64_t i = 0; i < n; i++) {
		double d = fabs((double)a[i] - (double)b[i]);
		double tol = (8.0 + 2.0 * sqrt((double)n)) * FLT_EPSILON * fabs((double)b[i]) + 1e-30;
		if (!(d <= tol))
			fail_msg("softmax n=%lld scale=%g [%lld]: %.9g vs %.9g", (long long)n,
				 (double)scale, (long long)i, (double)a[i], (double)b[i]);
	}
	free(a);
	free(b);
}

static void test_softmax(void **state)
{
	use_tier(state);
	for (int i = 0; i < N_ODD; i++) {
		check_softmax(odd[i], 1.0f);
		check_softmax(odd[i], 10.0f);
		check_softmax(odd[i], 1e4f); /* large inputs: exp of huge negatives underflows to 0 */
	}
	check_softmax(1000, 3.0f);
	float one[1] = { 1e4f };
	lbk_softmax(one, 1);
	assert_true(one[0] == 1.0f);
}

/*
 * SiLU-gate and GELU: per element, relative 4e-6 with 1 absolute (|diff| <= 4e-6 (1 + |ref|)):
 * a few ulp from the exp polynomial and the tanh-through-exp identity, whose cancellation near
 * tanh = 0 or 1 + tanh = 0 is absolute, about FLT_EPSILON times |x| <= 10 here.
 */
static void test_activations(void **state)
{
	use_tier(state);
	for (int i = 0; i < N_ODD; i++) {
		int64_t n = odd[i];
		float *h = rand_buf(n, 10, 0), *g = rand_buf(n, 1, 0);
		float *h2 = malloc((size_t)n * sizeof(float));
		assert_non_null(h2);
		memcpy(h2, h, (size_t)n * sizeof(float));
		lbk_silu_mul(h, g, n);
		lbk_silu_mul_ref(h2, g, n);
		expect_close(h, h2, n, 4e-6, 1.0, "silu_mul");
		float *x = rand_buf(n, 10, 0);
		memcpy(h2, x, (size_t)n * sizeof(float));
		lbk_gelu(x, n);
		lbk_gelu_ref(h2, n);
		expect_close(x, h2, n, 4e-6, 1.0, "gelu");
		free(h);
		free(g);
		free(h2);
		free(x);
	}
	/* extremes must stay finite and take the right limits */
	float big[4] = { 1e4f, -1e4f, 100.0f, -100.0f }, gate[4] = { 1, 1, 1, 1 };
	float gb[4];
	memcpy(gb, big, sizeof(big));
	lbk_gelu(gb, 4);
	assert_true(gb[0] == 1e4f && gb[1] == 0.0f && gb[2] == 100.0f && gb[3] == 0.0f);
	lbk_silu_mul(big, gate, 4);
	assert_true(big[0] == 1e4f && big[1] == 0.0f && fabsf(big[2] - 100.0f) < 1e-4f);
}

/* ---- norms against double precision ---- */

/*
 * Norm tolerance: |got - exact| <= 32 FLT_EPSILON sqrt(n) (1 + |exact|). The fp32 sums of n
 * terms (mean, squares) carry ~sqrt(n) FLT_EPSILON relative error; LayerNorm divides the
 * deviation by sigma (~0.58 for these inputs offset by 3), amplifying the mean's error ~5x.
 */
static void test_norms(void **state)
{
	use_tier(state);
	static const int64_t ns[] = { 1, 7, 17, 65, 129, 768, 4099 };
	for (int i = 0; i < (int)(sizeof(ns) / sizeof(ns[0])); i++) {
		int64_t n = ns[i];
		float *x = rand_buf(n, 1, 3.0f), *wt = rand_buf(n, 1, 0), *bt = rand_buf(n, 1, 0);
		float *o = rand_buf(n, 1, 0), *o2 = rand_buf(n, 1, 0), *ex = rand_buf(n, 1, 0);
		const float eps = 1e-5f;
		double tol = 32.0 * FLT_EPSILON * sqrt((double)n);

		double ss = 0;
		for (int64_t j = 0; j < n; j++)
			ss += (double)x[j] * x[j];
		double inv = 1.0 / sqrt(ss / (double)n + eps);
		for (int64_t j = 0; j < n; j++)
			ex[j] = (float)((double)wt[j] * x[j] * inv);
		lbk_rmsnorm(o, x, wt, n, eps);
		lbk_rmsnorm_ref(o2, x, wt, n, eps);
		expect_close(o, ex, n, tol, 1.0, "rmsnorm");
		expect_close(o2, ex, n, tol, 1.0, "rmsnorm_ref");

		double mean = 0, var = 0;
		for (int64_t j = 0; j < n; j++)
			mean += x[j];
		mean /= (double)n;
		for (int64_t j = 0; j < n; j++)
			var += ((double)x[j] - mean) * ((double)x[j] - mean);
		var /= (double)n;
		double linv = 1.0 / sqrt(var + eps);
		for (int64_t j = 0; j < n; j++)
			ex[j] = (float)(((double)x[j] - mean) * linv * wt[j] + bt[j]);
		lbk_layernorm(o, x, wt, bt, n, eps);
		lbk_layernorm_ref(o2, x, wt, bt, n, eps);
		expect_close(o, ex, n, tol, 1.0, "layernorm");
		expect_close(o2, ex, n, tol, 1.0, "layernorm_ref");
		free(x);
		free(wt);
		free(bt);
		free(o);
		free(o2);
		free(ex);
	}
}

/* ---- RoPE against double precision ---- */

/*
 * RoPE tolerance: |got - exact| <= (16 + 4 pos) FLT_EPSILON (1 + |exact|). The fp32 angle
 * pos * theta^(-2i/hs) is rounded to ~pos FLT_EPSILON absolute (powf and the product), which
 * moves each rotated value by that much times |v| <= 1.4 here.
 */
static void test_rope(void **state)
{
	(void)state;
	static const int64_t hss[] = { 2, 8, 64, 130 };
	static const int64_t poss[] = { 0, 1, 17, 1000 };
	static const int64_t heads[][2] = { { 1, 1 }, { 4, 2 }, { 6, 1 }, { 3, 3 } };
	for (int a = 0; a < 4; a++)
		for (int b = 0; b < 4; b++)
			for (int c = 0; c < 4; c++) {
				int64_t hs = hss[a], pos = poss[b];
				int64_t nh = heads[c][0], nkv = heads[c][1];
				float theta = c & 1 ? 500000.0f : 10000.0f;
				float *q = rand_buf(nh * hs, 1, 0), *k = rand_buf(nkv * hs, 1, 0);
				float *q1 = malloc((size_t)(nh * hs) * sizeof(float));
				float *k1 = malloc((size_t)(nkv * hs) * sizeof(float));
				float *q2 = malloc((size_t)(nh * hs) * sizeof(float));
				float *k2 = malloc((size_t)(nkv * hs) * sizeof(float));
				float *qe = malloc((size_t)(nh * hs) * sizeof(float));
				float *ke = malloc((size_t)(nkv * hs) * sizeof(float));
				assert_true(q1 && k1 && q2 && k2 && qe && ke);
				memcpy(q1, q, (size_t)(nh * hs) * sizeof(float));
				memcpy(q2, q, (size_t)(nh * hs) * sizeof(float));
				memcpy(k1, k, (size_t)(nkv * hs) * sizeof(float));
				memcpy(k2, k, (size_t)(nkv * hs) * sizeof(float));
				for (int v = 0; v < 2; v++) {
					const float *src = v ? k : q;
					float *dst = v ? ke : qe;
					int64_t nhh = v ? nkv : nh;
					for (int64_t h = 0; h < nhh; h++)
						for (int64_t i = 0; i < hs; i += 2) {
							double ang = (double)pos *
								     pow((double)theta,
									 -(double)i / (double)hs);
							double x0 = src[h * hs + i], x1 = src[h * hs + i + 1];
							dst[h * hs + i] = (float)(x0 * cos(ang) - x1 * sin(ang));
							dst[h * hs + i + 1] =
								(float)(x0 * sin(ang) + x1 * cos(ang));
						}
				}
				lbk_rope(q1, k1, pos, nh, nkv, hs, theta);
				lbk_rope_ref(q2, k2, pos, nh, nkv, hs, theta);
				double tol = (16.0 + 4.0 * (double)pos) * FLT_EPSILON;
				expect_close(q1, qe, nh * hs, tol, 1.0, "rope q");
				expect_close(k1, ke, nkv * hs, tol, 1.0, "rope k");
				expect_close(q2, qe, nh * hs, tol, 1.0, "rope_ref q");
				expect_close(k2, ke, nkv * hs, tol, 1.0, "rope_ref k");
				free(q);
				free(k);
				free(q1);
				free(k1);
				free(q2);
				free(k2);
				free(qe);
				free(ke);
			}
}

static void test_embed(void **state)
{
	(void)state;
	float *table = rand_buf(5 * 17, 1, 0), o[17];
	lbk_embed(o, table, 3, 17);
	assert_memory_equal(o, table + 3 * 17, sizeof(o));
	free(table);
}

/* ---- attention ---- */

/*
 * Attention tolerance: |fast - ref| <= 2e-5 (1 + |ref|). Outputs are convex combinations of
 * v in [-1, 1]. The scores are hs-term dot products (order differences ~sqrt(hs) FLT_EPSILON,
 * times 1/sqrt(hs)); the tiled variants' exponentials are a polynomial within 2 ulp of expf,
 * and their online softmax rescales the running sum each time a key block raises the max (at
 * most seq / 16 times, one rounding each) where the reference exponentiates once.
 */
#define ATT_TOL 2e-5

static void test_attention(void **state)
{
	use_tier(state);
	/* seq across the key blocks (16, 32) and query blocks (6, 8); hs across the vector widths */
	static const int64_t seqs[] = { 1, 7, 17, 65, 129 };
	static const int64_t hss[] = { 1, 7, 16, 17, 64, 65 };
	static const int64_t heads[][2] = { { 1, 1 }, { 4, 2 }, { 6, 1 }, { 3, 3 } };
	for (int a = 0; a < 5; a++)
		for (int b = 0; b < 6; b++)
			for (int c = 0; c < 4; c++)
				for (int causal = 0; causal <= 1; causal++) {
					int64_t seq = seqs[a], hs = hss[b];
					int64_t nh = heads[c][0], nkv = heads[c][1];
					float *q = rand_buf(seq * nh * hs, 3, 0);
					float *k = rand_buf(seq * nkv * hs, 3, 0);
					float *v = rand_buf(seq * nkv * hs, 1, 0);
					float *o = rand_buf(seq * nh * hs, 1, 0);
					float *r = rand_buf(seq * nh * hs, 1, 0);
					char what[96];
					snprintf(what, sizeof(what),
						 "attention seq=%lld hs=%lld heads=%lld/%lld causal=%d isa=%s",
						 (long long)seq, (long long)hs, (long long)nh,
						 (long long)nkv, causal, isa_name(lbk_isa()));
					lbk_attention(o, q, k, v, seq, nh, nkv, hs, causal);
					lbk_attention_ref(r, q, k, v, seq, nh, nkv, hs, causal);
					expect_close(o, r, seq * nh * hs, ATT_TOL, 1.0, what);
					if (causal) /* position 0 sees only key 0: out = v[0] */
						for (int64_t h = 0; h < nh; h++)
							expect_close(o + h * hs,
								     v + (h / (nh / nkv)) * hs, hs,
								     2e-6, 1.0, "causal t=0");
					free(q);
					free(k);
					free(v);
					free(o);
					free(r);
				}
}

/*
 * lbk_attention_strided as the BERT layer uses it: q, k and v read in place from a fused
 * qkv [seq][3 * dim] buffer, heads h0..h0+nh-1 of the layer's n_all (a thread's share), output
 * into att [seq][dim + pad]. Compared with the reference on contiguous copies; every float of
 * att outside those heads' columns must be left as it was.
 */
static void check_strided(int64_t seq, int64_t n_all, int64_t h0, int64_t nh, int64_t hs,
			  int causal)
{
	const int64_t dim = n_all * hs, ldqkv = 3 * dim + 5, ldo = dim + 3;
	float *qkv = rand_buf(seq * ldqkv, 3, 0);
	float *att = rand_buf(seq * ldo, 1, 0), *before = malloc((size_t)(seq * ldo) * sizeof(float));
	float *q = malloc((size_t)(seq * nh * hs) * sizeof(float));
	float *k = malloc((size_t)(seq * nh * hs) * sizeof(float));
	float *v = malloc((size_t)(seq * nh * hs) * sizeof(float));
	float *r = malloc((size_t)(seq * nh * hs) * sizeof(float));
	assert_true(before && q && k && v && r);
	memcpy(before, att, (size_t)(seq * ldo) * sizeof(float));
	for (int64_t t = 0; t < seq; t++) {
		const float *row = qkv + t * ldqkv + h0 * hs;
		memcpy(q + t * nh * hs, row, (size_t)(nh * hs) * sizeof(float));
		memcpy(k + t * nh * hs, row + dim, (size_t)(nh * hs) * sizeof(float));
		memcpy(v + t * nh * hs, row + 2 * dim, (size_t)(nh * hs) * sizeof(float));
	}
	lbk_attention_ref(r, q, k, v, seq, nh, nh, hs, causal);
	lbk_attention_strided(att + h0 * hs, ldo, qkv + h0 * hs, ldqkv, qkv + dim + h0 * hs, ldqkv,
			      qkv + 2 * dim + h0 * hs, ldqkv, seq, nh, nh, hs, causal);
	char what[96];
	snprintf(what, sizeof(what), "strided seq=%lld heads %lld..%lld of %lld hs=%lld causal=%d",
		 (long long)seq, (long long)h0, (long long)(h0 + nh - 1), (long long)n_all,
		 (long long)hs, causal);
	for (int64_t t = 0; t < seq; t++) {
		expect_close(att + t * ldo + h0 * hs, r + t * nh * hs, nh * hs, ATT_TOL, 1.0, what);
		for (int64_t i = 0; i < ldo; i++)
			if (i < h0 * hs || i >= (h0 + nh) * hs)
				if (memcmp(&att[t * ldo + i], &before[t * ldo + i], sizeof(float)) != 0)
					fail_msg("%s: wrote row %lld column %lld, outside its heads",
						 what, (long long)t, (long long)i);
	}
	free(qkv);
	free(att);
	free(before);
	free(q);
	free(k);
	free(v);
	free(r);
}

static void test_attention_strided(void **state)
{
	use_tier(state);
	for (int causal = 0; causal <= 1; causal++) {
		check_strided(128, 12, 0, 6, 64, causal);
		check_strided(128, 12, 6, 6, 64, causal);
		check_strided(17, 5, 1, 3, 7, causal);
		check_strided(65, 3, 2, 1, 17, causal);
		check_strided(1, 2, 1, 1, 16, causal);
	}
}

/*
 * Regression: a row whose running output has cancelled to -0 (a denormal scaled to zero by the
 * online softmax) must not turn +0 when a later row of its query block makes the tile add the
 * P.V of keys the row cannot see (0 * v, +0 for v > 0). Row 32 of one head of size 1: key 0
 * contributes v = -(smallest denormal), key 32 raises the max by 1 (c = e^-1 scales that to -0),
 * keys 33.. hold v = 1. Row 32 of a call over 33 positions and of one over 64 must agree.
 */
static void test_attention_causal_signed_zero(void **state)
{
	use_tier(state);
	enum { S = 64 };
	float q[S], k[S], v[S], o33[33], o64[S];
	for (int t = 0; t < S; t++) {
		q[t] = 1.0f;
		k[t] = t == 0 ? 0.0f : t == 32 ? 1.0f : -100.0f;
		v[t] = t == 0 ? -0x1p-149f : t <= 32 ? -0.0f : 1.0f;
	}
	lbk_attention(o33, q, k, v, 33, 1, 1, 1, 1);
	lbk_attention(o64, q, k, v, S, 1, 1, 1, 1);
	expect_rows_equal(o64, o33, 33, 1, "causal rows 0..32 of 64 against a call over 33");
}

/* ---- attention of chosen rows ---- */

/*
 * lbk_attention_rows on rows pos[0..nr) of a sequence: the rows of lbk_attention_strided over the
 * whole sequence bit for bit (K and V read with a row pad, the gathered queries and the outputs
 * at strides of their own), with and without the attention scratch; lbk_attention_rows_ref the
 * rows of lbk_attention_ref likewise, and the tier's rows within ATT_TOL of the reference's.
 */
static void check_attention_rows(int64_t seq, int64_t hs, int64_t nh, int64_t nkv, int causal,
				 const int64_t *pos, int64_t nr)
{
	const int64_t w = nh * hs, kvw = nkv * hs, ldk = kvw + 3, ldq = w + 2, ldo = w + 1;
	float *q = rand_buf(seq * w, 3, 0), *k = rand_buf(seq * ldk, 3, 0), *v = rand_buf(seq * ldk, 1, 0);
	float *kc = rand_buf(seq * kvw, 1, 0), *vc = rand_buf(seq * kvw, 1, 0);
	float *full = rand_buf(seq * w, 1, 0), *ref = rand_buf(seq * w, 1, 0);
	float *qs = rand_buf(nr * ldq, 1, 0), *got = rand_buf(nr * ldo, 1, 0);
	float *want = rand_buf(nr * w, 1, 0), *packed = rand_buf(nr * w, 1, 0);
	for (int64_t t = 0; t < seq; t++) {
		memcpy(kc + t * kvw, k + t * ldk, (size_t)kvw * sizeof(float));
		memcpy(vc + t * kvw, v + t * ldk, (size_t)kvw * sizeof(float));
	}
	for (int64_t r = 0; r < nr; r++)
		memcpy(qs + r * ldq, q + pos[r] * w, (size_t)w * sizeof(float));
	lbk_attention_strided(full, w, q, w, k, ldk, v, ldk, seq, nh, nkv, hs, causal);
	lbk_attention_ref(ref, q, kc, vc, seq, nh, nkv, hs, causal);
	char what[128];
	for (int pass = 0; pass < 3; pass++) {
		const float *src = pass == 2 ? ref : full;
		lbk_attention_scratch_limit(pass == 1 ? 0 : SIZE_MAX);
		if (pass < 2)
			lbk_attention_rows(got, ldo, qs, ldq, pos, nr, k, ldk, v, ldk, seq, nh, nkv, hs,
					   causal);
		else
			lbk_attention_rows_ref(got, ldo, qs, ldq, pos, nr, kc, kvw, vc, kvw, seq, nh,
					       nkv, hs, causal);
		for (int64_t r = 0; r < nr; r++) {
			memcpy(want + r * w, src + pos[r] * w, (size_t)w * sizeof(float));
			memcpy(packed + r * w, got + r * ldo, (size_t)w * sizeof(float));
		}
		snprintf(what, sizeof(what),
			 "attention rows %s seq=%lld hs=%lld heads=%lld/%lld causal=%d %lld rows isa=%s",
			 pass == 0 ? "" : pass == 1 ? "no scratch" : "ref", (long long)seq, (long long)hs,
			 (long long)nh, (long long)nkv, causal, (long long)nr, isa_name(lbk_isa()));
		expect_rows_equal(packed, want, nr, w, what);
		if (pass == 2) { /* the tier's rows against the reference's, as test_attention */
			for (int64_t r = 0; r < nr; r++)
				memcpy(packed + r * w, full + pos[r] * w, (size_t)w * sizeof(float));
			expect_close(packed, want, nr * w, ATT_TOL, 1.0, what);
		}
	}
	lbk_attention_scratch_limit(SIZE_MAX);
	free(q);
	free(k);
	free(v);
	free(kc);
	free(vc);
	free(full);
	free(ref);
	free(qs);
	free(got);
	free(want);
	free(packed);
}

/* Row sets of a sequence of seq: the first, the last, both, every one, about a third at random. */
static int64_t row_set(int which, int64_t seq, int64_t *pos)
{
	int64_t n = 0;
	for (int64_t t = 0; t < seq; t++) {
		int take = which == 0 ? t == 0
			 : which == 1 ? t == seq - 1
			 : which == 2 ? t == 0 || t == seq - 1
			 : which == 3 ? 1
				      : frand() < -0.33f;
		if (take)
			pos[n++] = t;
	}
	if (n == 0)
		pos[n++] = seq / 2;
	return n;
}

static void test_attention_rows(void **state)
{
	use_tier(state);
	static const int64_t seqs[] = { 1, 7, 17, 40, 65, 129 };
	static const int64_t hss[] = { 7, 16, 64 };
	static const int64_t heads[][2] = { { 1, 1 }, { 4, 2 }, { 6, 1 } };
	int64_t pos[129];
	for (int a = 0; a < 6; a++)
		for (int b = 0; b < 3; b++)
			for (int c = 0; c < 3; c++)
				for (int causal = 0; causal <= 1; causal++)
					for (int which = 0; which < 5; which++) {
						int64_t nr = row_set(which, seqs[a], pos);
						check_attention_rows(seqs[a], hss[b], heads[c][0],
								     heads[c][1], causal, pos, nr);
					}
}

/* Rows not strictly ascending within the keys, or none: nothing is written. */
static void test_attention_rows_refused(void **state)
{
	use_tier(state);
	enum { S = 9, HS = 4 };
	float *q = rand_buf(S * HS, 1, 0), *k = rand_buf(S * HS, 1, 0), *v = rand_buf(S * HS, 1, 0);
	float out[S * HS], before[S * HS];
	static const struct {
		int64_t pos[3], nq, nkeys;
	} bad[] = {
		{ { 2, 1, 5 }, 3, S }, { { 2, 2, 5 }, 3, S }, { { 0, 3, 9 }, 3, S },
		{ { -1, 3, 5 }, 3, S }, { { 0, 1, 2 }, 0, S }, { { 0, 1, 2 }, 3, 2 },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		for (int causal = 0; causal <= 1; causal++) {
			for (int j = 0; j < S * HS; j++)
				out[j] = before[j] = (float)j;
			lbk_attention_rows(out, HS, q, HS, bad[i].pos, bad[i].nq, k, HS, v, HS,
					   bad[i].nkeys, 1, 1, HS, causal);
			lbk_attention_rows_ref(out, HS, q, HS, bad[i].pos, bad[i].nq, k, HS, v, HS,
					       bad[i].nkeys, 1, 1, HS, causal);
			assert_memory_equal(out, before, sizeof(out));
		}
	free(q);
	free(k);
	free(v);
}

/* ---- paged attention ---- */

/*
 * A K or V cache in blocks of 2^bshift positions, each block a read-only mapping of its own, the
 * blocks in shuffled order (block b in slot 7919 b mod nblk of one reserved range, so a table's
 * addresses go up and down) and each followed by a PROT_NONE guard page; the test writes the rows
 * through a second, writable mapping of the same memfd, as a decoder publishes them.
 * Rows not yet published hold NaN. Two layouts:
 *   packed:  rows ld = width + pad floats apart (the pad NaN; K and V pad differently), the
 *            block 64-byte aligned and ending less than 64 bytes before its guard page;
 *   guarded: one page a row, and a row not yet published is PROT_NONE in the kernel's view: a
 *            kernel that reads any byte of a key it was not given faults.
 */
struct kv_blocks {
	float **blk;	/* [nblk] the kernel's view: row s at blk[s >> bshift] + (s & mask) * ld */
	char *rw;	/* writable view, block b at rw + b * blk_len */
	char *res;	/* the reserved range: nblk slots of blk_len and a guard page */
	size_t blk_len; /* bytes a block takes in the memfd (whole pages); one guard page after */
	size_t off;	/* of the block's row 0 in its pages */
	int fd;
	int64_t nblk, ld, width; /* width: floats of a row that hold data (n_kv_heads * hs) */
	int bshift, guarded;
};

static size_t page_size(void)
{
	return (size_t)sysconf(_SC_PAGESIZE);
}

static void kv_make(struct kv_blocks *kv, int64_t seq, int64_t width, int64_t pad, int bshift,
		    int guarded)
{
	const size_t pg = page_size();
	const int64_t B = (int64_t)1 << bshift;
	kv->bshift = bshift;
	kv->guarded = guarded;
	kv->width = width;
	kv->ld = guarded ? (int64_t)(pg / sizeof(float)) : width + pad;
	assert_true(width <= kv->ld);
	kv->nblk = (seq + B - 1) >> bshift;
	const size_t bytes = (size_t)(B * kv->ld) * sizeof(float);
	kv->blk_len = (bytes + pg - 1) / pg * pg;
	kv->off = guarded ? 0 : (kv->blk_len - bytes) & ~(size_t)63;
	kv->fd = memfd_create("lbk-test-kv", MFD_CLOEXEC);
	assert_true(kv->fd >= 0);
	const size_t total = kv->blk_len * (size_t)kv->nblk;
	assert_int_equal(ftruncate(kv->fd, (off_t)total), 0);
	kv->rw = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, kv->fd, 0);
	assert_true(kv->rw != MAP_FAILED);
	for (size_t i = 0; i < total / sizeof(float); i++)
		((float *)kv->rw)[i] = NAN;
	kv->blk = calloc((size_t)kv->nblk, sizeof(*kv->blk));
	assert_non_null(kv->blk);
	kv->res = mmap(NULL, (kv->blk_len + pg) * (size_t)kv->nblk, PROT_NONE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(kv->res != MAP_FAILED);
	assert_true(kv->nblk % 7919 != 0);
	for (int64_t b = 0; b < kv->nblk; b++) {
		char *m = kv->res + (kv->blk_len + pg) * (size_t)(b * 7919 % kv->nblk);
		void *got = mmap(m, kv->blk_len, guarded ? PROT_NONE : PROT_READ, MAP_SHARED | MAP_FIXED,
				 kv->fd, (off_t)(kv->blk_len * (size_t)b));
		assert_true(got == m);
		kv->blk[b] = (float *)(m + kv->off);
	}
}

/* Rows from..to-1 of src [seq][width] into their blocks, through the writable view; guarded rows
 * become readable in the kernel's. */
static void kv_publish(struct kv_blocks *kv, const float *src, int64_t from, int64_t to)
{
	const int64_t B = (int64_t)1 << kv->bshift;
	for (int64_t s = from; s < to;) {
		const int64_t b = s >> kv->bshift, end = (b + 1) * B < to ? (b + 1) * B : to;
		if (kv->guarded)
			assert_int_equal(mprotect(kv->blk[b] + (s - b * B) * kv->ld,
						  (size_t)((end - s) * kv->ld) * sizeof(float), PROT_READ),
					 0);
		float *w = (float *)(kv->rw + kv->blk_len * (size_t)b + kv->off);
		for (; s < end; s++)
			memcpy(w + (s - b * B) * kv->ld, src + s * kv->width,
			       (size_t)kv->width * sizeof(float));
	}
}

static void kv_free(struct kv_blocks *kv)
{
	munmap(kv->res, (kv->blk_len + page_size()) * (size_t)kv->nblk);
	munmap(kv->rw, kv->blk_len * (size_t)kv->nblk);
	close(kv->fd);
	free(kv->blk);
}

/* One paged attention case: its sizes, and out rows ldo = n_heads * hs + 1 floats apart (the
 * extra float a sentinel no call may write). */
struct paged_case {
	int64_t seq, hs, nh, nkv;
	const float *q, *k, *v; /* [seq][nh][hs], [seq][nkv][hs] x2 */
	const float *want;	/* [seq][nh][hs]: causal lbk_attention on contiguous K and V */
	int64_t ldo;
	char what[128];
};

/* Rows of out [seq][ldo] against c->want, bit for bit; the sentinel column untouched. */
static void expect_paged_rows(const struct paged_case *c, const float *out, const char *how)
{
	const int64_t w = c->nh * c->hs;
	char what[200];
	snprintf(what, sizeof(what), "%s, %s", c->what, how);
	for (int64_t t = 0; t < c->seq; t++) {
		expect_rows_equal(out + t * c->ldo, c->want + t * w, 1, w, what);
		if (!isnan(out[t * c->ldo + w]))
			fail_msg("%s: row %lld: wrote past the row's heads", what, (long long)t);
	}
}

static float *nan_buf(int64_t n)
{
	float *p = malloc((size_t)n * sizeof(float));
	assert_non_null(p);
	for (int64_t i = 0; i < n; i++)
		p[i] = NAN;
	return p;
}

/* Calls of nq rows at pos0 = 0, sizes from chunk[] in turn, each after publishing its rows
 * (later rows still NaN or unmapped); a chunk table of { seq } is one prefill. */
static void paged_run(const struct paged_case *c, struct kv_blocks *kb, struct kv_blocks *vb,
		      const int64_t *chunk, int n_chunk, float *out)
{
	for (int64_t pos0 = 0, i = 0; pos0 < c->seq; i++) {
		int64_t nq = chunk[i % n_chunk];
		if (nq > c->seq - pos0)
			nq = c->seq - pos0;
		kv_publish(kb, c->k, pos0, pos0 + nq);
		kv_publish(vb, c->v, pos0, pos0 + nq);
		lbk_attention_paged(out + pos0 * c->ldo, c->ldo, c->q + pos0 * c->nh * c->hs,
				    c->nh * c->hs, pos0, nq, (const float *const *)kb->blk,
				    (const float *const *)vb->blk, kb->ld, vb->ld, kb->bshift, c->nh,
				    c->nkv, c->hs);
		pos0 += nq;
	}
}

/*
 * Every way of cutting the case into calls against the same blocks of 2^bshift positions gives
 * c->want bit for bit: one row a call, a split prefill at several points, one prefill (on blocks
 * already full: keys past a row hold real values then). Each run has fresh blocks that hold only
 * the rows published so far.
 */
static void check_paged_splits(const struct paged_case *c, int bshift, int guarded)
{
	static const int64_t one[] = { 1 }, split[] = { 3, 1, 9, 16, 2, 40, 7 };
	const int64_t whole[] = { c->seq };
	const int64_t kvw = c->nkv * c->hs;
	float *out = nan_buf(c->seq * c->ldo);
	char how[64];
	struct kv_blocks kb, vb;
	for (int run = 0; run < 2; run++) {
		kv_make(&kb, c->seq, kvw, 1, bshift, guarded);
		kv_make(&vb, c->seq, kvw, 3, bshift, guarded);
		snprintf(how, sizeof(how), "block 2^%d %s, %s", bshift, guarded ? "guarded" : "packed",
			 run == 0 ? "one row a call" : "split 3,1,9,16,2,40,7");
		paged_run(c, &kb, &vb, run == 0 ? one : split, run == 0 ? 1 : 7, out);
		expect_paged_rows(c, out, how);
		if (run == 1) { /* the blocks are full now */
			for (int64_t i = 0; i < c->seq * c->ldo; i++)
				out[i] = NAN;
			snprintf(how, sizeof(how), "block 2^%d %s, one prefill", bshift,
				 guarded ? "guarded" : "packed");
			paged_run(c, &kb, &vb, whole, 1, out);
			expect_paged_rows(c, out, how);
		}
		kv_free(&kb);
		kv_free(&vb);
	}
	free(out);
}

/*
 * One case on this tier: causal lbk_attention on contiguous K and V is the reference within
 * ATT_TOL (bit for bit on the scalar tier, which runs it), and lbk_attention_paged on every
 * block size and cut reproduces it bit for bit; lbk_attention_paged_ref reproduces
 * lbk_attention_ref likewise.
 */
static void check_paged_case(int64_t seq, int64_t hs, int64_t nh, int64_t nkv, const int *bshifts,
			     int n_bshift, int guarded)
{
	struct paged_case c = { .seq = seq, .hs = hs, .nh = nh, .nkv = nkv, .ldo = nh * hs + 1 };
	float *q = rand_buf(seq * nh * hs, 3, 0), *k = rand_buf(seq * nkv * hs, 3, 0);
	float *v = rand_buf(seq * nkv * hs, 1, 0), *want = rand_buf(seq * nh * hs, 1, 0);
	float *ref = rand_buf(seq * nh * hs, 1, 0);
	c.q = q;
	c.k = k;
	c.v = v;
	c.want = want;
	snprintf(c.what, sizeof(c.what), "paged seq=%lld hs=%lld heads=%lld/%lld isa=%s",
		 (long long)seq, (long long)hs, (long long)nh, (long long)nkv, isa_name(lbk_isa()));
	lbk_attention(want, q, k, v, seq, nh, nkv, hs, 1);
	lbk_attention_ref(ref, q, k, v, seq, nh, nkv, hs, 1);
	expect_close(want, ref, seq * nh * hs, ATT_TOL, 1.0, c.what);
	if (lbk_isa() == LBK_ISA_SCALAR)
		expect_rows_equal(want, ref, seq, nh * hs, c.what);
	for (int b = 0; b < n_bshift; b++)
		check_paged_splits(&c, bshifts[b], guarded);

	/* the reference through blocks of the first size: lbk_attention_ref's bits */
	struct kv_blocks kb, vb;
	kv_make(&kb, seq, nkv * hs, 1, bshifts[0], guarded);
	kv_make(&vb, seq, nkv * hs, 3, bshifts[0], guarded);
	kv_publish(&kb, k, 0, seq);
	kv_publish(&vb, v, 0, seq);
	float *out = nan_buf(seq * c.ldo);
	int64_t half = seq / 2;
	lbk_attention_paged_ref(out, c.ldo, q, nh * hs, 0, half, (const float *const *)kb.blk,
				(const float *const *)vb.blk, kb.ld, vb.ld, kb.bshift, nh, nkv, hs);
	lbk_attention_paged_ref(out + half * c.ldo, c.ldo, q + half * nh * hs, nh * hs, half,
				seq - half, (const float *const *)kb.blk, (const float *const *)vb.blk,
				kb.ld, vb.ld, kb.bshift, nh, nkv, hs);
	c.want = ref;
	expect_paged_rows(&c, out, "lbk_attention_paged_ref in two calls");
	kv_free(&kb);
	kv_free(&vb);
	free(out);
	free(q);
	free(k);
	free(v);
	free(want);
	free(ref);
}

static const int paged_bshifts[] = { 0, 1, 4, 6 };
#define N_PAGED_BSHIFTS ((int)(sizeof(paged_bshifts) / sizeof(paged_bshifts[0])))

/* Batch invariance on odd sizes: sequences across the query (6, 8) and key (16, 32) blocks, head
 * sizes across the vector widths, block sizes 1, 2, 16, 64; packed blocks, NaN past the rows. */
static void test_attention_paged(void **state)
{
	use_tier(state);
	static const int64_t seqs[] = { 1, 7, 33, 100, 257 };
	static const int64_t hss[] = { 1, 7, 17, 64, 80 };
	static const int64_t heads[][2] = { { 1, 1 }, { 4, 2 }, { 12, 4 } };
	for (int a = 0; a < 5; a++)
		for (int b = 0; b < 5; b++)
			for (int h = 0; h < 3; h++)
				check_paged_case(seqs[a], hss[b], heads[h][0], heads[h][1], paged_bshifts,
						 N_PAGED_BSHIFTS, 0);
}

/* The same with one page a row and the rows a call was not given unmapped (PROT_NONE): a read
 * of anything but keys 0..pos0+nq-1 faults. */
static void test_attention_paged_guarded(void **state)
{
	use_tier(state);
	static const int64_t seqs[] = { 7, 40, 100 };
	static const int64_t hss[] = { 1, 17, 80 };
	for (int a = 0; a < 3; a++)
		for (int b = 0; b < 3; b++)
			check_paged_case(seqs[a], hss[b], 4, 2, paged_bshifts, N_PAGED_BSHIFTS, 1);
}

/*
 * Attention without its scratch (what an allocation failure leaves): the stack path must give
 * the scratch path's bits, causal and bidirectional, contiguous and paged one row a call, on
 * head sizes across its dimension tiles (64) and column slices (16, 32).
 */
static void check_no_scratch(int64_t seq, int64_t hs, int64_t nh, int64_t nkv, int causal)
{
	const int64_t w = nh * hs, kvw = nkv * hs;
	float *q = rand_buf(seq * w, 3, 0), *k = rand_buf(seq * kvw, 3, 0), *v = rand_buf(seq * kvw, 1, 0);
	float *want = rand_buf(seq * w, 1, 0), *got = rand_buf(seq * w, 1, 0);
	char what[128];
	snprintf(what, sizeof(what), "no scratch seq=%lld hs=%lld heads=%lld/%lld causal=%d isa=%s",
		 (long long)seq, (long long)hs, (long long)nh, (long long)nkv, causal,
		 isa_name(lbk_isa()));
	lbk_attention_scratch_limit(SIZE_MAX);
	lbk_attention(want, q, k, v, seq, nh, nkv, hs, causal);
	lbk_attention_scratch_limit(0);
	lbk_attention(got, q, k, v, seq, nh, nkv, hs, causal);
	expect_rows_equal(got, want, seq, w, what);
	if (causal) {
		const float *kb[1] = { k }, *vb[1] = { v };
		memset(got, 0, (size_t)(seq * w) * sizeof(float));
		for (int64_t t = 0; t < seq; t++)
			lbk_attention_paged(got + t * w, w, q + t * w, w, t, 1, kb, vb, kvw, kvw, 62, nh,
					    nkv, hs);
		expect_rows_equal(got, want, seq, w, what);
	}
	lbk_attention_scratch_limit(SIZE_MAX);
	free(q);
	free(k);
	free(v);
	free(want);
	free(got);
}

static void test_attention_no_scratch(void **state)
{
	use_tier(state);
	static const int64_t seqs[] = { 1, 7, 40, 100 };
	static const int64_t hss[] = { 1, 7, 17, 64, 80, 130 };
	static const int64_t heads[][2] = { { 1, 1 }, { 4, 2 }, { 6, 1 } };
	for (int a = 0; a < 4; a++)
		for (int b = 0; b < 6; b++)
			for (int c = 0; c < 3; c++)
				for (int causal = 0; causal <= 1; causal++)
					check_no_scratch(seqs[a], hss[b], heads[c][0], heads[c][1], causal);
}

/*
 * The fused variant (FusedKV), causal over seq keys in blocks of 2^bshift, each tier with and
 * without its scratch: bit for bit the plain call of the tier over K and V rebuilt beforehand
 * (a K + a2 K2, b V + b2 V2, each product rounded, then the sum), and within ATT_TOL of its
 * reference, which is the plain reference's bits over them; with a = 0, a2 = 1, b = 1, b2 = 0,
 * plain attention over K2 and V bit for bit.
 */
static void check_fused(int64_t seq, int64_t hs, int64_t nh, int64_t nkv, int bshift)
{
	const int64_t w = nh * hs, kvw = nkv * hs, B = (int64_t)1 << bshift;
	const int64_t nb = (seq + B - 1) / B;
	float *q = rand_buf(seq * w, 3, 0), *k = rand_buf(nb * B * kvw, 3, 0);
	float *k2 = rand_buf(nb * B * kvw, 3, 0), *v = rand_buf(nb * B * kvw, 1, 0);
	float *v2 = rand_buf(nb * B * kvw, 1, 0), *kf = rand_buf(nb * B * kvw, 1, 0);
	float *vf = rand_buf(nb * B * kvw, 1, 0), *cf = rand_buf(4 * kvw, 1, 0.5f);
	float *want = rand_buf(seq * w, 1, 0), *got = rand_buf(seq * w, 1, 0);
	float *ref = rand_buf(seq * w, 1, 0);
	const float **tab = malloc((size_t)(6 * nb) * sizeof(*tab));
	assert_non_null(tab);
	for (int64_t i = 0; i < nb; i++) {
		tab[i] = k + i * B * kvw, tab[nb + i] = v + i * B * kvw;
		tab[2 * nb + i] = k2 + i * B * kvw, tab[3 * nb + i] = v2 + i * B * kvw;
		tab[4 * nb + i] = kf + i * B * kvw, tab[5 * nb + i] = vf + i * B * kvw;
	}
	struct lbk_fused f = { tab + 2 * nb, tab + 3 * nb, cf, cf + kvw, cf + 2 * kvw, cf + 3 * kvw };
	for (int64_t s = 0; s < seq; s++)
		for (int64_t c = 0; c < kvw; c++) { /* products as statements: never an FMA */
			float p = f.a[c] * k[s * kvw + c], r = f.a2[c] * k2[s * kvw + c];
			kf[s * kvw + c] = p + r;
			p = f.b[c] * v[s * kvw + c];
			r = f.b2[c] * v2[s * kvw + c];
			vf[s * kvw + c] = p + r;
		}
	char what[160];
	snprintf(what, sizeof(what), "fused seq=%lld hs=%lld heads=%lld/%lld bshift=%d isa=%s",
		 (long long)seq, (long long)hs, (long long)nh, (long long)nkv, bshift,
		 isa_name(lbk_isa()));
	lbk_attention_paged_fused_ref(ref, w, q, w, 0, seq, tab, tab + nb, kvw, kvw, bshift, nh, nkv,
				      hs, &f);
	lbk_attention_paged_ref(want, w, q, w, 0, seq, tab + 4 * nb, tab + 5 * nb, kvw, kvw, bshift,
				nh, nkv, hs);
	expect_rows_equal(ref, want, seq, w, what);
	lbk_attention_paged(want, w, q, w, 0, seq, tab + 4 * nb, tab + 5 * nb, kvw, kvw, bshift, nh,
			    nkv, hs);
	for (int scratch = 1; scratch >= 0; scratch--) {
		lbk_attention_scratch_limit(scratch ? SIZE_MAX : 0);
		lbk_attention_paged_fused(got, w, q, w, 0, seq, tab, tab + nb, kvw, kvw, bshift, nh, nkv,
					  hs, &f);
		expect_rows_equal(got, want, seq, w, what);
		expect_close(got, ref, seq * w, ATT_TOL, 1.0, what);
	}
	lbk_attention_scratch_limit(SIZE_MAX);
	for (int64_t c = 0; c < kvw; c++)
		cf[c] = 0, cf[kvw + c] = 1, cf[2 * kvw + c] = 1, cf[3 * kvw + c] = 0;
	lbk_attention_paged_fused(got, w, q, w, 0, seq, tab, tab + nb, kvw, kvw, bshift, nh, nkv, hs,
				  &f);
	lbk_attention_paged(want, w, q, w, 0, seq, tab + 2 * nb, tab + nb, kvw, kvw, bshift, nh, nkv,
			    hs);
	expect_rows_equal(got, want, seq, w, what);
	free(tab);
	free(q), free(k), free(k2), free(v), free(v2), free(kf), free(vf), free(cf);
	free(want), free(got), free(ref);
}

static void test_attention_paged_fused(void **state)
{
	use_tier(state);
	static const int64_t seqs[] = { 1, 7, 33, 100 };
	static const int64_t hss[] = { 1, 7, 17, 64, 80 };
	static const int64_t heads[][2] = { { 1, 1 }, { 4, 2 }, { 6, 3 } };
	for (int a = 0; a < 4; a++)
		for (int b = 0; b < 5; b++)
			for (int h = 0; h < 3; h++)
				check_fused(seqs[a], hss[b], heads[h][0], heads[h][1], a % 2 ? 4 : 3);
}

static void *attention_in_thread(void *arg)
{
	float *buf = arg; /* q k v out, [40][2][17] each */
	lbk_attention(buf + 3 * 40 * 34, buf, buf + 40 * 34, buf + 2 * 40 * 34, 40, 2, 2, 17, 1);
	return NULL;
}

/* A thread's attention scratch goes with the thread (LeakSanitizer, in the ASan build, reports
 * it otherwise); the thread's result is the caller's. */
static void test_attention_thread_scratch(void **state)
{
	use_tier(state);
	float *buf = rand_buf(4 * 40 * 34, 1, 0), *want = rand_buf(40 * 34, 1, 0);
	lbk_attention(want, buf, buf + 40 * 34, buf + 2 * 40 * 34, 40, 2, 2, 17, 1);
	for (int i = 0; i < 3; i++) {
		pthread_t t;
		assert_int_equal(pthread_create(&t, NULL, attention_in_thread, buf), 0);
		assert_int_equal(pthread_join(t, NULL), 0);
		expect_rows_equal(buf + 3 * 40 * 34, want, 40, 34, "attention in a thread");
	}
	free(buf);
	free(want);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_isa_force),
		TIERED(test_matmul_odd),
		TIERED(test_gemm_odd),
		TIERED(test_gemm_epilogue),
		TIERED(test_gemm_rows),
		cmocka_unit_test(test_gemm_bert),
		cmocka_unit_test(test_gemv_bandwidth),
		TIERED(test_softmax),
		TIERED(test_activations),
		TIERED(test_norms),
		cmocka_unit_test(test_rope),
		cmocka_unit_test(test_embed),
		TIERED(test_attention),
		TIERED(test_attention_strided),
		TIERED(test_attention_causal_signed_zero),
		TIERED(test_attention_rows),
		TIERED(test_attention_rows_refused),
		TIERED(test_attention_paged),
		TIERED(test_attention_paged_guarded),
		TIERED(test_attention_no_scratch),
		TIERED(test_attention_paged_fused),
		TIERED(test_attention_thread_scratch),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
