/* liblayerbank data plane: staging in the client's region, requests on the request ring,
 * completions turned into zero-copy hits, and the synchronous calls built on submit + wait. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client_internal.h"

/* An insert's wait grows with its bytes, which the daemon copies and checksums (about
 * 4 ms a MiB allowed on top of the wait). */
#define INSERT_WAIT_NS_PER_MIB 4000000ull
#define STAGE_ALIGN 64u

/* ---- staging ---- */

/* bytes of staging for one payload. @return its offset, or UINT64_MAX when it does not fit. */
static uint64_t stage(struct lb_client *c, uint64_t bytes)
{
	if (c->inflight == 0 && c->reserved_off == UINT64_MAX)
		c->stage_used = 0; /* nothing refers to staging any more */
	uint64_t off = c->stage_used;
	if (bytes > c->layout.staging_bytes - off)
		return UINT64_MAX;
	c->stage_used = (off + bytes + STAGE_ALIGN - 1) & ~(uint64_t)(STAGE_ALIGN - 1);
	if (c->stage_used > c->layout.staging_bytes)
		c->stage_used = c->layout.staging_bytes;
	return off;
}

/* ---- requests ---- */

/* Push r, and ring the daemon's doorbell unless quiet (a request nobody waits for: the next
 * rung push, or lbi_wake, wakes the daemon for it too). */
static int push_quiet(struct lb_client *c, const struct lb_req *r, bool quiet)
{
	if (!lb_ring_sp_push(&c->req, r))
		return -EAGAIN;
	c->inflight++;
	if (c->pump) {
		c->pump(c->pump_ctx);
	} else if (quiet) {
		c->unrung = true;
	} else {
		c->unrung = false;
		lb_ring_sp_wake(&c->req);
	}
	return 0;
}

static int push(struct lb_client *c, const struct lb_req *r)
{
	return push_quiet(c, r, false);
}

void lbi_wake(struct lb_client *c)
{
	if (c->unrung && c->region) {
		c->unrung = false;
		lb_ring_sp_wake(&c->req);
	}
}

/* flags and aux: a LOOKUP_DEEPEST's single-flight (LB_REQ_*, the bound in us), else 0. */
/* The request of a query, its payload staged. @return 0; -EINVAL, -ENOTCONN, -EAGAIN. */
static int query_req(struct lb_client *c, uint8_t op, uint32_t model_id, uint32_t layer,
		     const struct lb_key *key, const float *tau, uint32_t n_tau, uint8_t flags,
		     uint32_t aux, uint64_t user_data, struct lb_req *r)
{
	struct lb_query q;
	uint64_t len = sizeof(q) + (uint64_t)n_tau * sizeof(float), off;

	if (!key || (n_tau && !tau) || n_tau > LBP_MAX_LAYERS || layer > UINT16_MAX)
		return -EINVAL;
	if (lbi_ready(c) < 0)
		return -ENOTCONN;
	off = stage(c, len);
	if (off == UINT64_MAX)
		return -EAGAIN;
	memset(&q, 0, sizeof(q));
	memcpy(q.fp, key->fp, sizeof(q.fp));
	memcpy(q.exact, key->exact, sizeof(q.exact));
	q.n_thr = n_tau;
	memcpy(c->staging + off, &q, sizeof(q));
	if (n_tau)
		memcpy(c->staging + off + sizeof(q), tau, n_tau * sizeof(float));
	memset(r, 0, sizeof(*r));
	r->opcode = op;
	r->flags = flags;
	r->aux = aux;
	r->layer = (uint16_t)layer;
	r->model_id = lbi_model_id(c, model_id);
	r->user_data = user_data;
	r->seq_len = key->seq_len;
	r->payload_off = (uint32_t)off;
	r->payload_len = (uint32_t)len;
	return 0;
}

static int submit_query(struct lb_client *c, uint8_t op, uint32_t model_id, uint32_t layer,
			const struct lb_key *key, const float *tau, uint32_t n_tau, uint8_t flags,
			uint32_t aux, uint64_t user_data)
{
	struct lb_req r;
	int ret = query_req(c, op, model_id, layer, key, tau, n_tau, flags, aux, user_data, &r);
	return ret < 0 ? ret : push(c, &r);
}

LB_EXPORT int lb_submit_lookup_deepest(struct lb_client *c, uint32_t model_id, const struct lb_key *key,
				       const float *tau, uint32_t n_tau, uint64_t user_data)
{
	return submit_query(c, LB_OP_LOOKUP_DEEPEST, model_id, 0, key, tau, n_tau, 0, 0, user_data);
}

LB_EXPORT int lb_submit_lookup(struct lb_client *c, uint32_t model_id, uint32_t layer,
			       const struct lb_key *key, const float *tau, uint32_t n_tau,
			       uint64_t user_data)
{
	return submit_query(c, LB_OP_LOOKUP, model_id, layer, key, tau, n_tau, 0, 0, user_data);
}

static int submit_lease_op(struct lb_client *c, uint8_t op, uint64_t lease, uint32_t aux,
			   int layer, uint64_t user_data)
{
	struct lb_req r;
	/* A lease from a daemon that is gone ends here: its mapping may go, nothing is sent. */
	if (op == LB_OP_RELEASE && lbi_orphan_release(c, lease))
		return -ECONNRESET;
	if (lbi_ready(c) < 0)
		return -ENOTCONN;
	if (op == LB_OP_RELEASE)
		lbi_leases_take(&c->leases, lease);
	memset(&r, 0, sizeof(r));
	r.opcode = op;
	r.lease = lease;
	r.aux = aux;
	if (layer >= 0) {
		r.flags = LB_REQ_AT_LAYER;
		r.layer = (uint16_t)layer;
	}
	r.user_data = user_data;
	return push(c, &r);
}

LB_EXPORT int lb_submit_release(struct lb_client *c, uint64_t lease, uint64_t user_data)
{
	return submit_lease_op(c, LB_OP_RELEASE, lease, 0, -1, user_data);
}

/* ---- completions ---- */

/* Turn a completion into a result; a hit is checked against the arena it points into. */
static void to_result(struct lb_client *c, const struct lb_cpl *k, struct lb_result *out)
{
	memset(out, 0, sizeof(*out));
	out->user_data = k->user_data;
	out->status = k->status;
	if (k->opcode == LB_OP_LOOKUP_DEEPEST && (k->claim || k->sflight || k->waited_us)) {
		c->sf_tag = k->user_data;
		c->sf_claim = k->claim;
		c->sf_waited_us = k->waited_us;
		c->sf_flags = k->sflight;
	}
	if (k->status == 0 && k->opcode == LB_OP_LOOKUP_PREFIX) {
		/* Its blocks are checked by lb_lookup_prefix, which reads the answers in staging. */
		if (lbi_leases_add(&c->leases, k->lease) < 0)
			c->untracked = true;
		out->hit.lease = k->lease;
		out->hit.layer = k->count;
		return;
	}
	if (k->status != 0 || (k->opcode != LB_OP_LOOKUP && k->opcode != LB_OP_LOOKUP_DEEPEST))
		return;
	const struct lb_entry_hdr *h = NULL;
	/* A hole (another tenant's arena) has no base and 0 bytes: refused before the subtraction. */
	if (k->arena < c->n_arenas && c->arenas[k->arena].base && k->entry_off % 64 == 0 &&
	    k->entry_off <= c->arenas[k->arena].bytes - LB_ENTRY_HDR_SIZE)
		h = (const struct lb_entry_hdr *)((const uint8_t *)c->arenas[k->arena].base + k->entry_off);
	uint64_t room = h ? c->arenas[k->arena].bytes - k->entry_off - LB_ENTRY_HDR_SIZE : 0;
	if (!h || !lb_entry_live(h) || h->bytes > room ||
	    (h->n_tokens && (h->n_tokens != h->seq_len ||
			     lb_tokens_off(h->bytes) + (uint64_t)h->n_tokens * sizeof(int32_t) > room))) {
		out->status = -EPROTO;
		return;
	}
	if (lbi_leases_add(&c->leases, k->lease) < 0)
		c->untracked = true; /* then a lost connection's mappings stay until lb_close */
	out->hit.data = (const uint8_t *)h + LB_ENTRY_HDR_SIZE;
	out->hit.bytes = h->bytes;
	out->hit.lease = k->lease;
	out->hit.checksum = h->checksum;
	out->hit.layer = k->layer;
	out->hit.hamming = k->hamming;
	out->hit.dtype = (enum lb_dtype)h->dtype;
	out->hit.ndim = h->ndim;
	memcpy(out->hit.shape, h->shape, sizeof(out->hit.shape));
}

static bool stale_take(struct lb_client *c, uint64_t user_data)
{
	if (!(user_data & LBI_SYNC_TAG))
		return false;
	for (unsigned i = 0; i < c->n_stale; i++) {
		if (c->stale[i] == user_data) {
			c->stale[i] = c->stale[--c->n_stale];
			return true;
		}
	}
	return false;
}

static uint64_t sync_tag(struct lb_client *c)
{
	return LBI_SYNC_TAG | (++c->sync_seq & ~(LBI_SYNC_TAG | LBI_TOKENS_TAG));
}

static bool give_back(struct lb_client *c, uint64_t lease, bool quiet)
{
	struct lb_req r = { .opcode = LB_OP_RELEASE, .lease = lease };
	if (!c->region || c->n_stale == LBI_STALE_MAX)
		return false;
	r.user_data = sync_tag(c);
	if (push_quiet(c, &r, quiet) < 0)
		return false;
	c->stale[c->n_stale++] = r.user_data;
	return true;
}

bool lbi_give_back(struct lb_client *c, uint64_t lease)
{
	return give_back(c, lease, false);
}

bool lbi_give_back_quiet(struct lb_client *c, uint64_t lease)
{
	return give_back(c, lease, true);
}

LB_EXPORT int lb_poll(struct lb_client *c, struct lb_result *out, unsigned max, uint32_t timeout_us)
{
	unsigned n = 0;
	struct lb_cpl k;

	if (!c->region)
		return c->lost ? -ECONNRESET : -ENOTCONN;
	if (max && timeout_us) {
		/* In slices, looking at the socket between them: a daemon that died never rings
		 * the doorbell, and a worker must learn of it in a millisecond, not a time-out. */
		uint64_t now = lb_now_ns(), deadline = now + (uint64_t)timeout_us * 1000;
		uint64_t spin = lbu_spare_spin(&c->spare, c->spin_ns, now);
		for (;;) {
			uint64_t left = deadline - now;
			int64_t ready = lb_ring_sc_wait(&c->cpl, spin, left < LBI_HUP_SLICE_NS ? left : LBI_HUP_SLICE_NS);
			if (ready < 0)
				return (int)ready;
			if (ready > 0)
				break;
			if (c->inflight && lbi_hung_up(c))
				return lbi_lost(c);
			now = lb_now_ns();
			if (now >= deadline)
				break;
			spin = 0;
		}
	} else if (c->inflight && lb_ring_sc_peek(&c->cpl) == 0) {
		uint64_t now = lb_now_ns();
		if (now - c->hup_check_ns >= LBI_HUP_SLICE_NS) {
			c->hup_check_ns = now;
			if (lbi_hung_up(c))
				return lbi_lost(c);
		}
	}
	while (n < max) {
		int ret = lb_ring_sc_pop(&c->cpl, &k);
		if (ret < 0)
			return ret;
		if (ret == 0)
			break;
		c->inflight--;
		if (c->n_stale && stale_take(c, k.user_data)) {
			/* A daemon that predates token ids refused a deferred insert's. */
			if ((k.user_data & LBI_TOKENS_TAG) && k.opcode == LB_OP_INSERT &&
			    k.status == -EINVAL)
				c->tokens_off = true;
			if (k.status == 0 && k.lease &&
			    (k.opcode == LB_OP_LOOKUP || k.opcode == LB_OP_LOOKUP_DEEPEST ||
			     k.opcode == LB_OP_LOOKUP_PREFIX))
				lbi_give_back(c, k.lease);
			/* A claim nobody will compute for: the others must not wait for it. */
			if (k.opcode == LB_OP_LOOKUP_DEEPEST && k.claim)
				lbi_give_back(c, k.claim);
			continue;
		}
		to_result(c, &k, &out[n++]);
	}
	/* The daemon stops serving us while our completion ring is full: say there is room. */
	if (n)
		lb_ring_sp_wake(&c->req);
	return (int)n;
}

/* A synchronous call may start: nothing of the application's is in flight, and there is room
 * to give up on it. */
static int sync_ok(const struct lb_client *c)
{
	return c->inflight != c->n_stale || c->n_stale == LBI_STALE_MAX ? -EBUSY : 0;
}

/*
 * Wait up to wait_ns for the completion of the request tagged tag. A worker must not stall on
 * a daemon that is slow, stopped or dying (its socket hangs up only once the kernel has torn
 * down its memory, tens of ms for a large arena): past the wait the call answers -ETIMEDOUT,
 * the worker computes, and the completion is swallowed when it comes.
 */
static int call(struct lb_client *c, uint64_t tag, struct lb_result *res, uint64_t wait_ns)
{
	uint64_t start = lb_now_ns();
	for (;;) {
		uint64_t waited = lb_now_ns() - start;
		if (waited >= wait_ns) {
			c->stale[c->n_stale++] = tag; /* room: sync_ok */
			return -ETIMEDOUT;
		}
		int n = lb_poll(c, res, 1, (uint32_t)((wait_ns - waited + 999) / 1000));
		if (n < 0)
			return n;
		if (n == 1 && res->user_data == tag)
			return res->status;
	}
}

static int sync_query(struct lb_client *c, uint8_t op, uint32_t model_id, uint32_t layer,
		      const struct lb_key *key, const float *tau, uint32_t n_tau, struct lb_hit *hit)
{
	struct lb_result res;
	int ret;

	uint64_t tag;

	if (!hit)
		return -EINVAL;
	ret = sync_ok(c);
	if (ret < 0)
		return ret;
	tag = sync_tag(c);
	ret = submit_query(c, op, model_id, layer, key, tau, n_tau, 0, 0, tag);
	if (ret < 0)
		return ret;
	ret = call(c, tag, &res, c->wait_ns);
	if (ret == 0)
		*hit = res.hit;
	return ret;
}

LB_EXPORT int lb_lookup_sflight(struct lb_client *c, uint32_t model_id, const struct lb_key *key,
				const float *tau, uint32_t n_tau, uint32_t flags, uint32_t bound_us,
				struct lb_hit *hit, struct lb_sflight *sf)
{
	struct lb_result res;
	uint64_t tag;
	int ret;

	_Static_assert(LB_SFLIGHT_CLAIM == LB_REQ_CLAIM && LB_SFLIGHT_WAIT == LB_REQ_WAIT &&
			       LB_SFLIGHT_WAITED == LB_CPL_WAITED && LB_SFLIGHT_BUSY == LB_CPL_BUSY,
		       "the API's flags are the ring's");
	_Static_assert(LB_LOOKUP_ANY_LEN == LB_REQ_ANY_LEN && LB_SFLIGHT_TIER == LB_REQ_TIER,
		       "the API's flags are the ring's");
	bool sfl = flags & LB_REQ_SFLIGHT;
	if (!hit || !sf || !flags || (flags & ~(uint32_t)(LB_REQ_SFLIGHT | LB_REQ_ANY_LEN)) ||
	    (sfl ? !bound_us || bound_us > LB_SFLIGHT_MAX_US : bound_us != 0))
		return -EINVAL;
	memset(sf, 0, sizeof(*sf));
	ret = sync_ok(c);
	if (ret < 0)
		return ret;
	tag = sync_tag(c);
	ret = submit_query(c, LB_OP_LOOKUP_DEEPEST, model_id, 0, key, tau, n_tau, (uint8_t)flags,
			   bound_us, tag);
	if (ret < 0)
		return ret;
	/* The daemon answers by the bound at the latest: wait that, and the usual wait. */
	ret = call(c, tag, &res, (uint64_t)bound_us * 1000 + c->wait_ns);
	if (c->sf_tag == tag) {
		sf->claim = c->sf_claim;
		sf->waited_us = c->sf_waited_us;
		sf->flags = c->sf_flags;
		c->sf_tag = 0;
	}
	if (ret == 0)
		*hit = res.hit;
	else if (ret != -ENOENT && sf->claim) {
		/* An answer this call cannot use (a hit that does not check): no claim either. */
		lb_release(c, sf->claim);
		sf->claim = 0;
	}
	return ret;
}

int lbi_lookups_submit(struct lb_client *c, uint32_t model_id, const struct lb_key *key,
		       const float *tau, uint32_t n_tau, uint32_t n, uint64_t *tags)
{
	int ret = sync_ok(c);
	uint32_t sent = 0;

	if (ret < 0)
		return ret;
	if (n > LBI_STALE_MAX - c->n_stale)
		return -EBUSY; /* each may have to be given up */
	for (; sent < n; sent++) {
		tags[sent] = sync_tag(c);
		struct lb_req r;
		ret = query_req(c, LB_OP_LOOKUP, model_id, sent, key, tau, n_tau, 0, 0, tags[sent],
				&r);
		if (ret == 0)
			ret = push_quiet(c, &r, true);
		if (ret < 0)
			break;
	}
	lbi_wake(c);
	return sent ? (int)sent : ret == -EAGAIN ? 0 : ret;
}

void lbi_lookups_wait(struct lb_client *c, const uint64_t *tags, uint32_t n, struct lb_hit *hits,
		      int *rcs)
{
	uint64_t start = lb_now_ns();
	uint32_t left = n;
	struct lb_result res;

	for (uint32_t i = 0; i < n; i++)
		rcs[i] = -ETIMEDOUT;
	while (left) {
		uint64_t waited = lb_now_ns() - start;
		int got = waited < c->wait_ns
				  ? lb_poll(c, &res, 1, (uint32_t)((c->wait_ns - waited + 999) / 1000))
				  : -ETIMEDOUT;
		if (got < 0) {
			/* Given up: their completions are swallowed, their leases given back. */
			for (uint32_t i = 0; i < n; i++)
				if (rcs[i] == -ETIMEDOUT) {
					rcs[i] = got;
					if (got == -ETIMEDOUT)
						c->stale[c->n_stale++] = tags[i]; /* room: submit */
				}
			return;
		}
		for (uint32_t i = 0; got && i < n; i++)
			if (rcs[i] == -ETIMEDOUT && res.user_data == tags[i]) {
				rcs[i] = res.status;
				if (res.status == 0)
					hits[i] = res.hit;
				left--;
			}
	}
}

LB_EXPORT int lb_lookup_deepest(struct lb_client *c, uint32_t model_id, const struct lb_key *key,
				const float *tau, uint32_t n_tau, struct lb_hit *hit)
{
	return sync_query(c, LB_OP_LOOKUP_DEEPEST, model_id, 0, key, tau, n_tau, hit);
}

LB_EXPORT int lb_lookup(struct lb_client *c, uint32_t model_id, uint32_t layer, const struct lb_key *key,
			const float *tau, uint32_t n_tau, struct lb_hit *hit)
{
	return sync_query(c, LB_OP_LOOKUP, model_id, layer, key, tau, n_tau, hit);
}

static int sync_lease_op(struct lb_client *c, uint8_t op, uint64_t lease, uint32_t aux, int layer)
{
	struct lb_result res;
	uint64_t tag;
	int ret = sync_ok(c);

	if (ret < 0)
		return ret;
	tag = sync_tag(c);
	ret = submit_lease_op(c, op, lease, aux, layer, tag);
	return ret < 0 ? ret : call(c, tag, &res, c->wait_ns);
}

LB_EXPORT int lb_release(struct lb_client *c, uint64_t lease)
{
	if (lbi_orphan_release(c, lease))
		return 0; /* its daemon is gone, and so is the lease */
	return sync_lease_op(c, LB_OP_RELEASE, lease, 0, -1);
}

/* A REPORT on lease: of the entry's own layer (layer -1), or of layer. */
static int report(struct lb_client *c, uint64_t lease, int layer, float drift)
{
	uint32_t bits;
	if (!(drift >= 0) || isinf(drift))
		return -EINVAL;
	memcpy(&bits, &drift, sizeof(bits));
	return sync_lease_op(c, LB_OP_REPORT, lease, bits, layer);
}

LB_EXPORT int lb_report(struct lb_client *c, uint64_t lease, float drift)
{
	return report(c, lease, -1, drift);
}

LB_EXPORT int lb_report_layer(struct lb_client *c, uint64_t lease, uint32_t layer, float drift)
{
	if (layer >= LBP_MAX_LAYERS)
		return -EINVAL;
	return report(c, lease, (int)layer, drift);
}

LB_EXPORT int lb_ping(struct lb_client *c)
{
	return sync_lease_op(c, LB_OP_PING, 0, 0, -1);
}

LB_EXPORT void lb_set_spin_us(struct lb_client *c, uint32_t us)
{
	c->spin_ns = (uint64_t)us * 1000;
}

LB_EXPORT void lb_set_wait_us(struct lb_client *c, uint32_t us)
{
	c->wait_ns = us ? (uint64_t)us * 1000 : LBI_WAIT_NS;
}

/* ---- inserts ---- */

LB_EXPORT void *lb_insert_reserve(struct lb_client *c, uint64_t bytes)
{
	uint64_t off;

	if (!bytes) {
		errno = EINVAL;
		return NULL;
	}
	if (c->reserved_off != UINT64_MAX) {
		errno = EBUSY;
		return NULL;
	}
	if (lbi_ready(c) < 0) {
		errno = ENOTCONN;
		return NULL;
	}
	if (bytes > c->layout.staging_bytes - LB_INSERT_HDR_SIZE ||
	    LB_INSERT_HDR_SIZE + bytes > UINT32_MAX) {
		errno = ENOBUFS;
		return NULL;
	}
	off = stage(c, LB_INSERT_HDR_SIZE + bytes);
	if (off == UINT64_MAX) {
		errno = EBUSY; /* staging is taken by requests in flight */
		return NULL;
	}
	c->reserved_off = off;
	c->reserved_bytes = bytes;
	return c->staging + off + LB_INSERT_HDR_SIZE;
}

/* The reservation is over, not sent. @return -ECONNRESET when it was a lost connection's. */
static int unreserve(struct lb_client *c)
{
	c->reserved_off = UINT64_MAX;
	if (c->reserve_orphan < 0)
		return 0;
	lbi_orphan_unreserve(c);
	return -ECONNRESET;
}

/* A prefix call's wait: the client's, or computing one block if that takes longer (a miss
 * costs at least that much compute). */
static uint64_t prefix_wait_ns(const struct lb_client *c)
{
	return c->block_ns > c->wait_ns ? c->block_ns : c->wait_ns;
}

/* Send the reservation as op (INSERT, INSERT_BLOCK) with hdr (size bytes) in front of its data
 * and wait for the answer, wait_ns and the copy's time; deferred (a tag with LBI_SYNC_TAG): do
 * not wait, the completion is swallowed later, as a stale call's. r: the request's fields but
 * the payload's. */
static int commit_reserved(struct lb_client *c, struct lb_req *r, const void *hdr, size_t size,
			   uint64_t wait_ns, uint64_t deferred)
{
	struct lb_result res;
	uint64_t bytes = c->reserved_bytes;
	int ret;

	if (c->reserve_orphan >= 0) /* reserved before the daemon went away */
		return unreserve(c);
	ret = sync_ok(c);
	if (ret < 0)
		return ret;
	/* The header's tail is reserved and must be zero; staging may hold an earlier request's
	 * bytes there (a lookup's query, when requests were given up on and offsets moved). */
	memset(c->staging + c->reserved_off, 0, LB_INSERT_HDR_SIZE);
	memcpy(c->staging + c->reserved_off, hdr, size);
	r->payload_off = (uint32_t)c->reserved_off;
	r->payload_len = (uint32_t)(LB_INSERT_HDR_SIZE + bytes);
	/* sync_ok left room for one stale call; a deferred one keeps room for a call's own. */
	if (deferred && c->n_stale + 1 >= LBI_STALE_MAX)
		deferred = 0;
	r->user_data = deferred ? deferred : sync_tag(c);
	c->reserved_off = UINT64_MAX;
	ret = push_quiet(c, r, deferred != 0);
	if (ret < 0 || deferred) {
		if (ret == 0)
			c->stale[c->n_stale++] = r->user_data;
		return ret;
	}
	return call(c, r->user_data, &res, wait_ns + (bytes >> 20) * INSERT_WAIT_NS_PER_MIB);
}

/* The data bytes of shape, or 0 when it has none or more than 2^63. */
static uint64_t shape_bytes(const struct lb_shape *shape)
{
	uint64_t n = lbp_dtype_size(shape->dtype);

	for (uint32_t i = 0; i < shape->ndim && n; i++) {
		if (shape->dims[i] && n > (UINT64_MAX >> 1) / shape->dims[i])
			return 0;
		n *= shape->dims[i];
	}
	return n;
}

/* An INSERT of the reservation; with tokens (key->seq_len ids), the reservation holds the data
 * of shape and room for them after it. */
static int insert_commit(struct lb_client *c, uint32_t model_id, uint32_t layer,
			 const struct lb_key *key, const struct lb_shape *shape, uint32_t approx,
			 const int32_t *tokens, bool deferred)
{
	struct lb_insert_hdr h;

	if (c->reserved_off == UINT64_MAX || !key || !shape || shape->ndim < 1 ||
	    shape->ndim > LB_MAX_NDIM || layer > UINT16_MAX || approx > LB_FP_BITS)
		return -EINVAL;
	memset(&h, 0, sizeof(h));
	h.approx = approx;
	memcpy(h.fp, key->fp, sizeof(h.fp));
	memcpy(h.exact, key->exact, sizeof(h.exact));
	h.dtype = (uint32_t)shape->dtype;
	h.ndim = shape->ndim;
	memcpy(h.shape, shape->dims, sizeof(uint32_t) * shape->ndim);
	h.bytes = c->reserved_bytes;
	if (tokens) {
		h.bytes = shape_bytes(shape);
		if (!h.bytes || !key->seq_len ||
		    lb_insert_tokens_bytes(h.bytes, key->seq_len) != c->reserved_bytes) {
			int ret = unreserve(c);
			return ret < 0 ? ret : -EINVAL;
		}
		h.n_tokens = key->seq_len;
		memcpy(c->staging + c->reserved_off + LB_INSERT_HDR_SIZE + lb_tokens_off(h.bytes),
		       tokens, (size_t)key->seq_len * sizeof(int32_t));
	}
	struct lb_req r = { .opcode = LB_OP_INSERT, .layer = (uint16_t)layer,
			    .model_id = lbi_model_id(c, model_id), .seq_len = key->seq_len };
	uint64_t tag = deferred ? sync_tag(c) | (tokens ? LBI_TOKENS_TAG : 0) : 0;
	return commit_reserved(c, &r, &h, sizeof(h), c->wait_ns, tag);
}

int lbi_insert_deferred(struct lb_client *c, uint32_t model_id, uint32_t layer,
			const struct lb_key *key, const struct lb_shape *shape, uint32_t approx,
			const int32_t *tokens)
{
	return insert_commit(c, model_id, layer, key, shape, approx, tokens, true);
}

int lbi_drain(struct lb_client *c, uint64_t wait_ns)
{
	uint64_t start = lb_now_ns();
	struct lb_result res;

	while (c->inflight) {
		uint64_t waited = lb_now_ns() - start;
		if (waited >= wait_ns)
			return -ETIMEDOUT;
		/* Only stale completions are in flight when this is called: lb_poll swallows them. */
		int n = lb_poll(c, &res, 1, (uint32_t)((wait_ns - waited + 999) / 1000));
		if (n < 0)
			return n;
	}
	return 0;
}

LB_EXPORT int lb_insert_commit_approx(struct lb_client *c, uint32_t model_id, uint32_t layer,
				      const struct lb_key *key, const struct lb_shape *shape,
				      uint32_t approx)
{
	return insert_commit(c, model_id, layer, key, shape, approx, NULL, false);
}

LB_EXPORT uint64_t lb_insert_tokens_bytes(uint64_t bytes, uint32_t n)
{
	return lb_tokens_off(bytes) + (uint64_t)n * sizeof(int32_t);
}

LB_EXPORT int lb_insert_commit_tokens(struct lb_client *c, uint32_t model_id, uint32_t layer,
				      const struct lb_key *key, const struct lb_shape *shape,
				      uint32_t approx, const int32_t *tokens)
{
	if (!tokens)
		return -EINVAL;
	return insert_commit(c, model_id, layer, key, shape, approx, tokens, false);
}

LB_EXPORT const int32_t *lb_hit_tokens(const struct lb_hit *hit, uint32_t *n)
{
	*n = 0;
	if (!hit || !hit->data)
		return NULL;
	/* Checked when the hit was made (to_result): n_tokens is seq_len, inside the arena. */
	const struct lb_entry_hdr *h =
		(const struct lb_entry_hdr *)((const uint8_t *)hit->data - LB_ENTRY_HDR_SIZE);
	if (!h->n_tokens)
		return NULL;
	*n = h->n_tokens;
	return (const int32_t *)((const uint8_t *)hit->data + lb_tokens_off(h->bytes));
}

LB_EXPORT int lb_insert_commit(struct lb_client *c, uint32_t model_id, uint32_t layer,
			       const struct lb_key *key, const struct lb_shape *shape)
{
	return lb_insert_commit_approx(c, model_id, layer, key, shape, 0);
}

/* ---- prefix blocks ---- */

/* Data bytes of one block of the model d. */
static uint64_t block_bytes(const struct lbp_register_model *d)
{
	return (uint64_t)d->kv.layers * 2 * d->kv.block_tokens * d->kv.dim * lbp_dtype_size(d->dtype);
}

LB_EXPORT int lb_insert_block(struct lb_client *c, uint32_t model_id, const uint64_t key[2],
			      const uint64_t parent[2], uint32_t index)
{
	const struct lbp_register_model *d = lbi_model_desc(c, model_id);

	if (c->reserved_off == UINT64_MAX || !key || (index && !parent))
		return -EINVAL;
	if (!d || !d->kv.dim || c->reserved_bytes != block_bytes(d) ||
	    ((uint64_t)index + 1) * d->kv.block_tokens > d->max_seq || index >= LB_PREFIX_MAX_BLOCKS) {
		int ret = unreserve(c);
		return ret < 0 ? ret : d ? -EINVAL : -EACCES;
	}
	struct lb_block_hdr h = { .key = { key[0], key[1] }, .index = index, .dtype = d->dtype,
				  .ndim = 4, .shape = { d->kv.layers, 2, d->kv.block_tokens, d->kv.dim },
				  .bytes = c->reserved_bytes };
	if (index)
		memcpy(h.parent, parent, sizeof(h.parent));
	struct lb_req r = { .opcode = LB_OP_INSERT_BLOCK, .model_id = lbi_model_id(c, model_id),
			    .seq_len = (index + 1) * d->kv.block_tokens };
	return commit_reserved(c, &r, &h, sizeof(h), prefix_wait_ns(c), 0);
}

/* Block i of a prefix hit, checked against what was asked (Ring protocol 9): where it is, that
 * it is live, of this model, this key and this size. @return its data, or NULL. */
static const void *prefix_block(const struct lb_client *c, const struct lbp_register_model *d,
				uint32_t model, const uint64_t key[2], const struct lb_prefix_block *a)
{
	uint64_t bytes = block_bytes(d);

	if (a->arena >= c->n_arenas || !c->arenas[a->arena].base || a->reserved ||
	    a->entry_off % 64 ||
	    a->entry_off > c->arenas[a->arena].bytes - LB_ENTRY_HDR_SIZE ||
	    bytes > c->arenas[a->arena].bytes - a->entry_off - LB_ENTRY_HDR_SIZE)
		return NULL;
	const struct lb_entry_hdr *h =
		(const struct lb_entry_hdr *)((const uint8_t *)c->arenas[a->arena].base + a->entry_off);
	if (!lb_entry_live(h) || h->model_id != model || h->layer != LB_ENTRY_LAYER_BLOCK ||
	    h->bytes != bytes || h->key[0] != key[0] || h->key[1] != key[1])
		return NULL;
	return (const uint8_t *)h + LB_ENTRY_HDR_SIZE;
}

LB_EXPORT int lb_lookup_prefix(struct lb_client *c, uint32_t model_id, const uint64_t (*keys)[2],
			       uint32_t n_keys, const void **blocks, uint64_t *lease)
{
	const struct lbp_register_model *d = lbi_model_desc(c, model_id);
	struct lb_prefix_query q = { .n_keys = n_keys };
	uint64_t len = sizeof(q) + (uint64_t)n_keys * sizeof(keys[0]), off;
	struct lb_result res;
	int ret;

	if (!keys || !blocks || !lease || !n_keys || n_keys > LB_PREFIX_MAX_BLOCKS)
		return -EINVAL;
	if (!d || !d->kv.dim)
		return d ? -EINVAL : -EACCES;
	ret = sync_ok(c);
	if (ret < 0)
		return ret;
	if (lbi_ready(c) < 0)
		return -ENOTCONN;
	off = stage(c, len);
	if (off == UINT64_MAX)
		return -EAGAIN;
	memcpy(c->staging + off, &q, sizeof(q));
	memcpy(c->staging + off + sizeof(q), keys, len - sizeof(q));
	struct lb_req r = { .opcode = LB_OP_LOOKUP_PREFIX, .model_id = lbi_model_id(c, model_id),
			    .user_data = sync_tag(c), .payload_off = (uint32_t)off,
			    .payload_len = (uint32_t)len };
	ret = push(c, &r);
	if (ret == 0)
		ret = call(c, r.user_data, &res, prefix_wait_ns(c));
	if (ret < 0)
		return ret;
	/* The answers, written over the keys, are read before staging is used again. */
	uint32_t n = res.hit.layer;
	for (uint32_t i = 0; i < n && n <= n_keys; i++) {
		struct lb_prefix_block a;
		memcpy(&a, c->staging + off + sizeof(q) + i * sizeof(a), sizeof(a));
		blocks[i] = prefix_block(c, d, r.model_id, keys[i], &a);
		if (!blocks[i])
			n = 0;
	}
	if (n == 0 || n > n_keys) {
		lb_release(c, res.hit.lease);
		return -EPROTO;
	}
	*lease = res.hit.lease;
	return (int)n;
}
