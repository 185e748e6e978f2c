/*
 * layerbank-bench l2 on a small run (3 entries, 60 requests, stories260K's fleet): its report has
 * every figure, within its range, and the tier did its part (host 2 fetched records, its
 * answers agree with no cache's); bad options exit 2 with a line. SKIP (77) without redis-server
 * and redis-cli, and in sanitizer builds (a BERT-base forward there takes minutes).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "redis_proc.h"
#include "testutil.h"

static double num(struct json_object *j, const char *key)
{
	struct json_object *v;
	if (!json_object_object_get_ex(j, key, &v))
		fail_msg("no '%s' in the report", key);
	return json_object_get_double(v);
}

static void test_report(void **state)
{
	(void)state;
	static char out[1 << 16];
	const char *argv[] = { LB_BENCH_PATH, "l2", "--entries", "3", "--requests", "60", "--fleet",
			       "stories260k", "--json", NULL };
	int st = lbt_run(argv, out, sizeof(out));
	if (!WIFEXITED(st) || WEXITSTATUS(st))
		fail_msg("layerbank-bench l2: %s", out);
	const char *report = strstr(out, "{\""); /* after any progress on stderr */
	assert_non_null(report);
	struct json_object *j = json_tokener_parse(report);
	assert_non_null(j);
	double l2 = num(j, "l2_hit_us"), rec = num(j, "recompute_us"), loc = num(j, "local_hit_us");
	printf("tier hit %.0f us, local %.1f us, recompute %.0f us\n", l2, loc, rec);
	assert_true(l2 > 0 && loc > 0 && l2 < rec);
	assert_true(num(j, "ratio_l2_hit_vs_recompute") > 0);
	assert_true(num(j, "write_mib_s") > 0);
	assert_int_equal((int)num(j, "entries"), 3);
	assert_int_equal((int)num(j, "requests"), 60);
	struct json_object *fl, *s;
	assert_true(json_object_object_get_ex(j, "fleet", &fl));
	assert_true(json_object_object_get_ex(fl, "stories260K", &s));
	assert_false(json_object_object_get_ex(fl, "bert-base", NULL));
	const char *rates[] = { "host1_hit_rate", "host2_hit_rate", "host1_hit_rate_no_tier",
				"host2_hit_rate_no_tier", "host2_top1_agreement" };
	for (size_t i = 0; i < sizeof(rates) / sizeof(rates[0]); i++) {
		double v = num(s, rates[i]);
		assert_true(v >= 0 && v <= 1);
	}
	assert_true(num(s, "host2_fetched") > 0);
	assert_true(num(s, "host2_top1_agreement") >= 0.99);
	assert_true(num(s, "host2_nll_change") > -0.01 && num(s, "host2_nll_change") < 0.01);
	assert_true(num(s, "speedup_host2_vs_nocache") > 0);
	json_object_put(j);
}

static void test_bad_options(void **state)
{
	(void)state;
	char out[4096];
	const char *const bad[][3] = { { "--fleet", "gpt", NULL }, { "--entries", "0", NULL },
				       { "--requests", "x", NULL }, { "extra", NULL, NULL } };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		const char *argv[] = { LB_BENCH_PATH, "l2", bad[i][0], bad[i][1], NULL };
		int st = lbt_run(argv, out, sizeof(out));
		assert_true(WIFEXITED(st));
		assert_int_equal(WEXITSTATUS(st), 2);
		assert_non_null(strstr(out, "l2"));
	}
}

int main(void)
{
	if (LB_SANITIZED) {
		printf("SKIP: a sanitizer build; the debug build runs it\n");
		return 77;
	}
	if (!lbu_redis_available()) {
		printf("SKIP: redis-server and redis-cli are needed (Debian: redis-server, "
		       "redis-tools; scripts/test installs them)\n");
		return 77;
	}
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bad_options),
		cmocka_unit_test(test_report),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
