/* Ring stress test (after DPDK's test_ring_stress): a producer marks every entry's message (its
 * first 60 bytes) with its sequence number, its pid and a checksum of its contents; the consumer
 * checks each one on the way out, and that the last 4 bytes (the ring's own stamp, written by
 * lb_ring_sp_push) are the stamp of the index it was taken from. Two processes over a memfd, and
 * two threads (which ThreadSanitizer can see). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "layerbank/ring.h"
#include "rng.h"

#if defined(__SANITIZE_THREAD__)
#define LB_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define LB_TSAN 1
#endif
#endif
#ifndef LB_TSAN
#define LB_TSAN 0
#endif

/* 10^7 elements in every build, ThreadSanitizer included (thread mode only there, some 10 to
 * 20 s on two cores). LB_STRESS_N overrides it. */
#define DEFAULT_N 10000000ull
#define ENTRIES 1024u
#define START_INDEX (UINT32_MAX - 300000u) /* the run crosses 2^32 on the way */
#define STALL_NS 10000000000ull             /* 10 s without progress: fail, don't hang */
#define PHASE_SHIFT 14                      /* behaviour changes every 16384 elements */
#define MAX_REPORTS 10

/* One ring entry as the stress test fills it: the message in bytes 0..59, then the ring's stamp,
 * which the producer fills with a value the ring never writes (push must ignore it). */
struct elem {
	uint64_t seq;        /* 0, 1, 2, ... in push order */
	uint32_t pid;        /* the producer's */
	uint32_t phase;      /* (seq >> PHASE_SHIFT) & 3 */
	uint64_t payload[4]; /* payload_word(seq, i) */
	uint64_t sum;        /* elem_sum() of every other message byte */
	uint32_t tail;       /* (uint32_t)payload_word(seq, 4) */
	uint32_t ring_stamp; /* the ring's: index | 1 once through the ring */
};
_Static_assert(sizeof(struct elem) == LB_RING_ENTRY_SIZE, "one entry");
_Static_assert(offsetof(struct elem, ring_stamp) == LB_RING_STAMP_OFF, "the ring's stamp");

#define NOT_A_STAMP 0xfeedfaceu /* even: never index | 1 */

static uint64_t payload_word(uint64_t seq, unsigned i)
{
	return lbu_mix64(seq * 8 + i + 0x6c62616e6b000000ull);
}

static uint64_t elem_sum(const struct elem *s)
{
	uint64_t h = lbu_mix64(s->seq ^ 0x243f6a8885a308d3ull);
	h = lbu_mix64(h ^ ((uint64_t)s->pid << 32 | s->phase));
	for (unsigned i = 0; i < 4; i++)
		h = lbu_mix64(h ^ s->payload[i]);
	return lbu_mix64(h ^ s->tail);
}

static unsigned phase_of(uint64_t seq)
{
	return (unsigned)(seq >> PHASE_SHIFT) & 3;
}

/*
 * The four phases, so that both the spinning and the sleeping paths of the doorbell run:
 *   0: producer flat out, wakes after every push;     consumer spins 0 (sleeps when empty)
 *   1: producer flat out, wakes every 32 pushes;      consumer spins 2 us
 *   2: producer naps ~50 us every 256 pushes;         consumer spins 0: it sleeps, is woken
 *   3: producer pauses ~3 us every 16 pushes;         consumer spins 20 us: caught spinning
 */
static uint64_t consumer_spin_ns(uint64_t seq)
{
	static const uint64_t spin[4] = {0, 2000, 0, 20000};
	return spin[phase_of(seq)];
}

static void busy_ns(uint64_t ns)
{
	uint64_t end = lb_now_ns() + ns;
	while (lb_now_ns() < end)
		__builtin_ia32_pause();
}

struct shared_ring {
	void *mem;
	size_t bytes;
};

/* A ring in a memfd mapping, both indices at START_INDEX. */
static void ring_map(struct shared_ring *r)
{
	r->bytes = (LB_RING_HDR_SIZE + (size_t)ENTRIES * LB_RING_ENTRY_SIZE + 4095) & ~(size_t)4095;
	int fd = memfd_create("layerbank-ring-stress", MFD_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)r->bytes), 0);
	r->mem = mmap(NULL, r->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(r->mem != MAP_FAILED);
	close(fd);
	struct lb_ring_shared *sh = r->mem;
	atomic_store(&sh->prod, START_INDEX);
	atomic_store(&sh->cons, START_INDEX);
}

static void view_at_start(struct lb_ring_view *v, void *mem)
{
	lb_ring_view_init(v, mem, ENTRIES);
	v->local = v->cached = START_INDEX;
}

/* ---- producer ---- */

struct producer {
	void *mem;
	uint64_t n;
	uint32_t pid;
	int failed; /* 1: stalled on a full ring for STALL_NS */
};

/* Push with the wake discipline a real producer needs: always ring before waiting for room
 * (the consumer may be asleep on what we pushed without a wake). @return 0, or -1 on a stall. */
static int push_one(struct lb_ring_view *v, const struct elem *s)
{
	if (lb_ring_sp_push(v, s))
		return 0;
	lb_ring_sp_wake(v);
	uint64_t t0 = lb_now_ns();
	for (unsigned spins = 0; !lb_ring_sp_push(v, s); spins++) {
		if (spins < 256) {
			__builtin_ia32_pause();
			continue;
		}
		sched_yield();
		if (lb_now_ns() - t0 > STALL_NS)
			return -1;
	}
	return 0;
}

static void produce(struct producer *p)
{
	struct lb_ring_view v;
	struct elem s;
	view_at_start(&v, p->mem);
	for (uint64_t seq = 0; seq < p->n; seq++) {
		unsigned ph = phase_of(seq);
		s.seq = seq;
		s.pid = p->pid;
		s.phase = ph;
		for (unsigned i = 0; i < 4; i++)
			s.payload[i] = payload_word(seq, i);
		s.tail = (uint32_t)payload_word(seq, 4);
		s.sum = elem_sum(&s);
		s.ring_stamp = NOT_A_STAMP ^ (uint32_t)(seq << 1);
		if (push_one(&v, &s)) {
			fprintf(stderr, "producer: ring full for 10 s at seq %llu\n", (unsigned long long)seq);
			p->failed = 1;
			return;
		}
		switch (ph) {
		case 0:
			lb_ring_sp_wake(&v);
			break;
		case 1:
			if (seq % 32 == 31)
				lb_ring_sp_wake(&v);
			break;
		case 2:
			if (seq % 256 == 255) {
				lb_ring_sp_wake(&v);
				struct timespec ts = {0, 50000};
				nanosleep(&ts, NULL);
			}
			break;
		default:
			if (seq % 16 == 15) {
				lb_ring_sp_wake(&v);
				busy_ns(3000);
			}
			break;
		}
	}
	lb_ring_sp_wake(&v); /* whatever the last batch left unannounced */
}

static void *producer_thread(void *arg)
{
	produce(arg);
	return NULL;
}

/* ---- consumer ---- */

struct result {
	uint64_t received, errors, ns, doorbell;
	uint64_t phase_ns[4], phase_n[4]; /* time and elements by producer/consumer phase */
	int stalled;       /* wait timed out: a lost wake-up or a dead producer */
	int64_t bad_ready; /* wait returned something else than 0 or 1 */
};

static void report(struct result *r, const char *what, uint64_t want, uint64_t got)
{
	if (r->errors++ < MAX_REPORTS)
		printf("element %llu: %s: want %#llx, got %#llx\n", (unsigned long long)r->received,
		       what, (unsigned long long)want, (unsigned long long)got);
}

/* s was taken from ring index index. */
static void check(struct result *r, const struct elem *s, uint64_t *expect, uint32_t pid,
		  uint32_t index)
{
	if (s->ring_stamp != (index | 1u))
		report(r, "ring stamp", index | 1u, s->ring_stamp);
	if (s->sum != elem_sum(s))
		report(r, "checksum", elem_sum(s), s->sum);
	if (s->seq != *expect)
		report(r, "sequence", *expect, s->seq);
	if (s->pid != pid)
		report(r, "pid", pid, s->pid);
	if (s->phase != phase_of(s->seq))
		report(r, "phase", phase_of(s->seq), s->phase);
	for (unsigned i = 0; i < 4; i++)
		if (s->payload[i] != payload_word(s->seq, i))
			report(r, "payload", payload_word(s->seq, i), s->payload[i]);
	if (s->tail != (uint32_t)payload_word(s->seq, 4))
		report(r, "tail", (uint32_t)payload_word(s->seq, 4), s->tail);
	*expect = s->seq + 1; /* one lost element is one error, not all that follow */
}

static void consume(struct result *r, void *mem, uint64_t n, uint32_t pid)
{
	struct lb_ring_view v;
	struct elem s;
	uint64_t expect = 0, t0 = lb_now_ns(), tp = t0;
	unsigned ph = 0;
	view_at_start(&v, mem);
	while (r->received < n) {
		if (phase_of(expect) != ph) {
			uint64_t now = lb_now_ns();
			r->phase_ns[ph] += now - tp;
			tp = now;
			ph = phase_of(expect);
		}
		int64_t ready = lb_ring_sc_wait(&v, consumer_spin_ns(expect), STALL_NS);
		if (ready == 0) {
			printf("consumer: nothing for 10 s after %llu elements\n",
			       (unsigned long long)r->received);
			r->stalled = 1;
			break;
		}
		if (ready != 1) {
			printf("consumer: wait returned %lld\n", (long long)ready);
			r->bad_ready = ready;
			break;
		}
		/* Then whatever else is ready, without a wait (and its clock read) per element. */
		do {
			uint32_t index = v.local;
			lb_ring_sc_copy(&v, &s);
			lb_ring_sc_release(&v);
			check(r, &s, &expect, pid, index);
			r->received++;
			r->phase_n[ph]++;
		} while (r->received < n && phase_of(expect) == ph && lb_ring_sc_peek(&v) == 1);
	}
	r->ns = lb_now_ns() - t0;
	r->phase_ns[ph] += lb_now_ns() - tp;
	r->doorbell = atomic_load(&((struct lb_ring_shared *)mem)->doorbell);
}

static uint64_t elements(void)
{
	const char *e = getenv("LB_STRESS_N");
	return e && *e ? strtoull(e, NULL, 10) : DEFAULT_N;
}

static void print_result(const char *mode, const struct result *r)
{
	printf("%s: %llu elements in %.2f s: %.2f M elements/s, %.1f ns per element, %llu errors, "
	       "%llu doorbell wakes\n",
	       mode, (unsigned long long)r->received, (double)r->ns / 1e9,
	       (double)r->received * 1e3 / (double)(r->ns ? r->ns : 1),
	       (double)r->ns / (double)(r->received ? r->received : 1),
	       (unsigned long long)r->errors, (unsigned long long)r->doorbell);
	static const char *const name[4] = {"wake every push, spin 0", "wake every 32, spin 2 us",
					    "producer naps, spin 0", "producer pauses, spin 20 us"};
	for (unsigned i = 0; i < 4; i++)
		printf("  phase %u (%s): %.2f M elements/s, %.1f ns per element\n", i, name[i],
		       (double)r->phase_n[i] * 1e3 / (double)(r->phase_ns[i] ? r->phase_ns[i] : 1),
		       (double)r->phase_ns[i] / (double)(r->phase_n[i] ? r->phase_n[i] : 1));
}

static void assert_clean(const struct result *r, uint64_t n)
{
	assert_int_equal(r->stalled, 0);
	assert_int_equal(r->bad_ready, 0);
	assert_int_equal(r->received, n);
	assert_int_equal(r->errors, 0);
	assert_true(r->doorbell > 0); /* the consumer did sleep and was woken */
}

/* Producer and consumer in two processes sharing a memfd. */
static void test_stress_processes(void **state)
{
	(void)state;
	if (LB_TSAN) {
		printf("SKIP: process mode under ThreadSanitizer, which cannot see across processes\n");
		skip();
	}
	struct shared_ring ring;
	struct result r = {0};
	uint64_t n = elements();
	int status;

	ring_map(&ring);
	fflush(stdout);
	pid_t child = fork();
	assert_true(child >= 0);
	if (child == 0) {
		struct producer p = {.mem = ring.mem, .n = n, .pid = (uint32_t)getpid()};
		produce(&p);
		_exit(p.failed ? 1 : 0);
	}
	consume(&r, ring.mem, n, (uint32_t)child);
	if (r.stalled || r.bad_ready)
		kill(child, SIGKILL);
	assert_int_equal(waitpid(child, &status, 0), child);
	print_result("processes", &r);
	munmap(ring.mem, ring.bytes);
	assert_clean(&r, n);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* The same with two threads, so that ThreadSanitizer checks the ring's ordering. */
static void test_stress_threads(void **state)
{
	(void)state;
	struct shared_ring ring;
	struct result r = {0};
	uint64_t n = elements();
	pthread_t th;

	ring_map(&ring);
	struct producer p = {.mem = ring.mem, .n = n, .pid = (uint32_t)getpid()};
	assert_int_equal(pthread_create(&th, NULL, producer_thread, &p), 0);
	consume(&r, ring.mem, n, p.pid); /* on a stall the producer gives up by itself */
	assert_int_equal(pthread_join(th, NULL), 0);
	print_result("threads", &r);
	munmap(ring.mem, ring.bytes);
	assert_clean(&r, n);
	assert_int_equal(p.failed, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_stress_processes),
		cmocka_unit_test(test_stress_threads),
	};
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("%llu elements of %u bytes per mode through a ring of %u%s\n",
	       (unsigned long long)elements(), LB_RING_ENTRY_SIZE, ENTRIES,
	       LB_TSAN ? " (ThreadSanitizer build: thread mode only)" : "");
	return cmocka_run_group_tests(tests, NULL, NULL);
}
