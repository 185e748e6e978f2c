/* The fleet worker's two model families behind one embed / layer / head interface. */
#include "scorer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "kernels.h"
#include "model_bert.h"
#include "model_llama.h"

int lbw_scorer_open_llama(struct lbw_scorer *sc, const char *path, char *err, size_t errlen)
{
	memset(sc, 0, sizeof(*sc));
	sc->llama = calloc(1, sizeof(*sc->llama));
	sc->state = calloc(1, sizeof(*sc->state));
	if (!sc->llama || !sc->state) {
		snprintf(err, errlen, "out of memory");
		lbw_scorer_close(sc);
		return -ENOMEM;
	}
	int rc = lbw_llama_load(sc->llama, path, err, errlen);
	if (rc < 0) {
		free(sc->llama);
		sc->llama = NULL;
		lbw_scorer_close(sc);
		return rc;
	}
	if (lbw_llama_state_init(sc->state, &sc->llama->cfg) < 0) {
		free(sc->state);
		sc->state = NULL;
		snprintf(err, errlen, "out of memory for the KV cache");
		lbw_scorer_close(sc);
		return -ENOMEM;
	}
	const struct lbw_llama_config *c = &sc->llama->cfg;
	const char *base = strrchr(path, '/');
	snprintf(sc->name, sizeof(sc->name), "%s", base ? base + 1 : path);
	sc->weights_hash = XXH3_64bits(sc->llama->data, sc->llama->data_size);
	sc->n_layers = c->n_layers;
	sc->hidden = c->dim;
	sc->max_seq = c->seq_len;
	sc->vocab = c->vocab_size;
	sc->emb = sc->llama->w.token_embedding;
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
	sc->bert = lbw_bert_generate(&cfg, seed);
	if (!sc->bert) {
		int e = errno;
		snprintf(err, errlen, "cannot generate the BERT-base weights: %s", strerror(e));
		return -e;
	}
	sc->emb = sc->bert->wte;
	sc->head_w = lbk_pack(sc->emb, vocab, cfg.hidden);
	sc->logits = malloc((size_t)cfg.max_seq * (size_t)vocab * sizeof(float));
	if (!sc->head_w || !sc->logits) {
		snprintf(err, errlen, "out of memory");
		lbw_scorer_close(sc);
		return -ENOMEM;
	}
	snprintf(sc->name, sizeof(sc->name), "bert-base-generated-%016llx", (unsigned long long)seed);
	/* The weights are a function of the seed and the shape: hash those. */
	uint64_t id[2] = { seed, (uint64_t)cfg.n_layers << 32 | (uint64_t)cfg.hidden };
	sc->weights_hash = XXH3_64bits(id, sizeof(id));
	sc->n_layers = cfg.n_layers;
	sc->hidden = cfg.hidden;
	sc->max_seq = cfg.max_seq;
	sc->vocab = vocab;
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

double lbw_scorer_head(struct lbw_scorer *sc, const int32_t *tokens, int32_t n, const float *h,
		       int32_t *top1)
{
	if (sc->llama)
		return lbw_llama_score_seq(sc->llama, sc->state, tokens, n, h, top1);
	lbk_gemm(sc->logits, h, sc->head_w, NULL, n, 1);
	double sum = 0;
	for (int32_t pos = 0; pos + 1 < n; pos++) {
		const float *lg = sc->logits + (size_t)pos * (size_t)sc->vocab;
		sum += lbw_llama_nll(lg, sc->vocab, tokens[pos + 1]);
		if (top1)
			top1[pos] = lbw_llama_argmax(lg, sc->vocab);
	}
	return sum;
}
