/* Tests for the control protocol codec (proto/lbp.c) and the arena header check
 * (proto/lbp_shm.c): round trips at the limits, the bad-input suite, encoder limits. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "lbp.h"

#define MIB2 2097152u

/* ---- sample messages ---- */

static void fill(char *dst, size_t n, char ch)
{
	memset(dst, ch, n);
	dst[n] = '\0';
}

/* Typical messages, one per type. */
static struct lbp_msg sample(enum lbp_type t)
{
	struct lbp_msg m;

	memset(&m, 0, sizeof(m));
	m.type = t;
	switch (t) {
	case LBP_HELLO:
		m.u.hello.shm_abi = LB_SHM_ABI_VERSION;
		strcpy(m.u.hello.name, "worker-0");
		m.u.hello.req_entries = 256;
		m.u.hello.cpl_entries = 512;
		m.u.hello.staging_bytes = 16u << 20;
		break;
	case LBP_WELCOME:
		m.u.welcome.client_id = 42;
		for (unsigned i = 0; i < 16; i++)
			m.u.welcome.boot_id[i] = (uint8_t)(0xf0 + i);
		m.u.welcome.page_size = MIB2;
		m.u.welcome.n_arenas = 2;
		m.u.welcome.arenas[0].bytes = 4ull * MIB2;
		m.u.welcome.arenas[0].numa_node = 0;
		m.u.welcome.arenas[1].bytes = 2ull * MIB2;
		m.u.welcome.arenas[1].numa_node = -1;
		m.u.welcome.region.req_entries = 256;
		m.u.welcome.region.cpl_entries = 256;
		m.u.welcome.region.staging_bytes = 1u << 20;
		m.u.welcome.region.bytes = (1u << 20) + 65536;
		break;
	case LBP_REGISTER_MODEL:
		strcpy(m.u.reg.name, "llama-7b");
		m.u.reg.weights_hash = 0x0123456789abcdefull;
		m.u.reg.n_layers = 32;
		m.u.reg.hidden = 4096;
		m.u.reg.dtype = LBP_DTYPE_BF16;
		m.u.reg.max_seq = 4096;
		m.u.reg.fp.chunks = 8;
		m.u.reg.fp.bits = 256;
		m.u.reg.fp.seed = 7;
		m.u.reg.kv.dim = 4096; /* 32 KV heads of 128 */
		m.u.reg.kv.block_tokens = 16;
		m.u.reg.kv.layers = 16; /* a FusedKV model's storage layers */
		break;
	case LBP_MODEL:
		m.u.model.model_id = 3;
		m.u.model.created = true;
		break;
	case LBP_STATS_REPLY:
		m.u.stats.page_size = MIB2;
		m.u.stats.arena_bytes = 6ull * MIB2;
		m.u.stats.numa_nodes = 2;
		m.u.stats.hugepages = true;
		m.u.stats.clients = 5;
		m.u.stats.models = 1;
		m.u.stats.uptime_s = 3600;
		m.u.stats.threads = 2;
		strcpy(m.u.stats.policy, "decay");
		m.u.stats.hits = 1000;
		m.u.stats.misses = 200;
		m.u.stats.inserts = 300;
		m.u.stats.evictions = 40;
		m.u.stats.expirations = 5;
		m.u.stats.invalidations = 6;
		m.u.stats.entries = 250;
		m.u.stats.leases = 3;
		m.u.stats.bytes_used = 1u << 30;
		m.u.stats.bytes_budget = 2u << 30;
		m.u.stats.fragmentation_ppm = 12345;
		m.u.stats.quota_refusals = 17;
		m.u.stats.blocks = 90;
		m.u.stats.prefix_hits = 70;
		m.u.stats.prefix_misses = 30;
		m.u.stats.blocks_served = 420;
		strcpy(m.u.stats.l2, "up");
		m.u.stats.l2_queue_bytes = 5u << 20;
		m.u.stats.l2_queue_records = 40;
		m.u.stats.l2_fetches_waiting = 3;
		m.u.stats.l2_written = 900;
		m.u.stats.l2_dropped = 7;
		m.u.stats.l2_write_errors = 8;
		m.u.stats.l2_fetched = 60;
		m.u.stats.l2_fetch_misses = 110;
		m.u.stats.l2_rejected = 2;
		m.u.stats.l2_fetch_errors = 9;
		m.u.stats.tenants = 3;
		/* Two nodes, each with half of what the totals above count. */
		m.u.stats.n_nodes = 2;
		for (unsigned i = 0; i < 2; i++) {
			struct lbp_node_stats *nd = &m.u.stats.nodes[i];
			nd->node = (int32_t)i;
			nd->arena_bytes = 3ull * MIB2;
			nd->bytes_used = 1u << 29;
			nd->entries = 170; /* (entries + blocks) / 2 */
			nd->hits = 600 - 200 * i;
			nd->inserts = 150;
			nd->remote_inserts = 4 * i;
			nd->clients = 2 + i;
		}
		break;
	case LBP_MODEL_STATS:
		m.u.mstats.model_id = 2;
		m.u.mstats.first_layer = 64;
		break;
	case LBP_LOOKUP:
		m.u.lookup.model_id = 1;
		m.u.lookup.seq_len = 128;
		m.u.lookup.fp0 = 1;
		m.u.lookup.fp1 = UINT64_MAX;
		m.u.lookup.fp2 = 0x1234;
		m.u.lookup.fp3 = 0;
		m.u.lookup.exact_lo = 77;
		m.u.lookup.exact_hi = 88;
		break;
	case LBP_LOOKUP_REPLY:
		m.u.lookup_reply.status = -ENOENT;
		m.u.lookup_reply.layer = 11;
		m.u.lookup_reply.hamming = 256;
		m.u.lookup_reply.arena = 1;
		m.u.lookup_reply.entry_off = 4096;
		break;
	case LBP_MODEL_STATS_REPLY:
		m.u.mstats_reply.model_id = 2;
		strcpy(m.u.mstats_reply.name, "bert-base");
		m.u.mstats_reply.n_layers = 12;
		m.u.mstats_reply.first_layer = 0;
		m.u.mstats_reply.n = 3;
		for (unsigned i = 0; i < 3; i++) {
			struct lbp_layer_stats *l = &m.u.mstats_reply.layers[i];
			l->hits = 10 + i;
			l->misses = 20 + i;
			l->inserts = 30 + i;
			l->evictions = i;
			l->entries = 7;
			l->bytes = 393216ull * 7;
			l->leases = i % 2;
			l->max_hamming = 16 + i;
			l->reports = 40 + i;
			l->reports_over = 4 + i;
			l->drift_micro = 1234567 + i;
		}
		break;
	case LBP_ERROR:
		m.u.error.code = EPROTO;
		strcpy(m.u.error.field, "n_layers");
		strcpy(m.u.error.message, "out of range 1..1024");
		break;
	case LBP_FLUSH:
		m.u.flush.model_id = 2;
		m.u.flush.layer = 5;
		break;
	case LBP_FLUSH_REPLY:
		m.u.flush_reply.entries = 12;
		m.u.flush_reply.bytes = 12 * 393344ull;
		m.u.flush_reply.leased = 2;
		break;
	case LBP_CONFIG_GET:
		strcpy(m.u.config_get.key, "tau.bert-base");
		m.u.config_get.first = 32;
		break;
	case LBP_CONFIG_REPLY:
		m.u.config_reply.total = 7;
		m.u.config_reply.first = 0;
		m.u.config_reply.n = 3;
		strcpy(m.u.config_reply.items[0].key, "tau");
		strcpy(m.u.config_reply.items[0].value, "0.98");
		strcpy(m.u.config_reply.items[1].key, "budget");
		strcpy(m.u.config_reply.items[1].value, "64M");
		strcpy(m.u.config_reply.items[2].key, "tau.bert-base.11");
		strcpy(m.u.config_reply.items[2].value, "0.9");
		break;
	case LBP_CONFIG_SET:
		strcpy(m.u.config_set.key, "budget");
		strcpy(m.u.config_set.value, "256M");
		break;
	case LBP_SNAPSHOT_REPLY:
		m.u.snapshot_reply.entries = 1234;
		m.u.snapshot_reply.bytes = 268435456 + 4096;
		m.u.snapshot_reply.ms = 250;
		break;
	case LBP_STATS:
	case LBP_BYE:
	case LBP_SNAPSHOT:
		break;
	}
	return m;
}

/* A node row with every count at its largest. */
static struct lbp_node_stats max_node(int32_t node)
{
	struct lbp_node_stats n;

	memset(&n, 0, sizeof(n)); /* padding too: decoded rows compare with memcmp */
	n.node = node;
	n.arena_bytes = n.bytes_used = n.entries = n.hits = UINT64_MAX;
	n.inserts = n.remote_inserts = UINT64_MAX;
	n.clients = UINT32_MAX;
	return n;
}

/* Every type typical, then every type at its upper and lower limits. @return the count. */
static size_t all_samples(struct lbp_msg *out)
{
	size_t n = 0;
	struct lbp_msg m;

	for (int t = LBP_TYPE_MIN; t <= LBP_TYPE_MAX; t++)
		if (lbp_type_known((uint64_t)t))
			out[n++] = sample((enum lbp_type)t);

	m = sample(LBP_HELLO);
	m.u.hello.shm_abi = UINT32_MAX;
	fill(m.u.hello.name, LBP_MAX_NAME, 'h');
	m.u.hello.req_entries = LBP_MAX_RING;
	m.u.hello.cpl_entries = LBP_MAX_RING;
	m.u.hello.staging_bytes = LBP_MAX_STAGING;
	out[n++] = m;
	m.u.hello.shm_abi = 0;
	m.u.hello.name[0] = '\0';
	m.u.hello.req_entries = 0;
	m.u.hello.cpl_entries = 0;
	m.u.hello.staging_bytes = 0;
	out[n++] = m;

	m = sample(LBP_MODEL_STATS_REPLY);
	fill(m.u.mstats_reply.name, LBP_MAX_NAME, 's');
	m.u.mstats_reply.n_layers = LBP_MAX_LAYERS;
	m.u.mstats_reply.first_layer = LBP_MAX_LAYERS - 1;
	m.u.mstats_reply.n = LBP_MAX_STATS_LAYERS;
	for (unsigned i = 0; i < LBP_MAX_STATS_LAYERS; i++) {
		memset(&m.u.mstats_reply.layers[i], 0xff, sizeof(m.u.mstats_reply.layers[i]));
		m.u.mstats_reply.layers[i].max_hamming = LBP_FP_BITS;
	}
	out[n++] = m;
	m.u.mstats_reply.n = 0;
	out[n++] = m;

	m = sample(LBP_WELCOME);
	m.u.welcome.client_id = UINT64_MAX;
	memset(m.u.welcome.boot_id, 0xff, 16);
	m.u.welcome.page_size = 4096;
	m.u.welcome.n_arenas = LBP_MAX_ARENAS;
	for (unsigned i = 0; i < LBP_MAX_ARENAS; i++) {
		m.u.welcome.arenas[i].bytes = UINT64_MAX - 4095 - i * 4096ull;
		m.u.welcome.arenas[i].numa_node = i % 2 ? -1 : INT32_MAX - (int32_t)i;
	}
	out[n++] = m;
	m = sample(LBP_WELCOME);
	m.u.welcome.client_id = 0;
	memset(m.u.welcome.boot_id, 0, 16);
	m.u.welcome.n_arenas = 1;
	m.u.welcome.arenas[0].bytes = 4096;
	m.u.welcome.arenas[0].numa_node = -1;
	m.u.welcome.arenas[1].bytes = 0; /* unused slots decode as zero */
	m.u.welcome.arenas[1].numa_node = 0;
	out[n++] = m;

	m = sample(LBP_REGISTER_MODEL);
	fill(m.u.reg.name, LBP_MAX_NAME, 'n');
	m.u.reg.weights_hash = UINT64_MAX;
	m.u.reg.n_layers = LBP_MAX_LAYERS;
	m.u.reg.hidden = LBP_MAX_HIDDEN;
	m.u.reg.dtype = LBP_DTYPE_BF16;
	m.u.reg.max_seq = LBP_MAX_SEQ;
	m.u.reg.fp.chunks = LBP_MAX_FP_CHUNKS;
	m.u.reg.fp.seed = UINT64_MAX;
	m.u.reg.kv.dim = LBP_MAX_HIDDEN;
	m.u.reg.kv.block_tokens = LBP_MAX_BLOCK_TOKENS;
	m.u.reg.kv.layers = LBP_MAX_LAYERS;
	out[n++] = m;
	strcpy(m.u.reg.name, "x");
	m.u.reg.weights_hash = 0;
	m.u.reg.n_layers = 1;
	m.u.reg.hidden = 1;
	m.u.reg.dtype = LBP_DTYPE_F32;
	m.u.reg.max_seq = 1;
	m.u.reg.fp.chunks = 1;
	m.u.reg.fp.seed = 0;
	m.u.reg.kv.dim = 0; /* no prefix blocks: an encoder */
	m.u.reg.kv.block_tokens = 0;
	m.u.reg.kv.layers = 0;
	out[n++] = m;

	m = sample(LBP_MODEL);
	m.u.model.model_id = UINT32_MAX;
	m.u.model.created = false;
	out[n++] = m;
	m.u.model.model_id = 1;
	out[n++] = m;

	m = sample(LBP_STATS_REPLY);
	m.u.stats.page_size = 4096;
	m.u.stats.arena_bytes = UINT64_MAX;
	m.u.stats.numa_nodes = UINT32_MAX;
	m.u.stats.hugepages = false;
	m.u.stats.clients = UINT32_MAX;
	m.u.stats.models = UINT32_MAX;
	m.u.stats.uptime_s = UINT64_MAX;
	m.u.stats.threads = UINT32_MAX;
	fill(m.u.stats.policy, LBP_MAX_POLICY, 'p');
	m.u.stats.hits = m.u.stats.misses = m.u.stats.inserts = UINT64_MAX;
	m.u.stats.evictions = m.u.stats.expirations = m.u.stats.invalidations = UINT64_MAX;
	m.u.stats.entries = m.u.stats.leases = UINT64_MAX;
	m.u.stats.bytes_used = m.u.stats.bytes_budget = UINT64_MAX;
	m.u.stats.fragmentation_ppm = 1000000;
	m.u.stats.quota_refusals = UINT64_MAX;
	m.u.stats.blocks = m.u.stats.prefix_hits = m.u.stats.prefix_misses = UINT64_MAX;
	m.u.stats.blocks_served = UINT64_MAX;
	fill(m.u.stats.l2, LBP_MAX_L2_STATE, 's');
	m.u.stats.l2_queue_bytes = m.u.stats.l2_queue_records = UINT64_MAX;
	m.u.stats.l2_fetches_waiting = m.u.stats.l2_written = m.u.stats.l2_dropped = UINT64_MAX;
	m.u.stats.l2_write_errors = m.u.stats.l2_fetched = m.u.stats.l2_fetch_misses = UINT64_MAX;
	m.u.stats.l2_rejected = m.u.stats.l2_fetch_errors = UINT64_MAX;
	m.u.stats.tenants = UINT32_MAX;
	m.u.stats.n_nodes = LBP_MAX_NODES;
	for (unsigned i = 0; i < LBP_MAX_NODES; i++)
		m.u.stats.nodes[i] = max_node(i % 2 ? -1 : INT32_MAX - (int32_t)i);
	out[n++] = m;
	m.u.stats.n_nodes = 1; /* one node, as most machines have */
	m.u.stats.nodes[0] = max_node(0);
	memset(&m.u.stats.nodes[1], 0, sizeof(m.u.stats.nodes[1]));
	out[n++] = m;
	memset(&m.u.stats, 0, sizeof(m.u.stats));
	m.u.stats.page_size = 4096;
	strcpy(m.u.stats.policy, "l");
	strcpy(m.u.stats.l2, "off");
	out[n++] = m; /* tenants 0 and no nodes: a daemon that counts neither */

	m = sample(LBP_ERROR);
	m.u.error.code = INT32_MAX;
	fill(m.u.error.field, sizeof(m.u.error.field) - 1, 'f');
	fill(m.u.error.message, LBP_MAX_ERRMSG, 'm');
	out[n++] = m;
	m.u.error.code = 1;
	m.u.error.field[0] = '\0';
	m.u.error.message[0] = '\0';
	out[n++] = m;

	m = sample(LBP_FLUSH);
	m.u.flush.model_id = 0;
	m.u.flush.layer = -1;
	out[n++] = m;
	m.u.flush.model_id = UINT32_MAX;
	m.u.flush.layer = LBP_MAX_LAYERS - 1;
	out[n++] = m;

	m = sample(LBP_FLUSH_REPLY);
	m.u.flush_reply.entries = m.u.flush_reply.bytes = m.u.flush_reply.leased = UINT64_MAX;
	out[n++] = m;
	memset(&m.u.flush_reply, 0, sizeof(m.u.flush_reply));
	out[n++] = m;

	m = sample(LBP_CONFIG_GET);
	m.u.config_get.key[0] = '\0';
	m.u.config_get.first = 0;
	out[n++] = m;
	fill(m.u.config_get.key, LBP_MAX_CONFIG_KEY, 'g');
	m.u.config_get.first = UINT32_MAX;
	out[n++] = m;

	/* The largest CONFIG_REPLY: every item with the longest key and value. */
	m = sample(LBP_CONFIG_REPLY);
	m.u.config_reply.total = UINT32_MAX;
	m.u.config_reply.first = UINT32_MAX;
	m.u.config_reply.n = LBP_MAX_CONFIG_ITEMS;
	for (unsigned i = 0; i < LBP_MAX_CONFIG_ITEMS; i++) {
		fill(m.u.config_reply.items[i].key, LBP_MAX_CONFIG_KEY, (char)('a' + i % 26));
		fill(m.u.config_reply.items[i].value, LBP_MAX_CONFIG_VALUE, (char)('A' + i % 26));
	}
	out[n++] = m;
	memset(&m.u.config_reply, 0, sizeof(m.u.config_reply));
	out[n++] = m;

	m = sample(LBP_CONFIG_SET);
	fill(m.u.config_set.key, LBP_MAX_CONFIG_KEY, 'k');
	fill(m.u.config_set.value, LBP_MAX_CONFIG_VALUE, 'v');
	out[n++] = m;
	strcpy(m.u.config_set.key, "k");
	strcpy(m.u.config_set.value, "v");
	out[n++] = m;
	m = sample(LBP_SNAPSHOT_REPLY);
	m.u.snapshot_reply.entries = m.u.snapshot_reply.bytes = m.u.snapshot_reply.ms = UINT64_MAX;
	out[n++] = m;
	memset(&m.u.snapshot_reply, 0, sizeof(m.u.snapshot_reply));
	out[n++] = m;
	return n;
}

#define MAX_SAMPLES 56

static void assert_msg_equal(const struct lbp_msg *a, const struct lbp_msg *b)
{
	assert_int_equal(a->type, b->type);
	switch (a->type) {
	case LBP_HELLO:
		assert_int_equal(a->u.hello.shm_abi, b->u.hello.shm_abi);
		assert_string_equal(a->u.hello.name, b->u.hello.name);
		assert_int_equal(a->u.hello.req_entries, b->u.hello.req_entries);
		assert_int_equal(a->u.hello.cpl_entries, b->u.hello.cpl_entries);
		assert_true(a->u.hello.staging_bytes == b->u.hello.staging_bytes);
		break;
	case LBP_WELCOME:
		assert_true(a->u.welcome.client_id == b->u.welcome.client_id);
		assert_memory_equal(a->u.welcome.boot_id, b->u.welcome.boot_id, 16);
		assert_true(a->u.welcome.page_size == b->u.welcome.page_size);
		assert_int_equal(a->u.welcome.n_arenas, b->u.welcome.n_arenas);
		for (unsigned i = 0; i < a->u.welcome.n_arenas; i++) {
			assert_true(a->u.welcome.arenas[i].bytes == b->u.welcome.arenas[i].bytes);
			assert_int_equal(a->u.welcome.arenas[i].numa_node,
					 b->u.welcome.arenas[i].numa_node);
		}
		assert_memory_equal(&a->u.welcome.region, &b->u.welcome.region,
				    sizeof(a->u.welcome.region));
		break;
	case LBP_REGISTER_MODEL:
		assert_string_equal(a->u.reg.name, b->u.reg.name);
		assert_true(a->u.reg.weights_hash == b->u.reg.weights_hash);
		assert_int_equal(a->u.reg.n_layers, b->u.reg.n_layers);
		assert_int_equal(a->u.reg.hidden, b->u.reg.hidden);
		assert_int_equal(a->u.reg.dtype, b->u.reg.dtype);
		assert_int_equal(a->u.reg.max_seq, b->u.reg.max_seq);
		assert_int_equal(a->u.reg.fp.chunks, b->u.reg.fp.chunks);
		assert_int_equal(a->u.reg.fp.bits, b->u.reg.fp.bits);
		assert_true(a->u.reg.fp.seed == b->u.reg.fp.seed);
		assert_int_equal(a->u.reg.kv.dim, b->u.reg.kv.dim);
		assert_int_equal(a->u.reg.kv.block_tokens, b->u.reg.kv.block_tokens);
		assert_int_equal(a->u.reg.kv.layers, b->u.reg.kv.layers);
		break;
	case LBP_MODEL:
		assert_int_equal(a->u.model.model_id, b->u.model.model_id);
		assert_int_equal(a->u.model.created, b->u.model.created);
		break;
	case LBP_STATS_REPLY:
		assert_true(a->u.stats.page_size == b->u.stats.page_size);
		assert_true(a->u.stats.arena_bytes == b->u.stats.arena_bytes);
		assert_int_equal(a->u.stats.numa_nodes, b->u.stats.numa_nodes);
		assert_int_equal(a->u.stats.hugepages, b->u.stats.hugepages);
		assert_int_equal(a->u.stats.clients, b->u.stats.clients);
		assert_int_equal(a->u.stats.models, b->u.stats.models);
		assert_true(a->u.stats.uptime_s == b->u.stats.uptime_s);
		assert_int_equal(a->u.stats.threads, b->u.stats.threads);
		assert_string_equal(a->u.stats.policy, b->u.stats.policy);
		assert_true(a->u.stats.hits == b->u.stats.hits);
		assert_true(a->u.stats.misses == b->u.stats.misses);
		assert_true(a->u.stats.inserts == b->u.stats.inserts);
		assert_true(a->u.stats.evictions == b->u.stats.evictions);
		assert_true(a->u.stats.expirations == b->u.stats.expirations);
		assert_true(a->u.stats.invalidations == b->u.stats.invalidations);
		assert_true(a->u.stats.entries == b->u.stats.entries);
		assert_true(a->u.stats.leases == b->u.stats.leases);
		assert_true(a->u.stats.bytes_used == b->u.stats.bytes_used);
		assert_true(a->u.stats.bytes_budget == b->u.stats.bytes_budget);
		assert_int_equal(a->u.stats.fragmentation_ppm, b->u.stats.fragmentation_ppm);
		assert_true(a->u.stats.quota_refusals == b->u.stats.quota_refusals);
		assert_true(a->u.stats.blocks == b->u.stats.blocks);
		assert_true(a->u.stats.prefix_hits == b->u.stats.prefix_hits);
		assert_true(a->u.stats.prefix_misses == b->u.stats.prefix_misses);
		assert_true(a->u.stats.blocks_served == b->u.stats.blocks_served);
		assert_string_equal(a->u.stats.l2, b->u.stats.l2);
		assert_true(a->u.stats.l2_queue_bytes == b->u.stats.l2_queue_bytes);
		assert_true(a->u.stats.l2_queue_records == b->u.stats.l2_queue_records);
		assert_true(a->u.stats.l2_fetches_waiting == b->u.stats.l2_fetches_waiting);
		assert_true(a->u.stats.l2_written == b->u.stats.l2_written);
		assert_true(a->u.stats.l2_dropped == b->u.stats.l2_dropped);
		assert_true(a->u.stats.l2_write_errors == b->u.stats.l2_write_errors);
		assert_true(a->u.stats.l2_fetched == b->u.stats.l2_fetched);
		assert_true(a->u.stats.l2_fetch_misses == b->u.stats.l2_fetch_misses);
		assert_true(a->u.stats.l2_rejected == b->u.stats.l2_rejected);
		assert_true(a->u.stats.l2_fetch_errors == b->u.stats.l2_fetch_errors);
		assert_int_equal(a->u.stats.tenants, b->u.stats.tenants);
		assert_int_equal(a->u.stats.n_nodes, b->u.stats.n_nodes);
		for (unsigned i = 0; i < a->u.stats.n_nodes; i++) {
			const struct lbp_node_stats *x = &a->u.stats.nodes[i], *y = &b->u.stats.nodes[i];
			assert_int_equal(x->node, y->node);
			assert_true(x->arena_bytes == y->arena_bytes);
			assert_true(x->bytes_used == y->bytes_used);
			assert_true(x->entries == y->entries);
			assert_true(x->hits == y->hits);
			assert_true(x->inserts == y->inserts);
			assert_true(x->remote_inserts == y->remote_inserts);
			assert_int_equal(x->clients, y->clients);
		}
		break;
	case LBP_MODEL_STATS:
		assert_memory_equal(&a->u.mstats, &b->u.mstats, sizeof(a->u.mstats));
		break;
	case LBP_LOOKUP:
		assert_memory_equal(&a->u.lookup, &b->u.lookup, sizeof(a->u.lookup));
		break;
	case LBP_LOOKUP_REPLY:
		assert_memory_equal(&a->u.lookup_reply, &b->u.lookup_reply, sizeof(a->u.lookup_reply));
		break;
	case LBP_MODEL_STATS_REPLY:
		assert_int_equal(a->u.mstats_reply.model_id, b->u.mstats_reply.model_id);
		assert_string_equal(a->u.mstats_reply.name, b->u.mstats_reply.name);
		assert_int_equal(a->u.mstats_reply.n_layers, b->u.mstats_reply.n_layers);
		assert_int_equal(a->u.mstats_reply.first_layer, b->u.mstats_reply.first_layer);
		assert_int_equal(a->u.mstats_reply.n, b->u.mstats_reply.n);
		assert_memory_equal(a->u.mstats_reply.layers, b->u.mstats_reply.layers,
				    a->u.mstats_reply.n * sizeof(a->u.mstats_reply.layers[0]));
		break;
	case LBP_ERROR:
		assert_int_equal(a->u.error.code, b->u.error.code);
		assert_string_equal(a->u.error.field, b->u.error.field);
		assert_string_equal(a->u.error.message, b->u.error.message);
		break;
	case LBP_FLUSH:
		assert_memory_equal(&a->u.flush, &b->u.flush, sizeof(a->u.flush));
		break;
	case LBP_FLUSH_REPLY:
		assert_memory_equal(&a->u.flush_reply, &b->u.flush_reply, sizeof(a->u.flush_reply));
		break;
	case LBP_CONFIG_GET:
		assert_string_equal(a->u.config_get.key, b->u.config_get.key);
		assert_int_equal(a->u.config_get.first, b->u.config_get.first);
		break;
	case LBP_CONFIG_REPLY:
		assert_int_equal(a->u.config_reply.total, b->u.config_reply.total);
		assert_int_equal(a->u.config_reply.first, b->u.config_reply.first);
		assert_int_equal(a->u.config_reply.n, b->u.config_reply.n);
		for (unsigned i = 0; i < a->u.config_reply.n; i++) {
			assert_string_equal(a->u.config_reply.items[i].key, b->u.config_reply.items[i].key);
			assert_string_equal(a->u.config_reply.items[i].value,
					    b->u.config_reply.items[i].value);
		}
		break;
	case LBP_CONFIG_SET:
		assert_string_equal(a->u.config_set.key, b->u.config_set.key);
		assert_string_equal(a->u.config_set.value, b->u.config_set.value);
		break;
	case LBP_SNAPSHOT_REPLY:
		assert_memory_equal(&a->u.snapshot_reply, &b->u.snapshot_reply,
				    sizeof(a->u.snapshot_reply));
		break;
	case LBP_STATS:
	case LBP_BYE:
	case LBP_SNAPSHOT:
		break;
	}
}

/* ---- frames ---- */

static size_t enc(const struct lbp_msg *m, char *buf, size_t cap)
{
	int n = lbp_encode(m, buf, cap);

	if (n <= 0)
		fail_msg("encoding %s failed: %d", lbp_type_name(m->type), n);
	return (size_t)n;
}

/* Decode from a heap copy of exactly n bytes, so that ASan sees any read past the frame. */
static int dec(const void *p, size_t n, struct lbp_msg *out, struct lbp_fault *f)
{
	char *copy = malloc(n ? n : 1);
	int rc;

	assert_non_null(copy);
	if (n)
		memcpy(copy, p, n);
	rc = lbp_decode(copy, n, out, f);
	free(copy);
	return rc;
}

static void expect_fault(int rc, int want, const struct lbp_fault *f, const char *field,
			 const char *reason, const char *what)
{
	if (rc != want)
		fail_msg("%s: rc %d, want %d (fault '%s': %s)", what, rc, want, f->field, f->reason);
	if (field && strcmp(f->field, field))
		fail_msg("%s: fault field '%s', want '%s' (%s)", what, f->field, field, f->reason);
	if (reason && strncmp(f->reason, reason, strlen(reason)))
		fail_msg("%s: fault reason '%s', want '%s...'", what, f->reason, reason);
}

static int dec_bytes(const uint8_t *p, size_t n, struct lbp_fault *f)
{
	struct lbp_msg m;

	return dec(p, n, &m, f);
}

/* ---- a valid frame as a msgpack object tree, to change one part at a time ---- */

struct dom {
	char enc[2048];
	msgpack_unpacked u;
};

static void dom_load(struct dom *d, const struct lbp_msg *m)
{
	size_t n = enc(m, d->enc, sizeof(d->enc)), off = 0;

	msgpack_unpacked_init(&d->u);
	assert_int_equal(msgpack_unpack_next(&d->u, d->enc, n, &off), MSGPACK_UNPACK_SUCCESS);
}

static void dom_free(struct dom *d)
{
	msgpack_unpacked_destroy(&d->u);
}

static msgpack_object *dom_body(struct dom *d)
{
	return &d->u.data.via.array.ptr[2];
}

static int dom_decode(struct dom *d, struct lbp_msg *out, struct lbp_fault *f)
{
	struct lbp_msg tmp;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	int rc;

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	assert_int_equal(msgpack_pack_object(&pk, d->u.data), 0);
	rc = dec(sb.data, sb.size, out ? out : &tmp, f);
	msgpack_sbuffer_destroy(&sb);
	return rc;
}

/*
 * The object at path ("n_layers", "fp.chunks", "arenas[1].bytes", "" for the body).
 * *map and *idx name the map entry holding it when the path ends in a key, else *map is NULL.
 */
static msgpack_object *dom_find(struct dom *d, const char *path, msgpack_object **map,
				uint32_t *idx)
{
	msgpack_object *cur = dom_body(d);
	const char *p = path;

	if (map)
		*map = NULL;
	while (*p) {
		char seg[64];
		size_t n = strcspn(p, ".");
		long index = -1;
		char *br;
		uint32_t k;

		assert_true(n < sizeof(seg));
		memcpy(seg, p, n);
		seg[n] = '\0';
		p += n;
		if (*p == '.')
			p++;
		br = strchr(seg, '[');
		if (br) {
			index = strtol(br + 1, NULL, 10);
			*br = '\0';
		}
		assert_int_equal(cur->type, MSGPACK_OBJECT_MAP);
		for (k = 0; k < cur->via.map.size; k++) {
			const msgpack_object *key = &cur->via.map.ptr[k].key;
			if (key->via.str.size == strlen(seg) &&
			    !memcmp(key->via.str.ptr, seg, key->via.str.size))
				break;
		}
		if (k == cur->via.map.size)
			fail_msg("no key %s in path %s", seg, path);
		if (map)
			*map = cur;
		if (idx)
			*idx = k;
		cur = &cur->via.map.ptr[k].val;
		if (index >= 0) {
			assert_int_equal(cur->type, MSGPACK_OBJECT_ARRAY);
			assert_true((uint32_t)index < cur->via.array.size);
			cur = &cur->via.array.ptr[index];
			if (map)
				*map = NULL;
		}
	}
	return cur;
}

/* Move map's entries, but the one at skip (UINT32_MAX: none), into a new array with room for n. */
static void dom_remap(struct dom *d, msgpack_object *map, uint32_t skip, uint32_t n)
{
	msgpack_object_kv *kv = msgpack_zone_malloc(d->u.zone, sizeof(*kv) * (n ? n : 1));
	uint32_t k = 0;

	assert_non_null(kv);
	for (uint32_t i = 0; i < map->via.map.size; i++)
		if (i != skip)
			kv[k++] = map->via.map.ptr[i];
	map->via.map.ptr = kv;
	map->via.map.size = k;
}

static void dom_add_kv(struct dom *d, msgpack_object *map, msgpack_object_kv e)
{
	dom_remap(d, map, UINT32_MAX, map->via.map.size + 1);
	map->via.map.ptr[map->via.map.size++] = e;
}

/* msgpack objects as initializers (what a string or bin points to must outlive the decode). */
#define O_NIL { .type = MSGPACK_OBJECT_NIL }
#define O_BOOL(b) { .type = MSGPACK_OBJECT_BOOLEAN, .via.boolean = (b) }
#define O_UINT(v) { .type = MSGPACK_OBJECT_POSITIVE_INTEGER, .via.u64 = (v) }
#define O_NEG(v) { .type = MSGPACK_OBJECT_NEGATIVE_INTEGER, .via.i64 = (v) }
#define O_STR(s, n) { .type = MSGPACK_OBJECT_STR, .via.str = { .size = (n), .ptr = (s) } }
#define O_BIN(s, n) { .type = MSGPACK_OBJECT_BIN, .via.bin = { .size = (n), .ptr = (s) } }
#define O_ARRAY0 { .type = MSGPACK_OBJECT_ARRAY, .via.array = { .size = 0, .ptr = NULL } }
#define O_MAP0 { .type = MSGPACK_OBJECT_MAP, .via.map = { .size = 0, .ptr = NULL } }

/* One change to a valid frame: what the decoder's rejection tables below are made of. */
enum op {
	OP_SET, /* the value at path becomes val */
	OP_DEL, /* the map entry at path goes */
	OP_DUP, /* the map entry at path is there twice */
	OP_ADD, /* the map at path gains the entry key: val */
	OP_KEY, /* the key of the map entry at path becomes val */
};

struct change {
	enum lbp_type type; /* a change to sample(type) */
	enum op op;
	const char *path;   /* as dom_find takes it */
	msgpack_object val;
	const char *key;    /* OP_ADD */
};

#define SET(t, path, v) { LBP_##t, OP_SET, path, v, NULL }
#define KEY(t, path, v) { LBP_##t, OP_KEY, path, v, NULL }
#define ADD(t, path, k, v) { LBP_##t, OP_ADD, path, v, k }

static void dom_change(struct dom *d, const struct change *c)
{
	msgpack_object *map, *v;
	uint32_t idx = 0;

	v = dom_find(d, c->path, &map, &idx);
	if (c->op == OP_SET) {
		*v = c->val;
		return;
	}
	if (c->op == OP_ADD) {
		msgpack_object_kv e = { .key = O_STR(c->key, (uint32_t)strlen(c->key)),
					.val = c->val };

		assert_int_equal(v->type, MSGPACK_OBJECT_MAP);
		dom_add_kv(d, v, e);
		return;
	}
	assert_non_null(map); /* the others change a map entry: the path ends in a key */
	if (c->op == OP_DEL)
		dom_remap(d, map, idx, map->via.map.size - 1);
	else if (c->op == OP_DUP)
		dom_add_kv(d, map, map->via.map.ptr[idx]);
	else
		map->via.map.ptr[idx].key = c->val;
}

/* Decode sample(c->type) changed by c. @return lbp_decode's result; *out and *f as it left them
 * (out NULL: not kept). */
static int decode_changed(const struct change *c, struct lbp_msg *out, struct lbp_fault *f)
{
	struct lbp_msg m = sample(c->type);
	struct dom d;
	int rc;

	dom_load(&d, &m);
	dom_change(&d, c);
	rc = dom_decode(&d, out, f);
	dom_free(&d);
	return rc;
}

static void change_what(const struct change *c, char *out, size_t n)
{
	const char *t = lbp_type_name(c->type);

	switch (c->op) {
	case OP_SET:
		snprintf(out, n, "%s: %s as msgpack type %d", t, c->path, (int)c->val.type);
		break;
	case OP_DEL:
		snprintf(out, n, "%s without %s", t, c->path);
		break;
	case OP_DUP:
		snprintf(out, n, "%s with %s twice", t, c->path);
		break;
	case OP_ADD:
		snprintf(out, n, "%s: key '%s' added to '%s'", t, c->key, c->path);
		break;
	case OP_KEY:
		snprintf(out, n, "%s: the key of %s as msgpack type %d", t, c->path,
			 (int)c->val.type);
		break;
	}
}

/* c must draw -EBADMSG with a fault naming field (NULL: any), its reason starting so. */
static void reject(const struct change *c, const char *field, const char *reason,
		   struct lbp_fault *f)
{
	char what[160];

	change_what(c, what, sizeof(what));
	expect_fault(decode_changed(c, NULL, f), -EBADMSG, f, field, reason, what);
}

/* Every key path and array element of a body: "name", "fp", "fp.chunks", "arenas[0]"... */
struct paths {
	char p[64][32];
	bool entry[64]; /* a map entry (can go missing or be duplicated), not an array element */
	msgpack_object_type type[64];
	unsigned n;
};

static void paths_add(struct paths *s, const char *p, bool entry, msgpack_object_type t)
{
	assert_true(s->n < 64);
	assert_true(strlen(p) < sizeof(s->p[0]));
	memcpy(s->p[s->n], p, strlen(p) + 1);
	s->entry[s->n] = entry;
	s->type[s->n] = t;
	s->n++;
}

/* snprintf that fails the test instead of truncating. */
__attribute__((format(printf, 3, 4)))
static void path_fmt(char *out, size_t n, const char *fmt, ...)
{
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = vsnprintf(out, n, fmt, ap);
	va_end(ap);
	assert_true(r >= 0 && (size_t)r < n);
}

static void paths_collect(const msgpack_object *map, const char *prefix, struct paths *s)
{
	for (uint32_t i = 0; i < map->via.map.size; i++) {
		const msgpack_object_kv *kv = &map->via.map.ptr[i];
		char path[32], sub[32];

		path_fmt(path, sizeof(path), "%s%.*s", prefix, (int)kv->key.via.str.size,
			 kv->key.via.str.ptr);
		paths_add(s, path, true, kv->val.type);
		if (kv->val.type == MSGPACK_OBJECT_MAP) {
			path_fmt(sub, sizeof(sub), "%s.", path);
			paths_collect(&kv->val, sub, s);
		}
		if (kv->val.type != MSGPACK_OBJECT_ARRAY)
			continue;
		for (uint32_t j = 0; j < kv->val.via.array.size; j++) {
			const msgpack_object *e = &kv->val.via.array.ptr[j];
			path_fmt(sub, sizeof(sub), "%s[%u]", path, (unsigned)j);
			paths_add(s, sub, false, e->type);
			path_fmt(sub, sizeof(sub), "%s[%u].", path, (unsigned)j);
			if (e->type == MSGPACK_OBJECT_MAP)
				paths_collect(e, sub, s);
		}
	}
}

static const enum lbp_type body_types[] = {
	LBP_HELLO, LBP_WELCOME, LBP_REGISTER_MODEL, LBP_MODEL, LBP_STATS_REPLY, LBP_ERROR,
	LBP_MODEL_STATS, LBP_MODEL_STATS_REPLY, LBP_LOOKUP, LBP_LOOKUP_REPLY, LBP_FLUSH,
	LBP_FLUSH_REPLY, LBP_CONFIG_GET, LBP_CONFIG_REPLY, LBP_CONFIG_SET,
	LBP_SNAPSHOT_REPLY,
};
#define N_BODY_TYPES (sizeof(body_types) / sizeof(body_types[0]))

static void body_paths(enum lbp_type t, struct paths *s)
{
	struct lbp_msg m = sample(t);
	struct dom d;

	memset(s, 0, sizeof(*s));
	dom_load(&d, &m);
	paths_collect(dom_body(&d), "", s);
	dom_free(&d);
	assert_true(s->n > 0);
}

/* ---- round trips ---- */

static void test_roundtrip_every_type_at_its_limits(void **state)
{
	struct lbp_msg s[MAX_SAMPLES], out;
	struct lbp_fault f;
	char buf[LBP_MAX_FRAME];
	size_t n = all_samples(s);

	(void)state;
	for (size_t i = 0; i < n; i++) {
		size_t len = enc(&s[i], buf, sizeof(buf));
		memset(&out, 0xa5, sizeof(out));
		expect_fault(dec(buf, len, &out, &f), 0, &f, "", "", lbp_type_name(s[i].type));
		assert_msg_equal(&s[i], &out);
	}
}

static void test_decode_zeroes_unused_arena_slots(void **state)
{
	struct lbp_msg m = sample(LBP_WELCOME), out;
	char buf[512];
	size_t len;

	(void)state;
	m.u.welcome.n_arenas = 1;
	len = enc(&m, buf, sizeof(buf));
	memset(&out, 0xa5, sizeof(out));
	assert_int_equal(dec(buf, len, &out, NULL), 0);
	for (unsigned i = 1; i < LBP_MAX_ARENAS; i++) {
		assert_true(out.u.welcome.arenas[i].bytes == 0);
		assert_int_equal(out.u.welcome.arenas[i].numa_node, 0);
	}
}

static void test_decode_accepts_keys_in_any_order(void **state)
{
	struct lbp_msg m = sample(LBP_REGISTER_MODEL), out;
	msgpack_object *body;
	struct dom d;

	(void)state;
	dom_load(&d, &m);
	body = dom_body(&d);
	for (uint32_t i = 0, j = body->via.map.size - 1; i < j; i++, j--) {
		msgpack_object_kv t = body->via.map.ptr[i];
		body->via.map.ptr[i] = body->via.map.ptr[j];
		body->via.map.ptr[j] = t;
	}
	assert_int_equal(dom_decode(&d, &out, NULL), 0);
	assert_msg_equal(&m, &out);
	dom_free(&d);
}

static void test_decode_accepts_wide_int_encodings(void **state)
{
	/* [2 as uint64, 7 (BYE) as int8, {}]: any integer width carrying the value is fine. */
	static const uint8_t f1[] = { 0x93, 0xcf, 0, 0, 0, 0, 0, 0, 0, LBP_VERSION, 0xd0, 0x07,
				      0x80 };
	/* The same frame with array16 and map32 headers. */
	static const uint8_t f2[] = { 0xdc, 0, 3, 0xd3, 0, 0, 0, 0, 0, 0, 0, LBP_VERSION, 0xcd, 0, 7,
				      0xdf, 0, 0, 0, 0 };
	struct lbp_msg m;

	(void)state;
	assert_int_equal(dec(f1, sizeof(f1), &m, NULL), 0);
	assert_int_equal(m.type, LBP_BYE);
	assert_int_equal(dec(f2, sizeof(f2), &m, NULL), 0);
	assert_int_equal(m.type, LBP_BYE);
}

static void test_decode_accepts_null_fault(void **state)
{
	static const uint8_t bad[] = { 0x93, LBP_VERSION, 0x09, 0x80 };
	struct lbp_msg m;

	(void)state;
	assert_int_equal(lbp_decode(bad, sizeof(bad), &m, NULL), -EBADMSG);
}

static void test_decode_clears_fault_on_success(void **state)
{
	struct lbp_msg m = sample(LBP_STATS), out;
	struct lbp_fault f;
	char buf[64];
	size_t len = enc(&m, buf, sizeof(buf));

	(void)state;
	memset(&f, 'x', sizeof(f));
	assert_int_equal(lbp_decode(buf, len, &out, &f), 0);
	assert_string_equal(f.field, "");
	assert_string_equal(f.reason, "");
}

/* Decoding writes every byte of the message, padding included (memcmp compares two decoded
 * messages, as the fuzz target's round trip does), and a failed decode writes none. */
static void test_decode_writes_every_byte(void **state)
{
	struct lbp_msg in[MAX_SAMPLES], a, b;
	char buf[LBP_MAX_FRAME];
	size_t n = all_samples(in);

	(void)state;
	for (size_t i = 0; i < n; i++) {
		size_t len = enc(&in[i], buf, sizeof(buf));
		memset(&a, 0x00, sizeof(a));
		memset(&b, 0xff, sizeof(b));
		assert_int_equal(dec(buf, len, &a, NULL), 0);
		assert_int_equal(dec(buf, len, &b, NULL), 0);
		assert_memory_equal(&a, &b, sizeof(a));
		memset(&b, 0xff, sizeof(b));
		assert_int_equal(dec(buf, len - 1, &b, NULL), -EBADMSG);
		for (size_t k = 0; k < sizeof(b); k++)
			assert_int_equal(((const uint8_t *)&b)[k], 0xff);
	}
}

/* ---- framing ---- */

static void test_decode_rejects_every_prefix_of_every_frame(void **state)
{
	struct lbp_msg s[MAX_SAMPLES];
	struct lbp_fault f;
	char buf[LBP_MAX_FRAME], what[128];
	size_t n = all_samples(s);

	(void)state;
	for (size_t i = 0; i < n; i++) {
		size_t len = enc(&s[i], buf, sizeof(buf));
		for (size_t k = 0; k < len; k++) {
			snprintf(what, sizeof(what), "%s sample %zu prefix %zu/%zu",
				 lbp_type_name(s[i].type), i, k, len);
			expect_fault(dec_bytes((const uint8_t *)buf, k, &f), -EBADMSG, &f, "frame",
				     NULL, what);
		}
	}
}

static void test_decode_rejects_empty_frame(void **state)
{
	struct lbp_msg m;
	struct lbp_fault f;

	(void)state;
	expect_fault(dec_bytes((const uint8_t *)"", 0, &f), -EBADMSG, &f, "frame", "empty", "len 0");
	expect_fault(lbp_decode(NULL, 0, &m, &f), -EBADMSG, &f, "frame", NULL, "NULL, 0");
}

static void test_decode_rejects_frames_over_max_frame(void **state)
{
	struct lbp_msg m = sample(LBP_HELLO), out;
	struct lbp_fault f;
	char *buf = calloc(1, LBP_MAX_FRAME + 1);
	size_t len;

	(void)state;
	assert_non_null(buf);
	len = enc(&m, buf, LBP_MAX_FRAME);
	expect_fault(dec(buf, LBP_MAX_FRAME + 1, &out, &f), -EMSGSIZE, &f, "frame", NULL, "max+1");
	/* Exactly LBP_MAX_FRAME is read (and here refused for the padding, not the size). */
	expect_fault(dec(buf, LBP_MAX_FRAME, &out, &f), -EBADMSG, &f, "frame", "trailing bytes",
		     "max");
	assert_int_equal(dec(buf, len, &out, &f), 0);
	free(buf);
}

/* MODEL {model_id: 3, created: true}, byte for byte as PROTOCOL.md's example shows it. */
#define MODEL_FRAME 0x93, 0x05, 0x04, 0x82, 0xa8, 'm', 'o', 'd', 'e', 'l', '_', 'i', 'd', 0x03, \
		    0xa7, 'c', 'r', 'e', 'a', 't', 'e', 'd', 0xc3
static const uint8_t model_frame[] = { MODEL_FRAME };
#define MODEL_LEN sizeof(model_frame)

/* A frame refused: the bytes, then what the decoder returns, the field its fault names and how
 * the reason starts (NULL: not checked). */
struct frame_case {
	const uint8_t *b;
	size_t nb;
	int rc;
	const char *field;
	const char *reason;
	const char *what;
	size_t len;   /* the frame's length when longer than nb, */
	uint8_t fill; /* and the byte after the first nb */
};

#define B(...) (const uint8_t[]){ __VA_ARGS__ }, sizeof((const uint8_t[]){ __VA_ARGS__ })
#define REFUSE(rc, field, reason, what, ...) { B(__VA_ARGS__), rc, field, reason, what, 0, 0 }
#define TRUNCATED(what, ...) REFUSE(-EBADMSG, "frame", "truncated", what, __VA_ARGS__)
#define VERSION(rc, what, ...) REFUSE(rc, "version", NULL, what, __VA_ARGS__)
#define SHAPE(field, what, ...) REFUSE(-EBADMSG, field, NULL, what, __VA_ARGS__)
#define BAD_BYTE(reason, ...) REFUSE(-EBADMSG, "frame", reason, reason, __VA_ARGS__)
#define WITH_NAME(t) REFUSE(-EBADMSG, "name", "unknown key", #t " with a key", 0x93, LBP_VERSION, \
			    t, 0x81, 0xa4, 'n', 'a', 'm', 'e', 0xa1, 'x')

static const struct frame_case bad_frames[] = {
	/* Bytes after a whole frame. */
	REFUSE(-EBADMSG, "frame", "trailing bytes", "nil after frame", MODEL_FRAME, 0xc0),
	REFUSE(-EBADMSG, "frame", "trailing bytes", "two frames", MODEL_FRAME, MODEL_FRAME),

	/* Lengths that promise more than the frame holds. */
	TRUNCATED("array32 2^32-1", 0xdd, 0xff, 0xff, 0xff, 0xff),
	TRUNCATED("map32 2^32-1", 0xdf, 0xff, 0xff, 0xff, 0xff),
	TRUNCATED("str32 2^32-1", 0xdb, 0xff, 0xff, 0xff, 0xff),
	TRUNCATED("bin32 2^32-1", 0xc6, 0xff, 0xff, 0xff, 0xff),
	TRUNCATED("array16", 0xdc, 0xff, 0xff),
	TRUNCATED("map16", 0xde, 0xff, 0xff),
	TRUNCATED("str16", 0xda, 0xff, 0xff),
	TRUNCATED("bin16", 0xc5, 0xff, 0xff),
	TRUNCATED("str8", 0xd9, 0xff),
	TRUNCATED("bin8", 0xc4, 0xff),
	TRUNCATED("array32 2^31", 0xdd, 0x80, 0, 0, 0),
	TRUNCATED("map32 2^30: 2^31 objects", 0xdf, 0x40, 0, 0, 0),
	TRUNCATED("body map32", 0xdd, 0, 0, 0, 3, LBP_VERSION, 5, 0xdf, 0xff, 0xff, 0xff, 0xff),
	TRUNCATED("body map32 2^31-1", 0x93, LBP_VERSION, 5, 0xdf, 0x7f, 0xff, 0xff, 0xff),
	TRUNCATED("name str32", 0x93, LBP_VERSION, 1, 0x81, 0xa4, 'n', 'a', 'm', 'e', 0xdb, 0xff,
		  0xff, 0xff, 0xff),
	TRUNCATED("boot_id bin32", 0x93, LBP_VERSION, 2, 0x81, 0xa7, 'b', 'o', 'o', 't', '_', 'i',
		  'd', 0xc6, 0xff, 0xff, 0xff, 0xff),
	TRUNCATED("arenas array32", 0x93, LBP_VERSION, 2, 0x81, 0xa6, 'a', 'r', 'e', 'n', 'a', 's',
		  0xdd, 0xff, 0xff, 0xff, 0xff),
	/* Claims 8 map entries (16 objects) with 7 bytes left: still a lie. */
	TRUNCATED("fixmap 8", 0x93, LBP_VERSION, 5, 0x88, 0xc0, 0xc0, 0xc0, 0xc0, 0xc0, 0xc0, 0xc0),
	/* A count one past what the rest could hold, with plenty of bytes behind it: 995, one
	 * more than the 994 bytes behind the header. */
	{ B(0x93, LBP_VERSION, 5, 0xdc, 0x03, 0xe3), -EBADMSG, "frame", "truncated", "array16 995",
	  1000, 0 },

	/* Nesting: frame 1, body 2, seven arrays at 3..9, the nil at 10. Five arrays put the nil
	 * at level 8, which passes the walk; the key is what is wrong. */
	REFUSE(-EBADMSG, "frame", "nested deeper", "depth 10", 0x93, LBP_VERSION, LBP_STATS, 0x81,
	       0xa1, 'x', 0x91, 0x91, 0x91, 0x91, 0x91, 0x91, 0x91, 0xc0),
	REFUSE(-EBADMSG, "x", "unknown key", "depth 8", 0x93, LBP_VERSION, LBP_STATS, 0x81, 0xa1,
	       'x', 0x91, 0x91, 0x91, 0x91, 0x91, 0xc0),
	/* Deep nesting with nothing behind it. */
	{ B(0x91), -EBADMSG, "frame", NULL, "4096 x [", 4096, 0x91 },
	/* An array16 of 5000 nils. */
	{ B(0x93, LBP_VERSION, LBP_STATS, 0x81, 0xa1, 'x', 0xdc, 0x13, 0x88), -EBADMSG, "frame",
	  "more than", "5000 nils", 9 + 5000, 0xc0 },

	/* Floats, ext types, the reserved byte. */
	BAD_BYTE("float", 0x93, LBP_VERSION, 5, 0x81, 0xa1, 'x', 0xca, 0, 0, 0, 0),
	BAD_BYTE("float", 0x93, LBP_VERSION, 5, 0x81, 0xa1, 'x', 0xcb, 0, 0, 0, 0, 0, 0, 0, 0),
	BAD_BYTE("ext", 0x93, LBP_VERSION, 5, 0x81, 0xa1, 'x', 0xd4, 1, 0),
	BAD_BYTE("ext", 0x93, LBP_VERSION, 5, 0x81, 0xa1, 'x', 0xd8, 1, 0),
	BAD_BYTE("ext", 0x93, LBP_VERSION, 5, 0x81, 0xa1, 'x', 0xc7, 1, 1, 0),
	BAD_BYTE("reserved", 0x93, LBP_VERSION, 5, 0x81, 0xa1, 'x', 0xc1),
	BAD_BYTE("reserved", 0xc1),
	BAD_BYTE("float", 0x93, 0xca, 0x3f, 0x80, 0, 0, 5, 0x80),

	/* Other versions: -EPROTO, unless it is no version at all. Versions 1 (before prefix
	 * blocks), 2 (before kv.layers), 3 (before STATS_REPLY's second tier) and 4 (before its
	 * nodes and tenants) are among them: a whole, once valid frame of each is refused as such. */
	REFUSE(-EPROTO, "version", "unsupported version 1 (want 5)", "version 1 MODEL", 0x93, 0x01,
	       0x04, 0x82, 0xa8, 'm', 'o', 'd', 'e', 'l', '_', 'i', 'd', 0x03, 0xa7, 'c', 'r', 'e',
	       'a', 't', 'e', 'd', 0xc3),
	REFUSE(-EPROTO, "version", "unsupported version 2 (want 5)", "version 2 MODEL", 0x93, 0x02,
	       0x04, 0x82, 0xa8, 'm', 'o', 'd', 'e', 'l', '_', 'i', 'd', 0x03, 0xa7, 'c', 'r', 'e',
	       'a', 't', 'e', 'd', 0xc3),
	REFUSE(-EPROTO, "version", "unsupported version 3 (want 5)", "version 3 MODEL", 0x93, 0x03,
	       0x04, 0x82, 0xa8, 'm', 'o', 'd', 'e', 'l', '_', 'i', 'd', 0x03, 0xa7, 'c', 'r', 'e',
	       'a', 't', 'e', 'd', 0xc3),
	REFUSE(-EPROTO, "version", "unsupported version 4 (want 5)", "version 4 MODEL", 0x93, 0x04,
	       0x04, 0x82, 0xa8, 'm', 'o', 'd', 'e', 'l', '_', 'i', 'd', 0x03, 0xa7, 'c', 'r', 'e',
	       'a', 't', 'e', 'd', 0xc3),
	REFUSE(-EPROTO, "version", "unsupported version 6 (want 5)", "version 6", 0x93, 6, 5, 0x80),
	VERSION(-EPROTO, "version 1", 0x93, 1, 5, 0x80),
	VERSION(-EPROTO, "version 0", 0x93, 0, 5, 0x80),
	VERSION(-EPROTO, "version 127", 0x93, 0x7f, 5, 0x80),
	VERSION(-EPROTO, "version 2^64-1", 0x93, 0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		0xff, 5, 0x80),
	VERSION(-EPROTO, "version 1 as int8", 0x93, 0xd0, 1, 5, 0x80),
	VERSION(-EPROTO, "version 1 as uint64", 0x93, 0xcf, 0, 0, 0, 0, 0, 0, 0, 1, 5, 0x80),
	VERSION(-EPROTO, "[1]", 0x91, 1),
	VERSION(-EPROTO, "version 1, then anything", 0x95, 1, 0xc1),
	VERSION(-EPROTO, "array16 version 9", 0xdc, 0, 2, 9, 0xc0),
	VERSION(-EBADMSG, "version -1", 0x93, 0xff, 5, 0x80),
	VERSION(-EBADMSG, "version -1 as int8", 0x93, 0xd0, 0xff, 5, 0x80),
	VERSION(-EBADMSG, "version nil", 0x93, 0xc0, 5, 0x80),
	VERSION(-EBADMSG, "version \"1\"", 0x93, 0xa1, '1', 5, 0x80),
	VERSION(-EBADMSG, "version true", 0x93, 0xc3, 5, 0x80),

	/* The top level is [version, type, {body}]. */
	SHAPE("frame", "map", 0x80),
	SHAPE("frame", "int", 0x01),
	SHAPE("frame", "nil", 0xc0),
	SHAPE("frame", "str", 0xa1, 'x'),
	SHAPE("frame", "[]", 0x90),
	SHAPE("frame", "[version]", 0x91, LBP_VERSION),
	SHAPE("frame", "[version, 5]", 0x92, LBP_VERSION, 5),
	SHAPE("frame", "4 elements", 0x94, LBP_VERSION, 5, 0x80, 0xc0),
	SHAPE("body", "body []", 0x93, LBP_VERSION, 5, 0x90),
	SHAPE("body", "body nil", 0x93, LBP_VERSION, 5, 0xc0),
	SHAPE("body", "body \"\"", 0x93, LBP_VERSION, 5, 0xa0),
	SHAPE("type", "type 0", 0x93, LBP_VERSION, 0, 0x80),
	SHAPE("type", "type past the last", 0x93, LBP_VERSION, LBP_TYPE_MAX + 1, 0x80),
	SHAPE("type", "type 255", 0x93, LBP_VERSION, 0xcc, 0xff, 0x80),
	SHAPE("type", "type -1", 0x93, LBP_VERSION, 0xff, 0x80),
	SHAPE("type", "type nil", 0x93, LBP_VERSION, 0xc0, 0x80),
	SHAPE("type", "type \"5\"", 0x93, LBP_VERSION, 0xa1, '5', 0x80),

	/* STATS, BYE and SNAPSHOT take an empty map and nothing else. */
	WITH_NAME(LBP_STATS),
	WITH_NAME(LBP_BYE),
	WITH_NAME(LBP_SNAPSHOT),
};

static void test_decode_rejects_bad_frames(void **state)
{
	static uint8_t buf[16384];
	struct lbp_fault f;

	(void)state;
	for (size_t i = 0; i < sizeof(bad_frames) / sizeof(bad_frames[0]); i++) {
		const struct frame_case *c = &bad_frames[i];
		size_t len = c->len > c->nb ? c->len : c->nb;

		assert_true(len <= sizeof(buf));
		memcpy(buf, c->b, c->nb);
		memset(buf + c->nb, c->fill, len - c->nb);
		expect_fault(dec_bytes(buf, len, &f), c->rc, &f, c->field, c->reason, c->what);
	}
}

static void test_stats_bye_and_snapshot_accept_an_empty_map(void **state)
{
	static const enum lbp_type types[] = { LBP_STATS, LBP_BYE, LBP_SNAPSHOT };
	struct lbp_fault f;
	struct lbp_msg m;

	(void)state;
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		const uint8_t b[] = { 0x93, LBP_VERSION, (uint8_t)types[i], 0x80 };

		expect_fault(dec(b, sizeof(b), &m, &f), 0, &f, "", "", lbp_type_name(types[i]));
		assert_int_equal(m.type, types[i]);
	}
}

/* Every number of LBP_TYPE_MIN..LBP_TYPE_MAX is a type; none outside. */
static void test_type_range(void **state)
{
	(void)state;
	for (unsigned t = LBP_TYPE_MIN; t <= LBP_TYPE_MAX; t++)
		assert_true(lbp_type_known(t));
	assert_false(lbp_type_known(0));
	assert_false(lbp_type_known(LBP_TYPE_MAX + 1));
	assert_false(lbp_type_known(UINT64_MAX));
}

/* ---- keys and values ---- */

static const char zeros[32];

/* Changes refused with a fault naming field, the reason starting so. */
static const struct {
	struct change c;
	const char *field;
	const char *reason;
} bad_changes[] = {
	/* Keys that are not strings, named by the map holding them. */
	{ KEY(REGISTER_MODEL, "name", O_UINT(1)), "body", "wrong type" },
	{ KEY(REGISTER_MODEL, "fp.bits", O_BIN("bits", 4)), "fp", "wrong type" },
	{ KEY(REGISTER_MODEL, "kv.block_tokens", O_NIL), "kv", "wrong type" },
	{ KEY(WELCOME, "arenas[1].bytes", O_NIL), "arenas[1]", "wrong type" },
	/* Unknown keys, named printably. */
	{ ADD(MODEL, "", "a\x01 b\xff", O_NIL), "a??b?", "unknown key" },
	{ ADD(MODEL, "", "", O_NIL), "\"\"", "unknown key" },
	/* A boot_id of any length but 16. */
	{ SET(WELCOME, "boot_id", O_BIN(zeros, 0)), "boot_id", "wrong length" },
	{ SET(WELCOME, "boot_id", O_BIN(zeros, 1)), "boot_id", "wrong length" },
	{ SET(WELCOME, "boot_id", O_BIN(zeros, 15)), "boot_id", "wrong length" },
	{ SET(WELCOME, "boot_id", O_BIN(zeros, 17)), "boot_id", "wrong length" },
	{ SET(WELCOME, "boot_id", O_BIN(zeros, 32)), "boot_id", "wrong length" },
};

static void test_decode_rejects_bad_keys_and_values(void **state)
{
	struct lbp_fault f;

	(void)state;
	for (size_t i = 0; i < sizeof(bad_changes) / sizeof(bad_changes[0]); i++)
		reject(&bad_changes[i].c, bad_changes[i].field, bad_changes[i].reason, &f);
}

/* An unknown key too long for the fault's field is cut to fit it. */
static void test_decode_cuts_a_long_unknown_key_to_the_field(void **state)
{
	char longkey[100];
	struct lbp_fault f;
	struct change c = ADD(MODEL, "", longkey, O_NIL);

	(void)state;
	fill(longkey, sizeof(longkey) - 1, 'k');
	reject(&c, NULL, "unknown key", &f);
	assert_int_equal(strlen(f.field), sizeof(f.field) - 1);
}

/* Integers are one class: a negative int where a uint belongs is a range fault, not a type
 * fault, and has its own tests. */
static bool same_class(msgpack_object_type a, msgpack_object_type b)
{
	bool ia = a == MSGPACK_OBJECT_POSITIVE_INTEGER || a == MSGPACK_OBJECT_NEGATIVE_INTEGER;
	bool ib = b == MSGPACK_OBJECT_POSITIVE_INTEGER || b == MSGPACK_OBJECT_NEGATIVE_INTEGER;

	return a == b || (ia && ib);
}

/* What is done at every path of every body, and the fault it must draw there (naming the path,
 * or the key added to the map there). */
static const struct path_rule {
	enum op op;
	msgpack_object val;
	const char *reason;
} path_rules[] = {
	{ OP_DEL, O_NIL, "missing" },
	{ OP_DUP, O_NIL, "duplicate key" },
	{ OP_ADD, O_NIL, "unknown key" },
	{ OP_SET, O_NIL, "wrong type" },
	{ OP_SET, O_BOOL(true), "wrong type" },
	{ OP_SET, O_UINT(1), "wrong type" },
	{ OP_SET, O_NEG(-1), "wrong type" },
	{ OP_SET, O_STR("x", 1), "wrong type" },
	{ OP_SET, O_BIN("0123456789abcdef", 16), "wrong type" },
	{ OP_SET, O_ARRAY0, "wrong type" },
	{ OP_SET, O_MAP0, "wrong type" },
};

static bool rule_applies(const struct path_rule *r, const struct paths *s, unsigned i)
{
	switch (r->op) {
	case OP_DEL:
	case OP_DUP:
		return s->entry[i];
	case OP_ADD:
		return s->type[i] == MSGPACK_OBJECT_MAP;
	case OP_SET:
		return !same_class(s->type[i], r->val.type);
	case OP_KEY:
		break;
	}
	return false;
}

static void test_decode_rejects_each_change_at_every_path(void **state)
{
	struct lbp_fault f;
	char added[48];

	(void)state;
	for (size_t t = 0; t < N_BODY_TYPES; t++) {
		struct change body = { body_types[t], OP_ADD, "", O_UINT(1), "bogus" };
		struct paths s;

		reject(&body, "bogus", "unknown key", &f);
		body_paths(body_types[t], &s);
		for (unsigned i = 0; i < s.n; i++) {
			path_fmt(added, sizeof(added), "%s.bogus", s.p[i]);
			for (size_t k = 0; k < sizeof(path_rules) / sizeof(path_rules[0]); k++) {
				const struct path_rule *r = &path_rules[k];
				struct change c = { body_types[t], r->op, s.p[i], r->val, "bogus" };

				if (rule_applies(r, &s, i))
					reject(&c, r->op == OP_ADD ? added : s.p[i], r->reason, &f);
			}
		}
	}
}

enum width { W_U32, W_U64, W_I32 };

struct range_case {
	enum lbp_type type;
	const char *path;
	size_t off; /* of the C field in struct lbp_msg */
	enum width width;
	bool neg;
	uint64_t u;
	int64_t s;
	bool ok;
};

#define OFF(member) offsetof(struct lbp_msg, u.member)
#define RU(t, path, member, w, v, ok) { LBP_##t, path, OFF(member), w, false, (v), 0, ok }
#define RS(t, path, member, w, v, ok) { LBP_##t, path, OFF(member), w, true, 0, (v), ok }

static const struct range_case ranges[] = {
	RU(HELLO, "shm_abi", hello.shm_abi, W_U32, 0, true),
	RU(HELLO, "shm_abi", hello.shm_abi, W_U32, UINT32_MAX, true),
	RU(HELLO, "shm_abi", hello.shm_abi, W_U32, UINT32_MAX + 1ull, false),
	RS(HELLO, "shm_abi", hello.shm_abi, W_U32, -1, false),

	RU(WELCOME, "client_id", welcome.client_id, W_U64, 0, true),
	RU(WELCOME, "client_id", welcome.client_id, W_U64, UINT64_MAX, true),
	RS(WELCOME, "client_id", welcome.client_id, W_U64, -1, false),
	RU(WELCOME, "page_size", welcome.page_size, W_U64, 4096, true),
	RU(WELCOME, "page_size", welcome.page_size, W_U64, MIB2, true),
	RU(WELCOME, "page_size", welcome.page_size, W_U64, 0, false),
	RU(WELCOME, "page_size", welcome.page_size, W_U64, 4095, false),
	RU(WELCOME, "page_size", welcome.page_size, W_U64, 4097, false),
	RU(WELCOME, "page_size", welcome.page_size, W_U64, 8192, false),
	RU(WELCOME, "page_size", welcome.page_size, W_U64, MIB2 - 1, false),
	RU(WELCOME, "page_size", welcome.page_size, W_U64, MIB2 + 1, false),
	RU(WELCOME, "page_size", welcome.page_size, W_U64, 1ull << 30, false),
	RS(WELCOME, "page_size", welcome.page_size, W_U64, -4096, false),
	RU(WELCOME, "arenas[0].bytes", welcome.arenas[0].bytes, W_U64, 4096, true),
	RU(WELCOME, "arenas[0].bytes", welcome.arenas[0].bytes, W_U64, UINT64_MAX - 4095, true),
	RU(WELCOME, "arenas[0].bytes", welcome.arenas[0].bytes, W_U64, 0, false),
	RU(WELCOME, "arenas[0].bytes", welcome.arenas[0].bytes, W_U64, 4095, false),
	RU(WELCOME, "arenas[0].bytes", welcome.arenas[0].bytes, W_U64, 4097, false),
	RU(WELCOME, "arenas[0].bytes", welcome.arenas[0].bytes, W_U64, UINT64_MAX, false),
	RS(WELCOME, "arenas[0].bytes", welcome.arenas[0].bytes, W_U64, -4096, false),
	RS(WELCOME, "arenas[1].numa_node", welcome.arenas[1].numa_node, W_I32, -1, true),
	RU(WELCOME, "arenas[1].numa_node", welcome.arenas[1].numa_node, W_I32, 0, true),
	RU(WELCOME, "arenas[1].numa_node", welcome.arenas[1].numa_node, W_I32, INT32_MAX, true),
	RS(WELCOME, "arenas[1].numa_node", welcome.arenas[1].numa_node, W_I32, -2, false),
	RS(WELCOME, "arenas[1].numa_node", welcome.arenas[1].numa_node, W_I32, INT32_MIN, false),
	RS(WELCOME, "arenas[1].numa_node", welcome.arenas[1].numa_node, W_I32, INT64_MIN, false),
	RU(WELCOME, "arenas[1].numa_node", welcome.arenas[1].numa_node, W_I32,
	   INT32_MAX + 1ull, false),
	RU(WELCOME, "arenas[1].numa_node", welcome.arenas[1].numa_node, W_I32, UINT64_MAX, false),

	RU(REGISTER_MODEL, "weights_hash", reg.weights_hash, W_U64, 0, true),
	RU(REGISTER_MODEL, "weights_hash", reg.weights_hash, W_U64, UINT64_MAX, true),
	RS(REGISTER_MODEL, "weights_hash", reg.weights_hash, W_U64, -1, false),
	RU(REGISTER_MODEL, "n_layers", reg.n_layers, W_U32, 0, false),
	RU(REGISTER_MODEL, "n_layers", reg.n_layers, W_U32, 1, true),
	RU(REGISTER_MODEL, "n_layers", reg.n_layers, W_U32, LBP_MAX_LAYERS, true),
	RU(REGISTER_MODEL, "n_layers", reg.n_layers, W_U32, LBP_MAX_LAYERS + 1, false),
	RU(REGISTER_MODEL, "n_layers", reg.n_layers, W_U32, UINT32_MAX + 1ull, false),
	RU(REGISTER_MODEL, "n_layers", reg.n_layers, W_U32, (1ull << 32) + 32, false),
	RS(REGISTER_MODEL, "n_layers", reg.n_layers, W_U32, -1, false),
	RU(REGISTER_MODEL, "hidden", reg.hidden, W_U32, 0, false),
	RU(REGISTER_MODEL, "hidden", reg.hidden, W_U32, 1, true),
	RU(REGISTER_MODEL, "hidden", reg.hidden, W_U32, LBP_MAX_HIDDEN, true),
	RU(REGISTER_MODEL, "hidden", reg.hidden, W_U32, LBP_MAX_HIDDEN + 1, false),
	RS(REGISTER_MODEL, "hidden", reg.hidden, W_U32, -4096, false),
	RU(REGISTER_MODEL, "dtype", reg.dtype, W_U32, 0, false),
	RU(REGISTER_MODEL, "dtype", reg.dtype, W_U32, LBP_DTYPE_F32, true),
	RU(REGISTER_MODEL, "dtype", reg.dtype, W_U32, LBP_DTYPE_F16, true),
	RU(REGISTER_MODEL, "dtype", reg.dtype, W_U32, LBP_DTYPE_BF16, true),
	RU(REGISTER_MODEL, "dtype", reg.dtype, W_U32, LBP_DTYPE_BF16 + 1, false),
	RU(REGISTER_MODEL, "max_seq", reg.max_seq, W_U32, 0, false),
	RU(REGISTER_MODEL, "max_seq", reg.max_seq, W_U32, 1, true),
	RU(REGISTER_MODEL, "max_seq", reg.max_seq, W_U32, LBP_MAX_SEQ, true),
	RU(REGISTER_MODEL, "max_seq", reg.max_seq, W_U32, LBP_MAX_SEQ + 1, false),
	RU(REGISTER_MODEL, "fp.chunks", reg.fp.chunks, W_U32, 0, false),
	RU(REGISTER_MODEL, "fp.chunks", reg.fp.chunks, W_U32, 1, true),
	RU(REGISTER_MODEL, "fp.chunks", reg.fp.chunks, W_U32, LBP_MAX_FP_CHUNKS, true),
	RU(REGISTER_MODEL, "fp.chunks", reg.fp.chunks, W_U32, LBP_MAX_FP_CHUNKS + 1, false),
	RU(REGISTER_MODEL, "fp.bits", reg.fp.bits, W_U32, 256, true),
	RU(REGISTER_MODEL, "fp.bits", reg.fp.bits, W_U32, 255, false),
	RU(REGISTER_MODEL, "fp.bits", reg.fp.bits, W_U32, 257, false),
	RU(REGISTER_MODEL, "fp.bits", reg.fp.bits, W_U32, 0, false),
	RU(REGISTER_MODEL, "fp.bits", reg.fp.bits, W_U32, 512, false),
	RU(REGISTER_MODEL, "fp.seed", reg.fp.seed, W_U64, UINT64_MAX, true),
	RS(REGISTER_MODEL, "fp.seed", reg.fp.seed, W_U64, INT64_MIN, false),
	/* The codec checks each of kv's ranges alone: that dim, block_tokens and layers are all 0
	 * or all at least 1 is the registry's rule (lbd_models_valid), so a lone 0 decodes here. */
	RU(REGISTER_MODEL, "kv.dim", reg.kv.dim, W_U32, 0, true),
	RU(REGISTER_MODEL, "kv.dim", reg.kv.dim, W_U32, 1, true),
	RU(REGISTER_MODEL, "kv.dim", reg.kv.dim, W_U32, LBP_MAX_HIDDEN, true),
	RU(REGISTER_MODEL, "kv.dim", reg.kv.dim, W_U32, LBP_MAX_HIDDEN + 1, false),
	RU(REGISTER_MODEL, "kv.dim", reg.kv.dim, W_U32, UINT32_MAX + 1ull, false),
	RS(REGISTER_MODEL, "kv.dim", reg.kv.dim, W_U32, -1, false),
	RU(REGISTER_MODEL, "kv.block_tokens", reg.kv.block_tokens, W_U32, 0, true),
	RU(REGISTER_MODEL, "kv.block_tokens", reg.kv.block_tokens, W_U32, 1, true),
	RU(REGISTER_MODEL, "kv.block_tokens", reg.kv.block_tokens, W_U32, LBP_MAX_BLOCK_TOKENS, true),
	RU(REGISTER_MODEL, "kv.block_tokens", reg.kv.block_tokens, W_U32, LBP_MAX_BLOCK_TOKENS + 1,
	   false),
	RU(REGISTER_MODEL, "kv.block_tokens", reg.kv.block_tokens, W_U32, UINT64_MAX, false),
	RS(REGISTER_MODEL, "kv.block_tokens", reg.kv.block_tokens, W_U32, -16, false),
	RU(REGISTER_MODEL, "kv.layers", reg.kv.layers, W_U32, 0, true),
	RU(REGISTER_MODEL, "kv.layers", reg.kv.layers, W_U32, LBP_MAX_LAYERS, true),
	RU(REGISTER_MODEL, "kv.layers", reg.kv.layers, W_U32, LBP_MAX_LAYERS + 1, false),
	RS(REGISTER_MODEL, "kv.layers", reg.kv.layers, W_U32, -1, false),

	RU(MODEL, "model_id", model.model_id, W_U32, 0, false),
	RU(MODEL, "model_id", model.model_id, W_U32, 1, true),
	RU(MODEL, "model_id", model.model_id, W_U32, UINT32_MAX, true),
	RU(MODEL, "model_id", model.model_id, W_U32, UINT32_MAX + 1ull, false),
	RS(MODEL, "model_id", model.model_id, W_U32, -1, false),

	RU(STATS_REPLY, "page_size", stats.page_size, W_U64, 4096, true),
	RU(STATS_REPLY, "page_size", stats.page_size, W_U64, 0, false),
	RU(STATS_REPLY, "page_size", stats.page_size, W_U64, MIB2 * 2, false),
	RU(STATS_REPLY, "arena_bytes", stats.arena_bytes, W_U64, UINT64_MAX, true),
	RS(STATS_REPLY, "arena_bytes", stats.arena_bytes, W_U64, -1, false),
	RU(STATS_REPLY, "numa_nodes", stats.numa_nodes, W_U32, UINT32_MAX, true),
	RU(STATS_REPLY, "numa_nodes", stats.numa_nodes, W_U32, UINT32_MAX + 1ull, false),
	RU(STATS_REPLY, "clients", stats.clients, W_U32, UINT32_MAX + 1ull, false),
	RS(STATS_REPLY, "clients", stats.clients, W_U32, -1, false),
	RU(STATS_REPLY, "models", stats.models, W_U32, UINT32_MAX + 1ull, false),
	RS(STATS_REPLY, "uptime_s", stats.uptime_s, W_U64, -1, false),
	RU(STATS_REPLY, "quota_refusals", stats.quota_refusals, W_U64, UINT64_MAX, true),
	RU(STATS_REPLY, "quota_refusals", stats.quota_refusals, W_U64, 0, true),
	RS(STATS_REPLY, "quota_refusals", stats.quota_refusals, W_U64, -1, false),
	RU(STATS_REPLY, "blocks", stats.blocks, W_U64, 0, true),
	RU(STATS_REPLY, "blocks", stats.blocks, W_U64, UINT64_MAX, true),
	RS(STATS_REPLY, "blocks", stats.blocks, W_U64, -1, false),
	RU(STATS_REPLY, "prefix_hits", stats.prefix_hits, W_U64, UINT64_MAX, true),
	RS(STATS_REPLY, "prefix_hits", stats.prefix_hits, W_U64, -1, false),
	RU(STATS_REPLY, "prefix_misses", stats.prefix_misses, W_U64, 0, true),
	RS(STATS_REPLY, "prefix_misses", stats.prefix_misses, W_U64, INT64_MIN, false),
	RU(STATS_REPLY, "blocks_served", stats.blocks_served, W_U64, UINT64_MAX, true),
	RS(STATS_REPLY, "blocks_served", stats.blocks_served, W_U64, -1, false),
	RU(STATS_REPLY, "l2_queue_bytes", stats.l2_queue_bytes, W_U64, UINT64_MAX, true),
	RS(STATS_REPLY, "l2_queue_bytes", stats.l2_queue_bytes, W_U64, -1, false),
	RU(STATS_REPLY, "l2_queue_records", stats.l2_queue_records, W_U64, 0, true),
	RS(STATS_REPLY, "l2_queue_records", stats.l2_queue_records, W_U64, -1, false),
	RU(STATS_REPLY, "l2_fetches_waiting", stats.l2_fetches_waiting, W_U64, UINT64_MAX, true),
	RS(STATS_REPLY, "l2_fetches_waiting", stats.l2_fetches_waiting, W_U64, -1, false),
	RU(STATS_REPLY, "l2_written", stats.l2_written, W_U64, UINT64_MAX, true),
	RS(STATS_REPLY, "l2_written", stats.l2_written, W_U64, INT64_MIN, false),
	RU(STATS_REPLY, "l2_dropped", stats.l2_dropped, W_U64, 0, true),
	RS(STATS_REPLY, "l2_dropped", stats.l2_dropped, W_U64, -1, false),
	RU(STATS_REPLY, "l2_write_errors", stats.l2_write_errors, W_U64, UINT64_MAX, true),
	RS(STATS_REPLY, "l2_write_errors", stats.l2_write_errors, W_U64, -1, false),
	RU(STATS_REPLY, "l2_fetched", stats.l2_fetched, W_U64, UINT64_MAX, true),
	RS(STATS_REPLY, "l2_fetched", stats.l2_fetched, W_U64, -1, false),
	RU(STATS_REPLY, "l2_fetch_misses", stats.l2_fetch_misses, W_U64, 0, true),
	RS(STATS_REPLY, "l2_fetch_misses", stats.l2_fetch_misses, W_U64, -1, false),
	RU(STATS_REPLY, "l2_rejected", stats.l2_rejected, W_U64, UINT64_MAX, true),
	RS(STATS_REPLY, "l2_rejected", stats.l2_rejected, W_U64, -1, false),
	RU(STATS_REPLY, "l2_fetch_errors", stats.l2_fetch_errors, W_U64, UINT64_MAX, true),
	RS(STATS_REPLY, "l2_fetch_errors", stats.l2_fetch_errors, W_U64, -1, false),
	RU(STATS_REPLY, "tenants", stats.tenants, W_U32, 0, true),
	RU(STATS_REPLY, "tenants", stats.tenants, W_U32, 1, true),
	RU(STATS_REPLY, "tenants", stats.tenants, W_U32, UINT32_MAX, true),
	RU(STATS_REPLY, "tenants", stats.tenants, W_U32, UINT32_MAX + 1ull, false),
	RS(STATS_REPLY, "tenants", stats.tenants, W_U32, -1, false),
	RS(STATS_REPLY, "nodes[0].node", stats.nodes[0].node, W_I32, -1, true),
	RU(STATS_REPLY, "nodes[0].node", stats.nodes[0].node, W_I32, 0, true),
	RU(STATS_REPLY, "nodes[1].node", stats.nodes[1].node, W_I32, INT32_MAX, true),
	RS(STATS_REPLY, "nodes[1].node", stats.nodes[1].node, W_I32, -2, false),
	RS(STATS_REPLY, "nodes[1].node", stats.nodes[1].node, W_I32, INT32_MIN, false),
	RS(STATS_REPLY, "nodes[0].node", stats.nodes[0].node, W_I32, INT64_MIN, false),
	RU(STATS_REPLY, "nodes[0].node", stats.nodes[0].node, W_I32, INT32_MAX + 1ull, false),
	RU(STATS_REPLY, "nodes[1].node", stats.nodes[1].node, W_I32, UINT64_MAX, false),
	RU(STATS_REPLY, "nodes[0].arena_bytes", stats.nodes[0].arena_bytes, W_U64, 0, true),
	RU(STATS_REPLY, "nodes[0].arena_bytes", stats.nodes[0].arena_bytes, W_U64, UINT64_MAX, true),
	RS(STATS_REPLY, "nodes[0].arena_bytes", stats.nodes[0].arena_bytes, W_U64, -1, false),
	RU(STATS_REPLY, "nodes[1].bytes_used", stats.nodes[1].bytes_used, W_U64, UINT64_MAX, true),
	RS(STATS_REPLY, "nodes[1].bytes_used", stats.nodes[1].bytes_used, W_U64, -1, false),
	RU(STATS_REPLY, "nodes[0].entries", stats.nodes[0].entries, W_U64, UINT64_MAX, true),
	RS(STATS_REPLY, "nodes[0].entries", stats.nodes[0].entries, W_U64, INT64_MIN, false),
	RU(STATS_REPLY, "nodes[1].hits", stats.nodes[1].hits, W_U64, 0, true),
	RS(STATS_REPLY, "nodes[1].hits", stats.nodes[1].hits, W_U64, -1, false),
	RU(STATS_REPLY, "nodes[0].inserts", stats.nodes[0].inserts, W_U64, UINT64_MAX, true),
	RS(STATS_REPLY, "nodes[0].inserts", stats.nodes[0].inserts, W_U64, -1, false),
	RU(STATS_REPLY, "nodes[1].remote_inserts", stats.nodes[1].remote_inserts, W_U64, UINT64_MAX,
	   true),
	RS(STATS_REPLY, "nodes[1].remote_inserts", stats.nodes[1].remote_inserts, W_U64, -1, false),
	RU(STATS_REPLY, "nodes[0].clients", stats.nodes[0].clients, W_U32, 0, true),
	RU(STATS_REPLY, "nodes[1].clients", stats.nodes[1].clients, W_U32, UINT32_MAX, true),
	RU(STATS_REPLY, "nodes[1].clients", stats.nodes[1].clients, W_U32, UINT32_MAX + 1ull, false),
	RS(STATS_REPLY, "nodes[0].clients", stats.nodes[0].clients, W_U32, -1, false),

	RU(ERROR, "code", error.code, W_I32, 0, false),
	RU(ERROR, "code", error.code, W_I32, 1, true),
	RU(ERROR, "code", error.code, W_I32, INT32_MAX, true),
	RU(ERROR, "code", error.code, W_I32, INT32_MAX + 1ull, false),
	RS(ERROR, "code", error.code, W_I32, -1, false),
	RS(ERROR, "code", error.code, W_I32, -EPROTO, false),
	RS(ERROR, "code", error.code, W_I32, INT32_MIN, false),

	RU(FLUSH, "model_id", flush.model_id, W_U32, 0, true),
	RU(FLUSH, "model_id", flush.model_id, W_U32, UINT32_MAX, true),
	RU(FLUSH, "model_id", flush.model_id, W_U32, UINT32_MAX + 1ull, false),
	RS(FLUSH, "model_id", flush.model_id, W_U32, -1, false),
	RS(FLUSH, "layer", flush.layer, W_I32, -1, true),
	RU(FLUSH, "layer", flush.layer, W_I32, 0, true),
	RU(FLUSH, "layer", flush.layer, W_I32, LBP_MAX_LAYERS - 1, true),
	RU(FLUSH, "layer", flush.layer, W_I32, LBP_MAX_LAYERS, false),
	RS(FLUSH, "layer", flush.layer, W_I32, -2, false),
	RS(FLUSH, "layer", flush.layer, W_I32, INT32_MIN, false),
	RU(FLUSH, "layer", flush.layer, W_I32, UINT32_MAX, false),

	RU(FLUSH_REPLY, "entries", flush_reply.entries, W_U64, UINT64_MAX, true),
	RS(FLUSH_REPLY, "entries", flush_reply.entries, W_U64, -1, false),
	RU(FLUSH_REPLY, "bytes", flush_reply.bytes, W_U64, 0, true),
	RS(FLUSH_REPLY, "bytes", flush_reply.bytes, W_U64, -1, false),
	RS(FLUSH_REPLY, "leased", flush_reply.leased, W_U64, -1, false),

	RU(CONFIG_GET, "first", config_get.first, W_U32, 0, true),
	RU(CONFIG_GET, "first", config_get.first, W_U32, UINT32_MAX, true),
	RU(CONFIG_GET, "first", config_get.first, W_U32, UINT32_MAX + 1ull, false),
	RS(CONFIG_GET, "first", config_get.first, W_U32, -1, false),

	RU(CONFIG_REPLY, "total", config_reply.total, W_U32, UINT32_MAX, true),
	RU(CONFIG_REPLY, "total", config_reply.total, W_U32, UINT32_MAX + 1ull, false),
	RS(CONFIG_REPLY, "total", config_reply.total, W_U32, -1, false),
	RU(CONFIG_REPLY, "first", config_reply.first, W_U32, UINT32_MAX + 1ull, false),
	RS(CONFIG_REPLY, "first", config_reply.first, W_U32, -7, false),
	RU(SNAPSHOT_REPLY, "entries", snapshot_reply.entries, W_U64, 0, true),
	RU(SNAPSHOT_REPLY, "entries", snapshot_reply.entries, W_U64, UINT64_MAX, true),
	RS(SNAPSHOT_REPLY, "entries", snapshot_reply.entries, W_U64, -1, false),
	RU(SNAPSHOT_REPLY, "bytes", snapshot_reply.bytes, W_U64, UINT64_MAX, true),
	RS(SNAPSHOT_REPLY, "bytes", snapshot_reply.bytes, W_U64, -1, false),
	RU(SNAPSHOT_REPLY, "ms", snapshot_reply.ms, W_U64, UINT64_MAX, true),
	RS(SNAPSHOT_REPLY, "ms", snapshot_reply.ms, W_U64, INT64_MIN, false),
};

/* Put the case's value into the C field; false when the C type cannot hold it. */
static bool range_store(struct lbp_msg *m, const struct range_case *c)
{
	char *p = (char *)m + c->off;

	switch (c->width) {
	case W_U32:
		if (c->neg || c->u > UINT32_MAX)
			return false;
		*(uint32_t *)p = (uint32_t)c->u;
		return true;
	case W_U64:
		if (c->neg)
			return false;
		*(uint64_t *)p = c->u;
		return true;
	case W_I32:
		if (c->neg ? c->s < INT32_MIN : c->u > INT32_MAX)
			return false;
		*(int32_t *)p = c->neg ? (int32_t)c->s : (int32_t)c->u;
		return true;
	}
	return false;
}

static void range_what(const struct range_case *c, char *out, size_t n)
{
	if (c->neg)
		snprintf(out, n, "%s %s = %lld", lbp_type_name(c->type), c->path, (long long)c->s);
	else
		snprintf(out, n, "%s %s = %llu", lbp_type_name(c->type), c->path,
			 (unsigned long long)c->u);
}

static void test_decode_checks_every_range_bound(void **state)
{
	struct lbp_msg out, want;
	struct lbp_fault f;
	char what[96];

	(void)state;
	for (size_t i = 0; i < sizeof(ranges) / sizeof(ranges[0]); i++) {
		const struct range_case *c = &ranges[i];
		const struct change ch = { c->type, OP_SET, c->path,
					   c->neg ? (msgpack_object)O_NEG(c->s) :
						    (msgpack_object)O_UINT(c->u), NULL };

		range_what(c, what, sizeof(what));
		expect_fault(decode_changed(&ch, &out, &f), c->ok ? 0 : -EBADMSG, &f,
			     c->ok ? "" : c->path, c->ok ? "" : "out of range", what);
		if (c->ok) {
			want = sample(c->type);
			assert_true(range_store(&want, c));
			assert_msg_equal(&want, &out);
		}
	}
}

static void test_encode_checks_every_range_bound(void **state)
{
	char buf[1024], what[96];

	(void)state;
	for (size_t i = 0; i < sizeof(ranges) / sizeof(ranges[0]); i++) {
		const struct range_case *c = &ranges[i];
		struct lbp_msg m = sample(c->type);
		int rc;

		if (!range_store(&m, c))
			continue; /* the C type cannot even hold it */
		range_what(c, what, sizeof(what));
		rc = lbp_encode(&m, buf, sizeof(buf));
		if (c->ok ? rc <= 0 : rc != -EINVAL)
			fail_msg("%s: encode returned %d", what, rc);
	}
}

struct str_case {
	enum lbp_type type;
	const char *path;
	size_t off; /* of the C char array */
	size_t cap; /* its size */
	size_t len;
	bool nul;   /* put a NUL in the middle */
	bool ok;
	const char *reason;
};

#define SC(t, path, member, len, nul, ok, reason) \
	{ LBP_##t, path, OFF(member), sizeof(((struct lbp_msg *)0)->u.member), len, nul, ok, reason }

static const struct str_case strs[] = {
	SC(HELLO, "name", hello.name, 0, false, true, NULL),
	SC(HELLO, "name", hello.name, LBP_MAX_NAME, false, true, NULL),
	SC(HELLO, "name", hello.name, LBP_MAX_NAME + 1, false, false, "too long"),
	SC(HELLO, "name", hello.name, 1000, false, false, "too long"),
	SC(HELLO, "name", hello.name, 5, true, false, "embedded nul"),
	SC(HELLO, "name", hello.name, 1, true, false, "embedded nul"),
	SC(REGISTER_MODEL, "name", reg.name, 0, false, false, "empty"),
	SC(REGISTER_MODEL, "name", reg.name, 1, false, true, NULL),
	SC(REGISTER_MODEL, "name", reg.name, LBP_MAX_NAME, false, true, NULL),
	SC(REGISTER_MODEL, "name", reg.name, LBP_MAX_NAME + 1, false, false, "too long"),
	SC(REGISTER_MODEL, "name", reg.name, 8, true, false, "embedded nul"),
	SC(ERROR, "field", error.field, 0, false, true, NULL),
	SC(ERROR, "field", error.field, 31, false, true, NULL),
	SC(ERROR, "field", error.field, 32, false, false, "too long"),
	SC(ERROR, "field", error.field, 4, true, false, "embedded nul"),
	SC(ERROR, "message", error.message, 0, false, true, NULL),
	SC(ERROR, "message", error.message, LBP_MAX_ERRMSG, false, true, NULL),
	SC(ERROR, "message", error.message, LBP_MAX_ERRMSG + 1, false, false, "too long"),
	SC(ERROR, "message", error.message, 30, true, false, "embedded nul"),
	SC(CONFIG_GET, "key", config_get.key, 0, false, true, NULL),
	SC(CONFIG_GET, "key", config_get.key, LBP_MAX_CONFIG_KEY, false, true, NULL),
	SC(CONFIG_GET, "key", config_get.key, LBP_MAX_CONFIG_KEY + 1, false, false, "too long"),
	SC(CONFIG_GET, "key", config_get.key, 6, true, false, "embedded nul"),
	SC(CONFIG_SET, "key", config_set.key, 0, false, false, "empty"),
	SC(CONFIG_SET, "key", config_set.key, 1, false, true, NULL),
	SC(CONFIG_SET, "key", config_set.key, LBP_MAX_CONFIG_KEY, false, true, NULL),
	SC(CONFIG_SET, "key", config_set.key, LBP_MAX_CONFIG_KEY + 1, false, false, "too long"),
	SC(CONFIG_SET, "key", config_set.key, 3, true, false, "embedded nul"),
	SC(CONFIG_SET, "value", config_set.value, 0, false, false, "empty"),
	SC(CONFIG_SET, "value", config_set.value, 1, false, true, NULL),
	SC(CONFIG_SET, "value", config_set.value, LBP_MAX_CONFIG_VALUE, false, true, NULL),
	SC(CONFIG_SET, "value", config_set.value, LBP_MAX_CONFIG_VALUE + 1, false, false, "too long"),
	SC(CONFIG_SET, "value", config_set.value, 2, true, false, "embedded nul"),
	SC(CONFIG_REPLY, "items[1].key", config_reply.items[1].key, 0, false, false, "empty"),
	SC(CONFIG_REPLY, "items[1].key", config_reply.items[1].key, LBP_MAX_CONFIG_KEY, false, true,
	   NULL),
	SC(CONFIG_REPLY, "items[1].key", config_reply.items[1].key, LBP_MAX_CONFIG_KEY + 1, false,
	   false, "too long"),
	SC(CONFIG_REPLY, "items[2].value", config_reply.items[2].value, 0, false, false, "empty"),
	SC(CONFIG_REPLY, "items[2].value", config_reply.items[2].value, LBP_MAX_CONFIG_VALUE + 1,
	   false, false, "too long"),
	SC(CONFIG_REPLY, "items[0].value", config_reply.items[0].value, 5, true, false,
	   "embedded nul"),
	SC(STATS_REPLY, "l2", stats.l2, 0, false, false, "empty"),
	SC(STATS_REPLY, "l2", stats.l2, 1, false, true, NULL),
	SC(STATS_REPLY, "l2", stats.l2, LBP_MAX_L2_STATE, false, true, NULL),
	SC(STATS_REPLY, "l2", stats.l2, LBP_MAX_L2_STATE + 1, false, false, "too long"),
	SC(STATS_REPLY, "l2", stats.l2, 2, true, false, "embedded nul"),
};

static void test_decode_checks_string_lengths_and_nul(void **state)
{
	static char text[1024];
	struct lbp_msg out;
	struct lbp_fault f;
	char what[96];

	(void)state;
	for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
		const struct str_case *c = &strs[i];
		const struct change ch = { c->type, OP_SET, c->path, O_STR(text, (uint32_t)c->len),
					   NULL };

		snprintf(what, sizeof(what), "%s %s of %zu bytes%s", lbp_type_name(c->type), c->path,
			 c->len, c->nul ? " with a NUL" : "");
		memset(text, 's', c->len);
		if (c->nul)
			text[c->len / 2] = '\0';
		expect_fault(decode_changed(&ch, &out, &f), c->ok ? 0 : -EBADMSG, &f,
			     c->ok ? "" : c->path, c->reason, what);
		if (c->ok)
			assert_int_equal(strlen((char *)&out + c->off), c->len);
	}
}

static void test_encode_rejects_unterminated_and_empty_strings(void **state)
{
	char buf[1024], what[96];

	(void)state;
	for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
		const struct str_case *c = &strs[i];
		struct lbp_msg m = sample(c->type);
		char *p = (char *)&m + c->off;
		int rc;

		if (c->nul)
			continue; /* a C string cannot carry one */
		snprintf(what, sizeof(what), "%s %s of %zu bytes", lbp_type_name(c->type), c->path,
			 c->len);
		if (c->len < c->cap)
			fill(p, c->len, 's');
		else
			memset(p, 's', c->cap); /* no terminator anywhere */
		rc = lbp_encode(&m, buf, sizeof(buf));
		if (c->ok ? rc <= 0 : rc != -EINVAL)
			fail_msg("%s: encode returned %d", what, rc);
	}
}

static void test_arena_count_limits(void **state)
{
	struct lbp_msg m = sample(LBP_WELCOME);
	struct lbp_fault f;
	msgpack_object *arr, one;
	msgpack_object elems[LBP_MAX_ARENAS + 1];
	char buf[1024];
	struct dom d;

	(void)state;
	dom_load(&d, &m);
	arr = dom_find(&d, "arenas", NULL, NULL);
	arr->via.array.size = 0;
	expect_fault(dom_decode(&d, NULL, &f), -EBADMSG, &f, "arenas", "out of range 1..32",
		     "0 arenas");
	one = arr->via.array.ptr[0];
	for (unsigned i = 0; i <= LBP_MAX_ARENAS; i++)
		elems[i] = one;
	arr->via.array.ptr = elems;
	arr->via.array.size = LBP_MAX_ARENAS + 1;
	expect_fault(dom_decode(&d, NULL, &f), -EBADMSG, &f, "arenas", "out of range 1..32",
		     "33 arenas");
	arr->via.array.size = LBP_MAX_ARENAS;
	expect_fault(dom_decode(&d, NULL, &f), 0, &f, "", "", "32 arenas");
	dom_free(&d);

	m.u.welcome.n_arenas = 0;
	assert_int_equal(lbp_encode(&m, buf, sizeof(buf)), -EINVAL);
	m.u.welcome.n_arenas = LBP_MAX_ARENAS + 1;
	assert_int_equal(lbp_encode(&m, buf, sizeof(buf)), -EINVAL);
	m.u.welcome.n_arenas = UINT32_MAX;
	assert_int_equal(lbp_encode(&m, buf, sizeof(buf)), -EINVAL);
}

static void test_config_item_count_limits(void **state)
{
	struct lbp_msg m = sample(LBP_CONFIG_REPLY), out;
	struct lbp_fault f;
	msgpack_object *arr;
	msgpack_object elems[LBP_MAX_CONFIG_ITEMS + 1];
	char buf[1024];
	struct dom d;

	(void)state;
	dom_load(&d, &m);
	arr = dom_find(&d, "items", NULL, NULL);
	for (unsigned i = 0; i <= LBP_MAX_CONFIG_ITEMS; i++)
		elems[i] = arr->via.array.ptr[i % 3];
	arr->via.array.ptr = elems;
	arr->via.array.size = LBP_MAX_CONFIG_ITEMS + 1;
	expect_fault(dom_decode(&d, NULL, &f), -EBADMSG, &f, "items", "out of range 0..32",
		     "33 items");
	arr->via.array.size = LBP_MAX_CONFIG_ITEMS;
	expect_fault(dom_decode(&d, &out, &f), 0, &f, "", "", "32 items");
	assert_int_equal(out.u.config_reply.n, LBP_MAX_CONFIG_ITEMS);
	assert_string_equal(out.u.config_reply.items[31].key, "budget"); /* 31 % 3 */
	arr->via.array.size = 0;
	expect_fault(dom_decode(&d, &out, &f), 0, &f, "", "", "no items");
	assert_int_equal(out.u.config_reply.n, 0);
	/* An element that is not a map is named by its index. */
	arr->via.array.size = 2;
	elems[1] = (msgpack_object)O_STR("tau", 3);
	expect_fault(dom_decode(&d, NULL, &f), -EBADMSG, &f, "items[1]", "wrong type", "str item");
	dom_free(&d);

	m.u.config_reply.n = LBP_MAX_CONFIG_ITEMS + 1;
	assert_int_equal(lbp_encode(&m, buf, sizeof(buf)), -EINVAL);
}

/* The arrays the two tests above do not cover, MODEL_STATS_REPLY's layers and STATS_REPLY's
 * nodes (arenas and items keep their own tests: WELCOME is being changed elsewhere). */
static const struct {
	enum lbp_type type;
	const char *key;
	size_t elems; /* of element 0 in struct lbp_msg */
	size_t size;  /* of an element */
	size_t count; /* of the uint32_t count */
	uint32_t max;
	const char *range; /* how the fault's reason starts */
} arrays[] = {
	{ LBP_MODEL_STATS_REPLY, "layers", OFF(mstats_reply.layers), sizeof(struct lbp_layer_stats),
	  OFF(mstats_reply.n), LBP_MAX_STATS_LAYERS, "out of range 0..64" },
	{ LBP_STATS_REPLY, "nodes", OFF(stats.nodes), sizeof(struct lbp_node_stats),
	  OFF(stats.n_nodes), LBP_MAX_NODES, "out of range 0..16" },
};

/* Each array: one element past its largest count refused by the decoder and the encoder; the
 * largest count and none accepted, every element decoded in its place; an element that is not
 * a map named by its index. */
static void test_array_count_limits(void **state)
{
	msgpack_object elems[LBP_MAX_STATS_LAYERS + 1];
	static char buf[LBP_MAX_FRAME];
	struct lbp_msg m, out;
	struct lbp_fault f;
	msgpack_object *arr;
	uint32_t n_src, n_out;
	struct dom d;

	(void)state;
	for (size_t a = 0; a < sizeof(arrays) / sizeof(arrays[0]); a++) {
		const char *what = arrays[a].key;
		char field[32];

		assert_true(arrays[a].max < sizeof(elems) / sizeof(elems[0]));
		m = sample(arrays[a].type);
		memcpy(&n_src, (char *)&m + arrays[a].count, sizeof(n_src));
		assert_true(n_src >= 2);
		dom_load(&d, &m);
		arr = dom_find(&d, arrays[a].key, NULL, NULL);
		for (uint32_t i = 0; i <= arrays[a].max; i++)
			elems[i] = arr->via.array.ptr[i % n_src];
		arr->via.array.ptr = elems;
		arr->via.array.size = arrays[a].max + 1;
		expect_fault(dom_decode(&d, NULL, &f), -EBADMSG, &f, arrays[a].key, arrays[a].range,
			     what);
		arr->via.array.size = arrays[a].max;
		expect_fault(dom_decode(&d, &out, &f), 0, &f, "", "", what);
		memcpy(&n_out, (char *)&out + arrays[a].count, sizeof(n_out));
		assert_int_equal(n_out, arrays[a].max);
		for (uint32_t i = 0; i < arrays[a].max; i++)
			assert_memory_equal((char *)&out + arrays[a].elems + i * arrays[a].size,
					    (char *)&m + arrays[a].elems + i % n_src * arrays[a].size,
					    arrays[a].size);
		arr->via.array.size = 0;
		expect_fault(dom_decode(&d, &out, &f), 0, &f, "", "", what);
		memcpy(&n_out, (char *)&out + arrays[a].count, sizeof(n_out));
		assert_int_equal(n_out, 0);
		arr->via.array.size = 2;
		elems[1] = (msgpack_object)O_STR("x", 1);
		path_fmt(field, sizeof(field), "%s[1]", arrays[a].key);
		expect_fault(dom_decode(&d, NULL, &f), -EBADMSG, &f, field, "wrong type", what);
		dom_free(&d);

		for (int k = 0; k < 2; k++) {
			uint32_t n = k ? UINT32_MAX : arrays[a].max + 1;
			memcpy((char *)&m + arrays[a].count, &n, sizeof(n));
			assert_int_equal(lbp_encode(&m, buf, sizeof(buf)), -EINVAL);
		}
	}
}

/* PROTOCOL.md 2.3 quotes the largest frames' sizes; the walk's limits must hold them. */
static void test_largest_frames_are_as_documented(void **state)
{
	struct lbp_msg s[MAX_SAMPLES];
	char buf[LBP_MAX_FRAME];
	size_t n = all_samples(s), cfg = 0, mst = 0, st = 0;

	(void)state;
	for (size_t i = 0; i < n; i++) {
		size_t len = enc(&s[i], buf, sizeof(buf));
		if (s[i].type == LBP_CONFIG_REPLY && len > cfg)
			cfg = len;
		if (s[i].type == LBP_MODEL_STATS_REPLY && len > mst)
			mst = len;
		if (s[i].type != LBP_STATS_REPLY)
			continue;
		/* Longer still: the longer page size, every node number in 5 bytes. */
		s[i].u.stats.page_size = MIB2;
		for (unsigned k = 0; k < s[i].u.stats.n_nodes; k++)
			s[i].u.stats.nodes[k].node = INT32_MAX;
		len = enc(&s[i], buf, sizeof(buf));
		st = len > st ? len : st;
	}
	printf("largest CONFIG_REPLY %zu bytes, MODEL_STATS_REPLY %zu bytes, STATS_REPLY %zu bytes\n",
	       cfg, mst, st);
	assert_int_equal(cfg, 6595);
	assert_true(mst <= 12281);
	assert_int_equal(st, 2922);
}

/* Small deterministic fuzzing: whatever the decoder accepts, the encoder must accept too. */
static void test_decode_survives_mutated_frames(void **state)
{
	static const uint8_t spicy[] = { 0x00, 0x7f, 0x80, 0x90, 0xa0, 0xc0, 0xc1, 0xc4, 0xc6,
					 0xca, 0xcf, 0xd3, 0xd4, 0xdb, 0xdd, 0xdf, 0xe0, 0xff };
	struct lbp_msg s[MAX_SAMPLES], out, again;
	static uint8_t frame[16384], mut[16384 + 100];
	static char re[16384];
	uint64_t x = 0x9e3779b97f4a7c15ull;
	size_t n = all_samples(s);
	unsigned accepted = 0;

	(void)state;
	for (unsigned it = 0; it < 40000; it++) {
		size_t len = enc(&s[it % n], (char *)frame, sizeof(frame)), mlen = len;
		unsigned edits;
		int rc;

		memcpy(mut, frame, len);
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		edits = 1 + (unsigned)(x >> 60) % 3;
		for (unsigned e = 0; e < edits && mlen; e++) {
			size_t pos;
			x = x * 6364136223846793005ull + 1442695040888963407ull;
			pos = (size_t)(x >> 33) % mlen;
			switch ((x >> 20) % 5) {
			case 0:
				mut[pos] ^= (uint8_t)(1u << ((x >> 8) % 8));
				break;
			case 1:
				mut[pos] = spicy[(x >> 8) % sizeof(spicy)];
				break;
			case 2:
				mlen = pos;
				break;
			case 3:
				memmove(mut + pos + 1, mut + pos, mlen - pos);
				mut[pos] = spicy[(x >> 8) % sizeof(spicy)];
				mlen++;
				break;
			default:
				memmove(mut + pos, mut + pos + 1, mlen - pos - 1);
				mlen--;
				break;
			}
		}
		rc = dec(mut, mlen, &out, NULL);
		if (rc != 0 && rc != -EBADMSG && rc != -EPROTO)
			fail_msg("iteration %u: rc %d", it, rc);
		if (rc == 0) {
			int elen = lbp_encode(&out, re, sizeof(re));
			accepted++;
			if (elen <= 0)
				fail_msg("iteration %u: decoded %s does not encode: %d", it,
					 lbp_type_name(out.type), elen);
			assert_int_equal(dec(re, (size_t)elen, &again, NULL), 0);
			assert_msg_equal(&out, &again);
		}
	}
	assert_true(accepted > 0);
}

/* ---- encoder ---- */

static void test_encode_rejects_unknown_type(void **state)
{
	struct lbp_msg m = sample(LBP_STATS);
	char buf[64];

	(void)state;
	m.type = (enum lbp_type)0;
	assert_int_equal(lbp_encode(&m, buf, sizeof(buf)), -EINVAL);
	m.type = (enum lbp_type)(LBP_TYPE_MAX + 1);
	assert_int_equal(lbp_encode(&m, buf, sizeof(buf)), -EINVAL);
	assert_int_equal(lbp_encode(NULL, buf, sizeof(buf)), -EINVAL);
}

static void test_encode_reports_short_buffer_without_overrun(void **state)
{
	struct lbp_msg s[MAX_SAMPLES];
	char full[LBP_MAX_FRAME];
	size_t n = all_samples(s);

	(void)state;
	for (size_t i = 0; i < n; i++) {
		size_t len = enc(&s[i], full, sizeof(full));
		for (size_t cap = 0; cap <= len; cap++) {
			/* Exactly cap bytes on the heap: ASan catches a write past them. */
			char *buf = malloc(cap ? cap : 1);
			int rc;
			assert_non_null(buf);
			rc = lbp_encode(&s[i], buf, cap);
			if (cap < len)
				assert_int_equal(rc, -EMSGSIZE);
			else
				assert_int_equal(rc, (int)len);
			if (cap == len)
				assert_memory_equal(buf, full, len);
			free(buf);
		}
	}
}

/* lb_register_model's description into REGISTER_MODEL's body: the defaults a client may leave
 * out (fp_chunks, block_tokens, kv_layers) filled in only where prefix blocks are asked for; a
 * kv_layers without kv_dim passed on for the registry to refuse. */
static void test_register_from_desc_fills_the_defaults(void **state)
{
	(void)state;
	const struct {
		uint32_t kv_dim, block_tokens, kv_layers; /* the description's */
		uint32_t dim, tokens, layers;              /* the body's kv */
	} cases[] = {
		{ 0, 0, 0, 0, 0, 0 },                     /* an encoder */
		{ 64, 0, 0, 64, LB_BLOCK_TOKENS_DEFAULT, 12 }, /* every layer's K and V */
		{ 64, 8, 6, 64, 8, 6 },                   /* a FusedKV model's 6 storage layers */
		{ 0, 0, 6, 0, 0, 6 },                     /* refused by the registry, not here */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct lb_model_desc d = { .name = "m", .n_layers = 12, .hidden = 768,
					   .dtype = LB_DTYPE_F32, .max_seq = 512,
					   .kv_dim = cases[i].kv_dim,
					   .block_tokens = cases[i].block_tokens,
					   .kv_layers = cases[i].kv_layers };
		struct lbp_register_model r;
		assert_int_equal(lbp_register_from_desc(&d, &r), 0);
		assert_int_equal(r.fp.chunks, 4);
		if (r.kv.dim != cases[i].dim || r.kv.block_tokens != cases[i].tokens ||
		    r.kv.layers != cases[i].layers)
			fail_msg("case %zu: kv %u/%u/%u", i, r.kv.dim, r.kv.block_tokens, r.kv.layers);
	}
}

/* PROTOCOL.md's example frame: the encoder's bytes, which the decoder takes. */
static void test_encode_emits_the_documented_bytes(void **state)
{
	struct lbp_msg m = sample(LBP_MODEL);
	struct lbp_fault f;
	char buf[64];

	(void)state;
	assert_int_equal(lbp_encode(&m, buf, sizeof(buf)), MODEL_LEN);
	assert_memory_equal(buf, model_frame, MODEL_LEN);
	assert_int_equal(dec_bytes(model_frame, MODEL_LEN, &f), 0);
}

/* ---- helpers ---- */

static void test_make_error_truncates_and_normalises(void **state)
{
	char longfield[64], longtext[400], buf[512];
	struct lbp_msg m, out;

	(void)state;
	fill(longfield, 40, 'f');
	fill(longtext, 300, 't');
	lbp_make_error(&m, EINVAL, longfield, "%s!", longtext);
	assert_int_equal(m.type, LBP_ERROR);
	assert_int_equal(m.u.error.code, EINVAL);
	assert_int_equal(strlen(m.u.error.field), sizeof(m.u.error.field) - 1);
	assert_int_equal(strlen(m.u.error.message), LBP_MAX_ERRMSG);
	/* Whatever it builds goes on the wire. */
	assert_int_equal(dec(buf, enc(&m, buf, sizeof(buf)), &out, NULL), 0);
	assert_msg_equal(&m, &out);

	lbp_make_error(&m, -EPROTO, NULL, "n_layers %u too big", 2000u);
	assert_int_equal(m.u.error.code, EPROTO);
	assert_string_equal(m.u.error.field, "");
	assert_string_equal(m.u.error.message, "n_layers 2000 too big");
}

static void test_type_names(void **state)
{
	(void)state;
	assert_string_equal(lbp_type_name(LBP_HELLO), "HELLO");
	assert_string_equal(lbp_type_name(LBP_WELCOME), "WELCOME");
	assert_string_equal(lbp_type_name(LBP_REGISTER_MODEL), "REGISTER_MODEL");
	assert_string_equal(lbp_type_name(LBP_MODEL), "MODEL");
	assert_string_equal(lbp_type_name(LBP_STATS), "STATS");
	assert_string_equal(lbp_type_name(LBP_STATS_REPLY), "STATS_REPLY");
	assert_string_equal(lbp_type_name(LBP_BYE), "BYE");
	assert_string_equal(lbp_type_name(LBP_ERROR), "ERROR");
	assert_string_equal(lbp_type_name(LBP_FLUSH), "FLUSH");
	assert_string_equal(lbp_type_name(LBP_FLUSH_REPLY), "FLUSH_REPLY");
	assert_string_equal(lbp_type_name(LBP_CONFIG_GET), "CONFIG_GET");
	assert_string_equal(lbp_type_name(LBP_CONFIG_REPLY), "CONFIG_REPLY");
	assert_string_equal(lbp_type_name(LBP_CONFIG_SET), "CONFIG_SET");
	assert_string_equal(lbp_type_name(LBP_SNAPSHOT), "SNAPSHOT");
	assert_string_equal(lbp_type_name(LBP_SNAPSHOT_REPLY), "SNAPSHOT_REPLY");
	assert_int_equal(LBP_SNAPSHOT, 18);
	assert_int_equal(LBP_SNAPSHOT_REPLY, 19);
	assert_string_equal(lbp_type_name((enum lbp_type)0), "UNKNOWN");
	assert_string_equal(lbp_type_name((enum lbp_type)(LBP_TYPE_MAX + 1)), "UNKNOWN");
	assert_string_equal(lbp_type_name((enum lbp_type)-1), "UNKNOWN");
}

/* ---- arena header ---- */

static struct lb_arena_hdr good_hdr(uint64_t bytes, uint64_t page)
{
	struct lb_arena_hdr h;

	memset(&h, 0, sizeof(h));
	h.magic = LB_SHM_MAGIC;
	h.abi_version = LB_SHM_ABI_VERSION;
	h.hdr_size = LB_SHM_HDR_SIZE;
	h.arena_bytes = bytes;
	h.page_size = page;
	memset(h.boot_id, 0x5a, sizeof(h.boot_id));
	h.numa_node = -1;
	h.arena_index = 0;
	h.data_off = LB_SHM_DATA_ALIGN;
	h.data_bytes = bytes - LB_SHM_DATA_ALIGN;
	return h;
}

static void test_arena_hdr_accepts_valid_headers(void **state)
{
	struct lb_arena_hdr h;
	const char *why = "unset";

	(void)state;
	h = good_hdr(8192, 4096);
	assert_int_equal(lbp_arena_hdr_check(&h, 8192, &why), 0);
	assert_null(why);
	h = good_hdr(4ull * MIB2, MIB2);
	h.numa_node = 3;
	h.arena_index = LBP_MAX_ARENAS - 1;
	assert_int_equal(lbp_arena_hdr_check(&h, 4 * MIB2, &why), 0);
	h.data_bytes = 0;
	assert_int_equal(lbp_arena_hdr_check(&h, 4 * MIB2, NULL), 0);
	h = good_hdr(4096, 4096); /* header page only, empty data area */
	assert_int_equal(lbp_arena_hdr_check(&h, 4096, NULL), 0);
	h = good_hdr(1ull << 40, MIB2);
	h.data_off = 1ull << 39;
	h.data_bytes = 1ull << 39;
	assert_int_equal(lbp_arena_hdr_check(&h, (size_t)1 << 40, NULL), 0);
}

static void test_arena_hdr_never_reads_past_a_short_mapping(void **state)
{
	const char *why = NULL;
	void *p = malloc(64); /* ASan: any read of the header would land past this */

	(void)state;
	assert_non_null(p);
	assert_int_equal(lbp_arena_hdr_check(p, 64, &why), -EPROTO);
	assert_non_null(why);
	assert_int_equal(lbp_arena_hdr_check(p, 0, NULL), -EPROTO);
	assert_int_equal(lbp_arena_hdr_check(p, LB_SHM_HDR_SIZE - 1, NULL), -EPROTO);
	free(p);
}

static void test_arena_hdr_rejects_each_bad_field(void **state)
{
	const size_t size = 4 * MIB2;
	char what[32];

	(void)state;
	for (int c = 0;; c++) {
		struct lb_arena_hdr h = good_hdr(size, MIB2);
		size_t mapped = size;
		const char *why = NULL;

		switch (c) {
		case 0: h.magic ^= 1; break;
		case 1: h.magic = 0; break;
		case 2: h.abi_version = LB_SHM_ABI_VERSION + 1; break;
		case 3: h.abi_version = 0; break;
		case 4: h.hdr_size = LB_SHM_HDR_SIZE - 8; break;
		case 5: h.hdr_size = LB_SHM_HDR_SIZE + 8; break;
		case 6: mapped = size + 4096; break;
		case 7: mapped = size - 4096; break;
		case 8: h.arena_bytes = size * 2; break;
		case 9: h.page_size = 0; break;
		case 10: h.page_size = 8192; break;
		case 11: h.page_size = 1ull << 30; break;
		case 12: h.page_size = MIB2 + 4096; break;
		case 13: /* 4 KiB multiple, not a 2 MiB one */
			h.arena_bytes = size + 4096;
			h.data_bytes = h.arena_bytes - h.data_off;
			mapped = size + 4096;
			break;
		case 14: h.data_off = 0; break;
		case 15: h.data_off = 64; break;
		case 16: h.data_off = LB_SHM_DATA_ALIGN + 1; h.data_bytes = 0; break;
		case 17: h.data_off = size + LB_SHM_DATA_ALIGN; h.data_bytes = 0; break;
		case 18: h.data_bytes = size - LB_SHM_DATA_ALIGN + 1; break;
		case 19: h.data_bytes = UINT64_MAX; break;
		case 20: h.data_bytes = UINT64_MAX - LB_SHM_DATA_ALIGN + 1; break; /* sum wraps to 0 */
		case 21: h.numa_node = -2; break;
		case 22: h.numa_node = INT32_MIN; break;
		case 23: h.arena_index = LBP_MAX_ARENAS; break;
		default:
			if (c - 24 >= 7)
				return;
			h.reserved[c - 24] = 1;
			break;
		}
		snprintf(what, sizeof(what), "case %d", c);
		if (lbp_arena_hdr_check(&h, mapped, &why) != -EPROTO)
			fail_msg("%s: header accepted", what);
		if (!why || !*why)
			fail_msg("%s: no reason given", what);
		assert_int_equal(lbp_arena_hdr_check(&h, mapped, NULL), -EPROTO);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_roundtrip_every_type_at_its_limits),
		cmocka_unit_test(test_decode_zeroes_unused_arena_slots),
		cmocka_unit_test(test_decode_accepts_keys_in_any_order),
		cmocka_unit_test(test_decode_accepts_wide_int_encodings),
		cmocka_unit_test(test_decode_accepts_null_fault),
		cmocka_unit_test(test_decode_clears_fault_on_success),
		cmocka_unit_test(test_decode_writes_every_byte),
		cmocka_unit_test(test_decode_rejects_every_prefix_of_every_frame),
		cmocka_unit_test(test_decode_rejects_empty_frame),
		cmocka_unit_test(test_decode_rejects_frames_over_max_frame),
		cmocka_unit_test(test_decode_rejects_bad_frames),
		cmocka_unit_test(test_stats_bye_and_snapshot_accept_an_empty_map),
		cmocka_unit_test(test_type_range),
		cmocka_unit_test(test_decode_rejects_bad_keys_and_values),
		cmocka_unit_test(test_decode_cuts_a_long_unknown_key_to_the_field),
		cmocka_unit_test(test_decode_rejects_each_change_at_every_path),
		cmocka_unit_test(test_decode_checks_every_range_bound),
		cmocka_unit_test(test_encode_checks_every_range_bound),
		cmocka_unit_test(test_decode_checks_string_lengths_and_nul),
		cmocka_unit_test(test_encode_rejects_unterminated_and_empty_strings),
		cmocka_unit_test(test_arena_count_limits),
		cmocka_unit_test(test_config_item_count_limits),
		cmocka_unit_test(test_array_count_limits),
		cmocka_unit_test(test_largest_frames_are_as_documented),
		cmocka_unit_test(test_decode_survives_mutated_frames),
		cmocka_unit_test(test_encode_rejects_unknown_type),
		cmocka_unit_test(test_encode_reports_short_buffer_without_overrun),
		cmocka_unit_test(test_encode_emits_the_documented_bytes),
		cmocka_unit_test(test_register_from_desc_fills_the_defaults),
		cmocka_unit_test(test_make_error_truncates_and_normalises),
		cmocka_unit_test(test_type_names),
		cmocka_unit_test(test_arena_hdr_accepts_valid_headers),
		cmocka_unit_test(test_arena_hdr_never_reads_past_a_short_mapping),
		cmocka_unit_test(test_arena_hdr_rejects_each_bad_field),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
