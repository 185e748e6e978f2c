/* layerbankd store, prefix blocks: LOOKUP_PREFIX (the longest run of cached blocks from block 0,
 * one lease for all) and INSERT_BLOCK (under a cached parent: reserve under the lock, copy
 * unlocked, commit under the lock). */
#include "store_internal.h"

#include <errno.h>
#include <string.h>

#include "exactmap.h"

bool lbd_store_block_hdr_ok(const struct lb_req *r, const struct lb_block_hdr *h)
{
	return r->payload_len >= LB_INSERT_HDR_SIZE && (h->key[0] || h->key[1]) && !h->reserved &&
	       (h->index || (!h->parent[0] && !h->parent[1])) &&
	       store_shape_ok(h->dtype, h->ndim, h->shape, h->bytes) &&
	       h->bytes <= (uint64_t)r->payload_len - LB_INSERT_HDR_SIZE;
}

/* The bank of a prefix request: a model with blocks. @return it, or NULL with *err. */
static struct bank *prefix_bank(struct lbd_store *st, uint32_t model_id, int *err)
{
	struct bank *b = store_bank_of(st, model_id);

	*err = !b ? -ESRCH : !b->desc.kv.dim ? -EINVAL : 0;
	return *err ? NULL : b;
}

/*
 * The run of LIVE blocks keys[0..n) names from block 0: block i must be the child of block i-1
 * (keys chain, but a client could claim any parent: the tree says). An expired block met on
 * the way goes, with what is below it. @return the run's length, ids[] its entries.
 */
static uint32_t prefix_run(struct lbd_store *st, struct bank *b, const uint64_t (*keys)[2],
			   uint32_t n, uint64_t now, uint32_t *ids)
{
	uint32_t prev = NONE, k = 0, id;

	for (; k < n; k++) {
		if (lbd_exactmap_find(b->blocks, keys[k], &id) < 0)
			break;
		const struct block *x = &st->blk[id];
		const struct entry *e = &st->e[x->entry];
		if (x->index != k || x->parent != prev || e->state != E_LIVE)
			break;
		if (store_expired(st, e, now)) {
			struct tally t = { 0 };
			store_entry_unlink(st, x->entry, &t);
			st->c.expirations += t.entries;
			break;
		}
		ids[k] = x->entry;
		prev = id;
	}
	return k;
}

void lbd_store_lookup_prefix(struct lbd_store *st, struct lbd_leases *ls, const struct lb_req *r,
			     const uint64_t (*keys)[2], uint32_t n, struct lb_prefix_block *out,
			     struct lb_cpl *cpl)
{
	uint32_t ids[LB_PREFIX_MAX_BLOCKS];
	uint64_t now = lb_now_ns();

	if (n == 0 || n > LB_PREFIX_MAX_BLOCKS) {
		cpl->status = -EINVAL;
		return;
	}
	store_lock(st);
	struct bank *b = prefix_bank(st, r->model_id, &cpl->status);
	uint32_t found = b ? prefix_run(st, b, keys, n, now, ids) : 0;
	if (b && found == 0) {
		st->c.prefix_misses++;
		cpl->status = -ENOENT;
	}
	if (found)
		cpl->status = store_lease_take(st, ls, ids, found, LBD_MAX_LEASES, &cpl->lease);
	/* the blocks after the run: the tier's, if it holds them and nobody fetches them yet */
	struct lbp_register_model d;
	uint64_t claim = 0;
	uint32_t id;
	bool ask = b && found < n &&
		   store_tier_wants(st, st->tier.miss_blocks != NULL, 1, r->model_id, &d) &&
		   lbd_exactmap_find(b->blocks, keys[found], &id) < 0 &&
		   store_tier_claim(st, b, keys[found], now, &claim) == 0;
	if (found && cpl->status == 0) {
		for (uint32_t i = 0; i < found; i++) {
			struct entry *e = &st->e[ids[i]];
			e->last_ns = now;
			e->score = store_decayed_score(st, e, now) + 1.0;
			e->score_ns = now;
			out[i] = (struct lb_prefix_block){ .entry_off = e->off, .arena = e->arena };
		}
		st->c.prefix_hits++;
		st->ac[st->e[ids[0]].arena].hits++;
		st->c.blocks_served += found;
		cpl->count = found;
	}
	store_unlock(st);
	if (ask)
		st->tier.miss_blocks(st->tier.ctx, &d, r, keys, found, n, claim);
}

/* The model's block geometry: [kv.layers][2][block_tokens][kv_dim] of its dtype, ending within
 * max_seq, at a place a LOOKUP_PREFIX can reach. */
static bool block_fits(const struct bank *b, const struct lb_req *r, const struct lb_block_hdr *h)
{
	const struct lbp_register_model *d = &b->desc;
	uint64_t end = ((uint64_t)h->index + 1) * d->kv.block_tokens;

	return h->dtype == d->dtype && h->ndim == 4 && h->shape[0] == d->kv.layers &&
	       h->shape[1] == 2 && h->shape[2] == d->kv.block_tokens && h->shape[3] == d->kv.dim &&
	       end <= d->max_seq && r->seq_len == end && h->index < LB_PREFIX_MAX_BLOCKS;
}

/* The parent of block h: its slot (NONE for block 0). @return 0; -ENOENT (not cached, or cached
 * at another place: then the keys do not chain). */
static int block_parent(struct lbd_store *st, struct bank *b, const struct lb_block_hdr *h,
			uint32_t *parent)
{
	*parent = NONE;
	if (h->index == 0)
		return 0;
	if (lbd_exactmap_find(b->blocks, h->parent, parent) < 0 ||
	    st->blk[*parent].index != h->index - 1)
		return -ENOENT;
	return 0;
}

/* An INSERT_BLOCK's first phase, under the lock: the checks, the parent held so that making
 * room cannot evict it, the quota, room, and a PENDING entry linked under the parent.
 * @return the entry, or NONE with cpl->status set. */
static uint32_t block_reserve(struct lbd_store *st, struct lbd_inserter who, const struct lb_req *r,
			      const struct lb_block_hdr *h, uint64_t now, struct lb_cpl *cpl)
{
	uint64_t need = store_entry_need(h->bytes), off = 0;
	uint32_t parent = NONE, id;
	unsigned arena = 0;
	struct bank *b = prefix_bank(st, r->model_id, &cpl->status);

	if (b && !block_fits(b, r, h))
		cpl->status = -EINVAL;
	else if (b && lbd_exactmap_find(b->blocks, h->key, &id) == 0)
		cpl->status = -EEXIST;
	else if (b)
		cpl->status = block_parent(st, b, h, &parent);
	if (cpl->status < 0)
		return NONE;
	struct account *a = store_quota(st, who.account, need, &cpl->status);
	if (cpl->status < 0)
		return NONE;
	if (parent != NONE)
		store_block_hold(st, parent);
	cpl->status = store_make_room(st, b, who.node, need, now, &arena, &off);
	uint32_t eid = cpl->status < 0 ? NONE
				       : store_block_place(st, b, h->key, h->index, parent, arena, off,
							   need);
	if (eid == NONE) {
		if (parent != NONE)
			store_block_unhold(st, parent);
		if (cpl->status == 0)
			cpl->status = -ENOMEM;
		return NONE;
	}
	store_entry_pending(st, eid, a, who.account);
	return eid;
}

/* Its last phase, under the lock: live, unless its parent went meanwhile (then its block was
 * unlinked with the parent's subtree, and it goes too: -ENOENT). */
static void block_commit(struct lbd_store *st, uint32_t eid, uint32_t gen, uint64_t now,
			 struct lb_cpl *cpl)
{
	struct entry *e = &st->e[eid];

	store_entry_copied(st, eid, gen, now);
	if (e->owner == NONE) {
		store_entry_abandon(st, eid);
		cpl->status = -ENOENT;
		return;
	}
	store_entry_go_live(st, eid);
	st->c.inserts++;
	cpl->status = 0;
	cpl->arena = e->arena;
	cpl->entry_off = e->off;
}

void lbd_store_insert_block(struct lbd_store *st, struct lbd_inserter who, const struct lb_req *r,
			    const struct lb_block_hdr *h, const uint8_t *data, struct lb_cpl *cpl)
{
	uint64_t now = lb_now_ns();

	if (!lbd_store_block_hdr_ok(r, h)) {
		cpl->status = -EINVAL;
		return;
	}
	store_lock(st);
	uint32_t eid = block_reserve(st, who, r, h, now, cpl);
	if (eid == NONE) {
		store_unlock(st);
		return;
	}
	uint32_t gen = st->e[eid].gen;
	struct lb_entry_hdr *eh = store_entry_hdr(st, st->e[eid].arena, st->e[eid].off);
	store_unlock(st);

	/* The copy runs unlocked: a PENDING block is found by no lookup and evicted by nobody. */
	struct lb_entry_hdr tmpl = { .model_id = r->model_id, .layer = LB_ENTRY_LAYER_BLOCK,
				     .dtype = (uint16_t)h->dtype, .seq_len = r->seq_len,
				     .ndim = h->ndim, .bytes = h->bytes,
				     .key = { h->key[0], h->key[1] } };
	memcpy(tmpl.shape, h->shape, sizeof(tmpl.shape));
	store_entry_publish(eh, &tmpl, data, NULL, false);

	struct lbp_register_model d;
	store_lock(st);
	block_commit(st, eid, gen, now, cpl);
	bool put = cpl->status == 0 &&
		   store_tier_wants(st, st->tier.put_block != NULL, who.account, r->model_id, &d);
	store_unlock(st);
	if (put)
		st->tier.put_block(st->tier.ctx, &d, r, h, data);
}
