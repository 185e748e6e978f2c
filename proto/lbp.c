/* layerbank control protocol codec: struct lbp_msg <-> one msgpack frame (PROTOCOL.md).
 * One field table per message drives both the encoder and the decoder, so the two cannot
 * disagree on a key, a type or a range. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <msgpack.h>

#include "lbp.h"

#define PAGE_4K 4096u
#define PAGE_2M 2097152u

/*
 * Limits of the pre-parse walk. msgpack-c allocates count * sizeof(msgpack_object) the
 * moment it reads a container header, so nothing reaches it before these hold. The largest
 * valid v1 frame (MODEL_STATS_REPLY with 64 layers) has under 1000 objects at depth 5.
 */
#define WALK_MAX_DEPTH 8u
#define WALK_MAX_OBJECTS 4096u

/* Keys in the largest body (STATS_REPLY has 38). */
#define MAX_KEYS 40u

enum fkind {
	F_UINT,   /* uint32_t or uint64_t (by size), min..max */
	F_INT,    /* int32_t, min..max */
	F_BOOL,
	F_STR,    /* char[max + 1]: min..max bytes, NUL-terminated in C, no NUL on the wire */
	F_BIN16,  /* uint8_t[16] */
	F_PAGE,   /* uint64_t page size: 4096 or 2097152, the two kinds of arena page */
	F_ARENA,  /* uint64_t arena size: a non-zero multiple of 4096 (every page size is one) */
	F_MAP,    /* nested struct described by sub */
	F_ARRAY,  /* array of sub structs of elem_size bytes, min..max of them, count at cnt_off */
};

struct table;

struct field {
	const char *key;
	enum fkind kind;
	size_t off;  /* in the body struct */
	size_t size; /* of the C field */
	int64_t min;
	uint64_t max;
	const struct table *sub; /* F_MAP, F_ARRAY */
	size_t elem_size;        /* F_ARRAY */
	size_t cnt_off;          /* F_ARRAY: the uint32_t element count */
};

struct table {
	const struct field *f;
	unsigned n;
};

#define FSIZE(S, k) sizeof(((S *)0)->k)
#define UINT(S, k, lo, hi) { #k, F_UINT, offsetof(S, k), FSIZE(S, k), lo, hi, NULL, 0, 0 }
#define INT(S, k, lo, hi) { #k, F_INT, offsetof(S, k), FSIZE(S, k), lo, hi, NULL, 0, 0 }
#define KIND(S, k, kind) { #k, kind, offsetof(S, k), FSIZE(S, k), 0, 0, NULL, 0, 0 }
#define STR(S, k, lo) { #k, F_STR, offsetof(S, k), FSIZE(S, k), lo, FSIZE(S, k) - 1, NULL, 0, 0 }
#define MAP(S, k, t) { #k, F_MAP, offsetof(S, k), FSIZE(S, k), 0, 0, &t, 0, 0 }
#define TABLE(a) { a, sizeof(a) / sizeof(a[0]) }

static const struct field hello_f[] = {
	UINT(struct lbp_hello, shm_abi, 0, UINT32_MAX),
	STR(struct lbp_hello, name, 0),
	UINT(struct lbp_hello, req_entries, 0, LBP_MAX_RING),
	UINT(struct lbp_hello, cpl_entries, 0, LBP_MAX_RING),
	UINT(struct lbp_hello, staging_bytes, 0, LBP_MAX_STAGING),
	INT(struct lbp_hello, numa_node, -1, INT32_MAX),
};

static const struct field region_f[] = {
	UINT(struct lbp_region_desc, req_entries, 8, LBP_MAX_RING),
	UINT(struct lbp_region_desc, cpl_entries, 8, LBP_MAX_RING),
	UINT(struct lbp_region_desc, staging_bytes, 0, LBP_MAX_STAGING),
	KIND(struct lbp_region_desc, bytes, F_ARENA),
};
static const struct table region_t = TABLE(region_f);

static const struct field arena_f[] = {
	KIND(struct lbp_arena_desc, bytes, F_ARENA),
	INT(struct lbp_arena_desc, numa_node, -1, INT32_MAX),
	UINT(struct lbp_arena_desc, index, 0, LBP_MAX_ARENAS - 1),
	UINT(struct lbp_arena_desc, tenant, 0, LBP_MAX_ARENAS - 1),
};
static const struct table arena_t = TABLE(arena_f);

static const struct field welcome_f[] = {
	UINT(struct lbp_welcome, client_id, 0, UINT64_MAX),
	KIND(struct lbp_welcome, boot_id, F_BIN16),
	KIND(struct lbp_welcome, page_size, F_PAGE),
	{ "arenas", F_ARRAY, offsetof(struct lbp_welcome, arenas), 0, 1, LBP_MAX_ARENAS, &arena_t,
	  sizeof(struct lbp_arena_desc), offsetof(struct lbp_welcome, n_arenas) },
	MAP(struct lbp_welcome, region, region_t),
};

static const struct field fp_f[] = {
	UINT(struct lbp_fp_spec, chunks, 1, LBP_MAX_FP_CHUNKS),
	UINT(struct lbp_fp_spec, bits, 256, 256),
	UINT(struct lbp_fp_spec, seed, 0, UINT64_MAX),
};
static const struct table fp_t = TABLE(fp_f);

static const struct field kv_f[] = {
	UINT(struct lbp_kv_spec, dim, 0, LBP_MAX_HIDDEN),
	UINT(struct lbp_kv_spec, block_tokens, 0, LBP_MAX_BLOCK_TOKENS),
	UINT(struct lbp_kv_spec, layers, 0, LBP_MAX_LAYERS),
};
static const struct table kv_t = TABLE(kv_f);

static const struct field reg_f[] = {
	STR(struct lbp_register_model, name, 1),
	UINT(struct lbp_register_model, weights_hash, 0, UINT64_MAX),
	UINT(struct lbp_register_model, n_layers, 1, LBP_MAX_LAYERS),
	UINT(struct lbp_register_model, hidden, 1, LBP_MAX_HIDDEN),
	UINT(struct lbp_register_model, dtype, LBP_DTYPE_F32, LBP_DTYPE_BF16),
	UINT(struct lbp_register_model, max_seq, 1, LBP_MAX_SEQ),
	MAP(struct lbp_register_model, fp, fp_t),
	MAP(struct lbp_register_model, kv, kv_t),
};

static const struct field model_f[] = {
	UINT(struct lbp_model, model_id, 1, UINT32_MAX),
	KIND(struct lbp_model, created, F_BOOL),
};

static const struct field node_f[] = {
	INT(struct lbp_node_stats, node, -1, INT32_MAX),
	UINT(struct lbp_node_stats, arena_bytes, 0, UINT64_MAX),
	UINT(struct lbp_node_stats, bytes_used, 0, UINT64_MAX),
	UINT(struct lbp_node_stats, entries, 0, UINT64_MAX),
	UINT(struct lbp_node_stats, hits, 0, UINT64_MAX),
	UINT(struct lbp_node_stats, inserts, 0, UINT64_MAX),
	UINT(struct lbp_node_stats, remote_inserts, 0, UINT64_MAX),
	UINT(struct lbp_node_stats, clients, 0, UINT32_MAX),
};
static const struct table node_t = TABLE(node_f);

static const struct field stats_f[] = {
	KIND(struct lbp_stats_reply, page_size, F_PAGE),
	UINT(struct lbp_stats_reply, arena_bytes, 0, UINT64_MAX),
	UINT(struct lbp_stats_reply, numa_nodes, 0, UINT32_MAX),
	KIND(struct lbp_stats_reply, hugepages, F_BOOL),
	UINT(struct lbp_stats_reply, clients, 0, UINT32_MAX),
	UINT(struct lbp_stats_reply, models, 0, UINT32_MAX),
	UINT(struct lbp_stats_reply, uptime_s, 0, UINT64_MAX),
	UINT(struct lbp_stats_reply, threads, 0, UINT32_MAX),
	STR(struct lbp_stats_reply, policy, 1),
	UINT(struct lbp_stats_reply, hits, 0, UINT64_MAX),
	UINT(struct lbp_stats_reply, misses, 0, UINT64_MAX),
	UINT(struct lbp_stats_reply, inserts, 0, UINT64_MAX),
	UINT(struct lbp_stats_reply, evictions, 0, UINT64_MAX),
	UINT(struct lbp_stats_reply, expirations, 0, UINT64_MAX),
	UINT(struct lbp_stats_reply, invalidations, 0, UINT64_MAX),
	UINT(struct lbp_stats_reply, entries, 0, UINT64_MAX),
	UINT(struct lbp_stats_reply, leases, 0, UINT64_MAX),
	UINT(struct lbp_stats_reply, bytes_used, 0, UINT64_MAX),
	UINT(struct lbp_stats_reply, bytes_budget, 0, UINT64_MAX),
	UINT(struct lbp_stats_reply, fragmentation_ppm, 0, 1000000),
	UINT(struct lbp_stats_reply, quota_refusals, 0, UINT64_MAX),
	UINT(struct lbp_stats_reply, blocks, 0, UINT64_MAX),
	UINT(struct lbp_stats_reply, prefix_hits, 0, UINT64_MAX),
	UINT(struct lbp_stats_reply, prefix_misses, 0, UINT64_MAX),
	UINT(struct lbp_stats_reply, blocks_served, 0, UINT64_MAX),
	STR(struct lbp_stats_reply, l2, 1),
	UINT(struct lbp_stats_reply, l2_queue_bytes, 0, UINT64_MAX),
	UINT(struct lbp_stats_reply, l2_queue_records, 0, UINT64_MAX),
	UINT(struct lbp_stats_reply, l2_fetches_waiting, 0, UINT64_MAX),
	UINT(struct lbp_stats_reply, l2_written, 0, UINT64_MAX),
	UINT(struct lbp_stats_reply, l2_dropped, 0, UINT64_MAX),
	UINT(struct lbp_stats_reply, l2_write_errors, 0, UINT64_MAX),
	UINT(struct lbp_stats_reply, l2_fetched, 0, UINT64_MAX),
	UINT(struct lbp_stats_reply, l2_fetch_misses, 0, UINT64_MAX),
	UINT(struct lbp_stats_reply, l2_rejected, 0, UINT64_MAX),
	UINT(struct lbp_stats_reply, l2_fetch_errors, 0, UINT64_MAX),
	UINT(struct lbp_stats_reply, tenants, 0, UINT32_MAX),
	{ "nodes", F_ARRAY, offsetof(struct lbp_stats_reply, nodes), 0, 0, LBP_MAX_NODES, &node_t,
	  sizeof(struct lbp_node_stats), offsetof(struct lbp_stats_reply, n_nodes) },
};

static const struct field mstats_f[] = {
	UINT(struct lbp_model_stats, model_id, 1, UINT32_MAX),
	UINT(struct lbp_model_stats, first_layer, 0, LBP_MAX_LAYERS - 1),
};

static const struct field layer_f[] = {
	UINT(struct lbp_layer_stats, hits, 0, UINT64_MAX),
	UINT(struct lbp_layer_stats, misses, 0, UINT64_MAX),
	UINT(struct lbp_layer_stats, inserts, 0, UINT64_MAX),
	UINT(struct lbp_layer_stats, evictions, 0, UINT64_MAX),
	UINT(struct lbp_layer_stats, entries, 0, UINT64_MAX),
	UINT(struct lbp_layer_stats, bytes, 0, UINT64_MAX),
	UINT(struct lbp_layer_stats, leases, 0, UINT64_MAX),
	UINT(struct lbp_layer_stats, max_hamming, 0, LBP_FP_BITS),
	UINT(struct lbp_layer_stats, reports, 0, UINT64_MAX),
	UINT(struct lbp_layer_stats, reports_over, 0, UINT64_MAX),
	UINT(struct lbp_layer_stats, drift_micro, 0, UINT64_MAX),
};
static const struct table layer_t = TABLE(layer_f);

static const struct field mstats_reply_f[] = {
	UINT(struct lbp_model_stats_reply, model_id, 1, UINT32_MAX),
	STR(struct lbp_model_stats_reply, name, 1),
	UINT(struct lbp_model_stats_reply, n_layers, 1, LBP_MAX_LAYERS),
	UINT(struct lbp_model_stats_reply, first_layer, 0, LBP_MAX_LAYERS - 1),
	{ "layers", F_ARRAY, offsetof(struct lbp_model_stats_reply, layers), 0, 0,
	  LBP_MAX_STATS_LAYERS, &layer_t, sizeof(struct lbp_layer_stats),
	  offsetof(struct lbp_model_stats_reply, n) },
};

static const struct field lookup_f[] = {
	UINT(struct lbp_lookup, model_id, 1, UINT32_MAX),
	UINT(struct lbp_lookup, seq_len, 1, LBP_MAX_SEQ),
	UINT(struct lbp_lookup, fp0, 0, UINT64_MAX),
	UINT(struct lbp_lookup, fp1, 0, UINT64_MAX),
	UINT(struct lbp_lookup, fp2, 0, UINT64_MAX),
	UINT(struct lbp_lookup, fp3, 0, UINT64_MAX),
	UINT(struct lbp_lookup, exact_lo, 0, UINT64_MAX),
	UINT(struct lbp_lookup, exact_hi, 0, UINT64_MAX),
};

static const struct field lookup_reply_f[] = {
	INT(struct lbp_lookup_reply, status, -4095, 0),
	UINT(struct lbp_lookup_reply, layer, 0, LBP_MAX_LAYERS - 1),
	UINT(struct lbp_lookup_reply, hamming, 0, 256),
	UINT(struct lbp_lookup_reply, arena, 0, LBP_MAX_ARENAS - 1),
	UINT(struct lbp_lookup_reply, entry_off, 0, UINT64_MAX),
};

static const struct field snapshot_reply_f[] = {
	UINT(struct lbp_snapshot_reply, entries, 0, UINT64_MAX),
	UINT(struct lbp_snapshot_reply, bytes, 0, UINT64_MAX),
	UINT(struct lbp_snapshot_reply, ms, 0, UINT64_MAX),
};

static const struct field flush_f[] = {
	UINT(struct lbp_flush, model_id, 0, UINT32_MAX),
	INT(struct lbp_flush, layer, -1, LBP_MAX_LAYERS - 1),
};

static const struct field flush_reply_f[] = {
	UINT(struct lbp_flush_reply, entries, 0, UINT64_MAX),
	UINT(struct lbp_flush_reply, bytes, 0, UINT64_MAX),
	UINT(struct lbp_flush_reply, leased, 0, UINT64_MAX),
};

static const struct field config_get_f[] = {
	STR(struct lbp_config_get, key, 0),
	UINT(struct lbp_config_get, first, 0, UINT32_MAX),
};

static const struct field config_item_f[] = {
	STR(struct lbp_config_item, key, 1),
	STR(struct lbp_config_item, value, 1),
};
static const struct table config_item_t = TABLE(config_item_f);

static const struct field config_reply_f[] = {
	UINT(struct lbp_config_reply, total, 0, UINT32_MAX),
	UINT(struct lbp_config_reply, first, 0, UINT32_MAX),
	{ "items", F_ARRAY, offsetof(struct lbp_config_reply, items), 0, 0, LBP_MAX_CONFIG_ITEMS,
	  &config_item_t, sizeof(struct lbp_config_item), offsetof(struct lbp_config_reply, n) },
};

static const struct field config_set_f[] = {
	STR(struct lbp_config_set, key, 1),
	STR(struct lbp_config_set, value, 1),
};

static const struct field error_f[] = {
	INT(struct lbp_error, code, 1, INT32_MAX),
	STR(struct lbp_error, field, 0),
	STR(struct lbp_error, message, 0),
};

/* Indexed by enum lbp_type; STATS, BYE and SNAPSHOT have an empty body. */
static const struct table bodies[LBP_TYPE_MAX + 1] = {
	[LBP_HELLO] = TABLE(hello_f),
	[LBP_WELCOME] = TABLE(welcome_f),
	[LBP_REGISTER_MODEL] = TABLE(reg_f),
	[LBP_MODEL] = TABLE(model_f),
	[LBP_STATS] = { NULL, 0 },
	[LBP_STATS_REPLY] = TABLE(stats_f),
	[LBP_BYE] = { NULL, 0 },
	[LBP_ERROR] = TABLE(error_f),
	[LBP_MODEL_STATS] = TABLE(mstats_f),
	[LBP_MODEL_STATS_REPLY] = TABLE(mstats_reply_f),
	[LBP_LOOKUP] = TABLE(lookup_f),
	[LBP_LOOKUP_REPLY] = TABLE(lookup_reply_f),
	[LBP_SNAPSHOT] = { NULL, 0 },
	[LBP_SNAPSHOT_REPLY] = TABLE(snapshot_reply_f),
	[LBP_FLUSH] = TABLE(flush_f),
	[LBP_FLUSH_REPLY] = TABLE(flush_reply_f),
	[LBP_CONFIG_GET] = TABLE(config_get_f),
	[LBP_CONFIG_REPLY] = TABLE(config_reply_f),
	[LBP_CONFIG_SET] = TABLE(config_set_f),
};

/* read_body() keeps one slot per key on the stack. */
#define FITS(a) _Static_assert(sizeof(a) / sizeof(a[0]) <= MAX_KEYS, "raise MAX_KEYS for " #a)
FITS(hello_f);
FITS(arena_f);
FITS(welcome_f);
FITS(fp_f);
FITS(kv_f);
FITS(reg_f);
FITS(model_f);
FITS(node_f);
FITS(stats_f);
FITS(error_f);
FITS(region_f);
FITS(mstats_f);
FITS(layer_f);
FITS(mstats_reply_f);
FITS(lookup_f);
FITS(lookup_reply_f);
FITS(snapshot_reply_f);
FITS(flush_f);
FITS(flush_reply_f);
FITS(config_get_f);
FITS(config_item_f);
FITS(config_reply_f);
FITS(config_set_f);
_Static_assert(FSIZE(struct lbp_welcome, n_arenas) == sizeof(uint32_t), "F_ARRAY count");
_Static_assert(LBP_MAX_ARENAS <= 99, "arena paths \"arenas[NN].numa_node\" fit a fault's field");
_Static_assert(FSIZE(struct lbp_config_reply, n) == sizeof(uint32_t), "F_ARRAY count");
_Static_assert(FSIZE(struct lbp_stats_reply, n_nodes) == sizeof(uint32_t), "F_ARRAY count");
_Static_assert(sizeof(((struct lbp_error *)0)->field) == sizeof(((struct lbp_fault *)0)->field),
	       "a fault's field travels in an ERROR");

/* ---- faults ---- */

/* Where a check is: the fault being built and the key path ("", "fp.", "arenas[3].") to it. */
struct ctx {
	int err; /* -EINVAL when encoding, -EBADMSG when decoding */
	struct lbp_fault fault;
	char path[sizeof(((struct lbp_fault *)0)->field)];
	size_t path_len;
};

__attribute__((format(printf, 3, 0)))
static int vfail(struct ctx *c, const char *field, const char *fmt, va_list ap)
{
	snprintf(c->fault.field, sizeof(c->fault.field), "%s", field);
	vsnprintf(c->fault.reason, sizeof(c->fault.reason), fmt, ap);
	return c->err;
}

/* Record a fault at the current key path + key. @return the context's error code. */
__attribute__((format(printf, 3, 4)))
static int fail(struct ctx *c, const char *key, const char *fmt, ...)
{
	char field[sizeof(c->fault.field)];
	va_list ap;
	int ret;

	snprintf(field, sizeof(field), "%s%s", c->path, key);
	va_start(ap, fmt);
	ret = vfail(c, field, fmt, ap);
	va_end(ap);
	return ret;
}

/* Record a fault at a whole field name, not below the current path. */
__attribute__((format(printf, 3, 4)))
static int fail_at(struct ctx *c, const char *field, const char *fmt, ...)
{
	va_list ap;
	int ret;

	va_start(ap, fmt);
	ret = vfail(c, field, fmt, ap);
	va_end(ap);
	return ret;
}

/* The name of the map being read, for faults about the map itself: "body" at the top. */
static void map_name(const struct ctx *c, char *out, size_t n)
{
	if (c->path_len)
		snprintf(out, n, "%.*s", (int)c->path_len - 1, c->path);
	else
		snprintf(out, n, "body");
}

/* Enter a nested map: keys below it are reported as path + key. @return the old length. */
static size_t path_push(struct ctx *c, const char *key, int index)
{
	size_t old = c->path_len;
	int n;

	if (index >= 0)
		n = snprintf(c->path + old, sizeof(c->path) - old, "%s[%d].", key, index);
	else
		n = snprintf(c->path + old, sizeof(c->path) - old, "%s.", key);
	if (n > 0)
		c->path_len = strnlen(c->path, sizeof(c->path) - 1);
	return old;
}

static void path_pop(struct ctx *c, size_t old)
{
	c->path_len = old;
	c->path[old] = '\0';
}

static int fail_range(struct ctx *c, const struct field *f)
{
	switch (f->kind) {
	case F_PAGE:
		return fail(c, f->key, "out of range: must be %u or %u", PAGE_4K, PAGE_2M);
	case F_ARENA:
		return fail(c, f->key, "out of range: must be a non-zero multiple of %u", PAGE_4K);
	case F_INT:
		return fail(c, f->key, "out of range %lld..%llu", (long long)f->min,
			    (unsigned long long)f->max);
	default:
		if ((uint64_t)f->min == f->max)
			return fail(c, f->key, "out of range: must be %llu",
				    (unsigned long long)f->max);
		return fail(c, f->key, "out of range %lld..%llu", (long long)f->min,
			    (unsigned long long)f->max);
	}
}

/* The one range check, shared by encoder and decoder: v is an unsigned value for f. */
static int check_uint(struct ctx *c, const struct field *f, uint64_t v)
{
	switch (f->kind) {
	case F_PAGE:
		return v == PAGE_4K || v == PAGE_2M ? 0 : fail_range(c, f);
	case F_ARENA:
		return v && v % PAGE_4K == 0 ? 0 : fail_range(c, f);
	case F_INT:
		return (f->min < 0 || v >= (uint64_t)f->min) && v <= f->max ? 0 : fail_range(c, f);
	default:
		return v >= (uint64_t)f->min && v <= f->max ? 0 : fail_range(c, f);
	}
}

static int check_int(struct ctx *c, const struct field *f, int64_t v)
{
	if (v >= 0)
		return check_uint(c, f, (uint64_t)v);
	return f->kind == F_INT && v >= f->min ? 0 : fail_range(c, f);
}

/* Field access through memcpy: the tables locate fields by byte offset, and this keeps the
 * compiler from having to trust that those offsets are aligned. */
static uint64_t load_uint(const char *p, size_t size)
{
	uint32_t v32;
	uint64_t v64;

	if (size == sizeof(v32)) {
		memcpy(&v32, p, sizeof(v32));
		return v32;
	}
	memcpy(&v64, p, sizeof(v64));
	return v64;
}

static void store_uint(char *p, size_t size, uint64_t v)
{
	uint32_t v32 = (uint32_t)v;

	if (size == sizeof(v32))
		memcpy(p, &v32, sizeof(v32));
	else
		memcpy(p, &v, sizeof(v));
}

static int32_t load_i32(const char *p)
{
	int32_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

static void store_i32(char *p, int32_t v)
{
	memcpy(p, &v, sizeof(v));
}

static bool load_bool(const char *p)
{
	bool v;

	memcpy(&v, p, sizeof(v));
	return v;
}

static void store_bool(char *p, bool v)
{
	memcpy(p, &v, sizeof(v));
}

/* ---- encoder ---- */

static int check_body(struct ctx *c, const struct table *t, const char *base);

/* Validate the C struct exactly as the decoder would validate the frame made from it. */
static int check_field(struct ctx *c, const struct field *f, const char *base)
{
	const char *p = base + f->off;
	size_t n, old;
	uint32_t cnt;
	int ret;

	switch (f->kind) {
	case F_UINT:
	case F_PAGE:
	case F_ARENA:
		return check_uint(c, f, load_uint(p, f->size));
	case F_INT:
		return check_int(c, f, load_i32(p));
	case F_STR:
		n = strnlen(p, f->size);
		if (n > f->max)
			return fail(c, f->key, "not NUL-terminated within %zu bytes", f->size);
		if (n < (uint64_t)f->min)
			return fail(c, f->key, "empty");
		return 0;
	case F_BOOL:
	case F_BIN16:
		return 0;
	case F_MAP:
		old = path_push(c, f->key, -1);
		ret = check_body(c, f->sub, p);
		path_pop(c, old);
		return ret;
	case F_ARRAY:
		cnt = (uint32_t)load_uint(base + f->cnt_off, sizeof(uint32_t));
		if (cnt < (uint64_t)f->min || cnt > f->max)
			return fail(c, f->key, "out of range %lld..%llu entries", (long long)f->min,
				    (unsigned long long)f->max);
		for (uint32_t i = 0; i < cnt; i++) {
			old = path_push(c, f->key, (int)i);
			ret = check_body(c, f->sub, p + i * f->elem_size);
			path_pop(c, old);
			if (ret)
				return ret;
		}
		return 0;
	}
	return fail(c, f->key, "bad field kind");
}

static int check_body(struct ctx *c, const struct table *t, const char *base)
{
	for (unsigned i = 0; i < t->n; i++) {
		int ret = check_field(c, &t->f[i], base);
		if (ret)
			return ret;
	}
	return 0;
}

/* A packer sink that writes into the caller's buffer and never allocates. */
struct sink {
	char *p;
	size_t cap;
	size_t len;
	bool full;
};

static int sink_write(void *data, const char *buf, size_t len)
{
	struct sink *s = data;

	if (s->full || len > s->cap - s->len) {
		s->full = true;
		return -1;
	}
	if (len)
		memcpy(s->p + s->len, buf, len);
	s->len += len;
	return 0;
}

static void pack_cstr(msgpack_packer *pk, const char *s)
{
	size_t n = strlen(s);

	msgpack_pack_str(pk, n);
	msgpack_pack_str_body(pk, s, n);
}

/* Pack a validated body. Pack results are not checked: the sink is the only thing that
 * can fail, and it remembers that it did (struct sink.full). */
static void pack_body(msgpack_packer *pk, const struct table *t, const char *base)
{
	msgpack_pack_map(pk, t->n);
	for (unsigned i = 0; i < t->n; i++) {
		const struct field *f = &t->f[i];
		const char *p = base + f->off;
		uint32_t cnt;

		pack_cstr(pk, f->key);
		switch (f->kind) {
		case F_UINT:
		case F_PAGE:
		case F_ARENA:
			msgpack_pack_uint64(pk, load_uint(p, f->size));
			break;
		case F_INT:
			msgpack_pack_int32(pk, load_i32(p));
			break;
		case F_BOOL:
			if (load_bool(p))
				msgpack_pack_true(pk);
			else
				msgpack_pack_false(pk);
			break;
		case F_STR:
			pack_cstr(pk, p);
			break;
		case F_BIN16:
			msgpack_pack_bin(pk, 16);
			msgpack_pack_bin_body(pk, p, 16);
			break;
		case F_MAP:
			pack_body(pk, f->sub, p);
			break;
		case F_ARRAY:
			cnt = (uint32_t)load_uint(base + f->cnt_off, sizeof(uint32_t));
			msgpack_pack_array(pk, cnt);
			for (uint32_t j = 0; j < cnt; j++)
				pack_body(pk, f->sub, p + j * f->elem_size);
			break;
		}
	}
}

int lbp_register_from_desc(const struct lb_model_desc *d, struct lbp_register_model *r)
{
	if (!d || !d->name || strlen(d->name) > LBP_MAX_NAME)
		return -EINVAL;
	memset(r, 0, sizeof(*r));
	memcpy(r->name, d->name, strlen(d->name) + 1);
	r->weights_hash = d->weights_hash;
	r->n_layers = d->n_layers;
	r->hidden = d->hidden;
	r->dtype = (uint32_t)d->dtype;
	r->max_seq = d->max_seq;
	r->fp.chunks = d->fp_chunks ? d->fp_chunks : 4;
	r->fp.bits = 256;
	r->fp.seed = d->fp_seed;
	r->kv.dim = d->kv_dim;
	/* The default only where blocks are asked for: block_tokens without kv_dim is refused. */
	r->kv.block_tokens = d->kv_dim && !d->block_tokens ? LB_BLOCK_TOKENS_DEFAULT : d->block_tokens;
	r->kv.layers = d->kv_dim && !d->kv_layers ? d->n_layers : d->kv_layers;
	return 0;
}

int lbp_encode(const struct lbp_msg *m, void *buf, size_t cap)
{
	struct ctx c = { .err = -EINVAL };
	struct sink s = { buf, cap < LBP_MAX_FRAME ? cap : LBP_MAX_FRAME, 0, false };
	msgpack_packer pk;
	int ret;

	if (!m || !lbp_type_known((uint64_t)m->type) || (!buf && cap))
		return -EINVAL;
	ret = check_body(&c, &bodies[m->type], (const char *)&m->u);
	if (ret)
		return ret;
	msgpack_packer_init(&pk, &s, sink_write);
	msgpack_pack_array(&pk, 3);
	msgpack_pack_uint32(&pk, LBP_VERSION);
	msgpack_pack_uint32(&pk, (uint32_t)m->type);
	pack_body(&pk, &bodies[m->type], (const char *)&m->u);
	if (s.full)
		return -EMSGSIZE;
	return (int)s.len;
}

/* ---- decoder: raw pre-parse walk ---- */

struct walk {
	const uint8_t *p;
	size_t len;
	size_t off;
	unsigned objs;
	const char *why;
};

static uint64_t load_be(const uint8_t *p, unsigned n)
{
	uint64_t v = 0;

	for (unsigned i = 0; i < n; i++)
		v = v << 8 | p[i];
	return v;
}

static int walk_bad(struct walk *w, const char *why)
{
	w->why = why;
	return -EBADMSG;
}

/* Consume an n-byte big-endian header field into *v. */
static int walk_hdr(struct walk *w, unsigned n, uint64_t *v)
{
	if (n > w->len - w->off)
		return walk_bad(w, "truncated");
	*v = load_be(w->p + w->off, n);
	w->off += n;
	return 0;
}

static int walk_skip(struct walk *w, uint64_t n)
{
	if (n > w->len - w->off)
		return walk_bad(w, "truncated");
	w->off += (size_t)n;
	return 0;
}

static int walk_obj(struct walk *w, unsigned depth);

/* Every element takes at least one byte, so a count the rest of the frame cannot hold is a
 * lie; checking it here keeps a 5-byte "array of 2^32" from ever reaching msgpack-c. */
static int walk_items(struct walk *w, uint64_t n, bool map, unsigned depth)
{
	uint64_t items = map ? 2 * n : n;

	if (items > w->len - w->off)
		return walk_bad(w, "truncated");
	for (uint64_t i = 0; i < items; i++) {
		int ret = walk_obj(w, depth + 1);
		if (ret)
			return ret;
	}
	return 0;
}

static int walk_obj(struct walk *w, unsigned depth)
{
	uint64_t n;
	uint8_t b;
	int ret;

	if (depth > WALK_MAX_DEPTH)
		return walk_bad(w, "nested deeper than 8 levels");
	if (++w->objs > WALK_MAX_OBJECTS)
		return walk_bad(w, "more than 4096 objects");
	if (w->off >= w->len)
		return walk_bad(w, "truncated");
	b = w->p[w->off++];
	if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
		return 0; /* fixint, nil, bool */
	if (b <= 0x8f)
		return walk_items(w, b & 0x0fu, true, depth);
	if (b <= 0x9f)
		return walk_items(w, b & 0x0fu, false, depth);
	if (b <= 0xbf)
		return walk_skip(w, b & 0x1fu);
	switch (b) {
	case 0xcc: case 0xd0: return walk_skip(w, 1);
	case 0xcd: case 0xd1: return walk_skip(w, 2);
	case 0xce: case 0xd2: return walk_skip(w, 4);
	case 0xcf: case 0xd3: return walk_skip(w, 8);
	case 0xc4: case 0xd9: /* bin8, str8 */
		ret = walk_hdr(w, 1, &n);
		return ret ? ret : walk_skip(w, n);
	case 0xc5: case 0xda:
		ret = walk_hdr(w, 2, &n);
		return ret ? ret : walk_skip(w, n);
	case 0xc6: case 0xdb:
		ret = walk_hdr(w, 4, &n);
		return ret ? ret : walk_skip(w, n);
	case 0xdc: case 0xde: /* array16, map16 */
		ret = walk_hdr(w, 2, &n);
		return ret ? ret : walk_items(w, n, b == 0xde, depth);
	case 0xdd: case 0xdf:
		ret = walk_hdr(w, 4, &n);
		return ret ? ret : walk_items(w, n, b == 0xdf, depth);
	case 0xca: case 0xcb:
		return walk_bad(w, "float not allowed");
	case 0xc7: case 0xc8: case 0xc9:
	case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
		return walk_bad(w, "ext not allowed");
	default:
		return walk_bad(w, "reserved byte 0xc1");
	}
}

/*
 * Version first: if the frame opens with a non-empty array whose first element is a
 * non-negative integer, that is the version, whatever follows it. A later version may
 * change everything after it and still get a clean -EPROTO from a version 1 peer.
 */
static bool peek_version(const uint8_t *p, size_t len, uint64_t *v)
{
	size_t off;
	uint8_t b;

	if (p[0] >= 0x91 && p[0] <= 0x9f)
		off = 1;
	else if (p[0] == 0xdc && len >= 3 && load_be(p + 1, 2))
		off = 3;
	else if (p[0] == 0xdd && len >= 5 && load_be(p + 1, 4))
		off = 5;
	else
		return false;
	if (off >= len)
		return false;
	b = p[off++];
	if (b <= 0x7f) {
		*v = b;
		return true;
	}
	if (b >= 0xcc && b <= 0xd3) {
		unsigned n = 1u << (b & 3u);
		if (n > len - off)
			return false;
		*v = load_be(p + off, n);
		/* int8..int64 with the sign bit set: negative, not a version */
		return b <= 0xcf || !(p[off] & 0x80);
	}
	return false;
}

/* ---- decoder: msgpack objects to structs ---- */

static int read_body(struct ctx *c, const struct table *t, const msgpack_object *o, char *base);

static int read_uint(struct ctx *c, const struct field *f, const msgpack_object *o, uint64_t *v)
{
	int ret;

	if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
		ret = check_uint(c, f, o->via.u64);
	else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
		ret = check_int(c, f, o->via.i64);
	else
		return fail(c, f->key, "wrong type: expected %s",
			    f->kind == F_INT ? "int" : "uint");
	*v = o->via.u64;
	return ret;
}

static int read_field(struct ctx *c, const struct field *f, const msgpack_object *o, char *base)
{
	char *p = base + f->off;
	uint64_t v;
	size_t old;
	int ret;

	switch (f->kind) {
	case F_UINT:
	case F_PAGE:
	case F_ARENA:
		ret = read_uint(c, f, o, &v);
		if (!ret)
			store_uint(p, f->size, v);
		return ret;
	case F_INT:
		ret = read_uint(c, f, o, &v);
		if (!ret)
			store_i32(p, (int32_t)o->via.i64);
		return ret;
	case F_BOOL:
		if (o->type != MSGPACK_OBJECT_BOOLEAN)
			return fail(c, f->key, "wrong type: expected bool");
		store_bool(p, o->via.boolean);
		return 0;
	case F_STR:
		if (o->type != MSGPACK_OBJECT_STR)
			return fail(c, f->key, "wrong type: expected str");
		if (o->via.str.size > f->max)
			return fail(c, f->key, "too long: max %llu bytes",
				    (unsigned long long)f->max);
		if (o->via.str.size < (uint64_t)f->min)
			return fail(c, f->key, "empty");
		if (o->via.str.size && memchr(o->via.str.ptr, '\0', o->via.str.size))
			return fail(c, f->key, "embedded nul");
		if (o->via.str.size)
			memcpy(p, o->via.str.ptr, o->via.str.size);
		p[o->via.str.size] = '\0';
		return 0;
	case F_BIN16:
		if (o->type != MSGPACK_OBJECT_BIN)
			return fail(c, f->key, "wrong type: expected bin");
		if (o->via.bin.size != 16)
			return fail(c, f->key, "wrong length: expected 16 bytes");
		memcpy(p, o->via.bin.ptr, 16);
		return 0;
	case F_MAP:
		if (o->type != MSGPACK_OBJECT_MAP)
			return fail(c, f->key, "wrong type: expected map");
		old = path_push(c, f->key, -1);
		ret = read_body(c, f->sub, o, p);
		path_pop(c, old);
		return ret;
	case F_ARRAY:
		if (o->type != MSGPACK_OBJECT_ARRAY)
			return fail(c, f->key, "wrong type: expected array");
		if (o->via.array.size < (uint64_t)f->min || o->via.array.size > f->max)
			return fail(c, f->key, "out of range %lld..%llu entries", (long long)f->min,
				    (unsigned long long)f->max);
		for (uint32_t i = 0; i < o->via.array.size; i++) {
			const msgpack_object *e = &o->via.array.ptr[i];
			char name[32];

			if (e->type != MSGPACK_OBJECT_MAP) {
				snprintf(name, sizeof(name), "%s[%u]", f->key, (unsigned)i);
				return fail(c, name, "wrong type: expected map");
			}
			old = path_push(c, f->key, (int)i);
			ret = read_body(c, f->sub, e, p + i * f->elem_size);
			path_pop(c, old);
			if (ret)
				return ret;
		}
		store_uint(base + f->cnt_off, sizeof(uint32_t), o->via.array.size);
		return 0;
	}
	return fail(c, f->key, "bad field kind");
}

/* Name a key from the wire for a fault: printable ASCII only, since it may end up in an
 * ERROR frame and a log line. */
static void key_name(char *out, size_t n, const msgpack_object_str *k)
{
	size_t i;

	if (!k->size) {
		snprintf(out, n, "\"\"");
		return;
	}
	for (i = 0; i < k->size && i + 1 < n; i++) {
		unsigned char ch = (unsigned char)k->ptr[i];
		out[i] = ch > 0x20 && ch < 0x7f ? (char)ch : '?';
	}
	out[i] = '\0';
}

/* The map o against table t: each key known and present once, then every value checked. */
static int read_body(struct ctx *c, const struct table *t, const msgpack_object *o, char *base)
{
	const msgpack_object *vals[MAX_KEYS] = { NULL };
	char name[sizeof(c->path)];

	for (uint32_t i = 0; i < o->via.map.size; i++) {
		const msgpack_object_kv *kv = &o->via.map.ptr[i];
		unsigned j;

		if (kv->key.type != MSGPACK_OBJECT_STR) {
			map_name(c, name, sizeof(name));
			return fail_at(c, name, "wrong type: keys must be str");
		}
		for (j = 0; j < t->n; j++)
			if (strlen(t->f[j].key) == kv->key.via.str.size &&
			    !memcmp(t->f[j].key, kv->key.via.str.ptr, kv->key.via.str.size))
				break;
		if (j == t->n) {
			key_name(name, sizeof(name), &kv->key.via.str);
			return fail(c, name, "unknown key");
		}
		if (vals[j])
			return fail(c, t->f[j].key, "duplicate key");
		vals[j] = &kv->val;
	}
	for (unsigned j = 0; j < t->n; j++)
		if (!vals[j])
			return fail(c, t->f[j].key, "missing");
	for (unsigned j = 0; j < t->n; j++) {
		int ret = read_field(c, &t->f[j], vals[j], base);
		if (ret)
			return ret;
	}
	return 0;
}

static int read_frame(struct ctx *c, const msgpack_object *root, struct lbp_msg *m)
{
	const msgpack_object *e;

	if (root->type != MSGPACK_OBJECT_ARRAY)
		return fail(c, "frame", "wrong type: expected array");
	if (root->via.array.size == 0)
		return fail(c, "frame", "expected 3 elements, got 0");
	e = &root->via.array.ptr[0];
	if (e->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
		return fail(c, "version", "wrong type: expected uint");
	if (e->via.u64 != LBP_VERSION) {
		fail(c, "version", "unsupported version %llu (want %u)",
		     (unsigned long long)e->via.u64, LBP_VERSION);
		return -EPROTO;
	}
	if (root->via.array.size != 3)
		return fail(c, "frame", "expected 3 elements, got %u",
			    (unsigned)root->via.array.size);
	e = &root->via.array.ptr[1];
	if (e->type != MSGPACK_OBJECT_POSITIVE_INTEGER &&
	    e->type != MSGPACK_OBJECT_NEGATIVE_INTEGER)
		return fail(c, "type", "wrong type: expected uint");
	if (e->type == MSGPACK_OBJECT_NEGATIVE_INTEGER || e->via.u64 < LBP_TYPE_MIN ||
	    e->via.u64 > LBP_TYPE_MAX)
		return fail(c, "type", "out of range %u..%u", LBP_TYPE_MIN, LBP_TYPE_MAX);
	if (!lbp_type_known(e->via.u64))
		return fail(c, "type", "unknown type %u", (unsigned)e->via.u64);
	m->type = (enum lbp_type)e->via.u64;
	e = &root->via.array.ptr[2];
	if (e->type != MSGPACK_OBJECT_MAP)
		return fail(c, "body", "wrong type: expected map");
	return read_body(c, &bodies[m->type], e, (char *)&m->u);
}

static int decode(struct ctx *c, const uint8_t *p, size_t len, struct lbp_msg *m)
{
	struct walk w = { p, len, 0, 0, NULL };
	msgpack_unpacked u;
	msgpack_unpack_return r;
	size_t off = 0;
	uint64_t v;
	int ret;

	if (len > LBP_MAX_FRAME) {
		fail(c, "frame", "longer than %u bytes", LBP_MAX_FRAME);
		return -EMSGSIZE;
	}
	if (len == 0)
		return fail(c, "frame", "empty");
	if (peek_version(p, len, &v) && v != LBP_VERSION) {
		fail(c, "version", "unsupported version %llu (want %u)", (unsigned long long)v,
		     LBP_VERSION);
		return -EPROTO;
	}
	if (walk_obj(&w, 1))
		return fail(c, "frame", "%s", w.why);
	if (w.off != len)
		return fail(c, "frame", "trailing bytes");

	msgpack_unpacked_init(&u);
	r = msgpack_unpack_next(&u, (const char *)p, len, &off);
	if (r == MSGPACK_UNPACK_NOMEM_ERROR) {
		fail(c, "frame", "out of memory");
		ret = -ENOMEM;
	} else if (r != MSGPACK_UNPACK_SUCCESS) {
		ret = fail(c, "frame", "not msgpack");
	} else if (off != len) {
		ret = fail(c, "frame", "trailing bytes");
	} else {
		ret = read_frame(c, &u.data, m);
	}
	msgpack_unpacked_destroy(&u);
	return ret;
}

int lbp_decode(const void *buf, size_t len, struct lbp_msg *out, struct lbp_fault *fault)
{
	struct ctx c = { .err = -EBADMSG };
	struct lbp_msg m;
	int ret;

	/* Zero first: unused arena slots and string tails read as zero, never as stale data. */
	memset(&m, 0, sizeof(m));
	if (!buf && len)
		ret = fail(&c, "frame", "no buffer");
	else
		ret = decode(&c, buf, len, &m);
	if (fault)
		*fault = c.fault;
	/* memcpy, not assignment: padding bytes too, so that two decoded messages compare equal
	 * with memcmp exactly when their fields do (the fuzzer's round trip relies on it). */
	if (!ret)
		memcpy(out, &m, sizeof(m));
	return ret;
}

/* ---- helpers ---- */

/* A negative code is taken as -errno, so both `rc` and `-rc` do what the caller meant. */
void lbp_make_error(struct lbp_msg *m, int code, const char *field, const char *fmt, ...)
{
	struct lbp_error *e = &m->u.error;
	va_list ap;

	memset(m, 0, sizeof(*m));
	m->type = LBP_ERROR;
	e->code = code < 0 && code != INT32_MIN ? -code : code;
	snprintf(e->field, sizeof(e->field), "%s", field ? field : "");
	va_start(ap, fmt);
	if (vsnprintf(e->message, sizeof(e->message), fmt, ap) < 0)
		e->message[0] = '\0';
	va_end(ap);
}

const char *lbp_type_name(enum lbp_type t)
{
	switch (t) {
	case LBP_HELLO: return "HELLO";
	case LBP_WELCOME: return "WELCOME";
	case LBP_REGISTER_MODEL: return "REGISTER_MODEL";
	case LBP_MODEL: return "MODEL";
	case LBP_STATS: return "STATS";
	case LBP_STATS_REPLY: return "STATS_REPLY";
	case LBP_BYE: return "BYE";
	case LBP_ERROR: return "ERROR";
	case LBP_MODEL_STATS: return "MODEL_STATS";
	case LBP_MODEL_STATS_REPLY: return "MODEL_STATS_REPLY";
	case LBP_LOOKUP: return "LOOKUP";
	case LBP_LOOKUP_REPLY: return "LOOKUP_REPLY";
	case LBP_SNAPSHOT: return "SNAPSHOT";
	case LBP_SNAPSHOT_REPLY: return "SNAPSHOT_REPLY";
	case LBP_FLUSH: return "FLUSH";
	case LBP_FLUSH_REPLY: return "FLUSH_REPLY";
	case LBP_CONFIG_GET: return "CONFIG_GET";
	case LBP_CONFIG_REPLY: return "CONFIG_REPLY";
	case LBP_CONFIG_SET: return "CONFIG_SET";
	}
	return "UNKNOWN";
}

bool lbp_type_known(uint64_t t)
{
	return t >= LBP_TYPE_MIN && t <= LBP_TYPE_MAX;
}
