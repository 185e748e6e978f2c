/* layerbankd store, the core: banks, the slot tables of entries, inputs and prefix blocks, the
 * lists of live entries and eviction candidates, room made by the policy, leases, accounts,
 * run-time settings, FLUSH and counters. Lookups and inserts are in store_layer.c (layer
 * entries) and store_block.c (prefix blocks), snapshots in store_snap.c. */
#include "store_internal.h"

#include <errno.h>
#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "alloc.h"
#include "exactmap.h"
#include "fpindex.h"
#include "log.h"

#define SAMPLE 16u           /* candidates looked at per eviction (exact below this many) */
#define MAX_EVICT_ROUNDS 256 /* per insert, before giving up with -ENOSPC */
#define NT_COPY_MIN (64u << 10) /* copies this large bypass the cache: read by other cores */
#define RNG_SEED 0x9e3779b97f4a7c15ull /* eviction sampling: the same in every store */

/* Every taking of the store lock goes through here, so that a long holder that lets the lock go
 * (FLUSH) can see whether another thread got it. */
void store_lock(struct lbd_store *st)
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

/* ---- slot tables and lists ---- */

int store_grow(void **arr, uint32_t *cap, size_t elem, uint32_t *free_head, size_t next_off)
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

uint32_t store_entry_new(struct lbd_store *st, uint8_t kind, uint32_t bank)
{
	if (st->e_free == NONE &&
	    store_grow((void **)&st->e, &st->e_cap, sizeof(*st->e), &st->e_free,
		       offsetof(struct entry, next_free)))
		return NONE;
	uint32_t id = st->e_free;
	struct entry *e = &st->e[id];
	uint32_t gen = e->gen;
	st->e_free = e->next_free;
	memset(e, 0, sizeof(*e));
	e->gen = gen + 1;
	e->live_pos = e->cand_pos = e->owner = NONE;
	e->kind = kind;
	e->bank = bank;
	return id;
}

void store_entry_put(struct lbd_store *st, uint32_t id)
{
	struct entry *e = &st->e[id];
	e->state = E_FREE;
	e->gen++;
	e->next_free = st->e_free;
	st->e_free = id;
}

/* A list of entry ids with each one's position in the entry (pos_off): O(1) add and delete. */
static int list_room(uint32_t **list, uint32_t *cap, uint32_t need)
{
	if (need <= *cap)
		return 0;
	uint32_t ncap = *cap ? *cap * 2 : 1024;
	while (ncap < need)
		ncap *= 2;
	uint32_t *p = realloc(*list, sizeof(*p) * ncap);
	if (!p)
		return -ENOMEM;
	*list = p;
	*cap = ncap;
	return 0;
}

static void list_add(struct lbd_store *st, uint32_t *list, uint32_t *n, uint32_t cap,
		     size_t pos_off, uint32_t id)
{
	if (*n >= cap)
		abort(); /* the room was reserved (store_live_reserve) */
	memcpy((char *)&st->e[id] + pos_off, n, sizeof(uint32_t));
	list[(*n)++] = id;
}

static void list_del(struct lbd_store *st, uint32_t *list, uint32_t *n, size_t pos_off, uint32_t id)
{
	uint32_t pos, last = list[--*n], none = NONE;
	memcpy(&pos, (char *)&st->e[id] + pos_off, sizeof(pos));
	list[pos] = last;
	memcpy((char *)&st->e[last] + pos_off, &pos, sizeof(pos));
	memcpy((char *)&st->e[id] + pos_off, &none, sizeof(none));
}

int store_live_reserve(struct lbd_store *st)
{
	uint32_t need = st->n_live + st->n_pending + 1;
	if (list_room(&st->live, &st->live_cap, need) < 0)
		return -ENOMEM;
	/* Any tenant's list may have to take every entry: tenants are few. */
	for (unsigned t = 0; t < st->n_tenants; t++)
		if (list_room(&st->ten[t].cand, &st->ten[t].cand_cap, need) < 0)
			return -ENOMEM;
	return 0;
}

void store_cand_add(struct lbd_store *st, uint32_t id)
{
	struct tenant *t = store_tenant_of(st, &st->e[id]);
	if (st->e[id].cand_pos == NONE)
		list_add(st, t->cand, &t->n_cand, t->cand_cap, offsetof(struct entry, cand_pos), id);
}

void store_cand_del(struct lbd_store *st, uint32_t id)
{
	struct tenant *t = store_tenant_of(st, &st->e[id]);
	if (st->e[id].cand_pos != NONE)
		list_del(st, t->cand, &t->n_cand, offsetof(struct entry, cand_pos), id);
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
	if (!a->opens && a->used == 0)
		account_put(st, e->account);
	e->account = 0;
}

struct account *store_quota(struct lbd_store *st, uint32_t account, uint64_t need, int *err)
{
	struct account *a = account_of(st, account);

	*err = 0;
	if (a && a->limit && (a->used > a->limit || need > a->limit - a->used)) {
		st->c.quota_refusals++;
		*err = -EDQUOT;
		return NULL;
	}
	return a;
}

/* ---- inputs and blocks: what entries belong to ---- */

static uint32_t input_new(struct lbd_store *st, uint32_t bank, uint32_t seq_len,
			 const uint64_t fp[LB_FP_WORDS], const uint64_t exact[2])
{
	struct bank *b = &st->banks[bank];
	if (st->in_free == NONE &&
	    store_grow((void **)&st->in, &st->in_cap, sizeof(*st->in), &st->in_free,
		       offsetof(struct input, next_free)))
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

/* A layer entry leaves its input (no new hits). */
static void layer_detach(struct lbd_store *st, struct entry *e)
{
	struct input *in = &st->in[e->owner];
	struct lbp_layer_stats *ls = &st->banks[e->bank].layer[e->layer];

	in->layer[e->layer] = NONE;
	in->n_cached--;
	if (e->state == E_LIVE) {
		ls->leases -= e->leases; /* the holders keep their bytes, but not as this layer's */
		ls->entries--;
		ls->bytes -= e->bytes;
		st->c.entries--;
	}
	input_drop_if_empty(st, e->owner);
	e->owner = NONE;
}

/* ---- the tree of prefix blocks ---- */

static uint32_t block_new(struct lbd_store *st, struct bank *b, const uint64_t key[2],
			 uint32_t index, uint32_t parent, uint32_t eid)
{
	if (st->blk_free == NONE &&
	    store_grow((void **)&st->blk, &st->blk_cap, sizeof(*st->blk), &st->blk_free,
		       offsetof(struct block, next_free)))
		return NONE;
	uint32_t id = st->blk_free;
	if (lbd_exactmap_insert(b->blocks, key, id) < 0)
		return NONE;
	struct block *k = &st->blk[id];
	st->blk_free = k->next_free;
	*k = (struct block){ .key = { key[0], key[1] }, .bank = (uint32_t)(b - st->banks),
			     .entry = eid, .index = index, .parent = parent, .child = NONE,
			     .next = NONE, .prev = NONE, .used = 1 };
	if (parent != NONE) {
		struct block *p = &st->blk[parent];
		k->next = p->child;
		if (p->child != NONE)
			st->blk[p->child].prev = id;
		p->child = id;
	}
	st->e[eid].owner = id;
	return id;
}

void store_block_hold(struct lbd_store *st, uint32_t blk)
{
	if (st->blk[blk].n_children++ == 0)
		store_cand_del(st, st->blk[blk].entry);
}

void store_block_unhold(struct lbd_store *st, uint32_t blk)
{
	struct block *k = &st->blk[blk];
	if (--k->n_children == 0 && st->e[k->entry].state == E_LIVE)
		store_cand_add(st, k->entry); /* a leaf again */
}

static void entry_drop(struct lbd_store *st, uint32_t id, struct tally *t);

/* One block with no child left goes: out of its parent's children and its bank's map, its
 * slot free; its entry dropped, or, PENDING, left without an owner for its commit to drop. */
static void block_remove(struct lbd_store *st, uint32_t id, struct tally *t)
{
	struct block *k = &st->blk[id];
	uint32_t eid = k->entry;

	if (k->parent != NONE) {
		if (k->prev != NONE)
			st->blk[k->prev].next = k->next;
		else
			st->blk[k->parent].child = k->next;
		if (k->next != NONE)
			st->blk[k->next].prev = k->prev;
		store_block_unhold(st, k->parent);
	}
	lbd_exactmap_remove(st->banks[k->bank].blocks, k->key);
	k->used = 0;
	k->next_free = st->blk_free;
	st->blk_free = id;
	st->e[eid].owner = NONE;
	if (st->e[eid].state == E_LIVE)
		entry_drop(st, eid, t);
}

/* Block root and everything under it, leaves first (no recursion: a chain may be long). */
static void block_unlink_tree(struct lbd_store *st, uint32_t root, struct tally *t)
{
	uint32_t x = root;

	for (;;) {
		while (st->blk[x].child != NONE)
			x = st->blk[x].child;
		uint32_t up = st->blk[x].parent;
		bool last = x == root;
		block_remove(st, x, t);
		if (last)
			return;
		x = up;
	}
}

/* ---- entries ---- */

struct lb_entry_hdr *store_entry_hdr(const struct lbd_store *st, unsigned arena, uint64_t off)
{
	return (struct lb_entry_hdr *)((uint8_t *)st->arenas[arena].hdr + off);
}

uint64_t store_entry_need(uint64_t bytes)
{
	return (LB_ENTRY_HDR_SIZE + bytes + LBD_ALLOC_ALIGN - 1) & ~(uint64_t)(LBD_ALLOC_ALIGN - 1);
}

bool store_shape_ok(uint32_t dtype, uint32_t ndim, const uint32_t shape[LB_MAX_NDIM],
		    uint64_t bytes)
{
	uint64_t n = lbp_dtype_size(dtype);
	if (!n || ndim < 1 || ndim > LB_MAX_NDIM)
		return false;
	for (uint32_t i = 0; i < LB_MAX_NDIM; i++) {
		if (i >= ndim) {
			if (shape[i])
				return false;
			continue;
		}
		if (!shape[i] || n > UINT64_MAX / shape[i])
			return false;
		n *= shape[i];
	}
	return n == bytes;
}

/* Give an unlinked, unleased (or never published) entry's memory back. Its header loses the
 * magic first, so a reader holding no lease (a LOOKUP over the socket) cannot take old bytes
 * for a live entry. */
static void entry_free(struct lbd_store *st, uint32_t id)
{
	struct entry *e = &st->e[id];

	/* E3: pairs with E2 in lb_entry_live: a reader that finds the magic gone stops there. A
	 * reader without a lease may still race with the reuse of the block; one with a lease
	 * never sees this, as a leased entry is not freed. */
	atomic_store_explicit(lb_entry_magic(store_entry_hdr(st, e->arena, e->off)), 0,
			      memory_order_release);
	if (e->live_pos != NONE)
		list_del(st, st->live, &st->n_live, offsetof(struct entry, live_pos), id);
	lbd_alloc_put(st->alloc[e->arena], e->off);
	st->c.bytes_used -= e->bytes;
	store_tenant_of(st, e)->used -= e->bytes;
	st->ac[e->arena].bytes_used -= e->bytes;
	st->ac[e->arena].entries--;
	uncharge(st, e);
	store_entry_put(st, id);
}

static void tally_add(struct tally *t, const struct entry *e)
{
	if (!t)
		return;
	t->entries++;
	t->bytes += e->bytes;
	t->leased += e->leases != 0;
}

/* Take one entry out of the index: detached from its input, or for a block its tree node
 * gone already (block_remove); freed now if nobody leases it. A leased one keeps its
 * bytes counted as used, and pinned, until the last lease ends. */
static void entry_drop(struct lbd_store *st, uint32_t id, struct tally *t)
{
	struct entry *e = &st->e[id];

	tally_add(t, e);
	store_cand_del(st, id);
	if (e->kind == K_LAYER)
		layer_detach(st, e);
	else
		st->c.blocks--; /* block_remove took it out of the tree */
	e->state = E_DOOMED;
	if (e->leases == 0)
		entry_free(st, id);
}

void store_entry_unlink(struct lbd_store *st, uint32_t id, struct tally *t)
{
	if (st->e[id].kind == K_BLOCK)
		block_unlink_tree(st, st->e[id].owner, t); /* entry_drop for each of the subtree */
	else
		entry_drop(st, id, t);
}

/* Hits, each weighing half as much every half-life (kept whatever the policy: a snapshot
 * keeps it, so a restart under decay finds it). */
double store_decayed_score(const struct lbd_store *st, const struct entry *e, uint64_t now)
{
	if (!st->cfg.half_life_ns)
		return e->score;
	return e->score * exp2(-(double)(now - e->score_ns) / (double)st->cfg.half_life_ns);
}

bool store_expired(const struct lbd_store *st, const struct entry *e, uint64_t now)
{
	return st->cfg.policy == LBD_POLICY_TTL && now - e->created_ns > st->cfg.ttl_ns;
}

/* ---- placing, copying and publishing an entry ---- */

/* A new entry of kind in bank in the block at (arena, off): counted as used, its room in the
 * lists reserved. @return it; NONE (no memory) with the block given back. */
static uint32_t entry_place(struct lbd_store *st, uint8_t kind, uint32_t bank, unsigned arena,
			    uint64_t off, uint64_t need)
{
	uint32_t eid = store_entry_new(st, kind, bank);

	if (eid != NONE && store_live_reserve(st) < 0) {
		store_entry_put(st, eid);
		eid = NONE;
	}
	if (eid == NONE) {
		lbd_alloc_put(st->alloc[arena], off);
		return NONE;
	}
	struct entry *e = &st->e[eid];
	e->arena = (uint8_t)arena;
	e->off = off;
	e->bytes = need;
	st->c.bytes_used += need;
	store_tenant_of(st, e)->used += need;
	st->ac[arena].bytes_used += need;
	st->ac[arena].entries++;
	st->ac[arena].inserts++;
	return eid;
}

uint32_t store_layer_place(struct lbd_store *st, struct bank *b, const uint64_t fp[LB_FP_WORDS],
			   const uint64_t exact[2], uint32_t seq_len, uint32_t layer,
			   unsigned arena, uint64_t off, uint64_t need)
{
	uint32_t id = NONE, bank = (uint32_t)(b - st->banks);

	if (lbd_exactmap_find(b->exact, exact, &id) < 0)
		id = input_new(st, bank, seq_len, fp, exact);
	if (id == NONE) {
		lbd_alloc_put(st->alloc[arena], off);
		return NONE;
	}
	uint32_t eid = entry_place(st, K_LAYER, bank, arena, off, need);
	if (eid == NONE) {
		input_drop_if_empty(st, id);
		return NONE;
	}
	st->e[eid].owner = id;
	st->e[eid].layer = (uint16_t)layer;
	st->in[id].layer[layer] = eid;
	st->in[id].n_cached++;
	return eid;
}

uint32_t store_block_place(struct lbd_store *st, struct bank *b, const uint64_t key[2],
			   uint32_t index, uint32_t parent, unsigned arena, uint64_t off,
			   uint64_t need)
{
	uint32_t eid = entry_place(st, K_BLOCK, (uint32_t)(b - st->banks), arena, off, need);

	if (eid != NONE && block_new(st, b, key, index, parent, eid) == NONE) {
		entry_free(st, eid);
		return NONE;
	}
	return eid;
}

void store_entry_pending(struct lbd_store *st, uint32_t eid, struct account *a, uint32_t account)
{
	struct entry *e = &st->e[eid];

	e->state = E_PENDING;
	st->pinned += e->bytes;
	st->n_pending++;
	if (a) {
		e->account = account;
		a->used += e->bytes;
	}
}

void store_entry_copied(struct lbd_store *st, uint32_t eid, uint32_t gen, uint64_t now)
{
	struct entry *e = &st->e[eid];

	if (e->gen != gen || e->state != E_PENDING)
		abort(); /* pending entries are never freed by anyone else */
	e->created_ns = e->last_ns = e->score_ns = now;
	e->score = 1.0;
	st->pinned -= e->bytes;
	st->n_pending--;
}

void store_entry_abandon(struct lbd_store *st, uint32_t eid)
{
	struct entry *e = &st->e[eid];

	if (e->kind == K_LAYER && e->owner != NONE)
		layer_detach(st, e);
	else if (e->kind == K_BLOCK && e->owner != NONE)
		block_unlink_tree(st, e->owner, NULL); /* any children being placed are cut too */
	entry_free(st, eid);
}

void store_entry_go_live(struct lbd_store *st, uint32_t eid)
{
	struct entry *e = &st->e[eid];

	e->state = E_LIVE;
	list_add(st, st->live, &st->n_live, st->live_cap, offsetof(struct entry, live_pos), eid);
	if (e->kind == K_LAYER) {
		struct lbp_layer_stats *ls = &st->banks[e->bank].layer[e->layer];
		ls->entries++;
		ls->bytes += e->bytes;
		st->c.entries++;
		store_cand_add(st, eid);
	} else {
		st->c.blocks++;
		if (st->blk[e->owner].n_children == 0)
			store_cand_add(st, eid); /* a leaf: evictable */
	}
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

void store_entry_publish(struct lb_entry_hdr *h, const struct lb_entry_hdr *tmpl,
			 const uint8_t *data, const void *tokens, bool checksum_given)
{
	const size_t body = offsetof(struct lb_entry_hdr, model_id); /* all but the magic */
	uint8_t *dst = (uint8_t *)h + LB_ENTRY_HDR_SIZE;

	/* The block may hold anything (a freed entry's bytes): no magic until all is in place. */
	atomic_store_explicit(lb_entry_magic(h), 0, memory_order_relaxed);
	memset((uint8_t *)h + body, 0, LB_ENTRY_HDR_SIZE - body);
	copy_in(dst, data, tmpl->bytes);
	if (tmpl->n_tokens)
		memcpy(dst + lb_tokens_off(tmpl->bytes), tokens, (size_t)tmpl->n_tokens * sizeof(int32_t));
	memcpy((uint8_t *)h + body, (const uint8_t *)tmpl + body, sizeof(*h) - body);
	if (!checksum_given)
		h->checksum = XXH3_64bits(dst, tmpl->bytes);
	/* E1: pairs with E2 in lb_entry_live: data and header are written before the magic. */
	atomic_store_explicit(lb_entry_magic(h), LB_ENTRY_MAGIC, memory_order_release);
}

/* ---- room and eviction ---- */

/* The victim score: lower goes first. */
static double victim_score(const struct lbd_store *st, const struct entry *e, uint64_t now)
{
	switch (st->cfg.policy) {
	case LBD_POLICY_DECAY:
		return store_decayed_score(st, e, now);
	case LBD_POLICY_TTL:
		return (double)e->created_ns; /* oldest first: it expires first */
	case LBD_POLICY_LRU:
		break;
	}
	return (double)e->last_ns;
}

/* Evict one unleased candidate of tenant t chosen by the policy from a sample: one in arena
 * home if the sample has one (home -1: any). @return 0, -ENOSPC. */
static int evict_one(struct lbd_store *st, unsigned t, int home, uint64_t now)
{
	const struct tenant *ten = &st->ten[t];
	uint32_t best = NONE, n = ten->n_cand;
	bool best_home = false;
	double best_score = 0;

	for (uint32_t k = 0; k < (n < SAMPLE ? n : SAMPLE); k++) {
		/* Below SAMPLE candidates look at every one: exact policy for small caches. */
		uint32_t id = ten->cand[n <= SAMPLE ? k : (uint32_t)(rnd(st) % n)];
		const struct entry *e = &st->e[id];
		if (e->leases)
			continue;
		bool at_home = home < 0 || e->arena == (unsigned)home;
		double s = victim_score(st, e, now);
		if (best == NONE || (at_home && !best_home) ||
		    (at_home == best_home && s < best_score)) {
			best = id;
			best_score = s;
			best_home = at_home;
		}
	}
	if (best == NONE && n > SAMPLE) {
		/* The sample was all leased: scan for any candidate before giving up. */
		for (uint32_t k = 0; k < n && best == NONE; k++)
			if (!st->e[ten->cand[k]].leases)
				best = ten->cand[k];
	}
	if (best == NONE)
		return -ENOSPC;
	if (st->e[best].kind == K_LAYER)
		st->banks[st->e[best].bank].layer[st->e[best].layer].evictions++;
	st->c.evictions++;
	store_entry_unlink(st, best, NULL); /* a leaf: nothing below it */
	return 0;
}

/* The arena of tenant t on node, or -1 (node -1, or no such arena). */
static int home_arena(const struct lbd_store *st, unsigned t, int node)
{
	for (unsigned i = 0; node >= 0 && i < st->n_arenas; i++)
		if (st->arenas[i].tenant == t && st->arenas[i].node == node)
			return (int)i;
	return -1;
}

int store_alloc_in(struct lbd_store *st, unsigned tenant, int node, uint64_t need,
		   unsigned *arena, uint64_t *off)
{
	int home = home_arena(st, tenant, node);

	if (home >= 0 && lbd_alloc_get(st->alloc[home], need, off) == 0) {
		*arena = (unsigned)home;
		return 0;
	}
	for (unsigned i = 0; i < st->n_arenas; i++)
		if (st->arenas[i].tenant == tenant && (int)i != home &&
		    lbd_alloc_get(st->alloc[i], need, off) == 0) {
			*arena = i;
			if (home >= 0)
				st->ac[home].remote++;
			return 0;
		}
	return -ENOSPC;
}

uint64_t store_tenant_budget(const struct lbd_store *st, unsigned t)
{
	if (st->n_tenants == 1)
		return st->c.bytes_budget;
	return (uint64_t)((long double)st->c.bytes_budget * st->ten[t].data_bytes / st->data_bytes);
}

int store_make_room(struct lbd_store *st, const struct bank *b, int node, uint64_t need,
		    uint64_t now, unsigned *arena, uint64_t *off)
{
	const struct tenant *t = &st->ten[b->tenant];
	uint64_t budget = store_tenant_budget(st, b->tenant);
	int home = home_arena(st, b->tenant, node);

	/* What eviction cannot free is not worth evicting for: fail before dropping anything. */
	if (st->pinned >= st->c.bytes_budget || need > st->c.bytes_budget - st->pinned ||
	    need > budget)
		return -ENOSPC;
	for (int round = 0; round < MAX_EVICT_ROUNDS; round++) {
		if (t->used + need <= budget &&
		    store_alloc_in(st, b->tenant, node, need, arena, off) == 0)
			return 0;
		if (evict_one(st, b->tenant, home, now) < 0)
			return -ENOSPC;
	}
	return -ENOSPC;
}

/*
 * A walk over live[] for the entries to drop: the next LIVE entry from position *k that pick
 * chooses, or NONE at the end. Dropping one moves the last entry into its place (or leaves it
 * there, DOOMED, while leased), so the walk goes on from the same *k; so it does after the lock
 * was let go and live[] reordered. A block drops with its subtree, which can move entries the
 * walk has not seen behind it: a walk that must drop every match repeats until a pass drops
 * nothing (drop_all).
 */
typedef bool (*pick_fn)(const struct lbd_store *st, const struct entry *e, const void *ctx);

static uint32_t live_find(const struct lbd_store *st, uint32_t *k, pick_fn pick, const void *ctx)
{
	for (; *k < st->n_live; (*k)++) {
		const struct entry *e = &st->e[st->live[*k]];
		if (e->state == E_LIVE && pick(st, e, ctx))
			return st->live[*k];
	}
	return NONE;
}

/* Drop every LIVE entry pick chooses, adding to t; batch > 0 lets the lock go after every batch
 * drops (hand_over). */
static void hand_over(struct lbd_store *st);
static void drop_all(struct lbd_store *st, pick_fn pick, const void *ctx, uint32_t batch,
		     struct tally *t)
{
	bool dropped = true;

	while (dropped) {
		uint32_t id, in_batch = 0;
		dropped = false;
		for (uint32_t k = 0; (id = live_find(st, &k, pick, ctx)) != NONE;) {
			store_entry_unlink(st, id, t);
			dropped = true;
			if (batch && ++in_batch == batch) {
				in_batch = 0;
				hand_over(st);
			}
		}
	}
}

static bool pick_expired(const struct lbd_store *st, const struct entry *e, const void *now)
{
	return store_expired(st, e, *(const uint64_t *)now);
}

void lbd_store_expire(struct lbd_store *st)
{
	uint64_t now = lb_now_ns();
	struct tally t = { 0 };

	store_lock(st);
	drop_all(st, pick_expired, &now, 0, &t);
	st->c.expirations += t.entries;
	store_unlock(st);
}

/* ---- leases ---- */

/* A free slot of ls, grown up to max. @return the slot, or NONE with *err. */
static uint32_t lease_slot(struct lbd_leases *ls, uint32_t max, int *err)
{
	if (ls->cap == 0 || ls->free_head == NONE) {
		uint32_t old = ls->cap, ncap = old ? old * 2 : 64;
		if (old >= max || old > UINT32_MAX / 4) {
			*err = -EBUSY;
			return NONE;
		}
		struct lbd_lease *p = realloc(ls->slot, sizeof(*p) * ncap);
		if (!p) {
			*err = -ENOMEM;
			return NONE;
		}
		memset(p + old, 0, sizeof(*p) * (ncap - old));
		for (uint32_t i = old; i < ncap; i++)
			p[i].next = i + 1 < ncap ? i + 1 : NONE;
		ls->free_head = old; /* the list was empty: it is the new slots */
		ls->slot = p;
		ls->cap = ncap;
	}
	return ls->free_head;
}

static void lease_pin(struct lbd_store *st, uint32_t id)
{
	struct entry *e = &st->e[id];

	if (e->leases++ == 0 && e->state == E_LIVE)
		st->pinned += e->bytes;
	if (e->kind == K_LAYER && e->state == E_LIVE)
		st->banks[e->bank].layer[e->layer].leases++;
}

static void lease_unpin(struct lbd_store *st, uint32_t id)
{
	struct entry *e = &st->e[id];

	e->leases--;
	if (e->kind == K_LAYER && e->state == E_LIVE)
		st->banks[e->bank].layer[e->layer].leases--;
	if (e->leases == 0) {
		st->pinned -= e->bytes;
		if (e->state == E_DOOMED)
			entry_free(st, id);
	}
}

int store_lease_take(struct lbd_store *st, struct lbd_leases *ls, const uint32_t *ids, uint32_t n,
		     uint32_t max, uint64_t *handle)
{
	int err = 0;
	uint32_t *more = NULL;
	uint32_t s = lease_slot(ls, max, &err);

	if (s == NONE)
		return err;
	if (n > 1) {
		more = malloc(sizeof(*more) * (n - 1));
		if (!more)
			return -ENOMEM;
		memcpy(more, ids + 1, sizeof(*more) * (n - 1));
	}
	struct lbd_lease *l = &ls->slot[s];
	ls->free_head = l->next;
	l->used = 1;
	l->claim = 0;
	l->gen++;
	l->entry = ids[0];
	l->hamming = 0;
	l->n_more = n - 1;
	l->more = more;
	ls->n_used++;
	for (uint32_t i = 0; i < n; i++)
		lease_pin(st, ids[i]);
	st->c.leases++;
	/* Slot + 1 in the high half, so that no valid handle is 0 (store_lease_of). */
	*handle = ((uint64_t)(s + 1) << 32) | l->gen;
	return 0;
}

int store_lease_claim(struct lbd_store *st, struct lbd_leases *ls, uint32_t id, uint32_t max,
		      uint64_t *handle)
{
	int err = 0;
	uint32_t s = lease_slot(ls, max, &err);

	(void)st;
	if (s == NONE)
		return err;
	struct lbd_lease *l = &ls->slot[s];
	ls->free_head = l->next;
	*l = (struct lbd_lease){ .entry = id, .gen = l->gen + 1, .used = 1, .claim = 1 };
	ls->n_used++;
	ls->n_claims++;
	*handle = ((uint64_t)(s + 1) << 32) | l->gen;
	return 0;
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

	l->used = 0;
	l->next = ls->free_head;
	ls->free_head = s;
	ls->n_used--;
	if (l->claim) {
		if (--ls->n_claims == 0)
			ls->claims_until = 0;
		store_claim_end(st, l->entry);
		return;
	}
	st->c.leases--;
	lease_unpin(st, l->entry);
	for (uint32_t i = 0; i < l->n_more; i++)
		lease_unpin(st, l->more[i]);
	free(l->more);
	l->more = NULL;
	l->n_more = 0;
}

void lbd_store_release(struct lbd_store *st, struct lbd_leases *ls, uint64_t lease, struct lb_cpl *cpl)
{
	store_lock(st);
	uint32_t s = lease_find(ls, lease);
	if (s == NONE)
		cpl->status = -EINVAL;
	else
		lease_end(st, ls, s);
	store_unlock(st);
}

static void bank_radius(const struct lbd_store *st, struct bank *b);

void lbd_store_report(struct lbd_store *st, struct lbd_leases *ls, uint64_t lease, int layer,
		      float drift, struct lb_cpl *cpl)
{
	if (!isfinite(drift) || drift < 0) {
		cpl->status = -EINVAL;
		return;
	}
	store_lock(st);
	uint32_t s = lease_find(ls, lease);
	/* A drift is of one layer's output: a prefix hit (exact blocks) has none to report, nor
	 * has a claim. */
	if (s == NONE || ls->slot[s].claim || ls->slot[s].n_more ||
	    st->e[ls->slot[s].entry].kind != K_LAYER ||
	    (layer >= 0 && (uint32_t)layer > st->e[ls->slot[s].entry].layer)) {
		cpl->status = -EINVAL;
		store_unlock(st);
		return;
	}
	uint32_t id = ls->slot[s].entry;
	struct bank *b = &st->banks[st->e[id].bank];
	bool own = layer < 0 || (uint32_t)layer == st->e[id].layer;
	/* Only with a target does a report move the threshold (and then the bank's radii). */
	if (lbd_adapt_report(&b->adapt[own ? st->e[id].layer : (uint32_t)layer],
			     ls->slot[s].hamming, drift, st->cfg.drift_target))
		bank_radius(st, b);
	if (own && drift > st->cfg.drift_max) {
		if (st->e[id].state == E_LIVE) {
			/* The lease holder keeps its bytes; nobody else gets this entry again. */
			st->c.invalidations++;
			store_entry_unlink(st, id, NULL);
		}
	}
	store_unlock(st);
}

void lbd_store_release_all(struct lbd_store *st, struct lbd_leases *ls)
{
	store_lock(st);
	for (uint32_t s = 0; s < ls->cap; s++)
		if (ls->slot[s].used)
			lease_end(st, ls, s);
	store_unlock(st);
}

void lbd_leases_free(struct lbd_leases *ls)
{
	for (uint32_t s = 0; s < ls->cap; s++)
		free(ls->slot[s].more); /* NULL for slots release_all ended */
	free(ls->slot);
	memset(ls, 0, sizeof(*ls));
}

/* ---- banks ---- */

struct bank *store_bank_of(struct lbd_store *st, uint32_t model_id)
{
	if (model_id == 0 || model_id > st->n_banks || st->banks[model_id - 1].desc.n_layers == 0 ||
	    st->banks[model_id - 1].retired)
		return NULL;
	return &st->banks[model_id - 1];
}

double store_layer_tau(const struct lbd_store *st, const struct bank *b, uint32_t l)
{
	if (!isnan(b->tau[l]))
		return b->tau[l];
	if (st->cfg.drift_target > 0)
		return lbp_fp_similarity(lbd_adapt_max_hamming(&b->adapt[l]));
	return st->cfg.tau;
}

/* LOOKUP_DEEPEST's radii without thresholds: the loosest layer's to search, the tightest
 * layer's to stop early (good_d, lbd_fpindex_nearest). */
static void bank_radius(const struct lbd_store *st, struct bank *b)
{
	uint32_t max_d = 0, good_d = UINT32_MAX;

	for (uint32_t l = 0; l < b->desc.n_layers; l++) {
		uint32_t d = lbp_fp_max_hamming(store_layer_tau(st, b, l));
		max_d = d > max_d ? d : max_d;
		good_d = d < good_d ? d : good_d;
	}
	b->max_d_default = max_d;
	b->good_d_default = good_d;
}

static void bank_free(struct bank *b)
{
	lbd_fpindex_free(b->fps);
	lbd_exactmap_free(b->exact);
	lbd_exactmap_free(b->blocks);
	lbd_exactmap_free(b->claims);
	free(b->layer);
	free(b->tau);
	free(b->adapt);
	memset(b, 0, sizeof(*b));
}

/* A bank for model d. @return 0, -ENOMEM (b left empty). */
static int bank_init(struct lbd_store *st, struct bank *b, const struct lbp_register_model *d)
{
	b->fps = lbd_fpindex_new(1024);
	b->exact = lbd_exactmap_new(1024);
	b->blocks = d->kv.dim ? lbd_exactmap_new(1024) : NULL;
	b->layer = calloc(d->n_layers, sizeof(*b->layer));
	b->tau = malloc(d->n_layers * sizeof(*b->tau));
	b->adapt = malloc(d->n_layers * sizeof(*b->adapt));
	if (!b->fps || !b->exact || (d->kv.dim && !b->blocks) || !b->layer || !b->tau || !b->adapt) {
		bank_free(b);
		return -ENOMEM;
	}
	for (uint32_t l = 0; l < d->n_layers; l++) {
		b->tau[l] = NAN;
		lbd_adapt_init(&b->adapt[l]);
	}
	b->desc = *d;
	bank_radius(st, b);
	return 0;
}

/* ---- setup ---- */

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
	st->e_free = st->in_free = st->blk_free = st->acct_free = st->cl_free = NONE;
	st->rng = RNG_SEED;
	for (unsigned i = 0; i < n_arenas; i++) {
		const struct lb_arena_hdr *h = arenas[i].hdr;
		st->alloc[i] = lbd_alloc_new(arenas[i].hdr, h->data_off, h->data_bytes & ~(uint64_t)(LBD_ALLOC_ALIGN - 1));
		if (!st->alloc[i] || arenas[i].tenant >= LBP_MAX_ARENAS) {
			lbd_store_free(st);
			return NULL;
		}
		data += h->data_bytes;
		st->ten[arenas[i].tenant].data_bytes += h->data_bytes;
		if (arenas[i].tenant >= st->n_tenants)
			st->n_tenants = arenas[i].tenant + 1;
	}
	/* Every tenant up to the largest holds an arena: none can be without room. */
	for (unsigned t = 0; t < st->n_tenants; t++)
		if (!st->ten[t].data_bytes) {
			lbd_store_free(st);
			return NULL;
		}
	st->data_bytes = data;
	st->c.bytes_budget = cfg->budget && cfg->budget < data ? cfg->budget : data;
	snprintf(st->c.policy, sizeof(st->c.policy), "%s", lbd_policy_name(cfg->policy));
	return st;
}

void lbd_store_set_tenants(struct lbd_store *st, lbd_tenant_of_fn fn, const void *ctx)
{
	store_lock(st);
	st->tenant_of = fn;
	st->tenant_ctx = ctx;
	store_unlock(st);
}

void lbd_store_arena_counts(struct lbd_store *st, struct lbd_arena_counts *out)
{
	store_lock(st);
	memcpy(out, st->ac, sizeof(*out) * st->n_arenas);
	store_unlock(st);
}

void lbd_store_set_tier(struct lbd_store *st, const struct lbd_store_tier *t)
{
	store_lock(st);
	if (t)
		st->tier = *t;
	else
		memset(&st->tier, 0, sizeof(st->tier));
	store_unlock(st);
}

void lbd_store_tier_done(struct lbd_store *st, uint64_t claim)
{
	struct lb_cpl cpl = { 0 };
	lbd_store_release(st, &st->tier_leases, claim, &cpl);
}

void lbd_store_free(struct lbd_store *st)
{
	if (!st)
		return;
	lbd_leases_free(&st->tier_leases);
	for (uint32_t i = 0; i < st->in_cap; i++)
		free(st->in[i].layer);
	for (uint32_t i = 0; i < st->n_banks; i++)
		bank_free(&st->banks[i]);
	for (unsigned i = 0; i < st->n_arenas; i++)
		lbd_alloc_free_all(st->alloc[i]);
	free(st->banks);
	free(st->e);
	free(st->in);
	free(st->blk);
	free(st->live);
	for (unsigned t = 0; t < st->n_tenants; t++)
		free(st->ten[t].cand);
	free(st->acct);
	free(st->cl);
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
	if (!st->banks[model_id - 1].desc.n_layers) {
		unsigned t = st->tenant_of ? st->tenant_of(st->tenant_ctx, d->name) : 0;
		/* A tenant without arenas would have nowhere to put its entries. */
		ret = t < st->n_tenants ? bank_init(st, &st->banks[model_id - 1], d) : -EINVAL;
		if (ret == 0)
			st->banks[model_id - 1].tenant = t;
	}
out:
	store_unlock(st);
	return ret;
}

bool lbd_store_has_model(struct lbd_store *st, uint32_t model_id)
{
	store_lock(st);
	bool has = store_bank_of(st, model_id) != NULL;
	store_unlock(st);
	return has;
}

/* Free slots threaded lowest first, as store_grow() threads a new table's. */
#define RETHREAD(arr, cap, head)                                                                \
	do {                                                                                    \
		(head) = NONE;                                                                  \
		for (uint32_t i_ = (cap); i_-- > 0;) {                                          \
			(arr)[i_].next_free = (head);                                           \
			(head) = i_;                                                            \
		}                                                                               \
	} while (0)

int lbd_store_clear(struct lbd_store *st)
{
	store_lock(st);
	if (st->c.leases || st->pinned || st->n_claims) {
		store_unlock(st);
		return -EBUSY;
	}
	/* No lease: every entry in live[] is LIVE and goes at once, its owner with its last one. */
	while (st->n_live)
		store_entry_unlink(st, st->live[st->n_live - 1], NULL);
	RETHREAD(st->e, st->e_cap, st->e_free);
	RETHREAD(st->in, st->in_cap, st->in_free);
	RETHREAD(st->blk, st->blk_cap, st->blk_free);
	for (uint32_t b = 0; b < st->n_banks; b++)
		if (st->banks[b].desc.n_layers)
			memset(st->banks[b].layer, 0, sizeof(*st->banks[b].layer) * st->banks[b].desc.n_layers);
	uint64_t budget = st->c.bytes_budget;
	char policy[sizeof(st->c.policy)];
	memcpy(policy, st->c.policy, sizeof(policy));
	memset(&st->c, 0, sizeof(st->c));
	st->c.bytes_budget = budget;
	/* Every entry went: the arenas hold nothing, and their counts start again with st->c's. */
	memset(st->ac, 0, sizeof(st->ac));
	memcpy(st->c.policy, policy, sizeof(policy));
	st->rng = RNG_SEED;
	store_unlock(st);
	return 0;
}

static bool pick_bank(const struct lbd_store *st, const struct entry *e, const void *bank)
{
	(void)st;
	return e->bank == *(const uint32_t *)bank;
}

int64_t lbd_store_drop_model(struct lbd_store *st, uint32_t model_id)
{
	struct tally t = { 0 };
	int64_t n;

	store_lock(st);
	struct bank *b = store_bank_of(st, model_id);
	if (!b) {
		n = -ENOENT;
	} else {
		uint32_t bank = model_id - 1;
		b->retired = true;
		drop_all(st, pick_bank, &bank, 0, &t);
		n = (int64_t)t.entries;
	}
	store_unlock(st);
	return n;
}

/* ---- insert accounts ---- */

/* The live account of owner (not 0), or 0. Under the store lock. */
static uint32_t account_find(const struct lbd_store *st, uint64_t owner)
{
	for (uint32_t i = 0; i < st->acct_cap; i++)
		if (st->acct[i].in_use && st->acct[i].owner == owner)
			return i + 1;
	return 0;
}

uint32_t lbd_store_account_join(struct lbd_store *st, uint64_t owner, uint64_t limit)
{
	uint32_t id;

	store_lock(st);
	id = owner ? account_find(st, owner) : 0;
	if (id) {
		st->acct[id - 1].opens++;
		st->acct[id - 1].limit = limit;
	} else if (st->acct_free != NONE ||
		   store_grow((void **)&st->acct, &st->acct_cap, sizeof(*st->acct), &st->acct_free,
			      offsetof(struct account, next_free)) == 0) {
		struct account *a = &st->acct[st->acct_free];
		id = st->acct_free + 1;
		st->acct_free = a->next_free;
		*a = (struct account){ .limit = limit, .owner = owner, .opens = 1, .in_use = 1 };
	}
	store_unlock(st);
	if (!id)
		errno = ENOMEM;
	return id;
}

uint32_t lbd_store_account_open(struct lbd_store *st, uint64_t limit)
{
	return lbd_store_account_join(st, 0, limit);
}

void lbd_store_account_close(struct lbd_store *st, uint32_t id)
{
	store_lock(st);
	struct account *a = account_of(st, id);
	if (a && a->opens && --a->opens == 0 && a->used == 0)
		account_put(st, id);
	store_unlock(st);
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
	store_unlock(st);
}

/* ---- counters ---- */

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
	r->blocks = st->c.blocks;
	r->prefix_hits = st->c.prefix_hits;
	r->prefix_misses = st->c.prefix_misses;
	r->blocks_served = st->c.blocks_served;
	memcpy(r->policy, st->c.policy, sizeof(r->policy));
	for (unsigned i = 0; i < st->n_arenas; i++) {
		lbd_alloc_stats(st->alloc[i], &as);
		free_b += as.bytes_free;
		largest = as.largest_free > largest ? as.largest_free : largest;
	}
	store_unlock(st);
	r->fragmentation_ppm = free_b ? (uint32_t)(1e6 * (1.0 - (double)largest / (double)free_b)) : 0;
}

int lbd_store_model_stats(struct lbd_store *st, uint32_t model_id, uint32_t first_layer,
			  struct lbp_model_stats_reply *r)
{
	int ret = 0;
	store_lock(st);
	struct bank *b = store_bank_of(st, model_id);
	if (!b) {
		ret = -ENOENT;
	} else {
		r->model_id = model_id;
		memcpy(r->name, b->desc.name, sizeof(r->name));
		r->n_layers = b->desc.n_layers;
		r->first_layer = first_layer;
		r->n = 0;
		for (uint32_t l = first_layer; l < b->desc.n_layers && r->n < LBP_MAX_STATS_LAYERS; l++) {
			struct lbp_layer_stats *o = &r->layers[r->n++];
			const struct lbd_adapt *a = &b->adapt[l];
			*o = b->layer[l];
			o->max_hamming = lbp_fp_max_hamming(store_layer_tau(st, b, l));
			o->reports = a->reports;
			o->reports_over = a->over;
			o->drift_micro = (uint64_t)llround(a->drift_sum * 1e6);
		}
	}
	store_unlock(st);
	return ret;
}

/* ---- invariants ---- */

static int bad(char *why, size_t n, const char *what, uint32_t id)
{
	snprintf(why, n, "%s (slot %u)", what, id);
	return -EPROTO;
}

/* Each block's place in the tree: its parent in use, one place up, counting it. */
static int check_blocks(const struct lbd_store *st, char *why, size_t n)
{
	for (uint32_t i = 0; i < st->blk_cap; i++) {
		const struct block *k = &st->blk[i];
		uint32_t kids = 0;
		if (!k->used)
			continue;
		if (st->e[k->entry].owner != i || st->e[k->entry].kind != K_BLOCK)
			return bad(why, n, "block and entry disagree", i);
		if (k->parent != NONE && (!st->blk[k->parent].used ||
					  st->blk[k->parent].index + 1 != k->index))
			return bad(why, n, "block without its parent: a hole", i);
		if (k->parent == NONE && k->index)
			return bad(why, n, "block past 0 without a parent", i);
		for (uint32_t c = k->child; c != NONE; c = st->blk[c].next)
			if (st->blk[c].parent != i || ++kids > st->blk_cap)
				return bad(why, n, "child list broken", i);
		if (kids != k->n_children)
			return bad(why, n, "child count wrong", i);
	}
	return 0;
}

/* An entry is a candidate exactly when LIVE and a layer's or a leaf block's; in live[] exactly
 * when LIVE, or DOOMED and leased. */
static int check_lists(const struct lbd_store *st, char *why, size_t n)
{
	uint64_t used = 0, live = 0, cand = 0, t_cand = 0, t_used = 0;
	uint64_t a_used[LBP_MAX_ARENAS] = { 0 }, a_entries[LBP_MAX_ARENAS] = { 0 };

	for (uint32_t i = 0; i < st->e_cap; i++) {
		const struct entry *e = &st->e[i];
		bool is_cand = e->state == E_LIVE &&
			       (e->kind == K_LAYER || st->blk[e->owner].n_children == 0);
		bool is_live = e->state == E_LIVE || (e->state == E_DOOMED && e->leases);
		if (e->state == E_FREE)
			continue;
		const struct tenant *t = &st->ten[st->arenas[e->arena].tenant];
		used += e->bytes;
		live += is_live;
		cand += is_cand;
		a_used[e->arena] += e->bytes;
		a_entries[e->arena]++;
		if (is_cand != (e->cand_pos != NONE) ||
		    (e->cand_pos != NONE && t->cand[e->cand_pos] != i))
			return bad(why, n, "candidate list wrong", i);
		if (is_live != (e->live_pos != NONE) ||
		    (e->live_pos != NONE && st->live[e->live_pos] != i))
			return bad(why, n, "live list wrong", i);
	}
	for (unsigned t = 0; t < st->n_tenants; t++) {
		t_cand += st->ten[t].n_cand;
		t_used += st->ten[t].used;
	}
	if (live != st->n_live || cand != t_cand || used != st->c.bytes_used || used != t_used)
		return bad(why, n, "list lengths or bytes_used wrong", NONE);
	for (unsigned a = 0; a < st->n_arenas; a++)
		if (a_used[a] != st->ac[a].bytes_used || a_entries[a] != st->ac[a].entries)
			return bad(why, n, "an arena's bytes or entries wrong", NONE);
	return 0;
}

int lbd_store_check(struct lbd_store *st, char *why, size_t n)
{
	store_lock(st);
	int ret = check_blocks(st, why, n);
	if (ret == 0)
		ret = check_lists(st, why, n);
	if (ret == 0)
		ret = store_claim_check(st, why, n);
	store_unlock(st);
	return ret;
}

/* ---- run-time settings ---- */

void lbd_store_get_cfg(struct lbd_store *st, struct lbd_store_cfg *out)
{
	store_lock(st);
	*out = st->cfg;
	store_unlock(st);
}

uint64_t lbd_store_configure(struct lbd_store *st, const struct lbd_store_cfg *cfg)
{
	uint64_t now = lb_now_ns(), evicted = 0;

	store_lock(st);
	bool tau_changed = cfg->tau != st->cfg.tau || cfg->drift_target != st->cfg.drift_target;
	st->cfg = *cfg;
	snprintf(st->c.policy, sizeof(st->c.policy), "%s", lbd_policy_name(cfg->policy));
	if (tau_changed)
		for (uint32_t i = 0; i < st->n_banks; i++)
			if (st->banks[i].desc.n_layers)
				bank_radius(st, &st->banks[i]);
	st->c.bytes_budget = cfg->budget && cfg->budget < st->data_bytes ? cfg->budget : st->data_bytes;
	/* Down to the new budget as an insert would make room: by the policy, never an entry
	 * under lease or being inserted; what those hold stays over the budget until they end. */
	for (unsigned t = 0; t < st->n_tenants; t++)
		while (st->ten[t].used > store_tenant_budget(st, t) && evict_one(st, t, -1, now) == 0)
			evicted++;
	store_unlock(st);
	return evicted;
}

int lbd_store_layer_taus(struct lbd_store *st, uint32_t model_id, double *own, double *in_force,
			 struct lbd_adapt *ctl, uint32_t n)
{
	int ret;

	store_lock(st);
	struct bank *b = store_bank_of(st, model_id);
	if (!b) {
		ret = -ESRCH;
	} else {
		ret = (int)b->desc.n_layers;
		for (uint32_t l = 0; l < n && l < b->desc.n_layers; l++) {
			if (own)
				own[l] = b->tau[l];
			if (in_force)
				in_force[l] = store_layer_tau(st, b, l);
			if (ctl)
				ctl[l] = b->adapt[l];
		}
	}
	store_unlock(st);
	return ret;
}

int lbd_store_adapt_set(struct lbd_store *st, uint32_t model_id, const struct lbd_adapt *in,
			uint32_t n)
{
	int ret = 0;

	store_lock(st);
	struct bank *b = store_bank_of(st, model_id);
	if (!b)
		ret = -ESRCH;
	else if (n > b->desc.n_layers)
		ret = -EINVAL;
	for (uint32_t l = 0; ret == 0 && l < n; l++)
		if (!lbd_adapt_valid(&in[l]))
			ret = -EINVAL;
	if (ret == 0) {
		memcpy(b->adapt, in, sizeof(*in) * n);
		bank_radius(st, b);
	}
	store_unlock(st);
	return ret;
}

int lbd_store_set_layer_tau(struct lbd_store *st, uint32_t model_id, uint32_t layer, double tau)
{
	int ret = 0;

	store_lock(st);
	struct bank *b = store_bank_of(st, model_id);
	if (!b)
		ret = -ESRCH;
	else if (layer >= b->desc.n_layers || (!isnan(tau) && !(tau >= -1.0 && tau <= 1.0)))
		ret = -EINVAL;
	else {
		b->tau[layer] = tau;
		bank_radius(st, b);
	}
	store_unlock(st);
	return ret;
}

/* ---- flush ---- */

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

	store_unlock(st);
	while (atomic_load_explicit(&st->acquired, memory_order_relaxed) == seen &&
	       lb_now_ns() - t0 < LBD_HAND_OVER_US * 1000u)
		_mm_pause();
	store_lock(st);
}

/* What a flush drops: entries live when it began, of one bank (or all), of one layer (or all:
 * then prefix blocks too). */
struct flush_pick {
	uint64_t t0;
	uint32_t bank; /* an index: the bank array may move while the lock is let go */
	bool all_banks;
	int layer;     /* -1: all */
};

static bool pick_flushed(const struct lbd_store *st, const struct entry *e, const void *ctx)
{
	const struct flush_pick *f = ctx;
	(void)st;
	return e->created_ns <= f->t0 && (f->all_banks || e->bank == f->bank) &&
	       (f->layer < 0 || (e->kind == K_LAYER && e->layer == (uint32_t)f->layer));
}

int lbd_store_flush_batched(struct lbd_store *st, uint32_t model_id, int layer, uint32_t batch,
			    struct lbd_flush_result *out)
{
	struct flush_pick f = { .t0 = lb_now_ns(), .all_banks = model_id == 0, .layer = layer };
	struct tally t = { 0 };
	int ret = 0;

	memset(out, 0, sizeof(*out));
	store_lock(st);
	if (model_id) {
		const struct bank *b = store_bank_of(st, model_id);
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
	 * Passes over live[], which holds every LIVE entry, dropping those that were live when the
	 * flush began (created by t0). An entry under lease is unlinked like an invalidated one:
	 * no lookup finds it again, and its holders keep reading it unchanged until the last lease
	 * ends and frees it. The lock is let go after every batch of drops so that the service
	 * threads go on serving; meanwhile their evictions and invalidations reorder the list,
	 * which can move an entry the pass has not seen behind it: another pass follows until one
	 * drops nothing (drop_all). Entries inserted after t0 are kept, so the passes end however
	 * busy the inserters are; but a block inserted since, under a block the flush drops, goes
	 * with it (a chain has no holes).
	 */
	if (ret == 0)
		drop_all(st, pick_flushed, &f, batch ? batch : 1, &t);
	store_unlock(st);
	out->entries = t.entries;
	out->bytes = t.bytes;
	out->leased = t.leased;
	return ret;
}

int lbd_store_flush(struct lbd_store *st, uint32_t model_id, int layer, struct lbd_flush_result *out)
{
	return lbd_store_flush_batched(st, model_id, layer, LBD_FLUSH_BATCH, out);
}
