/*
 * Llama decoder in the llama2.c legacy checkpoint format: loading and validating the file (or
 * generating one from a seed), and a plain-C fp32 forward pass (one token at a time, KV cache)
 * that matches llama2.c's forward().
 */
#ifndef LAYERBANK_WORKER_MODEL_LLAMA_H
#define LAYERBANK_WORKER_MODEL_LLAMA_H

#include <stddef.h>
#include <stdint.h>

/* Caps on header fields: a header beyond them is rejected as hostile (-EINVAL). */
#define LBW_LLAMA_MAX_DIM (1 << 16)
#define LBW_LLAMA_MAX_HIDDEN (1 << 18)
#define LBW_LLAMA_MAX_LAYERS 1024
#define LBW_LLAMA_MAX_VOCAB (1 << 20)
#define LBW_LLAMA_MAX_SEQ (1 << 20)
/* Bytes of the legacy header: 7 int32. */
#define LBW_LLAMA_HEADER_BYTES 28

/*
 * FusedKV checkpoints (arXiv 2512.03870): the legacy checkpoint of an L-layer model whose
 * layers 0..n-1 store their K and V (storage layers) and whose layers n..L-1 (reconstruction
 * layers) have no K and V projections and attend over K and V rebuilt from layers 0 and n-1:
 *   lite:  K_i = K_{n-1},                        V_i = V_0;
 *   fused: K_i = a_i . K_0 + a'_i . K_{n-1},     V_i = b_i . V_0 + b'_i . V_{n-1}
 * (elementwise; K after RoPE, so the two channels 2j, 2j+1 of each rotary pair share one key
 * weight). The file, little-endian int32 and float32 throughout:
 *   - the 7-int32 header, as legacy (n_layers = L);
 *   - the tensors in legacy order, except that wk and wv hold the n storage layers only
 *     ([n][kv_dim][dim] each);
 *   - fused only, for each reconstruction layer i = n..L-1 in turn: a_i [kv_dim / 2] (one per
 *     rotary pair, the weight on K_0), a'_i [kv_dim / 2] (on K_{n-1}), b_i [kv_dim] (on V_0),
 *     b'_i [kv_dim] (on V_{n-1});
 *   - a 16-byte footer: magic "LBFK", version (1), mode (1 lite, 2 fused), n (1..L-1).
 * A file whose size is exactly the legacy one for its header is a plain checkpoint.
 */
#define LBW_FUSEDKV_MAGIC "LBFK"
#define LBW_FUSEDKV_VERSION 1
#define LBW_FUSEDKV_FOOTER_BYTES 16
enum lbw_kv_mode { LBW_KV_PLAIN = 0, LBW_KV_LITE = 1, LBW_KV_FUSED = 2 };

struct lbw_llama_config {
	int32_t dim;        /* transformer width */
	int32_t hidden_dim; /* FFN width */
	int32_t n_layers;
	int32_t n_heads;    /* query heads */
	int32_t n_kv_heads; /* key/value heads (grouped-query attention) */
	int32_t vocab_size; /* always positive here; the file's sign is in shared_classifier */
	int32_t seq_len;    /* longest context, also the KV cache length */
	int32_t head_size;  /* dim / n_heads, even */
	int32_t kv_dim;     /* n_kv_heads * head_size */
	int shared_classifier; /* 1: wcls is the token embedding (positive vocab_size in the file) */
	int kv_mode;        /* enum lbw_kv_mode */
	int32_t kv_layers;  /* layers that store K and V: n_layers, or a FusedKV model's n */
};

/* Pointers into the loaded file (read-only after loading). */
struct lbw_llama_weights {
	const float *token_embedding; /* [vocab_size][dim] */
	const float *rms_att;         /* [n_layers][dim] */
	const float *wq;              /* [n_layers][dim][dim] (out = n_heads * head_size) */
	const float *wk;              /* [kv_layers][kv_dim][dim] */
	const float *wv;              /* [kv_layers][kv_dim][dim] */
	const float *wo;              /* [n_layers][dim][dim] */
	const float *rms_ffn;         /* [n_layers][dim] */
	const float *w1;              /* [n_layers][hidden_dim][dim] */
	const float *w2;              /* [n_layers][dim][hidden_dim] */
	const float *w3;              /* [n_layers][hidden_dim][dim] */
	const float *rms_final;       /* [dim] */
	/* then freq_cis real and imag, each [seq_len][head_size / 2], unused */
	const float *wcls;            /* [vocab_size][dim] */
	/* LBW_KV_FUSED: [n_layers - kv_layers][3 kv_dim], per reconstruction layer a [kv_dim / 2],
	 * a' [kv_dim / 2], b [kv_dim], b' [kv_dim]; else NULL */
	const float *kv_coef;
};

struct lbk_packed;

/* The layer matrices packed for lbk_gemm, per layer, in this order. */
enum { LBW_LLAMA_WQ, LBW_LLAMA_WK, LBW_LLAMA_WV, LBW_LLAMA_WO, LBW_LLAMA_W1, LBW_LLAMA_W2,
       LBW_LLAMA_W3, LBW_LLAMA_NMAT };

/*
 * A loaded or generated model. Immutable after lbw_llama_load or lbw_llama_generate (and
 * lbw_llama_set_reference): any number of states may share it.
 */
struct lbw_llama {
	struct lbw_llama_config cfg;
	struct lbw_llama_weights w;
	void *data;       /* the whole file (or the generated one), malloc'd; owned */
	size_t data_size; /* bytes of data, equal to the file size */
	/* [n_layers * LBW_LLAMA_NMAT], packed once at load for the layer-major prefill; owned.
	 * NULL (packing ran out of memory): the prefill runs position by position. */
	struct lbk_packed **packed;
	/* LBW_KV_FUSED: [n_layers - kv_layers][4][kv_dim], the weights a, a', b, b' of each
	 * reconstruction layer per channel (a and a' repeated over each rotary pair), as the fused
	 * attention kernel takes them; else NULL. Owned. */
	float *fused_w;
	int reference; /* 1: the plain-C forward (the kernels' baseline), 0: the lbk_* kernels */
};

/*
 * Choose the forward: on (1) the plain-C reference of llama2.c, off (0, the default after
 * lbw_llama_load) the lbk_* kernels. Set it before sharing m between threads.
 */
void lbw_llama_set_reference(struct lbw_llama *m, int on);

/* Tokens of a KV block: the state's K and V are blocks of this many positions, the layout of
 * layerbank's prefix blocks (layerbank.h), so that cached blocks stand in for the state's own. */
#define LBW_LLAMA_BLOCK 16

/*
 * Activations and the KV of one sequence. Owned by one thread at a time. The K and V rows of
 * position t, storage layer l (every layer but a FusedKV model's reconstruction layers, which
 * read theirs from layers 0 and kv_layers - 1):
 * table[t / B] + ((2 l) B + t % B) kv_dim, V at (2 l + 1); table[i] is the
 * state's own block i (kv + i * block_floats) unless a caller pointed it at a cached, read-only
 * block holding the same positions (a prefix hit), which is then never written.
 */
struct lbw_llama_state {
	float *x;           /* [dim] residual stream */
	float *xb;          /* [dim] */
	float *xb2;         /* [dim] */
	float *hb;          /* [hidden_dim] */
	float *hb2;         /* [hidden_dim] */
	float *q;           /* [dim] */
	float *att;         /* [n_heads][seq_len] */
	float *logits;      /* [vocab_size] */
	float *kv;          /* [n_blocks][kv_layers][2][LBW_LLAMA_BLOCK][kv_dim]: the own blocks */
	const float **table; /* [n_blocks] */
	int32_t n_blocks;   /* seq_len rounded up to blocks */
	uint64_t block_floats; /* of one block: n_layers * 2 * LBW_LLAMA_BLOCK * kv_dim */
	float *krow;        /* [kv_dim]: a fused reconstruction layer's K or V row, rebuilt */
	const float **blk2; /* [2][n_blocks]: a fused layer's second K and V block pointers */
	float *scratch;     /* the row-major layer's, grown as rows need it */
	size_t scratch_floats;
	const float **blk;  /* [2][n_blocks] one layer's K and V block pointers */
};

/*
 * Check a header against the caps and shape rules and the file size it implies: a plain
 * checkpoint's, or with footer (the file's last LBW_FUSEDKV_FOOTER_BYTES, NULL when it has
 * fewer) a FusedKV checkpoint's. hdr: the 7 int32 as stored. On success fills cfg.
 * @return 0; -EINVAL with a reason in err (bad field, bad FusedKV footer, or file_size not
 * exactly what they imply).
 */
int lbw_llama_check_header(const int32_t hdr[7], const uint8_t *footer, uint64_t file_size,
			   struct lbw_llama_config *cfg, char *err, size_t errlen);

/*
 * Read the checkpoint at path into memory and validate it.
 * err (may be NULL) receives one line saying what is wrong.
 * @return 0; -errno from open/fstat (-ENOENT, -EACCES, ...); -EINVAL bad header or size;
 * -EIO short or failed read; -ENOMEM.
 */
int lbw_llama_load(struct lbw_llama *m, const char *path, char *err, size_t errlen);
/* Free what lbw_llama_load or lbw_llama_generate allocated; m is zeroed. Safe on a zeroed
 * struct. */
void lbw_llama_free(struct lbw_llama *m);

/* The name `layerbank-worker --model` gives the generated decoder of lbw_llama_config_110m. */
#define LBW_LLAMA_110M_NAME "llama-110m"
/* Standard deviation of the generated matrices and token embedding, GPT-2's and bert-base's. */
#define LBW_LLAMA_GEN_STD 0.02f

/*
 * The shape of llama-110m, a decoder for speed work: 12 layers, dim 768, 12 query heads and 4
 * KV heads of 64, FFN 2048, the tokenizer's 512 tokens, seq_len 2048, shared classifier.
 * 75,909,888 parameters: llama2.c's stories110M shape (its label) less the 32000-token
 * vocabulary (24.2M of its 110M) and less K and V for 8 of its 12 KV heads (9.4M).
 */
struct lbw_llama_config lbw_llama_config_110m(void);

/*
 * Fill m as lbw_llama_load fills it from a file, with weights generated from seed: m->data is a
 * llama2.c legacy checkpoint (header, then the weights; written to a file, lbw_llama_load reads
 * it back as this model), m->w points into it, the classifier is the token embedding and the
 * layer matrices are packed. Of cfg the seven header fields are read (head_size, kv_dim and
 * shared_classifier follow from them), and kv_mode with kv_layers: a FusedKV model's m->data
 * ends with its footer. Every matrix and the embedding are ~N(0, LBW_LLAMA_GEN_STD) from
 * lbw_randn, in the file's order from one splitmix64 state seeded with seed; the RMSNorm gains
 * are 1; the unused freq_cis tables 0; a fused model's K and V weights ~N(0, 1). Same cfg and
 * seed, same bytes.
 * err (may be NULL) receives one line.
 * @return 0; -EINVAL a shape lbw_llama_check_header would refuse; -ENOMEM.
 */
int lbw_llama_generate(struct lbw_llama *m, const struct lbw_llama_config *cfg, uint64_t seed,
		       char *err, size_t errlen);

/*
 * Training-free FusedKV-Lite of the plain model in (loaded or generated): m is in with only its
 * first n layers' K and V projections, the layers past them reading layer n-1's keys and layer
 * 0's values (a LBW_KV_LITE file's image in m->data, as tools/train_fusedkv.py --convert-lite
 * writes it for n = n_layers / 2). m is a model of its own (in may be freed).
 * @return 0; -EINVAL (in not plain, n outside 1..n_layers - 1) with err; -ENOMEM.
 */
int lbw_llama_lite(struct lbw_llama *m, const struct lbw_llama *in, int32_t n, char *err,
		   size_t errlen);

/* Allocate a state (KV cache for cfg->seq_len positions). @return 0, -ENOMEM. */
int lbw_llama_state_init(struct lbw_llama_state *s, const struct lbw_llama_config *cfg);
void lbw_llama_state_free(struct lbw_llama_state *s);

/* Point table[i] back at the own blocks: a new sequence, or one that gave its cached blocks
 * back. */
void lbw_llama_state_reset(struct lbw_llama_state *s);

/*
 * Layer l for the n rows of x ([n][dim], in place) at positions pos0 .. pos0 + n - 1: their K
 * and V written to the state's own blocks, attention over positions 0 .. pos0 + n - 1 through
 * the table. Row by row the arithmetic is the same whatever n and pos0 (on the kernels, the
 * packed lbk_gemm and lbk_attention_paged are batch-invariant; the reference runs position by
 * position): a prefill of n rows gives the bits of n one-row decode steps, and a prefix whose
 * K and V come from a cache gives the bits of computing it. The rows' blocks must be own.
 * @return 0; -ENOMEM (the scratch could not grow: nothing changed).
 */
int lbw_llama_rows(const struct lbw_llama *m, struct lbw_llama_state *s, int32_t l, int32_t pos0,
		   int32_t n, float *x);

/* x [n][dim] = the embedding rows of tokens[0..n-1]; then every layer of positions pos0 .. pos0
 * + n - 1 (lbw_llama_rows): x holds the last layer's output of each. @return 0, -EINVAL (a
 * token or position out of range), -ENOMEM. */
int lbw_llama_prefill(const struct lbw_llama *m, struct lbw_llama_state *s, const int32_t *tokens,
		      int32_t pos0, int32_t n, float *x);

/* The final RMSNorm and the classifier of one row (the last layer's output) into s->logits. */
float *lbw_llama_head_row(const struct lbw_llama *m, struct lbw_llama_state *s, const float *row);

/*
 * The forward pass in its three parts, for callers that hook a layer (a layer cache):
 * embed copies token's row into s->x; layer runs layer l at position pos on s->x (reading the
 * KV cache of positions 0..pos-1 of that layer and writing position pos); head applies the
 * final RMSNorm and the classifier into s->logits. Arguments must be in range (the caller
 * checked them; lbw_llama_forward does): token < vocab_size, l < n_layers, pos < seq_len.
 */
void lbw_llama_embed(const struct lbw_llama *m, struct lbw_llama_state *s, int32_t token);
void lbw_llama_layer(const struct lbw_llama *m, struct lbw_llama_state *s, int32_t l, int32_t pos);
float *lbw_llama_head(const struct lbw_llama *m, struct lbw_llama_state *s);

/*
 * The layer-major prefill, for score and the layer cache (lb_lem_run). A cached layer holds
 * hidden states, not KV: whoever resumes from a hit at layer L recomputes the KV of layers
 * L + 1.. as part of this prefill, which is all scoring needs. A decoder reuses KV through
 * prefix blocks instead (lb_prefix_run and the state's table).
 *
 * embed_seq: h [n][dim] = the embedding rows of tokens[0..n-1].
 * layer_seq: layer l for positions 0..n-1 at once (lbw_llama_rows), in, out [n][dim] (in may
 *   equal out); bit-identical to lbw_llama_layer run position by position, on every path.
 * score_seq: the summed NLL of tokens[1..n-1] from the last layer's output h [n][dim] (final
 *   RMSNorm per position, the classifier as one matrix product over the positions: its logits
 *   may differ in their last bits from lbw_llama_head's, one position at a time, which
 *   lbw_llama_prompt sums; the same input always gives the same bits);
 *   top1 (may be NULL): [n - 1], the argmax prediction after each position but the last.
 * Arguments must be in range: 1 <= n <= seq_len, tokens < vocab_size, l < n_layers.
 */
void lbw_llama_embed_seq(const struct lbw_llama *m, const int32_t *tokens, int32_t n, float *h);
void lbw_llama_layer_seq(const struct lbw_llama *m, struct lbw_llama_state *s, int32_t l, int32_t n,
			 const float *in, float *out);
double lbw_llama_score_seq(const struct lbw_llama *m, struct lbw_llama_state *s,
			   const int32_t *tokens, int32_t n, const float *h, int32_t *top1);

/*
 * layer_seq for some positions only: out [n_rows][dim] gets, bit for bit, the rows rows[0..n_rows)
 * (ascending, distinct, below n) of layer_seq's out from the same in [n][dim]. On the kernels,
 * K and V (RMSNorm, projections, RoPE) are computed for positions 0..rows[n_rows - 1] (a causal
 * row reads no later key), Q, attention (lbk_attention_rows), output projection and FFN for the
 * chosen rows only, on their gathered rows (the packed lbk_gemm gives a row the same sums in any
 * batch). Either way K and V of positions 0..rows[n_rows - 1] at layer l go to the state's own
 * blocks, as layer_seq's: a decoder can continue from them. The plain-C reference (and the
 * kernels without packed weights) runs layer_seq over those positions into a buffer of its
 * own and copies the rows out: the same bits at the whole layer's cost. out may be in: in is read
 * before out is written. Arguments must be in range: l < n_layers, 1 <= n_rows <= n <= seq_len.
 * @return 0; -ENOMEM (nothing written to out).
 */
int lbw_llama_layer_rows(const struct lbw_llama *m, struct lbw_llama_state *s, int32_t l,
			 int32_t n, const float *in, const uint32_t *rows, int32_t n_rows,
			 float *out);

/*
 * One token at position pos through the whole model, as llama2.c's forward().
 * @return s->logits ([vocab_size]); NULL with errno EINVAL when token or pos is out of range.
 */
float *lbw_llama_forward(const struct lbw_llama *m, struct lbw_llama_state *s, int32_t token,
			 int32_t pos);

/*
 * Run tokens[0..n-1] at positions 0..n-1. logits (may be NULL): [n][vocab_size], the logits after
 * each position. nll (may be NULL): the summed negative log-likelihood, in double from the
 * log-softmax of the float logits, of tokens[1..n-1] each given the positions before it.
 * @return 0; -EINVAL when n < 1, n > seq_len or a token is out of range.
 */
int lbw_llama_prompt(const struct lbw_llama *m, struct lbw_llama_state *s, const int32_t *tokens,
		     int32_t n, float *logits, double *nll);

/* -log softmax(logits)[target] over vocab entries, in double. */
double lbw_llama_nll(const float *logits, int32_t vocab, int32_t target);

/* Index of the largest logit (the first on ties), as llama2.c's argmax sampler. */
int32_t lbw_llama_argmax(const float *logits, int32_t vocab);

#endif
