/*
 * The in-process bank (inproc/inproc.h): the daemon's store behind a client of the same process.
 * lb_lem_run reuses what it inserted, the budget holds under churn, bad input is refused as the
 * daemon refuses it, and every lease ends.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "layerbank/layerbank.h"
#include "inproc.h"
#include "config.h"
#include "lbp.h"
#include "store.h"
#include "testutil.h"

#define LAYERS 4
#define HIDDEN 32
#define N 9

struct toy {
	unsigned calls;
};

/* layer l doubles and adds l */
static int toy_layer(void *ctx, uint32_t layer, const float *in, float *out)
{
	struct toy *t = ctx;
	for (uint32_t i = 0; i < N * HIDDEN; i++)
		out[i] = in[i] * 2.0f + (float)layer;
	t->calls++;
	return 0;
}

static void toy_input(uint32_t seed, int32_t *tok, float *h)
{
	for (uint32_t i = 0; i < N; i++)
		tok[i] = (int32_t)(seed * 31 + i);
	lbt_fill_uniform(h, N * HIDDEN, seed * 0x9e3779b97f4a7c15ull + 1);
}

static const struct lbd_store_cfg cfg = { .policy = LBD_POLICY_LRU, .drift_max = 0.05, .tau = 0.95 };

static struct lbip_bank *bank(uint64_t budget, uint32_t *id)
{
	char err[256] = "";
	struct lbip_bank *l = lbip_bank_new(budget, &cfg, err, sizeof(err));
	assert_non_null(l);
	struct lb_model_desc d = { .name = "toy", .weights_hash = 3, .n_layers = LAYERS,
				   .hidden = HIDDEN, .dtype = LB_DTYPE_F32, .max_seq = 64,
				   .fp_chunks = 4, .fp_seed = 5 };
	assert_int_equal(lbip_bank_register(l, &d, id), 0);
	uint32_t again = 0;
	assert_int_equal(lbip_bank_register(l, &d, &again), 0); /* idempotent */
	assert_int_equal(again, *id);
	d.hidden = HIDDEN * 2;
	assert_int_equal(lbip_bank_register(l, &d, &again), -EEXIST);
	d.name = "";
	assert_int_equal(lbip_bank_register(l, &d, &again), -EINVAL);
	return l;
}

static void run(struct lbip_bank *l, struct lb_lem_cfg *lc, uint32_t seed, struct lb_lem_result *res,
		unsigned *calls)
{
	int32_t tok[N];
	float h[N * HIDDEN], want[N * HIDDEN];
	struct toy t = { 0 };
	toy_input(seed, tok, h);
	memcpy(want, h, sizeof(h));
	for (uint32_t k = 0; k < LAYERS; k++)
		toy_layer(&t, k, want, want);
	t.calls = 0;
	assert_int_equal(lb_lem_run(lbip_bank_client(l), lc, tok, N, h, toy_layer, &t, res), 0);
	assert_memory_equal(h, want, sizeof(h)); /* a hit gives the plain result */
	assert_int_equal(res->cache_error, 0);
	*calls = t.calls;
}

static void test_lem_reuses_inserts(void **state)
{
	(void)state;
	uint32_t id;
	struct lbip_bank *l = bank(4u << 20, &id);
	struct lb_fp_proj *proj = lb_fp_proj_new(HIDDEN, 4, 5, NULL);
	assert_non_null(proj);
	struct lb_lem_cfg lc = { .model_id = id, .n_layers = LAYERS, .hidden = HIDDEN, .proj = proj };
	struct lb_lem_result res;
	unsigned calls;

	run(l, &lc, 1, &res, &calls);
	assert_int_equal(res.hit_layer, -1);
	assert_int_equal(calls, LAYERS);
	assert_int_equal(res.layers_inserted, LAYERS);
	run(l, &lc, 1, &res, &calls);
	assert_int_equal(res.hit_layer, LAYERS - 1);
	assert_int_equal(calls, 0);
	run(l, &lc, 2, &res, &calls); /* another input: a miss */
	assert_int_equal(res.hit_layer, -1);

	struct lbp_stats_reply st;
	lbip_bank_stats(l, &st);
	assert_int_equal(st.inserts, 2 * LAYERS);
	assert_true(st.hits >= 1);
	assert_int_equal(st.leases, 0);
	assert_int_equal(st.entries, 2 * LAYERS);
	lb_fp_proj_free(proj);
	lbip_bank_free(l);
}

/* Far more inputs than the budget holds: inserts keep working, bytes stay within the budget. */
static void test_budget_holds(void **state)
{
	(void)state;
	uint32_t id;
	uint64_t budget = 64u << 10; /* about 14 entries of 9 x 32 floats with headers */
	struct lbip_bank *l = bank(budget, &id);
	struct lb_fp_proj *proj = lb_fp_proj_new(HIDDEN, 4, 5, NULL);
	struct lb_lem_cfg lc = { .model_id = id, .n_layers = LAYERS, .hidden = HIDDEN, .proj = proj };
	struct lb_lem_result res;
	unsigned calls;
	for (uint32_t s = 100; s < 300; s++) {
		run(l, &lc, s, &res, &calls);
		struct lbp_stats_reply st;
		lbip_bank_stats(l, &st);
		assert_true(st.bytes_used <= budget);
	}
	struct lbp_stats_reply st;
	lbip_bank_stats(l, &st);
	assert_true(st.evictions > 0);
	assert_int_equal(st.leases, 0);
	run(l, &lc, 299, &res, &calls); /* the newest input is still there */
	assert_int_equal(res.hit_layer, LAYERS - 1);
	lb_fp_proj_free(proj);
	lbip_bank_free(l);
}

/* Requests are validated by the daemon's code: a forged lease and a bad model are refused. */
static void test_bad_requests(void **state)
{
	(void)state;
	uint32_t id;
	struct lbip_bank *l = bank(1u << 20, &id);
	struct lb_client *c = lbip_bank_client(l);
	struct lb_key key = { .seq_len = N };
	struct lb_hit hit;
	assert_int_equal(lb_release(c, 12345), -EINVAL);
	assert_int_equal(lb_lookup_deepest(c, id + 7, &key, NULL, 0, &hit), -ESRCH);
	assert_int_equal(lb_lookup_deepest(c, id, &key, NULL, 0, &hit), -ENOENT);
	assert_int_equal(lb_ping(c), 0);
	lbip_bank_free(l);
}

/* The deepest hit for input seed (there must be one). */
static struct lb_hit hit_of(struct lbip_bank *l, uint32_t id, const struct lb_fp_proj *proj,
			    uint32_t seed)
{
	int32_t tok[N];
	float h[N * HIDDEN];
	struct lb_key key = { .seq_len = N };
	struct lb_hit hit;
	toy_input(seed, tok, h);
	lb_token_hash(tok, N, key.exact);
	assert_int_equal(lb_fingerprint(proj, h, N, key.fp), 0);
	assert_int_equal(lb_lookup_deepest(lbip_bank_client(l), id, &key, NULL, 0, &hit), 0);
	return hit;
}

/* lbip_bank_clear: entries, leases and counters gone, models kept under their ids, the rings
 * still in step, and the same inserts land where they landed in the new bank. */
static void test_clear_starts_over(void **state)
{
	(void)state;
	uint32_t id;
	struct lbip_bank *l = bank(1u << 20, &id);
	struct lb_fp_proj *proj = lb_fp_proj_new(HIDDEN, 4, 5, NULL);
	struct lb_lem_cfg lc = { .model_id = id, .n_layers = LAYERS, .hidden = HIDDEN, .proj = proj };
	struct lb_lem_result res;
	unsigned calls;
	run(l, &lc, 7, &res, &calls);
	assert_int_equal(res.layers_inserted, LAYERS);
	struct lb_hit fresh = hit_of(l, id, proj, 7);
	assert_int_equal(lb_release(lbip_bank_client(l), fresh.lease), 0);
	for (uint32_t s = 200; s < 260; s++)
		run(l, &lc, s, &res, &calls);

	/* A lease still held when the bank is cleared. */
	struct lb_hit held = hit_of(l, id, proj, 7);
	struct lbp_stats_reply st;
	struct lbp_model_stats_reply ms;
	lbip_bank_stats(l, &st);
	assert_int_equal(st.leases, 1);
	assert_int_equal(lbip_bank_model_stats(l, id, 0, &ms), 0);
	assert_int_equal(ms.n, LAYERS);
	assert_int_equal(ms.layers[LAYERS - 1].leases, 1);
	assert_int_equal(ms.layers[0].entries, 61);
	assert_int_equal(lbip_bank_model_stats(l, id + 1, 0, &ms), -ENOENT);

	assert_int_equal(lbip_bank_clear(l), 0);
	lbip_bank_stats(l, &st);
	assert_int_equal(st.leases, 0);
	assert_int_equal(st.entries, 0);
	assert_int_equal(st.inserts, 0);
	assert_int_equal(st.hits, 0);
	assert_int_equal(st.misses, 0);
	assert_int_equal(st.bytes_used, 0);
	assert_int_equal(lbip_bank_model_stats(l, id, 0, &ms), 0);
	for (uint32_t k = 0; k < LAYERS; k++) {
		assert_int_equal(ms.layers[k].entries, 0);
		assert_int_equal(ms.layers[k].inserts, 0);
		assert_int_equal(ms.layers[k].hits + ms.layers[k].misses, 0);
	}
	/* The lease ended with the clear; the model is still there, empty. */
	assert_int_equal(lb_release(lbip_bank_client(l), held.lease), -EINVAL);
	run(l, &lc, 7, &res, &calls);
	assert_int_equal(res.hit_layer, -1);
	assert_int_equal(res.layers_inserted, LAYERS);
	struct lb_hit again = hit_of(l, id, proj, 7);
	assert_ptr_equal(again.data, fresh.data); /* the same offset as in the new bank */
	assert_int_equal(lb_release(lbip_bank_client(l), again.lease), 0);
	lb_fp_proj_free(proj);
	lbip_bank_free(l);
}

/* Without a configuration the bank takes layerbankd's defaults: its policy, and its tau, which
 * admits a fingerprint at the largest distance within LBD_DEFAULT_TAU and not one bit more. */
static void test_daemon_defaults(void **state)
{
	(void)state;
	char err[256] = "";
	uint32_t id;
	struct lbip_bank *l = lbip_bank_new(1u << 20, NULL, err, sizeof(err));
	assert_non_null(l);
	struct lb_client *c = lbip_bank_client(l);
	struct lb_model_desc d = { .name = "toy", .weights_hash = 3, .n_layers = LAYERS,
				   .hidden = HIDDEN, .dtype = LB_DTYPE_F32, .max_seq = 64 };
	assert_int_equal(lbip_bank_register(l, &d, &id), 0);
	struct lb_key key = { .fp = { 0 }, .exact = { 1, 2 }, .seq_len = N };
	struct lb_shape shape = { .dtype = LB_DTYPE_F32, .ndim = 2, .dims = { N, HIDDEN } };
	float *out = lb_insert_reserve(c, sizeof(float) * N * HIDDEN);
	assert_non_null(out);
	memset(out, 0, sizeof(float) * N * HIDDEN);
	assert_int_equal(lb_insert_commit(c, id, 0, &key, &shape), 0);

	uint32_t within = lbp_fp_max_hamming(LBD_DEFAULT_TAU);
	assert_true(within > 0 && within < 64);
	struct lb_key probe = { .exact = { 3, 4 }, .seq_len = N }; /* no exact match */
	struct lb_hit hit;
	probe.fp[0] = (1ull << within) - 1;
	assert_int_equal(lb_lookup_deepest(c, id, &probe, NULL, 0, &hit), 0);
	assert_int_equal(hit.hamming, within);
	assert_int_equal(lb_release(c, hit.lease), 0);
	probe.fp[0] = (1ull << (within + 1)) - 1;
	assert_int_equal(lb_lookup_deepest(c, id, &probe, NULL, 0, &hit), -ENOENT);

	struct lbp_stats_reply st;
	lbip_bank_stats(l, &st);
	assert_string_equal(st.policy, lbd_policy_name(LBD_DEFAULT_POLICY));
	lbip_bank_free(l);
}

static void test_bad_budget(void **state)
{
	(void)state;
	char err[256] = "";
	assert_null(lbip_bank_new(0, &cfg, err, sizeof(err)));
	assert_int_equal(errno, EINVAL);
	assert_true(err[0] != '\0');
	lbip_bank_free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_lem_reuses_inserts),
		cmocka_unit_test(test_budget_holds),
		cmocka_unit_test(test_bad_requests),
		cmocka_unit_test(test_clear_starts_over),
		cmocka_unit_test(test_daemon_defaults),
		cmocka_unit_test(test_bad_budget),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
