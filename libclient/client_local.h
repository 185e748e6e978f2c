/* What liblayerbank offers an in-process bank (inproc/) beyond its public API: a client over
 * arenas and a region the caller made as a daemon would, whose requests the caller serves on
 * the submitting thread. Not exported from the shared library: a bank links the daemon's code
 * and uses liblayerbank.a. Every other header of this directory is private to it. */
#ifndef LAYERBANK_LIBCLIENT_CLIENT_LOCAL_H
#define LAYERBANK_LIBCLIENT_CLIENT_LOCAL_H

#include "layerbank/layerbank.h"
#include "lbp.h"

/*
 * A client of an in-process bank: the caller made the arenas and the region as a daemon would
 * and describes them in w; fds (n = w->n_arenas + 1: the arenas, then the region) are owned by
 * the client from here on, even on failure. Every request is served by pump(ctx) inside the
 * call that submits it. lb_close frees the client.
 * @return 0 with *out set; as lb_connect after WELCOME (-EPROTO, -ENOMEM, -errno of mmap).
 */
int lbi_client_local(const struct lbp_welcome *w, const int *fds, unsigned n, void (*pump)(void *),
		     void *ctx, struct lb_client **out);

/* The model r, registered by whoever serves c as id, is c's: c's calls check their answers
 * against r (prefix blocks' geometry) and a reconnect registers it again. *model_id: the id
 * the application uses (id, unless another model of c has it). @return 0, -ENOMEM. */
int lbi_client_model(struct lb_client *c, const struct lbp_register_model *r, uint32_t id,
		     uint32_t *model_id);

#endif
