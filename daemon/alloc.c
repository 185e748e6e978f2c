/* layerbankd arena allocator: TLSF (Masmano et al.) over [off, off + bytes) of a data area.
 * Block records live out of band in malloc'd memory, found by offset through a hash table, so
 * the arena holds payload only and an offset from a caller is looked up, never dereferenced. */
#include "alloc.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>

/*
 * Sizes are counted in granules of LBD_ALLOC_ALIGN bytes. A block of g granules sits in class
 * (fl, sl): below SL_COUNT granules fl = 0 and sl = g, one exact size per class; above,
 * fl = floor(log2 g) - (SL_LOG2 - 1) and sl splits [2^t, 2^(t+1)) into SL_COUNT equal slices.
 */
#define GRAN_SHIFT 6
#define SL_LOG2 5
#define SL_COUNT (1u << SL_LOG2)
/* 256 TiB, the x86-64 user address space: far above any arena, and keeps FL_COUNT small. */
#define MAX_SHIFT 48
#define MAX_BYTES ((uint64_t)1 << MAX_SHIFT)
/* The largest block, 2^(MAX_SHIFT - GRAN_SHIFT) granules, maps to fl = FL_COUNT - 1. */
#define FL_COUNT (MAX_SHIFT - GRAN_SHIFT - SL_LOG2 + 2)
#define RECS_PER_CHUNK 1024u
#define HASH_MIN_BITS 10u
#define HASH_MAX_BITS 40u

_Static_assert(((uint64_t)1 << GRAN_SHIFT) == LBD_ALLOC_ALIGN, "GRAN_SHIFT is log2(LBD_ALLOC_ALIGN)");
_Static_assert(FL_COUNT <= 64, "the first-level bitmap is one uint64_t");
_Static_assert(SL_COUNT <= 32, "each second-level bitmap is one uint32_t");

/* One block, free or used; every byte of the managed range is in exactly one. */
struct blk {
	uint64_t off;                  /* absolute offset in base, LBD_ALLOC_ALIGN-aligned */
	uint64_t size;                 /* bytes, a multiple of LBD_ALLOC_ALIGN */
	struct blk *phys_prev;         /* address-order neighbours, NULL at either end */
	struct blk *phys_next;
	struct blk *next;              /* free: class list; used: hash chain; spare: spare stack */
	struct blk *prev;              /* free only: class list, NULL at the head */
	bool free;
};

struct chunk {
	struct chunk *next;
	struct blk recs[RECS_PER_CHUNK];
};

/* Not thread-safe: every call happens under the owner's arena lock (alloc.h). */
struct lbd_alloc {
	uint64_t start, bytes;         /* the managed range */
	uint64_t bytes_used, allocs, free_blocks;
	uint64_t fl_map;               /* bit fl set iff sl_map[fl] != 0 */
	uint32_t sl_map[FL_COUNT];     /* bit sl set iff heads[fl][sl] != NULL */
	struct blk *heads[FL_COUNT][SL_COUNT];
	struct blk **buckets;          /* used blocks by offset: [1 << hash_bits] chains */
	unsigned hash_bits;
	struct blk *spare;             /* unused records */
	struct chunk *chunks;          /* every record chunk, for lbd_alloc_free_all */
};

static inline unsigned log2_u64(uint64_t v)
{
	return 63u - (unsigned)__builtin_clzll(v);
}

static inline void mapping(uint64_t size, unsigned *fl, unsigned *sl)
{
	uint64_t g = size >> GRAN_SHIFT;
	if (g < SL_COUNT) {
		*fl = 0;
		*sl = (unsigned)g;
	} else {
		unsigned t = log2_u64(g);
		*sl = (unsigned)(g >> (t - SL_LOG2)) ^ SL_COUNT;
		*fl = t - (SL_LOG2 - 1);
	}
}

static void free_insert(struct lbd_alloc *a, struct blk *b)
{
	unsigned fl, sl;
	mapping(b->size, &fl, &sl);
	b->free = true;
	b->prev = NULL;
	b->next = a->heads[fl][sl];
	if (b->next)
		b->next->prev = b;
	a->heads[fl][sl] = b;
	a->sl_map[fl] |= 1u << sl;
	a->fl_map |= (uint64_t)1 << fl;
	a->free_blocks++;
}

static void free_remove(struct lbd_alloc *a, struct blk *b)
{
	unsigned fl, sl;
	mapping(b->size, &fl, &sl);
	if (b->prev)
		b->prev->next = b->next;
	else
		a->heads[fl][sl] = b->next;
	if (b->next)
		b->next->prev = b->prev;
	if (!a->heads[fl][sl]) {
		a->sl_map[fl] &= ~(1u << sl);
		if (!a->sl_map[fl])
			a->fl_map &= ~((uint64_t)1 << fl);
	}
	b->free = false;
	a->free_blocks--;
}

/* First non-empty class at or above (fl, sl), or NULL. Two find-first-set, no loop. */
static struct blk *class_search(const struct lbd_alloc *a, unsigned fl, unsigned sl)
{
	if (fl >= FL_COUNT)
		return NULL;
	uint32_t sl_bits = sl < SL_COUNT ? a->sl_map[fl] & (~0u << sl) : 0;
	if (!sl_bits) {
		uint64_t fl_bits = fl + 1 < FL_COUNT ? a->fl_map & (~(uint64_t)0 << (fl + 1)) : 0;
		if (!fl_bits)
			return NULL;
		fl = (unsigned)__builtin_ctzll(fl_bits);
		sl_bits = a->sl_map[fl];
	}
	return a->heads[fl][__builtin_ctz(sl_bits)];
}

/*
 * A free block of at least size bytes, or NULL when none exists. Good fit: round size up to the
 * next class boundary so that any block of the class found fits, in O(1). When that finds
 * nothing, a block of size's own class may still fit (it can hold sizes on both sides of the
 * request): scan that one list, so that every request up to largest_free succeeds, as the
 * stats promise. The scan only runs when nothing larger is free, i.e. close to -ENOMEM.
 */
static struct blk *find_fit(const struct lbd_alloc *a, uint64_t size)
{
	unsigned fl, sl;
	uint64_t g = size >> GRAN_SHIFT, rounded = size;
	if (g >= SL_COUNT)
		rounded += ((uint64_t)1 << (log2_u64(g) - SL_LOG2 + GRAN_SHIFT)) - 1;
	mapping(rounded, &fl, &sl);
	struct blk *b = class_search(a, fl, sl);
	if (b || rounded == size)
		return b;
	mapping(size, &fl, &sl);
	for (b = a->heads[fl][sl]; b; b = b->next)
		if (b->size >= size)
			return b;
	return NULL;
}

static int spare_refill(struct lbd_alloc *a)
{
	struct chunk *c = malloc(sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->next = a->chunks;
	a->chunks = c;
	for (unsigned i = 0; i < RECS_PER_CHUNK; i++) {
		c->recs[i].next = a->spare;
		a->spare = &c->recs[i];
	}
	return 0;
}

static inline size_t hash_slot(uint64_t off, unsigned bits)
{
	/* Fibonacci hashing: offsets are granule multiples, the multiply spreads them. */
	return (size_t)(((off >> GRAN_SHIFT) * UINT64_C(0x9E3779B97F4A7C15)) >> (64 - bits));
}

/* Double the table. On malloc failure the old table stays: longer chains, still correct. */
static void hash_grow(struct lbd_alloc *a)
{
	unsigned bits = a->hash_bits + 1;
	struct blk **nb = calloc((size_t)1 << bits, sizeof(*nb));
	if (!nb)
		return;
	for (size_t i = 0; i < (size_t)1 << a->hash_bits; i++) {
		struct blk *b = a->buckets[i], *next;
		for (; b; b = next) {
			size_t s = hash_slot(b->off, bits);
			next = b->next;
			b->next = nb[s];
			nb[s] = b;
		}
	}
	free(a->buckets);
	a->buckets = nb;
	a->hash_bits = bits;
}

struct lbd_alloc *lbd_alloc_new(void *base, uint64_t off, uint64_t bytes)
{
	struct lbd_alloc *a;
	(void)base; /* records are out of band: the arena itself is never touched */
	if (!bytes || bytes > MAX_BYTES || off % LBD_ALLOC_ALIGN || bytes % LBD_ALLOC_ALIGN ||
	    off > UINT64_MAX - bytes) {
		errno = EINVAL;
		return NULL;
	}
	a = calloc(1, sizeof(*a));
	if (!a)
		goto nomem;
	a->start = off;
	a->bytes = bytes;
	a->hash_bits = HASH_MIN_BITS;
	a->buckets = calloc((size_t)1 << a->hash_bits, sizeof(*a->buckets));
	if (!a->buckets || spare_refill(a) < 0)
		goto nomem;
	struct blk *b = a->spare;
	a->spare = b->next;
	*b = (struct blk){ .off = off, .size = bytes };
	free_insert(a, b);
	return a;
nomem:
	lbd_alloc_free_all(a);
	errno = ENOMEM;
	return NULL;
}

void lbd_alloc_free_all(struct lbd_alloc *a)
{
	if (!a)
		return;
	while (a->chunks) {
		struct chunk *c = a->chunks;
		a->chunks = c->next;
		free(c);
	}
	free(a->buckets);
	free(a);
}

int lbd_alloc_get(struct lbd_alloc *a, uint64_t bytes, uint64_t *off)
{
	if (!a || !off || !bytes || bytes > a->bytes)
		return -EINVAL;
	uint64_t size = (bytes + LBD_ALLOC_ALIGN - 1) & ~(uint64_t)(LBD_ALLOC_ALIGN - 1);
	/* Take the split's record up front so nothing fails once the lists are touched. */
	if (!a->spare && spare_refill(a) < 0)
		return -ENOMEM;
	struct blk *b = find_fit(a, size);
	if (!b)
		return -ENOMEM;
	free_remove(a, b);
	/* Records are out of band, so the minimum block is one granule: split any remainder. */
	if (b->size > size) {
		struct blk *r = a->spare;
		a->spare = r->next;
		*r = (struct blk){ .off = b->off + size, .size = b->size - size,
				   .phys_prev = b, .phys_next = b->phys_next };
		if (r->phys_next)
			r->phys_next->phys_prev = r;
		b->phys_next = r;
		b->size = size;
		free_insert(a, r);
	}
	if (a->allocs >= (uint64_t)1 << a->hash_bits && a->hash_bits < HASH_MAX_BITS)
		hash_grow(a);
	size_t s = hash_slot(b->off, a->hash_bits);
	b->next = a->buckets[s];
	a->buckets[s] = b;
	a->allocs++;
	a->bytes_used += b->size;
	*off = b->off;
	return 0;
}

int lbd_alloc_put(struct lbd_alloc *a, uint64_t off)
{
	if (!a || off % LBD_ALLOC_ALIGN || off < a->start || off - a->start >= a->bytes)
		return -EINVAL;
	/* Only used blocks are in the table: a free, merged-away or interior offset is absent. */
	struct blk **pp = &a->buckets[hash_slot(off, a->hash_bits)];
	while (*pp && (*pp)->off != off)
		pp = &(*pp)->next;
	struct blk *b = *pp;
	if (!b)
		return -EINVAL;
	*pp = b->next;
	a->allocs--;
	a->bytes_used -= b->size;

	struct blk *n = b->phys_next, *p = b->phys_prev;
	if (n && n->free) {
		free_remove(a, n);
		b->size += n->size;
		b->phys_next = n->phys_next;
		if (b->phys_next)
			b->phys_next->phys_prev = b;
		n->next = a->spare;
		a->spare = n;
	}
	if (p && p->free) {
		free_remove(a, p);
		p->size += b->size;
		p->phys_next = b->phys_next;
		if (p->phys_next)
			p->phys_next->phys_prev = p;
		b->next = a->spare;
		a->spare = b;
		b = p;
	}
	free_insert(a, b);
	return 0;
}

void lbd_alloc_stats(const struct lbd_alloc *a, struct lbd_alloc_stats *out)
{
	uint64_t largest = 0;
	if (a->fl_map) {
		/* The largest block is in the highest non-empty class; only that list is scanned. */
		unsigned fl = log2_u64(a->fl_map);
		unsigned sl = 31u - (unsigned)__builtin_clz(a->sl_map[fl]);
		for (const struct blk *b = a->heads[fl][sl]; b; b = b->next)
			if (b->size > largest)
				largest = b->size;
	}
	*out = (struct lbd_alloc_stats){
		.bytes_total = a->bytes,
		.bytes_used = a->bytes_used,
		.bytes_free = a->bytes - a->bytes_used,
		.largest_free = largest,
		.allocs = a->allocs,
		.free_blocks = a->free_blocks,
	};
	if (out->bytes_free)
		out->fragmentation = 1.0 - (double)largest / (double)out->bytes_free;
}
