/* layerbankd store: the LLMCache banks. Per model, inputs indexed by exact token hash and by
 * SimHash; per input, one entry per cached layer, held in the arenas; leases, eviction and
 * counters. One mutex guards it all: lookups are short, and the long part of an insert (the
 * copy into the arena) runs outside it. */
#ifndef LAYERBANK_DAEMON_STORE_H
#define LAYERBANK_DAEMON_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include "adapt.h"
#include "arena.h"
#include "layerbank/ring.h"
#include "lbp.h"

enum lbd_policy { LBD_POLICY_LRU = 0, LBD_POLICY_DECAY = 1, LBD_POLICY_TTL = 2 };

struct lbd_store_cfg {
	uint64_t budget;          /* bytes entries may use; 0: all of the arenas' data areas */
	enum lbd_policy policy;
	uint64_t ttl_ns;          /* TTL policy: entries older than this expire */
	uint64_t half_life_ns;    /* decay policy: a hit's weight halves in this time */
	double drift_max;         /* a REPORT above this invalidates the entry */
	double tau;               /* similarity threshold when a lookup brings none */
	double drift_target;      /* > 0: REPORTs steer each layer's threshold so that the mean
				   * drift of its approximate reuses settles here (adapt.h), for
				   * layers without a threshold of their own; 0: tau */
};

/* A client's leases. Owned by the service thread serving the client; every call that takes
 * one holds the store lock. A lease holds one entry, or the blocks of a prefix hit, or a
 * single-flight claim (the claim ends with it: RELEASE, or the client's end). */
struct lbd_lease {
	uint32_t entry;    /* entry slot (a prefix hit's first block); a claim's slot */
	uint32_t gen;      /* bumped each time the slot is reused: stale handles are refused */
	uint32_t next;     /* free list */
	uint32_t n_more;   /* a prefix hit's other blocks */
	uint32_t *more;    /* [n_more], malloc'd; NULL when none */
	uint16_t hamming;  /* a layer hit's fingerprint distance (approx included): what its
			    * REPORT tells the layer's threshold controller */
	uint8_t used;
	uint8_t claim;     /* entry is a claim, not an entry */
};

struct lbd_leases {
	struct lbd_lease *slot;
	uint32_t cap, n_used, free_head;
	uint32_t n_claims; /* of n_used, the claims */
	uint64_t claims_until; /* the latest bound of those claims; 0 when there is none */
};

#define LBD_MAX_LEASES 4096u /* per client, claims included; a hit beyond it is -EBUSY */

struct lbd_store;

/* @return NULL with errno. The arenas stay owned by the caller and must outlive the store. */
/*
 * A second tier's hooks (the daemon's l2_store.c, wired by its main): put_layer and put_block
 * after an insert made its entry live, miss after a lookup found nothing. They run in the
 * caller's thread after the store's lock is let go, with a copy of the model's registration, and
 * must not wait: they hand work to the tier's own thread. Inserts of account 0 (the daemon's
 * own: what the tier fetched, a snapshot) are not put back.
 *
 * A miss is asked of the tier once per input at a time: the store claims the input for the tier
 * (single-flight, PROTOCOL.md Ring protocol 15) for at most claim_us, so that lookups which may
 * wait are held until the fetch ends, as for a client computing it, and other misses of the
 * input do not fetch it again. The hook gets the layer to read, the lookup's fingerprint radius
 * (max_d: a near input's entry may serve it, as in the bank) and the claim, and the tier ends it
 * with lbd_store_tier_done once what it fetched (if anything) is inserted; a hook that cannot
 * queue the fetch ends it at once.
 */
struct lbd_store_tier {
	void *ctx;
	uint32_t claim_us; /* a fetch's claim on its input, at most: 1..LB_SFLIGHT_MAX_US */
	void (*put_layer)(void *ctx, const struct lbp_register_model *d, const struct lb_req *r,
			  const struct lb_insert_hdr *h, const uint8_t *data, const int32_t *tokens);
	void (*put_block)(void *ctx, const struct lbp_register_model *d, const struct lb_req *r,
			  const struct lb_block_hdr *h, const uint8_t *data);
	void (*miss)(void *ctx, const struct lbp_register_model *d, const struct lb_req *r,
		     const struct lb_query *q, uint32_t layer, uint32_t max_d, uint64_t claim);
	/* A LOOKUP_PREFIX found blocks [0, from) of keys[0..n) (from < n): the tier may bring the
	 * next ones, in order, under a claim on keys[from] (ended as a miss's). Never waited for:
	 * what it brings serves the next lookup. */
	void (*miss_blocks)(void *ctx, const struct lbp_register_model *d, const struct lb_req *r,
			    const uint64_t (*keys)[2], uint32_t from, uint32_t n, uint64_t claim);
};

/* The tier's fetch of a miss ended (the claim the miss hook got): lookups held for it are served
 * again. Any thread. */
void lbd_store_tier_done(struct lbd_store *st, uint64_t claim);

/* Set (or with NULL clear) the tier's hooks; before the service threads start. */
void lbd_store_set_tier(struct lbd_store *st, const struct lbd_store_tier *t);

/* The arenas' tenants (lbd_arena.tenant) partition them: each tenant's entries live in its own
 * arenas only, and its share of the budget is its arenas' share of the data bytes. */
struct lbd_store *lbd_store_new(struct lbd_arena *arenas, unsigned n_arenas,
				const struct lbd_store_cfg *cfg);
void lbd_store_free(struct lbd_store *st);

/* The tenant a model's entries belong to, by its name (lbd_config_tenant_of): a tenant some arena
 * has, else the model is refused its bank. */
typedef unsigned (*lbd_tenant_of_fn)(const void *ctx, const char *model);
/* Before any model is added. NULL: every model is the shared tenant's (0). */
void lbd_store_set_tenants(struct lbd_store *st, lbd_tenant_of_fn fn, const void *ctx);

/* Who inserts: the client's insert account (lbd_store_account_open; 0: none, the daemon's own
 * inserts) and the NUMA node it runs on, whose arena takes the entry while it has room (-1:
 * no preference). */
struct lbd_inserter {
	uint32_t account;
	int node;
};
#define LBD_INSERTER_DAEMON ((struct lbd_inserter){ .account = 0, .node = -1 })

/* What one arena holds and served, for STATS per node. */
struct lbd_arena_counts {
	uint64_t bytes_used;  /* its entries' bytes, as bytes_used counts them */
	uint64_t entries;     /* entries in its memory (layer entries and prefix blocks) */
	uint64_t hits;        /* lookups answered from it (a prefix: its first block's arena) */
	uint64_t inserts;     /* entries placed in it */
	uint64_t remote;      /* inserts of its node's clients placed in another arena: no room */
};
/* out[n_arenas]. */
void lbd_store_arena_counts(struct lbd_store *st, struct lbd_arena_counts *out);

/* Make a bank for a registered model (idempotent). @return 0, -ENOMEM, -EINVAL. */
int lbd_store_add_model(struct lbd_store *st, uint32_t model_id, const struct lbp_register_model *d);

/* Whether model_id has a bank. */
bool lbd_store_has_model(struct lbd_store *st, uint32_t model_id);

/* An INSERT's header agrees with itself and its payload: dtype, shape and bytes (Ring protocol
 * 8). lbd_store_insert checks it too; exported so that it can come before the model checks. */
bool lbd_store_insert_hdr_ok(const struct lb_req *r, const struct lb_insert_hdr *h);

/*
 * Serve one ring request (already copied out of the client's memory) into *cpl. payload is the
 * daemon's own copy of the request's payload for lookups; for INSERT it is the client's staging
 * (the data is copied into the arena and checksummed there; the header was copied by the
 * caller into *ins). Every field is validated here. Never fails as a call: errors go to
 * cpl->status. lbd_store_lookup is lbd_store_lookup_sf without a hold: single-flight flags
 * (r->flags) are honoured, but the request is never held.
 */
void lbd_store_lookup(struct lbd_store *st, struct lbd_leases *ls, const struct lb_req *r,
		      const struct lb_query *q, const float *thr, struct lb_cpl *cpl);

/*
 * Single-flight (PROTOCOL.md, Ring protocol 15): a LOOKUP_DEEPEST with LB_REQ_CLAIM or
 * LB_REQ_WAIT. hold: the request's terms, or NULL (it may not be held: a caller with no thread
 * to look again, the in-process bank). @return false with cpl the answer (cpl->claim a claim
 * taken, LB_CPL_BUSY when another client's claim on the input was live); true: hold the
 * request, no answer yet, and serve it again once lbd_store_claim_seq moves from hold->seq or
 * at hold->wake_ns; each true counts in lbd_store_held until lbd_store_unhold.
 */
struct lbd_hold {
	uint64_t wait_until; /* in: it may be held until then (CLOCK_MONOTONIC ns); 0: not */
	uint64_t wake_ns;    /* out: serve it again by then (its bound, or the claim's) */
	uint32_t seq;        /* out: the claim sequence when it was held */
	bool tier_asked;     /* in/out: the tier was asked for this request's input (once) */
};
bool lbd_store_lookup_sf(struct lbd_store *st, struct lbd_leases *ls, const struct lb_req *r,
			 const struct lb_query *q, const float *thr, struct lbd_hold *hold,
			 struct lb_cpl *cpl);
/* A held request was served again, or its client left. */
void lbd_store_unhold(struct lbd_store *st);
/* Bumped (under the store lock) each time a claim ends or is found past its bound, with a
 * FUTEX_WAKE (private, every waiter) while any request is held: a service thread with held
 * requests sleeps on it. */
_Atomic uint32_t *lbd_store_claim_seq(struct lbd_store *st);
/* Claims alive (their holders' handles not yet released), past their bound or not. */
uint32_t lbd_store_claims(struct lbd_store *st);

/* who.account is charged with the entry's bytes; an insert beyond its limit is -EDQUOT. */
void lbd_store_insert(struct lbd_store *st, struct lbd_inserter who, const struct lb_req *r,
		      const struct lb_insert_hdr *ins, const uint8_t *data, struct lb_cpl *cpl);
void lbd_store_release(struct lbd_store *st, struct lbd_leases *ls, uint64_t lease, struct lb_cpl *cpl);
/* REPORT: -EINVAL for a prefix hit's lease (exact blocks drift by nothing). A drift above
 * cfg.drift_max invalidates the entry; one of an approximate hit (distance >= 1) also feeds its
 * layer's threshold controller (adapt.h), which moves the layer's threshold when
 * cfg.drift_target is set. layer: -1, the entry's own; else the layer (at most the entry's,
 * else -EINVAL) whose controller the drift feeds, of the same input reused to that depth; a
 * layer below the entry's invalidates nothing, its entry not being the one leased. */
void lbd_store_report(struct lbd_store *st, struct lbd_leases *ls, uint64_t lease, int layer,
		      float drift, struct lb_cpl *cpl);

/* An INSERT_BLOCK's header agrees with itself and its payload: key not 0, dtype, shape and
 * bytes (Ring protocol 8); the model's block geometry is checked by lbd_store_insert_block. */
bool lbd_store_block_hdr_ok(const struct lb_req *r, const struct lb_block_hdr *h);

/*
 * LOOKUP_PREFIX (Ring protocol 10): keys[0..n) (the client's, copied out) -> the longest run of
 * cached blocks from block 0, all held by one lease in ls; out[i] (n of them) says where block i
 * is. cpl: status 0 with count and lease, -ENOENT (not even block 0), -ESRCH, -EINVAL (a model
 * without prefix blocks), -EBUSY, -ENOMEM.
 */
void lbd_store_lookup_prefix(struct lbd_store *st, struct lbd_leases *ls, const struct lb_req *r,
			     const uint64_t (*keys)[2], uint32_t n, struct lb_prefix_block *out,
			     struct lb_cpl *cpl);
/*
 * INSERT_BLOCK (Ring protocol 10): h (copied out) and its data in the client's staging (copied
 * into the arena and checksummed there), charged to who.account. cpl: status 0 with arena and
 * entry_off, -EEXIST, -ENOENT (the parent is not cached, or went while this one was copied),
 * -EINVAL (a geometry not the model's), -ESRCH, -EDQUOT, -ENOSPC, -ENOMEM.
 */
void lbd_store_insert_block(struct lbd_store *st, struct lbd_inserter who, const struct lb_req *r,
			    const struct lb_block_hdr *h, const uint8_t *data, struct lb_cpl *cpl);

/*
 * An insert account: the arena bytes (headers and alignment included, as bytes_used counts
 * them) of the entries inserted under it, from the insert until each entry's memory is freed.
 * limit: the most it may hold, 0 for no limit. lbd_store_account_open makes an account of its
 * own; lbd_store_account_join(owner) opens owner's account (the daemon's owner: a uid + 1)
 * once more while it lives (opened and not closed as often, or holding entries), so that the
 * entries of owner's earlier clients stay charged to its later ones, and takes the new limit;
 * else it makes one for owner (owner 0: as lbd_store_account_open). Each open is closed once.
 * @return the account's id (>= 1), or 0 with errno ENOMEM.
 */
uint32_t lbd_store_account_open(struct lbd_store *st, uint64_t limit);
uint32_t lbd_store_account_join(struct lbd_store *st, uint64_t owner, uint64_t limit);
/* One open of the account ends (a client left). Its entries keep their charge; the account
 * goes when it is closed as often as it was opened and its last entry has gone. 0 is a
 * no-op. */
void lbd_store_account_close(struct lbd_store *st, uint32_t id);
/* Accounts alive (open, or closed with entries left) and the bytes charged to them all. */
void lbd_store_account_stats(struct lbd_store *st, uint32_t *accounts, uint64_t *charged);

/* End every lease and claim of a client that went away. */
void lbd_store_release_all(struct lbd_store *st, struct lbd_leases *ls);
void lbd_leases_free(struct lbd_leases *ls);

/*
 * Drop every entry and zero the counters: the store as lbd_store_new made it, its models kept.
 * Entry and input slots are handed out again in a new store's order and the allocator is left
 * with one free block, so the same requests get the same answers and offsets as in a new store.
 * For an in-process bank reused between independent runs (lbip_bank_clear).
 * @return 0; -EBUSY while a lease or a claim is held or an insert is being copied (nothing
 * is dropped).
 */
int lbd_store_clear(struct lbd_store *st);

/* Drop entries whose TTL passed (TTL policy). */
void lbd_store_expire(struct lbd_store *st);

/* Fill the data-plane part of a STATS reply. */
void lbd_store_stats(struct lbd_store *st, struct lbp_stats_reply *r);
/* Per-layer counters of one model, from first_layer. @return 0, -ENOENT (no such model). */
int lbd_store_model_stats(struct lbd_store *st, uint32_t model_id, uint32_t first_layer,
			  struct lbp_model_stats_reply *r);

/* One cached entry as a snapshot sees it (daemon/snapshot.h): the keys of its input (or its
 * block's place in the tree), its header, where it stands for the eviction policy, and its
 * data. */
struct lbd_store_item {
	uint32_t model_id;
	uint32_t layer;                /* LB_ENTRY_LAYER_BLOCK for a prefix block */
	uint32_t seq_len;
	uint32_t dtype;                /* enum lbp_dtype */
	uint32_t ndim;                 /* 1..LB_MAX_NDIM */
	uint32_t shape[LB_MAX_NDIM];   /* unused dims 0 */
	uint64_t bytes;                /* data bytes: the product of shape times the dtype's size */
	uint64_t checksum;             /* XXH3-64 of the data */
	uint64_t fp[LB_FP_WORDS];      /* the input's fingerprint; a block's: 0 */
	uint64_t exact[2];             /* the input's token hash; a block's key */
	uint64_t parent[2];            /* a block's parent's key (0, 0 for block 0); else 0 */
	uint32_t index;                /* a block's place in its chain; else 0 */
	uint32_t approx;               /* a layer entry's approx (0..LB_FP_BITS); a block's 0 */
	uint64_t idle_ns;              /* since its last hit, or its insert */
	uint64_t age_ns;               /* since its insert */
	double score;                  /* the decay policy's hit score, decayed to now */
	const uint8_t *data;           /* bytes bytes */
	/* A layer entry's input's token ids (LB_REQ_ANY_LEN): seq_len int32 in the machine's order,
	 * as the arena holds them at lb_tokens_off(bytes) after its data; any alignment (a
	 * snapshot image's); NULL: none (always for a block). */
	const uint8_t *tokens;
};

/* The bytes of an item's data and token ids, as an entry holds them from its data's start
 * (store_entry_need of it is the entry's size): bytes, or lb_tokens_off(bytes) + 4 seq_len. */
uint64_t lbd_store_item_body(const struct lbd_store_item *it);

/*
 * Hold every live entry for a snapshot: one lease each in ls (which, unlike a client's, has
 * no LBD_MAX_LEASES cap), so that none is evicted or changes until lbd_store_release_all(st,
 * ls). *items (malloc'd, the caller frees it) gets *n descriptions whose data point into the
 * arenas, valid while the leases are held. The leases count in the stats like clients'.
 * A prefix block is described only when its parent is (one whose parent is still being
 * copied waits for the next snapshot: the items never make a chain with a hole), with the
 * smallest idle_ns and age_ns and the largest score of its subtree, so that no parent is worth
 * less than a child of it (lbd_store_item_value).
 * @return 0, or -ENOMEM with nothing held.
 */
int lbd_store_hold_all(struct lbd_store *st, struct lbd_leases *ls, struct lbd_store_item **items,
		       uint32_t *n);

/* What an item is worth to the store's policy, higher kept first: recency (lru), the hit
 * score (decay), youth (ttl). */
double lbd_store_item_value(const struct lbd_store *st, const struct lbd_store_item *it);

/*
 * Put an entry back, as it was when lbd_store_hold_all described it (its ages and score carry
 * over): the store's checks of an insert, then room without any eviction, within the budget.
 * The data (and the token ids) are copied under the store lock: meant for start-up, before
 * clients are served. checksum and tokens are trusted: the caller checked the one against
 * the data and the other against exact (lbp_token_hash), as an insert does.
 * A prefix block goes back under its parent, which must be back already (restore parents
 * first: lbd_store_item_value ranks a parent at least as high as its children).
 * @return 0; -ESRCH (no bank for model_id); -EINVAL (layer or seq_len out of the model's
 *         range, shape inconsistent with bytes, the input cached with another seq_len, a
 *         block's geometry not the model's, token ids on a block); -EEXIST (that input has
 *         that layer, or the block is back); -ENOENT (a block whose parent is not back);
 *         -ENOSPC (not within the budget, or no block fits); -ETIME (policy ttl: it would
 *         expire at once); -ENOMEM.
 */
int lbd_store_restore(struct lbd_store *st, const struct lbd_store_item *it);

/* Retire a model: drop every live entry of it from the index (leased ones stay readable by
 * their holders until released; counted as neither eviction nor invalidation), and answer for
 * its id from now on as for no model (-ESRCH, -ENOENT). @return entries dropped, -ENOENT (no
 * such model, or retired already). */
int64_t lbd_store_drop_model(struct lbd_store *st, uint32_t model_id);

/* ---- run-time settings (CONFIG_SET) and FLUSH; each under the store lock, so the service
 * threads see a setting change between two requests, never within one ---- */

void lbd_store_get_cfg(struct lbd_store *st, struct lbd_store_cfg *out);

/*
 * Apply cfg (every field; budget 0: all of the arenas' data areas). A budget below bytes_used
 * evicts, by the policy, until it is met or only entries under lease or being inserted are
 * left. A new tau applies to every layer without a threshold of its own.
 * @return the entries evicted.
 */
uint64_t lbd_store_configure(struct lbd_store *st, const struct lbd_store_cfg *cfg);

/* The per-layer thresholds of a model, the first n layers' (any array may be NULL): own, the
 * layer's own or NAN for one that follows the default (cfg.tau, or its controller's with
 * cfg.drift_target set); in_force, what lookups that bring none meet; ctl, its controller
 * (adapt.h; a snapshot's). @return the model's layer count; -ESRCH (no such model). */
int lbd_store_layer_taus(struct lbd_store *st, uint32_t model_id, double *own, double *in_force,
			 struct lbd_adapt *ctl, uint32_t n);

/* Set the first n controllers of a model (a snapshot's, read back); each must be
 * lbd_adapt_valid. @return 0; -ESRCH (no such model); -EINVAL (n above its layers, or one
 * invalid: none set). */
int lbd_store_adapt_set(struct lbd_store *st, uint32_t model_id, const struct lbd_adapt *in,
			uint32_t n);

/* Give a layer its own threshold (-1..1), or NAN: follow cfg.tau again, for lookups of the
 * model that bring no thresholds. @return 0; -ESRCH (no such model); -EINVAL (layer, tau). */
int lbd_store_set_layer_tau(struct lbd_store *st, uint32_t model_id, uint32_t layer, double tau);

struct lbd_flush_result {
	uint64_t entries; /* dropped: out of the index, no lookup finds them again */
	uint64_t bytes;   /* their arena bytes */
	uint64_t leased;  /* of those, held by a lease: freed when their last lease ends */
};

/*
 * Drop the entries of every model (model_id 0), of one model (layer -1) or of one layer that
 * are LIVE when the call begins; entries inserted meanwhile are kept. Entries under lease stay
 * valid for their holders until released; inserts still copying are not touched. Drops count
 * as neither evictions nor expirations. The store lock is held for at most LBD_FLUSH_BATCH drops
 * at a time, so lookups and inserts go on between batches.
 * @return 0; -ESRCH (no such model); -EINVAL (layer out of the model's range, or a layer with
 *         model_id 0).
 */
int lbd_store_flush(struct lbd_store *st, uint32_t model_id, int layer, struct lbd_flush_result *out);

/* Drops per hold of the store lock: a drop costs about 1 us here (layerbank-bench flush, release
 * build), so a batch holds the lock for some 60-100 us. */
#define LBD_FLUSH_BATCH 64u

/* lbd_store_flush with another batch (UINT32_MAX: the whole pass under one hold), for the
 * benchmark that measures what batching gives and for tests. */
int lbd_store_flush_batched(struct lbd_store *st, uint32_t model_id, int layer, uint32_t batch,
			    struct lbd_flush_result *out);

/*
 * The store's invariants, for tests and fuzzers: every prefix block's parent cached one place
 * up (no chain has a hole) and its child count right; the eviction candidates exactly the LIVE
 * layer entries and LIVE leaf blocks; the live list exactly the LIVE entries and the leased
 * DOOMED ones; bytes_used their sum. @return 0; -EPROTO with why (n bytes) saying what broke.
 */
int lbd_store_check(struct lbd_store *st, char *why, size_t n);

const char *lbd_policy_name(enum lbd_policy p);
/* @return 0, or -1 for a name that is none of lru|decay|ttl. */
int lbd_policy_parse(const char *name, enum lbd_policy *out);

#endif
