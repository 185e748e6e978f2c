/*
 * Seeds for the fuzz targets: every control message type encoded valid (typical and at its
 * limits) and a few frames each check of PROTOCOL.md section 2 rejects, for fuzz_lbp_decode;
 * scripts of ring requests (fuzz_ring_entry.c describes the format) that insert, hit, report,
 * release, evict, expire, hit the lease limit, fill the completion ring and fail each check of
 * Ring protocol 6, claim inputs with single-flight's flags (Ring protocol 15: claims taken,
 * refused, released, past their bound, at the handle limit), and insert and look up chains of
 * prefix blocks (their keys from
 * lb_block_keys, so that they chain as a client's do), for fuzz_ring_entry; snapshot files of
 * every dtype and rank with up to three models, with prefix blocks in chains, with token ids,
 * in version 3, and files the loader's checks refuse, for fuzz_snapshot; and
 * fuzz_lbp_decode.dict, the body keys as they appear on the wire. Deterministic:
 * test_fuzz_corpus checks that the committed files are these.
 *
 * Usage: fuzz_corpus_gen DIR   (writes DIR/corpus/<target>/ and DIR/fuzz_lbp_decode.dict,
 * making the folders; tests/fuzz to regenerate the committed ones)
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <msgpack.h>
#include <xxhash.h>

#include "layerbank/layerbank.h"
#include "layerbank/ring.h"
#include "lbp.h"

static const char *root;

__attribute__((format(printf, 1, 2), noreturn))
static void die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "fuzz_corpus_gen: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static void put(const char *target, const char *name, const void *p, size_t n)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/corpus/%s/%s", root, target, name);
	f = fopen(path, "wb");
	if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0)
		die("%s: %s", path, strerror(errno));
}

/* ---- control messages ---- */

#define DECODE "fuzz_lbp_decode"

static uint8_t frame[LBP_MAX_FRAME + 16];

static size_t encode(const struct lbp_msg *m)
{
	int n = lbp_encode(m, frame, sizeof(frame));
	if (n <= 0)
		die("cannot encode %s: %d", lbp_type_name(m->type), n);
	return (size_t)n;
}

static void put_msg(const char *name, const struct lbp_msg *m)
{
	put(DECODE, name, frame, encode(m));
}

static struct lbp_msg msg(enum lbp_type t)
{
	struct lbp_msg m;

	memset(&m, 0, sizeof(m));
	m.type = t;
	switch (t) {
	case LBP_HELLO:
		m.u.hello.shm_abi = LB_SHM_ABI_VERSION;
		strcpy(m.u.hello.name, "worker-0");
		m.u.hello.staging_bytes = 8u << 20;
		break;
	case LBP_WELCOME:
		m.u.welcome.client_id = 7;
		for (unsigned i = 0; i < 16; i++)
			m.u.welcome.boot_id[i] = (uint8_t)(i * 17);
		m.u.welcome.page_size = 2097152;
		m.u.welcome.n_arenas = 2;
		m.u.welcome.arenas[0] = (struct lbp_arena_desc){ 1ull << 30, 0, 0, 0 };
		m.u.welcome.arenas[1] = (struct lbp_arena_desc){ 1ull << 30, -1, 3, 1 };
		m.u.welcome.region = (struct lbp_region_desc){ 256, 256, 8388608, 8433664 };
		break;
	case LBP_REGISTER_MODEL:
		strcpy(m.u.reg.name, "stories260k");
		m.u.reg.weights_hash = 0x0123456789abcdefull;
		m.u.reg.n_layers = 5;
		m.u.reg.hidden = 64;
		m.u.reg.dtype = LBP_DTYPE_F32;
		m.u.reg.max_seq = 512;
		m.u.reg.fp = (struct lbp_fp_spec){ 64, 256, 3 };
		m.u.reg.kv = (struct lbp_kv_spec){ 32, 16, 5 }; /* 4 KV heads of 8 */
		break;
	case LBP_MODEL:
		m.u.model.model_id = 3;
		m.u.model.created = true;
		break;
	case LBP_STATS_REPLY:
		m.u.stats.page_size = 4096;
		m.u.stats.arena_bytes = 1ull << 30;
		m.u.stats.numa_nodes = 1;
		m.u.stats.clients = 4;
		m.u.stats.models = 1;
		m.u.stats.uptime_s = 60;
		m.u.stats.threads = 1;
		strcpy(m.u.stats.policy, "lru");
		m.u.stats.hits = 900;
		m.u.stats.misses = 100;
		m.u.stats.inserts = 500;
		m.u.stats.entries = 480;
		m.u.stats.bytes_used = 1u << 20;
		m.u.stats.bytes_budget = 1ull << 30;
		m.u.stats.fragmentation_ppm = 1234;
		m.u.stats.blocks = 40;
		m.u.stats.prefix_hits = 12;
		m.u.stats.prefix_misses = 3;
		m.u.stats.blocks_served = 57;
		strcpy(m.u.stats.l2, "up");
		m.u.stats.l2_queue_bytes = 3u << 20;
		m.u.stats.l2_queue_records = 24;
		m.u.stats.l2_fetches_waiting = 2;
		m.u.stats.l2_written = 456;
		m.u.stats.l2_dropped = 1;
		m.u.stats.l2_write_errors = 2;
		m.u.stats.l2_fetched = 30;
		m.u.stats.l2_fetch_misses = 70;
		m.u.stats.l2_rejected = 1;
		m.u.stats.l2_fetch_errors = 3;
		m.u.stats.tenants = 2;
		m.u.stats.n_nodes = 2; /* arenas on node 0, and unbound ones */
		m.u.stats.nodes[0] = (struct lbp_node_stats){ -1, 1u << 29, 1u << 19, 200, 300, 250, 0, 1 };
		m.u.stats.nodes[1] = (struct lbp_node_stats){ 0, 1u << 29, 1u << 19, 320, 600, 250, 7, 3 };
		break;
	case LBP_ERROR:
		m.u.error.code = EBADMSG;
		strcpy(m.u.error.field, "n_layers");
		strcpy(m.u.error.message, "out of range 1..1024");
		break;
	case LBP_MODEL_STATS:
		m.u.mstats.model_id = 1;
		break;
	case LBP_MODEL_STATS_REPLY:
		m.u.mstats_reply.model_id = 1;
		strcpy(m.u.mstats_reply.name, "bert-base");
		m.u.mstats_reply.n_layers = 12;
		m.u.mstats_reply.n = 2;
		m.u.mstats_reply.layers[0] = (struct lbp_layer_stats){ 5, 1, 6, 0, 6, 393216, 1,
								       16, 3, 1, 41000 };
		m.u.mstats_reply.layers[1] = (struct lbp_layer_stats){ 4, 2, 6, 1, 5, 327680, 0,
								       20, 0, 0, 0 };
		break;
	case LBP_LOOKUP:
		m.u.lookup = (struct lbp_lookup){ 1, 128, 1, 2, 3, 4, 5, 6 };
		break;
	case LBP_LOOKUP_REPLY:
		m.u.lookup_reply = (struct lbp_lookup_reply){ 0, 4, 3, 0, 4096 };
		break;
	case LBP_FLUSH:
		m.u.flush = (struct lbp_flush){ 1, 3 };
		break;
	case LBP_FLUSH_REPLY:
		m.u.flush_reply = (struct lbp_flush_reply){ 25, 9830400, 2 };
		break;
	case LBP_CONFIG_GET:
		strcpy(m.u.config_get.key, "tau.bert-base");
		break;
	case LBP_CONFIG_REPLY:
		m.u.config_reply.total = 2;
		m.u.config_reply.n = 2;
		strcpy(m.u.config_reply.items[0].key, "budget");
		strcpy(m.u.config_reply.items[0].value, "64M");
		strcpy(m.u.config_reply.items[1].key, "tau");
		strcpy(m.u.config_reply.items[1].value, "0.98");
		break;
	case LBP_CONFIG_SET:
		strcpy(m.u.config_set.key, "policy");
		strcpy(m.u.config_set.value, "decay");
		break;
	case LBP_SNAPSHOT_REPLY:
		m.u.snapshot_reply = (struct lbp_snapshot_reply){ 682, 268566528, 2130 };
		break;
	case LBP_STATS:
	case LBP_BYE:
	case LBP_SNAPSHOT:
		break;
	}
	return m;
}

/* Each type as its snake-case name, for file names. */
static const char *type_file(enum lbp_type t)
{
	static char name[32];
	const char *s = lbp_type_name(t);
	size_t i;

	for (i = 0; s[i] && i + 1 < sizeof(name); i++)
		name[i] = s[i] == '_' ? '-' : (char)(s[i] | 0x20);
	name[i] = '\0';
	return name;
}

static void raw(const char *name, const void *p, size_t n)
{
	put(DECODE, name, p, n);
}

/* A node row with every count at its largest. */
static struct lbp_node_stats max_node(int32_t node)
{
	return (struct lbp_node_stats){ node, UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX,
					UINT64_MAX, UINT64_MAX, UINT32_MAX };
}

/* STATS_REPLY m (LBP_MAX_NODES rows, all of one length) with a 17th row: nodes is the body's
 * last key, so its rows end the frame; the array16 header grows to 17 and the last row is
 * written once more. */
static void put_nodes_17(const struct lbp_msg *full)
{
	struct lbp_msg m = *full;
	static uint8_t bad[LBP_MAX_FRAME];
	size_t n16, n15, row;

	n16 = encode(&m);
	memcpy(bad, frame, n16);
	m.u.stats.n_nodes = LBP_MAX_NODES - 1;
	n15 = encode(&m);
	row = n16 - n15 - 2; /* 15 rows have a fixarray header, 16 an array16 one */
	uint8_t *hdr = bad + n16 - LBP_MAX_NODES * row - 3;
	if (hdr[0] != 0xdc || hdr[1] != 0 || hdr[2] != LBP_MAX_NODES)
		die("no array16 of %u nodes at the end of STATS_REPLY", LBP_MAX_NODES);
	hdr[2] = LBP_MAX_NODES + 1;
	memcpy(bad + n16, bad + n16 - row, row);
	raw("bad-nodes-17", bad, n16 + row);
}

/* A frame written by hand with msgpack-c: [version, type, {key: value...}]. */
struct hand {
	msgpack_sbuffer sb;
	msgpack_packer pk;
};

static void hand_start(struct hand *h, uint64_t version, uint64_t type, uint32_t keys)
{
	msgpack_sbuffer_init(&h->sb);
	msgpack_packer_init(&h->pk, &h->sb, msgpack_sbuffer_write);
	msgpack_pack_array(&h->pk, 3);
	msgpack_pack_uint64(&h->pk, version);
	msgpack_pack_uint64(&h->pk, type);
	msgpack_pack_map(&h->pk, keys);
}

static void hand_key(struct hand *h, const char *k)
{
	msgpack_pack_str(&h->pk, strlen(k));
	msgpack_pack_str_body(&h->pk, k, strlen(k));
}

static void hand_put(struct hand *h, const char *name)
{
	raw(name, h->sb.data, h->sb.size);
	msgpack_sbuffer_destroy(&h->sb);
}

static void decode_seeds(void)
{
	struct lbp_msg m;
	char name[64];
	size_t n;

	for (int t = LBP_TYPE_MIN; t <= LBP_TYPE_MAX; t++) {
		m = msg((enum lbp_type)t);
		snprintf(name, sizeof(name), "%s", type_file((enum lbp_type)t));
		put_msg(name, &m);
	}

	/* At the limits. */
	m = msg(LBP_HELLO);
	m.u.hello.shm_abi = UINT32_MAX;
	memset(m.u.hello.name, 'h', LBP_MAX_NAME);
	m.u.hello.req_entries = m.u.hello.cpl_entries = LBP_MAX_RING;
	m.u.hello.staging_bytes = LBP_MAX_STAGING;
	put_msg("hello-max", &m);
	memset(&m.u.hello, 0, sizeof(m.u.hello));
	put_msg("hello-min", &m);

	m = msg(LBP_WELCOME);
	m.u.welcome.n_arenas = LBP_MAX_ARENAS;
	for (unsigned i = 0; i < LBP_MAX_ARENAS; i++)
		m.u.welcome.arenas[i] = (struct lbp_arena_desc){ UINT64_MAX - 4095 - 4096ull * i,
								 i % 2 ? -1 : INT32_MAX, i,
								 LBP_MAX_ARENAS - 1 - i };
	m.u.welcome.region = (struct lbp_region_desc){ LBP_MAX_RING, 8, LBP_MAX_STAGING, 4096 };
	put_msg("welcome-max-arenas", &m);

	m = msg(LBP_REGISTER_MODEL);
	memset(m.u.reg.name, 'n', LBP_MAX_NAME);
	m.u.reg.n_layers = LBP_MAX_LAYERS;
	m.u.reg.hidden = LBP_MAX_HIDDEN;
	m.u.reg.dtype = LBP_DTYPE_BF16;
	m.u.reg.max_seq = LBP_MAX_SEQ;
	m.u.reg.fp.seed = UINT64_MAX;
	m.u.reg.kv = (struct lbp_kv_spec){ LBP_MAX_HIDDEN, LBP_MAX_BLOCK_TOKENS, LBP_MAX_LAYERS };
	put_msg("register-model-max", &m);
	m = msg(LBP_REGISTER_MODEL);
	m.u.reg.kv = (struct lbp_kv_spec){ 0, 0, 0 }; /* an encoder: no prefix blocks */
	put_msg("register-model-no-kv", &m);
	m = msg(LBP_REGISTER_MODEL);
	m.u.reg.kv.layers = 3; /* a FusedKV model's storage layers: 3 of its 5 */
	put_msg("register-model-fusedkv", &m);

	m = msg(LBP_STATS_REPLY);
	m.u.stats.page_size = 2097152;
	m.u.stats.hugepages = true;
	m.u.stats.hits = m.u.stats.bytes_budget = m.u.stats.blocks_served = UINT64_MAX;
	strcpy(m.u.stats.policy, "decay");
	m.u.stats.fragmentation_ppm = 1000000;
	strcpy(m.u.stats.l2, "down");
	m.u.stats.l2_queue_bytes = m.u.stats.l2_written = m.u.stats.l2_fetch_errors = UINT64_MAX;
	m.u.stats.tenants = UINT32_MAX;
	m.u.stats.n_nodes = LBP_MAX_NODES;
	for (unsigned i = 0; i < LBP_MAX_NODES; i++)
		m.u.stats.nodes[i] = max_node(INT32_MAX - (int32_t)i);
	put_msg("stats-reply-max", &m);
	put_nodes_17(&m);
	m = msg(LBP_STATS_REPLY); /* a daemon without a second tier: "off", its counts 0 */
	strcpy(m.u.stats.l2, "off");
	m.u.stats.l2_queue_bytes = m.u.stats.l2_queue_records = m.u.stats.l2_fetches_waiting = 0;
	m.u.stats.l2_written = m.u.stats.l2_dropped = m.u.stats.l2_write_errors = 0;
	m.u.stats.l2_fetched = m.u.stats.l2_fetch_misses = m.u.stats.l2_rejected = 0;
	m.u.stats.l2_fetch_errors = 0;
	put_msg("stats-reply-no-tier", &m);
	m = msg(LBP_STATS_REPLY); /* a daemon that counts neither tenants nor nodes */
	m.u.stats.tenants = 0;
	m.u.stats.n_nodes = 0;
	put_msg("stats-reply-no-nodes", &m);

	m = msg(LBP_MODEL_STATS_REPLY);
	m.u.mstats_reply.n_layers = LBP_MAX_LAYERS;
	m.u.mstats_reply.first_layer = 960;
	m.u.mstats_reply.n = LBP_MAX_STATS_LAYERS;
	for (unsigned i = 0; i < LBP_MAX_STATS_LAYERS; i++)
		m.u.mstats_reply.layers[i] = (struct lbp_layer_stats){ i, UINT64_MAX, 1, 0, i, 0, 0,
								       LBP_FP_BITS, UINT64_MAX, i, 0 };
	put_msg("model-stats-reply-64-layers", &m);

	m = msg(LBP_ERROR);
	m.u.error.code = INT32_MAX;
	memset(m.u.error.field, 'f', sizeof(m.u.error.field) - 1);
	memset(m.u.error.message, 'm', LBP_MAX_ERRMSG);
	put_msg("error-max", &m);

	m = msg(LBP_LOOKUP_REPLY);
	m.u.lookup_reply = (struct lbp_lookup_reply){ -4095, 1023, 256, 7, UINT64_MAX };
	put_msg("lookup-reply-limits", &m);

	/* Valid in other encodings: keys in reverse order, wide integers, str8 keys. */
	struct hand h;
	uint8_t *at;
	hand_start(&h, LBP_VERSION, LBP_MODEL, 2);
	hand_key(&h, "created");
	msgpack_pack_false(&h.pk);
	hand_key(&h, "model_id");
	msgpack_pack_uint64(&h.pk, 9);
	hand_put(&h, "model-keys-reversed");
	static const uint8_t wide[] = { 0x93, 0xcf, 0, 0, 0, 0, 0, 0, 0, LBP_VERSION, 0xd0, 0x05,
					0xde, 0, 0 };
	raw("stats-wide-ints", wide, sizeof(wide));
	static const uint8_t str8[] = { 0x93, LBP_VERSION, 0x09, 0x82, 0xd9, 0x08, 'm', 'o', 'd',
					'e', 'l', '_', 'i', 'd', 0x01, 0xd9, 0x0b, 'f', 'i', 'r', 's', 't', '_',
					'l', 'a', 'y', 'e', 'r', 0xcd, 0x03, 0xff };
	raw("model-stats-str8-keys", str8, sizeof(str8));

	/* Rejected, one per check. Version 1 is the protocol before prefix blocks, 3 the one
	 * before the second tier's counters in STATS_REPLY, 4 the one before its nodes and
	 * tenants, 6 a later one. */
	static const uint8_t v1[] = { 0x93, 0x01, 0x05, 0x80 };
	raw("bad-version-1", v1, sizeof(v1));
	static const uint8_t v3[] = { 0x93, 0x03, 0x05, 0x80 };
	raw("bad-version-3", v3, sizeof(v3));
	static const uint8_t v4[] = { 0x93, 0x04, 0x05, 0x80 };
	raw("bad-version-4", v4, sizeof(v4));
	static const uint8_t v6[] = { 0x93, 0x06, 0x05, 0x80 };
	raw("bad-version-6", v6, sizeof(v6));
	static const uint8_t vneg[] = { 0x93, 0xff, 0x05, 0x80 };
	raw("bad-version-negative", vneg, sizeof(vneg));
	static const uint8_t v64[] = { 0xdc, 0x00, 0x03, 0xcf, 1, 0, 0, 0, 0, 0, 0, 0, 0x05, 0x80 };
	raw("bad-version-array16-huge", v64, sizeof(v64));
	static const uint8_t trailing[] = { 0x93, LBP_VERSION, 0x05, 0x80, 0x00 };
	raw("bad-trailing-byte", trailing, sizeof(trailing));
	m = msg(LBP_REGISTER_MODEL);
	n = encode(&m);
	raw("bad-truncated", frame, n - 3);
	static const uint8_t flt[] = { 0x93, LBP_VERSION, 0x04, 0x82, 0xa8, 'm', 'o', 'd', 'e', 'l',
				       '_', 'i', 'd', 0xca, 0x3f, 0x80, 0, 0, 0xa7, 'c', 'r', 'e', 'a',
				       't', 'e', 'd', 0xc3 };
	raw("bad-float", flt, sizeof(flt));
	static const uint8_t ext[] = { 0x93, LBP_VERSION, 0x05, 0xd4, 0x01, 0x00 };
	raw("bad-ext", ext, sizeof(ext));
	static const uint8_t c1[] = { 0x93, LBP_VERSION, 0x05, 0xc1 };
	raw("bad-0xc1", c1, sizeof(c1));
	static const uint8_t huge[] = { 0x93, LBP_VERSION, 0x05, 0xdf, 0xff, 0xff, 0xff, 0xff };
	raw("bad-map32-count", huge, sizeof(huge));
	static const uint8_t hugestr[] = { 0x93, LBP_VERSION, 0x01, 0x81, 0xdb, 0xff, 0xff, 0xff,
					   0xf0 };
	raw("bad-str32-length", hugestr, sizeof(hugestr));
	uint8_t deep[16] = { 0x93, LBP_VERSION, 0x05 };
	memset(deep + 3, 0x91, sizeof(deep) - 4);
	deep[sizeof(deep) - 1] = 0x80;
	raw("bad-nesting", deep, sizeof(deep));
	/* 4097 objects: [1, 5, {}] with an array of 4094 nils in the body's place. */
	static uint8_t many[3 + 3 + 4094];
	many[0] = 0x93;
	many[1] = LBP_VERSION;
	many[2] = 0x05;
	many[3] = 0xdc;
	many[4] = 4094 >> 8;
	many[5] = 4094 & 0xff;
	memset(many + 6, 0xc0, 4094);
	raw("bad-object-count", many, sizeof(many));
	static const uint8_t empty_array[] = { 0x90 };
	raw("bad-empty-array", empty_array, sizeof(empty_array));
	static const uint8_t type0[] = { 0x93, LBP_VERSION, 0x00, 0x80 };
	raw("bad-type-0", type0, sizeof(type0));
	static const uint8_t nomap[] = { 0x93, LBP_VERSION, 0x05, 0x90 };
	raw("bad-body-array", nomap, sizeof(nomap));

	hand_start(&h, LBP_VERSION, LBP_MODEL_STATS, 3);
	hand_key(&h, "model_id");
	msgpack_pack_uint32(&h.pk, 1);
	hand_key(&h, "first_layer");
	msgpack_pack_uint32(&h.pk, 0);
	hand_key(&h, "bogus\x01key");
	msgpack_pack_nil(&h.pk);
	hand_put(&h, "bad-unknown-key");
	hand_start(&h, LBP_VERSION, LBP_MODEL_STATS, 2);
	hand_key(&h, "model_id");
	msgpack_pack_uint32(&h.pk, 1);
	hand_key(&h, "model_id");
	msgpack_pack_uint32(&h.pk, 2);
	hand_put(&h, "bad-duplicate-key");
	hand_start(&h, LBP_VERSION, LBP_MODEL_STATS, 1);
	hand_key(&h, "model_id");
	msgpack_pack_uint32(&h.pk, 1);
	hand_put(&h, "bad-missing-key");
	hand_start(&h, LBP_VERSION, LBP_MODEL_STATS, 2);
	msgpack_pack_uint32(&h.pk, 1);
	msgpack_pack_uint32(&h.pk, 1);
	hand_key(&h, "first_layer");
	msgpack_pack_uint32(&h.pk, 0);
	hand_put(&h, "bad-int-key");
	hand_start(&h, LBP_VERSION, LBP_MODEL_STATS, 2);
	hand_key(&h, "model_id");
	msgpack_pack_str(&h.pk, 1);
	msgpack_pack_str_body(&h.pk, "1", 1);
	hand_key(&h, "first_layer");
	msgpack_pack_uint32(&h.pk, 0);
	hand_put(&h, "bad-wrong-type");
	hand_start(&h, LBP_VERSION, LBP_MODEL_STATS, 2);
	hand_key(&h, "model_id");
	msgpack_pack_uint32(&h.pk, 1);
	hand_key(&h, "first_layer");
	msgpack_pack_uint32(&h.pk, LBP_MAX_LAYERS);
	hand_put(&h, "bad-out-of-range");

	/* Strings out of their lengths: a HELLO name of 64 bytes, a model name of none. */
	char name64[LBP_MAX_NAME + 2];
	memset(name64, 'x', sizeof(name64) - 1);
	name64[sizeof(name64) - 1] = '\0';
	hand_start(&h, LBP_VERSION, LBP_HELLO, 5);
	hand_key(&h, "shm_abi");
	msgpack_pack_uint32(&h.pk, LB_SHM_ABI_VERSION);
	hand_key(&h, "name");
	msgpack_pack_str(&h.pk, strlen(name64));
	msgpack_pack_str_body(&h.pk, name64, strlen(name64));
	hand_key(&h, "req_entries");
	msgpack_pack_uint32(&h.pk, 0);
	hand_key(&h, "cpl_entries");
	msgpack_pack_uint32(&h.pk, 0);
	hand_key(&h, "staging_bytes");
	msgpack_pack_uint32(&h.pk, 0);
	hand_put(&h, "bad-name-too-long");
	m = msg(LBP_REGISTER_MODEL);
	n = encode(&m);
	static const uint8_t name_str[] = { 0xab, 's', 't', 'o', 'r', 'i', 'e', 's' };
	uint8_t *name_at = memmem(frame, n, name_str, sizeof(name_str));
	if (!name_at)
		die("no name in the REGISTER_MODEL frame");
	name_at[0] = 0xa0; /* an empty str, then the 11 bytes of the old one cut out */
	memmove(name_at + 1, name_at + 12, n - (size_t)(name_at + 12 - frame));
	raw("bad-name-empty", frame, n - 11);
	raw("bad-empty-frame", frame, 0);

	/* A name with a NUL inside: patch the encoded frame. */
	m = msg(LBP_REGISTER_MODEL);
	n = encode(&m);
	at = memmem(frame, n, "stories260k", 11);
	if (!at)
		die("no name in the REGISTER_MODEL frame");
	at[3] = 0;
	raw("bad-embedded-nul", frame, n);
	/* The boot id one byte short: bin8 of 15. */
	m = msg(LBP_WELCOME);
	n = encode(&m);
	static const uint8_t bin16[] = { 0xc4, 16 };
	at = memmem(frame, n, bin16, sizeof(bin16));
	if (!at)
		die("no boot_id in the WELCOME frame");
	at[1] = 15;
	memmove(at + 17, at + 18, n - (size_t)(at + 18 - frame));
	raw("bad-boot-id-15", frame, n - 1);
}

/* The dictionary: every body key as a msgpack str, collected from the encoded seeds, and the
 * type bytes the decoder treats specially. */
struct dict {
	char keys[128][40];
	unsigned n;
};

static void dict_walk(struct dict *d, const msgpack_object *o)
{
	if (o->type == MSGPACK_OBJECT_ARRAY) {
		for (uint32_t i = 0; i < o->via.array.size; i++)
			dict_walk(d, &o->via.array.ptr[i]);
		return;
	}
	if (o->type != MSGPACK_OBJECT_MAP)
		return;
	for (uint32_t i = 0; i < o->via.map.size; i++) {
		const msgpack_object_kv *kv = &o->via.map.ptr[i];
		char k[40];
		bool seen = false;
		snprintf(k, sizeof(k), "%.*s", (int)kv->key.via.str.size, kv->key.via.str.ptr);
		for (unsigned j = 0; j < d->n; j++)
			seen |= strcmp(d->keys[j], k) == 0;
		if (!seen && d->n < 128)
			snprintf(d->keys[d->n++], sizeof(d->keys[0]), "%s", k);
		dict_walk(d, &kv->val);
	}
}

static void write_dict(void)
{
	static struct dict d;
	char path[4096];
	FILE *f;

	for (int t = LBP_TYPE_MIN; t <= LBP_TYPE_MAX; t++) {
		struct lbp_msg m = msg((enum lbp_type)t);
		if (t == LBP_MODEL_STATS_REPLY)
			m.u.mstats_reply.n = 1;
		size_t n = encode(&m), off = 0;
		msgpack_unpacked u;
		msgpack_unpacked_init(&u);
		if (msgpack_unpack_next(&u, (const char *)frame, n, &off) != MSGPACK_UNPACK_SUCCESS)
			die("cannot read back %s", lbp_type_name(m.type));
		dict_walk(&d, &u.data);
		msgpack_unpacked_destroy(&u);
	}
	snprintf(path, sizeof(path), "%s/fuzz_lbp_decode.dict", root);
	f = fopen(path, "w");
	if (!f)
		die("%s: %s", path, strerror(errno));
	fprintf(f, "# libFuzzer dictionary for fuzz_lbp_decode, written by fuzz_corpus_gen: every body\n"
		   "# key as a msgpack fixstr (header byte, then the bytes), then the type bytes the\n"
		   "# decoder treats specially.\n");
	for (unsigned i = 0; i < d.n; i++)
		fprintf(f, "key_%s=\"\\x%02x%s\"\n", d.keys[i], 0xa0 | (unsigned)strlen(d.keys[i]),
			d.keys[i]);
	fprintf(f, "frame_v%u=\"\\x93\\x%02x\"\n", LBP_VERSION, LBP_VERSION);
	fprintf(f, "str8=\"\\xd9\"\nstr32=\"\\xdb\"\nbin8=\"\\xc4\"\nbin32=\"\\xc6\"\n"
		   "uint64=\"\\xcf\"\nint64=\"\\xd3\"\nint8=\"\\xd0\"\n"
		   "array16=\"\\xdc\"\narray32=\"\\xdd\"\nmap16=\"\\xde\"\nmap32=\"\\xdf\"\n"
		   "float32=\"\\xca\"\nfixext1=\"\\xd4\"\nreserved=\"\\xc1\"\n"
		   "nil=\"\\xc0\"\ntrue=\"\\xc3\"\nfalse=\"\\xc2\"\n");
	if (fclose(f) != 0)
		die("%s: %s", path, strerror(errno));
}

/* ---- ring scripts (format: fuzz_ring_entry.c) ---- */

#define RING "fuzz_ring_entry"

enum { BANK_LRU, BANK_DECAY, BANK_TTL0 };
/* The models fuzz_ring_entry registers, by id. */
#define SMALL 1u  /* 4 layers, max_seq 256 */
#define DEEP 2u   /* 1024 layers, max_seq 1048576 */
#define PREFIX 3u /* 2 layers, max_seq 64, kv: dim 32, blocks of 4 tokens */
#define NO_MODEL 9u
#define PB_TOKENS 4u
#define PB_MAX 16u                         /* blocks in max_seq */
#define PB_BYTES (2u * 2 * PB_TOKENS * 32 * 4) /* f32 [2][2][4][32] */
#define PB_PAYLOAD (LB_INSERT_HDR_SIZE + PB_BYTES)

struct script {
	uint8_t b[65536];
	size_t n;
	uint64_t ud;
};

static void emit(struct script *s, const void *p, size_t n)
{
	if (n > sizeof(s->b) - s->n)
		die("script too long");
	if (n)
		memcpy(s->b + s->n, p, n);
	s->n += n;
}

static void emit_u8(struct script *s, uint8_t v)
{
	emit(s, &v, 1);
}

static void emit_le(struct script *s, uint32_t v, unsigned bytes)
{
	for (unsigned i = 0; i < bytes; i++)
		emit_u8(s, (uint8_t)(v >> (8 * i)));
}

static void begin(struct script *s, uint8_t bank)
{
	s->n = 0;
	s->ud = 100;
	emit_u8(s, bank);
}

/* A request with its payload written at its payload_off; lease_ref >= 0 takes that lease. */
static void req(struct script *s, struct lb_req r, const void *payload, size_t n, int lease_ref)
{
	if (!r.user_data)
		r.user_data = s->ud++;
	emit_u8(s, lease_ref >= 0 ? 1 : 0);
	if (lease_ref >= 0)
		emit_u8(s, (uint8_t)lease_ref);
	emit(s, &r, LB_RING_STAMP_OFF);
	emit_le(s, (uint32_t)n, 2);
	emit(s, payload, n);
}

static void stage(struct script *s, uint32_t off, const void *p, size_t n)
{
	emit_u8(s, 2);
	emit_le(s, off, 4);
	emit_le(s, (uint32_t)n, 2);
	emit(s, p, n);
}

static void pump(struct script *s, bool take)
{
	emit_u8(s, take ? 3 : 3 | 8);
}

static void repeat(struct script *s, uint16_t n)
{
	emit_u8(s, 4);
	emit_le(s, n, 2);
}

static void done(struct script *s, const char *name)
{
	put(RING, name, s->b, s->n);
}

/* An input's key: fingerprint and token hash derived from a number. */
static void key(uint32_t k, uint64_t fp[4], uint64_t exact[2])
{
	for (unsigned i = 0; i < 4; i++)
		fp[i] = 0x9e3779b97f4a7c15ull * (k + 1) ^ (0xbf58476d1ce4e5b9ull * (i + 1));
	exact[0] = 0x94d049bb133111ebull * (k + 1);
	exact[1] = ~exact[0];
}

static void ping(struct script *s)
{
	req(s, (struct lb_req){ .opcode = LB_OP_PING }, NULL, 0, -1);
}

static void lookup(struct script *s, uint8_t op, uint32_t model, uint16_t layer, uint32_t seq_len,
		   uint32_t k, const float *thr, uint32_t n_thr, uint32_t off)
{
	static uint8_t p[sizeof(struct lb_query) + 4 * LBP_MAX_LAYERS];
	struct lb_query q = { .n_thr = n_thr };
	key(k, q.fp, q.exact);
	memcpy(p, &q, sizeof(q));
	if (n_thr)
		memcpy(p + sizeof(q), thr, 4 * n_thr);
	req(s, (struct lb_req){ .opcode = op, .layer = layer, .model_id = model, .seq_len = seq_len,
				.payload_off = off, .payload_len = (uint32_t)(sizeof(q) + 4 * n_thr) },
	    p, sizeof(q) + 4 * n_thr, -1);
}

/* An insert of `floats` f32 values (the data written too when `with_data`). */
static void insert(struct script *s, uint32_t model, uint16_t layer, uint32_t seq_len, uint32_t k,
		   uint32_t floats, uint32_t off, bool with_data)
{
	static uint8_t p[LB_INSERT_HDR_SIZE + 4096];
	struct lb_insert_hdr h = { .dtype = 1, .ndim = 2, .shape = { seq_len, floats / seq_len },
				   .bytes = 4ull * floats };
	size_t n = LB_INSERT_HDR_SIZE;
	if (floats % seq_len)
		die("insert: %u floats are not %u rows", floats, seq_len);
	key(k, h.fp, h.exact);
	memset(p, 0, sizeof(p));
	memcpy(p, &h, sizeof(h));
	if (with_data) {
		if (4 * floats > sizeof(p) - n)
			die("insert: too much data to write");
		for (uint32_t i = 0; i < floats; i++) {
			float v = (float)(k * 1000 + layer * 10 + i);
			memcpy(p + n + 4 * i, &v, 4);
		}
		n += 4 * floats;
	}
	req(s, (struct lb_req){ .opcode = LB_OP_INSERT, .layer = layer, .model_id = model,
				.seq_len = seq_len, .payload_off = off,
				.payload_len = (uint32_t)(LB_INSERT_HDR_SIZE + 4 * floats) },
	    p, n, -1);
}

static void release(struct script *s, int lease_ref)
{
	req(s, (struct lb_req){ .opcode = LB_OP_RELEASE }, NULL, 0, lease_ref);
}

/* A REPORT of drift on a lease; layer >= 0: of that layer (AT_LAYER), else the entry's own. */
static void report_at(struct script *s, float drift, int layer, int lease_ref)
{
	uint32_t aux;
	memcpy(&aux, &drift, 4);
	req(s, (struct lb_req){ .opcode = LB_OP_REPORT, .aux = aux,
				.flags = layer >= 0 ? LB_REQ_AT_LAYER : 0,
				.layer = layer >= 0 ? (uint16_t)layer : 0 }, NULL, 0, lease_ref);
}

static void report(struct script *s, float drift, int lease_ref)
{
	report_at(s, drift, -1, lease_ref);
}

/* ---- prefix blocks ---- */

/* The keys of n blocks of a token sequence, as a client computes them (lb_block_keys): seed
 * picks the tokens, and the first `shared` blocks' tokens are the same for every seed. */
static void chain(uint32_t seed, uint32_t shared, uint64_t (*keys)[2], uint32_t n)
{
	int32_t t[LB_PREFIX_MAX_BLOCKS * PB_TOKENS];
	if (n > LB_PREFIX_MAX_BLOCKS)
		die("chain: %u blocks", n);
	for (uint32_t i = 0; i < n * PB_TOKENS; i++)
		t[i] = (int32_t)(i < shared * PB_TOKENS ? 1000 + i : seed * 100000 + i);
	if (lb_block_keys(t, n * PB_TOKENS, PB_TOKENS, keys, n) != n)
		die("lb_block_keys: not %u blocks", n);
}

/* A block header for block index of keys, the prefix model's geometry. */
static struct lb_block_hdr block_hdr(const uint64_t (*keys)[2], uint32_t index)
{
	struct lb_block_hdr h = { .index = index, .dtype = 1, .ndim = 4,
				  .shape = { 2, 2, PB_TOKENS, 32 }, .bytes = PB_BYTES };
	memcpy(h.key, keys[index], sizeof(h.key));
	if (index)
		memcpy(h.parent, keys[index - 1], sizeof(h.parent));
	return h;
}

/* INSERT_BLOCK of h at off (r's other fields as given, else the usual ones); the data written
 * too when with_data, each float a function of the key. */
static void insert_block_req(struct script *s, struct lb_req r, const struct lb_block_hdr *h,
			     bool with_data)
{
	static uint8_t p[PB_PAYLOAD];
	size_t n = LB_INSERT_HDR_SIZE;
	memset(p, 0, sizeof(p));
	memcpy(p, h, sizeof(*h));
	if (with_data) {
		for (uint32_t i = 0; i < PB_BYTES / 4; i++) {
			float v = (float)(h->key[0] & 0xffff) + (float)i;
			memcpy(p + n + 4 * i, &v, 4);
		}
		n += PB_BYTES;
	}
	r.opcode = LB_OP_INSERT_BLOCK;
	if (!r.model_id)
		r.model_id = PREFIX;
	if (!r.seq_len)
		r.seq_len = (h->index + 1) * PB_TOKENS;
	if (!r.payload_len)
		r.payload_len = PB_PAYLOAD;
	req(s, r, p, n, -1);
}

static void insert_block(struct script *s, const uint64_t (*keys)[2], uint32_t index, uint32_t off,
			 bool with_data)
{
	struct lb_block_hdr h = block_hdr(keys, index);
	insert_block_req(s, (struct lb_req){ .payload_off = off }, &h, with_data);
}

/* LOOKUP_PREFIX of keys[0..n) at off; r's other fields as given. */
static void lookup_prefix_req(struct script *s, struct lb_req r, const uint64_t (*keys)[2],
			      uint32_t n)
{
	static uint8_t p[sizeof(struct lb_prefix_query) + 16 * (LB_PREFIX_MAX_BLOCKS + 1)];
	struct lb_prefix_query q = { .n_keys = n };
	if (n > LB_PREFIX_MAX_BLOCKS + 1)
		die("lookup_prefix: %u keys", n);
	memcpy(p, &q, sizeof(q));
	memcpy(p + sizeof(q), keys, 16 * (size_t)n);
	r.opcode = LB_OP_LOOKUP_PREFIX;
	if (!r.model_id)
		r.model_id = PREFIX;
	if (!r.payload_len)
		r.payload_len = (uint32_t)(sizeof(q) + 16 * n);
	req(s, r, p, sizeof(q) + 16 * (size_t)n, -1);
}

static void lookup_prefix(struct script *s, const uint64_t (*keys)[2], uint32_t n, uint32_t off)
{
	lookup_prefix_req(s, (struct lb_req){ .payload_off = off }, keys, n);
}

static void prefix_seeds(struct script *s)
{
	/* One key more than a lookup may bring: the last one stays 0, for the lookup of 257. */
	static uint64_t a[LB_PREFIX_MAX_BLOCKS + 1][2], b[LB_PREFIX_MAX_BLOCKS + 1][2];

	/* A chain of six blocks with their data, the longest run of eight keys (six), REPORT on
	 * its lease (refused), RELEASE, RELEASE again (stale), and keys that start at block 1. */
	begin(s, BANK_LRU);
	chain(1, 0, a, 8);
	for (uint32_t i = 0; i < 6; i++)
		insert_block(s, (const uint64_t(*)[2])a, i, 4096 * i, true);
	pump(s, true);
	lookup_prefix(s, (const uint64_t(*)[2])a, 8, 65536);
	pump(s, true);
	report(s, 0.0f, 0);
	release(s, 0);
	release(s, 0);
	lookup_prefix(s, (const uint64_t(*)[2])a + 1, 5, 65536);
	pump(s, true);
	done(s, "prefix-chain");

	/* Two sequences that share their first two blocks: one tree. The second's blocks 0 and 1
	 * are cached already; each finds its own five; two hits, two leases. Then keys that mix
	 * the branches: block 3 of the second is at place 3, but not under the first's block 2. */
	begin(s, BANK_DECAY);
	chain(2, 2, a, 5);
	chain(3, 2, b, 5);
	for (uint32_t i = 0; i < 5; i++)
		insert_block(s, (const uint64_t(*)[2])a, i, 4096 * i, i == 4);
	for (uint32_t i = 0; i < 5; i++)
		insert_block(s, (const uint64_t(*)[2])b, i, 32768 + 4096 * i, false);
	pump(s, true);
	lookup_prefix(s, (const uint64_t(*)[2])b, 5, 65536);
	lookup_prefix(s, (const uint64_t(*)[2])a, 5, 65536 + 4096);
	memcpy(a[3], b[3], sizeof(a[3]));
	lookup_prefix(s, (const uint64_t(*)[2])a, 5, 65536 + 8192);
	pump(s, true);
	done(s, "prefix-branches");

	/* The answers are written over the keys: the same request again reads them as keys (a
	 * miss), and an insert served after a hit whose payload lies in its data (only its header
	 * written) stores the answers. */
	begin(s, BANK_LRU);
	chain(4, 0, a, 3);
	for (uint32_t i = 0; i < 3; i++)
		insert_block(s, (const uint64_t(*)[2])a, i, 4096 * i, false);
	pump(s, true);
	lookup_prefix(s, (const uint64_t(*)[2])a, 3, 65536);
	repeat(s, 1);
	lookup_prefix(s, (const uint64_t(*)[2])a, 3, 65536 + 8192 + LB_INSERT_HDR_SIZE);
	insert(s, SMALL, 0, 4, 91, 16, 65536 + 8192, false);
	pump(s, true);
	done(s, "prefix-answers-in-place");

	/* Refusals, in the order of Ring protocol 6 and 10. */
	begin(s, BANK_LRU);
	chain(5, 0, a, 3);
	insert_block(s, (const uint64_t(*)[2])a, 0, 0, false);
	insert_block(s, (const uint64_t(*)[2])a, 0, 4096, false);        /* EEXIST */
	insert_block(s, (const uint64_t(*)[2])a, 2, 8192, false);        /* ENOENT: no parent */
	{
		struct lb_block_hdr h = block_hdr((const uint64_t(*)[2])a, 1);
		struct lb_block_hdr bad[12];
		for (int i = 0; i < 12; i++)
			bad[i] = h;
		bad[0].key[0] = bad[0].key[1] = 0;         /* key 0, 0 */
		bad[1].reserved = 1;
		bad[2].dtype = 2;                          /* EINVAL (step 4): not the model's */
		bad[2].bytes = PB_BYTES / 2;
		bad[3].ndim = 3;
		bad[3].shape[3] = 0;
		bad[3].bytes = PB_BYTES / 32;
		bad[4].shape[0] = 3;                       /* all 3 layers, not kv.layers' 2 */
		bad[4].bytes = PB_BYTES / 2 * 3;
		bad[5].shape[2] = 8;                       /* block_tokens */
		bad[5].shape[3] = 16;
		bad[6].bytes = PB_BYTES + 4;               /* bytes against the shape */
		bad[7].index = 0;                          /* block 0 with a parent */
		bad[8].index = 2;                          /* the parent is at place 0: ENOENT */
		bad[9].index = PB_MAX;                     /* past max_seq */
		bad[10].parent[0] ^= 1;                    /* a parent not cached: ENOENT */
		bad[11].shape[1] = 1;                      /* K without V */
		bad[11].bytes = PB_BYTES / 2;
		for (int i = 0; i < 12; i++) {
			uint32_t seq = i == 8 ? 3 * PB_TOKENS : i == 9 ? (PB_MAX + 1) * PB_TOKENS : 0;
			insert_block_req(s, (struct lb_req){ .payload_off = 16384 + 256u * i,
							     .seq_len = seq }, &bad[i], false);
		}
		insert_block_req(s, (struct lb_req){ .payload_off = 20480, .seq_len = 3 }, &h, false);
		insert_block_req(s, (struct lb_req){ .payload_off = 20736,
						     .payload_len = PB_PAYLOAD - 1 }, &h, false);
		insert_block_req(s, (struct lb_req){ .payload_off = 20992, .layer = 1 }, &h, false);
		insert_block_req(s, (struct lb_req){ .payload_off = 21248, .lease = 7 }, &h, false);
		insert_block_req(s, (struct lb_req){ .payload_off = 21504, .model_id = SMALL }, &h,
				 false);                   /* a model without blocks */
		insert_block_req(s, (struct lb_req){ .payload_off = 21760, .model_id = NO_MODEL }, &h,
				 false);                   /* ESRCH */
		stage(s, 22016, &h, sizeof(h));
		stage(s, 22016 + 100, "x", 1);             /* the header area's unused bytes */
		req(s, (struct lb_req){ .opcode = LB_OP_INSERT_BLOCK, .model_id = PREFIX,
					.seq_len = 2 * PB_TOKENS, .payload_off = 22016,
					.payload_len = PB_PAYLOAD }, NULL, 0, -1);
		insert_block_req(s, (struct lb_req){ .payload_off = 22272 }, &h, true); /* at last */
	}
	/* Each at its own offset: a payload is read when the request is served. */
	const uint64_t(*ka)[2] = (const uint64_t(*)[2])a;
	lookup_prefix_req(s, (struct lb_req){ .payload_off = 32768, .model_id = SMALL }, ka, 2);
	lookup_prefix_req(s, (struct lb_req){ .payload_off = 33024, .model_id = NO_MODEL }, ka, 2);
	lookup_prefix_req(s, (struct lb_req){ .payload_off = 33280, .seq_len = 8 }, ka, 2);
	lookup_prefix_req(s, (struct lb_req){ .payload_off = 33536, .layer = 1 }, ka, 2);
	lookup_prefix_req(s, (struct lb_req){ .payload_off = 33792, .aux = 1 }, ka, 2);
	lookup_prefix_req(s, (struct lb_req){ .payload_off = 34052 }, ka, 2); /* not a multiple of 8 */
	lookup_prefix_req(s, (struct lb_req){ .payload_off = 34304, .payload_len = 8 + 16 * 2 + 8 },
			  ka, 2);
	lookup_prefix_req(s, (struct lb_req){ .payload_off = 34560, .payload_len = 8 + 16 }, ka,
			  2);                               /* n_keys 2, room for one */
	lookup_prefix_req(s, (struct lb_req){ .payload_off = 34816, .payload_len = 8 }, ka,
			  0);                               /* no keys */
	lookup_prefix_req(s, (struct lb_req){ .payload_off = 8388608 - 16 }, ka, 1); /* past staging */
	{
		uint8_t q[8 + 16] = { 1, 0, 0, 0, 1 };      /* reserved 1 */
		memcpy(q + 8, a[0], 16);
		req(s, (struct lb_req){ .opcode = LB_OP_LOOKUP_PREFIX, .model_id = PREFIX,
					.payload_off = 36864, .payload_len = sizeof(q) }, q, sizeof(q), -1);
	}
	pump(s, true);
	chain(6, 0, b, 2);
	lookup_prefix(s, (const uint64_t(*)[2])b, 2, 40960); /* a miss */
	lookup_prefix(s, (const uint64_t(*)[2])a + 1, 1, 40960 + 64); /* block 1 is not at 0 */
	lookup_prefix(s, (const uint64_t(*)[2])a, 3, 40960 + 128);
	pump(s, true);
	done(s, "prefix-refusals");

	/* The longest chain, max_seq / 4 = 16 blocks, and the one past it; a lookup of 256 keys
	 * (the largest payload) whose first 16 are cached, and one of 257 (refused). */
	begin(s, BANK_LRU);
	chain(7, 0, a, LB_PREFIX_MAX_BLOCKS);
	for (uint32_t i = 0; i <= PB_MAX; i++)
		insert_block(s, (const uint64_t(*)[2])a, i, 4096 * i, false);
	pump(s, true);
	lookup_prefix(s, (const uint64_t(*)[2])a, LB_PREFIX_MAX_BLOCKS, 131072);
	lookup_prefix(s, (const uint64_t(*)[2])a, LB_PREFIX_MAX_BLOCKS + 1, 139264);
	pump(s, true);
	done(s, "prefix-longest");

	/* Leaves first: four chains of 12 blocks that share block 0, the first held by a prefix
	 * hit's lease (and so the least recently used), then layer entries in a budget that holds
	 * some 60 blocks: the held chain stays whole, the others lose their leaves. Then the
	 * lease ends and more pressure takes the first chain's leaves too. */
	for (int bank = BANK_LRU; bank <= BANK_DECAY; bank++) {
		begin(s, (uint8_t)bank);
		for (uint32_t c = 0; c < 4; c++) {
			chain(10 + c, 1, a, 12);
			for (uint32_t i = c ? 1 : 0; i < 12; i++)
				insert_block(s, (const uint64_t(*)[2])a, i, 4096 * i, false);
			pump(s, true);
			if (c == 0) {
				lookup_prefix(s, (const uint64_t(*)[2])a, 12, 65536);
				pump(s, true);
			}
		}
		for (uint32_t k = 0; k < 6; k++) {
			insert(s, SMALL, 1, 16, 500 + k, 4096, 0, false);
			pump(s, true);
		}
		chain(11, 1, b, 12);
		lookup_prefix(s, (const uint64_t(*)[2])b, 12, 65536 + 4096);
		chain(10, 1, a, 12);
		lookup_prefix(s, (const uint64_t(*)[2])a, 12, 65536 + 8192);
		pump(s, true);
		release(s, 0);
		release(s, 2);
		for (uint32_t k = 0; k < 6; k++)
			insert(s, SMALL, 2, 16, 600 + k, 4096, 32768 * k, false);
		pump(s, true);
		done(s, bank == BANK_LRU ? "prefix-evict-leaves-lru" : "prefix-evict-leaves-decay");
	}

	/* TTL 0: the lookup meets block 0 expired and drops it with its subtree (four
	 * expirations); its child then has no parent; block 0 goes in again. */
	begin(s, BANK_TTL0);
	chain(20, 0, a, 4);
	for (uint32_t i = 0; i < 4; i++)
		insert_block(s, (const uint64_t(*)[2])a, i, 4096 * i, false);
	pump(s, true);
	lookup_prefix(s, (const uint64_t(*)[2])a, 4, 65536);
	pump(s, true);
	insert_block(s, (const uint64_t(*)[2])a, 1, 4096, false);
	insert_block(s, (const uint64_t(*)[2])a, 0, 0, false);
	pump(s, true);
	done(s, "prefix-ttl-expire");

	/* The lease limit: 4095 layer hits, then a prefix hit (the 4096th lease) and one more
	 * (EBUSY: counted neither as hit nor miss). */
	begin(s, BANK_LRU);
	insert(s, SMALL, 0, 1, 70, 1, 0, true);
	chain(21, 0, a, 2);
	insert_block(s, (const uint64_t(*)[2])a, 0, 4096, false);
	insert_block(s, (const uint64_t(*)[2])a, 1, 8192, false);
	lookup(s, LB_OP_LOOKUP_DEEPEST, SMALL, 0, 1, 70, NULL, 0, 12288);
	repeat(s, 4094);
	pump(s, true);
	lookup_prefix(s, (const uint64_t(*)[2])a, 2, 16384);
	lookup_prefix(s, (const uint64_t(*)[2])a, 2, 16384 + 64);
	pump(s, true);
	done(s, "prefix-lease-limit");
}

/* ---- single-flight (Ring protocol 15) ---- */

#define BOTH (LB_REQ_CLAIM | LB_REQ_WAIT)

/* A LOOKUP_DEEPEST of SMALL with flags and aux, its keys given. */
static void lookup_sf(struct script *s, uint32_t seq_len, const uint64_t fp[4],
		      const uint64_t exact[2], uint8_t flags, uint32_t aux, uint32_t off)
{
	struct lb_query q = { .n_thr = 0 };
	memcpy(q.fp, fp, sizeof(q.fp));
	memcpy(q.exact, exact, sizeof(q.exact));
	req(s, (struct lb_req){ .opcode = LB_OP_LOOKUP_DEEPEST, .flags = flags, .aux = aux,
				.model_id = SMALL, .seq_len = seq_len, .payload_off = off,
				.payload_len = sizeof(q) },
	    &q, sizeof(q), -1);
}

static void lookup_sf_key(struct script *s, uint32_t seq_len, uint32_t k, uint8_t flags,
			  uint32_t aux, uint32_t off)
{
	uint64_t fp[4], exact[2];
	key(k, fp, exact);
	lookup_sf(s, seq_len, fp, exact, flags, aux, off);
}

static void sflight_seeds(struct script *s)
{
	uint64_t fp[4], exact[2];

	/* A miss claims (lease 0); the same client again takes no second claim; the layers go in,
	 * the claim is released; then a plain hit, nothing to claim. */
	begin(s, BANK_LRU);
	lookup_sf_key(s, 4, 80, BOTH, 500000, 0);
	lookup_sf_key(s, 4, 80, BOTH, 500000, 64);
	pump(s, true);
	for (uint16_t l = 0; l < 4; l++)
		insert(s, SMALL, l, 4, 80, 16, 4096 + 256u * l, true);
	release(s, 0);
	lookup_sf_key(s, 4, 80, BOTH, 500000, 128);
	pump(s, true);
	done(s, "sflight-claim-insert-release");

	/* A near input's layer (a fingerprint one bit away, another token hash): a hit, and the
	 * claim of the input, which is not cached. WAIT alone claims nothing. */
	begin(s, BANK_DECAY);
	insert(s, SMALL, 2, 16, 81, 64, 0, true);
	pump(s, true);
	key(81, fp, exact);
	fp[0] ^= 1;
	exact[0] ^= 0x5555;
	lookup_sf(s, 16, fp, exact, LB_REQ_WAIT, 1000, 4096);
	lookup_sf(s, 16, fp, exact, LB_REQ_CLAIM, 1000000, 4160);
	pump(s, true);
	done(s, "sflight-claim-with-near-hit");

	/* Refusals: an unknown flag, a flag on another opcode, a bound of 0 or past 10 s, a bound
	 * without a flag; REPORT on a claim's handle, a second RELEASE of it. */
	begin(s, BANK_LRU);
	lookup_sf_key(s, 4, 82, 4, 1000, 0);
	lookup_sf_key(s, 4, 82, BOTH | 0x80, 1000, 64);
	lookup_sf_key(s, 4, 82, LB_REQ_CLAIM, 0, 128);
	lookup_sf_key(s, 4, 82, LB_REQ_WAIT, LB_SFLIGHT_MAX_US + 1, 192);
	lookup_sf_key(s, 4, 82, 0, 1000, 256);
	req(s, (struct lb_req){ .opcode = LB_OP_PING, .flags = LB_REQ_CLAIM }, NULL, 0, -1);
	req(s, (struct lb_req){ .opcode = LB_OP_RELEASE, .flags = LB_REQ_CLAIM }, NULL, 0, 0);
	lookup_sf_key(s, 4, 82, LB_REQ_CLAIM, LB_SFLIGHT_MAX_US, 320);
	pump(s, true);
	report(s, 0.5f, 0);
	release(s, 0);
	release(s, 0);
	pump(s, true);
	done(s, "sflight-refusals");

	/* A claim of 1 us is past its bound at once: the next CLAIM may take another one, the
	 * first still held until released. */
	begin(s, BANK_TTL0);
	lookup_sf_key(s, 2, 83, LB_REQ_CLAIM, 1, 0);
	pump(s, true);
	lookup_sf_key(s, 2, 83, BOTH, 1, 64);
	pump(s, true);
	release(s, 1);
	release(s, 0);
	pump(s, true);
	done(s, "sflight-claim-past-its-bound");

	/* Leases and claims share the 4096 handles: 4095 hits, a claim (the 4096th), then a
	 * CLAIM of another input (no claim) and a hit (EBUSY). */
	begin(s, BANK_LRU);
	insert(s, SMALL, 0, 1, 84, 1, 0, true);
	lookup(s, LB_OP_LOOKUP_DEEPEST, SMALL, 0, 1, 84, NULL, 0, 4096);
	repeat(s, 4094);
	pump(s, true);
	lookup_sf_key(s, 1, 85, BOTH, 1000000, 8192);
	lookup_sf_key(s, 1, 86, BOTH, 1000000, 8192 + 64);
	lookup(s, LB_OP_LOOKUP_DEEPEST, SMALL, 0, 1, 84, NULL, 0, 8192 + 128);
	pump(s, true);
	done(s, "sflight-handle-limit");
}

static void ring_seeds(void)
{
	struct script *s = malloc(sizeof(*s));
	float thr[LBP_MAX_LAYERS];
	if (!s)
		die("out of memory");

	begin(s, BANK_LRU);
	ping(s);
	pump(s, true);
	done(s, "ping");

	/* Insert, hit, report a small drift, release, release again (stale). */
	begin(s, BANK_LRU);
	insert(s, SMALL, 0, 4, 1, 16, 0, true);
	lookup(s, LB_OP_LOOKUP_DEEPEST, SMALL, 0, 4, 1, NULL, 0, 4096);
	report(s, 0.01f, 0);
	release(s, 0);
	release(s, 0);
	pump(s, true);
	done(s, "insert-hit-report-release");

	/* Every layer of one input, then lookups of each layer with thresholds, and the deepest. */
	begin(s, BANK_LRU);
	for (uint16_t l = 0; l < 4; l++)
		insert(s, SMALL, l, 8, 2, 64, 512u * l, true);
	pump(s, true);
	for (unsigned i = 0; i < 4; i++)
		thr[i] = 0.9f + 0.02f * (float)i;
	for (uint16_t l = 0; l < 4; l++)
		lookup(s, LB_OP_LOOKUP, SMALL, l, 8, 2, thr, 4, 8192);
	lookup(s, LB_OP_LOOKUP_DEEPEST, SMALL, 0, 8, 2, thr, 4, 8192 + 256);
	pump(s, true);
	done(s, "layers-and-thresholds");

	/* The deep model: the longest threshold payload (4152 bytes). */
	begin(s, BANK_LRU);
	insert(s, DEEP, 1023, 1, 3, 32, 0, true);
	for (unsigned i = 0; i < LBP_MAX_LAYERS; i++)
		thr[i] = i % 2 ? -1.0f : 1.0f;
	lookup(s, LB_OP_LOOKUP_DEEPEST, DEEP, 0, 1, 3, thr, LBP_MAX_LAYERS, 4096);
	lookup(s, LB_OP_LOOKUP, DEEP, 1023, 1, 3, thr, LBP_MAX_LAYERS, 16384);
	pump(s, true);
	done(s, "deep-model-1024-thresholds");

	/* A near duplicate: another token hash, the fingerprint a few bits away. */
	begin(s, BANK_DECAY);
	insert(s, SMALL, 2, 16, 4, 64, 0, true);
	{
		struct lb_query q = { 0 };
		uint64_t exact[2];
		key(4, q.fp, exact);
		key(5, (uint64_t[4]){ 0 }, q.exact);
		q.fp[0] ^= 0x1011;
		req(s, (struct lb_req){ .opcode = LB_OP_LOOKUP_DEEPEST, .model_id = SMALL, .seq_len = 16,
					.payload_off = 8192, .payload_len = sizeof(q) }, &q, sizeof(q), -1);
	}
	pump(s, true);
	done(s, "near-duplicate");

	/* Evictions: twelve entries of 16 KiB in a 128 KiB budget, then the first and the last. */
	for (int bank = BANK_LRU; bank <= BANK_DECAY; bank++) {
		begin(s, (uint8_t)bank);
		for (uint32_t k = 10; k < 22; k++) {
			insert(s, SMALL, 1, 16, k, 4096, 0, false);
			pump(s, true);
		}
		lookup(s, LB_OP_LOOKUP, SMALL, 1, 16, 10, NULL, 0, 0);
		lookup(s, LB_OP_LOOKUP, SMALL, 1, 16, 21, NULL, 0, 64);
		pump(s, true);
		done(s, bank == BANK_LRU ? "evict-lru" : "evict-decay");
	}

	/* Eviction by sample: more than 16 live entries, then two inserts of 64 KiB (copied with
	 * non-temporal stores where AVX-512 is there) that do not both fit. Then the same with
	 * every small entry leased, so that a sample can hold no candidate. */
	for (int leased = 0; leased <= 1; leased++) {
		begin(s, BANK_LRU);
		for (uint32_t k = 0; k < 20; k++) {
			insert(s, SMALL, 0, 1, 200 + k, 4, 1024 * k, true);
			if (leased)
				lookup(s, LB_OP_LOOKUP, SMALL, 0, 1, 200 + k, NULL, 0, 1024 * k + 512);
		}
		pump(s, true);
		insert(s, SMALL, 1, 16, 300, 16384, 65536, false);
		pump(s, true);
		insert(s, SMALL, 1, 16, 301, 16384, 262144, false);
		pump(s, true);
		done(s, leased ? "evict-sampled-leased" : "evict-sampled");
	}

	/* TTL 0: the entry expires at its first lookup. */
	begin(s, BANK_TTL0);
	insert(s, SMALL, 3, 2, 30, 2, 0, true);
	insert(s, SMALL, 0, 2, 30, 2, 512, true);
	pump(s, true);
	lookup(s, LB_OP_LOOKUP_DEEPEST, SMALL, 0, 2, 30, NULL, 0, 4096);
	lookup(s, LB_OP_LOOKUP_DEEPEST, SMALL, 0, 2, 30, NULL, 0, 4096 + 64);
	pump(s, true);
	done(s, "ttl-expire");

	/* A drift above the limit invalidates; the lease stays until released. */
	begin(s, BANK_LRU);
	insert(s, SMALL, 0, 3, 40, 3, 0, true);
	lookup(s, LB_OP_LOOKUP, SMALL, 0, 3, 40, NULL, 0, 4096);
	pump(s, true);
	report(s, 1.0f, 0);
	lookup(s, LB_OP_LOOKUP, SMALL, 0, 3, 40, NULL, 0, 4096);
	release(s, 0);
	pump(s, true);
	done(s, "report-invalidates");

	/* Reports of the layers below a hit's (AT_LAYER): a large drift there invalidates
	 * nothing; a layer above the entry's is refused. */
	begin(s, BANK_LRU);
	insert(s, SMALL, 2, 3, 41, 3, 0, true);
	lookup(s, LB_OP_LOOKUP, SMALL, 2, 3, 41, NULL, 0, 4096);
	pump(s, true);
	report_at(s, 1.0f, 0, 0);
	report_at(s, 0.0f, 2, 0);
	report_at(s, 0.0f, 3, 0);
	lookup(s, LB_OP_LOOKUP, SMALL, 2, 3, 41, NULL, 0, 4096);
	release(s, 0);
	pump(s, true);
	done(s, "report-at-layer");

	/* The same layer twice (EEXIST), the same tokens at another length (EINVAL), too large. */
	begin(s, BANK_LRU);
	insert(s, SMALL, 0, 4, 50, 4, 0, true);
	insert(s, SMALL, 0, 4, 50, 4, 4096, true);
	insert(s, SMALL, 1, 5, 50, 5, 8192, true);
	insert(s, SMALL, 1, 4, 51, 40000, 12288, false);
	pump(s, true);
	done(s, "insert-exists-length-nospc");

	/* Staging rewritten between the push and the serving: the daemon reads it then. */
	begin(s, BANK_LRU);
	insert(s, SMALL, 0, 1, 60, 4, 0, true);
	stage(s, LB_INSERT_HDR_SIZE, "rewritten data!!", 16);
	pump(s, true);
	done(s, "staging-rewritten");

	/* Back-pressure: completions left in their ring until it is full. */
	begin(s, BANK_LRU);
	ping(s);
	repeat(s, 199);
	pump(s, false);
	ping(s);
	repeat(s, 199);
	pump(s, false);
	pump(s, true);
	done(s, "completion-ring-full");

	/* The lease limit: 4100 hits of one entry, the last four refused (EBUSY). */
	begin(s, BANK_LRU);
	insert(s, SMALL, 0, 1, 70, 1, 0, true);
	lookup(s, LB_OP_LOOKUP_DEEPEST, SMALL, 0, 1, 70, NULL, 0, 4096);
	repeat(s, 4099);
	pump(s, true);
	done(s, "lease-limit");

	/* Each check of Ring protocol 6, in order. */
	begin(s, BANK_LRU);
	req(s, (struct lb_req){ .opcode = LB_OP_PING, .flags = 1 }, NULL, 0, -1);
	req(s, (struct lb_req){ .opcode = LB_OP_PING, .reserved = { 1, 0 } }, NULL, 0, -1);
	req(s, (struct lb_req){ .opcode = LB_OP_PING, .reserved2 = 1 }, NULL, 0, -1);
	req(s, (struct lb_req){ .opcode = 0 }, NULL, 0, -1);
	req(s, (struct lb_req){ .opcode = LB_OP_MAX + 1 }, NULL, 0, -1);
	req(s, (struct lb_req){ .opcode = 255 }, NULL, 0, -1);
	req(s, (struct lb_req){ .opcode = LB_OP_PING, .layer = 1 }, NULL, 0, -1);
	req(s, (struct lb_req){ .opcode = LB_OP_PING, .model_id = 1 }, NULL, 0, -1);
	req(s, (struct lb_req){ .opcode = LB_OP_PING, .seq_len = 1 }, NULL, 0, -1);
	req(s, (struct lb_req){ .opcode = LB_OP_PING, .aux = 1 }, NULL, 0, -1);
	req(s, (struct lb_req){ .opcode = LB_OP_PING, .lease = 1 }, NULL, 0, -1);
	req(s, (struct lb_req){ .opcode = LB_OP_PING, .payload_len = 8 }, NULL, 0, -1);
	req(s, (struct lb_req){ .opcode = LB_OP_PING, .payload_off = 64 }, NULL, 0, -1);
	pump(s, true);
	done(s, "bad-common-fields");

	begin(s, BANK_LRU);
	lookup(s, LB_OP_LOOKUP_DEEPEST, SMALL, 0, 4, 1, NULL, 0, 4); /* payload_off not a multiple of 8 */
	lookup(s, LB_OP_LOOKUP_DEEPEST, SMALL, 0, 4, 1, NULL, 0, (8u << 20) - 48); /* past staging */
	lookup(s, LB_OP_LOOKUP_DEEPEST, NO_MODEL, 0, 4, 1, NULL, 0, 0); /* no such model: ESRCH */
	lookup(s, LB_OP_LOOKUP_DEEPEST, 0, 0, 4, 1, NULL, 0, 0);     /* model 0 */
	lookup(s, LB_OP_LOOKUP_DEEPEST, SMALL, 0, 0, 1, NULL, 0, 0); /* seq_len 0 */
	lookup(s, LB_OP_LOOKUP_DEEPEST, SMALL, 0, 257, 1, NULL, 0, 0); /* above max_seq */
	lookup(s, LB_OP_LOOKUP_DEEPEST, SMALL, 1, 4, 1, NULL, 0, 0); /* DEEPEST with a layer */
	lookup(s, LB_OP_LOOKUP, SMALL, 4, 4, 1, NULL, 0, 0);         /* layer >= n_layers */
	for (unsigned i = 0; i < 4; i++)
		thr[i] = 0.5f;
	lookup(s, LB_OP_LOOKUP, SMALL, 0, 4, 1, thr, 3, 0);          /* n_thr not n_layers */
	thr[2] = NAN;
	lookup(s, LB_OP_LOOKUP, SMALL, 0, 4, 1, thr, 4, 0);
	thr[2] = 1.5f;
	lookup(s, LB_OP_LOOKUP, SMALL, 0, 4, 1, thr, 4, 0);
	{
		struct lb_query q = { .n_thr = 1 };                  /* n_thr against payload_len */
		req(s, (struct lb_req){ .opcode = LB_OP_LOOKUP, .model_id = SMALL, .seq_len = 4,
					.payload_off = 256, .payload_len = sizeof(q) }, &q, sizeof(q), -1);
		q.n_thr = 0;
		q.reserved = 1;
		req(s, (struct lb_req){ .opcode = LB_OP_LOOKUP, .model_id = SMALL, .seq_len = 4,
					.payload_off = 512, .payload_len = sizeof(q) }, &q, sizeof(q), -1);
		req(s, (struct lb_req){ .opcode = LB_OP_LOOKUP, .model_id = SMALL, .seq_len = 4,
					.payload_off = 768, .payload_len = sizeof(q) + 2 }, NULL, 0, -1);
		req(s, (struct lb_req){ .opcode = LB_OP_LOOKUP, .model_id = SMALL, .seq_len = 4,
					.payload_off = 768, .payload_len = sizeof(q), .aux = 1 }, NULL, 0, -1);
	}
	pump(s, true);
	done(s, "bad-lookups");

	begin(s, BANK_LRU);
	{
		uint8_t p[LB_INSERT_HDR_SIZE + 16] = { 0 };
		struct lb_insert_hdr h = { .dtype = 1, .ndim = 1, .shape = { 4 }, .bytes = 16 };
		struct lb_req r = { .opcode = LB_OP_INSERT, .model_id = SMALL, .seq_len = 1,
				    .payload_len = sizeof(p) };
		const struct lb_insert_hdr bad[] = {
			{ .dtype = 0, .ndim = 1, .shape = { 4 }, .bytes = 16 },
			{ .dtype = 4, .ndim = 1, .shape = { 4 }, .bytes = 16 },
			{ .dtype = 1, .ndim = 0, .bytes = 16 },
			{ .dtype = 1, .ndim = 5, .shape = { 4, 1, 1, 1 }, .bytes = 16 },
			{ .dtype = 1, .ndim = 2, .shape = { 4, 0 }, .bytes = 16 },
			{ .dtype = 1, .ndim = 1, .shape = { 4, 1 }, .bytes = 16 },
			{ .dtype = 1, .ndim = 1, .shape = { 4 }, .bytes = 17 },
			{ .dtype = 2, .ndim = 1, .shape = { 16 }, .bytes = 32 }, /* more than the payload */
			{ .dtype = 1, .ndim = 4, .shape = { 65536, 65536, 65536, 65536 }, .bytes = 0 },
		};
		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			memcpy(p, &bad[i], sizeof(bad[i]));
			r.payload_off = (uint32_t)(i * 256);
			req(s, r, p, sizeof(p), -1);
		}
		memcpy(p, &h, sizeof(h));
		p[100] = 1; /* the header's reserved tail */
		r.payload_off = 4096;
		req(s, r, p, sizeof(p), -1);
		p[100] = 0;
		r.payload_off = 8192;
		r.payload_len = LB_INSERT_HDR_SIZE - 8;
		req(s, r, p, sizeof(p), -1);
		r.payload_len = sizeof(p);
		r.layer = 4;
		req(s, r, p, sizeof(p), -1);
		r.layer = 0;
		r.model_id = NO_MODEL;
		req(s, r, p, sizeof(p), -1); /* ESRCH */
		r.model_id = SMALL;
		r.seq_len = 0;
		req(s, r, p, sizeof(p), -1);
		r.seq_len = 1;
		r.lease = 5;
		req(s, r, p, sizeof(p), -1);
	}
	pump(s, true);
	done(s, "bad-inserts");

	begin(s, BANK_LRU);
	insert(s, SMALL, 0, 2, 80, 2, 0, true);
	lookup(s, LB_OP_LOOKUP_DEEPEST, SMALL, 0, 2, 80, NULL, 0, 4096);
	pump(s, true);
	report(s, NAN, 0);
	report(s, -1.0f, 0);
	report(s, INFINITY, 0);
	req(s, (struct lb_req){ .opcode = LB_OP_RELEASE, .aux = 1 }, NULL, 0, 0);
	req(s, (struct lb_req){ .opcode = LB_OP_RELEASE, .payload_off = 8 }, NULL, 0, 0);
	req(s, (struct lb_req){ .opcode = LB_OP_RELEASE, .model_id = 1 }, NULL, 0, 0);
	req(s, (struct lb_req){ .opcode = LB_OP_RELEASE, .lease = 0x100000002ull }, NULL, 0, -1);
	req(s, (struct lb_req){ .opcode = LB_OP_RELEASE, .lease = 0xffffffff00000001ull }, NULL, 0, -1);
	req(s, (struct lb_req){ .opcode = LB_OP_REPORT, .lease = 0 }, NULL, 0, -1);
	pump(s, true);
	done(s, "bad-leases");
	prefix_seeds(s);
	sflight_seeds(s);
	free(s);
}

/* ---- snapshot files ---- */

/*
 * Files laid out from PROTOCOL.md "Snapshot file" by this independent writer, not by the
 * daemon's (whose files carry the time and boot id they were written with). Each seed is a flag
 * byte (fuzz_snapshot.c: bit 0 reseal, bits 1-2 the policy) and the file.
 */
#define SNAP "fuzz_snapshot"
#define SNAP_MAX (64u << 10)

struct snap {
	uint8_t b[SNAP_MAX];
	size_t n;                  /* bytes so far, the flag byte included */
	size_t last;               /* the last entry record's offset */
	uint32_t n_models;
	uint64_t n_entries, data_bytes;
	uint64_t model_entries[8];
	uint64_t thr_bytes;        /* version 5's threshold blocks (snap_thresholds); 0: version 4 */
};

static void le_at(uint8_t *p, uint64_t v, unsigned bytes)
{
	for (unsigned i = 0; i < bytes; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void seal_rec(uint8_t *rec)
{
	le_at(rec + 120, XXH3_64bits(rec, 120), 8);
}

static uint8_t *snap_grow(struct snap *s, size_t n)
{
	if (s->n + n > SNAP_MAX)
		die("snapshot seed over %u bytes", SNAP_MAX);
	uint8_t *p = s->b + s->n;
	memset(p, 0, n);
	s->n += n;
	return p;
}

static void snap_begin(struct snap *s, uint8_t flags)
{
	memset(s, 0, sizeof(*s));
	s->b[0] = flags;
	s->n = 1 + 128; /* the header is written last, at snap_end */
}

struct smodel {
	const char *name;
	uint32_t n_layers, hidden, dtype, max_seq, fp_chunks;
	uint32_t kv_dim, block_tokens; /* prefix blocks: both 0 for none */
};

static void snap_model(struct snap *s, const struct smodel *m)
{
	uint8_t *r = snap_grow(s, 128);
	memcpy(r, m->name, strlen(m->name));
	le_at(r + 64, 0x1234abcdu + s->n_models, 8); /* weights_hash */
	le_at(r + 72, m->n_layers, 4);
	le_at(r + 76, m->hidden, 4);
	le_at(r + 80, m->dtype, 4);
	le_at(r + 84, m->max_seq, 4);
	le_at(r + 88, m->fp_chunks, 4);
	le_at(r + 92, 256, 4);
	le_at(r + 96, 7, 8); /* fp_seed */
	le_at(r + 112, m->kv_dim, 4);
	le_at(r + 116, m->block_tokens, 4);
	s->n_models++;
}

/* The end of an entry whose 128-byte record is at `at`: its data (bytes of them, made from
 * seed), then, when n_ids, the zeros up to a multiple of 4 and n_ids token ids (ids, written
 * little-endian) after it, the padding, the data checksum, the record's own. */
static void snap_data(struct snap *s, size_t at, uint64_t bytes, uint32_t seed, uint32_t model,
		      const int32_t *ids, uint32_t n_ids)
{
	uint64_t ids_off = (bytes + 3) & ~3ull, body = n_ids ? ids_off + 4ull * n_ids : bytes;
	uint8_t *d = snap_grow(s, (size_t)((body + 63) & ~63ull)), *r;
	for (uint64_t i = 0; i < bytes; i++)
		d[i] = (uint8_t)(seed + i);
	for (uint32_t i = 0; i < n_ids; i++)
		le_at(d + ids_off + 4 * i, (uint32_t)ids[i], 4);
	s->last = at;
	r = s->b + at;
	le_at(r + 88, XXH3_64bits(d, bytes), 8);
	seal_rec(r);
	s->n_entries++;
	s->data_bytes += body;
	if (model < 8)
		s->model_entries[model]++;
}

/* Token ids for input `input` (seq_len of them, some large, some negative), and their token
 * hash ("Fingerprint" 7: XXH3-128 of their bytes, on the little-endian machines layerbank runs
 * on), which is the exact key of an entry that carries them. */
static void snap_ids(uint32_t input, uint32_t seq_len, int32_t *ids, uint64_t exact[2])
{
	uint8_t b[4 * 64];
	if (seq_len > 64)
		die("snapshot seed with %u token ids", seq_len);
	for (uint32_t i = 0; i < seq_len; i++) {
		ids[i] = (int32_t)(0x9e3779b9u * (input + 1) + 7919u * i);
		le_at(b + 4 * i, (uint32_t)ids[i], 4);
	}
	XXH128_hash_t h = XXH3_128bits(b, 4 * (size_t)seq_len);
	exact[0] = h.low64;
	exact[1] = h.high64;
}

/* One entry of input `input` (its keys from key(); with_ids: its token hash that of its ids,
 * snap_ids, which follow its data) with shape dims[0..ndim-1]. */
static void snap_entry_ids(struct snap *s, uint32_t model, uint16_t layer, uint16_t dtype,
			   uint32_t seq_len, uint32_t input, uint32_t ndim, const uint32_t *dims,
			   uint64_t idle_ns, double score, bool with_ids)
{
	uint64_t fp[4], exact[2], elems = 1;
	int32_t ids[64];
	uint8_t *r = snap_grow(s, 128);
	size_t at = (size_t)(r - s->b);

	key(input, fp, exact);
	if (with_ids)
		snap_ids(input, seq_len, ids, exact);
	le_at(r + 0, model, 4);
	le_at(r + 4, layer, 2);
	le_at(r + 6, dtype, 2);
	le_at(r + 8, seq_len, 4);
	r[12] = (uint8_t)ndim;
	r[13] = with_ids ? 1 : 0; /* flags: token ids follow; approx at 14: 0, exact */
	for (uint32_t i = 0; i < ndim; i++) {
		le_at(r + 16 + 4 * i, dims[i], 4);
		elems *= dims[i];
	}
	uint64_t bytes = elems * (dtype == LBP_DTYPE_F32 ? 4u : 2u);
	le_at(r + 32, bytes, 8);
	for (int i = 0; i < 4; i++)
		le_at(r + 40 + 8 * i, fp[i], 8);
	le_at(r + 72, exact[0], 8);
	le_at(r + 80, exact[1], 8);
	le_at(r + 96, idle_ns, 8);
	le_at(r + 104, idle_ns * 3, 8); /* age_ns */
	uint64_t bits;
	memcpy(&bits, &score, 8);
	le_at(r + 112, bits, 8);
	snap_data(s, at, bytes, input * 31u + layer * 7u, model, ids, with_ids ? seq_len : 0);
}

/* One entry of input `input` without token ids. */
static void snap_entry(struct snap *s, uint32_t model, uint16_t layer, uint16_t dtype,
		       uint32_t seq_len, uint32_t input, uint32_t ndim, const uint32_t *dims,
		       uint64_t idle_ns, double score)
{
	snap_entry_ids(s, model, layer, dtype, seq_len, input, ndim, dims, idle_ns, score, false);
}

/*
 * A prefix block of model record `model` (m: its registration), in PROTOCOL.md's block layout:
 * layer 0xffff, the model's geometry, at `index` of its chain, its key that of input `id`
 * (key()), under the block of key(parent) (ignored for index 0: parent 0, 0).
 */
static void snap_block(struct snap *s, uint32_t model, const struct smodel *m, uint32_t id,
		       uint32_t parent, uint32_t index, uint64_t idle_ns, double score)
{
	uint64_t fp[4], exact[2], up[2] = { 0, 0 }, bits;
	uint64_t bytes = (uint64_t)m->n_layers * 2 * m->block_tokens * m->kv_dim *
			 (m->dtype == LBP_DTYPE_F32 ? 4u : 2u);
	uint8_t *r = snap_grow(s, 128);
	size_t at = (size_t)(r - s->b);
	const uint32_t shape[4] = { m->n_layers, 2, m->block_tokens, m->kv_dim };

	key(id, fp, exact);
	if (index)
		key(parent, fp, up);
	le_at(r + 0, model, 4);
	le_at(r + 4, 0xffff, 2);
	le_at(r + 6, m->dtype, 2);
	le_at(r + 8, (index + 1) * m->block_tokens, 4);
	r[12] = 4; /* ndim; flags at 13 and approx at 14: 0, as every block's */
	for (int i = 0; i < 4; i++)
		le_at(r + 16 + 4 * i, shape[i], 4);
	le_at(r + 32, bytes, 8);
	le_at(r + 40, up[0], 8);
	le_at(r + 48, up[1], 8);
	le_at(r + 56, index, 4);
	le_at(r + 72, exact[0], 8);
	le_at(r + 80, exact[1], 8);
	le_at(r + 96, idle_ns, 8);
	le_at(r + 104, idle_ns * 3, 8); /* age_ns */
	memcpy(&bits, &score, 8);
	le_at(r + 112, bits, 8);
	snap_data(s, at, bytes, id * 17u, model, NULL, 0);
}

/* Version 5's threshold blocks after the entries: per model record, its layers' controllers
 * (radius 4..52.75 bits, reports, over, drift sum), their checksum, zeros to 64 bytes. */
static void snap_thresholds(struct snap *s)
{
	size_t start = s->n;
	for (uint32_t i = 0; i < s->n_models; i++) {
		const uint8_t *m = s->b + 1 + 128 + 128 * (size_t)i;
		uint32_t nl = (uint32_t)m[72] | (uint32_t)m[73] << 8 | (uint32_t)m[74] << 16;
		uint64_t n = 32ull * nl, bits;
		uint8_t *b = snap_grow(s, (size_t)((n + 8 + 63) & ~63ull));
		for (uint32_t l = 0; l < nl; l++) {
			double radius = 4.0 + 3.25 * (l % 16), drift = 0.01 * (l + 1);
			memcpy(&bits, &radius, 8);
			le_at(b + 32 * l, bits, 8);
			le_at(b + 32 * l + 8, 5 + l, 8);  /* reports */
			le_at(b + 32 * l + 16, l % 6, 8); /* over */
			memcpy(&bits, &drift, 8);
			le_at(b + 32 * l + 24, bits, 8);
		}
		le_at(b + n, XXH3_64bits(b, n), 8);
	}
	s->thr_bytes = s->n - start;
}

/* The header and the models' entry counts; the model records' checksums. */
static void snap_end(struct snap *s)
{
	uint8_t *h = s->b + 1;
	memcpy(h, "LBSNAPSH", 8);
	le_at(h + 8, s->thr_bytes ? 5 : 4, 4); /* version */
	le_at(h + 80, s->thr_bytes, 8);
	le_at(h + 12, 128, 4);
	le_at(h + 16, LB_SHM_ABI_VERSION, 4);
	le_at(h + 20, s->n_models, 4);
	le_at(h + 24, s->n_entries, 8);
	le_at(h + 32, s->data_bytes, 8);
	le_at(h + 40, s->n - 1, 8);
	le_at(h + 48, 1790000000u, 8); /* written_s: fixed, so that the seeds are deterministic */
	for (int i = 0; i < 16; i++)
		h[56 + i] = (uint8_t)(0xb0 + i);
	le_at(h + 72, 128, 4);
	le_at(h + 76, 128, 4);
	seal_rec(h);
	for (uint32_t i = 0; i < s->n_models; i++) {
		uint8_t *r = s->b + 1 + 128 + 128 * (size_t)i;
		le_at(r + 104, i < 8 ? s->model_entries[i] : 0, 8);
		seal_rec(r);
	}
}

/* Set n bytes at off of the last entry record to v, and seal the record again. */
static void snap_fix(struct snap *s, size_t off, uint64_t v, unsigned n)
{
	le_at(s->b + s->last + off, v, n);
	seal_rec(s->b + s->last);
}

static void snap_put(struct snap *s, const char *name)
{
	put(SNAP, name, s->b, s->n);
}

/* Files with prefix blocks: a tree of chains in any order, and what the chain checks refuse. */
static void snapshot_block_seeds(struct snap *s, const struct smodel *tiny)
{
	static const struct smodel dec = { "decoder", 2, 8, LBP_DTYPE_F16, 32, 4, 3, 2 };
	static const struct smodel wider = { "decoder", 2, 8, LBP_DTYPE_F16, 32, 4, 4, 2 };
	static const struct smodel half_kv = { "kv-without-blocks", 2, 8, LBP_DTYPE_F16, 32, 4, 3, 0 };
	const uint32_t d2[] = { 2, 8 };

	/* Layer entries of input 1 beside a tree: 10-11-12-13 with 11-20-21 branching off, and a
	 * chain 1-31 whose child comes first in the file and whose root's key is input 1's token
	 * hash. Block 11 is past the ttl seed's TTL: under ttl its subtree stays out too. */
	snap_begin(s, 1);
	snap_model(s, tiny);
	snap_model(s, &dec);
	snap_entry(s, 1, 0, LBP_DTYPE_F16, 4, 1, 2, d2, 5, 1.0);
	snap_entry(s, 1, 1, LBP_DTYPE_F16, 4, 1, 2, d2, 5, 1.0);
	snap_block(s, 1, &dec, 10, 0, 0, 100, 3.0);
	snap_block(s, 1, &dec, 11, 10, 1, 1300000000000ull, 2.5);
	snap_block(s, 1, &dec, 12, 11, 2, 300, 2.0);
	snap_block(s, 1, &dec, 13, 12, 3, 400, 0.5);
	snap_block(s, 1, &dec, 20, 11, 2, 50, 4.0);
	snap_block(s, 1, &dec, 21, 20, 3, 60, 1.0);
	snap_block(s, 1, &dec, 31, 1, 1, 7, 1.0);
	snap_block(s, 1, &dec, 1, 0, 0, 9, 0.0);
	snap_end(s);
	snap_put(s, "blocks");
	s->b[0] = 2 | 1; /* decay order */
	snap_put(s, "blocks-decay");
	s->b[0] = 4 | 1; /* ttl */
	snap_put(s, "blocks-ttl");
	s->b[0] = 0; /* as is */
	snap_put(s, "blocks-raw");

	/* Refused: a hole, a key twice, a parent not one place up (Reading 6). */
	const struct {
		const char *name;
		uint32_t id[3], parent[3], index[3];
	} chains[] = {
		{ "block-hole", { 10, 12, 0 }, { 0, 11, 0 }, { 0, 2, 0 } },
		{ "block-twice", { 10, 11, 11 }, { 0, 10, 10 }, { 0, 1, 1 } },
		{ "block-not-one-place-up", { 10, 11, 12 }, { 0, 10, 10 }, { 0, 1, 2 } },
		{ "block-past-max-seq", { 10, 11, 0 }, { 0, 10, 0 }, { 0, 16, 0 } },
	};
	for (size_t c = 0; c < sizeof(chains) / sizeof(chains[0]); c++) {
		snap_begin(s, 1);
		snap_model(s, &dec);
		for (int i = 0; i < 3 && chains[c].id[i]; i++)
			snap_block(s, 0, &dec, chains[c].id[i], chains[c].parent[i],
				   chains[c].index[i], 10, 1.0);
		snap_end(s);
		snap_put(s, chains[c].name);
	}
	/* Refused by a block's range checks (Reading 5) or its model's (Reading 4). */
	snap_begin(s, 1);
	snap_model(s, tiny);
	snap_model(s, &dec);
	snap_block(s, 0, &dec, 10, 0, 0, 10, 1.0);
	snap_end(s);
	snap_put(s, "block-of-model-without-kv");
	snap_begin(s, 1);
	snap_model(s, &dec);
	snap_block(s, 0, &wider, 10, 0, 0, 10, 1.0);
	snap_end(s);
	snap_put(s, "block-geometry");
	snap_begin(s, 1);
	snap_model(s, &dec);
	snap_block(s, 0, &dec, 10, 0, 0, 10, 1.0);
	snap_fix(s, 40, 99, 8);
	snap_end(s);
	snap_put(s, "block-root-with-parent");
	snap_begin(s, 1);
	snap_model(s, &dec);
	snap_block(s, 0, &dec, 10, 0, 0, 10, 1.0);
	snap_fix(s, 64, 1, 1);
	snap_end(s);
	snap_put(s, "block-reserved");
	snap_begin(s, 1);
	snap_model(s, &half_kv);
	snap_end(s);
	snap_put(s, "model-kv-half");
}

/* Files with token ids after layer entries' data (version 4 flags), and what their checks
 * refuse. */
static void snapshot_token_seeds(struct snap *s, const struct smodel *tiny,
				 const struct smodel *half)
{
	const uint32_t d2[] = { 2, 4 }, odd[] = { 3, 1 }; /* f16 [3][1]: 6 bytes, ids at 8 */

	/* Input 9 of half with ids at two layers (data not a multiple of 4), input 2 of tiny
	 * without, input 3 of tiny with, beside it at another layer; input 4 of tiny shares input
	 * 3's fingerprint at the length ANY_LEN lookups of input 3 ask for, without ids. */
	snap_begin(s, 1);
	snap_model(s, tiny);
	snap_model(s, half);
	snap_entry_ids(s, 1, 0, LBP_DTYPE_F16, 3, 9, 2, odd, 5, 1.0, true);
	snap_entry_ids(s, 1, 4, LBP_DTYPE_F16, 3, 9, 2, odd, 9, 0.5, true);
	snap_entry(s, 0, 0, LBP_DTYPE_F32, 2, 2, 2, d2, 7, 1.0);
	snap_entry_ids(s, 0, 1, LBP_DTYPE_F32, 2, 3, 2, d2, 3, 2.0, true);
	snap_entry_ids(s, 0, 1, LBP_DTYPE_F32, 1, 4, 1, (const uint32_t[]){ 4 }, 3, 2.0, false);
	uint64_t fp[4], exact[2];
	key(3, fp, exact);
	for (int i = 0; i < 4; i++)
		snap_fix(s, 40 + 8 * i, fp[i], 8);
	snap_end(s);
	snap_put(s, "token-ids");
	s->b[0] = 4 | 1; /* ttl */
	snap_put(s, "token-ids-ttl");
	s->b[0] = 0; /* as is */
	snap_put(s, "token-ids-raw");

	/* Refused: ids that are not the key's (as is: a reseal would make them the key's), a
	 * block with the flag, flags the format does not have, the flag in a version 3 file. */
	snap_begin(s, 0);
	snap_model(s, tiny);
	snap_entry_ids(s, 0, 1, LBP_DTYPE_F32, 2, 3, 2, d2, 3, 2.0, true);
	snap_fix(s, 72, 1, 1);
	snap_end(s);
	snap_put(s, "token-ids-not-the-key");
	snap_begin(s, 1);
	snap_model(s, tiny);
	snap_entry(s, 0, 0, LBP_DTYPE_F32, 2, 2, 2, d2, 7, 1.0);
	snap_fix(s, 13, 2, 1);
	snap_end(s);
	snap_put(s, "flags-unknown");
	snap_begin(s, 1);
	snap_model(s, tiny);
	snap_entry_ids(s, 0, 1, LBP_DTYPE_F32, 2, 3, 2, d2, 3, 2.0, true);
	snap_end(s);
	le_at(s->b + 1 + 8, 3, 4);
	seal_rec(s->b + 1);
	snap_put(s, "version-3-flags");
}

static void snapshot_seeds(void)
{
	static struct snap s;
	static const struct smodel tiny = { "tiny", 3, 4, LBP_DTYPE_F32, 8, 4, 0, 0 };
	static const struct smodel half = { "half-precision", 6, 8, LBP_DTYPE_F16, 16, 2, 0, 0 };
	static const struct smodel wide = { "m", LBP_MAX_LAYERS, LBP_MAX_HIDDEN, LBP_DTYPE_BF16,
					    LBP_MAX_SEQ, LBP_MAX_FP_CHUNKS, LBP_MAX_HIDDEN,
					    LBP_MAX_BLOCK_TOKENS };
	static const struct smodel newline = { "tin\ny", 0, 4, LBP_DTYPE_F32, 8, 4, 0, 0 };
	const uint32_t d2[] = { 2, 4 }, d1[] = { 5 }, d3[] = { 1, 2, 3 }, d4[] = { 2, 1, 1, 3 };

	snap_begin(&s, 1);
	snap_end(&s);
	snap_put(&s, "empty");

	snap_begin(&s, 1);
	snap_model(&s, &tiny);
	snap_end(&s);
	snap_put(&s, "model-no-entries");

	/* One input through every layer, another through one. */
	snap_begin(&s, 1);
	snap_model(&s, &tiny);
	for (uint16_t l = 0; l < 3; l++)
		snap_entry(&s, 0, l, LBP_DTYPE_F32, 2, 1, 2, d2, 1000u * l, 0.5 * l);
	snap_entry(&s, 0, 1, LBP_DTYPE_F32, 2, 2, 2, d2, 5, 2.0);
	snap_end(&s);
	snap_put(&s, "one-model");
	s.b[0] = 2 | 1; /* decay order */
	snap_put(&s, "one-model-decay");
	s.b[0] = 4 | 1; /* ttl order */
	snap_put(&s, "one-model-ttl");
	s.b[0] = 1;
	snap_thresholds(&s); /* version 5: the controllers after the entries */
	snap_end(&s);
	snap_put(&s, "one-model-thresholds");

	/* Three models, every dtype, every rank, data that needs padding and data that does not. */
	snap_begin(&s, 1);
	snap_model(&s, &tiny);
	snap_model(&s, &half);
	snap_model(&s, &wide);
	snap_entry(&s, 1, 0, LBP_DTYPE_F16, 16, 3, 1, d1, 0, 0.0);
	snap_entry(&s, 1, 5, LBP_DTYPE_F16, 16, 3, 3, d3, 7, 1.5);
	snap_entry(&s, 0, 2, LBP_DTYPE_F32, 8, 4, 4, d4, 9, 3.0);
	snap_entry(&s, 2, LBP_MAX_LAYERS - 1, LBP_DTYPE_BF16, LBP_MAX_SEQ, 5, 2, d2, 11, 0.25);
	snap_entry(&s, 0, 0, LBP_DTYPE_F32, 1, 6, 1, (const uint32_t[]){ 16 }, 0, 0.0);
	snap_end(&s);
	snap_put(&s, "three-models");
	s.b[0] = 0; /* as is: the checksums are the writer's */
	snap_put(&s, "three-models-raw");

	/* Refused by the consistency checks of Reading 6, checksums right. */
	snap_begin(&s, 1);
	snap_model(&s, &tiny);
	snap_entry(&s, 0, 1, LBP_DTYPE_F32, 2, 1, 2, d2, 0, 0.0);
	snap_entry(&s, 0, 1, LBP_DTYPE_F32, 2, 1, 2, d2, 0, 0.0);
	snap_end(&s);
	snap_put(&s, "same-layer-twice");
	snap_begin(&s, 1);
	snap_model(&s, &tiny);
	snap_entry(&s, 0, 0, LBP_DTYPE_F32, 2, 1, 2, d2, 0, 0.0);
	snap_entry(&s, 0, 1, LBP_DTYPE_F32, 4, 1, 2, d2, 0, 0.0);
	snap_end(&s);
	snap_put(&s, "input-two-lengths");
	snap_begin(&s, 1);
	snap_model(&s, &tiny);
	snap_model(&s, &tiny);
	snap_end(&s);
	snap_put(&s, "model-name-twice");
	/* A refused name holding a newline: the reason that quotes it is still one line. */
	snap_begin(&s, 1);
	snap_model(&s, &newline);
	snap_end(&s);
	snap_put(&s, "model-name-newline");
	/* Two inputs with one fingerprint: each is found by its own token hash. */
	uint64_t fp[4], exact[2];
	key(1, fp, exact);
	snap_begin(&s, 1);
	snap_model(&s, &tiny);
	snap_entry(&s, 0, 0, LBP_DTYPE_F32, 2, 1, 2, d2, 0, 0.0);
	snap_entry(&s, 0, 0, LBP_DTYPE_F32, 2, 2, 2, d2, 0, 0.0);
	for (int i = 0; i < 4; i++)
		snap_fix(&s, 40 + 8 * i, fp[i], 8);
	snap_end(&s);
	snap_put(&s, "same-fingerprint");

	snapshot_block_seeds(&s, &tiny);
	snapshot_token_seeds(&s, &tiny, &half);

	/* Header checks: another version (checked before the checksum; 1 is the format before
	 * prefix blocks), version 3 (read as 4 without token ids), a file cut short. */
	snap_begin(&s, 0);
	snap_model(&s, &tiny);
	snap_entry(&s, 0, 0, LBP_DTYPE_F32, 2, 1, 2, d2, 0, 0.0);
	snap_end(&s);
	le_at(s.b + 1 + 8, 1, 4);
	snap_put(&s, "version-1");
	le_at(s.b + 1 + 8, 5, 4);
	snap_put(&s, "version-5");
	le_at(s.b + 1 + 8, 3, 4);
	seal_rec(s.b + 1);
	snap_put(&s, "version-3");
	le_at(s.b + 1 + 8, 4, 4);
	seal_rec(s.b + 1);
	s.n -= 64;
	snap_put(&s, "truncated");
	s.n = 1 + 100;
	snap_put(&s, "truncated-header");
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s DIR\n", argv[0]);
		return 2;
	}
	root = argv[1];
	const char *dirs[] = { "corpus", "corpus/" DECODE, "corpus/" RING, "corpus/" SNAP };
	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		char path[4096];
		snprintf(path, sizeof(path), "%s/%s", root, dirs[i]);
		if (mkdir(path, 0755) < 0 && errno != EEXIST)
			die("%s: %s", path, strerror(errno));
	}
	decode_seeds();
	write_dict();
	ring_seeds();
	snapshot_seeds();
	return 0;
}
