/* liblayerbank internals shared by its files: the client struct and its helpers. */
#ifndef LAYERBANK_LIBCLIENT_INTERNAL_H
#define LAYERBANK_LIBCLIENT_INTERNAL_H

#include <stdint.h>

#include "layerbank/layerbank.h"
#include "layerbank/ring.h"
#include "lbp.h"

#define LB_EXPORT __attribute__((visibility("default")))

struct lb_arena_map {
	int fd;
	const void *base; /* PROT_READ, MAP_SHARED: the daemon seals the memfd against writes */
	size_t bytes;
};

/* Owned by one thread at a time (see layerbank.h). */
struct lb_client {
	int fd;
	uint64_t client_id;
	uint8_t boot_id[16];
	unsigned n_arenas;
	struct lb_arena_map arenas[LBP_MAX_ARENAS];
	/* The region: rings and staging, mapped read-write by us and the daemon. */
	int region_fd;
	uint8_t *region;
	uint64_t region_bytes;
	struct lb_region_hdr layout; /* computed here, never read back from the region */
	struct lb_ring_view req;     /* we produce */
	struct lb_ring_view cpl;     /* we consume */
	uint8_t *staging;
	uint64_t stage_used;         /* bump allocator, reset when nothing is in flight */
	uint64_t reserved_off;       /* lb_insert_reserve: the payload's offset, or UINT64_MAX */
	uint64_t reserved_bytes;
	uint32_t inflight;           /* requests pushed and not yet completed */
	uint64_t spin_ns;
	char last_error[LBP_MAX_ERRMSG + 64];
	uint8_t buf[LBP_MAX_FRAME + 1];
};

/* Map and check the region passed in WELCOME. @return 0, or -errno with last_error set. */
int lbi_region_map(struct lb_client *c, int fd, const struct lbp_region_desc *d);
void lbi_region_unmap(struct lb_client *c);

#endif
