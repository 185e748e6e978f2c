/* Tests for the TLSF arena allocator: argument checks, alignment, coalescing, fragmentation
 * figures, misuse, and a long churn against a sorted reference model whose gaps must match the
 * allocator's free blocks exactly. Prints (never asserts) fragmentation and alloc+free rates. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "rng.h"

#define KiB ((uint64_t)1 << 10)
#define MiB ((uint64_t)1 << 20)
#define GiB ((uint64_t)1 << 30)
#define TiB ((uint64_t)1 << 40)
#define ALIGN ((uint64_t)LBD_ALLOC_ALIGN)

static uint64_t round64(uint64_t n)
{
	return (n + ALIGN - 1) & ~(ALIGN - 1);
}

/* ---- random numbers: splitmix64, seeded from LB_ALLOC_SEED or a fixed value ---- */

static uint64_t rng_state;

static uint64_t rng(void)
{
	return lbu_splitmix64(&rng_state);
}

static uint64_t rng_below(uint64_t n)
{
	return rng() % n;
}

/* 64 B .. 4 MiB, log-uniform in the power of two so small and large requests both occur. */
static uint64_t rand_size(void)
{
	uint64_t top = (uint64_t)64 << rng_below(17);
	return 64 + rng_below(top - 64 + 1);
}

static void seed_from_env(void)
{
	const char *s = getenv("LB_ALLOC_SEED");
	rng_state = s ? strtoull(s, NULL, 0) : UINT64_C(0x1ab0);
}

/* ---- a reference model: live blocks sorted by offset ---- */

struct live {
	uint64_t off, req, tag;
};

struct model {
	struct live *v;
	size_t n, cap;
	uint64_t start, bytes;
};

/* Index of the first live block with off >= key. */
static size_t model_lower(const struct model *m, uint64_t key)
{
	size_t lo = 0, hi = m->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (m->v[mid].off < key)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static void model_add(struct model *m, uint64_t off, uint64_t req, uint64_t tag)
{
	if (m->n == m->cap) {
		m->cap = m->cap ? 2 * m->cap : 1024;
		m->v = realloc(m->v, m->cap * sizeof(*m->v));
		assert_non_null(m->v);
	}
	size_t i = model_lower(m, off);
	memmove(&m->v[i + 1], &m->v[i], (m->n - i) * sizeof(*m->v));
	m->v[i] = (struct live){ off, req, tag };
	m->n++;
}

static void model_del(struct model *m, size_t i)
{
	memmove(&m->v[i], &m->v[i + 1], (m->n - i - 1) * sizeof(*m->v));
	m->n--;
}

struct gaps {
	uint64_t count, largest, used;
};

/*
 * Walk the live blocks in address order: each aligned, inside the range, not overlapping the
 * one before. With out-of-band records a block is exactly the rounded request, so the gaps
 * between live blocks are the free blocks the allocator must report, coalesced.
 */
static struct gaps model_walk(const struct model *m)
{
	struct gaps g = { 0, 0, 0 };
	uint64_t at = m->start, end = m->start + m->bytes;
	for (size_t i = 0; i < m->n; i++) {
		const struct live *l = &m->v[i];
		assert_int_equal(l->off % ALIGN, 0);
		assert_true(l->off >= at); /* no overlap with the previous block */
		if (l->off > at) {
			g.count++;
			if (l->off - at > g.largest)
				g.largest = l->off - at;
		}
		at = l->off + round64(l->req);
		assert_true(at <= end);
		g.used += round64(l->req);
	}
	if (at < end) {
		g.count++;
		if (end - at > g.largest)
			g.largest = end - at;
	}
	return g;
}

static void check_stats(const struct lbd_alloc *a, const struct model *m)
{
	struct lbd_alloc_stats s;
	struct gaps g = model_walk(m);
	lbd_alloc_stats(a, &s);
	assert_int_equal(s.bytes_total, m->bytes);
	assert_int_equal(s.bytes_used + s.bytes_free, s.bytes_total);
	assert_int_equal(s.bytes_used, g.used);
	assert_int_equal(s.allocs, m->n);
	assert_int_equal(s.free_blocks, g.count);
	assert_int_equal(s.largest_free, g.largest);
	if (s.bytes_free) {
		double want = 1.0 - (double)s.largest_free / (double)s.bytes_free;
		assert_true(s.fragmentation >= want - 1e-12 && s.fragmentation <= want + 1e-12);
	} else {
		assert_true(s.fragmentation == 0.0);
	}
}

/* The caller may use req bytes: stamp both ends (up to 256 B each) with a per-block pattern. */
#define STAMP 256u

static uint8_t stamp_byte(uint64_t tag, uint64_t i)
{
	return (uint8_t)((tag * 131u) ^ (i * 7u) ^ (tag >> 8));
}

static void stamp(uint8_t *base, const struct live *l)
{
	uint64_t n = l->req < STAMP ? l->req : STAMP;
	for (uint64_t i = 0; i < n; i++) {
		base[l->off + i] = stamp_byte(l->tag, i);
		base[l->off + l->req - 1 - i] = stamp_byte(l->tag, l->req - 1 - i);
	}
}

static void stamp_check(const uint8_t *base, const struct live *l)
{
	uint64_t n = l->req < STAMP ? l->req : STAMP;
	for (uint64_t i = 0; i < n; i++) {
		assert_int_equal(base[l->off + i], stamp_byte(l->tag, i));
		assert_int_equal(base[l->off + l->req - 1 - i], stamp_byte(l->tag, l->req - 1 - i));
	}
}

static void assert_stats_equal(const struct lbd_alloc_stats *x, const struct lbd_alloc_stats *y)
{
	assert_int_equal(x->bytes_total, y->bytes_total);
	assert_int_equal(x->bytes_used, y->bytes_used);
	assert_int_equal(x->bytes_free, y->bytes_free);
	assert_int_equal(x->largest_free, y->largest_free);
	assert_int_equal(x->allocs, y->allocs);
	assert_int_equal(x->free_blocks, y->free_blocks);
	assert_true(x->fragmentation == y->fragmentation);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- tests ---- */

static void test_new_rejects_bad_ranges(void **state)
{
	(void)state;
	errno = 0;
	assert_null(lbd_alloc_new(NULL, 0, 0));
	assert_int_equal(errno, EINVAL);
	errno = 0;
	assert_null(lbd_alloc_new(NULL, 32, 4096)); /* unaligned start */
	assert_int_equal(errno, EINVAL);
	errno = 0;
	assert_null(lbd_alloc_new(NULL, 0, 4097)); /* unaligned length */
	assert_int_equal(errno, EINVAL);
	errno = 0;
	assert_null(lbd_alloc_new(NULL, UINT64_MAX - 63, 4096)); /* wraps */
	assert_int_equal(errno, EINVAL);
	errno = 0;
	assert_null(lbd_alloc_new(NULL, 0, UINT64_MAX - 63)); /* absurd */
	assert_int_equal(errno, EINVAL);
	lbd_alloc_free_all(NULL);
}

static void test_basic_get_put(void **state)
{
	(void)state;
	struct lbd_alloc *a = lbd_alloc_new(NULL, 4096, 1 * MiB);
	struct lbd_alloc_stats s;
	uint64_t x, y;
	assert_non_null(a);
	lbd_alloc_stats(a, &s);
	assert_int_equal(s.bytes_total, 1 * MiB);
	assert_int_equal(s.bytes_free, 1 * MiB);
	assert_int_equal(s.largest_free, 1 * MiB);
	assert_int_equal(s.free_blocks, 1);
	assert_int_equal(s.allocs, 0);
	assert_true(s.fragmentation == 0.0);

	assert_int_equal(lbd_alloc_get(a, 1, &x), 0);
	assert_int_equal(x, 4096);
	assert_int_equal(lbd_alloc_get(a, 100, &y), 0);
	assert_int_equal(y % ALIGN, 0);
	assert_true(y >= x + ALIGN);
	lbd_alloc_stats(a, &s);
	assert_int_equal(s.allocs, 2);
	assert_int_equal(s.bytes_used, 64 + 128);
	assert_int_equal(s.bytes_used + s.bytes_free, s.bytes_total);

	assert_int_equal(lbd_alloc_put(a, x), 0);
	assert_int_equal(lbd_alloc_put(a, y), 0);
	lbd_alloc_stats(a, &s);
	assert_int_equal(s.allocs, 0);
	assert_int_equal(s.bytes_used, 0);
	assert_int_equal(s.free_blocks, 1);
	assert_int_equal(s.largest_free, 1 * MiB);
	lbd_alloc_free_all(a);
}

static void test_get_rejects_bad_sizes(void **state)
{
	(void)state;
	struct lbd_alloc *a = lbd_alloc_new(NULL, 0, 1 * MiB);
	uint64_t off = 12345;
	assert_non_null(a);
	assert_int_equal(lbd_alloc_get(a, 0, &off), -EINVAL);
	assert_int_equal(lbd_alloc_get(a, 1 * MiB + 1, &off), -EINVAL);
	assert_int_equal(lbd_alloc_get(a, UINT64_MAX, &off), -EINVAL);
	assert_int_equal(lbd_alloc_get(a, 1, NULL), -EINVAL);
	assert_int_equal(off, 12345); /* untouched on failure */
	assert_int_equal(lbd_alloc_get(a, 1 * MiB, &off), 0); /* exactly the managed size */
	assert_int_equal(off, 0);
	lbd_alloc_free_all(a);
}

/* Many sizes, every offset aligned, no two live blocks overlap (checked by the model). */
static void test_alignment_and_no_overlap(void **state)
{
	(void)state;
	struct model m = { .start = 64 * 3, .bytes = 8 * MiB };
	struct lbd_alloc *a = lbd_alloc_new(NULL, m.start, m.bytes);
	uint64_t off;
	assert_non_null(a);
	rng_state = 7;
	for (uint64_t req = 1; ; req += 1 + rng_below(300)) {
		int rc = lbd_alloc_get(a, req, &off);
		if (rc == -ENOMEM)
			break;
		assert_int_equal(rc, 0);
		assert_int_equal(off % ALIGN, 0);
		assert_true(off >= m.start && off + req <= m.start + m.bytes);
		model_add(&m, off, req, 0);
		model_walk(&m);
	}
	assert_true(m.n > 100);
	check_stats(a, &m);
	free(m.v);
	lbd_alloc_free_all(a);
}

/* Fill the arena with 64 B blocks, get -ENOMEM, free in random order: one whole block again. */
static void test_fill_then_enomem_then_coalesce(void **state)
{
	(void)state;
	const uint64_t bytes = 1 * MiB, n = bytes / ALIGN;
	struct lbd_alloc *a = lbd_alloc_new(NULL, 0, bytes);
	struct lbd_alloc_stats s;
	uint64_t *offs = malloc(n * sizeof(*offs)), off;
	assert_non_null(a);
	assert_non_null(offs);
	for (uint64_t i = 0; i < n; i++) {
		assert_int_equal(lbd_alloc_get(a, 1 + rng_below(64), &offs[i]), 0);
		assert_int_equal(offs[i], i * ALIGN); /* one free block: carved front to back */
	}
	assert_int_equal(lbd_alloc_get(a, 1, &off), -ENOMEM);
	lbd_alloc_stats(a, &s);
	assert_int_equal(s.bytes_free, 0);
	assert_int_equal(s.largest_free, 0);
	assert_int_equal(s.free_blocks, 0);
	assert_int_equal(s.allocs, n);
	assert_true(s.fragmentation == 0.0);

	rng_state = 11;
	for (uint64_t i = n - 1; i > 0; i--) { /* Fisher-Yates */
		uint64_t j = rng_below(i + 1), t = offs[i];
		offs[i] = offs[j];
		offs[j] = t;
	}
	for (uint64_t i = 0; i < n; i++)
		assert_int_equal(lbd_alloc_put(a, offs[i]), 0);
	lbd_alloc_stats(a, &s);
	assert_int_equal(s.free_blocks, 1);
	assert_int_equal(s.largest_free, bytes);
	assert_int_equal(s.bytes_free, bytes);
	assert_int_equal(s.allocs, 0);
	assert_int_equal(lbd_alloc_get(a, bytes, &off), 0);
	free(offs);
	lbd_alloc_free_all(a);
}

/* Each merge case in turn: none, previous only, next only, both, and at the range start. */
static void test_coalesce_each_side(void **state)
{
	(void)state;
	struct lbd_alloc *a = lbd_alloc_new(NULL, 0, 64 * KiB);
	struct lbd_alloc_stats s;
	uint64_t o[5];
	assert_non_null(a);
	for (int i = 0; i < 5; i++)
		assert_int_equal(lbd_alloc_get(a, 4 * KiB, &o[i]), 0);
	assert_int_equal(lbd_alloc_put(a, o[1]), 0); /* no free neighbour */
	lbd_alloc_stats(a, &s);
	assert_int_equal(s.free_blocks, 2);
	assert_int_equal(s.largest_free, 44 * KiB);
	assert_int_equal(lbd_alloc_put(a, o[2]), 0); /* merges with the previous only */
	lbd_alloc_stats(a, &s);
	assert_int_equal(s.free_blocks, 2);
	assert_int_equal(s.bytes_free, 52 * KiB);
	assert_int_equal(lbd_alloc_put(a, o[4]), 0); /* merges with the next (the tail) only */
	lbd_alloc_stats(a, &s);
	assert_int_equal(s.free_blocks, 2);
	assert_int_equal(s.largest_free, 48 * KiB);
	assert_int_equal(lbd_alloc_put(a, o[3]), 0); /* merges on both sides */
	lbd_alloc_stats(a, &s);
	assert_int_equal(s.free_blocks, 1);
	assert_int_equal(s.largest_free, 60 * KiB);
	assert_int_equal(lbd_alloc_put(a, o[0]), 0); /* at the start of the range */
	lbd_alloc_stats(a, &s);
	assert_int_equal(s.free_blocks, 1);
	assert_int_equal(s.largest_free, 64 * KiB);
	lbd_alloc_free_all(a);
}

/*
 * Regression for good fit: rounding a request up to the next class boundary misses a block of
 * the request's own class that would fit. largest_free promises the largest request that
 * succeeds, so a request of exactly largest_free must succeed whatever its class.
 */
static void test_largest_free_is_grantable(void **state)
{
	(void)state;
	/* 1000 granules: not a class boundary (the classes at 2^9..2^10 granules are 16 wide). */
	const uint64_t bytes = 1000 * ALIGN;
	struct lbd_alloc *a = lbd_alloc_new(NULL, 0, bytes);
	struct lbd_alloc_stats s;
	uint64_t off, x, y;
	assert_non_null(a);
	assert_int_equal(lbd_alloc_get(a, bytes, &off), 0);
	assert_int_equal(lbd_alloc_put(a, off), 0);
	assert_int_equal(lbd_alloc_get(a, bytes - 1, &off), 0);
	assert_int_equal(lbd_alloc_put(a, off), 0);

	/* Two free blocks of 999 and 997 granules in the same class, separated by a used one. */
	lbd_alloc_free_all(a);
	a = lbd_alloc_new(NULL, 0, 2000 * ALIGN);
	assert_non_null(a);
	assert_int_equal(lbd_alloc_get(a, 999 * ALIGN, &x), 0);
	assert_int_equal(lbd_alloc_get(a, 4 * ALIGN, &y), 0);
	assert_int_equal(lbd_alloc_put(a, x), 0);
	lbd_alloc_stats(a, &s);
	assert_int_equal(s.largest_free, 999 * ALIGN);
	assert_int_equal(s.free_blocks, 2);
	assert_int_equal(lbd_alloc_get(a, s.largest_free, &off), 0);
	assert_int_equal(off, x);
	assert_int_equal(lbd_alloc_get(a, 997 * ALIGN + 1, &off), -ENOMEM);
	assert_int_equal(lbd_alloc_get(a, 997 * ALIGN, &off), 0);
	lbd_alloc_free_all(a);
}

/* Free every other block: fragmentation > 0 and largest_free one block; free the rest: 0. */
static void test_fragmentation_figure(void **state)
{
	(void)state;
	const uint64_t blk = 64 * KiB, n = 64;
	struct lbd_alloc *a = lbd_alloc_new(NULL, 0, n * blk);
	struct lbd_alloc_stats s;
	uint64_t offs[64];
	assert_non_null(a);
	for (uint64_t i = 0; i < n; i++)
		assert_int_equal(lbd_alloc_get(a, blk, &offs[i]), 0);
	for (uint64_t i = 0; i < n; i += 2)
		assert_int_equal(lbd_alloc_put(a, offs[i]), 0);
	lbd_alloc_stats(a, &s);
	assert_int_equal(s.free_blocks, n / 2);
	assert_int_equal(s.bytes_free, n / 2 * blk);
	assert_int_equal(s.largest_free, blk);
	assert_true(s.fragmentation > 0.9);
	assert_int_equal(lbd_alloc_get(a, blk + 1, &offs[0]), -ENOMEM);
	for (uint64_t i = 1; i < n; i += 2)
		assert_int_equal(lbd_alloc_put(a, offs[i]), 0);
	lbd_alloc_stats(a, &s);
	assert_int_equal(s.free_blocks, 1);
	assert_int_equal(s.largest_free, n * blk);
	assert_true(s.fragmentation == 0.0);
	lbd_alloc_free_all(a);
}

/* Double free, unaligned, out-of-range and interior offsets: -EINVAL and nothing changes. */
static void test_misuse_is_rejected_without_damage(void **state)
{
	(void)state;
	const uint64_t start = 1 * MiB;
	struct lbd_alloc *a = lbd_alloc_new(NULL, start, 1 * MiB);
	struct lbd_alloc_stats before, after;
	uint64_t x, y, z, w;
	assert_non_null(a);
	assert_int_equal(lbd_alloc_get(a, 10 * KiB, &x), 0);
	assert_int_equal(lbd_alloc_get(a, 10 * KiB, &y), 0);
	assert_int_equal(lbd_alloc_get(a, 10 * KiB, &z), 0);
	assert_int_equal(lbd_alloc_put(a, y), 0);
	lbd_alloc_stats(a, &before);

	const uint64_t wild[] = {
		y,                   /* double free */
		y + ALIGN,           /* inside the free block y left */
		x + ALIGN,           /* inside a live block */
		x + 1,               /* unaligned */
		z + 10 * KiB,        /* the start of the free tail: free, never handed out */
		start + 512 * KiB,   /* inside the free tail */
		start - ALIGN,       /* below the range */
		0,
		start + 1 * MiB,     /* one past the end */
		UINT64_MAX,
		UINT64_MAX - 63,
	};
	for (size_t i = 0; i < sizeof(wild) / sizeof(wild[0]); i++) {
		assert_int_equal(lbd_alloc_put(a, wild[i]), -EINVAL);
		lbd_alloc_stats(a, &after);
		assert_stats_equal(&before, &after);
	}
	assert_int_equal(lbd_alloc_put(NULL, x), -EINVAL);

	/* The merged-away start of a coalesced block is no longer a block either. */
	assert_int_equal(lbd_alloc_put(a, z), 0);
	assert_int_equal(lbd_alloc_put(a, z), -EINVAL);
	assert_int_equal(lbd_alloc_put(a, y), -EINVAL);
	/* And the live one still frees normally, leaving one block. */
	assert_int_equal(lbd_alloc_put(a, x), 0);
	assert_int_equal(lbd_alloc_put(a, x), -EINVAL);
	lbd_alloc_stats(a, &after);
	assert_int_equal(after.free_blocks, 1);
	assert_int_equal(after.largest_free, 1 * MiB);
	assert_int_equal(lbd_alloc_get(a, 1 * MiB, &w), 0);
	assert_int_equal(w, start);
	lbd_alloc_free_all(a);
}

/* A 1 TiB range (records are out of band, so no memory behind it is needed). */
static void test_one_tib(void **state)
{
	(void)state;
	struct lbd_alloc *a = lbd_alloc_new(NULL, 2 * MiB, 1 * TiB);
	struct lbd_alloc_stats s;
	uint64_t off, x, y;
	assert_non_null(a);
	assert_int_equal(lbd_alloc_get(a, 1 * TiB, &off), 0);
	assert_int_equal(off, 2 * MiB);
	assert_int_equal(lbd_alloc_get(a, 1, &x), -ENOMEM);
	assert_int_equal(lbd_alloc_put(a, off), 0);
	assert_int_equal(lbd_alloc_get(a, 1 * TiB - 1, &off), 0);
	assert_int_equal(lbd_alloc_put(a, off), 0);
	assert_int_equal(lbd_alloc_get(a, 700 * GiB + 3, &x), 0);
	assert_int_equal(lbd_alloc_get(a, 1 * TiB - 700 * GiB - 64, &y), 0);
	lbd_alloc_stats(a, &s);
	assert_int_equal(s.bytes_free, 0);
	assert_int_equal(s.bytes_used, 1 * TiB);
	assert_int_equal(lbd_alloc_put(a, x), 0);
	assert_int_equal(lbd_alloc_put(a, y), 0);
	lbd_alloc_stats(a, &s);
	assert_int_equal(s.free_blocks, 1);
	assert_int_equal(s.largest_free, 1 * TiB);
	lbd_alloc_free_all(a);
}

/*
 * 200,000 random gets and puts (64 B .. 4 MiB) on 256 MiB backed by a malloc'd buffer, in
 * phases that lean towards filling and towards draining. After every operation the stats must
 * match the model exactly; a get must succeed iff the model has a gap that large; each live
 * block's stamp must survive everything else. Now and then a wild put must change nothing.
 */
static void test_churn_against_model(void **state)
{
	(void)state;
	const uint64_t start = 4096, bytes = 256 * MiB;
	struct model m = { .start = start, .bytes = bytes };
	uint8_t *buf = malloc(start + bytes);
	struct lbd_alloc *a = lbd_alloc_new(buf, start, bytes);
	uint64_t tag = 0, enomem = 0, gets = 0, max_live = 0;
	assert_non_null(buf);
	assert_non_null(a);
	seed_from_env();
	printf("churn seed 0x%" PRIx64 " (set LB_ALLOC_SEED to replay)\n", rng_state);

	for (int op = 0; op < 200000; op++) {
		unsigned lean = (op / 20000) % 2 ? 35 : 65; /* % of ops that are gets */
		if (m.n == 0 || rng_below(100) < lean) {
			uint64_t req = rand_size(), off = UINT64_MAX;
			uint64_t largest = model_walk(&m).largest;
			int rc = lbd_alloc_get(a, req, &off);
			gets++;
			if (round64(req) <= largest) {
				assert_int_equal(rc, 0);
				model_add(&m, off, req, ++tag);
				stamp(buf, &m.v[model_lower(&m, off)]);
			} else {
				assert_int_equal(rc, -ENOMEM);
				enomem++;
			}
		} else {
			size_t i = rng_below(m.n);
			stamp_check(buf, &m.v[i]);
			assert_int_equal(lbd_alloc_put(a, m.v[i].off), 0);
			model_del(&m, i);
		}
		if (m.n > max_live)
			max_live = m.n;
		check_stats(a, &m);

		if (op % 997 == 0 && m.n) {
			struct lbd_alloc_stats before, after;
			const struct live *l = &m.v[rng_below(m.n)];
			lbd_alloc_stats(a, &before);
			if (round64(l->req) > ALIGN)
				assert_int_equal(lbd_alloc_put(a, l->off + ALIGN), -EINVAL);
			assert_int_equal(lbd_alloc_put(a, l->off + 8), -EINVAL);
			lbd_alloc_stats(a, &after);
			assert_stats_equal(&before, &after);
		}
		if (op % 5000 == 0)
			for (size_t i = 0; i < m.n; i++)
				stamp_check(buf, &m.v[i]);
	}
	for (size_t i = 0; i < m.n; i++)
		stamp_check(buf, &m.v[i]);
	printf("churn: %" PRIu64 " gets (%" PRIu64 " -ENOMEM), at most %" PRIu64 " live\n",
	       gets, enomem, max_live);
	assert_true(enomem > 0); /* the fill phases reached a full arena */

	while (m.n) {
		size_t i = rng_below(m.n);
		assert_int_equal(lbd_alloc_put(a, m.v[i].off), 0);
		model_del(&m, i);
		check_stats(a, &m);
	}
	struct lbd_alloc_stats s;
	lbd_alloc_stats(a, &s);
	assert_int_equal(s.free_blocks, 1);
	assert_int_equal(s.largest_free, bytes);
	free(m.v);
	free(buf);
	lbd_alloc_free_all(a);
}

/* Live offsets with O(1) removal of a random one (order does not matter here). */
struct pool {
	uint64_t *off;
	size_t n;
};

static void pool_drop_random(struct lbd_alloc *a, struct pool *p)
{
	size_t i = rng_below(p->n);
	assert_int_equal(lbd_alloc_put(a, p->off[i]), 0);
	p->off[i] = p->off[--p->n];
}

/* Report only: fragmentation after a long churn held around 80% occupancy. */
static void test_report_fragmentation_at_80pct(void **state)
{
	(void)state;
	const uint64_t bytes = 256 * MiB;
	struct lbd_alloc *a = lbd_alloc_new(NULL, 0, bytes);
	struct pool p = { malloc(bytes / ALIGN * sizeof(uint64_t)), 0 };
	struct lbd_alloc_stats s;
	uint64_t enomem = 0;
	const int ops = 2000000;
	assert_non_null(a);
	assert_non_null(p.off);
	seed_from_env();
	for (int op = 0; op < ops; op++) {
		lbd_alloc_stats(a, &s);
		if (s.bytes_used < bytes / 10 * 8 || !p.n) {
			if (lbd_alloc_get(a, rand_size(), &p.off[p.n]) == 0)
				p.n++;
			else
				enomem++;
		} else {
			pool_drop_random(a, &p);
		}
	}
	lbd_alloc_stats(a, &s);
	printf("after %d ops at ~80%% occupancy: used %.1f%%, %" PRIu64 " live, %" PRIu64
	       " free blocks, largest free %.2f MiB of %.2f MiB free, fragmentation %.3f, "
	       "%" PRIu64 " -ENOMEM\n",
	       ops, 100.0 * (double)s.bytes_used / (double)bytes, s.allocs, s.free_blocks,
	       (double)s.largest_free / (double)MiB, (double)s.bytes_free / (double)MiB,
	       s.fragmentation, enomem);
	free(p.off);
	lbd_alloc_free_all(a);
}

/* Report only: alloc+free pairs per second with n live blocks in a range about half full. */
static void rate_at(size_t n)
{
	const uint64_t bytes = round64((uint64_t)n * 768 * KiB);
	const size_t pairs = 1000000;
	struct lbd_alloc *a = lbd_alloc_new(NULL, 0, bytes);
	struct pool p = { malloc(n * sizeof(uint64_t)), 0 };
	struct lbd_alloc_stats s;
	assert_non_null(a);
	assert_non_null(p.off);
	while (p.n < n)
		assert_int_equal(lbd_alloc_get(a, rand_size(), &p.off[p.n++]), 0);
	/* Warm up: reach a steady, fragmented free-list state before timing. */
	for (size_t i = 0; i < n; i++) {
		pool_drop_random(a, &p);
		assert_int_equal(lbd_alloc_get(a, rand_size(), &p.off[p.n++]), 0);
	}
	double t0 = now_s();
	for (size_t i = 0; i < pairs; i++) {
		size_t j = rng_below(p.n);
		if (lbd_alloc_put(a, p.off[j]) || lbd_alloc_get(a, rand_size(), &p.off[j]))
			fail_msg("pair %zu failed", i);
	}
	double dt = now_s() - t0;
	lbd_alloc_stats(a, &s);
	printf("%zu live blocks: %.2f M alloc+free pairs/s (%.0f ns/pair), %" PRIu64
	       " free blocks, used %.0f%%\n",
	       n, (double)pairs / dt / 1e6, dt / (double)pairs * 1e9, s.free_blocks,
	       100.0 * (double)s.bytes_used / (double)bytes);
	free(p.off);
	lbd_alloc_free_all(a);
}

static void test_report_rate_1k_and_100k_live(void **state)
{
	(void)state;
	seed_from_env();
	rate_at(1000);
	rate_at(100000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_new_rejects_bad_ranges),
		cmocka_unit_test(test_basic_get_put),
		cmocka_unit_test(test_get_rejects_bad_sizes),
		cmocka_unit_test(test_alignment_and_no_overlap),
		cmocka_unit_test(test_fill_then_enomem_then_coalesce),
		cmocka_unit_test(test_coalesce_each_side),
		cmocka_unit_test(test_largest_free_is_grantable),
		cmocka_unit_test(test_fragmentation_figure),
		cmocka_unit_test(test_misuse_is_rejected_without_damage),
		cmocka_unit_test(test_one_tib),
		cmocka_unit_test(test_churn_against_model),
		cmocka_unit_test(test_report_fragmentation_at_80pct),
		cmocka_unit_test(test_report_rate_1k_and_100k_live),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
