/*
 * libFuzzer target: the snapshot loader (daemon/snapshot.c lbd_snapshot_load_mem, PROTOCOL.md
 * "Snapshot file"), fed files a damaged disk or a hostile user could leave at --snapshot.
 *
 * Input: byte 0 is a set of flags, the rest is the file.
 *   bit 0  reseal: before loading, recompute every checksum the layout reaches (the header's,
 *          each model record's, each entry's data checksum, then its record's), walking the
 *          file as PROTOCOL.md lays it out, as far as it fits. Without it almost every mutation
 *          stops at a checksum; with it the fuzzer reaches the range and consistency checks.
 *   bit 1  policy decay instead of lru, for the restore order (bit 2: ttl, 1 hour).
 *
 * Checked for every input: the loader answers 0, -EBADMSG, -EPROTO or -ENOMEM, with one line in
 * err when it refuses; the check-only call (no registry, no store) and the real load agree; a
 * refused file leaves the registry and the store exactly as they were (empty). For an accepted
 * file, loaded into a fresh bank whose budget holds any input of the fuzzer's length: every
 * model registered, restored + skipped entries = the header's count, the store holds exactly
 * the restored entries, each as the file has it (keys, header, checksum, data), and each is
 * found by its token hash.
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

/* Field offsets of PROTOCOL.md "Snapshot file", written out again here: the harness reads the
 * file as the specification says, not as the loader does. */
enum {
	H_VERSION = 8, H_N_MODELS = 20, H_N_ENTRIES = 24, H_CHECKSUM = 120,
	E_MODEL = 0, E_LAYER = 4, E_DTYPE = 6, E_SEQ_LEN = 8, E_NDIM = 12, E_SHAPE = 16,
	E_BYTES = 32, E_FP = 40, E_EXACT = 72, E_DATA_SUM = 88,
	REC = 128,
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
		if (bytes <= left)
			put64(r + E_DATA_SUM, XXH3_64bits(r + REC, bytes));
		seal(r);
		if (bytes > left)
			break;
		off += REC + padded(bytes);
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
				     .half_life_ns = 300000000000ull, .ttl_ns = 3600000000000ull };
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

static void assert_empty(struct bank *b, const char *why)
{
	struct lbp_stats_reply s;

	memset(&s, 0, sizeof(s));
	lbd_store_stats(b->st, &s);
	if (b->m.count != 0 || s.entries != 0 || s.bytes_used != 0 || s.leases != 0)
		fail("%s: %u models, %llu entries, %llu bytes, %llu leases after a refused file", why,
		     b->m.count, (unsigned long long)s.entries, (unsigned long long)s.bytes_used,
		     (unsigned long long)s.leases);
}

/* The accepted file's entry records, in file order. */
static const uint8_t **file_entries(const uint8_t *f, uint64_t *n)
{
	uint64_t n_models = get(f + H_N_MODELS, 4), off = REC + REC * n_models;
	const uint8_t **e;

	*n = get(f + H_N_ENTRIES, 8);
	e = malloc((*n ? *n : 1) * sizeof(*e));
	if (!e)
		fail("out of memory");
	for (uint64_t k = 0; k < *n; k++) {
		e[k] = f + off;
		off += REC + padded(get(f + off + E_BYTES, 8));
	}
	return e;
}

/* Item it of the store is file entry r, as the file has it. */
static bool same_entry(const struct lbd_store_item *it, const uint8_t *r)
{
	bool same = it->model_id == get(r + E_MODEL, 4) + 1 && it->layer == get(r + E_LAYER, 2) &&
		    it->dtype == get(r + E_DTYPE, 2) && it->seq_len == get(r + E_SEQ_LEN, 4) &&
		    it->ndim == get(r + E_NDIM, 4) && it->bytes == get(r + E_BYTES, 8) &&
		    it->checksum == get(r + E_DATA_SUM, 8) && it->exact[0] == get(r + E_EXACT, 8) &&
		    it->exact[1] == get(r + E_EXACT + 8, 8) &&
		    memcmp(it->data, r + REC, it->bytes) == 0;
	for (int i = 0; i < LB_MAX_NDIM; i++)
		same = same && it->shape[i] == get(r + E_SHAPE + 4 * i, 4);
	for (int i = 0; i < LB_FP_WORDS; i++)
		same = same && it->fp[i] == get(r + E_FP + 8 * i, 8);
	return same;
}

/* The store holds exactly the restored entries, each one as the file has it, and each is found
 * by its token hash with its data. */
static void check_restored(struct bank *b, const uint8_t *f, const struct lbd_snapshot_stats *ls)
{
	struct lbd_leases held = { 0 }, leases = { 0 };
	struct lbd_store_item *items = NULL;
	uint32_t n_items = 0;
	uint64_t n;
	const uint8_t **e = file_entries(f, &n);
	uint8_t *matched = calloc(n ? n : 1, 1);

	if (!matched || lbd_store_hold_all(b->st, &held, &items, &n_items) < 0)
		fail("out of memory");
	if (n_items != ls->entries)
		fail("the store holds %u entries, %llu said restored", n_items,
		     (unsigned long long)ls->entries);
	for (uint32_t i = 0; i < n_items; i++) {
		uint64_t k = 0;
		while (k < n && (matched[k] || !same_entry(&items[i], e[k])))
			k++;
		if (k == n)
			fail("store entry %u (model %u layer %u, %llu bytes) is no entry of the file", i,
			     items[i].model_id, items[i].layer, (unsigned long long)items[i].bytes);
		matched[k] = 1;

		struct lb_req q = { .opcode = LB_OP_LOOKUP, .layer = (uint16_t)items[i].layer,
				    .model_id = items[i].model_id, .seq_len = items[i].seq_len };
		struct lb_query qy = { .n_thr = 0 };
		struct lb_cpl cpl = { 0 }, rel = { 0 };
		memcpy(qy.fp, items[i].fp, sizeof(qy.fp));
		memcpy(qy.exact, items[i].exact, sizeof(qy.exact));
		lbd_store_lookup(b->st, &leases, &q, &qy, NULL, &cpl);
		if (cpl.status != 0)
			fail("restored entry %llu (offset %llu) not found: %d", (unsigned long long)k,
			     (unsigned long long)(e[k] - f), cpl.status);
		const uint8_t *base = (const uint8_t *)b->arena.hdr + cpl.entry_off;
		const struct lb_entry_hdr *eh = (const struct lb_entry_hdr *)base;
		if (eh->magic != LB_ENTRY_MAGIC || eh->bytes != items[i].bytes ||
		    memcmp(base + LB_ENTRY_HDR_SIZE, e[k] + REC, eh->bytes) != 0)
			fail("entry %llu found with other data", (unsigned long long)k);
		lbd_store_release(b->st, &leases, cpl.lease, &rel);
		if (rel.status != 0)
			fail("release of entry %llu: %d", (unsigned long long)k, rel.status);
	}
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
	check_restored(&b, f, &ls);
	struct lbp_stats_reply s;
	memset(&s, 0, sizeof(s));
	lbd_store_stats(b.st, &s);
	if (s.entries != ls.entries || s.leases != 0)
		fail("store holds %llu entries and %llu leases, %llu restored",
		     (unsigned long long)s.entries, (unsigned long long)s.leases,
		     (unsigned long long)ls.entries);
	bank_free(&b);
	free(f);
	return 0;
}
