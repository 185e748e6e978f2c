/* liblayerbank: the client side of layerbankd, the layer-wise activation cache bank.
 *
 * Threading: an lb_client is used by one thread at a time (like a liburing ring); give each
 * thread its own. Errors: int-returning functions return 0 (or a count) on success and a
 * negative errno value on failure, as listed at each function. */
#ifndef LAYERBANK_LAYERBANK_H
#define LAYERBANK_LAYERBANK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "layerbank/shm.h" /* LB_ABI_FIELD */

#ifdef __cplusplus
extern "C" {
#endif

#define LB_DEFAULT_SOCKET "/run/layerbank/layerbankd.sock"
#define LB_SOCKET_ENV "LAYERBANK_SOCKET"
/* The NUMA node a client tells the daemon at connect, whose arena takes its inserts while it has
 * room: this variable's number if set, else the node of the CPU lb_connect runs on. */
#define LB_NUMA_NODE_ENV "LAYERBANK_NUMA_NODE"
#define LB_NAME_MAX 63

struct lb_client;

/*
 * Connect to layerbankd, say HELLO, receive the arena fds and map every arena read-only.
 * The connection belongs to the calling process: its exit ends the session and its leases,
 * even while a child that inherited it across fork runs on; a child connects for itself.
 * socket_path: NULL means $LAYERBANK_SOCKET, else LB_DEFAULT_SOCKET.
 * name: a label for the daemon's log (NULL or up to LB_NAME_MAX bytes).
 * @return 0 and *out set; -ENOENT/-ECONNREFUSED (no daemon there), -EACCES (socket
 *         permissions), -EPROTO (protocol or arena ABI mismatch), -ENAMETOOLONG (path or
 *         name too long), -ETIMEDOUT (the daemon did not answer within 5 s), -ENOMEM,
 *         -EUSERS (this uid holds as many connections as the daemon allows one uid:
 *         layerbankd's max-connections-per-uid), -ENOBUFS (this uid's connections hold all
 *         the staging the daemon allows one uid: staging-per-uid), other -errno from socket
 *         calls or from the daemon's ERROR. lb_last_error(NULL) then says why, in the
 *         daemon's words when it answered ("" when it did not).
 */
int lb_connect(const char *socket_path, const char *name, struct lb_client **out);

/* Close the connection (BYE), unmap the arenas, free c. NULL is a no-op. */
void lb_close(struct lb_client *c);

/*
 * When the daemon goes away (killed, restarted): a synchronous call never waits more than
 * lb_set_wait_us (5 ms) and then answers -ETIMEDOUT; once the daemon's socket hangs up (the
 * kernel does it after tearing the daemon's memory down; waits look every 1 ms) the requests
 * in flight fail with -ECONNRESET and later data-plane calls return -ENOTCONN at once — a
 * worker treats all three as a miss and computes. Hits already handed out stay readable until
 * lb_release (which then returns 0): their arenas stay mapped in this process. Later calls
 * connect again by themselves, at most every 100 ms and without waiting for the daemon; they
 * register the models registered so far again, and the model ids the application holds keep
 * working (translated if the new daemon numbers them otherwise).
 */
/* true while connected to a daemon. */
bool lb_connected(const struct lb_client *c);
/* How many times c has connected again after losing the daemon. */
uint32_t lb_reconnects(const struct lb_client *c);

/* The daemon's last error reply to c, a one-line message ("" when none). Valid until the next
 * call on c. NULL: the daemon's answer to the calling thread's last lb_connect, when that
 * failed ("" when it succeeded, or failed without an answer); valid until its next
 * lb_connect. */
const char *lb_last_error(const struct lb_client *c);

enum lb_dtype { LB_DTYPE_F32 = 1, LB_DTYPE_F16 = 2, LB_DTYPE_BF16 = 3 };

struct lb_model_desc {
	const char *name;      /* 1..LB_NAME_MAX bytes */
	uint64_t weights_hash; /* hash of the weights: models of other weights never share entries */
	uint32_t n_layers;     /* 1..1024 */
	uint32_t hidden;       /* hidden size, 1..65536 */
	enum lb_dtype dtype;
	uint32_t max_seq;      /* 1..1048576 */
	uint32_t fp_chunks;    /* fingerprint chunks, 1..64; 0 means the default, 4 */
	uint64_t fp_seed;      /* fingerprint projection seed */
	/* Prefix blocks (causal models only: a position's K and V depend on the positions before
	 * it alone): kv_dim is the width of one position's K (and V) row of a layer, n_kv_heads *
	 * head_size, 1..65536; 0 for a model without prefix blocks (encoders). */
	uint32_t kv_dim;
	uint32_t block_tokens; /* tokens of a block, 1..1024; 0 means LB_BLOCK_TOKENS_DEFAULT */
	/* Layers whose K and V a block holds, 1..n_layers; 0 means n_layers. Fewer for a model
	 * whose other layers rebuild theirs from these (a FusedKV model's storage layers). */
	uint32_t kv_layers;
};
LB_ABI_FIELD_LP64(struct lb_model_desc, name, 0, 8);
LB_ABI_FIELD_LP64(struct lb_model_desc, weights_hash, 8, 8);
LB_ABI_FIELD_LP64(struct lb_model_desc, n_layers, 16, 4);
LB_ABI_FIELD_LP64(struct lb_model_desc, hidden, 20, 4);
LB_ABI_FIELD_LP64(struct lb_model_desc, dtype, 24, 4);
LB_ABI_FIELD_LP64(struct lb_model_desc, max_seq, 28, 4);
LB_ABI_FIELD_LP64(struct lb_model_desc, fp_chunks, 32, 4);
LB_ABI_FIELD_LP64(struct lb_model_desc, fp_seed, 40, 8);
LB_ABI_FIELD_LP64(struct lb_model_desc, kv_dim, 48, 4);
LB_ABI_FIELD_LP64(struct lb_model_desc, block_tokens, 52, 4);
LB_ABI_FIELD_LP64(struct lb_model_desc, kv_layers, 56, 4);
LB_ABI_SIZE_LP64(struct lb_model_desc, 64);

#define LB_BLOCK_TOKENS_DEFAULT 16u

/*
 * Register a model (or find it registered with the same description).
 * A client's requests may name only the models it registered on its own connection (others
 * are refused with -EACCES), and a model with an allow-list (layerbankd's model-allow) may be
 * registered only by the users on it.
 * @return 0 and *model_id (>= 1) set; -EEXIST when a model of that name is registered with
 *         another weights hash or shape (lb_last_error names the field); -EACCES when the
 *         model's allow-list does not name this process's uid; -EINVAL for a field out of
 *         range; -ENOSPC when the daemon's model table is full; -EPIPE/-ECONNRESET when the
 *         daemon went away.
 */
int lb_register_model(struct lb_client *c, const struct lb_model_desc *desc, uint32_t *model_id);

#define LB_MAX_NODES 16 /* per-node rows of struct lb_stats */

/* One NUMA node's figures in struct lb_stats: the control protocol's (PROTOCOL.md 4.5), clients
 * placed second so that the struct has no hole. */
struct lb_node_stats {
	int32_t node;            /* NUMA node; -1: arenas not bound to a node */
	uint32_t clients;        /* connected clients that said (HELLO) they run on this node */
	uint64_t arena_bytes;    /* bytes of the node's arenas, over all tenants */
	uint64_t bytes_used;     /* arena bytes in live entries there */
	uint64_t entries;        /* live entries there (layer entries and prefix blocks) */
	uint64_t hits;           /* lookups answered from entries there */
	uint64_t inserts;        /* entries placed there */
	uint64_t remote_inserts; /* inserts by clients of this node placed on another node: its
				  * arenas had no room */
};
LB_ABI_FIELD_LP64(struct lb_node_stats, node, 0, 4);
LB_ABI_FIELD_LP64(struct lb_node_stats, clients, 4, 4);
LB_ABI_FIELD_LP64(struct lb_node_stats, arena_bytes, 8, 8);
LB_ABI_FIELD_LP64(struct lb_node_stats, bytes_used, 16, 8);
LB_ABI_FIELD_LP64(struct lb_node_stats, entries, 24, 8);
LB_ABI_FIELD_LP64(struct lb_node_stats, hits, 32, 8);
LB_ABI_FIELD_LP64(struct lb_node_stats, inserts, 40, 8);
LB_ABI_FIELD_LP64(struct lb_node_stats, remote_inserts, 48, 8);
LB_ABI_SIZE_LP64(struct lb_node_stats, 56);

struct lb_stats {
	uint64_t page_size;   /* bytes of the arena's pages: 2097152 with hugepages, else 4096 */
	uint64_t arena_bytes; /* over all arenas */
	uint32_t numa_nodes;  /* arenas in use (not nodes: see nodes below) */
	bool hugepages;
	uint32_t clients;
	uint32_t models;
	uint64_t uptime_s;
	/* the data plane */
	uint32_t threads;        /* service threads */
	char policy[16];         /* eviction policy: lru, decay or ttl */
	uint64_t hits, misses, inserts;
	uint64_t evictions;      /* dropped by the policy to make room */
	uint64_t expirations;    /* dropped by their TTL */
	uint64_t invalidations;  /* dropped: a REPORT over the drift limit, a more exact insert */
	uint64_t entries;        /* cached layer outputs */
	uint64_t leases;         /* held by clients now */
	uint64_t bytes_used, bytes_budget;
	double fragmentation;    /* of the free arena space, 0..1 */
	uint64_t quota_refusals; /* inserts refused with -EDQUOT: over a user's insert quota */
	/* prefix blocks */
	uint64_t blocks;         /* cached prefix blocks (not counted in entries) */
	uint64_t prefix_hits;    /* LOOKUP_PREFIX answered with at least the first block */
	uint64_t prefix_misses;  /* LOOKUP_PREFIX that found not even the first */
	uint64_t blocks_served;  /* blocks handed out by the hits */
	/* the second tier (layerbankd --l2): "off" without one (every count below 0), "up" when
	 * its last command (at first: reading the slot map) reached its node, "down" when not */
	char l2[8];
	uint64_t l2_queue_bytes, l2_queue_records; /* records waiting to be written behind */
	uint64_t l2_fetches_waiting; /* reads waiting for the tier's thread */
	uint64_t l2_written;         /* records written */
	uint64_t l2_dropped;         /* records not queued: the queue was full */
	uint64_t l2_write_errors;    /* records whose write failed */
	uint64_t l2_fetched;         /* records read back, checked and cached here */
	uint64_t l2_fetch_misses;    /* reads of keys the tier did not hold */
	uint64_t l2_rejected;        /* records read back and refused by their checks */
	uint64_t l2_fetch_errors;    /* reads that failed, or found no room in the queue */
	/* tenants and NUMA nodes */
	uint32_t tenants; /* tenants with arenas of their own, the shared one included: >= 1, but
			   * 0 from a daemon that does not count them */
	uint32_t n_nodes; /* rows of nodes, 0..LB_MAX_NODES; 0: the daemon keeps no per-node
			   * figures */
	struct lb_node_stats nodes[LB_MAX_NODES]; /* one per NUMA node the daemon keeps arenas on,
						   * by node number (-1 first) */
};
LB_ABI_FIELD_LP64(struct lb_stats, page_size, 0, 8);
LB_ABI_FIELD_LP64(struct lb_stats, arena_bytes, 8, 8);
LB_ABI_FIELD_LP64(struct lb_stats, numa_nodes, 16, 4);
LB_ABI_FIELD_LP64(struct lb_stats, hugepages, 20, 1);
LB_ABI_FIELD_LP64(struct lb_stats, clients, 24, 4);
LB_ABI_FIELD_LP64(struct lb_stats, models, 28, 4);
LB_ABI_FIELD_LP64(struct lb_stats, uptime_s, 32, 8);
LB_ABI_FIELD_LP64(struct lb_stats, threads, 40, 4);
LB_ABI_FIELD_LP64(struct lb_stats, policy, 44, 16);
LB_ABI_FIELD_LP64(struct lb_stats, hits, 64, 8);
LB_ABI_FIELD_LP64(struct lb_stats, misses, 72, 8);
LB_ABI_FIELD_LP64(struct lb_stats, inserts, 80, 8);
LB_ABI_FIELD_LP64(struct lb_stats, evictions, 88, 8);
LB_ABI_FIELD_LP64(struct lb_stats, expirations, 96, 8);
LB_ABI_FIELD_LP64(struct lb_stats, invalidations, 104, 8);
LB_ABI_FIELD_LP64(struct lb_stats, entries, 112, 8);
LB_ABI_FIELD_LP64(struct lb_stats, leases, 120, 8);
LB_ABI_FIELD_LP64(struct lb_stats, bytes_used, 128, 8);
LB_ABI_FIELD_LP64(struct lb_stats, bytes_budget, 136, 8);
LB_ABI_FIELD_LP64(struct lb_stats, fragmentation, 144, 8);
LB_ABI_FIELD_LP64(struct lb_stats, quota_refusals, 152, 8);
LB_ABI_FIELD_LP64(struct lb_stats, blocks, 160, 8);
LB_ABI_FIELD_LP64(struct lb_stats, prefix_hits, 168, 8);
LB_ABI_FIELD_LP64(struct lb_stats, prefix_misses, 176, 8);
LB_ABI_FIELD_LP64(struct lb_stats, blocks_served, 184, 8);
LB_ABI_FIELD_LP64(struct lb_stats, l2, 192, 8);
LB_ABI_FIELD_LP64(struct lb_stats, l2_queue_bytes, 200, 8);
LB_ABI_FIELD_LP64(struct lb_stats, l2_queue_records, 208, 8);
LB_ABI_FIELD_LP64(struct lb_stats, l2_fetches_waiting, 216, 8);
LB_ABI_FIELD_LP64(struct lb_stats, l2_written, 224, 8);
LB_ABI_FIELD_LP64(struct lb_stats, l2_dropped, 232, 8);
LB_ABI_FIELD_LP64(struct lb_stats, l2_write_errors, 240, 8);
LB_ABI_FIELD_LP64(struct lb_stats, l2_fetched, 248, 8);
LB_ABI_FIELD_LP64(struct lb_stats, l2_fetch_misses, 256, 8);
LB_ABI_FIELD_LP64(struct lb_stats, l2_rejected, 264, 8);
LB_ABI_FIELD_LP64(struct lb_stats, l2_fetch_errors, 272, 8);
LB_ABI_FIELD_LP64(struct lb_stats, tenants, 280, 4);
LB_ABI_FIELD_LP64(struct lb_stats, n_nodes, 284, 4);
LB_ABI_FIELD_LP64(struct lb_stats, nodes, 288, 896);
LB_ABI_SIZE_LP64(struct lb_stats, 1184);

/*
 * Read the daemon's counters into *out; size is sizeof(*out) as the caller was compiled,
 * so that the struct may grow.
 * @return 0; -EINVAL (size too small); -EPIPE/-ECONNRESET (daemon gone); -EPROTO.
 */
int lb_stats(struct lb_client *c, struct lb_stats *out, size_t size);

/* Counters of one layer of one model. */
struct lb_layer_stats {
	uint64_t hits;      /* lookups that reused this layer (a deepest hit at L counts 0..L) */
	uint64_t misses;    /* lookups that could not reuse it */
	uint64_t inserts;
	uint64_t evictions;
	uint64_t entries;   /* cached now */
	uint64_t bytes;     /* arena bytes of those entries */
	uint64_t leases;    /* held now */
};
LB_ABI_FIELD_LP64(struct lb_layer_stats, hits, 0, 8);
LB_ABI_FIELD_LP64(struct lb_layer_stats, misses, 8, 8);
LB_ABI_FIELD_LP64(struct lb_layer_stats, inserts, 16, 8);
LB_ABI_FIELD_LP64(struct lb_layer_stats, evictions, 24, 8);
LB_ABI_FIELD_LP64(struct lb_layer_stats, entries, 32, 8);
LB_ABI_FIELD_LP64(struct lb_layer_stats, bytes, 40, 8);
LB_ABI_FIELD_LP64(struct lb_layer_stats, leases, 48, 8);
LB_ABI_SIZE_LP64(struct lb_layer_stats, 56);

/*
 * Per-layer counters of model model_id: name (LB_NAME_MAX + 1 bytes, may be NULL) and up to
 * max layers into out. @return the model's layer count (which may exceed max; only max were
 * filled); -ESRCH (no such model); -EPIPE/-ECONNRESET; -EPROTO.
 */
int lb_model_stats(struct lb_client *c, uint32_t model_id, char *name, struct lb_layer_stats *out,
		   uint32_t max);

/* One layer's threshold and what its controller was fed: the REPORTs of approximate reuses
 * (fingerprint distance >= 1) of this layer (PROTOCOL.md, Ring protocol 14). */
struct lb_layer_tau {
	double tau;            /* in force for lookups that bring none: lb_fp_similarity(max_hamming) */
	uint32_t max_hamming;  /* the largest fingerprint distance it accepts */
	uint32_t reserved;     /* 0 */
	uint64_t reports;      /* approximate reuses of this layer reported */
	uint64_t reports_over; /* of them, drifting past the daemon's drift-target then */
	double drift_sum;      /* the sum of their drifts (to a millionth each) */
};
LB_ABI_FIELD_LP64(struct lb_layer_tau, tau, 0, 8);
LB_ABI_FIELD_LP64(struct lb_layer_tau, max_hamming, 8, 4);
LB_ABI_FIELD_LP64(struct lb_layer_tau, reserved, 12, 4);
LB_ABI_FIELD_LP64(struct lb_layer_tau, reports, 16, 8);
LB_ABI_FIELD_LP64(struct lb_layer_tau, reports_over, 24, 8);
LB_ABI_FIELD_LP64(struct lb_layer_tau, drift_sum, 32, 8);
LB_ABI_SIZE_LP64(struct lb_layer_tau, 40);

/*
 * The thresholds of model model_id's layers, up to max of them into out; with the daemon's
 * drift-target set they are its controllers' (adaptive), else its tau or a layer's own.
 * @return the model's layer count (which may exceed max); as lb_model_stats otherwise.
 */
int lb_model_taus(struct lb_client *c, uint32_t model_id, struct lb_layer_tau *out, uint32_t max);

/* What a snapshot wrote. */
struct lb_snapshot_info {
	uint64_t entries; /* cached entries in the file */
	uint64_t bytes;   /* the file's size */
	uint64_t ms;      /* how long the write took, fsync and rename included */
};
LB_ABI_FIELD_LP64(struct lb_snapshot_info, entries, 0, 8);
LB_ABI_FIELD_LP64(struct lb_snapshot_info, bytes, 8, 8);
LB_ABI_FIELD_LP64(struct lb_snapshot_info, ms, 16, 8);
LB_ABI_SIZE_LP64(struct lb_snapshot_info, 24);

/*
 * Ask the daemon to write its snapshot file now (the one it was started with: --snapshot FILE),
 * as it does when it stops; waits for the write, up to 600 s. An administrative call: only
 * root and the daemon's own user may make it. out may be NULL.
 * @return 0; -EPERM (the caller is neither root nor the daemon's user); -EOPNOTSUPP (the
 *         daemon runs without --snapshot); the write's error (-ENOSPC, -EACCES, -EIO, ...,
 *         with lb_last_error saying which file); -ETIMEDOUT; -EPIPE/-ECONNRESET; -EPROTO.
 */
int lb_snapshot(struct lb_client *c, struct lb_snapshot_info *out);

/* ---- administration: FLUSH and run-time settings ---- */

/* What lb_flush dropped. */
struct lb_flush_result {
	uint64_t entries; /* taken out of the cache: no lookup finds them again */
	uint64_t bytes;   /* their arena bytes */
	uint64_t leased;  /* of those, held by a lease: freed when their last lease is released */
};
LB_ABI_FIELD_LP64(struct lb_flush_result, entries, 0, 8);
LB_ABI_FIELD_LP64(struct lb_flush_result, bytes, 8, 8);
LB_ABI_FIELD_LP64(struct lb_flush_result, leased, 16, 8);
LB_ABI_SIZE_LP64(struct lb_flush_result, 24);

/*
 * Drop cached entries: of every model (model_id 0, layer -1), of one model (layer -1) or of
 * one layer of one model. An entry under lease stays readable and unchanged for its holder
 * until lb_release; it is freed then. Needs root or the daemon's own user.
 * out may be NULL.
 * @return 0; -EPERM (not root or the daemon's user); -ESRCH (no such model); -EINVAL (layer
 *         out of the model's range, below -1, or a layer with model_id 0); -EPIPE/-ECONNRESET;
 *         -EPROTO. lb_last_error says why.
 */
int lb_flush(struct lb_client *c, uint32_t model_id, int32_t layer, struct lb_flush_result *out);

#define LB_CONFIG_KEY_MAX 127
#define LB_CONFIG_VALUE_MAX 63

/* One run-time setting as text, as in layerbankd's config file: "budget" = "64M". */
struct lb_config_item {
	char key[LB_CONFIG_KEY_MAX + 1];
	char value[LB_CONFIG_VALUE_MAX + 1];
};
LB_ABI_FIELD_LP64(struct lb_config_item, key, 0, 128);
LB_ABI_FIELD_LP64(struct lb_config_item, value, 128, 64);
LB_ABI_SIZE_LP64(struct lb_config_item, 192);

/*
 * Read run-time settings: key NULL or "" every one (tau, budget, policy, spin-us, ttl,
 * half-life, drift-max, then tau.MODEL.LAYER for every layer with a threshold of its own),
 * "tau.MODEL" every layer's threshold of that model, else the one setting. Up to max items
 * into out.
 * @return the number of items the key matched (may exceed max; only max were filled);
 *         -ENOENT (no such setting: lb_last_error lists them); -EINVAL (key longer than
 *         LB_CONFIG_KEY_MAX, out NULL with max > 0); -EPIPE/-ECONNRESET; -EPROTO.
 */
int lb_config_get(struct lb_client *c, const char *key, struct lb_config_item *out, uint32_t max);

/*
 * Change one run-time setting, with the syntax and checks of the config file (tau 0.95,
 * budget 512M, policy lru|decay|ttl, spin-us 0..1000000, ttl and half-life in seconds,
 * drift-max; tau.MODEL.LAYER a number or "default"); '_' may stand for '-' in a name. A lower
 * budget evicts down to it at once, never an entry under lease. Needs root or the daemon's
 * own user. now (may be NULL) receives the setting as in effect afterwards.
 * @return 0; -EPERM (not root or the daemon's user); -ENOENT (no such setting); -EINVAL (value
 *         refused, or key or value empty or too long); -EPIPE/-ECONNRESET; -EPROTO.
 *         lb_last_error says why, in one line.
 */
int lb_config_set(struct lb_client *c, const char *key, const char *value, struct lb_config_item *now);

/* Arenas by the index hits name them with: one past the highest mapped, and the read-only base
 * and size of arena i. NULL (and size 0) when out of range, or when i is another tenant's: the
 * daemon gives a client only the arenas of the models it may use (PROTOCOL.md 4.2). */
unsigned lb_arena_count(const struct lb_client *c);
const void *lb_arena_base(const struct lb_client *c, unsigned i, size_t *bytes);

/* The fd of arena i, for tests and tools that check its protection; -EINVAL when out of range,
 * -EACCES for another tenant's. The fd stays owned by c. */
int lb_arena_fd(const struct lb_client *c, unsigned i);

/* ---- fingerprints (LLMCache input fingerprint; specified in proto/PROTOCOL.md) ---- */

#define LB_FP_BITS 256

/* A projection, built once per (dim, chunks, seed, center) and shared by every call. */
struct lb_fp_proj;

/*
 * Build the projection for embeddings of width dim, pooled into chunks chunks (0: 4), with
 * the PRNG seeded by seed. center: NULL, or dim floats subtracted from every pooled chunk
 * (for example the mean of the embedding table) so that the common component of all inputs
 * does not dominate the hash. Limits: dim <= 2^20, dim * chunks <= 2^24.
 * @return the projection, or NULL with errno EINVAL (out of limits) or ENOMEM.
 */
struct lb_fp_proj *lb_fp_proj_new(uint32_t dim, uint32_t chunks, uint64_t seed, const float *center);
void lb_fp_proj_free(struct lb_fp_proj *p);

/*
 * SimHash of an input from its embedding-layer output emb [n_tokens][dim]: split into the
 * projection's chunks, each mean-pooled, concatenated, projected, one bit per sign. Identical
 * bits on every machine, process and code path (AVX-512 or scalar).
 * @return 0; -EINVAL (n_tokens 0, NULL pointers); -ENOMEM (dim * chunks > 4096 needs a
 *         scratch buffer, which could not be allocated).
 */
int lb_fingerprint(const struct lb_fp_proj *p, const float *emb, uint32_t n_tokens,
		   uint64_t out[LB_FP_BITS / 64]);

/* XXH3-64 of bytes (0 for NULL with bytes > 0): what layerbank-worker registers as a checkpoint
 * file's weights_hash, so that a client in another language can register the same model. */
uint64_t lb_hash64(const void *data, uint64_t bytes);

/* XXH3-128 of the token ids: the exact-match key. out[0] low, out[1] high 64 bits. */
void lb_token_hash(const int32_t *tokens, uint32_t n_tokens, uint64_t out[2]);

/* Bits that differ between two fingerprints, 0..256. */
uint32_t lb_fp_hamming(const uint64_t a[LB_FP_BITS / 64], const uint64_t b[LB_FP_BITS / 64]);

/* Estimated cosine similarity of two inputs: cos(pi * hamming / 256). */
double lb_fp_similarity(uint32_t hamming);

/* Largest hamming distance whose similarity is >= tau (tau in [-1, 1]). */
uint32_t lb_fp_max_hamming(double tau);

/* ---- the data plane: lookups, inserts and leases over the shared-memory rings ---- */

/* What identifies an input: its fingerprint, the exact hash of its tokens, its length. */
struct lb_key {
	uint64_t fp[LB_FP_BITS / 64]; /* lb_fingerprint */
	uint64_t exact[2];            /* lb_token_hash */
	uint32_t seq_len;             /* tokens; hidden states are reused only at this length */
};
LB_ABI_FIELD_LP64(struct lb_key, fp, 0, 32);
LB_ABI_FIELD_LP64(struct lb_key, exact, 32, 16);
LB_ABI_FIELD_LP64(struct lb_key, seq_len, 48, 4);
LB_ABI_SIZE_LP64(struct lb_key, 56);

/* A hit: a read-only, zero-copy view of a cached activation, valid until its lease is
 * released (lb_release) or the client closes. */
struct lb_hit {
	const void *data;
	uint64_t bytes;
	uint64_t lease;     /* pass to lb_release (and lb_report) */
	uint64_t checksum;  /* XXH3-64 of the bytes, computed by the daemon on its copy */
	uint32_t layer;     /* the layer whose output this is */
	/* How far the data may be from this input's exact state, in fingerprint bits: the
	 * distance to the cached input plus the entry's own approx (0: exact). */
	uint32_t hamming;
	enum lb_dtype dtype;
	uint32_t ndim;
	uint32_t shape[4];
};
LB_ABI_FIELD_LP64(struct lb_hit, data, 0, 8);
LB_ABI_FIELD_LP64(struct lb_hit, bytes, 8, 8);
LB_ABI_FIELD_LP64(struct lb_hit, lease, 16, 8);
LB_ABI_FIELD_LP64(struct lb_hit, checksum, 24, 8);
LB_ABI_FIELD_LP64(struct lb_hit, layer, 32, 4);
LB_ABI_FIELD_LP64(struct lb_hit, hamming, 36, 4);
LB_ABI_FIELD_LP64(struct lb_hit, dtype, 40, 4);
LB_ABI_FIELD_LP64(struct lb_hit, ndim, 44, 4);
LB_ABI_FIELD_LP64(struct lb_hit, shape, 48, 16);
LB_ABI_SIZE_LP64(struct lb_hit, 64);

/*
 * The deepest layer whose cached output may be reused for this input: the nearest cached
 * input of the same length, and the deepest layer of it whose similarity is at least that
 * layer's threshold, the similarity of the distance plus the entry's approx
 * (lb_insert_commit_approx): an entry computed on an approximate reuse never passes for exact,
 * under its own tokens either. tau: n_tau thresholds (layer 0 first; n_tau must be the model's n_layers),
 * or NULL and 0 for the daemon's default.
 * @return 0 and *hit; -ENOENT (a miss); -ESRCH (unknown model); -EACCES (a model this client
 *         did not register); -EINVAL (bad argument);
 *         -EBUSY (async requests in flight, or too many leases held); -ETIMEDOUT (no answer
 *         within 1 s); -EPROTO (the daemon broke the protocol).
 */
int lb_lookup_deepest(struct lb_client *c, uint32_t model_id, const struct lb_key *key,
		      const float *tau, uint32_t n_tau, struct lb_hit *hit);

/* The cached output of one layer. Same returns as lb_lookup_deepest. */
int lb_lookup(struct lb_client *c, uint32_t model_id, uint32_t layer, const struct lb_key *key,
	      const float *tau, uint32_t n_tau, struct lb_hit *hit);

/*
 * A buffer of bytes in the client's staging memory to compute a layer's output into; then
 * lb_insert_commit. One reservation at a time. @return the buffer (64-byte aligned), or NULL
 * with errno EINVAL (0 bytes), ENOBUFS (larger than the staging buffer), EBUSY.
 */
void *lb_insert_reserve(struct lb_client *c, uint64_t bytes);

struct lb_shape {
	enum lb_dtype dtype;
	uint32_t ndim;     /* 1..4 */
	uint32_t dims[4];  /* product * dtype size == the reserved bytes */
};
LB_ABI_FIELD_LP64(struct lb_shape, dtype, 0, 4);
LB_ABI_FIELD_LP64(struct lb_shape, ndim, 4, 4);
LB_ABI_FIELD_LP64(struct lb_shape, dims, 8, 16);
LB_ABI_SIZE_LP64(struct lb_shape, 24);

/*
 * Hand the reserved buffer to the daemon, which copies it into the arena as the output of
 * layer for key, computed exactly from key's tokens (lb_insert_commit_approx otherwise).
 * @return 0; -EEXIST (already cached); -ENOSPC (no room: everything is
 * leased); -EDQUOT (the entries of this client's user, from all its connections, hold its
 * insert quota, layerbankd's insert-bytes-per-uid, already: it frees up as they are
 * evicted); -EINVAL (shape, layer, no
 * reservation); -ESRCH; -EACCES (a model this client did not register); -ETIMEDOUT; -EPROTO.
 */
int lb_insert_commit(struct lb_client *c, uint32_t model_id, uint32_t layer,
		     const struct lb_key *key, const struct lb_shape *shape);

/*
 * lb_insert_commit of data computed on top of an approximate reuse: approx (1..LB_FP_BITS) is
 * how far they may be from key's exact state, the hamming of the hit they were computed on
 * (lb_lem_run does this). The daemon keeps it with the entry and adds it to the distance of
 * every later lookup, so the entry never passes for exact; an exact insert of the same layer
 * replaces it. approx 0 is lb_insert_commit. Same returns; -EINVAL for approx > LB_FP_BITS.
 */
int lb_insert_commit_approx(struct lb_client *c, uint32_t model_id, uint32_t layer,
			    const struct lb_key *key, const struct lb_shape *shape, uint32_t approx);

/*
 * lb_insert_commit_approx with the input's token ids (key->seq_len of them, hashing to
 * key->exact), which the entry keeps after its data: a lookup of another length
 * (LB_LOOKUP_ANY_LEN) may then find it and align with it. The reservation must hold the data
 * and room for them: lb_insert_reserve(c, lb_insert_tokens_bytes(data bytes, seq_len)).
 * Same returns; -EINVAL also for tokens that do not hash to key->exact (the daemon checks), a
 * reservation too small, or a daemon that predates token ids (insert without).
 */
int lb_insert_commit_tokens(struct lb_client *c, uint32_t model_id, uint32_t layer,
			    const struct lb_key *key, const struct lb_shape *shape, uint32_t approx,
			    const int32_t *tokens);

/* The reservation lb_insert_commit_tokens needs for data bytes and n token ids. */
uint64_t lb_insert_tokens_bytes(uint64_t bytes, uint32_t n);

/* The token ids of a hit's cached input, *n of them (its length, the hit's shape[0] for a
 * layer's [tokens][hidden]), valid as long as the hit; NULL with *n 0 when its entry carries
 * none. */
const int32_t *lb_hit_tokens(const struct lb_hit *hit, uint32_t *n);

/* End a lease from a hit. @return 0, -EINVAL (unknown lease), -ETIMEDOUT. */
int lb_release(struct lb_client *c, uint64_t lease);

/* Tell the daemon how far a reused entry drifted from a fresh computation (relative error,
 * >= 0); above its limit the entry is invalidated. The lease stays held. Same returns. */
int lb_report(struct lb_client *c, uint64_t lease, float drift);

/* The drift of layer `layer` (at most the leased entry's) when the hit's cached input was reused
 * to that depth: it feeds that layer's threshold controller and invalidates nothing but, at
 * the entry's own layer, as lb_report does. What a revalidation of a partial reuse measures at
 * every layer it assembled. Same returns; -EINVAL also for a layer above the entry's. */
int lb_report_layer(struct lb_client *c, uint64_t lease, uint32_t layer, float drift);

/* The drift lb_report and lb_lem_run's revalidation measure: 1 - cosine(a, b) over count
 * floats, in double, clamped to >= 0; 0 when both are zero vectors, 1 when one is. */
float lb_drift(const float *a, const float *b, uint64_t count);

/* A round trip through the rings. @return 0, -ETIMEDOUT. */
int lb_ping(struct lb_client *c);

/* How long a wait spins at most before it sleeps (default 50 us); while every CPU of the machine
 * is busy (/proc/loadavg's running count), 2 us at most. */
void lb_set_spin_us(struct lb_client *c, uint32_t us);

/*
 * How long a synchronous call (lookup, insert, release, report, ping) waits for the daemon
 * before it answers -ETIMEDOUT, which a worker treats as a miss: default 5 ms, or
 * $LAYERBANK_WAIT_US at lb_connect; 0 restores the default. An insert waits 4 ms a MiB longer.
 * A completion that comes after its call gave up is swallowed by later calls (a hit's lease
 * given back); up to 64 such calls may be outstanding, then calls answer -EBUSY until they end.
 */
void lb_set_wait_us(struct lb_client *c, uint32_t us);

/* ---- single-flight: one client computes a new input, the others wait for its layers ---- */

/*
 * Flags of lb_lookup_sflight (PROTOCOL.md, Ring protocol 15):
 * LB_SFLIGHT_CLAIM: when no client claims the input and the cache holds none of its layers, the
 *   lookup claims it (sf->claim): other clients' LB_SFLIGHT_WAIT lookups of it wait until the
 *   claim ends. Compute the input, insert its layers, then lb_release(c, sf->claim) — also when
 *   giving up on it. A claim also ends when this connection does (the process's death included,
 *   at once) and bound_us after it was taken.
 * LB_SFLIGHT_WAIT: while another client claims the input, the daemon holds the lookup until that
 *   claim ends (answering then from what the cache holds: normally the claimant's layers) or
 *   bound_us pass; it holds no thread and no ring slot meanwhile, but this client's later
 *   requests wait behind it. A client that holds a claim itself (not past its bound) is
 *   answered at once.
 * bound_us: 1..LB_SFLIGHT_MAX_US (10 s): the claim's life and the longest wait.
 */
#define LB_SFLIGHT_CLAIM 1u
#define LB_SFLIGHT_WAIT 2u
/*
 * LB_SFLIGHT_TIER: when the cache misses and the daemon has a second tier (layerbankd --l2), the
 *   daemon fetches the input (or the nearest input within the lookup's radius) from it; the
 *   lookup is held until that fetch ends, within bound_us, and answered from what it brought:
 *   an input another host computed, here on the first lookup. Without the flag the fetch still
 *   runs and serves the lookups that come after. Worth it when computing the input costs more
 *   than a fetch (PROTOCOL.md, "Second tier" 4, has the figures); lb_lem_run sets it so.
 */
#define LB_SFLIGHT_TIER 16u
#define LB_SFLIGHT_MAX_US 10000000u
/*
 * Also a flag of lb_lookup_sflight, alone or with the others (PROTOCOL.md, Ring protocol 16):
 * the nearest cached input may have another length than key->seq_len, when its entries carry
 * its token ids (inserted with lb_insert_commit_tokens): lb_hit_tokens gives them, for the
 * caller to align its positions with the hit's. A hit's shape then says its length. Alone, it
 * takes bound_us 0.
 */
#define LB_LOOKUP_ANY_LEN 4u
/* sf->flags */
#define LB_SFLIGHT_WAITED 1u /* the lookup waited for another client's claim (waited_us) */
#define LB_SFLIGHT_BUSY 2u   /* another client's claim on the input was live when answered (the
			      * wait ran out, or could not be): it is being computed elsewhere too */

struct lb_sflight {
	uint64_t claim;     /* the claim this lookup took, 0: none; lb_release it when done */
	uint32_t waited_us; /* how long the daemon held the lookup */
	uint32_t flags;     /* LB_SFLIGHT_WAITED, LB_SFLIGHT_BUSY */
};
LB_ABI_FIELD_LP64(struct lb_sflight, claim, 0, 8);
LB_ABI_FIELD_LP64(struct lb_sflight, waited_us, 8, 4);
LB_ABI_FIELD_LP64(struct lb_sflight, flags, 12, 4);
LB_ABI_SIZE_LP64(struct lb_sflight, 16);

/*
 * lb_lookup_deepest with single-flight flags (LB_SFLIGHT_CLAIM, LB_SFLIGHT_WAIT, either or
 * both), and LB_LOOKUP_ANY_LEN. Waits for the answer up to bound_us plus lb_set_wait_us's wait.
 * *sf is filled whatever the answer (a claim comes with a miss or with a hit on a near input's
 * layer).
 * @return as lb_lookup_deepest: 0 and *hit; -ENOENT (a miss); ...; -EINVAL also for flags 0 or
 *         unknown, bound_us out of range (0 without single-flight's flags), or a daemon that
 *         predates a flag (it refuses it: look up without).
 */
int lb_lookup_sflight(struct lb_client *c, uint32_t model_id, const struct lb_key *key,
		      const float *tau, uint32_t n_tau, uint32_t flags, uint32_t bound_us,
		      struct lb_hit *hit, struct lb_sflight *sf);

/* ---- asynchronous forms, for batching ---- */

struct lb_result {
	uint64_t user_data; /* as submitted */
	int status;         /* as the synchronous call would return */
	struct lb_hit hit;  /* for a lookup with status 0 */
};
LB_ABI_FIELD_LP64(struct lb_result, user_data, 0, 8);
LB_ABI_FIELD_LP64(struct lb_result, status, 8, 4);
LB_ABI_FIELD_LP64(struct lb_result, hit, 16, 64);
LB_ABI_SIZE_LP64(struct lb_result, 80);

/* Queue a request without waiting. @return 0; -EAGAIN (ring or staging full: poll first);
 * -EINVAL. */
int lb_submit_lookup_deepest(struct lb_client *c, uint32_t model_id, const struct lb_key *key,
			     const float *tau, uint32_t n_tau, uint64_t user_data);
int lb_submit_lookup(struct lb_client *c, uint32_t model_id, uint32_t layer, const struct lb_key *key,
		     const float *tau, uint32_t n_tau, uint64_t user_data);
int lb_submit_release(struct lb_client *c, uint64_t lease, uint64_t user_data);

/* Collect up to max results, waiting up to timeout_us for the first (0: don't wait).
 * @return the number collected (0 on time-out), -EPROTO. */
int lb_poll(struct lb_client *c, struct lb_result *out, unsigned max, uint32_t timeout_us);
/* ---- prefix blocks: the exact K and V of token prefixes, for causal models ---- */

/*
 * A causal model's input is cut into blocks of block_tokens tokens (the model's registration).
 * Block i holds, for each of the registration's kv_layers layers (all, unless the model
 * rebuilds some layers' K and V from others), the K (after RoPE) and V rows of positions
 * [i B, (i + 1) B), f32 [kv_layers][2][block_tokens][kv_dim]: K of layer l at (2 l) B kv_dim
 * floats, V at (2 l + 1) B kv_dim. Its key names the whole prefix of tokens [0, (i + 1) B): a chained
 * XXH3-128 (PROTOCOL.md, Ring protocol 14). A causal model's states before the first differing
 * token are exact, so a cached prefix is reused as is: no approximation.
 */

/* The chained keys of the full blocks of tokens, keys[i][0] low and [1] high 64 bits of block
 * i's. Computes at most max of them. @return the number of full blocks: n_tokens / block_tokens
 * (0 for block_tokens 0). */
uint32_t lb_block_keys(const int32_t *tokens, uint32_t n_tokens, uint32_t block_tokens,
		       uint64_t (*keys)[2], uint32_t max);

/*
 * The longest run of cached blocks from the start of a prefix: keys[0..n_keys) from
 * lb_block_keys (n_keys 1..LB_PREFIX_MAX_BLOCKS). On a hit, blocks[i] for i < the count is block
 * i's data: read-only, zero copy, in the layout above, checked against the model's registration;
 * one lease covers them all until lb_release(*lease).
 * @return the number of blocks found from the start (>= 1); -ENOENT (not even block 0); -ESRCH;
 *         -EACCES; -EINVAL (bad argument, a model registered without kv_dim); -EBUSY (requests
 *         in flight, or too many leases held); -ETIMEDOUT; -EPROTO (an answer that does not
 *         check: the lease is given back).
 */
int lb_lookup_prefix(struct lb_client *c, uint32_t model_id, const uint64_t (*keys)[2],
		     uint32_t n_keys, const void **blocks, uint64_t *lease);

/*
 * Insert block index of a prefix from the buffer lb_insert_reserve gave (its data, bytes of
 * kv_layers * 2 * block_tokens * kv_dim f32 as registered): key is its key, parent the key of
 * block index - 1 (ignored for block 0). The parent must be cached: a chain has no holes.
 * @return 0; -EEXIST (cached already); -ENOENT (the parent is not cached); -ENOSPC; -EDQUOT;
 *         -EINVAL (no reservation, a size that is not the model's block size, a model without
 *         kv_dim); -ESRCH; -EACCES; -ETIMEDOUT; -EPROTO.
 */
int lb_insert_block(struct lb_client *c, uint32_t model_id, const uint64_t key[2],
		    const uint64_t parent[2], uint32_t index);

/* A sequence's K and V as blocks: block i of positions [i B, (i + 1) B) at block[i], in the
 * layout above. Cached blocks point into the arena (read-only); the caller's own into its
 * memory. */
struct lb_kv_view {
	uint32_t n_layers; /* layers a block holds: the registration's kv_layers */
	uint32_t kv_dim;
	uint32_t block_tokens;
	uint32_t n_blocks;   /* entries of block: the longest sequence, in blocks */
	const float **block; /* [n_blocks], the caller's array */
};
LB_ABI_FIELD_LP64(struct lb_kv_view, n_layers, 0, 4);
LB_ABI_FIELD_LP64(struct lb_kv_view, kv_dim, 4, 4);
LB_ABI_FIELD_LP64(struct lb_kv_view, block_tokens, 8, 4);
LB_ABI_FIELD_LP64(struct lb_kv_view, n_blocks, 12, 4);
LB_ABI_FIELD_LP64(struct lb_kv_view, block, 16, 8);
LB_ABI_SIZE_LP64(struct lb_kv_view, 24);

/* The K (v = 0) or V (v = 1) row of position t of layer l. */
static inline const float *lb_kv_row(const struct lb_kv_view *kv, uint32_t l, uint32_t v,
				     uint32_t t)
{
	uint64_t B = kv->block_tokens;
	return kv->block[t / B] + ((2 * (uint64_t)l + v) * B + t % B) * kv->kv_dim;
}

/*
 * Compute layer `layer` for positions [p, n) of a sequence: read the K and V rows of positions
 * [0, p) through kv and write those of [p, n) into the caller's own blocks (kv->block[i] for i
 * >= p / block_tokens is one of the caller's, own + i block-sizes; never write through a
 * cached one). The hidden states are the caller's (ctx): layer 0 starts from the embeddings of
 * tokens p..n-1. @return 0, or a negative errno, which lb_prefix_run returns as is.
 */
typedef int (*lb_prefix_fn)(void *ctx, uint32_t layer, uint32_t p, uint32_t n,
			    const struct lb_kv_view *kv);

struct lb_prefix_cfg {
	uint32_t model_id;     /* from lb_register_model (unused when c is NULL) */
	uint32_t n_layers;     /* as registered: compute runs each; the blocks may hold fewer */
	uint32_t kv_dim;       /* as registered */
	uint32_t block_tokens; /* as registered (0: LB_BLOCK_TOKENS_DEFAULT) */
	uint32_t flags;        /* LB_PREFIX_* */
};
/* lb_prefix_run inserts nothing: the caller inserts the blocks it computed with
 * lb_prefix_insert(.., res->blocks_found) once it has what it waits for (the first token),
 * so that copying them into the bank is not in its time to first token. */
#define LB_PREFIX_DEFER_INSERT 1u
LB_ABI_FIELD_LP64(struct lb_prefix_cfg, model_id, 0, 4);
LB_ABI_FIELD_LP64(struct lb_prefix_cfg, n_layers, 4, 4);
LB_ABI_FIELD_LP64(struct lb_prefix_cfg, kv_dim, 8, 4);
LB_ABI_FIELD_LP64(struct lb_prefix_cfg, block_tokens, 12, 4);
LB_ABI_FIELD_LP64(struct lb_prefix_cfg, flags, 16, 4);
LB_ABI_SIZE_LP64(struct lb_prefix_cfg, 20);

struct lb_prefix_result {
	uint32_t reused_tokens;   /* positions whose K and V came from the cache: p */
	uint32_t computed_tokens; /* positions computed: n - p */
	uint32_t blocks_found;    /* blocks of the hit */
	uint32_t blocks_inserted; /* new full blocks committed to the cache */
	uint64_t lease;           /* the hit's, held until lb_prefix_done (0: none) */
	int cache_error;          /* 0, or the error that made the run go on without the cache */
};
LB_ABI_FIELD_LP64(struct lb_prefix_result, reused_tokens, 0, 4);
LB_ABI_FIELD_LP64(struct lb_prefix_result, computed_tokens, 4, 4);
LB_ABI_FIELD_LP64(struct lb_prefix_result, blocks_found, 8, 4);
LB_ABI_FIELD_LP64(struct lb_prefix_result, blocks_inserted, 12, 4);
LB_ABI_FIELD_LP64(struct lb_prefix_result, lease, 16, 8);
LB_ABI_FIELD_LP64(struct lb_prefix_result, cache_error, 24, 4);
LB_ABI_SIZE_LP64(struct lb_prefix_result, 32);

/*
 * Prefill tokens[0..n), reusing the longest cached prefix (lb_prefix_cfg: the model as
 * registered; kv's kv_dim and block_tokens equal, its n_layers the registration's kv_layers,
 * at most cfg's):
 *  1. lb_block_keys, lb_lookup_prefix: the first p = min(found * block_tokens, n - 1) positions
 *     are cached (the last position is always computed: its output is what a caller wants).
 *  2. kv->block[i] = the cached block i for i < found, else own + i * block floats (own: the
 *     caller's memory for kv->n_blocks blocks; kv's geometry and array are the caller's too);
 *     compute(ctx, l, p, n, kv) for every layer.
 *  3. The full blocks from p / block_tokens on are inserted (lb_prefix_insert), unless
 *     cfg->flags has LB_PREFIX_DEFER_INSERT.
 * The hit's blocks stay readable through kv until lb_prefix_done, so that the caller can go on
 * decoding from them. c NULL runs plain (p = 0, nothing inserted), and so does the rest of a run
 * once a cache call fails with anything but a miss or a full cache (cache_error says which).
 * A prefix call on c waits for the daemon at least as long as computing one block took in the
 * client's earlier runs (a moving average, at most 1 s; at least lb_set_wait_us's wait): giving
 * up sooner costs more compute than waiting.
 * @return 0; -EINVAL (NULL arguments, n 0, n above kv->n_blocks blocks, a cfg unlike kv's);
 *         compute's error (the lease given back first).
 */
int lb_prefix_run(struct lb_client *c, const struct lb_prefix_cfg *cfg, const int32_t *tokens,
		  uint32_t n, float *own, struct lb_kv_view *kv, lb_prefix_fn compute, void *ctx,
		  struct lb_prefix_result *res);

/*
 * Insert the full blocks [first, n / block_tokens) of tokens[0..n) from kv (the caller's, or
 * cached: a cached block is skipped as -EEXIST), up to the first LB_PREFIX_MAX_BLOCKS of the
 * sequence (no lookup reaches further), each after its parent, through lb_insert_reserve
 * and lb_insert_block; -EEXIST, -ENOSPC and -EDQUOT skip a block (and, but for -EEXIST, those
 * after it: they would have no parent). For a sequence that grew (decoded tokens).
 * @return the blocks inserted; -EINVAL; another cache error (the caller goes on without it).
 */
int lb_prefix_insert(struct lb_client *c, const struct lb_prefix_cfg *cfg, const int32_t *tokens,
		     uint32_t n, const struct lb_kv_view *kv, uint32_t first);

/* End a run: give back the hit's lease (res->lease, then 0). Safe when there is none. */
void lb_prefix_done(struct lb_client *c, struct lb_prefix_result *res);

/* ---- the layer execution manager (LLMCache): reuse the deepest cached layer, insert the rest ---- */

/*
 * Compute one layer of the model for a whole input: in and out are [n][hidden] floats.
 * in may be a read-only view into the cache's arena, and in may equal out (a layer computed in
 * place): a callback whose math cannot work in place must use its own scratch.
 * @return 0, or a negative errno value, which lb_lem_run returns as is.
 */
typedef int (*lb_layer_fn)(void *ctx, uint32_t layer, const float *in, float *out);

/* Layer `layer` for the positions rows[0..n_rows) only (ascending, distinct, < n), given the
 * whole input in [n][hidden]: out [n_rows][hidden] gets what lb_layer_fn's out would hold at
 * those rows. Attention reads every position of in (a causal model's row p those up to p).
 * @return 0 or a negative errno. */
typedef int (*lb_rows_fn)(void *ctx, uint32_t layer, const float *in, uint32_t n,
			  const uint32_t *rows, uint32_t n_rows, float *out);

struct lb_lem_cfg {
	uint32_t model_id;             /* from lb_register_model (unused when c is NULL) */
	uint32_t n_layers;             /* 1..1024, as registered */
	uint32_t hidden;               /* as registered; entries are f32 [n][hidden] */
	uint32_t flags;                /* LB_LEM_* */
	const struct lb_fp_proj *proj; /* the fingerprint projection, width hidden */
	const float *tau;              /* n_layers lookup thresholds, or NULL: the daemon's */
	const uint8_t *cache_layers;   /* n_layers flags: insert layer l when nonzero; NULL: all */
	double revalidate;             /* 0..1: share of hits checked against the plain forward */
	uint64_t seed;                 /* of the revalidation draw, mixed with the input's hash */
};
LB_ABI_FIELD_LP64(struct lb_lem_cfg, model_id, 0, 4);
LB_ABI_FIELD_LP64(struct lb_lem_cfg, n_layers, 4, 4);
LB_ABI_FIELD_LP64(struct lb_lem_cfg, hidden, 8, 4);
LB_ABI_FIELD_LP64(struct lb_lem_cfg, flags, 12, 4);
LB_ABI_FIELD_LP64(struct lb_lem_cfg, proj, 16, 8);
LB_ABI_FIELD_LP64(struct lb_lem_cfg, tau, 24, 8);
LB_ABI_FIELD_LP64(struct lb_lem_cfg, cache_layers, 32, 8);
LB_ABI_FIELD_LP64(struct lb_lem_cfg, revalidate, 40, 8);
LB_ABI_FIELD_LP64(struct lb_lem_cfg, seed, 48, 8);
LB_ABI_SIZE_LP64(struct lb_lem_cfg, 56);
/* Look up without single-flight: never claim an input nor wait for another client's. */
#define LB_LEM_NO_SFLIGHT 1u
/* The run is a decoder's prefill that generation continues from: every layer passes through
 * compute or rows with the last position among the rows, so the callbacks see every layer's
 * input at every position (K and V for the decode). A hit on the same tokens is then reused
 * position by position too (exact, approx 0), never taken whole; a hit without token ids is
 * not used. Needs rows (lb_lem_run_rows). */
#define LB_LEM_CONTINUE 2u

struct lb_lem_result {
	int32_t hit_layer;        /* the layer whose cached output was reused; -1: a miss */
	uint32_t hit_hamming;     /* fingerprint distance of that hit */
	uint32_t layers_computed; /* layers of the forward pass run by compute */
	uint32_t layers_inserted; /* of those, handed to the cache (not waited for: see step 3) */
	uint32_t revalidated;     /* layers recomputed to check a reuse (not in layers_computed) */
	uint32_t reports;         /* REPORTs sent */
	int cache_error;          /* 0, or the error that made this run fall back to plain */
	uint32_t sflight;         /* LB_LEM_CLAIMED, LB_LEM_WAITED, LB_LEM_BUSY */
	uint32_t waited_us;       /* how long the lookup waited for another worker's claim */
	/* Partial reuse (lb_lem_run_rows), 0 otherwise: */
	uint32_t aligned;         /* positions aligned with the cached input's */
	uint32_t rows_computed;   /* positions computed at each reused layer */
	/* The share of the run's layer-positions (n_layers * n) taken from the cache, 0..1. */
	float reused;
};
LB_ABI_FIELD_LP64(struct lb_lem_result, hit_layer, 0, 4);
LB_ABI_FIELD_LP64(struct lb_lem_result, hit_hamming, 4, 4);
LB_ABI_FIELD_LP64(struct lb_lem_result, layers_computed, 8, 4);
LB_ABI_FIELD_LP64(struct lb_lem_result, layers_inserted, 12, 4);
LB_ABI_FIELD_LP64(struct lb_lem_result, revalidated, 16, 4);
LB_ABI_FIELD_LP64(struct lb_lem_result, reports, 20, 4);
LB_ABI_FIELD_LP64(struct lb_lem_result, cache_error, 24, 4);
LB_ABI_FIELD_LP64(struct lb_lem_result, sflight, 28, 4);
LB_ABI_FIELD_LP64(struct lb_lem_result, waited_us, 32, 4);
LB_ABI_FIELD_LP64(struct lb_lem_result, aligned, 36, 4);
LB_ABI_FIELD_LP64(struct lb_lem_result, rows_computed, 40, 4);
LB_ABI_FIELD_LP64(struct lb_lem_result, reused, 44, 4);
LB_ABI_SIZE_LP64(struct lb_lem_result, 48);
#define LB_LEM_CLAIMED 1u /* this run claimed the input: the others waited for its layers */
#define LB_LEM_WAITED 2u  /* its lookup waited for another worker computing the input */
#define LB_LEM_BUSY 4u    /* another worker computed the input at the same time (the wait ran
			   * out or could not be): this run computed it too */

/*
 * Run the layers of one input of n tokens, reusing what the cache holds:
 *  1. key = lb_fingerprint(h) + lb_token_hash(tokens) + n; lb_lookup_sflight with
 *     LB_SFLIGHT_CLAIM and LB_SFLIGHT_WAIT (single-flight; lb_lookup_deepest with
 *     LB_LEM_NO_SFLIGHT, or against a daemon that predates it): an input that another worker
 *     is computing right now is waited for, and its layers reused, rather than computed twice;
 *     an input nobody computes is claimed for the run (released once its layers are inserted,
 *     whatever happens to the run). The wait's bound, also the claim's: four times what
 *     computing the input took this client's recent runs (a moving average per layer and
 *     token) plus 50 ms, at most 10 s (10 s until a run has been measured). res->sflight and
 *     res->waited_us say what happened. Nothing is claimed when cache_layers selects no layer,
 *     and an in-process bank (one client) is asked plainly.
 *  2. On a hit at layer L (f32, [n][hidden], checked; anything else counts as a miss) the hit's
 *     arena view is the input of layer L + 1 (zero copy) and its lease is released as soon as
 *     layer L + 1 has read it. With probability revalidate (drawn per input and hit), the
 *     state reused at layer L (the hit's; a partial reuse's, as assembled there) is checked:
 *     layers 0..L recomputed from h in a copy, and their drift from it, lb_drift, sent with
 *     lb_report (the daemon's threshold controller learns from it); a partial reuse also
 *     sends, with lb_report_layer, the drift of each layer 1..L-1 it assembled. Not with LB_LEM_CONTINUE:
 *     a decoder's compute would replace the K and V the run serves.
 *  3. Layers L + 1 .. n_layers - 1 run through compute; a layer flagged in cache_layers is
 *     computed straight into lb_insert_reserve's staging and committed without waiting for the
 *     answer (the daemon copies it while the next layer is computed; each wait would be a
 *     round trip, a scheduler's time slice on a host whose cores the workers keep busy). Its
 *     refusals (-EEXIST, -ENOSPC, -EDQUOT) are not errors: the layer is just not cached. A later
 *     call on c (lb_ping, say) is served after them. Releases of leases are not waited for
 *     either.
 * A hit provides hidden states only, never a KV cache: a decoder's compute recomputes whatever
 * attention state the layers above the hit need (LB_LEM_CONTINUE: at every layer).
 * c NULL runs plain (every layer computed, nothing inserted). So does the rest of a run once
 * any lb_* call fails with something other than a miss (-ETIMEDOUT, -EPIPE, -ECONNRESET,
 * -ENOTCONN, -EPROTO, -ESRCH, -EBUSY, ...): the error is in res->cache_error, and the run still
 * succeeds. The manager keeps nothing between runs but, on c, the moving average of its
 * compute time (for single-flight's bound); c is used by this thread only.
 * h: [n][hidden]; in: the embedding layer's output; out: the last layer's output.
 * res may be NULL.
 * A revalidation that cannot get memory or its inputs is skipped.
 * @return 0; -EINVAL (NULL cfg, tokens, h or compute, n 0, n_layers or hidden 0 or too large,
 *         no proj while c is set, unknown flags, LB_LEM_CONTINUE without rows); compute's
 *         error (the lease, if any, released first).
 */
int lb_lem_run(struct lb_client *c, const struct lb_lem_cfg *cfg, const int32_t *tokens, uint32_t n,
	       float *h, lb_layer_fn compute, void *ctx, struct lb_lem_result *res);

/*
 * lb_lem_run, and partial reuse of a near input of any length (PROTOCOL.md, Ring protocol 16):
 *  - The lookup may find a cached input of another length or other tokens (LB_LOOKUP_ANY_LEN),
 *    deepest layer L >= 1. Its positions are aligned with the run's by a diff of the token ids
 *    (a longest common subsequence). Under half of the run's positions aligned, the hit is not
 *    used (another text, whatever its fingerprint): the run computes every layer.
 *  - Layer 0 is computed whole. The positions recomputed at layers 1..L: every edited one (not
 *    aligned), and the share `recompute` (0..1) of the aligned ones whose layer-0 state deviates
 *    most (1 - cosine) from the cached input's at the aligned position (CacheBlend's selective
 *    recompute). At each layer 1..L, rows computes those from the state below; every other
 *    position takes the cached input's output of that layer at its aligned position. Layers
 *    above L run through compute. Any cached layer 0..L - 1 missing ends the reuse there.
 *  - Approximate unless every position is recomputed: the inserts of layers 1 and up carry the
 *    hit's hamming as approx (layer 0 is exact). With recompute 1, or every position edited,
 *    the result is the plain forward pass's, bit for bit (rows must give what compute gives at
 *    those rows), and inserted as exact.
 *  - res->aligned, rows_computed and reused say what was reused.
 * Every insert of a run carries the input's token ids (lb_insert_commit_tokens) so that later
 * runs can align with it; lb_lem_run's too. A hit of the same tokens is reused whole, as by
 * lb_lem_run; so is one of the same length whose entry carries no token ids. Revalidation
 * applies to such whole hits only. rows NULL is lb_lem_run.
 * @return as lb_lem_run; -EINVAL also for recompute outside 0..1; rows' errors as compute's.
 */
int lb_lem_run_rows(struct lb_client *c, const struct lb_lem_cfg *cfg, const int32_t *tokens,
		    uint32_t n, float *h, lb_layer_fn compute, lb_rows_fn rows, double recompute,
		    void *ctx, struct lb_lem_result *res);

#ifdef __cplusplus
}
#endif
#endif
