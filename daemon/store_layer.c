/* layerbankd store, layer entries: LOOKUP_DEEPEST and LOOKUP (the exact token hash, then the
 * nearest fingerprint, then the deepest layer within its threshold) and INSERT (reserve under
 * the lock, copy unlocked, commit under the lock). */
#include "store_internal.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "exactmap.h"
#include "fpindex.h"

struct accept_ctx {
	const struct lbd_store *st;
	uint32_t seq_len;
	int layer;    /* -1: any cached layer */
	bool any_len; /* LB_REQ_ANY_LEN */
};

/* May entry e answer a lookup for other_len (an input of another length)? Only when it carries
 * the token ids the client aligns with. */
static bool entry_serves(const struct lbd_store *st, uint32_t e, bool other_len)
{
	return e != NONE && st->e[e].state == E_LIVE && (!other_len || st->e[e].tokens);
}

static bool accept_input(void *p, uint32_t id)
{
	const struct accept_ctx *a = p;
	const struct input *in = &a->st->in[id];
	bool other = in->seq_len != a->seq_len;

	if (!in->used || (other && !a->any_len))
		return false;
	if (a->layer >= 0)
		return entry_serves(a->st, in->layer[a->layer], other);
	if (!other)
		return true;
	for (uint32_t l = 0; l < a->st->banks[in->bank].desc.n_layers; l++)
		if (entry_serves(a->st, in->layer[l], true))
			return true;
	return false;
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
			*max_d = *good_d = lbp_fp_max_hamming(store_layer_tau(st, b, r->layer));
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
	struct accept_ctx ac = { st, r->seq_len, r->opcode == LB_OP_LOOKUP ? (int)r->layer : -1,
				 r->flags & LB_REQ_ANY_LEN };
	uint32_t id = NONE;

	*dist = 0;
	if (lbd_exactmap_find(b->exact, q->exact, &id) == 0 && accept_input(&ac, id))
		return id;
	if (lbd_fpindex_nearest(b->fps, q->fp, max_d, good_d, accept_input, &ac, &id, dist) < 0)
		return NONE;
	/* Other tokens are never exact, even at fingerprint distance 0. */
	*dist = *dist ? *dist : 1;
	return id;
}

/* The deepest layer of input id a lookup may reuse at distance dist (LOOKUP: only its layer),
 * each layer's entry judged at dist plus its approx. Expired entries met on the way are
 * dropped. @return the layer, or -1. */
static int lookup_layer(struct lbd_store *st, const struct bank *b, const struct lb_req *r,
			const struct lb_query *q, const float *thr, uint32_t id, uint32_t dist,
			uint64_t now)
{
	const struct input *in = &st->in[id];
	int top = r->opcode == LB_OP_LOOKUP ? r->layer : (int)b->desc.n_layers - 1;
	int bottom = r->opcode == LB_OP_LOOKUP ? r->layer : 0;

	for (int l = top; l >= bottom; l--) {
		uint32_t e = in->layer[l];
		double tau = q->n_thr ? thr[l] : store_layer_tau(st, b, (uint32_t)l);
		if (!entry_serves(st, e, in->seq_len != r->seq_len) ||
		    lbp_fp_similarity(store_distance(dist, st->e[e].approx)) < tau)
			continue;
		if (store_expired(st, &st->e[e], now)) {
			st->c.expirations++;
			store_entry_unlink(st, e, NULL);
			if (!in->used)
				return -1; /* that was its last layer: the input is gone */
			continue;
		}
		return l;
	}
	return -1;
}

/* A hit on entry eid at layer, at distance cpl->hamming: its lease, its place for the policy,
 * the counters. @return 0 with cpl filled, or the lease's error (-EBUSY, -ENOMEM). */
static int lookup_hit(struct lbd_store *st, struct lbd_leases *ls, struct bank *b,
		      const struct lb_req *r, uint32_t eid, int layer, uint64_t now, struct lb_cpl *cpl)
{
	struct entry *e = &st->e[eid];
	int ret = store_lease_take(st, ls, &eid, 1, LBD_MAX_LEASES, &cpl->lease);

	if (ret < 0)
		return ret;
	e->last_ns = now;
	/* Kept under every policy, so that one switched to decay at run time finds real scores. */
	e->score = store_decayed_score(st, e, now) + 1.0;
	e->score_ns = now;
	st->c.hits++;
	st->ac[e->arena].hits++;
	if (r->opcode == LB_OP_LOOKUP) {
		b->layer[layer].hits++;
	} else {
		for (int l = 0; l <= layer; l++)
			b->layer[l].hits++;
		for (uint32_t l = (uint32_t)layer + 1; l < b->desc.n_layers; l++)
			b->layer[l].misses++;
	}
	store_lease_of(ls, cpl->lease)->hamming = (uint16_t)cpl->hamming;
	cpl->arena = e->arena;
	cpl->layer = (uint16_t)layer;
	cpl->entry_off = e->off;
	return 0;
}

/*
 * Single-flight before the lookup (PROTOCOL.md, Ring protocol 15): another client's live claim
 * on the input holds the request while it may wait for it (true: WAIT for a client's claim,
 * TIER for the second tier's), else makes the answer BUSY. *claim: the live claim on the input,
 * whoever holds it, or NONE.
 */
static bool sf_hold(struct lbd_store *st, struct lbd_leases *ls, struct bank *b,
		    const struct lb_req *r, const struct lb_query *q, struct lbd_hold *hold,
		    uint64_t now, uint32_t *claim, struct lb_cpl *cpl)
{
	*claim = store_claim_find(st, b, q->exact, now);
	if (*claim == NONE || st->cl[*claim].owner == ls)
		return false;
	/* A client that holds a live claim is not held: two clients each waiting for the other's
	 * claim would be freed by their bounds only. (Live: not past the latest bound of the claims
	 * it holds. One past its bound holds nobody, so its holder may wait again.) */
	bool tier = st->cl[*claim].owner == &st->tier_leases;
	bool may = r->flags & (tier ? LB_REQ_TIER : LB_REQ_WAIT);
	if (may && hold && now < hold->wait_until && now >= ls->claims_until) {
		uint64_t end = st->cl[*claim].deadline_ns;
		hold->wake_ns = end < hold->wait_until ? end : hold->wait_until;
		hold->seq = atomic_load_explicit(&st->claim_seq, memory_order_relaxed);
		/* Under the lock, as claim_unmap's bump: see there. */
		atomic_fetch_add_explicit(&st->n_held, 1, memory_order_seq_cst);
		return true;
	}
	cpl->sflight |= LB_CPL_BUSY;
	return false;
}

/* After the lookup: a CLAIM of an input that no client claims and the bank does not hold (no
 * layer cached or being inserted), whether the answer is a miss or a near input's layer. A
 * claim that cannot be had (the client's lease table full, no memory) is just not taken. */
static void sf_claim(struct lbd_store *st, struct lbd_leases *ls, struct bank *b,
		     const struct lb_req *r, const struct lb_query *q, uint32_t claim, uint64_t now,
		     struct lb_cpl *cpl)
{
	uint32_t id;

	if (!(r->flags & LB_REQ_CLAIM) || claim != NONE || (cpl->status && cpl->status != -ENOENT) ||
	    lbd_exactmap_find(b->exact, q->exact, &id) == 0)
		return;
	if (store_claim_take(st, ls, b, q->exact, now + (uint64_t)r->aux * 1000, &cpl->claim) < 0)
		cpl->claim = 0;
}

/* A miss asked of the second tier (lbd_store_tier), after the lock is let go. */
struct tier_ask {
	bool on;
	uint32_t layer, max_d;
	uint64_t claim;
	struct lbp_register_model d;
};

/*
 * A miss the tier may answer, unless this request asked it before or the input is claimed
 * already (a client computes it, or the tier fetches it) or known (its layers are being
 * inserted): the tier claims the input and, once the lock is let go, is asked for its deepest
 * layer (LOOKUP: the layer asked). A lookup that may wait is held for that claim, as for a
 * client's (sf_hold). @return true: held.
 */
static bool tier_ask(struct lbd_store *st, struct lbd_leases *ls, struct bank *b,
		     const struct lb_req *r, const struct lb_query *q, struct lbd_hold *hold,
		     uint64_t now, uint32_t *claim, struct tier_ask *ask, struct lb_cpl *cpl)
{
	uint32_t id;

	if ((hold && hold->tier_asked) ||
	    !store_tier_wants(st, st->tier.miss != NULL, 1, r->model_id, &ask->d) ||
	    lbd_exactmap_find(b->exact, q->exact, &id) == 0 ||
	    store_tier_claim(st, b, q->exact, now, &ask->claim) < 0)
		return false;
	ask->on = true;
	ask->layer = r->opcode == LB_OP_LOOKUP ? r->layer : b->desc.n_layers - 1u;
	if (hold)
		hold->tier_asked = true;
	return (r->flags & LB_REQ_SFLIGHT) && sf_hold(st, ls, b, r, q, hold, now, claim, cpl);
}

bool lbd_store_lookup_sf(struct lbd_store *st, struct lbd_leases *ls, const struct lb_req *r,
			 const struct lb_query *q, const float *thr, struct lbd_hold *hold,
			 struct lb_cpl *cpl)
{
	uint64_t now = lb_now_ns();
	uint32_t id, dist = 0, max_d = 0, good_d = 0, claim = NONE;
	int layer = -1;
	bool held = false;
	struct tier_ask ask = { .on = false };

	store_lock(st);
	struct bank *b = store_bank_of(st, r->model_id);
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
	if ((r->flags & LB_REQ_SFLIGHT) && (held = sf_hold(st, ls, b, r, q, hold, now, &claim, cpl)))
		goto out;
	id = lookup_input(st, b, r, q, max_d, good_d, &dist);
	if (id != NONE)
		layer = lookup_layer(st, b, r, q, thr, id, dist, now);
	if (layer < 0) {
		if ((held = tier_ask(st, ls, b, r, q, hold, now, &claim, &ask, cpl)))
			goto out; /* counted when it is served again */
		count_miss(st, b, r, 0);
		cpl->status = -ENOENT;
	} else {
		uint32_t eid = st->in[id].layer[layer];
		cpl->hamming = store_distance(dist, st->e[eid].approx);
		cpl->status = lookup_hit(st, ls, b, r, eid, layer, now, cpl);
		if (cpl->status < 0)
			cpl->hamming = 0;
	}
	if (r->flags & LB_REQ_SFLIGHT)
		sf_claim(st, ls, b, r, q, claim, now, cpl);
out:
	store_unlock(st);
	if (ask.on)
		st->tier.miss(st->tier.ctx, &ask.d, r, q, ask.layer, max_d, ask.claim);
	return held;
}

void lbd_store_lookup(struct lbd_store *st, struct lbd_leases *ls, const struct lb_req *r,
		      const struct lb_query *q, const float *thr, struct lb_cpl *cpl)
{
	lbd_store_lookup_sf(st, ls, r, q, thr, NULL, cpl);
}

/* ---- inserts ---- */

/* The bytes an insert's data and token ids take from the payload's data start. */
static uint64_t insert_body(const struct lb_insert_hdr *h)
{
	return h->n_tokens ? lb_tokens_off(h->bytes) + (uint64_t)h->n_tokens * sizeof(int32_t)
			   : h->bytes;
}

bool lbd_store_insert_hdr_ok(const struct lb_req *r, const struct lb_insert_hdr *h)
{
	return r->payload_len >= LB_INSERT_HDR_SIZE && h->approx <= LB_FP_BITS &&
	       (!h->n_tokens || h->n_tokens == r->seq_len) &&
	       store_shape_ok(h->dtype, h->ndim, h->shape, h->bytes) &&
	       h->bytes <= (uint64_t)r->payload_len - LB_INSERT_HDR_SIZE &&
	       insert_body(h) <= (uint64_t)r->payload_len - LB_INSERT_HDR_SIZE;
}

/*
 * The insert's token ids, copied out of staging (the client may rewrite it meanwhile) and
 * checked against its exact key: an entry never carries tokens that are not its input's.
 * @return them (malloc'd), or NULL with *status -EINVAL (another input's) or -ENOMEM.
 */
static int32_t *insert_tokens(const struct lb_insert_hdr *h, const uint8_t *data, int32_t *status)
{
	size_t size = (size_t)h->n_tokens * sizeof(int32_t);
	int32_t *t = malloc(size);
	uint64_t key[2];

	if (!t) {
		*status = -ENOMEM;
		return NULL;
	}
	memcpy(t, data + lb_tokens_off(h->bytes), size);
	lbp_token_hash(t, h->n_tokens, key);
	if (key[0] != h->exact[0] || key[1] != h->exact[1]) {
		free(t);
		*status = -EINVAL;
		return NULL;
	}
	return t;
}

/*
 * Whether an input with these keys may take an entry of layer with this approx. A LIVE entry
 * of that layer computed less exactly gives way (unlinked here: its leases keep its memory
 * until they end), so that an exact computation replaces an approximate one. @return 0;
 * -EINVAL (the same tokens cached at another length: a lying client or a corrupt file);
 * -EEXIST (that layer is cached at least as exactly, or being inserted).
 */
static int input_check(struct lbd_store *st, struct bank *b, const uint64_t exact[2],
		       uint32_t seq_len, uint32_t layer, uint32_t approx)
{
	uint32_t id;

	if (lbd_exactmap_find(b->exact, exact, &id) < 0)
		return 0;
	if (st->in[id].seq_len != seq_len)
		return -EINVAL;
	uint32_t e = st->in[id].layer[layer];
	if (e == NONE)
		return 0;
	if (st->e[e].state != E_LIVE || st->e[e].approx <= approx)
		return -EEXIST;
	st->c.invalidations++;
	store_entry_unlink(st, e, NULL);
	return 0;
}

/*
 * An insert's first phase, under the lock: the request against its model and the cache, the
 * client's quota, room made by the policy, and a PENDING entry that no lookup finds and no
 * eviction takes while its data is copied. @return the entry, or NONE with cpl->status set.
 */
static uint32_t insert_reserve(struct lbd_store *st, struct lbd_inserter who, const struct lb_req *r,
			       const struct lb_insert_hdr *h, uint64_t now, struct lb_cpl *cpl)
{
	uint64_t need = store_entry_need(insert_body(h)), off = 0;
	struct bank *b = store_bank_of(st, r->model_id);
	unsigned arena = 0;

	if (!b || r->layer >= b->desc.n_layers || r->seq_len == 0 || r->seq_len > b->desc.max_seq) {
		cpl->status = b ? -EINVAL : -ESRCH;
		return NONE;
	}
	cpl->status = input_check(st, b, h->exact, r->seq_len, r->layer, h->approx);
	if (cpl->status < 0)
		return NONE;
	/* The client's quota before the budget: an insert it may not pay for evicts nothing. */
	struct account *a = store_quota(st, who.account, need, &cpl->status);
	if (cpl->status < 0)
		return NONE;
	cpl->status = store_make_room(st, b, who.node, need, now, &arena, &off);
	if (cpl->status < 0)
		return NONE;
	/* make_room may have evicted the input found above: the place looks again. */
	uint32_t eid = store_layer_place(st, b, h->fp, h->exact, r->seq_len, r->layer, arena, off,
					 need);
	if (eid == NONE) {
		cpl->status = -ENOMEM;
		return NONE;
	}
	st->e[eid].approx = (uint16_t)h->approx;
	st->e[eid].tokens = h->n_tokens != 0;
	store_entry_pending(st, eid, a, who.account);
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

	store_entry_copied(st, eid, gen, now);
	store_entry_go_live(st, eid);
	b->layer[r->layer].inserts++;
	st->c.inserts++;
	cpl->status = 0;
	cpl->arena = e->arena;
	cpl->layer = r->layer;
	cpl->entry_off = e->off;
}

void lbd_store_insert(struct lbd_store *st, struct lbd_inserter who, const struct lb_req *r,
		      const struct lb_insert_hdr *h, const uint8_t *data, struct lb_cpl *cpl)
{
	uint64_t now = lb_now_ns();
	int32_t *tokens = NULL, status = -EINVAL;

	if (!lbd_store_insert_hdr_ok(r, h) ||
	    (h->n_tokens && !(tokens = insert_tokens(h, data, &status)))) {
		cpl->status = status;
		return;
	}
	store_lock(st);
	uint32_t eid = insert_reserve(st, who, r, h, now, cpl);
	if (eid == NONE) {
		store_unlock(st);
		free(tokens);
		return;
	}
	uint32_t gen = st->e[eid].gen;
	struct lb_entry_hdr *eh = store_entry_hdr(st, st->e[eid].arena, st->e[eid].off);
	store_unlock(st);

	/* The copy runs unlocked: a PENDING entry is in no sample and gives no hits. */
	struct lb_entry_hdr tmpl = { .model_id = r->model_id, .layer = r->layer,
				     .dtype = (uint16_t)h->dtype, .seq_len = r->seq_len,
				     .ndim = h->ndim, .bytes = h->bytes,
				     .key = { h->exact[0], h->exact[1] }, .approx = h->approx,
				     .n_tokens = h->n_tokens };
	memcpy(tmpl.shape, h->shape, sizeof(tmpl.shape));
	store_entry_publish(eh, &tmpl, data, tokens, false);

	struct lbp_register_model d;
	store_lock(st);
	insert_commit(st, eid, gen, r, now, cpl);
	bool put = cpl->status == 0 &&
		   store_tier_wants(st, st->tier.put_layer != NULL, who.account, r->model_id, &d);
	store_unlock(st);
	if (put)
		st->tier.put_layer(st->tier.ctx, &d, r, h, data, tokens);
	free(tokens);
}

