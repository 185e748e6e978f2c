/* An in-process cache bank: layerbankd's arena, store and request validation serving one
 * client of the same process on the client's own thread. The fleet benchmark's `private` mode
 * (each worker with a bank of its own) runs the very code layerbankd runs, without the
 * daemon's sharing; the ring fuzzer drives the daemon's serving through it. */
#ifndef LAYERBANK_INPROC_INPROC_H
#define LAYERBANK_INPROC_INPROC_H

#include <stddef.h>
#include <stdint.h>

#include "layerbank/layerbank.h"

struct lbip_bank;
struct lbd_store;
struct lbd_store_cfg;
struct lbp_stats_reply;
struct lbp_model_stats_reply;

/*
 * A bank whose entries may use budget bytes (4 KiB pages, not bound to a node), and its one
 * client. cfg: eviction and thresholds (its budget is ignored: budget rules); NULL takes
 * layerbankd's defaults (policy, TTL, half-life, drift limit, tau), as `layerbankd` with no
 * options would. The bank's start-up lines are the daemon's: only warnings and errors reach
 * stderr. err receives one line on failure.
 * @return the bank; NULL with errno EINVAL (budget 0 or above 1 TiB), ENOMEM, or the kernel's.
 */
struct lbip_bank *lbip_bank_new(uint64_t budget, const struct lbd_store_cfg *cfg, char *err,
				size_t errlen);

/* The bank's client, for every lb_* data-plane call and lb_lem_run. Owned by the bank; used by
 * one thread at a time, as any lb_client. */
struct lb_client *lbip_bank_client(struct lbip_bank *b);

/* lb_register_model for the bank. @return 0 with *model_id; -EINVAL (bad description),
 * -EEXIST (the name is registered with other weights or shape), -ENOSPC, -ENOMEM. */
int lbip_bank_register(struct lbip_bank *b, const struct lb_model_desc *d, uint32_t *model_id);

/* Hits, misses, inserts and evictions so far. */
void lbip_bank_stats(struct lbip_bank *b, struct lbp_stats_reply *out);

/* Per-layer counters of one model from first_layer, as MODEL_STATS answers them.
 * @return 0, -ENOENT (no model with that id). */
int lbip_bank_model_stats(struct lbip_bank *b, uint32_t model_id, uint32_t first_layer,
			  struct lbp_model_stats_reply *out);

/*
 * End every lease and drop every entry (lbd_store_clear): the bank answers as lbip_bank_new's
 * did, counters at zero, its models still registered under the same ids. The rings keep their
 * positions and staging its bytes. For a caller that runs many independent sessions on one
 * bank (the ring fuzzer), where a new bank each time would cost a new arena, region and store.
 * @return 0; -EBUSY when an insert is being copied (never, from the bank's own thread).
 */
int lbip_bank_clear(struct lbip_bank *b);

/* The bank's store, for tests and fuzzers that check its invariants (lbd_store_check). */
struct lbd_store *lbip_bank_store(struct lbip_bank *b);

/* Free the bank and its client (leases end with it). Safe on NULL. */
void lbip_bank_free(struct lbip_bank *b);

#endif
