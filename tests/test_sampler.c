/*
 * The next-token sampler: frequencies against the tempered distribution, top-p's nucleus, replay
 * from a seed, the greedy and tiny-temperature limits, and bad arguments.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "sampler.h"

#define DRAWS 40000

/* Logits of the distribution p (up to a constant). */
static void logits_of(const double *p, int n, float *lg)
{
	for (int i = 0; i < n; i++)
		lg[i] = (float)log(p[i]) + 3.0f;
}

/*
 * DRAWS draws at temperature t and top-p topp; each token's share must be within 0.012 of want:
 * 4.8 standard deviations of a binomial share at p = 0.5 (sqrt(0.25 / DRAWS) = 0.0025), so a
 * right sampler fails with odds below 1e-5 per token, and the draws are deterministic anyway.
 */
static void check_freq(const float *lg, int n, float t, float topp, const double *want)
{
	struct lbw_sampler s;
	int count[8] = { 0 };
	assert_true(n <= 8);
	assert_int_equal(lbw_sampler_init(&s, n, t, topp, 12345), 0);
	for (int d = 0; d < DRAWS; d++) {
		int32_t tok = lbw_sampler_next(&s, lg);
		assert_true(tok >= 0 && tok < n);
		count[tok]++;
	}
	for (int i = 0; i < n; i++) {
		double got = (double)count[i] / DRAWS;
		if (fabs(got - want[i]) > 0.012)
			fail_msg("T=%g topp=%g token %d: share %.4f, want %.4f", (double)t, (double)topp, i,
				 got, want[i]);
	}
	lbw_sampler_free(&s);
}

static void test_frequencies(void **state)
{
	(void)state;
	const double p[4] = { 0.1, 0.2, 0.3, 0.4 };
	float lg[4];
	logits_of(p, 4, lg);
	check_freq(lg, 4, 1.0f, 1.0f, p);
	/* T = 2: p^(1/2), renormalised */
	double q[4], sum = 0;
	for (int i = 0; i < 4; i++)
		sum += q[i] = sqrt(p[i]);
	for (int i = 0; i < 4; i++)
		q[i] /= sum;
	check_freq(lg, 4, 2.0f, 1.0f, q);
	/* T = 0.5: p^2 */
	sum = 0;
	for (int i = 0; i < 4; i++)
		sum += q[i] = p[i] * p[i];
	for (int i = 0; i < 4; i++)
		q[i] /= sum;
	check_freq(lg, 4, 0.5f, 1.0f, q);
}

static void test_topp_nucleus(void **state)
{
	(void)state;
	const double p[4] = { 0.1, 0.2, 0.3, 0.4 };
	float lg[4];
	logits_of(p, 4, lg);
	/* 0.4 + 0.3 passes 0.5: the nucleus is tokens 3 and 2, renormalised; 0 and 1 never drawn */
	const double want[4] = { 0, 0, 0.3 / 0.7, 0.4 / 0.7 };
	check_freq(lg, 4, 1.0f, 0.5f, want);
	/* 0.4 + 0.3 + 0.2 passes 0.8 */
	const double want2[4] = { 0, 0.2 / 0.9, 0.3 / 0.9, 0.4 / 0.9 };
	check_freq(lg, 4, 1.0f, 0.8f, want2);
	/* a tiny p keeps the most likely token only, even of a uniform distribution where the
	 * candidate cutoff (1 - p) / (n - 1) drops every token */
	const double one[4] = { 0, 0, 0, 1 };
	check_freq(lg, 4, 1.0f, 1e-6f, one);
	const float flat[5] = { 1, 1, 1, 1, 1 };
	const double first[5] = { 1, 0, 0, 0, 0 };
	check_freq(flat, 5, 1.0f, 1e-6f, first);
}

/* The tokens of `steps` draws over a fixed 7-token distribution. */
static void draws(uint64_t seed, float t, float topp, int32_t *out, int steps)
{
	const float lg[7] = { 0.5f, 1.0f, -1.0f, 0.0f, 2.0f, 1.5f, 0.25f };
	struct lbw_sampler s;
	assert_int_equal(lbw_sampler_init(&s, 7, t, topp, seed), 0);
	for (int i = 0; i < steps; i++)
		out[i] = lbw_sampler_next(&s, lg);
	lbw_sampler_free(&s);
}

static void test_seed_replays(void **state)
{
	(void)state;
	int32_t a[200], b[200], c[200];
	draws(42, 0.8f, 1.0f, a, 200);
	draws(42, 0.8f, 1.0f, b, 200);
	draws(43, 0.8f, 1.0f, c, 200);
	assert_memory_equal(a, b, sizeof(a));
	assert_memory_not_equal(a, c, sizeof(a));
	draws(42, 0.8f, 0.9f, a, 200);
	draws(42, 0.8f, 0.9f, b, 200);
	assert_memory_equal(a, b, sizeof(a));
	/* llama2.c's generator: the first values from state 1 */
	uint64_t st = 1;
	float c0 = lbw_sampler_coin(&st), c1 = lbw_sampler_coin(&st);
	assert_true(c0 >= 0.0f && c0 < 1.0f && c1 >= 0.0f && c1 < 1.0f && c0 != c1);
}

static void test_greedy_limits(void **state)
{
	(void)state;
	int32_t a[50];
	/* temperature 0: the argmax (token 4), the first on ties */
	draws(7, 0.0f, 1.0f, a, 50);
	for (int i = 0; i < 50; i++)
		assert_int_equal(a[i], 4);
	/* a tiny temperature: the tempered distribution is the argmax's one-hot, never NaN */
	draws(7, 1e-6f, 1.0f, a, 50);
	for (int i = 0; i < 50; i++)
		assert_int_equal(a[i], 4);
	draws(7, 1e-30f, 0.5f, a, 50);
	for (int i = 0; i < 50; i++)
		assert_int_equal(a[i], 4);
	const float tie[3] = { 2.0f, 5.0f, 5.0f };
	struct lbw_sampler s;
	assert_int_equal(lbw_sampler_init(&s, 3, 0.0f, 1.0f, 1), 0);
	assert_int_equal(lbw_sampler_next(&s, tie), 1);
	lbw_sampler_free(&s);
	/* a huge temperature: close to uniform, every token drawn */
	int32_t u[2000];
	int seen[7] = { 0 };
	draws(9, 1e6f, 1.0f, u, 2000);
	for (int i = 0; i < 2000; i++)
		seen[u[i]]++;
	for (int i = 0; i < 7; i++)
		assert_true(seen[i] > 200);
}

static void test_bad_arguments(void **state)
{
	(void)state;
	struct lbw_sampler s;
	assert_int_equal(lbw_sampler_init(&s, 0, 1.0f, 1.0f, 1), -EINVAL);
	assert_int_equal(lbw_sampler_init(&s, 5, -1.0f, 1.0f, 1), -EINVAL);
	assert_int_equal(lbw_sampler_init(&s, 5, NAN, 1.0f, 1), -EINVAL);
	assert_int_equal(lbw_sampler_init(&s, 5, INFINITY, 1.0f, 1), -EINVAL);
	assert_int_equal(lbw_sampler_init(&s, 5, 1.0f, 0.0f, 1), -EINVAL);
	assert_int_equal(lbw_sampler_init(&s, 5, 1.0f, 1.5f, 1), -EINVAL);
	assert_int_equal(lbw_sampler_init(&s, 5, 1.0f, NAN, 1), -EINVAL);
	assert_int_equal(lbw_sampler_init(&s, 5, 1.0f, 1.0f, 0), -EINVAL);
	lbw_sampler_free(&s); /* safe after a failed init */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_frequencies),
		cmocka_unit_test(test_topp_nucleus),
		cmocka_unit_test(test_seed_replays),
		cmocka_unit_test(test_greedy_limits),
		cmocka_unit_test(test_bad_arguments),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
