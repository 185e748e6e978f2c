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
	/* An in-process bank (lbi_client_local): called after each push, it serves the request
	 * ring on this thread. NULL for a daemon's client. */
	void (*pump)(void *ctx);
	void *pump_ctx;
	char last_error[LBP_MAX_ERRMSG + 64];
	uint8_t buf[LBP_MAX_FRAME + 1];
};

/* Map and check the region passed in WELCOME. @return 0, or -errno with last_error set. */
int lbi_region_map(struct lb_client *c, int fd, const struct lbp_region_desc *d);
void lbi_region_unmap(struct lb_client *c);

/* REGISTER_MODEL's body from d (the encoder then checks every range). @return 0, -EINVAL. */
int lbi_model_msg(const struct lb_model_desc *d, struct lbp_register_model *r);

/*
 * A client of an in-process bank: the caller made the arenas and the region as a daemon would
 * and describes them in w; fds (n = w->n_arenas + 1: the arenas, then the region) are owned by
 * the client from here on, even on failure. Every request is served by pump(ctx) inside the
 * call that submits it. Not exported from the shared library: the bank links the daemon's code.
 * @return 0 with *out set; as lb_connect after WELCOME (-EPROTO, -ENOMEM, -errno of mmap).
 */
int lbi_client_local(const struct lbp_welcome *w, const int *fds, unsigned n, void (*pump)(void *),
		     void *ctx, struct lb_client **out);

#endif
