/* Tests for daemon/fpindex.c and daemon/exactmap.c: every answer compared with a brute-force
 * scan or a reference model, across rebuilds, substring widths, duplicates and churn. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "exactmap.h"
#include "fpindex.h"
#include "rng.h"

#define NONE UINT32_MAX

static uint32_t below(uint64_t *s, uint32_t n)
{
	return (uint32_t)(lbu_splitmix64(s) % n);
}

static void rand_fp(uint64_t *s, uint64_t fp[LBD_FP_WORDS])
{
	for (int i = 0; i < LBD_FP_WORDS; i++)
		fp[i] = lbu_splitmix64(s);
}

/* out = in with exactly k distinct random bits flipped. */
static void flip_bits(uint64_t *s, const uint64_t in[LBD_FP_WORDS], uint32_t k,
		      uint64_t out[LBD_FP_WORDS])
{
	memcpy(out, in, LBD_FP_WORDS * sizeof(uint64_t));
	while (k) {
		uint32_t b = below(s, 256);
		uint64_t bit = 1ull << (b & 63);
		if ((out[b >> 6] ^ in[b >> 6]) & bit)
			continue;
		out[b >> 6] ^= bit;
		k--;
	}
}

/* ---- reference model: fingerprints by id, a live flag, brute force ---- */

struct model {
	uint32_t n;                  /* ids [0, n) */
	uint64_t (*fp)[LBD_FP_WORDS];
	bool *live;
};

static void model_init(struct model *mo, uint32_t n)
{
	mo->n = n;
	mo->fp = calloc(n, sizeof(*mo->fp));
	mo->live = calloc(n, sizeof(*mo->live));
	assert_non_null(mo->fp);
	assert_non_null(mo->live);
}

static void model_fini(struct model *mo)
{
	free(mo->fp);
	free(mo->live);
}

typedef bool (*filter_fn)(void *ctx, uint32_t id);

/* Best distance within max_d among live, accepted ids; NONE when there is none. */
static uint32_t brute(const struct model *mo, const uint64_t q[LBD_FP_WORDS], uint32_t max_d,
		      filter_fn ok, void *ctx)
{
	uint32_t best = NONE;
	for (uint32_t i = 0; i < mo->n; i++) {
		uint32_t d;
		if (!mo->live[i] || (ok && !ok(ctx, i)))
			continue;
		d = lbd_fp_hamming(mo->fp[i], q);
		if (d <= max_d && (best == NONE || d < best))
			best = d;
	}
	return best;
}

/* The index's answer must be brute force's: same distance, a live accepted id at it. */
static void check_query(struct lbd_fpindex *ix, const struct model *mo,
			const uint64_t q[LBD_FP_WORDS], uint32_t max_d, filter_fn ok, void *ctx)
{
	uint32_t want = brute(mo, q, max_d, ok, ctx), id = NONE, dist = NONE;
	int rc = lbd_fpindex_nearest(ix, q, max_d, 0, ok, ctx, &id, &dist);
	if (want == NONE) {
		assert_int_equal(rc, -ENOENT);
		return;
	}
	assert_int_equal(rc, 0);
	assert_int_equal(dist, want);
	assert_true(id < mo->n);
	assert_true(mo->live[id]);
	assert_int_equal(lbd_fp_hamming(mo->fp[id], q), dist);
	if (ok)
		assert_true(ok(ctx, id));
}

static void fill_random(struct lbd_fpindex *ix, struct model *mo, uint64_t *rng)
{
	for (uint32_t i = 0; i < mo->n; i++) {
		rand_fp(rng, mo->fp[i]);
		assert_int_equal(lbd_fpindex_insert(ix, mo->fp[i], i), 0);
		mo->live[i] = true;
	}
	assert_int_equal(lbd_fpindex_count(ix), mo->n);
}

static const uint32_t radii[] = { 0, 8, 15, 31, 45, 64 };

/* Near-duplicates of stored entries (0..60 bits flipped) and random queries, for every radius. */
static void recall_run(uint32_t hint, uint32_t n, uint32_t queries, uint64_t seed)
{
	uint64_t rng = seed, q[LBD_FP_WORDS];
	struct lbd_fpindex *ix = lbd_fpindex_new(hint);
	struct model mo;
	assert_non_null(ix);
	model_init(&mo, n);
	fill_random(ix, &mo, &rng);
	for (size_t r = 0; r < sizeof(radii) / sizeof(radii[0]); r++) {
		for (uint32_t i = 0; i < queries; i++) {
			if (i % 8 == 7)
				rand_fp(&rng, q);
			else
				flip_bits(&rng, mo.fp[below(&rng, n)], below(&rng, 61), q);
			check_query(ix, &mo, q, radii[r], NULL, NULL);
		}
	}
	model_fini(&mo);
	lbd_fpindex_free(ix);
}

/* 20,000 entries: 16-bit substrings, m = 16, every bit indexed, homes shared by keys. */
static void test_recall_w16(void **state)
{
	(void)state;
	recall_run(20000, 20000, 250, 1);
}

/* Sized for 100,000: 18-bit substrings, m = 14, keys straddle 64-bit words, 4 bits unindexed. */
static void test_recall_w18_straddling_keys(void **state)
{
	(void)state;
	recall_run(100000, 20000, 150, 2);
}

/* Sized for 150,000: 19-bit substrings, m = 13, 9 bits unindexed. */
static void test_recall_w19_unindexed_bits(void **state)
{
	(void)state;
	recall_run(150000, 20000, 150, 3);
}

/* Sized for 2^20: 21-bit substrings, m = 12, two key bits kept in the cell as its tag. */
static void test_recall_w21_tagged_keys(void **state)
{
	(void)state;
	recall_run(1u << 20, 20000, 150, 4);
}

/*
 * good_d: clusters of near-duplicates, where the nearest and a good-enough entry differ. The
 * answer must lie within good_d when brute force finds something there, and be the exact
 * nearest otherwise; never beyond max_d, never a miss when brute force hits.
 */
static void test_good_enough_radius(void **state)
{
	static const uint32_t goods[] = { 1, 8, 16, 45 };
	uint64_t rng = 11, q[LBD_FP_WORDS];
	struct lbd_fpindex *ix = lbd_fpindex_new(20000);
	struct model mo;
	uint32_t early = 0;
	(void)state;
	assert_non_null(ix);
	model_init(&mo, 20000);
	fill_random(ix, &mo, &rng);
	/* Entries 10k+1 .. 10k+4 become copies of entry 10k with 1..30 bits flipped. */
	for (uint32_t i = 1; i < mo.n; i += (i % 10 == 4 ? 7 : 1)) {
		assert_int_equal(lbd_fpindex_remove(ix, mo.fp[i], i), 0);
		flip_bits(&rng, mo.fp[i - i % 10], 1 + below(&rng, 30), mo.fp[i]);
		assert_int_equal(lbd_fpindex_insert(ix, mo.fp[i], i), 0);
	}
	for (size_t g = 0; g < sizeof(goods) / sizeof(goods[0]); g++) {
		for (uint32_t i = 0; i < 1000; i++) {
			uint32_t max_d = i & 1 ? 45 : 64, id = NONE, dist = NONE, want;
			int rc;
			if (i % 8 == 7)
				rand_fp(&rng, q);
			else
				flip_bits(&rng, mo.fp[below(&rng, mo.n / 10) * 10], below(&rng, 40), q);
			want = brute(&mo, q, max_d, NULL, NULL);
			rc = lbd_fpindex_nearest(ix, q, max_d, goods[g], NULL, NULL, &id, &dist);
			if (want == NONE) {
				assert_int_equal(rc, -ENOENT);
				continue;
			}
			assert_int_equal(rc, 0);
			assert_true(id < mo.n);
			assert_int_equal(lbd_fp_hamming(mo.fp[id], q), dist);
			if (want <= goods[g])
				assert_true(dist <= goods[g]);
			else
				assert_int_equal(dist, want);
			early += dist != want;
		}
	}
	/* The clusters make some good-enough answers differ from the nearest: the test has
	 * exercised the early end, not only searches that ran to the proof. */
	print_message("early: %u\n", early);
	assert_true(early > 0);
	model_fini(&mo);
	lbd_fpindex_free(ix);
}

/* Radius past 256 means "the nearest, however far". */
static void test_unbounded_radius(void **state)
{
	uint64_t rng = 4, q[LBD_FP_WORDS];
	struct lbd_fpindex *ix = lbd_fpindex_new(2000);
	struct model mo;
	(void)state;
	assert_non_null(ix);
	model_init(&mo, 2000);
	fill_random(ix, &mo, &rng);
	for (int i = 0; i < 50; i++) {
		rand_fp(&rng, q);
		check_query(ix, &mo, q, UINT32_MAX, NULL, NULL);
		check_query(ix, &mo, q, 256, NULL, NULL);
	}
	model_fini(&mo);
	lbd_fpindex_free(ix);
}

/* ---- accept ---- */

struct odd_ctx {
	uint32_t *calls; /* per id, this search */
	uint32_t n;
};

static bool accept_odd(void *ctx, uint32_t id)
{
	struct odd_ctx *c = ctx;
	if (c->calls) {
		assert_true(id < c->n);
		c->calls[id]++;
		/* A refused candidate is not offered twice in one search. */
		assert_true(c->calls[id] == 1 || (id & 1));
	}
	return id & 1;
}

static bool accept_odd_plain(void *ctx, uint32_t id)
{
	(void)ctx;
	return id & 1;
}

/* Even ids refused: the answer is the nearest odd id, even when an even one is nearer. */
static void test_accept_filter(void **state)
{
	uint64_t rng = 5, q[LBD_FP_WORDS];
	struct lbd_fpindex *ix = lbd_fpindex_new(10000);
	struct model mo;
	struct odd_ctx c;
	(void)state;
	assert_non_null(ix);
	model_init(&mo, 10000);
	fill_random(ix, &mo, &rng);
	c.n = mo.n;
	c.calls = calloc(mo.n, sizeof(*c.calls));
	assert_non_null(c.calls);
	for (size_t r = 0; r < sizeof(radii) / sizeof(radii[0]); r++) {
		for (int i = 0; i < 200; i++) {
			uint32_t src = below(&rng, mo.n) & ~1u; /* an even id: the trap */
			uint32_t id, dist, want;
			int rc;
			flip_bits(&rng, mo.fp[src], below(&rng, 30), q);
			memset(c.calls, 0, mo.n * sizeof(*c.calls));
			want = brute(&mo, q, radii[r], accept_odd_plain, NULL);
			rc = lbd_fpindex_nearest(ix, q, radii[r], 0, accept_odd, &c, &id, &dist);
			if (want == NONE) {
				assert_int_equal(rc, -ENOENT);
				continue;
			}
			assert_int_equal(rc, 0);
			assert_true(id & 1);
			assert_int_equal(dist, want);
			assert_int_equal(lbd_fp_hamming(mo.fp[id], q), want);
		}
	}
	free(c.calls);
	model_fini(&mo);
	lbd_fpindex_free(ix);
}

static bool accept_none(void *ctx, uint32_t id)
{
	(void)ctx;
	(void)id;
	return false;
}

/* Marks of refused candidates are 16-bit: past 65535 searches they wrap and must be reset. */
static void test_accept_marks_wrap(void **state)
{
	uint64_t rng = 6, q[LBD_FP_WORDS];
	struct lbd_fpindex *ix = lbd_fpindex_new(64);
	struct model mo;
	uint32_t calls[64];
	struct odd_ctx c = { .calls = calls, .n = 64 };
	uint32_t id, dist;
	(void)state;
	assert_non_null(ix);
	model_init(&mo, 64);
	fill_random(ix, &mo, &rng);
	for (uint32_t i = 0; i < 70000; i++) {
		uint32_t src = below(&rng, mo.n);
		flip_bits(&rng, mo.fp[src], i % 5, q);
		memset(calls, 0, sizeof(calls));
		assert_int_equal(lbd_fpindex_nearest(ix, q, 256, 0, accept_odd, &c, &id, &dist), 0);
		assert_true(id & 1);
		assert_int_equal(dist, brute(&mo, q, 256, accept_odd_plain, NULL));
	}
	assert_int_equal(lbd_fpindex_nearest(ix, q, 256, 0, accept_none, NULL, &id, &dist), -ENOENT);
	model_fini(&mo);
	lbd_fpindex_free(ix);
}

/* ---- insert, remove, growth ---- */

static void test_errors(void **state)
{
	uint64_t rng = 7, a[LBD_FP_WORDS], b[LBD_FP_WORDS];
	struct lbd_fpindex *ix = lbd_fpindex_new(0);
	uint32_t id = 99, dist = 99;
	(void)state;
	assert_non_null(ix);
	rand_fp(&rng, a);
	rand_fp(&rng, b);
	assert_int_equal(lbd_fpindex_nearest(ix, a, 256, 0, NULL, NULL, &id, &dist), -ENOENT);
	assert_int_equal(id, 99);
	assert_int_equal(lbd_fpindex_remove(ix, a, 1), -ENOENT);
	assert_int_equal(lbd_fpindex_insert(ix, a, 1), 0);
	assert_int_equal(lbd_fpindex_insert(ix, a, 1), -EEXIST);
	assert_int_equal(lbd_fpindex_insert(ix, b, 1), -EEXIST); /* the id decides, not the fp */
	assert_int_equal(lbd_fpindex_count(ix), 1);
	assert_int_equal(lbd_fpindex_remove(ix, a, 2), -ENOENT);
	assert_int_equal(lbd_fpindex_nearest(ix, a, 0, 0, NULL, NULL, &id, &dist), 0);
	assert_int_equal(id, 1);
	assert_int_equal(dist, 0);
	assert_int_equal(lbd_fpindex_nearest(ix, b, 0, 0, NULL, NULL, &id, &dist), -ENOENT);
	assert_int_equal(lbd_fpindex_remove(ix, a, 1), 0);
	assert_int_equal(lbd_fpindex_remove(ix, a, 1), -ENOENT);
	assert_int_equal(lbd_fpindex_count(ix), 0);
	assert_int_equal(lbd_fpindex_nearest(ix, a, 256, 0, NULL, NULL, &id, &dist), -ENOENT);
	/* Removed ids come back, under any fingerprint; extreme ids are ordinary ids. */
	assert_int_equal(lbd_fpindex_insert(ix, b, 1), 0);
	assert_int_equal(lbd_fpindex_insert(ix, a, UINT32_MAX), 0);
	assert_int_equal(lbd_fpindex_insert(ix, a, 0), 0);
	assert_int_equal(lbd_fpindex_nearest(ix, b, 0, 0, NULL, NULL, &id, &dist), 0);
	assert_int_equal(id, 1);
	assert_int_equal(lbd_fpindex_remove(ix, a, UINT32_MAX), 0);
	assert_int_equal(lbd_fpindex_nearest(ix, a, 0, 0, NULL, NULL, &id, &dist), 0);
	assert_int_equal(id, 0);
	assert_int_equal(lbd_fpindex_count(ix), 2);
	/* The index removes by its own copy of the fingerprint, whatever the caller passes. */
	assert_int_equal(lbd_fpindex_remove(ix, a, 1), 0);
	assert_int_equal(lbd_fpindex_nearest(ix, b, 0, 0, NULL, NULL, &id, &dist), -ENOENT);
	assert_int_equal(lbd_fpindex_count(ix), 1);
	lbd_fpindex_free(ix);
	lbd_fpindex_free(NULL);
}

/* From capacity_hint 16 to 100,000 entries: a dozen rebuilds, w growing from 16 to 19. */
static void test_growth_across_rebuilds(void **state)
{
	uint64_t rng = 8, q[LBD_FP_WORDS];
	struct lbd_fpindex *ix = lbd_fpindex_new(16);
	struct model mo;
	uint32_t id, dist;
	(void)state;
	assert_non_null(ix);
	model_init(&mo, 100000);
	for (uint32_t i = 0; i < mo.n; i++) {
		uint32_t sid = i * 7919u % mo.n; /* ids not in insertion order */
		rand_fp(&rng, mo.fp[sid]);
		assert_int_equal(lbd_fpindex_insert(ix, mo.fp[sid], sid), 0);
		mo.live[sid] = true;
		if (i % 9973 == 0) /* queries between rebuilds */
			for (int k = 0; k < 20; k++) {
				flip_bits(&rng, mo.fp[i * 7919u % mo.n], below(&rng, 40), q);
				check_query(ix, &mo, q, 45, NULL, NULL);
			}
	}
	assert_int_equal(lbd_fpindex_count(ix), mo.n);
	for (uint32_t i = 0; i < mo.n; i++) {
		assert_int_equal(lbd_fpindex_nearest(ix, mo.fp[i], 0, 0, NULL, NULL, &id, &dist), 0);
		assert_int_equal(id, i);
		assert_int_equal(dist, 0);
	}
	for (int k = 0; k < 100; k++) {
		flip_bits(&rng, mo.fp[below(&rng, mo.n)], below(&rng, 50), q);
		check_query(ix, &mo, q, 45, NULL, NULL);
	}
	for (uint32_t i = 0; i < mo.n; i++)
		assert_int_equal(lbd_fpindex_remove(ix, mo.fp[i], i), 0);
	assert_int_equal(lbd_fpindex_count(ix), 0);
	assert_int_equal(lbd_fpindex_nearest(ix, mo.fp[0], 256, 0, NULL, NULL, &id, &dist), -ENOENT);
	model_fini(&mo);
	lbd_fpindex_free(ix);
}

/* 600 ids under one fingerprint: runs longer than the 6-bit displacement, so it saturates and
 * the index must recompute it from the entry. */
static void test_duplicate_fingerprints(void **state)
{
	uint64_t rng = 9, q[LBD_FP_WORDS];
	struct lbd_fpindex *ix = lbd_fpindex_new(100);
	struct model mo;
	uint32_t id, dist;
	(void)state;
	assert_non_null(ix);
	model_init(&mo, 1200);
	rand_fp(&rng, mo.fp[0]);
	for (uint32_t i = 0; i < mo.n; i++) {
		if (i % 2 == 0)
			memcpy(mo.fp[i], mo.fp[0], sizeof(mo.fp[0]));
		else
			flip_bits(&rng, mo.fp[0], 1 + below(&rng, 20), mo.fp[i]);
		assert_int_equal(lbd_fpindex_insert(ix, mo.fp[i], i), 0);
		mo.live[i] = true;
	}
	assert_int_equal(lbd_fpindex_nearest(ix, mo.fp[0], 0, 0, NULL, NULL, &id, &dist), 0);
	assert_int_equal(dist, 0);
	assert_true(id % 2 == 0);
	/* Refusing the even ids refuses every exact copy: the answer is the nearest odd one. */
	assert_int_equal(lbd_fpindex_nearest(ix, mo.fp[0], 64, 0, accept_odd_plain, NULL, &id, &dist),
			 0);
	assert_true(id & 1);
	assert_int_equal(dist, brute(&mo, mo.fp[0], 64, accept_odd_plain, NULL));
	for (int k = 0; k < 200; k++) {
		flip_bits(&rng, mo.fp[0], below(&rng, 40), q);
		check_query(ix, &mo, q, radii[k % 6], NULL, NULL);
	}
	/* Remove the duplicates one by one, from the middle of the runs. */
	for (uint32_t i = 0; i < mo.n; i += 2) {
		uint32_t sid = (i * 37u) % mo.n & ~1u;
		if (!mo.live[sid])
			continue;
		assert_int_equal(lbd_fpindex_remove(ix, mo.fp[sid], sid), 0);
		mo.live[sid] = false;
		if (i % 50 == 0)
			check_query(ix, &mo, mo.fp[0], 64, NULL, NULL);
	}
	for (uint32_t i = 0; i < mo.n; i += 2)
		if (mo.live[i]) {
			assert_int_equal(lbd_fpindex_remove(ix, mo.fp[i], i), 0);
			mo.live[i] = false;
		}
	check_query(ix, &mo, mo.fp[0], 64, NULL, NULL);
	assert_int_equal(lbd_fpindex_count(ix), mo.n / 2);
	model_fini(&mo);
	lbd_fpindex_free(ix);
}

/*
 * Random inserts, removes and queries against the reference model. Fingerprints come from a few
 * clusters, so substrings repeat, runs are long and a removal shifts its neighbours.
 */
static void test_churn_vs_reference(void **state)
{
	uint64_t rng = 10, q[LBD_FP_WORDS], centre[8][LBD_FP_WORDS];
	struct lbd_fpindex *ix = lbd_fpindex_new(16);
	struct model mo;
	uint32_t live = 0;
	(void)state;
	assert_non_null(ix);
	model_init(&mo, 6000);
	for (int c = 0; c < 8; c++)
		rand_fp(&rng, centre[c]);
	for (int op = 0; op < 60000; op++) {
		uint32_t i = below(&rng, mo.n), k = below(&rng, 10);
		if (k < 5) {
			if (mo.live[i]) {
				assert_int_equal(lbd_fpindex_insert(ix, mo.fp[i], i), -EEXIST);
				continue;
			}
			if (below(&rng, 4) == 0)
				rand_fp(&rng, mo.fp[i]);
			else
				flip_bits(&rng, centre[below(&rng, 8)], below(&rng, 24), mo.fp[i]);
			assert_int_equal(lbd_fpindex_insert(ix, mo.fp[i], i), 0);
			mo.live[i] = true;
			live++;
		} else if (k < 8) {
			int want = mo.live[i] ? 0 : -ENOENT;
			assert_int_equal(lbd_fpindex_remove(ix, mo.fp[i], i), want);
			live -= mo.live[i];
			mo.live[i] = false;
		} else {
			if (below(&rng, 2))
				flip_bits(&rng, centre[below(&rng, 8)], below(&rng, 60), q);
			else
				rand_fp(&rng, q);
			check_query(ix, &mo, q, radii[below(&rng, 6)], NULL, NULL);
		}
		assert_int_equal(lbd_fpindex_count(ix), live);
	}
	model_fini(&mo);
	lbd_fpindex_free(ix);
}

static void test_hamming(void **state)
{
	uint64_t a[LBD_FP_WORDS] = { 0, 0, 0, 0 }, b[LBD_FP_WORDS] = { ~0ull, ~0ull, ~0ull, ~0ull };
	uint64_t c[LBD_FP_WORDS] = { 1, 1ull << 63, 0xff, 0 };
	(void)state;
	assert_int_equal(lbd_fp_hamming(a, a), 0);
	assert_int_equal(lbd_fp_hamming(a, b), 256);
	assert_int_equal(lbd_fp_hamming(a, c), 10);
	assert_int_equal(lbd_fp_hamming(b, c), 246);
}

/* ---- exact map ---- */

static void test_exactmap_basic(void **state)
{
	struct lbd_exactmap *m = lbd_exactmap_new(0);
	uint64_t a[2] = { 1, 2 }, b[2] = { 1, 3 }, z[2] = { 0, 0 };
	uint32_t id = 77;
	(void)state;
	assert_non_null(m);
	assert_int_equal(lbd_exactmap_find(m, a, &id), -ENOENT);
	assert_int_equal(id, 77);
	assert_int_equal(lbd_exactmap_remove(m, a), -ENOENT);
	assert_int_equal(lbd_exactmap_insert(m, a, 10), 0);
	assert_int_equal(lbd_exactmap_insert(m, a, 11), -EEXIST);
	/* Same key[0], so the same home: key[1] tells them apart. */
	assert_int_equal(lbd_exactmap_insert(m, b, 12), 0);
	assert_int_equal(lbd_exactmap_insert(m, z, UINT32_MAX), 0);
	assert_int_equal(lbd_exactmap_find(m, a, &id), 0);
	assert_int_equal(id, 10); /* the refused insert left it alone */
	assert_int_equal(lbd_exactmap_find(m, b, &id), 0);
	assert_int_equal(id, 12);
	assert_int_equal(lbd_exactmap_find(m, z, &id), 0);
	assert_int_equal(id, UINT32_MAX);
	assert_int_equal(lbd_exactmap_count(m), 3);
	assert_int_equal(lbd_exactmap_remove(m, a), 0);
	assert_int_equal(lbd_exactmap_remove(m, a), -ENOENT);
	assert_int_equal(lbd_exactmap_find(m, a, &id), -ENOENT);
	assert_int_equal(lbd_exactmap_find(m, b, &id), 0);
	assert_int_equal(lbd_exactmap_insert(m, a, 13), 0); /* removed, then back */
	assert_int_equal(lbd_exactmap_find(m, a, &id), 0);
	assert_int_equal(id, 13);
	assert_int_equal(lbd_exactmap_count(m), 3);
	lbd_exactmap_free(m);
	lbd_exactmap_free(NULL);
}

static void test_exactmap_growth(void **state)
{
	struct lbd_exactmap *m = lbd_exactmap_new(1);
	uint64_t rng = 11, key[2];
	uint32_t id;
	const uint32_t n = 200000;
	(void)state;
	assert_non_null(m);
	for (uint32_t i = 0; i < n; i++) {
		uint64_t s = 1000 + i;
		key[0] = lbu_splitmix64(&s);
		key[1] = lbu_splitmix64(&s);
		assert_int_equal(lbd_exactmap_insert(m, key, i), 0);
	}
	assert_int_equal(lbd_exactmap_count(m), n);
	for (uint32_t i = 0; i < n; i++) {
		uint64_t s = 1000 + i;
		key[0] = lbu_splitmix64(&s);
		key[1] = lbu_splitmix64(&s);
		assert_int_equal(lbd_exactmap_find(m, key, &id), 0);
		assert_int_equal(id, i);
	}
	key[0] = lbu_splitmix64(&rng);
	key[1] = lbu_splitmix64(&rng);
	assert_int_equal(lbd_exactmap_find(m, key, &id), -ENOENT);
	lbd_exactmap_free(m);
}

/* Reference: a pool of keys, each present or not. key_low: how key[0] is built. */
static void exactmap_churn(uint32_t pool, uint32_t ops, uint64_t seed, bool colliding)
{
	struct lbd_exactmap *m = lbd_exactmap_new(16);
	uint64_t rng = seed, (*keys)[2] = calloc(pool, sizeof(*keys));
	uint32_t *ids = calloc(pool, sizeof(*ids)), count = 0, id;
	bool *in = calloc(pool, sizeof(*in));
	/* Homes at the top end of the table, at its start, or just after: the same few cells for
	 * every table size up to 2^20, and runs that wrap around the end. */
	static const uint64_t low[] = { 0xffffd, 0xffffe, 0xfffff, 0, 1, 2 };
	assert_non_null(m);
	assert_non_null(keys);
	assert_non_null(ids);
	assert_non_null(in);
	for (uint32_t i = 0; i < pool; i++) {
		keys[i][0] = lbu_splitmix64(&rng);
		keys[i][1] = lbu_splitmix64(&rng);
		if (colliding)
			keys[i][0] = (keys[i][0] << 20) | low[i % 6];
	}
	for (uint32_t op = 0; op < ops; op++) {
		uint32_t i = below(&rng, pool), k = below(&rng, 3);
		if (k == 0) {
			uint32_t nid = below(&rng, 1u << 30);
			assert_int_equal(lbd_exactmap_insert(m, keys[i], nid), in[i] ? -EEXIST : 0);
			if (!in[i]) {
				in[i] = true;
				ids[i] = nid;
				count++;
			}
		} else if (k == 1) {
			assert_int_equal(lbd_exactmap_remove(m, keys[i]), in[i] ? 0 : -ENOENT);
			count -= in[i];
			in[i] = false;
		} else if (in[i]) {
			assert_int_equal(lbd_exactmap_find(m, keys[i], &id), 0);
			assert_int_equal(id, ids[i]);
		} else {
			assert_int_equal(lbd_exactmap_find(m, keys[i], &id), -ENOENT);
		}
		assert_int_equal(lbd_exactmap_count(m), count);
		if (op % 1000 == 999) /* every key, not just the one touched */
			for (uint32_t j = 0; j < pool; j++)
				assert_int_equal(lbd_exactmap_find(m, keys[j], &id),
						 in[j] ? 0 : -ENOENT);
	}
	free(keys);
	free(ids);
	free(in);
	lbd_exactmap_free(m);
}

static void test_exactmap_churn_vs_reference(void **state)
{
	(void)state;
	exactmap_churn(20000, 200000, 12, false);
}

/* Every key homed in six adjacent cells (wrapping): backward shift must keep every run whole. */
static void test_exactmap_backward_shift_colliding_slots(void **state)
{
	(void)state;
	exactmap_churn(1500, 30000, 13, true);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hamming),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_recall_w16),
		cmocka_unit_test(test_recall_w18_straddling_keys),
		cmocka_unit_test(test_recall_w19_unindexed_bits),
		cmocka_unit_test(test_recall_w21_tagged_keys),
		cmocka_unit_test(test_unbounded_radius),
		cmocka_unit_test(test_good_enough_radius),
		cmocka_unit_test(test_accept_filter),
		cmocka_unit_test(test_accept_marks_wrap),
		cmocka_unit_test(test_growth_across_rebuilds),
		cmocka_unit_test(test_duplicate_fingerprints),
		cmocka_unit_test(test_churn_vs_reference),
		cmocka_unit_test(test_exactmap_basic),
		cmocka_unit_test(test_exactmap_growth),
		cmocka_unit_test(test_exactmap_churn_vs_reference),
		cmocka_unit_test(test_exactmap_backward_shift_colliding_slots),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
