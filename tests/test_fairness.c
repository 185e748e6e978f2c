/* Fairness between clients on one service thread: a client that keeps its request ring full
 * gets its share and no more. A client doing synchronous lookups keeps a stated share of the
 * rate it has alone while another floods; two flooding clients get about as many completions
 * each. Both figures are printed. (A client that stops reading its completions slows nobody:
 * test_dataplane's test_stalled_completion_ring_does_not_block_others.) */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "layerbank/layerbank.h"
#include "layerbank/ring.h"
#include "lbp.h"
#include "testutil.h"

/*
 * The synchronous client's rate beside a flooder is measured in ROUNDS pairs of windows of
 * WINDOW_NS, one alone and one beside the flooder, and the median of the pairs' ratios must be
 * at least 1/MIN_SHARE: the machine is shared and its load moves, which a pair taken close
 * together and the median over pairs mostly cancel. This catches starvation (a service loop
 * that serves a client until its ring is empty leaves the synchronous client next to nothing
 * beside a flooder that keeps refilling), not the cost of waiting behind one request or a few.
 */
#define ROUNDS 7
#define WINDOW_NS 150000000ull
#define MIN_SHARE 10.0
/* Two flooders over 1 s: each gets between 1/MAX_SKEW and MAX_SKEW times the other's. */
#define FLOOD_NS 1000000000ull
#define MAX_SKEW 2.0
/* A flooder's rings: deep enough that the daemon always has its requests even when the
 * machine's load keeps the flooder from running for a few milliseconds. */
#define FLOOD_RING 65536u

static struct lbt_env env; /* every test's fixture (lbt_env_setup, lbt_env_teardown) */

static const struct lb_model_desc model = {
	.name = "fair", .weights_hash = 0xfa12, .n_layers = 4, .hidden = 64,
	.dtype = LB_DTYPE_F32, .max_seq = 4096, .fp_seed = 1,
};

/* Never inserted: every lookup is a miss, a round trip and a search of the index. */
static void key_make(struct lb_key *k)
{
	memset(k, 0, sizeof(*k));
	for (int i = 0; i < 4; i++)
		k->fp[i] = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
	k->exact[0] = 42;
	k->exact[1] = ~42ull;
	k->seq_len = 8;
}

static void sleep_ns(uint64_t ns)
{
	struct timespec ts = { (time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull) };
	nanosleep(&ts, NULL);
}

/* ---- a flooder: a client made by hand with deep rings, kept full ---- */

static uint8_t frame[LBP_MAX_FRAME + 1];

struct flooder {
	int fd;
	uint8_t *region;
	uint64_t bytes;
	struct lb_region_hdr lay;
	struct lb_ring_view req, cpl;
	uint32_t model_id;
	pthread_t tid;
	_Atomic bool stop;
	_Atomic uint64_t done;  /* completions taken */
	uint64_t pushed, errors;
};

static void call(int fd, struct lbp_msg *m, struct lbp_msg *back, int *fds, unsigned *n_fds)
{
	struct lbp_fault fault;
	union {
		char buf[CMSG_SPACE(sizeof(int) * (LBP_MAX_ARENAS + 1))];
		struct cmsghdr align;
	} cmsg;
	struct iovec iov = { frame, sizeof(frame) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cmsg.buf,
			      .msg_controllen = sizeof(cmsg.buf) };
	int len = lbp_encode(m, frame, sizeof(frame));
	assert_true(len > 0);
	assert_int_equal(send(fd, frame, (size_t)len, MSG_NOSIGNAL), len);
	ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
	assert_true(n > 0);
	*n_fds = 0;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
		unsigned k = (unsigned)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
		assert_true(fds && *n_fds + k <= LBP_MAX_ARENAS + 1);
		memcpy(fds + *n_fds, CMSG_DATA(cm), k * sizeof(int));
		*n_fds += k;
	}
	assert_int_equal(lbp_decode(frame, (size_t)n, back, &fault), 0);
}

static void raw_connect(struct flooder *f, uint32_t entries, uint64_t staging);

static void flooder_connect(struct flooder *f)
{
	raw_connect(f, FLOOD_RING, 4096);
	/* Every request reads the same query at staging offset 0. */
	struct lb_key k;
	struct lb_query q = { .n_thr = 0 };
	key_make(&k);
	memcpy(q.fp, k.fp, sizeof(q.fp));
	memcpy(q.exact, k.exact, sizeof(q.exact));
	memcpy(f->region + f->lay.staging_off, &q, sizeof(q));
}

/* A client made by hand (HELLO with these ring and staging sizes, the model registered). */
static void raw_connect(struct flooder *f, uint32_t entries, uint64_t staging)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct lbp_msg m = { .type = LBP_HELLO }, back;
	int fds[LBP_MAX_ARENAS + 1];
	unsigned n_fds;

	memset(f, 0, sizeof(*f));
	f->fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	assert_true(f->fd >= 0);
	memcpy(sa.sun_path, env.sock, strlen(env.sock) + 1);
	assert_int_equal(connect(f->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	m.u.hello = (struct lbp_hello){ .shm_abi = LB_SHM_ABI_VERSION, .req_entries = entries,
					.cpl_entries = entries, .staging_bytes = staging };
	strcpy(m.u.hello.name, "flooder");
	call(f->fd, &m, &back, fds, &n_fds);
	assert_int_equal(back.type, LBP_WELCOME);
	assert_int_equal(n_fds, back.u.welcome.n_arenas + 1);
	for (unsigned i = 0; i + 1 < n_fds; i++)
		close(fds[i]);
	const struct lbp_region_desc *d = &back.u.welcome.region;
	assert_int_equal(d->req_entries, entries);
	f->bytes = lb_region_layout(&f->lay, d->req_entries, d->cpl_entries, d->staging_bytes);
	assert_int_equal(f->bytes, d->bytes);
	void *p = mmap(NULL, f->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fds[n_fds - 1], 0);
	assert_true(p != MAP_FAILED);
	close(fds[n_fds - 1]);
	f->region = p;
	lb_ring_view_init(&f->req, f->region + f->lay.req_off, f->lay.req_entries);
	lb_ring_view_init(&f->cpl, f->region + f->lay.cpl_off, f->lay.cpl_entries);

	/* Its requests may name only a model it registered itself. */
	m = (struct lbp_msg){ .type = LBP_REGISTER_MODEL };
	strcpy(m.u.reg.name, model.name);
	m.u.reg.weights_hash = model.weights_hash;
	m.u.reg.n_layers = model.n_layers;
	m.u.reg.hidden = model.hidden;
	m.u.reg.dtype = LBP_DTYPE_F32;
	m.u.reg.max_seq = model.max_seq;
	m.u.reg.fp = (struct lbp_fp_spec){ .chunks = 4, .bits = 256, .seed = model.fp_seed };
	call(f->fd, &m, &back, NULL, &n_fds);
	assert_int_equal(back.type, LBP_MODEL);
	f->model_id = back.u.model.model_id;
}

/* Take every completion there is; then wake the daemon, which may have stopped for room. */
static void flooder_take(struct flooder *f)
{
	struct lb_cpl k;
	uint64_t n = 0;
	while (lb_ring_sc_pop(&f->cpl, &k) == 1) {
		if (k.status != -ENOENT)
			f->errors++;
		n++;
	}
	if (n) {
		atomic_fetch_add(&f->done, n);
		lb_ring_sp_wake(&f->req);
	}
}

/* Keep the request ring full: take the completions and refill it every 100 us (the ring
 * holds tens of milliseconds of requests, so it never runs dry; nor does its completion ring
 * fill up, which would stop the daemon taking its requests). */
static void *flood(void *arg)
{
	struct flooder *f = arg;
	struct lb_req r = { .opcode = LB_OP_LOOKUP_DEEPEST, .model_id = f->model_id, .seq_len = 8,
			    .payload_len = sizeof(struct lb_query) };

	while (!atomic_load(&f->stop)) {
		flooder_take(f);
		while (lb_ring_sp_push(&f->req, &r))
			f->pushed++;
		lb_ring_sp_wake(&f->req);
		sleep_ns(100000);
	}
	/* Drain: the next measurement must not find the daemon still busy with our requests. */
	for (uint64_t t0 = lb_now_ns(); f->done < f->pushed && lb_now_ns() - t0 < 10000000000ull;) {
		flooder_take(f);
		sleep_ns(1000000);
	}
	return NULL;
}

static void flooder_start(struct flooder *f)
{
	atomic_store(&f->stop, false);
	assert_int_equal(pthread_create(&f->tid, NULL, flood, f), 0);
	/* Until the daemon serves it: its first completions are back. */
	for (uint64_t t0 = lb_now_ns(); atomic_load(&f->done) == 0;) {
		assert_true(lb_now_ns() - t0 < 5000000000ull);
		sleep_ns(1000000);
	}
}

static void flooder_stop(struct flooder *f)
{
	atomic_store(&f->stop, true);
	pthread_join(f->tid, NULL);
	assert_int_equal(f->errors, 0);
	assert_true(f->done == f->pushed);
}

static void flooder_close(struct flooder *f)
{
	munmap(f->region, f->bytes);
	close(f->fd);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* ---- a synchronous client ---- */

/* Lookups one at a time for ns. @return how many. */
static uint64_t sync_lookups(struct lb_client *c, uint32_t model_id, uint64_t ns)
{
	struct lb_key k;
	struct lb_hit h;
	uint64_t n = 0;

	key_make(&k);
	for (uint64_t t0 = lb_now_ns(); lb_now_ns() - t0 < ns; n++)
		assert_int_equal(lb_lookup_deepest(c, model_id, &k, NULL, 0, &h), -ENOENT);
	return n;
}

static void test_flooding_client_gets_its_share_and_no_more(void **state)
{
	(void)state;
	struct lb_client *c;
	static struct flooder f1, f2;
	uint32_t id;
	uint64_t alone = 0, beside = 0, flooded = 0;

	assert_true(lbt_daemon_start(&env, LBT_ARGS(LBT_SMALL, "--threads", "1")) > 0);
	assert_int_equal(lb_connect(env.sock, "sync", &c), 0);
	assert_int_equal(lb_register_model(c, &model, &id), 0);
	flooder_connect(&f1);
	flooder_connect(&f2);

	double ratio[ROUNDS];
	for (int round = 0; round < ROUNDS; round++) {
		uint64_t n_alone = sync_lookups(c, id, WINDOW_NS);
		flooder_start(&f1);
		uint32_t d0 = atomic_load(&f1.cpl.sh->prod);
		uint64_t n_beside = sync_lookups(c, id, WINDOW_NS);
		flooded += (uint32_t)(atomic_load(&f1.cpl.sh->prod) - d0);
		flooder_stop(&f1);
		alone += n_alone;
		beside += n_beside;
		ratio[round] = (double)n_beside / (double)(n_alone ? n_alone : 1);
	}
	qsort(ratio, ROUNDS, sizeof(ratio[0]), cmp_double);
	double median = ratio[ROUNDS / 2];
	double secs = (double)(ROUNDS * WINDOW_NS) / 1e9;
	printf("synchronous lookups/s: alone %.0f, beside a flooding client %.0f (median of %d pairs "
	       "%.2fx, range %.2f..%.2f); the flooder got %.0f/s, %.1f per synchronous lookup\n",
	       (double)alone / secs, (double)beside / secs, ROUNDS, median, ratio[0],
	       ratio[ROUNDS - 1], (double)flooded / secs, (double)flooded / (double)(beside ? beside : 1));

	f1.done = f1.pushed = 0;
	flooder_start(&f1);
	flooder_start(&f2);
	/* Counted where the daemon posts them (the completion rings' prod): what each was served,
	 * whenever its thread gets the CPU to take them. */
	uint32_t a0 = atomic_load(&f1.cpl.sh->prod), b0 = atomic_load(&f2.cpl.sh->prod);
	sleep_ns(FLOOD_NS);
	double a = (double)(uint32_t)(atomic_load(&f1.cpl.sh->prod) - a0);
	double b = (double)(uint32_t)(atomic_load(&f2.cpl.sh->prod) - b0);
	flooder_stop(&f1);
	flooder_stop(&f2);
	printf("two flooding clients: %.0f and %.0f completions/s (ratio %.2f)\n", a * 1e9 / FLOOD_NS,
	       b * 1e9 / FLOOD_NS, a / (b > 0 ? b : 1));
	fflush(stdout);

	assert_true(alone > 0 && beside > 0 && a > 0 && b > 0);
	if (median * MIN_SHARE < 1.0)
		fail_msg("the synchronous client kept %.2fx of its rate alone (median), under 1/%.0f",
			 median, MIN_SHARE);
	if (a > b * MAX_SKEW || b > a * MAX_SKEW)
		fail_msg("two flooding clients got %.0f and %.0f completions, more than %.0fx apart", a,
			 b, MAX_SKEW);
	flooder_close(&f1);
	flooder_close(&f2);
	lb_close(c);
	assert_true(lbt_daemon_stop(&env));
}

/* ---- the order of service, seen through the store ---- */

#define ORDER_N 200u
#define ORDER_STRIDE 4096u /* staging bytes per insert: header area and 8 x 64 floats */

/* Input i of the order test: distinct exact hashes and fingerprints far apart. */
static void order_key(struct lb_key *k, uint32_t i)
{
	memset(k, 0, sizeof(*k));
	for (int w = 0; w < 4; w++)
		k->fp[w] = (0x9e3779b97f4a7c15ull * (i + 1)) ^ (0xbf58476d1ce4e5b9ull * (uint64_t)(w + 1) * (i + 7));
	k->exact[0] = 0x0dde0000u + i;
	k->exact[1] = i;
	k->seq_len = 8;
}

/*
 * Two clients' requests wait together: A's i-th inserts input i, B's i-th looks up input i + 1.
 * Served one request of each in turn, every lookup of B comes before the insert it looks for:
 * all miss. Served 32 of one client at a time (as before), B's lookups of inputs 2..32 would
 * come after A's inserts of them and hit. The order the daemon takes waiting requests in does
 * not depend on timing, so this holds on a loaded machine too.
 */
static void test_waiting_clients_are_served_one_request_each_in_turn(void **state)
{
	(void)state;
	const char *const args[] = { LBT_SMALL, "--threads", "1", "--spin-us", "0", NULL };
	static struct flooder a, b;
	struct lb_key k;
	struct lb_cpl cpl;

	assert_true(lbt_daemon_start(&env, args) > 0);
	raw_connect(&a, 512, ORDER_N * ORDER_STRIDE);
	raw_connect(&b, 512, 64 * 1024);
	for (uint32_t i = 0; i < ORDER_N; i++) {
		struct lb_insert_hdr h = { .dtype = LB_DTYPE_F32, .ndim = 2, .shape = { 8, 64 },
					   .bytes = 8 * 64 * 4 };
		order_key(&k, i);
		memcpy(h.fp, k.fp, sizeof(h.fp));
		memcpy(h.exact, k.exact, sizeof(h.exact));
		memcpy(a.region + a.lay.staging_off + (uint64_t)i * ORDER_STRIDE, &h, sizeof(h));
		struct lb_query q = { .n_thr = 0 };
		order_key(&k, i + 1);
		memcpy(q.fp, k.fp, sizeof(q.fp));
		memcpy(q.exact, k.exact, sizeof(q.exact));
		memcpy(b.region + b.lay.staging_off + (uint64_t)i * 64, &q, sizeof(q));
	}
	/* The service thread sleeps (spin-us 0); pushes without a wake leave it asleep. B's
	 * lookups go in first: should it wake early, lookups served alone only miss. */
	sleep_ns(100000000);
	for (uint32_t i = 0; i < ORDER_N; i++) {
		struct lb_req r = { .opcode = LB_OP_LOOKUP_DEEPEST, .model_id = b.model_id, .seq_len = 8,
				    .user_data = i, .payload_off = i * 64,
				    .payload_len = sizeof(struct lb_query) };
		assert_true(lb_ring_sp_push(&b.req, &r));
	}
	for (uint32_t i = 0; i < ORDER_N; i++) {
		struct lb_req r = { .opcode = LB_OP_INSERT, .model_id = a.model_id, .seq_len = 8,
				    .user_data = i, .payload_off = i * ORDER_STRIDE,
				    .payload_len = LB_INSERT_HDR_SIZE + 8 * 64 * 4 };
		assert_true(lb_ring_sp_push(&a.req, &r));
	}
	lb_ring_sp_wake(&a.req);
	lb_ring_sp_wake(&b.req);

	unsigned hits = 0, misses = 0, inserted = 0;
	for (uint32_t got = 0; got < ORDER_N;) {
		assert_true(lb_ring_sc_wait(&a.cpl, 0, 5000000000ull) > 0);
		while (lb_ring_sc_pop(&a.cpl, &cpl) == 1) {
			assert_int_equal(cpl.user_data, got);
			inserted += cpl.status == 0;
			got++;
		}
	}
	for (uint32_t got = 0; got < ORDER_N;) {
		assert_true(lb_ring_sc_wait(&b.cpl, 0, 5000000000ull) > 0);
		while (lb_ring_sc_pop(&b.cpl, &cpl) == 1) {
			assert_int_equal(cpl.user_data, got);
			hits += cpl.status == 0;
			misses += cpl.status == -ENOENT;
			got++;
		}
	}
	printf("A's %u inserts and B's %u lookups of the next input, waiting together: %u inserted, "
	       "%u hits, %u misses\n", ORDER_N, ORDER_N, inserted, hits, misses);
	assert_int_equal(inserted, ORDER_N);
	assert_int_equal(misses, ORDER_N);
	assert_int_equal(hits, 0);
	flooder_close(&a);
	flooder_close(&b);
	assert_true(lbt_daemon_stop(&env));
}

#define TEST(f) cmocka_unit_test_prestate_setup_teardown(f, lbt_env_setup, lbt_env_teardown, &env)

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST(test_waiting_clients_are_served_one_request_each_in_turn),
		TEST(test_flooding_client_gets_its_share_and_no_more),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
