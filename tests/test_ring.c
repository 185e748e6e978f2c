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
		/* peek may answer from its cached prod: never more than is there, never 0 then. */
		int64_t ready = lb_ring_sc_peek(&t->c);
		assert_true(ready <= (int64_t)(next_in - next_out));
		assert_true(ready > 0 || next_in == next_out);
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
	assert_memory_equal(w.got, e, sizeof(e));
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
	assert_int_equal(lb_ring_sc_wait(&t->c, 0, 0), 2);
	assert_int_equal(lb_ring_sc_wait(&t->c, 1000000, 0), 2);
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
