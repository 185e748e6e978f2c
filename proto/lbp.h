/* layerbank control protocol: message structs, msgpack encoder and validating decoder.
 * The normative description is PROTOCOL.md next to this file. Private to the project
 * (linked into layerbankd and liblayerbank), never installed. */
#ifndef LAYERBANK_PROTO_LBP_H
#define LAYERBANK_PROTO_LBP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "layerbank/layerbank.h"
#include "layerbank/shm.h"

#define LBP_VERSION 5u /* 2: REGISTER_MODEL kv, STATS_REPLY prefix counters; 3: kv.layers;
			* 4: STATS_REPLY the second tier's state and counters;
			* 5: STATS_REPLY per node and tenants; HELLO numa_node, WELCOME arena index
			* and tenant */
#define LBP_MAX_FRAME 65536u    /* bytes; a longer frame is rejected unread */
#define LBP_MAX_NAME 63u        /* bytes of a model or client name, no NUL on the wire */
#define LBP_MAX_ARENAS 32u      /* arenas of a daemon (tenants x nodes), fds in one WELCOME */
#define LBP_MAX_ERRMSG 200u     /* bytes of an ERROR message */
#define LBP_MAX_LAYERS 1024u
#define LBP_MAX_HIDDEN 65536u
#define LBP_MAX_SEQ 1048576u
#define LBP_MAX_FP_CHUNKS 64u
#define LBP_MAX_BLOCK_TOKENS 1024u  /* tokens of a prefix block */
#define LBP_MAX_STAGING (1ull << 32) /* bytes of a client's staging buffer */
#define LBP_MAX_RING 65536u          /* entries of a ring (LB_RING_MAX_ENTRIES) */
#define LBP_MAX_STATS_LAYERS 64u     /* layers in one MODEL_STATS_REPLY */
#define LBP_MAX_POLICY 15u           /* bytes of an eviction policy name */
#define LBP_MAX_L2_STATE 7u          /* bytes of the second tier's state: off, up or down */
#define LBP_MAX_NODES 16u            /* per-node rows in one STATS_REPLY */
#define LBP_MAX_CONFIG_KEY 127u      /* bytes of a setting's name: "tau." + a model name + ".1023" fits */
#define LBP_MAX_CONFIG_VALUE 63u     /* bytes of a setting's value */
#define LBP_MAX_CONFIG_ITEMS 32u     /* settings in one CONFIG_REPLY */

enum lbp_type {
	LBP_HELLO = 1,          /* client -> daemon */
	LBP_WELCOME = 2,        /* daemon -> client, with arena fds (SCM_RIGHTS) */
	LBP_REGISTER_MODEL = 3, /* client -> daemon */
	LBP_MODEL = 4,          /* daemon -> client: the model id */
	LBP_STATS = 5,          /* client -> daemon */
	LBP_STATS_REPLY = 6,    /* daemon -> client */
	LBP_BYE = 7,            /* client -> daemon; no reply, the daemon closes */
	LBP_ERROR = 8,          /* daemon -> client */
	LBP_MODEL_STATS = 9,    /* client -> daemon: per-layer counters of one model */
	LBP_MODEL_STATS_REPLY = 10,
	LBP_LOOKUP = 11,        /* client -> daemon: LOOKUP_DEEPEST over the socket (diagnostics) */
	LBP_LOOKUP_REPLY = 12,
	LBP_FLUSH = 13,         /* client -> daemon, administrative: drop cached entries */
	LBP_FLUSH_REPLY = 14,
	LBP_CONFIG_GET = 15,    /* client -> daemon: read run-time settings */
	LBP_CONFIG_REPLY = 16,  /* daemon -> client: the answer to CONFIG_GET and CONFIG_SET */
	LBP_CONFIG_SET = 17,    /* client -> daemon, administrative: change one setting */
	LBP_SNAPSHOT = 18,      /* client -> daemon: write the snapshot file now (administrative) */
	LBP_SNAPSHOT_REPLY = 19,
};
#define LBP_TYPE_MIN LBP_HELLO
#define LBP_TYPE_MAX LBP_SNAPSHOT_REPLY

enum lbp_dtype { LBP_DTYPE_F32 = 1, LBP_DTYPE_F16 = 2, LBP_DTYPE_BF16 = 3 };

/* Bytes of one element of dtype; 0 for a value that is no dtype. */
static inline uint32_t lbp_dtype_size(uint32_t dtype)
{
	return dtype == LBP_DTYPE_F32 ? 4 : dtype == LBP_DTYPE_F16 || dtype == LBP_DTYPE_BF16 ? 2 : 0;
}

struct lbp_hello {
	uint32_t shm_abi;             /* LB_SHM_ABI_VERSION the client was built with */
	char name[LBP_MAX_NAME + 1];  /* free-form client name, NUL-terminated, may be empty */
	uint32_t req_entries;         /* wished request ring size, 0: the daemon's default */
	uint32_t cpl_entries;         /* wished completion ring size, 0: default */
	uint64_t staging_bytes;       /* wished staging buffer size, 0: default */
	int32_t numa_node;            /* the node the client runs on, its inserts' home; -1: unknown */
};

struct lbp_arena_desc {
	uint64_t bytes;
	int32_t numa_node; /* -1: not bound */
	uint32_t index;    /* the arena's number, as completions name it (its header's arena_index) */
	uint32_t tenant;   /* 0: the shared tenant (models without an allow-list) */
};

/* The client's region as granted (lb_region_layout computes the offsets from these). */
struct lbp_region_desc {
	uint32_t req_entries; /* power of two, LB_RING_MIN_ENTRIES..LBP_MAX_RING */
	uint32_t cpl_entries;
	uint64_t staging_bytes; /* multiple of 4096, <= LBP_MAX_STAGING */
	uint64_t bytes;         /* the region memfd's size */
};

struct lbp_welcome {
	uint64_t client_id;
	uint8_t boot_id[16];
	uint64_t page_size;
	uint32_t n_arenas; /* 1..LBP_MAX_ARENAS; n_arenas + 1 fds travel with the frame: the
			    * arenas the client may read, by rising index, then the client's region */
	struct lbp_arena_desc arenas[LBP_MAX_ARENAS];
	struct lbp_region_desc region;
};

struct lbp_fp_spec {
	uint32_t chunks; /* 1..LBP_MAX_FP_CHUNKS */
	uint32_t bits;   /* 256 for now: the only accepted value */
	uint64_t seed;
};

/* Prefix blocks: all 0 for a model without them; else dim >= 1, block_tokens >= 1 and layers
 * 1..n_layers (the registry checks them together, lbd_models_valid). */
struct lbp_kv_spec {
	uint32_t dim;          /* one position's K (or V) row of a layer: 0..LBP_MAX_HIDDEN */
	uint32_t block_tokens; /* 0..LBP_MAX_BLOCK_TOKENS */
	uint32_t layers;       /* layers a block holds, 0..LBP_MAX_LAYERS: the first ones */
};

struct lbp_register_model {
	char name[LBP_MAX_NAME + 1]; /* 1..LBP_MAX_NAME bytes, NUL-terminated */
	uint64_t weights_hash;
	uint32_t n_layers; /* 1..LBP_MAX_LAYERS */
	uint32_t hidden;   /* 1..LBP_MAX_HIDDEN */
	uint32_t dtype;    /* enum lbp_dtype */
	uint32_t max_seq;  /* 1..LBP_MAX_SEQ */
	struct lbp_fp_spec fp;
	struct lbp_kv_spec kv;
};

/* REGISTER_MODEL's body from an lb_register_model description (lbp_encode then checks every
 * range, as the daemon would). @return 0; -EINVAL (no description or name, a name too long). */
int lbp_register_from_desc(const struct lb_model_desc *d, struct lbp_register_model *r);

struct lbp_model {
	uint32_t model_id; /* >= 1 */
	bool created;      /* false: the model existed and matched */
};

/* One NUMA node's part of STATS_REPLY (PROTOCOL.md 4.5): its arenas, what lives and happens
 * in them, and the clients that run on it. */
struct lbp_node_stats {
	int32_t node;              /* NUMA node; -1: arenas not bound to a node */
	uint64_t arena_bytes;      /* bytes of the node's arenas, over all tenants */
	uint64_t bytes_used;       /* arena bytes in live entries there */
	uint64_t entries;          /* live entries there (layer entries and prefix blocks) */
	uint64_t hits;             /* lookups answered from entries there */
	uint64_t inserts;          /* entries placed there */
	uint64_t remote_inserts;   /* inserts by clients of this node placed on another node: its
				    * arenas had no room */
	uint32_t clients;          /* connected clients that said (HELLO) they run on this node */
};

struct lbp_stats_reply {
	uint64_t page_size;
	uint64_t arena_bytes;  /* sum over arenas */
	uint32_t numa_nodes;   /* arenas in use */
	bool hugepages;        /* false: the 4 KiB fallback is in use */
	uint32_t clients;      /* connections that completed HELLO */
	uint32_t models;
	uint64_t uptime_s;
	uint32_t threads;      /* service threads */
	char policy[LBP_MAX_POLICY + 1]; /* eviction policy: lru, decay or ttl */
	uint64_t hits;         /* lookups answered with an entry */
	uint64_t misses;
	uint64_t inserts;
	uint64_t evictions;    /* entries dropped by the policy to make room */
	uint64_t expirations;  /* entries dropped by their TTL */
	uint64_t invalidations; /* dropped: a REPORT's drift too large, or a more exact insert */
	uint64_t entries;      /* live entries (one per cached layer of an input) */
	uint64_t leases;       /* active leases */
	uint64_t bytes_used;   /* arena bytes in live entries */
	uint64_t bytes_budget; /* bytes entries may use */
	uint32_t fragmentation_ppm; /* of the free arena space, parts per million */
	uint64_t quota_refusals; /* inserts refused with EDQUOT (insert-bytes-per-uid) */
	uint64_t blocks;         /* live prefix blocks (not in entries) */
	uint64_t prefix_hits;    /* LOOKUP_PREFIX answered with at least block 0 */
	uint64_t prefix_misses;  /* LOOKUP_PREFIX without even block 0 */
	uint64_t blocks_served;  /* blocks those hits gave out */
	/* The second tier (layerbankd --l2; daemon/l2.h, struct lbd_l2_stats): "off" without one,
	 * and then every count below is 0; "up" when its last command reached its node, else
	 * "down". */
	char l2[LBP_MAX_L2_STATE + 1];
	uint64_t l2_queue_bytes;     /* records waiting to be written, their bytes */
	uint64_t l2_queue_records;
	uint64_t l2_fetches_waiting; /* reads queued, not yet sent */
	uint64_t l2_written;         /* records SET */
	uint64_t l2_dropped;         /* records not queued: the queue was full */
	uint64_t l2_write_errors;    /* records whose SET failed */
	uint64_t l2_fetched;         /* records read and believed (inserted here) */
	uint64_t l2_fetch_misses;    /* keys the cluster did not hold */
	uint64_t l2_rejected;        /* records read and refused by their checks */
	uint64_t l2_fetch_errors;    /* reads that failed, or were not queued */
	/* Tenants with arenas of their own, the shared one included: >= 1 from a running daemon,
	 * but 0 is in range (PROTOCOL.md 4.5), as for numa_nodes. */
	uint32_t tenants;
	/* One row per NUMA node the daemon keeps arenas on; 0: no per-node figures. numa_nodes
	 * above counts arenas, not these rows. */
	uint32_t n_nodes; /* 0..LBP_MAX_NODES */
	struct lbp_node_stats nodes[LBP_MAX_NODES];
};

struct lbp_model_stats {
	uint32_t model_id;
	uint32_t first_layer; /* the reply covers layers first_layer.. */
};

struct lbp_layer_stats {
	uint64_t hits, misses, inserts, evictions, entries, bytes, leases;
	/* The layer's threshold: the radius in force for lookups that bring none (0..256), and its
	 * controller's reports (PROTOCOL.md 4.8). */
	uint64_t max_hamming, reports, reports_over, drift_micro;
};

struct lbp_model_stats_reply {
	uint32_t model_id;
	char name[LBP_MAX_NAME + 1];
	uint32_t n_layers;    /* of the model */
	uint32_t first_layer;
	uint32_t n;           /* layers in this reply, 0..LBP_MAX_STATS_LAYERS */
	struct lbp_layer_stats layers[LBP_MAX_STATS_LAYERS];
};

/* The ring's LOOKUP_DEEPEST over the control socket, with the daemon's thresholds and no
 * lease: for tools, and as the benchmark's baseline for the rings. */
struct lbp_lookup {
	uint32_t model_id;
	uint32_t seq_len;
	uint64_t fp0, fp1, fp2, fp3; /* the SimHash words */
	uint64_t exact_lo, exact_hi;
};

struct lbp_lookup_reply {
	int32_t status;     /* 0 hit, -ENOENT miss, other -errno */
	uint32_t layer;
	uint32_t hamming;
	uint32_t arena;
	uint64_t entry_off; /* of the entry's header in that arena */
};

/* What a SNAPSHOT wrote. */
struct lbp_snapshot_reply {
	uint64_t entries; /* cached entries in the file */
	uint64_t bytes;   /* size of the file */
	uint64_t ms;      /* milliseconds the write took, fsync and rename included */
};

/* Drop cached entries: all of them, one model's, or one layer of one model. */
struct lbp_flush {
	uint32_t model_id; /* 0: every model */
	int32_t layer;     /* -1: every layer; else one layer of model_id (which must not be 0) */
};

struct lbp_flush_reply {
	uint64_t entries; /* entries dropped (taken out of the index: no lookup finds them again) */
	uint64_t bytes;   /* their arena bytes */
	uint64_t leased;  /* of those entries, held by a lease now: freed when the last one ends */
};

/* One run-time setting as text: "budget" = "64M", "tau.bert.3" = "0.95". */
struct lbp_config_item {
	char key[LBP_MAX_CONFIG_KEY + 1];
	char value[LBP_MAX_CONFIG_VALUE + 1];
};

struct lbp_config_get {
	char key[LBP_MAX_CONFIG_KEY + 1]; /* "": every setting; "tau.MODEL": every layer's */
	uint32_t first;                   /* the first item wanted, for the pages of a long list */
};

struct lbp_config_reply {
	uint32_t total; /* items the request matched */
	uint32_t first; /* as asked (0 for CONFIG_SET) */
	uint32_t n;     /* items in this reply: items first .. first + n - 1 */
	struct lbp_config_item items[LBP_MAX_CONFIG_ITEMS];
};

struct lbp_config_set {
	char key[LBP_MAX_CONFIG_KEY + 1];     /* 1..LBP_MAX_CONFIG_KEY bytes */
	char value[LBP_MAX_CONFIG_VALUE + 1]; /* 1..LBP_MAX_CONFIG_VALUE bytes */
};

struct lbp_error {
	int32_t code;                    /* positive errno value */
	char field[32];                  /* field at fault, "" when none */
	char message[LBP_MAX_ERRMSG + 1];
};

struct lbp_msg {
	enum lbp_type type;
	union {
		struct lbp_hello hello;
		struct lbp_welcome welcome;
		struct lbp_register_model reg;
		struct lbp_model model;
		struct lbp_stats_reply stats;
		struct lbp_error error;
		struct lbp_model_stats mstats;
		struct lbp_model_stats_reply mstats_reply;
		struct lbp_lookup lookup;
		struct lbp_lookup_reply lookup_reply;
		struct lbp_flush flush;
		struct lbp_flush_reply flush_reply;
		struct lbp_config_get config_get;
		struct lbp_config_reply config_reply;
		struct lbp_config_set config_set;
		struct lbp_snapshot_reply snapshot_reply;
	} u; /* STATS, BYE and SNAPSHOT carry no body */
};

/* What the decoder found wrong: the field (or "frame") and a one-line reason. */
struct lbp_fault {
	char field[32];
	char reason[128];
};

/*
 * Encode m into buf (cap bytes).
 * @return frame length on success; -EINVAL when a field is out of range (the encoder checks
 *         the same limits as the decoder); -EMSGSIZE when cap is too small.
 */
int lbp_encode(const struct lbp_msg *m, void *buf, size_t cap);

/*
 * Decode and validate one frame. Every field is checked: types, ranges, unknown and missing
 * keys, trailing bytes, lengths capped before any allocation.
 * @return 0 and *out filled, every byte of it: unused array slots, string tails, the rest of
 *         the union and padding are zero, so decoded messages compare with memcmp; *fault is
 *         then all zero. -EPROTO (bad version), -EBADMSG (malformed: *fault says why),
 *         -EMSGSIZE (len > LBP_MAX_FRAME), -ENOMEM; *out is untouched.
 */
int lbp_decode(const void *buf, size_t len, struct lbp_msg *out, struct lbp_fault *fault);

/* Build an ERROR message from an errno value, a field name and printf-style text. */
void lbp_make_error(struct lbp_msg *m, int code, const char *field, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

const char *lbp_type_name(enum lbp_type t);

/* True when t is a message type of this protocol version (LBP_TYPE_MIN..LBP_TYPE_MAX). */
bool lbp_type_known(uint64_t t);

#define LBP_FP_BITS 256u

/* The exact-match key of n token ids: XXH3-128 of their bytes in native order (PROTOCOL.md,
 * Fingerprint 7). out[0] the low, out[1] the high 64 bits. */
void lbp_token_hash(const int32_t *tokens, uint32_t n, uint64_t out[2]);

/* Similarity of two fingerprints hamming bits apart: cos(pi * hamming / 256), the double
 * nearest the exact value. */
double lbp_fp_similarity(uint32_t hamming);

/* The largest hamming distance whose similarity is >= tau (0 when none, or tau is NaN). */
uint32_t lbp_fp_max_hamming(double tau);

/*
 * Check an arena header as mapped by a client: magic, ABI version, sizes, offsets inside
 * the mapping. @return 0, or -EPROTO with *why set to a static string.
 */
int lbp_arena_hdr_check(const struct lb_arena_hdr *h, size_t mapped_bytes, const char **why);

#endif
