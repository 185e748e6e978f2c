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
/* A lookup waits for the daemon's second tier (LB_SFLIGHT_TIER) when computing the input would
 * take at least this long by what computing took recently: a fetch from the cluster takes
 * 1-4 ms on a loaded host (layerbank-bench l2: a BERT-base entry, 128 x 768 floats), so a model
 * cheaper than that loses by waiting (stories260K, well under 1 ms a request), while BERT-base
 * (over 30 ms) gains. Unknown (no run timed yet): no wait. */
#define LEM_TIER_MIN_NS 10000000ull

/* One run's view of the cache: c stays NULL once any call failed (see lb_lem_run). */
struct lem {
	struct lb_client *c;
	struct lb_client *client;     /* the caller's, kept when c is dropped: for its staging */
	const struct lb_lem_cfg *cfg;
	const int32_t *tokens;        /* the input's n */
	uint32_t n;
	lb_rows_fn rows;              /* NULL: no partial reuse (lb_lem_run) */
	double recompute;             /* the share of aligned positions recomputed */
	bool st_tokens;               /* the reservation has room for the tokens */
	struct lb_key key;
	struct lb_lem_result *res;
	struct lb_hit hit;            /* held while have_hit: until the layer above has read it */
	int have_hit;
	uint32_t approx;              /* of the inserts: the hit's hamming, 0 without a hit */
	uint64_t claim;               /* the input's single-flight claim, held until the run ends */
	uint64_t compute_ns;          /* time in compute, for the next runs' bound */
	float *kept;                  /* a partial reuse to revalidate: its layers (revalidate) */
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

LB_EXPORT float lb_drift(const float *a, const float *b, uint64_t count)
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
static bool hit_fits(const struct lem *m, const struct lb_hit *hit, uint32_t n)
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
	/* Also once the run stopped using the cache after a time-out: the daemon may be slow,
	 * not gone, and would keep the lease until the connection ends. */
	if (!m->c) {
		if (m->client && lb_connected(m->client))
			(void)lbi_give_back_quiet(m->client, lease);
		return;
	}
	if (lbi_give_back_quiet(m->c, lease)) /* nothing to wait for */
		return;
	/* Too many sent without waiting for: the daemon answers them first. */
	if (m->c->inflight && lbi_drain(m->c, m->c->wait_ns) == 0 &&
	    lbi_give_back_quiet(m->c, lease))
		return;
	int rc = lb_release(m->c, lease);
	if (rc < 0 && rc != -EINVAL)
		lem_fail(m, rc);
}

/* REPORT drift on lease, of layer (-1: the entry's own); a refusal concerns that report alone. */
static void lem_report(struct lem *m, uint64_t lease, int layer, float drift)
{
	int r = layer < 0 ? lb_report(m->c, lease, drift)
			  : lb_report_layer(m->c, lease, (uint32_t)layer, drift);
	if (r == 0)
		m->res->reports++;
	else if (r != -EINVAL)
		lem_fail(m, r);
}

/*
 * Check the state a run reused at layer L (used: the hit's view, or what a partial reuse
 * assembled there) against the plain forward pass: layers 0..L recomputed from the input's
 * embedding (emb, the caller's copy, computed over in place), the drift REPORTed on the hit's
 * lease, so that the daemon learns how far reuses at this distance drift (its threshold
 * controller). kept (a partial reuse: what it assembled at layers 1..L-1, layer l at
 * kept + l n hidden; else NULL): each of those layers' drift is reported too, as the drift a
 * reuse stopping there would have had; without them a layer's controller would hear only from
 * the reuses that stop at it, and the shallow ones from almost none. @return 0, or compute's
 * error.
 */
static int revalidate(struct lem *m, uint32_t L, const float *used, float *emb,
		      const float *kept, lb_layer_fn compute, void *ctx)
{
	uint64_t count = (uint64_t)m->n * m->cfg->hidden;

	for (uint32_t l = 0; l <= L; l++) {
		int rc = compute(ctx, l, emb, emb);
		if (rc < 0)
			return rc;
		if (kept && l >= 1 && l < L && m->c)
			lem_report(m, m->hit.lease, (int)l, lb_drift(emb, kept + l * count, count));
	}
	m->res->revalidated += L + 1;
	if (m->c)
		lem_report(m, m->hit.lease, -1, lb_drift(emb, used, count));
	return 0;
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

/* Does the config insert layer l? */
static bool lem_inserts_layer(const struct lb_lem_cfg *cfg, uint32_t l)
{
	return !cfg->cache_layers || cfg->cache_layers[l];
}

/* Does the config insert any layer? Without, a claim would make the others wait for nothing. */
static int lem_inserts(const struct lb_lem_cfg *cfg)
{
	for (uint32_t l = 0; l < cfg->n_layers; l++)
		if (lem_inserts_layer(cfg, l))
			return 1;
	return 0;
}

/* lb_lookup_deepest, with single-flight unless the config or the daemon has none, of any
 * length when the run can align (rows). */
static int lem_lookup_call(struct lem *m, uint32_t n)
{
	const struct lb_lem_cfg *cfg = m->cfg;
	uint32_t n_tau = cfg->tau ? cfg->n_layers : 0;
	struct lb_sflight sf;

	for (;;) {
		uint32_t flags = 0, bound = 0;
		/* An in-process bank (pump) has one client: nobody to wait for, nobody to wait
		 * for us. */
		if (!(cfg->flags & LB_LEM_NO_SFLIGHT) && !m->c->sflight_off && !m->c->pump) {
			flags = LB_SFLIGHT_WAIT | (lem_inserts(cfg) ? LB_SFLIGHT_CLAIM : 0);
			bound = lem_sf_bound_us(m, n);
			if (!m->c->tier_off &&
			    m->client->lem_tok_ns * n * cfg->n_layers >= LEM_TIER_MIN_NS)
				flags |= LB_SFLIGHT_TIER;
		}
		if (m->rows && !m->c->any_len_off)
			flags |= LB_LOOKUP_ANY_LEN;
		if (!flags)
			return lb_lookup_deepest(m->c, cfg->model_id, &m->key, cfg->tau, n_tau,
						 &m->hit);
		int rc = lb_lookup_sflight(m->c, cfg->model_id, &m->key, cfg->tau, n_tau, flags,
					   bound, &m->hit, &sf);
		if (rc != -EINVAL) {
			m->claim = sf.claim;
			m->res->waited_us = sf.waited_us;
			m->res->sflight = (sf.claim ? LB_LEM_CLAIMED : 0) |
					  (sf.flags & LB_SFLIGHT_WAITED ? LB_LEM_WAITED : 0) |
					  (sf.flags & LB_SFLIGHT_BUSY ? LB_LEM_BUSY : 0);
			return rc;
		}
		/* A daemon that predates a flag refuses it (our arguments are checked): without
		 * it from now on, until a reconnection. */
		if (flags & LB_SFLIGHT_TIER)
			m->c->tier_off = true;
		else if (flags & LB_LOOKUP_ANY_LEN)
			m->c->any_len_off = true;
		else
			m->c->sflight_off = true;
	}
}

/* What a run with partial reuse (rows) does with its hit. */
enum use { USE_WHOLE, USE_ALIGNED, USE_NONE };

/* USE_ALIGNED with the cached input's tokens (*ct, *cm) for a hit on another input that the
 * run can align with; USE_NONE for one it cannot (its layer 0 only: layer 0 is computed whole
 * anyway, and taking another input's states whole is what alignment is there to avoid);
 * USE_WHOLE for the same tokens, and without rows or token ids (lb_lem_run's reuse). */
static enum use lem_use(const struct lem *m, const int32_t **ct, uint32_t *cm)
{
	bool cont = m->cfg->flags & LB_LEM_CONTINUE; /* a whole hit would leave layers unseen */
	*ct = lb_hit_tokens(&m->hit, cm);
	if (!m->rows || !*ct)
		return cont ? USE_NONE : USE_WHOLE;
	if (!cont && *cm == m->n && !memcmp(*ct, m->tokens, (size_t)m->n * sizeof(**ct)))
		return USE_WHOLE;
	return m->hit.layer >= 1 && hit_fits(m, &m->hit, *cm) ? USE_ALIGNED : USE_NONE;
}

/* Hold the deepest cached layer of the input in m->hit, if one fits; *ct (cm tokens) the
 * cached input's tokens when the hit is to be aligned (lem_aligned), else NULL.
 * @return the first layer to compute. */
static uint32_t lem_lookup(struct lem *m, uint32_t n, const int32_t **ct, uint32_t *cm)
{
	int rc = lem_lookup_call(m, n);

	*ct = NULL;
	if (rc != 0) {
		if (rc != -ENOENT)
			lem_fail(m, rc);
		return 0;
	}
	enum use use = lem_use(m, ct, cm);
	if (use != USE_ALIGNED)
		*ct = NULL;
	if (use == USE_NONE || (use == USE_WHOLE && !hit_fits(m, &m->hit, n))) {
		lem_release(m, m->hit.lease);
		return 0;
	}
	m->have_hit = 1;
	m->res->hit_layer = (int32_t)m->hit.layer;
	m->res->hit_hamming = m->hit.hamming;
	/* The layers computed on top of it are as far from exact as it is: their inserts say so,
	 * and the daemon never serves them as exact (no compounding). */
	m->approx = m->hit.hamming;
	if (*ct)
		return 0;
	m->res->reused = (float)(m->hit.layer + 1) / (float)m->cfg->n_layers;
	return m->hit.layer + 1;
}

/* Is the hit among the share cfg->revalidate of hits drawn for revalidation? */
static int lem_revalidate_drawn(const struct lem *m)
{
	uint64_t s = m->cfg->seed ^ m->key.exact[0] ^ (m->hit.lease * 0x9e3779b97f4a7c15ull);
	double u = (double)(lbu_splitmix64(&s) >> 11) * 0x1.0p-53;

	return u < m->cfg->revalidate;
}

/* Staging for the output of a layer to insert (and the input's tokens after it, unless the
 * daemon refuses them), or NULL: too large for staging, or busy (the layer is then computed
 * without inserting). */
static float *lem_reserve(struct lem *m, uint64_t bytes)
{
	m->st_tokens = !m->c->tokens_off;
	uint64_t size = m->st_tokens ? lb_insert_tokens_bytes(bytes, m->n) : bytes;
	float *st = lb_insert_reserve(m->c, size);
	/* Staging holds the inserts not yet answered: once they are, it is free again. */
	if (!st && errno == EBUSY && m->c->inflight && lbi_drain(m->c, m->c->wait_ns) == 0)
		st = lb_insert_reserve(m->c, size);
	return st;
}

static float *lem_stage(struct lem *m, const float **cur, float *h, uint64_t bytes)
{
	/* Staging is one buffer: an input still there moves to h first. */
	if (*cur != h && !(m->have_hit && *cur == m->hit.data)) {
		memcpy(h, *cur, bytes);
		*cur = h;
	}
	return lem_reserve(m, bytes);
}

static void lem_commit(struct lem *m, uint32_t l, uint32_t n, uint32_t approx)
{
	struct lb_shape shape = { .dtype = LB_DTYPE_F32, .ndim = 2, .dims = { n, m->cfg->hidden } };
	/* Not waited for: the daemon's copy runs while the next layer is computed, and the run
	 * pays no round trip per layer (on a host whose cores the workers keep busy, each could
	 * cost a scheduler's time slice). Its refusals (cached already, no room, the quota) are
	 * not errors anyway; an old daemon's refusal of token ids turns them off. */
	int r = lbi_insert_deferred(m->c, m->cfg->model_id, l, &m->key, &shape, approx,
				    m->st_tokens ? m->tokens : NULL);

	if (r == 0)
		m->res->layers_inserted++;
	else if (r == -EINVAL && m->st_tokens)
		m->c->tokens_off = true; /* a daemon that predates token ids: without them */
	else if (r != -EEXIST && r != -ENOSPC && r != -EDQUOT)
		lem_fail(m, r); /* a full cache or quota still serves lookups */
}

/* Insert layer l's output, computed elsewhere than in staging, when the config selects it. */
static void lem_insert_copy(struct lem *m, uint32_t l, const float *out, uint32_t approx)
{
	uint64_t bytes = (uint64_t)m->n * m->cfg->hidden * sizeof(float);
	float *st;

	if (!m->c || !lem_inserts_layer(m->cfg, l) ||
	    !(st = lem_reserve(m, bytes)))
		return;
	memcpy(st, out, bytes);
	lem_commit(m, l, m->n, approx);
}

/* Run layer l from *cur, inserting its output when the config selects it; *cur becomes that
 * output. @return 0, or compute's error. */
static int lem_layer(struct lem *m, uint32_t l, const float **cur, float *h, uint32_t n,
		     lb_layer_fn compute, void *ctx)
{
	const struct lb_lem_cfg *cfg = m->cfg;
	float *out = h, *st = NULL;
	int rc;

	if (m->c && lem_inserts_layer(cfg, l))
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
		lem_commit(m, l, n, m->approx);
	*cur = out;
	return 0;
}

/* A position of the input and how far its layer-0 state is from the cached input's. */
struct dev {
	float d;
	uint32_t i;
};

static int dev_cmp(const void *pa, const void *pb)
{
	const struct dev *a = pa, *b = pb;
	if (a->d != b->d)
		return a->d < b->d ? 1 : -1; /* the largest first */
	return a->i < b->i ? -1 : a->i > b->i;
}

/* Whether hit (rc its lookup's answer) is layer l of the cached input, of tokens ct (cm of
 * them); one that is not is released. Only that input's: a lookup whose exact key is gone
 * (evicted) answers with the nearest fingerprint's, maybe another input of that length, whose
 * states at the aligned positions would be another text's. */
static bool lem_is_cached_layer(struct lem *m, int rc, const struct lb_hit *hit,
				const int32_t *ct, uint32_t l, uint32_t cm)
{
	uint32_t hn;
	if (rc < 0) {
		if (rc != -ENOENT && gone(rc))
			lem_fail(m, rc);
		return false;
	}
	const int32_t *ht = lb_hit_tokens(hit, &hn);
	if (hit_fits(m, hit, cm) && hit->layer == l && ht && hn == cm &&
	    !memcmp(ht, ct, (size_t)cm * sizeof(*ct)))
		return true;
	lem_release(m, hit->lease);
	return false;
}

/* Layer l of the cached input keyed x, of tokens ct (cm of them), looked up alone: held in
 * *hit when it is that input's (lem_is_cached_layer). */
static bool lem_cached_layer(struct lem *m, const struct lb_key *x, const int32_t *ct,
			     uint32_t l, uint32_t cm, struct lb_hit *hit)
{
	int rc = lb_lookup(m->c, m->cfg->model_id, l, x, m->cfg->tau,
			   m->cfg->tau ? m->cfg->n_layers : 0, hit);
	return lem_is_cached_layer(m, rc, hit, ct, l, cm);
}

/*
 * The positions recomputed at the reused layers (sel[i] set, rows[] ascending, *n_rows): every
 * edited one (map -1), and the share m->recompute of the aligned ones whose layer-0 state (h,
 * computed) deviates most from the cached input's (c0): CacheBlend's selective recompute, its
 * signal measured on the layer computed whole anyway. @return 0, -ENOMEM.
 */
static int lem_select(struct lem *m, const int32_t *map, uint32_t aligned, const float *h,
		      const float *c0, uint8_t *sel, uint32_t *rows, uint32_t *n_rows)
{
	uint32_t hid = m->cfg->hidden, k = 0;
	uint32_t want = (uint32_t)ceil(m->recompute * aligned);
	struct dev *d = malloc((aligned ? aligned : 1) * sizeof(*d));

	if (!d)
		return -ENOMEM;
	for (uint32_t i = 0; i < m->n; i++) {
		sel[i] = map[i] < 0;
		if (map[i] >= 0)
			d[k++] = (struct dev){ lb_drift(h + (uint64_t)i * hid,
							c0 + (uint64_t)map[i] * hid, hid), i };
	}
	qsort(d, k, sizeof(*d), dev_cmp);
	for (uint32_t j = 0; j < want && j < k; j++)
		sel[d[j].i] = 1;
	free(d);
	if (m->cfg->flags & LB_LEM_CONTINUE)
		sel[m->n - 1] = 1; /* generation reads it, and K and V of all positions come with it */
	*n_rows = 0;
	for (uint32_t i = 0; i < m->n; i++)
		if (sel[i])
			rows[(*n_rows)++] = i;
	return 0;
}

/*
 * The cached input's layers 0..L-1 that a partial reuse reads: asked for together before layer
 * 0 is computed, so that the daemon answers while the worker computes (sent of them, what one
 * batch may hold); those beyond, one lookup each when needed. held[i]: ch[i] is that input's
 * layer i, under lease.
 */
struct lem_src {
	struct lb_key x;   /* the cached input's key */
	const int32_t *ct; /* its tokens */
	uint32_t cm, L;
	int sent;
	uint64_t *tags;
	struct lb_hit *ch;
	int *crc;
	bool *held;
};

/* For the cached input of tokens ct (cm of them), whose layer L is m->hit. @return 0, -ENOMEM. */
static int src_open(const struct lem *m, struct lem_src *s, const int32_t *ct, uint32_t cm)
{
	uint32_t L = m->hit.layer, k = L ? L : 1;
	*s = (struct lem_src){ .x = m->key, .ct = ct, .cm = cm, .L = L };
	lb_token_hash(ct, cm, s->x.exact);
	s->x.seq_len = cm;
	s->tags = malloc(k * sizeof(*s->tags));
	s->ch = malloc(k * sizeof(*s->ch));
	s->crc = malloc(k * sizeof(*s->crc));
	s->held = calloc(k, sizeof(*s->held));
	return s->tags && s->ch && s->crc && s->held ? 0 : -ENOMEM;
}

static void src_ask(struct lem *m, struct lem_src *s)
{
	const struct lb_lem_cfg *cfg = m->cfg;
	if (!s->L)
		return;
	s->sent = lbi_lookups_submit(m->c, cfg->model_id, &s->x, cfg->tau,
				     cfg->tau ? cfg->n_layers : 0, s->L, s->tags);
	if (s->sent < 0 && gone(s->sent))
		lem_fail(m, s->sent);
	if (s->sent < 0)
		s->sent = 0;
}

static void src_collect(struct lem *m, struct lem_src *s)
{
	if (!s->sent)
		return;
	lbi_lookups_wait(m->c, s->tags, (uint32_t)s->sent, s->ch, s->crc);
	for (int i = 0; i < s->sent; i++)
		s->held[i] = lem_is_cached_layer(m, s->crc[i], &s->ch[i], s->ct, (uint32_t)i, s->cm);
}

/* Layer l < L of the cached input, or NULL when it is not there (any more). */
static const struct lb_hit *src_layer(struct lem *m, struct lem_src *s, uint32_t l)
{
	if (l >= (uint32_t)s->sent && m->c)
		s->held[l] = lem_cached_layer(m, &s->x, s->ct, l, s->cm, &s->ch[l]);
	return s->held[l] ? &s->ch[l] : NULL;
}

static void src_done(struct lem *m, struct lem_src *s, uint32_t l)
{
	if (s->held && l < s->L && s->held[l]) {
		lem_release(m, s->ch[l].lease);
		s->held[l] = false;
	}
}

static void src_close(struct lem *m, struct lem_src *s)
{
	for (uint32_t l = 0; l < s->L; l++)
		src_done(m, s, l);
	free(s->tags);
	free(s->ch);
	free(s->crc);
	free(s->held);
}

/*
 * Partial reuse of m->hit, layer L of another input (ct, cm tokens; or the same tokens with
 * LB_LEM_CONTINUE), for this one: layer 0 computed whole into h; then at layers 1..L the
 * selected positions (lem_select) computed by rows from the state below, every other position
 * taking the cached input's state at its aligned position. With every position selected
 * (recompute 1) this is the plain forward pass, bit for bit, and its inserts are exact. Every
 * cached layer read is released on return; the hit is kept for the caller's revalidation.
 * @return the first layer still to compute (h holds its input), or a negative errno from
 * compute or rows.
 */
static int lem_aligned(struct lem *m, const int32_t *ct, uint32_t cm, float *h,
		       lb_layer_fn compute, void *ctx)
{
	const struct lb_lem_cfg *cfg = m->cfg;
	uint32_t n = m->n, hid = cfg->hidden, L = m->hit.layer, n_rows = 0, l = 1;
	int32_t *map = malloc((size_t)n * sizeof(*map));
	uint32_t *rows = malloc((size_t)n * sizeof(*rows));
	uint8_t *sel = malloc(n);
	float *tmp = malloc((uint64_t)n * hid * sizeof(float));
	struct lem_src src;
	int aligned = -ENOMEM, rc = src_open(m, &src, ct, cm);
	const struct lb_hit *c0;

	if (map && rows && sel && tmp && rc == 0)
		aligned = lbi_align(m->tokens, n, ct, cm, map);
	/* Under half the positions aligned: another text, however near its fingerprint; what
	 * it could give is mostly out of context. */
	bool usable = aligned > 0 && (uint32_t)aligned * 2 >= n && m->c;
	if (usable)
		src_ask(m, &src);
	uint64_t t0 = lb_now_ns();
	rc = compute(ctx, 0, h, h);
	m->compute_ns += lb_now_ns() - t0;
	m->res->layers_computed++;
	src_collect(m, &src);
	if (rc < 0)
		goto out;
	lem_insert_copy(m, 0, h, 0);
	if (!usable || !L || !(c0 = src_layer(m, &src, 0)))
		goto out;
	rc = lem_select(m, map, (uint32_t)aligned, h, c0->data, sel, rows, &n_rows);
	if (rc < 0)
		goto out;
	/* Exact when every position is computed: what the cache gave is then not used. */
	uint32_t approx = n_rows == n ? 0 : m->hit.hamming;
	for (; l <= L && m->c; l++) {
		const struct lb_hit *cl = l < L ? src_layer(m, &src, l) : &m->hit;
		if (!cl)
			break;
		/* None selected (a cut text, recompute 0): every position is the cached one's. */
		rc = n_rows ? m->rows(ctx, l, h, n, rows, n_rows, tmp) : 0;
		if (rc == 0) {
			const float *cd = cl->data;
			for (uint32_t i = 0, k = 0; i < n; i++)
				memcpy(h + (uint64_t)i * hid,
				       sel[i] ? tmp + (uint64_t)k++ * hid : cd + (uint64_t)map[i] * hid,
				       hid * sizeof(float));
			if (m->kept && l < L)
				memcpy(m->kept + (uint64_t)l * n * hid, h, (uint64_t)n * hid * sizeof(float));
		}
		src_done(m, &src, l);
		if (rc < 0)
			goto out;
		lem_insert_copy(m, l, h, approx);
	}
	m->approx = approx;
	m->res->aligned = (uint32_t)aligned;
	m->res->rows_computed = n_rows;
	m->res->reused = (float)((double)(l - 1) * (n - n_rows) / ((double)n * cfg->n_layers));
	m->res->hit_layer = l == 1 ? -1 : (int32_t)(l - 1); /* -1: nothing of the cache used */
out:
	src_close(m, &src);
	if (l == 1 && rc >= 0) {
		m->res->hit_layer = -1;
		m->approx = 0; /* layer 0 computed whole: the rest is the plain forward pass */
	}
	free(map);
	free(rows);
	free(sel);
	free(tmp);
	return rc < 0 ? rc : (int)l;
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
	/* The run's inserts and releases went without a doorbell: one wake-up of the daemon serves
	 * them all (the claim's release above rang it already, when there was one). */
	if (m->client)
		lbi_wake(m->client);
	if (m->client && m->res->layers_computed) {
		uint64_t per = m->compute_ns / ((uint64_t)m->res->layers_computed * n);
		struct lb_client *c = m->client;
		c->lem_tok_ns = c->lem_tok_ns ? (3 * c->lem_tok_ns + per) / 4 : per;
		if (!c->lem_tok_ns)
			c->lem_tok_ns = 1; /* known, and below 1 ns */
	}
}

LB_EXPORT int lb_lem_run_rows(struct lb_client *c, const struct lb_lem_cfg *cfg,
			      const int32_t *tokens, uint32_t n, float *h, lb_layer_fn compute,
			      lb_rows_fn rows, double recompute, void *ctx,
			      struct lb_lem_result *res)
{
	struct lb_lem_result dummy;
	struct lem m = { .c = c, .client = c, .cfg = cfg, .res = res ? res : &dummy,
			 .tokens = tokens, .n = n, .rows = rows, .recompute = recompute };
	uint32_t first = 0;   /* the first layer to compute */
	const float *cur = h; /* the input of layer `first`: h, a hit's view or staging */
	const int32_t *ct = NULL;
	uint32_t cm = 0;
	float *emb = NULL; /* the input's embedding, kept for a revalidation */
	int rc = 0;

	if (!cfg || !tokens || !h || !compute || !n || !cfg->n_layers ||
	    cfg->n_layers > LEM_MAX_LAYERS || !cfg->hidden || cfg->hidden > LEM_MAX_HIDDEN ||
	    (c && !cfg->proj) || !(recompute >= 0 && recompute <= 1) ||
	    (cfg->flags & ~(LB_LEM_NO_SFLIGHT | LB_LEM_CONTINUE)) ||
	    ((cfg->flags & LB_LEM_CONTINUE) && !rows))
		return -EINVAL;
	memset(m.res, 0, sizeof(*m.res));
	m.res->hit_layer = -1;
	if (m.c)
		lem_key(&m, tokens, h, n);
	if (m.c)
		first = lem_lookup(&m, n, &ct, &cm);
	/* A decoder's compute leaves K and V behind (LB_LEM_CONTINUE): recomputing its layers
	 * would replace what the run serves. */
	if (m.have_hit && m.c && cfg->revalidate > 0 && !(cfg->flags & LB_LEM_CONTINUE) &&
	    lem_revalidate_drawn(&m))
		emb = malloc((uint64_t)n * cfg->hidden * sizeof(float));
	if (emb)
		memcpy(emb, h, (uint64_t)n * cfg->hidden * sizeof(float));
	/* A partial reuse's layers below the hit's, kept for their reports (slot 0 unused: layer
	 * 0 is computed whole); without the memory they go unreported. */
	if (emb && ct && m.hit.layer >= 2)
		m.kept = malloc((uint64_t)m.hit.layer * n * cfg->hidden * sizeof(float));
	if (ct) {
		rc = lem_aligned(&m, ct, cm, h, compute, ctx);
		first = rc > 0 ? (uint32_t)rc : 0;
		/* Only a reuse up to the hit's layer is that layer's to report. */
		if (rc >= 0 && emb && m.res->hit_layer >= 0 && first - 1 == m.hit.layer)
			rc = revalidate(&m, first - 1, h, emb, m.kept, compute, ctx);
		if (m.have_hit) {
			lem_release(&m, m.hit.lease);
			m.have_hit = 0;
		}
		if (rc < 0)
			goto out;
		rc = 0;
	} else if (emb) {
		rc = revalidate(&m, m.hit.layer, m.hit.data, emb, NULL, compute, ctx);
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
	free(emb);
	free(m.kept);
	lem_end(&m, n);
	return rc;
}

LB_EXPORT int lb_lem_run(struct lb_client *c, const struct lb_lem_cfg *cfg, const int32_t *tokens,
			 uint32_t n, float *h, lb_layer_fn compute, void *ctx, struct lb_lem_result *res)
{
	return lb_lem_run_rows(c, cfg, tokens, n, h, compute, NULL, 0, ctx, res);
}
