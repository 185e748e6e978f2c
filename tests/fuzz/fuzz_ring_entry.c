/*
 * libFuzzer target: the daemon's validation and serving of ring requests (daemon/service.c
 * serve(), daemon/store.c) through an in-process bank (inproc/inproc.h), driven as a hostile
 * client would: raw 64-byte request entries and staging bytes written into the client's region,
 * then the daemon's pump. Two models are registered so that well-formed requests reach the
 * store. Checked for every request: exactly one completion, in order, whose status is one that
 * PROTOCOL.md (Ring protocol 6, 7, 10, 11) allows, predicted by an independent model of the
 * checks; hits and inserts name sound entries. After each pump the STATS counters agree with the
 * completions; after each input, once every lease was released, none is left and the per-layer
 * counters add up to the totals.
 *
 * Input: byte 0 picks the bank (eviction lru, decay, or ttl 0: every entry expired when looked
 * up); then records, each led by one byte whose low 3 bits say what follows:
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
#define MAX_REQUESTS 8192u    /* per input, repeats included: enough for the lease limit */
#define MAX_GIVEN 8192u       /* leases remembered per input for REQ_LEASE */
#define HELD_SLOTS 8192u      /* the held set: twice LBD_MAX_LEASES keeps probes short */
#define N_RECENT 64u          /* successful inserts remembered for the must-find checks */
#define PENDING_CAP 1024u     /* >= the request ring's entries */
#define DIRTY_MAX 32u
#define LOOKUP_MAX_PAYLOAD (sizeof(struct lb_query) + LBP_MAX_LAYERS * sizeof(float))

enum bank_kind { BANK_LRU, BANK_DECAY, BANK_TTL0, N_BANKS };

struct model {
	const char *name;
	uint32_t n_layers, max_seq;
	uint32_t id; /* as registered: the same in every bank */
};

static struct model models[] = {
	{ "fuzz-small", 4, 256, 0 },
	{ "fuzz-deep", LBP_MAX_LAYERS, LBP_MAX_SEQ, 0 }, /* the largest threshold payload */
};
#define N_MODELS (sizeof(models) / sizeof(models[0]))

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
	uint32_t model_id, seq_len, layer;
	uint64_t exact[2];
	uint64_t epoch;
};

/* One input's run: what the harness knows the daemon must have done. */
struct run {
	struct lbip_bank *l;
	struct lb_client *c;
	enum bank_kind kind;
	const uint8_t *staging;
	uint64_t staging_bytes;
	/* Staging this input wrote, zeroed at the end: a few ranges, not their hull, which can
	 * span all 8 MiB. Past DIRTY_MAX the last range grows to cover the rest. */
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
	uint64_t *held;   /* [HELD_SLOTS]: the leases held now, a set (0: free slot) */
	uint32_t n_out;

	struct recent recent[N_RECENT];
	uint32_t n_recent;
	/* Bumped whenever entries may have been dropped (evicted, expired, invalidated) since the
	 * last look: an insert of an older epoch may be gone. A pump in which anything was dropped
	 * is "dirty": the must-find checks and the arena reads are off for its requests. */
	uint64_t epoch, drops_seen;
	bool dirty;

	uint64_t hits, misses, inserts, reports_over;
	uint64_t layer_lookups[N_MODELS]; /* expected sum of per-layer hits + misses */
	bool touched[N_MODELS];           /* a lookup or insert of it reached the store */
};

static struct lbip_bank *banks[N_BANKS];
static struct lb_req pending_reqs[PENDING_CAP];
static uint64_t given_leases[MAX_GIVEN];
static uint64_t held_leases[HELD_SLOTS]; /* empty between inputs: every lease is released */

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
	struct lbip_bank *l = lbip_bank_new(BUDGET, &cfg, err, sizeof(err));
	if (!l)
		broken(NULL, "cannot make a bank: %s", err);
	for (size_t i = 0; i < N_MODELS; i++) {
		struct lb_model_desc d = { .name = models[i].name, .weights_hash = 1 + i,
					   .n_layers = models[i].n_layers, .hidden = 64,
					   .dtype = LB_DTYPE_F32, .max_seq = models[i].max_seq,
					   .fp_chunks = 4, .fp_seed = 9 };
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

/* ---- the reference checks (PROTOCOL.md, Ring protocol 6 and 10) ---- */

static uint32_t dtype_size(uint32_t dtype)
{
	return dtype == 1 ? 4 : dtype == 2 || dtype == 3 ? 2 : 0;
}

/* Section 8: a valid shape whose element count times the element size is bytes. */
static bool shape_valid(const struct lb_insert_hdr *h)
{
	unsigned __int128 n = dtype_size(h->dtype);
	if (!n || h->ndim < 1 || h->ndim > LB_MAX_NDIM)
		return false;
	for (uint32_t i = 0; i < LB_MAX_NDIM; i++) {
		if ((i < h->ndim) != (h->shape[i] != 0))
			return false;
		if (i < h->ndim)
			n *= h->shape[i];
	}
	return n == h->bytes; /* four 32-bit factors and a size of 4 fit in 128 bits */
}

static bool payload_inside(const struct run *R, const struct lb_req *r)
{
	return r->payload_off % 8 == 0 && (uint64_t)r->payload_off + r->payload_len <= R->staging_bytes;
}

/* The held set: linear probing, deletion by backward shift (no tombstones). Handles are
 * opaque, so they are hashed whole. */
static uint32_t held_home(uint64_t h)
{
	return (uint32_t)((h * 0x9e3779b97f4a7c15ull) >> 32) & (HELD_SLOTS - 1);
}

static int64_t held_find(const struct run *R, uint64_t h)
{
	if (!h)
		return -1;
	for (uint32_t i = held_home(h);; i = (i + 1) & (HELD_SLOTS - 1)) {
		if (R->held[i] == h)
			return i;
		if (!R->held[i])
			return -1;
	}
}

static bool lease_held(const struct run *R, uint64_t h)
{
	return held_find(R, h) >= 0;
}

static void held_add(struct run *R, uint64_t h)
{
	uint32_t i = held_home(h);
	while (R->held[i])
		i = (i + 1) & (HELD_SLOTS - 1);
	R->held[i] = h;
	R->n_out++;
}

static void held_del(struct run *R, uint64_t h)
{
	uint32_t i = (uint32_t)held_find(R, h), j = i;
	for (;;) {
		j = (j + 1) & (HELD_SLOTS - 1);
		if (!R->held[j])
			break;
		/* Move j into the hole at i unless its home lies cyclically in (i, j]. */
		uint32_t k = held_home(R->held[j]);
		if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
			continue;
		R->held[i] = R->held[j];
		i = j;
	}
	R->held[i] = 0;
	R->n_out--;
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
	struct lb_query q;         /* lookups */
	struct lb_insert_hdr h;    /* inserts */
	float thr[LBP_MAX_LAYERS]; /* lookups: q.n_thr of them */
};

/* The statuses the request may complete with, given what this input did so far. */
static unsigned expect(const struct run *R, const struct lb_req *r, struct verdict *v)
{
	/* Field by field: q, h and thr are filled before they are read, and clearing 4 KiB per
	 * request would cost more than the daemon's work. */
	v->valid = false;
	v->m = NULL;
	v->must_layer = -1;
	/* Step 1. */
	if (r->flags || r->reserved[0] || r->reserved[1] || r->reserved2 || r->opcode < LB_OP_MIN ||
	    r->opcode > LB_OP_MAX)
		return S_INVAL;
	switch (r->opcode) {
	case LB_OP_PING:
		if (r->layer || r->model_id || r->seq_len || r->aux || r->lease || r->payload_len ||
		    r->payload_off)
			return S_INVAL;
		return S_OK;
	case LB_OP_RELEASE:
	case LB_OP_REPORT: {
		if (r->layer || r->model_id || r->seq_len || r->payload_len || r->payload_off ||
		    (r->opcode == LB_OP_RELEASE && r->aux))
			return S_INVAL;
		if (r->opcode == LB_OP_REPORT) {
			float drift;
			memcpy(&drift, &r->aux, sizeof(drift));
			if (!isfinite(drift) || drift < 0)
				return S_INVAL;
		}
		v->valid = true;
		return lease_held(R, r->lease) ? S_OK : S_INVAL;
	}
	case LB_OP_LOOKUP_DEEPEST:
	case LB_OP_LOOKUP: {
		/* Step 2: zero fields, the payload in staging, the query consistent with its length. */
		if (r->aux || r->lease || !payload_inside(R, r) ||
		    r->payload_len < sizeof(struct lb_query) || r->payload_len > LOOKUP_MAX_PAYLOAD ||
		    (r->payload_len - sizeof(struct lb_query)) % sizeof(float))
			return S_INVAL;
		memcpy(&v->q, R->staging + r->payload_off, sizeof(v->q));
		memcpy(v->thr, R->staging + r->payload_off + sizeof(v->q),
		       r->payload_len - sizeof(v->q));
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
		/* Section 10: an exact token-hash match of the same length is the candidate, at
		 * distance 0, whose similarity 1 passes any threshold; unless something was dropped
		 * since it went in, or the bank expires everything, the lookup must hit. */
		const struct recent *e = NULL;
		if (!R->dirty && R->kind != BANK_TTL0) {
			uint32_t n = R->n_recent < N_RECENT ? R->n_recent : N_RECENT;
			for (uint32_t i = 0; i < n; i++) {
				const struct recent *x = &R->recent[i];
				if (x->epoch == R->epoch && x->model_id == r->model_id &&
				    x->seq_len == r->seq_len && x->exact[0] == v->q.exact[0] &&
				    x->exact[1] == v->q.exact[1] &&
				    (r->opcode == LB_OP_LOOKUP_DEEPEST || x->layer == r->layer) &&
				    (!e || x->layer > e->layer))
					e = x;
			}
		}
		unsigned allowed = S_NOMEM | (R->n_out >= LBD_MAX_LEASES ? S_BUSY : S_OK);
		if (e) {
			v->must_layer = (int)e->layer;
			return allowed;
		}
		return allowed | S_NOENT;
	}
	case LB_OP_INSERT: {
		static const uint8_t zero[LB_INSERT_HDR_SIZE - sizeof(struct lb_insert_hdr)];
		if (r->aux || r->lease || !payload_inside(R, r) || r->payload_len < LB_INSERT_HDR_SIZE)
			return S_INVAL;
		memcpy(&v->h, R->staging + r->payload_off, sizeof(v->h));
		if (memcmp(R->staging + r->payload_off + sizeof(v->h), zero, sizeof(zero)))
			return S_INVAL;
		if (!shape_valid(&v->h) || v->h.bytes > r->payload_len - LB_INSERT_HDR_SIZE)
			return S_INVAL;
		v->m = model_of(r->model_id);
		if (!v->m)
			return S_SRCH;
		if (r->layer >= v->m->n_layers || !r->seq_len || r->seq_len > v->m->max_seq)
			return S_INVAL;
		v->valid = true;
		uint64_t need = (LB_ENTRY_HDR_SIZE + v->h.bytes + 63) & ~63ull;
		unsigned allowed = S_NOMEM;
		/* Room (section 12): with no lease held nothing is pinned, and fewer than 256 entries
		 * can all be evicted within one insert's rounds. */
		if (need <= BUDGET)
			allowed |= S_OK;
		if (need > BUDGET || R->n_out || R->inserts >= 255)
			allowed |= S_NOSPC;
		/* Section 10, INSERT step 1: an input with that token hash exists. */
		const struct recent *same = recent_of(R, r->model_id, v->h.exact, -1);
		if (same) {
			const struct recent *at_layer = recent_of(R, r->model_id, v->h.exact, r->layer);
			bool sure = !R->dirty && same->epoch == R->epoch;
			if (same->seq_len != r->seq_len)
				return sure ? S_INVAL : allowed | S_INVAL;
			if (at_layer && at_layer->seq_len == r->seq_len)
				return sure && at_layer->epoch == R->epoch ? S_EXIST : allowed | S_EXIST;
		}
		return allowed;
	}
	}
	return S_INVAL; /* not reached: the opcode was checked */
}

/* ---- completions ---- */

static const struct lb_entry_hdr *entry_at(const struct run *R, const struct lb_req *r,
					   const struct lb_cpl *k)
{
	const struct lb_arena_map *a = &R->c->arenas[0];
	if (k->arena != 0 || k->entry_off % 64 ||
	    k->entry_off < ((const struct lb_arena_hdr *)a->base)->data_off ||
	    k->entry_off > a->bytes - LB_ENTRY_HDR_SIZE)
		broken(r, "completion names arena %u offset %llu", k->arena,
		       (unsigned long long)k->entry_off);
	return (const struct lb_entry_hdr *)((const uint8_t *)a->base + k->entry_off);
}

/* The entry's header and data as section 9 says. Only in a pump that dropped nothing: an entry
 * dropped later in the same pump may already hold another's bytes. */
static const uint8_t *check_entry(const struct run *R, const struct lb_req *r, const struct lb_cpl *k)
{
	const struct lb_entry_hdr *e = entry_at(R, r, k);
	const struct lb_arena_map *a = &R->c->arenas[0];
	if (R->dirty)
		return NULL;
	if (e->magic != LB_ENTRY_MAGIC || e->model_id != r->model_id || e->layer != k->layer ||
	    e->seq_len != r->seq_len || e->bytes > a->bytes - k->entry_off - LB_ENTRY_HDR_SIZE)
		broken(r, "entry header at %llu: magic %llx model %u layer %u seq_len %u bytes %llu",
		       (unsigned long long)k->entry_off, (unsigned long long)e->magic, e->model_id,
		       e->layer, e->seq_len, (unsigned long long)e->bytes);
	const uint8_t *data = (const uint8_t *)e + LB_ENTRY_HDR_SIZE;
	if (XXH3_64bits(data, e->bytes) != e->checksum)
		broken(r, "entry at %llu: checksum does not match its data", (unsigned long long)k->entry_off);
	return data;
}

static void record_insert(struct run *R, const struct lb_req *r, const struct lb_insert_hdr *h)
{
	struct recent *e = &R->recent[R->n_recent++ % N_RECENT];
	e->model_id = r->model_id;
	e->seq_len = r->seq_len;
	e->layer = r->layer;
	memcpy(e->exact, h->exact, sizeof(e->exact));
	e->epoch = R->epoch;
}

static void check_completion(struct run *R, const struct lb_req *r, const struct lb_cpl *k)
{
	struct verdict v;
	unsigned allowed = expect(R, r, &v), got = status_bit(k->status);

	if (k->user_data != r->user_data || k->opcode != r->opcode)
		broken(r, "completion out of order: user_data %llu opcode %u",
		       (unsigned long long)k->user_data, k->opcode);
	if (!(allowed & got))
		broken(r, "status %d, allowed mask 0x%x (ok 1 noent 2 srch 4 inval 8 exist 16 nospc 32 "
		       "busy 64 nomem 128)", k->status, allowed);
	if (k->count || k->reserved[0] || k->reserved[1] || k->reserved1)
		broken(r, "completion with reserved fields set");
	if (v.valid && v.m)
		R->touched[v.m - models] = true;
	bool hit = k->status == 0 && (r->opcode == LB_OP_LOOKUP || r->opcode == LB_OP_LOOKUP_DEEPEST);
	bool inserted = k->status == 0 && r->opcode == LB_OP_INSERT;
	/* Section 7: every field not listed for the opcode and status is 0. */
	if ((!hit && (k->lease || k->hamming)) || (!hit && !inserted && (k->arena || k->layer || k->entry_off)))
		broken(r, "status %d with fields set: arena %u layer %u lease %llx off %llu hamming %u",
		       k->status, k->arena, k->layer, (unsigned long long)k->lease,
		       (unsigned long long)k->entry_off, k->hamming);

	if (r->opcode == LB_OP_LOOKUP || r->opcode == LB_OP_LOOKUP_DEEPEST) {
		const struct model *m = v.m;
		if (k->status == 0 || k->status == -ENOENT)
			R->layer_lookups[m - models] += r->opcode == LB_OP_LOOKUP ? 1 : m->n_layers;
		if (k->status == -ENOENT)
			R->misses++;
		if (!hit)
			return;
		R->hits++;
		if (k->layer >= m->n_layers || (r->opcode == LB_OP_LOOKUP && k->layer != r->layer))
			broken(r, "hit at layer %u", k->layer);
		double tau = v.q.n_thr ? (double)v.thr[k->layer] : TAU;
		if (k->hamming > LBP_FP_BITS || lbp_fp_similarity(k->hamming) < tau)
			broken(r, "hit at hamming %u below the threshold %g of layer %u", k->hamming, tau,
			       k->layer);
		if (v.must_layer >= 0 && ((int)k->layer < v.must_layer || k->hamming != 0))
			broken(r, "exact match hit at layer %u hamming %u, want layer >= %d and 0",
			       k->layer, k->hamming, v.must_layer);
		if (!k->lease || lease_held(R, k->lease))
			broken(r, "hit with lease 0x%llx: zero or already held", (unsigned long long)k->lease);
		if (R->n_out >= LBD_MAX_LEASES)
			broken(r, "a hit beyond %u leases held", LBD_MAX_LEASES);
		held_add(R, k->lease);
		if (R->n_given < MAX_GIVEN)
			R->given[R->n_given++] = k->lease;
		check_entry(R, r, k);
		return;
	}
	if (r->opcode == LB_OP_INSERT) {
		if (!inserted)
			return;
		R->inserts++;
		if (k->layer != r->layer)
			broken(r, "insert completed at layer %u", k->layer);
		const uint8_t *data = check_entry(R, r, k);
		const struct lb_entry_hdr *e = entry_at(R, r, k);
		if (data && (e->dtype != v.h.dtype || e->ndim != v.h.ndim || e->bytes != v.h.bytes ||
			     memcmp(e->shape, v.h.shape, sizeof(e->shape)) ||
			     memcmp(data, R->staging + r->payload_off + LB_INSERT_HDR_SIZE, v.h.bytes)))
			broken(r, "inserted entry differs from the request's header or data");
		record_insert(R, r, &v.h);
		return;
	}
	if ((r->opcode == LB_OP_RELEASE || r->opcode == LB_OP_REPORT) && k->status == 0) {
		if (!lease_held(R, r->lease))
			broken(r, "lease op succeeded on a lease not held");
		if (r->opcode == LB_OP_RELEASE) {
			held_del(R, r->lease);
		} else {
			float drift;
			memcpy(&drift, &r->aux, sizeof(drift));
			R->reports_over += drift > DRIFT_MAX;
		}
	}
}

/* ---- the ring ---- */

static void check_stats(struct run *R)
{
	struct lbp_stats_reply st;
	lbip_bank_stats(R->l, &st);
	uint64_t drops = st.evictions + st.expirations + st.invalidations;
	if (st.leases != R->n_out || st.hits != R->hits || st.misses != R->misses ||
	    st.inserts != R->inserts)
		broken(NULL, "STATS leases %llu hits %llu misses %llu inserts %llu, completions say "
		       "%u %llu %llu %llu", (unsigned long long)st.leases, (unsigned long long)st.hits,
		       (unsigned long long)st.misses, (unsigned long long)st.inserts, R->n_out,
		       (unsigned long long)R->hits, (unsigned long long)R->misses,
		       (unsigned long long)R->inserts);
	if (drops > st.inserts || st.entries != st.inserts - drops)
		broken(NULL, "STATS entries %llu, inserts %llu, dropped %llu",
		       (unsigned long long)st.entries, (unsigned long long)st.inserts,
		       (unsigned long long)drops);
	if (st.bytes_budget != BUDGET || st.bytes_used > st.bytes_budget)
		broken(NULL, "STATS bytes_used %llu of budget %llu", (unsigned long long)st.bytes_used,
		       (unsigned long long)st.bytes_budget);
	if (st.invalidations > R->reports_over || (R->kind != BANK_TTL0 && st.expirations))
		broken(NULL, "STATS invalidations %llu (reports above the limit %llu), expirations %llu",
		       (unsigned long long)st.invalidations, (unsigned long long)R->reports_over,
		       (unsigned long long)st.expirations);
}

/* Serve the ring, then check every new completion, in order, against what was pushed. */
static void pump(struct run *R, bool take)
{
	struct lb_ring_view *cpl = &R->c->cpl;
	struct lbp_stats_reply st;

	R->c->pump(R->c->pump_ctx);
	lbip_bank_stats(R->l, &st);
	uint64_t drops = st.evictions + st.expirations + st.invalidations;
	R->dirty = drops != R->drops_seen;
	R->drops_seen = drops;
	while (R->seen - cpl->local <= cpl->mask &&
	       atomic_load_explicit(lb_ring_slot_stamp(cpl, R->seen), memory_order_acquire) ==
		       lb_ring_stamp(R->seen)) {
		struct lb_cpl k;
		memcpy(&k, cpl->entries + (size_t)(R->seen & cpl->mask) * LB_RING_ENTRY_SIZE, sizeof(k));
		if (!R->pend_n)
			broken(NULL, "a completion (user_data %llu) for no request",
			       (unsigned long long)k.user_data);
		const struct lb_req *r = &R->pending[R->pend_head];
		check_completion(R, r, &k);
		R->pend_head = (R->pend_head + 1) % PENDING_CAP;
		R->pend_n--;
		R->seen++;
	}
	/* Back-pressure (section 5): a request left waiting means the completion ring is full. */
	if (R->pend_n && R->seen - cpl->local != cpl->mask + 1)
		broken(&R->pending[R->pend_head], "request not served with room for its completion");
	if (R->dirty)
		R->epoch++; /* what this pump inserted may be gone already */
	R->dirty = false;
	check_stats(R);
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
	if (R->n_written < DIRTY_MAX) {
		R->written[R->n_written].lo = off;
		R->written[R->n_written++].hi = off + n;
	} else {
		uint64_t *lo = &R->written[DIRTY_MAX - 1].lo, *hi = &R->written[DIRTY_MAX - 1].hi;
		*lo = off < *lo ? off : *lo;
		*hi = off + n > *hi ? off + n : *hi;
	}
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

static void finish(struct run *R)
{
	/* Every request served and checked. */
	for (unsigned i = 0; R->pend_n; i++) {
		if (i > PENDING_CAP)
			broken(&R->pending[R->pend_head], "requests never served");
		pump(R, true);
	}
	pump(R, true);
	if (R->pend_n || R->seen != R->c->cpl.local)
		broken(NULL, "completions left over");
	/* Every lease released through the ring: each must succeed. */
	static uint64_t out[LBD_MAX_LEASES];
	uint32_t n = 0;
	for (uint32_t i = 0; R->n_out && i < HELD_SLOTS; i++)
		if (R->held[i])
			out[n++] = R->held[i];
	for (uint32_t i = 0; i < n; i++) {
		struct lb_req r = { .opcode = LB_OP_RELEASE, .lease = out[i], .user_data = i };
		push(R, &r);
	}
	while (R->pend_n)
		pump(R, true);
	if (R->n_out)
		broken(NULL, "%u leases held after releasing all", R->n_out);

	/* The per-layer counters add up to the totals (nothing is leased: no dropped entry
	 * still holds bytes). A model no request reached is skipped, reading the 1024 layers of
	 * one would cost more than the rest of a small input: its counters show up as a
	 * difference from the totals all the same. */
	struct lbp_stats_reply st;
	struct lbp_model_stats_reply ms;
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
	if (st.leases || entries != st.entries || bytes != st.bytes_used || inserts != st.inserts ||
	    evictions != st.evictions)
		broken(NULL, "per-layer sums (entries %llu bytes %llu inserts %llu evictions %llu) vs "
		       "STATS (%llu %llu %llu %llu, leases %llu)", (unsigned long long)entries,
		       (unsigned long long)bytes, (unsigned long long)inserts,
		       (unsigned long long)evictions, (unsigned long long)st.entries,
		       (unsigned long long)st.bytes_used, (unsigned long long)st.inserts,
		       (unsigned long long)st.evictions, (unsigned long long)st.leases);
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
	R.seen = R.c->cpl.local;
	R.pending = pending_reqs;
	R.given = given_leases;
	R.held = held_leases;

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
	finish(&R);

	if (lbip_bank_clear(R.l) < 0)
		broken(NULL, "cannot clear the bank");
	for (uint32_t i = 0; i < R.n_written; i++)
		memset(R.c->staging + R.written[i].lo, 0, R.written[i].hi - R.written[i].lo);
	return 0;
}
