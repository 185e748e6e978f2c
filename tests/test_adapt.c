/* Tests for the threshold controller (daemon/adapt.c): where it starts, what it ignores, its
 * bounds, and that on a stream whose drift grows with the fingerprint distance it settles where
 * the mean drift of the reuses it admits is the target, from its permissive start. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>

#include "adapt.h"
#include "lbp.h"
#include "rng.h"

static double uniform(uint64_t *s)
{
	return (double)(lbu_splitmix64(s) >> 11) * 0x1.0p-53;
}

static void test_start_and_bounds(void **state)
{
	(void)state;
	struct lbd_adapt a;
	lbd_adapt_init(&a);
	assert_int_equal(lbd_adapt_max_hamming(&a), lbp_fp_max_hamming(LBD_ADAPT_START_TAU));
	assert_true(lbd_adapt_valid(&a));
	/* An exact reuse (distance 0), a drift that is not a number or negative: ignored. */
	assert_false(lbd_adapt_report(&a, 0, 0.5, 0.01));
	assert_false(lbd_adapt_report(&a, 3, NAN, 0.01));
	assert_false(lbd_adapt_report(&a, 3, -1e-3, 0.01));
	assert_int_equal(a.reports, 0);
	/* Without a target: counted, the radius kept. */
	double r0 = a.radius;
	assert_false(lbd_adapt_report(&a, 3, 0.25, 0));
	assert_int_equal(a.reports, 1);
	assert_int_equal(a.over, 0);
	assert_true(a.drift_sum == 0.25 && a.radius == r0);
	/* Drift 0 opens it by LBD_ADAPT_GAIN a report, up to the loosest radius and no further. */
	for (int i = 0; i < 1000; i++)
		lbd_adapt_report(&a, 5, 0, 0.01);
	assert_true(a.radius == LBD_ADAPT_MAX_RADIUS);
	/* One far-off reuse tightens by LBD_ADAPT_MAX_TIGHTEN gains at most; many close it. */
	assert_true(lbd_adapt_report(&a, 5, 1e9, 0.01));
	assert_true(fabs(a.radius - (LBD_ADAPT_MAX_RADIUS - LBD_ADAPT_GAIN * LBD_ADAPT_MAX_TIGHTEN)) <
		    1e-9);
	assert_int_equal(a.over, 1);
	for (int i = 0; i < 100; i++)
		lbd_adapt_report(&a, 5, 1, 0.01);
	assert_true(a.radius == 0);
	assert_int_equal(lbd_adapt_max_hamming(&a), 0);
	assert_true(lbd_adapt_valid(&a));
}

static void test_valid(void **state)
{
	(void)state;
	struct lbd_adapt a;
	lbd_adapt_init(&a);
	a.radius = LBD_ADAPT_MAX_RADIUS + 0.5;
	assert_false(lbd_adapt_valid(&a));
	a.radius = NAN;
	assert_false(lbd_adapt_valid(&a));
	lbd_adapt_init(&a);
	a.over = 1;
	assert_false(lbd_adapt_valid(&a));
	lbd_adapt_init(&a);
	a.drift_sum = 0.5; /* drift without reports */
	assert_false(lbd_adapt_valid(&a));
	a.reports = 1;
	assert_true(lbd_adapt_valid(&a));
	a.drift_sum = INFINITY;
	assert_false(lbd_adapt_valid(&a));
}

/*
 * A stream like the fleet's: the nearest cached input of a request is at a distance drawn
 * between 1 and 64 bits, reused when within the radius; its drift grows with the distance,
 * (d / 20)^2 / 1000 times a heavy-tailed factor (exponential, mean 1; one reuse in twenty ten
 * times that). The controller starts permissive and must settle where the admitted reuses'
 * mean drift is the target: measured over the last half of 4,000 reports, within 20%.
 */
static void test_settles_on_the_target(void **state)
{
	(void)state;
	const double targets[] = { 0.0005, 0.001, 0.004 };
	for (size_t t = 0; t < sizeof(targets) / sizeof(targets[0]); t++) {
		struct lbd_adapt a;
		uint64_t rng = 42 + t;
		double sum = 0;
		int n = 0, reports = 0;
		lbd_adapt_init(&a);
		while (reports < 4000) {
			uint32_t d = 1 + (uint32_t)(uniform(&rng) * 64);
			if (d > lbd_adapt_max_hamming(&a))
				continue; /* not reused: nothing to report */
			double x = -log(1 - uniform(&rng)) * (uniform(&rng) < 0.05 ? 10 : 1);
			double drift = (d / 20.0) * (d / 20.0) / 1000 * x;
			lbd_adapt_report(&a, d, drift, targets[t]);
			if (++reports > 2000) {
				sum += drift;
				n++;
			}
		}
		double mean = sum / n;
		printf("target %g: radius %.2f bits, mean drift %.6f over the last %d reports (%.0f%%)\n",
		       targets[t], a.radius, mean, n, 100 * mean / targets[t]);
		assert_true(fabs(mean / targets[t] - 1) <= 0.2);
		assert_true(lbd_adapt_valid(&a));
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_start_and_bounds),
		cmocka_unit_test(test_valid),
		cmocka_unit_test(test_settles_on_the_target),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
