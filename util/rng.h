/* Vigna's splitmix64: the generator PROTOCOL.md names for the fingerprint projection, and the
 * seeding and sampling generator of the worker, the benchmarks and the tests. Header-only:
 * the client library uses it too and links nothing of this component. */
#ifndef LAYERBANK_UTIL_RNG_H
#define LAYERBANK_UTIL_RNG_H

#include <stdint.h>

/* splitmix64's finaliser: a bijection of 64-bit words that mixes every bit into every bit. */
static inline uint64_t lbu_mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* The next number of the sequence whose counter is *state (advanced by the golden gamma). */
static inline uint64_t lbu_splitmix64(uint64_t *state)
{
	return lbu_mix64(*state += 0x9e3779b97f4a7c15ull);
}

#endif
