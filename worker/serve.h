/* Scoring one text through the layer cache, and `layerbank-worker serve`: a fleet member that
 * scores requests read from a stream, one line each, and answers each on another. */
#ifndef LAYERBANK_WORKER_SERVE_H
#define LAYERBANK_WORKER_SERVE_H

#include <stdint.h>
#include <stdio.h>

#include "layerbank/layerbank.h"

struct lbw_scorer;
struct lbw_tokenizer;
struct lbw_cache;

/* Tokens an encoder's head scores (bert-base, a safetensors file): the shipped tokenizer's
 * vocabulary. */
#define LBW_SERVE_ENCODER_VOCAB 512
/* Longest request line serve reads; a longer one is answered with an error and skipped. */
#define LBW_SERVE_MAX_LINE (64u << 10)

struct lbw_score {
	int32_t tokens;           /* run through the model, BOS included */
	int32_t predicted;        /* tokens scored: tokens - 1 next tokens (a causal model), or
				   * the masked ones (a bidirectional encoder, mlm.h) */
	double nll;               /* their summed negative log-likelihood, nats */
	struct lb_lem_result lem; /* what the cache did */
	double us;                /* microseconds from tokenizing to the last logit */
	/* When the layers ran (CLOCK_MONOTONIC, us, comparable between processes): the start of
	 * the first computed and the end of the last; both 0 when none was computed. */
	double compute_start_us, compute_end_us;
	/* --shadow, after a run that reused something: the same input computed plainly too. The
	 * largest drift (1 - cosine) of a position's last-layer state from the plain one, and the
	 * predictions whose top-1 differs (counted when top1 was asked for). */
	int shadow;
	double shadow_drift;
	int32_t shadow_changed;
};

/*
 * Tokenize text (BOS first), run the layers through lb_lem_run on wc (plain when wc->c is NULL;
 * with wc->redis, the deepest layer's output of the exact input from the Redis peer, a hit
 * answered as hit_layer n_layers - 1 and nothing computed) and score it. An input of more than max_tokens tokens is cut to max_tokens when cut is set,
 * refused otherwise. A bidirectional encoder (sc->mlm) gets the input with the positions
 * lbw_mlm_select picks (seed LBW_MLM_SEED) replaced by LBW_MLM_MASK_ID: its layers, its
 * fingerprint and the cache only ever see the masked input, and the head scores the original
 * tokens there. top1 (may be NULL): [max_tokens - 1] the argmax of each prediction.
 * @return 0; -EINVAL with err saying why (no text, too long, a token outside the model's
 * vocabulary); -ENOMEM; an error of the layer computation.
 */
int lbw_score_text(struct lbw_scorer *sc, const struct lbw_tokenizer *t, struct lbw_cache *wc,
		   const char *text, int32_t max_tokens, int cut, struct lbw_score *r, int32_t *top1,
		   char *err, size_t errlen);

/*
 * Serve: print "ready model=NAME layers=L hidden=H cache=MODE max_tokens=N" on out, then for each
 * line "ID<TAB>TEXT" of in (ID a decimal integer) one line on out, flushed:
 *   "ID ok tokens=N nll=S hit=H hamming=D computed=C inserted=I us=T sflight=F waited=W
 *    compute=A-B reused=R predicted=P top1=a,b,..."
 * (as lbw_score_text scores it: P predictions, their summed NLL S and P top-1 tokens; F:
 * lb_lem_result's sflight bits, W its waited_us, A and B compute_start_us and compute_end_us,
 * whole microseconds; R the share of layer-positions reused)
 * or "ID err MESSAGE" (ID "-" when the line had none). Bad requests never end the loop.
 * @return 0 at end of input; -EIO when out cannot be written; -ENOMEM.
 */
int lbw_serve(struct lbw_scorer *sc, const struct lbw_tokenizer *t, struct lbw_cache *wc,
	      int32_t max_tokens, const char *mode, FILE *in, FILE *out);

#endif
