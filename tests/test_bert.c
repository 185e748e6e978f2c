/*
 * BERT / GPT-2 shaped encoders: the lbk_* forward against an independent fp64 forward on small
 * shapes, determinism of generated weights, safetensors round trips and hostile files,
 * layerbank-worker score / serve on safetensors files written here, against the library, and a
 * layer for chosen positions against the whole layer (the model's, and the scorer's on files
 * and on bert-base).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kernels.h"
#include "layerbank/layerbank.h"
#include "mlm.h"
#include "model_bert.h"
#include "safetensors.h"
#include "scorer.h"
#include "testutil.h"
#include "tokenizer.h"

/* Small shape of the reference checks: 2 layers, hidden 64, 4 heads, ffn 128, seq 17. */
#define SEQ 17
/* fp32 kernels against fp64 on outputs of unit scale (every output is LayerNorm'd). */
#define TOL 2e-5

static struct lbw_bert_config small(enum lbw_bert_style style)
{
	struct lbw_bert_config c = style == LBW_STYLE_BERT ? lbw_bert_config_base()
							   : lbw_bert_config_gpt2();
	c.n_layers = 2;
	c.hidden = 64;
	c.heads = 4;
	c.ffn = 128;
	c.vocab = 97;
	c.max_seq = 32;
	return c;
}

static uint64_t rng_state = 42;
static float urand(void) /* [-1, 1) */
{
	rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
	return (float)((rng_state >> 40) / 8388608.0 - 1.0);
}

/* Generated weights of shape c with LayerNorm parameters moved off 1 / 0, so that a mix-up
 * shows. */
static struct lbw_bert *make_shaped(struct lbw_bert_config c, uint64_t seed)
{
	struct lbw_bert *m = lbw_bert_alloc(&c);
	assert_non_null(m);
	lbw_bert_init_random(m, seed);
	const int64_t h = c.hidden;
	for (int64_t d = 0; d < h; d++) {
		if (c.style == LBW_STYLE_BERT) { /* each style's unused pair stays 1 / 0 */
			m->emb_ln_g[d] = 1.0f + 0.3f * urand();
			m->emb_ln_b[d] = 0.2f * urand();
		} else {
			m->lnf_g[d] = 1.0f + 0.3f * urand();
			m->lnf_b[d] = 0.2f * urand();
		}
		for (int l = 0; l < c.n_layers; l++) {
			m->layers[l].ln1_g[d] = 1.0f + 0.3f * urand();
			m->layers[l].ln1_b[d] = 0.2f * urand();
			m->layers[l].ln2_g[d] = 1.0f + 0.3f * urand();
			m->layers[l].ln2_b[d] = 0.2f * urand();
		}
	}
	assert_int_equal(lbw_bert_pack(m), 0);
	return m;
}

static struct lbw_bert *make(enum lbw_bert_style style, uint64_t seed)
{
	return make_shaped(small(style), seed);
}

static void tokens(int32_t *t, int64_t n, int32_t vocab)
{
	for (int64_t i = 0; i < n; i++)
		t[i] = (int32_t)((i * 37 + 11) % vocab);
}

/* ---- fp64 reference forward, written from the BERT / GPT-2 papers' equations ---- */

static void ref_ln(double *x, const float *g, const float *b, int64_t n, double eps)
{
	double mean = 0, var = 0;
	for (int64_t i = 0; i < n; i++)
		mean += x[i];
	mean /= (double)n;
	for (int64_t i = 0; i < n; i++)
		var += (x[i] - mean) * (x[i] - mean);
	var /= (double)n;
	for (int64_t i = 0; i < n; i++)
		x[i] = (x[i] - mean) / sqrt(var + eps) * g[i] + b[i];
}

/* y[n_out] = W[n_out][n_in] x + b */
static void ref_linear(double *y, const double *x, const float *w, const float *b, int64_t n_out,
		       int64_t n_in)
{
	for (int64_t o = 0; o < n_out; o++) {
		double s = b[o];
		for (int64_t i = 0; i < n_in; i++)
			s += (double)w[o * n_in + i] * x[i];
		y[o] = s;
	}
}

static double ref_gelu(double v)
{
	return 0.5 * v * (1.0 + tanh(sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
}

static void ref_forward(const struct lbw_bert *m, int64_t n, const int32_t *tok, double *x)
{
	const int64_t h = m->cfg.hidden, f = m->cfg.ffn, nh = m->cfg.heads, hs = h / nh;
	const int gpt2 = m->cfg.style == LBW_STYLE_GPT2;
	const double eps = m->cfg.eps;
	double *a = calloc((size_t)(n * h), sizeof(double));
	double *q = calloc((size_t)(n * 3 * h), sizeof(double));
	double *att = calloc((size_t)(n * h), sizeof(double));
	double *u = calloc((size_t)f, sizeof(double)), *sc = calloc((size_t)n, sizeof(double));
	double *tmp = calloc((size_t)h, sizeof(double));
	for (int64_t t = 0; t < n; t++) {
		for (int64_t d = 0; d < h; d++)
			x[t * h + d] = (double)m->wte[tok[t] * h + d] + m->wpe[t * h + d] + m->wtt[d];
		if (!gpt2)
			ref_ln(x + t * h, m->emb_ln_g, m->emb_ln_b, h, eps);
	}
	for (int l = 0; l < m->cfg.n_layers; l++) {
		const struct lbw_bert_layer_w *w = &m->layers[l];
		for (int64_t t = 0; t < n; t++) {
			memcpy(a + t * h, x + t * h, (size_t)h * sizeof(double));
			if (gpt2)
				ref_ln(a + t * h, w->ln1_g, w->ln1_b, h, eps);
			ref_linear(q + t * 3 * h, a + t * h, w->wqkv, w->bqkv, 3 * h, h);
		}
		for (int64_t t = 0; t < n; t++)
			for (int64_t hd = 0; hd < nh; hd++) {
				int64_t last = gpt2 ? t : n - 1;
				double mx = -INFINITY, sum = 0;
				for (int64_t s = 0; s <= last; s++) {
					double dot = 0;
					for (int64_t i = 0; i < hs; i++)
						dot += q[t * 3 * h + hd * hs + i] * q[s * 3 * h + h + hd * hs + i];
					sc[s] = dot / sqrt((double)hs);
					mx = fmax(mx, sc[s]);
				}
				for (int64_t s = 0; s <= last; s++)
					sum += (sc[s] = exp(sc[s] - mx));
				for (int64_t i = 0; i < hs; i++) {
					double o = 0;
					for (int64_t s = 0; s <= last; s++)
						o += sc[s] / sum * q[s * 3 * h + 2 * h + hd * hs + i];
					att[t * h + hd * hs + i] = o;
				}
			}
		for (int64_t t = 0; t < n; t++) {
			double *xt = x + t * h;
			ref_linear(tmp, att + t * h, w->wo, w->bo, h, h);
			for (int64_t d = 0; d < h; d++)
				xt[d] += tmp[d];
			double *in = a + t * h; /* FFN input */
			memcpy(in, xt, (size_t)h * sizeof(double));
			if (gpt2) {
				ref_ln(in, w->ln2_g, w->ln2_b, h, eps);
			} else {
				ref_ln(xt, w->ln1_g, w->ln1_b, h, eps);
				memcpy(in, xt, (size_t)h * sizeof(double));
			}
			ref_linear(u, in, w->w1, w->b1, f, h);
			for (int64_t i = 0; i < f; i++)
				u[i] = ref_gelu(u[i]);
			ref_linear(tmp, u, w->w2, w->b2, h, f);
			for (int64_t d = 0; d < h; d++)
				xt[d] += tmp[d];
			if (!gpt2)
				ref_ln(xt, w->ln2_g, w->ln2_b, h, eps);
		}
	}
	if (gpt2)
		for (int64_t t = 0; t < n; t++)
			ref_ln(x + t * h, m->lnf_g, m->lnf_b, h, eps);
	free(a);
	free(q);
	free(att);
	free(u);
	free(sc);
	free(tmp);
}

static void check_against_ref(enum lbw_bert_style style)
{
	struct lbw_bert *m = make(style, 7);
	const int64_t h = m->cfg.hidden;
	int32_t tok[SEQ];
	tokens(tok, SEQ, m->cfg.vocab);
	float *y = malloc(SEQ * (size_t)h * sizeof(float)), *y2 = malloc(SEQ * (size_t)h * sizeof(float));
	double *r = malloc(SEQ * (size_t)h * sizeof(double));
	assert_int_equal(lbw_bert_forward(m, SEQ, tok, y, 1), 0);
	assert_int_equal(lbw_bert_forward(m, SEQ, tok, y2, 2), 0);
	ref_forward(m, SEQ, tok, r);
	double worst = 0, scale = 0;
	for (int64_t i = 0; i < SEQ * h; i++) {
		worst = fmax(worst, fabs(y[i] - r[i]));
		scale = fmax(scale, fabs(r[i]));
		assert_true(fabsf(y[i] - y2[i]) <= 1e-6f); /* threads split columns only */
	}
	printf("%s: max |ours - fp64| %.2e (outputs up to %.2f), tolerance %.0e\n",
	       style == LBW_STYLE_BERT ? "BERT" : "GPT-2", worst, scale, TOL);
	assert_true(worst <= TOL);
	assert_true(scale > 0.5); /* the comparison is not vacuous */
	/* three threads: uneven head groups (1, 1, 2 heads) */
	assert_int_equal(lbw_bert_forward(m, SEQ, tok, y2, 3), 0);
	for (int64_t i = 0; i < SEQ * h; i++)
		assert_true(fabsf(y[i] - y2[i]) <= 1e-6f);
	/* layer by layer through the public calls: the same as the whole forward */
	if (style == LBW_STYLE_BERT) {
		assert_int_equal(lbw_bert_embed(m, SEQ, tok, y2), 0);
		for (int l = 0; l < m->cfg.n_layers; l++)
			assert_int_equal(lbw_bert_layer(m, l, SEQ, y2, y2, 1), 0);
		assert_memory_equal(y, y2, (size_t)SEQ * (size_t)h * sizeof(float));
	}
	/* causal: GPT-2's first position does not depend on later tokens */
	if (style == LBW_STYLE_GPT2) {
		tok[SEQ - 1] = (tok[SEQ - 1] + 1) % m->cfg.vocab;
		assert_int_equal(lbw_bert_forward(m, SEQ, tok, y2, 1), 0);
		assert_memory_equal(y, y2, (size_t)(SEQ - 1) * (size_t)h * sizeof(float));
	}
	free(y);
	free(y2);
	free(r);
	lbw_bert_free(m);
}

static void test_bert_matches_fp64(void **state)
{
	(void)state;
	check_against_ref(LBW_STYLE_BERT);
}

static void test_gpt2_matches_fp64(void **state)
{
	(void)state;
	check_against_ref(LBW_STYLE_GPT2);
}

static void test_generate_deterministic(void **state)
{
	(void)state;
	struct lbw_bert_config c = small(LBW_STYLE_BERT);
	struct lbw_bert *a = lbw_bert_generate(&c, 1), *b = lbw_bert_generate(&c, 1),
			*d = lbw_bert_generate(&c, 2);
	assert_non_null(a);
	assert_non_null(b);
	assert_non_null(d);
	size_t bytes = (size_t)a->n_params * sizeof(float);
	assert_memory_equal(a->params, b->params, bytes);
	assert_memory_not_equal(a->params, d->params, bytes);
	/* ~N(0, 0.02) */
	double s = 0, s2 = 0;
	int64_t nw = (int64_t)c.vocab * c.hidden;
	for (int64_t i = 0; i < nw; i++) {
		s += a->wte[i];
		s2 += (double)a->wte[i] * a->wte[i];
	}
	double mean = s / (double)nw, sd = sqrt(s2 / (double)nw - mean * mean);
	assert_true(fabs(mean) < 0.002 && sd > 0.018 && sd < 0.022);
	assert_true(a->layers[0].ln1_g[0] == 1.0f && a->layers[0].ln1_b[0] == 0.0f);
	lbw_bert_free(a);
	lbw_bert_free(b);
	lbw_bert_free(d);
}

/* Positions p with lo <= p <= hi in a[0..n). */
static int count_in(const int32_t *a, int n, int lo, int hi)
{
	int c = 0;
	for (int i = 0; i < n; i++)
		c += a[i] >= lo && a[i] <= hi;
	return c;
}

/*
 * lbw_mlm_select: 15% of the positions after BOS (rounded, at least one), in increasing order,
 * the same for the same tokens; a token changed at q changes the keys of q - 1..q + 1 only, so
 * outside them the two selections differ by at most those three positions.
 */
static void test_mlm_select(void **state)
{
	(void)state;
	int32_t tok[200], pos[200], pos2[200];
	uint64_t x = 3;
	for (int i = 0; i < 200; i++) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		tok[i] = i ? (int32_t)(3 + (x >> 33) % 509) : 1;
	}
	static const struct {
		int n, m;
	} cases[] = { { 0, 0 }, { 1, 0 }, { 2, 1 }, { 4, 1 }, { 11, 2 }, { 21, 3 }, { 128, 19 },
		      { 200, 30 } };
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		int n = cases[c].n, m = lbw_mlm_select(tok, n, LBW_MLM_SEED, pos);
		assert_int_equal(m, cases[c].m);
		for (int i = 0; i < m; i++) {
			assert_true(pos[i] >= 1 && pos[i] < n);
			assert_true(i == 0 || pos[i] > pos[i - 1]);
		}
		assert_int_equal(lbw_mlm_select(tok, n, LBW_MLM_SEED, pos2), m);
		assert_memory_equal(pos, pos2, (size_t)m * sizeof(int32_t));
	}
	int m = lbw_mlm_select(tok, 200, LBW_MLM_SEED, pos);
	assert_int_equal(lbw_mlm_select(tok, 200, LBW_MLM_SEED + 1, pos2), m);
	assert_true(memcmp(pos, pos2, (size_t)m * sizeof(int32_t)) != 0); /* another seed */
	for (int q = 1; q < 200; q += 7) {
		int32_t was = tok[q];
		tok[q] = was == 3 ? 4 : 3;
		assert_int_equal(lbw_mlm_select(tok, 200, LBW_MLM_SEED, pos2), m);
		tok[q] = was;
		int same = 0;
		for (int i = 0, j = 0; i < m && j < m;) {
			if (pos[i] == pos2[j] && (pos[i] < q - 1 || pos[i] > q + 1))
				same++;
			if (pos[i] <= pos2[j])
				i++;
			else
				j++;
		}
		int outside = m - count_in(pos, m, q - 1, q + 1);
		assert_true(outside - same <= 3);
	}
}

static void test_bad_arguments(void **state)
{
	(void)state;
	struct lbw_bert_config c = small(LBW_STYLE_BERT);
	c.heads = 5; /* 64 % 5 */
	errno = 0;
	assert_null(lbw_bert_alloc(&c));
	assert_int_equal(errno, EINVAL);
	c = small(LBW_STYLE_BERT);
	struct lbw_bert *m = lbw_bert_generate(&c, 3);
	assert_non_null(m);
	int32_t tok[40] = { 0 };
	float *y = calloc(40 * 64, sizeof(float));
	assert_int_equal(lbw_bert_forward(m, 33, tok, y, 1), -EINVAL); /* beyond max_seq 32 */
	assert_int_equal(lbw_bert_forward(m, 0, tok, y, 1), -EINVAL);
	tok[3] = 97;
	assert_int_equal(lbw_bert_forward(m, 5, tok, y, 1), -EINVAL);
	tok[3] = -1;
	assert_int_equal(lbw_bert_embed(m, 5, tok, y), -EINVAL);
	assert_int_equal(lbw_bert_layer(m, 2, 5, y, y, 1), -EINVAL);
	free(y);
	lbw_bert_free(m);
}

/* ---- safetensors files written by the test ---- */

struct ent {
	char name[128];
	int nd;
	int64_t shape[2];
	float *data; /* owned, in file layout */
};

struct file {
	struct ent e[256];
	int n;
};

/* name: "h.%d.x" style, %d replaced by layer. */
static void add(struct file *f, const char *prefix, const char *name, int layer, const float *src,
		int64_t d0, int64_t d1, int transpose)
{
	assert_true(f->n < 256);
	struct ent *e = &f->e[f->n++];
	char nm[96];
	const char *pct = strstr(name, "%d");
	if (pct)
		snprintf(nm, sizeof(nm), "%.*s%d%s", (int)(pct - name), name, layer, pct + 2);
	else
		snprintf(nm, sizeof(nm), "%s", name);
	snprintf(e->name, sizeof(e->name), "%s%s", prefix, nm);
	int64_t count = d0 * (d1 ? d1 : 1);
	e->data = malloc((size_t)count * sizeof(float));
	if (!d1) {
		e->nd = 1;
		e->shape[0] = d0;
		memcpy(e->data, src, (size_t)count * sizeof(float));
	} else if (!transpose) {
		e->nd = 2;
		e->shape[0] = d0;
		e->shape[1] = d1;
		memcpy(e->data, src, (size_t)count * sizeof(float));
	} else { /* src [d0][d1] (ours, [out][in]) written as Conv1D [d1][d0] */
		e->nd = 2;
		e->shape[0] = d1;
		e->shape[1] = d0;
		for (int64_t o = 0; o < d0; o++)
			for (int64_t i = 0; i < d1; i++)
				e->data[i * d0 + o] = src[o * d1 + i];
	}
}

static void write_raw(const char *path, const char *hdr, uint64_t hlen, const void *data,
		      size_t dlen)
{
	FILE *fp = fopen(path, "wb");
	assert_non_null(fp);
	unsigned char len[8];
	for (int i = 0; i < 8; i++)
		len[i] = (unsigned char)(hlen >> (8 * i));
	assert_int_equal(fwrite(len, 1, 8, fp), 8);
	if (hdr && *hdr)
		assert_int_equal(fwrite(hdr, 1, strlen(hdr), fp), strlen(hdr));
	if (dlen)
		assert_int_equal(fwrite(data, 1, dlen, fp), dlen);
	fclose(fp);
}

static void write_file(const char *path, struct file *f)
{
	size_t cap = 1 << 16, used = 0;
	char *hdr = malloc(cap);
	uint64_t off = 0;
	used += (size_t)snprintf(hdr + used, cap - used, "{\"__metadata__\":{\"format\":\"pt\"}");
	for (int i = 0; i < f->n; i++) {
		struct ent *e = &f->e[i];
		uint64_t bytes = (uint64_t)e->shape[0] * (e->nd == 2 ? (uint64_t)e->shape[1] : 1) * 4;
		if (e->nd == 2)
			used += (size_t)snprintf(hdr + used, cap - used,
						 ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld,%lld],"
						 "\"data_offsets\":[%llu,%llu]}",
						 e->name, (long long)e->shape[0], (long long)e->shape[1],
						 (unsigned long long)off, (unsigned long long)(off + bytes));
		else
			used += (size_t)snprintf(hdr + used, cap - used,
						 ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld],"
						 "\"data_offsets\":[%llu,%llu]}",
						 e->name, (long long)e->shape[0], (unsigned long long)off,
						 (unsigned long long)(off + bytes));
		assert_true(used < cap - 16);
		off += bytes;
	}
	used += (size_t)snprintf(hdr + used, cap - used, "}");
	while (used % 8) /* padded with spaces, as the format allows */
		hdr[used++] = ' ';
	hdr[used] = 0;
	char *data = malloc((size_t)off + 1);
	off = 0;
	for (int i = 0; i < f->n; i++) {
		struct ent *e = &f->e[i];
		size_t bytes = (size_t)e->shape[0] * (e->nd == 2 ? (size_t)e->shape[1] : 1) * 4;
		memcpy(data + off, e->data, bytes);
		off += bytes;
		free(e->data);
	}
	write_raw(path, hdr, used, data, (size_t)off);
	free(hdr);
	free(data);
	f->n = 0;
}

static void gpt2_file(const struct lbw_bert *m, struct file *f)
{
	const int64_t h = m->cfg.hidden, ff = m->cfg.ffn;
	const char *p = "transformer.";
	add(f, p, "wte.weight", 0, m->wte, m->cfg.vocab, h, 0);
	add(f, p, "wpe.weight", 0, m->wpe, m->cfg.max_seq, h, 0);
	for (int l = 0; l < m->cfg.n_layers; l++) {
		const struct lbw_bert_layer_w *w = &m->layers[l];
		add(f, p, "h.%d.ln_1.weight", l, w->ln1_g, h, 0, 0);
		add(f, p, "h.%d.ln_1.bias", l, w->ln1_b, h, 0, 0);
		add(f, p, "h.%d.attn.c_attn.weight", l, w->wqkv, 3 * h, h, 1);
		add(f, p, "h.%d.attn.c_attn.bias", l, w->bqkv, 3 * h, 0, 0);
		add(f, p, "h.%d.attn.c_proj.weight", l, w->wo, h, h, 1);
		add(f, p, "h.%d.attn.c_proj.bias", l, w->bo, h, 0, 0);
		add(f, p, "h.%d.ln_2.weight", l, w->ln2_g, h, 0, 0);
		add(f, p, "h.%d.ln_2.bias", l, w->ln2_b, h, 0, 0);
		add(f, p, "h.%d.mlp.c_fc.weight", l, w->w1, ff, h, 1);
		add(f, p, "h.%d.mlp.c_fc.bias", l, w->b1, ff, 0, 0);
		add(f, p, "h.%d.mlp.c_proj.weight", l, w->w2, h, ff, 1);
		add(f, p, "h.%d.mlp.c_proj.bias", l, w->b2, h, 0, 0);
	}
	add(f, p, "ln_f.weight", 0, m->lnf_g, h, 0, 0);
	add(f, p, "ln_f.bias", 0, m->lnf_b, h, 0, 0);
}

static void bert_file(const struct lbw_bert *m, struct file *f)
{
	const int64_t h = m->cfg.hidden, ff = m->cfg.ffn;
	const char *p = "bert.";
	static const char *const qkv[3] = { "query", "key", "value" };
	float *tt = malloc(2 * (size_t)h * sizeof(float));
	assert_non_null(tt);
	memcpy(tt, m->wtt, (size_t)h * sizeof(float));
	for (int64_t i = 0; i < h; i++)
		tt[h + i] = 5.0f; /* type 1: must not be used */
	add(f, p, "embeddings.word_embeddings.weight", 0, m->wte, m->cfg.vocab, h, 0);
	add(f, p, "embeddings.position_embeddings.weight", 0, m->wpe, m->cfg.max_seq, h, 0);
	add(f, p, "embeddings.token_type_embeddings.weight", 0, tt, 2, h, 0);
	free(tt);
	add(f, p, "embeddings.LayerNorm.weight", 0, m->emb_ln_g, h, 0, 0);
	add(f, p, "embeddings.LayerNorm.bias", 0, m->emb_ln_b, h, 0, 0);
	for (int l = 0; l < m->cfg.n_layers; l++) {
		const struct lbw_bert_layer_w *w = &m->layers[l];
		char nm[96];
		for (int i = 0; i < 3; i++) {
			snprintf(nm, sizeof(nm), "encoder.layer.%s.attention.self.%s.weight", "%d", qkv[i]);
			add(f, p, nm, l, w->wqkv + i * h * h, h, h, 0);
			snprintf(nm, sizeof(nm), "encoder.layer.%s.attention.self.%s.bias", "%d", qkv[i]);
			add(f, p, nm, l, w->bqkv + i * h, h, 0, 0);
		}
		add(f, p, "encoder.layer.%d.attention.output.dense.weight", l, w->wo, h, h, 0);
		add(f, p, "encoder.layer.%d.attention.output.dense.bias", l, w->bo, h, 0, 0);
		add(f, p, "encoder.layer.%d.attention.output.LayerNorm.weight", l, w->ln1_g, h, 0, 0);
		add(f, p, "encoder.layer.%d.attention.output.LayerNorm.bias", l, w->ln1_b, h, 0, 0);
		add(f, p, "encoder.layer.%d.intermediate.dense.weight", l, w->w1, ff, h, 0);
		add(f, p, "encoder.layer.%d.intermediate.dense.bias", l, w->b1, ff, 0, 0);
		add(f, p, "encoder.layer.%d.output.dense.weight", l, w->w2, h, ff, 0);
		add(f, p, "encoder.layer.%d.output.dense.bias", l, w->b2, h, 0, 0);
		add(f, p, "encoder.layer.%d.output.LayerNorm.weight", l, w->ln2_g, h, 0, 0);
		add(f, p, "encoder.layer.%d.output.LayerNorm.bias", l, w->ln2_b, h, 0, 0);
	}
}

static void roundtrip(enum lbw_bert_style style)
{
	char dir[256], path[320], err[256] = "";
	lbt_mkdtemp(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	struct lbw_bert *m = make(style, 11), *ld = NULL;
	static struct file f;
	if (style == LBW_STYLE_GPT2)
		gpt2_file(m, &f);
	else
		bert_file(m, &f);
	write_file(path, &f);
	int rc = lbw_bert_load_safetensors(path, 4, &ld, err, sizeof(err));
	if (rc)
		printf("load: %s\n", err);
	assert_int_equal(rc, 0);
	assert_int_equal(ld->cfg.style, style);
	assert_int_equal(ld->cfg.n_layers, 2);
	assert_int_equal(ld->cfg.hidden, 64);
	assert_int_equal(ld->cfg.ffn, 128);
	assert_int_equal(ld->cfg.vocab, 97);
	assert_int_equal(ld->cfg.max_seq, 32);
	assert_memory_equal(ld->params, m->params, (size_t)m->n_params * sizeof(float));
	int32_t tok[SEQ];
	tokens(tok, SEQ, 97);
	float y[SEQ * 64], y2[SEQ * 64];
	assert_int_equal(lbw_bert_forward(m, SEQ, tok, y, 1), 0);
	assert_int_equal(lbw_bert_forward(ld, SEQ, tok, y2, 1), 0);
	assert_memory_equal(y, y2, sizeof(y));
	lbw_bert_free(m);
	lbw_bert_free(ld);
	lbu_rmtree(dir);
}

static void test_safetensors_gpt2_roundtrip(void **state)
{
	(void)state;
	roundtrip(LBW_STYLE_GPT2);
}

static void test_safetensors_bert_roundtrip(void **state)
{
	(void)state;
	roundtrip(LBW_STYLE_BERT);
}

/* A file of one header and 64 bytes of data: its error from lbw_st_open. */
static int open_hdr(const char *dir, const char *hdr, char *err, size_t errlen)
{
	char path[320];
	float data[16] = { 0 };
	snprintf(path, sizeof(path), "%s/bad.safetensors", dir);
	write_raw(path, hdr, strlen(hdr), data, sizeof(data));
	struct lbw_st *st = NULL;
	err[0] = 0;
	int rc = lbw_st_open(path, &st, err, errlen);
	if (rc == 0)
		lbw_st_close(st);
	else
		printf("  rejected: %s\n", err);
	return rc;
}

static void test_safetensors_hostile(void **state)
{
	(void)state;
	char dir[256], path[320], err[256];
	lbt_mkdtemp(dir, sizeof(dir));
	struct lbw_st *st = NULL;
	const char *ok = "{\"a\":{\"dtype\":\"F32\",\"shape\":[4,4],\"data_offsets\":[0,64]}}";
	assert_int_equal(open_hdr(dir, ok, err, sizeof(err)), 0);
	/* bad JSON, trailing garbage, not an object */
	assert_int_equal(open_hdr(dir, "{\"a\":{\"dtype\":\"F32\",", err, sizeof(err)), -EINVAL);
	assert_int_equal(open_hdr(dir, "{}x", err, sizeof(err)), -EINVAL);
	assert_int_equal(open_hdr(dir, "[1,2]", err, sizeof(err)), -EINVAL);
	assert_int_equal(open_hdr(dir, "{\"a\":3}", err, sizeof(err)), -EINVAL);
	/* offsets out of range, reversed, negative */
	assert_int_equal(open_hdr(dir, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4,5],\"data_offsets\":[0,80]}}", err, sizeof(err)), -EINVAL);
	assert_int_equal(open_hdr(dir, "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", err, sizeof(err)), -EINVAL);
	assert_int_equal(open_hdr(dir, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[-16,0]}}", err, sizeof(err)), -EINVAL);
	/* shape x 4 bytes != byte length; bad shape entries; overflow */
	assert_int_equal(open_hdr(dir, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4,3],\"data_offsets\":[0,64]}}", err, sizeof(err)), -EINVAL);
	assert_int_equal(open_hdr(dir, "{\"a\":{\"dtype\":\"F32\",\"shape\":[-4,-4],\"data_offsets\":[0,64]}}", err, sizeof(err)), -EINVAL);
	assert_int_equal(open_hdr(dir, "{\"a\":{\"dtype\":\"F32\",\"shape\":[\"4\",4],\"data_offsets\":[0,64]}}", err, sizeof(err)), -EINVAL);
	assert_int_equal(open_hdr(dir, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,64]}}", err, sizeof(err)), -EINVAL);
	/* overlap */
	assert_int_equal(open_hdr(dir, "{\"a\":{\"dtype\":\"F32\",\"shape\":[8],\"data_offsets\":[0,32]},"
				       "\"b\":{\"dtype\":\"F32\",\"shape\":[8],\"data_offsets\":[16,48]}}", err, sizeof(err)), -EINVAL);
	/* dtypes other than F32 */
	assert_int_equal(open_hdr(dir, "{\"a\":{\"dtype\":\"F16\",\"shape\":[4,8],\"data_offsets\":[0,64]}}", err, sizeof(err)), -ENOTSUP);
	assert_int_equal(open_hdr(dir, "{\"a\":{\"dtype\":\"BF16\",\"shape\":[4,8],\"data_offsets\":[0,64]}}", err, sizeof(err)), -ENOTSUP);
	/* missing fields */
	assert_int_equal(open_hdr(dir, "{\"a\":{\"dtype\":\"F32\",\"shape\":[16]}}", err, sizeof(err)), -EINVAL);

	/* header length beyond the file, huge, and a file shorter than the length field */
	snprintf(path, sizeof(path), "%s/len.safetensors", dir);
	write_raw(path, ok, 1000, NULL, 0);
	assert_int_equal(lbw_st_open(path, &st, err, sizeof(err)), -EINVAL);
	write_raw(path, ok, UINT64_MAX, NULL, 0);
	assert_int_equal(lbw_st_open(path, &st, err, sizeof(err)), -EINVAL);
	FILE *fp = fopen(path, "wb");
	assert_non_null(fp);
	fputs("abc", fp);
	fclose(fp);
	assert_int_equal(lbw_st_open(path, &st, err, sizeof(err)), -EINVAL);
	assert_int_equal(lbw_st_open("/nonexistent/x.safetensors", &st, err, sizeof(err)), -ENOENT);
	/* what lbw_st_sniff takes for safetensors: a plausible length, then '{' */
	assert_int_equal(lbw_st_sniff(path), 0); /* "abc" */
	assert_int_equal(lbw_st_sniff("/nonexistent/x.safetensors"), -ENOENT);
	write_raw(path, ok, strlen(ok), NULL, 0);
	assert_int_equal(lbw_st_sniff(path), 1);
	write_raw(path, ok, (uint64_t)LBW_ST_MAX_HEADER + 1, NULL, 0);
	assert_int_equal(lbw_st_sniff(path), 0);
	write_raw(path, "[1]", 3, NULL, 0);
	assert_int_equal(lbw_st_sniff(path), 0);
	/* stories260K's llama2.c header: dim 64 and hidden_dim 172 fill the length field */
	int32_t llama[5] = { 5, 8, 4, 512, 512 };
	write_raw(path, NULL, 64 | (uint64_t)172 << 32, llama, sizeof(llama));
	assert_int_equal(lbw_st_sniff(path), 0);

	/* a whole model file, then truncated: the last tensors' offsets fall outside */
	struct lbw_bert *m = make(LBW_STYLE_GPT2, 5), *ld = NULL;
	static struct file f;
	snprintf(path, sizeof(path), "%s/gpt2.safetensors", dir);
	gpt2_file(m, &f);
	write_file(path, &f);
	assert_int_equal(truncate(path, 100000), 0);
	assert_int_equal(lbw_bert_load_safetensors(path, 4, &ld, err, sizeof(err)), -EINVAL);
	printf("  truncated: %s\n", err);
	assert_null(ld);
	assert_int_equal(truncate(path, 20), 0);
	assert_int_equal(lbw_bert_load_safetensors(path, 4, &ld, err, sizeof(err)), -EINVAL);

	/* a model tensor of the wrong shape (consistent with its bytes), and one missing */
	gpt2_file(m, &f);
	f.e[f.n - 1].shape[0] = 32; /* ln_f.bias [32] of 64 floats */
	f.e[f.n - 1].nd = 2;
	f.e[f.n - 1].shape[1] = 2;
	write_file(path, &f);
	assert_int_equal(lbw_bert_load_safetensors(path, 4, &ld, err, sizeof(err)), -EINVAL);
	printf("  wrong shape: %s\n", err);
	assert_non_null(strstr(err, "ln_f.bias"));
	gpt2_file(m, &f);
	free(f.e[5].data);
	f.e[5] = f.e[--f.n]; /* drop h.0.attn.c_attn.bias */
	write_file(path, &f);
	assert_int_equal(lbw_bert_load_safetensors(path, 4, &ld, err, sizeof(err)), -EINVAL);
	printf("  missing: %s\n", err);
	assert_non_null(strstr(err, "missing tensor"));
	/* heads that do not divide hidden */
	gpt2_file(m, &f);
	write_file(path, &f);
	assert_int_equal(lbw_bert_load_safetensors(path, 5, &ld, err, sizeof(err)), -EINVAL);
	assert_int_equal(lbw_bert_load_safetensors(path, 4, &ld, err, sizeof(err)), 0);
	lbw_bert_free(ld);
	/* neither style */
	assert_int_equal(open_hdr(dir, ok, err, sizeof(err)), 0);
	snprintf(path, sizeof(path), "%s/bad.safetensors", dir);
	assert_int_equal(lbw_bert_load_safetensors(path, 0, &ld, err, sizeof(err)), -EINVAL);
	lbw_bert_free(m);
	lbu_rmtree(dir);
}

/* ---- layerbank-worker score / serve --model FILE.safetensors ---- */

#define TOK LB_DATA_DIR "/tok512.bin"
/* The worker's head scores the tokenizer's 512 rows of the embedding. */
#define TOK_VOCAB 512
#define CLI_TEXT "Once upon a time, there was a little girl named Lily. She loved to play in " \
		 "the park with her red ball."
/*
 * nll_per_token from the CLI (fp32 kernels and head, printed with 6 decimals: 5e-7 of rounding)
 * against the library's fp32 forward with an fp64 head, on logits of a few units: the fp32
 * head is good to a few 1e-7 (measured under every LBK_ISA tier: at most 5e-7 in all).
 */
#define CLI_TOL 1e-5

/* A file's shape for the CLI: heads = hidden / 64 as the worker loads it, a vocabulary of
 * more rows than the head scores (a head over all of them would score differently). */
static struct lbw_bert_config cli_shape(enum lbw_bert_style style)
{
	struct lbw_bert_config c = small(style);
	c.hidden = 128;
	c.heads = 2;
	c.ffn = 256;
	c.vocab = 520;
	c.max_seq = 128;
	return c;
}

/* Write a checkpoint of the style and shape c to path; embeddings scaled by 4 so that the
 * head's distribution is far from uniform and a wrong forward shows in the NLL. */
static void write_model(const char *path, struct lbw_bert_config c, uint64_t seed)
{
	static struct file f;
	struct lbw_bert *m = make_shaped(c, seed);
	for (int64_t i = 0; i < (int64_t)c.vocab * c.hidden; i++)
		m->wte[i] *= 4.0f;
	if (c.style == LBW_STYLE_GPT2)
		gpt2_file(m, &f);
	else
		bert_file(m, &f);
	write_file(path, &f);
	lbw_bert_free(m);
}

/* The log-softmax of target over the first TOK_VOCAB embedding rows of m against y [hidden],
 * in fp64. */
static double ref_nll_at(const struct lbw_bert *m, const float *y, int32_t target)
{
	const int64_t h = m->cfg.hidden;
	double mx = -INFINITY, se = 0, lg[TOK_VOCAB];
	for (int v = 0; v < TOK_VOCAB; v++) {
		double d = 0;
		for (int64_t k = 0; k < h; k++)
			d += (double)y[k] * m->wte[v * h + k];
		lg[v] = d;
		mx = fmax(mx, d);
	}
	for (int v = 0; v < TOK_VOCAB; v++)
		se += exp(lg[v] - mx);
	return mx + log(se) - lg[target];
}

/* The summed NLL of text as the worker scores it, from the library's forward of the file and
 * an fp64 head over the first TOK_VOCAB embedding rows: BOS and the text's tokens; GPT-2 style
 * on each next token, BERT style on the tokens lbw_mlm_select picks, masked in the input, at
 * their own position. *n_out: tokens; *pred_out: predictions. */
static double ref_nll(const char *path, const char *text, int *n_out, int *pred_out)
{
	struct lbw_tokenizer t;
	struct lbw_bert *m = NULL;
	char err[512];
	assert_int_equal(lbw_tokenizer_load(&t, TOK, TOK_VOCAB, err, sizeof(err)), 0);
	int32_t *tok = malloc((strlen(text) + 3) * sizeof(int32_t));
	int n = lbw_tokenizer_encode(&t, text, 1, 0, tok);
	assert_true(n >= 2 && n <= 128);
	assert_int_equal(lbw_bert_load_safetensors(path, 0, &m, err, sizeof(err)), 0);
	const int64_t h = m->cfg.hidden;
	int32_t pos[128], label[128], pred = 0;
	if (m->cfg.style == LBW_STYLE_BERT) {
		pred = lbw_mlm_select(tok, n, LBW_MLM_SEED, pos);
		assert_true(pred >= 1 && pred < n);
		for (int i = 0; i < pred; i++) {
			label[i] = tok[pos[i]];
			tok[pos[i]] = LBW_MLM_MASK_ID;
		}
	} else {
		for (pred = 0; pred + 1 < n; pred++) {
			pos[pred] = pred;
			label[pred] = tok[pred + 1];
		}
	}
	float *y = malloc((size_t)n * (size_t)h * sizeof(float));
	assert_int_equal(lbw_bert_forward(m, n, tok, y, 1), 0);
	double sum = 0;
	for (int i = 0; i < pred; i++)
		sum += ref_nll_at(m, y + pos[i] * h, label[i]);
	*n_out = n;
	*pred_out = pred;
	free(y);
	free(tok);
	lbw_bert_free(m);
	lbw_tokenizer_free(&t);
	return sum;
}

/* layerbank-worker with args (NULL-terminated), stdin from in (NULL: /dev/null). */
static int run_worker(const char *const *args, const char *in, char *out, size_t n)
{
	char cmd[4096];
	size_t used = (size_t)snprintf(cmd, sizeof(cmd), "exec '%s'", LB_WORKER_PATH);
	for (; *args; args++)
		used += (size_t)snprintf(cmd + used, sizeof(cmd) - used, " '%s'", *args);
	snprintf(cmd + used, sizeof(cmd) - used, " < '%s'", in ? in : "/dev/null");
	assert_true(used < sizeof(cmd) - 64);
	const char *argv[] = { "/bin/sh", "-c", cmd, NULL };
	return lbt_run(argv, out, n);
}

static void need_tokenizer(void)
{
	if (access(TOK, R_OK) != 0) {
		printf("SKIP: data file %s is absent\n", TOK);
		skip();
	}
}

static void spit(const char *path, const char *text)
{
	FILE *fp = fopen(path, "w");
	assert_non_null(fp);
	fputs(text, fp);
	fclose(fp);
}

/* score prints the library's NLL; serve with a private bank serves a repeat from its top layer. */
static void cli_scores(enum lbw_bert_style style)
{
	static char out[65536];
	char dir[256], path[320], txt[320], req[320];
	need_tokenizer();
	lbt_mkdtemp(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/%s.safetensors", dir, style ? "gpt2" : "bert");
	snprintf(txt, sizeof(txt), "%s/text.txt", dir);
	snprintf(req, sizeof(req), "%s/requests", dir);
	write_model(path, cli_shape(style), 21);
	spit(txt, CLI_TEXT "\n");
	int n, pred;
	double want = ref_nll(path, CLI_TEXT, &n, &pred);

	const char *a[] = { "score", "--model", path, "--tokenizer", TOK, "--text-file", txt,
			    NULL };
	int st = run_worker(a, NULL, out, sizeof(out));
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fail_msg("score exited with status %d: %s", st, out);
	int tokens, predicted;
	double per;
	assert_int_equal(sscanf(out, "tokens %d predicted %d nll_per_token %lf", &tokens,
				&predicted, &per), 3);
	printf("%s: %d tokens, %d predicted, nll_per_token %.6f, fp64 reference %.6f: |diff| %.1e, "
	       "tolerance %.0e\n", style ? "GPT-2" : "BERT", tokens, predicted, per, want / pred,
	       fabs(per - want / pred), CLI_TOL);
	assert_int_equal(tokens, n);
	/* GPT-2 style: every next token; BERT style: 15% of the 32 after BOS (4.8), masked */
	assert_int_equal(predicted, style == LBW_STYLE_GPT2 ? n - 1 : 5);
	assert_int_equal(predicted, pred);
	assert_true(fabs(per - want / pred) <= CLI_TOL);
	assert_true(want / pred > 0.5); /* not a uniform head: ln 512 is 6.24 */

	/* one serve session, the same text twice: a miss, then a hit at the top layer */
	spit(req, "1\t" CLI_TEXT "\n2\t" CLI_TEXT "\n");
	const char *b[] = { "serve", "--model", path, "--tokenizer", TOK, "--private-cache", "16M",
			    NULL };
	st = run_worker(b, req, out, sizeof(out));
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fail_msg("serve exited with status %d: %s", st, out);
	char ready[64];
	snprintf(ready, sizeof(ready), "ready model=%s.safetensors-", style ? "gpt2" : "bert");
	assert_non_null(strstr(out, ready));
	const char *r1 = strstr(out, "\n1 ok "), *r2 = strstr(out, "\n2 ok ");
	assert_non_null(r1);
	assert_non_null(r2);
	int t1, t2, hit1, hit2, p1, p2;
	double nll1, nll2;
	assert_int_equal(sscanf(r1, "\n1 ok tokens=%d nll=%lf hit=%d"
				" %*s %*s %*s %*s %*s %*s %*s %*s predicted=%d",
				&t1, &nll1, &hit1, &p1), 4);
	assert_int_equal(sscanf(r2, "\n2 ok tokens=%d nll=%lf hit=%d"
				" %*s %*s %*s %*s %*s %*s %*s %*s predicted=%d",
				&t2, &nll2, &hit2, &p2), 4);
	assert_int_equal(t1, n);
	assert_int_equal(t2, n);
	assert_int_equal(p1, pred);
	assert_int_equal(p2, pred);
	assert_int_equal(hit1, -1);
	assert_int_equal(hit2, 1); /* the top of 2 layers */
	assert_true(fabs(nll1 - want) <= CLI_TOL * pred);
	assert_true(nll1 == nll2); /* the hit gives the top layer's own output */
	lbu_rmtree(dir);
}

static void test_cli_score_gpt2_file(void **state)
{
	(void)state;
	cli_scores(LBW_STYLE_GPT2);
}

static void test_cli_score_bert_file(void **state)
{
	(void)state;
	cli_scores(LBW_STYLE_BERT);
}

static void copy_file(const char *from, const char *to)
{
	FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
	char buf[65536];
	size_t r;
	assert_non_null(in);
	assert_non_null(out);
	while ((r = fread(buf, 1, sizeof(buf), in)) > 0)
		assert_int_equal(fwrite(buf, 1, r, out), r);
	fclose(in);
	fclose(out);
}

/* The model name serve registers for path: "ready model=NAME ..." */
static void served_name(const char *path, char *name, size_t n)
{
	static char out[4096];
	const char *a[] = { "serve", "--model", path, "--tokenizer", TOK, NULL };
	int st = run_worker(a, NULL, out, sizeof(out));
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	const char *r = strstr(out, "ready model=");
	assert_non_null(r);
	snprintf(name, n, "%.*s", (int)strcspn(r + 12, " "), r + 12);
}

/* The name and weights hash a file registers under follow its contents, not its folder. */
static void test_cli_file_identity(void **state)
{
	(void)state;
	char dir[256], a[320], b[320], c[320], na[96], nb[96], nc[96];
	need_tokenizer();
	lbt_mkdtemp(dir, sizeof(dir));
	snprintf(a, sizeof(a), "%s/m.safetensors", dir);
	snprintf(b, sizeof(b), "%s/sub", dir);
	assert_int_equal(mkdir(b, 0700), 0);
	snprintf(b, sizeof(b), "%s/sub/m.safetensors", dir);
	snprintf(c, sizeof(c), "%s/other", dir);
	assert_int_equal(mkdir(c, 0700), 0);
	snprintf(c, sizeof(c), "%s/other/m.safetensors", dir);
	write_model(a, cli_shape(LBW_STYLE_GPT2), 21);
	copy_file(a, b);
	write_model(c, cli_shape(LBW_STYLE_GPT2), 22);
	served_name(a, na, sizeof(na));
	served_name(b, nb, sizeof(nb));
	served_name(c, nc, sizeof(nc));
	printf("names: %s, %s (a copy elsewhere), %s (other weights)\n", na, nb, nc);
	assert_string_equal(na, nb);
	assert_string_not_equal(na, nc);
	lbu_rmtree(dir);
}

static int count_lines(const char *s)
{
	int n = 0;
	for (; *s; s++)
		n += *s == '\n';
	return n;
}

/* Bad files and uses: a status, one line, naming the problem. */
static void test_cli_bad_files(void **state)
{
	(void)state;
	static char out[8192];
	char dir[256], good[320], cut[320], missing[320], small_vocab[320], junk[320], stub[320];
	need_tokenizer();
	lbt_mkdtemp(dir, sizeof(dir));
	snprintf(good, sizeof(good), "%s/good.safetensors", dir);
	snprintf(cut, sizeof(cut), "%s/cut.safetensors", dir);
	snprintf(missing, sizeof(missing), "%s/missing.safetensors", dir);
	snprintf(small_vocab, sizeof(small_vocab), "%s/vocab300.safetensors", dir);
	snprintf(junk, sizeof(junk), "%s/junk.bin", dir);
	snprintf(stub, sizeof(stub), "%s/stub.safetensors", dir);
	struct lbw_bert_config c = cli_shape(LBW_STYLE_GPT2);
	write_model(good, c, 21);
	write_model(cut, c, 21);
	assert_int_equal(truncate(cut, 500000), 0);
	write_model(stub, c, 21);
	assert_int_equal(truncate(stub, 5), 0);
	/* h.1.attn.c_proj.weight dropped */
	static struct file f;
	struct lbw_bert *m = make_shaped(c, 21);
	gpt2_file(m, &f);
	int drop = -1;
	for (int i = 0; i < f.n; i++)
		if (!strcmp(f.e[i].name, "transformer.h.1.attn.c_proj.weight"))
			drop = i;
	assert_true(drop >= 0);
	free(f.e[drop].data);
	f.e[drop] = f.e[--f.n];
	write_file(missing, &f);
	lbw_bert_free(m);
	c.vocab = 300;
	write_model(small_vocab, c, 21);
	spit(junk, "neither a llama2.c checkpoint nor a safetensors file, just text\n");
	char txt[320];
	snprintf(txt, sizeof(txt), "%s/text.txt", dir);
	spit(txt, CLI_TEXT);

	struct {
		const char *cmd, *model, *extra;
		int status;
		const char *want, *want2;
	} cases[] = {
		{ "score", cut, NULL, 1, "cut.safetensors", "truncated" },
		{ "score", stub, NULL, 1, "stub.safetensors", "shorter than the 8-byte length" },
		{ "score", missing, NULL, 1, "missing tensor", "h.1.attn.c_proj.weight" },
		{ "serve", missing, NULL, 1, "missing tensor", "h.1.attn.c_proj.weight" },
		{ "score", small_vocab, NULL, 1, "vocabulary of 300 tokens", "511" },
		{ "score", junk, NULL, 1, "junk.bin", "not a safetensors file, nor a llama2.c" },
		{ "generate", good, NULL, 2, "good.safetensors", "not sampled" },
		{ "score", good, "--seed", 2, "--seed", "bert-base" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *args[12] = { cases[i].cmd, "--model", cases[i].model, "--tokenizer",
					 TOK };
		int k = 5;
		if (!strcmp(cases[i].cmd, "score")) {
			args[k++] = "--text-file";
			args[k++] = txt;
		}
		if (cases[i].extra) {
			args[k++] = cases[i].extra;
			args[k++] = "3";
		}
		args[k] = NULL;
		int st = run_worker(args, NULL, out, sizeof(out));
		printf("  %s %s: %s", cases[i].cmd, strrchr(cases[i].model, '/') + 1, out);
		if (!WIFEXITED(st) || WEXITSTATUS(st) != cases[i].status || count_lines(out) != 1 ||
		    !strstr(out, cases[i].want) || !strstr(out, cases[i].want2))
			fail_msg("case %zu: status %d, want exit %d, one line with '%s' and '%s'",
				 i, st, cases[i].status, cases[i].want, cases[i].want2);
	}
	lbu_rmtree(dir);
}

/* ---- a layer for chosen positions (lbw_bert_layer_rows, lbw_scorer_rows) ---- */

/* Fails unless got [n_rows][h] holds the rows rows[] of full [][h], bit for bit. */
static void expect_rows(const float *got, const float *full, const uint32_t *rows,
			uint32_t n_rows, int64_t h, const char *what)
{
	long long d = lbt_rows_diff(got, full, rows, n_rows, (size_t)h);
	if (d >= 0) {
		uint32_t r = (uint32_t)(d / h), col = (uint32_t)(d % h);
		fail_msg("%s: row %u (position %u) column %u: %.9g, the whole layer's %.9g", what, r,
			 rows[r], col, (double)got[d], (double)full[(int64_t)rows[r] * h + col]);
	}
}

/* The tiers this CPU has, best first; LBK_ISA_SCALAR ends the list. */
static int tiers(enum lbk_isa *out)
{
	lbk_force_isa(LBK_ISA_AVX512);
	int k = 0;
	for (int t = (int)lbk_isa(); t >= (int)LBK_ISA_SCALAR; t--)
		out[k++] = (enum lbk_isa)t;
	return k;
}

/*
 * Layer by layer from the embedding of n tokens, on the tier in force: lbw_bert_layer_rows on
 * every row set gives those rows of lbw_bert_layer's output bit for bit, on 1 and 3 threads,
 * and in place (out = in).
 */
static void check_layer_rows(const struct lbw_bert *m, int64_t n)
{
	const int64_t h = m->cfg.hidden;
	const size_t bytes = (size_t)n * (size_t)h * sizeof(float);
	float *in = malloc(bytes), *full = malloc(bytes), *got = malloc(bytes);
	uint32_t *rows = malloc((size_t)n * sizeof(uint32_t));
	int32_t *tok = malloc((size_t)n * sizeof(int32_t));
	assert_true(in && full && got && rows && tok);
	tokens(tok, n, m->cfg.vocab);
	assert_int_equal(lbw_bert_embed(m, n, tok, in), 0);
	char what[160];
	for (int l = 0; l < m->cfg.n_layers; l++) {
		assert_int_equal(lbw_bert_layer(m, l, n, in, full, 1), 0);
		for (int which = 0; which < LBT_ROW_SETS; which++) {
			uint32_t nr = lbt_row_set(which, (uint32_t)n, (uint64_t)(7 * l + which), rows);
			snprintf(what, sizeof(what), "%s hidden %d n %lld layer %d, %u rows (set %d), %s",
				 m->cfg.style == LBW_STYLE_GPT2 ? "GPT-2" : "BERT", (int)h, (long long)n,
				 l, nr, which, lbk_isa_name(lbk_isa()));
			int threads = which % 2 ? 3 : 1;
			assert_int_equal(lbw_bert_layer_rows(m, l, n, in, rows, nr, got, threads), 0);
			expect_rows(got, full, rows, nr, h, what);
			memcpy(got, in, bytes);
			assert_int_equal(lbw_bert_layer_rows(m, l, n, got, rows, nr, got, 1), 0);
			expect_rows(got, full, rows, nr, h, what);
		}
		memcpy(in, full, bytes);
	}
	free(in);
	free(full);
	free(got);
	free(rows);
	free(tok);
}

/* Both styles, a small shape (head size 16) and the CLI files' (head size 64), on every tier;
 * n across the attention's query blocks (6, 8) and key blocks (16, 32). */
static void test_layer_rows(void **state)
{
	(void)state;
	static const int64_t ns_small[] = { 1, 9, 32 }, ns_cli[] = { 1, 40, 128 };
	enum lbk_isa isa[3];
	int n_isa = tiers(isa);
	for (int style = 0; style < 2; style++)
		for (int shape = 0; shape < 2; shape++) {
			struct lbw_bert_config c = shape ? cli_shape(style) : small(style);
			const int64_t *ns = shape ? ns_cli : ns_small;
			struct lbw_bert *m = make_shaped(c, 5);
			for (int t = 0; t < n_isa; t++) {
				lbk_force_isa(isa[t]);
				for (int i = 0; i < 3; i++)
					check_layer_rows(m, ns[i]);
			}
			lbw_bert_free(m);
		}
	lbk_force_isa(LBK_ISA_AVX512);
}

/* What lbw_bert_layer_rows refuses (-EINVAL), out untouched. */
static void test_layer_rows_refused(void **state)
{
	(void)state;
	struct lbw_bert_config c = small(LBW_STYLE_GPT2);
	struct lbw_bert *m = make_shaped(c, 3);
	static const struct {
		int l;
		int64_t n;
		uint32_t rows[3];
		int64_t n_rows;
	} bad[] = {
		{ 0, 9, { 2, 1, 5 }, 3 },  /* not ascending */
		{ 0, 9, { 2, 2, 5 }, 3 },  /* not distinct */
		{ 0, 9, { 0, 3, 9 }, 3 },  /* a row at n */
		{ 0, 9, { 0, 1, 2 }, 0 },  /* none */
		{ 0, 2, { 0, 1, 2 }, 3 },  /* more than n */
		{ 2, 9, { 0, 1, 2 }, 3 },  /* no layer 2 */
		{ -1, 9, { 0, 1, 2 }, 3 }, /* nor -1 */
		{ 0, 33, { 0, 1, 2 }, 3 }, /* n above max_seq */
		{ 0, 0, { 0, 1, 2 }, 1 },  /* n 0 */
	};
	float *in = calloc(40 * 64, sizeof(float)), *out = malloc(40 * 64 * sizeof(float));
	assert_true(in && out);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(out, 0x5a, 40 * 64 * sizeof(float));
		int rc = lbw_bert_layer_rows(m, bad[i].l, bad[i].n, in, bad[i].rows, bad[i].n_rows,
					     out, 1);
		if (rc != -EINVAL)
			fail_msg("case %zu: %d, want -EINVAL", i, rc);
		for (size_t j = 0; j < 40 * 64 * sizeof(float); j++)
			assert_int_equal(((unsigned char *)out)[j], 0x5a);
	}
	assert_int_equal(lbw_bert_layer_rows(m, 0, 9, in, NULL, 1, out, 1), -EINVAL);
	free(in);
	free(out);
	lbw_bert_free(m);
}

/*
 * The scorer's lb_rows_fn against its lb_layer_fn, layer by layer from the embedding of n
 * tokens: rows = every position the same bytes as the whole layer; the row sets (drawn from
 * sets, a mask of LBT_ROW_SETS bits) their rows.
 */
static void check_scorer_rows(struct lbw_scorer *sc, int32_t n, unsigned sets)
{
	const lb_rows_fn rows_fn = lbw_scorer_rows; /* it is one */
	const size_t h = (size_t)sc->hidden, bytes = (size_t)n * h * sizeof(float);
	float *in = malloc(bytes), *full = malloc(bytes), *got = malloc(bytes);
	uint32_t *rows = malloc((size_t)n * sizeof(uint32_t));
	int32_t *tok = malloc((size_t)n * sizeof(int32_t));
	assert_true(in && full && got && rows && tok);
	tokens(tok, n, sc->vocab);
	lbw_scorer_embed(sc, tok, n, in);
	char what[160];
	for (int32_t l = 0; l < sc->n_layers; l++) {
		assert_int_equal(lbw_scorer_layer(sc, (uint32_t)l, in, full), 0);
		for (int which = 0; which < LBT_ROW_SETS; which++) {
			if (!(sets >> which & 1))
				continue;
			uint32_t nr = lbt_row_set(which, (uint32_t)n, (uint64_t)(l + 100 * which), rows);
			snprintf(what, sizeof(what), "%s n %d layer %d, %u rows (set %d)", sc->name,
				 (int)n, (int)l, nr, which);
			assert_int_equal(rows_fn(sc, (uint32_t)l, in, (uint32_t)n, rows, nr, got), 0);
			expect_rows(got, full, rows, nr, (int64_t)h, what);
			if (nr == (uint32_t)n)
				assert_memory_equal(got, full, bytes);
		}
		memcpy(in, full, bytes);
	}
	free(in);
	free(full);
	free(got);
	free(rows);
	free(tok);
}

/* lbw_scorer_rows' refusals (-EINVAL) on an open scorer of n_layers layers and max_seq. */
static void check_scorer_refusals(struct lbw_scorer *sc)
{
	const uint32_t L = (uint32_t)sc->n_layers, S = (uint32_t)sc->max_seq;
	const struct {
		uint32_t l, n, rows[3], n_rows;
	} bad[] = {
		{ 0, 9, { 2, 1, 5 }, 3 }, { 0, 9, { 2, 2, 5 }, 3 }, { 0, 9, { 0, 3, 9 }, 3 },
		{ 0, 9, { 0, 1, 2 }, 0 }, { 0, 2, { 0, 1, 2 }, 3 }, { L, 9, { 0, 1, 2 }, 3 },
		{ 0, S + 1, { 0, 1, 2 }, 3 }, { 0, 0, { 0, 1, 2 }, 1 },
	};
	float *in = calloc((size_t)(S + 1) * (size_t)sc->hidden, sizeof(float));
	float out[3 * 1024];
	assert_non_null(in);
	assert_true(sc->hidden <= 1024);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int rc = lbw_scorer_rows(sc, bad[i].l, in, bad[i].n, bad[i].rows, bad[i].n_rows, out);
		if (rc != -EINVAL)
			fail_msg("%s: refusal %zu: %d, want -EINVAL", sc->name, i, rc);
	}
	const uint32_t one = 0;
	assert_int_equal(lbw_scorer_rows(sc, 0, NULL, 1, &one, 1, out), -EINVAL);
	assert_int_equal(lbw_scorer_rows(sc, 0, in, 1, NULL, 1, out), -EINVAL);
	assert_int_equal(lbw_scorer_rows(sc, 0, in, 1, &one, 1, NULL), -EINVAL);
	free(in);
}

/* GPT-2- and BERT-style safetensors files as the worker opens them, on every row set. */
static void test_scorer_rows_files(void **state)
{
	(void)state;
	char dir[256], path[320], err[512];
	lbt_mkdtemp(dir, sizeof(dir));
	for (int style = 0; style < 2; style++) {
		struct lbw_scorer sc;
		snprintf(path, sizeof(path), "%s/%s.safetensors", dir, style ? "gpt2" : "bert");
		write_model(path, cli_shape(style), 31);
		if (lbw_scorer_open_safetensors(&sc, path, TOK_VOCAB, err, sizeof(err)) != 0)
			fail_msg("%s", err);
		check_scorer_rows(&sc, 1, 1u << 3);
		check_scorer_rows(&sc, 77, (1u << LBT_ROW_SETS) - 1);
		check_scorer_refusals(&sc);
		lbw_scorer_close(&sc);
	}
	lbu_rmtree(dir);
}

/* bert-base (generated) at 128 tokens, as the worker serves it: the first and last positions,
 * every one, about a third. */
static void test_scorer_rows_bert_base(void **state)
{
	(void)state;
	struct lbw_scorer sc;
	char err[256];
	if (lbw_scorer_open_bert(&sc, TOK_VOCAB, 1, err, sizeof(err)) != 0)
		fail_msg("%s", err);
	check_scorer_rows(&sc, 128, 1u << 2 | 1u << 3 | 1u << 4);
	check_scorer_refusals(&sc);
	lbw_scorer_close(&sc);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bert_matches_fp64),
		cmocka_unit_test(test_gpt2_matches_fp64),
		cmocka_unit_test(test_generate_deterministic),
		cmocka_unit_test(test_mlm_select),
		cmocka_unit_test(test_bad_arguments),
		cmocka_unit_test(test_safetensors_gpt2_roundtrip),
		cmocka_unit_test(test_safetensors_bert_roundtrip),
		cmocka_unit_test(test_safetensors_hostile),
		cmocka_unit_test(test_cli_score_gpt2_file),
		cmocka_unit_test(test_cli_score_bert_file),
		cmocka_unit_test(test_cli_file_identity),
		cmocka_unit_test(test_cli_bad_files),
		cmocka_unit_test(test_layer_rows),
		cmocka_unit_test(test_layer_rows_refused),
		cmocka_unit_test(test_scorer_rows_files),
		cmocka_unit_test(test_scorer_rows_bert_base),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
