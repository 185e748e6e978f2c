/*
 * The layer execution manager (LLMCache): look up the deepest reusable layer of an input, run
 * the layers above it through the caller's callback, insert the selected ones, revalidate a
 * sampled share of hits. Falls back to a plain forward pass whenever the cache is away.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "client_internal.h"
#include "rng.h"

#define LEM_MAX_LAYERS 1024u
#define LEM_MAX_HIDDEN 65536u

/* One run's view of the cache: c stays NULL once any call failed (see lb_lem_run). */
struct lem {
	struct lb_client *c;
	const struct lb_lem_cfg *cfg;
	struct lb_key key;
	struct lb_lem_result *res;
};

/* A miss-like answer keeps the cache; anything else stops using it for the rest of the run. */
static void lem_fail(struct lem *m, int err)
{
	if (!m->res->cache_error)
		m->res->cache_error = err;
	m->c = NULL;
}

/* The daemon went away or broke the protocol: stop using it for the rest of the run. Other
 * refusals (too many leases, no room) concern one request only. */
static int gone(int err)
{
	return err == -ETIMEDOUT || err == -EPIPE || err == -ECONNRESET || err == -ENOTCONN ||
	       err == -EPROTO;
}

/* 1 - cosine(a, b) in double, clamped to >= 0; 0 when both are zero vectors. */
static float drift_of(const float *a, const float *b, uint64_t count)
{
	double ab = 0, aa = 0, bb = 0;
	for (uint64_t i = 0; i < count; i++) {
		ab += (double)a[i] * (double)b[i];
		aa += (double)a[i] * (double)a[i];
		bb += (double)b[i] * (double)b[i];
	}
	if (aa == 0 && bb == 0)
		return 0.0f;
	if (aa == 0 || bb == 0)
		return 1.0f;
	double d = 1.0 - ab / (sqrt(aa) * sqrt(bb));
	return d > 0 ? (float)d : 0.0f;
}

/* Is hit an f32 [n][hidden] tensor of a layer of this model? */
static int hit_fits(const struct lem *m, const struct lb_hit *hit, uint32_t n)
{
	uint64_t bytes = (uint64_t)n * m->cfg->hidden * sizeof(float);
	if (!hit->data || hit->dtype != LB_DTYPE_F32 || hit->bytes != bytes ||
	    hit->layer >= m->cfg->n_layers)
		return 0;
	if (hit->ndim != 2 || hit->shape[0] != n || hit->shape[1] != m->cfg->hidden)
		return 0;
	return 1;
}

static void lem_release(struct lem *m, uint64_t lease)
{
	if (!m->c)
		return;
	int rc = lb_release(m->c, lease);
	if (rc < 0 && rc != -EINVAL)
		lem_fail(m, rc);
}

/*
 * Recompute layer L of a hit from its input (the embedding when L = 0, else the cached output of
 * L - 1) and REPORT the drift. Skipped silently when that input or memory is missing.
 */
static int revalidate(struct lem *m, const struct lb_hit *hit, const float *emb, uint32_t n,
		      lb_layer_fn compute, void *ctx)
{
	const struct lb_lem_cfg *cfg = m->cfg;
	uint64_t count = (uint64_t)n * cfg->hidden;
	struct lb_hit prev;
	const float *in = emb;
	int have_prev = 0, rc = 0;

	if (hit->layer > 0) {
		rc = lb_lookup(m->c, cfg->model_id, hit->layer - 1, &m->key, cfg->tau,
			       cfg->tau ? cfg->n_layers : 0, &prev);
		if (rc < 0) {
			/* Revalidation is optional: only a daemon that is gone ends the cache for
			 * this run (and then the caller's lease went with the connection). */
			if (gone(rc))
				lem_fail(m, rc);
			return 0;
		}
		have_prev = 1;
		if (!hit_fits(m, &prev, n) || prev.layer != hit->layer - 1) {
			lem_release(m, prev.lease);
			return 0;
		}
		in = prev.data;
	}
	float *fresh = malloc(count * sizeof(float));
	if (fresh) {
		rc = compute(ctx, hit->layer, in, fresh);
		if (rc == 0) {
			m->res->revalidated++;
			int r = lb_report(m->c, hit->lease, drift_of(fresh, hit->data, count));
			if (r == 0)
				m->res->reports++;
			else if (r != -EINVAL)
				lem_fail(m, r);
		}
		free(fresh);
	}
	if (have_prev)
		lem_release(m, prev.lease);
	return rc;
}

LB_EXPORT int lb_lem_run(struct lb_client *c, const struct lb_lem_cfg *cfg, const int32_t *tokens,
			 uint32_t n, float *h, lb_layer_fn compute, void *ctx, struct lb_lem_result *res)
{
	struct lb_lem_result dummy;
	struct lem m;
	struct lb_hit hit;
	int have_hit = 0, rc;

	if (!cfg || !tokens || !h || !compute || !n || !cfg->n_layers ||
	    cfg->n_layers > LEM_MAX_LAYERS || !cfg->hidden || cfg->hidden > LEM_MAX_HIDDEN ||
	    (c && !cfg->proj))
		return -EINVAL;
	if (!res)
		res = &dummy;
	memset(res, 0, sizeof(*res));
	res->hit_layer = -1;
	memset(&m, 0, sizeof(m));
	m.c = c;
	m.cfg = cfg;
	m.res = res;

	uint64_t count = (uint64_t)n * cfg->hidden, bytes = count * sizeof(float);
	uint32_t first = 0;          /* the first layer to compute */
	const float *cur = h;        /* the input of layer `first`: h, a hit's view or staging */

	if (m.c) {
		rc = lb_fingerprint(cfg->proj, h, n, m.key.fp);
		if (rc < 0)
			lem_fail(&m, rc);
	}
	if (m.c) {
		lb_token_hash(tokens, n, m.key.exact);
		m.key.seq_len = n;
		rc = lb_lookup_deepest(m.c, cfg->model_id, &m.key, cfg->tau,
				       cfg->tau ? cfg->n_layers : 0, &hit);
		if (rc == 0) {
			if (hit_fits(&m, &hit, n)) {
				have_hit = 1;
				res->hit_layer = (int32_t)hit.layer;
				res->hit_hamming = hit.hamming;
				first = hit.layer + 1;
			} else {
				lem_release(&m, hit.lease);
			}
		} else if (rc != -ENOENT) {
			lem_fail(&m, rc);
		}
	}
	if (have_hit && m.c && cfg->revalidate > 0) {
		uint64_t s = cfg->seed ^ m.key.exact[0] ^ (hit.lease * 0x9e3779b97f4a7c15ull);
		double u = (double)(lbu_splitmix64(&s) >> 11) * 0x1.0p-53;
		if (u < cfg->revalidate) {
			rc = revalidate(&m, &hit, h, n, compute, ctx);
			if (rc < 0) {
				lem_release(&m, hit.lease);
				return rc;
			}
		}
	}
	if (have_hit)
		cur = hit.data;

	for (uint32_t l = first; l < cfg->n_layers; l++) {
		float *out = h;
		int insert = m.c && (!cfg->cache_layers || cfg->cache_layers[l]);
		if (insert) {
			/* Staging is one buffer: an input still there moves to h first. */
			if (cur != h && !(have_hit && cur == hit.data)) {
				memcpy(h, cur, bytes);
				cur = h;
			}
			float *st = lb_insert_reserve(m.c, bytes);
			if (st)
				out = st;
			else
				insert = 0; /* too large for staging, or busy: compute without inserting */
		}
		rc = compute(ctx, l, cur, out);
		res->layers_computed++;
		if (have_hit && cur == hit.data) {
			lem_release(&m, hit.lease);
			have_hit = 0;
		}
		if (insert && (rc < 0 || !m.c)) {
			/* Give the reservation back without a commit (nothing is in flight). */
			c->reserved_off = UINT64_MAX;
			insert = 0;
		}
		if (rc < 0)
			return rc;
		if (insert) {
			struct lb_shape shape = { .dtype = LB_DTYPE_F32, .ndim = 2, .dims = { n, cfg->hidden } };
			int r = lb_insert_commit(m.c, cfg->model_id, l, &m.key, &shape);
			if (r == 0)
				res->layers_inserted++;
			else if (r != -EEXIST && r != -ENOSPC && r != -EDQUOT)
				lem_fail(&m, r); /* a full cache or quota still serves lookups */
		}
		cur = out;
	}
	if (cur != h)
		memcpy(h, cur, bytes);
	if (have_hit)
		lem_release(&m, hit.lease);
	return 0;
}
