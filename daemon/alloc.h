/* layerbankd arena allocator: TLSF (two-level segregated fit) over an arena's data area.
 * O(1) alloc and free; offsets only, so the same code serves any mapping. */
#ifndef LAYERBANK_DAEMON_ALLOC_H
#define LAYERBANK_DAEMON_ALLOC_H

#include <stddef.h>
#include <stdint.h>

#define LBD_ALLOC_ALIGN 64u /* every block starts cache-line aligned */

struct lbd_alloc; /* opaque; owned by whoever holds the arena's lock */

struct lbd_alloc_stats {
	uint64_t bytes_total;   /* managed bytes */
	uint64_t bytes_used;    /* in live allocations, including per-block overhead */
	uint64_t bytes_free;
	uint64_t largest_free;  /* the largest request that would succeed now */
	uint64_t allocs;        /* live allocations */
	uint64_t free_blocks;
	double fragmentation;   /* 1 - largest_free / bytes_free; 0 when nothing is free */
};

/*
 * Manage [off, off + bytes) of the memory at base (the daemon's writable mapping; base is only
 * needed if the implementation keeps block headers in-band). off and bytes are multiples of
 * LBD_ALLOC_ALIGN. @return the allocator, or NULL with errno (EINVAL, ENOMEM).
 */
struct lbd_alloc *lbd_alloc_new(void *base, uint64_t off, uint64_t bytes);
void lbd_alloc_free_all(struct lbd_alloc *a);

/* Reserve bytes (> 0). @return 0 and *off (LBD_ALLOC_ALIGN-aligned, usable for `bytes`);
 * -ENOMEM when no free block fits; -EINVAL for 0 or absurd sizes. */
int lbd_alloc_get(struct lbd_alloc *a, uint64_t bytes, uint64_t *off);

/* Give back an offset from lbd_alloc_get. @return 0, -EINVAL when off is not a live block
 * (double free, wild offset): checked, never trusted. */
int lbd_alloc_put(struct lbd_alloc *a, uint64_t off);

void lbd_alloc_stats(const struct lbd_alloc *a, struct lbd_alloc_stats *out);

#endif
