/* The worker's side of the layer cache: layerbankd's shared bank at a socket, an in-process
 * bank of the worker's own (the fleet benchmark's `private` mode) or a plain Redis server
 * (`redis`, redis_cache.h), and the lb_lem_run configuration for one model: fingerprint
 * projection, thresholds, layers to insert. */
#ifndef LAYERBANK_WORKER_CACHE_H
#define LAYERBANK_WORKER_CACHE_H

#include <stdint.h>

#include "layerbank/layerbank.h"

struct lbip_bank;
struct lbw_redis;
struct lbw_scorer;

struct lbw_cache_opts {
	const char *socket;       /* layerbankd's socket, or NULL */
	uint64_t private_bytes;   /* else, when > 0: an in-process bank with this budget */
	const char *redis;        /* else, when set: a Redis server, HOST:PORT (exact values of
				   * the deepest layer only; the options below but shadow unused) */
	const char *tau;          /* every layer's threshold (-1..1), or NULL: the bank's default */
	const char *layers;       /* layers to insert: "all" (NULL) or indices "0,3,11" */
	const char *revalidate;   /* share of hits to recompute, 0..1, or NULL: 0 */
	int no_sflight;           /* lb_lem_run without single-flight (LB_LEM_NO_SFLIGHT) */
	int shadow;               /* every reuse checked against the plain computation */
	/* The fingerprint's chunks, 1..64 (1: plain mean pooling), or NULL: 4 (cache.c says why). */
	const char *fp_chunks;
	/* Partial reuse of near inputs of any length (lb_lem_run_rows): the share of aligned
	 * positions recomputed, 0..1, or "off" (whole inputs of the same length only); NULL:
	 * LBW_RECOMPUTE_DEFAULT, LBW_RECOMPUTE_DEFAULT_BIDIR for a bidirectional encoder. */
	const char *recompute;
	/* Generation: a prompt whose exact cached prefix covers under half of it is prefilled by
	 * partial reuse of a near prompt with this share recomputed (0..1, or "on":
	 * LBW_GEN_RECOMPUTE_DEFAULT), or "off" / NULL: exact prefixes only. */
	const char *gen_recompute;
};

/* The smallest share of 0, 0.05, 0.15 and 0.3 whose worst of five seeds of the design's mix kept
 * stories260K within half the fidelity budget against no cache, |NLL change| <= 0.25% and top-1
 * >= 99.5% (bench/README.md): 0 gave -0.33% and 99.04%, 0.05 99.38%, 0.15 -0.03% and 99.61%. */
#define LBW_RECOMPUTE_DEFAULT 0.15
/* A bidirectional encoder's: every position's state depends on every other, so an edit reaches
 * all of them. The smallest of 0.15, 0.3 and 0.5 that kept the trained encoder
 * (models/tinystories-mlm.safetensors) within half its budget, |NLL change| <= 0.25% of the
 * masked tokens, on the design's mix: 0.15 gave +0.61% and 98.68% top-1, 0.3 +0.48% and 99.05%,
 * 0.5 +0.15% and 99.43% (bench/README.md). */
#define LBW_RECOMPUTE_DEFAULT_BIDIR 0.5

/* Generation's share (--gen-recompute on), higher than scoring's: a continuation reads the
 * prefill's last positions, which follow the edit. The smallest of 0, 0.15, 0.3 and 0.5 whose
 * 32 tokens after each of 40 near prompts kept the fidelity budget (|NLL change| <= 0.5%, top-1
 * >= 99%; test_gen's test_near_prompts): 0 gave +2.19% and 94.9%, 0.15 +1.73% and 95.9%, 0.3
 * +0.88% and 97.3%, 0.5 +0.29% and 99.2% (reusing 38% of the prefill). */
#define LBW_GEN_RECOMPUTE_DEFAULT 0.5

/* Owned by one thread. c NULL: no layerbank cache (none asked for, or it was away). */
struct lbw_cache {
	struct lb_client *c;
	struct lbw_redis *redis;  /* the plain peer instead (c NULL), or NULL */
	struct lbip_bank *bank;   /* the in-process bank, when private */
	struct lb_fp_proj *proj;
	struct lb_lem_cfg cfg;    /* refers to proj, tau and layers */
	float *tau;
	uint8_t *layers;
	int align;                /* partial reuse on (lb_lem_run_rows) */
	double recompute;         /* its share, when on */
	int shadow;               /* --shadow (lbw_score_text) */
	uint32_t fp_chunks;       /* the fingerprint's chunks */
	int gen_near;             /* generation's partial reuse on (lbw_generate) */
	double gen_recompute;     /* its share */
	/* Prefix blocks only, no hidden states (lbw_cache_states): a FusedKV model's
	 * reconstruction layers read the storage layers' K and V, which resuming from a cached
	 * layer's hidden states would skip. */
	int blocks_only;
};

/* The client hidden-state reuse (lb_lem_run*) goes through: wc->c, or NULL (plain runs) for a
 * model whose hidden states are not cached. */
static inline struct lb_client *lbw_cache_states(const struct lbw_cache *wc)
{
	return wc->blocks_only ? NULL : wc->c;
}

/*
 * Open the cache o asks for and register sc's model with it. A daemon or a Redis server that
 * cannot be reached is a warning on stderr (who: the program's name) and a run without cache
 * (c and redis NULL).
 * @return 0; -1 after one line on stderr for a bad option or no memory.
 */
int lbw_cache_open(struct lbw_cache *wc, const struct lbw_cache_opts *o, const struct lbw_scorer *sc,
		   const char *who);
void lbw_cache_close(struct lbw_cache *wc);

#endif
