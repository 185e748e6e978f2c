/*
 * libFuzzer target: the daemon's validation and serving of ring requests (daemon/service.c
 * serve(), daemon/store*.c) through an in-process bank (inproc/inproc.h), driven as a hostile
 * client would: raw 64-byte request entries and staging bytes written into the client's region,
 * then the daemon's pump. Three models are registered so that well-formed requests reach the
 * store, one of them with prefix blocks (kv). Checked for every request: exactly one
 * completion, in order, whose status is one that PROTOCOL.md (Ring protocol 6, 7, 8, 10, 11, 14)
 * allows, predicted by an independent model of the checks in their order; hits, inserts and
 * prefix hits name sound entries (a prefix hit's answers, written in place over its keys, each
 * the block asked for, with the data its insert sent); single-flight lookups (LOOKUP_DEEPEST's
 * CLAIM and WAIT flags, section 15) take a claim exactly when they may and must, never one on an
 * input the bank surely holds or the client claims already, and are never held (a pumped client
 * is answered at once, and it is the only client: never BUSY). After each pump the STATS counters agree
 * with the completions and the store's invariants hold (lbd_store_check: no chain of blocks has
 * a hole, the eviction candidates are the leaves); after each input, once every lease was
 * released, none is left, the per-layer counters add up to the totals, and a budget of one byte
 * evicts everything (nothing is held any more).
 *
 * Input: byte 0 picks the bank (eviction lru, decay, or ttl 0: every entry expired when looked
 * up, or lru with adaptive thresholds: REPORTs on approximate hits move each layer's, anywhere
 * down to the controllers' loosest); then records, each led by one byte whose low 3 bits say what follows:
 *   0 REQ        60 bytes of request (the stamp is the ring's), u16 n, n bytes written into
 *                staging at the request's payload_off (cut at the end of staging); pushed
 *   1 REQ_LEASE  u8 k, then as REQ; the lease field is the k-th lease handed out in this
 *                input (modulo their number), if any
 *   2 STAGE      u32 off (modulo the staging size), u16 n, n bytes written there
 *   3 PUMP       the daemon serves the ring; bit 3 of the lead byte set: completions are left
 *                in their ring (back-pressure), else taken
 *   4 REPEAT     u16 n: the last request pushed again n times
 *   5..7         as PUMP
 * Integers are little-endian; a record cut short by the end of the input is zero-filled. Past
 * 8192 requests an input's requests are dropped, so that an input's time has a bound. At the
 * end every request is served and every lease released through the ring, then the bank is
 * cleared (lbip_bank_clear) so that each input starts from the same state.
 *
 * The daemon reads a payload when it serves the request and writes a prefix hit's answers over
 * its keys before the next request: the target keeps a shadow of staging (what it wrote, and
 * the answers the model expects, in completion order), reads every payload from it as the
 * daemon saw it, and compares the payloads' bytes with the real staging after each pump.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "../../libclient/client_internal.h"
#include "fuzz.h"
#include "inproc.h"
#include "store.h"

#define BUDGET (128u << 10)   /* small: a few inserts already evict */
#define DRIFT_MAX 0.05
#define TAU 0.98
#define DRIFT_TARGET 0.001 /* BANK_ADAPT's: most reports move a threshold */
#define MAX_REQUESTS 8192u    /* per input, repeats included: enough for the lease limit */
#define MAX_GIVEN 8192u       /* leases remembered per input for REQ_LEASE */
#define HELD_SLOTS 8192u      /* a lease set: twice LBD_MAX_LEASES keeps probes short */
#define N_RECENT 64u          /* successful inserts remembered for the must-find checks */
#define BLOCK_SLOTS 16384u    /* the block table: twice the inserts an input can make */
#define CLAIM_SLOTS 16384u    /* the claimed keys: twice the lookups an input can make */
#define PENDING_CAP 1024u     /* >= the request ring's entries */
#define DIRTY_MAX 32u
#define LOOKUP_MAX_PAYLOAD (sizeof(struct lb_query) + LBP_MAX_LAYERS * sizeof(float))
#define KEY_BYTES 16u         /* a block key in a LOOKUP_PREFIX payload */
#define PREFIX_MAX_PAYLOAD (sizeof(struct lb_prefix_query) + KEY_BYTES * LB_PREFIX_MAX_BLOCKS)

enum bank_kind { BANK_LRU, BANK_DECAY, BANK_TTL0, BANK_ADAPT, N_BANKS };

struct model {
	const char *name;
	uint32_t n_layers, max_seq;
	uint32_t kv_dim, block_tokens, kv_layers; /* prefix blocks; 0: none */
	uint32_t id; /* as registered: the same in every bank */
};

static struct model models[] = {
	{ "fuzz-small", 4, 256, 0, 0, 0, 0 },
	{ "fuzz-deep", LBP_MAX_LAYERS, LBP_MAX_SEQ, 0, 0, 0, 0 }, /* the largest threshold payload */
	/* Blocks of f32 [2][2][4][32], 2 KiB, of 2 of its 3 layers (a FusedKV model's storage
	 * layers): some 60 fit the budget; chains of up to 16. */
	{ "fuzz-prefix", 3, 64, 32, 4, 2, 0 },
};
#define N_MODELS (sizeof(models) / sizeof(models[0]))
#define KV_MODEL 2 /* the one with blocks */

/* Allowed statuses, as a mask. */
enum {
	S_OK = 1u << 0,
	S_NOENT = 1u << 1,
	S_SRCH = 1u << 2,
	S_INVAL = 1u << 3,
	S_EXIST = 1u << 4,
	S_NOSPC = 1u << 5,
	S_BUSY = 1u << 6,
	S_NOMEM = 1u << 7,
};

static unsigned status_bit(int32_t s)
{
	switch (s) {
	case 0: return S_OK;
	case -ENOENT: return S_NOENT;
	case -ESRCH: return S_SRCH;
	case -EINVAL: return S_INVAL;
	case -EEXIST: return S_EXIST;
	case -ENOSPC: return S_NOSPC;
	case -EBUSY: return S_BUSY;
	case -ENOMEM: return S_NOMEM;
	}
	return 0;
}

/* A successful insert, for the checks that an unevicted entry is found (and re-inserting it
 * refused). epoch: the drop epoch it was made in (below). */
struct recent {
	uint32_t model_id, seq_len, layer, approx;
	uint64_t exact[2];
	uint64_t epoch;
};

/* A prefix block's latest successful insert in this input: every cached block is one of them
 * (each input starts from an empty store), and blocks never move. */
struct blk {
	uint32_t model_id;  /* 0: a free slot */
	uint32_t index;
	uint64_t key[2], parent[2];
	uint64_t checksum;  /* XXH3-64 of the data the insert sent */
	uint64_t off;       /* of its entry header in arena 0 */
	uint64_t epoch;
	uint32_t pins;      /* prefix hits' leases held on it (not counted under ttl) */
};

/* An input key this input's lookups claimed (section 15), with the claims on it still held and
 * the bound of the latest. */
struct ckey {
	uint32_t model_id;  /* 0: a free slot */
	uint64_t exact[2];
	uint32_t held;      /* claims on it not yet released */
	uint64_t taken_ns;  /* the latest claim: when the harness saw it */
	uint32_t aux;       /* and its bound, us */
};

/* A set of lease handles, each with a value: linear probing, deletion by backward shift (no
 * tombstones). */
struct hset {
	uint64_t *slot; /* [HELD_SLOTS], 0: free */
	uint32_t *val;  /* [HELD_SLOTS], beside slot; NULL: none kept */
	uint32_t n;
};

/* One input's run: what the harness knows the daemon must have done. */
struct run {
	struct lbip_bank *l;
	struct lb_client *c;
	enum bank_kind kind;
	const uint8_t *staging;  /* the region's, which the daemon reads and writes */
	uint8_t *shadow;         /* what it holds as the daemon met it, request by request */
	uint64_t staging_bytes;
	/* Staging this input (or a prefix hit's answer) wrote, zeroed at the end: a few ranges,
	 * not their hull, which can span all 8 MiB. Past DIRTY_MAX the last range grows. */
	struct { uint64_t lo, hi; } written[DIRTY_MAX];
	uint32_t n_written;

	struct lb_req *pending; /* [PENDING_CAP] pushed, no completion yet, in ring order */
	uint32_t pend_head, pend_n;
	uint32_t seen;                      /* completion index up to which we examined */
	struct lb_req last;
	bool have_last;
	uint32_t n_requests; /* pushed from the input (MAX_REQUESTS at most) */

	uint64_t *given;  /* [MAX_GIVEN]: leases handed out, in order (the first MAX_GIVEN) */
	uint32_t n_given;
	struct hset held;    /* the leases held now; .n is what STATS leases must say */
	struct hset pheld;   /* those of them that a prefix hit gave: the run's last block */
	struct hset claims;  /* the claims held now (not leases to STATS): their ckey slot */
	struct ckey *ckey;   /* [CLAIM_SLOTS] */
	uint32_t *ckey_used; /* [CLAIM_SLOTS] the slots taken, to clear them at the end */
	uint32_t n_ckey;
	uint64_t layer_inserts; /* INSERTs that succeeded: all of them in recent[] while few */

	struct recent recent[N_RECENT];
	uint32_t n_recent;
	struct blk *blk;     /* [BLOCK_SLOTS] */
	uint32_t *blk_used;  /* [BLOCK_SLOTS] the slots taken, to clear them at the end */
	uint32_t n_blk;
	/* Bumped whenever entries may have been dropped (evicted, expired, invalidated) since the
	 * last look: an insert of an older epoch may be gone. A pump in which anything was dropped
	 * is "dirty": the must-find checks and the arena reads are off for its requests (but for
	 * a prefix hit's blocks, which its lease holds). */
	uint64_t epoch, drops_seen;
	bool dirty;

	uint64_t hits, misses, inserts, reports_over; /* inserts: of layers and blocks */
	uint64_t approx_inserts; /* each may later give way to a more exact insert (invalidated) */
	uint64_t pump_start, pump_end; /* the clock around the pump being checked */
	uint64_t block_inserts, prefix_hits, prefix_misses, blocks_served;
	uint64_t layer_lookups[N_MODELS]; /* expected sum of per-layer hits + misses */
	bool touched[N_MODELS];           /* a lookup or insert of it reached the store */
};

static struct lbip_bank *banks[N_BANKS];
static struct lb_req pending_reqs[PENDING_CAP];
static struct lb_cpl got[PENDING_CAP]; /* one pump's completions */
static uint64_t given_leases[MAX_GIVEN];
static uint64_t held_leases[HELD_SLOTS], prefix_leases[HELD_SLOTS]; /* empty between inputs */
static uint32_t prefix_last[HELD_SLOTS], held_layers[HELD_SLOTS];
static uint64_t claim_handles[HELD_SLOTS];                           /* empty between inputs */
static uint32_t claim_keys[HELD_SLOTS];
static struct ckey ckeys[CLAIM_SLOTS];                               /* empty between inputs */
static uint32_t ckeys_used[CLAIM_SLOTS];
static struct blk blocks[BLOCK_SLOTS];                               /* empty between inputs */
static uint32_t blocks_used[BLOCK_SLOTS];

__attribute__((format(printf, 2, 3), noreturn))
static void broken(const struct lb_req *r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fuzz_vreport("fuzz_ring_entry", fmt, ap);
	va_end(ap);
	if (r)
		fprintf(stderr, "  request: opcode %u flags %u layer %u model %u user_data %llu seq_len %u "
			"aux 0x%x lease 0x%llx payload %u+%u reserved %llx %llx %x\n",
			r->opcode, r->flags, r->layer, r->model_id, (unsigned long long)r->user_data,
			r->seq_len, r->aux, (unsigned long long)r->lease, r->payload_off,
			r->payload_len, (unsigned long long)r->reserved[0],
			(unsigned long long)r->reserved[1], r->reserved2);
	abort();
}

/* ---- the banks ---- */

static struct lbip_bank *bank_new(enum bank_kind kind)
{
	struct lbd_store_cfg cfg = { .policy = LBD_POLICY_LRU, .drift_max = DRIFT_MAX, .tau = TAU,
				     .half_life_ns = 1000000000ull, .ttl_ns = 3600000000000ull };
	char err[256] = "";

	if (kind == BANK_DECAY)
		cfg.policy = LBD_POLICY_DECAY;
	if (kind == BANK_TTL0) {
		cfg.policy = LBD_POLICY_TTL;
		cfg.ttl_ns = 0;
	}
	if (kind == BANK_ADAPT)
		cfg.drift_target = DRIFT_TARGET;
	struct lbip_bank *l = lbip_bank_new(BUDGET, &cfg, err, sizeof(err));
	if (!l)
		broken(NULL, "cannot make a bank: %s", err);
	for (size_t i = 0; i < N_MODELS; i++) {
		struct lb_model_desc d = { .name = models[i].name, .weights_hash = 1 + i,
					   .n_layers = models[i].n_layers, .hidden = 64,
					   .dtype = LB_DTYPE_F32, .max_seq = models[i].max_seq,
					   .fp_chunks = 4, .fp_seed = 9, .kv_dim = models[i].kv_dim,
					   .block_tokens = models[i].block_tokens,
					   .kv_layers = models[i].kv_layers };
		uint32_t id;
		if (lbip_bank_register(l, &d, &id) < 0)
			broken(NULL, "cannot register %s", d.name);
		if (models[i].id && models[i].id != id)
			broken(NULL, "model ids differ between banks");
		models[i].id = id;
	}
	return l;
}

static const struct model *model_of(uint32_t id)
{
	for (size_t i = 0; i < N_MODELS; i++)
		if (models[i].id == id)
			return &models[i];
	return NULL;
}

static uint32_t prefix_model(void)
{
	return models[KV_MODEL].id;
}

/* A block's data bytes (section 14: f32 [kv.layers][2][block_tokens][kv_dim]). */
static uint64_t block_bytes(const struct model *m)
{
	return (uint64_t)m->kv_layers * 2 * m->block_tokens * m->kv_dim * sizeof(float);
}

/* What an entry of bytes occupies (section 9). */
static uint64_t entry_need(uint64_t bytes)
{
	return (LB_ENTRY_HDR_SIZE + bytes + 63) & ~63ull;
}

/* ---- lease sets ---- */

static uint32_t hset_home(uint64_t h)
{
	return (uint32_t)((h * 0x9e3779b97f4a7c15ull) >> 32) & (HELD_SLOTS - 1);
}

static int64_t hset_find(const struct hset *s, uint64_t h)
{
	if (!h)
		return -1;
	for (uint32_t i = hset_home(h);; i = (i + 1) & (HELD_SLOTS - 1)) {
		if (s->slot[i] == h)
			return i;
		if (!s->slot[i])
			return -1;
	}
}

static bool hset_has(const struct hset *s, uint64_t h)
{
	return hset_find(s, h) >= 0;
}

static void hset_add(struct hset *s, uint64_t h, uint32_t v)
{
	uint32_t i = hset_home(h);
	while (s->slot[i])
		i = (i + 1) & (HELD_SLOTS - 1);
	s->slot[i] = h;
	if (s->val)
		s->val[i] = v;
	s->n++;
}

static void hset_del(struct hset *s, uint64_t h)
{
	uint32_t i = (uint32_t)hset_find(s, h), j = i;
	for (;;) {
		j = (j + 1) & (HELD_SLOTS - 1);
		if (!s->slot[j])
			break;
		/* Move j into the hole at i unless its home lies cyclically in (i, j]. */
		uint32_t k = hset_home(s->slot[j]);
		if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
			continue;
		s->slot[i] = s->slot[j];
		if (s->val)
			s->val[i] = s->val[j];
		i = j;
	}
	s->slot[i] = 0;
	s->n--;
}

/* ---- the block table ---- */

static bool key_eq(const uint64_t a[2], const uint64_t b[2])
{
	return a[0] == b[0] && a[1] == b[1];
}

static uint32_t blk_home(uint32_t model_id, const uint64_t key[2])
{
	uint64_t h = (key[0] ^ (key[1] * 0xbf58476d1ce4e5b9ull) ^ model_id) * 0x9e3779b97f4a7c15ull;
	return (uint32_t)(h >> 32) & (BLOCK_SLOTS - 1);
}

/* The record of model_id's block key, or NULL when this input never inserted it. */
static struct blk *blk_find(const struct run *R, uint32_t model_id, const uint64_t key[2])
{
	for (uint32_t i = blk_home(model_id, key);; i = (i + 1) & (BLOCK_SLOTS - 1)) {
		struct blk *b = &R->blk[i];
		if (!b->model_id)
			return NULL;
		if (b->model_id == model_id && key_eq(b->key, key))
			return b;
	}
}

/* The record for an insert of model_id's block key: the one there, or a new one. */
static struct blk *blk_put(struct run *R, uint32_t model_id, const uint64_t key[2])
{
	struct blk *b = blk_find(R, model_id, key);
	if (b)
		return b;
	if (R->n_blk >= BLOCK_SLOTS / 2)
		broken(NULL, "more block inserts than an input can make");
	uint32_t i = blk_home(model_id, key);
	while (R->blk[i].model_id)
		i = (i + 1) & (BLOCK_SLOTS - 1);
	R->blk_used[R->n_blk++] = i;
	R->blk[i].model_id = model_id;
	memcpy(R->blk[i].key, key, sizeof(R->blk[i].key));
	return &R->blk[i];
}

/* Held by a prefix hit's lease (section 11: never evicted then), or inserted in this drop
 * epoch with nothing dropped in this pump yet: still cached. */
static bool blk_sure(const struct run *R, const struct blk *b)
{
	return b && (b->pins || (!R->dirty && b->epoch == R->epoch));
}

/* A prefix hit's lease is taken (by 1) or ended (by -1): its run's blocks, from the last one
 * up through the parents, gain or lose a pin. Not under ttl, where held blocks still expire
 * and their keys can come back elsewhere in the tree. */
static void blk_pin(struct run *R, uint32_t model_id, uint32_t last, int by)
{
	if (R->kind == BANK_TTL0)
		return;
	for (struct blk *b = &R->blk[last];; b = blk_find(R, model_id, b->parent)) {
		if (!b || (by < 0 && !b->pins))
			broken(NULL, "the model lost a held block");
		b->pins += (uint32_t)by;
		if (!b->index)
			return;
	}
}

/* ---- the claimed keys (section 15) ---- */

static uint32_t ckey_home(uint32_t model_id, const uint64_t exact[2])
{
	return blk_home(model_id ^ 0x5a5a5a5au, exact) & (CLAIM_SLOTS - 1);
}

/* The record of model_id's input exact, or NULL when no lookup of this input claimed it. */
static struct ckey *ckey_find(const struct run *R, uint32_t model_id, const uint64_t exact[2])
{
	for (uint32_t i = ckey_home(model_id, exact);; i = (i + 1) & (CLAIM_SLOTS - 1)) {
		struct ckey *k = &R->ckey[i];
		if (!k->model_id)
			return NULL;
		if (k->model_id == model_id && key_eq(k->exact, exact))
			return k;
	}
}

static struct ckey *ckey_put(struct run *R, uint32_t model_id, const uint64_t exact[2])
{
	struct ckey *k = ckey_find(R, model_id, exact);
	if (k)
		return k;
	if (R->n_ckey >= CLAIM_SLOTS / 2)
		broken(NULL, "more claims than an input can take");
	uint32_t i = ckey_home(model_id, exact);
	while (R->ckey[i].model_id)
		i = (i + 1) & (CLAIM_SLOTS - 1);
	R->ckey_used[R->n_ckey++] = i;
	R->ckey[i].model_id = model_id;
	memcpy(R->ckey[i].exact, exact, sizeof(R->ckey[i].exact));
	return &R->ckey[i];
}

/* Leases and claims share the client's table of LBD_MAX_LEASES handles (section 11). */
static uint32_t handles_held(const struct run *R)
{
	return R->held.n + R->claims.n;
}

/* ---- the reference checks (PROTOCOL.md, Ring protocol 6, 8, 10 and 14) ---- */

static uint32_t dtype_size(uint32_t dtype)
{
	return dtype == 1 ? 4 : dtype == 2 || dtype == 3 ? 2 : 0;
}

/* Section 8: a valid shape whose element count times the element size is bytes. */
static bool shape_valid(uint32_t dtype, uint32_t ndim, const uint32_t shape[LB_MAX_NDIM],
			uint64_t bytes)
{
	unsigned __int128 n = dtype_size(dtype);
	if (!n || ndim < 1 || ndim > LB_MAX_NDIM)
		return false;
	for (uint32_t i = 0; i < LB_MAX_NDIM; i++) {
		if ((i < ndim) != (shape[i] != 0))
			return false;
		if (i < ndim)
			n *= shape[i];
	}
	return n == bytes; /* four 32-bit factors and a size of 4 fit in 128 bits */
}

static bool payload_inside(const struct run *R, const struct lb_req *r)
{
	return r->payload_off % 8 == 0 && (uint64_t)r->payload_off + r->payload_len <= R->staging_bytes;
}

/* The newest insert of this input with the same model and token hash (and layer, unless
 * layer < 0), or NULL. */
static const struct recent *recent_of(const struct run *R, uint32_t model_id, const uint64_t exact[2],
				      int layer)
{
	uint32_t n = R->n_recent < N_RECENT ? R->n_recent : N_RECENT;
	for (uint32_t back = 1; back <= n; back++) {
		const struct recent *e = &R->recent[(R->n_recent - back) % N_RECENT];
		if (e->model_id == model_id && e->exact[0] == exact[0] && e->exact[1] == exact[1] &&
		    (layer < 0 || e->layer == (uint32_t)layer))
			return e;
	}
	return NULL;
}

/* What the reference model knows of a request it let through to the operation. */
struct verdict {
	bool valid;                /* passed the checks of section 6 */
	const struct model *m;
	int must_layer;            /* lookups: a live entry at this layer or deeper exists, or -1 */
	uint32_t must, can;        /* LOOKUP_PREFIX: the run is at least must, at most can long */
	struct lb_query q;         /* lookups */
	struct lb_insert_hdr h;    /* inserts */
	struct lb_prefix_query pq; /* prefix lookups */
	struct lb_block_hdr bh;    /* block inserts */
	float thr[LBP_MAX_LAYERS]; /* lookups: q.n_thr of them */
	uint64_t keys[LB_PREFIX_MAX_BLOCKS][2]; /* prefix lookups: pq.n_keys of them */
};

static unsigned expect_lease_op(const struct run *R, const struct lb_req *r)
{
	if ((r->layer && !(r->flags & LB_REQ_AT_LAYER)) || r->model_id || r->seq_len ||
	    r->payload_len || r->payload_off || (r->opcode == LB_OP_RELEASE && r->aux))
		return S_INVAL;
	if (r->opcode == LB_OP_REPORT) {
		float drift;
		memcpy(&drift, &r->aux, sizeof(drift));
		if (!isfinite(drift) || drift < 0)
			return S_INVAL;
	}
	/* Section 15: a claim ends with RELEASE; it has nothing to REPORT. */
	if (hset_has(&R->claims, r->lease))
		return r->opcode == LB_OP_RELEASE ? S_OK : S_INVAL;
	if (!hset_has(&R->held, r->lease))
		return S_INVAL;
	/* Section 10: a prefix hit's blocks are exact; REPORT on its lease is refused, and so is
	 * one naming a layer above its entry's. */
	if (r->opcode == LB_OP_REPORT && hset_has(&R->pheld, r->lease))
		return S_INVAL;
	if ((r->flags & LB_REQ_AT_LAYER) && r->layer > R->held.val[hset_find(&R->held, r->lease)])
		return S_INVAL;
	return S_OK;
}

static unsigned expect_lookup(const struct run *R, const struct lb_req *r, struct verdict *v)
{
	/* Step 2: zero fields (aux: the single-flight bound when a flag is set), the payload in
	 * staging, the query consistent with its length. */
	bool aux_bad = r->flags & LB_REQ_SFLIGHT ? r->aux < 1 || r->aux > LB_SFLIGHT_MAX_US
						 : r->aux != 0;
	if (aux_bad || r->lease || !payload_inside(R, r) ||
	    r->payload_len < sizeof(struct lb_query) || r->payload_len > LOOKUP_MAX_PAYLOAD ||
	    (r->payload_len - sizeof(struct lb_query)) % sizeof(float))
		return S_INVAL;
	memcpy(&v->q, R->shadow + r->payload_off, sizeof(v->q));
	memcpy(v->thr, R->shadow + r->payload_off + sizeof(v->q), r->payload_len - sizeof(v->q));
	if (v->q.reserved || v->q.n_thr != (r->payload_len - sizeof(v->q)) / sizeof(float))
		return S_INVAL;
	/* Step 3. */
	v->m = model_of(r->model_id);
	if (!v->m)
		return S_SRCH;
	/* Step 4. */
	if (!r->seq_len || r->seq_len > v->m->max_seq ||
	    (r->opcode == LB_OP_LOOKUP ? r->layer >= v->m->n_layers : r->layer != 0) ||
	    (v->q.n_thr && v->q.n_thr != v->m->n_layers))
		return S_INVAL;
	for (uint32_t i = 0; i < v->q.n_thr; i++)
		if (!isfinite(v->thr[i]) || v->thr[i] < -1.0f || v->thr[i] > 1.0f)
			return S_INVAL;
	v->valid = true;
	/* Section 10: an exact token-hash match of the same length is the candidate, at distance
	 * 0, whose similarity 1 passes any threshold; unless something was dropped since it went
	 * in, or the bank expires everything, the lookup must hit. */
	const struct recent *e = NULL;
	if (!R->dirty && R->kind != BANK_TTL0) {
		uint32_t n = R->n_recent < N_RECENT ? R->n_recent : N_RECENT;
		for (uint32_t i = 0; i < n; i++) {
			const struct recent *x = &R->recent[i];
			if (x->epoch == R->epoch && x->model_id == r->model_id &&
			    x->seq_len == r->seq_len && x->exact[0] == v->q.exact[0] &&
			    x->exact[1] == v->q.exact[1] && !x->approx &&
			    (r->opcode == LB_OP_LOOKUP_DEEPEST || x->layer == r->layer) &&
			    (!e || x->layer > e->layer))
				e = x;
		}
	}
	unsigned allowed = S_NOMEM | (handles_held(R) >= LBD_MAX_LEASES ? S_BUSY : S_OK);
	if (e) {
		v->must_layer = (int)e->layer;
		return allowed;
	}
	return allowed | S_NOENT;
}

/* Room (section 12) for need bytes while keep bytes cannot be evicted for it: with no lease
 * held nothing else is pinned, and fewer than 256 entries can all be evicted within one
 * insert's rounds. */
static unsigned room(const struct run *R, uint64_t need, uint64_t keep)
{
	unsigned allowed = S_NOMEM;
	if (need + keep <= BUDGET)
		allowed |= S_OK;
	if (need + keep > BUDGET || R->held.n || R->inserts >= 255)
		allowed |= S_NOSPC;
	return allowed;
}

static unsigned expect_insert(const struct run *R, const struct lb_req *r, struct verdict *v)
{
	static const uint8_t zero[LB_INSERT_HDR_SIZE - sizeof(struct lb_insert_hdr)];
	if (r->aux || r->lease || !payload_inside(R, r) || r->payload_len < LB_INSERT_HDR_SIZE)
		return S_INVAL;
	memcpy(&v->h, R->shadow + r->payload_off, sizeof(v->h));
	if (memcmp(R->shadow + r->payload_off + sizeof(v->h), zero, sizeof(zero)))
		return S_INVAL;
	/* Section 8: the token ids, when any, one per token, after the data, in the payload. */
	uint64_t body = v->h.n_tokens ? ((v->h.bytes + 3) & ~3ull) + 4ull * v->h.n_tokens
				      : v->h.bytes;
	if (!shape_valid(v->h.dtype, v->h.ndim, v->h.shape, v->h.bytes) ||
	    v->h.bytes > r->payload_len - LB_INSERT_HDR_SIZE || v->h.approx > LBP_FP_BITS ||
	    (v->h.n_tokens && v->h.n_tokens != r->seq_len) ||
	    body > r->payload_len - LB_INSERT_HDR_SIZE)
		return S_INVAL;
	v->m = model_of(r->model_id);
	if (!v->m)
		return S_SRCH;
	/* Section 10, INSERT: token ids must hash to the exact key. */
	if (v->h.n_tokens) {
		XXH128_hash_t th = XXH3_128bits(R->shadow + r->payload_off + LB_INSERT_HDR_SIZE +
						    (body - 4ull * v->h.n_tokens),
						4ull * v->h.n_tokens);
		if (th.low64 != v->h.exact[0] || th.high64 != v->h.exact[1])
			return S_INVAL | S_NOMEM;
	}
	if (r->layer >= v->m->n_layers || !r->seq_len || r->seq_len > v->m->max_seq)
		return S_INVAL;
	v->valid = true;
	unsigned allowed = room(R, entry_need(body), 0);
	/* Section 10, INSERT step 1: an input with that token hash exists. */
	const struct recent *same = recent_of(R, r->model_id, v->h.exact, -1);
	if (same) {
		const struct recent *at_layer = recent_of(R, r->model_id, v->h.exact, r->layer);
		bool sure = !R->dirty && same->epoch == R->epoch;
		if (same->seq_len != r->seq_len)
			return sure ? S_INVAL : allowed | S_INVAL;
		/* A cached layer gives way only to a more exact insert ("No compounding"). */
		if (at_layer && at_layer->seq_len == r->seq_len && at_layer->approx <= v->h.approx)
			return sure && at_layer->epoch == R->epoch ? S_EXIST : allowed | S_EXIST;
		if (at_layer && at_layer->seq_len == r->seq_len && !(sure && at_layer->epoch == R->epoch))
			return allowed | S_EXIST;
	}
	return allowed;
}

/* The run of blocks keys[0..n) can name from block 0 (each one this input inserted, at its
 * place under the one before: *can) and the part of it certainly still cached (*must). */
static void prefix_bounds(const struct run *R, uint32_t model_id, const uint64_t (*keys)[2],
			  uint32_t n, uint32_t *must, uint32_t *can)
{
	bool sure = R->kind != BANK_TTL0; /* there, a lookup finds every block expired */

	*must = *can = 0;
	for (uint32_t i = 0; i < n; i++) {
		const struct blk *b = blk_find(R, model_id, keys[i]);
		if (!b || b->index != i || (i && !key_eq(b->parent, keys[i - 1])))
			break;
		*can = i + 1;
		sure = sure && blk_sure(R, b);
		if (sure)
			*must = i + 1;
	}
}

static unsigned expect_lookup_prefix(const struct run *R, const struct lb_req *r,
				     struct verdict *v)
{
	const size_t pq = sizeof(struct lb_prefix_query);

	/* Step 2: the zero fields, the payload in staging, n_keys consistent with its length. */
	if (r->layer || r->seq_len || r->aux || r->lease || !payload_inside(R, r) ||
	    r->payload_len < pq + KEY_BYTES || r->payload_len > PREFIX_MAX_PAYLOAD ||
	    (r->payload_len - pq) % KEY_BYTES)
		return S_INVAL;
	memcpy(&v->pq, R->shadow + r->payload_off, pq);
	if (v->pq.reserved || v->pq.n_keys != (r->payload_len - pq) / KEY_BYTES)
		return S_INVAL;
	memcpy(v->keys, R->shadow + r->payload_off + pq, (size_t)v->pq.n_keys * KEY_BYTES);
	/* Step 3, then step 4: a model with blocks. */
	v->m = model_of(r->model_id);
	if (!v->m)
		return S_SRCH;
	if (!v->m->kv_dim)
		return S_INVAL;
	v->valid = true;
	prefix_bounds(R, r->model_id, (const uint64_t(*)[2])v->keys, v->pq.n_keys, &v->must, &v->can);
	if (!v->can)
		return S_NOENT; /* an empty run: a miss, and no lease is asked for */
	unsigned allowed = S_NOMEM | (handles_held(R) >= LBD_MAX_LEASES ? S_BUSY : S_OK);
	return v->must ? allowed : allowed | S_NOENT;
}

static unsigned expect_insert_block(const struct run *R, const struct lb_req *r,
				    struct verdict *v)
{
	static const uint8_t zero[LB_INSERT_HDR_SIZE - sizeof(struct lb_block_hdr)];
	const struct lb_block_hdr *h = &v->bh;

	/* Step 2: the zero fields, the payload, the header consistent with itself (section 8). */
	if (r->layer || r->aux || r->lease || !payload_inside(R, r) ||
	    r->payload_len < LB_INSERT_HDR_SIZE)
		return S_INVAL;
	memcpy(&v->bh, R->shadow + r->payload_off, sizeof(v->bh));
	if (memcmp(R->shadow + r->payload_off + sizeof(v->bh), zero, sizeof(zero)) ||
	    (!h->key[0] && !h->key[1]) || h->reserved ||
	    (!h->index && (h->parent[0] || h->parent[1])) ||
	    !shape_valid(h->dtype, h->ndim, h->shape, h->bytes) ||
	    h->bytes > r->payload_len - LB_INSERT_HDR_SIZE)
		return S_INVAL;
	/* Step 3, then step 4: a model with blocks, and its geometry. */
	const struct model *m = v->m = model_of(r->model_id);
	if (!m)
		return S_SRCH;
	uint64_t end = ((uint64_t)h->index + 1) * m->block_tokens;
	if (!m->kv_dim || h->dtype != LB_DTYPE_F32 || h->ndim != 4 || h->shape[0] != m->kv_layers ||
	    h->shape[1] != 2 || h->shape[2] != m->block_tokens || h->shape[3] != m->kv_dim ||
	    end > m->max_seq || r->seq_len != end || h->index >= LB_PREFIX_MAX_BLOCKS)
		return S_INVAL;
	v->valid = true;
	/* Section 10, INSERT_BLOCK step 1: cached already; then the parent at its place. */
	const struct blk *self = blk_find(R, r->model_id, h->key);
	if (blk_sure(R, self))
		return S_EXIST;
	unsigned exist = self ? S_EXIST : 0;
	if (h->index) {
		const struct blk *p = blk_find(R, r->model_id, h->parent);
		if (!p || p->index != h->index - 1)
			return exist | S_NOENT;
		if (!blk_sure(R, p))
			exist |= S_NOENT;
	}
	/* Step 3: its ancestors stay (a parent is not evicted for its child), all of one size. */
	uint64_t need = entry_need(h->bytes);
	return exist | room(R, need, need * h->index);
}

/* The statuses the request may complete with, given what this input did so far. */
static unsigned expect(const struct run *R, const struct lb_req *r, struct verdict *v)
{
	/* Field by field: the rest is filled before it is read, and clearing 8 KiB per request
	 * would cost more than the daemon's work. */
	v->valid = false;
	v->m = NULL;
	v->must_layer = -1;
	v->must = v->can = 0;
	/* Step 1: flags only LOOKUP_DEEPEST's (all but AT_LAYER), LOOKUP's (ANY_LEN) and
	 * REPORT's (AT_LAYER). */
	uint8_t flags = r->opcode == LB_OP_LOOKUP_DEEPEST ? LB_REQ_SFLIGHT | LB_REQ_ANY_LEN
			: r->opcode == LB_OP_LOOKUP	  ? LB_REQ_ANY_LEN
			: r->opcode == LB_OP_REPORT	  ? LB_REQ_AT_LAYER
							  : 0;
	if ((r->flags & ~flags) || r->reserved[0] || r->reserved[1] || r->reserved2 ||
	    r->opcode < LB_OP_MIN || r->opcode > LB_OP_MAX)
		return S_INVAL;
	switch (r->opcode) {
	case LB_OP_PING:
		if (r->layer || r->model_id || r->seq_len || r->aux || r->lease || r->payload_len ||
		    r->payload_off)
			return S_INVAL;
		return S_OK;
	case LB_OP_RELEASE:
	case LB_OP_REPORT:
		return expect_lease_op(R, r);
	case LB_OP_LOOKUP_DEEPEST:
	case LB_OP_LOOKUP:
		return expect_lookup(R, r, v);
	case LB_OP_INSERT:
		return expect_insert(R, r, v);
	case LB_OP_LOOKUP_PREFIX:
		return expect_lookup_prefix(R, r, v);
	case LB_OP_INSERT_BLOCK:
		return expect_insert_block(R, r, v);
	}
	return S_INVAL; /* not reached: the opcode was checked */
}

/* ---- completions ---- */

static void mark_written(struct run *R, uint64_t off, uint64_t n)
{
	if (R->n_written < DIRTY_MAX) {
		R->written[R->n_written].lo = off;
		R->written[R->n_written++].hi = off + n;
	} else {
		uint64_t *lo = &R->written[DIRTY_MAX - 1].lo, *hi = &R->written[DIRTY_MAX - 1].hi;
		*lo = off < *lo ? off : *lo;
		*hi = off + n > *hi ? off + n : *hi;
	}
}

/* The entry header at (arena, off) of a completion or an answer, within the arena's data. */
static const struct lb_entry_hdr *entry_at(const struct run *R, const struct lb_req *r,
					   unsigned arena, uint64_t off)
{
	const struct lb_arena_map *a = &R->c->arenas[0];
	if (arena != 0 || off % 64 || off < ((const struct lb_arena_hdr *)a->base)->data_off ||
	    off > a->bytes - LB_ENTRY_HDR_SIZE)
		broken(r, "entry named at arena %u offset %llu", arena, (unsigned long long)off);
	return (const struct lb_entry_hdr *)((const uint8_t *)a->base + off);
}

/* The entry's header and data as section 9 says. Only in a pump that dropped nothing: an entry
 * dropped later in the same pump may already hold another's bytes. */
static const uint8_t *check_entry(const struct run *R, const struct lb_req *r, const struct lb_cpl *k)
{
	const struct lb_entry_hdr *e = entry_at(R, r, k->arena, k->entry_off);
	const struct lb_arena_map *a = &R->c->arenas[0];
	if (R->dirty)
		return NULL;
	/* A lookup of any length (section 16) finds other lengths only with their token ids. */
	bool other_ok = r->opcode != LB_OP_INSERT && (r->flags & LB_REQ_ANY_LEN) && e->n_tokens;
	if (e->magic != LB_ENTRY_MAGIC || e->model_id != r->model_id || e->layer != k->layer ||
	    (e->seq_len != r->seq_len && !other_ok) || (e->n_tokens && e->n_tokens != e->seq_len) ||
	    e->bytes > a->bytes - k->entry_off - LB_ENTRY_HDR_SIZE ||
	    lb_tokens_off(e->bytes) + 4ull * e->n_tokens > a->bytes - k->entry_off - LB_ENTRY_HDR_SIZE)
		broken(r, "entry header at %llu: magic %llx model %u layer %u seq_len %u bytes %llu "
		       "tokens %u", (unsigned long long)k->entry_off, (unsigned long long)e->magic,
		       e->model_id, e->layer, e->seq_len, (unsigned long long)e->bytes, e->n_tokens);
	const uint8_t *data = (const uint8_t *)e + LB_ENTRY_HDR_SIZE;
	if (XXH3_64bits(data, e->bytes) != e->checksum)
		broken(r, "entry at %llu: checksum does not match its data", (unsigned long long)k->entry_off);
	if (e->n_tokens) {
		XXH128_hash_t th = XXH3_128bits(data + lb_tokens_off(e->bytes), 4ull * e->n_tokens);
		if (th.low64 != e->key[0] || th.high64 != e->key[1])
			broken(r, "entry at %llu: its token ids do not hash to its key",
			       (unsigned long long)k->entry_off);
	}
	return data;
}

/* The block entry b says is there (sections 9 and 14): exactly that block, as inserted. */
static void check_block_entry(const struct run *R, const struct lb_req *r, const struct blk *b)
{
	const struct model *m = model_of(b->model_id);
	const struct lb_entry_hdr *e = entry_at(R, r, 0, b->off);
	const uint32_t shape[LB_MAX_NDIM] = { m->kv_layers, 2, m->block_tokens, m->kv_dim };

	if (e->magic != LB_ENTRY_MAGIC || e->model_id != b->model_id ||
	    e->layer != LB_ENTRY_LAYER_BLOCK || !key_eq(e->key, b->key) ||
	    e->bytes != block_bytes(m) || e->seq_len != (b->index + 1) * m->block_tokens ||
	    e->dtype != LB_DTYPE_F32 || e->ndim != 4 || memcmp(e->shape, shape, sizeof(shape)))
		broken(r, "block %u at %llu: magic %llx model %u layer 0x%x key %016llx%016llx "
		       "seq_len %u bytes %llu dtype %u ndim %u, not the block inserted there", b->index,
		       (unsigned long long)b->off, (unsigned long long)e->magic, e->model_id, e->layer,
		       (unsigned long long)e->key[1], (unsigned long long)e->key[0], e->seq_len,
		       (unsigned long long)e->bytes, e->dtype, e->ndim);
	if (e->checksum != b->checksum ||
	    XXH3_64bits((const uint8_t *)e + LB_ENTRY_HDR_SIZE, e->bytes) != b->checksum)
		broken(r, "block %u at %llu: its data or checksum is not what its insert sent",
		       b->index, (unsigned long long)b->off);
}

static void record_insert(struct run *R, const struct lb_req *r, const struct lb_insert_hdr *h)
{
	struct recent *e = &R->recent[R->n_recent++ % N_RECENT];
	e->model_id = r->model_id;
	e->seq_len = r->seq_len;
	e->layer = r->layer;
	e->approx = h->approx;
	memcpy(e->exact, h->exact, sizeof(e->exact));
	e->epoch = R->epoch;
	R->layer_inserts++;
}

/* A hit's new lease: non-zero, not held already, within the client's limit; held with the
 * layer of its entry (a REPORT with AT_LAYER may name at most that one). */
static void take_lease(struct run *R, const struct lb_req *r, uint64_t lease, uint32_t layer)
{
	if (!lease || hset_has(&R->held, lease))
		broken(r, "hit with lease 0x%llx: zero or already held", (unsigned long long)lease);
	if (handles_held(R) >= LBD_MAX_LEASES)
		broken(r, "a hit beyond %u leases and claims held", LBD_MAX_LEASES);
	hset_add(&R->held, lease, layer);
	if (R->n_given < MAX_GIVEN)
		R->given[R->n_given++] = lease;
}

/* Section 15, for a lookup with CLAIM answered k (a miss, or a hit whose lease it holds now):
 * a claim may be taken unless the client surely holds a live one on the input or the bank surely
 * holds the input; it must be when neither may be so and there is room for its handle. */
static void check_claim(struct run *R, const struct lb_req *r, const struct lb_cpl *k,
			const struct verdict *v)
{
	const uint64_t *exact = v->q.exact;
	struct ckey *ck = ckey_find(R, r->model_id, exact);
	bool mine = ck && ck->held, mine_live = mine && R->pump_end < ck->taken_ns + ck->aux * 1000ull;
	bool cached = false, maybe_cached = R->layer_inserts > N_RECENT;
	const struct recent *e = recent_of(R, r->model_id, exact, -1);
	if (e) {
		maybe_cached = true;
		cached = !R->dirty && R->kind != BANK_TTL0 && e->epoch == R->epoch;
	}
	bool may = !mine_live && !cached;
	bool must = may && !mine && !maybe_cached && handles_held(R) < LBD_MAX_LEASES;
	if (!k->claim) {
		if (must)
			broken(r, "no claim on an input nobody claims and the bank does not hold");
		return;
	}
	if (!may)
		broken(r, "a claim on an input %s", mine_live ? "this client claims already"
							      : "the bank holds");
	if (hset_has(&R->held, k->claim) || hset_has(&R->claims, k->claim) ||
	    handles_held(R) >= LBD_MAX_LEASES)
		broken(r, "claim handle 0x%llx: held already, or past %u handles",
		       (unsigned long long)k->claim, LBD_MAX_LEASES);
	ck = ckey_put(R, r->model_id, exact);
	ck->held++;
	ck->taken_ns = R->pump_start;
	ck->aux = r->aux;
	hset_add(&R->claims, k->claim, (uint32_t)(ck - R->ckey));
	if (R->n_given < MAX_GIVEN)
		R->given[R->n_given++] = k->claim;
}

static void check_lookup_done(struct run *R, const struct lb_req *r, const struct lb_cpl *k,
			      const struct verdict *v)
{
	const struct model *m = v->m;
	if (k->status == 0 || k->status == -ENOENT)
		R->layer_lookups[m - models] += r->opcode == LB_OP_LOOKUP ? 1 : m->n_layers;
	if (k->status == -ENOENT)
		R->misses++;
	if (k->status == -ENOENT && (r->flags & LB_REQ_CLAIM))
		check_claim(R, r, k, v);
	if (k->status)
		return;
	R->hits++;
	if (k->layer >= m->n_layers || (r->opcode == LB_OP_LOOKUP && k->layer != r->layer))
		broken(r, "hit at layer %u", k->layer);
	/* The daemon's threshold: TAU, or with adaptive ones anything down to the loosest. */
	double tau = TAU;
	if (v->q.n_thr)
		tau = v->thr[k->layer];
	else if (R->kind == BANK_ADAPT)
		tau = lbp_fp_similarity((uint32_t)LBD_ADAPT_MAX_RADIUS);
	if (k->hamming > LBP_FP_BITS || lbp_fp_similarity(k->hamming) < tau)
		broken(r, "hit at hamming %u below the threshold %g of layer %u", k->hamming, tau,
		       k->layer);
	if (v->must_layer >= 0 && (int)k->layer < v->must_layer)
		broken(r, "exact match hit at layer %u, want >= %d", k->layer, v->must_layer);
	/* An exact-hash hit is as far as its entry's approx: 0 only for an exact entry. */
	const struct recent *at = recent_of(R, r->model_id, v->q.exact, (int)k->layer);
	if (v->must_layer >= 0 && at && at->epoch == R->epoch && !R->dirty && k->hamming != at->approx)
		broken(r, "exact match hit at layer %u hamming %u, want its approx %u", k->layer,
		       k->hamming, at->approx);
	take_lease(R, r, k->lease, k->layer);
	check_entry(R, r, k);
	if (r->flags & LB_REQ_CLAIM)
		check_claim(R, r, k, v);
}

static void check_insert_done(struct run *R, const struct lb_req *r, const struct lb_cpl *k,
			      const struct verdict *v)
{
	if (k->status)
		return;
	R->inserts++;
	if (k->layer != r->layer)
		broken(r, "insert completed at layer %u", k->layer);
	const uint8_t *data = check_entry(R, r, k);
	const struct lb_entry_hdr *e = entry_at(R, r, k->arena, k->entry_off);
	if (data && (e->dtype != v->h.dtype || e->ndim != v->h.ndim || e->bytes != v->h.bytes ||
		     e->approx != v->h.approx || e->n_tokens != v->h.n_tokens ||
		     memcmp(e->shape, v->h.shape, sizeof(e->shape)) || !key_eq(e->key, v->h.exact) ||
		     memcmp(data, R->shadow + r->payload_off + LB_INSERT_HDR_SIZE, v->h.bytes) ||
		     memcmp(data + lb_tokens_off(v->h.bytes),
			    R->shadow + r->payload_off + LB_INSERT_HDR_SIZE + lb_tokens_off(v->h.bytes),
			    4ull * v->h.n_tokens)))
		broken(r, "inserted entry differs from the request's header, data or tokens");
	R->approx_inserts += v->h.approx > 0;
	record_insert(R, r, &v->h);
}

/*
 * A prefix hit: count within the run the model allows, one new lease, and the answers the
 * daemon wrote over the keys (section 8), which the shadow gets as the model expects them (the
 * pump's end compares them with what is there). held: the lease is still held when the pump
 * ends, so every block of the run is still there as inserted, whatever the pump dropped.
 */
static void check_prefix_done(struct run *R, const struct lb_req *r, const struct lb_cpl *k,
			      const struct verdict *v, bool held)
{
	if (k->status == -ENOENT)
		R->prefix_misses++;
	if (k->status)
		return;
	if (k->count < v->must || k->count > v->can || !k->count)
		broken(r, "prefix hit of %u blocks, the model says %u..%u of %u keys", k->count,
		       v->must, v->can, v->pq.n_keys);
	take_lease(R, r, k->lease, 0);
	R->prefix_hits++;
	R->blocks_served += k->count;
	uint64_t at = r->payload_off + sizeof(struct lb_prefix_query);
	for (uint32_t i = 0; i < k->count; i++) {
		const struct blk *b = blk_find(R, r->model_id, v->keys[i]);
		if (!b) /* within v->can: the model inserted every one of them */
			broken(r, "prefix hit of block %u, which the model never inserted", i);
		struct lb_prefix_block a = { .entry_off = b->off, .arena = 0 };
		memcpy(R->shadow + at + (uint64_t)i * sizeof(a), &a, sizeof(a));
		if (held)
			check_block_entry(R, r, b);
	}
	mark_written(R, at, (uint64_t)k->count * sizeof(struct lb_prefix_block));
	uint32_t last = (uint32_t)(blk_find(R, r->model_id, v->keys[k->count - 1]) - R->blk);
	hset_add(&R->pheld, k->lease, last);
	blk_pin(R, r->model_id, last, 1);
}

static void check_block_done(struct run *R, const struct lb_req *r, const struct lb_cpl *k,
			     const struct verdict *v)
{
	if (k->status)
		return;
	R->inserts++;
	R->block_inserts++;
	entry_at(R, r, k->arena, k->entry_off);
	struct blk *b = blk_put(R, r->model_id, v->bh.key);
	memcpy(b->parent, v->bh.parent, sizeof(b->parent));
	b->index = v->bh.index;
	b->checksum = XXH3_64bits(R->shadow + r->payload_off + LB_INSERT_HDR_SIZE, v->bh.bytes);
	b->off = k->entry_off;
	b->epoch = R->epoch;
	if (!R->dirty)
		check_block_entry(R, r, b);
}

/* Section 7: every field not listed for the opcode and status is 0. */
static void check_fields(const struct lb_req *r, const struct lb_cpl *k)
{
	bool ok = k->status == 0, lookup = r->opcode == LB_OP_LOOKUP ||
					    r->opcode == LB_OP_LOOKUP_DEEPEST;
	bool hit = ok && lookup, phit = ok && r->opcode == LB_OP_LOOKUP_PREFIX;
	bool ins = ok && r->opcode == LB_OP_INSERT, bins = ok && r->opcode == LB_OP_INSERT_BLOCK;

	if (k->reserved1)
		broken(r, "completion with reserved fields set");
	/* Section 15: a claim only for CLAIM's miss or hit; never held nor BUSY, as the client is
	 * pumped and alone. */
	if ((k->claim && (!(r->flags & LB_REQ_CLAIM) || (k->status && k->status != -ENOENT))) ||
	    k->waited_us || k->sflight)
		broken(r, "status %d with claim %llx waited_us %u sflight %u", k->status,
		       (unsigned long long)k->claim, k->waited_us, k->sflight);
	if ((!hit && !phit && k->lease) || (!hit && k->hamming) || (!phit && k->count) ||
	    (!hit && !ins && k->layer) || (!hit && !ins && !bins && (k->arena || k->entry_off)))
		broken(r, "status %d with fields set: arena %u layer %u lease %llx off %llu hamming %u "
		       "count %u", k->status, k->arena, k->layer, (unsigned long long)k->lease,
		       (unsigned long long)k->entry_off, k->hamming, k->count);
}

static void check_completion(struct run *R, const struct lb_req *r, const struct lb_cpl *k,
			     bool lease_kept)
{
	static struct verdict v;
	unsigned allowed = expect(R, r, &v), got_bit = status_bit(k->status);

	if (k->user_data != r->user_data || k->opcode != r->opcode)
		broken(r, "completion out of order: user_data %llu opcode %u",
		       (unsigned long long)k->user_data, k->opcode);
	if (!(allowed & got_bit))
		broken(r, "status %d, allowed mask 0x%x (ok 1 noent 2 srch 4 inval 8 exist 16 nospc 32 "
		       "busy 64 nomem 128)", k->status, allowed);
	check_fields(r, k);
	if (v.valid && v.m)
		R->touched[v.m - models] = true;
	switch (r->opcode) {
	case LB_OP_LOOKUP:
	case LB_OP_LOOKUP_DEEPEST:
		check_lookup_done(R, r, k, &v);
		return;
	case LB_OP_INSERT:
		check_insert_done(R, r, k, &v);
		return;
	case LB_OP_LOOKUP_PREFIX:
		check_prefix_done(R, r, k, &v, lease_kept);
		return;
	case LB_OP_INSERT_BLOCK:
		check_block_done(R, r, k, &v);
		return;
	case LB_OP_RELEASE:
	case LB_OP_REPORT:
		if (k->status)
			return;
		if (r->opcode == LB_OP_RELEASE && hset_has(&R->claims, r->lease)) {
			int64_t at = hset_find(&R->claims, r->lease);
			R->ckey[R->claims.val[at]].held--;
			hset_del(&R->claims, r->lease);
			return;
		}
		if (!hset_has(&R->held, r->lease))
			broken(r, "lease op succeeded on a lease not held");
		if (r->opcode == LB_OP_RELEASE) {
			int64_t at = hset_find(&R->pheld, r->lease);
			hset_del(&R->held, r->lease);
			if (at >= 0) { /* the run's one lease: every block's hold ends */
				blk_pin(R, prefix_model(), R->pheld.val[at], -1);
				hset_del(&R->pheld, r->lease);
			}
		} else {
			/* Only a drift of the entry's own layer may invalidate it. */
			float drift;
			memcpy(&drift, &r->aux, sizeof(drift));
			R->reports_over += drift > DRIFT_MAX &&
					   (!(r->flags & LB_REQ_AT_LAYER) ||
					    r->layer == R->held.val[hset_find(&R->held, r->lease)]);
		}
		return;
	}
}

/* ---- the ring ---- */

static void check_stats(struct run *R)
{
	struct lbp_stats_reply st;
	lbip_bank_stats(R->l, &st);
	uint64_t drops = st.evictions + st.expirations + st.invalidations;
	if (st.leases != R->held.n || st.hits != R->hits || st.misses != R->misses ||
	    st.inserts != R->inserts)
		broken(NULL, "STATS leases %llu hits %llu misses %llu inserts %llu, completions say "
		       "%u %llu %llu %llu", (unsigned long long)st.leases, (unsigned long long)st.hits,
		       (unsigned long long)st.misses, (unsigned long long)st.inserts, R->held.n,
		       (unsigned long long)R->hits, (unsigned long long)R->misses,
		       (unsigned long long)R->inserts);
	if (st.prefix_hits != R->prefix_hits || st.prefix_misses != R->prefix_misses ||
	    st.blocks_served != R->blocks_served)
		broken(NULL, "STATS prefix hits %llu misses %llu blocks served %llu, completions say "
		       "%llu %llu %llu", (unsigned long long)st.prefix_hits,
		       (unsigned long long)st.prefix_misses, (unsigned long long)st.blocks_served,
		       (unsigned long long)R->prefix_hits, (unsigned long long)R->prefix_misses,
		       (unsigned long long)R->blocks_served);
	/* Blocks count in inserts and drops, not in entries (STATS_REPLY, 4.5). */
	if (drops > st.inserts || st.entries + st.blocks != st.inserts - drops ||
	    st.blocks > R->block_inserts || st.entries > st.inserts - R->block_inserts ||
	    (!drops && st.blocks != R->block_inserts))
		broken(NULL, "STATS entries %llu blocks %llu, inserts %llu (%llu blocks), dropped %llu",
		       (unsigned long long)st.entries, (unsigned long long)st.blocks,
		       (unsigned long long)st.inserts, (unsigned long long)R->block_inserts,
		       (unsigned long long)drops);
	if (st.bytes_budget != BUDGET || st.bytes_used > st.bytes_budget)
		broken(NULL, "STATS bytes_used %llu of budget %llu", (unsigned long long)st.bytes_used,
		       (unsigned long long)st.bytes_budget);
	if (st.invalidations > R->reports_over + R->approx_inserts ||
	    (R->kind != BANK_TTL0 && st.expirations))
		broken(NULL, "STATS invalidations %llu (reports above the limit %llu, approximate "
		       "inserts %llu), expirations %llu", (unsigned long long)st.invalidations,
		       (unsigned long long)R->reports_over, (unsigned long long)R->approx_inserts,
		       (unsigned long long)st.expirations);
}

static void check_store(struct run *R)
{
	char why[160] = "";
	if (lbd_store_check(lbip_bank_store(R->l), why, sizeof(why)) < 0)
		broken(NULL, "store invariant broken: %s", why);
}

/* Whether a RELEASE of lease succeeds among the pump's completions after the i-th of n: then
 * what it held may be gone by the pump's end. */
static bool released_after(const struct run *R, uint64_t lease, uint32_t i, uint32_t n)
{
	for (uint32_t j = i + 1; j < n; j++) {
		const struct lb_req *r = &R->pending[(R->pend_head + j) % PENDING_CAP];
		if (r->opcode == LB_OP_RELEASE && got[j].status == 0 && r->lease == lease)
			return true;
	}
	return false;
}

/* The payloads the daemon served in this pump are in staging as the shadow has them: answers
 * where the model expects them, nothing else written (of an insert's, its header area). */
static void check_staging(const struct run *R, uint32_t n)
{
	for (uint32_t j = 0; j < n; j++) {
		const struct lb_req *r = &R->pending[(R->pend_head + j) % PENDING_CAP];
		bool ins = r->opcode == LB_OP_INSERT || r->opcode == LB_OP_INSERT_BLOCK;
		uint64_t cap = ins ? LB_INSERT_HDR_SIZE : LOOKUP_MAX_PAYLOAD;
		uint64_t len = r->payload_len < cap ? r->payload_len : cap;
		if (!payload_inside(R, r))
			continue;
		for (uint64_t at = r->payload_off; at < r->payload_off + len; at += KEY_BYTES) {
			uint64_t k = r->payload_off + len - at < KEY_BYTES ? r->payload_off + len - at
									  : KEY_BYTES;
			if (!memcmp(R->staging + at, R->shadow + at, k))
				continue;
			uint64_t w[2][2] = { { 0 } };
			memcpy(w[0], R->staging + at, k);
			memcpy(w[1], R->shadow + at, k);
			broken(r, "staging at %llu holds %016llx %016llx, the model expects %016llx %016llx "
			       "(a prefix hit's answer, or bytes nobody should have written)",
			       (unsigned long long)at, (unsigned long long)w[0][0],
			       (unsigned long long)w[0][1], (unsigned long long)w[1][0],
			       (unsigned long long)w[1][1]);
		}
	}
}

/* Serve the ring, then check every new completion, in order, against what was pushed. */
static void pump(struct run *R, bool take)
{
	struct lb_ring_view *cpl = &R->c->cpl;
	struct lbp_stats_reply st;
	uint32_t n = 0;

	R->pump_start = lb_now_ns();
	R->c->pump(R->c->pump_ctx);
	R->pump_end = lb_now_ns();
	lbip_bank_stats(R->l, &st);
	uint64_t drops = st.evictions + st.expirations + st.invalidations;
	R->dirty = drops != R->drops_seen;
	R->drops_seen = drops;
	while (R->seen + n - cpl->local <= cpl->mask &&
	       atomic_load_explicit(lb_ring_slot_stamp(cpl, R->seen + n), memory_order_acquire) ==
		       lb_ring_stamp(R->seen + n)) {
		if (n == R->pend_n)
			broken(NULL, "a completion for no request");
		memcpy(&got[n], cpl->entries + (size_t)((R->seen + n) & cpl->mask) * LB_RING_ENTRY_SIZE,
		       sizeof(got[n]));
		n++;
	}
	for (uint32_t j = 0; j < n; j++) {
		const struct lb_req *r = &R->pending[(R->pend_head + j) % PENDING_CAP];
		bool phit = r->opcode == LB_OP_LOOKUP_PREFIX && got[j].status == 0;
		check_completion(R, r, &got[j], phit && !released_after(R, got[j].lease, j, n));
	}
	check_staging(R, n);
	R->pend_head = (R->pend_head + n) % PENDING_CAP;
	R->pend_n -= n;
	R->seen += n;
	/* Back-pressure (section 5): a request left waiting means the completion ring is full. */
	if (R->pend_n && R->seen - cpl->local != cpl->mask + 1)
		broken(&R->pending[R->pend_head], "request not served with room for its completion");
	if (R->dirty)
		R->epoch++; /* what this pump inserted may be gone already */
	R->dirty = false;
	check_stats(R);
	/* A pump that served nothing changed nothing: the walk over the store is skipped. */
	if (n)
		check_store(R);
	if (take)
		while (cpl->local != R->seen)
			lb_ring_sc_release(cpl);
}

static void push(struct run *R, const struct lb_req *r)
{
	/* A full ring: serve it. When completions were left in their ring the first pump only
	 * takes them (the daemon serves nobody whose completion ring is full); the second serves. */
	for (int i = 0; !lb_ring_sp_push(&R->c->req, r); i++) {
		if (i == 2)
			broken(r, "request ring still full after the daemon served it");
		pump(R, true);
	}
	if (R->pend_n == PENDING_CAP)
		broken(r, "more requests in flight than the ring holds");
	R->pending[(R->pend_head + R->pend_n++) % PENDING_CAP] = *r;
	if (r != &R->last) /* REPEAT pushes the last one again */
		R->last = *r;
	R->have_last = true;
}

static void stage(struct run *R, uint64_t off, const uint8_t *p, size_t n)
{
	if (off >= R->staging_bytes || !n)
		return;
	if (n > R->staging_bytes - off)
		n = (size_t)(R->staging_bytes - off);
	memcpy(R->c->staging + off, p, n);
	memcpy(R->shadow + off, p, n);
	mark_written(R, off, n);
}

/* ---- input ---- */

struct input {
	const uint8_t *p;
	size_t n;
};

/* The next k bytes, zero-filled past the end. */
static void take(struct input *in, void *out, size_t k)
{
	size_t have = k < in->n ? k : in->n;
	memcpy(out, in->p, have);
	memset((uint8_t *)out + have, 0, k - have);
	in->p += have;
	in->n -= have;
}

static uint32_t take_le(struct input *in, unsigned bytes)
{
	uint8_t b[4] = { 0 };
	take(in, b, bytes);
	return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

/* n bytes of the input (as many as are left), without copying. */
static const uint8_t *take_span(struct input *in, size_t *n)
{
	const uint8_t *p = in->p;
	*n = *n < in->n ? *n : in->n;
	in->p += *n;
	in->n -= *n;
	return p;
}

/* Push one of the input's requests, while under MAX_REQUESTS. */
static void push_input(struct run *R, const struct lb_req *r)
{
	if (R->n_requests < MAX_REQUESTS) {
		R->n_requests++;
		push(R, r);
	}
}

static void request(struct run *R, struct input *in, bool lease_ref)
{
	struct lb_req r;
	uint8_t k = 0;
	size_t n;

	if (lease_ref)
		take(in, &k, 1);
	memset(&r, 0, sizeof(r));
	take(in, &r, LB_RING_STAMP_OFF);
	if (lease_ref && R->n_given)
		r.lease = R->given[k % R->n_given];
	n = take_le(in, 2);
	const uint8_t *p = take_span(in, &n);
	stage(R, r.payload_off, p, n);
	push_input(R, &r);
}

/* ---- the end of an input ---- */

/* Every request served and checked, then every lease released through the ring: each must
 * succeed, a prefix hit's one RELEASE for all its blocks. */
static void release_everything(struct run *R)
{
	for (unsigned i = 0; R->pend_n; i++) {
		if (i > PENDING_CAP)
			broken(&R->pending[R->pend_head], "requests never served");
		pump(R, true);
	}
	pump(R, true);
	if (R->pend_n || R->seen != R->c->cpl.local)
		broken(NULL, "completions left over");
	static uint64_t out[LBD_MAX_LEASES];
	uint32_t n = 0;
	for (uint32_t i = 0; R->held.n && i < HELD_SLOTS; i++)
		if (R->held.slot[i])
			out[n++] = R->held.slot[i];
	for (uint32_t i = 0; R->claims.n && i < HELD_SLOTS; i++)
		if (R->claims.slot[i])
			out[n++] = R->claims.slot[i];
	for (uint32_t i = 0; i < n; i++) {
		struct lb_req r = { .opcode = LB_OP_RELEASE, .lease = out[i], .user_data = i };
		push(R, &r);
	}
	while (R->pend_n)
		pump(R, true);
	if (R->held.n || R->pheld.n || R->claims.n)
		broken(NULL, "%u leases and %u claims held after releasing all", R->held.n,
		       R->claims.n);
	if (lbd_store_claims(lbip_bank_store(R->l)))
		broken(NULL, "the store keeps claims after all were released");
	check_store(R);
}

/* The per-layer counters add up to the totals (nothing is leased: no dropped entry still holds
 * bytes), prefix blocks aside. A model no request reached is skipped, reading the 1024 layers of
 * one would cost more than the rest of a small input: its counters show up as a difference from
 * the totals all the same. */
static void check_layer_sums(struct run *R)
{
	struct lbp_stats_reply st;
	static struct lbp_model_stats_reply ms;
	uint64_t entries = 0, bytes = 0, inserts = 0, evictions = 0;

	lbip_bank_stats(R->l, &st);
	for (size_t i = 0; i < N_MODELS; i++) {
		uint64_t looked = 0;
		if (!R->touched[i])
			continue;
		for (uint32_t first = 0; first < models[i].n_layers; first += ms.n) {
			if (lbip_bank_model_stats(R->l, models[i].id, first, &ms) < 0 || !ms.n)
				broken(NULL, "no stats for %s from layer %u", models[i].name, first);
			for (uint32_t j = 0; j < ms.n; j++) {
				const struct lbp_layer_stats *s = &ms.layers[j];
				entries += s->entries;
				bytes += s->bytes;
				inserts += s->inserts;
				evictions += s->evictions;
				looked += s->hits + s->misses;
				if (s->leases)
					broken(NULL, "%s layer %u: %llu leases after all were released",
					       models[i].name, first + j, (unsigned long long)s->leases);
			}
		}
		if (looked != R->layer_lookups[i])
			broken(NULL, "%s: per-layer hits + misses %llu, lookups say %llu", models[i].name,
			       (unsigned long long)looked, (unsigned long long)R->layer_lookups[i]);
	}
	/* Every block is of the one kv model's size. Dropped blocks are evictions but under ttl,
	 * where some may have expired instead. */
	uint64_t block_drops = R->block_inserts - st.blocks;
	uint64_t blocks_bytes = st.blocks * entry_need(block_bytes(&models[KV_MODEL]));
	bool ev = R->kind == BANK_TTL0 ? evictions <= st.evictions &&
						 st.evictions <= evictions + block_drops
				       : evictions + block_drops == st.evictions;
	if (st.leases || entries != st.entries || bytes + blocks_bytes != st.bytes_used ||
	    inserts + R->block_inserts != st.inserts || !ev)
		broken(NULL, "per-layer sums (entries %llu bytes %llu inserts %llu evictions %llu) and "
		       "blocks (%llu inserted, %llu cached) vs STATS (%llu %llu %llu %llu, leases %llu)",
		       (unsigned long long)entries, (unsigned long long)bytes,
		       (unsigned long long)inserts, (unsigned long long)evictions,
		       (unsigned long long)R->block_inserts, (unsigned long long)st.blocks,
		       (unsigned long long)st.entries, (unsigned long long)st.bytes_used,
		       (unsigned long long)st.inserts, (unsigned long long)st.evictions,
		       (unsigned long long)st.leases);
}

/* With no lease held nothing pins anything (a RELEASE ended each hit's hold, a prefix hit's on
 * every block): lowering the budget to one byte evicts every entry and block, leaves first. */
static void check_all_evictable(struct run *R)
{
	struct lbd_store *store = lbip_bank_store(R->l);
	struct lbd_store_cfg cfg, tiny;
	struct lbp_stats_reply st;

	lbd_store_get_cfg(store, &cfg);
	tiny = cfg;
	tiny.budget = 1;
	lbd_store_configure(store, &tiny);
	lbip_bank_stats(R->l, &st);
	if (st.entries || st.blocks || st.bytes_used)
		broken(NULL, "with no lease held, a budget of one byte leaves %llu entries, %llu "
		       "blocks, %llu bytes", (unsigned long long)st.entries,
		       (unsigned long long)st.blocks, (unsigned long long)st.bytes_used);
	check_store(R);
	lbd_store_configure(store, &cfg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct run R;
	struct input in = { data, size };
	uint8_t lead = 0;

	if (!size)
		return 0;
	take(&in, &lead, 1);
	enum bank_kind kind = (enum bank_kind)(lead % N_BANKS);
	if (!banks[kind])
		banks[kind] = bank_new(kind);

	memset(&R, 0, sizeof(R));
	R.l = banks[kind];
	R.c = lbip_bank_client(R.l);
	R.kind = kind;
	R.staging = R.c->staging;
	R.staging_bytes = R.c->layout.staging_bytes;
	static uint8_t *shadow;
	if (!shadow && !(shadow = calloc(1, R.staging_bytes)))
		broken(NULL, "no memory for the shadow of staging");
	R.shadow = shadow;
	R.seen = R.c->cpl.local;
	R.pending = pending_reqs;
	R.given = given_leases;
	R.held.slot = held_leases;
	R.held.val = held_layers;
	R.pheld.slot = prefix_leases;
	R.pheld.val = prefix_last;
	R.blk = blocks;
	R.blk_used = blocks_used;
	R.claims.slot = claim_handles;
	R.claims.val = claim_keys;
	R.ckey = ckeys;
	R.ckey_used = ckeys_used;

	while (in.n) {
		uint8_t op = 0;
		take(&in, &op, 1);
		switch (op & 7) {
		case 0:
			request(&R, &in, false);
			break;
		case 1:
			request(&R, &in, true);
			break;
		case 2: {
			uint32_t off = take_le(&in, 4);
			size_t n = take_le(&in, 2);
			const uint8_t *p = take_span(&in, &n);
			stage(&R, off % R.staging_bytes, p, n);
			break;
		}
		case 4: {
			uint32_t n = take_le(&in, 2);
			for (uint32_t i = 0; R.have_last && i < n && R.n_requests < MAX_REQUESTS; i++)
				push_input(&R, &R.last);
			break;
		}
		default:
			pump(&R, !(op & 8));
			break;
		}
	}
	release_everything(&R);
	check_layer_sums(&R);
	check_all_evictable(&R);

	if (lbip_bank_clear(R.l) < 0)
		broken(NULL, "cannot clear the bank");
	for (uint32_t i = 0; i < R.n_written; i++) {
		memset(R.c->staging + R.written[i].lo, 0, R.written[i].hi - R.written[i].lo);
		memset(R.shadow + R.written[i].lo, 0, R.written[i].hi - R.written[i].lo);
	}
	for (uint32_t i = 0; i < R.n_blk; i++)
		memset(&R.blk[R.blk_used[i]], 0, sizeof(R.blk[0]));
	for (uint32_t i = 0; i < R.n_ckey; i++)
		memset(&R.ckey[R.ckey_used[i]], 0, sizeof(R.ckey[0]));
	return 0;
}
