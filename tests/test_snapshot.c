/* The snapshot (daemon/snapshot.c, PROTOCOL.md "Snapshot file"): the documented layout, round
 * trips byte for byte, prefix blocks and their chains included, every truncation and every
 * flipped bit refused with nothing restored, foreign versions, sealed but inconsistent files
 * (a chain with a hole among them), the budget keeping the most valuable entries and, of the
 * blocks, whole prefixes; then layerbankd itself: restart with --snapshot, prefixes found
 * again, bad files as one log line and an empty start, a model registered differently after
 * the restart, SNAPSHOT through the client library and layerbank-ctl, and the warm restart's
 * hit rate. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "arena.h"
#include "layerbank/layerbank.h"
#include "layerbank/ring.h"
#include "models.h"
#include "snapshot.h"
#include "store.h"
#include "testutil.h"

static struct lbt_env env; /* every test's fixture: daemon, clients, a worker process */
static char snap_path[300];

static int setup(void **state)
{
	lbt_env_setup(state);
	snprintf(snap_path, sizeof(snap_path), "%s/cache.snap", env.dir);
	return 0;
}

/* ---- inputs and their data, the same in every process ---- */

static uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static void input_keys(uint32_t input, uint64_t fp[4], uint64_t exact[2])
{
	for (int i = 0; i < 4; i++)
		fp[i] = mix(input * 8u + (uint64_t)i);
	exact[0] = mix(0x1000000u + input);
	exact[1] = mix(0x2000000u + input);
}

static void fill_data(uint8_t *p, uint64_t n, uint32_t input, uint32_t layer)
{
	uint64_t s = mix(((uint64_t)input << 16) | layer);
	for (uint64_t i = 0; i < n; i++) {
		if (i % 8 == 0)
			s = mix(s);
		p[i] = (uint8_t)(s >> (8 * (i % 8)));
	}
}

/* ---- an in-process bank: arena, store, registry ---- */

struct bank {
	struct lbd_arena arena;
	struct lbd_store *st;
	struct lbd_models m;
};

static void bank_make(struct bank *b, size_t arena_bytes, uint64_t budget, enum lbd_policy pol,
		      uint64_t ttl_ns)
{
	static const uint8_t boot[16] = { 7 };
	char err[256];
	struct lbd_store_cfg cfg = {
		.budget = budget,
		.policy = pol,
		.ttl_ns = ttl_ns ? ttl_ns : 3600ull * 1000000000ull,
		.half_life_ns = 300ull * 1000000000ull,
		.drift_max = 0.05,
		.tau = 0.98,
	};

	memset(b, 0, sizeof(*b));
	assert_int_equal(lbd_arena_create(&b->arena, arena_bytes, -1, LBD_HP_OFF, boot, 0, err, sizeof(err)), 0);
	b->st = lbd_store_new(&b->arena, 1, &cfg);
	assert_non_null(b->st);
}

static void bank_free(struct bank *b)
{
	lbd_store_free(b->st);
	lbd_arena_destroy(&b->arena);
}

static struct lbp_register_model desc(const char *name, uint64_t weights, uint32_t n_layers,
				      uint32_t hidden)
{
	struct lbp_register_model d = { .weights_hash = weights, .n_layers = n_layers, .hidden = hidden,
					.dtype = LBP_DTYPE_F32, .max_seq = 256,
					.fp = { .chunks = 4, .bits = 256, .seed = 7 } };
	snprintf(d.name, sizeof(d.name), "%s", name);
	return d;
}

static uint32_t bank_model(struct bank *b, const struct lbp_register_model *d)
{
	const char *field;
	char why[256];
	uint32_t id = 0;
	assert_true(lbd_models_register(&b->m, d, &id, &field, why, sizeof(why)) >= 0);
	assert_int_equal(lbd_store_add_model(b->st, id, d), 0);
	return id;
}

/* The id of the model registered as name, 0 when none. */
static uint32_t model_id(const struct bank *b, const char *name)
{
	for (uint32_t i = 0; i < b->m.count; i++)
		if (strcmp(b->m.desc[i].name, name) == 0)
			return i + 1;
	return 0;
}

/* One entry of the small image is approximate (computed on a reuse 5 bits away), so that its
 * approx travels through the file. */
static uint32_t approx_of(uint32_t input, uint32_t layer)
{
	return input == 7 && layer == 1 ? 5 : 0;
}

static int bank_insert(struct bank *b, uint32_t model, uint32_t input, uint32_t layer,
		       uint32_t seq_len, uint32_t hidden)
{
	uint64_t bytes = (uint64_t)seq_len * hidden * 4;
	uint8_t *data = malloc(bytes);
	struct lb_req r = { .opcode = LB_OP_INSERT, .layer = (uint16_t)layer, .model_id = model,
			    .seq_len = seq_len, .payload_len = (uint32_t)(LB_INSERT_HDR_SIZE + bytes) };
	struct lb_insert_hdr h = { .dtype = LBP_DTYPE_F32, .ndim = 2, .shape = { seq_len, hidden },
				   .bytes = bytes, .approx = approx_of(input, layer) };
	struct lb_cpl cpl = { 0 };

	assert_non_null(data);
	fill_data(data, bytes, input, layer);
	input_keys(input, h.fp, h.exact);
	lbd_store_insert(b->st, LBD_INSERTER_DAEMON, &r, &h, data, &cpl);
	free(data);
	return cpl.status;
}

/* Look (model, input, layer) up by its token hash; on a hit check header and data byte for
 * byte, then let the lease go. @return the lookup's status (0 hit, -ENOENT miss). */
static int bank_check(struct bank *b, uint32_t model, uint32_t input, uint32_t layer,
		      uint32_t seq_len, uint32_t hidden)
{
	struct lbd_leases ls = { 0 };
	struct lb_req r = { .opcode = LB_OP_LOOKUP, .layer = (uint16_t)layer, .model_id = model,
			    .seq_len = seq_len };
	struct lb_query q = { .n_thr = 0 };
	struct lb_cpl cpl = { 0 }, rel = { 0 };
	uint64_t bytes = (uint64_t)seq_len * hidden * 4;

	input_keys(input, q.fp, q.exact);
	lbd_store_lookup(b->st, &ls, &r, &q, NULL, &cpl);
	if (cpl.status == 0) {
		const uint8_t *base = (const uint8_t *)b->arena.hdr + cpl.entry_off;
		const struct lb_entry_hdr *eh = (const struct lb_entry_hdr *)base;
		uint8_t *want = malloc(bytes);
		assert_non_null(want);
		fill_data(want, bytes, input, layer);
		assert_true(eh->magic == LB_ENTRY_MAGIC);
		assert_int_equal(eh->model_id, model);
		assert_int_equal(eh->layer, layer);
		assert_int_equal(eh->dtype, LBP_DTYPE_F32);
		assert_int_equal(eh->seq_len, seq_len);
		assert_int_equal(eh->ndim, 2);
		assert_int_equal(eh->shape[0], seq_len);
		assert_int_equal(eh->shape[1], hidden);
		assert_true(eh->bytes == bytes);
		assert_memory_equal(base + LB_ENTRY_HDR_SIZE, want, bytes);
		assert_true(eh->checksum == XXH3_64bits(want, bytes));
		assert_int_equal(eh->approx, approx_of(input, layer));
		assert_int_equal(cpl.hamming, approx_of(input, layer)); /* the exact hash, + approx */
		free(want);
		lbd_store_release(b->st, &ls, cpl.lease, &rel);
		assert_int_equal(rel.status, 0);
	}
	lbd_leases_free(&ls);
	return cpl.status;
}

/* ---- prefix blocks in a bank: block n's key is input n's token hash (input_keys), so that a
 * file holds blocks and inputs of one model under the same 128 bits ---- */

static void block_key(uint32_t id, uint64_t key[2])
{
	uint64_t fp[4];
	input_keys(id, fp, key);
}

/* Block id (data from id) at index under parent (0: none, for index 0), of kv_dim and
 * block_tokens as the model has them. @return the insert's status. */
static int bank_block(struct bank *b, uint32_t model, uint32_t id, uint32_t parent,
		      uint32_t index)
{
	const struct lbp_register_model *d = &b->m.desc[model - 1];
	uint64_t bytes = (uint64_t)d->kv.layers * 2 * d->kv.block_tokens * d->kv.dim * 4;
	struct lb_req r = { .opcode = LB_OP_INSERT_BLOCK, .model_id = model,
			    .seq_len = (index + 1) * d->kv.block_tokens,
			    .payload_len = (uint32_t)(LB_INSERT_HDR_SIZE + bytes) };
	struct lb_block_hdr h = { .index = index, .dtype = LBP_DTYPE_F32, .ndim = 4,
				  .shape = { d->kv.layers, 2, d->kv.block_tokens, d->kv.dim },
				  .bytes = bytes };
	struct lb_cpl cpl = { 0 };
	uint8_t *data = malloc(bytes);

	assert_non_null(data);
	fill_data(data, bytes, id, LB_ENTRY_LAYER_BLOCK);
	block_key(id, h.key);
	if (parent)
		block_key(parent, h.parent);
	lbd_store_insert_block(b->st, LBD_INSERTER_DAEMON, &r, &h, data, &cpl);
	free(data);
	return cpl.status;
}

/* Insert the chain of blocks ids[0..n) (each the next one's parent; those cached already are
 * -EEXIST). @return the last status but -EEXIST. */
static int bank_chain(struct bank *b, uint32_t model, const uint32_t *ids, uint32_t n)
{
	int ret = 0;
	for (uint32_t i = 0; i < n && ret == 0; i++) {
		ret = bank_block(b, model, ids[i], i ? ids[i - 1] : 0, i);
		ret = ret == -EEXIST ? 0 : ret;
	}
	return ret;
}

/* LOOKUP_PREFIX of the chain ids[0..n): every block found checked, header and data, then the
 * lease let go. @return the blocks found from block 0 (0: not even block 0). */
static uint32_t bank_prefix(struct bank *b, uint32_t model, const uint32_t *ids, uint32_t n)
{
	const struct lbp_register_model *d = &b->m.desc[model - 1];
	uint64_t bytes = (uint64_t)d->kv.layers * 2 * d->kv.block_tokens * d->kv.dim * 4;
	uint64_t keys[32][2];
	struct lb_prefix_block out[32];
	struct lbd_leases ls = { 0 };
	struct lb_req r = { .opcode = LB_OP_LOOKUP_PREFIX, .model_id = model };
	struct lb_cpl cpl = { 0 }, rel = { 0 };
	uint8_t *want = malloc(bytes);

	assert_true(n <= 32);
	assert_non_null(want);
	for (uint32_t i = 0; i < n; i++)
		block_key(ids[i], keys[i]);
	lbd_store_lookup_prefix(b->st, &ls, &r, (const uint64_t(*)[2])keys, n, out, &cpl);
	assert_true(cpl.status == 0 || cpl.status == -ENOENT);
	for (uint32_t i = 0; cpl.status == 0 && i < cpl.count; i++) {
		const uint8_t *base = (const uint8_t *)b->arena.hdr + out[i].entry_off;
		const struct lb_entry_hdr *eh = (const struct lb_entry_hdr *)base;
		fill_data(want, bytes, ids[i], LB_ENTRY_LAYER_BLOCK);
		assert_true(eh->magic == LB_ENTRY_MAGIC);
		assert_int_equal(eh->layer, LB_ENTRY_LAYER_BLOCK);
		assert_int_equal(eh->seq_len, (i + 1) * d->kv.block_tokens);
		assert_true(eh->bytes == bytes);
		assert_true(eh->key[0] == keys[i][0] && eh->key[1] == keys[i][1]);
		assert_memory_equal(base + LB_ENTRY_HDR_SIZE, want, bytes);
		assert_true(eh->checksum == XXH3_64bits(want, bytes));
	}
	if (cpl.status == 0) {
		lbd_store_release(b->st, &ls, cpl.lease, &rel);
		assert_int_equal(rel.status, 0);
	}
	lbd_leases_free(&ls);
	free(want);
	return cpl.status == 0 ? cpl.count : 0;
}

/* The store's invariants hold: no chain has a hole, the lists and bytes add up. */
static void assert_store_ok(struct bank *b)
{
	char why[160] = "";
	if (lbd_store_check(b->st, why, sizeof(why)) < 0)
		fail_msg("store: %s", why);
}

static struct lbp_stats_reply bank_stats(struct bank *b)
{
	struct lbp_stats_reply r;
	memset(&r, 0, sizeof(r));
	lbd_store_stats(b->st, &r);
	return r;
}

/* Nothing restored, nothing registered: what a refused file must leave. */
static void assert_untouched(struct bank *b)
{
	struct lbp_stats_reply r = bank_stats(b);
	assert_int_equal(b->m.count, 0);
	assert_true(r.entries == 0 && r.bytes_used == 0 && r.leases == 0);
}

static uint8_t *read_file(const char *path, size_t *len)
{
	struct stat sb;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &sb), 0);
	uint8_t *buf = malloc((size_t)sb.st_size + 1);
	assert_non_null(buf);
	assert_int_equal(pread(fd, buf, (size_t)sb.st_size, 0), sb.st_size);
	close(fd);
	*len = (size_t)sb.st_size;
	return buf;
}

static void write_file(const char *path, const uint8_t *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, buf, len), (ssize_t)len);
	close(fd);
}

/* ---- the small snapshot: two models, 14 layer entries and 7 prefix blocks in two chains,
 * data not a multiple of 64 (padding) ---- */

#define A_LAYERS 4
#define A_HIDDEN 8
#define A_SEQ 3 /* 96 data bytes: 32 of padding */
#define B_LAYERS 2
#define B_HIDDEN 4
#define B_SEQ 5 /* 80 data bytes: 48 of padding */
#define B_KV 3
#define B_TOKENS 2
#define B_BLOCK (B_LAYERS * 2 * B_TOKENS * B_KV * 4) /* 96 data bytes: 32 of padding */
#define SMALL_LAYER_ENTRIES 14
#define SMALL_BLOCKS 7
#define SMALL_ENTRIES (SMALL_LAYER_ENTRIES + SMALL_BLOCKS)
/* The threshold blocks at the end: alpha's 4 and beta's 2 controllers of 32 bytes, a checksum,
 * zeros to 64 bytes. */
#define SMALL_THR (192 + 128)
#define SMALL_LEN (128 + 2 * 128 + SMALL_ENTRIES * (128 + 128) + SMALL_THR)
#define SMALL_DATA (12 * 96 + 2 * 80 + SMALL_BLOCKS * B_BLOCK)
#define SMALL_BLOCK0 (128 + 2 * 128 + SMALL_LAYER_ENTRIES * 256) /* block 1's record */

/* beta's chains: blocks 1, 2 shared, then 3, 4 on one and 5, 6, 7 on the other. Block 7's key
 * is input 7's token hash, which beta holds layer entries of: a file may name an input and a
 * block by the same bits, and neither is checked as the other. */
static const uint32_t chain_a[] = { 1, 2, 3, 4 }, chain_b[] = { 1, 2, 5, 6, 7 };

static struct lbp_register_model beta_desc(void)
{
	struct lbp_register_model d = desc("beta", 0xb2, B_LAYERS, B_HIDDEN);
	d.kv = (struct lbp_kv_spec){ .dim = B_KV, .block_tokens = B_TOKENS, .layers = B_LAYERS };
	return d;
}

static void small_fill(struct bank *b)
{
	struct lbp_register_model da = desc("alpha", 0xa1, A_LAYERS, A_HIDDEN);
	struct lbp_register_model db = beta_desc();
	uint32_t a = bank_model(b, &da), bb = bank_model(b, &db);

	for (uint32_t in = 0; in < 3; in++)
		for (uint32_t l = 0; l < A_LAYERS; l++)
			assert_int_equal(bank_insert(b, a, in, l, A_SEQ, A_HIDDEN), 0);
	for (uint32_t l = 0; l < B_LAYERS; l++)
		assert_int_equal(bank_insert(b, bb, 7, l, B_SEQ, B_HIDDEN), 0);
	assert_int_equal(bank_chain(b, bb, chain_a, 4), 0);
	assert_int_equal(bank_chain(b, bb, chain_b, 5), 0);
}

/* Write the small snapshot to path; @return its image (*len bytes, malloc'd). */
static uint8_t *small_image(const char *path, size_t *len)
{
	struct bank b;
	struct lbd_snapshot_stats st;
	char err[512];

	bank_make(&b, 4u << 20, 0, LBD_POLICY_LRU, 0);
	small_fill(&b);
	assert_int_equal(lbd_snapshot_write(path, &b.m, b.st, NULL, NULL, NULL, &st, err, sizeof(err)), 0);
	assert_string_equal(err, "");
	assert_int_equal(st.entries, SMALL_ENTRIES);
	assert_int_equal(st.blocks, SMALL_BLOCKS);
	assert_int_equal(st.models, 2);
	assert_int_equal(st.file_bytes, SMALL_LEN);
	assert_int_equal(st.data_bytes, SMALL_DATA);
	/* Its leases are gone once written. */
	assert_int_equal(bank_stats(&b).leases, 0);
	bank_free(&b);
	return read_file(path, len);
}

/* The start of a file test: the small image (written to snap_path too) and an empty bank of
 * 4 MiB to restore it into. */
static uint8_t *image_and_bank(size_t *len, struct bank *b)
{
	uint8_t *img = small_image(snap_path, len);
	bank_make(b, 4u << 20, 0, LBD_POLICY_LRU, 0);
	return img;
}

/* The end of a test of refused files: nothing was restored, the bank is as it was made. */
static void end_refused(struct bank *b, uint8_t *img)
{
	assert_untouched(b);
	assert_store_ok(b);
	bank_free(b);
	free(img);
}

static uint64_t le(const uint8_t *p, int n)
{
	uint64_t v = 0;
	for (int i = n - 1; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static void put_le(uint8_t *p, uint64_t v, int n)
{
	for (int i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* Recompute the checksum at the end of the 128-byte record at p. */
static void reseal(uint8_t *p)
{
	put_le(p + 120, XXH3_64bits(p, 120), 8);
}

/* img (*len bytes) as a writer of version (2..5) wrote it, but for what changed in its entry
 * records: model records with a 4-byte block_tokens (no kv_layers) before version 6, resealed;
 * before version 5 no threshold blocks at its end (*len shortened) and the header's thr_bytes
 * reserved zeros again; the version; the header resealed. */
static void as_version(uint8_t *img, size_t *len, uint32_t version)
{
	for (uint64_t i = 0; i < le(img + 20, 4); i++) {
		uint8_t *m = img + 128 + 128 * i;
		put_le(m + 118, 0, 2);
		reseal(m);
	}
	if (version < 5) {
		*len -= le(img + 80, 8);
		put_le(img + 80, 0, 8);
		put_le(img + 40, *len, 8);
	}
	put_le(img + 8, version, 4);
	reseal(img);
}

/* The file is what PROTOCOL.md says, field by field. */
static void test_layout_is_the_documented_one(void **state)
{
	(void)state;
	size_t len;
	uint8_t *img = small_image(snap_path, &len);
	uint8_t want[128];

	assert_int_equal(len, SMALL_LEN);
	assert_memory_equal(img, "LBSNAPSH", 8);
	assert_int_equal(le(img + 8, 4), 6);             /* version */
	assert_int_equal(le(img + 12, 4), 128);          /* hdr_size */
	assert_int_equal(le(img + 16, 4), LB_SHM_ABI_VERSION);
	assert_int_equal(le(img + 20, 4), 2);            /* models */
	assert_int_equal(le(img + 24, 8), SMALL_ENTRIES);
	assert_int_equal(le(img + 32, 8), SMALL_DATA);
	assert_int_equal(le(img + 40, 8), SMALL_LEN);
	uint64_t written = le(img + 48, 8);
	assert_true(written <= (uint64_t)time(NULL) && written + 60 >= (uint64_t)time(NULL));
	assert_int_equal(le(img + 72, 4), 128);
	assert_int_equal(le(img + 76, 4), 128);
	assert_int_equal(le(img + 80, 8), SMALL_THR);    /* thr_bytes */
	for (int i = 88; i < 120; i++)
		assert_int_equal(img[i], 0);
	assert_true(le(img + 120, 8) == XXH3_64bits(img, 120));

	/* Model records, in registration order. */
	const uint8_t *m = img + 128;
	assert_string_equal((const char *)m, "alpha");
	assert_true(le(m + 64, 8) == 0xa1);
	assert_int_equal(le(m + 72, 4), A_LAYERS);
	assert_int_equal(le(m + 76, 4), A_HIDDEN);
	assert_int_equal(le(m + 80, 4), LBP_DTYPE_F32);
	assert_int_equal(le(m + 84, 4), 256);
	assert_int_equal(le(m + 88, 4), 4);
	assert_int_equal(le(m + 92, 4), 256);
	assert_int_equal(le(m + 96, 8), 7);
	assert_int_equal(le(m + 104, 8), 12);
	assert_int_equal(le(m + 112, 4), 0);             /* kv_dim: no prefix blocks */
	assert_int_equal(le(m + 116, 2), 0);             /* block_tokens */
	assert_int_equal(le(m + 118, 2), 0);             /* kv_layers */
	assert_true(le(m + 120, 8) == XXH3_64bits(m, 120));
	assert_string_equal((const char *)m + 128, "beta");
	assert_int_equal(le(m + 128 + 104, 8), 2 + SMALL_BLOCKS);
	assert_int_equal(le(m + 128 + 112, 4), B_KV);
	assert_int_equal(le(m + 128 + 116, 2), B_TOKENS);
	assert_int_equal(le(m + 128 + 118, 2), B_LAYERS);

	/* Entry records: find the beta layer-1 entry and block 5 by walking them, then check every
	 * field. */
	size_t off = 128 + 2 * 128;
	int found = 0;
	const uint32_t tree[3] = { 1, 5, 7 };
	uint64_t idle[3] = { 1, 2, 3 }, age[3] = { 4, 5, 6 };
	for (int k = 0; k < SMALL_ENTRIES; k++) {
		const uint8_t *e = img + off;
		uint64_t bytes = le(e + 32, 8);
		assert_true(le(e + 120, 8) == XXH3_64bits(e, 120));
		assert_true(le(e + 88, 8) == XXH3_64bits(e + 128, bytes));
		for (uint64_t i = bytes; i < ((bytes + 63) & ~63ull); i++)
			assert_int_equal(e[128 + i], 0);
		if (le(e, 4) == 1 && le(e + 4, 2) == 1) {
			uint64_t fp[4], exact[2];
			input_keys(7, fp, exact);
			assert_int_equal(le(e + 6, 2), LBP_DTYPE_F32);
			assert_int_equal(le(e + 8, 4), B_SEQ);
			assert_int_equal(e[12], 2);          /* ndim */
			assert_int_equal(e[13], 0);          /* flags: no token ids */
			assert_int_equal(le(e + 14, 2), 5);  /* approx */
			assert_int_equal(le(e + 16, 4), B_SEQ);
			assert_int_equal(le(e + 20, 4), B_HIDDEN);
			assert_int_equal(le(e + 24, 4), 0);
			assert_int_equal(le(e + 28, 4), 0);
			assert_int_equal(bytes, B_SEQ * B_HIDDEN * 4);
			for (int i = 0; i < 4; i++)
				assert_true(le(e + 40 + 8 * i, 8) == fp[i]);
			assert_true(le(e + 72, 8) == exact[0] && le(e + 80, 8) == exact[1]);
			double score;
			uint64_t bits = le(e + 112, 8);
			memcpy(&score, &bits, 8);
			assert_true(score > 0.99 && score <= 1.0); /* an insert counts one hit */
			fill_data(want, bytes, 7, 1);
			assert_memory_equal(e + 128, want, bytes);
			found++;
		}
		uint64_t key[2], parent[2];
		block_key(5, key);
		block_key(2, parent);
		if (le(e + 4, 2) == 0xffff && le(e + 72, 8) == key[0] && le(e + 80, 8) == key[1]) {
			assert_int_equal(le(e, 4), 1);       /* beta */
			assert_int_equal(le(e + 6, 2), LBP_DTYPE_F32);
			assert_int_equal(le(e + 8, 4), 3 * B_TOKENS);
			assert_int_equal(e[12], 4);          /* ndim */
			assert_int_equal(e[13], 0);          /* flags */
			assert_int_equal(le(e + 14, 2), 0);  /* approx */
			const uint32_t shape[4] = { B_LAYERS, 2, B_TOKENS, B_KV };
			for (int i = 0; i < 4; i++)
				assert_int_equal(le(e + 16 + 4 * i, 4), shape[i]);
			assert_int_equal(bytes, B_BLOCK);
			assert_true(le(e + 40, 8) == parent[0] && le(e + 48, 8) == parent[1]);
			assert_int_equal(le(e + 56, 4), 2);  /* index */
			for (int i = 60; i < 72; i++)
				assert_int_equal(e[i], 0);
			double score;
			uint64_t bits = le(e + 112, 8);
			memcpy(&score, &bits, 8);
			assert_true(score > 0.99 && score <= 1.0);
			fill_data(want, bytes, 5, LB_ENTRY_LAYER_BLOCK);
			assert_memory_equal(e + 128, want, bytes);
			found++;
		}
		if (le(e + 4, 2) == 0xffff && le(e + 56, 4) == 0)
			for (int i = 40; i < 72; i++)
				assert_int_equal(e[i], 0); /* block 0: parent 0, 0 */
		for (uint32_t j = 0; j < 3; j++) {
			block_key(tree[j], key);
			if (le(e + 4, 2) == 0xffff && le(e + 72, 8) == key[0])
				idle[j] = le(e + 96, 8), age[j] = le(e + 104, 8);
		}
		off += 128 + ((bytes + 63) & ~63ull);
	}
	assert_int_equal(off, len - SMALL_THR);
	assert_int_equal(found, 2);
	/* The threshold blocks: each model's controllers as they start (no report yet). */
	const uint32_t n_layers[2] = { A_LAYERS, B_LAYERS };
	for (int i = 0; i < 2; i++) {
		const uint8_t *t = img + off;
		uint64_t n = 32ull * n_layers[i];
		for (uint32_t l = 0; l < n_layers[i]; l++) {
			uint64_t bits = le(t + 32 * l, 8);
			double r;
			memcpy(&r, &bits, 8);
			assert_true(r == (double)lbp_fp_max_hamming(LBD_ADAPT_START_TAU));
			for (int k = 8; k < 32; k++)
				assert_int_equal(t[32 * l + k], 0); /* reports, over, drift_sum */
		}
		assert_true(le(t + n, 8) == XXH3_64bits(t, n));
		for (uint64_t k = n + 8; k < ((n + 8 + 63) & ~63ull); k++)
			assert_int_equal(t[k], 0);
		off += (n + 8 + 63) & ~63ull;
	}
	assert_int_equal(off, len);
	/* A block is written as recent and young as the best block under it: 1 and 5 as 7, the
	 * last one inserted. */
	assert_true(idle[0] == idle[2] && idle[1] == idle[2]);
	assert_true(age[0] == age[2] && age[1] == age[2]);
	free(img);
}

/* Two registrations field by field (the struct has padding, whose bytes nothing sets). */
static void assert_desc_equal(const struct lbp_register_model *x, const struct lbp_register_model *y)
{
	assert_string_equal(x->name, y->name);
	assert_true(x->weights_hash == y->weights_hash && x->fp.seed == y->fp.seed);
	const uint32_t a[] = { x->n_layers, x->hidden, x->dtype, x->max_seq, x->fp.chunks,
			       x->fp.bits, x->kv.dim, x->kv.block_tokens, x->kv.layers };
	const uint32_t b[] = { y->n_layers, y->hidden, y->dtype, y->max_seq, y->fp.chunks,
			       y->fp.bits, y->kv.dim, y->kv.block_tokens, y->kv.layers };
	assert_memory_equal(a, b, sizeof(a));
}

/* Write, restore into a fresh daemon's store: the same entries, byte for byte, as hits. */
static void test_round_trip_restores_every_entry(void **state)
{
	(void)state;
	size_t len;
	struct bank b;
	struct lbd_snapshot_stats st;
	char err[512];
	uint8_t *img = image_and_bank(&len, &b);

	assert_int_equal(lbd_snapshot_load(snap_path, &b.m, b.st, &st, err, sizeof(err)), 0);
	assert_int_equal(st.models, 2);
	assert_int_equal(st.models_skipped, 0);
	assert_int_equal(st.entries, SMALL_ENTRIES);
	assert_int_equal(st.blocks, SMALL_BLOCKS);
	assert_int_equal(st.entries_skipped, 0);
	assert_int_equal(st.file_bytes, len);
	assert_store_ok(&b);
	/* The models are back as registered, provisionally until a client vouches for them. */
	uint32_t a = model_id(&b, "alpha"), bb = model_id(&b, "beta");
	assert_true(a && bb);
	struct lbp_register_model da = desc("alpha", 0xa1, A_LAYERS, A_HIDDEN), db = beta_desc();
	assert_desc_equal(&b.m.desc[a - 1], &da);
	assert_desc_equal(&b.m.desc[bb - 1], &db);
	assert_int_equal(b.m.provisional[a - 1], 1);
	/* The store's accounting: each entry 256 bytes (header and data rounded to 64), counted
	 * per layer, none as an insert, nothing leased, all within the budget. */
	struct lbp_stats_reply r = bank_stats(&b);
	struct lbp_model_stats_reply ms;
	assert_int_equal(r.entries, SMALL_LAYER_ENTRIES);
	assert_int_equal(r.blocks, SMALL_BLOCKS);
	assert_int_equal(r.bytes_used, SMALL_ENTRIES * 256);
	assert_int_equal(r.inserts, 0);
	assert_int_equal(r.leases, 0);
	assert_int_equal(lbd_store_model_stats(b.st, a, 0, &ms), 0);
	assert_int_equal(ms.n, A_LAYERS);
	for (uint32_t l = 0; l < A_LAYERS; l++) {
		assert_int_equal(ms.layers[l].entries, 3);
		assert_int_equal(ms.layers[l].bytes, 3 * 256);
	}
	assert_int_equal(lbd_store_model_stats(b.st, bb, 0, &ms), 0);
	assert_int_equal(ms.layers[1].entries, 1);
	for (uint32_t in = 0; in < 3; in++)
		for (uint32_t l = 0; l < A_LAYERS; l++)
			assert_int_equal(bank_check(&b, a, in, l, A_SEQ, A_HIDDEN), 0);
	for (uint32_t l = 0; l < B_LAYERS; l++)
		assert_int_equal(bank_check(&b, bb, 7, l, B_SEQ, B_HIDDEN), 0);
	assert_int_equal(bank_check(&b, a, 9, 0, A_SEQ, A_HIDDEN), -ENOENT);
	/* Both chains whole again, found from block 0, and nothing past them. */
	assert_int_equal(bank_prefix(&b, bb, chain_a, 4), 4);
	assert_int_equal(bank_prefix(&b, bb, chain_b, 5), 5);
	const uint32_t longer[] = { 1, 2, 3, 4, 8 }, other[] = { 2, 3 };
	assert_int_equal(bank_prefix(&b, bb, longer, 5), 4);
	assert_int_equal(bank_prefix(&b, bb, other, 2), 0);
	/* Restored entries are ordinary ones: a second write holds the same. */
	char again[320];
	snprintf(again, sizeof(again), "%s/again.snap", env.dir);
	assert_int_equal(lbd_snapshot_write(again, &b.m, b.st, NULL, NULL, NULL, &st, err, sizeof(err)), 0);
	assert_int_equal(st.entries, SMALL_ENTRIES);
	assert_int_equal(st.blocks, SMALL_BLOCKS);
	assert_int_equal(st.file_bytes, len);
	/* And a chain grows under restored blocks. */
	assert_int_equal(bank_block(&b, bb, 8, 4, 4), 0);
	assert_int_equal(bank_prefix(&b, bb, longer, 5), 5);
	assert_store_ok(&b);
	bank_free(&b);

	/* Checking only (the fuzzer's entry point) restores nothing and needs no bank. */
	assert_int_equal(lbd_snapshot_load_mem(img, len, NULL, NULL, &st, err, sizeof(err)), 0);
	assert_int_equal(st.entries, SMALL_ENTRIES);
	assert_int_equal(st.blocks, SMALL_BLOCKS);
	free(img);
}

/* Every prefix of img (len bytes) is refused as truncated, in one line, and leaves b as it was. */
static void refuse_every_cut(const uint8_t *img, size_t len, struct bank *b)
{
	char err[512];

	for (size_t cut = 0; cut < len; cut++) {
		/* A heap copy of exactly cut bytes: ASan sees any read past it. */
		uint8_t *part = malloc(cut ? cut : 1);
		assert_non_null(part);
		memcpy(part, img, cut);
		int ret = lbd_snapshot_load_mem(part, cut, &b->m, b->st, NULL, err, sizeof(err));
		free(part);
		if (ret != -EBADMSG || !strstr(err, "truncated"))
			fail_msg("cut at %zu: %d '%s'", cut, ret, err);
		assert_null(strchr(err, '\n'));
	}
	assert_untouched(b);
}

/* img with one bit flipped, each byte in turn (bits 0, 3, 6), is refused and leaves b as it
 * was; img is as it came. */
static void refuse_every_flip(uint8_t *img, size_t len, struct bank *b)
{
	char err[512];

	for (size_t i = 0; i < len; i++) {
		for (int bit = 0; bit < 8; bit += 3) {
			img[i] ^= (uint8_t)(1u << bit);
			int ret = lbd_snapshot_load_mem(img, len, &b->m, b->st, NULL, err, sizeof(err));
			img[i] ^= (uint8_t)(1u << bit);
			if (ret != -EBADMSG && ret != -EPROTO)
				fail_msg("bit %d of byte %zu flipped: %d '%s'", bit, i, ret, err);
		}
	}
	assert_untouched(b);
}

/* Every prefix of the file is refused as truncated, and leaves the bank as it was. */
static void test_every_truncation_is_refused(void **state)
{
	(void)state;
	size_t len;
	struct bank b;
	char err[512];
	uint8_t *img = image_and_bank(&len, &b);

	refuse_every_cut(img, len, &b);
	/* A file cut by something else than us: the same through the file loader. */
	write_file(snap_path, img, len - 100);
	assert_int_equal(lbd_snapshot_load(snap_path, &b.m, b.st, NULL, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "truncated"));
	write_file(snap_path, img, 0);
	assert_int_equal(lbd_snapshot_load(snap_path, &b.m, b.st, NULL, err, sizeof(err)), -EBADMSG);
	end_refused(&b, img);
}

/* One flipped bit anywhere in the file — header, model record, entry record, data, padding,
 * a checksum — is found, and nothing is restored. */
static void test_every_flipped_bit_is_refused(void **state)
{
	(void)state;
	size_t len;
	struct bank b;
	char err[512];
	uint8_t *img = image_and_bank(&len, &b);

	refuse_every_flip(img, len, &b);
	/* And the messages say where. */
	const struct {
		size_t at;
		const char *says;
	} cases[] = {
		{ 0, "not a layerbank snapshot" },
		{ 9, "format version" },
		{ 30, "header checksum mismatch" },
		{ 125, "header checksum mismatch" },
		{ 128 + 70, "model record 0: checksum mismatch" },
		{ 256 + 3, "model record 1: checksum mismatch" },
		{ 384 + 10, "entry 0 (offset 384): record checksum mismatch" },
		{ 384 + 128 + 5, "entry 0 (offset 384): data checksum mismatch" },
		{ 384 + 128 + 100, "entry 0 (offset 384): padding not zero" },
		{ SMALL_BLOCK0 + 40, "entry 14 (offset 3968): record checksum mismatch" },
		{ SMALL_BLOCK0 + 128 + 95, "entry 14 (offset 3968): data checksum mismatch" },
		{ SMALL_BLOCK0 + 128 + 96, "entry 14 (offset 3968): padding not zero" },
		{ len - SMALL_THR - 1, "entry 20 (offset 5504): padding not zero" },
		{ len - SMALL_THR + 40, "model record 0 ('alpha'): threshold block checksum mismatch" },
		{ len - 128 + 72, "model record 1 ('beta'): threshold block padding not zero" },
	};
	for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
		img[cases[k].at] ^= 0x10;
		lbd_snapshot_load_mem(img, len, &b.m, b.st, NULL, err, sizeof(err));
		img[cases[k].at] ^= 0x10;
		if (!strstr(err, cases[k].says))
			fail_msg("byte %zu: '%s' lacks '%s'", cases[k].at, err, cases[k].says);
	}
	end_refused(&b, img);
}

/* The thresholds' controllers (version 5) come back as they were written, and with a drift
 * target set they are the thresholds in force again. */
static void test_thresholds_survive_a_restart(void **state)
{
	(void)state;
	struct bank a, b;
	struct lbd_snapshot_stats st;
	char err[512];
	struct lbd_adapt set[A_LAYERS], got[A_LAYERS];
	double own[A_LAYERS], in_force[A_LAYERS];

	bank_make(&a, 4u << 20, 0, LBD_POLICY_LRU, 0);
	small_fill(&a);
	for (uint32_t l = 0; l < A_LAYERS; l++)
		set[l] = (struct lbd_adapt){ .radius = 3.5 + 7 * l, .reports = 10 + l, .over = l,
					     .drift_sum = 0.125 * (l + 1) };
	assert_int_equal(lbd_store_adapt_set(a.st, model_id(&a, "alpha"), set, A_LAYERS), 0);
	/* A controller out of range is refused, and none of the set is taken. */
	struct lbd_adapt bad[A_LAYERS];
	memcpy(bad, set, sizeof(bad));
	bad[2].over = bad[2].reports + 1;
	assert_int_equal(lbd_store_adapt_set(a.st, model_id(&a, "alpha"), bad, A_LAYERS), -EINVAL);
	assert_int_equal(lbd_snapshot_write(snap_path, &a.m, a.st, NULL, NULL, NULL, &st, err,
					    sizeof(err)), 0);
	bank_free(&a);

	bank_make(&b, 4u << 20, 0, LBD_POLICY_LRU, 0);
	assert_int_equal(lbd_snapshot_load(snap_path, &b.m, b.st, &st, err, sizeof(err)), 0);
	uint32_t id = model_id(&b, "alpha");
	assert_int_equal(lbd_store_layer_taus(b.st, id, NULL, NULL, got, A_LAYERS), A_LAYERS);
	assert_memory_equal(got, set, sizeof(set));
	/* Without a drift target the thresholds are tau's; with one, the controllers'. */
	assert_int_equal(lbd_store_layer_taus(b.st, id, own, in_force, NULL, A_LAYERS), A_LAYERS);
	for (uint32_t l = 0; l < A_LAYERS; l++)
		assert_true(isnan(own[l]) && in_force[l] == 0.98);
	struct lbd_store_cfg cfg;
	lbd_store_get_cfg(b.st, &cfg);
	cfg.drift_target = 0.01;
	lbd_store_configure(b.st, &cfg);
	assert_int_equal(lbd_store_layer_taus(b.st, id, NULL, in_force, NULL, A_LAYERS), A_LAYERS);
	for (uint32_t l = 0; l < A_LAYERS; l++)
		assert_true(in_force[l] == lbp_fp_similarity(3 + 7 * l));
	bank_free(&b);
}

/* Another format version or arena ABI is refused before anything else is believed. */
static void test_foreign_version_and_abi_are_refused(void **state)
{
	(void)state;
	size_t len;
	struct bank b;
	char err[512];
	uint8_t *img = image_and_bank(&len, &b);

	/* Version 1, the format before prefix blocks: refused, not read as this one. */
	put_le(img + 8, 1, 4);
	reseal(img);
	assert_int_equal(lbd_snapshot_load_mem(img, len, &b.m, b.st, NULL, err, sizeof(err)), -EPROTO);
	assert_string_equal(err, "format version 1, this daemon reads versions 2 to 6");
	/* A later version may move its checksum: the version is read first, unsealed or not. */
	put_le(img + 8, 7, 4);
	put_le(img + 120, 0, 8);
	assert_int_equal(lbd_snapshot_load_mem(img, len, &b.m, b.st, NULL, err, sizeof(err)), -EPROTO);
	assert_string_equal(err, "format version 7, this daemon reads versions 2 to 6");
	put_le(img + 8, 6, 4);
	put_le(img + 16, LB_SHM_ABI_VERSION + 1, 4);
	reseal(img);
	assert_int_equal(lbd_snapshot_load_mem(img, len, &b.m, b.st, NULL, err, sizeof(err)), -EPROTO);
	assert_non_null(strstr(err, "arena ABI"));
	end_refused(&b, img);
}

/* A model whose blocks hold fewer layers than it has (a FusedKV model's storage layers): its
 * kv_layers goes through the file (version 6) and its blocks are checked against it. A version
 * 5 reader's view of the same file, blocks of every layer, refuses those blocks. */
static void test_blocks_of_fewer_layers(void **state)
{
	(void)state;
	struct bank a, b;
	struct lbd_snapshot_stats st;
	char err[512];
	size_t len;
	struct lbp_register_model d = desc("fused", 0xf5, 4, 8);
	d.kv = (struct lbp_kv_spec){ .dim = 3, .block_tokens = 2, .layers = 2 };
	const uint32_t chain[] = { 11, 12, 13 };

	bank_make(&a, 4u << 20, 0, LBD_POLICY_LRU, 0);
	uint32_t id = bank_model(&a, &d);
	assert_int_equal(bank_chain(&a, id, chain, 3), 0);
	assert_int_equal(lbd_snapshot_write(snap_path, &a.m, a.st, NULL, NULL, NULL, &st, err,
					    sizeof(err)), 0);
	assert_int_equal(st.blocks, 3);
	bank_free(&a);
	uint8_t *orig = read_file(snap_path, &len), *img = malloc(len);
	assert_non_null(img);
	assert_int_equal(le(orig + 128 + 72, 4), 4);  /* n_layers */
	assert_int_equal(le(orig + 128 + 118, 2), 2); /* kv_layers */
	assert_int_equal(le(orig + 256 + 16, 4), 2);  /* the first block's shape[0] */
	assert_int_equal(le(orig + 256 + 32, 8), 2 * 2 * 2 * 3 * 4);

	bank_make(&b, 4u << 20, 0, LBD_POLICY_LRU, 0);
	assert_int_equal(lbd_snapshot_load_mem(orig, len, &b.m, b.st, &st, err, sizeof(err)), 0);
	assert_int_equal(st.entries, 3);
	assert_int_equal(b.m.desc[model_id(&b, "fused") - 1].kv.layers, 2);
	assert_int_equal(bank_prefix(&b, model_id(&b, "fused"), chain, 3), 3);
	assert_store_ok(&b);
	bank_free(&b);

	const struct {
		uint32_t version, kv_layers;
		const char *says;
	} cases[] = {
		{ 6, 5, "model record 0 ('fused'): kv.layers out of range" }, /* above n_layers */
		{ 6, 0, "model record 0 ('fused'): kv.layers out of range" }, /* with kv_dim */
		{ 5, 0, "entry 0 (offset 256): shape out of range" },          /* read as 4 layers */
	};
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		size_t n = len;
		memcpy(img, orig, len);
		if (cases[c].version < 6) {
			as_version(img, &n, cases[c].version);
		} else {
			put_le(img + 128 + 118, cases[c].kv_layers, 2);
			reseal(img + 128);
		}
		bank_make(&b, 4u << 20, 0, LBD_POLICY_LRU, 0);
		int ret = lbd_snapshot_load_mem(img, n, &b.m, b.st, NULL, err, sizeof(err));
		if (ret != -EBADMSG || strcmp(err, cases[c].says))
			fail_msg("case %zu: %d '%s', not '%s'", c, ret, err, cases[c].says);
		end_refused(&b, NULL);
	}
	free(img);
	free(orig);
}

/* Versions 2 (a 32-bit ndim, no approx) and 3 (a 16-bit ndim, no flags) are read as version 4:
 * their ndim's high bytes are version 4's flags (none: no token ids) and version 3's approx. The
 * small image has no token ids, so without its threshold blocks (version 5) it is what either
 * wrote for the same entries but for the version and, for version 2, approx 0 in every
 * record. */
static void test_versions_2_and_3_are_read(void **state)
{
	(void)state;
	size_t len;
	struct bank b;
	struct lbd_snapshot_stats st;
	char err[512];
	uint8_t *orig = image_and_bank(&len, &b), *img = malloc(len);
	const struct {
		uint32_t version, approx; /* beta's input 7, layer 1: its approx as read back */
	} cases[] = { { 2, 0 }, { 3, 5 } };

	assert_non_null(img);
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		size_t n = len;
		memcpy(img, orig, len);
		as_version(img, &n, 4);
		for (size_t off = 128 + 2 * 128, k = 0; k < SMALL_ENTRIES; k++) {
			uint8_t *e = img + off;
			assert_int_equal(e[13], 0); /* an older writer's 16 or 32-bit ndim */
			if (cases[c].version == 2)
				put_le(e + 14, 0, 2);
			reseal(e);
			off += 128 + ((le(e + 32, 8) + 63) & ~63ull);
		}
		put_le(img + 8, cases[c].version, 4);
		reseal(img);
		assert_int_equal(lbd_snapshot_load_mem(img, n, &b.m, b.st, &st, err, sizeof(err)), 0);
		assert_int_equal(st.entries, SMALL_ENTRIES);
		assert_int_equal(st.entries_skipped, 0);
		assert_store_ok(&b);
		/* Their blocks held every layer. */
		assert_int_equal(b.m.desc[model_id(&b, "beta") - 1].kv.layers, B_LAYERS);
		assert_int_equal(b.m.desc[model_id(&b, "alpha") - 1].kv.layers, 0);
		assert_int_equal(bank_prefix(&b, model_id(&b, "beta"), chain_b, 5), 5);
		struct lbd_leases ls = { 0 };
		struct lb_req r = { .opcode = LB_OP_LOOKUP, .layer = 1,
				    .model_id = model_id(&b, "beta"), .seq_len = B_SEQ };
		struct lb_query q = { .n_thr = 0 };
		struct lb_cpl cpl = { 0 }, rel = { 0 };
		input_keys(7, q.fp, q.exact);
		lbd_store_lookup(b.st, &ls, &r, &q, NULL, &cpl);
		assert_int_equal(cpl.status, 0);
		assert_int_equal(cpl.hamming, cases[c].approx);
		const struct lb_entry_hdr *eh =
			(const struct lb_entry_hdr *)((const uint8_t *)b.arena.hdr + cpl.entry_off);
		assert_int_equal(eh->n_tokens, 0);
		lbd_store_release(b.st, &ls, cpl.lease, &rel);
		lbd_leases_free(&ls);
		bank_free(&b);
		bank_make(&b, 4u << 20, 0, LBD_POLICY_LRU, 0);
		/* Byte 13 was the high byte of their ndim: not 0, an ndim out of range. */
		img[128 + 2 * 128 + 13] = 1;
		reseal(img + 128 + 2 * 128);
		assert_int_equal(lbd_snapshot_load_mem(img, n, &b.m, b.st, NULL, err, sizeof(err)),
				 -EBADMSG);
		assert_string_equal(err, "entry 0 (offset 384): ndim out of range");
		assert_untouched(&b);
	}
	bank_free(&b);
	free(img);
	free(orig);
}

/* Files whose checksums hold but whose content a daemon never writes: refused as a whole. */
static void test_sealed_but_inconsistent_files_are_refused(void **state)
{
	(void)state;
	size_t len;
	struct bank b;
	char err[512];
	const size_t m0 = 128, m1 = 256, e0 = 384, e1 = 384 + 256;
	/* Block records in insertion order: blocks 1, 2, 3, 4, then 5, 6, 7 (chain_a, chain_b). */
	const size_t b1 = SMALL_BLOCK0, b2 = b1 + 256, b3 = b1 + 512;
	const size_t b5 = b1 + 1024, b6 = b1 + 1280;
	uint64_t key[2];
	uint8_t *orig = image_and_bank(&len, &b);
	uint8_t *img = malloc(len + 64);

	assert_non_null(img);
#define MUTATE(what, code)                                                                  \
	do {                                                                                \
		memcpy(img, orig, len);                                                     \
		size_t n_ = len;                                                            \
		code;                                                                       \
		int ret_ = lbd_snapshot_load_mem(img, n_, &b.m, b.st, NULL, err, sizeof(err)); \
		if (ret_ != -EBADMSG || !strstr(err, what))                                 \
			fail_msg("%s: %d '%s'", what, ret_, err);                           \
		assert_untouched(&b);                                                       \
	} while (0)

	MUTATE("both 'alpha'", { memcpy(img + m1, "alpha", 6); reseal(img + m1); });
	MUTATE("name not 1..63", { memset(img + m0, 0, 64); reseal(img + m0); });
	MUTATE("name not 1..63", { img[m0 + 40] = 'x'; reseal(img + m0); });
	MUTATE("n_layers out of range", { put_le(img + m0 + 72, 0, 4); reseal(img + m0); });
	MUTATE("n_layers out of range", { put_le(img + m0 + 72, 1025, 4); reseal(img + m0); });
	MUTATE("fp.bits out of range", { put_le(img + m0 + 92, 128, 4); reseal(img + m0); });
	MUTATE("kv.dim out of range", { put_le(img + m1 + 112, 65537, 4); reseal(img + m1); });
	MUTATE("kv.block_tokens out of range", { put_le(img + m1 + 116, 1025, 4);
						 reseal(img + m1); });
	/* kv_dim without block_tokens: both 0, or both at least 1. */
	MUTATE("('alpha'): kv.block_tokens out of range", { img[m0 + 112] = 5; reseal(img + m0); });
	MUTATE("entries, the file has", { put_le(img + m0 + 104, 11, 8); reseal(img + m0); });
	MUTATE("model index out of range", { put_le(img + e0, 2, 4); reseal(img + e0); });
	MUTATE("layer out of range", { put_le(img + e0 + 4, A_LAYERS, 2); reseal(img + e0); });
	MUTATE("seq_len out of range", { put_le(img + e0 + 8, 257, 4); reseal(img + e0); });
	MUTATE("dtype out of range", { put_le(img + e0 + 6, 4, 2); reseal(img + e0); });
	MUTATE("shape out of range", { put_le(img + e0 + 24, 1, 4); reseal(img + e0); });
	MUTATE("bytes (not the shape's)", { put_le(img + e0 + 20, A_HIDDEN + 1, 4); reseal(img + e0); });
	MUTATE("score out of range", { put_le(img + e0 + 112, 0xfff8000000000000ull, 8); reseal(img + e0); });
	MUTATE("approx out of range", { put_le(img + e0 + 14, LB_FP_BITS + 1, 2); reseal(img + e0); });
	/* Flags: bit 0 (token ids follow) is the only one. */
	MUTATE("entry 0 (offset 384): flags (unknown bits) out of range", { img[e0 + 13] = 2;
									     reseal(img + e0); });
	MUTATE("entry 0 (offset 384): flags (unknown bits) out of range", { img[e0 + 13] = 0x81;
									     reseal(img + e0); });
	/* A block record against its model: a model with blocks, the geometry, the place in the
	 * chain, the key, the parent, the zero bytes. */
	MUTATE("entry 14 (offset 3968): layer out of range", { put_le(img + b1, 0, 4);
							       reseal(img + b1); });
	MUTATE("dtype out of range", { put_le(img + b1 + 6, LBP_DTYPE_F16, 2); reseal(img + b1); });
	MUTATE("ndim out of range", { put_le(img + b1 + 12, 3, 2); reseal(img + b1); });
	MUTATE("approx out of range", { put_le(img + b1 + 14, 1, 2); reseal(img + b1); }); /* blocks are exact */
	/* A block never carries token ids. */
	MUTATE("entry 14 (offset 3968): flags (token ids on a prefix block) out of range", {
		img[b1 + 13] = 1;
		reseal(img + b1);
	});
	MUTATE("shape out of range", { put_le(img + b1 + 28, B_KV + 1, 4); reseal(img + b1); });
	MUTATE("index out of range", { put_le(img + b2 + 56, 128, 4); reseal(img + b2); });
	/* Within max_seq, but past the blocks a LOOKUP_PREFIX can name. */
	MUTATE("index out of range", {
		put_le(img + m1 + 84, 4096, 4); /* max_seq */
		reseal(img + m1);
		put_le(img + b2 + 56, LB_PREFIX_MAX_BLOCKS, 4);
		put_le(img + b2 + 8, (LB_PREFIX_MAX_BLOCKS + 1) * B_TOKENS, 4);
		reseal(img + b2);
	});
	MUTATE("seq_len out of range", { put_le(img + b2 + 8, 2 * B_TOKENS + 1, 4);
					 reseal(img + b2); });
	MUTATE("key out of range", { memset(img + b1 + 72, 0, 16); reseal(img + b1); });
	MUTATE("parent out of range", { img[b1 + 40] = 1; reseal(img + b1); });
	MUTATE("parent out of range", { memset(img + b2 + 40, 0, 16); reseal(img + b2); });
	MUTATE("reserved out of range", { img[b1 + 65] = 1; reseal(img + b1); });
	/* Chains: a parent that is not in the file, one that is not one place up, a key twice. */
	MUTATE("entry at offset 4992: block 2 without its parent in the file (a hole)", {
		block_key(9, key);
		put_le(img + b5 + 40, key[0], 8);
		put_le(img + b5 + 48, key[1], 8);
		reseal(img + b5);
	});
	MUTATE("entry at offset 4480: block 2 under block 0 (offset 3968), not one place up", {
		block_key(1, key);
		put_le(img + b3 + 40, key[0], 8);
		put_le(img + b3 + 48, key[1], 8);
		reseal(img + b3);
	});
	MUTATE("entries at offsets 4992 and 5248: the same block twice", {
		block_key(5, key);
		put_le(img + b6 + 72, key[0], 8);
		put_le(img + b6 + 80, key[1], 8);
		reseal(img + b6);
	});
	/* The second entry claims the first one's layer of the same input. */
	MUTATE("the same input and layer twice", {
		put_le(img + e1 + 4, le(img + e0 + 4, 2), 2);
		reseal(img + e1);
	});
	/* Or its input with another fingerprint. */
	MUTATE("two lengths or fingerprints", {
		img[e1 + 40] ^= 1;
		reseal(img + e1);
	});
	MUTATE("data bytes, the header says", { put_le(img + 32, 1, 8); reseal(img); });
	MUTATE("entries do not fit", { put_le(img + 24, UINT64_MAX / 2, 8); reseal(img); });
	MUTATE("models, at most 256", { put_le(img + 20, 257, 4); reseal(img); });
	MUTATE("bytes past the end", { memset(img + len, 0, 64); n_ = len + 64; });
	MUTATE("bytes after the last entry", { /* before the threshold blocks */
		memmove(img + len - SMALL_THR + 64, img + len - SMALL_THR, SMALL_THR);
		memset(img + len - SMALL_THR, 0, 64);
		n_ = len + 64;
		put_le(img + 40, n_, 8);
		reseal(img);
	});
	MUTATE("bytes of thresholds, the models' layers take", {
		put_le(img + 80, SMALL_THR - 64, 8);
		reseal(img);
	});
	MUTATE("thresholds and 21 entries do not fit", { put_le(img + 80, len, 8); reseal(img); });
	MUTATE("model record 1 ('beta'): layer 1's threshold controller out of range", {
		uint8_t *t = img + len - 128 + 32; /* beta's layer 1 */
		double r = 65;
		memcpy(t, &r, 8);
		put_le(img + len - 128 + 64, XXH3_64bits(img + len - 128, 64), 8);
	});
	MUTATE("record sizes", { put_le(img + 76, 64, 4); reseal(img); });
#undef MUTATE
	bank_free(&b);
	free(img);
	free(orig);
}

/* Restored into a smaller budget, the most recently used entries are the ones kept. */
static void test_over_budget_keeps_the_most_valuable(void **state)
{
	(void)state;
	struct bank a, b;
	struct lbd_snapshot_stats st;
	struct lbp_register_model d = desc("m", 1, 1, 256);
	char err[512];
	const uint32_t seq = 4, need = 128 + 4 * 256 * 4; /* 4224 bytes an entry */

	bank_make(&a, 4u << 20, 0, LBD_POLICY_LRU, 0);
	uint32_t id = bank_model(&a, &d);
	for (uint32_t in = 0; in < 8; in++)
		assert_int_equal(bank_insert(&a, id, in, 0, seq, 256), 0);
	/* Inputs 4..7 are hit afterwards, in reverse: the most recent is 4. */
	for (uint32_t in = 8; in-- > 4;) {
		struct timespec ts = { 0, 2000000 };
		nanosleep(&ts, NULL);
		assert_int_equal(bank_check(&a, id, in, 0, seq, 256), 0);
	}
	assert_int_equal(lbd_snapshot_write(snap_path, &a.m, a.st, NULL, NULL, NULL, &st, err, sizeof(err)), 0);
	bank_free(&a);

	bank_make(&b, 4u << 20, 4 * need + need / 2, LBD_POLICY_LRU, 0);
	assert_int_equal(lbd_snapshot_load(snap_path, &b.m, b.st, &st, err, sizeof(err)), 0);
	assert_store_ok(&b);
	assert_int_equal(st.entries, 4);
	assert_int_equal(st.entries_skipped, 4);
	struct lbp_stats_reply r = bank_stats(&b);
	assert_true(r.bytes_used <= r.bytes_budget);
	assert_int_equal(r.entries, 4);
	id = model_id(&b, "m");
	for (uint32_t in = 0; in < 8; in++)
		assert_int_equal(bank_check(&b, id, in, 0, seq, 256), in >= 4 ? 0 : -ENOENT);
	/* Restored entries are ordinary ones to the policy: new inserts evict them. */
	for (uint32_t in = 100; in < 104; in++)
		assert_int_equal(bank_insert(&b, id, in, 0, seq, 256), 0);
	r = bank_stats(&b);
	assert_int_equal(r.entries, 4);
	assert_int_equal(r.evictions, 4);
	assert_int_equal(r.bytes_used, 4 * need);
	for (uint32_t in = 100; in < 104; in++)
		assert_int_equal(bank_check(&b, id, in, 0, seq, 256), 0);
	bank_free(&b);

	/* Under ttl, entries older than the ttl would expire at once: they are left out. */
	bank_make(&b, 4u << 20, 0, LBD_POLICY_TTL, 1000000 /* 1 ms */);
	assert_int_equal(lbd_snapshot_load(snap_path, &b.m, b.st, &st, err, sizeof(err)), 0);
	assert_store_ok(&b);
	assert_int_equal(st.entries, 0);
	assert_int_equal(st.entries_skipped, 8);
	bank_free(&b);
}

/* A file whose chain has a hole (block 2 of the shared prefix taken out, every count and
 * checksum made to agree) is refused as a whole: nothing of it is restored. */
static void test_file_with_a_hole_is_refused(void **state)
{
	(void)state;
	size_t len;
	struct bank b;
	char err[512];
	uint8_t *img = image_and_bank(&len, &b);
	const size_t b2 = SMALL_BLOCK0 + 256, n = len - 256;
	uint8_t *cut = malloc(n);

	assert_non_null(cut);
	memcpy(cut, img, b2);
	memcpy(cut + b2, img + b2 + 256, len - b2 - 256);
	put_le(cut + 24, SMALL_ENTRIES - 1, 8);
	put_le(cut + 32, SMALL_DATA - B_BLOCK, 8);
	put_le(cut + 40, n, 8);
	reseal(cut);
	put_le(cut + 256 + 104, 2 + SMALL_BLOCKS - 1, 8);
	reseal(cut + 256);
	/* Blocks 3 (chain a) and 5 (chain b) lost their parent: the first in the file is named. */
	int ret = lbd_snapshot_load_mem(cut, n, &b.m, b.st, NULL, err, sizeof(err));
	assert_int_equal(ret, -EBADMSG);
	assert_string_equal(err, "entry at offset 4224: block 2 without its parent in the file"
				 " (a hole)");
	write_file(snap_path, cut, n);
	ret = lbd_snapshot_load(snap_path, &b.m, b.st, NULL, err, sizeof(err));
	assert_int_equal(ret, -EBADMSG);
	assert_non_null(strstr(err, "a hole"));
	/* The whole chain from there on gone too: a prefix, and accepted. */
	size_t m = SMALL_BLOCK0 + 256;
	memcpy(cut, img, m);
	memcpy(cut + m, img + len - SMALL_THR, SMALL_THR);
	m += SMALL_THR;
	put_le(cut + 24, SMALL_LAYER_ENTRIES + 1, 8);
	put_le(cut + 32, SMALL_DATA - (SMALL_BLOCKS - 1) * B_BLOCK, 8);
	put_le(cut + 40, m, 8);
	reseal(cut);
	put_le(cut + 256 + 104, 3, 8);
	reseal(cut + 256);
	assert_int_equal(lbd_snapshot_load_mem(cut, m, &b.m, b.st, NULL, err, sizeof(err)), 0);
	assert_int_equal(bank_stats(&b).blocks, 1);
	assert_store_ok(&b);
	free(cut);
	bank_free(&b);
	free(img);
}

/* Blocks under a budget that holds part of them: what is kept is whole prefixes (a block only
 * with its parent), the most valuable first; a parent that a file says is worth less than its
 * child still goes back first. */
#define K_LAYERS 2
#define K_KV 64
#define K_TOKENS 4
#define K_NEED (128 + K_LAYERS * 2 * K_TOKENS * K_KV * 4) /* 4224 bytes a block */

static void test_over_budget_keeps_whole_prefixes(void **state)
{
	(void)state;
	struct bank a, b;
	struct lbd_snapshot_stats st;
	struct lbp_register_model d = desc("k", 1, K_LAYERS, 16);
	char err[512];
	/* Chain x, then chain y sharing its first two blocks, hit afterwards: y is the recent
	 * one. */
	const uint32_t x[] = { 100, 101, 102, 103, 104, 105, 106, 107 };
	const uint32_t y[] = { 100, 101, 200, 201, 202, 203, 204, 205 };
	const struct timespec nap = { 0, 2000000 };
	const enum lbd_policy pol[] = { LBD_POLICY_LRU, LBD_POLICY_DECAY };

	d.kv = (struct lbp_kv_spec){ .dim = K_KV, .block_tokens = K_TOKENS, .layers = K_LAYERS };
	bank_make(&a, 4u << 20, 0, LBD_POLICY_LRU, 0);
	uint32_t id = bank_model(&a, &d);
	assert_int_equal(bank_chain(&a, id, x, 8), 0);
	assert_int_equal(bank_chain(&a, id, y, 8), 0);
	nanosleep(&nap, NULL);
	assert_int_equal(bank_prefix(&a, id, y, 8), 8);
	assert_int_equal(lbd_snapshot_write(snap_path, &a.m, a.st, NULL, NULL, NULL, &st, err,
					    sizeof(err)), 0);
	assert_int_equal(st.blocks, 14);
	bank_free(&a);

	/* Room for 8 blocks and a half: y whole; for 5 and a half: y's first 5; for 1: block 0. */
	const struct {
		uint32_t room, y, x; /* blocks the budget holds; of chain y, of x found after */
	} cases[] = { { 8, 8, 2 }, { 5, 5, 2 }, { 1, 1, 1 } };
	for (size_t p = 0; p < 2; p++) {
		for (size_t c = 0; c < 3; c++) {
			bank_make(&b, 4u << 20, cases[c].room * K_NEED + K_NEED / 2, pol[p], 0);
			assert_int_equal(lbd_snapshot_load(snap_path, &b.m, b.st, &st, err,
							   sizeof(err)), 0);
			assert_int_equal(st.entries, cases[c].room);
			assert_int_equal(st.entries_skipped, 14 - cases[c].room);
			assert_store_ok(&b);
			id = model_id(&b, "k");
			assert_int_equal(bank_prefix(&b, id, y, 8), cases[c].y);
			assert_int_equal(bank_prefix(&b, id, x, 8), cases[c].x);
			bank_free(&b);
		}
	}

	/* A file that says x's last block is the most valuable of all (not what a daemon writes:
	 * its parents would say so too): x's chain goes back first, from block 0. */
	size_t len;
	uint8_t *img = read_file(snap_path, &len);
	uint64_t key[2];
	block_key(107, key);
	for (size_t off = 256; off < len; off += 128 + ((le(img + off + 32, 8) + 63) & ~63ull))
		if (le(img + off + 72, 8) == key[0] && le(img + off + 80, 8) == key[1]) {
			double big = 1e6;
			uint64_t bits;
			memcpy(&bits, &big, 8);
			put_le(img + off + 112, bits, 8);
			reseal(img + off);
		}
	bank_make(&b, 4u << 20, 3 * K_NEED + K_NEED / 2, LBD_POLICY_DECAY, 0);
	assert_int_equal(lbd_snapshot_load_mem(img, len, &b.m, b.st, &st, err, sizeof(err)), 0);
	assert_int_equal(st.entries, 3);
	assert_store_ok(&b);
	id = model_id(&b, "k");
	assert_int_equal(bank_prefix(&b, id, x, 8), 3);
	assert_int_equal(bank_prefix(&b, id, y, 8), 2);
	bank_free(&b);
	free(img);

	/* Under ttl, blocks older than the ttl are left out, and so is what is under them. */
	bank_make(&b, 4u << 20, 0, LBD_POLICY_TTL, 1000000 /* 1 ms */);
	assert_int_equal(lbd_snapshot_load(snap_path, &b.m, b.st, &st, err, sizeof(err)), 0);
	assert_store_ok(&b);
	assert_int_equal(st.entries, 0);
	assert_int_equal(st.entries_skipped, 14);
	bank_free(&b);
}

/* A snapshot's model that the first client registers with other weights is retired, with its
 * entries; one registered the same is confirmed and keeps them. */
static void test_model_registered_differently_is_retired(void **state)
{
	(void)state;
	size_t len;
	struct bank b;
	char err[512], why[256];
	const char *field;
	uint32_t id;
	uint8_t *img = image_and_bank(&len, &b);

	assert_int_equal(lbd_snapshot_load_mem(img, len, &b.m, b.st, NULL, err, sizeof(err)), 0);
	assert_store_ok(&b);
	uint32_t a = model_id(&b, "alpha"), bb = model_id(&b, "beta");

	struct lbp_register_model same = beta_desc();
	assert_int_equal(lbd_models_settle(&b.m, &same, why, sizeof(why)), 0);
	assert_int_equal(lbd_models_register(&b.m, &same, &id, &field, why, sizeof(why)), 0);
	assert_int_equal(id, bb);
	assert_int_equal(b.m.provisional[bb - 1], 0);

	struct lbp_register_model other = desc("alpha", 0xa2, A_LAYERS, A_HIDDEN);
	assert_int_equal(lbd_models_settle(&b.m, &other, why, sizeof(why)), a);
	assert_string_equal(why, "model 'alpha' was restored from the snapshot with weights_hash 0xa1, not 0xa2");
	assert_int_equal(lbd_store_drop_model(b.st, a), 12);
	/* The retired id answers as no model's. */
	assert_int_equal(bank_check(&b, a, 0, 0, A_SEQ, A_HIDDEN), -ESRCH);
	assert_int_equal(bank_insert(&b, a, 50, 0, A_SEQ, A_HIDDEN), -ESRCH);
	struct lbp_model_stats_reply ms;
	assert_int_equal(lbd_store_model_stats(b.st, a, 0, &ms), -ENOENT);
	assert_int_equal(lbd_store_drop_model(b.st, a), -ENOENT);
	assert_int_equal(lbd_models_register(&b.m, &other, &id, &field, why, sizeof(why)), 1);
	assert_true(id != a);
	assert_int_equal(bank_stats(&b).entries, 2);
	assert_int_equal(bank_stats(&b).blocks, SMALL_BLOCKS);
	assert_int_equal(bank_check(&b, bb, 7, 1, B_SEQ, B_HIDDEN), 0);
	assert_int_equal(bank_prefix(&b, bb, chain_b, 5), 5);
	/* The retired description is gone for good; the new one is the registration now. */
	struct lbp_register_model old = desc("alpha", 0xa1, A_LAYERS, A_HIDDEN);
	assert_int_equal(lbd_models_settle(&b.m, &old, why, sizeof(why)), 0);
	assert_int_equal(lbd_models_register(&b.m, &old, &id, &field, why, sizeof(why)), -EEXIST);
	/* A confirmed model is not retired by a later, different registration. */
	struct lbp_register_model beta2 = beta_desc();
	beta2.weights_hash = 0xb3;
	assert_int_equal(lbd_models_settle(&b.m, &beta2, why, sizeof(why)), 0);
	assert_int_equal(lbd_models_register(&b.m, &beta2, &id, &field, why, sizeof(why)), -EEXIST);

	/* And the registry, loaded again with alpha taken by other weights, skips alpha only. */
	bank_free(&b);
	bank_make(&b, 4u << 20, 0, LBD_POLICY_LRU, 0);
	bank_model(&b, &other);
	struct lbd_snapshot_stats st;
	assert_int_equal(lbd_snapshot_load_mem(img, len, &b.m, b.st, &st, err, sizeof(err)), 0);
	assert_store_ok(&b);
	assert_int_equal(st.models_skipped, 1);
	assert_int_equal(st.entries, 2 + SMALL_BLOCKS);
	assert_int_equal(st.blocks, SMALL_BLOCKS);
	assert_int_equal(st.entries_skipped, 12);
	bank_free(&b);

	/* Or with beta taken by another block geometry: beta's entries and blocks are skipped. */
	bank_make(&b, 4u << 20, 0, LBD_POLICY_LRU, 0);
	struct lbp_register_model narrow = beta_desc();
	narrow.kv.block_tokens = 4;
	bank_model(&b, &narrow);
	assert_int_equal(lbd_snapshot_load_mem(img, len, &b.m, b.st, &st, err, sizeof(err)), 0);
	assert_int_equal(st.models_skipped, 1);
	assert_int_equal(st.entries, 12);
	assert_int_equal(st.blocks, 0);
	assert_int_equal(st.entries_skipped, 2 + SMALL_BLOCKS);
	assert_store_ok(&b);
	bank_free(&b);
	free(img);
}

/* A write that fails leaves the old file as it was, and no .tmp behind. */
static void test_failed_write_keeps_the_old_file(void **state)
{
	(void)state;
	size_t len, len2;
	struct bank b;
	char err[600], tmp[320], bad[320];
	uint8_t *img = image_and_bank(&len, &b);

	bank_model(&b, &(struct lbp_register_model){ 0 }); /* an unnamed model: never written */
	snprintf(tmp, sizeof(tmp), "%s.tmp", snap_path);
	/* A folder where the writer's temporary file goes: it cannot be replaced. */
	assert_int_equal(mkdir(tmp, 0700), 0);
	int ret = lbd_snapshot_write(snap_path, &b.m, b.st, NULL, NULL, NULL, NULL, err, sizeof(err));
	assert_true(ret < 0);
	assert_non_null(strstr(err, snap_path));
	assert_null(strchr(err, '\n'));
	uint8_t *now = read_file(snap_path, &len2);
	assert_int_equal(len2, len);
	assert_memory_equal(now, img, len);
	free(now);
	rmdir(tmp);
	/* No such folder: the error names the file and the reason. */
	snprintf(bad, sizeof(bad), "%s/no/such/dir/x.snap", env.dir);
	assert_int_equal(lbd_snapshot_write(bad, &b.m, b.st, NULL, NULL, NULL, NULL, err, sizeof(err)), -ENOENT);
	assert_non_null(strstr(err, "No such file"));
	assert_int_equal(bank_stats(&b).leases, 0);
	bank_free(&b);
	free(img);
}

/* ---- entries with their input's token ids (LB_REQ_ANY_LEN): one model in f16, input 1 with
 * ids at both layers, input 2 without, at layer 0 ---- */

#define T_LAYERS 2
#define T_HIDDEN 3
#define T_SEQ 5                        /* 30 data bytes (f16): ids at 32, 2 bytes of padding */
#define T_DATA (T_SEQ * T_HIDDEN * 2)
#define T_BODY (32 + 4 * T_SEQ)       /* 52: data, padding to 4, ids; then 12 bytes to 64 */
#define T_LEN (128 + 128 + 3 * (128 + 64) + 128) /* and a threshold block of 2 layers */
#define T_REC0 256                     /* input 1, layer 0: the first record */

/* Input n's token ids (large ones, so that their byte order shows) and their hash. */
static void t_tokens(uint32_t input, uint32_t seq_len, int32_t *tok, uint64_t exact[2])
{
	for (uint32_t i = 0; i < seq_len; i++)
		tok[i] = (int32_t)(0x01020304u * input + 0x100u * i);
	lbp_token_hash(tok, seq_len, exact);
}

/* Insert input's layer, its ids after its data when with_ids. @return the insert's status. */
static int t_insert(struct bank *b, uint32_t model, uint32_t input, uint32_t layer, bool with_ids)
{
	uint8_t payload[T_BODY];
	int32_t tok[T_SEQ];
	uint64_t body = with_ids ? T_BODY : T_DATA;
	struct lb_req r = { .opcode = LB_OP_INSERT, .layer = (uint16_t)layer, .model_id = model,
			    .seq_len = T_SEQ, .payload_len = (uint32_t)(LB_INSERT_HDR_SIZE + body) };
	struct lb_insert_hdr h = { .dtype = LBP_DTYPE_F16, .ndim = 2, .shape = { T_SEQ, T_HIDDEN },
				   .bytes = T_DATA, .n_tokens = with_ids ? T_SEQ : 0 };
	struct lb_cpl cpl = { 0 };
	uint64_t exact[2];

	memset(payload, 0, sizeof(payload));
	fill_data(payload, T_DATA, input, layer);
	t_tokens(input, T_SEQ, tok, exact);
	memcpy(payload + lb_tokens_off(T_DATA), tok, sizeof(tok));
	input_keys(input, h.fp, h.exact);
	memcpy(h.exact, exact, sizeof(h.exact));
	lbd_store_insert(b->st, LBD_INSERTER_DAEMON, &r, &h, payload, &cpl);
	return cpl.status;
}

/* LOOKUP of input's layer at seq_len with flags; on a hit, the entry found is input's (its data)
 * and carries its ids exactly when with_ids. @return the lookup's status. */
static int t_lookup(struct bank *b, uint32_t model, uint32_t input, uint32_t layer,
		    uint32_t seq_len, uint8_t flags, bool with_ids)
{
	struct lbd_leases ls = { 0 };
	struct lb_req r = { .opcode = LB_OP_LOOKUP, .flags = flags, .layer = (uint16_t)layer,
			    .model_id = model, .seq_len = seq_len };
	struct lb_query q = { .n_thr = 0 };
	struct lb_cpl cpl = { 0 }, rel = { 0 };
	int32_t tok[T_SEQ + 2];
	uint8_t want[T_DATA];

	input_keys(input, q.fp, q.exact);
	t_tokens(input, seq_len, tok, q.exact); /* another length: other tokens, another hash */
	lbd_store_lookup(b->st, &ls, &r, &q, NULL, &cpl);
	if (cpl.status == 0) {
		const uint8_t *base = (const uint8_t *)b->arena.hdr + cpl.entry_off;
		const struct lb_entry_hdr *eh = (const struct lb_entry_hdr *)base;
		fill_data(want, T_DATA, input, layer);
		t_tokens(input, T_SEQ, tok, q.exact);
		assert_int_equal(eh->seq_len, T_SEQ);
		assert_true(eh->bytes == T_DATA);
		assert_true(eh->key[0] == q.exact[0] && eh->key[1] == q.exact[1]);
		assert_memory_equal(base + LB_ENTRY_HDR_SIZE, want, T_DATA);
		assert_int_equal(eh->n_tokens, with_ids ? T_SEQ : 0);
		if (with_ids)
			assert_memory_equal(base + LB_ENTRY_HDR_SIZE + lb_tokens_off(T_DATA), tok,
					    sizeof(int32_t) * T_SEQ);
		lbd_store_release(b->st, &ls, cpl.lease, &rel);
		assert_int_equal(rel.status, 0);
	}
	lbd_leases_free(&ls);
	return cpl.status;
}

/* Write the image of the three entries to path, with the writer's stats checked. @return it. */
static uint8_t *t_image(const char *path, struct bank *b, size_t *len)
{
	struct lbd_snapshot_stats st;
	char err[512];

	assert_int_equal(lbd_snapshot_write(path, &b->m, b->st, NULL, NULL, NULL, &st, err,
					    sizeof(err)), 0);
	assert_int_equal(st.entries, 3);
	assert_int_equal(st.data_bytes, 2 * T_BODY + T_DATA);
	assert_int_equal(st.file_bytes, T_LEN);
	uint8_t *img = read_file(path, len);
	assert_int_equal(*len, T_LEN);
	return img;
}

/* An entry's token ids go into the file after its data (record flag 1, PROTOCOL.md "Snapshot
 * file" 4) and come back with it: in its header and after its data, and a lookup of another
 * length with LB_REQ_ANY_LEN finds it, as before the restart; an entry without them stays
 * without. */
static void test_token_ids_round_trip(void **state)
{
	(void)state;
	struct bank a, b;
	struct lbd_snapshot_stats st;
	struct lbp_register_model d = desc("t", 0x70, T_LAYERS, T_HIDDEN);
	char err[512];
	size_t len;
	int32_t tok[T_SEQ];
	uint64_t exact[2];

	d.dtype = LBP_DTYPE_F16;
	bank_make(&a, 4u << 20, 0, LBD_POLICY_LRU, 0);
	uint32_t id = bank_model(&a, &d);
	assert_int_equal(t_insert(&a, id, 1, 0, true), 0);
	assert_int_equal(t_insert(&a, id, 1, 1, true), 0);
	assert_int_equal(t_insert(&a, id, 2, 0, false), 0);
	assert_int_equal(t_lookup(&a, id, 1, 1, T_SEQ + 2, LB_REQ_ANY_LEN, true), 0);
	uint8_t *img = t_image(snap_path, &a, &len);
	bank_free(&a);

	/* The file: each record's flags, then its data, zeros to 4, the ids as the arena held
	 * them, zeros to 64. */
	t_tokens(1, T_SEQ, tok, exact);
	for (size_t off = T_REC0; off < len - 128; off += 128 + 64) { /* the thresholds last */
		const uint8_t *e = img + off;
		bool ids = le(e + 72, 8) == exact[0] && le(e + 80, 8) == exact[1];
		uint8_t want[T_DATA];
		assert_int_equal(e[12], 2);
		assert_int_equal(e[13], ids ? 1 : 0);
		assert_int_equal(le(e + 32, 8), T_DATA);
		fill_data(want, T_DATA, ids ? 1 : 2, (uint32_t)le(e + 4, 2));
		assert_memory_equal(e + 128, want, T_DATA);
		if (ids) {
			assert_true(e[128 + T_DATA] == 0 && e[128 + T_DATA + 1] == 0);
			assert_memory_equal(e + 128 + 32, tok, sizeof(tok));
		}
		for (size_t i = ids ? T_BODY : T_DATA; i < 64; i++)
			assert_int_equal(e[128 + i], 0);
	}
	assert_int_equal(le(img + 32, 8), 2 * T_BODY + T_DATA); /* data_bytes: ids included */

	bank_make(&b, 4u << 20, 0, LBD_POLICY_LRU, 0);
	assert_int_equal(lbd_snapshot_load(snap_path, &b.m, b.st, &st, err, sizeof(err)), 0);
	assert_int_equal(st.entries, 3);
	assert_int_equal(st.data_bytes, 2 * T_BODY + T_DATA);
	assert_store_ok(&b);
	assert_int_equal(bank_stats(&b).bytes_used, 3 * 192); /* 128 + 52 or 30, to 64 */
	id = model_id(&b, "t");
	assert_int_equal(t_lookup(&b, id, 1, 0, T_SEQ, 0, true), 0);
	assert_int_equal(t_lookup(&b, id, 1, 1, T_SEQ, 0, true), 0);
	assert_int_equal(t_lookup(&b, id, 2, 0, T_SEQ, 0, false), 0);
	/* Another length: with LB_REQ_ANY_LEN, only the entries with ids answer. */
	assert_int_equal(t_lookup(&b, id, 1, 1, T_SEQ + 2, LB_REQ_ANY_LEN, true), 0);
	assert_int_equal(t_lookup(&b, id, 1, 0, T_SEQ - 1, LB_REQ_ANY_LEN, true), 0);
	assert_int_equal(t_lookup(&b, id, 1, 1, T_SEQ + 2, 0, true), -ENOENT);
	assert_int_equal(t_lookup(&b, id, 2, 0, T_SEQ + 2, LB_REQ_ANY_LEN, false), -ENOENT);
	/* Written again from the restored entries: the same records (in another order, their
	 * value's) but for their times, the same data sections. */
	char again[320];
	size_t len2;
	snprintf(again, sizeof(again), "%s/again.snap", env.dir);
	uint8_t *img2 = t_image(again, &b, &len2);
	for (size_t off2 = T_REC0; off2 < len2 - 128; off2 += 128 + 64) {
		size_t off = T_REC0;
		while (off < len - 128 && memcmp(img + off + 72, img2 + off2 + 72, 16) != 0) /* exact */
			off += 128 + 64;
		while (off < len - 128 && le(img + off + 4, 2) != le(img2 + off2 + 4, 2)) /* layer */
			off += 128 + 64;
		assert_true(off < len - 128);
		assert_memory_equal(img2 + off2, img + off, 96); /* up to idle_ns */
		assert_memory_equal(img2 + off2 + 128, img + off + 128, 64);
	}
	free(img2);
	bank_free(&b);
	free(img);
}

/* A file whose token ids are not the entry's input's, or not where the format puts them, is
 * refused as a whole; so is every truncation and every flipped bit of a file with ids. */
static void test_bad_token_ids_are_refused(void **state)
{
	(void)state;
	struct bank a, b;
	struct lbp_register_model d = desc("t", 0x70, T_LAYERS, T_HIDDEN);
	char err[512];
	size_t len;
	const size_t e0 = T_REC0, ids = T_REC0 + 128 + 32;

	d.dtype = LBP_DTYPE_F16;
	bank_make(&a, 4u << 20, 0, LBD_POLICY_LRU, 0);
	uint32_t id = bank_model(&a, &d);
	assert_int_equal(t_insert(&a, id, 1, 0, true), 0);
	assert_int_equal(t_insert(&a, id, 1, 1, true), 0);
	assert_int_equal(t_insert(&a, id, 2, 0, false), 0);
	uint8_t *orig = t_image(snap_path, &a, &len), *img = malloc(len);
	bank_free(&a);
	assert_non_null(img);
	bank_make(&b, 4u << 20, 0, LBD_POLICY_LRU, 0);
	assert_true(le(orig + e0 + 72, 8) != 0 && orig[e0 + 13] == 1); /* input 1's, with ids */

	const struct {
		size_t at;     /* byte to change */
		uint8_t flip;  /* its bits to flip */
		bool seal;     /* reseal its record (the header always) */
		uint32_t version;
		const char *says;
	} cases[] = {
		{ ids + 5, 0x77, false, 5, "entry 0 (offset 256): token ids that do not hash to its"
					   " exact key" },
		{ ids + 4 * T_SEQ - 1, 0x80, false, 5, "token ids that do not hash" },
		{ e0 + 72, 0x5a, true, 5, "entry 0 (offset 256): token ids that do not hash" },
		{ ids - 1, 1, false, 5, "entry 0 (offset 256): padding before its token ids not zero" },
		{ ids + 4 * T_SEQ, 1, false, 5, "entry 0 (offset 256): padding not zero" },
		/* Version 3 had no flags: its byte 13 was ndim's high byte. */
		{ e0 + 13, 0, true, 3, "entry 0 (offset 256): ndim out of range" },
		/* Flags and layout disagree: without the flag, the ids are padding. */
		{ e0 + 13, 1, true, 5, "entry 0 (offset 256): padding not zero" },
	};
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		size_t n = len;
		memcpy(img, orig, len);
		img[cases[c].at] ^= cases[c].flip;
		as_version(img, &n, cases[c].version);
		if (cases[c].seal)
			reseal(img + e0);
		reseal(img);
		int ret = lbd_snapshot_load_mem(img, n, &b.m, b.st, NULL, err, sizeof(err));
		if (ret != -EBADMSG || !strstr(err, cases[c].says))
			fail_msg("case %zu: %d '%s', not '%s'", c, ret, err, cases[c].says);
		assert_untouched(&b);
	}
	refuse_every_cut(orig, len, &b);
	refuse_every_flip(orig, len, &b);
	/* The image itself is good, and the ids need no alignment of it. */
	uint8_t *odd = malloc(len + 1);
	assert_non_null(odd);
	memcpy(odd + 1, orig, len);
	assert_int_equal(lbd_snapshot_load_mem(odd + 1, len, &b.m, b.st, NULL, err, sizeof(err)), 0);
	assert_int_equal(t_lookup(&b, model_id(&b, "t"), 1, 1, T_SEQ + 2, LB_REQ_ANY_LEN, true), 0);
	free(odd);
	bank_free(&b);
	free(img);
	free(orig);
}

/* ---- layerbankd with --snapshot ---- */

#define D_LAYERS 4
#define D_HIDDEN 32

static const struct lb_model_desc dmodel = {
	.name = "snap-model", .weights_hash = 0x5eed, .n_layers = D_LAYERS, .hidden = D_HIDDEN,
	.dtype = LB_DTYPE_F32, .max_seq = 512, .fp_chunks = 4, .fp_seed = 3,
};

/* Start layerbankd with args, and vars (NAME=value, NULL-terminated; NULL: none) in its
 * process only, and wait until it serves. */
static void start_daemon(const char *const *args, const char *const *vars)
{
	const struct lbt_daemon_opts o = { .args = args, .vars = vars };
	assert_true(lbt_daemon_start_opts(&env, &o) > 0);
	/* The socket accepts (queues) from the moment it is bound; the daemon answers once it
	 * serves, which is after the restore. */
	struct lb_client *c = NULL;
	struct lb_stats st;
	assert_int_equal(lb_connect(env.sock, "ready?", &c), 0);
	assert_int_equal(lb_stats(c, &st, sizeof(st)), 0);
	lb_close(c);
}
#define START(...) start_daemon(LBT_ARGS(LBT_SMALL, __VA_ARGS__), NULL)

static struct lb_client *connect_model(const struct lb_model_desc *d, uint32_t *model)
{
	struct lb_client *c = NULL;
	assert_int_equal(lb_connect(env.sock, "test", &c), 0);
	if (d)
		assert_int_equal(lb_register_model(c, d, model), 0);
	return c;
}

static uint32_t seq_of(uint32_t input)
{
	return 8 + input % 25;
}

static void key_of(uint32_t input, struct lb_key *k)
{
	input_keys(input, k->fp, k->exact);
	k->seq_len = seq_of(input);
}

static int d_insert(struct lb_client *c, uint32_t model, uint32_t input, uint32_t layer)
{
	struct lb_key k;
	uint64_t bytes = (uint64_t)seq_of(input) * D_HIDDEN * 4;
	struct lb_shape sh = { LB_DTYPE_F32, 2, { seq_of(input), D_HIDDEN, 0, 0 } };
	void *p;

	key_of(input, &k);
	p = lb_insert_reserve(c, bytes);
	assert_non_null(p);
	fill_data(p, bytes, input, layer);
	return lb_insert_commit(c, model, layer, &k, &sh);
}

/* A hit on exactly (input, layer), its bytes checked. @return 0 or the lookup's status. */
static int d_check(struct lb_client *c, uint32_t model, uint32_t input, uint32_t layer)
{
	struct lb_key k;
	struct lb_hit hit;
	uint64_t bytes = (uint64_t)seq_of(input) * D_HIDDEN * 4;

	key_of(input, &k);
	int ret = lb_lookup(c, model, layer, &k, NULL, 0, &hit);
	if (ret < 0)
		return ret;
	uint8_t *want = malloc(bytes);
	assert_non_null(want);
	fill_data(want, bytes, input, layer);
	assert_true(hit.bytes == bytes);
	assert_int_equal(hit.layer, layer);
	assert_int_equal(hit.hamming, 0);
	assert_memory_equal(hit.data, want, bytes);
	assert_true(hit.checksum == XXH3_64bits(want, bytes));
	free(want);
	assert_int_equal(lb_release(c, hit.lease), 0);
	return 0;
}

static struct lb_stats d_stats(void)
{
	struct lb_client *c = connect_model(NULL, NULL);
	struct lb_stats st;
	assert_int_equal(lb_stats(c, &st, sizeof(st)), 0);
	lb_close(c);
	return st;
}

/* Lines of the daemon's log holding every one of the (NULL-ended) words. */
static int log_lines(const char *first, ...)
{
	FILE *f = fopen(env.log, "r");
	char line[4096];
	int n = 0;

	assert_non_null(f);
	while (fgets(line, sizeof(line), f)) {
		va_list ap;
		int all = 1;
		va_start(ap, first);
		for (const char *w = first; w; w = va_arg(ap, const char *))
			all = all && strstr(line, w);
		va_end(ap);
		n += all;
	}
	fclose(f);
	return n;
}

/* Insert inputs 0..n-1, every layer, into a daemon. */
static void d_fill(uint32_t n)
{
	uint32_t model;
	struct lb_client *c = connect_model(&dmodel, &model);
	for (uint32_t in = 0; in < n; in++)
		for (uint32_t l = 0; l < D_LAYERS; l++)
			assert_int_equal(d_insert(c, model, in, l), 0);
	lb_close(c);
}

/* SIGTERM writes the snapshot; the next start restores it before it serves: same entries,
 * hits with the same bytes, READY (the socket) only after the restore. */
static void test_daemon_restart_restores_the_cache(void **state)
{
	(void)state;
	uint32_t model;

	START("--snapshot", snap_path);
	assert_int_equal(log_lines("snapshot", "no such file yet", NULL), 1);
	d_fill(20);
	assert_true(lbt_daemon_stop(&env));
	assert_int_equal(log_lines("snapshot", "80 entries", "models written,", NULL), 1);
	assert_int_equal(access(snap_path, R_OK), 0);
	char tmp[320];
	snprintf(tmp, sizeof(tmp), "%s.tmp", snap_path);
	assert_int_equal(access(tmp, F_OK), -1);

	START("--snapshot", snap_path);
	assert_int_equal(log_lines("snapshot", "80 entries", "restored", NULL), 1);
	struct lb_stats st = d_stats();
	assert_int_equal(st.entries, 80);
	assert_int_equal(st.models, 1);
	assert_int_equal(st.inserts, 0);
	struct lb_client *c = connect_model(&dmodel, &model);
	for (uint32_t in = 0; in < 20; in++)
		for (uint32_t l = 0; l < D_LAYERS; l++)
			assert_int_equal(d_check(c, model, in, l), 0);
	struct lb_key k;
	struct lb_hit hit;
	key_of(3, &k);
	assert_int_equal(lb_lookup_deepest(c, model, &k, NULL, 0, &hit), 0);
	assert_int_equal(hit.layer, D_LAYERS - 1);
	lb_release(c, hit.lease);
	lb_close(c);
	assert_true(lbt_daemon_stop(&env));
}

static int notify_socket(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	assert_true(strlen(path) < sizeof(sa.sun_path));
	strcpy(sa.sun_path, path);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	return fd;
}

/* The next notify datagram holding want, within timeout_ms; 0 when none came. */
static int notify_wait(int fd, const char *want, char *buf, size_t n, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	while (poll(&p, 1, timeout_ms) > 0) {
		ssize_t r = recv(fd, buf, n - 1, 0);
		assert_true(r >= 0);
		buf[r] = '\0';
		if (strstr(buf, want))
			return 1;
	}
	return 0;
}

/* A decoder's prefix blocks: written at stop, restored at start, found again by
 * lb_lookup_prefix with the same bytes; a chain cut short by the budget is cut at its end. */
#define P_KV 16
#define P_TOKENS 4
#define P_BLOCK (D_LAYERS * 2 * P_TOKENS * P_KV * 4)

static const struct lb_model_desc pmodel = {
	.name = "snap-decoder", .weights_hash = 0xdec, .n_layers = D_LAYERS, .hidden = D_HIDDEN,
	.dtype = LB_DTYPE_F32, .max_seq = 512, .fp_chunks = 4, .fp_seed = 3, .kv_dim = P_KV,
	.block_tokens = P_TOKENS,
};

/* The keys of the first n blocks of sequence seq (tokens seq * 1000 + i). */
static void p_keys(uint32_t seq, uint32_t n, uint64_t (*keys)[2])
{
	int32_t tok[16 * P_TOKENS];
	assert_true(n <= 16);
	for (uint32_t i = 0; i < n * P_TOKENS; i++)
		tok[i] = (int32_t)(seq * 1000 + i);
	assert_int_equal(lb_block_keys(tok, n * P_TOKENS, P_TOKENS, keys, n), n);
}

static void p_insert(struct lb_client *c, uint32_t model, uint32_t seq, uint32_t n)
{
	uint64_t keys[16][2];
	p_keys(seq, n, keys);
	for (uint32_t i = 0; i < n; i++) {
		void *p = lb_insert_reserve(c, P_BLOCK);
		assert_non_null(p);
		fill_data(p, P_BLOCK, (uint32_t)keys[i][0], LB_ENTRY_LAYER_BLOCK);
		assert_int_equal(lb_insert_block(c, model, keys[i], i ? keys[i - 1] : NULL, i), 0);
	}
}

/* lb_lookup_prefix of sequence seq's first n blocks: the blocks found, each checked. */
static int p_found(struct lb_client *c, uint32_t model, uint32_t seq, uint32_t n)
{
	uint64_t keys[16][2], lease = 0;
	const void *blocks[16];
	uint8_t want[P_BLOCK];
	p_keys(seq, n, keys);
	int got = lb_lookup_prefix(c, model, (const uint64_t(*)[2])keys, n, blocks, &lease);
	if (got == -ENOENT)
		return 0;
	assert_true(got > 0 && (uint32_t)got <= n);
	for (int i = 0; i < got; i++) {
		fill_data(want, P_BLOCK, (uint32_t)keys[i][0], LB_ENTRY_LAYER_BLOCK);
		assert_memory_equal(blocks[i], want, P_BLOCK);
	}
	assert_int_equal(lb_release(c, lease), 0);
	return got;
}

static void test_daemon_restart_keeps_prefix_blocks(void **state)
{
	(void)state;
	uint32_t model;

	START("--snapshot", snap_path);
	d_fill(2);
	struct lb_client *c = connect_model(&pmodel, &model);
	p_insert(c, model, 1, 6);
	p_insert(c, model, 2, 3);
	lb_close(c);
	assert_true(lbt_daemon_stop(&env));
	assert_int_equal(log_lines("17 entries (9 of them prefix blocks", "models written,", NULL),
			 1);

	START("--snapshot", snap_path);
	assert_int_equal(log_lines("17 entries (9 of them prefix blocks", "restored", NULL), 1);
	struct lb_stats st = d_stats();
	assert_int_equal(st.blocks, 9);
	assert_int_equal(st.entries, 8);
	c = connect_model(&pmodel, &model);
	assert_int_equal(p_found(c, model, 1, 8), 6);
	assert_int_equal(p_found(c, model, 2, 3), 3);
	assert_int_equal(p_found(c, model, 3, 3), 0);
	/* The restored chain grows as any other. */
	uint64_t keys[16][2];
	p_keys(1, 7, keys);
	void *p = lb_insert_reserve(c, P_BLOCK);
	assert_non_null(p);
	fill_data(p, P_BLOCK, (uint32_t)keys[6][0], LB_ENTRY_LAYER_BLOCK);
	assert_int_equal(lb_insert_block(c, model, keys[6], keys[5], 6), 0);
	assert_int_equal(p_found(c, model, 1, 8), 7);
	lb_close(c);
	assert_true(lbt_daemon_stop(&env));

	/* A budget for 4 blocks (2176 bytes each) and not one layer entry (1152 bytes and more)
	 * beside them: the most recent chain's first 4 blocks, and nothing else. */
	START("--snapshot", snap_path, "--budget", "9704");
	if (log_lines("4 entries (4 of them prefix blocks", "restored", "left out: 14 entries",
		      NULL) != 1) {
		lbt_cat(env.log);
		fail_msg("not the 4 first blocks of the recent chain alone");
	}
	c = connect_model(&pmodel, &model);
	assert_int_equal(p_found(c, model, 1, 8), 4);
	assert_int_equal(p_found(c, model, 2, 3), 0);
	lb_close(c);
	assert_true(lbt_daemon_stop(&env));
}

/* Under a service manager: READY=1 only once the snapshot is restored, and while it is
 * written at stop, STOPPING=1 then EXTEND_TIMEOUT_USEC= with a STATUS= line. */
static void test_ready_after_restore_and_stop_timeout_extended(void **state)
{
	(void)state;
	char path[300], var[320], msg[512];

	START("--snapshot", snap_path);
	d_fill(30);
	assert_true(lbt_daemon_stop(&env));
	snprintf(path, sizeof(path), "%s/notify", env.dir);
	int nfd = notify_socket(path);
	snprintf(var, sizeof(var), "NOTIFY_SOCKET=%s", path);
	start_daemon(LBT_ARGS(LBT_SMALL, "--snapshot", snap_path), LBT_ARGS(var));
	assert_true(notify_wait(nfd, "READY=1", msg, sizeof(msg), 5000));
	/* The restore's line was written before READY was sent. */
	assert_int_equal(log_lines("120 entries", "restored", NULL), 1);
	assert_int_equal(kill(env.pid, SIGTERM), 0);
	assert_true(notify_wait(nfd, "STOPPING=1", msg, sizeof(msg), 5000));
	assert_true(notify_wait(nfd, "EXTEND_TIMEOUT_USEC=30000000", msg, sizeof(msg), 5000));
	assert_non_null(strstr(msg, "STATUS=writing the snapshot"));
	assert_true(lbt_daemon_stop(&env));
	assert_int_equal(log_lines("120 entries", "models written,", NULL), 1);
	close(nfd);
}

/* A bad file at start: one log line saying why, the daemon up and empty, the file left. */
static void test_daemon_bad_snapshot_starts_empty(void **state)
{
	(void)state;
	char err[512];
	size_t len;

	START("--snapshot", snap_path);
	d_fill(4);
	assert_true(lbt_daemon_stop(&env));
	uint8_t *good = read_file(snap_path, &len);
	uint8_t *img = malloc(len);
	assert_non_null(img);
	const struct {
		const char *what;
		size_t at;   /* byte to flip, or the length to cut to */
		int cut;
		const char *says;
	} cases[] = {
		{ "truncated in the data", len - 200, 1, "truncated" },
		{ "truncated in the header", 100, 1, "truncated" },
		{ "empty", 0, 1, "truncated" },
		{ "flipped header byte", 33, 0, "header checksum mismatch" },
		{ "flipped entry byte", len - 300, 0, "checksum mismatch" },
		{ "foreign version", 9, 0, "format version" }, /* 4 + 256 */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		printf("%s\n", cases[i].what);
		memcpy(img, good, len);
		if (!cases[i].cut)
			img[cases[i].at] ^= 0x01;
		write_file(snap_path, img, cases[i].cut ? cases[i].at : len);
		START("--snapshot", snap_path);
		if (log_lines("rejected, starting empty", cases[i].says, NULL) != 1 ||
		    log_lines(" warn: ", NULL) + log_lines(" error: ", NULL) != 1) {
			lbt_cat(env.log);
			fail_msg("%s: not one line saying '%s'", cases[i].what, cases[i].says);
		}
		struct lb_stats st = d_stats();
		assert_int_equal(st.entries, 0);
		assert_int_equal(st.models, 0);
		/* Serving as usual. */
		uint32_t model;
		struct lb_client *c = connect_model(&dmodel, &model);
		assert_int_equal(d_insert(c, model, 1, 0), 0);
		assert_int_equal(d_check(c, model, 1, 0), 0);
		lb_close(c);
		/* The bad file stays until the daemon's stop replaces it with a good one. */
		size_t now_len;
		uint8_t *still = read_file(snap_path, &now_len);
		assert_int_equal(now_len, cases[i].cut ? cases[i].at : len);
		assert_memory_equal(still, img, now_len);
		free(still);
		assert_true(lbt_daemon_stop(&env));
		assert_int_equal(lbd_snapshot_load(snap_path, NULL, NULL, NULL, err, sizeof(err)), 0);
	}
	free(img);
	free(good);
}

/* After the restart a client registers the snapshot's model with other weights: one line, that
 * model's entries gone, the new description registered; the other model keeps its entries. */
static void test_daemon_different_model_is_skipped(void **state)
{
	(void)state;
	struct lb_model_desc other = dmodel, second = dmodel;
	uint32_t model, m2;

	second.name = "second-model";
	START("--snapshot", snap_path);
	d_fill(3);
	struct lb_client *c = connect_model(&second, &m2);
	for (uint32_t l = 0; l < D_LAYERS; l++)
		assert_int_equal(d_insert(c, m2, 40, l), 0);
	lb_close(c);
	assert_true(lbt_daemon_stop(&env));

	START("--snapshot", snap_path);
	assert_int_equal(d_stats().entries, 16);
	other.weights_hash = 0xbad;
	c = connect_model(&other, &model);
	if (log_lines("snapshot's model", "retired", "12 entries dropped", "weights_hash 0x5eed, not 0xbad", NULL) != 1) {
		lbt_cat(env.log);
		fail_msg("no line about the retired model");
	}
	struct lb_stats st = d_stats();
	assert_int_equal(st.entries, 4);
	assert_int_equal(d_check(c, model, 0, 0), -ENOENT);
	/* The old description is refused now: the clients' one is the registration. */
	uint32_t old;
	struct lb_client *c2 = connect_model(NULL, NULL);
	assert_int_equal(lb_register_model(c2, &dmodel, &old), -EEXIST);
	assert_int_equal(lb_register_model(c2, &second, &m2), 0);
	for (uint32_t l = 0; l < D_LAYERS; l++)
		assert_int_equal(d_check(c2, m2, 40, l), 0);
	lb_close(c2);
	lb_close(c);
	assert_true(lbt_daemon_stop(&env));
}

/* SNAPSHOT: through lb_snapshot and layerbank-ctl; refused without --snapshot, and for a peer
 * that is neither root nor the daemon's user. */
static void test_snapshot_message_and_ctl(void **state)
{
	(void)state;
	struct lb_snapshot_info info;
	struct lbd_snapshot_stats chk;
	char out[4096], err[512];
	uint32_t model;
	size_t len;

	START("--snapshot", snap_path);
	d_fill(10);
	struct lb_client *c = connect_model(&dmodel, &model);
	/* A lease held across the write stays good, and the write's own leases end with it. */
	struct lb_key k;
	struct lb_hit hit;
	key_of(2, &k);
	assert_int_equal(lb_lookup(c, model, 1, &k, NULL, 0, &hit), 0);
	assert_int_equal(lb_snapshot(c, &info), 0);
	assert_int_equal(info.entries, 40);
	uint8_t *img = read_file(snap_path, &len);
	assert_int_equal(info.bytes, len);
	assert_int_equal(lbd_snapshot_load_mem(img, len, NULL, NULL, &chk, err, sizeof(err)), 0);
	assert_int_equal(chk.entries, 40);
	free(img);
	struct lb_stats st;
	assert_int_equal(lb_stats(c, &st, sizeof(st)), 0);
	assert_int_equal(st.leases, 1);
	assert_int_equal(lb_release(c, hit.lease), 0);
	assert_int_equal(lb_snapshot(c, NULL), 0);
	assert_int_equal(log_lines("asked for a snapshot", NULL), 2);

	const char *argv[] = { LB_CTL_PATH, "--socket", env.sock, "snapshot", NULL };
	int rc = lbt_run(argv, out, sizeof(out));
	printf("layerbank-ctl snapshot: %s", out);
	assert_true(WIFEXITED(rc) && WEXITSTATUS(rc) == 0);
	assert_non_null(strstr(out, "snapshot written: 40 entries"));
	const char *extra[] = { LB_CTL_PATH, "--socket", env.sock, "snapshot", "now", NULL };
	rc = lbt_run(extra, out, sizeof(out));
	assert_true(WIFEXITED(rc) && WEXITSTATUS(rc) == 2);

	/* A peer that is neither root nor the daemon's user (as root: become nobody). */
	if (geteuid() == 0) {
		assert_int_equal(chmod(env.dir, 0711), 0);
		assert_int_equal(chmod(env.sock, 0666), 0);
		fflush(stdout);
		pid_t pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			struct lb_client *n = NULL;
			if (setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(65534) < 0)
				_exit(3);
			if (lb_connect(env.sock, "nobody", &n) < 0)
				_exit(4);
			int r = lb_snapshot(n, NULL);
			int ok = r == -EPERM && strstr(lb_last_error(n), "root and the daemon's user");
			lb_close(n);
			_exit(ok ? 0 : 5);
		}
		int ws;
		assert_int_equal(waitpid(pid, &ws, 0), pid);
		assert_true(WIFEXITED(ws));
		assert_int_equal(WEXITSTATUS(ws), 0);
		assert_int_equal(log_lines("SNAPSHOT is for root", "uid 65534", NULL), 1);
	} else {
		printf("(not root: the refusal of another uid is not tried here)\n");
	}
	lb_close(c);
	assert_true(lbt_daemon_stop(&env));

	/* Without --snapshot: a clear refusal, the connection kept. */
	START("--log-level", "info");
	c = connect_model(NULL, NULL);
	assert_int_equal(lb_snapshot(c, &info), -EOPNOTSUPP);
	assert_non_null(strstr(lb_last_error(c), "--snapshot"));
	assert_int_equal(lb_stats(c, &st, sizeof(st)), 0);
	lb_close(c);
	rc = lbt_run(argv, out, sizeof(out));
	assert_true(WIFEXITED(rc) && WEXITSTATUS(rc) == 1);
	assert_non_null(strstr(out, "layerbank-ctl: snapshot: "));
	assert_non_null(strstr(out, "--snapshot"));
	assert_true(lbt_daemon_stop(&env));
}

/* A decoder worker in a child: the chains of 40 sequences, in an order its twin shares, so
 * that both insert the same blocks at once (one's child under the other's parent while that is
 * still being copied, sometimes). Exits 0, or 4 on an answer INSERT_BLOCK does not give. */
static void p_worker(void)
{
	uint32_t model;
	struct lb_client *c = NULL;
	uint64_t keys[16][2];

	if (lb_connect(env.sock, "decoder", &c) < 0 || lb_register_model(c, &pmodel, &model) < 0)
		_exit(2);
	for (uint32_t r = 0; r < 400; r++) {
		uint32_t n = 1 + r % 12;
		p_keys((r * 7u) % 40, n, keys);
		for (uint32_t i = 0; i < n; i++) {
			void *p = lb_insert_reserve(c, P_BLOCK);
			if (!p)
				_exit(4);
			fill_data(p, P_BLOCK, (uint32_t)keys[i][0], LB_ENTRY_LAYER_BLOCK);
			int ret = lb_insert_block(c, model, keys[i], i ? keys[i - 1] : NULL, i);
			if (ret < 0 && ret != -EEXIST && ret != -ENOENT && ret != -ENOSPC)
				_exit(4);
		}
	}
	lb_close(c);
	_exit(0);
}

/* SNAPSHOT while a worker looks up and inserts through the rings, and two decoders insert the
 * same chains: the service threads go on, entries inserted meanwhile simply may or may not be
 * in the file, and every file is whole, no chain in it with a hole. */
static void test_snapshot_while_serving(void **state)
{
	(void)state;
	struct lbd_snapshot_stats chk;
	char err[512];
	size_t len;

	START("--snapshot", snap_path, "--budget", "1M", "--threads", "2");
	d_fill(10);
	fflush(stdout);
	pid_t kid = lbt_fork(&env);
	assert_true(kid >= 0);
	if (kid == 0) {
		uint32_t model;
		struct lb_client *c = NULL;
		if (lb_connect(env.sock, "worker", &c) < 0 || lb_register_model(c, &dmodel, &model) < 0)
			_exit(2);
		for (uint32_t r = 0; r < 3000; r++) {
			struct lb_key k;
			struct lb_hit hit;
			uint32_t in = (r * 7919u) % 300;
			key_of(in, &k);
			if (lb_lookup_deepest(c, model, &k, NULL, 0, &hit) == 0) {
				lb_release(c, hit.lease);
				continue;
			}
			for (uint32_t l = 0; l < D_LAYERS; l++) {
				int ret = d_insert(c, model, in, l);
				if (ret < 0 && ret != -EEXIST && ret != -ENOSPC)
					_exit(3);
			}
		}
		lb_close(c);
		_exit(0);
	}
	pid_t dec[2];
	for (int i = 0; i < 2; i++) {
		dec[i] = lbt_fork(&env);
		assert_true(dec[i] >= 0);
		if (dec[i] == 0)
			p_worker();
	}
	struct lb_client *c = connect_model(NULL, NULL);
	for (int i = 0; i < 10; i++) {
		struct lb_snapshot_info info;
		assert_int_equal(lb_snapshot(c, &info), 0);
		uint8_t *img = read_file(snap_path, &len);
		assert_int_equal(info.bytes, len);
		assert_int_equal(lbd_snapshot_load_mem(img, len, NULL, NULL, &chk, err, sizeof(err)), 0);
		assert_int_equal(chk.entries, info.entries);
		free(img);
	}
	struct lb_stats st;
	assert_int_equal(lb_stats(c, &st, sizeof(st)), 0);
	lb_close(c);
	assert_int_equal(lbt_reap(&env, kid), 0); /* exited 0 */
	assert_int_equal(lbt_reap(&env, dec[0]), 0);
	assert_int_equal(lbt_reap(&env, dec[1]), 0);
	printf("10 snapshots while serving: %" PRIu64 " hits, %" PRIu64 " inserts, %" PRIu64
	       " evictions so far; %" PRIu64 " blocks\n", st.hits, st.inserts, st.evictions,
	       st.blocks);
	assert_true(lbt_daemon_stop(&env));
	START("--snapshot", snap_path, "--budget", "1M");
	assert_int_equal(log_lines("entries", "restored", NULL), 1);
	assert_true(d_stats().entries > 0);
	assert_true(lbt_daemon_stop(&env));
}

/* ---- the acceptance test: a warm restart keeps the hit rate ---- */

#define W_INPUTS 400
#define W_REQUESTS 2000

/* The request stream: Zipf(1) over W_INPUTS inputs, one seed. */
static void stream(uint32_t *req)
{
	static double cdf[W_INPUTS];
	double sum = 0;
	uint64_t s = 42;

	for (uint32_t i = 0; i < W_INPUTS; i++)
		cdf[i] = sum += 1.0 / (i + 1);
	for (uint32_t r = 0; r < W_REQUESTS; r++) {
		s = mix(s);
		double u = (double)(s >> 11) / 9007199254740992.0 * sum;
		uint32_t lo = 0, hi = W_INPUTS - 1;
		while (lo < hi) {
			uint32_t mid = (lo + hi) / 2;
			if (cdf[mid] < u)
				lo = mid + 1;
			else
				hi = mid;
		}
		/* Popular inputs spread over the id space, not all short ones. */
		req[r] = (lo * 2654435761u) % W_INPUTS;
	}
}

/* Serve the stream as a worker would: the deepest hit, then insert the layers above it.
 * @return the share of requests that hit. */
static double serve(const uint32_t *req)
{
	uint32_t model, hits = 0;
	struct lb_client *c = connect_model(&dmodel, &model);

	for (uint32_t r = 0; r < W_REQUESTS; r++) {
		struct lb_key k;
		struct lb_hit hit;
		int from = 0;
		key_of(req[r], &k);
		int ret = lb_lookup_deepest(c, model, &k, NULL, 0, &hit);
		if (ret == 0) {
			/* Whatever was restored must be what was inserted. */
			uint64_t bytes = (uint64_t)k.seq_len * D_HIDDEN * 4;
			uint8_t want[33 * D_HIDDEN * 4];
			fill_data(want, bytes, req[r], hit.layer);
			assert_true(hit.bytes == bytes);
			assert_memory_equal(hit.data, want, bytes);
			from = (int)hit.layer + 1;
			hits++;
			assert_int_equal(lb_release(c, hit.lease), 0);
		} else {
			assert_int_equal(ret, -ENOENT);
		}
		for (int l = from; l < D_LAYERS; l++) {
			ret = d_insert(c, model, req[r], (uint32_t)l);
			assert_true(ret == 0 || ret == -EEXIST || ret == -ENOSPC);
		}
	}
	lb_close(c);
	return (double)hits / W_REQUESTS;
}

static void test_warm_restart_keeps_the_hit_rate(void **state)
{
	(void)state;
	static uint32_t req[W_REQUESTS];
	/* About half of the stream's distinct entries fit: eviction decides what is kept. */

	stream(req);
	START("--snapshot", snap_path, "--budget", "1536K");
	double first = serve(req);
	double warm = serve(req);
	assert_true(lbt_daemon_stop(&env));
	START("--snapshot", snap_path, "--budget", "1536K");
	double restored = serve(req);
	struct lb_stats st = d_stats();
	assert_true(lbt_daemon_stop(&env));
	START("--budget", "1536K");
	double cold = serve(req);
	assert_true(lbt_daemon_stop(&env));
	printf("hit rate of the stream (%u requests, %u inputs, Zipf 1, 1.5 MiB budget):\n"
	       "  first pass %.1f%%, second pass (warm) %.1f%%\n"
	       "  after a restart with --snapshot %.1f%% (%.1f%% of warm; %" PRIu64 " entries restored)\n"
	       "  after a restart without it %.1f%% (%.1f%% of warm)\n",
	       W_REQUESTS, W_INPUTS, 100 * first, 100 * warm, 100 * restored, 100 * restored / warm,
	       st.entries, 100 * cold, 100 * cold / warm);
	assert_true(warm > 0.3);
	assert_true(restored >= 0.95 * warm);
	/* The measure can fail: a restart without the snapshot does. */
	assert_true(cold < 0.95 * warm);
}

#define TEST(f) cmocka_unit_test_prestate_setup_teardown(f, setup, lbt_env_teardown, &env)

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST(test_layout_is_the_documented_one),
		TEST(test_round_trip_restores_every_entry),
		TEST(test_every_truncation_is_refused),
		TEST(test_every_flipped_bit_is_refused),
		TEST(test_foreign_version_and_abi_are_refused),
		TEST(test_thresholds_survive_a_restart),
		TEST(test_versions_2_and_3_are_read),
		TEST(test_blocks_of_fewer_layers),
		TEST(test_sealed_but_inconsistent_files_are_refused),
		TEST(test_over_budget_keeps_the_most_valuable),
		TEST(test_file_with_a_hole_is_refused),
		TEST(test_over_budget_keeps_whole_prefixes),
		TEST(test_model_registered_differently_is_retired),
		TEST(test_failed_write_keeps_the_old_file),
		TEST(test_token_ids_round_trip),
		TEST(test_bad_token_ids_are_refused),
		TEST(test_daemon_restart_restores_the_cache),
		TEST(test_daemon_restart_keeps_prefix_blocks),
		TEST(test_ready_after_restore_and_stop_timeout_extended),
		TEST(test_daemon_bad_snapshot_starts_empty),
		TEST(test_daemon_different_model_is_skipped),
		TEST(test_snapshot_message_and_ctl),
		TEST(test_snapshot_while_serving),
		TEST(test_warm_restart_keeps_the_hit_rate),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
