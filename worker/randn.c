/* The generated models' weight generator (randn.h). */
#include "randn.h"

#include "rng.h"

void lbw_randn(float *p, int64_t n, float std, uint64_t *state)
{
	const float scale = std * 1.7320508f / 65536.0f;
	for (int64_t i = 0; i < n; i++) {
		uint64_t r = lbu_splitmix64(state);
		uint32_t sum = (uint32_t)(r & 0xffff) + (uint32_t)((r >> 16) & 0xffff) +
			       (uint32_t)((r >> 32) & 0xffff) + (uint32_t)(r >> 48);
		p[i] = ((float)sum - 2.0f * 65535.0f) * scale;
	}
}
