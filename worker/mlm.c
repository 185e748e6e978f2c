/* Masked-token scoring: the positions an input is masked at. */
#include "mlm.h"

#include <errno.h>
#include <stdlib.h>

#include "rng.h"

#define NO_TOKEN 0x1fffffull

struct keyed {
	uint64_t key;
	int32_t pos;
};

static int cmp_keyed(const void *a, const void *b)
{
	const struct keyed *x = a, *y = b;
	if (x->key != y->key)
		return x->key < y->key ? -1 : 1;
	return (x->pos > y->pos) - (x->pos < y->pos);
}

static int cmp_pos(const void *a, const void *b)
{
	int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
	return (x > y) - (x < y);
}

int32_t lbw_mlm_select(const int32_t *tokens, int32_t n, uint64_t seed, int32_t *pos)
{
	if (n < 2)
		return 0;
	int64_t m = ((int64_t)LBW_MLM_PERCENT * (n - 1) + 50) / 100;
	if (m < 1)
		m = 1;
	struct keyed *k = malloc((size_t)(n - 1) * sizeof(*k));
	if (!k)
		return -ENOMEM;
	for (int32_t p = 1; p < n; p++) {
		uint64_t a = (uint32_t)tokens[p - 1], b = (uint32_t)tokens[p];
		uint64_t c = p + 1 < n ? (uint32_t)tokens[p + 1] : NO_TOKEN;
		k[p - 1] = (struct keyed){ lbu_mix64(seed ^ (a | b << 21 | c << 42)), p };
	}
	qsort(k, (size_t)(n - 1), sizeof(*k), cmp_keyed);
	for (int64_t i = 0; i < m; i++)
		pos[i] = k[i].pos;
	free(k);
	qsort(pos, (size_t)m, sizeof(*pos), cmp_pos);
	return (int32_t)m;
}
