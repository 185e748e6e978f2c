/* Fingerprint tests: AVX-512 and scalar paths bit-identical, an independent reference of
 * PROTOCOL.md "Fingerprint" and its test vectors, SimHash properties, token hash, bad input. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>
#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

#include "layerbank/layerbank.h"
#include "testutil.h"
#include "../libclient/fingerprint_internal.h"
#include "rng.h"

#define WORDS (LB_FP_BITS / 64)

/* ---- helpers ---- */

/* 2^e as a double (-1022 <= e <= 1023), without libm. */
static double pow2(int e)
{
	uint64_t bits = (uint64_t)(e + 1023) << 52;
	double d;

	memcpy(&d, &bits, sizeof(d));
	return d;
}

/* The next double towards +inf (up) or -inf, for finite x; without libm. */
static double next_double(double x, int up)
{
	uint64_t bits;

	if (x == 0.0)
		return up ? 0x1p-1074 : -0x1p-1074;
	memcpy(&bits, &x, sizeof(bits));
	bits += ((x > 0) == !!up) ? 1 : (uint64_t)-1;
	memcpy(&x, &bits, sizeof(x));
	return x;
}

/* Test data generator, independent of the projection's PRNG stream. */
static uint64_t rng_state = 0x5eed;

static uint64_t rnd(void)
{
	return lbu_splitmix64(&rng_state);
}

/* Uniform in [-1, 1). */
static float unif(void)
{
	return (float)((double)(rnd() >> 11) * 0x1p-52 - 1.0);
}

/* Roughly normal: sum of 4 uniforms. */
static float gauss(void)
{
	return (unif() + unif() + unif() + unif()) * 0.8660254f;
}

/* Any finite float, sign and exponent uniform: subnormals up to FLT_MAX. */
static float wild(void)
{
	uint32_t bits;
	float f;

	do {
		bits = (uint32_t)rnd();
		memcpy(&f, &bits, sizeof(f));
	} while (!isfinite(f));
	return f;
}

enum fill { FILL_UNIF, FILL_GAUSS, FILL_WILD, FILL_DYADIC, FILL_MIXED, FILL_N };

static void fill(float *x, size_t n, enum fill how)
{
	for (size_t i = 0; i < n; i++) {
		switch (how) {
		case FILL_UNIF:
			x[i] = unif();
			break;
		case FILL_GAUSS:
			x[i] = gauss() * 0.02f;
			break;
		case FILL_WILD:
			x[i] = wild();
			break;
		case FILL_DYADIC:
			/* Few distinct values: exact sums, many equal magnitudes, many zero dots. */
			x[i] = (float)((int)(rnd() % 5) - 2) * 0.5f;
			break;
		default:
			/* Scale of each value drawn from 2^-140 .. 2^120: sums lose bits. */
			x[i] = (float)(unif() * pow2((int)(rnd() % 260) - 140));
			break;
		}
	}
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	assert_non_null(p);
	return p;
}

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

/*
 * The algorithm of PROTOCOL.md "Fingerprint", written again from the text and as plainly as
 * possible (the PRNG regenerated per call, the scale found by halving and doubling, rounding by
 * the 1.5 * 2^52 trick, dots summed directly), so that it shares no code with the library.
 */
static void ref_fingerprint(uint32_t dim, uint32_t k, uint64_t seed, const float *center,
			    const float *emb, uint32_t n, uint64_t out[WORDS], int *zero_dots)
{
	const size_t elems = (size_t)dim * k, words = (elems + 63) / 64;
	double *v = xmalloc(elems * sizeof(double)), m = 0.0, scale = 1.0;
	int32_t *q = xmalloc(elems * sizeof(int32_t));
	uint64_t state = seed;

	for (uint32_t c = 0; c < k; c++) {
		uint64_t lo = (uint64_t)c * n / k, hi = (uint64_t)(c + 1) * n / k;

		for (uint32_t d = 0; d < dim; d++) {
			double s = 0.0;

			if (lo == hi) {
				v[(size_t)c * dim + d] = 0.0;
				continue;
			}
			for (uint64_t t = lo; t < hi; t++)
				s += (double)emb[t * dim + d];
			s /= (double)(hi - lo);
			if (center)
				s -= (double)center[d];
			v[(size_t)c * dim + d] = s;
		}
	}
	for (size_t j = 0; j < elems; j++)
		if (isfinite(v[j]) && (v[j] > m || -v[j] > m))
			m = v[j] > 0 ? v[j] : -v[j];
	if (m > 0) {
		double y = m;

		while (y >= 0x1p20) {
			y *= 0.5;
			scale *= 0.5;
		}
		while (y < 0x1p19) {
			y *= 2.0;
			scale *= 2.0;
		}
	}
	for (size_t j = 0; j < elems; j++) {
		if (isnan(v[j]))
			q[j] = 0;
		else if (isinf(v[j]))
			q[j] = v[j] > 0 ? 1 << 20 : -(1 << 20);
		else
			q[j] = (int32_t)((v[j] * scale + 0x1.8p52) - 0x1.8p52);
	}
	memset(out, 0, WORDS * sizeof(uint64_t));
	for (int i = 0; i < LB_FP_BITS; i++) {
		int64_t dot = 0;

		for (size_t w = 0; w < words; w++) {
			uint64_t x = lbu_splitmix64(&state);

			for (size_t b = 0; b < 64 && w * 64 + b < elems; b++)
				dot += ((x >> b) & 1) ? q[w * 64 + b] : -(int64_t)q[w * 64 + b];
		}
		if (dot > 0)
			out[i / 64] |= 1ull << (i % 64);
		if (dot == 0 && zero_dots)
			(*zero_dots)++;
	}
	free(v);
	free(q);
}

static void print_fp(const char *what, const uint64_t fp[WORDS])
{
	printf("  %s %016" PRIx64 " %016" PRIx64 " %016" PRIx64 " %016" PRIx64 "\n", what, fp[0],
	       fp[1], fp[2], fp[3]);
}

/* Scalar, AVX-512 (when have) and the reference agree on one input; returns zero dots seen. */
static int check_paths(uint32_t dim, uint32_t k, uint64_t seed, const float *center,
		       const float *emb, uint32_t n, int have, int with_ref)
{
	struct lb_fp_proj *p = lb_fp_proj_new(dim, k, seed, center);
	uint64_t s[WORDS], a[WORDS], r[WORDS];
	int zeros = 0;

	assert_non_null(p);
	assert_int_equal(lbi_fingerprint_path(p, emb, n, s, LBI_FP_SCALAR), 0);
	if (have) {
		assert_int_equal(lbi_fingerprint_path(p, emb, n, a, LBI_FP_AVX512), 0);
		if (memcmp(s, a, sizeof(s))) {
			printf("paths differ: dim %u chunks %u n %u center %d\n", dim, k, n, !!center);
			print_fp("scalar", s);
			print_fp("avx512", a);
			fail();
		}
	}
	if (with_ref) {
		ref_fingerprint(dim, k, seed, center, emb, n, r, &zeros);
		if (memcmp(s, r, sizeof(s))) {
			printf("reference differs: dim %u chunks %u n %u center %d\n", dim, k, n, !!center);
			print_fp("scalar", s);
			print_fp("ref   ", r);
			fail();
		}
	}
	lb_fp_proj_free(p);
	return zeros;
}

/* ---- the specification ---- */

/* PROTOCOL.md "Fingerprint", PRNG check values. */
static void test_splitmix64_check_values(void **state)
{
	uint64_t s0 = 0, s1 = 0x0123456789abcdefull;

	(void)state;
	assert_int_equal(lbu_splitmix64(&s0), 0xe220a8397b1dcdafull);
	assert_int_equal(lbu_splitmix64(&s1), 0x157a3807a48faa9dull);
	assert_int_equal(lbu_splitmix64(&s1), 0xd573529b34a1d093ull);
}

/* PROTOCOL.md "Fingerprint", test vectors 1 and 2: the spec and the code must agree. */
static void test_protocol_vectors(void **state)
{
	static const float e1[7][4] = {
		{ 0.5f, -1.25f, 3.0f, 0.0625f }, { -0.75f, 2.0f, 0.125f, -1.0f },
		{ 1.5f, 0.375f, -2.5f, 0.25f },  { 2.25f, -0.625f, 1.0f, -1.75f },
		{ -1.0f, 1.125f, 0.5f, 3.5f },   { 0.875f, -2.0f, -0.25f, 1.5f },
		{ 0.3125f, 0.75f, -1.5f, -0.5f },
	};
	static const float c1[4] = { 0.25f, -0.5f, 0.0f, 1.0f };
	static const uint64_t x1[WORDS] = { 0xed893144d4d2b5e7ull, 0xb06da0cbd08237f6ull,
					    0x987ef6272708537cull, 0x43237d4c3235f9d6ull };
	static const float e2[2][3] = { { 1.0f, -2.0f, 0.5f }, { -0.25f, 0.75f, 4.0f } };
	static const uint64_t x2[WORDS] = { 0x51d8eb4d91479d4bull, 0xf6b657712a230203ull,
					    0x674a0e886f960432ull, 0xa7d9c450963e0cf0ull };
	const int have = lbi_fp_have_avx512();
	struct lb_fp_proj *p1 = lb_fp_proj_new(4, 3, 0x0123456789abcdefull, c1);
	struct lb_fp_proj *p2 = lb_fp_proj_new(3, 4, 1, NULL);
	uint64_t out[WORDS];

	(void)state;
	assert_non_null(p1);
	assert_non_null(p2);
	for (int path = LBI_FP_AUTO; path <= LBI_FP_AVX512; path++) {
		if (path == LBI_FP_AVX512 && !have)
			continue;
		assert_int_equal(lbi_fingerprint_path(p1, &e1[0][0], 7, out, path), 0);
		assert_memory_equal(out, x1, sizeof(out));
		assert_int_equal(lbi_fingerprint_path(p2, &e2[0][0], 2, out, path), 0);
		assert_memory_equal(out, x2, sizeof(out));
	}
	ref_fingerprint(4, 3, 0x0123456789abcdefull, c1, &e1[0][0], 7, out, NULL);
	assert_memory_equal(out, x1, sizeof(out));
	ref_fingerprint(3, 4, 1, NULL, &e2[0][0], 2, out, NULL);
	assert_memory_equal(out, x2, sizeof(out));
	lb_fp_proj_free(p1);
	lb_fp_proj_free(p2);
}

/* ---- AVX-512 against scalar ---- */

static void test_paths_identical_odd_sizes(void **state)
{
	static const uint32_t ns[] = { 1, 2, 3, 5, 7, 17, 65, 129, 513 };
	static const uint32_t dims[] = { 1, 7, 64, 65, 768 };
	const int have = lbi_fp_have_avx512();
	unsigned cases = 0;

	(void)state;
	if (!have)
		printf("SKIP (comparison part): this CPU has no AVX-512F; checking scalar against the "
		       "reference only\n");
	for (size_t in = 0; in < sizeof(ns) / sizeof(ns[0]); in++) {
		for (size_t id = 0; id < sizeof(dims) / sizeof(dims[0]); id++) {
			const uint32_t n = ns[in], dim = dims[id];
			float *emb = xmalloc((size_t)n * dim * sizeof(float));
			float *center = xmalloc(dim * sizeof(float));

			for (uint32_t k = 1; k <= 8; k++) {
				for (int c = 0; c < 2; c++) {
					const enum fill how = (enum fill)(rnd() % FILL_N);
					/* The reference is slow; run it on the smaller half. */
					const int with_ref = (uint64_t)n * dim * k <= 100000;

					fill(emb, (size_t)n * dim, how);
					fill(center, dim, how == FILL_WILD ? FILL_UNIF : how);
					check_paths(dim, k, rnd(), c ? center : NULL, emb, n, have, with_ref);
					cases++;
				}
			}
			free(emb);
			free(center);
		}
	}
	printf("  %u inputs, scalar %s\n", cases, have ? "== avx512" : "only");
}

/* Dot products of exactly 0 must give bit 0 on every path: equal magnitudes that cancel. */
static void test_paths_zero_dot_ties(void **state)
{
	const int have = lbi_fp_have_avx512();
	float emb[4 * 64];
	int zeros = 0;

	(void)state;
	/* Two equal values: every row whose two signs differ has dot 0. */
	emb[0] = emb[1] = 0.75f;
	zeros += check_paths(2, 1, 7, NULL, emb, 1, have, 1);
	emb[1] = -0.75f;
	zeros += check_paths(2, 1, 7, NULL, emb, 1, have, 1);
	/* 64 equal values: rows with 32 set bits have dot 0; repeated over tokens and chunks. */
	for (int i = 0; i < 4 * 64; i++)
		emb[i] = 0.5f;
	zeros += check_paths(64, 1, 11, NULL, emb, 4, have, 1);
	zeros += check_paths(32, 2, 13, NULL, emb, 8, have, 1);
	/* Centering to exactly zero: q all 0, every dot 0, every bit 0. */
	{
		float c[64];
		uint64_t out[WORDS];
		struct lb_fp_proj *p;

		for (int i = 0; i < 64; i++)
			c[i] = 0.5f;
		p = lb_fp_proj_new(64, 4, 3, c);
		assert_non_null(p);
		assert_int_equal(lb_fingerprint(p, emb, 4, out), 0);
		for (int w = 0; w < WORDS; w++)
			assert_int_equal(out[w], 0);
		zeros += check_paths(64, 4, 3, c, emb, 4, have, 1);
		lb_fp_proj_free(p);
	}
	printf("  %d zero dot products checked\n", zeros);
	assert_true(zeros > 256);
}

/* Tiny (subnormal), huge (FLT_MAX), mixed, inf and NaN: both paths agree and don't trap. */
static void test_paths_extreme_values(void **state)
{
	static const float special[] = { 0.0f,        -0.0f,      1e-45f,  -1e-45f, 1.17549435e-38f,
					 3.4028235e38f, -3.4028235e38f, 1e30f, -1e-30f, 1.0f,
					 INFINITY,    -INFINITY,  NAN };
	const size_t ns = sizeof(special) / sizeof(special[0]);
	const int have = lbi_fp_have_avx512();
	float emb[33 * 9], center[9];

	(void)state;
	for (int round = 0; round < 400; round++) {
		const uint32_t dim = 1 + (uint32_t)(rnd() % 9), n = 1 + (uint32_t)(rnd() % 33);
		const uint32_t k = 1 + (uint32_t)(rnd() % 8);
		/* First rounds without inf/NaN, the rest with. */
		const size_t pick = round < 200 ? ns - 3 : ns;

		for (uint32_t i = 0; i < n * dim; i++)
			emb[i] = rnd() % 3 ? special[rnd() % pick] : wild();
		for (uint32_t d = 0; d < dim; d++)
			center[d] = rnd() % 2 ? special[rnd() % pick] : unif();
		check_paths(dim, k, rnd(), round % 2 ? center : NULL, emb, n, have, 1);
	}
	/* All subnormal: the scale reaches its largest values. */
	for (int i = 0; i < 33 * 9; i++)
		emb[i] = (float)(rnd() % 7) * 1e-45f * (rnd() % 2 ? 1.0f : -1.0f);
	check_paths(9, 3, 5, NULL, emb, 33, have, 1);
}

/* Over 16384 pooled elements of the largest magnitude: the AVX-512 path folds its int32 lanes
 * into int64 before they can overflow. */
static void test_paths_lane_overflow_guard(void **state)
{
	const uint32_t dim = 8191, k = 3, n = 3;
	const int have = lbi_fp_have_avx512();
	float *emb = xmalloc((size_t)n * dim * sizeof(float));

	(void)state;
	/* |q| = round(1.99 * 2^19) ~ 2^20 everywhere, same sign: the worst case for each lane. */
	for (size_t i = 0; i < (size_t)n * dim; i++)
		emb[i] = 1.99f;
	check_paths(dim, k, 17, NULL, emb, n, have, 1);
	for (size_t i = 0; i < (size_t)n * dim; i++)
		emb[i] = -1.99f;
	check_paths(dim, k, 17, NULL, emb, n, have, 1);
	fill(emb, (size_t)n * dim, FILL_UNIF);
	check_paths(dim, k, 19, NULL, emb, n, have, 1);
	free(emb);
}

/* The caller's MXCSR (flush-to-zero, denormals-are-zero, rounding toward zero, as fast-math
 * binaries and ML runtimes set) changes nothing, and is given back as it was. */
static void test_caller_fp_environment_ignored(void **state)
{
#if defined(__x86_64__)
	/* FTZ | DAZ | round toward zero | all exceptions masked, flags clear. */
	const unsigned int odd_csr = 0x8000u | 0x0040u | 0x6000u | 0x1f80u;
	const int have = lbi_fp_have_avx512();
	float emb[17 * 65];
	uint64_t want[WORDS], got_s[WORDS], got_a[WORDS];

	(void)state;
	for (int round = 0; round < 50; round++) {
		const uint32_t dim = 1 + (uint32_t)(rnd() % 65), n = 1 + (uint32_t)(rnd() % 17);
		struct lb_fp_proj *p = lb_fp_proj_new(dim, 3, rnd(), NULL);
		unsigned int saved, after;
		int rs, ra = 0;

		assert_non_null(p);
		/* Subnormal floats (every one in odd rounds: DAZ would make them all zero), and
		 * chunk sizes that make the divisions inexact. */
		for (uint32_t i = 0; i < n * dim; i++)
			emb[i] = round % 2 || rnd() % 2 ? (float)((int)(rnd() % 200) - 100) * 1e-43f :
							   unif() * 1e-3f;
		assert_int_equal(lbi_fingerprint_path(p, emb, n, want, LBI_FP_SCALAR), 0);
		saved = _mm_getcsr();
		_mm_setcsr(odd_csr);
		rs = lbi_fingerprint_path(p, emb, n, got_s, LBI_FP_SCALAR);
		if (have)
			ra = lbi_fingerprint_path(p, emb, n, got_a, LBI_FP_AVX512);
		after = _mm_getcsr();
		_mm_setcsr(saved);
		assert_int_equal(rs, 0);
		assert_int_equal(ra, 0);
		assert_int_equal(after, odd_csr);
		assert_memory_equal(want, got_s, sizeof(want));
		if (have)
			assert_memory_equal(want, got_a, sizeof(want));
		lb_fp_proj_free(p);
	}
#else
	(void)state;
	printf("SKIP: MXCSR is x86 only\n");
	skip();
#endif
}

/* ---- across processes ---- */

static void test_deterministic_across_processes(void **state)
{
	const uint32_t dim = 768, n = 100;
	float *emb = xmalloc((size_t)n * dim * sizeof(float)), center[768];
	uint64_t mine[WORDS], theirs[WORDS];
	struct lb_fp_proj *p;
	int fds[2], status;
	pid_t pid;

	(void)state;
	fill(emb, (size_t)n * dim, FILL_GAUSS);
	fill(center, dim, FILL_GAUSS);
	assert_int_equal(pipe(fds), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* The child builds its own projection: other heap, other addresses. */
		uint64_t fp[WORDS];
		struct lb_fp_proj *cp = lb_fp_proj_new(dim, 0, 0xfeedull, center);

		close(fds[0]);
		if (!cp || lb_fingerprint(cp, emb, n, fp) != 0)
			_exit(2);
		_exit(write(fds[1], fp, sizeof(fp)) == (ssize_t)sizeof(fp) ? 0 : 3);
	}
	close(fds[1]);
	assert_int_equal(read(fds[0], theirs, sizeof(theirs)), sizeof(theirs));
	close(fds[0]);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	p = lb_fp_proj_new(dim, 4, 0xfeedull, center);
	assert_non_null(p);
	assert_int_equal(lbi_fingerprint_path(p, emb, n, mine, LBI_FP_SCALAR), 0);
	assert_memory_equal(mine, theirs, sizeof(mine));
	lb_fp_proj_free(p);
	free(emb);
}

/* ---- SimHash properties ---- */

static void test_identical_inputs_identical_hash(void **state)
{
	const uint32_t dim = 256, n = 40;
	float *a = xmalloc((size_t)n * dim * sizeof(float)), *b = xmalloc((size_t)n * dim * sizeof(float));
	struct lb_fp_proj *p = lb_fp_proj_new(dim, 4, 99, NULL);
	struct lb_fp_proj *p4 = lb_fp_proj_new(dim, 0, 99, NULL);
	uint64_t x[WORDS], y[WORDS], z[WORDS];

	(void)state;
	assert_non_null(p);
	assert_non_null(p4);
	fill(a, (size_t)n * dim, FILL_UNIF);
	memcpy(b, a, (size_t)n * dim * sizeof(float));
	assert_int_equal(lb_fingerprint(p, a, n, x), 0);
	assert_int_equal(lb_fingerprint(p, b, n, y), 0);
	assert_int_equal(lb_fingerprint(p4, b, n, z), 0); /* chunks 0 means 4 */
	assert_memory_equal(x, y, sizeof(x));
	assert_memory_equal(x, z, sizeof(x));
	assert_int_equal(lb_fp_hamming(x, y), 0);
	lb_fp_proj_free(p);
	lb_fp_proj_free(p4);
	free(a);
	free(b);
}

static void test_similar_close_unrelated_far(void **state)
{
	const uint32_t dim = 768, n = 128;
	const size_t sz = (size_t)n * dim;
	float *a = xmalloc(sz * sizeof(float)), *b = xmalloc(sz * sizeof(float));
	struct lb_fp_proj *p = lb_fp_proj_new(dim, 4, 1234, NULL);
	uint64_t x[WORDS], y[WORDS];
	uint32_t h_small, h_edit, h_far, worst_far = 128;

	(void)state;
	assert_non_null(p);
	fill(a, sz, FILL_GAUSS);
	assert_int_equal(lb_fingerprint(p, a, n, x), 0);

	/* Tiny noise on one token. */
	memcpy(b, a, sz * sizeof(float));
	for (uint32_t d = 0; d < dim; d++)
		b[50 * dim + d] += 0.0002f * unif();
	assert_int_equal(lb_fingerprint(p, b, n, y), 0);
	h_small = lb_fp_hamming(x, y);

	/* One token replaced by another: a one-word edit. */
	fill(b + 50 * dim, dim, FILL_GAUSS);
	assert_int_equal(lb_fingerprint(p, b, n, y), 0);
	h_edit = lb_fp_hamming(x, y);

	for (int i = 0; i < 20; i++) {
		fill(b, sz, FILL_GAUSS);
		assert_int_equal(lb_fingerprint(p, b, n, y), 0);
		h_far = lb_fp_hamming(x, y);
		if (abs((int)h_far - 128) > abs((int)worst_far - 128))
			worst_far = h_far;
	}
	printf("  hamming: noise on one token %u, one token replaced %u, unrelated (furthest from "
	       "128 of 20) %u\n", h_small, h_edit, worst_far);
	assert_true(h_small <= 4);
	assert_true(h_edit <= 40);
	assert_true(worst_far >= 88 && worst_far <= 168);
	lb_fp_proj_free(p);
	free(a);
	free(b);
}

/* Chunks keep word order: swapping the two halves of the input changes the hash. */
static void test_word_order_matters(void **state)
{
	const uint32_t dim = 64, n = 20;
	float a[20 * 64], b[20 * 64];
	struct lb_fp_proj *p2 = lb_fp_proj_new(dim, 2, 5, NULL);
	struct lb_fp_proj *p1 = lb_fp_proj_new(dim, 1, 5, NULL);
	uint64_t x[WORDS], y[WORDS];

	(void)state;
	assert_non_null(p1);
	assert_non_null(p2);
	fill(a, (size_t)n * dim, FILL_UNIF);
	memcpy(b, a + 10 * dim, 10 * dim * sizeof(float));
	memcpy(b + 10 * dim, a, 10 * dim * sizeof(float));
	assert_int_equal(lb_fingerprint(p2, a, n, x), 0);
	assert_int_equal(lb_fingerprint(p2, b, n, y), 0);
	printf("  chunks 2, halves swapped: hamming %u\n", lb_fp_hamming(x, y));
	assert_true(lb_fp_hamming(x, y) > 32);
	/* One chunk is a bag of tokens: only summation order differs, a few bits at most. */
	assert_int_equal(lb_fingerprint(p1, a, n, x), 0);
	assert_int_equal(lb_fingerprint(p1, b, n, y), 0);
	assert_true(lb_fp_hamming(x, y) <= 2);
	lb_fp_proj_free(p1);
	lb_fp_proj_free(p2);
}

/* Fewer tokens than chunks: empty chunks pool to zeros and are not centred. */
static void test_empty_chunks_not_centred(void **state)
{
	const uint32_t dim = 16;
	float emb[2 * 16], center[16], first[16];
	uint64_t x[WORDS];
	int have = lbi_fp_have_avx512();

	(void)state;
	fill(emb, 2 * dim, FILL_UNIF);
	fill(center, dim, FILL_UNIF);
	for (uint32_t n = 1; n <= 2; n++)
		for (uint32_t k = 1; k <= 8; k++)
			check_paths(dim, k, 77, center, emb, n, have, 1);
	/* With one token and the center equal to it, every chunk is zero: all bits 0. */
	memcpy(first, emb, dim * sizeof(float));
	{
		struct lb_fp_proj *p = lb_fp_proj_new(dim, 8, 77, first);

		assert_non_null(p);
		assert_int_equal(lb_fingerprint(p, emb, 1, x), 0);
		for (int w = 0; w < WORDS; w++)
			assert_int_equal(x[w], 0);
		lb_fp_proj_free(p);
	}
}

/* ---- similarity ---- */

/* cos(pi * h / 256) for h <= 128 by Taylor series in long double: the cosine series near 0, the
 * sine series of the complement near pi/2, so the relative error stays far below a double ulp. */
static long double cospi256_ld(uint32_t h)
{
	const int use_sin = h > 64;
	const long double x = M_PIl * (use_sin ? 128 - h : h) / 256.0L;
	long double term = use_sin ? x : 1.0L, sum = term;

	for (int i = 1; i < 30; i++) {
		term *= use_sin ? -x * x / ((2.0L * i) * (2.0L * i + 1)) :
				  -x * x / ((2.0L * i - 1) * (2.0L * i));
		sum += term;
	}
	return sum;
}

static void test_similarity_table(void **state)
{
	(void)state;
	assert_true(lb_fp_similarity(0) == 1.0);
	assert_true(lb_fp_similarity(128) == 0.0);
	assert_true(lb_fp_similarity(256) == -1.0);
	assert_true(lb_fp_similarity(1000) == -1.0);
	for (uint32_t h = 0; h <= 256; h++) {
		double s = lb_fp_similarity(h);

		if (h > 0)
			assert_true(s < lb_fp_similarity(h - 1));
		assert_true(s == -lb_fp_similarity(256 - h));
		if (h <= 128) {
			long double exact = cospi256_ld(h);
			long double err = (long double)s - exact;
			double ulp = next_double(s, 1) - s;

			/* The nearest double: within half an ulp (of the smaller side at a power of
			 * two), up to the series' own error. */
			if (err > 0)
				ulp = s - next_double(s, 0);
			if ((err < 0 ? -err : err) > 0.50001L * ulp) {
				printf("h %u: %a, exact %La\n", h, s, exact);
				fail();
			}
		}
	}
}

static void test_max_hamming_consistent(void **state)
{
	(void)state;
	for (int i = -100000; i <= 100000; i++) {
		const double tau = i / 100000.0;
		const uint32_t h = lb_fp_max_hamming(tau);

		assert_true(h <= 256);
		assert_true(lb_fp_similarity(h) >= tau);
		if (h < 256)
			assert_true(lb_fp_similarity(h + 1) < tau);
	}
	/* On the table values and one ulp either side. */
	for (uint32_t h = 0; h <= 256; h++) {
		const double s = lb_fp_similarity(h);

		assert_int_equal(lb_fp_max_hamming(s), h);
		if (h < 256)
			assert_int_equal(lb_fp_max_hamming(next_double(s, 0)), h);
		if (h > 0)
			assert_int_equal(lb_fp_max_hamming(next_double(s, 1)), h - 1);
	}
	assert_int_equal(lb_fp_max_hamming(-1.0), 256);
	assert_int_equal(lb_fp_max_hamming(-5.0), 256);
	assert_int_equal(lb_fp_max_hamming(1.0), 0);
	assert_int_equal(lb_fp_max_hamming(1.5), 0);
	assert_int_equal(lb_fp_max_hamming(NAN), 0);
	assert_int_equal(lb_fp_max_hamming(0.0), 128);
}

static void test_hamming_popcount(void **state)
{
	uint64_t a[WORDS] = { 0, 0, 0, 0 }, b[WORDS] = { ~0ull, 1, 0x8000000000000000ull, 0xf0 };

	(void)state;
	assert_int_equal(lb_fp_hamming(a, a), 0);
	assert_int_equal(lb_fp_hamming(a, b), 64 + 1 + 1 + 4);
	assert_int_equal(lb_fp_hamming(b, a), 70);
	for (int w = 0; w < WORDS; w++)
		b[w] = ~0ull;
	assert_int_equal(lb_fp_hamming(a, b), 256);
}

/* ---- token hash ---- */

static void test_token_hash_is_xxh3_128(void **state)
{
	int32_t tok[300];
	uint64_t out[2], again[2];

	(void)state;
	for (int i = 0; i < 300; i++)
		tok[i] = (int32_t)(rnd() % 200000) - 1000;
	for (uint32_t n = 0; n <= 300; n += 37) {
		XXH128_hash_t h = XXH3_128bits(tok, n * sizeof(int32_t));

		lb_token_hash(tok, n, out);
		assert_int_equal(out[0], h.low64);
		assert_int_equal(out[1], h.high64);
	}
	/* Empty input, NULL allowed. */
	lb_token_hash(NULL, 0, out);
	lb_token_hash(tok, 0, again);
	assert_memory_equal(out, again, sizeof(out));
	/* One token differs: different key. */
	lb_token_hash(tok, 300, out);
	tok[150] ^= 1;
	lb_token_hash(tok, 300, again);
	assert_true(out[0] != again[0] || out[1] != again[1]);
	/* Little-endian int32 bytes: 1, 2 hashes as 01 00 00 00 02 00 00 00. */
	{
		static const uint8_t bytes[8] = { 1, 0, 0, 0, 2, 0, 0, 0 };
		const int32_t two[2] = { 1, 2 };
		XXH128_hash_t h = XXH3_128bits(bytes, sizeof(bytes));

		lb_token_hash(two, 2, out);
		assert_int_equal(out[0], h.low64);
		assert_int_equal(out[1], h.high64);
	}
	/* NULL tokens with a count: no read, zeros. */
	lb_token_hash(NULL, 5, out);
	assert_int_equal(out[0], 0);
	assert_int_equal(out[1], 0);
	lb_token_hash(tok, 3, NULL);
}

/* ---- bad input ---- */

static void test_bad_arguments(void **state)
{
	float emb[4] = { 1, 2, 3, 4 };
	uint64_t out[WORDS];
	struct lb_fp_proj *p;

	(void)state;
	errno = 0;
	assert_null(lb_fp_proj_new(0, 4, 1, NULL));
	assert_int_equal(errno, EINVAL);
	errno = 0;
	assert_null(lb_fp_proj_new(4, 65, 1, NULL));
	assert_int_equal(errno, EINVAL);
	errno = 0;
	assert_null(lb_fp_proj_new((1u << 20) + 1, 1, 1, NULL));
	assert_int_equal(errno, EINVAL);
	errno = 0;
	assert_null(lb_fp_proj_new(1u << 20, 64, 1, NULL)); /* 2^26 elements: too large */
	assert_int_equal(errno, EINVAL);
	errno = 0;
	assert_null(lb_fp_proj_new(UINT32_MAX, UINT32_MAX, 1, NULL));
	assert_int_equal(errno, EINVAL);
	lb_fp_proj_free(NULL);

	p = lb_fp_proj_new(4, 64, 1, NULL);
	assert_non_null(p);
	assert_int_equal(lb_fingerprint(NULL, emb, 1, out), -EINVAL);
	assert_int_equal(lb_fingerprint(p, NULL, 1, out), -EINVAL);
	assert_int_equal(lb_fingerprint(p, emb, 1, NULL), -EINVAL);
	assert_int_equal(lb_fingerprint(p, emb, 0, out), -EINVAL);
	assert_int_equal(lbi_fingerprint_path(p, emb, 1, out, 7), -EINVAL);
	assert_int_equal(lbi_fingerprint_path(p, emb, 1, out, -1), -EINVAL);
	if (!lbi_fp_have_avx512())
		assert_int_equal(lbi_fingerprint_path(p, emb, 1, out, LBI_FP_AVX512), -EOPNOTSUPP);
	assert_int_equal(lb_fingerprint(p, emb, 1, out), 0);
	lb_fp_proj_free(p);
}

/* ---- speed (printed, not asserted) ---- */

static void test_speed_128x768(void **state)
{
	const uint32_t dim = 768, n = 128;
	float *emb = xmalloc((size_t)n * dim * sizeof(float));
	struct lb_fp_proj *p = lb_fp_proj_new(dim, 4, 42, NULL);
	uint64_t out[WORDS];
	double t0, us_scalar, us_avx = -1;
	const int iters = 200;

	(void)state;
	assert_non_null(p);
	fill(emb, (size_t)n * dim, FILL_GAUSS);
	assert_int_equal(lbi_fingerprint_path(p, emb, n, out, LBI_FP_SCALAR), 0);
	t0 = now_us();
	for (int i = 0; i < iters; i++)
		lbi_fingerprint_path(p, emb, n, out, LBI_FP_SCALAR);
	us_scalar = (now_us() - t0) / iters;
	if (lbi_fp_have_avx512()) {
		assert_int_equal(lbi_fingerprint_path(p, emb, n, out, LBI_FP_AVX512), 0);
		t0 = now_us();
		for (int i = 0; i < iters * 10; i++)
			lbi_fingerprint_path(p, emb, n, out, LBI_FP_AVX512);
		us_avx = (now_us() - t0) / (iters * 10);
	}
	printf("  lb_fingerprint 128 tokens x dim 768, 4 chunks: scalar %.1f us, avx512 ", us_scalar);
	if (us_avx >= 0)
		printf("%.1f us\n", us_avx);
	else
		printf("n/a\n");
	lb_fp_proj_free(p);
	free(emb);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_splitmix64_check_values),
		cmocka_unit_test(test_protocol_vectors),
		cmocka_unit_test(test_paths_identical_odd_sizes),
		cmocka_unit_test(test_paths_zero_dot_ties),
		cmocka_unit_test(test_paths_extreme_values),
		cmocka_unit_test(test_paths_lane_overflow_guard),
		cmocka_unit_test(test_caller_fp_environment_ignored),
		cmocka_unit_test(test_deterministic_across_processes),
		cmocka_unit_test(test_identical_inputs_identical_hash),
		cmocka_unit_test(test_similar_close_unrelated_far),
		cmocka_unit_test(test_word_order_matters),
		cmocka_unit_test(test_empty_chunks_not_centred),
		cmocka_unit_test(test_similarity_table),
		cmocka_unit_test(test_max_hamming_consistent),
		cmocka_unit_test(test_hamming_popcount),
		cmocka_unit_test(test_token_hash_is_xxh3_128),
		cmocka_unit_test(test_bad_arguments),
		cmocka_unit_test(test_speed_128x768),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
