/* layerbankd store: banks of per-layer entries keyed by input, lookups (exact hash, then the
 * nearest SimHash), inserts with room made by the eviction policy, leases, counters. */
#include "store.h"

#include <errno.h>
#include <immintrin.h>
#include <math.h>
#include <stdatomic.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "alloc.h"
#include "exactmap.h"
#include "fpindex.h"
#include "log.h"

#define NONE UINT32_MAX
#define SAMPLE 16u           /* entries looked at per eviction (exact below this many) */
#define MAX_EVICT_ROUNDS 256 /* per insert, before giving up with -ENOSPC */
#define NT_COPY_MIN (64u << 10) /* copies this large bypass the cache: read by other cores */
#define RNG_SEED 0x9e3779b97f4a7c15ull /* eviction sampling: the same in every store */

/* A cached layer of an input. Slot ids are stable; gen changes on reuse. */
struct entry {
	uint32_t input;
	uint32_t gen;
	uint32_t leases;
	uint32_t live_pos;  /* in st->live, while evictable or leased and published */
	uint64_t off;       /* of struct lb_entry_hdr in its arena */
	uint64_t bytes;     /* allocated */
	uint64_t created_ns, last_ns;
	double score;       /* decay policy: hits, decayed to score_ns */
	uint64_t score_ns;
	uint16_t layer;
	uint8_t arena;
	uint8_t state;      /* FREE, PENDING (being copied), LIVE, DOOMED (out of the index) */
	uint32_t next_free;
	uint32_t account;   /* the inserting client's account charged with bytes; 0: none */
};
enum { E_FREE = 0, E_PENDING, E_LIVE, E_DOOMED };

/* A client's insert account (client-insert-bytes): the arena bytes its entries hold, from the
 * insert until the memory is freed (evicted, expired, invalidated or flushed, and the last
 * lease on it ended). It outlives the client: entries stay after their inserter left and give
 * their bytes back as they go; the account goes with the last of them. */
struct account {
	uint64_t used;      /* sum of bytes of the entries charged to it */
	uint64_t limit;     /* 0: no limit */
	uint32_t next_free;
	uint8_t open;       /* its client is still connected */
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

struct bank {
	struct lbp_register_model desc;
	struct lbd_fpindex *fps;
	struct lbd_exactmap *exact;
	struct lbp_layer_stats *layer; /* [n_layers] */
	double *tau;                   /* [n_layers]: the layer's own threshold, NAN: cfg.tau */
	uint32_t max_d_default;        /* radius for the thresholds in effect: the loosest layer's */
	uint32_t good_d_default;       /* and the tightest layer's: within it every layer's is met */
	bool retired;                  /* lbd_store_drop_model: answers as no model; its memory
					* stays for inserts that were copying when it went */
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
	uint32_t *live;       /* LIVE or DOOMED-but-leased entries, for sampling */
	uint32_t n_live, live_cap;
	uint32_t n_pending;   /* PENDING entries: live_cap > n_live + n_pending (live_reserve) */
	uint64_t rng;
	uint64_t data_bytes;  /* the arenas' data areas: the largest budget */
	uint64_t pinned;      /* bytes no eviction can free: leased LIVE and PENDING entries */
	struct account *acct; /* [acct_cap], id = slot + 1 */
	uint32_t acct_cap, acct_free;
	struct lbp_stats_reply c; /* data-plane counters */
};

/* Every taking of the store lock goes through here, so that a long holder that lets the lock go
 * (FLUSH) can see whether another thread got it. */
static void store_lock(struct lbd_store *st)
{
	pthread_mutex_lock(&st->lock);
	/* Only the holder writes it: a plain load and store, not a locked read-modify-write on
	 * every request. */
	atomic_store_explicit(&st->acquired,
			      atomic_load_explicit(&st->acquired, memory_order_relaxed) + 1,
			      memory_order_relaxed);
}

const char *lbd_policy_name(enum lbd_policy p)
{
	static const char *const names[] = { "lru", "decay", "ttl" };
	return (unsigned)p < 3 ? names[p] : "?";
}

int lbd_policy_parse(const char *name, enum lbd_policy *out)
{
	for (int p = 0; p < 3; p++)
		if (strcmp(name, lbd_policy_name((enum lbd_policy)p)) == 0) {
			*out = (enum lbd_policy)p;
			return 0;
		}
	return -1;
}

static uint64_t rnd(struct lbd_store *st)
{
	st->rng ^= st->rng << 13;
	st->rng ^= st->rng >> 7;
	st->rng ^= st->rng << 17;
	return st->rng;
}

/* ---- slot tables ---- */

static int grow(void **arr, uint32_t *cap, size_t elem, uint32_t *free_head, size_t next_off)
{
	uint32_t old = *cap, ncap = old ? old * 2 : 1024;
	char *p = realloc(*arr, (size_t)ncap * elem);
	if (!p)
		return -ENOMEM;
	memset(p + (size_t)old * elem, 0, (size_t)(ncap - old) * elem);
	/* Thread the new slots onto the free list, lowest first. */
	for (uint32_t i = ncap; i-- > old;) {
		memcpy(p + (size_t)i * elem + next_off, free_head, sizeof(uint32_t));
		*free_head = i;
	}
	*arr = p;
	*cap = ncap;
	return 0;
}

static uint32_t entry_get(struct lbd_store *st)
{
	if (st->e_free == NONE &&
	    grow((void **)&st->e, &st->e_cap, sizeof(*st->e), &st->e_free, offsetof(struct entry, next_free)))
		return NONE;
	uint32_t id = st->e_free;
	struct entry *e = &st->e[id];
	uint32_t gen = e->gen;
	st->e_free = e->next_free;
	memset(e, 0, sizeof(*e));
	e->gen = gen + 1;
	e->live_pos = NONE;
	return id;
}

static void entry_put(struct lbd_store *st, uint32_t id)
{
	struct entry *e = &st->e[id];
	e->state = E_FREE;
	e->gen++;
	e->next_free = st->e_free;
	st->e_free = id;
}

/* Room in live[] for every entry placed so far (live, leased or pending), so that an entry
 * going live later cannot fail for want of memory. @return 0, -ENOMEM. */
static int live_reserve(struct lbd_store *st)
{
	if (st->n_live + st->n_pending < st->live_cap)
		return 0;
	uint32_t ncap = st->live_cap ? st->live_cap * 2 : 1024;
	uint32_t *p = realloc(st->live, sizeof(*p) * ncap);
	if (!p)
		return -ENOMEM;
	st->live = p;
	st->live_cap = ncap;
	return 0;
}

/* Called only for an entry placed by entry_place, which reserved its room. */
static void live_add(struct lbd_store *st, uint32_t id)
{
	if (st->n_live >= st->live_cap)
		abort(); /* live_reserve was skipped */
	st->e[id].live_pos = st->n_live;
	st->live[st->n_live++] = id;
}

static void live_del(struct lbd_store *st, uint32_t id)
{
	uint32_t pos = st->e[id].live_pos, last = st->live[--st->n_live];
	st->live[pos] = last;
	st->e[last].live_pos = pos;
	st->e[id].live_pos = NONE;
}

/* ---- insert accounts ---- */

static struct account *account_of(struct lbd_store *st, uint32_t id)
{
	return id && id <= st->acct_cap && st->acct[id - 1].in_use ? &st->acct[id - 1] : NULL;
}

static void account_put(struct lbd_store *st, uint32_t id)
{
	struct account *a = &st->acct[id - 1];
	a->in_use = 0;
	a->next_free = st->acct_free;
	st->acct_free = id - 1;
}

/* Give an entry's bytes back to the account that paid for them, exactly once. */
static void uncharge(struct lbd_store *st, struct entry *e)
{
	struct account *a = account_of(st, e->account);

	if (!e->account)
		return;
	if (!a || a->used < e->bytes)
		abort(); /* every charge is given back once, to a live account */
	a->used -= e->bytes;
	if (!a->open && a->used == 0)
		account_put(st, e->account);
	e->account = 0;
}

/* ---- inputs ---- */

static uint32_t input_new(struct lbd_store *st, uint32_t bank, uint32_t seq_len,
			  const uint64_t fp[LB_FP_WORDS], const uint64_t exact[2])
{
	struct bank *b = &st->banks[bank];
	if (st->in_free == NONE &&
	    grow((void **)&st->in, &st->in_cap, sizeof(*st->in), &st->in_free, offsetof(struct input, next_free)))
		return NONE;
	uint32_t id = st->in_free;
	struct input *in = &st->in[id];
	uint32_t *layer = malloc(sizeof(uint32_t) * b->desc.n_layers);
	if (!layer)
		return NONE;
	if (lbd_exactmap_insert(b->exact, exact, id) < 0) {
		free(layer);
		return NONE;
	}
	if (lbd_fpindex_insert(b->fps, fp, id) < 0) {
		lbd_exactmap_remove(b->exact, exact);
		free(layer);
		return NONE;
	}
	st->in_free = in->next_free;
	memset(in, 0, sizeof(*in));
	memcpy(in->fp, fp, sizeof(in->fp));
	memcpy(in->exact, exact, sizeof(in->exact));
	in->bank = bank;
	in->seq_len = seq_len;
	in->layer = layer;
	for (uint32_t l = 0; l < b->desc.n_layers; l++)
		layer[l] = NONE;
	in->used = 1;
	return id;
}

static void input_drop_if_empty(struct lbd_store *st, uint32_t id)
{
	struct input *in = &st->in[id];
	struct bank *b = &st->banks[in->bank];
	if (in->n_cached)
		return;
	lbd_fpindex_remove(b->fps, in->fp, id);
	lbd_exactmap_remove(b->exact, in->exact);
	free(in->layer);
	in->layer = NULL;
	in->used = 0;
	in->next_free = st->in_free;
	st->in_free = id;
}

/* ---- entries ---- */

static struct lb_entry_hdr *entry_hdr(const struct lbd_store *st, unsigned arena, uint64_t off)
{
	return (struct lb_entry_hdr *)((uint8_t *)st->arenas[arena].hdr + off);
}

/* Give an unlinked, unleased entry's memory back. Its header loses the magic first, so a
 * reader holding no lease (a LOOKUP over the socket) cannot take old bytes for a live entry. */
static void entry_free(struct lbd_store *st, uint32_t id)
{
	struct entry *e = &st->e[id];

	/* E3: pairs with E2 in lb_entry_live: a reader that finds the magic gone stops there. A
	 * reader without a lease may still race with the reuse of the block; one with a lease
	 * never sees this, as a leased entry is not freed. */
	atomic_store_explicit(lb_entry_magic(entry_hdr(st, e->arena, e->off)), 0,
			      memory_order_release);
	live_del(st, id);
	lbd_alloc_put(st->alloc[e->arena], e->off);
	st->c.bytes_used -= e->bytes;
	uncharge(st, e);
	entry_put(st, id);
}

/* Take the entry out of its input (no new hits); free it now if nobody leases it. A leased
 * one keeps its bytes counted as used, and pinned, until the last lease ends. */
static void entry_unlink(struct lbd_store *st, uint32_t id)
{
	struct entry *e = &st->e[id];
	struct input *in = &st->in[e->input];
	struct lbp_layer_stats *ls = &st->banks[in->bank].layer[e->layer];

	in->layer[e->layer] = NONE;
	in->n_cached--;
	ls->leases -= e->leases; /* the holders keep their bytes, but not as this layer's */
	ls->entries--;
	ls->bytes -= e->bytes;
	st->c.entries--;
	input_drop_if_empty(st, e->input);
	e->state = E_DOOMED;
	if (e->leases == 0)
		entry_free(st, id);
}

/* Hits, each weighing half as much every half-life (kept whatever the policy: a snapshot
 * keeps it, so a restart under decay finds it). */
static double decayed_score(const struct lbd_store *st, const struct entry *e, uint64_t now)
{
	if (!st->cfg.half_life_ns)
		return e->score;
	return e->score * exp2(-(double)(now - e->score_ns) / (double)st->cfg.half_life_ns);
}

/* The victim score: lower goes first. */
static double victim_score(const struct lbd_store *st, const struct entry *e, uint64_t now)
{
	switch (st->cfg.policy) {
	case LBD_POLICY_DECAY:
		return decayed_score(st, e, now);
	case LBD_POLICY_TTL:
		return (double)e->created_ns; /* oldest first: it expires first */
	case LBD_POLICY_LRU:
		break;
	}
	return (double)e->last_ns;
}

/* Evict one unleased LIVE entry chosen by the policy from a sample. @return 0, -ENOSPC. */
static int evict_one(struct lbd_store *st, uint64_t now)
{
	uint32_t best = NONE, n = st->n_live;
	double best_score = 0;

	for (uint32_t k = 0; k < (n < SAMPLE ? n : SAMPLE); k++) {
		/* Below SAMPLE entries look at every one: exact policy for small caches. */
		uint32_t id = st->live[n <= SAMPLE ? k : (uint32_t)(rnd(st) % n)];
		const struct entry *e = &st->e[id];
		if (e->state != E_LIVE || e->leases)
			continue;
		double s = victim_score(st, e, now);
		if (best == NONE || s < best_score) {
			best = id;
			best_score = s;
		}
	}
	if (best == NONE && n > SAMPLE) {
		/* The sample was all leased: scan for any candidate before giving up. */
		for (uint32_t k = 0; k < n && best == NONE; k++)
			if (st->e[st->live[k]].state == E_LIVE && !st->e[st->live[k]].leases)
				best = st->live[k];
	}
	if (best == NONE)
		return -ENOSPC;
	st->banks[st->in[st->e[best].input].bank].layer[st->e[best].layer].evictions++;
	st->c.evictions++;
	entry_unlink(st, best);
	return 0;
}

static bool expired(const struct lbd_store *st, const struct entry *e, uint64_t now)
{
	return st->cfg.policy == LBD_POLICY_TTL && now - e->created_ns > st->cfg.ttl_ns;
}

typedef bool (*pick_fn)(const struct lbd_store *st, const struct entry *e, const void *ctx);

/*
 * A walk over live[] for the entries to drop: the next LIVE entry from position *k that pick
 * chooses, or NONE at the end. Unlinking it moves the last entry into its place (or leaves it
 * there, DOOMED, while leased), so the walk goes on from the same *k; so it does after the
 * lock was let go and live[] reordered.
 */
static uint32_t live_find(const struct lbd_store *st, uint32_t *k, pick_fn pick, const void *ctx)
{
	for (; *k < st->n_live; (*k)++) {
		const struct entry *e = &st->e[st->live[*k]];
		if (e->state == E_LIVE && pick(st, e, ctx))
			return st->live[*k];
	}
	return NONE;
}

static bool pick_expired(const struct lbd_store *st, const struct entry *e, const void *now)
{
	return expired(st, e, *(const uint64_t *)now);
}

void lbd_store_expire(struct lbd_store *st)
{
	uint64_t now = lb_now_ns();
	uint32_t id;

	store_lock(st);
	for (uint32_t k = 0; (id = live_find(st, &k, pick_expired, &now)) != NONE;) {
		st->c.expirations++;
		entry_unlink(st, id);
	}
	pthread_mutex_unlock(&st->lock);
}

/* ---- leases ---- */

/* A lease on entry id in ls, which may hold at most max leases. */
static int lease_take_max(struct lbd_store *st, struct lbd_leases *ls, uint32_t id, uint32_t max,
			  uint64_t *handle)
{
	if (ls->cap == 0 || ls->free_head == NONE) {
		uint32_t old = ls->cap, ncap = old ? old * 2 : 64;
		if (old >= max || old > UINT32_MAX / 4)
			return -EBUSY;
		struct lbd_lease *p = realloc(ls->slot, sizeof(*p) * ncap);
		if (!p)
			return -ENOMEM;
		memset(p + old, 0, sizeof(*p) * (ncap - old));
		for (uint32_t i = old; i < ncap; i++)
			p[i].next = i + 1 < ncap ? i + 1 : NONE;
		ls->free_head = old; /* the list was empty: it is the new slots */
		ls->slot = p;
		ls->cap = ncap;
	}
	uint32_t s = ls->free_head;
	struct lbd_lease *l = &ls->slot[s];
	ls->free_head = l->next;
	l->used = 1;
	l->gen++;
	l->entry = id;
	ls->n_used++;
	if (st->e[id].leases++ == 0 && st->e[id].state == E_LIVE)
		st->pinned += st->e[id].bytes;
	st->c.leases++;
	/* Slot + 1 in the high half, so that no valid handle is 0. */
	*handle = ((uint64_t)(s + 1) << 32) | l->gen;
	return 0;
}

static int lease_take(struct lbd_store *st, struct lbd_leases *ls, uint32_t id, uint64_t *handle)
{
	return lease_take_max(st, ls, id, LBD_MAX_LEASES, handle);
}

/* Validate a handle from the client. @return the slot, or NONE. */
static uint32_t lease_find(const struct lbd_leases *ls, uint64_t handle)
{
	uint64_t s = (handle >> 32);
	if (s == 0 || s > ls->cap)
		return NONE;
	const struct lbd_lease *l = &ls->slot[s - 1];
	if (!l->used || l->gen != (uint32_t)handle)
		return NONE;
	return (uint32_t)(s - 1);
}

static void lease_end(struct lbd_store *st, struct lbd_leases *ls, uint32_t s)
{
	struct lbd_lease *l = &ls->slot[s];
	struct entry *e = &st->e[l->entry];

	l->used = 0;
	l->next = ls->free_head;
	ls->free_head = s;
	ls->n_used--;
	st->c.leases--;
	e->leases--;
	if (e->state == E_LIVE)
		st->banks[st->in[e->input].bank].layer[e->layer].leases--;
	if (e->leases == 0) {
		st->pinned -= e->bytes;
		if (e->state == E_DOOMED)
			entry_free(st, l->entry);
	}
}

void lbd_store_release(struct lbd_store *st, struct lbd_leases *ls, uint64_t lease, struct lb_cpl *cpl)
{
	store_lock(st);
	uint32_t s = lease_find(ls, lease);
	if (s == NONE)
		cpl->status = -EINVAL;
	else
		lease_end(st, ls, s);
	pthread_mutex_unlock(&st->lock);
}

void lbd_store_report(struct lbd_store *st, struct lbd_leases *ls, uint64_t lease, float drift,
		      struct lb_cpl *cpl)
{
	if (!isfinite(drift) || drift < 0) {
		cpl->status = -EINVAL;
		return;
	}
	store_lock(st);
	uint32_t s = lease_find(ls, lease);
	if (s == NONE) {
		cpl->status = -EINVAL;
	} else if (drift > st->cfg.drift_max) {
		uint32_t id = ls->slot[s].entry;
		struct entry *e = &st->e[id];
		if (e->state == E_LIVE) {
			/* The lease holder keeps its bytes; nobody else gets this entry again. */
			st->c.invalidations++;
			entry_unlink(st, id);
		}
	}
	pthread_mutex_unlock(&st->lock);
}

void lbd_store_release_all(struct lbd_store *st, struct lbd_leases *ls)
{
	store_lock(st);
	for (uint32_t s = 0; s < ls->cap; s++)
		if (ls->slot[s].used)
			lease_end(st, ls, s);
	pthread_mutex_unlock(&st->lock);
}

void lbd_leases_free(struct lbd_leases *ls)
{
	free(ls->slot);
	memset(ls, 0, sizeof(*ls));
}

/* ---- lookups ---- */

struct accept_ctx {
	const struct lbd_store *st;
	uint32_t seq_len;
	int layer; /* -1: any cached layer */
};

static bool accept_input(void *p, uint32_t id)
{
	const struct accept_ctx *a = p;
	const struct input *in = &a->st->in[id];
	if (!in->used || in->seq_len != a->seq_len)
		return false;
	if (a->layer < 0)
		return true;
	uint32_t e = in->layer[a->layer];
	return e != NONE && a->st->e[e].state == E_LIVE;
}

static struct bank *bank_of(struct lbd_store *st, uint32_t model_id)
{
	if (model_id == 0 || model_id > st->n_banks || st->banks[model_id - 1].desc.n_layers == 0 ||
	    st->banks[model_id - 1].retired)
		return NULL;
	return &st->banks[model_id - 1];
}

/* The threshold of layer l when a lookup brings none: the layer's own, else the default. */
static double layer_tau(const struct lbd_store *st, const struct bank *b, uint32_t l)
{
	return isnan(b->tau[l]) ? st->cfg.tau : b->tau[l];
}

/* LOOKUP_DEEPEST's radii without thresholds: the loosest layer's to search, the tightest
 * layer's to stop early (good_d, lbd_fpindex_nearest). */
static void bank_radius(const struct lbd_store *st, struct bank *b)
{
	uint32_t max_d = 0, good_d = UINT32_MAX;

	for (uint32_t l = 0; l < b->desc.n_layers; l++) {
		uint32_t d = lbp_fp_max_hamming(layer_tau(st, b, l));
		max_d = d > max_d ? d : max_d;
		good_d = d < good_d ? d : good_d;
	}
	b->max_d_default = max_d;
	b->good_d_default = good_d;
}

static void count_miss(struct lbd_store *st, struct bank *b, const struct lb_req *r, int from)
{
	st->c.misses++;
	if (r->opcode == LB_OP_LOOKUP)
		b->layer[r->layer].misses++;
	else
		for (uint32_t l = (uint32_t)from; l < b->desc.n_layers; l++)
			b->layer[l].misses++;
}

/*
 * The index's search radius for a lookup: the loosest threshold that matters (max_d), and the
 * tightest (good_d): an entry within it meets every threshold, so the index may stop at the
 * first such entry rather than prove it is the nearest. @return 0, -EINVAL (a threshold out
 * of -1..1 or not a number).
 */
static int lookup_radius(const struct lbd_store *st, const struct bank *b, const struct lb_req *r,
			 const struct lb_query *q, const float *thr, uint32_t *max_d, uint32_t *good_d)
{
	if (!q->n_thr) {
		if (r->opcode == LB_OP_LOOKUP) {
			*max_d = *good_d = lbp_fp_max_hamming(layer_tau(st, b, r->layer));
		} else {
			*max_d = b->max_d_default;
			*good_d = b->good_d_default;
		}
		return 0;
	}
	*max_d = 0;
	*good_d = UINT32_MAX;
	for (uint32_t l = 0; l < q->n_thr; l++) {
		if (!isfinite(thr[l]) || thr[l] < -1.0f || thr[l] > 1.0f)
			return -EINVAL;
		if (r->opcode == LB_OP_LOOKUP && l != r->layer)
			continue;
		uint32_t d = lbp_fp_max_hamming(thr[l]);
		*max_d = d > *max_d ? d : *max_d;
		*good_d = d < *good_d ? d : *good_d;
	}
	return 0;
}

/* The cached input a lookup is about: the exact token hash first, then the nearest
 * fingerprint within the radius. @return its id with *dist, or NONE. */
static uint32_t lookup_input(struct lbd_store *st, struct bank *b, const struct lb_req *r,
			     const struct lb_query *q, uint32_t max_d, uint32_t good_d, uint32_t *dist)
{
	struct accept_ctx ac = { st, r->seq_len, r->opcode == LB_OP_LOOKUP ? (int)r->layer : -1 };
	uint32_t id = NONE;

	*dist = 0;
	if (lbd_exactmap_find(b->exact, q->exact, &id) == 0 && accept_input(&ac, id))
		return id;
	if (lbd_fpindex_nearest(b->fps, q->fp, max_d, good_d, accept_input, &ac, &id, dist) < 0)
		return NONE;
	return id;
}

/* The deepest layer of input id a lookup may reuse at distance dist (LOOKUP: only its layer).
 * Expired entries met on the way are dropped. @return the layer, or -1. */
static int lookup_layer(struct lbd_store *st, const struct bank *b, const struct lb_req *r,
			const struct lb_query *q, const float *thr, uint32_t id, uint32_t dist,
			uint64_t now)
{
	const struct input *in = &st->in[id];
	double sim = lbp_fp_similarity(dist);
	int top = r->opcode == LB_OP_LOOKUP ? r->layer : (int)b->desc.n_layers - 1;
	int bottom = r->opcode == LB_OP_LOOKUP ? r->layer : 0;

	for (int l = top; l >= bottom; l--) {
		uint32_t e = in->layer[l];
		double tau = q->n_thr ? thr[l] : layer_tau(st, b, (uint32_t)l);
		if (e == NONE || st->e[e].state != E_LIVE || sim < tau)
			continue;
		if (expired(st, &st->e[e], now)) {
			st->c.expirations++;
			entry_unlink(st, e);
			if (!in->used)
				return -1; /* that was its last layer: the input is gone */
			continue;
		}
		return l;
	}
	return -1;
}

/* A hit on entry eid at layer: its lease, its place for the policy, the counters. @return 0
 * with cpl filled, or the lease's error (-EBUSY, -ENOMEM). */
static int lookup_hit(struct lbd_store *st, struct lbd_leases *ls, struct bank *b,
		      const struct lb_req *r, uint32_t eid, int layer, uint64_t now, struct lb_cpl *cpl)
{
	struct entry *e = &st->e[eid];
	int ret = lease_take(st, ls, eid, &cpl->lease);

	if (ret < 0)
		return ret;
	e->last_ns = now;
	/* Kept under every policy, so that one switched to decay at run time finds real scores. */
	e->score = decayed_score(st, e, now) + 1.0;
	e->score_ns = now;
	st->c.hits++;
	b->layer[layer].leases++;
	if (r->opcode == LB_OP_LOOKUP) {
		b->layer[layer].hits++;
	} else {
		for (int l = 0; l <= layer; l++)
			b->layer[l].hits++;
		for (uint32_t l = (uint32_t)layer + 1; l < b->desc.n_layers; l++)
			b->layer[l].misses++;
	}
	cpl->arena = e->arena;
	cpl->layer = (uint16_t)layer;
	cpl->entry_off = e->off;
	return 0;
}

void lbd_store_lookup(struct lbd_store *st, struct lbd_leases *ls, const struct lb_req *r,
		      const struct lb_query *q, const float *thr, struct lb_cpl *cpl)
{
	uint64_t now = lb_now_ns();
	uint32_t id, dist = 0, max_d = 0, good_d = 0;
	int layer = -1;

	store_lock(st);
	struct bank *b = bank_of(st, r->model_id);
	if (!b || r->seq_len == 0 || r->seq_len > b->desc.max_seq ||
	    (q->n_thr != 0 && q->n_thr != b->desc.n_layers) ||
	    (r->opcode == LB_OP_LOOKUP && r->layer >= b->desc.n_layers) ||
	    (r->opcode == LB_OP_LOOKUP_DEEPEST && r->layer != 0)) {
		cpl->status = b ? -EINVAL : -ESRCH;
		goto out;
	}
	cpl->status = lookup_radius(st, b, r, q, thr, &max_d, &good_d);
	if (cpl->status < 0)
		goto out;
	id = lookup_input(st, b, r, q, max_d, good_d, &dist);
	if (id != NONE)
		layer = lookup_layer(st, b, r, q, thr, id, dist, now);
	if (layer < 0) {
		count_miss(st, b, r, 0);
		cpl->status = -ENOENT;
		goto out;
	}
	cpl->status = lookup_hit(st, ls, b, r, st->in[id].layer[layer], layer, now, cpl);
	if (cpl->status == 0)
		cpl->hamming = dist;
out:
	pthread_mutex_unlock(&st->lock);
}

/* ---- inserts ---- */

/* Shape, dtype and byte count agree, without overflow. */
static bool shape_ok(const struct lb_insert_hdr *h)
{
	uint64_t n = lbp_dtype_size(h->dtype);
	if (!n || h->ndim < 1 || h->ndim > LB_MAX_NDIM)
		return false;
	for (uint32_t i = 0; i < LB_MAX_NDIM; i++) {
		if (i >= h->ndim) {
			if (h->shape[i])
				return false;
			continue;
		}
		if (!h->shape[i] || n > UINT64_MAX / h->shape[i])
			return false;
		n *= h->shape[i];
	}
	return n == h->bytes;
}

bool lbd_store_insert_hdr_ok(const struct lb_req *r, const struct lb_insert_hdr *h)
{
	return r->payload_len >= LB_INSERT_HDR_SIZE && shape_ok(h) &&
	       h->bytes <= (uint64_t)r->payload_len - LB_INSERT_HDR_SIZE;
}

/* Non-temporal copy for large entries: other processes read them, this core will not. */
__attribute__((target("avx512f"))) static void copy_nt_avx512(uint8_t *dst, const uint8_t *src, size_t n)
{
	size_t i = 0;
	for (; i + 64 <= n; i += 64)
		_mm512_stream_si512((void *)(dst + i), _mm512_loadu_si512((const void *)(src + i)));
	_mm_sfence();
	memcpy(dst + i, src + i, n - i);
}

static void copy_in(uint8_t *dst, const uint8_t *src, size_t n)
{
	/* dst is 64-byte aligned: entries start on LBD_ALLOC_ALIGN, data at +LB_ENTRY_HDR_SIZE. */
	if (n >= NT_COPY_MIN && __builtin_cpu_supports("avx512f"))
		copy_nt_avx512(dst, src, n);
	else
		memcpy(dst, src, n);
}

/*
 * Write an entry at h: its data, then its header as tmpl has it, then the magic that makes it
 * readable. The checksum is tmpl's when checksum_given (a snapshot checked it against the
 * data), else computed on the arena copy: the client may change its staging meanwhile. The one
 * place an entry is published, for inserts and restores alike.
 */
static void entry_publish(struct lb_entry_hdr *h, const struct lb_entry_hdr *tmpl,
			  const uint8_t *data, bool checksum_given)
{
	const size_t body = offsetof(struct lb_entry_hdr, model_id); /* all but the magic */
	uint8_t *dst = (uint8_t *)h + LB_ENTRY_HDR_SIZE;

	/* The block may hold anything (a freed entry's bytes): no magic until all is in place. */
	atomic_store_explicit(lb_entry_magic(h), 0, memory_order_relaxed);
	memset((uint8_t *)h + body, 0, LB_ENTRY_HDR_SIZE - body);
	copy_in(dst, data, tmpl->bytes);
	memcpy((uint8_t *)h + body, (const uint8_t *)tmpl + body, sizeof(*h) - body);
	if (!checksum_given)
		h->checksum = XXH3_64bits(dst, tmpl->bytes);
	/* E1: pairs with E2 in lb_entry_live: data and header are written before the magic. */
	atomic_store_explicit(lb_entry_magic(h), LB_ENTRY_MAGIC, memory_order_release);
}

/* bytes of data and the header, rounded to the allocator's alignment. */
static uint64_t entry_need(uint64_t bytes)
{
	return (LB_ENTRY_HDR_SIZE + bytes + LBD_ALLOC_ALIGN - 1) & ~(uint64_t)(LBD_ALLOC_ALIGN - 1);
}

/* A block of need bytes in the first arena that has one. @return 0, -ENOSPC. */
static int alloc_any(struct lbd_store *st, uint64_t need, unsigned *arena, uint64_t *off)
{
	for (unsigned i = 0; i < st->n_arenas; i++)
		if (lbd_alloc_get(st->alloc[i], need, off) == 0) {
			*arena = i;
			return 0;
		}
	return -ENOSPC;
}

/* Room for need bytes: evict until under budget, then allocate, evicting on fragmentation. */
static int make_room(struct lbd_store *st, uint64_t need, uint64_t now, unsigned *arena, uint64_t *off)
{
	/* What eviction cannot free is not worth evicting for: fail before dropping anything. */
	if (st->pinned >= st->c.bytes_budget || need > st->c.bytes_budget - st->pinned)
		return -ENOSPC;
	for (int round = 0; round < MAX_EVICT_ROUNDS; round++) {
		if (st->c.bytes_used + need <= st->c.bytes_budget && alloc_any(st, need, arena, off) == 0)
			return 0;
		if (evict_one(st, now) < 0)
			return -ENOSPC;
	}
	return -ENOSPC;
}

/*
 * Whether an input with these keys may take an entry of layer: *id is the cached input with
 * these tokens, or NONE. @return 0; -EINVAL (the same tokens cached at another length: a lying
 * client or a corrupt file); -EEXIST (that layer is cached).
 */
static int input_check(struct lbd_store *st, struct bank *b, const uint64_t exact[2],
		       uint32_t seq_len, uint32_t layer, uint32_t *id)
{
	if (lbd_exactmap_find(b->exact, exact, id) < 0) {
		*id = NONE;
		return 0;
	}
	if (st->in[*id].seq_len != seq_len)
		return -EINVAL;
	return st->in[*id].layer[layer] != NONE ? -EEXIST : 0;
}

/*
 * Put a new entry of layer into the block at (arena, off): under the input with these keys
 * (made if none is cached), counted in bytes_used, its room in live[] reserved. The caller
 * sets its state and times. @return the entry, or NONE (no memory) with the block given back
 * and nothing changed.
 */
static uint32_t entry_place(struct lbd_store *st, struct bank *b, const struct lb_insert_hdr *k,
			    uint32_t seq_len, uint32_t layer, unsigned arena, uint64_t off, uint64_t need)
{
	uint32_t id = NONE, eid = NONE;

	if (lbd_exactmap_find(b->exact, k->exact, &id) < 0)
		id = input_new(st, (uint32_t)(b - st->banks), seq_len, k->fp, k->exact);
	if (id != NONE)
		eid = entry_get(st);
	if (eid == NONE || live_reserve(st) < 0) {
		if (eid != NONE)
			entry_put(st, eid);
		if (id != NONE)
			input_drop_if_empty(st, id);
		lbd_alloc_put(st->alloc[arena], off);
		return NONE;
	}
	struct entry *e = &st->e[eid];
	e->input = id;
	e->layer = (uint16_t)layer;
	e->arena = (uint8_t)arena;
	e->off = off;
	e->bytes = need;
	st->in[id].layer[layer] = eid;
	st->in[id].n_cached++;
	st->c.bytes_used += need;
	return eid;
}

/* A placed entry is found by lookups from now on. */
static void entry_go_live(struct lbd_store *st, struct bank *b, uint32_t eid)
{
	struct entry *e = &st->e[eid];

	e->state = E_LIVE;
	live_add(st, eid);
	b->layer[e->layer].entries++;
	b->layer[e->layer].bytes += e->bytes;
	st->c.entries++;
}

/*
 * An insert's first phase, under the lock: the request against its model and the cache, the
 * client's quota, room made by the policy, and a PENDING entry that no lookup finds and no
 * eviction takes while its data is copied. @return the entry, or NONE with cpl->status set.
 */
static uint32_t insert_reserve(struct lbd_store *st, uint32_t account, const struct lb_req *r,
			       const struct lb_insert_hdr *h, uint64_t now, struct lb_cpl *cpl)
{
	uint64_t need = entry_need(h->bytes), off = 0;
	struct bank *b = bank_of(st, r->model_id);
	unsigned arena = 0;
	uint32_t id;

	if (!b || r->layer >= b->desc.n_layers || r->seq_len == 0 || r->seq_len > b->desc.max_seq) {
		cpl->status = b ? -EINVAL : -ESRCH;
		return NONE;
	}
	cpl->status = input_check(st, b, h->exact, r->seq_len, r->layer, &id);
	if (cpl->status < 0)
		return NONE;
	/* The client's quota before the budget: an insert it may not pay for evicts nothing. */
	struct account *a = account_of(st, account);
	if (a && a->limit && (a->used > a->limit || need > a->limit - a->used)) {
		st->c.quota_refusals++;
		cpl->status = -EDQUOT;
		return NONE;
	}
	cpl->status = make_room(st, need, now, &arena, &off);
	if (cpl->status < 0)
		return NONE;
	/* make_room may have evicted the input found above: entry_place looks again. */
	uint32_t eid = entry_place(st, b, h, r->seq_len, r->layer, arena, off, need);
	if (eid == NONE) {
		cpl->status = -ENOMEM;
		return NONE;
	}
	st->e[eid].state = E_PENDING;
	st->n_pending++;
	st->pinned += need;
	if (a) {
		st->e[eid].account = account;
		a->used += need;
	}
	return eid;
}

/* An insert's last phase, under the lock: the copied entry goes live. */
static void insert_commit(struct lbd_store *st, uint32_t eid, uint32_t gen, const struct lb_req *r,
			  uint64_t now, struct lb_cpl *cpl)
{
	/* Both tables may have moved while unlocked: st->e grows with other inserts, st->banks
	 * with a model registered meanwhile (lbd_store_add_model reallocates it). */
	struct entry *e = &st->e[eid];
	struct bank *b = &st->banks[r->model_id - 1];

	if (e->gen != gen || e->state != E_PENDING)
		abort(); /* pending entries are never freed by anyone else */
	e->created_ns = e->last_ns = e->score_ns = now;
	e->score = 1.0;
	st->pinned -= e->bytes;
	st->n_pending--;
	entry_go_live(st, b, eid);
	b->layer[r->layer].inserts++;
	st->c.inserts++;
	cpl->status = 0;
	cpl->arena = e->arena;
	cpl->layer = r->layer;
	cpl->entry_off = e->off;
}

void lbd_store_insert(struct lbd_store *st, uint32_t account, const struct lb_req *r,
		      const struct lb_insert_hdr *h, const uint8_t *data, struct lb_cpl *cpl)
{
	uint64_t now = lb_now_ns();

	if (!lbd_store_insert_hdr_ok(r, h)) {
		cpl->status = -EINVAL;
		return;
	}
	store_lock(st);
	uint32_t eid = insert_reserve(st, account, r, h, now, cpl);
	if (eid == NONE) {
		pthread_mutex_unlock(&st->lock);
		return;
	}
	uint32_t gen = st->e[eid].gen;
	struct lb_entry_hdr *eh = entry_hdr(st, st->e[eid].arena, st->e[eid].off);
	pthread_mutex_unlock(&st->lock);

	/* The copy runs unlocked: a PENDING entry is in no sample and gives no hits. */
	struct lb_entry_hdr tmpl = { .model_id = r->model_id, .layer = r->layer,
				     .dtype = (uint16_t)h->dtype, .seq_len = r->seq_len,
				     .ndim = h->ndim, .bytes = h->bytes };
	memcpy(tmpl.shape, h->shape, sizeof(tmpl.shape));
	entry_publish(eh, &tmpl, data, false);

	store_lock(st);
	insert_commit(st, eid, gen, r, now, cpl);
	pthread_mutex_unlock(&st->lock);
}

/* ---- setup and counters ---- */

struct lbd_store *lbd_store_new(struct lbd_arena *arenas, unsigned n_arenas, const struct lbd_store_cfg *cfg)
{
	struct lbd_store *st = calloc(1, sizeof(*st));
	uint64_t data = 0;

	if (!st)
		return NULL;
	pthread_mutex_init(&st->lock, NULL);
	st->cfg = *cfg;
	st->arenas = arenas;
	st->n_arenas = n_arenas;
	st->e_free = st->in_free = st->acct_free = NONE;
	st->rng = RNG_SEED;
	for (unsigned i = 0; i < n_arenas; i++) {
		const struct lb_arena_hdr *h = arenas[i].hdr;
		st->alloc[i] = lbd_alloc_new(arenas[i].hdr, h->data_off, h->data_bytes & ~(uint64_t)(LBD_ALLOC_ALIGN - 1));
		if (!st->alloc[i]) {
			lbd_store_free(st);
			return NULL;
		}
		data += h->data_bytes;
	}
	st->data_bytes = data;
	st->c.bytes_budget = cfg->budget && cfg->budget < data ? cfg->budget : data;
	snprintf(st->c.policy, sizeof(st->c.policy), "%s", lbd_policy_name(cfg->policy));
	return st;
}

void lbd_store_free(struct lbd_store *st)
{
	if (!st)
		return;
	for (uint32_t i = 0; i < st->in_cap; i++)
		free(st->in[i].layer);
	for (uint32_t i = 0; i < st->n_banks; i++) {
		lbd_fpindex_free(st->banks[i].fps);
		lbd_exactmap_free(st->banks[i].exact);
		free(st->banks[i].layer);
		free(st->banks[i].tau);
	}
	for (unsigned i = 0; i < st->n_arenas; i++)
		lbd_alloc_free_all(st->alloc[i]);
	free(st->banks);
	free(st->e);
	free(st->in);
	free(st->live);
	free(st->acct);
	pthread_mutex_destroy(&st->lock);
	free(st);
}

int lbd_store_add_model(struct lbd_store *st, uint32_t model_id, const struct lbp_register_model *d)
{
	int ret = 0;

	if (model_id == 0)
		return -EINVAL;
	store_lock(st);
	if (model_id > st->n_banks) {
		struct bank *nb = realloc(st->banks, sizeof(*nb) * model_id);
		if (!nb) {
			ret = -ENOMEM;
			goto out;
		}
		memset(nb + st->n_banks, 0, sizeof(*nb) * (model_id - st->n_banks));
		st->banks = nb;
		st->n_banks = model_id;
	}
	struct bank *b = &st->banks[model_id - 1];
	if (b->desc.n_layers)
		goto out;
	b->fps = lbd_fpindex_new(1024);
	b->exact = lbd_exactmap_new(1024);
	b->layer = calloc(d->n_layers, sizeof(*b->layer));
	b->tau = malloc(d->n_layers * sizeof(*b->tau));
	if (!b->fps || !b->exact || !b->layer || !b->tau) {
		lbd_fpindex_free(b->fps);
		lbd_exactmap_free(b->exact);
		free(b->layer);
		free(b->tau);
		memset(b, 0, sizeof(*b));
		ret = -ENOMEM;
		goto out;
	}
	for (uint32_t l = 0; l < d->n_layers; l++)
		b->tau[l] = NAN;
	b->desc = *d;
	bank_radius(st, b);
out:
	pthread_mutex_unlock(&st->lock);
	return ret;
}

int lbd_store_clear(struct lbd_store *st)
{
	store_lock(st);
	if (st->c.leases || st->pinned) {
		pthread_mutex_unlock(&st->lock);
		return -EBUSY;
	}
	/* No lease: every entry in live[] is LIVE and goes at once, its input with its last one. */
	while (st->n_live)
		entry_unlink(st, st->live[st->n_live - 1]);
	/* Free slots threaded lowest first, as grow() threads a new table's. */
	st->e_free = st->in_free = NONE;
	for (uint32_t i = st->e_cap; i-- > 0;) {
		st->e[i].next_free = st->e_free;
		st->e_free = i;
	}
	for (uint32_t i = st->in_cap; i-- > 0;) {
		st->in[i].next_free = st->in_free;
		st->in_free = i;
	}
	for (uint32_t b = 0; b < st->n_banks; b++)
		if (st->banks[b].desc.n_layers)
			memset(st->banks[b].layer, 0, sizeof(*st->banks[b].layer) * st->banks[b].desc.n_layers);
	uint64_t budget = st->c.bytes_budget;
	char policy[sizeof(st->c.policy)];
	memcpy(policy, st->c.policy, sizeof(policy));
	memset(&st->c, 0, sizeof(st->c));
	st->c.bytes_budget = budget;
	memcpy(st->c.policy, policy, sizeof(policy));
	st->rng = RNG_SEED;
	pthread_mutex_unlock(&st->lock);
	return 0;
}

uint32_t lbd_store_account_open(struct lbd_store *st, uint64_t limit)
{
	uint32_t id = 0;

	store_lock(st);
	if (st->acct_free != NONE ||
	    grow((void **)&st->acct, &st->acct_cap, sizeof(*st->acct), &st->acct_free,
		 offsetof(struct account, next_free)) == 0) {
		struct account *a = &st->acct[st->acct_free];
		id = st->acct_free + 1;
		st->acct_free = a->next_free;
		*a = (struct account){ .limit = limit, .open = 1, .in_use = 1 };
	}
	pthread_mutex_unlock(&st->lock);
	if (!id)
		errno = ENOMEM;
	return id;
}

void lbd_store_account_close(struct lbd_store *st, uint32_t id)
{
	store_lock(st);
	struct account *a = account_of(st, id);
	if (a && a->open) {
		a->open = 0;
		if (a->used == 0)
			account_put(st, id);
	}
	pthread_mutex_unlock(&st->lock);
}

void lbd_store_account_stats(struct lbd_store *st, uint32_t *accounts, uint64_t *charged)
{
	*accounts = 0;
	*charged = 0;
	store_lock(st);
	for (uint32_t i = 0; i < st->acct_cap; i++)
		if (st->acct[i].in_use) {
			(*accounts)++;
			*charged += st->acct[i].used;
		}
	pthread_mutex_unlock(&st->lock);
}

bool lbd_store_has_model(struct lbd_store *st, uint32_t model_id)
{
	store_lock(st);
	bool has = bank_of(st, model_id) != NULL;
	pthread_mutex_unlock(&st->lock);
	return has;
}

void lbd_store_stats(struct lbd_store *st, struct lbp_stats_reply *r)
{
	struct lbd_alloc_stats as;
	uint64_t free_b = 0, largest = 0;

	store_lock(st);
	r->hits = st->c.hits;
	r->misses = st->c.misses;
	r->inserts = st->c.inserts;
	r->evictions = st->c.evictions;
	r->expirations = st->c.expirations;
	r->invalidations = st->c.invalidations;
	r->entries = st->c.entries;
	r->leases = st->c.leases;
	r->bytes_used = st->c.bytes_used;
	r->bytes_budget = st->c.bytes_budget;
	r->quota_refusals = st->c.quota_refusals;
	memcpy(r->policy, st->c.policy, sizeof(r->policy));
	for (unsigned i = 0; i < st->n_arenas; i++) {
		lbd_alloc_stats(st->alloc[i], &as);
		free_b += as.bytes_free;
		largest = as.largest_free > largest ? as.largest_free : largest;
	}
	pthread_mutex_unlock(&st->lock);
	r->fragmentation_ppm = free_b ? (uint32_t)(1e6 * (1.0 - (double)largest / (double)free_b)) : 0;
}

int lbd_store_model_stats(struct lbd_store *st, uint32_t model_id, uint32_t first_layer,
			  struct lbp_model_stats_reply *r)
{
	int ret = 0;
	store_lock(st);
	struct bank *b = bank_of(st, model_id);
	if (!b) {
		ret = -ENOENT;
	} else {
		r->model_id = model_id;
		memcpy(r->name, b->desc.name, sizeof(r->name));
		r->n_layers = b->desc.n_layers;
		r->first_layer = first_layer;
		r->n = 0;
		for (uint32_t l = first_layer; l < b->desc.n_layers && r->n < LBP_MAX_STATS_LAYERS; l++)
			r->layers[r->n++] = b->layer[l];
	}
	pthread_mutex_unlock(&st->lock);
	return ret;
}

/* ---- snapshots: hold everything for a write, put entries back at start-up ---- */

int lbd_store_hold_all(struct lbd_store *st, struct lbd_leases *ls, struct lbd_store_item **items,
		       uint32_t *n)
{
	uint64_t now, lease;
	struct lbd_store_item *it;
	uint32_t k = 0;
	int ret = 0;

	*items = NULL;
	*n = 0;
	store_lock(st);
	now = lb_now_ns(); /* under the lock: no entry's last hit is later */
	it = calloc(st->n_live ? st->n_live : 1, sizeof(*it));
	if (!it) {
		ret = -ENOMEM;
		goto out;
	}
	for (uint32_t i = 0; i < st->n_live; i++) {
		uint32_t id = st->live[i];
		struct entry *e = &st->e[id];
		if (e->state != E_LIVE)
			continue; /* doomed, held by a client only */
		const struct input *in = &st->in[e->input];
		const struct lb_entry_hdr *h =
			(const struct lb_entry_hdr *)((const uint8_t *)st->arenas[e->arena].hdr + e->off);
		/* The snapshot's own leases are not capped like a client's: it holds every entry. */
		ret = lease_take_max(st, ls, id, UINT32_MAX, &lease);
		if (ret < 0)
			break;
		st->banks[in->bank].layer[e->layer].leases++;
		struct lbd_store_item *x = &it[k++];
		x->model_id = in->bank + 1;
		x->layer = e->layer;
		/* The header fields: written by this daemon before the entry went live, unchanged
		 * since (section 9 of the ring protocol). */
		x->seq_len = h->seq_len;
		x->dtype = h->dtype;
		x->ndim = h->ndim;
		memcpy(x->shape, h->shape, sizeof(x->shape));
		x->bytes = h->bytes;
		x->checksum = h->checksum;
		memcpy(x->fp, in->fp, sizeof(x->fp));
		memcpy(x->exact, in->exact, sizeof(x->exact));
		x->idle_ns = now - e->last_ns;
		x->age_ns = now - e->created_ns;
		x->score = decayed_score(st, e, now);
		x->data = (const uint8_t *)h + LB_ENTRY_HDR_SIZE;
	}
out:
	pthread_mutex_unlock(&st->lock);
	if (ret < 0) {
		lbd_store_release_all(st, ls);
		free(it);
		return ret;
	}
	*items = it;
	*n = k;
	return 0;
}

double lbd_store_item_value(const struct lbd_store *st, const struct lbd_store_item *it)
{
	switch (st->cfg.policy) {
	case LBD_POLICY_DECAY:
		return it->score;
	case LBD_POLICY_TTL:
		return -(double)it->age_ns;
	case LBD_POLICY_LRU:
		break;
	}
	return -(double)it->idle_ns;
}

/* Whether an item may go back into bank b: its layer, length and age. @return 0, -EINVAL,
 * -ETIME (it would expire at once). */
static int restore_check(const struct lbd_store *st, const struct bank *b,
			 const struct lbd_store_item *it)
{
	if (it->layer >= b->desc.n_layers || it->seq_len == 0 || it->seq_len > b->desc.max_seq)
		return -EINVAL;
	if (st->cfg.policy == LBD_POLICY_TTL && it->age_ns > st->cfg.ttl_ns)
		return -ETIME;
	return 0;
}

/* The restored entry's place for the policy: ages carry over; a monotonic clock younger than
 * them (a reboot) clamps them to it. */
static void restore_ages(struct entry *e, const struct lbd_store_item *it, uint64_t now)
{
	e->created_ns = now - (it->age_ns < now ? it->age_ns : now);
	e->last_ns = now - (it->idle_ns < now ? it->idle_ns : now);
	e->score = isfinite(it->score) && it->score > 0 ? it->score : 0;
	e->score_ns = now;
}

int lbd_store_restore(struct lbd_store *st, const struct lbd_store_item *it)
{
	struct lb_insert_hdr h = { .dtype = it->dtype, .ndim = it->ndim, .bytes = it->bytes };
	uint64_t now = lb_now_ns(), off = 0, need = entry_need(it->bytes);
	unsigned arena = 0;
	uint32_t id;
	int ret;

	memcpy(h.shape, it->shape, sizeof(h.shape));
	memcpy(h.fp, it->fp, sizeof(h.fp));
	memcpy(h.exact, it->exact, sizeof(h.exact));
	if (!shape_ok(&h) || !it->data)
		return -EINVAL;
	store_lock(st);
	struct bank *b = bank_of(st, it->model_id);
	ret = b ? restore_check(st, b, it) : -ESRCH;
	if (ret == 0)
		ret = input_check(st, b, it->exact, it->seq_len, it->layer, &id);
	/* No eviction: what is restored first was chosen as the more valuable. */
	if (ret == 0 && (need > st->c.bytes_budget || st->c.bytes_used > st->c.bytes_budget - need))
		ret = -ENOSPC;
	if (ret == 0)
		ret = alloc_any(st, need, &arena, &off);
	if (ret < 0)
		goto out;
	uint32_t eid = entry_place(st, b, &h, it->seq_len, it->layer, arena, off, need);
	if (eid == NONE) {
		ret = -ENOMEM;
		goto out;
	}
	/* Copied under the lock: restoring happens at start-up, before any client is served. */
	struct lb_entry_hdr tmpl = { .model_id = it->model_id, .layer = (uint16_t)it->layer,
				     .dtype = (uint16_t)it->dtype, .seq_len = it->seq_len,
				     .ndim = it->ndim, .bytes = it->bytes, .checksum = it->checksum };
	memcpy(tmpl.shape, it->shape, sizeof(tmpl.shape));
	entry_publish(entry_hdr(st, arena, off), &tmpl, it->data, true);
	restore_ages(&st->e[eid], it, now);
	entry_go_live(st, b, eid);
out:
	pthread_mutex_unlock(&st->lock);
	return ret;
}

static bool pick_bank(const struct lbd_store *st, const struct entry *e, const void *bank)
{
	return st->in[e->input].bank == *(const uint32_t *)bank;
}

int64_t lbd_store_drop_model(struct lbd_store *st, uint32_t model_id)
{
	int64_t n = 0;

	store_lock(st);
	struct bank *b = bank_of(st, model_id);
	if (!b) {
		n = -ENOENT;
	} else {
		uint32_t bank = model_id - 1, id;
		b->retired = true;
		for (uint32_t k = 0; (id = live_find(st, &k, pick_bank, &bank)) != NONE; n++)
			entry_unlink(st, id);
	}
	pthread_mutex_unlock(&st->lock);
	return n;
}

/* ---- run-time settings and flush ---- */

void lbd_store_get_cfg(struct lbd_store *st, struct lbd_store_cfg *out)
{
	store_lock(st);
	*out = st->cfg;
	pthread_mutex_unlock(&st->lock);
}

uint64_t lbd_store_configure(struct lbd_store *st, const struct lbd_store_cfg *cfg)
{
	uint64_t now = lb_now_ns(), evicted = 0;

	store_lock(st);
	bool tau_changed = cfg->tau != st->cfg.tau;
	st->cfg = *cfg;
	snprintf(st->c.policy, sizeof(st->c.policy), "%s", lbd_policy_name(cfg->policy));
	if (tau_changed)
		for (uint32_t i = 0; i < st->n_banks; i++)
			if (st->banks[i].desc.n_layers)
				bank_radius(st, &st->banks[i]);
	st->c.bytes_budget = cfg->budget && cfg->budget < st->data_bytes ? cfg->budget : st->data_bytes;
	/* Down to the new budget as an insert would make room: by the policy, never an entry
	 * under lease or being inserted; what those hold stays over the budget until they end. */
	while (st->c.bytes_used > st->c.bytes_budget && evict_one(st, now) == 0)
		evicted++;
	pthread_mutex_unlock(&st->lock);
	return evicted;
}

int lbd_store_layer_taus(struct lbd_store *st, uint32_t model_id, double *tau, uint32_t n)
{
	int ret;

	store_lock(st);
	struct bank *b = bank_of(st, model_id);
	if (!b) {
		ret = -ESRCH;
	} else {
		ret = (int)b->desc.n_layers;
		if (n)
			memcpy(tau, b->tau, sizeof(*tau) * (n < b->desc.n_layers ? n : b->desc.n_layers));
	}
	pthread_mutex_unlock(&st->lock);
	return ret;
}

int lbd_store_set_layer_tau(struct lbd_store *st, uint32_t model_id, uint32_t layer, double tau)
{
	int ret = 0;

	store_lock(st);
	struct bank *b = bank_of(st, model_id);
	if (!b)
		ret = -ESRCH;
	else if (layer >= b->desc.n_layers || (!isnan(tau) && !(tau >= -1.0 && tau <= 1.0)))
		ret = -EINVAL;
	else {
		b->tau[layer] = tau;
		bank_radius(st, b);
	}
	pthread_mutex_unlock(&st->lock);
	return ret;
}

/*
 * Let the lock go for a moment between two batches of a long job. A mutex is not fair: the
 * holder that unlocks and locks again at once gets it back before a waiting service thread has
 * even woken up, and the waiter starves. So wait until another thread has taken the lock, or
 * LBD_HAND_OVER_US passed (nobody was waiting), then take it again.
 */
#define LBD_HAND_OVER_US 50u
static void hand_over(struct lbd_store *st)
{
	unsigned seen = atomic_load_explicit(&st->acquired, memory_order_relaxed);
	uint64_t t0 = lb_now_ns();

	pthread_mutex_unlock(&st->lock);
	while (atomic_load_explicit(&st->acquired, memory_order_relaxed) == seen &&
	       lb_now_ns() - t0 < LBD_HAND_OVER_US * 1000u)
		_mm_pause();
	store_lock(st);
}

/* What a flush drops: entries live when it began, of one bank (or all), of one layer (or all). */
struct flush_pick {
	uint64_t t0;
	uint32_t bank; /* an index: the bank array may move while the lock is let go */
	bool all_banks;
	int layer;     /* -1: all */
};

static bool pick_flushed(const struct lbd_store *st, const struct entry *e, const void *ctx)
{
	const struct flush_pick *f = ctx;
	return e->created_ns <= f->t0 && (f->all_banks || st->in[e->input].bank == f->bank) &&
	       (f->layer < 0 || e->layer == (uint32_t)f->layer);
}

int lbd_store_flush_batched(struct lbd_store *st, uint32_t model_id, int layer, uint32_t batch,
			    struct lbd_flush_result *out)
{
	struct flush_pick f = { .t0 = lb_now_ns(), .all_banks = model_id == 0, .layer = layer };
	int ret = 0;

	memset(out, 0, sizeof(*out));
	if (batch == 0)
		batch = 1;
	store_lock(st);
	if (model_id) {
		const struct bank *b = bank_of(st, model_id);
		if (!b)
			ret = -ESRCH;
		else if (layer >= (int)b->desc.n_layers)
			ret = -EINVAL;
		else
			f.bank = (uint32_t)(b - st->banks);
	} else if (layer >= 0) {
		ret = -EINVAL; /* a layer is a layer of one model */
	}
	/*
	 * Passes over the sample list, which holds every LIVE entry, dropping those that were live
	 * when the flush began (created by t0). An entry under lease is unlinked like an
	 * invalidated one: no lookup finds it again, and its holders keep reading it unchanged
	 * until the last lease ends and lease_end frees it. The lock is let go after every batch
	 * of drops so that the service threads go on serving; meanwhile their evictions and
	 * invalidations reorder the list (each moves the last entry into the hole), which can move
	 * an entry the pass has not seen behind it: another pass follows until one drops nothing.
	 * Entries inserted after t0 are kept, so the passes end however busy the inserters are.
	 */
	bool dropped = ret == 0;
	while (dropped) {
		uint32_t id, in_batch = 0;
		dropped = false;
		for (uint32_t k = 0; (id = live_find(st, &k, pick_flushed, &f)) != NONE;) {
			const struct entry *e = &st->e[id];
			out->entries++;
			out->bytes += e->bytes;
			out->leased += e->leases != 0;
			entry_unlink(st, id);
			dropped = true;
			if (++in_batch == batch) {
				in_batch = 0;
				hand_over(st);
			}
		}
	}
	pthread_mutex_unlock(&st->lock);
	return ret;
}

int lbd_store_flush(struct lbd_store *st, uint32_t model_id, int layer, struct lbd_flush_result *out)
{
	return lbd_store_flush_batched(st, model_id, layer, LBD_FLUSH_BATCH, out);
}
