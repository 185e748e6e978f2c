/*
 * Weights for generated models (bert-base, llama-110m): one normal-ish generator on splitmix64,
 * so that a seed means the same numbers on every machine and in every model that draws them.
 */
#ifndef LAYERBANK_WORKER_RANDN_H
#define LAYERBANK_WORKER_RANDN_H

#include <stdint.h>

/*
 * p[0..n-1] ~ N(0, std), approximately: each is the four 16-bit quarters of one lbu_splitmix64
 * draw summed (Irwin-Hall of four uniforms, variance 1/3), centred and scaled; never beyond
 * 2 sqrt(3) = 3.46 std. *state advances n times. Same state, n and std: the same floats, bit
 * for bit.
 */
void lbw_randn(float *p, int64_t n, float std, uint64_t *state);

#endif
