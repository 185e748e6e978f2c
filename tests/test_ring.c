/* Tests for include/layerbank/ring.h: order, full and empty, the size limits, index wrap across
 * 2^32, hostile indices from either peer, lb_region_layout, and the futex doorbell (wake,
 * time-out, no lost wake-ups in a ping-pong). The stamped stress test is test_ring_stress.c. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../include/layerbank/ring.h"

#define GUARD 4096u     /* bytes of poison on both sides of a test ring */
#define POISON 0xa5
#define MS 1000000ull   /* ns */

/* ---- a ring in private memory, with guard bytes around it ---- */

struct tring {
	uint8_t *base;   /* [GUARD][LB_RING_HDR_SIZE + entries * 64][GUARD] */
	void *ring;      /* base + GUARD: struct lb_ring_shared, then the entries */
	uint32_t entries;
	struct lb_ring_view p, c; /* producer's and consumer's views */
};

static size_t ring_bytes(uint32_t entries)
{
	return LB_RING_HDR_SIZE + (size_t)entries * LB_RING_ENTRY_SIZE;
}

/* A ring of entries slots whose shared indices and both views start at start. */
static struct tring *tring_new(uint32_t entries, uint32_t start)
{
	struct tring *t = calloc(1, sizeof(*t));
	assert_non_null(t);
	t->base = aligned_alloc(LB_CACHE_LINE, GUARD + ring_bytes(entries) + GUARD);
	assert_non_null(t->base);
	memset(t->base, POISON, GUARD + ring_bytes(entries) + GUARD);
	t->ring = t->base + GUARD;
	memset(t->ring, 0, LB_RING_HDR_SIZE);
	t->entries = entries;
	lb_ring_view_init(&t->p, t->ring, entries);
	lb_ring_view_init(&t->c, t->ring, entries);
	atomic_store(&t->p.sh->prod, start);
	atomic_store(&t->p.sh->cons, start);
	t->p.local = t->p.cached = start;
	t->c.local = t->c.cached = start;
	return t;
}

static void tring_free(struct tring *t)
{
	free(t->base);
	free(t);
}

/* The guards are untouched: nothing was written outside the ring. */
static void assert_guards(const struct tring *t)
{
	const uint8_t *after = (const uint8_t *)t->ring + ring_bytes(t->entries);
	for (size_t i = 0; i < GUARD; i++) {
		assert_int_equal(t->base[i], POISON);
		assert_int_equal(after[i], POISON);
	}
}

/* Entry number k: eight words derived from k, so any mix-up or tearing shows. */
static void mk(uint64_t out[8], uint64_t k)
{
	for (unsigned i = 0; i < 8; i++)
		out[i] = (k << 8 | i) * 0x9e3779b97f4a7c15ull;
}

static void push_k(struct tring *t, uint64_t k)
{
	uint64_t e[8];
	mk(e, k);
	assert_true(lb_ring_sp_push(&t->p, e));
}

static void pop_k(struct tring *t, uint64_t k)
{
	uint64_t e[8], want[8];
	mk(want, k);
	assert_int_equal(lb_ring_sc_pop(&t->c, e), 1);
	assert_memory_equal(e, want, sizeof(e));
}

static void assert_empty(struct tring *t)
{
	uint64_t e[8];
	memset(e, 0x5a, sizeof(e));
	assert_int_equal(lb_ring_sc_peek(&t->c), 0);
	assert_int_equal(lb_ring_sc_pop(&t->c, e), 0);
	for (unsigned i = 0; i < 8; i++)
		assert_int_equal(e[i], 0x5a5a5a5a5a5a5a5aull);
}

/* Fill the ring to the brim, see it refuse one more, drain it in order, see it empty. */
static void fill_drain(struct tring *t, uint64_t first)
{
	uint64_t e[8];
	for (uint32_t i = 0; i < t->entries; i++)
		push_k(t, first + i);
	mk(e, 0xdead);
	assert_false(lb_ring_sp_push(&t->p, e));
	assert_int_equal(lb_ring_sc_peek(&t->c), t->entries);
	for (uint32_t i = 0; i < t->entries; i++)
		pop_k(t, first + i);
	assert_empty(t);
	assert_guards(t);
}

/* ---- order, full, empty, sizes ---- */

static void test_push_pop_order(void **state)
{
	(void)state;
	struct tring *t = tring_new(16, 0);
	uint64_t next_in = 0, next_out = 0;

	assert_empty(t);
	/* Uneven bursts, so the indices go round the ring many times at every offset. */
	for (unsigned round = 0; round < 1000; round++) {
		unsigned in = round % 17, out = (round * 7) % 17;
		for (unsigned i = 0; i < in && next_in - next_out < 16; i++)
			push_k(t, next_in++);
		assert_int_equal(lb_ring_sc_peek(&t->c), next_in - next_out);
		for (unsigned i = 0; i < out && next_out < next_in; i++)
			pop_k(t, next_out++);
	}
	while (next_out < next_in)
		pop_k(t, next_out++);
	assert_empty(t);
	assert_true(next_in > 16 * 100);
	assert_int_equal(atomic_load(&t->p.sh->prod), (uint32_t)next_in);
	assert_int_equal(atomic_load(&t->p.sh->cons), (uint32_t)next_out);
	assert_guards(t);
	tring_free(t);
}

static void test_full_and_empty(void **state)
{
	(void)state;
	struct tring *t = tring_new(16, 0);
	uint64_t e[8];

	assert_empty(t);
	for (unsigned i = 0; i < 16; i++)
		push_k(t, i);
	mk(e, 99);
	assert_false(lb_ring_sp_push(&t->p, e));
	assert_false(lb_ring_sp_push(&t->p, e)); /* stays full, prod does not move */
	assert_int_equal(atomic_load(&t->p.sh->prod), 16);
	pop_k(t, 0);
	push_k(t, 16); /* one slot freed: one push fits */
	assert_false(lb_ring_sp_push(&t->p, e));
	for (unsigned i = 1; i <= 16; i++)
		pop_k(t, i);
	assert_empty(t);
	assert_guards(t);
	tring_free(t);
}

static void test_min_and_max_sizes(void **state)
{
	(void)state;
	uint32_t sizes[] = {LB_RING_MIN_ENTRIES, LB_RING_MAX_ENTRIES};
	for (unsigned s = 0; s < 2; s++) {
		struct tring *t = tring_new(sizes[s], 0);
		fill_drain(t, 1000);
		fill_drain(t, 2000000); /* second lap: every slot reused */
		assert_int_equal(atomic_load(&t->p.sh->cons), 2 * sizes[s]);
		tring_free(t);
	}
}

/* Free-running indices cross 2^32: order, the full test and the slot numbering survive. */
static void test_index_wraparound(void **state)
{
	(void)state;
	for (uint32_t back = 1; back <= 9; back += 4) {
		uint32_t start = UINT32_MAX - back; /* a few pushes before the wrap */
		struct tring *t = tring_new(8, start);
		uint64_t e[8];

		/* Fill across the wrap: slot of index i is i & 7. */
		for (unsigned i = 0; i < 8; i++)
			push_k(t, i);
		mk(e, 0xdead);
		assert_false(lb_ring_sp_push(&t->p, e));
		assert_int_equal(atomic_load(&t->p.sh->prod), start + 8u);
		assert_true(atomic_load(&t->p.sh->prod) < start); /* it did wrap */
		for (unsigned i = 0; i < 8; i++) {
			uint32_t slot = (start + i) & 7;
			mk(e, i);
			assert_memory_equal((uint8_t *)t->ring + LB_RING_HDR_SIZE + slot * 64u, e, 64);
		}
		assert_int_equal(lb_ring_sc_peek(&t->c), 8);
		for (unsigned i = 0; i < 8; i++)
			pop_k(t, i);
		assert_empty(t);
		/* Keep going for a while past the wrap, one in one out and in bursts. */
		for (uint64_t k = 8; k < 200; k += 3) {
			push_k(t, k);
			push_k(t, k + 1);
			push_k(t, k + 2);
			pop_k(t, k);
			pop_k(t, k + 1);
			pop_k(t, k + 2);
		}
		assert_empty(t);
		assert_guards(t);
		tring_free(t);
	}
}

/* ---- hostile indices ---- */

/* A producer index more than the ring holds ahead (or behind: "ahead" by ~2^32) is refused
 * with -EPROTO by peek, pop and wait, and nothing is read or released. */
static void test_hostile_producer_index(void **state)
{
	(void)state;
	uint32_t starts[] = {0, 1000, UINT32_MAX - 3};
	uint32_t ahead[] = {17, 18, 100, 65537, 0x7fffffffu, 0x80000000u, 0xfffffff0u, UINT32_MAX};

	for (unsigned s = 0; s < 3; s++) {
		for (unsigned a = 0; a < sizeof(ahead) / sizeof(ahead[0]); a++) {
			struct tring *t = tring_new(16, starts[s]);
			uint64_t e[8];

			atomic_store(&t->p.sh->prod, starts[s] + ahead[a]);
			memset(e, 0x5a, sizeof(e));
			assert_int_equal(lb_ring_sc_peek(&t->c), -EPROTO);
			assert_int_equal(lb_ring_sc_pop(&t->c, e), -EPROTO);
			assert_int_equal(lb_ring_sc_wait(&t->c, 0, MS), -EPROTO);
			assert_int_equal(lb_ring_sc_wait(&t->c, 1000, 0), -EPROTO);
			for (unsigned i = 0; i < 8; i++)
				assert_int_equal(e[i], 0x5a5a5a5a5a5a5a5aull); /* nothing copied out */
			assert_int_equal(t->c.local, starts[s]);              /* nothing taken */
			assert_int_equal(atomic_load(&t->p.sh->cons), starts[s]);
			assert_int_equal(atomic_load(&t->p.sh->sleeping), 0);
			tring_free(t);
		}
		/* The boundary: exactly a full ring ahead is legitimate. */
		struct tring *t = tring_new(16, starts[s]);
		atomic_store(&t->p.sh->prod, starts[s] + 16);
		assert_int_equal(lb_ring_sc_peek(&t->c), 16);
		tring_free(t);
	}
}

/* A consumer index ahead of prod (or implausibly far behind) makes the ring look full: push
 * refuses and never writes anywhere, in the ring or out of it. */
static void test_hostile_consumer_index(void **state)
{
	(void)state;
	uint32_t starts[] = {0, 5, UINT32_MAX - 2};
	uint32_t cons_off[] = {1, 2, 15, 16, 17, 1000, 0x7fffffffu, 0x80000000u,
			       (uint32_t)-17, (uint32_t)-100, (uint32_t)-0x10000};

	for (unsigned s = 0; s < 3; s++) {
		for (unsigned c = 0; c < sizeof(cons_off) / sizeof(cons_off[0]); c++) {
			struct tring *t = tring_new(16, starts[s]);
			uint8_t before[16 * 64];
			uint64_t e[8];

			/* The producer has pushed nothing yet: make it see cons moved. */
			t->p.cached = starts[s] - 16; /* force the producer to re-read cons */
			atomic_store(&t->p.sh->cons, starts[s] + cons_off[c]);
			memcpy(before, (uint8_t *)t->ring + LB_RING_HDR_SIZE, sizeof(before));
			mk(e, c);
			assert_false(lb_ring_sp_push(&t->p, e));
			assert_false(lb_ring_sp_push(&t->p, e));
			assert_int_equal(atomic_load(&t->p.sh->prod), starts[s]);
			assert_int_equal(t->p.local, starts[s]);
			assert_memory_equal(before, (uint8_t *)t->ring + LB_RING_HDR_SIZE, sizeof(before));
			assert_guards(t);
			tring_free(t);
		}
	}

	/* Random cons values against a producer at random places: every push either lands in its
	 * own slot or is refused; the guards never change. */
	srand(12345);
	struct tring *t = tring_new(8, 0);
	for (unsigned i = 0; i < 200000; i++) {
		uint32_t prod = (uint32_t)rand() * 2654435761u, cons;
		switch (i % 3) {
		case 0: cons = (uint32_t)rand() * 40503u + (uint32_t)rand(); break;
		case 1: cons = prod + (uint32_t)(rand() % 64) - 32u; break;
		default: cons = prod - (uint32_t)(rand() % 12); break;
		}
		uint64_t e[8];
		t->p.local = prod;
		t->p.cached = prod - 8; /* force a re-read */
		atomic_store(&t->p.sh->prod, prod);
		atomic_store(&t->p.sh->cons, cons);
		mk(e, i);
		bool ok = lb_ring_sp_push(&t->p, e);
		assert_int_equal(ok, prod - cons <= 7u);
		if (ok) {
			assert_memory_equal((uint8_t *)t->ring + LB_RING_HDR_SIZE + (prod & 7) * 64u, e, 64);
			assert_int_equal(atomic_load(&t->p.sh->prod), prod + 1);
		}
	}
	assert_guards(t);
	tring_free(t);
}

/* ---- region layout ---- */

static uint64_t up4k(uint64_t x)
{
	return (x + 4095) & ~4095ull;
}

static void check_layout(uint32_t req, uint32_t cpl, uint64_t staging)
{
	struct lb_region_hdr h;
	memset(&h, 0xee, sizeof(h));
	uint64_t bytes = lb_region_layout(&h, req, cpl, staging);
	uint64_t req_end = 4096 + LB_RING_HDR_SIZE + (uint64_t)req * LB_RING_ENTRY_SIZE;
	uint64_t cpl_off = up4k(req_end);
	uint64_t cpl_end = cpl_off + LB_RING_HDR_SIZE + (uint64_t)cpl * LB_RING_ENTRY_SIZE;

	assert_int_not_equal(bytes, 0);
	assert_int_equal(h.magic, LB_REGION_MAGIC);
	assert_int_equal(h.hdr_size, sizeof(struct lb_region_hdr));
	assert_int_equal(h.req_entries, req);
	assert_int_equal(h.cpl_entries, cpl);
	/* The header has its own page; each ring starts on a page; staging on a page. */
	assert_int_equal(h.req_off, 4096);
	assert_int_equal(h.cpl_off, cpl_off);
	assert_int_equal(h.staging_off, up4k(cpl_end));
	assert_int_equal(h.req_off % 4096, 0);
	assert_int_equal(h.cpl_off % 4096, 0);
	assert_int_equal(h.staging_off % 4096, 0);
	/* Entries on cache lines (both ring headers are whole cache lines). */
	assert_int_equal((h.req_off + LB_RING_HDR_SIZE) % LB_CACHE_LINE, 0);
	assert_int_equal((h.cpl_off + LB_RING_HDR_SIZE) % LB_CACHE_LINE, 0);
	/* In order, no overlap, no gap bigger than a page. */
	assert_true(h.req_off >= sizeof(struct lb_region_hdr));
	assert_true(h.cpl_off >= req_end && h.cpl_off - req_end < 4096);
	assert_true(h.staging_off >= cpl_end && h.staging_off - cpl_end < 4096);
	assert_int_equal(h.staging_bytes, staging);
	assert_int_equal(h.region_bytes, h.staging_off + staging);
	assert_int_equal(bytes, h.region_bytes);
	assert_int_equal(bytes % 4096, 0);
