/*
 * Single-flight (PROTOCOL.md, Ring protocol 15): two clients that run one new input at once
 * compute it once, the other waiting for its layers; a claimant SIGKILLed releases its waiter at
 * once; a claim that never ends holds its waiters only until its bound, and a wait no longer
 * than its own; a client that holds a live claim, or asks about its own, is answered at once,
 * and one whose claim is past its bound waits again; a run whose calls time out still ends its
 * claim; a daemon stopped while it holds a lookup exits cleanly; and,
 * labelled tsan, four threads running the same inputs in different orders compute each about
 * once and always get the plain result.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "layerbank/layerbank.h"
#include "testutil.h"

#define LAYERS 6
#define HIDDEN 16
#define N 7
#define SEED 42
#define THREADS 4
#define INPUTS 24

static struct lbt_env env;
static struct lb_fp_proj *proj;

static int setup(void **state)
{
	lbt_env_setup(state);
	return lbt_daemon_start(&env, LBT_ARGS(LBT_SMALL, "--threads", "2")) > 0 ? 0 : -1;
}

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* ---- the toy model: layer l adds l + 1 to every element, taking ms milliseconds ---- */

struct toy {
	long ms;          /* each layer's time */
	unsigned calls;
};

static int toy_layer(void *ctx, uint32_t layer, const float *in, float *out)
{
	struct toy *t = ctx;
	if (t->ms)
		sleep_ms(t->ms);
	for (uint32_t i = 0; i < N * HIDDEN; i++)
		out[i] = in[i] + (float)(layer + 1);
	t->calls++;
	return 0;
}

/* Input seed: its tokens, its embedding and what every layer makes of it. */
struct input {
	int32_t tok[N];
	float emb[N * HIDDEN], want[N * HIDDEN], h[N * HIDDEN];
};

static void input_make(struct input *in, uint32_t seed)
{
	for (uint32_t i = 0; i < N; i++)
		in->tok[i] = (int32_t)(seed * 100 + i);
	lbt_fill_uniform(in->emb, N * HIDDEN, seed * 2654435761u + 1);
	memcpy(in->want, in->emb, sizeof(in->emb));
	for (uint32_t l = 0; l < LAYERS; l++)
		for (uint32_t i = 0; i < N * HIDDEN; i++)
			in->want[i] += (float)(l + 1);
}

static void key_of(const struct input *in, struct lb_key *k)
{
	memset(k, 0, sizeof(*k));
	assert_int_equal(lb_fingerprint(proj, in->emb, N, k->fp), 0);
	lb_token_hash(in->tok, N, k->exact);
	k->seq_len = N;
}

static const struct lb_model_desc model = { .name = "sflight", .weights_hash = 5,
					    .n_layers = LAYERS, .hidden = HIDDEN,
					    .dtype = LB_DTYPE_F32, .max_seq = 64, .fp_chunks = 4,
					    .fp_seed = SEED };

/* A client of env's daemon with the model registered (*id). */
static struct lb_client *open_client(const char *name, uint32_t *id)
{
	struct lb_client *c;
	assert_int_equal(lbt_connect(&env, name, &c), 0);
	assert_int_equal(lb_register_model(c, &model, id), 0);
	if (!proj)
		proj = lb_fp_proj_new(HIDDEN, 4, SEED, NULL);
	assert_non_null(proj);
	return c;
}

static struct lb_lem_cfg cfg_of(uint32_t id)
{
	return (struct lb_lem_cfg){ .model_id = id, .n_layers = LAYERS, .hidden = HIDDEN,
				    .proj = proj, .seed = 1 };
}

/* Insert every layer of in's output, as a claimant does. */
static void insert_all(struct lb_client *c, uint32_t id, const struct input *in)
{
	struct lb_key k;
	float h[N * HIDDEN];
	struct lb_shape shape = { .dtype = LB_DTYPE_F32, .ndim = 2, .dims = { N, HIDDEN } };
	key_of(in, &k);
	memcpy(h, in->emb, sizeof(h));
	for (uint32_t l = 0; l < LAYERS; l++) {
		for (uint32_t i = 0; i < N * HIDDEN; i++)
			h[i] += (float)(l + 1);
		void *buf = lb_insert_reserve(c, sizeof(h));
		assert_non_null(buf);
		memcpy(buf, h, sizeof(h));
		assert_int_equal(lb_insert_commit(c, id, l, &k, &shape), 0);
	}
}

/* ---- two clients, one input ---- */

/* Said once the first run is computing (its first layer started), so that the second run's
 * lookup comes while the input is being computed, however the threads are scheduled. */
static pthread_mutex_t go_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t go_cv = PTHREAD_COND_INITIALIZER;
static int go;

struct runner {
	struct toy t;                /* first: toy_layer's context */
	struct lb_client *c;
	uint32_t id;
	uint32_t seed;
	int first;                   /* says go when it computes; else waits for go */
	struct lb_lem_result res;
	int rc;
	int same;                    /* the output is the plain one */
};

static int signalling_layer(void *ctx, uint32_t layer, const float *in, float *out)
{
	struct runner *r = ctx;
	if (r->first) {
		pthread_mutex_lock(&go_mu);
		go = 1;
		pthread_cond_broadcast(&go_cv);
		pthread_mutex_unlock(&go_mu);
	}
	return toy_layer(&r->t, layer, in, out);
}

static void *run_one(void *p)
{
	struct runner *r = p;
	struct input in;
	struct lb_lem_cfg cfg = cfg_of(r->id);
	input_make(&in, r->seed);
	memcpy(in.h, in.emb, sizeof(in.h));
	if (!r->first) {
		pthread_mutex_lock(&go_mu);
		while (!go)
			pthread_cond_wait(&go_cv, &go_mu);
		pthread_mutex_unlock(&go_mu);
	}
	r->rc = lb_lem_run(r->c, &cfg, in.tok, N, in.h, signalling_layer, r, &r->res);
	r->same = !memcmp(in.h, in.want, sizeof(in.h));
	return NULL;
}

/* Two lb_lem_run of one new input at once (each layer 50 ms; the second starts once the first
 * computes): the first claims and computes every layer, the other waits and reuses the top
 * one, computing none. */
static void test_one_computes_the_other_waits(void **state)
{
	(void)state;
	struct runner r[2];
	pthread_t th[2];
	go = 0;
	for (int i = 0; i < 2; i++) {
		r[i] = (struct runner){ .t = { 50, 0 }, .seed = 7, .first = i == 0 };
		r[i].c = open_client(i ? "second" : "first", &r[i].id);
	}
	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_create(&th[i], NULL, run_one, &r[i]), 0);
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	const struct lb_lem_result *o = &r[0].res, *w = &r[1].res;
	printf("claimant: %u layers computed; waiter: waited %.1f ms, hit layer %d, %u computed\n",
	       o->layers_computed, w->waited_us / 1e3, w->hit_layer, w->layers_computed);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(r[i].rc, 0);
		assert_true(r[i].same);
		assert_int_equal(r[i].res.cache_error, 0);
	}
	assert_int_equal(o->sflight, LB_LEM_CLAIMED);
	assert_int_equal(o->layers_computed, LAYERS);
	assert_int_equal(o->layers_inserted, LAYERS);
	assert_int_equal(w->sflight, LB_LEM_WAITED);
	assert_int_equal(w->hit_layer, LAYERS - 1);
	assert_int_equal(w->layers_computed, 0);
	assert_true(w->waited_us > 0);
	struct lb_stats st;
	for (int i = 0; i < 2; i++) /* after what the runs sent without waiting */
		assert_int_equal(lb_ping(r[i].c), 0);
	assert_int_equal(lb_stats(r[0].c, &st, sizeof(st)), 0);
	assert_int_equal(st.leases, 0);
	assert_int_equal(st.inserts, LAYERS);
}

/* Without single-flight (LB_LEM_NO_SFLIGHT) nothing is claimed nor waited for. */
static void test_opt_out(void **state)
{
	(void)state;
	uint32_t id;
	struct lb_client *c = open_client("plain", &id);
	struct lb_lem_cfg cfg = cfg_of(id);
	cfg.flags = LB_LEM_NO_SFLIGHT;
	struct input in;
	struct toy t = { 0, 0 };
	struct lb_lem_result res;
	input_make(&in, 8);
	memcpy(in.h, in.emb, sizeof(in.h));
	assert_int_equal(lb_lem_run(c, &cfg, in.tok, N, in.h, toy_layer, &t, &res), 0);
	assert_memory_equal(in.h, in.want, sizeof(in.h));
	assert_int_equal(res.sflight, 0);
	assert_int_equal(res.layers_inserted, LAYERS);
	/* and with it, the cached input is a plain hit: nothing to claim */
	cfg.flags = 0;
	memcpy(in.h, in.emb, sizeof(in.h));
	assert_int_equal(lb_lem_run(c, &cfg, in.tok, N, in.h, toy_layer, &t, &res), 0);
	assert_int_equal(res.sflight, 0);
	assert_int_equal(res.hit_layer, LAYERS - 1);
}

/* ---- a claimant in another process ---- */

/* Fork a process that claims input seed with bound_us and then sleeps: @return its pid once it
 * holds the claim. */
static pid_t claimant(uint32_t seed, uint32_t bound_us)
{
	int p[2];
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	pid_t pid = lbt_fork(&env);
	assert_true(pid >= 0);
	if (pid == 0) {
		struct lb_client *c;
		uint32_t id;
		struct input in;
		struct lb_key k;
		struct lb_hit hit;
		struct lb_sflight sf;
		close(p[0]);
		if (lb_connect(env.sock, "claimant", &c) < 0 || lb_register_model(c, &model, &id) < 0)
			_exit(3);
		proj = lb_fp_proj_new(HIDDEN, 4, SEED, NULL);
		input_make(&in, seed);
		lb_token_hash(in.tok, N, k.exact);
		lb_fingerprint(proj, in.emb, N, k.fp);
		k.seq_len = N;
		int rc = lb_lookup_sflight(c, id, &k, NULL, 0, LB_SFLIGHT_CLAIM, bound_us, &hit, &sf);
		int ok = rc == -ENOENT && sf.claim != 0;
		if (write(p[1], &ok, sizeof(ok)) != (ssize_t)sizeof(ok))
			_exit(4);
		for (;;)
			pause();
	}
	close(p[1]);
	int ok = 0;
	struct pollfd pf = { .fd = p[0], .events = POLLIN };
	assert_int_equal(poll(&pf, 1, 10000), 1);
	assert_int_equal(read(p[0], &ok, sizeof(ok)), (ssize_t)sizeof(ok));
	close(p[0]);
	assert_true(ok);
	return pid;
}

struct delayed_kill {
	pid_t pid;
	long ms;
	double at;   /* when the signal went */
};

static void *kill_later(void *p)
{
	struct delayed_kill *k = p;
	sleep_ms(k->ms);
	k->at = now_ms();
	kill(k->pid, SIGKILL);
	return NULL;
}

/* The claimant SIGKILLed while we wait (bound 10 s): we are answered at once — a miss, with the
 * claim now ours — not at the bound. */
static void test_killed_claimant_releases_at_once(void **state)
{
	(void)state;
	uint32_t id;
	struct lb_client *c = open_client("waiter", &id);
	pid_t pid = claimant(11, LB_SFLIGHT_MAX_US);
	struct input in;
	struct lb_key k;
	struct lb_hit hit;
	struct lb_sflight sf;
	input_make(&in, 11);
	key_of(&in, &k);

	struct delayed_kill dk = { .pid = pid, .ms = 150 };
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, kill_later, &dk), 0);
	double t0 = now_ms();
	int rc = lb_lookup_sflight(c, id, &k, NULL, 0, LB_SFLIGHT_CLAIM | LB_SFLIGHT_WAIT,
				   LB_SFLIGHT_MAX_US, &hit, &sf);
	double t1 = now_ms();
	pthread_join(th, NULL);
	assert_int_equal(lbt_reap(&env, pid), 128 + SIGKILL);
	printf("waited %.1f ms in all, answered %.1f ms after the SIGKILL (bound 10000 ms)\n",
	       t1 - t0, t1 - dk.at);
	assert_int_equal(rc, -ENOENT);
	assert_true(sf.claim != 0);
	assert_int_equal(sf.flags, LB_SFLIGHT_WAITED);
	assert_true(t1 >= dk.at);
	/* The daemon learns of the death from the process's pidfd, at once: far below the
	 * bound, and no longer than a loaded machine takes to tell it. */
	assert_true(t1 - dk.at < 400);
	assert_int_equal(lb_release(c, sf.claim), 0);
}

/* A claimant that lives on and never releases: its claim's bound (300 ms) ends the wait of a
 * client that would wait 10 s, which then claims the input itself; and a client that waits
 * only 200 ms for a claim of 10 s is answered at 200 ms, BUSY, without a claim. */
static void test_stuck_claim_times_out_at_its_bound(void **state)
{
	(void)state;
	uint32_t id;
	struct lb_client *c = open_client("waiter", &id);
	struct input in;
	struct lb_key k;
	struct lb_hit hit;
	struct lb_sflight sf;

	pid_t pid = claimant(12, 300000);
	double t0 = now_ms();
	input_make(&in, 12);
	key_of(&in, &k);
	int rc = lb_lookup_sflight(c, id, &k, NULL, 0, LB_SFLIGHT_CLAIM | LB_SFLIGHT_WAIT,
				   LB_SFLIGHT_MAX_US, &hit, &sf);
	double waited = now_ms() - t0;
	printf("a claim of 300 ms held the waiter %.1f ms (daemon: %.1f ms)\n", waited,
	       sf.waited_us / 1e3);
	assert_int_equal(rc, -ENOENT);
	assert_true(sf.claim != 0); /* the stuck claim is over: the input is ours to compute */
	assert_int_equal(sf.flags, LB_SFLIGHT_WAITED);
	/* The claim was taken before the wait began: less than 300 ms, but for a late timer. */
	assert_true(sf.waited_us >= 200000 && sf.waited_us < 600000);
	assert_true(waited < 900);
	assert_int_equal(lb_release(c, sf.claim), 0);
	lbt_kill(&env, pid);

	pid = claimant(13, LB_SFLIGHT_MAX_US);
	input_make(&in, 13);
	key_of(&in, &k);
	t0 = now_ms();
	rc = lb_lookup_sflight(c, id, &k, NULL, 0, LB_SFLIGHT_CLAIM | LB_SFLIGHT_WAIT, 200000,
			       &hit, &sf);
	waited = now_ms() - t0;
	printf("a wait of 200 ms for a claim of 10 s: %.1f ms (daemon: %.1f ms)\n", waited,
	       sf.waited_us / 1e3);
	assert_int_equal(rc, -ENOENT);
	assert_int_equal(sf.claim, 0);
	assert_int_equal(sf.flags, LB_SFLIGHT_WAITED | LB_SFLIGHT_BUSY);
	assert_true(sf.waited_us >= 200000 && sf.waited_us < 600000);
	lbt_kill(&env, pid);
}

/* Answered at once: a lookup of an input this client claims (no second claim, not BUSY); a
 * client that holds a claim, waiting for another's (BUSY: two clients waiting for each other's
 * claims would be freed by their bounds only); WAIT without CLAIM on an input nobody claims. */
static void test_answered_at_once(void **state)
{
	(void)state;
	uint32_t ia, ib;
	struct lb_client *a = open_client("a", &ia), *b = open_client("b", &ib);
	struct input x, y, z;
	struct lb_key kx, ky, kz;
	struct lb_hit hit;
	struct lb_sflight sa, sb, s;
	const uint32_t both = LB_SFLIGHT_CLAIM | LB_SFLIGHT_WAIT;
	input_make(&x, 21);
	input_make(&y, 22);
	input_make(&z, 23);
	key_of(&x, &kx);
	key_of(&y, &ky);
	key_of(&z, &kz);

	assert_int_equal(lb_lookup_sflight(a, ia, &kx, NULL, 0, both, 500000, &hit, &sa), -ENOENT);
	assert_true(sa.claim != 0);
	assert_int_equal(lb_lookup_sflight(b, ib, &ky, NULL, 0, both, 500000, &hit, &sb), -ENOENT);
	assert_true(sb.claim != 0);
	double t0 = now_ms();
	assert_int_equal(lb_lookup_sflight(a, ia, &kx, NULL, 0, both, 500000, &hit, &s), -ENOENT);
	assert_int_equal(s.claim, 0);
	assert_int_equal(s.flags, 0);
	assert_int_equal(lb_lookup_sflight(a, ia, &ky, NULL, 0, both, 500000, &hit, &s), -ENOENT);
	assert_int_equal(s.claim, 0);
	assert_int_equal(s.flags, LB_SFLIGHT_BUSY);
	assert_int_equal(lb_lookup_sflight(b, ib, &kz, NULL, 0, LB_SFLIGHT_WAIT, 500000, &hit, &s),
			 -ENOENT);
	assert_int_equal(s.claim, 0);
	assert_int_equal(s.flags, 0);
	assert_true(now_ms() - t0 < 400);
	/* The claimant inserts and releases: a plain hit for everyone, nothing to claim. */
	insert_all(a, ia, &x);
	assert_int_equal(lb_release(a, sa.claim), 0);
	assert_int_equal(lb_lookup_sflight(b, ib, &kx, NULL, 0, both, 500000, &hit, &s), 0);
	assert_int_equal(hit.layer, LAYERS - 1);
	assert_int_equal(s.claim, 0);
	assert_int_equal(s.flags, 0);
	assert_int_equal(lb_release(b, hit.lease), 0);
	/* A claim's handle is no lease: nothing to REPORT; a second RELEASE is refused. */
	assert_int_equal(lb_report(b, sb.claim, 0.0f), -EINVAL);
	assert_int_equal(lb_release(b, sb.claim), 0);
	assert_int_equal(lb_release(b, sb.claim), -EINVAL);
	/* Bad arguments. */
	assert_int_equal(lb_lookup_sflight(a, ia, &kz, NULL, 0, 0, 500000, &hit, &s), -EINVAL);
	assert_int_equal(lb_lookup_sflight(a, ia, &kz, NULL, 0, 4, 500000, &hit, &s), -EINVAL);
	assert_int_equal(lb_lookup_sflight(a, ia, &kz, NULL, 0, both, 0, &hit, &s), -EINVAL);
	assert_int_equal(lb_lookup_sflight(a, ia, &kz, NULL, 0, both, LB_SFLIGHT_MAX_US + 1, &hit,
					   &s), -EINVAL);
}

/* A claim past its bound does not count as held: its holder may wait for another's again. */
static void test_expired_claim_does_not_stop_waiting(void **state)
{
	(void)state;
	uint32_t ia, ib;
	struct lb_client *a = open_client("a", &ia), *b = open_client("b", &ib);
	struct input x, y;
	struct lb_key kx, ky;
	struct lb_hit hit;
	struct lb_sflight sa, sb, s;
	input_make(&x, 31);
	input_make(&y, 32);
	key_of(&x, &kx);
	key_of(&y, &ky);
	assert_int_equal(lb_lookup_sflight(a, ia, &kx, NULL, 0, LB_SFLIGHT_CLAIM, 1000, &hit, &sa),
			 -ENOENT);
	assert_true(sa.claim != 0);
	sleep_ms(5); /* a's claim is past its bound, still held */
	assert_int_equal(lb_lookup_sflight(b, ib, &ky, NULL, 0, LB_SFLIGHT_CLAIM, 1000000, &hit, &sb),
			 -ENOENT);
	assert_true(sb.claim != 0);
	/* a waits for b's claim (100 ms), which it could not while its own was live */
	assert_int_equal(lb_lookup_sflight(a, ia, &ky, NULL, 0, LB_SFLIGHT_WAIT, 100000, &hit, &s),
			 -ENOENT);
	assert_int_equal(s.flags, LB_SFLIGHT_WAITED | LB_SFLIGHT_BUSY);
	assert_true(s.waited_us >= 100000);
	assert_int_equal(lb_release(a, sa.claim), 0);
	assert_int_equal(lb_release(b, sb.claim), 0);
}

/* The layer callback of a run whose daemon stops (SIGSTOP) while it computes its first layer. */
struct stopper {
	struct toy t;   /* first: toy_layer's context */
	pid_t daemon;
	int stopped;
};

static int stopping_layer(void *ctx, uint32_t layer, const float *in, float *out)
{
	struct stopper *s = ctx;
	if (!s->stopped) {
		s->stopped = 1;
		kill(s->daemon, SIGSTOP);
	}
	return toy_layer(&s->t, layer, in, out);
}

/*
 * A run whose daemon is stopped still ends its claim: here the daemon stops (SIGSTOP) during the
 * run, its inserts (not waited for) and the claim's release wait in the ring; the daemon, slow
 * rather than gone, comes back (SIGCONT) and must find the claim released behind the run's
 * inserts, or the others would wait for it until its bound (10 s on a client's first run).
 */
static void test_timed_out_run_releases_its_claim(void **state)
{
	(void)state;
	uint32_t ia, ib;
	struct lb_client *a = open_client("stopped", &ia), *b = open_client("waiter", &ib);
	struct lb_lem_cfg cfg = cfg_of(ia);
	struct input x;
	struct stopper st = { .daemon = env.pid };
	struct lb_lem_result res;
	input_make(&x, 33);
	memcpy(x.h, x.emb, sizeof(x.h));
	lb_set_wait_us(a, 20000);
	int rc = lb_lem_run(a, &cfg, x.tok, N, x.h, stopping_layer, &st, &res);
	kill(env.pid, SIGCONT);
	assert_int_equal(rc, 0);
	assert_memory_equal(x.h, x.want, sizeof(x.h));
	printf("the run: sflight %u, cache error %d, %u layers inserted\n", res.sflight,
	       res.cache_error, res.layers_inserted);
	assert_int_equal(res.sflight, LB_LEM_CLAIMED);
	/* Its inserts are not waited for: the run may end without having waited on the daemon. */
	assert_true(res.cache_error == 0 || res.cache_error == -ETIMEDOUT);

	struct lb_key k;
	struct lb_hit hit;
	struct lb_sflight s;
	key_of(&x, &k);
	double t0 = now_ms();
	rc = lb_lookup_sflight(b, ib, &k, NULL, 0, LB_SFLIGHT_CLAIM | LB_SFLIGHT_WAIT, 5000000,
			       &hit, &s);
	double waited = now_ms() - t0;
	printf("then a lookup of its input: %d after %.1f ms\n", rc, waited);
	assert_true(waited < 1000);
	assert_int_equal(s.flags & LB_SFLIGHT_BUSY, 0);
	if (rc == 0)
		assert_int_equal(lb_release(b, hit.lease), 0);
	if (s.claim)
		assert_int_equal(lb_release(b, s.claim), 0);
}

/* A held lookup, and the daemon stopped (SIGTERM) under it: the waiter learns the daemon is
 * gone at once, and the daemon exits cleanly (status 0: under ASan, nothing leaked). */
struct held_lookup {
	struct lb_client *c;
	uint32_t id;
	struct lb_key k;
	int rc;
	double ms;
};

static void *lookup_held(void *p)
{
	struct held_lookup *h = p;
	struct lb_hit hit;
	struct lb_sflight sf;
	double t0 = now_ms();
	h->rc = lb_lookup_sflight(h->c, h->id, &h->k, NULL, 0, LB_SFLIGHT_WAIT, 5000000, &hit, &sf);
	h->ms = now_ms() - t0;
	return NULL;
}

static void test_daemon_stopped_while_holding(void **state)
{
	(void)state;
	struct held_lookup h = { .rc = 1 };
	struct input in;
	struct lb_hit hit;
	struct lb_sflight sf;
	uint32_t ia;
	struct lb_client *a = open_client("claimant", &ia);
	h.c = open_client("waiter", &h.id);
	input_make(&in, 34);
	key_of(&in, &h.k);
	assert_int_equal(lb_lookup_sflight(a, ia, &h.k, NULL, 0, LB_SFLIGHT_CLAIM, 5000000, &hit, &sf),
			 -ENOENT);
	assert_true(sf.claim != 0);
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, lookup_held, &h), 0);
	sleep_ms(100);
	assert_true(lbt_daemon_stop(&env));
	pthread_join(th, NULL);
	printf("the held lookup: %d after %.1f ms\n", h.rc, h.ms);
	assert_true(h.rc == -ECONNRESET || h.rc == -EPIPE || h.rc == -ENOTCONN);
	assert_true(h.ms < 4000);
}

/* ---- many threads (tsan) ---- */

struct fleet_worker {
	uint32_t index;
	struct lb_client *c;
	uint32_t id;
	unsigned computed_runs, busy, waited, claimed, wrong;
	int rc;
};

static void *fleet_main(void *p)
{
	struct fleet_worker *w = p;
	struct lb_lem_cfg cfg = cfg_of(w->id);
	struct toy t = { 2, 0 };
	struct input in;
	/* Every thread runs every input; each starts at another place of the list, so that most
	 * inputs are run by two or more threads close together. */
	for (uint32_t j = 0; j < INPUTS && !w->rc; j++) {
		uint32_t seed = 100 + (j + w->index * 2) % INPUTS;
		struct lb_lem_result res;
		input_make(&in, seed);
		memcpy(in.h, in.emb, sizeof(in.h));
		w->rc = lb_lem_run(w->c, &cfg, in.tok, N, in.h, toy_layer, &t, &res);
		w->wrong += memcmp(in.h, in.want, sizeof(in.h)) != 0;
		w->computed_runs += res.layers_computed > 0;
		w->busy += !!(res.sflight & LB_LEM_BUSY);
		w->waited += !!(res.sflight & LB_LEM_WAITED);
		w->claimed += !!(res.sflight & LB_LEM_CLAIMED);
		if (res.cache_error)
			w->rc = res.cache_error;
	}
	return NULL;
}

static void test_threads(void **state)
{
	(void)state;
	struct fleet_worker w[THREADS];
	pthread_t th[THREADS];
	unsigned computed = 0, busy = 0, waited = 0, claimed = 0;
	for (uint32_t i = 0; i < THREADS; i++) {
		w[i] = (struct fleet_worker){ .index = i };
		w[i].c = open_client("fleet", &w[i].id);
	}
	for (uint32_t i = 0; i < THREADS; i++)
		assert_int_equal(pthread_create(&th[i], NULL, fleet_main, &w[i]), 0);
	for (uint32_t i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	for (uint32_t i = 0; i < THREADS; i++) {
		assert_int_equal(w[i].rc, 0);
		assert_int_equal(w[i].wrong, 0);
		computed += w[i].computed_runs;
		busy += w[i].busy;
		waited += w[i].waited;
		claimed += w[i].claimed;
	}
	printf("%u runs of %u inputs: %u computed (%u claimed, %u alongside a claimant), %u waited\n",
	       THREADS * INPUTS, INPUTS, computed, claimed, busy, waited);
	/* Each input is claimed by its first lookup and computed by its claimant; a second
	 * computation only when a wait or a claim ran out (a claimant four times slower than its
	 * usual pace on a loaded machine). Without single-flight: 72 of the 96 runs compute. */
	assert_true(claimed >= INPUTS);
	assert_true(computed >= INPUTS);
	assert_true(computed - INPUTS <= INPUTS / 4);
	struct lb_stats st;
	for (uint32_t i = 0; i < THREADS; i++) /* after what the runs sent without waiting */
		assert_int_equal(lb_ping(w[i].c), 0);
	assert_int_equal(lb_stats(w[0].c, &st, sizeof(st)), 0);
	assert_int_equal(st.leases, 0);
	assert_int_equal(st.entries, INPUTS * LAYERS);
}

#define TEST(f) cmocka_unit_test_prestate_setup_teardown(f, setup, lbt_env_teardown, &env)

int main(int argc, char **argv)
{
	const struct CMUnitTest all[] = {
		TEST(test_one_computes_the_other_waits),
		TEST(test_opt_out),
		TEST(test_killed_claimant_releases_at_once),
		TEST(test_stuck_claim_times_out_at_its_bound),
		TEST(test_answered_at_once),
		TEST(test_expired_claim_does_not_stop_waiting),
		TEST(test_timed_out_run_releases_its_claim),
		TEST(test_daemon_stopped_while_holding),
	};
	const struct CMUnitTest threads[] = { TEST(test_threads) };
	int rc;
	/* `test_sflight threads`: the concurrency test, a test of its own (label tsan); the rest
	 * measure times that a ThreadSanitizer build would stretch. */
	if (argc > 1 && !strcmp(argv[1], "threads"))
		rc = cmocka_run_group_tests(threads, NULL, NULL);
	else
		rc = cmocka_run_group_tests(all, NULL, NULL);
	lb_fp_proj_free(proj);
	return rc;
}
