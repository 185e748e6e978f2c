/* The store (daemon/store.c) in process, where a test can time what the daemon's tests cannot:
 * models registered while inserts copy their data outside the lock; a flush that lets the lock
 * go between batches while other threads insert, hit and invalidate; a snapshot's hold of a
 * block whose parent is still being copied (the store's insides set that moment up). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "layerbank/ring.h"
#include "store.h"
#include "store_internal.h"

#define ENTRY_BYTES (2u << 20) /* long copies: a wide window outside the lock */
#define INSERTS 60
#define MODELS 200

struct race {
	struct lbd_store *st;
	uint8_t *data;
	atomic_int inserting;
	int ok;
};

static struct lbp_register_model model(uint32_t i)
{
	struct lbp_register_model d = { .weights_hash = i, .n_layers = 2, .hidden = 64,
					.dtype = LBP_DTYPE_F32, .max_seq = 1 << 16,
					.fp = { .chunks = 4, .bits = 256, .seed = 1 } };
	snprintf(d.name, sizeof(d.name), "m%u", i);
	return d;
}

static void *inserter(void *p)
{
	struct race *r = p;
	for (uint32_t k = 0; k < INSERTS; k++) {
		struct lb_req req = { .opcode = LB_OP_INSERT, .layer = (uint16_t)(k % 2), .model_id = 1,
				      .seq_len = ENTRY_BYTES / 256,
				      .payload_len = LB_INSERT_HDR_SIZE + ENTRY_BYTES };
		struct lb_insert_hdr h = { .dtype = LBP_DTYPE_F32, .ndim = 2,
					   .shape = { ENTRY_BYTES / 256, 64 }, .bytes = ENTRY_BYTES };
		struct lb_cpl cpl = { 0 };
		h.exact[0] = k + 1;
		h.fp[0] = k;
		lbd_store_insert(r->st, LBD_INSERTER_DAEMON, &req, &h, r->data, &cpl);
		if (cpl.status == 0)
			r->ok++;
		atomic_store(&r->inserting, 1);
	}
	atomic_store(&r->inserting, 2);
	return NULL;
}

/* Model banks live in one array that a registration reallocates; an insert that kept a
 * pointer into it across its unlocked copy wrote its counters into freed memory (ASan in CI
 * catches that; here the counters must simply add up). */
static void test_models_registered_during_inserts(void **state)
{
	(void)state;
	static const uint8_t boot[16] = { 1 };
	struct lbd_arena arena;
	struct lbd_store_cfg cfg = { .policy = LBD_POLICY_LRU, .ttl_ns = 1, .half_life_ns = 1,
				     .drift_max = 0.05, .tau = 0.98 };
	struct lbp_model_stats_reply ms;
	struct race r = { 0 };
	char err[256];
	pthread_t t;

	assert_int_equal(lbd_arena_create(&arena, 16u << 20, -1, LBD_HP_OFF, boot, 0, err, sizeof(err)), 0);
	r.st = lbd_store_new(&arena, 1, &cfg);
	assert_non_null(r.st);
	r.data = calloc(1, ENTRY_BYTES);
	assert_non_null(r.data);
	struct lbp_register_model d = model(1);
	assert_int_equal(lbd_store_add_model(r.st, 1, &d), 0);
	assert_int_equal(pthread_create(&t, NULL, inserter, &r), 0);
	while (atomic_load(&r.inserting) == 0)
		;
	/* One bank more at a time: a reallocation for every registration. */
	for (uint32_t i = 2; i <= MODELS && atomic_load(&r.inserting) == 1; i++) {
		d = model(i);
		assert_int_equal(lbd_store_add_model(r.st, i, &d), 0);
	}
	pthread_join(t, NULL);
	assert_true(r.ok > 0);
	assert_int_equal(lbd_store_model_stats(r.st, 1, 0, &ms), 0);
	assert_int_equal(ms.layers[0].inserts + ms.layers[1].inserts, (uint64_t)r.ok);
	free(r.data);
	lbd_store_free(r.st);
	lbd_arena_destroy(&arena);
}

/* ---- a flush in batches beside a busy service thread ---- */

#define OLD_INPUTS 3000u
#define SMALL 256u /* data bytes of an entry */

struct busy {
	struct lbd_store *st;
	atomic_int stop;
	atomic_uint rounds;       /* the thread's progress */
	uint32_t inserted;        /* new inputs OLD_INPUTS + 1.. inserted */
};

static uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* Input i's keys: random fingerprints, far apart, so that only its own token hash finds it. */
static void keys(uint32_t i, uint64_t fp[4], uint64_t exact[2])
{
	for (int w = 0; w < 4; w++)
		fp[w] = mix(i * 4u + (uint32_t)w);
	exact[0] = i;
	exact[1] = mix(i);
}

static int put_small(struct lbd_store *st, uint32_t input)
{
	static const uint8_t data[SMALL];
	struct lb_req r = { .opcode = LB_OP_INSERT, .model_id = 1, .seq_len = 1,
			    .payload_len = LB_INSERT_HDR_SIZE + SMALL };
	struct lb_insert_hdr h = { .dtype = LBP_DTYPE_F32, .ndim = 1, .shape = { SMALL / 4 },
				   .bytes = SMALL };
	struct lb_cpl cpl = { 0 };

	keys(input, h.fp, h.exact);
	lbd_store_insert(st, LBD_INSERTER_DAEMON, &r, &h, data, &cpl);
	return cpl.status;
}

/* Look input up; on a hit, REPORT drift (1: invalidate it) or release. @return the status. */
static int get_small(struct lbd_store *st, struct lbd_leases *ls, uint32_t input, bool invalidate)
{
	struct lb_req r = { .opcode = LB_OP_LOOKUP, .model_id = 1, .seq_len = 1 };
	struct lb_query q = { .n_thr = 0 };
	struct lb_cpl cpl = { 0 }, done = { 0 };

	keys(input, q.fp, q.exact);
	lbd_store_lookup(st, ls, &r, &q, NULL, &cpl);
	if (cpl.status == 0) {
		if (invalidate)
			lbd_store_report(st, ls, cpl.lease, -1, 1.0f, &done);
		if (!invalidate || done.status == 0)
			lbd_store_release(st, ls, cpl.lease, &done);
	}
	return cpl.status;
}

/* A service thread: inserts new inputs, invalidates every other one of them (each invalidation
 * moves the last entry of the sample list into its hole, under the flush's feet), and looks up
 * old inputs. */
static void *busy_thread(void *p)
{
	struct busy *b = p;
	struct lbd_leases ls = { 0 };

	for (uint32_t i = OLD_INPUTS + 1; !atomic_load(&b->stop); i++) {
		if (put_small(b->st, i) == 0) {
			b->inserted++;
			if (i % 2)
				(void)get_small(b->st, &ls, i, true);
		}
		(void)get_small(b->st, &ls, 1 + i % OLD_INPUTS, false);
		atomic_fetch_add(&b->rounds, 1);
	}
	lbd_leases_free(&ls);
	return NULL;
}

static void test_flush_in_batches_beside_a_busy_thread(void **state)
{
	(void)state;
	static const uint8_t boot[16] = { 2 };
	struct lbd_arena arena;
	struct lbd_store_cfg cfg = { .policy = LBD_POLICY_LRU, .ttl_ns = 1, .half_life_ns = 1,
				     .drift_max = 0.05, .tau = 0.98 };
	struct lbd_flush_result fr;
	struct lbp_stats_reply s;
	struct lbd_leases ls = { 0 };
	struct busy b = { 0 };
	char err[256];
	pthread_t t;

	assert_int_equal(lbd_arena_create(&arena, 64u << 20, -1, LBD_HP_OFF, boot, 0, err, sizeof(err)), 0);
	b.st = lbd_store_new(&arena, 1, &cfg);
	assert_non_null(b.st);
	struct lbp_register_model d = model(1);
	assert_int_equal(lbd_store_add_model(b.st, 1, &d), 0);
	for (uint32_t i = 1; i <= OLD_INPUTS; i++)
		assert_int_equal(put_small(b.st, i), 0);

	assert_int_equal(pthread_create(&t, NULL, busy_thread, &b), 0);
	while (atomic_load(&b.rounds) < 50)
		; /* the thread is well under way */
	/* Batches of 4: hundreds of lock hand-overs, each a chance for the thread to reorder. */
	assert_int_equal(lbd_store_flush_batched(b.st, 0, -1, 4, &fr), 0);
	atomic_store(&b.stop, 1);
	pthread_join(t, NULL);

	/* Every entry live when the flush began went, however the thread reordered the list: all
	 * the old inputs (and new ones inserted before it began, counted in fr.entries too). */
	for (uint32_t i = 1; i <= OLD_INPUTS; i++)
		assert_int_equal(get_small(b.st, &ls, i, false), -ENOENT);
	memset(&s, 0, sizeof(s));
	lbd_store_stats(b.st, &s);
	assert_true(fr.entries >= OLD_INPUTS);
	assert_true(b.inserted > 0 && s.invalidations > 0);
	/* Nothing lost and nothing counted twice: what is left is every insert neither
	 * invalidated nor flushed. */
	assert_int_equal(s.entries + fr.entries + s.invalidations, OLD_INPUTS + b.inserted);
	assert_int_equal(s.leases, 0);
	lbd_leases_free(&ls);
	lbd_store_free(b.st);
	lbd_arena_destroy(&arena);
}

/* ---- a snapshot while a block's parent is still being copied ---- */

#define KV_LAYERS 2
#define KV_DIM 4
#define KV_TOKENS 2
#define BLOCK_BYTES (KV_LAYERS * 2 * KV_TOKENS * KV_DIM * 4)

static int put_block(struct lbd_store *st, uint64_t key, uint64_t parent, uint32_t index)
{
	static const uint8_t data[BLOCK_BYTES];
	struct lb_req r = { .opcode = LB_OP_INSERT_BLOCK, .model_id = 1,
			    .seq_len = (index + 1) * KV_TOKENS,
			    .payload_len = LB_INSERT_HDR_SIZE + BLOCK_BYTES };
	struct lb_block_hdr h = { .key = { key, 1 }, .parent = { parent, parent ? 1 : 0 },
				  .index = index, .dtype = LBP_DTYPE_F32, .ndim = 4,
				  .shape = { KV_LAYERS, 2, KV_TOKENS, KV_DIM },
				  .bytes = BLOCK_BYTES };
	struct lb_cpl cpl = { 0 };

	lbd_store_insert_block(st, LBD_INSERTER_DAEMON, &r, &h, data, &cpl);
	return cpl.status;
}

/* The items lbd_store_hold_all describes: their count, each block's parent among them. */
static uint32_t held_blocks(struct lbd_store *st)
{
	struct lbd_leases ls = { 0 };
	struct lbd_store_item *it;
	uint32_t n;
	char why[128] = "";

	assert_int_equal(lbd_store_hold_all(st, &ls, &it, &n), 0);
	for (uint32_t k = 0; k < n; k++) {
		bool parent = it[k].index == 0;
		for (uint32_t j = 0; j < n && !parent; j++)
			parent = it[j].index + 1 == it[k].index &&
				 !memcmp(it[j].exact, it[k].parent, sizeof(it[k].parent));
		assert_true(parent);
	}
	lbd_store_release_all(st, &ls);
	lbd_leases_free(&ls);
	free(it);
	if (lbd_store_check(st, why, sizeof(why)) < 0)
		fail_msg("store: %s", why);
	return n;
}

/* INSERT_BLOCK finds its parent as soon as the parent's insert has placed it, while its data
 * is still being copied: the child can go live first. A snapshot taken then must leave the
 * child out (the file would have a hole, and the loader refuse all of it) and take it once
 * the parent is live. The parent's PENDING moment is set up here by hand, as block_reserve
 * leaves it. */
static void test_hold_all_leaves_out_a_block_under_a_pending_parent(void **state)
{
	(void)state;
	static const uint8_t boot[16] = { 3 }, data[BLOCK_BYTES];
	struct lbd_arena arena;
	struct lbd_store_cfg cfg = { .policy = LBD_POLICY_LRU, .ttl_ns = 1, .half_life_ns = 1,
				     .drift_max = 0.05, .tau = 0.98 };
	struct lbp_register_model d = model(1);
	uint64_t off, need = store_entry_need(BLOCK_BYTES), key0[2] = { 10, 1 };
	unsigned a;
	char err[256];

	d.kv = (struct lbp_kv_spec){ .dim = KV_DIM, .block_tokens = KV_TOKENS, .layers = KV_LAYERS };
	assert_int_equal(lbd_arena_create(&arena, 4u << 20, -1, LBD_HP_OFF, boot, 0, err,
					  sizeof(err)), 0);
	struct lbd_store *st = lbd_store_new(&arena, 1, &cfg);
	assert_non_null(st);
	assert_int_equal(lbd_store_add_model(st, 1, &d), 0);

	store_lock(st);
	assert_int_equal(store_alloc_in(st, 0, -1, need, &a, &off), 0);
	uint32_t eid = store_block_place(st, store_bank_of(st, 1), key0, 0, NONE, a, off, need);
	assert_true(eid != NONE);
	store_entry_pending(st, eid, NULL, 0);
	uint32_t gen = st->e[eid].gen;
	store_unlock(st);

	assert_int_equal(put_block(st, 11, 10, 1), 0);
	assert_int_equal(put_block(st, 12, 11, 2), 0);
	assert_int_equal(put_block(st, 20, 0, 0), 0); /* another chain, whole */
	assert_int_equal(held_blocks(st), 1);

	struct lb_entry_hdr tmpl = { .model_id = 1, .layer = LB_ENTRY_LAYER_BLOCK,
				     .dtype = LBP_DTYPE_F32, .seq_len = KV_TOKENS, .ndim = 4,
				     .shape = { KV_LAYERS, 2, KV_TOKENS, KV_DIM },
				     .bytes = BLOCK_BYTES, .key = { key0[0], key0[1] } };
	store_entry_publish(store_entry_hdr(st, a, off), &tmpl, data, NULL, false);
	store_lock(st);
	store_entry_copied(st, eid, gen, lb_now_ns());
	store_entry_go_live(st, eid);
	store_unlock(st);
	assert_int_equal(held_blocks(st), 4);
	lbd_store_free(st);
	lbd_arena_destroy(&arena);
}

/* ---- placement: tenants and nodes ---- */

#define PLACE_BYTES (64u << 10)

static unsigned place_tenant_of(const void *ctx, const char *model)
{
	(void)ctx;
	return strcmp(model, "secret") == 0 ? 1 : 0;
}

/* Insert input k of model_id (layer 0, PLACE_BYTES) for a client of node. @return its cpl. */
static struct lb_cpl place(struct lbd_store *st, uint32_t model_id, int node, uint64_t k,
			   const uint8_t *data)
{
	struct lb_req req = { .opcode = LB_OP_INSERT, .model_id = model_id, .seq_len = 256,
			      .payload_len = LB_INSERT_HDR_SIZE + PLACE_BYTES };
	struct lb_insert_hdr h = { .dtype = LBP_DTYPE_F32, .ndim = 2, .shape = { 256, 64 },
				   .bytes = PLACE_BYTES, .exact = { k, model_id }, .fp = { k } };
	struct lb_cpl cpl = { 0 };
	lbd_store_insert(st, (struct lbd_inserter){ .account = 0, .node = node }, &req, &h, data,
			 &cpl);
	return cpl;
}

static void counts(struct lbd_store *st, struct lbd_arena_counts c[4])
{
	char why[256];
	if (lbd_store_check(st, why, sizeof(why)) != 0)
		fail_msg("store check: %s", why);
	lbd_store_arena_counts(st, c);
}

/*
 * Four arenas: tenants 0 and 1, each on nodes 0 and 1 (arena 2t + node). A client's inserts go
 * to its node's arena of its model's tenant until it is full, then to the tenant's other one,
 * counted as remote; once both are full an insert evicts, its node's entries first, and never
 * another tenant's.
 */
static void test_inserts_go_to_their_node_and_tenant(void **state)
{
	(void)state;
	static const uint8_t boot[16] = { 3 };
	struct lbd_arena arenas[4];
	struct lbd_store_cfg cfg = { .policy = LBD_POLICY_LRU, .ttl_ns = 1, .half_life_ns = 1,
				     .drift_max = 0.05, .tau = 0.98 };
	struct lbd_arena_counts c[4];
	struct lbp_register_model open = model(1), secret = model(2);
	uint8_t *data = calloc(1, PLACE_BYTES);
	char err[256];

	assert_non_null(data);
	for (unsigned i = 0; i < 4; i++) {
		assert_int_equal(lbd_arena_create(&arenas[i], 1u << 20, -1, LBD_HP_OFF, boot, i, err,
						  sizeof(err)), 0);
		arenas[i].node = (int)(i % 2); /* as if bound: placement reads only this */
		arenas[i].tenant = i / 2;
	}
	struct lbd_store *st = lbd_store_new(arenas, 4, &cfg);
	assert_non_null(st);
	lbd_store_set_tenants(st, place_tenant_of, NULL);
	snprintf(open.name, sizeof(open.name), "open");
	snprintf(secret.name, sizeof(secret.name), "secret");
	assert_int_equal(lbd_store_add_model(st, 1, &open), 0);
	assert_int_equal(lbd_store_add_model(st, 2, &secret), 0);

	/* The secret tenant: node 0's client into arena 2, node 1's into arena 3. */
	assert_int_equal(place(st, 2, 0, 1, data).arena, 2);
	assert_int_equal(place(st, 2, 1, 2, data).arena, 3);
	struct lb_cpl k = place(st, 2, -1, 3, data);
	assert_int_equal(k.status, 0);
	assert_true(k.arena == 2 || k.arena == 3);

	/* Node 0's client fills arena 0, then spills into arena 1, counted as node 0's remote. */
	uint64_t key = 100;
	unsigned fit = 0;
	for (; key < 200; key++) {
		k = place(st, 1, 0, key, data);
		assert_int_equal(k.status, 0);
		if (k.arena != 0) {
			assert_int_equal(k.arena, 1);
			fit = (unsigned)(key - 100);
			break;
		}
	}
	counts(st, c);
	assert_true(fit >= 10); /* about 1 MiB of 64 KiB entries */
	assert_int_equal(c[0].entries, fit);
	assert_int_equal(c[0].remote, 1);
	assert_int_equal(c[1].inserts, 1);
	assert_int_equal(c[1].remote, 0);
	/* Node 1's client fills the rest of arena 1; then every insert evicts. The policy alone
	 * (LRU) would take node 0's entries, the oldest; its node's own go first. */
	uint64_t evictions = 0;
	for (key++; key < 400; key++) {
		counts(st, c);
		uint64_t before = c[0].entries + c[1].entries;
		k = place(st, 1, 1, key, data);
		assert_int_equal(k.status, 0);
		assert_int_equal(k.arena, 1);
		counts(st, c);
		evictions += c[0].entries + c[1].entries == before;
	}
	assert_true(evictions > 100);
	assert_int_equal(c[0].entries, fit);
	assert_int_equal(c[1].remote, 0);
	/* The other tenant was never touched: its three entries stay, and so do its counts. */
	counts(st, c);
	assert_int_equal(c[2].entries + c[3].entries, 3);
	assert_int_equal(c[2].inserts + c[3].inserts, 3);
	assert_int_equal(c[2].remote + c[3].remote, 0);
	lbd_store_free(st);
	for (unsigned i = 0; i < 4; i++)
		lbd_arena_destroy(&arenas[i]);
	free(data);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_models_registered_during_inserts),
		cmocka_unit_test(test_flush_in_batches_beside_a_busy_thread),
		cmocka_unit_test(test_hold_all_leaves_out_a_block_under_a_pending_parent),
		cmocka_unit_test(test_inserts_go_to_their_node_and_tenant),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
