/* Temperature and top-p sampling of the next token (llama2.c's sampler, its generator and its
 * draws), on a softmax from the lbk_* kernels. */
#include "sampler.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "model_llama.h"

int lbw_sampler_init(struct lbw_sampler *s, int32_t vocab, float temperature, float topp,
		     uint64_t seed)
{
	memset(s, 0, sizeof(*s));
	if (vocab < 1 || !isfinite(temperature) || temperature < 0.0f || !(topp > 0.0f && topp <= 1.0f) ||
	    seed == 0)
		return -EINVAL;
	s->probs = malloc((size_t)vocab * sizeof(float));
	s->cand = malloc((size_t)vocab * sizeof(*s->cand));
	if (!s->probs || !s->cand) {
		lbw_sampler_free(s);
		return -ENOMEM;
	}
	s->vocab = vocab;
	s->temperature = temperature;
	s->topp = topp;
	s->rng = seed;
	return 0;
}

void lbw_sampler_free(struct lbw_sampler *s)
{
	free(s->probs);
	free(s->cand);
	s->probs = NULL;
	s->cand = NULL;
}

/* xorshift* (Marsaglia's xorshift64 scrambled by a multiply), the top 32 bits, as llama2.c. */
static uint32_t random_u32(uint64_t *state)
{
	*state ^= *state >> 12;
	*state ^= *state << 25;
	*state ^= *state >> 27;
	return (uint32_t)((*state * 0x2545F4914F6CDD1Dull) >> 32);
}

float lbw_sampler_coin(uint64_t *state)
{
	return (float)(random_u32(state) >> 8) / 16777216.0f;
}

/* The first index whose running sum of probs passes coin; the last one if rounding keeps the
 * total below coin. */
static int32_t sample_mult(const float *probs, int32_t n, float coin)
{
	float cdf = 0.0f;
	for (int32_t i = 0; i < n; i++) {
		cdf += probs[i];
		if (coin < cdf)
			return i;
	}
	return n - 1;
}

/* Descending probability, then ascending index: a total order, so the draw does not depend on
 * how qsort treats ties. */
static int by_prob(const void *a, const void *b)
{
	const struct lbw_prob_index *x = a, *y = b;
	if (x->prob != y->prob)
		return x->prob > y->prob ? -1 : 1;
	return (x->index > y->index) - (x->index < y->index);
}

/*
 * Nucleus sampling: the most likely tokens, in order, up to the first whose running sum passes
 * topp; coin scaled to their sum picks one. A token below (1 - topp) / (n - 1) cannot be in the
 * set (the rest would already pass topp), so those are dropped before the sort, as llama2.c
 * does; when that drops everything (a near-uniform distribution and topp < 1/n) the nucleus is
 * the single most likely token.
 */
static int32_t sample_topp(struct lbw_sampler *s, float coin)
{
	const int32_t n = s->vocab;
	const float cutoff = n > 1 ? (1.0f - s->topp) / (float)(n - 1) : 0.0f;
	int32_t n0 = 0;
	for (int32_t i = 0; i < n; i++)
		if (s->probs[i] >= cutoff)
			s->cand[n0++] = (struct lbw_prob_index){ s->probs[i], i };
	if (n0 == 0)
		return lbw_llama_argmax(s->probs, n);
	qsort(s->cand, (size_t)n0, sizeof(*s->cand), by_prob);
	float cum = 0.0f;
	int32_t last = n0 - 1; /* rounding may keep the sum at or below topp: all of them */
	for (int32_t i = 0; i < n0; i++) {
		cum += s->cand[i].prob;
		if (cum > s->topp) {
			last = i;
			break;
		}
	}
	float r = coin * cum, cdf = 0.0f;
	for (int32_t i = 0; i <= last; i++) {
		cdf += s->cand[i].prob;
		if (r < cdf)
			return s->cand[i].index;
	}
	return s->cand[last].index;
}

int32_t lbw_sampler_next(struct lbw_sampler *s, const float *logits)
{
	const int32_t n = s->vocab;
	if (s->temperature == 0.0f)
		return lbw_llama_argmax(logits, n);
	/* (logit - max) / T rather than llama2.c's logit / T: the same distribution, and no
	 * overflow to inf - inf = NaN when T is tiny (the result is then the argmax's one-hot). */
	float max = logits[0];
	for (int32_t i = 1; i < n; i++)
		if (logits[i] > max)
			max = logits[i];
	for (int32_t i = 0; i < n; i++)
		s->probs[i] = (logits[i] - max) / s->temperature;
	lbk_softmax(s->probs, n);
	float coin = lbw_sampler_coin(&s->rng);
	if (s->topp >= 1.0f)
		return sample_mult(s->probs, n, coin);
	return sample_topp(s, coin);
}
