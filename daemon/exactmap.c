/* layerbankd exact map: Robin Hood linear probing on 128-bit keys, homed by key[0]'s low bits,
 * backward-shift deletion (no tombstones), doubling past 70% load. */
#include "exactmap.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>

#define MIN_CELLS 16u
#define MAX_CELLS (1u << 31)

struct cell {
	uint64_t key[2];
	uint32_t id;
	uint32_t dist; /* 1 + displacement from the home cell; 0: empty */
};

struct lbd_exactmap {
	struct cell *cells; /* [mask + 1] */
	uint32_t mask;
	uint32_t count;
	uint32_t grow_at; /* 70% of the cells: the count that makes the next insert double them */
};

static inline bool key_eq(const uint64_t a[2], const uint64_t b[2])
{
	return a[0] == b[0] && a[1] == b[1];
}

/* Keys are already uniform hashes (of the tokens), so their low bits are the home. */
static inline uint32_t home(const struct lbd_exactmap *m, const uint64_t key[2])
{
	return (uint32_t)key[0] & m->mask;
}

static int alloc_cells(struct lbd_exactmap *m, uint32_t ncells)
{
	struct cell *c = calloc(ncells, sizeof(*c));
	if (!c)
		return -ENOMEM;
	m->cells = c;
	m->mask = ncells - 1;
	m->grow_at = (uint32_t)((uint64_t)ncells * 7 / 10);
	return 0;
}

/* Place a key known to be absent. The map always has an empty cell (count < 70%). */
static void place(struct lbd_exactmap *m, struct cell in)
{
	uint32_t p = home(m, in.key);
	in.dist = 1;
	for (;;) {
		struct cell *c = &m->cells[p];
		if (!c->dist) {
			*c = in;
			return;
		}
		if (c->dist < in.dist) { /* c's home is after ours: we take its cell, it moves on */
			struct cell t = *c;
			*c = in;
			in = t;
		}
		in.dist++;
		p = (p + 1) & m->mask;
	}
}

static int grow(struct lbd_exactmap *m)
{
	struct cell *old = m->cells;
	uint32_t n = m->mask + 1;
	int rc;
	if (n >= MAX_CELLS)
		return -ENOMEM;
	rc = alloc_cells(m, n * 2);
	if (rc < 0)
		return rc;
	for (uint32_t i = 0; i < n; i++)
		if (old[i].dist)
			place(m, old[i]);
	free(old);
	return 0;
}

struct lbd_exactmap *lbd_exactmap_new(uint32_t capacity_hint)
{
	struct lbd_exactmap *m = calloc(1, sizeof(*m));
	uint32_t n = MIN_CELLS;
	if (!m)
		return NULL;
	/* Cells for capacity_hint keys under 70% load, as a power of two. */
	while (n < MAX_CELLS && (uint64_t)n * 7 / 10 < capacity_hint)
		n *= 2;
	if (alloc_cells(m, n) < 0) {
		free(m);
		errno = ENOMEM;
		return NULL;
	}
	return m;
}

void lbd_exactmap_free(struct lbd_exactmap *m)
{
	if (!m)
		return;
	free(m->cells);
	free(m);
}

uint32_t lbd_exactmap_count(const struct lbd_exactmap *m)
{
	return m->count;
}

/* Cell index of key, or -1. */
static int64_t lookup(const struct lbd_exactmap *m, const uint64_t key[2])
{
	uint32_t p = home(m, key);
	/* Robin Hood order: once a cell is nearer its home than we are to ours, key is absent. */
	for (uint32_t dist = 1;; dist++) {
		const struct cell *c = &m->cells[p];
		if (c->dist < dist) /* also stops at an empty cell */
			return -1;
		if (c->dist == dist && key_eq(c->key, key))
			return p;
		p = (p + 1) & m->mask;
	}
}

int lbd_exactmap_insert(struct lbd_exactmap *m, const uint64_t key[2], uint32_t id)
{
	struct cell in;
	if (lookup(m, key) >= 0)
		return -EEXIST;
	if (m->count >= m->grow_at) {
		int rc = grow(m);
		if (rc < 0)
			return rc;
	}
	in.key[0] = key[0];
	in.key[1] = key[1];
	in.id = id;
	place(m, in);
	m->count++;
	return 0;
}

int lbd_exactmap_find(const struct lbd_exactmap *m, const uint64_t key[2], uint32_t *id)
{
	int64_t p = lookup(m, key);
	if (p < 0)
		return -ENOENT;
	*id = m->cells[p].id;
	return 0;
}

int lbd_exactmap_remove(struct lbd_exactmap *m, const uint64_t key[2])
{
	int64_t found = lookup(m, key);
	uint32_t p, q;
	if (found < 0)
		return -ENOENT;
	/* Backward shift: pull each displaced follower one cell nearer its home. */
	for (p = (uint32_t)found;; p = q) {
		q = (p + 1) & m->mask;
		if (m->cells[q].dist <= 1) /* empty, or already at home */
			break;
		m->cells[p] = m->cells[q];
		m->cells[p].dist--;
	}
	m->cells[p].dist = 0;
	m->count--;
	return 0;
}
