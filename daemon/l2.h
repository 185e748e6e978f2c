/* The second tier's thread: a bounded write-behind queue of records to SET (and inputs to add
 * to the band sets of the fingerprint index), and reads (GET, MGET, SMEMBERS) whose records are
 * checked (l2_record.h) before a callback gets them, all against a Redis Cluster
 * (l2_cluster.h). Nothing here waits on the network but the tier's own thread: a full queue
 * drops (counted), a node down fails its jobs (counted) and is tried again on the next ones. */
#ifndef LBD_L2_H
#define LBD_L2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "l2_record.h"

struct lbd_l2_cfg {
	const char *seeds;      /* "redis-cluster://host:port[,host:port...]" */
	uint32_t timeout_ms;    /* a node's answer, at most (0: 200) */
	uint64_t queue_bytes;   /* records waiting to be written, at most (0: 64 MiB) */
	uint32_t max_fetches;   /* reads waiting, at most (0: 1024) */
};

struct lbd_l2_stats {
	bool up;                 /* the last command (at first: reading the slot map) reached
				  * its node */
	uint64_t queue_bytes, queue_records, fetches_waiting;
	uint64_t written;        /* records SET, and inputs added to their band sets */
	uint64_t dropped;        /* records not queued: the queue was full */
	uint64_t write_errors;   /* records whose SET failed (a node down, an error reply) */
	uint64_t fetched;        /* records read and believed */
	uint64_t fetch_misses;   /* keys the cluster did not hold */
	uint64_t rejected;       /* records read and refused (lbd_l2_decode, or the callback) */
	uint64_t fetch_errors;   /* reads that failed, or were not queued */
};

/* What a read hands its callback, in the tier's thread: the record (valid during the call),
 * or NULL when the key was missing, unreadable or refused; last: the read's last call.
 * @return whether it took the record: one it did not (the store refused it) counts as
 * rejected, not fetched. */
typedef bool (*lbd_l2_fetch_fn)(void *ctx, const struct lbd_l2_record *rec, bool last);

/* A read's near terms: when the cluster lacks the key, the nearest input within max_d bits of
 * fp in the band sets (l2_record.h), of seq_len positions unless any_len, is read instead
 * (its record, of the layer asked). */
struct lbd_l2_near {
	uint64_t fp[4];
	uint32_t max_d, seq_len;
	bool any_len;
};

struct lbd_l2;

/* Start the tier's thread for cfg. @return it; NULL with err (a bad seed list, no memory). */
struct lbd_l2 *lbd_l2_start(const struct lbd_l2_cfg *cfg, char *err, size_t errlen);
/* Stop it: what is still queued is dropped (counted), waiting reads get NULL. NULL is fine. */
void lbd_l2_stop(struct lbd_l2 *t);

/* Queue record (len bytes, malloc'd: the tier owns it from now) under key for writing.
 * @return true; false when the queue is full (the record freed, counted as dropped). */
bool lbd_l2_put(struct lbd_l2 *t, const char *key, uint8_t *record, size_t len);

/* Queue the input m (of model) into its bands' sets, as a write. @return as lbd_l2_put. */
bool lbd_l2_index(struct lbd_l2 *t, uint64_t model, const struct lbd_l2_member *m);

/* Queue a read of key, checked against want, ahead of everything else (a lookup may be
 * waiting); with near (NULL: exact only), the nearest input's record when key is missing.
 * fn(ctx, record or NULL, true) runs once in the tier's thread.
 * @return true; false when too many reads wait (fn is not called, counted). */
bool lbd_l2_fetch(struct lbd_l2 *t, const char *key, const struct lbd_l2_want *want,
		  const struct lbd_l2_near *near, lbd_l2_fetch_fn fn, void *ctx);
/* Queue a read of layers 0..n-1 of input exact, behind the reads of lbd_l2_fetch (which go
 * ahead of it between its layers) and ahead of the writes: fn once per layer, in order, the last
 * with last set. @return as lbd_l2_fetch. */
bool lbd_l2_fetch_layers(struct lbd_l2 *t, uint64_t model, const uint64_t exact[2], uint32_t n,
			 lbd_l2_fetch_fn fn, void *ctx);

void lbd_l2_stats(struct lbd_l2 *t, struct lbd_l2_stats *out);
/* Queue a read of a prefix's blocks keys[0..n) (copied), in order, beside the reads of other
 * layers: fn once per block, the last call with last set; it stops at the first block the
 * cluster lacks, or fn refuses. @return as lbd_l2_fetch. */
bool lbd_l2_fetch_blocks(struct lbd_l2 *t, uint64_t model, const uint64_t (*keys)[2], uint32_t n,
			 lbd_l2_fetch_fn fn, void *ctx);

/* A node's answer, at most (cfg.timeout_ms or its default). */
uint32_t lbd_l2_timeout_ms(const struct lbd_l2 *t);

struct lbd_store;
/* Wire t to st (l2_store.c): what st inserts is written behind, a lookup st misses asks t for
 * the input's deepest layer (once, under a claim: store.h, struct lbd_store_tier), whose record
 * is inserted into st when it checks. One tier a process. @return 0. */
int lbd_l2_attach(struct lbd_l2 *t, struct lbd_store *st);

/* Wait until nothing is queued or in flight (tests, and a clean stop). @return true when it
 * got there within timeout_ms. */
bool lbd_l2_drain(struct lbd_l2 *t, uint32_t timeout_ms);

#endif
