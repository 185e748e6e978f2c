/* liblayerbank internals shared by its files: the client struct and its helpers. */
#ifndef LAYERBANK_LIBCLIENT_INTERNAL_H
#define LAYERBANK_LIBCLIENT_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "layerbank/layerbank.h"
#include "layerbank/ring.h"
#include "lbp.h"
#include "spare.h"

#define LB_EXPORT __attribute__((visibility("default")))

#define LBI_RETRY_NS 100000000ull          /* between reconnection attempts: 100 ms */
#define LBI_RECONNECT_BUDGET_NS 10000000ull /* one attempt, HELLO to the last model: 10 ms */
#define LBI_REGISTER_WAIT_NS 100000000ull   /* past that budget, each REGISTER_MODEL: 100 ms */
#define LBI_HUP_SLICE_NS 1000000ull         /* a wait looks at the socket this often: 1 ms */
#define LBI_WAIT_NS 5000000ull              /* a synchronous call's wait, by default: 5 ms */
#define LBI_PREFIX_WAIT_MAX_NS 1000000000ull /* the most a prefix call waits: 1 s */
#define LBI_WAIT_ENV "LAYERBANK_WAIT_US"    /* overrides it at lb_connect */
#define LBI_STALE_MAX 64u                   /* synchronous calls given up and still in flight */
#define LBI_SYNC_TAG (1ull << 63)           /* user_data of synchronous calls */
#define LBI_TOKENS_TAG (1ull << 62)         /* ... of a deferred insert with token ids */

struct lb_arena_map {
	int fd;
	const void *base; /* PROT_READ, MAP_SHARED: the daemon seals the memfd against writes */
	size_t bytes;
};

/* Leases the application holds, so that a lost daemon's can be told from a new one's (the
 * daemon gives a client at most 4096 at a time, so the set stays small). */
struct lbi_leases {
	uint64_t *slot; /* open addressing, 0 = empty (no lease is 0) */
	uint32_t cap, n;
};

/* Add lease (not 0). @return 0, -ENOMEM. */
int lbi_leases_add(struct lbi_leases *s, uint64_t lease);
/* @return true when lease was in s (and is no more). */
bool lbi_leases_take(struct lbi_leases *s, uint64_t lease);
void lbi_leases_free(struct lbi_leases *s);

/*
 * What a lost connection leaves behind while the application still holds pointers into it:
 * the arena mappings (hits), the region (a reserved insert), and the leases that keep them.
 * Freed when the last of those is let go, or by lb_close.
 */
struct lbi_orphan {
	unsigned n_arenas;
	struct lb_arena_map arenas[LBP_MAX_ARENAS];
	int region_fd;
	uint8_t *region;
	uint64_t region_bytes;
	struct lbi_leases leases;
	bool reserved; /* an lb_insert_reserve into its staging is not committed yet */
	bool staging;  /* the last insert's bytes may still be read, until the next call on c */
	bool pinned;   /* it may have leases the set missed (no memory): kept until lb_close */
};

/* A model as the application registered it, to register again after a reconnect. */
struct lbi_model {
	struct lbp_register_model msg;
	uint32_t app_id; /* the id lb_register_model returned: what the application passes */
	uint32_t cur_id; /* the connected daemon's id for it */
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
	uint32_t inflight;           /* requests pushed and not yet completed, stale ones too */
	uint64_t spin_ns;            /* the most a wait spins (lb_set_spin_us) */
	struct lbu_spare spare;      /* ... and only while a CPU is spare */
	uint64_t wait_ns;            /* how long a synchronous call waits (lb_set_wait_us) */
	uint64_t block_ns;           /* lb_prefix_run: computing one block took (0: not known) */
	uint64_t lem_tok_ns;         /* lb_lem_run: computing a layer for a token took (0: not known) */
	bool sflight_off;            /* the daemon refused single-flight's flags (-EINVAL) */
	bool any_len_off;            /* ... LB_REQ_ANY_LEN (-EINVAL) */
	bool tier_off;               /* ... LB_REQ_TIER (-EINVAL) */
	bool unrung;                 /* requests pushed without ringing the doorbell (lbi_wake) */
	bool tokens_off;             /* ... inserts with token ids (-EINVAL) */
	/* The single-flight fields of the last LOOKUP_DEEPEST completion that had any, taken by
	 * lb_poll for lb_lookup_sflight (the public lb_result has no room for them). */
	uint64_t sf_tag, sf_claim;
	uint32_t sf_waited_us, sf_flags;
	uint64_t sync_seq;
	/* Synchronous calls that gave up waiting: their completions, when they come, are
	 * swallowed (a hit's lease given back), never returned. */
	uint64_t stale[LBI_STALE_MAX];
	unsigned n_stale;
	/* An in-process bank (lbi_client_local): called after each push, it serves the request
	 * ring on this thread. NULL for a daemon's client. */
	void (*pump)(void *ctx);
	void *pump_ctx;
	/* Reconnection (lb_connect's clients): where and as whom, what to register again. */
	char socket_path[108];
	char name[LB_NAME_MAX + 1];
	bool lost;              /* the daemon went away; region and arenas are gone or orphaned */
	uint64_t retry_ns;      /* next reconnection attempt */
	uint64_t hello_ns;      /* when the pending HELLO of a reconnection was sent */
	uint64_t hup_check_ns;  /* last look at the socket for a hang-up while waiting */
	uint32_t reconnects;
	struct lbi_leases leases;
	bool untracked;         /* a hit's lease could not be added to leases (no memory) */
	struct lbi_orphan *orphans;
	unsigned n_orphans;
	int reserve_orphan;     /* the reservation is in orphans[i]; -1: in the live region */
	struct lbi_model *models;
	unsigned n_models;
	bool remapped;          /* some model's cur_id differs from its app_id */
	char last_error[LBP_MAX_ERRMSG + 64];
	uint8_t buf[LBP_MAX_FRAME + 1];
};


/*
 * Make c usable for a data-plane call: 0 when connected; when the daemon was lost, try to
 * connect again (at most every LBI_RETRY_NS, within LBI_RECONNECT_BUDGET_NS) and register the
 * application's models again. @return 0, -ENOTCONN (not now: the caller answers a miss).
 */
int lbi_ready(struct lb_client *c);
/* The daemon is gone: keep what the application still points into, drop the rest, and start
 * trying to reconnect. @return -ECONNRESET. */
int lbi_lost(struct lb_client *c);
/* Has the daemon hung up the control socket? Cheap (one poll(2) with no wait). */
bool lbi_hung_up(const struct lb_client *c);
/* The daemon's id for the application's model_id. */
uint32_t lbi_model_id(const struct lb_client *c, uint32_t app_id);
/* The model the application registered as app_id, as registered; NULL when it did not. */
const struct lbp_register_model *lbi_model_desc(const struct lb_client *c, uint32_t app_id);
/* RELEASE lease (or a claim) without waiting: its completion is swallowed by a later call, as
 * a stale call's. For a hit nobody waits for any more, and a claim at the end of its run.
 * @return false when it could not be sent (no connection, the ring full, too many calls given
 * up on already): with the connection the lease then stays until it ends. */
bool lbi_give_back(struct lb_client *c, uint64_t lease);
/* lbi_give_back without ringing the daemon's doorbell (as lbi_insert_deferred). */
bool lbi_give_back_quiet(struct lb_client *c, uint64_t lease);
/*
 * lb_insert_commit_tokens (tokens) or lb_insert_commit_approx (tokens NULL) without waiting for
 * the answer, nor ringing the daemon's doorbell (the next request that does, or lbi_wake, gets
 * it served): the insert is sent and its completion swallowed by a later call, as a stale
 * call's (an old daemon's refusal of token ids sets tokens_off then). The reservation's bytes
 * stay in staging until then. Falls back to waiting when too many calls are outstanding.
 * @return 0 (sent, or inserted); a refusal when it waited; -EINVAL, -ENOTCONN, -EAGAIN as those.
 */
int lbi_insert_deferred(struct lb_client *c, uint32_t model_id, uint32_t layer,
			const struct lb_key *key, const struct lb_shape *shape, uint32_t approx,
			const int32_t *tokens);
/* Ring the daemon's doorbell for requests pushed without (deferred inserts), if any. */
void lbi_wake(struct lb_client *c);
/*
 * LOOKUPs of layers 0..n-1 for key, in flight together behind one doorbell, tagged tags[0..n):
 * the caller may compute while the daemon answers, then collects them with lbi_lookups_wait
 * and makes no other call in between. @return how many were sent (from layer 0; fewer when the
 * ring or staging filled), 0 when none could be; -EBUSY (a call of the application's in
 * flight, or not room to give them up), -EINVAL, -ENOTCONN.
 */
int lbi_lookups_submit(struct lb_client *c, uint32_t model_id, const struct lb_key *key,
		       const float *tau, uint32_t n_tau, uint32_t n, uint64_t *tags);
/* The answers of lbi_lookups_submit's n lookups: rcs[i] as lb_lookup's, hits[i] when 0. Those
 * not answered within the synchronous wait answer -ETIMEDOUT, and their leases are given back
 * when they come. */
void lbi_lookups_wait(struct lb_client *c, const uint64_t *tags, uint32_t n, struct lb_hit *hits,
		      int *rcs);
/* Wait up to wait_ns for every request in flight (deferred inserts, give-backs) to complete.
 * @return 0 when none is left; -ETIMEDOUT; a lost connection's error. */
int lbi_drain(struct lb_client *c, uint64_t wait_ns);
/* A lease of a lost connection let go by the application. @return true when it was one. */
bool lbi_orphan_release(struct lb_client *c, uint64_t lease);
/* The reservation into a lost connection's staging is over. */
void lbi_orphan_unreserve(struct lb_client *c);

/* A STATS_REPLY as lb_stats gives it, in *out zeroed first (rows past n_nodes stay zero); a
 * count of rows past LB_MAX_NODES, which the decoder never lets through, is cut to it. */
void lbi_stats_from_reply(const struct lbp_stats_reply *r, struct lb_stats *out);

/*
 * Align the token ids a[0..n) (a new input) with b[0..m) (a cached one): map[i] = the position of
 * b that position i of a stands for, or -1 (an edit). A longest common subsequence: the common
 * prefix and suffix, and between them, when small enough (4 Mi cells), a dynamic program.
 * @return the positions aligned; -ENOMEM.
 */
int lbi_align(const int32_t *a, uint32_t n, const int32_t *b, uint32_t m, int32_t *map);

#endif
