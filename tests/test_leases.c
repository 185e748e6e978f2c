/* The client's lease set (libclient/leases.c) against a plain array, through growth and
 * backward-shift deletions. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "client_internal.h"
#include "rng.h"

static void test_against_reference(void **state)
{
	enum { MAX = 5000 };
	static uint64_t ref[MAX];
	struct lbi_leases s = { 0 };
	uint64_t rng = 3;
	unsigned n = 0;
	(void)state;
	for (int step = 0; step < 50000; step++) {
		uint64_t r = lbu_splitmix64(&rng);
		if (n < MAX && (n == 0 || r % 3 != 0)) {
			/* small, clustered handles: neighbours collide in the table */
			uint64_t lease = 1 + (lbu_splitmix64(&rng) % 20000);
			bool dup = false;
			for (unsigned i = 0; i < n; i++)
				dup |= ref[i] == lease;
			if (dup)
				continue;
			assert_int_equal(lbi_leases_add(&s, lease), 0);
			ref[n++] = lease;
		} else {
			unsigned i = (unsigned)(r % n);
			assert_true(lbi_leases_take(&s, ref[i]));
			assert_false(lbi_leases_take(&s, ref[i]));
			ref[i] = ref[--n];
		}
		assert_int_equal(s.n, n);
		if (step % 4096 == 0)
			for (unsigned i = 0; i < n; i++) {
				assert_true(lbi_leases_take(&s, ref[i]));
				assert_int_equal(lbi_leases_add(&s, ref[i]), 0);
			}
	}
	assert_false(lbi_leases_take(&s, 0));
	assert_false(lbi_leases_take(&s, 20001));
	while (n) {
		assert_true(lbi_leases_take(&s, ref[--n]));
	}
	assert_int_equal(s.n, 0);
	lbi_leases_free(&s);
	assert_false(lbi_leases_take(&s, 1));
}

int main(void)
{
	const struct CMUnitTest tests[] = { cmocka_unit_test(test_against_reference) };
	return cmocka_run_group_tests(tests, NULL, NULL);
}
