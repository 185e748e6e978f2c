/*
 * Weights for generated models (bert-base, llama-110m): one normal-ish generator on splitmix64,
 * so that a seed means the same numbers on every machine and in every model that draws them.
 */
#ifndef LAYERBANK_WORKER_RANDN_H
#define LAYERBANK_WORKER_RANDN_H

#include <stdint.h>

/*
 * p[0..n-1] ~ N(0, std), approximately: each is the sum of the four 16-bit quarters of one
 * lbu_splitmix64 draw (Irwin-Hall, variance 1/3 of a unit square each), centred and scaled.
 * *state advances n times. Same state, n and std: the same floats, bit for bit.
 */
void lbw_randn(float *p, int64_t n, float std, uint64_t *state);

#endif
