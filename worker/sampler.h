/*
 * Next-token sampling for `generate`, as llama2.c's run.c samples: the argmax at temperature 0;
 * otherwise softmax(logits / T) and one draw, from the whole distribution or, with top-p, from
 * the smallest set of most likely tokens whose probabilities sum past p (nucleus sampling).
 * The draws come from llama2.c's xorshift* generator started at the seed: one seed, one text.
 */
#ifndef LAYERBANK_WORKER_SAMPLER_H
#define LAYERBANK_WORKER_SAMPLER_H

#include <stdint.h>

/* A token index and its probability: the top-p candidates. */
struct lbw_prob_index {
	float prob;
	int32_t index;
};

/* Owned by one generating loop; lbw_sampler_free releases it. */
struct lbw_sampler {
	int32_t vocab;
	float temperature;		 /* 0: argmax */
	float topp;			 /* 1: the whole distribution */
	uint64_t rng;			 /* xorshift* state; never 0 */
	float *probs;			 /* [vocab] scratch */
	struct lbw_prob_index *cand; /* [vocab] scratch, top-p's candidates */
};

/*
 * temperature: 0 (greedy) or finite > 0; topp: in (0, 1], 1 samples from every token; seed:
 * nonzero (the generator's state; llama2.c takes the clock for 0, which the caller may do).
 * @return 0; -EINVAL for vocab < 1 or a value out of range; -ENOMEM.
 */
int lbw_sampler_init(struct lbw_sampler *s, int32_t vocab, float temperature, float topp,
		     uint64_t seed);
void lbw_sampler_free(struct lbw_sampler *s);

/* The next token for logits [vocab] (left unchanged). At temperature 0 the argmax (the first on
 * ties) and no draw; otherwise one draw from the generator. */
int32_t lbw_sampler_next(struct lbw_sampler *s, const float *logits);

/* llama2.c's random_f32: the generator's next value in [0, 1), 24 bits. */
float lbw_sampler_coin(uint64_t *state);

#endif
