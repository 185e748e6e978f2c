/*
 * Transformer encoders of the BERT (post-LN, bidirectional) and GPT-2 (pre-LN, causal) shapes:
 * weights generated from a seed or loaded (safetensors.h), a layer-major fp32 forward over a
 * whole sequence on the lbk_* kernels (packed GEMM, attention, LayerNorm, GELU).
 */
#ifndef LAYERBANK_WORKER_MODEL_BERT_H
#define LAYERBANK_WORKER_MODEL_BERT_H

#include <stdint.h>

/* Caps on a configuration: beyond them lbw_bert_alloc refuses it (-EINVAL). */
#define LBW_BERT_MAX_LAYERS 256
#define LBW_BERT_MAX_HIDDEN (1 << 14)
#define LBW_BERT_MAX_FFN (1 << 16)
#define LBW_BERT_MAX_VOCAB (1 << 20)
#define LBW_BERT_MAX_SEQ (1 << 16)

enum lbw_bert_style {
	LBW_STYLE_BERT = 0, /* post-LN, bidirectional, embedding LayerNorm, no final LayerNorm */
	LBW_STYLE_GPT2 = 1, /* pre-LN, causal, no embedding LayerNorm, final LayerNorm ln_f */
};

struct lbw_bert_config {
	int32_t n_layers;
	int32_t hidden; /* model width, heads * head size */
	int32_t heads;
	int32_t ffn;    /* FFN width */
	int32_t vocab;
	int32_t max_seq; /* rows of the position table: longest sequence */
	enum lbw_bert_style style;
	float eps;      /* LayerNorm epsilon: 1e-12 BERT, 1e-5 GPT-2 */
};

/* Presets: BERT-base (12, 768, 12, 3072, 30522, 512), GPT-2 small (12, 768, 12, 3072, 50257, 1024). */
struct lbw_bert_config lbw_bert_config_base(void);
struct lbw_bert_config lbw_bert_config_gpt2(void);

struct lbw_bert_layer_w {
	float *wqkv;  /* [3 * hidden][hidden]: query rows, then key, then value */
	float *bqkv;  /* [3 * hidden] */
	float *wo;    /* [hidden][hidden] attention output projection */
	float *bo;    /* [hidden] */
	float *ln1_g; /* [hidden] BERT: attention.output.LayerNorm; GPT-2: ln_1 */
	float *ln1_b; /* [hidden] */
	float *w1;    /* [ffn][hidden] */
	float *b1;    /* [ffn] */
	float *w2;    /* [hidden][ffn] */
	float *b2;    /* [hidden] */
	float *ln2_g; /* [hidden] BERT: output.LayerNorm; GPT-2: ln_2 */
	float *ln2_b; /* [hidden] */
	/* Packed copies made by lbw_bert_pack, NULL before: wqkv's query rows (pq) and its key and
	 * value rows (pkv) apart, so that a layer can project K and V for every position and Q for
	 * some (lbw_bert_layer_rows); wo, w1, w2. */
	struct lbk_packed *pq, *pkv, *po, *p1, *p2;
};

/*
 * A model. Weights are written only between lbw_bert_alloc and lbw_bert_pack; after packing the
 * model is read-only and any number of threads may run forwards on it at once.
 */
struct lbw_bert {
	struct lbw_bert_config cfg;
	float *wte;      /* [vocab][hidden] token embeddings */
	float *wpe;      /* [max_seq][hidden] position embeddings */
	float *wtt;      /* [hidden] token type 0 embedding (BERT; zeros for GPT-2) */
	float *emb_ln_g; /* [hidden] BERT embeddings.LayerNorm (unused for GPT-2) */
	float *emb_ln_b; /* [hidden] */
	float *lnf_g;    /* [hidden] GPT-2 ln_f (unused for BERT) */
	float *lnf_b;    /* [hidden] */
	struct lbw_bert_layer_w *layers; /* [n_layers] */
	float *params;   /* every float above, one allocation; owned */
	int64_t n_params;
};

/* Zeroed weights (LayerNorm gammas 1) of shape cfg. NULL with errno EINVAL (bad shape) or ENOMEM. */
struct lbw_bert *lbw_bert_alloc(const struct lbw_bert_config *cfg);
/* Fill every weight from seed (splitmix64): matrices, embeddings and biases ~N(0, 0.02),
 * LayerNorm gamma 1 and beta 0. Same seed and shape, same weights. */
void lbw_bert_init_random(struct lbw_bert *m, uint64_t seed);
/* Pack the layer matrices for lbk_gemm. @return 0; -ENOMEM. */
int lbw_bert_pack(struct lbw_bert *m);
/* alloc + init_random + pack. NULL with errno set as lbw_bert_alloc, or ENOMEM. */
struct lbw_bert *lbw_bert_generate(const struct lbw_bert_config *cfg, uint64_t seed);
void lbw_bert_free(struct lbw_bert *m);

/*
 * out[n][hidden] = embeddings of tokens[n] at positions 0..n-1 (token + position + type 0, then
 * the embedding LayerNorm for BERT).
 * @return 0; -EINVAL (n outside 1..max_seq, or a token outside 0..vocab-1).
 */
int lbw_bert_embed(const struct lbw_bert *m, int64_t n, const int32_t *tokens, float *out);
/*
 * Layer l over all n positions: out[n][hidden] from in[n][hidden] (in and out may be the same
 * buffer), its GEMMs on up to threads threads. The model must be packed.
 * @return 0; -EINVAL (bad l or n, not packed); -ENOMEM (scratch).
 */
int lbw_bert_layer(const struct lbw_bert *m, int l, int64_t n, const float *in, float *out,
		   int threads);
/*
 * Layer l for the positions rows[0..n_rows) of an input of n (ascending, distinct, below n)
 * only: out [n_rows][hidden] gets, bit for bit, those rows of lbw_bert_layer's out from the same
 * in [n][hidden], on the same tier. K and V are projected for every position the attention reads
 * (all n; GPT-2, causal: those up to the last row), Q, attention, output projection, norms and
 * FFN for the chosen rows only (lbk_attention_rows, and GEMMs over the gathered rows, which give
 * a row the same sums as over all). out may be in: in is read before out is written. threads as
 * lbw_bert_layer's.
 * @return 0; -EINVAL (bad l or n, n_rows outside 1..n, rows not ascending below n, not
 * packed); -ENOMEM (scratch).
 */
int lbw_bert_layer_rows(const struct lbw_bert *m, int l, int64_t n, const float *in,
			const uint32_t *rows, int64_t n_rows, float *out, int threads);
/* Embed, every layer, then lbw_bert_final: out[n][hidden] the last hidden states.
 * @return as lbw_bert_embed and lbw_bert_layer. */
int lbw_bert_forward(const struct lbw_bert *m, int64_t n, const int32_t *tokens, float *out,
		     int threads);
/* out[n][hidden] = the last layer's output in[n][hidden] as a head reads it: GPT-2's final
 * LayerNorm ln_f; BERT has none (a copy). in and out may be the same buffer. */
void lbw_bert_final(const struct lbw_bert *m, int64_t n, const float *in, float *out);

#endif
