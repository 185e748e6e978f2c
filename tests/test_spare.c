/* util/spare: a wait spins only while a CPU is spare. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdarg.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "spare.h"

static void test_parse(void **state)
{
	(void)state;
	bool spare = false;
	assert_int_equal(lbu_spare_parse("0.50 0.40 0.30 2/120 4567\n", 2, &spare), 0);
	assert_true(spare);
	assert_int_equal(lbu_spare_parse("4.10 3.90 2.00 5/123 4567\n", 2, &spare), 0);
	assert_false(spare);
	assert_int_equal(lbu_spare_parse("4.10 3.90 2.00 5/123 4567\n", 8, &spare), 0);
	assert_true(spare);
	/* The reader itself runs: a count of 0 or above the total is no reading. */
	assert_int_equal(lbu_spare_parse("0.00 0.00 0.00 0/100 1\n", 2, &spare), -1);
	assert_int_equal(lbu_spare_parse("0.00 0.00 0.00 7/5 1\n", 2, &spare), -1);
	assert_int_equal(lbu_spare_parse("", 2, &spare), -1);
	assert_int_equal(lbu_spare_parse("1 2 3", 2, &spare), -1);
}

/* A zeroed state, or none of /proc, spins as configured; 0 stays 0. */
static void test_budget(void **state)
{
	(void)state;
	struct lbu_spare z = { 0 };
	assert_int_equal(lbu_spare_spin(&z, 50000, 1), 50000);
	struct lbu_spare s;
	lbu_spare_open(&s);
	if (!s.open) {
		lbu_spare_close(&s);
		skip(); /* no /proc here */
	}
	assert_int_equal(lbu_spare_spin(&s, 0, 1), 0);
	s.next_ns = UINT64_MAX; /* the verdict below is not read again */
	s.spare = false;
	assert_int_equal(lbu_spare_spin(&s, 50000, 1), LBU_SPIN_CONTENDED_NS);
	assert_int_equal(lbu_spare_spin(&s, 1000, 1), 1000);
	s.spare = true;
	assert_int_equal(lbu_spare_spin(&s, 50000, 1), 50000);
	lbu_spare_close(&s);
	assert_false(s.open);
}

static atomic_bool stop;

static void *burn(void *arg)
{
	(void)arg;
	while (!atomic_load_explicit(&stop, memory_order_relaxed))
		;
	return NULL;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* With more busy threads than CPUs, the real reading says none is spare. */
static void test_contended(void **state)
{
	(void)state;
	struct lbu_spare s;
	lbu_spare_open(&s);
	if (!s.open) {
		lbu_spare_close(&s);
		skip();
	}
	unsigned n = s.cpus + 2;
	if (n > 64)
		n = 64;
	pthread_t th[64];
	atomic_store(&stop, false);
	for (unsigned i = 0; i < n; i++)
		assert_int_equal(pthread_create(&th[i], NULL, burn, NULL), 0);
	usleep(20000);
	/* The count is of one instant: a few readings, one of them must see the crowd. */
	bool seen = false;
	for (int i = 0; i < 50 && !seen; i++) {
		seen = lbu_spare_spin(&s, 50000, now_ns()) == LBU_SPIN_CONTENDED_NS;
		usleep(2000);
	}
	atomic_store(&stop, true);
	for (unsigned i = 0; i < n; i++)
		pthread_join(th[i], NULL);
	lbu_spare_close(&s);
	assert_true(seen);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse),
		cmocka_unit_test(test_budget),
		cmocka_unit_test(test_contended),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
