/* layerbankd service threads: ring polling, request validation and dispatch to the store,
 * spin-then-sleep on the clients' doorbells (futex_waitv). */
#include "service.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <numa.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "log.h"
#include "spare.h"

/*
 * Requests taken from one client before looking at the next. While two or more clients have
 * requests, each gets one per pass (round robin by request): a client that keeps its ring full
 * cannot make another's request wait behind a batch of its own. A client that has had the
 * thread to itself for FAIR_PASSES passes, and is still alone, is served BATCH at a time
 * again, which costs one wake-up check of its completion ring per batch instead of per
 * request. The passes count, not a clock: a client doing one synchronous request at a time has
 * none waiting for a pass or two after each completion, and must not be taken for gone.
 */
#define BATCH 32u
#define FAIR_PASSES 64u
#define MAX_WAITERS 128u   /* futex_waitv's limit: the control word (and the claim word while a
			    * lookup is held), then the clients */

/* Owned by its thread, except the pending lists and ctl word, which the control thread
 * touches under mu. */
struct lbd_svc_thread {
	struct lbd_service *svc;
	pthread_t tid;
	bool started;
	int node;                             /* the clients of this node come here; -1: any */
	pthread_mutex_t mu;
	struct lbd_dpclient *to_add, *to_del; /* pending, under mu */
	_Atomic uint32_t pending;             /* lists non-empty, or stop */
	_Atomic uint32_t ctl;                 /* futex word: bumped to wake the thread */
	_Atomic bool stop;
	struct lbd_dpclient **c;              /* clients served, thread-private */
	unsigned n, cap;
	unsigned n_held;                      /* of them, with a lookup held (as of the last pass) */
	uint64_t wake_ns;                     /* the earliest of their wake_ns */
};

/* ---- regions ---- */

uint64_t lbd_region_staging(const struct lbd_region_limits *lim, uint64_t staging_bytes)
{
	uint64_t sb = staging_bytes ? staging_bytes : lim->staging_default;
	sb = sb > lim->staging_max ? lim->staging_max : sb;
	return (sb + 4095) & ~4095ull;
}

struct lbd_dpclient *lbd_dpclient_new(const struct lbd_region_limits *lim, uint32_t req_entries,
				      uint32_t cpl_entries, uint64_t staging_bytes, uint64_t client_id,
				      pid_t pid)
{
	struct lbd_dpclient *c = calloc(1, sizeof(*c));
	char name[48];
	int e;

	if (!c)
		return NULL;
	/* Clamp the wishes: a ring of the asked size rounded up to a power of two, staging to
	 * whole pages, both within the daemon's bounds. */
	uint32_t rq = req_entries ? req_entries : lim->ring_default;
	uint32_t cq = cpl_entries ? cpl_entries : lim->ring_default;
	rq = rq > lim->ring_max ? lim->ring_max : rq < LB_RING_MIN_ENTRIES ? LB_RING_MIN_ENTRIES : rq;
	cq = cq > lim->ring_max ? lim->ring_max : cq < LB_RING_MIN_ENTRIES ? LB_RING_MIN_ENTRIES : cq;
	while (rq & (rq - 1))
		rq += rq & -rq;
	while (cq & (cq - 1))
		cq += cq & -cq;
	uint64_t sb = lbd_region_staging(lim, staging_bytes);

	c->bytes = lb_region_layout(&c->layout, rq, cq, sb);
	if (!c->bytes) {
		free(c);
		errno = EINVAL;
		return NULL;
	}
	snprintf(name, sizeof(name), "layerbank-client-%llu", (unsigned long long)client_id);
	c->fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (c->fd < 0)
		goto fail;
	if (ftruncate(c->fd, (off_t)c->bytes) < 0)
		goto fail;
	/* The client holds this fd: a shrink would turn our next access into SIGBUS. */
	if (fcntl(c->fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
		goto fail;
	/* Not populated here: the client's own mapping (MAP_POPULATE in liblayerbank) allocates
	 * the pages, on the client's time rather than the control thread's, which serves every
	 * connection (8 MiB of staging took it 8-14 ms a HELLO). Our accesses then only map
	 * pages that exist. */
	c->base = mmap(NULL, c->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, c->fd, 0);
	if (c->base == MAP_FAILED) {
		c->base = NULL;
		goto fail;
	}
	memcpy(c->base, &c->layout, sizeof(c->layout));
	lb_ring_view_init(&c->req, c->base + c->layout.req_off, c->layout.req_entries);
	lb_ring_view_init(&c->cpl, c->base + c->layout.cpl_off, c->layout.cpl_entries);
	c->client_id = client_id;
	c->pid = pid;
	c->node = -1;
	return c;
fail:
	e = errno;
	if (c->fd >= 0)
		close(c->fd);
	free(c);
	errno = e;
	return NULL;
}

void lbd_dpclient_allow(struct lbd_dpclient *c, uint32_t model_id)
{
	if (model_id == 0 || model_id > LBD_MAX_MODELS)
		return;
	/* R4: pairs with A4 in lbd_dpclient_may_use. The client sees MODEL only after this, and
	 * its request reaches the service thread through the ring's R2/A2 and system calls. */
	atomic_fetch_or_explicit(&c->models[(model_id - 1) / 64], 1ull << ((model_id - 1) % 64),
				 memory_order_release);
}

bool lbd_dpclient_may_use(const struct lbd_dpclient *c, uint32_t model_id)
{
	if (model_id == 0 || model_id > LBD_MAX_MODELS)
		return false;
	/* A4: pairs with R4 in lbd_dpclient_allow. */
	uint64_t w = atomic_load_explicit(&c->models[(model_id - 1) / 64], memory_order_acquire);
	return (w >> ((model_id - 1) % 64)) & 1;
}

/* What the store holds for c: its leases and claims, a held lookup, its insert account. */
static void dpclient_retire(struct lbd_store *st, struct lbd_dpclient *c)
{
	if (c->held.on) {
		c->held.on = false;
		lbd_store_unhold(st);
	}
	lbd_store_release_all(st, &c->leases);
	lbd_leases_free(&c->leases);
	lbd_store_account_close(st, c->account);
}

/* c's memory: the slow part (the last reference to the region frees its pages). */
static void dpclient_unmap(struct lbd_dpclient *c)
{
	if (c->base)
		munmap(c->base, c->bytes);
	close(c->fd);
	free(c);
}

void lbd_dpclient_free(struct lbd_store *st, struct lbd_dpclient *c)
{
	dpclient_retire(st, c);
	dpclient_unmap(c);
}

/* ---- one request ---- */

/* Step 1 of the checks: the reserved fields zero, and flags only where defined. */
static bool reserved_zero(const struct lb_req *r)
{
	uint8_t flags = r->opcode == LB_OP_LOOKUP_DEEPEST ? LB_REQ_SFLIGHT | LB_REQ_ANY_LEN
			: r->opcode == LB_OP_LOOKUP	  ? LB_REQ_ANY_LEN
			: r->opcode == LB_OP_REPORT	  ? LB_REQ_AT_LAYER
							  : 0;
	return !(r->flags & ~flags) && !r->reserved[0] && !r->reserved[1] && !r->reserved2;
}

/* Payload bounds inside staging, overflow-safe. */
static bool payload_ok(const struct lbd_dpclient *c, const struct lb_req *r, uint32_t min, uint64_t max)
{
	return r->payload_len >= min && r->payload_len <= max &&
	       (uint64_t)r->payload_off + r->payload_len <= c->layout.staging_bytes &&
	       r->payload_off % 8 == 0;
}

/* Step 3 of the checks (PROTOCOL.md, Ring protocol 6): a model that exists (-ESRCH) and that
 * this client registered on its connection (-EACCES). The store is asked only on a refusal. */
static bool model_ok(struct lbd_store *st, const struct lbd_dpclient *c, const struct lb_req *r,
		     struct lb_cpl *out)
{
	if (lbd_dpclient_may_use(c, r->model_id))
		return true;
	out->status = lbd_store_has_model(st, r->model_id) ? -EACCES : -ESRCH;
	return false;
}

static const uint8_t *staging_of(const struct lbd_dpclient *c)
{
	return c->base + c->layout.staging_off;
}

static void serve_ping(struct lbd_store *st, struct lbd_dpclient *c, const struct lb_req *r,
		       struct lb_cpl *out)
{
	(void)st;
	(void)c;
	if (r->model_id || r->lease || r->payload_off || r->payload_len || r->layer || r->seq_len ||
	    r->aux)
		out->status = -EINVAL;
}

/* A single-flight lookup: answered, or held (c->held) for another client's claim. */
static void serve_sflight(struct lbd_store *st, struct lbd_dpclient *c, const struct lb_req *r,
			  const struct lb_query *q, const float *thr, struct lb_cpl *out)
{
	uint64_t now = lb_now_ns();
	struct lbd_hold h = { .wait_until = c->may_hold ? now + (uint64_t)r->aux * 1000 : 0 };
	struct lbd_held *held = &c->held;

	if (!lbd_store_lookup_sf(st, &c->leases, r, q, thr, &h, out))
		return;
	held->on = true;
	held->r = *r;
	held->q = *q;
	memcpy(held->thr, thr, q->n_thr * sizeof(float));
	held->since_ns = now;
	held->until_ns = h.wait_until;
	held->wake_ns = h.wake_ns;
	held->seq = h.seq;
	held->tier_asked = h.tier_asked;
}

static void serve_lookup(struct lbd_store *st, struct lbd_dpclient *c, const struct lb_req *r,
			 struct lb_cpl *out)
{
	/* Copied out before use: the client may rewrite staging at any moment. */
	struct {
		struct lb_query q;
		float thr[LBP_MAX_LAYERS];
	} p;
	/* aux: single-flight's bound, 1 us .. LB_SFLIGHT_MAX_US, when a flag asks for it. */
	bool sflight = r->flags & LB_REQ_SFLIGHT;
	bool aux_ok = sflight ? r->aux >= 1 && r->aux <= LB_SFLIGHT_MAX_US : !r->aux;
	if (r->lease || !aux_ok || !payload_ok(c, r, sizeof(p.q), sizeof(p.q) + sizeof(p.thr)) ||
	    (r->payload_len - sizeof(p.q)) % sizeof(float)) {
		out->status = -EINVAL;
		return;
	}
	memcpy(&p, staging_of(c) + r->payload_off, r->payload_len);
	if (p.q.reserved || p.q.n_thr != (r->payload_len - sizeof(p.q)) / sizeof(float)) {
		out->status = -EINVAL;
		return;
	}
	if (!model_ok(st, c, r, out))
		return;
	if (sflight)
		serve_sflight(st, c, r, &p.q, p.thr, out);
	else
		lbd_store_lookup(st, &c->leases, r, &p.q, p.thr, out);
}

/* An insert's header area (LB_INSERT_HDR_SIZE bytes at the payload) copied out into hdr (size
 * bytes of it, the rest reserved: zero, so that it can gain a meaning). @return false when the
 * request or the reserved bytes are wrong. */
static bool insert_hdr(const struct lbd_dpclient *c, const struct lb_req *r, void *hdr, size_t size)
{
	uint8_t raw[LB_INSERT_HDR_SIZE];

	if (r->lease || r->aux || !payload_ok(c, r, LB_INSERT_HDR_SIZE, UINT32_MAX))
		return false;
	memcpy(raw, staging_of(c) + r->payload_off, sizeof(raw));
	for (size_t i = size; i < sizeof(raw); i++)
		if (raw[i])
			return false;
	memcpy(hdr, raw, size);
	return true;
}

static void serve_insert(struct lbd_store *st, struct lbd_dpclient *c, const struct lb_req *r,
			 struct lb_cpl *out)
{
	struct lb_insert_hdr h;

	if (!insert_hdr(c, r, &h, sizeof(h)) || !lbd_store_insert_hdr_ok(r, &h)) {
		out->status = -EINVAL;
		return;
	}
	if (model_ok(st, c, r, out))
		lbd_store_insert(st, (struct lbd_inserter){ c->account, c->node }, r, &h,
				 staging_of(c) + r->payload_off + LB_INSERT_HDR_SIZE, out);
}

static void serve_lease_op(struct lbd_store *st, struct lbd_dpclient *c, const struct lb_req *r,
			   struct lb_cpl *out)
{
	float drift;

	if (r->model_id || r->payload_off || r->payload_len || r->seq_len ||
	    (r->layer && !(r->flags & LB_REQ_AT_LAYER)) || (r->opcode == LB_OP_RELEASE && r->aux)) {
		out->status = -EINVAL;
		return;
	}
	if (r->opcode == LB_OP_RELEASE) {
		lbd_store_release(st, &c->leases, r->lease, out);
		return;
	}
	memcpy(&drift, &r->aux, sizeof(drift));
	lbd_store_report(st, &c->leases, r->lease, r->flags & LB_REQ_AT_LAYER ? r->layer : -1, drift,
			 out);
}

/* The keys are copied out, and a hit's answers written over them (Ring protocol 8): the
 * client's staging is the client's, so what it does to them meanwhile harms only itself. */
static void serve_lookup_prefix(struct lbd_store *st, struct lbd_dpclient *c,
				const struct lb_req *r, struct lb_cpl *out)
{
	struct lb_prefix_query q;
	uint64_t keys[LB_PREFIX_MAX_BLOCKS][2];
	struct lb_prefix_block blk[LB_PREFIX_MAX_BLOCKS];
	const uint64_t key_bytes = sizeof(keys[0]);

	if (r->lease || r->aux || r->layer || r->seq_len ||
	    !payload_ok(c, r, sizeof(q) + key_bytes, sizeof(q) + sizeof(keys)) ||
	    (r->payload_len - sizeof(q)) % key_bytes) {
		out->status = -EINVAL;
		return;
	}
	memcpy(&q, staging_of(c) + r->payload_off, sizeof(q));
	if (q.reserved || q.n_keys != (r->payload_len - sizeof(q)) / key_bytes) {
		out->status = -EINVAL;
		return;
	}
	memcpy(keys, staging_of(c) + r->payload_off + sizeof(q), q.n_keys * key_bytes);
	if (!model_ok(st, c, r, out))
		return;
	lbd_store_lookup_prefix(st, &c->leases, r, (const uint64_t(*)[2])keys, q.n_keys, blk, out);
	if (out->status == 0)
		memcpy(c->base + c->layout.staging_off + r->payload_off + sizeof(q), blk,
		       out->count * sizeof(blk[0]));
}

static void serve_insert_block(struct lbd_store *st, struct lbd_dpclient *c,
			       const struct lb_req *r, struct lb_cpl *out)
{
	struct lb_block_hdr h;

	if (r->layer || !insert_hdr(c, r, &h, sizeof(h)) || !lbd_store_block_hdr_ok(r, &h)) {
		out->status = -EINVAL;
		return;
	}
	if (model_ok(st, c, r, out))
		lbd_store_insert_block(st, (struct lbd_inserter){ c->account, c->node }, r, &h,
				       staging_of(c) + r->payload_off + LB_INSERT_HDR_SIZE, out);
}

typedef void (*serve_fn)(struct lbd_store *st, struct lbd_dpclient *c, const struct lb_req *r,
			 struct lb_cpl *out);

/* Indexed by enum lb_op. */
static const serve_fn serve_op[LB_OP_MAX + 1] = {
	[LB_OP_PING] = serve_ping,
	[LB_OP_LOOKUP_DEEPEST] = serve_lookup,
	[LB_OP_LOOKUP] = serve_lookup,
	[LB_OP_INSERT] = serve_insert,
	[LB_OP_RELEASE] = serve_lease_op,
	[LB_OP_REPORT] = serve_lease_op,
	[LB_OP_LOOKUP_PREFIX] = serve_lookup_prefix,
	[LB_OP_INSERT_BLOCK] = serve_insert_block,
};

static void serve(struct lbd_store *st, struct lbd_dpclient *c, const struct lb_req *r, struct lb_cpl *out)
{
	memset(out, 0, sizeof(*out));
	out->user_data = r->user_data;
	out->opcode = r->opcode;
	if (!reserved_zero(r) || r->opcode < LB_OP_MIN || r->opcode > LB_OP_MAX) {
		out->status = -EINVAL; /* unknown opcode */
		return;
	}
	serve_op[r->opcode](st, c, r, out);
}

/* Serve up to max requests of one client, stopping at one held. @return requests served
 * (a held one counts: it was taken). */
static unsigned serve_client(struct lbd_store *st, struct lbd_dpclient *c, unsigned max)
{
	unsigned done = 0, answered = 0;
	struct lb_req r;
	struct lb_cpl out;

	while (done < max && !c->held.on) {
		if (!lb_ring_sc_peek(&c->req))
			break;
		/* A full completion ring stops this client only: it must read before it gets more.
		 * The room stays there for a request held: only we produce. */
		if (!lb_ring_sp_space(&c->cpl))
			break;
		lb_ring_sc_copy(&c->req, &r);
		lb_ring_sc_release(&c->req);
		serve(st, c, &r, &out);
		done++;
		if (c->held.on)
			break;
		lb_ring_sp_push(&c->cpl, &out); /* cannot fail: room was checked, and only we produce */
		answered++;
	}
	if (answered)
		lb_ring_sp_wake(&c->cpl);
	return done;
}

/* c's held lookup, when its claim may have ended (the sequence moved) or its time came: served
 * again, and answered unless it is held anew. @return 1 when it was answered. */
static unsigned serve_held(struct lbd_store *st, struct lbd_dpclient *c, uint32_t seq, uint64_t now)
{
	struct lbd_held *held = &c->held;
	struct lb_cpl out;

	if (seq == held->seq && now < held->wake_ns)
		return 0;
	memset(&out, 0, sizeof(out));
	out.user_data = held->r.user_data;
	out.opcode = held->r.opcode;
	struct lbd_hold h = { .wait_until = now < held->until_ns ? held->until_ns : 0,
			      .tier_asked = held->tier_asked };
	bool again = lbd_store_lookup_sf(st, &c->leases, &held->r, &held->q, held->thr, &h, &out);
	lbd_store_unhold(st); /* after: while it is looked at, it still counts as held */
	if (again) {
		held->wake_ns = h.wake_ns;
		held->seq = h.seq;
		held->tier_asked = h.tier_asked;
		return 0;
	}
	held->on = false;
	uint64_t waited = (lb_now_ns() - held->since_ns) / 1000;
	out.sflight |= LB_CPL_WAITED;
	out.waited_us = waited > UINT32_MAX ? UINT32_MAX : (uint32_t)waited;
	lb_ring_sp_push(&c->cpl, &out); /* room: checked when it was taken, kept since */
	lb_ring_sp_wake(&c->cpl);
	return 1;
}

unsigned lbd_dpclient_pump(struct lbd_store *st, struct lbd_dpclient *c)
{
	return serve_client(st, c, UINT32_MAX);
}

/* c has a request waiting and room for its completion: it could be served now. A client with
 * a held lookup is not: its later requests wait behind it. */
static bool servable(const struct lbd_dpclient *c)
{
	if (c->held.on)
		return false;
	/* A1 (the completion ring, we produce): pairs with R1 in the client's lb_ring_sc_release. */
	uint32_t cons_c = atomic_load_explicit(&c->cpl.sh->cons, memory_order_acquire);
	return lb_ring_sc_peek(&c->req) && c->cpl.local - cons_c <= c->cpl.mask;
}

/* Work is waiting that this thread could do now. */
static bool has_work(const struct lbd_svc_thread *t)
{
	for (unsigned i = 0; i < t->n; i++)
		if (servable(t->c[i]))
			return true;
	return false;
}

/* Clients that could be served now, counted up to 2. */
static unsigned servable_clients(const struct lbd_svc_thread *t)
{
	unsigned n = 0;
	for (unsigned i = 0; i < t->n && n < 2; i++)
		n += servable(t->c[i]);
	return n;
}

/* ---- the reaper ---- */

static void *reaper_main(void *p)
{
	struct lbd_service *s = p;

	/* Background work: where cores are few, the service threads go first. (Linux's nice is
	 * per thread; a failure leaves the thread at the daemon's own priority.) */
	(void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 10);
	pthread_mutex_lock(&s->reap_mu);
	for (;;) {
		struct lbd_dpclient *c = s->to_reap;
		if (!c) {
			if (s->reap_stop)
				break;
			pthread_cond_wait(&s->reap_cv, &s->reap_mu);
			continue;
		}
		s->to_reap = NULL;
		pthread_mutex_unlock(&s->reap_mu);
		while (c) {
			struct lbd_dpclient *next = c->next_pending;
			dpclient_unmap(c);
			c = next;
		}
		pthread_mutex_lock(&s->reap_mu);
	}
	pthread_mutex_unlock(&s->reap_mu);
	return NULL;
}

/* Hand a retired client's memory to the reaper (or free it here when there is none). */
static void reap_later(struct lbd_service *s, struct lbd_dpclient *c)
{
	if (!s->reaper_started) {
		dpclient_unmap(c);
		return;
	}
	pthread_mutex_lock(&s->reap_mu);
	c->next_pending = s->to_reap;
	s->to_reap = c;
	pthread_cond_signal(&s->reap_cv);
	pthread_mutex_unlock(&s->reap_mu);
}

/* ---- the thread ---- */

static void apply_pending(struct lbd_svc_thread *t)
{
	struct lbd_dpclient *del;

	/* The add list is walked under mu: lbd_service_detach relinks next_pending under mu. */
	pthread_mutex_lock(&t->mu);
	for (struct lbd_dpclient *add = t->to_add; add; add = add->next_pending) {
		if (t->n == t->cap) {
			unsigned ncap = t->cap ? t->cap * 2 : 16;
			struct lbd_dpclient **p = realloc(t->c, sizeof(*p) * ncap);
			if (!p)
				abort(); /* a few pointers: out of memory here is not survivable */
			t->c = p;
			t->cap = ncap;
		}
		t->c[t->n++] = add;
	}
	del = t->to_del;
	t->to_add = t->to_del = NULL;
	atomic_store_explicit(&t->pending, 0, memory_order_relaxed);
	pthread_mutex_unlock(&t->mu);

	/* Nobody else knows the delete list's clients any more: their leases go now (the store's
	 * accounting is exact when the detach is seen), their memory on the reaper. */
	while (del) {
		struct lbd_dpclient *next = del->next_pending;
		for (unsigned i = 0; i < t->n; i++)
			if (t->c[i] == del) {
				t->c[i] = t->c[--t->n];
				break;
			}
		dpclient_retire(t->svc->store, del);
		reap_later(t->svc, del);
		del = next;
	}
}

/* A held lookup of t's is due: its claim sequence moved, or its time came. */
static bool held_due(const struct lbd_svc_thread *t, uint32_t seq, uint64_t now)
{
	for (unsigned i = 0; t->n_held && i < t->n; i++) {
		const struct lbd_held *h = &t->c[i]->held;
		if (h->on && (h->seq != seq || now >= h->wake_ns))
			return true;
	}
	return false;
}

static void sleep_on_doorbells(struct lbd_svc_thread *t)
{
	struct futex_waitv w[MAX_WAITERS];
	_Atomic uint32_t *claim_seq = lbd_store_claim_seq(t->svc->store);
	unsigned n = 0;
	uint32_t seq = 0;

	memset(w, 0, sizeof(w));
	w[n].uaddr = (uintptr_t)&t->ctl;
	w[n].val = atomic_load_explicit(&t->ctl, memory_order_relaxed);
	w[n++].flags = FUTEX_32 | FUTEX_PRIVATE_FLAG;
	if (t->n_held) {
		/* A claim that ends bumps the word (under the store lock, where our lookups were
		 * held) and wakes every sleeper while any lookup is held: a bump after this load
		 * makes the wait return at once, one before it is seen by held_due. */
		seq = atomic_load_explicit(claim_seq, memory_order_seq_cst);
		w[n].uaddr = (uintptr_t)claim_seq;
		w[n].val = seq;
		w[n++].flags = FUTEX_32 | FUTEX_PRIVATE_FLAG;
	}
	unsigned first = n;
	for (unsigned i = 0; i < t->n && n < MAX_WAITERS; i++) {
		struct lb_ring_shared *sh = t->c[i]->req.sh;
		w[n].uaddr = (uintptr_t)&sh->doorbell;
		/* A3: pairs with R3 in lb_ring_sp_wake. */
		w[n].val = atomic_load_explicit(&sh->doorbell, memory_order_acquire);
		w[n++].flags = FUTEX_32; /* shared: the word lives in the client's mapping too */
		atomic_store_explicit(&sh->sleeping, 1, memory_order_relaxed);
	}
	/* F2 (per ring): pairs with F1 in lb_ring_sp_wake; and with the fence in kick(). */
	atomic_thread_fence(memory_order_seq_cst);
	uint64_t now = lb_now_ns();
	if (!atomic_load_explicit(&t->pending, memory_order_relaxed) && !has_work(t) &&
	    !held_due(t, seq, now)) {
		/* Beyond futex_waitv's limit, clients are polled every millisecond; a held lookup
		 * is looked at again at its wake time. */
		uint64_t until = t->n_held ? t->wake_ns : UINT64_MAX;
		if (t->n - (n - first) > 0 && until - now > 1000000)
			until = now + 1000000;
		struct timespec ts, *tsp = NULL;
		if (until != UINT64_MAX) {
			ts.tv_sec = (time_t)(until / 1000000000ull);
			ts.tv_nsec = (long)(until % 1000000000ull);
			tsp = &ts;
		}
		syscall(SYS_futex_waitv, w, n, 0, tsp, CLOCK_MONOTONIC);
	}
	for (unsigned i = 0; i < t->n; i++)
		atomic_store_explicit(&t->c[i]->req.sh->sleeping, 0, memory_order_relaxed);
}

/* One pass over t's clients: their held lookups that are due, then up to quantum requests of
 * each. @return requests served; *busy: clients that had any. */
static unsigned serve_pass(struct lbd_svc_thread *t, unsigned quantum, unsigned *busy)
{
	struct lbd_store *st = t->svc->store;
	uint32_t seq = atomic_load_explicit(lbd_store_claim_seq(st), memory_order_acquire);
	uint64_t now = t->n_held ? lb_now_ns() : 0, wake = UINT64_MAX;
	unsigned done = 0, held = 0;

	*busy = 0;
	for (unsigned i = 0; i < t->n; i++) {
		struct lbd_dpclient *c = t->c[i];
		unsigned d = c->held.on ? serve_held(st, c, seq, now) : 0;
		if (!c->held.on)
			d += serve_client(st, c, quantum);
		done += d;
		*busy += d != 0;
		if (c->held.on) {
			held++;
			wake = c->held.wake_ns < wake ? c->held.wake_ns : wake;
		}
	}
	t->n_held = held;
	t->wake_ns = wake;
	return done;
}

static void *svc_main(void *arg)
{
	struct lbd_svc_thread *t = arg;
	struct lbd_service *s = t->svc;
	uint64_t idle_since = lb_now_ns(), spin_ns = 0;
	unsigned idle_polls = 0;
	struct lbu_spare spare;

	lbu_spare_open(&spare);
	unsigned since_shared = FAIR_PASSES; /* passes since two clients had requests in one */

	/* A5: pairs with R5 in lbd_service_stop. */
	while (!atomic_load_explicit(&t->stop, memory_order_acquire)) {
		unsigned done, busy;
		/* A6: pairs with R6 in kick; the lists themselves are read under t->mu. */
		if (atomic_load_explicit(&t->pending, memory_order_acquire))
			apply_pending(t);
		/* The look for a second client costs a peek per client, once per batch. */
		unsigned quantum = since_shared < FAIR_PASSES || servable_clients(t) > 1 ? 1 : BATCH;
		done = serve_pass(t, quantum, &busy);
		if (busy > 1)
			since_shared = 0;
		else if (since_shared < FAIR_PASSES)
			since_shared++;
		if (done) {
			idle_polls = 0;
			continue;
		}
		/* The spin budget starts at the first idle poll; the clock is read once per
		 * LB_SPIN_CHECK polls, since each read delays the next poll. */
		if (idle_polls++ == 0) {
			idle_since = lb_now_ns();
			spin_ns = lbu_spare_spin(&spare, atomic_load_explicit(&s->spin_ns,
									memory_order_relaxed), idle_since);
		}
		if (spin_ns &&
		    (idle_polls % LB_SPIN_CHECK != 0 || lb_now_ns() - idle_since < spin_ns)) {
			lb_cpu_relax();
			continue;
		}
		sleep_on_doorbells(t);
		idle_polls = 0;
	}
	lbu_spare_close(&spare);
	apply_pending(t);
	for (unsigned i = 0; i < t->n; i++)
		lbd_dpclient_free(s->store, t->c[i]);
	free(t->c);
	return NULL;
}

static void kick(struct lbd_svc_thread *t)
{
	/* R6: pairs with A6 in svc_main. */
	atomic_store_explicit(&t->pending, 1, memory_order_release);
	/* With F2 in sleep_on_doorbells: either the thread sees pending, or its futex wait sees
	 * ctl changed. */
	atomic_fetch_add_explicit(&t->ctl, 1, memory_order_seq_cst);
	syscall(SYS_futex, &t->ctl, FUTEX_WAKE | FUTEX_PRIVATE_FLAG, 1, NULL, NULL, 0);
}

/* Keep thread t on the CPUs of its node, where its clients run and their entries live. A
 * failure costs locality, not service: one warning. */
static void pin(struct lbd_svc_thread *t)
{
	struct bitmask *cpus = numa_allocate_cpumask();
	cpu_set_t set;
	int ret = -1;

	CPU_ZERO(&set);
	if (cpus && numa_node_to_cpus(t->node, cpus) == 0) {
		for (unsigned i = 0; i < cpus->size && i < CPU_SETSIZE; i++)
			if (numa_bitmask_isbitset(cpus, i))
				CPU_SET(i, &set);
		ret = CPU_COUNT(&set) ? pthread_setaffinity_np(t->tid, sizeof(set), &set) : -1;
	}
	if (cpus)
		numa_free_cpumask(cpus);
	if (ret != 0)
		lbd_warn("service thread of node %d: cannot pin it to the node's CPUs: it runs anywhere",
			 t->node);
}

int lbd_service_start(struct lbd_service *s, struct lbd_store *st, unsigned n_threads,
		      uint64_t spin_ns, const int *nodes, unsigned n_nodes)
{
	memset(s, 0, sizeof(*s));
	s->store = st;
	atomic_init(&s->spin_ns, spin_ns); /* before any thread exists */
	s->t = calloc(n_threads, sizeof(*s->t));
	if (!s->t)
		return -ENOMEM;
	s->n_threads = n_threads;
	pthread_mutex_init(&s->reap_mu, NULL);
	pthread_cond_init(&s->reap_cv, NULL);
	/* Without a reaper the service threads free regions themselves: slower, not wrong. */
	s->reaper_started = pthread_create(&s->reaper, NULL, reaper_main, s) == 0;
	for (unsigned i = 0; i < n_threads; i++) {
		struct lbd_svc_thread *t = &s->t[i];
		t->svc = s;
		/* A thread per node at least, or the nodes share them all. */
		t->node = n_nodes && n_threads >= n_nodes ? nodes[i % n_nodes] : -1;
		pthread_mutex_init(&t->mu, NULL);
		int ret = pthread_create(&t->tid, NULL, svc_main, t);
		if (ret) {
			lbd_service_stop(s);
			return -ret;
		}
		t->started = true;
		if (t->node >= 0)
			pin(t);
	}
	return 0;
}

void lbd_service_set_spin(struct lbd_service *s, uint64_t spin_ns)
{
	atomic_store_explicit(&s->spin_ns, spin_ns, memory_order_relaxed);
}

uint64_t lbd_service_spin(const struct lbd_service *s)
{
	return atomic_load_explicit(&s->spin_ns, memory_order_relaxed);
}

void lbd_service_stop(struct lbd_service *s)
{
	for (unsigned i = 0; i < s->n_threads; i++) {
		struct lbd_svc_thread *t = &s->t[i];
		if (!t->started)
			continue;
		/* R5: pairs with A5 in svc_main. */
		atomic_store_explicit(&t->stop, true, memory_order_release);
		kick(t);
		pthread_join(t->tid, NULL);
		pthread_mutex_destroy(&t->mu);
	}
	free(s->t);
	s->t = NULL;
	s->n_threads = 0;
	/* Last: the service threads have handed over every region they were freeing. */
	if (s->reaper_started) {
		pthread_mutex_lock(&s->reap_mu);
		s->reap_stop = true;
		pthread_cond_signal(&s->reap_cv);
		pthread_mutex_unlock(&s->reap_mu);
		pthread_join(s->reaper, NULL);
		s->reaper_started = false;
	}
	pthread_cond_destroy(&s->reap_cv);
	pthread_mutex_destroy(&s->reap_mu);
}

void lbd_service_attach(struct lbd_service *s, struct lbd_dpclient *c)
{
	unsigned k = s->next;

	/* Round robin over the threads of the client's node, if it has any. */
	for (unsigned i = 0; c->node >= 0 && i < s->n_threads; i++)
		if (s->t[(s->next + i) % s->n_threads].node == c->node) {
			k = (s->next + i) % s->n_threads;
			break;
		}
	struct lbd_svc_thread *t = &s->t[k];
	c->thread = k;
	c->may_hold = true;
	s->next = (k + 1) % s->n_threads;
	pthread_mutex_lock(&t->mu);
	c->next_pending = t->to_add;
	t->to_add = c;
	pthread_mutex_unlock(&t->mu);
	kick(t);
}

void lbd_service_detach(struct lbd_service *s, struct lbd_dpclient *c)
{
	struct lbd_svc_thread *t = &s->t[c->thread];
	pthread_mutex_lock(&t->mu);
	/* Still waiting to be added? Then it never ran: take it back out of that list. */
	for (struct lbd_dpclient **p = &t->to_add; *p; p = &(*p)->next_pending)
		if (*p == c) {
			*p = c->next_pending;
			pthread_mutex_unlock(&t->mu);
			lbd_dpclient_free(s->store, c);
			return;
		}
	c->next_pending = t->to_del;
	t->to_del = c;
	pthread_mutex_unlock(&t->mu);
	kick(t);
}
