/*
 * BERT / GPT-2 shaped encoders: generated weights, packing, and the layer-major forward pass
 * (one layer for all positions at a time, so each weight matrix is streamed once per layer).
 */
#include "model_bert.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "randn.h"

struct lbw_bert_config lbw_bert_config_base(void)
{
	return (struct lbw_bert_config){ 12, 768, 12, 3072, 30522, 512, LBW_STYLE_BERT, 1e-12f };
}

struct lbw_bert_config lbw_bert_config_gpt2(void)
{
	return (struct lbw_bert_config){ 12, 768, 12, 3072, 50257, 1024, LBW_STYLE_GPT2, 1e-5f };
}

static int config_ok(const struct lbw_bert_config *c)
{
	return c->n_layers >= 1 && c->n_layers <= LBW_BERT_MAX_LAYERS && c->hidden >= 1 &&
	       c->hidden <= LBW_BERT_MAX_HIDDEN && c->heads >= 1 && c->hidden % c->heads == 0 &&
	       c->ffn >= 1 && c->ffn <= LBW_BERT_MAX_FFN && c->vocab >= 1 &&
	       c->vocab <= LBW_BERT_MAX_VOCAB && c->max_seq >= 1 && c->max_seq <= LBW_BERT_MAX_SEQ &&
	       (c->style == LBW_STYLE_BERT || c->style == LBW_STYLE_GPT2) && c->eps > 0.0f;
}

/* Hand out consecutive slices of the parameter block (p NULL: count only). */
static float *take(float *p, int64_t *off, int64_t count)
{
	float *r = p ? p + *off : NULL;
	*off += count;
	return r;
}

static int64_t layout(struct lbw_bert *m, float *p)
{
	const int64_t h = m->cfg.hidden, f = m->cfg.ffn;
	int64_t off = 0;
	m->wte = take(p, &off, (int64_t)m->cfg.vocab * h);
	m->wpe = take(p, &off, (int64_t)m->cfg.max_seq * h);
	m->wtt = take(p, &off, h);
	m->emb_ln_g = take(p, &off, h);
	m->emb_ln_b = take(p, &off, h);
	m->lnf_g = take(p, &off, h);
	m->lnf_b = take(p, &off, h);
	for (int l = 0; l < m->cfg.n_layers; l++) {
		struct lbw_bert_layer_w *w = &m->layers[l];
		w->wqkv = take(p, &off, 3 * h * h);
		w->bqkv = take(p, &off, 3 * h);
		w->wo = take(p, &off, h * h);
		w->bo = take(p, &off, h);
		w->ln1_g = take(p, &off, h);
		w->ln1_b = take(p, &off, h);
		w->w1 = take(p, &off, f * h);
		w->b1 = take(p, &off, f);
		w->w2 = take(p, &off, h * f);
		w->b2 = take(p, &off, h);
		w->ln2_g = take(p, &off, h);
		w->ln2_b = take(p, &off, h);
	}
	return off;
}

static void fill(float *p, int64_t n, float v)
{
	for (int64_t i = 0; i < n; i++)
		p[i] = v;
}

struct lbw_bert *lbw_bert_alloc(const struct lbw_bert_config *cfg)
{
	if (!cfg || !config_ok(cfg)) {
		errno = EINVAL;
		return NULL;
	}
	struct lbw_bert *m = calloc(1, sizeof(*m));
	if (!m)
		return NULL;
	m->cfg = *cfg;
	m->layers = calloc((size_t)cfg->n_layers, sizeof(*m->layers));
	if (!m->layers)
		goto oom;
	m->n_params = layout(m, NULL);
	m->params = calloc((size_t)m->n_params, sizeof(float));
	if (!m->params)
		goto oom;
	layout(m, m->params);
	const int64_t h = cfg->hidden;
	fill(m->emb_ln_g, h, 1.0f);
	fill(m->lnf_g, h, 1.0f);
	for (int l = 0; l < cfg->n_layers; l++) {
		fill(m->layers[l].ln1_g, h, 1.0f);
		fill(m->layers[l].ln2_g, h, 1.0f);
	}
	return m;
oom:
	lbw_bert_free(m);
	errno = ENOMEM;
	return NULL;
}

/* Matrices, embeddings and biases: ~N(0, 0.02), as GPT-2 and BERT initialise them. */
static void randn(float *p, int64_t n, uint64_t *s)
{
	lbw_randn(p, n, 0.02f, s);
}

void lbw_bert_init_random(struct lbw_bert *m, uint64_t seed)
{
	const int64_t h = m->cfg.hidden, f = m->cfg.ffn;
	uint64_t s = seed;
	randn(m->wte, (int64_t)m->cfg.vocab * h, &s);
	randn(m->wpe, (int64_t)m->cfg.max_seq * h, &s);
	if (m->cfg.style == LBW_STYLE_BERT)
		randn(m->wtt, h, &s);
	else
		fill(m->wtt, h, 0.0f);
	fill(m->emb_ln_g, h, 1.0f);
	fill(m->emb_ln_b, h, 0.0f);
	fill(m->lnf_g, h, 1.0f);
	fill(m->lnf_b, h, 0.0f);
	for (int l = 0; l < m->cfg.n_layers; l++) {
		struct lbw_bert_layer_w *w = &m->layers[l];
		randn(w->wqkv, 3 * h * h, &s);
		randn(w->bqkv, 3 * h, &s);
		randn(w->wo, h * h, &s);
		randn(w->bo, h, &s);
		randn(w->w1, f * h, &s);
		randn(w->b1, f, &s);
		randn(w->w2, h * f, &s);
		randn(w->b2, h, &s);
		fill(w->ln1_g, h, 1.0f);
		fill(w->ln1_b, h, 0.0f);
		fill(w->ln2_g, h, 1.0f);
		fill(w->ln2_b, h, 0.0f);
	}
}

static void unpack(struct lbw_bert_layer_w *w)
{
	lbk_packed_free(w->pq);
	lbk_packed_free(w->pkv);
	lbk_packed_free(w->po);
	lbk_packed_free(w->p1);
	lbk_packed_free(w->p2);
	w->pq = w->pkv = w->po = w->p1 = w->p2 = NULL;
}

int lbw_bert_pack(struct lbw_bert *m)
{
	const int64_t h = m->cfg.hidden, f = m->cfg.ffn;
	for (int l = 0; l < m->cfg.n_layers; l++) {
		struct lbw_bert_layer_w *w = &m->layers[l];
		unpack(w);
		w->pq = lbk_pack(w->wqkv, h, h);
		w->pkv = lbk_pack(w->wqkv + h * h, 2 * h, h);
		w->po = lbk_pack(w->wo, h, h);
		w->p1 = lbk_pack(w->w1, f, h);
		w->p2 = lbk_pack(w->w2, h, f);
		if (!w->pq || !w->pkv || !w->po || !w->p1 || !w->p2) {
			unpack(w);
			return -ENOMEM;
		}
	}
	return 0;
}

struct lbw_bert *lbw_bert_generate(const struct lbw_bert_config *cfg, uint64_t seed)
{
	struct lbw_bert *m = lbw_bert_alloc(cfg);
	if (!m)
		return NULL;
	lbw_bert_init_random(m, seed);
	if (lbw_bert_pack(m) != 0) {
		lbw_bert_free(m);
		errno = ENOMEM;
		return NULL;
	}
	return m;
}

void lbw_bert_free(struct lbw_bert *m)
{
	if (!m)
		return;
	if (m->layers)
		for (int l = 0; l < m->cfg.n_layers; l++)
			unpack(&m->layers[l]);
	free(m->layers);
	free(m->params);
	free(m);
}

int lbw_bert_embed(const struct lbw_bert *m, int64_t n, const int32_t *tokens, float *out)
{
	const int64_t h = m->cfg.hidden;
	if (n < 1 || n > m->cfg.max_seq)
		return -EINVAL;
	for (int64_t t = 0; t < n; t++)
		if (tokens[t] < 0 || tokens[t] >= m->cfg.vocab)
			return -EINVAL;
	for (int64_t t = 0; t < n; t++) {
		float *o = out + t * h;
		lbk_embed(o, m->wte, tokens[t], h);
		const float *pe = m->wpe + t * h;
		for (int64_t d = 0; d < h; d++)
			o[d] += pe[d] + m->wtt[d];
		if (m->cfg.style == LBW_STYLE_BERT)
			lbk_layernorm(o, o, m->emb_ln_g, m->emb_ln_b, h, m->cfg.eps);
	}
	return 0;
}

static void layernorm_rows(float *o, const float *x, const float *g, const float *b, int64_t n,
			   int64_t h, float eps)
{
	for (int64_t t = 0; t < n; t++)
		lbk_layernorm(o + t * h, x + t * h, g, b, h, eps);
}

/* Floats of scratch one layer needs for n positions. */
static size_t scratch_floats(const struct lbw_bert *m, int64_t n)
{
	return (size_t)n * (size_t)(3 * m->cfg.hidden + 3 * m->cfg.hidden + m->cfg.ffn);
}

/*
 * Attention of heads h0..h0+heads-1 of nq query rows q [nq][h] over the keys and values of nkeys
 * positions, kv [nkeys][2h] (K, then V), into att [nq][h]: every position (pos NULL, nq = nkeys)
 * or the positions pos[0..nq) (lbk_attention_rows, bit for bit those rows of the former).
 */
struct attn_job {
	float *att;
	const float *q, *kv;
	const int64_t *pos;
	int64_t nq, nkeys, h, h0, heads, hs;
	int causal;
};

static void *attn_run(void *arg)
{
	struct attn_job *j = arg;
	const int64_t off = j->h0 * j->hs, h = j->h;
	if (j->pos)
		lbk_attention_rows(j->att + off, h, j->q + off, h, j->pos, j->nq, j->kv + off, 2 * h,
				   j->kv + h + off, 2 * h, j->nkeys, j->heads, j->heads, j->hs,
				   j->causal);
	else
		lbk_attention_strided(j->att + off, h, j->q + off, h, j->kv + off, 2 * h,
				      j->kv + h + off, 2 * h, j->nq, j->heads, j->heads, j->hs,
				      j->causal);
	return NULL;
}

#define LBW_ATTN_MAX_GROUPS 16

/* The attention of job (heads 0..heads-1 of the model), the heads split into up to threads
 * groups run side by side; each group reads its heads' columns of q and kv and writes its
 * columns of att. */
static void attention_groups(const struct lbw_bert *m, struct attn_job job, int threads)
{
	const int64_t heads = m->cfg.heads;
	int groups = threads < 1 ? 1 : threads;
	if (groups > heads)
		groups = (int)heads;
	if (groups > LBW_ATTN_MAX_GROUPS)
		groups = LBW_ATTN_MAX_GROUPS;
	struct attn_job jobs[LBW_ATTN_MAX_GROUPS];
	pthread_t tid[LBW_ATTN_MAX_GROUPS];
	int started[LBW_ATTN_MAX_GROUPS] = { 0 };
	for (int g = 0; g < groups; g++) {
		jobs[g] = job;
		jobs[g].h0 = heads * g / groups;
		jobs[g].heads = heads * (g + 1) / groups - jobs[g].h0;
	}
	for (int g = 1; g < groups; g++)
		started[g] = pthread_create(&tid[g], NULL, attn_run, &jobs[g]) == 0;
	attn_run(&jobs[0]);
	for (int g = 1; g < groups; g++) {
		if (started[g])
			pthread_join(tid[g], NULL);
		else
			attn_run(&jobs[g]); /* no thread to be had: the caller does it */
	}
}

/*
 * The rest of a layer after its attention att [n][h], for n rows whose input (the residual the
 * attention adds to) is resid [n][h]: output projection and residual, norms, FFN, into out
 * [n][h] (which may be resid: it is written last). Scratch res and x [n][h], ff [n][f]. The
 * residual adds and GELU run in the GEMMs' epilogues (lbk_gemm_ex), on the tiles in registers.
 */
static void layer_tail(const struct lbw_bert *m, const struct lbw_bert_layer_w *w, int64_t n,
		       const float *att, const float *resid, float *out, int threads, float *res,
		       float *x, float *ff)
{
	const int64_t h = m->cfg.hidden;
	const float eps = m->cfg.eps;
	const int gpt2 = m->cfg.style == LBW_STYLE_GPT2;
	/* res = resid + attention */
	lbk_gemm_ex(res, att, w->po, w->bo, resid, n, threads, LBK_ACT_NONE);
	/* FFN on f_in; res is the residual it adds to (BERT's is its own normalised input) */
	const float *f_in = res;
	if (!gpt2) {
		layernorm_rows(res, res, w->ln1_g, w->ln1_b, n, h, eps);
	} else {
		layernorm_rows(x, res, w->ln2_g, w->ln2_b, n, h, eps);
		f_in = x;
	}
	lbk_gemm_ex(ff, f_in, w->p1, w->b1, NULL, n, threads, LBK_ACT_GELU);
	lbk_gemm_ex(out, ff, w->p2, w->b2, res, n, threads, LBK_ACT_NONE);
	if (!gpt2)
		layernorm_rows(out, out, w->ln2_g, w->ln2_b, n, h, eps);
}

/* One layer with caller's scratch buf [scratch_floats(m, n)]; arguments already checked. */
static void layer_run(const struct lbw_bert *m, int l, int64_t n, const float *in, float *out,
		      int threads, float *buf)
{
	const struct lbw_bert_layer_w *w = &m->layers[l];
	const int64_t h = m->cfg.hidden;
	const int gpt2 = m->cfg.style == LBW_STYLE_GPT2;
	/* q att res x [n][h] each; kv [n][2h]; ff [n][f] */
	float *q = buf, *att = q + n * h, *res = att + n * h, *x = res + n * h, *kv = x + n * h;
	float *ff = kv + n * 2 * h;

	/* attention block: GPT-2 normalises its input first (pre-LN) */
	const float *a_in = in;
	if (gpt2) {
		layernorm_rows(x, in, w->ln1_g, w->ln1_b, n, h, m->cfg.eps);
		a_in = x;
	}
	lbk_gemm(q, a_in, w->pq, w->bqkv, n, threads);
	lbk_gemm(kv, a_in, w->pkv, w->bqkv + h, n, threads);
	attention_groups(m, (struct attn_job){ .att = att, .q = q, .kv = kv, .nq = n, .nkeys = n,
					       .h = h, .hs = h / m->cfg.heads, .causal = gpt2 },
			 threads);
	layer_tail(m, w, n, att, in, out, threads, res, x, ff);
}

static int layer_ok(const struct lbw_bert *m, int l, int64_t n)
{
	if (l < 0 || l >= m->cfg.n_layers || n < 1 || n > m->cfg.max_seq)
		return 0;
	const struct lbw_bert_layer_w *w = &m->layers[l];
	return w->pq && w->pkv && w->po && w->p1 && w->p2;
}

int lbw_bert_layer(const struct lbw_bert *m, int l, int64_t n, const float *in, float *out,
		   int threads)
{
	if (!layer_ok(m, l, n))
		return -EINVAL;
	float *buf = malloc(scratch_floats(m, n) * sizeof(float));
	if (!buf)
		return -ENOMEM;
	layer_run(m, l, n, in, out, threads, buf);
	free(buf);
	return 0;
}

/* rows[0..n_rows) ascending below n, n_rows in 1..n. */
static int rows_ok(int64_t n, const uint32_t *rows, int64_t n_rows)
{
	if (!rows || n_rows < 1 || n_rows > n || rows[n_rows - 1] >= n)
		return 0;
	for (int64_t r = 1; r < n_rows; r++)
		if (rows[r] <= rows[r - 1])
			return 0;
	return 1;
}

/* dst [n_rows][h] = src's rows rows[0..n_rows); pos gets them as int64 when not NULL. */
static void gather(float *dst, const float *src, const uint32_t *rows, int64_t n_rows, int64_t h,
		   int64_t *pos)
{
	for (int64_t r = 0; r < n_rows; r++) {
		memcpy(dst + r * h, src + (int64_t)rows[r] * h, (size_t)h * sizeof(float));
		if (pos)
			pos[r] = rows[r];
	}
}

/*
 * lbw_bert_layer_rows with scratch pos [R] (the rows as the kernel takes them) and buf (the
 * sizes below), arguments checked: K and V of the nk positions the attention reads, then the
 * rest on the R gathered rows. Every read of in comes before the tail writes out.
 */
static void layer_rows_run(const struct lbw_bert *m, int l, int64_t nk, const float *in,
			   const uint32_t *rows, int64_t R, float *out, int threads, int64_t *pos,
			   float *buf)
{
	const struct lbw_bert_layer_w *w = &m->layers[l];
	const int64_t h = m->cfg.hidden;
	const int gpt2 = m->cfg.style == LBW_STYLE_GPT2;
	/* kv [nk][2h]; xn [nk][h] (GPT-2's normalised input); g rin q att res [R][h]; ff [R][f] */
	float *kv = buf, *xn = kv + nk * 2 * h, *g = xn + (gpt2 ? nk * h : 0), *rin = g + R * h;
	float *q = rin + R * h, *att = q + R * h, *res = att + R * h, *ff = res + R * h;

	const float *a_in = in;
	if (gpt2) {
		layernorm_rows(xn, in, w->ln1_g, w->ln1_b, nk, h, m->cfg.eps);
		a_in = xn;
	}
	lbk_gemm(kv, a_in, w->pkv, w->bqkv + h, nk, threads);
	gather(g, a_in, rows, R, h, pos);
	gather(rin, in, rows, R, h, NULL);
	lbk_gemm(q, g, w->pq, w->bqkv, R, threads);
	attention_groups(m, (struct attn_job){ .att = att, .q = q, .kv = kv, .pos = pos, .nq = R,
					       .nkeys = nk, .h = h, .hs = h / m->cfg.heads,
					       .causal = gpt2 },
			 threads);
	layer_tail(m, w, R, att, rin, out, threads, res, g, ff); /* g is free again: tail's x */
}

int lbw_bert_layer_rows(const struct lbw_bert *m, int l, int64_t n, const float *in,
			const uint32_t *rows, int64_t n_rows, float *out, int threads)
{
	if (!layer_ok(m, l, n) || !rows_ok(n, rows, n_rows))
		return -EINVAL;
	const int gpt2 = m->cfg.style == LBW_STYLE_GPT2;
	const size_t h = (size_t)m->cfg.hidden, R = (size_t)n_rows;
	/* causal: no row reads past the last one's position */
	const size_t nk = gpt2 ? (size_t)rows[n_rows - 1] + 1 : (size_t)n;
	size_t floats = nk * (gpt2 ? 3 : 2) * h + R * (5 * h + (size_t)m->cfg.ffn);
	int64_t *pos = malloc(R * sizeof(int64_t) + floats * sizeof(float));
	if (!pos)
		return -ENOMEM;
	layer_rows_run(m, l, (int64_t)nk, in, rows, n_rows, out, threads, pos, (float *)(pos + R));
	free(pos);
	return 0;
}

int lbw_bert_forward(const struct lbw_bert *m, int64_t n, const int32_t *tokens, float *out,
		     int threads)
{
	int rc = lbw_bert_embed(m, n, tokens, out);
	if (rc)
		return rc;
	for (int l = 0; l < m->cfg.n_layers; l++)
		if (!layer_ok(m, l, n))
			return -EINVAL;
	/* one scratch for every layer: a fresh one per layer costs its page faults each time */
	float *buf = malloc(scratch_floats(m, n) * sizeof(float));
	if (!buf)
		return -ENOMEM;
	for (int l = 0; l < m->cfg.n_layers; l++)
		layer_run(m, l, n, out, out, threads, buf);
	free(buf);
	lbw_bert_final(m, n, out, out);
	return 0;
}

void lbw_bert_final(const struct lbw_bert *m, int64_t n, const float *in, float *out)
{
	const int64_t h = m->cfg.hidden;
	if (m->cfg.style == LBW_STYLE_GPT2)
		layernorm_rows(out, in, m->lnf_g, m->lnf_b, n, h, m->cfg.eps);
	else if (out != in)
		memcpy(out, in, (size_t)n * (size_t)h * sizeof(float));
}
