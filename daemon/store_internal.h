/* layerbankd store internals, shared by its files: store.c (entries, inputs, leases, eviction,
 * run-time settings, FLUSH), store_layer.c (lookups and inserts of layer entries), store_block.c
 * (prefix blocks) and store_snap.c (holding and restoring for snapshots). Everything here runs
 * under the store lock unless it says otherwise. */
#ifndef LAYERBANK_DAEMON_STORE_INTERNAL_H
#define LAYERBANK_DAEMON_STORE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "adapt.h"
#include <stdint.h>

#include "store.h"

#define NONE UINT32_MAX

enum { E_FREE = 0, E_PENDING, E_LIVE, E_DOOMED };
enum { K_LAYER = 0, K_BLOCK = 1 };

/* A cached layer of an input, or a prefix block. Slot ids are stable; gen changes on reuse. */
struct entry {
	uint32_t owner;     /* the input (K_LAYER) or block (K_BLOCK) slot; NONE once unlinked */
	uint32_t gen;
	uint32_t leases;
	uint32_t live_pos;  /* in st->live, while LIVE, or DOOMED and leased */
	uint32_t cand_pos;  /* in its tenant's cand, while an eviction candidate, else NONE */
	uint64_t off;       /* of struct lb_entry_hdr in its arena */
	uint64_t bytes;     /* allocated */
	uint64_t created_ns, last_ns;
	double score;       /* decay policy: hits, decayed to score_ns */
	uint64_t score_ns;
	uint16_t layer;     /* K_LAYER's layer */
	uint8_t arena;
	uint8_t state;      /* FREE, PENDING (being copied), LIVE, DOOMED (out of the index) */
	uint8_t kind;       /* K_LAYER or K_BLOCK */
	uint8_t tokens;     /* K_LAYER: its input's token ids follow its data (LB_REQ_ANY_LEN) */
	uint32_t bank;      /* model_id - 1 */
	uint32_t next_free;
	uint32_t account;   /* the inserting client's account charged with bytes; 0: none */
	uint16_t approx;    /* K_LAYER: its insert's approx (0..LB_FP_BITS); 0 for a block */
};

/* An insert account (insert-bytes-per-uid): the arena bytes its entries hold, from the
 * insert until the memory is freed (evicted, expired, invalidated or flushed, and the last
 * lease on it ended). The daemon keeps one per uid, shared by the uid's connections (owner:
 * the uid + 1). It outlives its clients: entries stay after their inserters left and give
 * their bytes back as they go; the account goes when no client has it open and its last
 * entry has gone, and until then a new client of its owner opens it again. */
struct account {
	uint64_t used;      /* sum of bytes of the entries charged to it */
	uint64_t limit;     /* 0: no limit */
	uint64_t owner;     /* lbd_store_account_join's key; 0: an account of its own */
	uint32_t next_free;
	uint32_t opens;     /* opens not yet closed: clients that may charge it */
	uint8_t in_use;
};

/* An input: a token sequence seen before, with the layers cached for it. */
struct input {
	uint64_t fp[LB_FP_WORDS];
	uint64_t exact[2];
	uint32_t bank;       /* model_id - 1 */
	uint32_t seq_len;
	uint32_t n_cached;   /* layers with an entry (LIVE or PENDING) */
	uint32_t *layer;     /* [n_layers]: entry slot or NONE */
	uint32_t next_free;
	uint8_t used;
};

/*
 * A prefix block: a node of its bank's tree of prefixes, under the block that precedes it.
 * A block is linked in (map and tree) from its insert's reservation, PENDING, until it is
 * unlinked; a parent is never an eviction candidate while it has children (leaves go first),
 * and unlinking one unlinks its whole subtree, so that no chain has a hole. A PENDING entry
 * whose block was unlinked (owner NONE) is dropped by its insert's commit.
 */
struct block {
	uint64_t key[2];
	uint32_t bank;       /* model_id - 1 */
	uint32_t entry;      /* its entry slot */
	uint32_t index;      /* place in the chain: 0 first */
	uint32_t parent;     /* block slot; NONE for index 0 */
	uint32_t child;      /* first child, NONE */
	uint32_t next, prev; /* siblings under parent, NONE at the ends */
	uint32_t n_children; /* linked children, and children being placed (store_block_hold) */
	uint32_t next_free;
	uint8_t used;
};

/*
 * A single-flight claim (PROTOCOL.md, Ring protocol 15): its holder computes the input with this
 * token hash, and other clients' lookups of it wait. Held by a lease slot of its holder's (the
 * record goes when that lease ends); in its bank's claim map, found by lookups, from its taking
 * until the lease ends or the deadline passes (whichever is first).
 */
struct claim {
	uint64_t exact[2];
	const struct lbd_leases *owner; /* the holder's leases: who it is */
	uint64_t deadline_ns;           /* taken + the request's bound */
	uint32_t bank;                  /* model_id - 1 */
	uint32_t next_free;
	uint8_t used;
	uint8_t mapped;                 /* in the bank's claim map */
};

struct bank {
	struct lbp_register_model desc;
	struct lbd_fpindex *fps;
	struct lbd_exactmap *exact;
	struct lbd_exactmap *claims;   /* token hash -> claim slot; NULL until the first claim */
	struct lbd_exactmap *blocks;   /* block key -> block slot; NULL without kv */
	struct lbp_layer_stats *layer; /* [n_layers] */
	double *tau;                   /* [n_layers]: the layer's own threshold, NAN: the default */
	struct lbd_adapt *adapt;       /* [n_layers]: threshold controllers, fed by REPORT */
	uint32_t max_d_default;        /* radius for the thresholds in effect: the loosest layer's */
	uint32_t good_d_default;       /* and the tightest layer's: within it every layer's is met */
	bool retired;                  /* lbd_store_drop_model: answers as no model; its memory
					* stays for inserts that were copying when it went */
	unsigned tenant;               /* whose arenas hold its entries (lbd_store_set_tenants) */
};

/* A tenant's share of the store: its arenas' data areas, the bytes its entries hold, and its
 * eviction candidates (LIVE layer entries and LIVE leaf blocks in its arenas): an insert makes
 * room by evicting its own tenant's entries only. */
struct tenant {
	uint64_t data_bytes;
	uint64_t used;
	uint32_t *cand;
	uint32_t n_cand, cand_cap;
};

struct lbd_store {
	pthread_mutex_t lock;
	atomic_uint acquired; /* times the lock was taken (store_lock): how FLUSH sees a hand-over */
	struct lbd_store_cfg cfg;
	struct lbd_arena *arenas;
	struct lbd_alloc *alloc[LBP_MAX_ARENAS];
	unsigned n_arenas;
	struct bank *banks;   /* [n_banks], index model_id - 1; desc.n_layers 0: none yet */
	uint32_t n_banks;
	struct entry *e;
	uint32_t e_cap, e_free;
	struct input *in;
	uint32_t in_cap, in_free;
	struct block *blk;
	uint32_t blk_cap, blk_free;
	uint32_t *live;       /* LIVE or DOOMED-but-leased entries: what FLUSH and the rest walk */
	uint32_t n_live, live_cap;
	uint32_t n_pending;   /* PENDING entries: live_cap > n_live + n_pending (live_reserve) */
	struct tenant ten[LBP_MAX_ARENAS]; /* n_tenants of them: 1 + the largest arena tenant */
	unsigned n_tenants;
	struct lbd_arena_counts ac[LBP_MAX_ARENAS]; /* per arena, for STATS per node */
	lbd_tenant_of_fn tenant_of;       /* model name -> tenant; NULL: every model the shared one */
	const void *tenant_ctx;
	uint64_t rng;
	uint64_t data_bytes;  /* the arenas' data areas: the largest budget */
	uint64_t pinned;      /* bytes no eviction can free: leased LIVE and PENDING entries */
	struct account *acct; /* [acct_cap], id = slot + 1 */
	uint32_t acct_cap, acct_free;
	struct claim *cl;     /* [cl_cap] */
	uint32_t cl_cap, cl_free, n_claims;
	/* Written under the lock; read without it by the service threads that sleep on it
	 * (claim_seq) or decide to wake them (n_held: requests held now). */
	_Atomic uint32_t claim_seq, n_held;
	struct lbp_stats_reply c; /* data-plane counters */
	struct lbd_store_tier tier; /* its hooks all NULL: no second tier */
	struct lbd_leases tier_leases; /* the claims of the tier's fetches (lbd_store_tier_done) */
};

/* The registration of model_id into *d, under the lock, when the tier has that hook (hooked)
 * and the insert is not the daemon's own (account 0). */
static inline bool store_tier_wants(const struct lbd_store *st, bool hooked, uint32_t account,
				    uint32_t model_id, struct lbp_register_model *d)
{
	if (!hooked || !account || model_id == 0 || model_id > st->n_banks)
		return false;
	*d = st->banks[model_id - 1].desc;
	return d->n_layers != 0;
}

/* What a drop took: the entries unlinked (a block's subtree counts whole), their bytes, how
 * many of them a lease still holds. */
struct tally {
	uint64_t entries, bytes, leased;
};

void store_lock(struct lbd_store *st);
static inline void store_unlock(struct lbd_store *st)
{
	pthread_mutex_unlock(&st->lock);
}

/* A slot table grown by doubling, its new slots threaded on the free list lowest first. */
int store_grow(void **arr, uint32_t *cap, size_t elem, uint32_t *free_head, size_t next_off);

struct bank *store_bank_of(struct lbd_store *st, uint32_t model_id);
/* The threshold of layer l when a lookup brings none: the layer's own, else its controller's
 * with cfg.drift_target set, else cfg.tau. */
double store_layer_tau(const struct lbd_store *st, const struct bank *b, uint32_t l);

/* How far an entry may be from a lookup's input: the fingerprint distance to its input plus
 * its own approx (hamming distances obey the triangle inequality), capped at LB_FP_BITS. */
static inline uint32_t store_distance(uint32_t dist, uint32_t approx)
{
	return dist + approx > LB_FP_BITS ? LB_FP_BITS : dist + approx;
}
double store_decayed_score(const struct lbd_store *st, const struct entry *e, uint64_t now);
bool store_expired(const struct lbd_store *st, const struct entry *e, uint64_t now);
struct lb_entry_hdr *store_entry_hdr(const struct lbd_store *st, unsigned arena, uint64_t off);
/* 128 bytes of header and bytes of data, rounded to the allocator's alignment. */
uint64_t store_entry_need(uint64_t bytes);
/* Shape, dtype and byte count agree, without overflow. */
bool store_shape_ok(uint32_t dtype, uint32_t ndim, const uint32_t shape[LB_MAX_NDIM],
		    uint64_t bytes);

/* A fresh entry slot of kind in bank, or NONE (no memory). */
uint32_t store_entry_new(struct lbd_store *st, uint8_t kind, uint32_t bank);
void store_entry_put(struct lbd_store *st, uint32_t id);
/* Room in live[] for every entry placed so far, so that going live cannot fail. @return 0,
 * -ENOMEM. */
int store_live_reserve(struct lbd_store *st);
void store_cand_add(struct lbd_store *st, uint32_t id);
void store_cand_del(struct lbd_store *st, uint32_t id);

/* The client's quota for need more bytes: its account (NULL: none), or NULL with *err -EDQUOT
 * (counted). */
struct account *store_quota(struct lbd_store *st, uint32_t account, uint64_t need, int *err);
/* Room for need bytes of b's tenant by the policy, on node's arena while it has room (then on
 * the tenant's others, counted as remote; node -1: any), evicting the tenant's entries (those on
 * node's arena first) when none has. @return 0 with the block; -ENOSPC. */
int store_make_room(struct lbd_store *st, const struct bank *b, int node, uint64_t need,
		    uint64_t now, unsigned *arena, uint64_t *off);
/* A block of need bytes in tenant's arenas without any eviction, node's first (-1: any).
 * @return 0; -ENOSPC. */
int store_alloc_in(struct lbd_store *st, unsigned tenant, int node, uint64_t need,
		   unsigned *arena, uint64_t *off);
/* Tenant t's part of the budget: its arenas' part of the data bytes. */
uint64_t store_tenant_budget(const struct lbd_store *st, unsigned t);
/* The tenant of entry e: its arena's. */
static inline struct tenant *store_tenant_of(struct lbd_store *st, const struct entry *e)
{
	return &st->ten[st->arenas[e->arena].tenant];
}
/*
 * A new entry in the block at (arena, off) of need bytes, counted as used, its room in the lists
 * reserved, not yet PENDING nor LIVE: of layer for the input with these keys (made if none is
 * cached), or a prefix block under parent (linked into map and tree). @return the entry; NONE
 * (no memory) with the block given back and nothing else changed.
 */
uint32_t store_layer_place(struct lbd_store *st, struct bank *b, const uint64_t fp[LB_FP_WORDS],
			   const uint64_t exact[2], uint32_t seq_len, uint32_t layer,
			   unsigned arena, uint64_t off, uint64_t need);
uint32_t store_block_place(struct lbd_store *st, struct bank *b, const uint64_t key[2],
			   uint32_t index, uint32_t parent, unsigned arena, uint64_t off,
			   uint64_t need);
/* The placed entry eid waits for its copy: PENDING, pinned, charged to a. */
void store_entry_pending(struct lbd_store *st, uint32_t eid, struct account *a, uint32_t account);
/* The pending entry's copy is done: unpinned, its times set, ready to go live. */
void store_entry_copied(struct lbd_store *st, uint32_t eid, uint32_t gen, uint64_t now);
/* Undo a placement that never went live: the block and the charge given back, the slot freed. */
void store_entry_abandon(struct lbd_store *st, uint32_t eid);
/* A placed entry is found by lookups from now on (its owner says where). */
void store_entry_go_live(struct lbd_store *st, uint32_t eid);
/*
 * Write an entry at h: its data (and tmpl->n_tokens token ids from tokens after it: int32 in
 * the machine's order, at any alignment), then its header as tmpl has it, then the magic. The
 * checksum (of the data) is tmpl's when checksum_given, else computed on the arena copy. Needs
 * no lock: the entry is PENDING (or the store is not serving yet).
 */
void store_entry_publish(struct lb_entry_hdr *h, const struct lb_entry_hdr *tmpl,
			 const uint8_t *data, const void *tokens, bool checksum_given);
/* Take a LIVE entry out of the index (a block with its subtree), adding to t (may be NULL);
 * free what no lease holds. */
void store_entry_unlink(struct lbd_store *st, uint32_t id, struct tally *t);

/* The lease of a handle store_lease_take gave and that has not ended. */
static inline struct lbd_lease *store_lease_of(struct lbd_leases *ls, uint64_t handle)
{
	return &ls->slot[(handle >> 32) - 1];
}

/* A lease in ls on each of the n entries ids (one handle for all); max: ls's cap. @return 0,
 * -EBUSY (at the cap), -ENOMEM. */
int store_lease_take(struct lbd_store *st, struct lbd_leases *ls, const uint32_t *ids, uint32_t n,
		     uint32_t max, uint64_t *handle);

/* A lease in ls on claim id (one more of ls's claims); max: ls's cap. @return 0, -EBUSY,
 * -ENOMEM. */
int store_lease_claim(struct lbd_store *st, struct lbd_leases *ls, uint32_t id, uint32_t max,
		      uint64_t *handle);

/* ---- single-flight claims (store_claim.c) ---- */

/* The live claim on bank b's input exact, or NONE; one found past its deadline is unmapped
 * (its waiters woken) and not returned. */
uint32_t store_claim_find(struct lbd_store *st, struct bank *b, const uint64_t exact[2],
			  uint64_t now);
/* Claim bank b's input exact for ls until deadline_ns. @return 0 with the handle; -EBUSY (ls
 * at its cap), -ENOMEM: no claim. */
int store_claim_take(struct lbd_store *st, struct lbd_leases *ls, struct bank *b,
		     const uint64_t exact[2], uint64_t deadline_ns, uint64_t *handle);
/* A claim of the second tier's on key in bank b (a miss's fetch; lbd_store_tier_done ends it),
 * for the tier's claim_us, unless a claim on key is live. @return 0 and *handle; -EBUSY (claimed
 * already), -ENOMEM. */
int store_tier_claim(struct lbd_store *st, struct bank *b, const uint64_t key[2], uint64_t now,
		     uint64_t *handle);
/* The lease holding claim id ended: the claim ends (its waiters woken) and its slot is freed. */
void store_claim_end(struct lbd_store *st, uint32_t id);
/* The claims' part of lbd_store_check. */
int store_claim_check(const struct lbd_store *st, char *why, size_t n);

/* ---- prefix blocks (the tree: store.c) ---- */

/* A block's child count grows (a child is being placed): it stops being a candidate. */
void store_block_hold(struct lbd_store *st, uint32_t blk);
/* And shrinks again (the child went, or was never placed): a LIVE leaf is a candidate again. */
void store_block_unhold(struct lbd_store *st, uint32_t blk);

#endif
