/* The worker's layer cache: connect (or make an in-process bank, or reach a Redis server),
 * register, build the fingerprint projection and the per-layer options of lb_lem_run. */
#include "cache.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inproc.h"
#include "kernels.h"
#include "model_llama.h"
#include "redis_cache.h"
#include "scorer.h"

#define FP_SEED 0x6c61796572ull /* "layer" */
/* 4 chunks: a word added or removed moves every later token by one place, which a fingerprint
 * of many small chunks sees as a new text (64 chunks: 94 bits apart for one word in 36 tokens;
 * 4 chunks: 16), so near inputs of another length would never be found. The fingerprint only
 * proposes a candidate: alignment decides what is reused (lem's half-aligned rule). With
 * --recompute off a same-length hit is reused whole, and unrelated paragraphs of one length
 * come within tau 0.98 (measured on the e2e stream: NLL +40%): off is exact repeats only,
 * unless --tau asks for more. */
#define FP_CHUNKS 4
#define FP_CHUNKS_MAX 64

/* A finite number, whole string. @return 0 or -1. */
static int parse_real(const char *v, double *out)
{
	char *end;
	errno = 0;
	*out = strtod(v, &end);
	return errno || end == v || *end || !isfinite(*out) ? -1 : 0;
}

/* "all" or indices separated by commas into flags[n_layers]. @return 0 or -1 after a message. */
static int parse_layers(const char *v, uint8_t *flags, int32_t n_layers, const char *who)
{
	if (!strcmp(v, "all")) {
		memset(flags, 1, (size_t)n_layers);
		return 0;
	}
	memset(flags, 0, (size_t)n_layers);
	const char *p = v;
	for (;;) {
		char *end;
		errno = 0;
		long l = strtol(p, &end, 10);
		if (errno || end == p || l < 0 || l >= n_layers || (*end && *end != ',')) {
			fprintf(stderr, "%s: bad --cache-layers '%s' (all, or layer indices 0..%d "
					"separated by commas)\n", who, v, (int)n_layers - 1);
			return -1;
		}
		flags[l] = 1;
		if (!*end)
			return 0;
		p = end + 1;
	}
}

void lbw_cache_close(struct lbw_cache *wc)
{
	if (wc->bank)
		lbip_bank_free(wc->bank); /* frees its client too */
	else
		lb_close(wc->c);
	lbw_redis_close(wc->redis);
	lb_fp_proj_free(wc->proj);
	free(wc->tau);
	free(wc->layers);
	memset(wc, 0, sizeof(*wc));
}

/* The projection is centred on the mean embedding row, where token embeddings cluster. */
static struct lb_fp_proj *projection(const struct lbw_scorer *sc, uint32_t chunks)
{
	float *center = calloc((size_t)sc->hidden, sizeof(float));
	double *acc = calloc((size_t)sc->hidden, sizeof(double));
	struct lb_fp_proj *p = NULL;
	if (center && acc) {
		for (int32_t v = 0; v < sc->vocab; v++)
			for (int32_t j = 0; j < sc->hidden; j++)
				acc[j] += sc->emb[(size_t)v * (size_t)sc->hidden + (size_t)j];
		for (int32_t j = 0; j < sc->hidden; j++)
			center[j] = (float)(acc[j] / (double)sc->vocab);
		p = lb_fp_proj_new((uint32_t)sc->hidden, chunks, FP_SEED, center);
	}
	free(center);
	free(acc);
	return p;
}

/* The name sc's model registers (and a Redis peer's keys hold). A decoder's prefix blocks are
 * reused as exact: only between workers whose forwards give the same bits, so on one kernel
 * tier (the tiers round differently). The tier, or "ref" for the plain-C forward, is part of
 * its name. */
static void model_name(const struct lbw_scorer *sc, char name[LB_NAME_MAX + 1])
{
	if (sc->kv_dim)
		snprintf(name, LB_NAME_MAX + 1, "%.*s@%s", (int)(LB_NAME_MAX - 7), sc->name,
			 sc->llama && sc->llama->reference ? "ref" : lbk_isa_name(lbk_isa()));
	else
		snprintf(name, LB_NAME_MAX + 1, "%s", sc->name);
}

/* The plain Redis peer at addr. @return 0 (a server that does not answer: a warning, and
 * redis NULL); -1 after one line on stderr for a bad address or no memory. */
static int open_redis(struct lbw_cache *wc, const char *addr, const struct lbw_scorer *sc,
		      const char *name, const char *who)
{
	char err[512];
	struct lbw_redis_model m = { name, sc->weights_hash, (uint32_t)sc->n_layers,
				     (uint32_t)sc->hidden };
	wc->redis = lbw_redis_open(addr, &m, err, sizeof(err));
	if (wc->redis || errno == EHOSTUNREACH) {
		if (!wc->redis)
			fprintf(stderr, "%s: warning: %s; running without cache\n", who, err);
		return 0;
	}
	fprintf(stderr, "%s: %s\n", who, err);
	return -1;
}

/* The in-process bank, with the daemon's defaults for everything but the budget. */
static int open_private(struct lbw_cache *wc, uint64_t bytes, const char *who)
{
	char err[256];
	wc->bank = lbip_bank_new(bytes, NULL, err, sizeof(err));
	if (!wc->bank) {
		fprintf(stderr, "%s: %s\n", who, err);
		return -1;
	}
	wc->c = lbip_bank_client(wc->bank);
	return 0;
}

int lbw_cache_open(struct lbw_cache *wc, const struct lbw_cache_opts *o, const struct lbw_scorer *sc,
		   const char *who)
{
	int32_t L = sc->n_layers;
	double tau = 0, reval = 0;
	memset(wc, 0, sizeof(*wc));
	wc->blocks_only = sc->llama && sc->llama->cfg.kv_mode != LBW_KV_PLAIN;
	if (o->tau && (parse_real(o->tau, &tau) < 0 || tau < -1 || tau > 1)) {
		fprintf(stderr, "%s: bad --tau '%s' (-1..1)\n", who, o->tau);
		return -1;
	}
	if (o->revalidate && (parse_real(o->revalidate, &reval) < 0 || reval < 0 || reval > 1)) {
		fprintf(stderr, "%s: bad --revalidate '%s' (0..1)\n", who, o->revalidate);
		return -1;
	}
	wc->align = !o->recompute || strcmp(o->recompute, "off") != 0;
	wc->recompute = sc->mlm ? LBW_RECOMPUTE_DEFAULT_BIDIR : LBW_RECOMPUTE_DEFAULT;
	if (wc->align && o->recompute &&
	    (parse_real(o->recompute, &wc->recompute) < 0 || wc->recompute < 0 || wc->recompute > 1)) {
		fprintf(stderr, "%s: bad --recompute '%s' (0..1, or off)\n", who, o->recompute);
		return -1;
	}
	wc->shadow = o->shadow;
	wc->gen_near = o->gen_recompute && strcmp(o->gen_recompute, "off") != 0;
	if (wc->gen_near && wc->blocks_only) {
		fprintf(stderr, "%s: --gen-recompute reuses hidden states, which a FusedKV "
				"checkpoint's reconstruction layers cannot resume from (its prefix "
				"blocks are reused without it)\n", who);
		return -1;
	}
	wc->gen_recompute = LBW_GEN_RECOMPUTE_DEFAULT;
	if (wc->gen_near &&
	    (!sc->kv_dim || (strcmp(o->gen_recompute, "on") != 0 &&
			     (parse_real(o->gen_recompute, &wc->gen_recompute) < 0 ||
			      wc->gen_recompute < 0 || wc->gen_recompute > 1)))) {
		fprintf(stderr, "%s: bad --gen-recompute '%s' (0..1, on or off; a decoder's)\n", who,
			o->gen_recompute);
		return -1;
	}
	wc->fp_chunks = FP_CHUNKS;
	if (o->fp_chunks) {
		char *end;
		errno = 0;
		unsigned long c = strtoul(o->fp_chunks, &end, 10);
		if (errno || end == o->fp_chunks || *end || c < 1 || c > FP_CHUNKS_MAX) {
			fprintf(stderr, "%s: bad --fp-chunks '%s' (1..%d)\n", who, o->fp_chunks,
				FP_CHUNKS_MAX);
			return -1;
		}
		wc->fp_chunks = (uint32_t)c;
	}
	wc->layers = malloc((size_t)L);
	/* Without partial reuse a near hit is taken whole, and the fingerprint's 4 chunks find
	 * unrelated texts of one length near (FP_CHUNKS): exact repeats only, unless asked. */
	bool exact_only = !wc->align && !o->tau;
	if (exact_only)
		tau = 1.0;
	wc->tau = o->tau || exact_only ? malloc((size_t)L * sizeof(float)) : NULL;
	wc->proj = projection(sc, wc->fp_chunks);
	if (!wc->layers || ((o->tau || exact_only) && !wc->tau) || !wc->proj) {
		fprintf(stderr, "%s: out of memory\n", who);
		lbw_cache_close(wc);
		return -1;
	}
	if (parse_layers(o->layers ? o->layers : "all", wc->layers, L, who) < 0) {
		lbw_cache_close(wc);
		return -1;
	}
	for (int32_t l = 0; wc->tau && l < L; l++)
		wc->tau[l] = (float)tau;

	char name[LB_NAME_MAX + 1];
	model_name(sc, name);
	struct lb_model_desc d = {
		.name = name,
		.weights_hash = sc->weights_hash,
		.n_layers = (uint32_t)L,
		.hidden = (uint32_t)sc->hidden,
		.dtype = LB_DTYPE_F32,
		.max_seq = (uint32_t)sc->max_seq,
		.fp_chunks = wc->fp_chunks,
		.fp_seed = FP_SEED,
		/* A decoder's prefix blocks: the llama state's layout (generate, serve's gen). */
		.kv_dim = (uint32_t)sc->kv_dim,
		.block_tokens = sc->kv_dim ? LBW_LLAMA_BLOCK : 0,
		.kv_layers = sc->llama ? (uint32_t)sc->llama->cfg.kv_layers : 0,
	};
	uint32_t model_id = 0;
	int rc;
	if (o->socket) {
		const char *why = NULL;
		rc = lb_connect(o->socket, who, &wc->c);
		if (rc == 0) {
			rc = lb_register_model(wc->c, &d, &model_id);
			if (rc < 0 && *lb_last_error(wc->c))
				why = lb_last_error(wc->c);
		}
		if (rc < 0) {
			fprintf(stderr, "%s: warning: layer cache %s unavailable (%s%s%s); running "
					"without it\n", who, o->socket, strerror(-rc), why ? ": " : "",
				why ? why : "");
			lb_close(wc->c);
			wc->c = NULL;
		}
	} else if (o->redis) {
		if (open_redis(wc, o->redis, sc, name, who) < 0) {
			lbw_cache_close(wc);
			return -1;
		}
	} else if (o->private_bytes) {
		if (open_private(wc, o->private_bytes, who) < 0) {
			lbw_cache_close(wc);
			return -1;
		}
		rc = lbip_bank_register(wc->bank, &d, &model_id);
		if (rc < 0) {
			fprintf(stderr, "%s: cannot register %s with the in-process bank: %s\n", who,
				sc->name, strerror(-rc));
			lbw_cache_close(wc);
			return -1;
		}
	}
	wc->cfg = (struct lb_lem_cfg){
		.model_id = model_id,
		.n_layers = (uint32_t)L,
		.hidden = (uint32_t)sc->hidden,
		.proj = wc->proj,
		.tau = wc->tau,
		.cache_layers = wc->layers,
		.revalidate = reval,
		.seed = FP_SEED,
		.flags = o->no_sflight ? LB_LEM_NO_SFLIGHT : 0,
	};
	return 0;
}
