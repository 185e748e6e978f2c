/* Tests for include/layerbank/ring.h: order, full and empty, the size limits, index wrap across
 * 2^32, the slots' stamps (a fresh ring is empty at any index, forged and stale stamps), hostile
 * indices from either peer, lb_region_layout, and the futex doorbell (wake, time-out, no lost
 * wake-ups in a ping-pong). The stamped stress test is test_ring_stress.c.
 *
 * An entry's bytes 0..59 are the message; bytes 60..63 (LB_RING_STAMP_OFF) are the ring's stamp,
 * index | 1, written by the producer: entries compare equal on their first 60 bytes. */
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
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "layerbank/ring.h"

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

/* Bytes of an entry that carry the message; the rest is the stamp. */
#define MSG LB_RING_STAMP_OFF
_Static_assert(LB_RING_STAMP_OFF == 60, "abi: the stamp is an entry's last 4 bytes");

/* The stamp of index i, by the protocol's rule (not by lb_ring_stamp: this pins the ABI). */
static uint32_t stamp_of(uint32_t i)
{
	return i | 1u;
}

static uint8_t *slot_of(const struct tring *t, uint32_t index)
{
	return (uint8_t *)t->ring + LB_RING_HDR_SIZE + (size_t)(index & (t->entries - 1)) * 64u;
}

/* The stamp bytes of slot index & mask, as a hostile peer or a debugger would see them. */
static uint32_t slot_stamp(const struct tring *t, uint32_t index)
{
	uint32_t v;
	memcpy(&v, slot_of(t, index) + LB_RING_STAMP_OFF, sizeof(v));
	return v;
}

/* A hostile producer writes the stamp bytes of slot index & mask directly. */
static void forge_stamp(struct tring *t, uint32_t index, uint32_t v)
{
	atomic_store_explicit((_Atomic uint32_t *)(slot_of(t, index) + LB_RING_STAMP_OFF), v,
			      memory_order_release);
}

/* A ring of entries slots whose shared indices and both views start at start. Its slots are
 * zero, as in a fresh region (a memfd starts zero-filled). */
static struct tring *tring_new(uint32_t entries, uint32_t start)
{
	struct tring *t = calloc(1, sizeof(*t));
	assert_non_null(t);
	t->base = aligned_alloc(LB_CACHE_LINE, GUARD + ring_bytes(entries) + GUARD);
	assert_non_null(t->base);
	memset(t->base, POISON, GUARD + ring_bytes(entries) + GUARD);
	t->ring = t->base + GUARD;
	memset(t->ring, 0, ring_bytes(entries));
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

/* Entry number k: eight words derived from k, so any mix-up or tearing shows. Its stamp bytes
 * (the high half of word 7) are never a stamp the ring would write there: push must ignore
 * them. */
static void mk(uint64_t out[8], uint64_t k)
{
	for (unsigned i = 0; i < 8; i++)
		out[i] = (k << 8 | i) * 0x9e3779b97f4a7c15ull;
	out[7] &= 0xffffffffull; /* stamp bytes: an even value, never index | 1 */
	out[7] |= (uint64_t)((uint32_t)k * 2u + 0x5a5a5a5au) << 32;
}

/* Push entry k: its message in the slot of the producer's index, the ring's stamp after it. */
static void push_k(struct tring *t, uint64_t k)
{
	uint64_t e[8];
	uint32_t i = t->p.local;
	mk(e, k);
	assert_true(lb_ring_sp_push(&t->p, e));
	assert_memory_equal(slot_of(t, i), e, MSG);
	assert_int_equal(slot_stamp(t, i), stamp_of(i)); /* the ring's stamp, not the caller's */
	assert_int_equal(t->p.local, i + 1u);
}

/* Pop entry k: the message compares equal on its first 60 bytes; bytes 60..63 come out as the
 * stamp of the index it was taken from. */
static void pop_k(struct tring *t, uint64_t k)
{
	uint64_t e[8], want[8];
	uint32_t i = t->c.local, st;
	mk(want, k);
	assert_int_equal(lb_ring_sc_peek(&t->c), 1);
	assert_int_equal(lb_ring_sc_pop(&t->c, e), 1);
	assert_memory_equal(e, want, MSG);
	memcpy(&st, (uint8_t *)e + LB_RING_STAMP_OFF, sizeof(st));
	assert_int_equal(st, stamp_of(i));
	assert_int_equal(t->c.local, i + 1u);
	assert_int_equal(atomic_load(&t->c.sh->cons), i + 1u);
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
	assert_int_equal(lb_ring_sc_peek(&t->c), 1);
	/* Every slot carries the stamp of the index it holds. */
	for (uint32_t i = 0; i < t->entries; i++)
		assert_int_equal(slot_stamp(t, t->c.local + i), stamp_of(t->c.local + i));
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
		/* peek looks at the next slot's stamp: 1 exactly when an entry is there. */
		int64_t ready = lb_ring_sc_peek(&t->c);
		assert_int_equal(ready, next_in != next_out);
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
	uint32_t backs[] = {0, 1, 4, 7};
	for (unsigned b = 0; b < 4; b++) {
		uint32_t start = UINT32_MAX - backs[b]; /* 1 to 8 pushes before the wrap */
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
			uint32_t st;
			mk(e, i);
			assert_memory_equal((uint8_t *)t->ring + LB_RING_HDR_SIZE + slot * 64u, e, MSG);
			/* index | 1: UINT32_MAX stamps itself, 0 and 1 both stamp 1 (other slots). */
			memcpy(&st, (uint8_t *)t->ring + LB_RING_HDR_SIZE + slot * 64u + 60, sizeof(st));
			assert_int_equal(st, (start + i) | 1u);
			assert_int_not_equal(st, 0);
		}
		assert_int_equal(lb_ring_sc_peek(&t->c), 1);
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

/* ---- stamps ---- */

/* A fresh region's slots are zero, and 0 is no index's stamp: a ring nobody has written to is
 * empty whatever index the consumer starts at, UINT32_MAX included, and nothing is read. */
static void assert_fresh_empty(struct lb_ring_view *v, uint32_t index)
{
	uint64_t e[8];
	v->local = index;
	memset(e, 0x5a, sizeof(e));
	assert_int_not_equal(lb_ring_stamp(index), 0);
	assert_int_equal(lb_ring_stamp(index), stamp_of(index));
	assert_int_equal(lb_ring_sc_peek(v), 0);
	assert_int_equal(lb_ring_sc_pop(v, e), 0);
	for (unsigned i = 0; i < 8; i++)
		assert_int_equal(e[i], 0x5a5a5a5a5a5a5a5aull);
	assert_int_equal(v->local, index);
}

static void test_fresh_ring_is_empty_at_every_index(void **state)
{
	(void)state;
	uint32_t sizes[] = {LB_RING_MIN_ENTRIES, 16, LB_RING_MAX_ENTRIES};

	for (unsigned s = 0; s < 3; s++) {
		struct tring *t = tring_new(sizes[s], 0);
		/* Both ends of the index space and the middle, every index; elsewhere a spread
		 * (65537 is odd: every residue of the low bits comes round). */
		for (uint32_t i = 0; i < 4096; i++) {
			assert_fresh_empty(&t->c, i);
			assert_fresh_empty(&t->c, UINT32_MAX - i);
			assert_fresh_empty(&t->c, 0x80000000u - 2048u + i);
		}
		for (uint32_t k = 0; k < 65536; k++)
			assert_fresh_empty(&t->c, k * 65537u + (k >> 3));
		/* wait, too: nothing after its time-out, spinning or sleeping. */
		uint32_t special[] = {0, 1, 0x80000000u, UINT32_MAX - 1, UINT32_MAX};
		for (unsigned i = 0; i < 5; i++) {
			t->c.local = special[i];
			assert_int_equal(lb_ring_sc_wait(&t->c, 0, MS), 0);
			assert_int_equal(lb_ring_sc_wait(&t->c, 100000, MS), 0);
			assert_int_equal(t->c.local, special[i]);
		}
		assert_int_equal(atomic_load(&t->c.sh->cons), 0); /* nothing was taken */
		assert_guards(t);
		tring_free(t);
	}

	/* The same in a region as the daemon makes it: a fresh memfd, both rings. */
	struct lb_region_hdr h;
	uint64_t bytes = lb_region_layout(&h, 8, 65536, 4096);
	int fd = memfd_create("layerbank-test-ring", MFD_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)bytes), 0);
	uint8_t *region = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(region != MAP_FAILED);
	close(fd);
	struct lb_ring_view req, cpl;
	lb_ring_view_init(&req, region + h.req_off, h.req_entries);
	lb_ring_view_init(&cpl, region + h.cpl_off, h.cpl_entries);
	for (uint32_t i = 0; i < 4096; i++) {
		assert_fresh_empty(&req, i);
		assert_fresh_empty(&req, UINT32_MAX - i);
		assert_fresh_empty(&cpl, i * 17u);
		assert_fresh_empty(&cpl, UINT32_MAX - i * 17u);
	}
	munmap(region, bytes);
}

/* A hostile producer can write a slot and its stamp itself. The stamp of the index the consumer
 * expects makes that slot an entry, copied out like any other (its contents are the daemon's to
 * validate); any other value there (the stamps of that slot's other laps included), and stamps
 * forged in any other slot, make nothing ready. */
static void assert_not_ready(struct tring *t, uint32_t index)
{
	assert_empty(t);
	assert_int_equal(t->c.local, index);
	assert_int_equal(atomic_load(&t->c.sh->cons), index);
}

static void test_forged_stamps(void **state)
{
	(void)state;
	uint32_t starts[] = {0, 1, 2, 15, 1000, 0x7fffffffu, 0x80000000u, UINT32_MAX - 16,
			     UINT32_MAX - 1, UINT32_MAX};

	srand(4242);
	for (unsigned s = 0; s < sizeof(starts) / sizeof(starts[0]); s++) {
		const uint32_t c = starts[s];
		struct tring *t = tring_new(16, c);
		uint64_t e[8], forged[8];

		/* The stamp of any other index, forged in that index's slot (for the expected slot:
		 * its other laps). Nothing is ready. */
		for (int64_t d = -80; d <= 80; d++) {
			uint32_t j = c + (uint32_t)d;
			if (j == c)
				continue;
			forge_stamp(t, j, stamp_of(j));
			assert_not_ready(t, c);
			forge_stamp(t, j, 0);
		}
		uint32_t far[] = {0x10000u, 0x7ffffff0u, 0x80000000u, 0xfffffff0u, 0xffff0000u};
		for (unsigned i = 0; i < sizeof(far) / sizeof(far[0]); i++) {
			forge_stamp(t, c + far[i], stamp_of(c + far[i])); /* same slot, another lap */
			assert_not_ready(t, c);
		}
		/* The right stamp in every wrong slot. */
		for (uint32_t k = 1; k < 16; k++) {
			forge_stamp(t, c + k, stamp_of(c));
			assert_not_ready(t, c);
			forge_stamp(t, c + k, 0);
		}
		/* Any value but stamp_of(c) in the expected slot: ready exactly for that one. */
		uint32_t vals[] = {0, c, c ^ 1u, c + 1u, c - 1u, stamp_of(c) + 2u, stamp_of(c) - 2u,
				   ~stamp_of(c), c ^ 0x80000000u, 1, UINT32_MAX, 0xa5a5a5a5u};
		for (unsigned i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
			forge_stamp(t, c, vals[i]);
			if (vals[i] == stamp_of(c))
				assert_int_equal(lb_ring_sc_peek(&t->c), 1);
			else
				assert_not_ready(t, c);
		}
		for (unsigned b = 0; b < 32; b++) { /* one bit off */
			forge_stamp(t, c, stamp_of(c) ^ (1u << b));
			assert_not_ready(t, c);
		}
		for (unsigned i = 0; i < 20000; i++) {
			uint32_t v = (uint32_t)rand() * 2654435761u ^ (uint32_t)rand();
			forge_stamp(t, c, v);
			assert_int_equal(lb_ring_sc_peek(&t->c), v == stamp_of(c));
		}
		forge_stamp(t, c, 0);
		assert_not_ready(t, c);

		/* The forged entry: read as an entry, without prod moving, exactly once. */
		mk(forged, 0xf00d);
		memcpy(slot_of(t, c), forged, MSG);
		forge_stamp(t, c, stamp_of(c));
		assert_int_equal(atomic_load(&t->p.sh->prod), c);
		assert_int_equal(lb_ring_sc_peek(&t->c), 1);
		assert_int_equal(lb_ring_sc_pop(&t->c, e), 1);
		assert_memory_equal(e, forged, MSG);
		assert_int_equal((uint32_t)(e[7] >> 32), stamp_of(c));
		assert_int_equal(t->c.local, c + 1u);
		assert_int_equal(atomic_load(&t->c.sh->cons), c + 1u);
		assert_not_ready(t, c + 1u); /* its stamp stays, but it is for c, not c + 1 */

		/* A real producer takes over after it: two laps, the forged slot rewritten. */
		t->p.local = c + 1u;
		for (uint64_t k = 0; k < 32; k += 8) {
			for (uint64_t i = 0; i < 8; i++)
				push_k(t, k + i);
			for (uint64_t i = 0; i < 8; i++)
				pop_k(t, k + i);
		}
		assert_empty(t);
		assert_guards(t);
		tring_free(t);
	}
}

/* ---- hostile indices ---- */

/* The consumer never reads prod: a producer index set anywhere (far ahead, a full ring ahead,
 * behind, or just one ahead) makes no entry ready; nothing is read, taken or waited for. Real
 * entries behind a lying prod come out as usual, in order. */
static void test_hostile_producer_index(void **state)
{
	(void)state;
	uint32_t starts[] = {0, 1000, UINT32_MAX - 3, UINT32_MAX};
	uint32_t ahead[] = {1, 2, 15, 16, 17, 18, 100, 65537, 0x7fffffffu, 0x80000000u, 0xfffffff0u,
			    UINT32_MAX};

	for (unsigned s = 0; s < sizeof(starts) / sizeof(starts[0]); s++) {
		for (unsigned a = 0; a < sizeof(ahead) / sizeof(ahead[0]); a++) {
			struct tring *t = tring_new(16, starts[s]);
			const uint32_t bogus = starts[s] + ahead[a];

			atomic_store(&t->p.sh->prod, bogus);
			assert_not_ready(t, starts[s]);
			assert_int_equal(lb_ring_sc_wait(&t->c, 0, MS), 0);
			assert_int_equal(lb_ring_sc_wait(&t->c, 1000, MS), 0);
			assert_not_ready(t, starts[s]);
			assert_int_equal(atomic_load(&t->p.sh->sleeping), 0);

			/* Three real entries, prod set back to the lie after each push. */
			for (uint64_t k = 0; k < 3; k++) {
				push_k(t, k);
				atomic_store(&t->p.sh->prod, bogus);
			}
			assert_int_equal(lb_ring_sc_wait(&t->c, 0, MS), 1);
			for (uint64_t k = 0; k < 3; k++)
				pop_k(t, k);
			assert_empty(t);
			assert_int_equal(atomic_load(&t->p.sh->prod), bogus);
			assert_guards(t);
			tring_free(t);
		}
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
		uint8_t before[64];
		memcpy(before, slot_of(t, prod), 64);
		bool ok = lb_ring_sp_push(&t->p, e);
		assert_int_equal(ok, prod - cons <= 7u);
		if (ok) {
			assert_memory_equal(slot_of(t, prod), e, MSG);
			assert_int_equal(slot_stamp(t, prod), stamp_of(prod));
			assert_int_equal(atomic_load(&t->p.sh->prod), prod + 1);
		} else {
			assert_memory_equal(slot_of(t, prod), before, 64); /* not even the stamp */
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
	/* abi_version is not a size or an offset: lb_region_layout leaves it to the daemon. */
}

static void test_region_layout_examples(void **state)
{
	(void)state;
	struct lb_region_hdr h;

	/* The smallest region: header page, two one-page rings, one staging page. */
	assert_int_equal(lb_region_layout(&h, 8, 8, 4096), 16384);
	assert_int_equal(h.req_off, 4096);
	assert_int_equal(h.cpl_off, 8192);
	assert_int_equal(h.staging_off, 12288);
	assert_int_equal(lb_region_layout(&h, 8, 8, 0), 12288);
	/* 192 + 64 * 64 = 4288 bytes: a 64-entry ring spills onto a second page. */
	assert_int_equal(lb_region_layout(&h, 64, 8, 0), 4096 + 8192 + 4096);
	assert_int_equal(h.cpl_off, 4096 + 8192);
	/* The largest: 65536 entries is 4 MiB + 192 bytes per ring, plus 4 GiB of staging. */
	assert_int_equal(lb_region_layout(&h, 65536, 65536, 1ull << 32),
			 4096 + 2 * (4194304ull + 4096) + (1ull << 32));
	assert_int_equal(h.cpl_off, 4096 + 4194304 + 4096);
	assert_int_equal(h.staging_off, 4096 + 2 * (4194304ull + 4096));
}

static void test_region_layout_every_size(void **state)
{
	(void)state;
	uint64_t staging[] = {0, 4096, 1ull << 20, 12288, (1ull << 32) - 4096, 1ull << 32};
	for (uint32_t req = LB_RING_MIN_ENTRIES; req <= LB_RING_MAX_ENTRIES; req *= 2)
		for (uint32_t cpl = LB_RING_MIN_ENTRIES; cpl <= LB_RING_MAX_ENTRIES; cpl *= 2)
			for (unsigned s = 0; s < sizeof(staging) / sizeof(staging[0]); s++)
				check_layout(req, cpl, staging[s]);
}

/* Rejected arguments return 0 and leave the header as it was. */
static void assert_rejected(uint32_t req, uint32_t cpl, uint64_t staging)
{
	struct lb_region_hdr h, before;
	memset(&h, 0xee, sizeof(h));
	before = h;
	assert_int_equal(lb_region_layout(&h, req, cpl, staging), 0);
	assert_memory_equal(&h, &before, sizeof(h));
}

static void test_region_layout_rejects(void **state)
{
	(void)state;
	uint32_t bad_entries[] = {0, 1, 2, 4, 7, 9, 12, 24, 100, 4095, 65535, 65537, 98304,
				  131072, 1u << 20, 0x80000000u, 0xfffffff8u, UINT32_MAX};
	uint64_t bad_staging[] = {1, 64, 2048, 4095, 4097, 8191, (1ull << 32) + 1,
				  (1ull << 32) + 4096, 1ull << 33, UINT64_MAX - 4095, UINT64_MAX};

	for (unsigned i = 0; i < sizeof(bad_entries) / sizeof(bad_entries[0]); i++) {
		assert_rejected(bad_entries[i], 8, 4096);
		assert_rejected(8, bad_entries[i], 4096);
		assert_rejected(bad_entries[i], bad_entries[i], 4096);
		assert_rejected(bad_entries[i], 65536, 0);
		assert_rejected(65536, bad_entries[i], 0);
	}
	for (unsigned i = 0; i < sizeof(bad_staging) / sizeof(bad_staging[0]); i++) {
		assert_rejected(8, 8, bad_staging[i]);
		assert_rejected(65536, 65536, bad_staging[i]);
	}
}

/* ---- doorbell ---- */

static void sleep_ns(uint64_t ns)
{
	struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

/* Scheduler state of one of our threads ('S': asleep, here in FUTEX_WAIT); '?' unreadable. */
static char thread_state(pid_t tid)
{
	char path[64], buf[512], *p;
	FILE *f;
	snprintf(path, sizeof(path), "/proc/self/task/%d/stat", (int)tid);
	f = fopen(path, "r");
	if (!f)
		return '?';
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	p = strrchr(buf, ')');
	return p && p[1] == ' ' ? p[2] : '?';
}

struct waiter {
	struct tring *t;
	_Atomic pid_t tid;
	_Atomic int done;
	int64_t n;
	uint64_t woke_ns;
	uint64_t got[8];
};

static void *waiter_main(void *arg)
{
	struct waiter *w = arg;
	atomic_store(&w->tid, (pid_t)syscall(SYS_gettid));
	w->n = lb_ring_sc_wait(&w->t->c, 0, 10000 * MS);
	w->woke_ns = lb_now_ns();
	if (w->n > 0)
		lb_ring_sc_pop(&w->t->c, w->got);
	atomic_store(&w->done, 1);
	return NULL;
}

/* A consumer asleep in the futex (spin 0, no time-out) is woken by push + lb_ring_sp_wake. */
static void test_wake_sleeping_consumer(void **state)
{
	(void)state;
	struct waiter w = {.t = tring_new(8, 0)};
	pthread_t th;
	uint64_t e[8], deadline = lb_now_ns() + 5000 * MS, t0;
	pid_t tid;

	assert_int_equal(pthread_create(&th, NULL, waiter_main, &w), 0);
	/* Until it has announced that it may sleep and the kernel has it asleep. */
	while (!(tid = atomic_load(&w.tid)) || !atomic_load(&w.t->c.sh->sleeping) ||
	       !strchr("S?", thread_state(tid))) {
		if (lb_now_ns() > deadline)
			break;
		sleep_ns(MS);
	}
	sleep_ns(20 * MS);
	/* Checked after the join, so a failure never leaves the thread running on our stack. */
	int done_early = atomic_load(&w.done), sleeping = (int)atomic_load(&w.t->c.sh->sleeping);
	char st = tid ? thread_state(tid) : '?';

	mk(e, 7);
	bool pushed = lb_ring_sp_push(&w.t->p, e);
	t0 = lb_now_ns();
	lb_ring_sp_wake(&w.t->p);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(done_early, 0);
	assert_int_equal(sleeping, 1);
	assert_true(st == 'S' || st == '?'); /* '?': no /proc to ask */
	assert_true(pushed);
	assert_int_equal(w.n, 1);
	assert_memory_equal(w.got, e, MSG);
	assert_int_equal((uint32_t)(w.got[7] >> 32), stamp_of(0));
	assert_true(w.woke_ns - t0 < 1000 * MS); /* woken, not timed out after 10 s */
	assert_int_equal(atomic_load(&w.t->c.sh->doorbell), 1);
	assert_int_equal(atomic_load(&w.t->c.sh->sleeping), 0);
	printf("woken %.1f us after the wake\n", (double)(w.woke_ns - t0) / 1e3);
	tring_free(w.t);
}

/* No consumer said it may sleep: a wake costs a fence and no system call. */
static void test_wake_without_sleeper(void **state)
{
	(void)state;
	struct tring *t = tring_new(8, 0);
	push_k(t, 1);
	lb_ring_sp_wake(&t->p);
	assert_int_equal(atomic_load(&t->p.sh->doorbell), 0);
	/* Entries already there: wait returns them at once, with or without a limit. */
	push_k(t, 2);
	assert_int_equal(lb_ring_sc_wait(&t->c, 0, 0), 1);
	assert_int_equal(lb_ring_sc_wait(&t->c, 1000000, 0), 1);
	pop_k(t, 1);
	pop_k(t, 2);
	tring_free(t);
}

/* On an empty ring, wait returns 0 after about its time-out, spinning first or not. */
static void test_wait_timeout(void **state)
{
	(void)state;
	struct tring *t = tring_new(8, 0);
	struct {
		uint64_t spin, timeout;
	} c[] = {{0, 50 * MS}, {200000, 30 * MS}, {0, 1 * MS}, {5 * MS, 20 * MS}};

	for (unsigned i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
		uint64_t t0 = lb_now_ns();
		assert_int_equal(lb_ring_sc_wait(&t->c, c[i].spin, c[i].timeout), 0);
		uint64_t took = lb_now_ns() - t0;
		printf("wait(spin %.1f ms, timeout %.1f ms) returned 0 after %.2f ms\n",
		       (double)c[i].spin / 1e6, (double)c[i].timeout / 1e6, (double)took / 1e6);
		assert_true(took >= c[i].timeout);
		assert_true(took < c[i].timeout + 1000 * MS); /* generous: sanitizers, busy CI */
		assert_int_equal(atomic_load(&t->c.sh->sleeping), 0);
	}
	tring_free(t);
}

/* Two threads, two rings: every message sent on a is answered on b. */
#define PP_QUIT UINT64_MAX
#define PP_WAIT_NS (5000 * MS) /* a lost wake-up shows up as this time-out, not as a hang */

struct pingpong {
	struct tring *a, *b;
	uint64_t spin;
	int64_t err; /* echo thread: 0, or what its wait returned instead of entries */
};

static void *echo_main(void *arg)
{
	struct pingpong *pp = arg;
	uint64_t e[8];
	for (;;) {
		int64_t n = lb_ring_sc_wait(&pp->a->c, pp->spin, PP_WAIT_NS);
		if (n <= 0) {
			pp->err = n == 0 ? -ETIMEDOUT : n;
			return NULL;
		}
		if (lb_ring_sc_pop(&pp->a->c, e) != 1) {
			pp->err = -EIO;
			return NULL;
		}
		if (e[0] == PP_QUIT)
			return NULL;
		e[1] = e[0] + 1;
		if (!lb_ring_sp_push(&pp->b->p, e)) { /* cannot be full: one message in flight */
			pp->err = -ENOSPC;
			return NULL;
		}
		lb_ring_sp_wake(&pp->b->p);
	}
}

static void pingpong(uint64_t spin, uint32_t iters)
{
	struct pingpong pp = {.a = tring_new(8, 0), .b = tring_new(8, UINT32_MAX - 1000), .spin = spin};
	pthread_t th;
	uint64_t e[8] = {0}, t0, i;
	int64_t n = 1;
	int bad = 0;

	assert_int_equal(pthread_create(&th, NULL, echo_main, &pp), 0);
	t0 = lb_now_ns();
	for (i = 0; i < iters; i++) {
		e[0] = i;
		e[1] = 0;
		if (!lb_ring_sp_push(&pp.a->p, e)) {
			bad = 1;
			break;
		}
		lb_ring_sp_wake(&pp.a->p);
		n = lb_ring_sc_wait(&pp.b->c, spin, PP_WAIT_NS);
		if (n != 1 || lb_ring_sc_pop(&pp.b->c, e) != 1 || e[0] != i || e[1] != i + 1) {
			bad = 1;
			break;
		}
	}
	uint64_t took = lb_now_ns() - t0;
	e[0] = PP_QUIT; /* the echo thread stops on this, or on its own time-out */
	lb_ring_sp_push(&pp.a->p, e);
	lb_ring_sp_wake(&pp.a->p);
	assert_int_equal(pthread_join(th, NULL), 0);
	if (bad)
		printf("ping-pong (spin %llu ns) stopped at %llu of %u: wait returned %lld, echo thread %lld\n",
		       (unsigned long long)spin, (unsigned long long)i, iters, (long long)n,
		       (long long)pp.err);
	assert_int_equal(bad, 0);
	assert_int_equal(pp.err, 0);
	printf("ping-pong, spin %llu ns: %u round trips, %.0f ns per round trip, %u doorbell wakes\n",
	       (unsigned long long)spin, iters, (double)took / iters,
	       atomic_load(&pp.a->c.sh->doorbell) + atomic_load(&pp.b->c.sh->doorbell));
	tring_free(pp.a);
	tring_free(pp.b);
}

/* Both sides sleep every time (spin 0): each message needs the doorbell to get through. */
static void test_pingpong_no_lost_wakeups(void **state)
{
	(void)state;
	pingpong(0, 100000);
}

/* The same with a spin budget: the fast path, and a measure of it. The budget is small because
 * on a busy two-core machine a spinner can hold the core its peer needs: a round trip then
 * costs about the budget. */
static void test_pingpong_spinning(void **state)
{
	(void)state;
	pingpong(20000, 100000);
}

static void on_alarm(int sig)
{
	static const char msg[] = "test_ring: still running after 110 s, failing instead of hanging\n";
	(void)sig;
	if (write(2, msg, sizeof(msg) - 1) < 0) {
		/* nothing more to do */
	}
	_exit(1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_push_pop_order),
		cmocka_unit_test(test_full_and_empty),
		cmocka_unit_test(test_min_and_max_sizes),
		cmocka_unit_test(test_index_wraparound),
		cmocka_unit_test(test_fresh_ring_is_empty_at_every_index),
		cmocka_unit_test(test_forged_stamps),
		cmocka_unit_test(test_hostile_producer_index),
		cmocka_unit_test(test_hostile_consumer_index),
		cmocka_unit_test(test_region_layout_examples),
		cmocka_unit_test(test_region_layout_every_size),
		cmocka_unit_test(test_region_layout_rejects),
		cmocka_unit_test(test_wake_without_sleeper),
		cmocka_unit_test(test_wake_sleeping_consumer),
		cmocka_unit_test(test_wait_timeout),
		cmocka_unit_test(test_pingpong_no_lost_wakeups),
		cmocka_unit_test(test_pingpong_spinning),
	};
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGALRM, on_alarm);
	alarm(110); /* under CTest's TIMEOUT 120 */
	return cmocka_run_group_tests(tests, NULL, NULL);
}
