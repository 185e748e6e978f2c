/* The request streams' generator: xoshiro256** seeded through splitmix64, uniform draws without
 * modulo bias, and a pick from a cumulative weight table (Zipf popularity). Private to the
 * worker component; header-only so each stream keeps its generator state on its own struct. */
#ifndef LAYERBANK_WORKER_XOSHIRO_H
#define LAYERBANK_WORKER_XOSHIRO_H

#include <stdint.h>

#include "rng.h"

struct lbw_rng {
	uint64_t s[4];
};

/* splitmix64 is a bijection of its counter, so the four words are never all zero. */
static inline void lbw_rng_seed(struct lbw_rng *r, uint64_t seed)
{
	for (int i = 0; i < 4; i++)
		r->s[i] = lbu_splitmix64(&seed);
}

static inline uint64_t lbw_rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

/* xoshiro256** (Blackman and Vigna). */
static inline uint64_t lbw_rng_next(struct lbw_rng *r)
{
	uint64_t *s = r->s;
	uint64_t res = lbw_rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = lbw_rotl(s[3], 45);
	return res;
}

/* Uniform in [0, 1), 53 bits. */
static inline double lbw_rng_unit(struct lbw_rng *r)
{
	return (double)(lbw_rng_next(r) >> 11) * 0x1.0p-53;
}

/* Uniform in [0, n), n >= 1, without modulo bias: draws below 2^64 mod n are redrawn. */
static inline uint32_t lbw_rng_below(struct lbw_rng *r, uint32_t n)
{
	uint64_t lim = -(uint64_t)n % n, x;
	do
		x = lbw_rng_next(r);
	while (x < lim);
	return (uint32_t)(x % n);
}

/* The rank k in [0, d) with cum[k - 1] <= x < cum[k], cum[0..d) the running sums of positive
 * weights; d - 1 when x rounds up to cum[d - 1]. O(log d). */
static inline uint32_t lbw_cum_pick(const double *cum, uint32_t d, double x)
{
	uint32_t lo = 0, hi = d - 1;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (cum[mid] > x)
			hi = mid;
		else
			lo = mid + 1;
	}
	return lo;
}

#endif
