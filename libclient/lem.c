/*
 * The layer execution manager (LLMCache): look up the deepest reusable layer of an input, run
 * the layers above it through the caller's callback, insert the selected ones, revalidate a
 * sampled share of hits. Falls back to a plain forward pass whenever the cache is away.
 * Single-flight: the lookup claims an input nobody computes, and waits for one another client
 * computes, so that a fleet computes each new input once.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "client_internal.h"
#include "rng.h"

#define LEM_MAX_LAYERS 1024u
#define LEM_MAX_HIDDEN 65536u
/* A single-flight bound: this many times what computing the input took recently, plus a
 * margin for the scheduler (a worker that loses its CPU for a time slice or two on a loaded
 * host: tens of ms, more than a small model's whole forward pass). A wait or a claim that runs
 * out early makes a second computation, while a generous bound is cheap: a claimant that dies
 * releases its waiters at once, and one that finishes releases them when it does. */
#define SF_BOUND_FACTOR 4u
#define SF_BOUND_MARGIN_NS 50000000ull

/* One run's view of the cache: c stays NULL once any call failed (see lb_lem_run). */
struct lem {
	struct lb_client *c;
	struct lb_client *client;     /* the caller's, kept when c is dropped: for its staging */
	const struct lb_lem_cfg *cfg;
	struct lb_key key;
	struct lb_lem_result *res;
	struct lb_hit hit;            /* held while have_hit: until the layer above has read it */
	int have_hit;
	uint32_t approx;              /* of the inserts: the hit's hamming, 0 without a hit */
	uint64_t claim;               /* the input's single-flight claim, held until the run ends */
	uint64_t compute_ns;          /* time in compute, for the next runs' bound */
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

/* Fingerprint and token hash of the input: the key of every lookup and insert of this run. */
static void lem_key(struct lem *m, const int32_t *tokens, const float *h, uint32_t n)
{
	int rc = lb_fingerprint(m->cfg->proj, h, n, m->key.fp);

	if (rc < 0) {
		lem_fail(m, rc);
		return;
	}
	lb_token_hash(tokens, n, m->key.exact);
	m->key.seq_len = n;
}

/* The single-flight bound for an input of n tokens (lb_lem_run). */
static uint32_t lem_sf_bound_us(const struct lem *m, uint32_t n)
{
	uint64_t per = m->client->lem_tok_ns;
	if (!per)
		return LB_SFLIGHT_MAX_US;
	uint64_t ns = per * n * m->cfg->n_layers * SF_BOUND_FACTOR + SF_BOUND_MARGIN_NS;
	return ns >= (uint64_t)LB_SFLIGHT_MAX_US * 1000 ? LB_SFLIGHT_MAX_US : (uint32_t)(ns / 1000);
}

/* Does the config insert any layer? Without, a claim would make the others wait for nothing. */
static int lem_inserts(const struct lb_lem_cfg *cfg)
{
	if (!cfg->cache_layers)
		return 1;
	for (uint32_t l = 0; l < cfg->n_layers; l++)
		if (cfg->cache_layers[l])
			return 1;
	return 0;
}

/* lb_lookup_deepest, with single-flight unless the config or the daemon has none. */
static int lem_lookup_call(struct lem *m, uint32_t n)
{
	const struct lb_lem_cfg *cfg = m->cfg;
	uint32_t n_tau = cfg->tau ? cfg->n_layers : 0;
	struct lb_sflight sf;

	/* An in-process bank (pump) has one client: nobody to wait for, nobody to wait for us. */
	if (!(cfg->flags & LB_LEM_NO_SFLIGHT) && !m->c->sflight_off && !m->c->pump) {
		uint32_t flags = LB_SFLIGHT_WAIT | (lem_inserts(cfg) ? LB_SFLIGHT_CLAIM : 0);
		int rc = lb_lookup_sflight(m->c, cfg->model_id, &m->key, cfg->tau, n_tau, flags,
					   lem_sf_bound_us(m, n), &m->hit, &sf);
		if (rc != -EINVAL) {
			m->claim = sf.claim;
			m->res->waited_us = sf.waited_us;
			m->res->sflight = (sf.claim ? LB_LEM_CLAIMED : 0) |
					  (sf.flags & LB_SFLIGHT_WAITED ? LB_LEM_WAITED : 0) |
					  (sf.flags & LB_SFLIGHT_BUSY ? LB_LEM_BUSY : 0);
			return rc;
		}
		/* A daemon that predates single-flight refuses the flags (our arguments are
		 * checked): without them from now on, until a reconnection. */
		m->c->sflight_off = true;
	}
	return lb_lookup_deepest(m->c, cfg->model_id, &m->key, cfg->tau, n_tau, &m->hit);
}

/* Hold the deepest cached layer of the input in m->hit, if one fits.
 * @return the first layer to compute. */
static uint32_t lem_lookup(struct lem *m, uint32_t n)
{
	int rc = lem_lookup_call(m, n);

	if (rc != 0) {
		if (rc != -ENOENT)
			lem_fail(m, rc);
		return 0;
	}
	if (!hit_fits(m, &m->hit, n)) {
		lem_release(m, m->hit.lease);
		return 0;
	}
	m->have_hit = 1;
	m->res->hit_layer = (int32_t)m->hit.layer;
	m->res->hit_hamming = m->hit.hamming;
	/* The layers computed on top of it are as far from exact as it is: their inserts say so,
	 * and the daemon never serves them as exact (no compounding). */
	m->approx = m->hit.hamming;
	return m->hit.layer + 1;
}

/* Is the hit among the share cfg->revalidate of hits drawn for revalidation? */
static int lem_revalidate_drawn(const struct lem *m)
{
	uint64_t s = m->cfg->seed ^ m->key.exact[0] ^ (m->hit.lease * 0x9e3779b97f4a7c15ull);
	double u = (double)(lbu_splitmix64(&s) >> 11) * 0x1.0p-53;

	return u < m->cfg->revalidate;
}

/* Staging for the output of a layer to insert, or NULL: too large for staging, or busy (the
 * layer is then computed without inserting). */
static float *lem_stage(struct lem *m, const float **cur, float *h, uint64_t bytes)
{
	/* Staging is one buffer: an input still there moves to h first. */
	if (*cur != h && !(m->have_hit && *cur == m->hit.data)) {
		memcpy(h, *cur, bytes);
		*cur = h;
	}
	return lb_insert_reserve(m->c, bytes);
}

static void lem_commit(struct lem *m, uint32_t l, uint32_t n)
{
	struct lb_shape shape = { .dtype = LB_DTYPE_F32, .ndim = 2, .dims = { n, m->cfg->hidden } };
	int r = lb_insert_commit_approx(m->c, m->cfg->model_id, l, &m->key, &shape, m->approx);

	if (r == 0)
		m->res->layers_inserted++;
	else if (r != -EEXIST && r != -ENOSPC && r != -EDQUOT)
		lem_fail(m, r); /* a full cache or quota still serves lookups */
}

/* Run layer l from *cur, inserting its output when the config selects it; *cur becomes that
 * output. @return 0, or compute's error. */
static int lem_layer(struct lem *m, uint32_t l, const float **cur, float *h, uint32_t n,
		     lb_layer_fn compute, void *ctx)
{
	const struct lb_lem_cfg *cfg = m->cfg;
	float *out = h, *st = NULL;
	int rc;

	if (m->c && (!cfg->cache_layers || cfg->cache_layers[l]))
		st = lem_stage(m, cur, h, (uint64_t)n * cfg->hidden * sizeof(float));
	if (st)
		out = st;
	uint64_t t0 = lb_now_ns();
	rc = compute(ctx, l, *cur, out);
	m->compute_ns += lb_now_ns() - t0;
	m->res->layers_computed++;
	if (m->have_hit && *cur == m->hit.data) {
		lem_release(m, m->hit.lease);
		m->have_hit = 0;
	}
	if (st && (rc < 0 || !m->c)) {
		/* Give the reservation back without a commit (nothing is in flight). */
		m->client->reserved_off = UINT64_MAX;
		st = NULL;
	}
	if (rc < 0)
		return rc;
	if (st)
		lem_commit(m, l, n);
	*cur = out;
	return 0;
}

/* The run is over: its claim released (the others wait no longer), what computing took
 * learnt for the next runs' bounds. */
static void lem_end(struct lem *m, uint32_t n)
{
	/* Also after a call of the run failed (a time-out: the daemon may be slow, not gone), or
	 * the others would wait for this claim until its bound. Sent without waiting for the
	 * answer, behind the run's inserts; a daemon that is gone took the claim with it. */
	if (m->claim && !lbi_give_back(m->client, m->claim) && lb_connected(m->client))
		lb_release(m->client, m->claim);
	m->claim = 0;
	if (m->client && m->res->layers_computed) {
		uint64_t per = m->compute_ns / ((uint64_t)m->res->layers_computed * n);
		struct lb_client *c = m->client;
		c->lem_tok_ns = c->lem_tok_ns ? (3 * c->lem_tok_ns + per) / 4 : per;
		if (!c->lem_tok_ns)
			c->lem_tok_ns = 1; /* known, and below 1 ns */
	}
}

LB_EXPORT int lb_lem_run(struct lb_client *c, const struct lb_lem_cfg *cfg, const int32_t *tokens,
			 uint32_t n, float *h, lb_layer_fn compute, void *ctx, struct lb_lem_result *res)
{
	struct lb_lem_result dummy;
	struct lem m = { .c = c, .client = c, .cfg = cfg, .res = res ? res : &dummy };
	uint32_t first = 0;   /* the first layer to compute */
	const float *cur = h; /* the input of layer `first`: h, a hit's view or staging */
	int rc = 0;

	if (!cfg || !tokens || !h || !compute || !n || !cfg->n_layers ||
	    cfg->n_layers > LEM_MAX_LAYERS || !cfg->hidden || cfg->hidden > LEM_MAX_HIDDEN ||
	    (c && !cfg->proj))
		return -EINVAL;
	memset(m.res, 0, sizeof(*m.res));
	m.res->hit_layer = -1;
	if (m.c)
		lem_key(&m, tokens, h, n);
	if (m.c)
		first = lem_lookup(&m, n);
	if (m.have_hit && m.c && cfg->revalidate > 0 && lem_revalidate_drawn(&m)) {
		rc = revalidate(&m, &m.hit, h, n, compute, ctx);
		if (rc < 0) {
			lem_release(&m, m.hit.lease);
			goto out;
		}
	}
	if (m.have_hit)
		cur = m.hit.data;
	for (uint32_t l = first; l < cfg->n_layers; l++) {
		rc = lem_layer(&m, l, &cur, h, n, compute, ctx);
		if (rc < 0)
			goto out;
	}
	if (cur != h)
		memcpy(h, cur, (uint64_t)n * cfg->hidden * sizeof(float));
	if (m.have_hit)
		lem_release(&m, m.hit.lease);
out:
	lem_end(&m, n);
	return rc;
}
