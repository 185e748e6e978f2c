/*
 * The prefix blocks a bank would hold if it never evicted nor failed: a set of chained block
 * keys (lb_block_keys), for layerbank-bench prefix to say what a run could have reused.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "layerbank/layerbank.h"

struct lbb_blockset {
	uint64_t (*key)[2]; /* [cap] open addressing, linear probing */
	uint8_t *used;      /* [cap] */
	size_t cap, n;      /* cap a power of two, n < cap / 2 */
};

struct lbb_blockset *lbb_blockset_new(void)
{
	return calloc(1, sizeof(struct lbb_blockset));
}

void lbb_blockset_free(struct lbb_blockset *s)
{
	if (!s)
		return;
	free(s->key);
	free(s->used);
	free(s);
}

/* The slot of key k: where it is, or the empty slot where it would go. */
static size_t slot(const struct lbb_blockset *s, const uint64_t k[2])
{
	size_t i = (size_t)k[0] & (s->cap - 1);
	while (s->used[i] && (s->key[i][0] != k[0] || s->key[i][1] != k[1]))
		i = (i + 1) & (s->cap - 1);
	return i;
}

static int grow(struct lbb_blockset *s)
{
	struct lbb_blockset g = { .cap = s->cap ? 2 * s->cap : 1024 };
	g.key = malloc(g.cap * sizeof(*g.key));
	g.used = calloc(g.cap, 1);
	if (!g.key || !g.used) {
		free(g.key);
		free(g.used);
		return -ENOMEM;
	}
	for (size_t i = 0; i < s->cap; i++)
		if (s->used[i]) {
			size_t j = slot(&g, s->key[i]);
			memcpy(g.key[j], s->key[i], sizeof(g.key[j]));
			g.used[j] = 1;
			g.n++;
		}
	free(s->key);
	free(s->used);
	*s = g;
	return 0;
}

/* The keys of the full blocks of tokens[0..n), malloc'd, count in *nb; NULL when none. */
static uint64_t (*chain(const int32_t *tokens, uint32_t n, uint32_t *nb))[2]
{
	*nb = n / LBB_BLOCK_TOKENS;
	uint64_t (*keys)[2] = *nb ? malloc(*nb * sizeof(*keys)) : NULL;
	if (keys)
		lb_block_keys(tokens, n, LBB_BLOCK_TOKENS, keys, *nb);
	else
		*nb = 0;
	return keys;
}

int lbb_blockset_add(struct lbb_blockset *s, const int32_t *tokens, uint32_t n)
{
	uint32_t nb;
	uint64_t (*keys)[2] = chain(tokens, n, &nb);
	if (!keys && n >= LBB_BLOCK_TOKENS)
		return -ENOMEM;
	for (uint32_t b = 0; b < nb; b++) {
		if (2 * (s->n + 1) > s->cap && grow(s) < 0) {
			free(keys);
			return -ENOMEM;
		}
		size_t i = slot(s, keys[b]);
		if (!s->used[i]) {
			memcpy(s->key[i], keys[b], sizeof(s->key[i]));
			s->used[i] = 1;
			s->n++;
		}
	}
	free(keys);
	return 0;
}

uint32_t lbb_blockset_reusable(const struct lbb_blockset *s, const int32_t *tokens, uint32_t n)
{
	uint32_t nb, run = 0;
	uint64_t (*keys)[2] = s->cap ? chain(tokens, n, &nb) : NULL;
	while (keys && run < nb && s->used[slot(s, keys[run])])
		run++;
	free(keys);
	uint32_t t = run * LBB_BLOCK_TOKENS;
	return n && t > n - 1 ? n - 1 : t;
}
