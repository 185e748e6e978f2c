/* The plain peer layerbank is measured against (layerbank-worker --redis HOST:PORT): the deepest
 * layer's output of an input under its exact key in a Redis server, copied in and out over the
 * socket, as LMCache's Redis backend keeps KV chunks. No near-duplicates, no partial reuse. */
#ifndef LAYERBANK_WORKER_REDIS_CACHE_H
#define LAYERBANK_WORKER_REDIS_CACHE_H

#include <stddef.h>
#include <stdint.h>

/* What a value's header says, ahead of its payload ([seq_len][hidden] f32, the model's last
 * layer's output): all of it is checked against the input and the model before the payload is
 * used. Written in the host's byte order: a peer of another order fails the magic (a miss). */
#define LBW_REDIS_MAGIC 0x5257424cu /* "LBWR" */
#define LBW_REDIS_VERSION 1u
struct lbw_redis_hdr {
	uint32_t magic;       /* LBW_REDIS_MAGIC */
	uint32_t version;     /* LBW_REDIS_VERSION */
	uint64_t model;       /* the model's weights_hash */
	uint64_t exact[2];    /* lb_token_hash of the input */
	uint32_t seq_len;     /* tokens: the payload's rows */
	uint32_t hidden;      /* floats a row */
	uint32_t layer;       /* whose output: the model's last */
	uint32_t dtype;       /* LB_DTYPE_F32 */
	uint64_t checksum;    /* XXH64 (seed 0) of the payload */
};
_Static_assert(offsetof(struct lbw_redis_hdr, model) == 8, "lbw_redis_hdr.model");
_Static_assert(offsetof(struct lbw_redis_hdr, exact) == 16, "lbw_redis_hdr.exact");
_Static_assert(offsetof(struct lbw_redis_hdr, seq_len) == 32, "lbw_redis_hdr.seq_len");
_Static_assert(offsetof(struct lbw_redis_hdr, checksum) == 48, "lbw_redis_hdr.checksum");
_Static_assert(sizeof(struct lbw_redis_hdr) == 56, "lbw_redis_hdr size");

/* The model a peer's keys and headers name. */
struct lbw_redis_model {
	const char *name;      /* as the worker registers it with layerbankd (lbw_cache_open) */
	uint64_t weights_hash;
	uint32_t n_layers, hidden;
};

/* Owned by one thread, as its struct lbw_cache. */
struct lbw_redis_stats {
	uint64_t hits;    /* values used */
	uint64_t misses;  /* no value under the key */
	uint64_t refused; /* a value under the key that failed a check: a miss, never used */
	uint64_t stored;  /* SETs the server acknowledged */
	uint64_t errors;  /* commands that failed (the connection lost, an error reply) */
};

struct lbw_redis;

/*
 * Check addr, "HOST:PORT" (HOST a name, an IPv4 address or an IPv6 one in brackets; PORT
 * 1..65535), and connect to it (2 s to connect, 5 s a command).
 * @return the peer; NULL with errno EINVAL (a bad addr), ENOMEM, or EHOSTUNREACH (nothing
 * answered there), err saying why in one line.
 */
struct lbw_redis *lbw_redis_open(const char *addr, const struct lbw_redis_model *m, char *err,
				 size_t errlen);
/* NULL is fine. */
void lbw_redis_close(struct lbw_redis *r);

/*
 * GET the deepest layer's output of tokens[0..n) into h [n][hidden].
 * @return 1 a hit (h written); 0 a miss: no value, or one that failed a check (counted as
 * refused; h untouched); -EIO the command failed (counted; the connection is made again at the
 * next call).
 */
int lbw_redis_get(struct lbw_redis *r, const int32_t *tokens, uint32_t n, float *h);

/* SET h [n][hidden], the deepest layer's output of tokens[0..n), with its header.
 * @return 0; -ENOMEM; -EIO the command failed (counted, as lbw_redis_get's). */
int lbw_redis_put(struct lbw_redis *r, const int32_t *tokens, uint32_t n, const float *h);

const struct lbw_redis_stats *lbw_redis_stats(const struct lbw_redis *r);

#endif
