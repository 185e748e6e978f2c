/*
 * layerbank-bench prefix, its ring figures: a prefix hit of LBB_LOOKUP_BLOCKS blocks (and of one)
 * through a running layerbankd, timed from lb_lookup_prefix to the end of lb_release; and a
 * block's insert, from lb_insert_reserve to the end of lb_insert_block.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "layerbank/layerbank.h"
#include "rng.h"

#define WARMUP 1000
#define ROUNDS 10
#define PER_ROUND 2000   /* lookups of each kind a round; the kinds alternate by round */
#define INSERT_CHAINS 4  /* chains inserted and timed; the first one's is looked up */

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Register a model of geometry g. @return 0, or -errno after a one-line message. */
static int register_geom(struct lb_client *c, const struct lbb_prefix_geom *g, uint32_t *model)
{
	struct lb_model_desc d = { .name = "layerbank-bench-prefix", .weights_hash = 0x707265666978,
				   .n_layers = g->n_layers, .hidden = g->dim, .dtype = LB_DTYPE_F32,
				   .max_seq = g->seq_len, .kv_dim = g->kv_dim,
				   .block_tokens = LBB_BLOCK_TOKENS };
	int rc = lb_register_model(c, &d, model);
	if (rc < 0)
		fprintf(stderr, "layerbank-bench prefix: register: %s\n", strerror(-rc));
	return rc;
}

/* Insert a chain of LBB_LOOKUP_BLOCKS blocks of random tokens drawn from seed, each block
 * copied from src (bytes) into staging as lb_prefix_insert does; its keys into keys, each
 * insert's µs (reserve, copy, lb_insert_block) into us. @return 0, or -errno after a message. */
static int insert_chain(struct lb_client *c, uint32_t model, uint64_t seed, const void *src,
			uint64_t bytes, uint64_t (*keys)[2], double *us)
{
	int32_t tokens[LBB_LOOKUP_BLOCKS * LBB_BLOCK_TOKENS];
	for (size_t i = 0; i < sizeof(tokens) / sizeof(tokens[0]); i++)
		tokens[i] = (int32_t)(lbu_splitmix64(&seed) % 512);
	lb_block_keys(tokens, LBB_LOOKUP_BLOCKS * LBB_BLOCK_TOKENS, LBB_BLOCK_TOKENS, keys,
		      LBB_LOOKUP_BLOCKS);
	for (uint32_t i = 0; i < LBB_LOOKUP_BLOCKS; i++) {
		uint64_t t0 = now_ns();
		void *buf = lb_insert_reserve(c, bytes);
		if (!buf) {
			int e = errno;
			fprintf(stderr, "layerbank-bench prefix: insert_reserve: %s\n",
				strerror(e));
			return -e;
		}
		memcpy(buf, src, bytes);
		int rc = lb_insert_block(c, model, keys[i], keys[i ? i - 1 : 0], i);
		us[i] = (double)(now_ns() - t0) / 1e3;
		if (rc < 0) {
			fprintf(stderr, "layerbank-bench prefix: insert block %u: %s\n", i,
				strerror(-rc));
			return rc;
		}
	}
	return 0;
}

/* One hit of the first n blocks, released. @return its ns, or -errno after a message. */
static int64_t one_hit(struct lb_client *c, uint32_t model, const uint64_t (*keys)[2], uint32_t n)
{
	const void *blocks[LBB_LOOKUP_BLOCKS];
	uint64_t lease, t0 = now_ns();
	int found = lb_lookup_prefix(c, model, keys, n, blocks, &lease);
	int rc = found > 0 ? lb_release(c, lease) : found;
	uint64_t t1 = now_ns();
	if (rc == 0 && found != (int)n)
		rc = -ENOENT;
	if (rc < 0) {
		fprintf(stderr, "layerbank-bench prefix: a %u-block hit: %s (found %d)\n", n,
			strerror(-rc), found);
		return rc;
	}
	return (int64_t)(t1 - t0);
}

static struct lbb_lookup_fig figures(double *us, size_t n)
{
	qsort(us, n, sizeof(*us), lbb_cmp_double);
	return (struct lbb_lookup_fig){ lbb_pct(us, n, 0.50), lbb_pct(us, n, 0.99) };
}

/* Warm up, then ROUNDS rounds of PER_ROUND hits of each length. */
static int time_hits(struct lb_client *c, uint32_t model, const uint64_t (*keys)[2],
		     struct lbb_lookup_fig *all, struct lbb_lookup_fig *one)
{
	const uint32_t len[2] = { LBB_LOOKUP_BLOCKS, 1 };
	double *us = malloc(2 * ROUNDS * PER_ROUND * sizeof(double));
	size_t got[2] = { 0, 0 };
	if (!us)
		return -ENOMEM;
	for (int i = 0; i < WARMUP; i++)
		if (one_hit(c, model, keys, len[i & 1]) < 0) {
			free(us);
			return -EIO;
		}
	for (int r = 0; r < 2 * ROUNDS; r++) {
		double *dst = us + (r & 1) * ROUNDS * PER_ROUND;
		for (int i = 0; i < PER_ROUND; i++) {
			int64_t ns = one_hit(c, model, keys, len[r & 1]);
			if (ns < 0) {
				free(us);
				return -EIO;
			}
			dst[got[r & 1]++] = (double)ns / 1e3;
		}
	}
	*all = figures(us, got[0]);
	*one = figures(us + ROUNDS * PER_ROUND, got[1]);
	free(us);
	return 0;
}

/* INSERT_CHAINS chains inserted and timed; the first one's keys into keys. */
static int insert_all(struct lb_client *c, const struct lbb_prefix_geom *g, uint32_t model,
		      uint64_t (*keys)[2], struct lbb_lookup_fig *insert)
{
	uint64_t bytes = (uint64_t)g->n_layers * 2 * LBB_BLOCK_TOKENS * g->kv_dim * sizeof(float);
	uint64_t more[LBB_LOOKUP_BLOCKS][2];
	float *src = malloc(bytes);
	double *us = malloc(INSERT_CHAINS * LBB_LOOKUP_BLOCKS * sizeof(double));
	int rc = src && us ? 0 : -ENOMEM;
	for (uint64_t j = 0; src && j < bytes / sizeof(float); j++)
		src[j] = (float)(j % 97);
	for (int i = 0; i < INSERT_CHAINS && rc == 0; i++)
		rc = insert_chain(c, model, (uint64_t)i + 1, src, bytes, i ? more : keys,
				  us + i * LBB_LOOKUP_BLOCKS);
	if (rc == 0)
		*insert = figures(us, INSERT_CHAINS * LBB_LOOKUP_BLOCKS);
	free(src);
	free(us);
	return rc;
}

int lbb_prefix_lookup_time(const char *socket, const struct lbb_prefix_geom *g,
			   struct lbb_prefix_figs *f)
{
	struct lb_client *c;
	uint64_t keys[LBB_LOOKUP_BLOCKS][2];
	uint32_t model;
	int rc = lb_connect(socket, "layerbank-bench-prefix", &c);
	if (rc < 0) {
		fprintf(stderr, "layerbank-bench prefix: connect %s: %s\n", socket, strerror(-rc));
		return rc;
	}
	/* A call that waits for a descheduled daemon thread is timed, not failed. */
	lb_set_wait_us(c, 2000000);
	rc = register_geom(c, g, &model);
	if (rc == 0)
		rc = insert_all(c, g, model, keys, &f->insert);
	if (rc == 0)
		rc = time_hits(c, model, (const uint64_t (*)[2])keys, &f->hit, &f->hit1);
	lb_close(c);
	return rc;
}
