/* layerbankd store, single-flight: the claims of clients computing an input, by model and token
 * hash, and the sequence that wakes the service threads holding lookups for them (PROTOCOL.md,
 * Ring protocol 15). */
#include "store_internal.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "exactmap.h"

/* A claim ended (or was found past its bound): the lookups held for it are served again. */
static void claim_unmap(struct lbd_store *st, struct claim *c)
{
	lbd_exactmap_remove(st->banks[c->bank].claims, c->exact);
	c->mapped = 0;
	/* Under the lock, as every hold is decided (lbd_store_lookup_sf): a thread that held a
	 * lookup for this claim saw the sequence before this bump, and either sees the bump before
	 * it sleeps or is woken here, as n_held counts its lookup already. */
	atomic_fetch_add_explicit(&st->claim_seq, 1, memory_order_seq_cst);
	if (atomic_load_explicit(&st->n_held, memory_order_seq_cst))
		syscall(SYS_futex, &st->claim_seq, FUTEX_WAKE | FUTEX_PRIVATE_FLAG, INT_MAX, NULL,
			NULL, 0);
}

uint32_t store_claim_find(struct lbd_store *st, struct bank *b, const uint64_t exact[2],
			  uint64_t now)
{
	uint32_t id;

	if (!b->claims || lbd_exactmap_find(b->claims, exact, &id) < 0)
		return NONE;
	if (now >= st->cl[id].deadline_ns) {
		/* Its holder is alive (or it would have ended) but slow or stuck: past the bound
		 * nobody waits for it any more, and another client may claim the input. */
		claim_unmap(st, &st->cl[id]);
		return NONE;
	}
	return id;
}

int store_claim_take(struct lbd_store *st, struct lbd_leases *ls, struct bank *b,
		     const uint64_t exact[2], uint64_t deadline_ns, uint64_t *handle)
{
	if (!b->claims && !(b->claims = lbd_exactmap_new(16)))
		return -ENOMEM;
	if (st->cl_free == NONE &&
	    store_grow((void **)&st->cl, &st->cl_cap, sizeof(*st->cl), &st->cl_free,
		       offsetof(struct claim, next_free)))
		return -ENOMEM;
	uint32_t id = st->cl_free;
	struct claim *c = &st->cl[id];
	if (lbd_exactmap_insert(b->claims, exact, id) < 0)
		return -ENOMEM; /* not -EEXIST: the caller found no claim on it */
	int ret = store_lease_claim(st, ls, id, LBD_MAX_LEASES, handle);
	if (ret < 0) {
		lbd_exactmap_remove(b->claims, exact);
		return ret;
	}
	st->cl_free = c->next_free;
	*c = (struct claim){ .exact = { exact[0], exact[1] }, .owner = ls, .deadline_ns = deadline_ns,
			     .bank = (uint32_t)(b - st->banks), .used = 1, .mapped = 1 };
	st->n_claims++;
	if (deadline_ns > ls->claims_until)
		ls->claims_until = deadline_ns;
	return 0;
}

int store_tier_claim(struct lbd_store *st, struct bank *b, const uint64_t key[2], uint64_t now,
		     uint64_t *handle)
{
	if (store_claim_find(st, b, key, now) != NONE)
		return -EBUSY;
	return store_claim_take(st, &st->tier_leases, b, key,
				now + (uint64_t)st->tier.claim_us * 1000, handle);
}

void store_claim_end(struct lbd_store *st, uint32_t id)
{
	struct claim *c = &st->cl[id];

	if (c->mapped)
		claim_unmap(st, c);
	c->used = 0;
	c->owner = NULL;
	c->next_free = st->cl_free;
	st->cl_free = id;
	st->n_claims--;
}

void lbd_store_unhold(struct lbd_store *st)
{
	atomic_fetch_sub_explicit(&st->n_held, 1, memory_order_relaxed);
}

_Atomic uint32_t *lbd_store_claim_seq(struct lbd_store *st)
{
	return &st->claim_seq;
}

uint32_t lbd_store_claims(struct lbd_store *st)
{
	store_lock(st);
	uint32_t n = st->n_claims;
	store_unlock(st);
	return n;
}

int store_claim_check(const struct lbd_store *st, char *why, size_t n)
{
	uint32_t used = 0;

	for (uint32_t i = 0; i < st->cl_cap; i++) {
		const struct claim *c = &st->cl[i];
		uint32_t id;
		if (!c->used)
			continue;
		used++;
		const struct bank *b = &st->banks[c->bank];
		bool found = b->claims && lbd_exactmap_find(b->claims, c->exact, &id) == 0 && id == i;
		if (c->mapped != found || !c->owner) {
			snprintf(why, n, "claim and its bank's claim map disagree (slot %u)", i);
			return -EPROTO;
		}
	}
	if (used != st->n_claims) {
		snprintf(why, n, "claims in use %u, counted %u", used, st->n_claims);
		return -EPROTO;
	}
	/* Every mapped key is a mapped claim's: the counts agree. */
	for (uint32_t b = 0; b < st->n_banks; b++) {
		uint32_t mapped = 0;
		if (!st->banks[b].claims)
			continue;
		for (uint32_t i = 0; i < st->cl_cap; i++)
			mapped += st->cl[i].used && st->cl[i].mapped && st->cl[i].bank == b;
		if (lbd_exactmap_count(st->banks[b].claims) != mapped) {
			snprintf(why, n, "bank %u maps %u claims, %u are mapped", b,
				 lbd_exactmap_count(st->banks[b].claims), mapped);
			return -EPROTO;
		}
	}
	return 0;
}
