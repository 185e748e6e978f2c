/*
 * libFuzzer target: the snapshot loader (daemon/snapshot.c lbd_snapshot_load_mem, PROTOCOL.md
 * "Snapshot file"), fed files a damaged disk or a hostile user could leave at --snapshot.
 *
 * Input: byte 0 is a set of flags, the rest is the file.
 *   bit 0  reseal: before loading, recompute every checksum the layout reaches (the header's,
 *          each model record's, each entry's data checksum, the token hash of an entry with
 *          token ids as its exact key, then its record's), walking the file as PROTOCOL.md lays
 *          it out, as far as it fits. Without it almost every mutation stops at a checksum;
 *          with it the fuzzer reaches the range and consistency checks.
 *   bit 1  policy decay instead of lru, for the restore order (bit 2: ttl, 1 hour).
 *
 * Checked for every input: the loader answers 0, -EBADMSG, -EPROTO or -ENOMEM, with one line in
 * err when it refuses; the check-only call (no registry, no store) and the real load agree; a
 * refused file leaves the registry and the store exactly as they were (empty). For an accepted
 * file, read again here as PROTOCOL.md lays it out: no block key twice in a model, every
 * block's parent (one place up) in the file, token ids only on layer entries and hashing to
 * their key, no other flag. Loaded into a fresh bank whose budget holds any
 * input of the fuzzer's length: every model registered, the store's invariants hold
 * (lbd_store_check: no chain with a hole), restored + skipped entries = the header's count,
 * and the store holds exactly the entries expected back (all of them, but under ttl those
 * past the TTL and the blocks under them), each as the file has it (keys, parent and index,
 * header, checksum, data, token ids); a layer entry is found by its token hash, a block by
 * LOOKUP_PREFIX of its chain's keys, with its data (and its ids); a layer entry with token ids
 * is found by a lookup of another length with LB_REQ_ANY_LEN too, and whatever of another
 * length answers it carries ids that hash to its key.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "arena.h"
#include "log.h"
#include "fuzz.h"
#include "layerbank/ring.h"
#include "models.h"
#include "snapshot.h"
#include "store.h"

#define ARENA_BYTES (2u << 20) /* made for every accepted input: small, so that it is quick */
#define BUDGET (1u << 20)      /* more than any input's entries (libFuzzer -max_len: 4 KiB to 64 KiB) */
#define TTL_NS 3600000000000ull /* the ttl policy's (bit 2) */
#define MARGIN_NS 60000000000ull /* an entry this close to its TTL may expire before its lookup */

/* Field offsets of PROTOCOL.md "Snapshot file", written out again here: the harness reads the
 * file as the specification says, not as the loader does. */
enum {
	H_VERSION = 8, H_N_MODELS = 20, H_N_ENTRIES = 24, H_THR_BYTES = 80, H_CHECKSUM = 120,
	M_N_LAYERS = 72, THR_REC = 32, /* a model record's layers; a threshold block's records */
	E_MODEL = 0, E_LAYER = 4, E_DTYPE = 6, E_SEQ_LEN = 8, E_NDIM = 12, E_FLAGS = 13,
	E_APPROX = 14, E_SHAPE = 16, E_BYTES = 32, E_FP = 40, E_EXACT = 72, E_DATA_SUM = 88,
	E_AGE = 104,
	E_PARENT = 40, E_INDEX = 56, /* a block's (layer 0xffff), where a layer entry's fp is */
	REC = 128, BLOCK = 0xffff,
	F_TOKENS = 1, /* flags: seq_len token ids follow the data, at its length rounded up to 4 */
};

#define fail(...) fuzz_broken("fuzz_snapshot", __VA_ARGS__)

static uint64_t get(const uint8_t *p, int n)
{
	uint64_t v = 0;
	for (int i = n - 1; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void seal(uint8_t *rec)
{
	put64(rec + H_CHECKSUM, XXH3_64bits(rec, H_CHECKSUM));
}

static uint64_t padded(uint64_t n)
{
	return (n + 63) & ~(uint64_t)63;
}

/* Where the token ids of the entry record r start from its data's start, when it has them. */
static uint64_t ids_off(const uint8_t *r)
{
	return (get(r + E_BYTES, 8) + 3) & ~(uint64_t)3;
}

/* The entry record r's data section but its last padding: its data, or its data and token ids
 * (version 4 flags). Only for a record whose bytes fit the file (no wrap). */
static uint64_t body(const uint8_t *r)
{
	if (!(r[E_FLAGS] & F_TOKENS))
		return get(r + E_BYTES, 8);
	return ids_off(r) + 4 * get(r + E_SEQ_LEN, 4);
}

/* Every checksum the layout reaches, recomputed in place (bit 0 of the flags). */
static void reseal(uint8_t *f, size_t len)
{
	if (len < REC)
		return;
	uint64_t n_models = get(f + H_N_MODELS, 4), n_entries = get(f + H_N_ENTRIES, 8);
	uint64_t off = REC;
	for (uint64_t i = 0; i < n_models && len - off >= REC; i++, off += REC)
		seal(f + off);
	for (uint64_t k = 0; k < n_entries && off <= len && len - off >= REC; k++) {
		uint8_t *r = f + off;
		uint64_t bytes = get(r + E_BYTES, 8), left = len - off - REC;
		bool fits = bytes <= left && body(r) <= left;
		if (bytes <= left)
			put64(r + E_DATA_SUM, XXH3_64bits(r + REC, bytes));
		if (fits && (r[E_FLAGS] & F_TOKENS)) {
			/* The token hash ("Fingerprint" 7): XXH3-128 of the ids' bytes, low half first. */
			XXH128_hash_t h = XXH3_128bits(r + REC + ids_off(r), 4 * get(r + E_SEQ_LEN, 4));
			put64(r + E_EXACT, h.low64);
			put64(r + E_EXACT + 8, h.high64);
		}
		seal(r);
		if (!fits)
			break;
		off += REC + padded(body(r));
	}
	/* Version 5: the threshold blocks, the file's last thr_bytes, one per model record. */
	uint64_t thr = get(f + H_VERSION, 4) >= 5 ? get(f + H_THR_BYTES, 8) : 0, t = len - thr;
	for (uint64_t i = 0; thr && thr <= len && i < n_models && REC * (i + 2) <= len; i++) {
		uint64_t n = THR_REC * get(f + REC * (i + 1) + M_N_LAYERS, 4);
		if (t > len || n + 8 > len - t) /* t passes len once a block's padding did */
			break;
		put64(f + t + n, XXH3_64bits(f + t, n));
		t += padded(n + 8);
	}
	seal(f); /* last: the header's checksum covers nothing the loop changes, but keep one order */
}

struct bank {
	struct lbd_arena arena;
	struct lbd_store *st;
	struct lbd_models m;
};

static void bank_make(struct bank *b, enum lbd_policy policy)
{
	static const uint8_t boot[16] = { 0x5a };
	struct lbd_store_cfg cfg = { .budget = BUDGET, .policy = policy, .drift_max = 0.05, .tau = 0.98,
				     .half_life_ns = 300000000000ull, .ttl_ns = TTL_NS };
	char err[256];

	memset(&b->m, 0, sizeof(b->m));
	if (lbd_arena_create(&b->arena, ARENA_BYTES, -1, LBD_HP_OFF, boot, 0, err, sizeof(err)) < 0)
		fail("cannot make an arena: %s", err);
	b->st = lbd_store_new(&b->arena, 1, &cfg);
	if (!b->st)
		fail("cannot make a store");
}

static void bank_free(struct bank *b)
{
	lbd_store_free(b->st);
	lbd_arena_destroy(&b->arena);
}

/* The store's invariants (daemon/store.h lbd_store_check). */
static void assert_store_ok(struct bank *b, const char *when)
{
	char why[160] = "";
	if (lbd_store_check(b->st, why, sizeof(why)) < 0)
		fail("store broken %s: %s", when, why);
}

static void assert_empty(struct bank *b, const char *why)
{
	struct lbp_stats_reply s;

	memset(&s, 0, sizeof(s));
	lbd_store_stats(b->st, &s);
	if (b->m.count != 0 || s.entries != 0 || s.blocks != 0 || s.bytes_used != 0 ||
	    s.leases != 0)
		fail("%s: %u models, %llu entries, %llu blocks, %llu bytes, %llu leases after a"
		     " refused file", why, b->m.count, (unsigned long long)s.entries,
		     (unsigned long long)s.blocks, (unsigned long long)s.bytes_used,
		     (unsigned long long)s.leases);
	assert_store_ok(b, "after a refused file");
}

/* One entry record of an accepted file, as read here from PROTOCOL.md. */
struct frec {
	const uint8_t *r;
	uint32_t model, index;
	uint64_t key[2], parent[2]; /* key: a block's, or a layer entry's token hash */
	bool block;
	bool expected;              /* the load must have put it back */
	bool fresh;                 /* and a lookup finds it (under ttl: far from expiring) */
	const struct frec *up;      /* a block's parent's record */
};

static const struct frec *deref(const void *p)
{
	return *(const struct frec *const *)p;
}

static int cmp_block(const void *a, const void *b)
{
	const struct frec *x = deref(a), *y = deref(b);
	if (x->model != y->model)
		return x->model < y->model ? -1 : 1;
	for (int i = 0; i < 2; i++)
		if (x->key[i] != y->key[i])
			return x->key[i] < y->key[i] ? -1 : 1;
	return 0;
}

static int cmp_index(const void *a, const void *b)
{
	const struct frec *x = deref(a), *y = deref(b);
	return x->index < y->index ? -1 : x->index > y->index;
}

/* Every block's parent record, one place up; no key twice in a model: what the loader must
 * have checked before it accepted the file. by: the n blocks. */
static void link_blocks(const uint8_t *f, const struct frec **by, uint64_t n)
{
	qsort(by, n, sizeof(*by), cmp_block);
	for (uint64_t k = 1; k < n; k++)
		if (cmp_block(&by[k - 1], &by[k]) == 0)
			fail("accepted a file with a block twice (offsets %lld and %lld)",
			     (long long)(by[k - 1]->r - f), (long long)(by[k]->r - f));
	for (uint64_t k = 0; k < n; k++) {
		struct frec want = { .model = by[k]->model }, *w = &want;
		const struct frec **p;
		if (by[k]->index == 0)
			continue;
		memcpy(want.key, by[k]->parent, sizeof(want.key));
		p = bsearch(&w, by, n, sizeof(*by), cmp_block);
		if (!p || (*p)->index + 1 != by[k]->index)
			fail("accepted a file whose block at offset %lld has no parent one place"
			     " up", (long long)(by[k]->r - f));
		((struct frec *)by[k])->up = *p;
	}
}

/* The flags of an accepted file's entry record r: token ids only on a layer entry, hashing to
 * its key (the token hash, XXH3-128 of their bytes), and no other bit: what the loader must
 * have checked. */
static void check_flags(const uint8_t *f, const uint8_t *r)
{
	if (r[E_FLAGS] & ~F_TOKENS)
		fail("accepted a file whose entry at offset %lld has flags 0x%x",
		     (long long)(r - f), r[E_FLAGS]);
	if (!(r[E_FLAGS] & F_TOKENS))
		return;
	XXH128_hash_t h = XXH3_128bits(r + REC + ids_off(r), 4 * get(r + E_SEQ_LEN, 4));
	if (get(r + E_LAYER, 2) == BLOCK || get(r + E_EXACT, 8) != h.low64 ||
	    get(r + E_EXACT + 8, 8) != h.high64)
		fail("accepted a file whose entry at offset %lld has token ids that are not its"
		     " key's, or is a block with token ids", (long long)(r - f));
}

/*
 * The accepted file's entry records in file order (*n of them), each block's parent found, and
 * which of them the load must have put back into a bank whose budget holds them all: every one,
 * but under ttl none past the TTL and no block whose parent was left out.
 */
static struct frec *file_records(const uint8_t *f, bool ttl, uint64_t *n)
{
	uint64_t n_models = get(f + H_N_MODELS, 4), off = REC + REC * n_models, nb = 0;
	struct frec *e;
	const struct frec **by;

	*n = get(f + H_N_ENTRIES, 8);
	e = calloc(*n ? *n : 1, sizeof(*e));
	by = malloc((*n ? *n : 1) * sizeof(*by));
	if (!e || !by)
		fail("out of memory");
	for (uint64_t k = 0; k < *n; k++) {
		const uint8_t *r = f + off;
		e[k] = (struct frec){ .r = r, .model = (uint32_t)get(r + E_MODEL, 4),
				      .key = { get(r + E_EXACT, 8), get(r + E_EXACT + 8, 8) },
				      .block = get(r + E_LAYER, 2) == BLOCK };
		check_flags(f, r);
		e[k].expected = !ttl || get(r + E_AGE, 8) <= TTL_NS;
		e[k].fresh = !ttl || get(r + E_AGE, 8) <= TTL_NS - MARGIN_NS;
		if (e[k].block) {
			e[k].parent[0] = get(r + E_PARENT, 8);
			e[k].parent[1] = get(r + E_PARENT + 8, 8);
			e[k].index = (uint32_t)get(r + E_INDEX, 4);
			by[nb++] = &e[k];
		}
		off += REC + padded(body(r));
	}
	link_blocks(f, by, nb);
	qsort(by, nb, sizeof(*by), cmp_index); /* parents before children */
	for (uint64_t k = 0; k < nb; k++)
		if (by[k]->up) {
			struct frec *x = (struct frec *)by[k];
			x->expected = x->expected && x->up->expected;
			x->fresh = x->fresh && x->up->fresh;
		}
	free(by);
	return e;
}

/* Item it of the store is file entry e, as the file has it. */
static bool same_entry(const struct lbd_store_item *it, const struct frec *e)
{
	const uint8_t *r = e->r;
	bool ids = r[E_FLAGS] & F_TOKENS;
	bool same = it->model_id == e->model + 1 && it->layer == get(r + E_LAYER, 2) &&
		    it->dtype == get(r + E_DTYPE, 2) && it->seq_len == get(r + E_SEQ_LEN, 4) &&
		    it->ndim == r[E_NDIM] && it->approx == get(r + E_APPROX, 2) &&
		    (it->tokens != NULL) == ids &&
		    (!ids || memcmp(it->tokens, r + REC + ids_off(r), 4 * (size_t)it->seq_len) == 0) &&
		    it->bytes == get(r + E_BYTES, 8) &&
		    it->checksum == get(r + E_DATA_SUM, 8) && it->exact[0] == e->key[0] &&
		    it->exact[1] == e->key[1] && memcmp(it->data, r + REC, it->bytes) == 0;
	for (int i = 0; i < LB_MAX_NDIM; i++)
		same = same && it->shape[i] == get(r + E_SHAPE + 4 * i, 4);
	for (int i = 0; i < LB_FP_WORDS; i++)
		same = same && it->fp[i] == (e->block ? 0 : get(r + E_FP + 8 * i, 8));
	return same && it->parent[0] == e->parent[0] && it->parent[1] == e->parent[1] &&
	       it->index == e->index;
}

/* The entry at off in the arena holds file entry e's bytes, and its token ids if it has any. */
static bool holds(struct bank *b, uint64_t off, const struct frec *e, uint64_t bytes)
{
	const uint8_t *base = (const uint8_t *)b->arena.hdr + off;
	const struct lb_entry_hdr *eh = (const struct lb_entry_hdr *)base;
	bool ids = e->r[E_FLAGS] & F_TOKENS;
	return eh->magic == LB_ENTRY_MAGIC && eh->bytes == bytes &&
	       memcmp(base + LB_ENTRY_HDR_SIZE, e->r + REC, bytes) == 0 &&
	       eh->n_tokens == (ids ? eh->seq_len : 0) &&
	       (!ids || memcmp(base + LB_ENTRY_HDR_SIZE + ids_off(e->r), e->r + REC + ids_off(e->r),
			       4 * (size_t)eh->seq_len) == 0);
}

/* An ANY_LEN hit of another length than seq_len at off carries its input's ids: as many as
 * its seq_len, hashing to its key. */
static bool carries_ids(struct bank *b, uint64_t off, uint32_t seq_len)
{
	const uint8_t *base = (const uint8_t *)b->arena.hdr + off;
	const struct lb_entry_hdr *eh = (const struct lb_entry_hdr *)base;
	if (eh->seq_len == seq_len)
		return true;
	XXH128_hash_t h = XXH3_128bits(base + LB_ENTRY_HDR_SIZE + ((eh->bytes + 3) & ~(uint64_t)3),
				       4 * (size_t)eh->seq_len);
	return eh->n_tokens == eh->seq_len && eh->key[0] == h.low64 && eh->key[1] == h.high64;
}

/* A LOOKUP of restored layer entry e's layer (item it) at seq_len with flags, e's keys (its
 * token hash inverted when not exact, so that only its fingerprint matches) and a threshold of
 * -1 for every layer (any distance). @return the completion; its lease let go (the entry it
 * names stays readable: check_restored holds every entry). */
static struct lb_cpl lookup_layer(struct bank *b, struct lbd_leases *ls,
				  const struct lbd_store_item *it, uint32_t seq_len, uint8_t flags,
				  bool exact, const uint8_t *f, const struct frec *e)
{
	static float any[LBP_MAX_LAYERS];
	uint32_t n_layers = b->m.desc[it->model_id - 1].n_layers;
	struct lb_req q = { .opcode = LB_OP_LOOKUP, .flags = flags, .layer = (uint16_t)it->layer,
			    .model_id = it->model_id, .seq_len = seq_len };
	struct lb_query qy = { .n_thr = n_layers };
	struct lb_cpl cpl = { 0 }, rel = { 0 };

	for (uint32_t l = 0; l < n_layers; l++)
		any[l] = -1.0f;
	memcpy(qy.fp, it->fp, sizeof(qy.fp));
	qy.exact[0] = exact ? it->exact[0] : ~it->exact[0];
	qy.exact[1] = exact ? it->exact[1] : ~it->exact[1];
	lbd_store_lookup(b->st, ls, &q, &qy, any, &cpl);
	if (cpl.status == 0) {
		lbd_store_release(b->st, ls, cpl.lease, &rel);
		if (rel.status != 0)
			fail("release of a hit for entry at offset %lld: %d", (long long)(e->r - f),
			     rel.status);
	}
	return cpl;
}

/* Restored layer entry e (item it) is found by its token hash, with its data, as far as its
 * approx says (a threshold of -1 takes any); with token ids, also by a lookup of another
 * length with LB_REQ_ANY_LEN (not necessarily e: another entry of the layer at the same
 * fingerprint distance may answer, but whatever answers at another length carries its ids). */
static void find_layer(struct bank *b, struct lbd_leases *ls, const struct lbd_store_item *it,
		       const uint8_t *f, const struct frec *e)
{
	uint32_t max_seq = b->m.desc[it->model_id - 1].max_seq;
	struct lb_cpl cpl = lookup_layer(b, ls, it, it->seq_len, 0, true, f, e);

	if (cpl.status != 0)
		fail("restored entry at offset %lld not found: %d", (long long)(e->r - f),
		     cpl.status);
	if (cpl.hamming != it->approx)
		fail("restored entry at offset %lld found at hamming %u, its approx is %u",
		     (long long)(e->r - f), cpl.hamming, it->approx);
	if (!holds(b, cpl.entry_off, e, it->bytes))
		fail("entry at offset %lld found with other data", (long long)(e->r - f));
	if (!it->tokens || max_seq < 2)
		return;
	uint32_t other = it->seq_len > 1 ? it->seq_len - 1 : 2;
	cpl = lookup_layer(b, ls, it, other, LB_REQ_ANY_LEN, false, f, e);
	if (cpl.status != 0)
		fail("restored entry at offset %lld, with token ids, not found at length %u with"
		     " ANY_LEN: %d", (long long)(e->r - f), other, cpl.status);
	if (!carries_ids(b, cpl.entry_off, other))
		fail("an ANY_LEN lookup at length %u answered an entry of another length without"
		     " its token ids (for entry at offset %lld)", other, (long long)(e->r - f));
}

/* Restored block e (item it) is found by LOOKUP_PREFIX of its chain's keys, from block 0, with
 * its data (a chain longer than one LOOKUP_PREFIX reaches is not looked up). */
static void find_block(struct bank *b, struct lbd_leases *ls, const struct lbd_store_item *it,
		       const uint8_t *f, const struct frec *e)
{
	static uint64_t keys[LB_PREFIX_MAX_BLOCKS][2];
	static struct lb_prefix_block out[LB_PREFIX_MAX_BLOCKS];
	struct lb_req q = { .opcode = LB_OP_LOOKUP_PREFIX, .model_id = it->model_id };
	struct lb_cpl cpl = { 0 }, rel = { 0 };
	uint32_t n = e->index + 1;

	if (e->index >= LB_PREFIX_MAX_BLOCKS)
		return;
	for (const struct frec *x = e; x; x = x->up)
		memcpy(keys[x->index], x->key, sizeof(keys[0]));
	lbd_store_lookup_prefix(b->st, ls, &q, (const uint64_t(*)[2])keys, n, out, &cpl);
	if (cpl.status != 0 || cpl.count != n)
		fail("restored block at offset %lld (index %u): prefix lookup %d, %u blocks",
		     (long long)(e->r - f), e->index, cpl.status, cpl.count);
	if (!holds(b, out[e->index].entry_off, e, it->bytes))
		fail("block at offset %lld found with other data", (long long)(e->r - f));
	lbd_store_release(b->st, ls, cpl.lease, &rel);
	if (rel.status != 0)
		fail("release of block at offset %lld: %d", (long long)(e->r - f), rel.status);
}

/* The store holds exactly the entries expected back (only some of them when the file is larger
 * than the budget can surely hold), each one as the file has it, each found with its data: a
 * layer entry by its token hash, a block by its chain. chk: what the check-only call said. */
static void check_restored(struct bank *b, const uint8_t *f, size_t len, bool ttl,
			   const struct lbd_snapshot_stats *ls,
			   const struct lbd_snapshot_stats *chk)
{
	struct lbd_leases held = { 0 }, leases = { 0 };
	struct lbd_store_item *items = NULL;
	uint32_t n_items = 0;
	uint64_t n, expected = 0, blocks = 0, in_file = 0;
	bool all_fit = len <= BUDGET / 2; /* each entry needs no more than the file gives it */
	struct frec *e = file_records(f, ttl, &n);
	uint8_t *matched = calloc(n ? n : 1, 1);

	if (!matched || lbd_store_hold_all(b->st, &held, &items, &n_items) < 0)
		fail("out of memory");
	for (uint64_t k = 0; k < n; k++) {
		expected += e[k].expected;
		in_file += e[k].block;
	}
	if (chk->blocks != in_file)
		fail("the file has %llu blocks, the check-only call said %llu",
		     (unsigned long long)in_file, (unsigned long long)chk->blocks);
	if (n_items != ls->entries || (all_fit ? ls->entries != expected : ls->entries > expected))
		fail("the store holds %u entries, %llu said restored, %llu expected", n_items,
		     (unsigned long long)ls->entries, (unsigned long long)expected);
	for (uint32_t i = 0; i < n_items; i++) {
		uint64_t k = 0;
		while (k < n && (matched[k] || !same_entry(&items[i], &e[k])))
			k++;
		if (k == n || !e[k].expected)
			fail("store entry %u (model %u layer %u, %llu bytes) is %s", i,
			     items[i].model_id, items[i].layer, (unsigned long long)items[i].bytes,
			     k == n ? "no entry of the file" : "one the load should have left out");
		matched[k] = 1;
		blocks += e[k].block;
		if (!e[k].fresh)
			continue;
		if (e[k].block)
			find_block(b, &leases, &items[i], f, &e[k]);
		else
			find_layer(b, &leases, &items[i], f, &e[k]);
	}
	if (blocks != ls->blocks)
		fail("%llu blocks restored, %llu said", (unsigned long long)blocks,
		     (unsigned long long)ls->blocks);
	lbd_store_release_all(b->st, &held);
	lbd_leases_free(&held);
	lbd_leases_free(&leases);
	free(items);
	free(matched);
	free(e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct bank empty; /* refused files are loaded into it; it must stay empty */
	static bool made;
	struct lbd_snapshot_stats chk = { 0 }, ls = { 0 };
	char err[512] = "x", err2[512] = "x";

	if (!made) {
		lbd_log_setup(LBD_LOG_WARN, 0); /* not a line per arena */
		bank_make(&empty, LBD_POLICY_LRU);
		made = true;
	}
	if (size < 1)
		return 0;
	unsigned flags = data[0];
	enum lbd_policy policy = flags & 2 ? LBD_POLICY_DECAY : flags & 4 ? LBD_POLICY_TTL : LBD_POLICY_LRU;
	size_t len = size - 1;
	uint8_t *f = malloc(len ? len : 1); /* exactly the file's size: ASan sees a read past it */
	if (!f)
		fail("out of memory");
	memcpy(f, data + 1, len);
	if (flags & 1)
		reseal(f, len);

	int ret = lbd_snapshot_load_mem(f, len, NULL, NULL, &chk, err, sizeof(err));
	if (ret != 0 && ret != -EBADMSG && ret != -EPROTO && ret != -ENOMEM)
		fail("check-only load answered %d (%s)", ret, err);
	if (ret != 0 && (err[0] == '\0' || strchr(err, '\n')))
		fail("refused (%d) without one line of reason: '%s'", ret, err);
	if (ret == 0 && err[0] != '\0')
		fail("accepted with a reason: '%s'", err);

	if (ret != 0) {
		int ret2 = lbd_snapshot_load_mem(f, len, &empty.m, empty.st, &ls, err2, sizeof(err2));
		if (ret2 != ret || strcmp(err, err2) != 0)
			fail("check-only refused with %d (%s), the load answered %d (%s)", ret, err, ret2, err2);
		assert_empty(&empty, err);
		free(f);
		return 0;
	}

	struct bank b;
	bank_make(&b, policy);
	ret = lbd_snapshot_load_mem(f, len, &b.m, b.st, &ls, err2, sizeof(err2));
	if (ret != 0)
		fail("check-only accepted the file, the load answered %d (%s)", ret, err2);
	assert_store_ok(&b, "after the load");
	uint64_t n_entries = get(f + H_N_ENTRIES, 8);
	if (ls.models != chk.models || ls.file_bytes != len || chk.entries != n_entries)
		fail("stats disagree: models %u/%u, file %llu/%zu, entries %llu/%llu", ls.models,
		     chk.models, (unsigned long long)ls.file_bytes, len,
		     (unsigned long long)chk.entries, (unsigned long long)n_entries);
	if (ls.models_skipped != 0 || b.m.count != ls.models)
		fail("%u of %u models refused by an empty registry (%u registered)", ls.models_skipped,
		     ls.models, b.m.count);
	if (ls.entries + ls.entries_skipped != n_entries)
		fail("%llu restored + %llu skipped of %llu entries", (unsigned long long)ls.entries,
		     (unsigned long long)ls.entries_skipped, (unsigned long long)n_entries);
	check_restored(&b, f, len, policy == LBD_POLICY_TTL, &ls, &chk);
	assert_store_ok(&b, "after the lookups");
	struct lbp_stats_reply s;
	memset(&s, 0, sizeof(s));
	lbd_store_stats(b.st, &s);
	if (s.entries + s.blocks != ls.entries || s.blocks != ls.blocks || s.leases != 0)
		fail("store holds %llu entries, %llu blocks and %llu leases, %llu restored (%llu"
		     " blocks)", (unsigned long long)s.entries, (unsigned long long)s.blocks,
		     (unsigned long long)s.leases, (unsigned long long)ls.entries,
		     (unsigned long long)ls.blocks);
	bank_free(&b);
	free(f);
	return 0;
}
