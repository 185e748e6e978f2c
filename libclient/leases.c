/* liblayerbank: the set of leases a client holds (linear probing, backward-shift deletion,
 * so a long-lived client's set never fills with tombstones). */
#include <errno.h>
#include <stdlib.h>

#include "client_internal.h"

#define MIN_CAP 64u

static uint32_t home(const struct lbi_leases *s, uint64_t lease)
{
	/* Fibonacci hashing: leases are handles, often close together. */
	return (uint32_t)((lease * 0x9e3779b97f4a7c15ull) >> 32) & (s->cap - 1);
}

static void put(struct lbi_leases *s, uint64_t lease)
{
	uint32_t p = home(s, lease);
	while (s->slot[p])
		p = (p + 1) & (s->cap - 1);
	s->slot[p] = lease;
	s->n++;
}

int lbi_leases_add(struct lbi_leases *s, uint64_t lease)
{
	if ((s->n + 1) * 2 > s->cap) { /* at most half full: probes stay short */
		struct lbi_leases g = { NULL, s->cap ? s->cap * 2 : MIN_CAP, 0 };
		g.slot = calloc(g.cap, sizeof(*g.slot));
		if (!g.slot)
			return -ENOMEM;
		for (uint32_t i = 0; i < s->cap; i++)
			if (s->slot[i])
				put(&g, s->slot[i]);
		free(s->slot);
		*s = g;
	}
	put(s, lease);
	return 0;
}

bool lbi_leases_take(struct lbi_leases *s, uint64_t lease)
{
	uint32_t p, mask = s->cap - 1;
	if (!s->n || !lease)
		return false;
	for (p = home(s, lease); s->slot[p] != lease; p = (p + 1) & mask)
		if (!s->slot[p])
			return false;
	/* Pull back the entries after the hole that may not stay past it. */
	for (uint32_t q = (p + 1) & mask; s->slot[q]; q = (q + 1) & mask) {
		uint32_t h = home(s, s->slot[q]);
		if (((q - h) & mask) >= ((q - p) & mask)) {
			s->slot[p] = s->slot[q];
			p = q;
		}
	}
	s->slot[p] = 0;
	s->n--;
	return true;
}

void lbi_leases_free(struct lbi_leases *s)
{
	free(s->slot);
	*s = (struct lbi_leases){ NULL, 0, 0 };
}
