/*
 * Prefix blocks through the in-process bank (the daemon's store and ring validation behind a
 * client of this process): block keys that chain, LOOKUP_PREFIX's longest run with one lease,
 * INSERT_BLOCK's refusals, eviction that takes leaves first so no chain has a hole, drops that
 * take a block's whole subtree, leases that outlive a flush, and lb_prefix_run reusing what an
 * earlier run inserted with the same result.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "inproc.h"
#include "layerbank/layerbank.h"
#include "lbp.h"
#include "rng.h"
#include "store.h"
#include "testutil.h"

#define LAYERS 3
#define KV 8
#define B 4
#define BLOCK_FLOATS (LAYERS * 2 * B * KV)
#define MAX_BLOCKS 64

struct fix {
	struct lbip_bank *bank;
	struct lb_client *c;
	uint32_t model;
};

static const struct lbd_store_cfg cfg_lru = { .policy = LBD_POLICY_LRU, .drift_max = 0.05,
					      .tau = 0.95, .ttl_ns = 1000000000ull * 3600 };

static void fix_open(struct fix *f, uint64_t budget, const struct lbd_store_cfg *cfg)
{
	char err[256] = "";
	f->bank = lbip_bank_new(budget, cfg, err, sizeof(err));
	assert_non_null(f->bank);
	f->c = lbip_bank_client(f->bank);
	struct lb_model_desc d = { .name = "toy-decoder", .weights_hash = 7, .n_layers = LAYERS,
				   .hidden = 16, .dtype = LB_DTYPE_F32, .max_seq = MAX_BLOCKS * B,
				   .kv_dim = KV, .block_tokens = B };
	assert_int_equal(lbip_bank_register(f->bank, &d, &f->model), 0);
}

static void fix_close(struct fix *f)
{
	lbip_bank_free(f->bank);
}

/* Tokens of a chain: seed picks the sequence, shared tokens up to `share`. */
static void tokens_of(int32_t *t, uint32_t n, uint32_t seed, uint32_t share)
{
	for (uint32_t i = 0; i < n; i++)
		t[i] = (int32_t)(i < share ? i * 7 + 1 : seed * 1000 + i);
}

/* Block i's data: every float a function of the chain's keys, so a wrong block is seen. */
static void block_data(float *x, const uint64_t key[2])
{
	for (uint32_t j = 0; j < BLOCK_FLOATS; j++)
		x[j] = (float)((key[0] >> (j % 48)) & 0xffff) + (float)j;
}

/* Insert blocks [0, n) of tokens, each after its parent. @return the last status. */
static int insert_chain(struct fix *f, const int32_t *t, uint32_t n_blocks)
{
	uint64_t keys[MAX_BLOCKS][2];
	int rc = 0;
	lb_block_keys(t, n_blocks * B, B, keys, MAX_BLOCKS);
	for (uint32_t i = 0; i < n_blocks && rc >= 0; i++) {
		float *buf = lb_insert_reserve(f->c, BLOCK_FLOATS * sizeof(float));
		assert_non_null(buf);
		block_data(buf, keys[i]);
		rc = lb_insert_block(f->c, f->model, keys[i], i ? keys[i - 1] : NULL, i);
		if (rc == -EEXIST)
			rc = 0;
	}
	return rc;
}

/* lb_lookup_prefix over the first n blocks of t: the count, blocks checked, lease released. */
static int found_of(struct fix *f, const int32_t *t, uint32_t n_blocks)
{
	uint64_t keys[MAX_BLOCKS][2], lease = 0;
	const void *blocks[MAX_BLOCKS];
	float want[BLOCK_FLOATS];
	lb_block_keys(t, n_blocks * B, B, keys, MAX_BLOCKS);
	int n = lb_lookup_prefix(f->c, f->model, (const uint64_t(*)[2])keys, n_blocks, blocks, &lease);
	if (n == -ENOENT)
		return 0;
	assert_true(n > 0 && (uint32_t)n <= n_blocks);
	for (int i = 0; i < n; i++) {
		block_data(want, keys[i]);
		assert_memory_equal(blocks[i], want, sizeof(want));
	}
	assert_int_equal(lb_release(f->c, lease), 0);
	return n;
}

static void test_keys_chain(void **state)
{
	(void)state;
	int32_t a[40], b[40];
	uint64_t ka[10][2], kb[10][2], again[10][2];

	tokens_of(a, 40, 1, 18);
	tokens_of(b, 40, 2, 18);
	assert_int_equal(lb_block_keys(a, 40, B, ka, 10), 10);
	assert_int_equal(lb_block_keys(b, 39, B, kb, 10), 9); /* the partial block is no block */
	assert_int_equal(lb_block_keys(a, 40, B, again, 10), 10);
	assert_memory_equal(ka, again, sizeof(ka));
	/* tokens 0..17 shared: blocks 0..3 (tokens 0..15) alike, block 4 (16..19) not */
	for (int i = 0; i < 4; i++)
		assert_memory_equal(ka[i], kb[i], sizeof(ka[i]));
	for (int i = 4; i < 9; i++)
		assert_memory_not_equal(ka[i], kb[i], sizeof(ka[i]));
	/* A key names the whole prefix: the same tokens at block 1 after another block 0 differ. */
	int32_t c[8] = { 9, 9, 9, 9, a[4], a[5], a[6], a[7] };
	uint64_t kc[2][2];
	lb_block_keys(c, 8, B, kc, 2);
	assert_memory_not_equal(kc[1], ka[1], sizeof(kc[1]));
	assert_int_equal(lb_block_keys(a, 40, 0, ka, 10), 0);

	/* PROTOCOL.md's test vectors (Ring protocol 14), also computed by an independent
	 * implementation (Python's xxhash). */
	int32_t v[48];
	uint64_t kv[3][2];
	const uint64_t want[3][2] = { { 0x788ec572d3f83397ull, 0x622243d7387e85a8ull },
				      { 0xe259aa7cff31bacdull, 0x829b66285d7b5e67ull },
				      { 0x66615edbbafb8e53ull, 0x7ea7c4a512fd11cfull } };
	for (int i = 0; i < 48; i++)
		v[i] = i + 1;
	assert_int_equal(lb_block_keys(v, 48, 16, kv, 3), 3);
	assert_memory_equal(kv, want, sizeof(want));
}

static void test_longest_run_and_refusals(void **state)
{
	(void)state;
	struct fix f;
	int32_t t[64];
	uint64_t keys[16][2], bogus[2] = { 1, 2 };

	fix_open(&f, 8u << 20, &cfg_lru);
	tokens_of(t, 64, 3, 0);
	lb_block_keys(t, 64, B, keys, 16);
	assert_int_equal(found_of(&f, t, 6), 0);
	assert_int_equal(insert_chain(&f, t, 4), 0);
	assert_int_equal(found_of(&f, t, 6), 4);
	assert_int_equal(found_of(&f, t, 2), 2);

	float *buf = lb_insert_reserve(f.c, BLOCK_FLOATS * sizeof(float));
	assert_non_null(buf);
	assert_int_equal(lb_insert_block(f.c, f.model, keys[3], keys[2], 3), -EEXIST);
	buf = lb_insert_reserve(f.c, BLOCK_FLOATS * sizeof(float));
	assert_int_equal(lb_insert_block(f.c, f.model, keys[6], keys[5], 6), -ENOENT); /* hole */
	buf = lb_insert_reserve(f.c, BLOCK_FLOATS * sizeof(float));
	assert_int_equal(lb_insert_block(f.c, f.model, keys[5], bogus, 5), -ENOENT);
	/* a parent at another place: the keys do not chain */
	buf = lb_insert_reserve(f.c, BLOCK_FLOATS * sizeof(float));
	assert_int_equal(lb_insert_block(f.c, f.model, keys[5], keys[1], 5), -ENOENT);
	buf = lb_insert_reserve(f.c, BLOCK_FLOATS * sizeof(float) - 4); /* not the model's size */
	assert_non_null(buf);
	assert_int_equal(lb_insert_block(f.c, f.model, keys[4], keys[3], 4), -EINVAL);
	/* past max_seq */
	buf = lb_insert_reserve(f.c, BLOCK_FLOATS * sizeof(float));
	assert_int_equal(lb_insert_block(f.c, f.model, keys[4], keys[3], MAX_BLOCKS), -EINVAL);
	assert_int_equal(lb_insert_block(f.c, f.model, keys[4], keys[3], 4), -EINVAL); /* none */

	struct lbp_stats_reply st;
	lbip_bank_stats(f.bank, &st);
	assert_int_equal(st.blocks, 4);
	assert_int_equal(st.entries, 0);
	assert_int_equal(st.prefix_hits, 2);
	assert_int_equal(st.prefix_misses, 1);
	assert_int_equal(st.blocks_served, 6);
	assert_int_equal(st.leases, 0);
	fix_close(&f);
}

/* A model registered without kv_dim has no blocks; block_tokens without kv_dim is refused. */
static void test_models_without_blocks(void **state)
{
	(void)state;
	char err[256];
	uint32_t id;
	struct lbip_bank *b = lbip_bank_new(1u << 20, &cfg_lru, err, sizeof(err));
	assert_non_null(b);
	struct lb_model_desc d = { .name = "encoder", .weights_hash = 1, .n_layers = 2,
				   .hidden = 16, .dtype = LB_DTYPE_F32, .max_seq = 64 };
	assert_int_equal(lbip_bank_register(b, &d, &id), 0);
	uint64_t keys[1][2] = { { 1, 2 } }, lease;
	const void *blocks[1];
	assert_int_equal(lb_lookup_prefix(lbip_bank_client(b), id, (const uint64_t(*)[2])keys, 1,
					  blocks, &lease), -EINVAL);
	d.name = "bad";
	d.block_tokens = 16;
	assert_int_equal(lbip_bank_register(b, &d, &id), -EINVAL);
	lbip_bank_free(b);
}

/* The store's invariants: every cached block's parent is cached (no chain has a hole), the
 * candidates are the leaves. */
static void assert_no_holes(struct lbip_bank *bank)
{
	char why[128] = "";
	if (lbd_store_check(lbip_bank_store(bank), why, sizeof(why)) < 0)
		fail_msg("store: %s", why);
}

/* Many chains into a budget that holds a few: leaves go first, every chain that is found is
 * found from block 0, and the shared first blocks (hit by every chain) stay. */
static void test_leaves_go_first(void **state)
{
	(void)state;
	struct fix f;
	int32_t t[128];
	uint64_t block = LB_ENTRY_HDR_SIZE + BLOCK_FLOATS * sizeof(float);

	fix_open(&f, 40 * block, &cfg_lru); /* 40 blocks */
	for (uint32_t s = 0; s < 60; s++) {
		tokens_of(t, 128, s + 10, 2 * B); /* blocks 0, 1 shared by all */
		int rc = insert_chain(&f, t, 8);
		assert_true(rc == 0 || rc == -ENOSPC);
		assert_int_equal(found_of(&f, t, 2), 2); /* the shared prefix: hit by every chain */
		assert_no_holes(f.bank);
	}
	struct lbp_stats_reply st;
	lbip_bank_stats(f.bank, &st);
	assert_true(st.evictions > 100);
	assert_true(st.blocks <= 40 && st.blocks >= 30);
	/* The newest chain is whole; an old one is at most its shared part. */
	tokens_of(t, 128, 69, 2 * B);
	assert_int_equal(found_of(&f, t, 8), 8);
	tokens_of(t, 128, 10, 2 * B);
	assert_int_equal(found_of(&f, t, 8), 2);
	fix_close(&f);
}


/* A flush drops a chain whole while a lease on it holds its blocks unchanged; the lease's end
 * frees them. Dropping a block mid-chain takes what is under it (no hole): a TTL expiry. */
static void test_drops_take_subtrees(void **state)
{
	(void)state;
	struct fix f;
	int32_t t[64], u[64];
	uint64_t keys[16][2], lease;
	const void *blocks[16];
	float copy[BLOCK_FLOATS];

	fix_open(&f, 8u << 20, &cfg_lru);
	tokens_of(t, 64, 4, 3 * B);
	tokens_of(u, 64, 5, 3 * B); /* blocks 0..2 alike */
	assert_int_equal(insert_chain(&f, t, 6), 0);
	assert_int_equal(insert_chain(&f, u, 6), 0);
	lb_block_keys(t, 6 * B, B, keys, 16);
	assert_int_equal(lb_lookup_prefix(f.c, f.model, (const uint64_t(*)[2])keys, 6, blocks, &lease), 6);
	memcpy(copy, blocks[5], sizeof(copy));
	/* a prefix hit's lease has no drift to report */
	assert_int_equal(lb_report(f.c, lease, 1.0f), -EINVAL);
	struct lbd_flush_result fr;
	assert_int_equal(lbd_store_flush(lbip_bank_store(f.bank), f.model, -1, &fr), 0);
	assert_int_equal(fr.entries, 9); /* 3 shared + 3 + 3 */
	assert_int_equal(fr.leased, 6);
	assert_no_holes(f.bank);
	assert_int_equal(found_of(&f, t, 6), 0);
	assert_memory_equal(blocks[5], copy, sizeof(copy)); /* still readable, unchanged */
	struct lbp_stats_reply st;
	lbip_bank_stats(f.bank, &st);
	assert_int_equal(st.blocks, 0);
	assert_true(st.bytes_used > 0); /* held */
	assert_int_equal(lb_release(f.c, lease), 0);
	lbip_bank_stats(f.bank, &st);
	assert_int_equal(st.bytes_used, 0);
	fix_close(&f);

	/* TTL: the shared blocks expire first (inserted first); what is under them goes too. */
	struct lbd_store_cfg ttl = cfg_lru;
	ttl.policy = LBD_POLICY_TTL;
	ttl.ttl_ns = 200000000ull;
	fix_open(&f, 8u << 20, &ttl);
	assert_int_equal(insert_chain(&f, t, 3), 0);
	struct timespec nap = { 0, 250000000 };
	nanosleep(&nap, NULL);
	assert_int_equal(insert_chain(&f, t, 6), 0); /* 3..5 under old 0..2 */
	lbd_store_expire(lbip_bank_store(f.bank));
	assert_no_holes(f.bank);
	lbip_bank_stats(f.bank, &st);
	assert_int_equal(st.blocks, 0);
	assert_int_equal(st.expirations, 6);
	fix_close(&f);
}

/* A toy causal model: a position's K and V rows of layer l are a function of its token, its
 * position and the K row of layer l - 1 at the previous position (so that they depend on
 * everything before them, as attention's would). */
struct toy {
	const int32_t *tok;
	uint32_t calls, rows;
};

static int toy_layer(void *ctx, uint32_t l, uint32_t p, uint32_t n, const struct lb_kv_view *kv)
{
	struct toy *t = ctx;
	for (uint32_t i = p; i < n; i++) {
		float *k = (float *)lb_kv_row(kv, l, 0, i), *v = (float *)lb_kv_row(kv, l, 1, i);
		float prev = i ? lb_kv_row(kv, l ? l - 1 : 0, 0, i - 1)[0] : 0.0f;
		for (uint32_t j = 0; j < KV; j++) {
			k[j] = (float)t->tok[i] * 0.5f + (float)(l * 10 + j) + prev * 0.25f;
			v[j] = k[j] * 2.0f - (float)i;
		}
		t->rows++;
	}
	t->calls++;
	return 0;
}

static void run_toy(struct lb_client *c, uint32_t model, const int32_t *tok, uint32_t n,
		    float *own, float *out, struct lb_prefix_result *res)
{
	const float *table[MAX_BLOCKS];
	struct lb_kv_view kv = { LAYERS, KV, B, MAX_BLOCKS, table };
	struct lb_prefix_cfg pc = { model, LAYERS, KV, B, 0 };
	struct toy t = { tok, 0, 0 };

	assert_int_equal(lb_prefix_run(c, &pc, tok, n, own, &kv, toy_layer, &t, res), 0);
	assert_int_equal(t.calls, LAYERS);
	assert_int_equal(t.rows, LAYERS * (n - res->reused_tokens));
	for (uint32_t l = 0; l < LAYERS; l++)
		for (uint32_t i = 0; i < n; i++)
			memcpy(out + ((size_t)l * n + i) * 2 * KV, lb_kv_row(&kv, l, 0, i),
			       KV * sizeof(float)),
			memcpy(out + ((size_t)l * n + i) * 2 * KV + KV, lb_kv_row(&kv, l, 1, i),
			       KV * sizeof(float));
	lb_prefix_done(c, res);
	assert_int_equal(res->lease, 0);
}

/* A model whose last layer keeps no K and V of its own and reads layer 0's (a FusedKV-Lite
 * reconstruction layer): registered with kv_layers 2 of its 3 layers, its blocks hold those two,
 * lb_prefix_run still computes all three, and a run from cached blocks gives the last layer's
 * rows of the plain run. */
struct lite {
	struct toy toy;
	float last[64]; /* layer 2's output of each position computed: sums over layer 0's K */
};

static int lite_layer(void *ctx, uint32_t l, uint32_t p, uint32_t n, const struct lb_kv_view *kv)
{
	struct lite *x = ctx;
	if (l < 2)
		return toy_layer(&x->toy, l, p, n, kv);
	for (uint32_t i = p; i < n; i++) {
		float acc = 0;
		for (uint32_t t = 0; t <= i; t++)
			acc += lb_kv_row(kv, 0, 0, t)[1] + lb_kv_row(kv, 1, 1, t)[2];
		x->last[i] = acc;
	}
	return 0;
}

static void test_blocks_of_fewer_layers(void **state)
{
	(void)state;
	enum { KV_LAYERS = 2, FLOATS = KV_LAYERS * 2 * B * KV, N = 5 * B + 2 };
	static float own[MAX_BLOCKS * FLOATS];
	const float *table[MAX_BLOCKS];
	int32_t t[64];
	char err[256] = "";
	struct lb_prefix_result res;
	struct lite plain = { 0 }, got = { 0 };
	struct lbip_bank *bank = lbip_bank_new(8u << 20, &cfg_lru, err, sizeof(err));
	assert_non_null(bank);
	struct lb_client *c = lbip_bank_client(bank);
	struct lb_model_desc d = { .name = "toy-lite", .weights_hash = 7, .n_layers = LAYERS,
				   .hidden = 16, .dtype = LB_DTYPE_F32, .max_seq = MAX_BLOCKS * B,
				   .kv_dim = KV, .block_tokens = B, .kv_layers = KV_LAYERS };
	uint32_t model;
	assert_int_equal(lbip_bank_register(bank, &d, &model), 0);
	struct lb_kv_view kv = { KV_LAYERS, KV, B, MAX_BLOCKS, table };
	struct lb_prefix_cfg pc = { model, LAYERS, KV, B, 0 };
	tokens_of(t, 64, 12, 0);

	plain.toy.tok = got.toy.tok = t;
	assert_int_equal(lb_prefix_run(NULL, &pc, t, N, own, &kv, lite_layer, &plain, &res), 0);
	assert_int_equal(plain.toy.calls, KV_LAYERS);
	assert_int_equal(lb_prefix_run(c, &pc, t, N, own, &kv, lite_layer, &got, &res), 0);
	assert_int_equal(res.blocks_inserted, N / B);
	assert_int_equal(res.cache_error, 0);
	lb_prefix_done(c, &res);
	struct lbp_stats_reply st;
	lbip_bank_stats(bank, &st);
	assert_int_equal(st.blocks, N / B);
	assert_true(st.bytes_used / st.blocks >= FLOATS * sizeof(float));
	assert_true(st.bytes_used / st.blocks < LAYERS * 2 * B * KV * sizeof(float));

	memset(got.last, 0, sizeof(got.last));
	assert_int_equal(lb_prefix_run(c, &pc, t, N, own, &kv, lite_layer, &got, &res), 0);
	assert_int_equal(res.reused_tokens, N / B * B);
	assert_memory_equal(got.last + res.reused_tokens, plain.last + res.reused_tokens,
			    (N - res.reused_tokens) * sizeof(float));
	lb_prefix_done(c, &res);

	/* Blocks of every layer are not this model's: refused by the daemon; a view of more
	 * layers than the run computes, by the client. */
	uint64_t keys[2][2];
	lb_block_keys(t, 2 * B, B, keys, 2);
	assert_non_null(lb_insert_reserve(c, LAYERS * 2 * B * KV * sizeof(float)));
	assert_int_equal(lb_insert_block(c, model, keys[0], NULL, 0), -EINVAL);
	kv.n_layers = LAYERS + 1;
	assert_int_equal(lb_prefix_run(c, &pc, t, N, own, &kv, lite_layer, &got, &res), -EINVAL);
	lbip_bank_free(bank);
}

/* lb_prefix_run: the plain run (no client), a first run that inserts, a second that reuses;
 * every run's K and V the same bits; prompts that end on a block edge and inside one. */
static void test_prefix_run(void **state)
{
	(void)state;
	struct fix f;
	static float own[MAX_BLOCKS * BLOCK_FLOATS];
	static float plain[LAYERS * 64 * 2 * KV], got[LAYERS * 64 * 2 * KV];
	int32_t t[64];
	struct lb_prefix_result res;
	const uint32_t lens[] = { 1, B - 1, B, B + 1, 5 * B, 5 * B + 3, 9 * B };

	fix_open(&f, 8u << 20, &cfg_lru);
	tokens_of(t, 64, 6, 0);
	for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++) {
		uint32_t n = lens[k];
		run_toy(NULL, 0, t, n, own, plain, &res);
		assert_int_equal(res.reused_tokens, 0);
		run_toy(f.c, f.model, t, n, own, got, &res); /* the cache as the earlier n left it */
		assert_memory_equal(plain, got, (size_t)LAYERS * n * 2 * KV * sizeof(float));
		assert_int_equal(res.cache_error, 0);
		run_toy(f.c, f.model, t, n, own, got, &res); /* everything cached now */
		assert_memory_equal(plain, got, (size_t)LAYERS * n * 2 * KV * sizeof(float));
		uint32_t full = n / B;
		assert_int_equal(res.blocks_found, full);
		assert_int_equal(res.reused_tokens, full * B == n ? n - 1 : full * B);
		assert_int_equal(res.blocks_inserted, 0);
		assert_no_holes(f.bank);
	}
	fix_close(&f);
}

/* The longest chain: LB_PREFIX_MAX_BLOCKS blocks, as many as a LOOKUP_PREFIX names. A block
 * past it, which no lookup could find, is refused; lb_prefix_run inserts and reuses up to it. */
static void test_chains_end_at_the_lookup_limit(void **state)
{
	(void)state;
	enum { N = LB_PREFIX_MAX_BLOCKS + 44, L1 = LAYERS, KV1 = KV }; /* toy_layer's */
	struct fix f;
	uint32_t model;
	static int32_t t[N];
	static float own[N * L1 * 2 * KV1];
	static const float *table[N];
	static uint64_t keys[N][2];
	struct lb_prefix_result res;

	fix_open(&f, 8u << 20, &cfg_lru);
	struct lb_model_desc d = { .name = "long-decoder", .weights_hash = 8, .n_layers = L1,
				   .hidden = 4, .dtype = LB_DTYPE_F32, .max_seq = N,
				   .kv_dim = KV1, .block_tokens = 1 };
	assert_int_equal(lbip_bank_register(f.bank, &d, &model), 0);
	tokens_of(t, N, 7, 0);
	struct lb_kv_view kv = { L1, KV1, 1, N, table };
	struct lb_prefix_cfg pc = { model, L1, KV1, 1, 0 };
	struct toy toy = { t, 0, 0 };
	assert_int_equal(lb_prefix_run(f.c, &pc, t, N, own, &kv, toy_layer, &toy, &res), 0);
	assert_int_equal(res.blocks_inserted, LB_PREFIX_MAX_BLOCKS);
	lb_prefix_done(f.c, &res);
	assert_int_equal(lb_prefix_run(f.c, &pc, t, N, own, &kv, toy_layer, &toy, &res), 0);
	assert_int_equal(res.reused_tokens, LB_PREFIX_MAX_BLOCKS);
	assert_int_equal(res.blocks_inserted, 0);
	lb_prefix_done(f.c, &res);

	lb_block_keys(t, N, 1, keys, N);
	uint32_t i = LB_PREFIX_MAX_BLOCKS;
	assert_non_null(lb_insert_reserve(f.c, L1 * 2 * KV1 * sizeof(float)));
	assert_int_equal(lb_insert_block(f.c, model, keys[i], keys[i - 1], i), -EINVAL);
	struct lbp_stats_reply st;
	lbip_bank_stats(f.bank, &st);
	assert_int_equal(st.blocks, LB_PREFIX_MAX_BLOCKS);
	fix_close(&f);
}

/* LB_PREFIX_DEFER_INSERT: the run inserts nothing; lb_prefix_insert from blocks_found inserts
 * what it computed, and the next run reuses it. A flag not known is refused. */
static void test_deferred_insert(void **state)
{
	(void)state;
	struct fix f;
	static float own[MAX_BLOCKS * BLOCK_FLOATS];
	const float *table[MAX_BLOCKS];
	int32_t t[64];
	struct lb_prefix_result res;
	struct lb_kv_view kv = { LAYERS, KV, B, MAX_BLOCKS, table };
	struct lb_prefix_cfg pc = { 0, LAYERS, KV, B, LB_PREFIX_DEFER_INSERT };
	struct lbp_stats_reply st;

	fix_open(&f, 8u << 20, &cfg_lru);
	pc.model_id = f.model;
	tokens_of(t, 64, 9, 0);
	struct toy toy = { t, 0, 0 };
	assert_int_equal(lb_prefix_run(f.c, &pc, t, 6 * B + 2, own, &kv, toy_layer, &toy, &res), 0);
	assert_int_equal(res.blocks_inserted, 0);
	lbip_bank_stats(f.bank, &st);
	assert_int_equal(st.blocks, 0);
	assert_int_equal(lb_prefix_insert(f.c, &pc, t, 6 * B + 2, &kv, res.blocks_found), 6);
	lb_prefix_done(f.c, &res);
	assert_int_equal(lb_prefix_run(f.c, &pc, t, 6 * B + 2, own, &kv, toy_layer, &toy, &res), 0);
	assert_int_equal(res.reused_tokens, 6 * B);
	lb_prefix_done(f.c, &res);
	pc.flags = 2;
	assert_int_equal(lb_prefix_run(f.c, &pc, t, 8, own, &kv, toy_layer, &toy, &res), -EINVAL);
	fix_close(&f);
}

/* A toy layer that takes 10 ms: computing costs more than a short wait for the daemon. */
static int slow_layer(void *ctx, uint32_t l, uint32_t p, uint32_t n, const struct lb_kv_view *kv)
{
	usleep(10000);
	return toy_layer(ctx, l, p, n, kv);
}

/* Every thread of pid stopped (kill returns before a running thread has stopped). */
static void wait_stopped(pid_t pid)
{
	char path[64], line[512];
	for (int tries = 0; tries < 5000; tries++) {
		snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
		DIR *dir = opendir(path);
		assert_non_null(dir);
		struct dirent *e;
		int running = 0;
		while ((e = readdir(dir))) {
			if (e->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "/proc/%d/task/%.16s/stat", (int)pid, e->d_name);
			FILE *fp = fopen(path, "r");
			if (!fp)
				continue;
			const char *st = fgets(line, sizeof(line), fp) ? strrchr(line, ')') : NULL;
			running += !st || (st[2] != 'T' && st[2] != 't');
			fclose(fp);
		}
		closedir(dir);
		if (!running)
			return;
		usleep(1000);
	}
	fail_msg("daemon %d did not stop", (int)pid);
}

/*
 * A prefix call waits at least as long as computing a block took: with the client's wait at
 * 5 ms and a block that took 30 ms, a lookup on a stopped daemon gives up after 30 ms or more,
 * not 5 (a lookup given up costs a block's compute, or more).
 */
static void test_prefix_calls_wait_a_block(void **state)
{
	(void)state;
	struct lbt_env env;
	static float own[MAX_BLOCKS * BLOCK_FLOATS];
	const float *table[MAX_BLOCKS];
	const void *blocks[1];
	int32_t t[B];
	uint64_t keys[1][2], lease = 0;
	struct lb_prefix_result res;
	struct fix f = { 0 };

	lbt_env_make(&env);
	assert_true(lbt_daemon_start(&env, LBT_ARGS(LBT_SMALL)) > 0);
	struct lb_model_desc d = { .name = "slow-decoder", .weights_hash = 9, .n_layers = LAYERS,
				   .hidden = 16, .dtype = LB_DTYPE_F32, .max_seq = MAX_BLOCKS * B,
				   .kv_dim = KV, .block_tokens = B };
	assert_int_equal(lbt_connect(&env, "slow", &f.c), 0);
	assert_int_equal(lb_register_model(f.c, &d, &f.model), 0);
	tokens_of(t, B, 10, 0);
	struct lb_kv_view kv = { LAYERS, KV, B, MAX_BLOCKS, table };
	struct lb_prefix_cfg pc = { f.model, LAYERS, KV, B, LB_PREFIX_DEFER_INSERT };
	struct toy toy = { t, 0, 0 };
	/* With the default wait: a run whose lookup gave up (a loaded machine, a sanitizer) drops
	 * the cache and learns no block time, which is what this test needs. */
	assert_int_equal(lb_prefix_run(f.c, &pc, t, B, own, &kv, slow_layer, &toy, &res), 0);
	assert_int_equal(res.cache_error, 0);
	lb_prefix_done(f.c, &res);
	assert_int_equal(lb_ping(f.c), 0); /* behind the deferred insert */
	lb_set_wait_us(f.c, 5000);

	lb_block_keys(t, B, B, keys, 1);
	assert_int_equal(kill(env.pid, SIGSTOP), 0);
	wait_stopped(env.pid);
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	int rc = lb_lookup_prefix(f.c, f.model, (const uint64_t(*)[2])keys, 1, blocks, &lease);
	clock_gettime(CLOCK_MONOTONIC, &b);
	assert_int_equal(kill(env.pid, SIGCONT), 0);
	assert_int_equal(rc, -ETIMEDOUT);
	double ms = (double)(b.tv_sec - a.tv_sec) * 1e3 + (double)(b.tv_nsec - a.tv_nsec) / 1e6;
	assert_true(ms >= 25.0);
	lbt_close(&env, f.c);
	assert_true(lbt_daemon_stop(&env));
	lbt_env_remove(&env);
}

/* Through a real layerbankd: a child process inserts a chain and exits; this process finds it,
 * zero copy, with the bytes the child wrote, and the daemon's counters agree. */
static void test_across_processes(void **state)
{
	(void)state;
	struct lbt_env env;
	int32_t t[64];

	lbt_env_make(&env);
	assert_true(lbt_daemon_start(&env, LBT_ARGS(LBT_SMALL)) > 0);
	tokens_of(t, 64, 8, 0);
	struct lb_model_desc d = { .name = "toy-decoder", .weights_hash = 7, .n_layers = LAYERS,
				   .hidden = 16, .dtype = LB_DTYPE_F32, .max_seq = MAX_BLOCKS * B,
				   .kv_dim = KV, .block_tokens = B };
	pid_t kid = lbt_fork(&env);
	assert_true(kid >= 0);
	if (kid == 0) {
		struct fix f;
		if (lb_connect(env.sock, "inserter", &f.c) < 0 ||
		    lb_register_model(f.c, &d, &f.model) < 0 || insert_chain(&f, t, 5) < 0)
			_exit(1);
		lb_close(f.c);
		_exit(0);
	}
	assert_int_equal(lbt_reap(&env, kid), 0);
	struct fix f = { 0 };
	assert_int_equal(lbt_connect(&env, "reader", &f.c), 0);
	assert_int_equal(lb_register_model(f.c, &d, &f.model), 0);
	assert_int_equal(found_of(&f, t, 8), 5);
	struct lb_stats st;
	assert_int_equal(lb_stats(f.c, &st, sizeof(st)), 0);
	assert_int_equal(st.blocks, 5);
	assert_int_equal(st.prefix_hits, 1);
	assert_int_equal(st.blocks_served, 5);
	assert_int_equal(st.entries, 0);
	assert_true(lbt_daemon_stop(&env));
	lbt_env_remove(&env);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_keys_chain),
		cmocka_unit_test(test_longest_run_and_refusals),
		cmocka_unit_test(test_models_without_blocks),
		cmocka_unit_test(test_leaves_go_first),
		cmocka_unit_test(test_drops_take_subtrees),
		cmocka_unit_test(test_prefix_run),
		cmocka_unit_test(test_blocks_of_fewer_layers),
		cmocka_unit_test(test_chains_end_at_the_lookup_limit),
		cmocka_unit_test(test_deferred_insert),
		cmocka_unit_test(test_prefix_calls_wait_a_block),
		cmocka_unit_test(test_across_processes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
