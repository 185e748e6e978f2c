/* The second tier wired to a store (l2.h: lbd_l2_attach): the store's hooks encode what it
 * inserted and queue it for writing, and on a miss queue a read of the input's deepest layer (or
 * of a prefix's next blocks), whose checked records are inserted into the store as account 0
 * (not written back) before the miss's claim ends, so that the lookups held for it, and the
 * next ones, hit. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "l2.h"
#include "store.h"

struct fetch {
	struct lbd_l2 *t;
	struct lbd_store *st;
	uint32_t model_id;
	uint64_t claim; /* the store's claim on the input, ended when the fetch is; 0: none */
	bool miss;      /* the miss's read (else the other layers') */
	uint64_t exact[2]; /* the input missed */
	struct lbp_register_model d;
};

struct attach {
	struct lbd_l2 *t;
	struct lbd_store *st;
};

static void put_layer(void *ctx, const struct lbp_register_model *d, const struct lb_req *r,
		      const struct lb_insert_hdr *h, const uint8_t *data, const int32_t *tokens)
{
	struct attach *a = ctx;
	char key[LBD_L2_KEY_MAX];
	size_t len;
	if (!lbd_l2_layer_fits(d, r->seq_len, h))
		return;
	uint64_t m = lbd_l2_model_hash(d);
	uint8_t *rec = lbd_l2_encode_layer(m, r->layer, r->seq_len, h, data, tokens, &len);
	lbd_l2_key_layer(key, m, h->exact, r->layer);
	if (rec && lbd_l2_put(a->t, key, rec, len) && r->layer + 1u == d->n_layers) {
		/* the deepest layer: what a near lookup elsewhere starts from */
		struct lbd_l2_member mb = { { h->exact[0], h->exact[1] },
					    { h->fp[0], h->fp[1], h->fp[2], h->fp[3] }, r->seq_len };
		lbd_l2_index(a->t, m, &mb);
	}
}

static void put_block(void *ctx, const struct lbp_register_model *d, const struct lb_req *r,
		      const struct lb_block_hdr *h, const uint8_t *data)
{
	struct attach *a = ctx;
	char key[LBD_L2_KEY_MAX];
	size_t len;
	uint64_t m = lbd_l2_model_hash(d);
	uint8_t *rec = lbd_l2_encode_block(m, r->seq_len, h, data, &len);
	lbd_l2_key_block(key, m, h->key);
	if (rec)
		lbd_l2_put(a->t, key, rec, len);
}

/* A checked record into the store, as the client that made it inserted it. @return whether the
 * store took it (or held the entry already). */
static bool insert(const struct fetch *f, const struct lbd_l2_record *rec)
{
	bool took = false;
	if (rec && rec->kind == LBD_L2_LAYER && lbd_l2_layer_fits(&f->d, rec->seq_len, &rec->ins)) {
		uint64_t body = rec->ins.n_tokens ? lb_tokens_off(rec->ins.bytes) +
							    4ull * rec->ins.n_tokens
						  : rec->ins.bytes;
		uint8_t *buf = calloc(1, body ? (size_t)body : 1);
		if (buf) {
			memcpy(buf, rec->payload, (size_t)rec->ins.bytes);
			if (rec->ins.n_tokens)
				memcpy(buf + lb_tokens_off(rec->ins.bytes), rec->payload + rec->ins.bytes,
				       4ull * rec->ins.n_tokens);
			struct lb_req r = { .opcode = LB_OP_INSERT, .model_id = f->model_id,
					    .layer = (uint16_t)rec->layer, .seq_len = rec->seq_len,
					    .payload_len = (uint32_t)(LB_INSERT_HDR_SIZE + body) };
			struct lb_cpl cpl = { 0 };
			if (LB_INSERT_HDR_SIZE + body <= UINT32_MAX) {
				lbd_store_insert(f->st, LBD_INSERTER_DAEMON, &r, &rec->ins, buf, &cpl);
				took = cpl.status == 0 || cpl.status == -EEXIST;
			}
			free(buf);
		}
	}
	return took;
}

/*
 * What a read brought into the store. After a miss's deepest layer, a read of the input's other
 * layers, which a partial reuse aligns with: in the background for the input missed (its whole
 * hit needs the deepest only), before the claim ends for a near input (the lookups held for it
 * reuse it partially). The claim ends when nothing more is read for it.
 */
static bool fetched(void *ctx, const struct lbd_l2_record *rec, bool last)
{
	struct fetch *f = ctx;
	bool took = insert(f, rec);
	uint64_t claim = f->claim;
	if (f->miss && took && rec->layer + 1 == f->d.n_layers && rec->layer > 0) {
		bool near = rec->ins.exact[0] != f->exact[0] || rec->ins.exact[1] != f->exact[1];
		struct fetch *rest = malloc(sizeof(*rest));
		if (rest) {
			*rest = *f;
			rest->miss = false;
			rest->claim = near ? claim : 0;
			if (lbd_l2_fetch_layers(f->t, lbd_l2_model_hash(&f->d), rec->ins.exact,
						rec->layer, fetched, rest))
				claim = rest->claim ? 0 : claim; /* handed over */
			else
				free(rest);
		}
	}
	if (claim && (f->miss || last))
		lbd_store_tier_done(f->st, claim);
	if (last)
		free(f);
	return took;
}

static void miss(void *ctx, const struct lbp_register_model *d, const struct lb_req *r,
		 const struct lb_query *q, uint32_t layer, uint32_t max_d, uint64_t claim)
{
	struct attach *a = ctx;
	struct fetch *f = malloc(sizeof(*f));
	if (!f) {
		lbd_store_tier_done(a->st, claim);
		return;
	}
	*f = (struct fetch){ a->t, a->st, r->model_id, claim, true, { q->exact[0], q->exact[1] },
			     *d };
	char key[LBD_L2_KEY_MAX];
	uint64_t m = lbd_l2_model_hash(d);
	lbd_l2_key_layer(key, m, q->exact, layer);
	struct lbd_l2_want w = { m, LBD_L2_LAYER, { q->exact[0], q->exact[1] }, layer };
	/* a near input may serve a lookup of the deepest layer, as in the bank */
	struct lbd_l2_near near = { { q->fp[0], q->fp[1], q->fp[2], q->fp[3] }, max_d, r->seq_len,
				    (r->flags & LB_REQ_ANY_LEN) != 0 };
	bool deepest = r->opcode == LB_OP_LOOKUP_DEEPEST && max_d > 0;
	if (!lbd_l2_fetch(a->t, key, &w, deepest ? &near : NULL, fetched, f)) {
		lbd_store_tier_done(a->st, claim);
		free(f);
	}
}

/* A prefix's blocks being read, in order from block index. */
struct prefix_fetch {
	struct lbd_store *st;
	uint32_t model_id;
	uint64_t claim;     /* the store's, on the first block asked */
	uint32_t index;     /* the next block's place in the chain */
	uint64_t parent[2]; /* its parent's key; 0, 0 for block 0 */
};

/* A checked block into the store when it is the next of the chain asked, as the client that made
 * it inserted it (the store checks the model's geometry and that the parent is cached). */
static bool fetched_block(void *ctx, const struct lbd_l2_record *rec, bool last)
{
	struct prefix_fetch *f = ctx;
	bool took = false;
	if (rec && rec->kind == LBD_L2_BLOCK && rec->blk.index == f->index &&
	    rec->blk.parent[0] == f->parent[0] && rec->blk.parent[1] == f->parent[1] &&
	    LB_INSERT_HDR_SIZE + rec->blk.bytes <= UINT32_MAX) {
		struct lb_req r = { .opcode = LB_OP_INSERT_BLOCK, .model_id = f->model_id,
				    .layer = LB_ENTRY_LAYER_BLOCK, .seq_len = rec->seq_len,
				    .payload_len = (uint32_t)(LB_INSERT_HDR_SIZE + rec->blk.bytes) };
		struct lb_cpl cpl = { 0 };
		lbd_store_insert_block(f->st, LBD_INSERTER_DAEMON, &r, &rec->blk, rec->payload, &cpl);
		took = cpl.status == 0 || cpl.status == -EEXIST;
		if (took) {
			f->index++;
			f->parent[0] = rec->blk.key[0];
			f->parent[1] = rec->blk.key[1];
		}
	}
	if (last) {
		lbd_store_tier_done(f->st, f->claim);
		free(f);
	}
	return took;
}

static void miss_blocks(void *ctx, const struct lbp_register_model *d, const struct lb_req *r,
			const uint64_t (*keys)[2], uint32_t from, uint32_t n, uint64_t claim)
{
	struct attach *a = ctx;
	struct prefix_fetch *f = malloc(sizeof(*f));
	if (f) {
		*f = (struct prefix_fetch){ a->st, r->model_id, claim, from,
					    { from ? keys[from - 1][0] : 0, from ? keys[from - 1][1] : 0 } };
		if (lbd_l2_fetch_blocks(a->t, lbd_l2_model_hash(d), keys + from, n - from,
					fetched_block, f))
			return;
		free(f);
	}
	lbd_store_tier_done(a->st, claim);
}

int lbd_l2_attach(struct lbd_l2 *t, struct lbd_store *st)
{
	static struct attach a; /* one tier a daemon */
	a = (struct attach){ t, st };
	/* A fetch waits behind the fetches queued before it, not behind writes (l2.c), and is
	 * answered or failed within the node timeout: past twice that, its claim holds no
	 * lookup any more. */
	uint64_t us = 2000ull * lbd_l2_timeout_ms(t);
	struct lbd_store_tier hooks = { &a, us < LB_SFLIGHT_MAX_US ? (uint32_t)us : LB_SFLIGHT_MAX_US,
					put_layer, put_block, miss, miss_blocks };
	lbd_store_set_tier(st, &hooks);
	return 0;
}
