/* layerbank rings: the per-client shared region (request ring, completion ring, staging) and
 * the single-producer single-consumer ring both sides compile against. Part of the ABI.
 *
 * Trust: the region is writable by the client, so the daemon treats every byte of it as
 * hostile. Each side keeps its own private copy of the layout (struct lb_ring_view) and never
 * re-reads sizes or offsets from shared memory; the shared words a side reads are the entries
 * (with their stamps), the consumer's index and the doorbell. Never an index to address with. */
#ifndef LAYERBANK_RING_H
#define LAYERBANK_RING_H

#include <errno.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "layerbank/shm.h"

#define LB_CACHE_LINE 64u
#define LB_RING_ENTRY_SIZE 64u
#define LB_RING_MIN_ENTRIES 8u
#define LB_RING_MAX_ENTRIES 65536u
#define LB_REGION_MAGIC 0x4e4f494745524c42ULL /* bytes "BLREGION" in memory */

/*
 * The shared part of one ring. The producer writes only prod and doorbell; the consumer writes
 * only cons and sleeping. Entries follow at LB_RING_HDR_SIZE.
 */
struct lb_ring_shared {
	_Alignas(LB_CACHE_LINE) _Atomic uint32_t prod; /* producer's line: next slot to fill */
	uint8_t pad0[LB_CACHE_LINE - sizeof(uint32_t)];
	_Alignas(LB_CACHE_LINE) _Atomic uint32_t cons; /* consumer's line: next slot to take */
	uint8_t pad1[LB_CACHE_LINE - sizeof(uint32_t)];
	/* The doorbell line is written only around a sleep, so the producer's check of
	 * `sleeping` after every push reads a line that stays in its cache. */
	_Alignas(LB_CACHE_LINE) _Atomic uint32_t doorbell; /* futex word, bumped by a wake */
	_Atomic uint32_t sleeping;                         /* 1 while the consumer may sleep */
	uint8_t pad2[LB_CACHE_LINE - 2 * sizeof(uint32_t)];
};
LB_ABI_FIELD(struct lb_ring_shared, prod, 0, 4);
LB_ABI_FIELD(struct lb_ring_shared, pad0, 4, 60);
LB_ABI_FIELD(struct lb_ring_shared, cons, 64, 4);
LB_ABI_FIELD(struct lb_ring_shared, pad1, 68, 60);
LB_ABI_FIELD(struct lb_ring_shared, doorbell, 128, 4);
LB_ABI_FIELD(struct lb_ring_shared, sleeping, 132, 4);
LB_ABI_FIELD(struct lb_ring_shared, pad2, 136, 56);
#define LB_RING_HDR_SIZE (3u * LB_CACHE_LINE)
_Static_assert(sizeof(struct lb_ring_shared) == LB_RING_HDR_SIZE, "abi");
_Static_assert(sizeof(_Atomic uint32_t) == 4 && _Alignof(_Atomic uint32_t) == 4, "abi");

/* ---- ring entries ---- */

enum lb_op {
	LB_OP_PING = 1,
	LB_OP_LOOKUP_DEEPEST = 2, /* payload: struct lb_query */
	LB_OP_LOOKUP = 3,         /* payload: struct lb_query; layer: the one layer asked */
	LB_OP_INSERT = 4,         /* payload: struct lb_insert_hdr, then the bytes */
	LB_OP_RELEASE = 5,        /* lease: the one to end */
	LB_OP_REPORT = 6,         /* lease: the entry reused; aux: drift as float bits */
	LB_OP_LOOKUP_PREFIX = 7,  /* payload: struct lb_prefix_query, then the block keys */
	LB_OP_INSERT_BLOCK = 8,   /* payload: struct lb_block_hdr, then the bytes */
};
#define LB_OP_MIN LB_OP_PING
#define LB_OP_MAX LB_OP_INSERT_BLOCK

/*
 * Request flags, LOOKUP_DEEPEST only (single-flight, PROTOCOL.md Ring protocol 15); every other
 * opcode takes none. With either, aux is the bound in microseconds, 1..LB_SFLIGHT_MAX_US: how
 * long a claim taken lives at most, and how long the request may be held.
 */
#define LB_REQ_CLAIM 0x01u /* a miss of an input nobody computes: claim it (cpl.claim) */
#define LB_REQ_WAIT 0x02u  /* another client claims the input: hold the lookup until it ends */
/* the daemon fetches the input from its second tier: hold the lookup until that ends
 * (PROTOCOL.md, Second tier, 4) */
#define LB_REQ_TIER 0x10u
#define LB_REQ_SFLIGHT (LB_REQ_CLAIM | LB_REQ_WAIT | LB_REQ_TIER)
/* LOOKUP_DEEPEST and LOOKUP (PROTOCOL.md, Ring protocol 16): a cached input of another length may
 * answer, if the entry found carries its token ids (for the client to align them with its own);
 * without the flag only an input of seq_len tokens does. */
#define LB_REQ_ANY_LEN 0x04u
/* REPORT (PROTOCOL.md, Ring protocol 10): the drift is of layer `layer`, at most the leased
 * entry's, of the same cached input reused to that depth; without the flag `layer` is 0 and the
 * drift is of the entry's own layer. */
#define LB_REQ_AT_LAYER 0x08u
#define LB_SFLIGHT_MAX_US 10000000u

/* Request: client -> daemon. Every field is checked by the daemon on its own copy. */
struct lb_req {
	uint8_t opcode;      /* enum lb_op */
	uint8_t flags;       /* LB_REQ_*: LOOKUP_DEEPEST (all but AT_LAYER), LOOKUP (ANY_LEN),
			      * REPORT (AT_LAYER); else 0 */
	uint16_t layer;      /* LOOKUP, INSERT, REPORT with AT_LAYER: layer index; else 0 */
	uint32_t model_id;   /* from lb_register_model; 0 for PING, RELEASE, REPORT */
	uint64_t user_data;  /* echoed in the completion */
	uint32_t seq_len;    /* LOOKUP*, INSERT: tokens in the input */
	uint32_t aux;        /* REPORT: drift (float bits); LB_REQ_* set: the bound, us */
	uint64_t lease;      /* RELEASE, REPORT: a lease from a hit or an insert */
	uint32_t payload_off; /* offset of the payload inside the staging buffer */
	uint32_t payload_len; /* bytes of payload; 0 when the opcode has none */
	uint64_t reserved[2]; /* must be 0 */
	uint32_t reserved2;   /* must be 0 */
	uint32_t stamp;       /* the ring's (LB_RING_STAMP_OFF): not part of the message */
};
LB_ABI_FIELD(struct lb_req, opcode, 0, 1);
LB_ABI_FIELD(struct lb_req, flags, 1, 1);
LB_ABI_FIELD(struct lb_req, layer, 2, 2);
LB_ABI_FIELD(struct lb_req, model_id, 4, 4);
LB_ABI_FIELD(struct lb_req, user_data, 8, 8);
LB_ABI_FIELD(struct lb_req, seq_len, 16, 4);
LB_ABI_FIELD(struct lb_req, aux, 20, 4);
LB_ABI_FIELD(struct lb_req, lease, 24, 8);
LB_ABI_FIELD(struct lb_req, payload_off, 32, 4);
LB_ABI_FIELD(struct lb_req, payload_len, 36, 4);
LB_ABI_FIELD(struct lb_req, reserved, 40, 16);
LB_ABI_FIELD(struct lb_req, reserved2, 56, 4);
LB_ABI_FIELD(struct lb_req, stamp, 60, 4);
_Static_assert(sizeof(struct lb_req) == LB_RING_ENTRY_SIZE, "abi");

/* Completion: daemon -> client. */
struct lb_cpl {
	uint64_t user_data;  /* from the request */
	int32_t status;      /* 0 hit/done, -ENOENT miss, other -errno for a refused request */
	uint8_t opcode;
	uint8_t arena;       /* hit/insert: the arena, by its WELCOME index (lb_arena_base) */
	uint16_t layer;      /* hit: the layer found (deepest for LOOKUP_DEEPEST) */
	uint64_t lease;      /* hit: lease to RELEASE; 0 otherwise (an insert holds none) */
	uint64_t entry_off;  /* hit/insert: offset of struct lb_entry_hdr in the arena */
	uint32_t hamming;    /* hit: fingerprint distance to the entry (0 for an exact match) */
	uint32_t count;      /* LOOKUP_PREFIX hit: blocks found, written to the payload */
	/* LOOKUP_DEEPEST with LB_REQ_* flags only (0 otherwise): */
	uint64_t claim;      /* a claim this lookup took (a handle like a lease: RELEASE it); 0 */
	uint32_t waited_us;  /* held this long for another client's claim */
	uint32_t sflight;    /* LB_CPL_WAITED, LB_CPL_BUSY */
	uint32_t reserved1;
	uint32_t stamp;      /* the ring's (LB_RING_STAMP_OFF) */
};
LB_ABI_FIELD(struct lb_cpl, user_data, 0, 8);
LB_ABI_FIELD(struct lb_cpl, status, 8, 4);
LB_ABI_FIELD(struct lb_cpl, opcode, 12, 1);
LB_ABI_FIELD(struct lb_cpl, arena, 13, 1);
LB_ABI_FIELD(struct lb_cpl, layer, 14, 2);
LB_ABI_FIELD(struct lb_cpl, lease, 16, 8);
LB_ABI_FIELD(struct lb_cpl, entry_off, 24, 8);
LB_ABI_FIELD(struct lb_cpl, hamming, 32, 4);
LB_ABI_FIELD(struct lb_cpl, count, 36, 4);
LB_ABI_FIELD(struct lb_cpl, claim, 40, 8);
LB_ABI_FIELD(struct lb_cpl, waited_us, 48, 4);
LB_ABI_FIELD(struct lb_cpl, sflight, 52, 4);
LB_ABI_FIELD(struct lb_cpl, reserved1, 56, 4);
LB_ABI_FIELD(struct lb_cpl, stamp, 60, 4);
_Static_assert(sizeof(struct lb_cpl) == LB_RING_ENTRY_SIZE, "abi");
#define LB_CPL_WAITED 0x01u /* the lookup was held for another client's claim */
#define LB_CPL_BUSY 0x02u   /* answered while another client's claim on the input was live */

#define LB_FP_WORDS 4 /* 256-bit SimHash */
#define LB_MAX_NDIM 4

/* Lookup payload, in staging. thr[] follows: n_thr floats (per-layer similarity thresholds,
 * layer 0 first); n_thr == 0 uses the daemon's thresholds. */
struct lb_query {
	uint64_t fp[LB_FP_WORDS]; /* SimHash of the input (lb_fingerprint) */
	uint64_t exact[2];        /* XXH3-128 of the token ids (lb_token_hash) */
	uint32_t n_thr;           /* 0, or the model's n_layers */
	uint32_t reserved;        /* 0 */
	/* float thr[n_thr]; */
};
LB_ABI_FIELD(struct lb_query, fp, 0, 32);
LB_ABI_FIELD(struct lb_query, exact, 32, 16);
LB_ABI_FIELD(struct lb_query, n_thr, 48, 4);
LB_ABI_FIELD(struct lb_query, reserved, 52, 4);
_Static_assert(sizeof(struct lb_query) == 56, "abi");

/* Insert payload, in staging: this header, then bytes of data (64-byte aligned start), then
 * n_tokens token ids (int32) at lb_tokens_off(bytes) from the data's start. */
struct lb_insert_hdr {
	uint64_t fp[LB_FP_WORDS];
	uint64_t exact[2];
	uint32_t dtype;             /* enum lb_dtype */
	uint32_t ndim;              /* 1..LB_MAX_NDIM */
	uint32_t shape[LB_MAX_NDIM]; /* unused dims 0; product * dtype size == bytes */
	uint64_t bytes;
	/* Upper bound, in fingerprint bits (0..LB_FP_BITS), of how far these data may be from an
	 * exact computation of the input: 0 when computed exactly, else the distance of the
	 * approximate reuse (a hit's hamming) they were computed on. */
	uint32_t approx;
	/* 0, or seq_len: the input's token ids follow the data, and must hash to exact. They let a
	 * lookup of another length (LB_REQ_ANY_LEN) find the entry and align with its positions. */
	uint32_t n_tokens;
};
LB_ABI_FIELD(struct lb_insert_hdr, fp, 0, 32);
LB_ABI_FIELD(struct lb_insert_hdr, exact, 32, 16);
LB_ABI_FIELD(struct lb_insert_hdr, dtype, 48, 4);
LB_ABI_FIELD(struct lb_insert_hdr, ndim, 52, 4);
LB_ABI_FIELD(struct lb_insert_hdr, shape, 56, 16);
LB_ABI_FIELD(struct lb_insert_hdr, bytes, 72, 8);
LB_ABI_FIELD(struct lb_insert_hdr, approx, 80, 4);
LB_ABI_FIELD(struct lb_insert_hdr, n_tokens, 84, 4);
_Static_assert(sizeof(struct lb_insert_hdr) == 88, "abi");
#define LB_INSERT_HDR_SIZE 128u /* data starts here, cache-line aligned */
_Static_assert(sizeof(struct lb_insert_hdr) <= LB_INSERT_HDR_SIZE, "abi");

/* ---- prefix blocks (causal models): the K and V of every layer for block_tokens positions,
 * keyed by a chained hash of the tokens up to the block's end (PROTOCOL.md, Ring protocol 14) */

#define LB_PREFIX_MAX_BLOCKS 256u /* keys of one LOOKUP_PREFIX */

/* LOOKUP_PREFIX payload, in staging: this header, then n_keys keys of 16 bytes (key[0], key[1]),
 * block 0 first. The daemon answers in place: for each block found, a struct lb_prefix_block
 * over its key (the client's staging is its to write while the request is in flight). */
struct lb_prefix_query {
	uint32_t n_keys;   /* 1..LB_PREFIX_MAX_BLOCKS */
	uint32_t reserved; /* 0 */
	/* uint64_t key[n_keys][2]; */
};
LB_ABI_FIELD(struct lb_prefix_query, n_keys, 0, 4);
LB_ABI_FIELD(struct lb_prefix_query, reserved, 4, 4);
_Static_assert(sizeof(struct lb_prefix_query) == 8, "abi");

struct lb_prefix_block {
	uint64_t entry_off; /* of the block's struct lb_entry_hdr */
	uint32_t arena;     /* its arena, by its WELCOME index (lb_arena_base) */
	uint32_t reserved;  /* 0 */
};
LB_ABI_FIELD(struct lb_prefix_block, entry_off, 0, 8);
LB_ABI_FIELD(struct lb_prefix_block, arena, 8, 4);
LB_ABI_FIELD(struct lb_prefix_block, reserved, 12, 4);
_Static_assert(sizeof(struct lb_prefix_block) == 16, "abi: one per key, in its place");

/* INSERT_BLOCK payload, in staging: this header in LB_INSERT_HDR_SIZE bytes, then the data:
 * f32 (the model's dtype) [n_layers][2][block_tokens][kv_dim], K then V of each layer. */
struct lb_block_hdr {
	uint64_t key[2];    /* the block's chained key */
	uint64_t parent[2]; /* the previous block's key; 0, 0 for block 0 */
	uint32_t index;     /* the block's place in the chain: 0 first */
	uint32_t dtype;     /* enum lb_dtype: the model's */
	uint32_t ndim;      /* 4 */
	uint32_t shape[LB_MAX_NDIM]; /* n_layers, 2, block_tokens, kv_dim: the model's */
	uint32_t reserved;  /* 0 */
	uint64_t bytes;     /* product of shape times the dtype's size */
};
LB_ABI_FIELD(struct lb_block_hdr, key, 0, 16);
LB_ABI_FIELD(struct lb_block_hdr, parent, 16, 16);
LB_ABI_FIELD(struct lb_block_hdr, index, 32, 4);
LB_ABI_FIELD(struct lb_block_hdr, dtype, 36, 4);
LB_ABI_FIELD(struct lb_block_hdr, ndim, 40, 4);
LB_ABI_FIELD(struct lb_block_hdr, shape, 44, 16);
LB_ABI_FIELD(struct lb_block_hdr, reserved, 60, 4);
LB_ABI_FIELD(struct lb_block_hdr, bytes, 64, 8);
_Static_assert(sizeof(struct lb_block_hdr) == 72, "abi");
_Static_assert(sizeof(struct lb_block_hdr) <= LB_INSERT_HDR_SIZE, "abi");

/*
 * In the arena before each entry's data: written by the daemon, read-only for clients. The
 * daemon writes the data and every other field first and the magic last (E1 in its
 * entry_publish); a reader checks the magic with lb_entry_live before it trusts the rest. The
 * fields do not change while the magic stands; it is cleared (E3) before the block is freed,
 * which never happens while a lease on the entry is held.
 */
struct lb_entry_hdr {
	uint64_t magic;              /* LB_ENTRY_MAGIC while the entry is live */
	uint32_t model_id;
	uint16_t layer;
	uint16_t dtype;
	uint32_t seq_len;
	uint32_t ndim;
	uint32_t shape[LB_MAX_NDIM];
	uint64_t bytes;              /* data bytes after this header */
	uint64_t checksum;           /* XXH3-64 of the data, computed on the arena copy */
	uint64_t key[2];             /* the input's token hash; a block's chained key */
	uint32_t approx;             /* the insert's approx: 0 exact (always for a block) */
	uint32_t n_tokens;           /* 0, or seq_len: its token ids at lb_tokens_off(bytes) */
};
LB_ABI_FIELD(struct lb_entry_hdr, magic, 0, 8);
LB_ABI_FIELD(struct lb_entry_hdr, model_id, 8, 4);
LB_ABI_FIELD(struct lb_entry_hdr, layer, 12, 2);
LB_ABI_FIELD(struct lb_entry_hdr, dtype, 14, 2);
LB_ABI_FIELD(struct lb_entry_hdr, seq_len, 16, 4);
LB_ABI_FIELD(struct lb_entry_hdr, ndim, 20, 4);
LB_ABI_FIELD(struct lb_entry_hdr, shape, 24, 16);
LB_ABI_FIELD(struct lb_entry_hdr, bytes, 40, 8);
LB_ABI_FIELD(struct lb_entry_hdr, checksum, 48, 8);
LB_ABI_FIELD(struct lb_entry_hdr, key, 56, 16);
LB_ABI_FIELD(struct lb_entry_hdr, approx, 72, 4);
LB_ABI_FIELD(struct lb_entry_hdr, n_tokens, 76, 4);
#define LB_ENTRY_MAGIC 0x5952544e45424cULL /* "LBENTRY" */
#define LB_ENTRY_LAYER_BLOCK 0xffffu        /* layer of a prefix block entry */
#define LB_ENTRY_HDR_SIZE 128u
_Static_assert(sizeof(struct lb_entry_hdr) == 80, "abi");
_Static_assert(sizeof(struct lb_entry_hdr) <= LB_ENTRY_HDR_SIZE, "abi");
_Static_assert(sizeof(_Atomic uint64_t) == 8 && _Alignof(_Atomic uint64_t) == 8, "abi");

/* Where an entry's (or an insert's) token ids start, in bytes from its data's start: after the
 * data, 4-byte aligned. */
static inline uint64_t lb_tokens_off(uint64_t bytes)
{
	return (bytes + 3) & ~(uint64_t)3;
}

/* The magic as the atomic word both sides treat it as (entry headers are 64-byte aligned). */
static inline _Atomic uint64_t *lb_entry_magic(const struct lb_entry_hdr *h)
{
	return (_Atomic uint64_t *)(uintptr_t)&h->magic;
}

/* Reader: is the entry at h live? When true, its header and data are there to read. */
static inline bool lb_entry_live(const struct lb_entry_hdr *h)
{
	/* E2: pairs with E1 in the daemon's entry_publish (and sees E3's clearing). */
	return atomic_load_explicit(lb_entry_magic(h), memory_order_acquire) == LB_ENTRY_MAGIC;
}

/* ---- region layout ---- */

/* At offset 0 of a client region; written by the daemon before the fd is passed. Either side
 * computes the same layout from (req_entries, cpl_entries, staging_bytes) with
 * lb_region_layout and must not trust these fields once the client runs. */
struct lb_region_hdr {
	uint64_t magic;         /* LB_REGION_MAGIC */
	uint32_t abi_version;   /* LB_SHM_ABI_VERSION */
	uint32_t hdr_size;      /* sizeof(struct lb_region_hdr) */
	uint64_t region_bytes;
	uint32_t req_entries;   /* power of two */
	uint32_t cpl_entries;   /* power of two */
	uint64_t req_off;       /* struct lb_ring_shared, then req_entries entries */
	uint64_t cpl_off;
	uint64_t staging_off;   /* 4096-aligned */
	uint64_t staging_bytes; /* multiple of 4096 */
};
LB_ABI_FIELD(struct lb_region_hdr, magic, 0, 8);
LB_ABI_FIELD(struct lb_region_hdr, abi_version, 8, 4);
LB_ABI_FIELD(struct lb_region_hdr, hdr_size, 12, 4);
LB_ABI_FIELD(struct lb_region_hdr, region_bytes, 16, 8);
LB_ABI_FIELD(struct lb_region_hdr, req_entries, 24, 4);
LB_ABI_FIELD(struct lb_region_hdr, cpl_entries, 28, 4);
LB_ABI_FIELD(struct lb_region_hdr, req_off, 32, 8);
LB_ABI_FIELD(struct lb_region_hdr, cpl_off, 40, 8);
LB_ABI_FIELD(struct lb_region_hdr, staging_off, 48, 8);
LB_ABI_FIELD(struct lb_region_hdr, staging_bytes, 56, 8);
_Static_assert(sizeof(struct lb_region_hdr) == 64, "abi");

/* Fill h's sizes and offsets; @return region bytes, 0 when an argument is out of range. */
static inline uint64_t lb_region_layout(struct lb_region_hdr *h, uint32_t req_entries,
					uint32_t cpl_entries, uint64_t staging_bytes)
{
	uint64_t off = 4096;
	if (req_entries < LB_RING_MIN_ENTRIES || req_entries > LB_RING_MAX_ENTRIES ||
	    (req_entries & (req_entries - 1)) || cpl_entries < LB_RING_MIN_ENTRIES ||
	    cpl_entries > LB_RING_MAX_ENTRIES || (cpl_entries & (cpl_entries - 1)) ||
	    staging_bytes % 4096 || staging_bytes > (1ull << 32))
		return 0;
	memset(h, 0, sizeof(*h));
	h->magic = LB_REGION_MAGIC;
	h->abi_version = LB_SHM_ABI_VERSION;
	h->hdr_size = sizeof(*h);
	h->req_entries = req_entries;
	h->cpl_entries = cpl_entries;
	h->req_off = off;
	off += LB_RING_HDR_SIZE + (uint64_t)req_entries * LB_RING_ENTRY_SIZE;
	off = (off + 4095) & ~4095ull;
	h->cpl_off = off;
	off += LB_RING_HDR_SIZE + (uint64_t)cpl_entries * LB_RING_ENTRY_SIZE;
	off = (off + 4095) & ~4095ull;
	h->staging_off = off;
	h->staging_bytes = staging_bytes;
	h->region_bytes = off + staging_bytes;
	return h->region_bytes;
}

/* ---- one side's private view of a ring ---- */

/* Owned by the one thread that produces (or consumes) on this ring. */
struct lb_ring_view {
	struct lb_ring_shared *sh;
	uint8_t *entries; /* [mask + 1][LB_RING_ENTRY_SIZE] */
	uint32_t mask;
	uint32_t local;   /* producer: our prod; consumer: our cons (never read back from sh) */
	uint32_t cached;  /* producer: last cons seen */
};
LB_ABI_FIELD_LP64(struct lb_ring_view, sh, 0, 8);
LB_ABI_FIELD_LP64(struct lb_ring_view, entries, 8, 8);
LB_ABI_FIELD_LP64(struct lb_ring_view, mask, 16, 4);
LB_ABI_FIELD_LP64(struct lb_ring_view, local, 20, 4);
LB_ABI_FIELD_LP64(struct lb_ring_view, cached, 24, 4);
LB_ABI_SIZE_LP64(struct lb_ring_view, 32);

static inline void lb_ring_view_init(struct lb_ring_view *v, void *ring, uint32_t entries)
{
	v->sh = (struct lb_ring_shared *)ring;
	v->entries = (uint8_t *)ring + LB_RING_HDR_SIZE;
	v->mask = entries - 1;
	v->local = 0;
	v->cached = 0;
}

/* Producer: room for one more entry? Reads the consumer's index only when the cached one says
 * full. */
static inline bool lb_ring_sp_space(struct lb_ring_view *v)
{
	if (v->local - v->cached > v->mask)
		/* A1: pairs with R1 in lb_ring_sc_release. */
		v->cached = atomic_load_explicit(&v->sh->cons, memory_order_acquire);
	return v->local - v->cached <= v->mask;
}

/*
 * Each slot's last 4 bytes are the ring's stamp: the producer writes the entry, then the stamp
 * of its index with release; the consumer finds the next entry ready when that slot carries
 * the stamp of the index it expects. So the consumer learns of an entry from the entry's own
 * cache line and never reads `prod` (a line fewer to move between cores per message), and a
 * hostile producer index cannot mislead it. A stamp is never 0 (a fresh, zeroed slot) and
 * differs between laps: the index with its low bit set, as ring sizes are even.
 */
#define LB_RING_STAMP_OFF 60u
static inline uint32_t lb_ring_stamp(uint32_t index)
{
	return index | 1u;
}

static inline _Atomic uint32_t *lb_ring_slot_stamp(const struct lb_ring_view *v, uint32_t index)
{
	return (_Atomic uint32_t *)(v->entries + (size_t)(index & v->mask) * LB_RING_ENTRY_SIZE +
				    LB_RING_STAMP_OFF);
}

/* Producer: copy one 64-byte entry in (its stamp bytes are ignored). @return false when the
 * ring is full. */
static inline bool lb_ring_sp_push(struct lb_ring_view *v, const void *entry)
{
	/* A corrupt cons (hostile peer) can only make the ring look full: the distance is
	 * checked, and we never index with it. */
	if (!lb_ring_sp_space(v))
		return false;
	memcpy(v->entries + (size_t)(v->local & v->mask) * LB_RING_ENTRY_SIZE, entry,
	       LB_RING_STAMP_OFF);
	/* R2: pairs with A2 in lb_ring_sc_peek: the entry is written before its stamp. */
	atomic_store_explicit(lb_ring_slot_stamp(v, v->local), lb_ring_stamp(v->local),
			      memory_order_release);
	v->local++;
	/* For observers only (tools, tests): no consumer waits on it. */
	atomic_store_explicit(&v->sh->prod, v->local, memory_order_relaxed);
	return true;
}

/* Consumer: 1 when the next entry is ready, else 0. */
static inline int64_t lb_ring_sc_peek(const struct lb_ring_view *v)
{
	/* A2: pairs with R2 in lb_ring_sp_push. */
	return atomic_load_explicit(lb_ring_slot_stamp(v, v->local), memory_order_acquire) ==
	       lb_ring_stamp(v->local);
}

/* Consumer: copy the oldest ready entry out (call lb_ring_sc_peek first). Copying before use
 * is what makes the entry immune to a producer that rewrites it afterwards. */
static inline void lb_ring_sc_copy(const struct lb_ring_view *v, void *out)
{
	memcpy(out, v->entries + (size_t)(v->local & v->mask) * LB_RING_ENTRY_SIZE,
	       LB_RING_ENTRY_SIZE);
}

/* Consumer: hand the oldest slot back to the producer. */
static inline void lb_ring_sc_release(struct lb_ring_view *v)
{
	v->local++;
	/* R1: pairs with A1 in lb_ring_sp_space. */
	atomic_store_explicit(&v->sh->cons, v->local, memory_order_release);
}

/* Consumer: pop one entry. @return 1, or 0 when empty. */
static inline int lb_ring_sc_pop(struct lb_ring_view *v, void *out)
{
	if (!lb_ring_sc_peek(v))
		return 0;
	lb_ring_sc_copy(v, out);
	lb_ring_sc_release(v);
	return 1;
}

/* ---- doorbell ---- */

static inline long lb_futex(_Atomic uint32_t *word, int op, uint32_t val, const struct timespec *ts)
{
	/* Not FUTEX_PRIVATE_FLAG: the word is shared between processes. */
	return syscall(SYS_futex, (uint32_t *)word, op, val, ts, NULL, 0);
}

/* Producer, after pushing: wake the consumer only if it said it may sleep. */
static inline void lb_ring_sp_wake(struct lb_ring_view *v)
{
	/* F1: pairs with F2 in lb_ring_sc_wait: either the consumer sees our stamp, or we see its
	 * sleeping flag (store-load ordering needs a full fence on both sides). */
	atomic_thread_fence(memory_order_seq_cst);
	if (atomic_load_explicit(&v->sh->sleeping, memory_order_relaxed)) {
		/* R3: pairs with A3 in lb_ring_sc_wait: a consumer whose doorbell snapshot sees
		 * this bump also sees the entry pushed before it. */
		atomic_fetch_add_explicit(&v->sh->doorbell, 1, memory_order_release);
		lb_futex(&v->sh->doorbell, FUTEX_WAKE, 1, NULL);
	}
}

static inline void lb_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

#define LB_SPIN_CHECK 32u /* polls between looks at the clock while spinning */

static inline uint64_t lb_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/*
 * Consumer: wait until an entry is ready: spin spin_ns, then sleep on the doorbell for at most
 * timeout_ns (0: no limit). @return 1 when ready, 0 on time-out.
 */
static inline int64_t lb_ring_sc_wait(struct lb_ring_view *v, uint64_t spin_ns, uint64_t timeout_ns)
{
	uint64_t start = lb_now_ns(), now;
	int64_t n;

	/* Look at the clock once per LB_SPIN_CHECK polls: reading it costs as much as a poll,
	 * and every poll it delays is latency added to the round trip. */
	for (unsigned i = 1;; i++) {
		n = lb_ring_sc_peek(v);
		if (n != 0)
			return n;
		if (spin_ns == 0 || (i % LB_SPIN_CHECK == 0 && lb_now_ns() - start >= spin_ns))
			break;
		lb_cpu_relax();
	}
	for (;;) {
		/* A3: pairs with R3 in lb_ring_sp_wake. */
		uint32_t bell = atomic_load_explicit(&v->sh->doorbell, memory_order_acquire);
		atomic_store_explicit(&v->sh->sleeping, 1, memory_order_relaxed);
		/* F2: pairs with F1 in lb_ring_sp_wake. */
		atomic_thread_fence(memory_order_seq_cst);
		n = lb_ring_sc_peek(v);
		if (n == 0) {
			struct timespec ts, *tsp = NULL;
			now = lb_now_ns();
			if (timeout_ns) {
				if (now - start >= timeout_ns) {
					atomic_store_explicit(&v->sh->sleeping, 0, memory_order_relaxed);
					return 0;
				}
				uint64_t left = timeout_ns - (now - start);
				ts.tv_sec = (time_t)(left / 1000000000ull);
				ts.tv_nsec = (long)(left % 1000000000ull);
				tsp = &ts;
			}
			lb_futex(&v->sh->doorbell, FUTEX_WAIT, bell, tsp);
			n = lb_ring_sc_peek(v);
		}
		atomic_store_explicit(&v->sh->sleeping, 0, memory_order_relaxed);
		if (n != 0)
			return n;
	}
}

#endif
