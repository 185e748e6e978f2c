/*
 * The layer execution manager (lb_lem_run): hits at every depth give the plain result, inserts
 * follow cache_layers, revalidation REPORTs, a dead daemon only costs time, approximations do
 * not compound; partial reuse of another length (lb_lem_run_rows) on stories260K: recomputing
 * every position gives the plain result bit for bit, anything less is never served as exact,
 * entries carry token ids the daemon checks; and score --cache of
 * layerbank-worker on stories260K: the second run is a full hit with a bit-identical NLL.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client_internal.h"
#include "layerbank/layerbank.h"
#include "scorer.h"
#include "testutil.h"

#define MODEL LB_DATA_DIR "/stories260K.bin"
#define TOK LB_DATA_DIR "/tok512.bin"
#define VAL LB_DATA_DIR "/tinystories_val.txt"

#define TOY_LAYERS 6
#define TOY_HIDDEN 16
#define TOY_N 7
#define TOY_SEED 42

static char worker_path[PATH_MAX];
static struct lbt_env env;      /* every test's fixture: the daemon, the client */
static struct lb_client *client; /* toy_register's, closed by the teardown */

/* A test's daemon, started with args before the test. */
static int setup_with(void **state, const char *const *args)
{
	lbt_env_setup(state);
	client = NULL;
	return lbt_daemon_start(&env, args) > 0 ? 0 : -1;
}

static int setup(void **state)
{
	return setup_with(state, LBT_ARGS(LBT_SMALL));
}

static void kill_daemon(void)
{
	assert_true(lbt_daemon_kill(&env));
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- the toy model: layer l adds l + 1 to every element ---- */

struct toy {
	uint32_t n;
	unsigned calls;
};

static int toy_layer(void *ctx, uint32_t layer, const float *in, float *out)
{
	struct toy *t = ctx;
	for (uint32_t i = 0; i < t->n * TOY_HIDDEN; i++)
		out[i] = in[i] + (float)(layer + 1);
	t->calls++;
	return 0;
}

/* An embedding of n rows unique to seed, and its tokens. */
static void toy_input(uint32_t seed, int32_t *tokens, float *h)
{
	for (uint32_t i = 0; i < TOY_N; i++)
		tokens[i] = (int32_t)(seed * 100 + i);
	lbt_fill_uniform(h, TOY_N * TOY_HIDDEN, seed * 2654435761u + 1);
}

static void toy_plain(float *h)
{
	struct toy t = { TOY_N, 0 };
	for (uint32_t l = 0; l < TOY_LAYERS; l++)
		toy_layer(&t, l, h, h);
}

/* One input of the toy: its tokens and embedding, the plain output of all layers on it, and h,
 * what a run starts from (the embedding) and leaves its output in. */
struct toy_io {
	int32_t tok[TOY_N];
	float emb[TOY_N * TOY_HIDDEN];  /* [TOY_N][TOY_HIDDEN], as want and h */
	float want[TOY_N * TOY_HIDDEN];
	float h[TOY_N * TOY_HIDDEN];
};

static void toy_io(struct toy_io *io, uint32_t seed)
{
	toy_input(seed, io->tok, io->emb);
	memcpy(io->want, io->emb, sizeof(io->emb));
	toy_plain(io->want);
}

/* lb_lem_run of io's input from its embedding, with cfg and the layer callback fn(ctx). */
static int toy_run(struct toy_io *io, const struct lb_lem_cfg *cfg, lb_layer_fn fn, void *ctx,
		   struct lb_lem_result *res)
{
	memcpy(io->h, io->emb, sizeof(io->h));
	return lb_lem_run(client, cfg, io->tok, TOY_N, io->h, fn, ctx, res);
}

static struct lb_fp_proj *toy_proj;

static uint32_t toy_register(void)
{
	assert_int_equal(lbt_connect(&env, "test_lem", &client), 0);
	struct lb_model_desc d = { .name = "toy", .weights_hash = 7, .n_layers = TOY_LAYERS,
				   .hidden = TOY_HIDDEN, .dtype = LB_DTYPE_F32, .max_seq = 64,
				   .fp_chunks = 4, .fp_seed = TOY_SEED };
	uint32_t id = 0;
	assert_int_equal(lb_register_model(client, &d, &id), 0);
	if (!toy_proj)
		toy_proj = lb_fp_proj_new(TOY_HIDDEN, 4, TOY_SEED, NULL);
	assert_non_null(toy_proj);
	return id;
}

static struct lb_lem_cfg toy_cfg(uint32_t id, const uint8_t *layers, double reval)
{
	return (struct lb_lem_cfg){ .model_id = id, .n_layers = TOY_LAYERS, .hidden = TOY_HIDDEN,
				    .proj = toy_proj, .cache_layers = layers, .revalidate = reval,
				    .seed = 1 };
}

/* c NULL and bad arguments */
static void test_plain_and_bad_args(void **state)
{
	(void)state;
	int32_t tok[TOY_N];
	float h[TOY_N * TOY_HIDDEN], want[TOY_N * TOY_HIDDEN];
	toy_input(1, tok, h);
	memcpy(want, h, sizeof(h));
	toy_plain(want);
	struct toy t = { TOY_N, 0 };
	struct lb_lem_cfg cfg = toy_cfg(0, NULL, 0);
	cfg.proj = NULL;
	struct lb_lem_result res;
	assert_int_equal(lb_lem_run(NULL, &cfg, tok, TOY_N, h, toy_layer, &t, &res), 0);
	assert_memory_equal(h, want, sizeof(h));
	assert_int_equal(res.hit_layer, -1);
	assert_int_equal(res.layers_computed, TOY_LAYERS);
	assert_int_equal(res.layers_inserted, 0);
	assert_int_equal(lb_lem_run(NULL, &cfg, tok, 0, h, toy_layer, &t, &res), -EINVAL);
	assert_int_equal(lb_lem_run(NULL, NULL, tok, TOY_N, h, toy_layer, &t, &res), -EINVAL);
	assert_int_equal(lb_lem_run(NULL, &cfg, tok, TOY_N, h, NULL, &t, &res), -EINVAL);
	cfg.n_layers = 0;
	assert_int_equal(lb_lem_run(NULL, &cfg, tok, TOY_N, h, toy_layer, &t, &res), -EINVAL);
}

/* A hit at every depth k (layers 0..k inserted by a first run) gives the plain output. */
static void test_hit_at_every_depth(void **state)
{
	(void)state;
	uint32_t id = toy_register();
	for (uint32_t k = 0; k < TOY_LAYERS; k++) {
		struct toy_io io;
		uint8_t layers[TOY_LAYERS];
		for (uint32_t l = 0; l < TOY_LAYERS; l++)
			layers[l] = l <= k;
		toy_io(&io, 10 + k);
		struct lb_lem_cfg cfg = toy_cfg(id, layers, 0);
		struct lb_lem_result res;
		struct toy t = { TOY_N, 0 };

		assert_int_equal(toy_run(&io, &cfg, toy_layer, &t, &res), 0);
		assert_memory_equal(io.h, io.want, sizeof(io.h));
		assert_int_equal(res.hit_layer, -1);
		assert_int_equal(res.layers_computed, TOY_LAYERS);
		assert_int_equal(res.layers_inserted, k + 1);
		assert_int_equal(res.cache_error, 0);

		t.calls = 0;
		assert_int_equal(toy_run(&io, &cfg, toy_layer, &t, &res), 0);
		assert_memory_equal(io.h, io.want, sizeof(io.h));
		assert_int_equal(res.hit_layer, (int32_t)k);
		assert_int_equal(res.hit_hamming, 0);
		assert_int_equal(res.layers_computed, TOY_LAYERS - 1 - k);
		assert_int_equal(t.calls, TOY_LAYERS - 1 - k);
		assert_int_equal(res.layers_inserted, 0);
		assert_int_equal(res.reports, 0);

		/* all layers flagged: from the hit's view straight into staging, the rest inserted */
		struct lb_lem_cfg all = toy_cfg(id, NULL, 0);
		assert_int_equal(toy_run(&io, &all, toy_layer, &t, &res), 0);
		assert_memory_equal(io.h, io.want, sizeof(io.h));
		assert_int_equal(res.hit_layer, (int32_t)k);
		assert_int_equal(res.layers_inserted, TOY_LAYERS - 1 - k);
		assert_int_equal(toy_run(&io, &all, toy_layer, &t, &res), 0);
		assert_memory_equal(io.h, io.want, sizeof(io.h));
		assert_int_equal(res.hit_layer, TOY_LAYERS - 1);
		assert_int_equal(res.layers_computed, 0);
	}
	struct lb_stats st;
	assert_int_equal(lb_ping(client), 0); /* after what the runs sent without waiting */
	assert_int_equal(lb_stats(client, &st, sizeof(st)), 0);
	assert_int_equal(st.leases, 0); /* every lease released */
}

/* A client over its insert quota (client-insert-bytes) is told -EDQUOT: the run goes on, the
 * layers past the quota are just not inserted, and lookups still serve it. */
static void test_insert_quota_is_not_an_error(void **state)
{
	(void)state;
	/* Three toy entries: 128 header bytes, 7 x 16 floats and the 7 token ids each, 604 bytes,
	 * 640 in the arena's 64-byte units. */
	const char *const args[] = { LBT_SMALL, "--client-insert-bytes", "1920", NULL };
	kill_daemon();
	assert_true(lbt_daemon_start(&env, args) > 0);
	uint32_t id = toy_register();
	struct lb_lem_cfg cfg = toy_cfg(id, NULL, 0);
	struct toy_io io;
	struct lb_lem_result res;
	struct toy t = { TOY_N, 0 };
	struct lb_stats st;

	toy_io(&io, 77);
	assert_int_equal(toy_run(&io, &cfg, toy_layer, &t, &res), 0);
	assert_memory_equal(io.h, io.want, sizeof(io.h));
	assert_int_equal(res.layers_computed, TOY_LAYERS);
	/* Handed over without waiting: the daemon took the first three, refused the others
	 * (which a ring call made after them, served in order, waits for). */
	assert_int_equal(res.layers_inserted, TOY_LAYERS);
	assert_int_equal(res.cache_error, 0);
	assert_int_equal(lb_ping(client), 0); /* after what the runs sent without waiting */
	assert_int_equal(lb_stats(client, &st, sizeof(st)), 0);
	assert_int_equal(st.quota_refusals, 3);
	assert_int_equal(st.entries, 3);
	/* The next run reuses layer 2, and the quota refuses the layers above again. */
	assert_int_equal(toy_run(&io, &cfg, toy_layer, &t, &res), 0);
	assert_memory_equal(io.h, io.want, sizeof(io.h));
	assert_int_equal(res.hit_layer, 2);
	assert_int_equal(res.cache_error, 0);
	assert_int_equal(lb_ping(client), 0); /* after what the runs sent without waiting */
	assert_int_equal(lb_stats(client, &st, sizeof(st)), 0);
	assert_int_equal(st.quota_refusals, 3 + 3);
	assert_int_equal(st.entries, 3);
}

/* revalidate 1: every hit recomputes layers 0..its layer from the embedding and REPORTs drift
 * 0: nothing is invalidated. */
static void test_revalidate_reports(void **state)
{
	(void)state;
	uint32_t id = toy_register();
	const uint32_t depth[] = { 0, 3, TOY_LAYERS - 1 };
	for (unsigned i = 0; i < 3; i++) {
		uint32_t k = depth[i];
		struct toy_io io;
		uint8_t layers[TOY_LAYERS];
		for (uint32_t l = 0; l < TOY_LAYERS; l++)
			layers[l] = l <= k;
		toy_io(&io, 50 + k);
		struct lb_lem_cfg cfg = toy_cfg(id, layers, 1.0);
		struct lb_lem_result res;
		struct toy t = { TOY_N, 0 };
		assert_int_equal(toy_run(&io, &cfg, toy_layer, &t, &res), 0);
		assert_int_equal(res.reports, 0);
		t.calls = 0;
		assert_int_equal(toy_run(&io, &cfg, toy_layer, &t, &res), 0);
		assert_memory_equal(io.h, io.want, sizeof(io.h));
		assert_int_equal(res.hit_layer, (int32_t)k);
		assert_int_equal(res.revalidated, k + 1);
		assert_int_equal(res.reports, 1);
		assert_int_equal(t.calls, TOY_LAYERS); /* the layers above k, and 0..k again */
		assert_int_equal(res.cache_error, 0);
	}
	struct lb_stats st;
	assert_int_equal(lb_ping(client), 0); /* after what the runs sent without waiting */
	assert_int_equal(lb_stats(client, &st, sizeof(st)), 0);
	assert_int_equal(st.invalidations, 0);
	assert_int_equal(st.leases, 0);
}

/* A daemon killed between two runs of one client: the second run completes plain. */
static void test_daemon_killed_mid_run(void **state)
{
	(void)state;
	uint32_t id = toy_register();
	struct toy_io io;
	toy_io(&io, 90);
	struct lb_lem_cfg cfg = toy_cfg(id, NULL, 1.0);
	struct lb_lem_result res;
	struct toy t = { TOY_N, 0 };
	assert_int_equal(toy_run(&io, &cfg, toy_layer, &t, &res), 0);
	assert_int_equal(res.layers_inserted, TOY_LAYERS);
	kill_daemon();
	double t0 = now_s();
	for (int i = 0; i < 2; i++) {
		assert_int_equal(toy_run(&io, &cfg, toy_layer, &t, &res), 0);
		assert_memory_equal(io.h, io.want, sizeof(io.h));
		assert_int_equal(res.hit_layer, -1);
		assert_int_equal(res.layers_computed, TOY_LAYERS);
		assert_true(res.cache_error < 0);
	}
	assert_true(now_s() - t0 < 10.0); /* one failed call per run, each at most ~1 s */
}

/* ---- the daemon killed during a run, from inside a layer callback ---- */

struct killer {
	struct toy t;      /* first: toy_layer's context */
	uint32_t at_layer; /* the layer whose computation kills the daemon */
	int armed;         /* kill on the next computation of at_layer */
	int killed;
};

static int killer_layer(void *ctx, uint32_t layer, const float *in, float *out)
{
	struct killer *k = ctx;
	int rc = toy_layer(&k->t, layer, in, out);
	if (k->armed && layer == k->at_layer) {
		k->armed = 0;
		k->killed = 1;
		kill_daemon(); /* SIGKILL and reaped: gone before the callback returns */
	}
	return rc;
}

/*
 * A first run inserts layers 0..1 of input seed (or nothing, miss 1); the second run (every layer
 * flagged) kills the daemon while computing layer 2: it completes, right, in bounded time; a
 * third run with the same client completes plain and reports the fallback.
 */
static void kill_during_run(uint32_t seed, int miss)
{
	uint32_t id = toy_register();
	struct toy_io io;
	toy_io(&io, seed);
	const uint8_t first_layers[TOY_LAYERS] = { 1, 1, 0, 0, 0, 0 };
	struct lb_lem_cfg cfg1 = toy_cfg(id, first_layers, 0);
	struct lb_lem_cfg cfg = toy_cfg(id, NULL, 0);
	struct lb_lem_result res;
	struct killer k = { { TOY_N, 0 }, 2, 0, 0 };

	if (!miss) {
		assert_int_equal(toy_run(&io, &cfg1, killer_layer, &k, &res), 0);
		assert_memory_equal(io.h, io.want, sizeof(io.h));
		assert_int_equal(res.layers_inserted, 2);
		assert_int_equal(res.cache_error, 0);
	}

	k.armed = 1;
	k.t.calls = 0;
	double t0 = now_s();
	assert_int_equal(toy_run(&io, &cfg, killer_layer, &k, &res), 0);
	double dt = now_s() - t0;
	assert_true(k.killed);
	assert_true(dt < 5.0); /* no hang: a failed call or two, each at most ~1 s */
	assert_memory_equal(io.h, io.want, sizeof(io.h));
	/* Past the kill the run waits on the daemon for nothing (its inserts are not waited
	 * for), so it may or may not have seen the death (res.cache_error): the next run does. */
	if (miss) {
		assert_int_equal(res.hit_layer, -1);
		assert_int_equal(res.layers_computed, TOY_LAYERS);
		assert_int_equal(k.t.calls, TOY_LAYERS);
	} else {
		assert_int_equal(res.hit_layer, 1);
		assert_int_equal(res.layers_computed, TOY_LAYERS - 2);
		assert_int_equal(k.t.calls, TOY_LAYERS - 2);
	}

	/* the next run of the same client: plain from the start */
	k.t.calls = 0;
	t0 = now_s();
	assert_int_equal(toy_run(&io, &cfg, killer_layer, &k, &res), 0);
	assert_true(now_s() - t0 < 5.0);
	assert_memory_equal(io.h, io.want, sizeof(io.h));
	assert_int_equal(res.hit_layer, -1);
	assert_int_equal(res.layers_computed, TOY_LAYERS);
	assert_int_equal(k.t.calls, TOY_LAYERS);
	assert_int_equal(res.layers_inserted, 0);
	assert_true(res.cache_error < 0);
}

/* Killed while layer 2 reads the hit's arena view (layer 1) and writes into staging. */
static void test_daemon_killed_in_callback_hit(void **state)
{
	(void)state;
	kill_during_run(95, 0);
}

/* Killed on a miss, after layers 0 and 1 were committed, while layer 2 is computed into staging. */
static void test_daemon_killed_in_callback_miss(void **state)
{
	(void)state;
	kill_during_run(96, 1);
}

/* ---- drift: a recomputation far from the cached layer invalidates it ---- */

static int setup_drift(void **state)
{
	return setup_with(state, LBT_ARGS(LBT_SMALL, "--drift-max", "0.01"));
}

/* 0: the toy; 1: layer drift_layer negated (drift 2); 2: one element of it off by 0.01. */
static int drift_mode;
static uint32_t drift_layer;

static int drift_toy_layer(void *ctx, uint32_t layer, const float *in, float *out)
{
	struct toy *t = ctx;
	int rc = toy_layer(t, layer, in, out);
	if (layer == drift_layer && drift_mode == 1)
		for (uint32_t i = 0; i < t->n * TOY_HIDDEN; i++)
			out[i] = -out[i];
	else if (layer == drift_layer && drift_mode == 2)
		out[0] += 0.01f;
	return rc;
}

static uint64_t invalidations(void)
{
	struct lb_stats st;
	assert_int_equal(lb_ping(client), 0); /* after what the runs sent without waiting */
	assert_int_equal(lb_stats(client, &st, sizeof(st)), 0);
	return st.invalidations;
}

static void test_drift_invalidates(void **state)
{
	(void)state;
	const uint32_t L = 3;
	uint32_t id = toy_register();
	struct toy_io io;
	uint8_t layers[TOY_LAYERS];
	for (uint32_t l = 0; l < TOY_LAYERS; l++)
		layers[l] = l <= L;
	toy_io(&io, 120);
	struct lb_lem_cfg ins = toy_cfg(id, layers, 0), rev = toy_cfg(id, layers, 1.0);
	struct lb_lem_result res;
	struct toy t = { TOY_N, 0 };
	drift_layer = L;

	drift_mode = 0;
	assert_int_equal(toy_run(&io, &ins, drift_toy_layer, &t, &res), 0);
	assert_int_equal(res.layers_inserted, L + 1);

	/* small drifts (identical, then one element off by 0.01): reported, not invalidated */
	for (int mode = 0; mode <= 2; mode += 2) {
		drift_mode = mode;
		assert_int_equal(toy_run(&io, &rev, drift_toy_layer, &t, &res), 0);
		assert_memory_equal(io.h, io.want, sizeof(io.h));
		assert_int_equal(res.hit_layer, (int32_t)L);
		assert_int_equal(res.revalidated, L + 1);
		assert_int_equal(res.reports, 1);
		assert_int_equal(res.cache_error, 0);
		assert_int_equal(invalidations(), 0);
	}

	/* a large drift: the hit is still used for this run, then invalidated */
	drift_mode = 1;
	assert_int_equal(toy_run(&io, &rev, drift_toy_layer, &t, &res), 0);
	assert_memory_equal(io.h, io.want, sizeof(io.h)); /* layer L came from the cache, not recomputed */
	assert_int_equal(res.hit_layer, (int32_t)L);
	assert_int_equal(res.revalidated, L + 1);
	assert_int_equal(res.reports, 1);
	assert_int_equal(res.cache_error, 0);
	assert_true(invalidations() >= 1);

	/* the next lookup no longer reaches layer L */
	drift_mode = 0;
	assert_int_equal(toy_run(&io, &ins, drift_toy_layer, &t, &res), 0);
	assert_memory_equal(io.h, io.want, sizeof(io.h));
	assert_true(res.hit_layer < (int32_t)L);
	assert_int_equal(res.cache_error, 0);
	assert_int_equal(invalidations(), 1);
	struct lb_stats st;
	assert_int_equal(lb_ping(client), 0); /* after what the runs sent without waiting */
	assert_int_equal(lb_stats(client, &st, sizeof(st)), 0);
	assert_int_equal(st.leases, 0);
}

/*
 * No compounding: layers computed on top of a near-duplicate's hit are inserted as approximate,
 * so a repeat of the near-duplicate's own tokens gets them at the hit's distance, never as
 * exact; a lookup that wants exact states misses them, and its exact computation replaces them.
 */
static void test_no_compounding(void **state)
{
	(void)state;
	uint32_t id = toy_register();
	struct toy_io x, y;
	uint8_t low[TOY_LAYERS];
	float exact_tau[TOY_LAYERS];
	for (uint32_t l = 0; l < TOY_LAYERS; l++) {
		low[l] = l <= 2;
		exact_tau[l] = 1.0f;
	}
	toy_io(&x, 200);
	/* y: other tokens, an embedding a hair from x's, so that its fingerprint is x's or next to it */
	toy_io(&y, 201);
	memcpy(y.emb, x.emb, sizeof(y.emb));
	y.emb[0] += 1e-4f;
	memcpy(y.want, y.emb, sizeof(y.emb));
	toy_plain(y.want);
	struct lb_lem_cfg xcfg = toy_cfg(id, low, 0), all = toy_cfg(id, NULL, 0);
	struct lb_lem_cfg exact = all;
	exact.tau = exact_tau;
	struct lb_lem_result res;
	struct toy t = { TOY_N, 0 };

	assert_int_equal(toy_run(&x, &xcfg, toy_layer, &t, &res), 0);
	assert_int_equal(res.layers_inserted, 3);

	/* y reuses x's layer 2 (other tokens: at least 1 bit away) and inserts 3..5 on top */
	assert_int_equal(toy_run(&y, &all, toy_layer, &t, &res), 0);
	assert_int_equal(res.hit_layer, 2);
	uint32_t h = res.hit_hamming;
	assert_true(h >= 1 && h <= lb_fp_max_hamming(0.98));
	assert_int_equal(res.layers_inserted, 3);
	float approx_out[TOY_N * TOY_HIDDEN];
	memcpy(approx_out, y.h, sizeof(approx_out));
	assert_memory_equal(approx_out, x.want, sizeof(approx_out)); /* x's states, not y's */

	/* a repeat of y's own tokens: its entries, reported as far as the hit they came from */
	assert_int_equal(toy_run(&y, &all, toy_layer, &t, &res), 0);
	assert_int_equal(res.hit_layer, TOY_LAYERS - 1);
	assert_int_equal(res.hit_hamming, h);
	assert_memory_equal(y.h, approx_out, sizeof(approx_out));

	/* x, computed exactly, stays exact */
	assert_int_equal(toy_run(&x, &xcfg, toy_layer, &t, &res), 0);
	assert_int_equal(res.hit_layer, 2);
	assert_int_equal(res.hit_hamming, 0);
	assert_memory_equal(x.h, x.want, sizeof(x.h));

	/* exact thresholds: y's approximate entries do not qualify; y is computed in full, and its
	 * exact layers replace the approximate ones */
	assert_int_equal(toy_run(&y, &exact, toy_layer, &t, &res), 0);
	assert_int_equal(res.hit_layer, -1);
	assert_int_equal(res.layers_computed, TOY_LAYERS);
	assert_int_equal(res.layers_inserted, TOY_LAYERS);
	assert_memory_equal(y.h, y.want, sizeof(y.h));
	assert_int_equal(toy_run(&y, &exact, toy_layer, &t, &res), 0);
	assert_int_equal(res.hit_layer, TOY_LAYERS - 1);
	assert_int_equal(res.hit_hamming, 0);
	assert_int_equal(res.layers_computed, 0);
	assert_memory_equal(y.h, y.want, sizeof(y.h));

	/* an insert no more exact than what is cached is refused; bad approx values too */
	uint32_t n = TOY_N;
	struct lb_key key = { .seq_len = n };
	assert_int_equal(lb_fingerprint(toy_proj, y.emb, n, key.fp), 0);
	lb_token_hash(y.tok, n, key.exact);
	struct lb_shape shape = { .dtype = LB_DTYPE_F32, .ndim = 2, .dims = { n, TOY_HIDDEN } };
	void *buf = lb_insert_reserve(client, sizeof(y.want));
	assert_non_null(buf);
	memcpy(buf, y.want, sizeof(y.want));
	assert_int_equal(lb_insert_commit_approx(client, id, TOY_LAYERS - 1, &key, &shape, 3), -EEXIST);
	buf = lb_insert_reserve(client, sizeof(y.want));
	assert_non_null(buf);
	assert_int_equal(lb_insert_commit_approx(client, id, TOY_LAYERS - 1, &key, &shape,
						 LB_FP_BITS + 1), -EINVAL);
	struct lb_stats st;
	assert_int_equal(lb_ping(client), 0); /* after what the runs sent without waiting */
	assert_int_equal(lb_stats(client, &st, sizeof(st)), 0);
	assert_int_equal(st.leases, 0);
}

/* ---- layerbank-worker score --cache ---- */

static int run_worker(const char *const *args, char *out, size_t n)
{
	return lbt_run_args(LBT_ARGS(worker_path), args, out, n);
}

/* The first and second paragraphs of tinystories_val.txt into files in env.dir. */
static void write_paragraphs(char *p1, char *p2, size_t len)
{
	FILE *f = fopen(VAL, "rb");
	assert_non_null(f);
	static char text[1 << 16];
	size_t got = fread(text, 1, sizeof(text) - 1, f);
	fclose(f);
	text[got] = '\0';
	char *a = text;
	while (*a == '\n')
		a++;
	char *e = strstr(a, "\n\n");
	assert_non_null(e);
	*e = '\0';
	char *b = e + 2;
	while (*b == '\n')
		b++;
	char *e2 = strstr(b, "\n\n");
	assert_non_null(e2);
	*e2 = '\0';
	snprintf(p1, len, "%s/p1.txt", env.dir);
	snprintf(p2, len, "%s/p2.txt", env.dir);
	f = fopen(p1, "wb");
	assert_non_null(f);
	fputs(a, f);
	fclose(f);
	f = fopen(p2, "wb");
	assert_non_null(f);
	fputs(b, f);
	fclose(f);
}

static char out[8192]; /* the last worker's stdout and stderr */

/* Run score; the first line into nll_line, the cache line parsed (hit -2 when absent). */
static void score(const char *file, int cache, char *nll_line, size_t len, int *hit, unsigned *computed,
		  unsigned *inserted)
{
	const char *with[] = { "score", "--model", MODEL, "--tokenizer", TOK, "--text-file", file,
			       "--cache", env.sock, NULL };
	const char *without[] = { "score", "--model", MODEL, "--tokenizer", TOK, "--text-file", file,
				  NULL };
	int st = run_worker(cache ? with : without, out, sizeof(out));
	if (!WIFEXITED(st) || WEXITSTATUS(st))
		printf("worker output: %s\n", out);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	const char *l = strstr(out, "tokens ");
	assert_non_null(l);
	const char *nl = strchr(l, '\n');
	assert_non_null(nl);
	snprintf(nll_line, len, "%.*s", (int)(nl - l), l);
	*hit = -2;
	const char *c = strstr(out, "cache hit_layer ");
	if (c)
		assert_int_equal(sscanf(c, "cache hit_layer %d computed %u inserted %u", hit, computed,
					inserted), 3);
}

static void test_score_cache_cli(void **state)
{
	(void)state;
	char p1[300], p2[300], plain[256], first[256], second[256], other[256], gone[256];
	int hit;
	unsigned comp = 0, ins = 0;
	write_paragraphs(p1, p2, sizeof(p1));

	score(p1, 0, plain, sizeof(plain), &hit, &comp, &ins);
	assert_int_equal(hit, -2);
	score(p1, 1, first, sizeof(first), &hit, &comp, &ins);
	assert_int_equal(hit, -1);
	assert_int_equal(comp, 5); /* stories260K: 5 layers */
	assert_int_equal(ins, 5);
	assert_string_equal(first, plain);
	score(p1, 1, second, sizeof(second), &hit, &comp, &ins);
	assert_int_equal(hit, 4);
	assert_int_equal(comp, 0);
	assert_int_equal(ins, 0);
	assert_string_equal(second, plain);
	score(p2, 1, other, sizeof(other), &hit, &comp, &ins);
	assert_int_equal(hit, -1);
	assert_int_equal(comp, 5);
	assert_string_not_equal(other, plain);

	/* the daemon dies: scoring goes on, plain, with the same result */
	kill_daemon();
	double t0 = now_s();
	score(p1, 1, gone, sizeof(gone), &hit, &comp, &ins);
	assert_true(now_s() - t0 < 30.0);
	assert_string_equal(gone, plain);
	/* one warning, then a plain run */
	assert_non_null(strstr(out, "warning: layer cache"));
	assert_int_equal(hit, -1);
	assert_int_equal(comp, 5);
	assert_int_equal(ins, 0);
}

/* lbi_align: a diff of token ids, common prefix and suffix, a longest common subsequence. */
static void test_align(void **state)
{
	(void)state;
	const int32_t a[] = { 1, 2, 3, 9, 4, 5, 6 }, b[] = { 1, 2, 3, 4, 5, 7, 6 };
	int32_t map[8];

	/* a has a 9 that b lacks, b a 7 that a lacks */
	assert_int_equal(lbi_align(a, 7, b, 7, map), 6);
	const int32_t want[] = { 0, 1, 2, -1, 3, 4, 6 };
	assert_memory_equal(map, want, sizeof(want));
	/* nothing in common; one empty side */
	const int32_t c[] = { 8, 8 };
	assert_int_equal(lbi_align(c, 2, a, 7, map), 0);
	assert_int_equal(map[0], -1);
	assert_int_equal(map[1], -1);
	/* a swap of two words: one of them aligns */
	const int32_t d[] = { 1, 5, 3, 4, 2, 6 }, e[] = { 1, 2, 3, 4, 5, 6 };
	assert_int_equal(lbi_align(d, 6, e, 6, map), 4);
	assert_int_equal(map[0], 0);
	assert_int_equal(map[5], 5);
}

/* A key of the toy input io (its fingerprint, tokens, length). */
static struct lb_key toy_key(const struct toy_io *io)
{
	struct lb_key key = { .seq_len = TOY_N };
	assert_int_equal(lb_fingerprint(toy_proj, io->emb, TOY_N, key.fp), 0);
	lb_token_hash(io->tok, TOY_N, key.exact);
	return key;
}

/* Inserts with token ids: the daemon refuses ids that are not the key's; a lookup of another
 * length (LB_LOOKUP_ANY_LEN) finds an entry with ids, never one without, and never without the
 * flag. */
static void test_tokens_and_any_len(void **state)
{
	(void)state;
	uint32_t id = toy_register();
	struct toy_io x, y;
	struct lb_shape shape = { .dtype = LB_DTYPE_F32, .ndim = 2, .dims = { TOY_N, TOY_HIDDEN } };
	uint64_t need = lb_insert_tokens_bytes(sizeof(x.want), TOY_N);
	struct lb_hit hit;
	struct lb_sflight sf;
	uint32_t n;

	toy_io(&x, 300);
	toy_io(&y, 301);
	struct lb_key kx = toy_key(&x), ky = toy_key(&y);
	/* y's ids under x's key: refused */
	float *buf = lb_insert_reserve(client, need);
	assert_non_null(buf);
	memcpy(buf, x.want, sizeof(x.want));
	assert_int_equal(lb_insert_commit_tokens(client, id, 0, &kx, &shape, 0, y.tok), -EINVAL);
	/* a reservation without room for them: refused before anything is sent */
	buf = lb_insert_reserve(client, sizeof(x.want));
	assert_non_null(buf);
	assert_int_equal(lb_insert_commit_tokens(client, id, 0, &kx, &shape, 0, x.tok), -EINVAL);
	/* x without ids: found at its length only */
	buf = lb_insert_reserve(client, sizeof(x.want));
	memcpy(buf, x.want, sizeof(x.want));
	assert_int_equal(lb_insert_commit(client, id, 0, &kx, &shape), 0);
	struct lb_key other = kx;
	other.seq_len = TOY_N + 1;
	other.exact[0] ^= 1;
	assert_int_equal(lb_lookup_sflight(client, id, &other, NULL, 0, LB_LOOKUP_ANY_LEN, 0, &hit,
					   &sf), -ENOENT);
	assert_int_equal(lb_lookup_sflight(client, id, &other, NULL, 0, LB_LOOKUP_ANY_LEN, 5, &hit,
					   &sf), -EINVAL); /* a bound without single-flight */
	/* y with ids, at x's fingerprint: found by the other length with the flag, not without */
	memcpy(ky.fp, kx.fp, sizeof(ky.fp));
	buf = lb_insert_reserve(client, need);
	memcpy(buf, y.want, sizeof(y.want));
	assert_int_equal(lb_insert_commit_tokens(client, id, 0, &ky, &shape, 0, y.tok), 0);
	assert_int_equal(lb_lookup_deepest(client, id, &other, NULL, 0, &hit), -ENOENT);
	assert_int_equal(lb_lookup_sflight(client, id, &other, NULL, 0, LB_LOOKUP_ANY_LEN, 0, &hit,
					   &sf), 0);
	assert_int_equal(hit.shape[0], TOY_N);
	assert_memory_equal(hit.data, y.want, sizeof(y.want));
	const int32_t *t = lb_hit_tokens(&hit, &n);
	assert_int_equal(n, TOY_N);
	assert_memory_equal(t, y.tok, sizeof(y.tok));
	assert_int_equal(lb_release(client, hit.lease), 0);
	/* x's entry has none */
	assert_int_equal(lb_lookup_deepest(client, id, &kx, NULL, 0, &hit), 0);
	assert_null(lb_hit_tokens(&hit, &n));
	assert_int_equal(n, 0);
	assert_int_equal(lb_release(client, hit.lease), 0);
}

/* stories260K, registered with the bank; its fingerprint projection. */
struct real {
	struct lbw_scorer sc;
	struct lb_fp_proj *proj;
	float tau[16];
	struct lb_lem_cfg cfg;
};

static void real_open(struct real *r)
{
	char err[160];
	assert_int_equal(lbw_scorer_open_llama(&r->sc, MODEL, err, sizeof(err)), 0);
	assert_int_equal(lbt_connect(&env, "test_lem", &client), 0);
	struct lb_model_desc d = { .name = "s260-align", .weights_hash = r->sc.weights_hash,
				   .n_layers = (uint32_t)r->sc.n_layers,
				   .hidden = (uint32_t)r->sc.hidden, .dtype = LB_DTYPE_F32,
				   .max_seq = (uint32_t)r->sc.max_seq, .fp_chunks = 4, .fp_seed = 9 };
	uint32_t id = 0;
	assert_int_equal(lb_register_model(client, &d, &id), 0);
	r->proj = lb_fp_proj_new((uint32_t)r->sc.hidden, 4, 9, NULL);
	assert_non_null(r->proj);
	assert_true(r->sc.n_layers <= 16);
	/* Any fingerprint distance: the test is about what alignment does with a candidate. */
	for (int l = 0; l < r->sc.n_layers; l++)
		r->tau[l] = -1.0f;
	r->cfg = (struct lb_lem_cfg){ .model_id = id, .n_layers = (uint32_t)r->sc.n_layers,
				      .hidden = (uint32_t)r->sc.hidden, .proj = r->proj,
				      .tau = r->tau, .flags = LB_LEM_NO_SFLIGHT };
}

/* Run tokens through the model: with the bank (c) and partial reuse at recompute, or plain
 * (c NULL). h gets the last layer's output. */
static void real_run(struct real *r, struct lb_client *c, const int32_t *tok, uint32_t n,
		     double recompute, float *h, struct lb_lem_result *res)
{
	lbw_scorer_embed(&r->sc, tok, (int32_t)n, h);
	assert_int_equal(lb_lem_run_rows(c, &r->cfg, tok, n, h, lbw_scorer_layer,
					 lbw_scorer_rows, recompute, &r->sc, res), 0);
	assert_int_equal(res->cache_error, 0);
}

/* The acceptance test of partial reuse: a different-length input reusing a cached one with
 * every position recomputed is the plain forward pass bit for bit, and inserted as exact; with
 * fewer recomputed it reuses, and its entries never pass for exact. */
static void test_aligned_reuse(void **state)
{
	(void)state;
	struct real r;
	real_open(&r);
	enum { NA = 40, NB = 42, NC = 39 };
	int32_t a[NA], b[NB], c[NC];
	uint64_t s = 77;
	for (int i = 0; i < NA; i++) {
		s = s * 6364136223846793005ull + 1442695040888963407ull;
		a[i] = 1 + (int32_t)((s >> 33) % 500);
	}
	/* b: two tokens inserted in the middle; c: one removed, one changed */
	memcpy(b, a, 20 * sizeof(int32_t));
	b[20] = 7;
	b[21] = 8;
	memcpy(b + 22, a + 20, 20 * sizeof(int32_t));
	memcpy(c, a, 10 * sizeof(int32_t));
	memcpy(c + 10, a + 11, 29 * sizeof(int32_t));
	c[30] = 9;
	size_t hid = (size_t)r.sc.hidden;
	float *h = malloc(NB * hid * sizeof(float)), *want = malloc(NB * hid * sizeof(float));
	assert_non_null(h);
	assert_non_null(want);
	struct lb_lem_result res;
	int L = r.sc.n_layers;

	real_run(&r, client, a, NA, 1.0, h, &res); /* cached, with its token ids */
	assert_int_equal(res.hit_layer, -1);
	assert_int_equal(res.layers_inserted, L);

	real_run(&r, NULL, b, NB, 1.0, want, &res);
	real_run(&r, client, b, NB, 1.0, h, &res);
	assert_int_equal(res.hit_layer, L - 1); /* a's layers 1..L-1 used... */
	assert_int_equal(res.aligned, NA);
	assert_int_equal(res.rows_computed, NB); /* ...with every position recomputed */
	assert_int_equal(res.layers_computed, 1);
	assert_memory_equal(h, want, NB * hid * sizeof(float));
	/* inserted as exact: b's own lookup is at distance 0 */
	struct lb_key kb = { .seq_len = NB };
	lb_token_hash(b, NB, kb.exact);
	struct lb_hit hit;
	assert_int_equal(lb_lookup_deepest(client, r.cfg.model_id, &kb, r.tau, (uint32_t)L, &hit), 0);
	assert_int_equal(hit.layer, (uint32_t)L - 1);
	assert_int_equal(hit.hamming, 0);
	assert_memory_equal(hit.data, want, NB * hid * sizeof(float));
	assert_int_equal(lb_release(client, hit.lease), 0);

	/* c with the default share: reused in part, approximate, and recorded so */
	real_run(&r, NULL, c, NC, 0, want, &res);
	real_run(&r, client, c, NC, 0.15, h, &res);
	assert_int_equal(res.hit_layer, L - 1);
	assert_true(res.hit_hamming >= 1);
	assert_true(res.aligned >= NC - 2);
	assert_true(res.rows_computed < NC);
	assert_true(res.reused > 0.5f && res.reused < 1.0f);
	assert_true(memcmp(h, want, NC * hid * sizeof(float)) != 0);
	struct lb_key kc = { .seq_len = NC };
	lb_token_hash(c, NC, kc.exact);
	assert_int_equal(lb_lookup_deepest(client, r.cfg.model_id, &kc, r.tau, (uint32_t)L, &hit), 0);
	assert_int_equal(hit.hamming, res.hit_hamming); /* never 0: not exact */
	assert_int_equal(lb_release(client, hit.lease), 0);
	/* ...and an exact threshold takes only its layer 0 (computed whole, inserted exact): the
	 * rest is computed, exactly */
	float exact[16];
	for (int l = 0; l < L; l++)
		exact[l] = 1.0f;
	r.cfg.tau = exact;
	real_run(&r, client, c, NC, 0.15, h, &res);
	assert_int_equal(res.hit_layer, 0);
	assert_int_equal(res.hit_hamming, 0);
	assert_int_equal(res.layers_computed, L - 1);
	assert_memory_equal(h, want, NC * hid * sizeof(float));

	/* a cut of a with nothing recomputed but layer 0: every position is aligned, none
	 * selected, every reused layer taken from a's */
	r.cfg.tau = r.tau;
	real_run(&r, client, a + 1, NA - 1, 0, h, &res);
	assert_int_equal(res.hit_layer, L - 1);
	assert_int_equal(res.aligned, NA - 1);
	assert_int_equal(res.rows_computed, 0);
	r.cfg.tau = exact;

	/* another input's layer 0 alone (the only layer a threshold lets through) is never taken
	 * whole: b, with c's one change too, is computed in full */
	b[31] = 9;
	exact[0] = -1.0f;
	real_run(&r, NULL, b, NB, 0, want, &res);
	real_run(&r, client, b, NB, 0.15, h, &res);
	assert_int_equal(res.hit_layer, -1);
	assert_int_equal(res.layers_computed, L);
	assert_memory_equal(h, want, NB * hid * sizeof(float));

	struct lb_stats st;
	assert_int_equal(lb_ping(client), 0); /* after what the runs sent without waiting */
	assert_int_equal(lb_stats(client, &st, sizeof(st)), 0);
	assert_int_equal(st.leases, 0);
	free(h);
	free(want);
	lb_fp_proj_free(r.proj);
	lbw_scorer_close(&r.sc);
}

/* A position-wise toy of many layers for partial reuse: layer l adds l + 1, row by row, to an
 * embedding that is a function of the token, so a reuse of aligned positions is exact. */
enum { DEEP_LAYERS = 80, DEEP_HIDDEN = 8, DEEP_N = 12 };

static int deep_rows(void *ctx, uint32_t l, const float *in, uint32_t n, const uint32_t *rows,
		     uint32_t n_rows, float *o)
{
	(void)ctx;
	(void)n;
	for (uint32_t k = 0; k < n_rows; k++)
		for (uint32_t j = 0; j < DEEP_HIDDEN; j++)
			o[k * DEEP_HIDDEN + j] = in[rows[k] * DEEP_HIDDEN + j] + (float)(l + 1);
	return 0;
}

static int deep_layer(void *ctx, uint32_t l, const float *in, float *o)
{
	uint32_t rows[DEEP_N + 1], n = *(const uint32_t *)ctx;
	for (uint32_t i = 0; i < n; i++)
		rows[i] = i;
	float tmp[(DEEP_N + 1) * DEEP_HIDDEN];
	deep_rows(ctx, l, in, n, rows, n, tmp);
	memcpy(o, tmp, (size_t)n * DEEP_HIDDEN * sizeof(float));
	return 0;
}

static void deep_embed(const int32_t *tok, uint32_t n, float *h)
{
	for (uint32_t i = 0; i < n; i++)
		for (uint32_t j = 0; j < DEEP_HIDDEN; j++)
			h[i * DEEP_HIDDEN + j] = (float)((tok[i] * 7 + (int32_t)j * 3) % 11) / 11.0f;
}

/* A partial reuse of a model deeper than one batch of lookups holds: the cached input's lower
 * layers come in a batch, the rest one by one; every one is that input's, every lease is given
 * back, and with nothing recomputed but the edits the position-wise toy is exact. */
static void test_aligned_reuse_deep(void **state)
{
	(void)state;
	assert_int_equal(lbt_connect(&env, "test_lem", &client), 0);
	struct lb_model_desc d = { .name = "deep", .weights_hash = 8, .n_layers = DEEP_LAYERS,
				   .hidden = DEEP_HIDDEN, .dtype = LB_DTYPE_F32, .max_seq = 64,
				   .fp_chunks = 4, .fp_seed = TOY_SEED };
	uint32_t id = 0;
	assert_int_equal(lb_register_model(client, &d, &id), 0);
	struct lb_fp_proj *proj = lb_fp_proj_new(DEEP_HIDDEN, 4, TOY_SEED, NULL);
	assert_non_null(proj);
	float tau[DEEP_LAYERS];
	for (int l = 0; l < DEEP_LAYERS; l++)
		tau[l] = -1.0f;
	struct lb_lem_cfg cfg = { .model_id = id, .n_layers = DEEP_LAYERS, .hidden = DEEP_HIDDEN,
				  .proj = proj, .tau = tau, .flags = LB_LEM_NO_SFLIGHT };
	int32_t a[DEEP_N], b[DEEP_N + 1];
	for (int i = 0; i < DEEP_N; i++)
		a[i] = 3 + i * 5;
	memcpy(b, a, 6 * sizeof(int32_t)); /* b: a with one token added in the middle */
	b[6] = 99;
	memcpy(b + 7, a + 6, 6 * sizeof(int32_t));
	float h[(DEEP_N + 1) * DEEP_HIDDEN], want[(DEEP_N + 1) * DEEP_HIDDEN];
	struct lb_lem_result res;
	uint32_t n = DEEP_N;

	deep_embed(a, DEEP_N, h);
	assert_int_equal(lb_lem_run_rows(client, &cfg, a, DEEP_N, h, deep_layer, deep_rows, 0, &n,
					 &res), 0);
	assert_int_equal(res.layers_inserted, DEEP_LAYERS);
	assert_int_equal(lb_ping(client), 0);

	n = DEEP_N + 1;
	deep_embed(b, n, want);
	deep_layer(&n, 0, want, want);
	for (uint32_t l = 1; l < DEEP_LAYERS; l++)
		deep_layer(&n, l, want, want);
	deep_embed(b, n, h);
	assert_int_equal(lb_lem_run_rows(client, &cfg, b, n, h, deep_layer, deep_rows, 0, &n, &res),
			 0);
	assert_int_equal(res.cache_error, 0);
	assert_int_equal(res.hit_layer, DEEP_LAYERS - 1);
	assert_int_equal(res.aligned, DEEP_N);
	assert_int_equal(res.rows_computed, 1);
	assert_int_equal(res.layers_computed, 1);
	assert_memory_equal(h, want, sizeof(want));

	/* Revalidated, a partial reuse reports every layer it assembled (1..L: layer 0 is
	 * computed whole), each to its own layer's controller, at the hit's distance. */
	int32_t c[DEEP_N + 1];
	memcpy(c, b, sizeof(b));
	c[2] = 98;
	cfg.revalidate = 1.0;
	deep_embed(c, n, h);
	assert_int_equal(lb_lem_run_rows(client, &cfg, c, n, h, deep_layer, deep_rows, 0, &n, &res),
			 0);
	assert_int_equal(res.cache_error, 0);
	assert_int_equal(res.hit_layer, DEEP_LAYERS - 1);
	assert_true(res.rows_computed >= 1 && res.rows_computed < n);
	assert_int_equal(res.revalidated, DEEP_LAYERS);
	assert_int_equal(res.reports, DEEP_LAYERS - 1);
	assert_true(res.hit_hamming >= 1);
	struct lb_layer_tau t[DEEP_LAYERS];
	assert_int_equal(lb_model_taus(client, id, t, DEEP_LAYERS), DEEP_LAYERS);
	for (uint32_t l = 0; l < DEEP_LAYERS; l++) {
		assert_int_equal(t[l].reports, l >= 1);
		assert_true(t[l].drift_sum == 0); /* the toy's alignment is exact */
	}

	struct lb_stats st;
	assert_int_equal(lb_ping(client), 0);
	assert_int_equal(lb_stats(client, &st, sizeof(st)), 0);
	assert_int_equal(st.leases, 0);
	lb_fp_proj_free(proj);
}

/* The deep toy's layer, with the daemon stopped (SIGSTOP) or killed when layer 0 is computed:
 * while the batch of the cached input's layers is in flight. */
struct deep_fault {
	uint32_t n;
	int sig, done;
};

static int deep_fault_layer(void *ctx, uint32_t l, const float *in, float *o)
{
	struct deep_fault *f = ctx;
	if (l == 0 && f->sig && !f->done) {
		f->done = 1;
		if (f->sig == SIGKILL)
			kill_daemon();
		else
			assert_int_equal(kill(env.pid, f->sig), 0);
	}
	return deep_layer(&f->n, l, in, o);
}

/* A daemon that stops or dies while a partial reuse's batch of lookups may still be in flight
 * (sent before layer 0 is computed; the signal comes from that computation): the run ends in
 * bounded time with the plain result; once a stopped daemon goes on, every lease the run was
 * answered with after giving up is given back. */
static void deep_fault_run(int sig)
{
	assert_int_equal(lbt_connect(&env, "test_lem", &client), 0);
	struct lb_model_desc d = { .name = "deep-fault", .weights_hash = 9, .n_layers = 6,
				   .hidden = DEEP_HIDDEN, .dtype = LB_DTYPE_F32, .max_seq = 64,
				   .fp_chunks = 4, .fp_seed = TOY_SEED };
	uint32_t id = 0;
	assert_int_equal(lb_register_model(client, &d, &id), 0);
	struct lb_fp_proj *proj = lb_fp_proj_new(DEEP_HIDDEN, 4, TOY_SEED, NULL);
	assert_non_null(proj);
	float tau[6] = { -1, -1, -1, -1, -1, -1 };
	struct lb_lem_cfg cfg = { .model_id = id, .n_layers = 6, .hidden = DEEP_HIDDEN,
				  .proj = proj, .tau = tau, .flags = LB_LEM_NO_SFLIGHT };
	int32_t a[DEEP_N], b[DEEP_N + 1];
	for (int i = 0; i < DEEP_N; i++)
		a[i] = 3 + i * 5;
	memcpy(b, a, 6 * sizeof(int32_t));
	b[6] = 99;
	memcpy(b + 7, a + 6, 6 * sizeof(int32_t));
	float h[(DEEP_N + 1) * DEEP_HIDDEN], want[(DEEP_N + 1) * DEEP_HIDDEN];
	struct lb_lem_result res;
	struct deep_fault f = { DEEP_N, 0, 0 };

	deep_embed(a, DEEP_N, h);
	assert_int_equal(lb_lem_run_rows(client, &cfg, a, DEEP_N, h, deep_fault_layer,
					 deep_rows, 0, &f, &res), 0);
	assert_int_equal(lb_ping(client), 0);
	f = (struct deep_fault){ DEEP_N + 1, sig, 0 };
	deep_embed(b, DEEP_N + 1, want);
	for (uint32_t l = 0; l < 6; l++)
		deep_layer(&f.n, l, want, want);
	deep_embed(b, DEEP_N + 1, h);
	lb_set_wait_us(client, 200000);
	double t0 = now_s();
	assert_int_equal(lb_lem_run_rows(client, &cfg, b, DEEP_N + 1, h, deep_fault_layer,
					 deep_rows, 0, &f, &res), 0);
	assert_true(now_s() - t0 < 5.0);
	assert_true(f.done);
	assert_memory_equal(h, want, sizeof(want)); /* the toy is exact, reused or not */
	/* The daemon may have answered the batch before the signal: then the run reused, and a
	 * stopped daemon is noticed by the next call, not by this run. */
	assert_true(res.cache_error < 0 || res.hit_layer == 5);
	if (sig == SIGKILL)
		assert_true(res.cache_error < 0 || res.layers_computed == 1);
	if (sig == SIGSTOP) {
		assert_int_equal(kill(env.pid, SIGCONT), 0);
		lb_set_wait_us(client, 2000000);
		struct lb_stats st;
		assert_int_equal(lb_ping(client), 0); /* behind every answer given up on */
		assert_int_equal(lb_ping(client), 0); /* ...and behind their leases given back */
		assert_int_equal(lb_stats(client, &st, sizeof(st)), 0);
		assert_int_equal(st.leases, 0);
	}
	lb_fp_proj_free(proj);
}

static void test_aligned_reuse_daemon_stopped(void **state)
{
	(void)state;
	deep_fault_run(SIGSTOP);
}

/* SIGSTOP the daemon and wait until every thread of it has stopped (a spinning service thread
 * stops at its next interrupt, and serves rings until then). */
static void stop_daemon(void)
{
	assert_int_equal(kill(env.pid, SIGSTOP), 0);
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/task", (int)env.pid);
	for (int tries = 0; tries < 1000; tries++) {
		DIR *d = opendir(path);
		assert_non_null(d);
		int running = 0;
		for (struct dirent *e; (e = readdir(d));) {
			char stat[384], buf[256];
			if (e->d_name[0] == '.')
				continue;
			snprintf(stat, sizeof(stat), "%s/%s/stat", path, e->d_name);
			FILE *f = fopen(stat, "r");
			/* "tid (comm) S ...": the state after the last ')' */
			if (f && fgets(buf, sizeof(buf), f)) {
				const char *p = strrchr(buf, ')');
				running += p && p[1] == ' ' && p[2] != 'T' && p[2] != 't';
			}
			if (f)
				fclose(f);
		}
		closedir(d);
		if (!running)
			return;
		usleep(1000);
	}
	fail_msg("the daemon did not stop");
}

/* A batch of lookups given up on (the daemon stopped: each answers -ETIMEDOUT) has its hits
 * given back once the daemon goes on, and the client makes calls again. */
static void test_lookups_given_up(void **state)
{
	(void)state;
	uint32_t id = toy_register();
	struct toy_io io;
	toy_io(&io, 97);
	struct lb_lem_cfg cfg = toy_cfg(id, NULL, 0);
	struct lb_lem_result res;
	struct toy t = { TOY_N, 0 };
	assert_int_equal(toy_run(&io, &cfg, toy_layer, &t, &res), 0);
	assert_int_equal(lb_ping(client), 0);
	struct lb_key k = toy_key(&io);
	uint64_t tags[4];
	struct lb_hit hits[4];
	int rcs[4];

	assert_int_equal(lbi_lookups_submit(client, id, &k, NULL, 0, 4, tags), 4);
	lbi_lookups_wait(client, tags, 4, hits, rcs);
	for (int i = 0; i < 4; i++) { /* the daemon answered: each is that layer */
		assert_int_equal(rcs[i], 0);
		assert_int_equal(hits[i].layer, (uint32_t)i);
		assert_int_equal(lb_release(client, hits[i].lease), 0);
	}
	stop_daemon();
	lb_set_wait_us(client, 100000);
	assert_int_equal(lbi_lookups_submit(client, id, &k, NULL, 0, 4, tags), 4);
	lbi_lookups_wait(client, tags, 4, hits, rcs);
	for (int i = 0; i < 4; i++)
		assert_int_equal(rcs[i], -ETIMEDOUT);
	assert_int_equal(kill(env.pid, SIGCONT), 0);
	lb_set_wait_us(client, 2000000);
	struct lb_stats st;
	assert_int_equal(lb_ping(client), 0); /* served after the four, whose leases go back */
	assert_int_equal(lb_ping(client), 0); /* ...and after those give-backs */
	assert_int_equal(lb_stats(client, &st, sizeof(st)), 0);
	assert_int_equal(st.leases, 0);
}

static void test_aligned_reuse_daemon_killed(void **state)
{
	(void)state;
	deep_fault_run(SIGKILL);
}

/* The layers of the cached input that a partial reuse reads below its hit are that input's:
 * when one is gone (flushed here), the reuse ends there, and never takes another input's states
 * (a lookup whose exact key is gone answers with the nearest fingerprint of that length). */
static void test_aligned_reuse_reads_one_input(void **state)
{
	(void)state;
	struct real r;
	real_open(&r);
	enum { N = 40 };
	int32_t a[N], b[N], c[N];
	uint64_t s = 91;
	for (int i = 0; i < N; i++) {
		s = s * 6364136223846793005ull + 1442695040888963407ull;
		a[i] = 1 + (int32_t)((s >> 33) % 500);
		b[i] = 1 + (int32_t)((s >> 13) % 500); /* another text of that length */
	}
	memcpy(c, a, sizeof(c));
	c[N - 1] = a[N - 1] == 3 ? 4 : 3; /* a with its last token changed */
	size_t hid = (size_t)r.sc.hidden;
	float *h = malloc(N * hid * sizeof(float)), *want = malloc(N * hid * sizeof(float));
	assert_non_null(h);
	assert_non_null(want);
	struct lb_lem_result res;

	real_run(&r, client, a, N, 0, h, &res);
	assert_int_equal(lb_ping(client), 0); /* a's inserts are in */
	assert_int_equal(lb_flush(client, r.cfg.model_id, 1, NULL), 0); /* a's layer 1 */
	real_run(&r, client, b, N, 0, h, &res);
	assert_int_equal(res.hit_layer, -1); /* nothing of b aligns with a */
	real_run(&r, NULL, c, N, 0, want, &res);
	real_run(&r, client, c, N, 0, h, &res);
	assert_int_equal(res.hit_layer, -1);
	assert_int_equal(res.layers_computed, r.sc.n_layers);
	assert_memory_equal(h, want, N * hid * sizeof(float));
	free(h);
	free(want);
	lb_fp_proj_free(r.proj);
	lbw_scorer_close(&r.sc);
}

#define TEST(f) cmocka_unit_test_prestate_setup_teardown(f, setup, lbt_env_teardown, &env)

int main(void)
{
	if (access(MODEL, R_OK) || access(TOK, R_OK) || access(VAL, R_OK))
		LBT_SKIP("%s, %s or %s not found", MODEL, TOK, VAL);
	snprintf(worker_path, sizeof(worker_path), "%s", LB_WORKER_PATH);

	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_plain_and_bad_args),
		cmocka_unit_test(test_align),
		TEST(test_tokens_and_any_len),
		TEST(test_aligned_reuse),
		TEST(test_aligned_reuse_deep),
		TEST(test_aligned_reuse_daemon_stopped),
		TEST(test_aligned_reuse_daemon_killed),
		TEST(test_lookups_given_up),
		TEST(test_aligned_reuse_reads_one_input),
		TEST(test_hit_at_every_depth),
		TEST(test_insert_quota_is_not_an_error),
		TEST(test_revalidate_reports),
		TEST(test_daemon_killed_mid_run),
		TEST(test_daemon_killed_in_callback_hit),
		TEST(test_daemon_killed_in_callback_miss),
		cmocka_unit_test_prestate_setup_teardown(test_drift_invalidates, setup_drift,
							 lbt_env_teardown, &env),
		TEST(test_no_compounding),
		TEST(test_score_cache_cli),
	};
	int rc = cmocka_run_group_tests(tests, NULL, NULL);
	lb_fp_proj_free(toy_proj);
	return rc;
}
