/* An in-process cache bank: the daemon's arena, store and request validation serving one client
 * of the same process on its own thread. The fleet benchmark's `private` mode (each worker with a
 * bank of its own) runs the very code `layerbankd` runs, without the daemon's sharing. */
#ifndef LAYERBANK_DAEMON_LOCAL_H
#define LAYERBANK_DAEMON_LOCAL_H

#include <stddef.h>
#include <stdint.h>

#include "layerbank/layerbank.h"
#include "store.h"

struct lbd_local;

/*
 * A bank whose entries may use budget bytes (4 KiB pages, not bound to a node), eviction and
 * thresholds as cfg says (cfg->budget is ignored: budget rules), and its one client.
 * err receives one line on failure.
 * @return the bank; NULL with errno EINVAL (budget 0 or above 1 TiB), ENOMEM, or the kernel's.
 */
struct lbd_local *lbd_local_new(uint64_t budget, const struct lbd_store_cfg *cfg, char *err,
				size_t errlen);

/* The bank's client, for every lb_* data-plane call and lb_lem_run. Owned by the bank; used by
 * one thread at a time, as any lb_client. */
struct lb_client *lbd_local_client(struct lbd_local *l);

/* lb_register_model for the bank. @return 0 with *model_id; -EINVAL (bad description),
 * -EEXIST (the name is registered with other weights or shape), -ENOSPC, -ENOMEM. */
int lbd_local_register(struct lbd_local *l, const struct lb_model_desc *d, uint32_t *model_id);

/* Hits, misses, inserts and evictions so far. */
void lbd_local_stats(struct lbd_local *l, struct lbp_stats_reply *out);

/* Per-layer counters of one model from first_layer, as MODEL_STATS answers them.
 * @return 0, -ENOENT (no model with that id). */
int lbd_local_model_stats(struct lbd_local *l, uint32_t model_id, uint32_t first_layer,
			  struct lbp_model_stats_reply *out);

/*
 * End every lease and drop every entry (lbd_store_clear): the bank answers as lbd_local_new's
 * did, counters at zero, its models still registered under the same ids. The rings keep their
 * positions and staging its bytes. For a caller that runs many independent sessions on one
 * bank (the ring fuzzer), where a new bank each time would cost a new arena, region and store.
 * @return 0; -EBUSY when an insert is being copied (never, from the bank's own thread).
 */
int lbd_local_clear(struct lbd_local *l);

/* Free the bank and its client (leases end with it). Safe on NULL. */
void lbd_local_free(struct lbd_local *l);

#endif
