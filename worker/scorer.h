/*
 * A model as the fleet's worker scores text with it: embed, layers (lb_layer_fn, for lb_lem_run;
 * lb_rows_fn, a layer for some positions only) and a head giving NLLs and top-1 tokens. Two
 * families: a llama2.c checkpoint (or llama-110m, one generated from a seed), and encoders (a
 * BERT-base-shaped one with generated weights, compute-heavy, or a GPT-2- or BERT-style
 * safetensors checkpoint), whose head is the tied embedding over the tokenizer's vocabulary: a
 * fixed readout to measure fidelity by. Causal models (llama, GPT-2 style) are scored on the
 * next token at every position; bidirectional ones (BERT style), which see the next token, on
 * masked tokens (mlm.h) at their own position.
 */
#ifndef LAYERBANK_WORKER_SCORER_H
#define LAYERBANK_WORKER_SCORER_H

#include <stddef.h>
#include <stdint.h>

struct lbw_llama;
struct lbw_llama_state;
struct lbw_bert;
struct lbk_packed;

/* Owned by one thread. */
struct lbw_scorer {
	char name[64];           /* the name registered with the cache */
	uint64_t weights_hash;
	int32_t n_layers, hidden;
	int32_t kv_dim;          /* a decoder's K (and V) row of a layer; 0 for an encoder */
	int32_t max_seq;         /* longest input */
	int32_t vocab;           /* tokens the head scores (and the tokenizer's vocabulary) */
	const float *emb;        /* [vocab][hidden] token embedding rows: the fingerprint is
				  * centred on their mean */
	int32_t n;               /* tokens of the input being run: set by lbw_scorer_embed */
	int32_t mlm;             /* 1: bidirectional, scored on masked tokens
				  * (lbw_scorer_head_masked); 0: causal, on next tokens */
	struct lbw_llama *llama; /* one of llama and bert is set; owned */
	struct lbw_llama_state *state;
	struct lbw_bert *bert;
	struct lbk_packed *head_w; /* bert: emb packed for the head */
	float *logits;           /* bert: [max_seq][vocab] */
	float *final;            /* bert of GPT-2 style: [max_seq][hidden] the head's input, the
				  * last layer's output after ln_f; NULL for BERT style */
};

/* Load a llama2.c checkpoint. Named by the path's last component, its weights_hash an XXH3 of
 * the file. err gets one line. @return 0; as lbw_llama_load; -ENOMEM. */
int lbw_scorer_open_llama(struct lbw_scorer *sc, const char *path, char *err, size_t errlen);
/*
 * llama-110m (lbw_llama_config_110m) with weights generated from seed (lbw_llama_generate).
 * Named "llama-110m-generated-SEED" (SEED in 16 hex digits), its weights_hash an XXH3 of the
 * generated checkpoint's bytes, as a file's: it changes with the seed and with the generator.
 * @return 0; -ENOMEM.
 */
int lbw_scorer_open_llama_110m(struct lbw_scorer *sc, uint64_t seed, char *err, size_t errlen);
/*
 * A BERT-base-shaped encoder (12 layers, hidden 768, 12 heads, FFN 3072, 512 positions) with
 * weights generated from seed, its head scoring the first vocab rows of its embedding.
 * @return 0; -EINVAL (vocab outside 2..30522); -ENOMEM.
 */
int lbw_scorer_open_bert(struct lbw_scorer *sc, int32_t vocab, uint64_t seed, char *err,
			 size_t errlen);
/*
 * A GPT-2- or BERT-style safetensors checkpoint (lbw_bert_load_safetensors: style from the
 * tensor names, heads hidden / 64), its head scoring the first vocab rows of its token
 * embedding. Named "FILE-HASH" (FILE the path's last component, cut to 46 bytes), its
 * weights_hash an XXH3 of its shape and weights: two files of other weights never share cache
 * entries. err gets one line naming the file.
 * @return 0; -EINVAL (vocab outside 2..the checkpoint's vocabulary); the errors of
 * lbw_bert_load_safetensors; -ENOMEM.
 */
int lbw_scorer_open_safetensors(struct lbw_scorer *sc, const char *path, int32_t vocab,
				char *err, size_t errlen);
void lbw_scorer_close(struct lbw_scorer *sc);

/* h [n][hidden] = the embedding of tokens[0..n-1]; remembers n for the layers.
 * Arguments in range: 1 <= n <= max_seq, tokens < vocab. */
void lbw_scorer_embed(struct lbw_scorer *sc, const int32_t *tokens, int32_t n, float *h);
/* lb_layer_fn over ctx = the scorer: layer l of the input last embedded. @return 0, -ENOMEM. */
int lbw_scorer_layer(void *ctx, uint32_t l, const float *in, float *out);
/*
 * lb_rows_fn over ctx = the scorer: layer l for the positions rows[0..n_rows) (ascending,
 * distinct, below n) of an input of n positions, in [n][hidden] (any input: not only the one last
 * embedded), out [n_rows][hidden]: bit for bit those rows of lbw_scorer_layer's out from the same
 * in, on the same kernel tier. Its cost is about n_rows / n of the layer's, plus K and V
 * projected for every position attention reads (all n; a causal model's up to the last row):
 * lbw_bert_layer_rows, lbw_llama_layer_rows. out may be in.
 * @return 0; -EINVAL (l or n out of range, n_rows 0 or above n, rows not ascending below n, a
 * NULL pointer); -ENOMEM.
 */
int lbw_scorer_rows(void *ctx, uint32_t l, const float *in, uint32_t n, const uint32_t *rows,
		    uint32_t n_rows, float *out);
/* The summed NLL of tokens[1..n-1] from the last layer's output h [n][hidden], each token
 * predicted at the position before it; top1 (may be NULL): [n - 1] the argmax after each
 * position but the last. For causal models (sc->mlm 0). */
double lbw_scorer_head(struct lbw_scorer *sc, const int32_t *tokens, int32_t n, const float *h,
		       int32_t *top1);
/* An encoder's logits from the last layer's output h [n][hidden]: sc->logits [n][vocab], the
 * head's input (h, after ln_f for GPT-2 style) times the tied embedding's first vocab rows. */
const float *lbw_scorer_logits(struct lbw_scorer *sc, const float *h, int32_t n);
/* The summed NLL of labels[i] at position pos[i] (i < m; positions in 0..n-1 whose input token
 * was the mask), each predicted at its own position from the last layer's output h [n][hidden];
 * top1 (may be NULL): [m] the argmax at each. For bidirectional encoders (sc->mlm 1). */
double lbw_scorer_head_masked(struct lbw_scorer *sc, const float *h, int32_t n,
			      const int32_t *pos, const int32_t *labels, int32_t m, int32_t *top1);

#endif
