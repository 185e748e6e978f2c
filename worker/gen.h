/* Generation from a decoder with exact prefix reuse: the prompt's longest cached prefix of
 * blocks is read from the bank (zero copy), only the rest is prefilled, tokens are decoded, and
 * the full blocks of the prompt and of what was fed back are inserted for the next turn. With
 * --gen-recompute, a prompt that no exact prefix covers by half is prefilled by partial reuse
 * of a near prompt's hidden states instead (approximate, and said so). */
#ifndef LAYERBANK_WORKER_GEN_H
#define LAYERBANK_WORKER_GEN_H

#include <stdint.h>

struct lbw_scorer;
struct lbw_cache;

struct lbw_gen_result {
	int32_t prompt_tokens;    /* the prompt, BOS included */
	int32_t reused_tokens;    /* positions whose K and V came from the cache */
	int32_t computed_tokens;  /* prompt positions prefilled */
	int32_t generated;        /* tokens sampled (the stop, BOS, not counted) */
	uint32_t blocks_inserted;
	double ttft_us;           /* from the start to the first token sampled */
	double us;                /* the whole run */
	int cache_error;          /* 0, or the cache's error: the run went on without it */
	/* A prefill by partial reuse of a near prompt (--gen-recompute): the share of its
	 * layer-positions taken from the bank, and how far from exact it may be (0: exact). */
	float near_reused;
	uint32_t near_approx;
	uint32_t near_aligned;    /* its positions aligned with the near prompt's (0: none) */
};

/* Choose the next token from a position's logits ([vocab]); may print it. */
typedef int32_t (*lbw_next_fn)(void *ctx, const float *logits);

/* A generation's fidelity against another's text: lbw_forced_next feeds want[0..n) whatever
 * the logits say (the last token again past n), counting how often their argmax agreed and the
 * NLL of the tokens fed. Zero it but for want, n and vocab. */
struct lbw_forced {
	const int32_t *want;
	int32_t n, vocab;
	int32_t fed, agree;
	double nll;
};
int32_t lbw_forced_next(void *ctx, const float *logits);

/*
 * Generate after prompt[0..n) (BOS first, tokens < vocab): prefill it through lb_prefix_run on
 * wc (plain when wc->c is NULL), then sample up to max_new tokens with next (greedy when NULL)
 * into out, each but the last fed back, stopping at BOS (not stored) or at the model's
 * context. Then the full blocks of the prompt and of the tokens fed back are inserted and the
 * hit's blocks given back. The text, logits and tokens are the same with and without the
 * cache, bit for bit (the forward is batch-invariant: lbw_llama_rows); but when wc->gen_near
 * and no cached exact prefix covers half the prompt: then it is prefilled by lb_lem_run_rows
 * (LB_LEM_CONTINUE), partial reuse of a near prompt's hidden states with the share
 * wc->gen_recompute of positions recomputed, res->near_reused and res->near_approx say how
 * much and how far from exact, and no block of an approximate run goes to the bank.
 * @return the tokens generated; -EINVAL (not a decoder, n outside 1..the context, a token out
 * of the vocabulary); -ENOMEM.
 */
int lbw_generate(struct lbw_scorer *sc, struct lbw_cache *wc, const int32_t *prompt, int32_t n,
		 int32_t max_new, lbw_next_fn next, void *ctx, int32_t *out,
		 struct lbw_gen_result *res);

#endif
