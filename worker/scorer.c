/* The fleet worker's model families behind one embed / layer / head interface. */
#include "scorer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "kernels.h"
#include "model_bert.h"
#include "model_llama.h"
#include "safetensors.h"

/* sc zeroed, with a zeroed model and state for open_llama_end to finish. @return 0, -ENOMEM. */
static int open_llama_begin(struct lbw_scorer *sc, char *err, size_t errlen)
{
	memset(sc, 0, sizeof(*sc));
	sc->llama = calloc(1, sizeof(*sc->llama));
	sc->state = calloc(1, sizeof(*sc->state));
	if (!sc->llama || !sc->state) {
		snprintf(err, errlen, "out of memory");
		lbw_scorer_close(sc);
		return -ENOMEM;
	}
	return 0;
}

/* rc: how loading or generating sc->llama went. On success the KV cache, the shape and the
 * weights hash, an XXH3 of the checkpoint's bytes; on failure sc is closed. @return rc; -ENOMEM. */
static int open_llama_end(struct lbw_scorer *sc, int rc, char *err, size_t errlen)
{
	if (rc == 0 && lbw_llama_state_init(sc->state, &sc->llama->cfg) < 0) {
		snprintf(err, errlen, "out of memory for the KV cache");
		rc = -ENOMEM;
	}
	if (rc < 0) {
		lbw_scorer_close(sc);
		return rc;
	}
	const struct lbw_llama_config *c = &sc->llama->cfg;
	sc->weights_hash = XXH3_64bits(sc->llama->data, sc->llama->data_size);
	sc->n_layers = c->n_layers;
	sc->hidden = c->dim;
	sc->kv_dim = c->kv_dim;
	sc->max_seq = c->seq_len;
	sc->vocab = c->vocab_size;
	sc->emb = sc->llama->w.token_embedding;
	return 0;
}

int lbw_scorer_open_llama(struct lbw_scorer *sc, const char *path, char *err, size_t errlen)
{
	int rc = open_llama_begin(sc, err, errlen);
	if (rc < 0)
		return rc;
	rc = open_llama_end(sc, lbw_llama_load(sc->llama, path, err, errlen), err, errlen);
	if (rc < 0)
		return rc;
	const char *base = strrchr(path, '/');
	snprintf(sc->name, sizeof(sc->name), "%s", base ? base + 1 : path);
	return 0;
}

int lbw_scorer_open_llama_110m(struct lbw_scorer *sc, uint64_t seed, char *err, size_t errlen)
{
	struct lbw_llama_config cfg = lbw_llama_config_110m();
	int rc = open_llama_begin(sc, err, errlen);
	if (rc < 0)
		return rc;
	rc = lbw_llama_generate(sc->llama, &cfg, seed, err, errlen);
	rc = open_llama_end(sc, rc, err, errlen);
	if (rc < 0)
		return rc;
	snprintf(sc->name, sizeof(sc->name), LBW_LLAMA_110M_NAME "-generated-%016llx",
		 (unsigned long long)seed);
	return 0;
}

/* Take the encoder m (owned from here on) with its head over the first vocab rows of its
 * token embedding. */
static int wrap_bert(struct lbw_scorer *sc, struct lbw_bert *m, int32_t vocab, char *err,
		     size_t errlen)
{
	const struct lbw_bert_config *c = &m->cfg;
	sc->bert = m;
	sc->emb = m->wte;
	sc->head_w = lbk_pack(sc->emb, vocab, c->hidden);
	sc->logits = malloc((size_t)c->max_seq * (size_t)vocab * sizeof(float));
	if (c->style == LBW_STYLE_GPT2)
		sc->final = malloc((size_t)c->max_seq * (size_t)c->hidden * sizeof(float));
	if (!sc->head_w || !sc->logits || (c->style == LBW_STYLE_GPT2 && !sc->final)) {
		snprintf(err, errlen, "out of memory");
		lbw_scorer_close(sc);
		return -ENOMEM;
	}
	sc->n_layers = c->n_layers;
	sc->hidden = c->hidden;
	sc->max_seq = c->max_seq;
	sc->vocab = vocab;
	sc->mlm = c->style == LBW_STYLE_BERT;
	return 0;
}

int lbw_scorer_open_bert(struct lbw_scorer *sc, int32_t vocab, uint64_t seed, char *err,
			 size_t errlen)
{
	struct lbw_bert_config cfg = lbw_bert_config_base();
	memset(sc, 0, sizeof(*sc));
	if (vocab < 2 || vocab > cfg.vocab) {
		snprintf(err, errlen, "vocabulary of %d tokens: the BERT-base shape scores 2..%d",
			 (int)vocab, (int)cfg.vocab);
		return -EINVAL;
	}
	struct lbw_bert *m = lbw_bert_generate(&cfg, seed);
	if (!m) {
		int e = errno;
		snprintf(err, errlen, "cannot generate the BERT-base weights: %s", strerror(e));
		return -e;
	}
	int rc = wrap_bert(sc, m, vocab, err, errlen);
	if (rc < 0)
		return rc;
	snprintf(sc->name, sizeof(sc->name), "bert-base-generated-%016llx", (unsigned long long)seed);
	/* The weights are a function of the seed and the shape: hash those. */
	uint64_t id[2] = { seed, (uint64_t)cfg.n_layers << 32 | (uint64_t)cfg.hidden };
	sc->weights_hash = XXH3_64bits(id, sizeof(id));
	return 0;
}

/* What a loaded encoder computes with: its shape, style and epsilon, then every weight. */
static uint64_t bert_hash(const struct lbw_bert *m)
{
	const struct lbw_bert_config *c = &m->cfg;
	uint32_t eps;
	memcpy(&eps, &c->eps, sizeof(eps));
	uint64_t shape[8] = {
		(uint64_t)c->n_layers, (uint64_t)c->hidden,  (uint64_t)c->heads, (uint64_t)c->ffn,
		(uint64_t)c->vocab,    (uint64_t)c->max_seq, (uint64_t)c->style, eps,
	};
	return XXH3_64bits_withSeed(m->params, (size_t)m->n_params * sizeof(float),
				    XXH3_64bits(shape, sizeof(shape)));
}

int lbw_scorer_open_safetensors(struct lbw_scorer *sc, const char *path, int32_t vocab,
				char *err, size_t errlen)
{
	struct lbw_bert *m;
	memset(sc, 0, sizeof(*sc));
	int rc = lbw_bert_load_safetensors(path, 0, &m, err, errlen);
	if (rc < 0)
		return rc;
	if (vocab < 2 || vocab > m->cfg.vocab) {
		snprintf(err, errlen, "%s: a vocabulary of %d tokens; the tokenizer's ids reach %d",
			 path, (int)m->cfg.vocab, (int)vocab - 1);
		lbw_bert_free(m);
		return -EINVAL;
	}
	rc = wrap_bert(sc, m, vocab, err, errlen);
	if (rc < 0)
		return rc;
	/* Named by file and weights: another file under the same name registers apart. */
	const char *base = strrchr(path, '/');
	sc->weights_hash = bert_hash(m);
	snprintf(sc->name, sizeof(sc->name), "%.46s-%016llx", base ? base + 1 : path,
		 (unsigned long long)sc->weights_hash);
	return 0;
}

void lbw_scorer_close(struct lbw_scorer *sc)
{
	if (sc->state)
		lbw_llama_state_free(sc->state);
	free(sc->state);
	if (sc->llama)
		lbw_llama_free(sc->llama);
	free(sc->llama);
	lbw_bert_free(sc->bert);
	lbk_packed_free(sc->head_w);
	free(sc->logits);
	free(sc->final);
	memset(sc, 0, sizeof(*sc));
}

void lbw_scorer_embed(struct lbw_scorer *sc, const int32_t *tokens, int32_t n, float *h)
{
	sc->n = n;
	if (sc->llama)
		lbw_llama_embed_seq(sc->llama, tokens, n, h);
	else
		(void)lbw_bert_embed(sc->bert, n, tokens, h); /* in range: checked by the caller */
}

int lbw_scorer_layer(void *ctx, uint32_t l, const float *in, float *out)
{
	struct lbw_scorer *sc = ctx;
	if (sc->llama) {
		lbw_llama_layer_seq(sc->llama, sc->state, (int32_t)l, sc->n, in, out);
		return 0;
	}
	return lbw_bert_layer(sc->bert, (int)l, sc->n, in, out, 1);
}

/* rows[0..n_rows) ascending below n, n_rows in 1..n. */
static int rows_ok(uint32_t n, const uint32_t *rows, uint32_t n_rows)
{
	if (n_rows < 1 || n_rows > n || rows[n_rows - 1] >= n)
		return 0;
	for (uint32_t r = 1; r < n_rows; r++)
		if (rows[r] <= rows[r - 1])
			return 0;
	return 1;
}

int lbw_scorer_rows(void *ctx, uint32_t l, const float *in, uint32_t n, const uint32_t *rows,
		    uint32_t n_rows, float *out)
{
	struct lbw_scorer *sc = ctx;
	if (!sc || !in || !rows || !out || l >= (uint32_t)sc->n_layers || n < 1 ||
	    n > (uint32_t)sc->max_seq || !rows_ok(n, rows, n_rows))
		return -EINVAL;
	if (sc->llama)
		return lbw_llama_layer_rows(sc->llama, sc->state, (int32_t)l, (int32_t)n, in, rows,
					    (int32_t)n_rows, out);
	return lbw_bert_layer_rows(sc->bert, (int)l, n, in, rows, n_rows, out, 1);
}

const float *lbw_scorer_logits(struct lbw_scorer *sc, const float *h, int32_t n)
{
	if (sc->final) {
		lbw_bert_final(sc->bert, n, h, sc->final);
		h = sc->final;
	}
	lbk_gemm(sc->logits, h, sc->head_w, NULL, n, 1);
	return sc->logits;
}

double lbw_scorer_head(struct lbw_scorer *sc, const int32_t *tokens, int32_t n, const float *h,
		       int32_t *top1)
{
	if (sc->llama)
		return lbw_llama_score_seq(sc->llama, sc->state, tokens, n, h, top1);
	const float *logits = lbw_scorer_logits(sc, h, n);
	double sum = 0;
	for (int32_t pos = 0; pos + 1 < n; pos++) {
		const float *lg = logits + (size_t)pos * (size_t)sc->vocab;
		sum += lbw_llama_nll(lg, sc->vocab, tokens[pos + 1]);
		if (top1)
			top1[pos] = lbw_llama_argmax(lg, sc->vocab);
	}
	return sum;
}

double lbw_scorer_head_masked(struct lbw_scorer *sc, const float *h, int32_t n,
			      const int32_t *pos, const int32_t *labels, int32_t m, int32_t *top1)
{
	const float *logits = lbw_scorer_logits(sc, h, n);
	double sum = 0;
	for (int32_t i = 0; i < m; i++) {
		const float *lg = logits + (size_t)pos[i] * (size_t)sc->vocab;
		sum += lbw_llama_nll(lg, sc->vocab, labels[i]);
		if (top1)
			top1[i] = lbw_llama_argmax(lg, sc->vocab);
	}
	return sum;
}
