/* layerbankd store, snapshots: hold every live entry for a write, rank what a file holds, put
 * entries back at start-up. */
#include "store_internal.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "exactmap.h"

/* x takes on what its child y holds better, for every policy (lbd_store_item_value): a prefix
 * hit reaches a block only through its parent, so no parent is worth less than its child. */
static void item_lift(struct lbd_store_item *x, const struct lbd_store_item *y)
{
	x->idle_ns = y->idle_ns < x->idle_ns ? y->idle_ns : x->idle_ns;
	x->age_ns = y->age_ns < x->age_ns ? y->age_ns : x->age_ns;
	x->score = y->score > x->score ? y->score : x->score;
}

/* The description of the LIVE entry id. */
static void item_of(const struct lbd_store *st, uint32_t id, uint64_t now, struct lbd_store_item *x)
{
	const struct entry *e = &st->e[id];
	const struct lb_entry_hdr *h = store_entry_hdr(st, e->arena, e->off);

	memset(x, 0, sizeof(*x));
	x->model_id = e->bank + 1;
	x->layer = e->kind == K_LAYER ? e->layer : LB_ENTRY_LAYER_BLOCK;
	/* The header fields: written by this daemon before the entry went live, unchanged since
	 * (section 9 of the ring protocol). */
	x->seq_len = h->seq_len;
	x->dtype = h->dtype;
	x->ndim = h->ndim;
	memcpy(x->shape, h->shape, sizeof(x->shape));
	x->bytes = h->bytes;
	x->checksum = h->checksum;
	if (e->kind == K_LAYER) {
		const struct input *in = &st->in[e->owner];
		memcpy(x->fp, in->fp, sizeof(x->fp));
		memcpy(x->exact, in->exact, sizeof(x->exact));
		x->approx = e->approx;
		/* Its seq_len ids (the header's n_tokens), written before it went live like the
		 * header, unchanged since. */
		if (e->tokens)
			x->tokens = (const uint8_t *)h + LB_ENTRY_HDR_SIZE + lb_tokens_off(h->bytes);
	} else {
		const struct block *k = &st->blk[e->owner];
		memcpy(x->exact, k->key, sizeof(x->exact));
		if (k->parent != NONE)
			memcpy(x->parent, st->blk[k->parent].key, sizeof(x->parent));
		x->index = k->index;
	}
	x->idle_ns = now - e->last_ns;
	x->age_ns = now - e->created_ns;
	x->score = store_decayed_score(st, e, now);
	x->data = (const uint8_t *)h + LB_ENTRY_HDR_SIZE;
}

/* A described block: its item, its slot, its place in the chain. */
struct bref {
	uint32_t index, item, blk;
};

static int bref_cmp(const void *a, const void *b)
{
	const struct bref *x = a, *y = b;
	return x->index < y->index ? -1 : x->index > y->index;
}

/*
 * The blocks among the n items it, slot[b] the item of block slot b (NONE: none). A block goes
 * when its parent is not described: a LIVE block can sit under a PENDING parent (inserted while
 * the parent's data was still being copied), and a snapshot of it would have a hole. Every
 * block left is lifted by its children, deepest first, so that a parent ends at least as
 * valuable as its whole subtree. One pass each way over the blocks ordered by index, not one
 * over every slot per depth. @return the items kept (it compacted, in its order), -ENOMEM.
 */
static int64_t items_blocks(const struct lbd_store *st, struct lbd_store_item *it, uint32_t n,
			    uint32_t *slot)
{
	struct bref *r = malloc(sizeof(*r) * (n ? n : 1));
	uint32_t nb = 0, kept = 0;

	if (!r)
		return -ENOMEM;
	for (uint32_t b = 0; b < st->blk_cap; b++)
		if (slot[b] != NONE)
			r[nb++] = (struct bref){ st->blk[b].index, slot[b], b };
	qsort(r, nb, sizeof(*r), bref_cmp);
	for (uint32_t j = 0; j < nb; j++) {
		uint32_t up = st->blk[r[j].blk].parent;
		if (r[j].index > 0 && slot[up] == NONE) {
			slot[r[j].blk] = NONE;
			it[r[j].item].model_id = 0; /* no model has id 0: left out below */
		}
	}
	for (uint32_t j = nb; j-- > 0;)
		if (r[j].index > 0 && slot[r[j].blk] != NONE)
			item_lift(&it[slot[st->blk[r[j].blk].parent]], &it[r[j].item]);
	free(r);
	for (uint32_t k = 0; k < n; k++)
		if (it[k].model_id)
			it[kept++] = it[k];
	return kept;
}

int lbd_store_hold_all(struct lbd_store *st, struct lbd_leases *ls, struct lbd_store_item **items,
		       uint32_t *n)
{
	uint64_t now, lease;
	struct lbd_store_item *it;
	uint32_t k = 0, *slot;
	int ret = 0;

	*items = NULL;
	*n = 0;
	store_lock(st);
	now = lb_now_ns(); /* under the lock: no entry's last hit is later */
	it = calloc(st->n_live ? st->n_live : 1, sizeof(*it));
	slot = malloc(sizeof(*slot) * (st->blk_cap ? st->blk_cap : 1));
	if (!it || !slot) {
		ret = -ENOMEM;
		goto out;
	}
	memset(slot, 0xff, sizeof(*slot) * st->blk_cap);
	for (uint32_t i = 0; i < st->n_live; i++) {
		uint32_t id = st->live[i];
		if (st->e[id].state != E_LIVE)
			continue; /* doomed, held by a client only */
		/* The snapshot's own leases are not capped like a client's: it holds every entry. */
		ret = store_lease_take(st, ls, &id, 1, UINT32_MAX, &lease);
		if (ret < 0)
			break;
		if (st->e[id].kind == K_BLOCK)
			slot[st->e[id].owner] = k;
		item_of(st, id, now, &it[k++]);
	}
	if (ret == 0) {
		int64_t kept = items_blocks(st, it, k, slot);
		ret = kept < 0 ? (int)kept : 0;
		k = kept < 0 ? 0 : (uint32_t)kept;
	}
out:
	store_unlock(st);
	free(slot);
	if (ret < 0) {
		lbd_store_release_all(st, ls);
		free(it);
		return ret;
	}
	*items = it;
	*n = k;
	return 0;
}

uint64_t lbd_store_item_body(const struct lbd_store_item *it)
{
	return it->tokens ? lb_tokens_off(it->bytes) + (uint64_t)it->seq_len * sizeof(int32_t)
			  : it->bytes;
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

/* Whether an item may go back into bank b: its layer (or block geometry), length and age.
 * @return 0, -EINVAL, -ETIME (it would expire at once). */
static int restore_check(const struct lbd_store *st, const struct bank *b,
			 const struct lbd_store_item *it)
{
	const struct lbp_register_model *d = &b->desc;

	if (it->layer == LB_ENTRY_LAYER_BLOCK) {
		uint64_t end = ((uint64_t)it->index + 1) * d->kv.block_tokens;
		if (!d->kv.dim || it->dtype != d->dtype || it->ndim != 4 ||
		    it->shape[0] != d->kv.layers || it->shape[1] != 2 ||
		    it->shape[2] != d->kv.block_tokens || it->shape[3] != d->kv.dim ||
		    it->seq_len != end || end > d->max_seq || (!it->exact[0] && !it->exact[1]) ||
		    it->approx || it->tokens)
			return -EINVAL;
	} else if (it->layer >= d->n_layers || it->seq_len == 0 || it->seq_len > d->max_seq ||
		   it->approx > LB_FP_BITS) {
		return -EINVAL;
	}
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

/* Where the item goes in bank b: the entry placed at (arena, off), or NONE with *err. */
static uint32_t restore_place(struct lbd_store *st, struct bank *b, const struct lbd_store_item *it,
			      unsigned arena, uint64_t off, uint64_t need, int *err)
{
	uint32_t eid, parent = NONE;

	*err = -ENOMEM;
	if (it->layer != LB_ENTRY_LAYER_BLOCK)
		return store_layer_place(st, b, it->fp, it->exact, it->seq_len, it->layer, arena,
					 off, need);
	if (it->index > 0 && (lbd_exactmap_find(b->blocks, it->parent, &parent) < 0 ||
			      st->blk[parent].index != it->index - 1)) {
		*err = -ENOENT; /* a parent that is not back: the chain would have a hole */
		lbd_alloc_put(st->alloc[arena], off);
		return NONE;
	}
	if (parent != NONE)
		store_block_hold(st, parent);
	eid = store_block_place(st, b, it->exact, it->index, parent, arena, off, need);
	if (eid == NONE && parent != NONE)
		store_block_unhold(st, parent);
	return eid;
}

/* The checks of an insert that look at what is cached: @return 0, -EINVAL, -EEXIST. */
static int restore_exists(struct lbd_store *st, struct bank *b, const struct lbd_store_item *it)
{
	uint32_t id;

	if (it->layer == LB_ENTRY_LAYER_BLOCK)
		return lbd_exactmap_find(b->blocks, it->exact, &id) == 0 ? -EEXIST : 0;
	if (lbd_exactmap_find(b->exact, it->exact, &id) < 0)
		return 0;
	if (st->in[id].seq_len != it->seq_len)
		return -EINVAL;
	return st->in[id].layer[it->layer] != NONE ? -EEXIST : 0;
}

int lbd_store_restore(struct lbd_store *st, const struct lbd_store_item *it)
{
	uint64_t now = lb_now_ns(), off = 0, need = store_entry_need(lbd_store_item_body(it));
	unsigned arena = 0;
	int ret;

	if (!store_shape_ok(it->dtype, it->ndim, it->shape, it->bytes) || !it->data)
		return -EINVAL;
	store_lock(st);
	struct bank *b = store_bank_of(st, it->model_id);
	ret = b ? restore_check(st, b, it) : -ESRCH;
	if (ret == 0)
		ret = restore_exists(st, b, it);
	/* No eviction: what is restored first was chosen as the more valuable. */
	if (ret == 0) {
		uint64_t budget = store_tenant_budget(st, b->tenant);
		if (need > budget || st->ten[b->tenant].used > budget - need)
			ret = -ENOSPC;
	}
	if (ret == 0)
		ret = store_alloc_in(st, b->tenant, -1, need, &arena, &off);
	if (ret < 0)
		goto out;
	uint32_t eid = restore_place(st, b, it, arena, off, need, &ret);
	if (eid == NONE)
		goto out;
	ret = 0;
	/* Copied under the lock: restoring happens at start-up, before any client is served. */
	struct lb_entry_hdr tmpl = { .model_id = it->model_id, .layer = (uint16_t)it->layer,
				     .dtype = (uint16_t)it->dtype, .seq_len = it->seq_len,
				     .ndim = it->ndim, .bytes = it->bytes, .checksum = it->checksum,
				     .key = { it->exact[0], it->exact[1] }, .approx = it->approx,
				     .n_tokens = it->tokens ? it->seq_len : 0 };
	memcpy(tmpl.shape, it->shape, sizeof(tmpl.shape));
	store_entry_publish(store_entry_hdr(st, arena, off), &tmpl, it->data, it->tokens, true);
	restore_ages(&st->e[eid], it, now);
	st->e[eid].approx = (uint16_t)it->approx;
	st->e[eid].tokens = it->tokens != NULL;
	store_entry_go_live(st, eid);
out:
	store_unlock(st);
	return ret;
}
