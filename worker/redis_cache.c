/* The plain Redis peer: an input's exact key, its deepest layer's output as one value behind a
 * checked header, GET before the forward pass and SET after it, one synchronous connection. */
#include "redis_cache.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "layerbank/layerbank.h"

#define CONNECT_TIMEOUT_S 2
#define COMMAND_TIMEOUT_S 5
#define HOST_MAX 255
/* "lbw1:" NAME ":" weights_hash ":" n ":" the token hash: 5 + 63 + 1 + 16 + 1 + 10 + 1 + 32 */
#define KEY_MAX 160

struct lbw_redis {
	redisContext *ctx;          /* NULL after a failed command, until the next call */
	char host[HOST_MAX + 1];
	int port;
	char name[LB_NAME_MAX + 1];
	uint64_t weights_hash;
	uint32_t n_layers, hidden;
	struct lbw_redis_stats st;
};

/* "HOST:PORT" into host and *port. @return 0, or -1. */
static int parse_addr(const char *addr, char *host, int *port)
{
	const char *colon = strrchr(addr, ':');
	if (!colon || colon == addr)
		return -1;
	const char *h = addr;
	size_t hl = (size_t)(colon - addr);
	if (h[0] == '[') { /* an IPv6 address: [::1]:6379 */
		if (hl < 3 || h[hl - 1] != ']')
			return -1;
		h++;
		hl -= 2;
	} else if (memchr(h, ':', hl) || memchr(h, ']', hl)) {
		return -1;
	}
	if (hl > HOST_MAX || memchr(h, ' ', hl) || memchr(h, '/', hl))
		return -1;
	char *end;
	errno = 0;
	long p = strtol(colon + 1, &end, 10);
	if (errno || end == colon + 1 || *end || colon[1] == '+' || colon[1] == '-' || p < 1 ||
	    p > 65535)
		return -1;
	memcpy(host, h, hl);
	host[hl] = '\0';
	*port = (int)p;
	return 0;
}

/* Connect r->ctx. @return 0; -EHOSTUNREACH with err saying why; -ENOMEM. */
static int dial(struct lbw_redis *r, char *err, size_t errlen)
{
	struct timeval tc = { CONNECT_TIMEOUT_S, 0 }, tcmd = { COMMAND_TIMEOUT_S, 0 };
	r->ctx = redisConnectWithTimeout(r->host, r->port, tc);
	if (!r->ctx) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	if (r->ctx->err || redisSetTimeout(r->ctx, tcmd) != REDIS_OK) {
		snprintf(err, errlen, "cannot reach Redis at %s:%d: %s", r->host, r->port,
			 r->ctx->err ? r->ctx->errstr : "cannot set the command timeout");
		redisFree(r->ctx);
		r->ctx = NULL;
		return -EHOSTUNREACH;
	}
	return 0;
}

struct lbw_redis *lbw_redis_open(const char *addr, const struct lbw_redis_model *m, char *err,
				 size_t errlen)
{
	struct lbw_redis *r = calloc(1, sizeof(*r));
	if (!r) {
		snprintf(err, errlen, "out of memory");
		errno = ENOMEM;
		return NULL;
	}
	if (parse_addr(addr, r->host, &r->port) < 0) {
		snprintf(err, errlen, "bad --redis '%s' (HOST:PORT, such as 127.0.0.1:6379)", addr);
		free(r);
		errno = EINVAL;
		return NULL;
	}
	snprintf(r->name, sizeof(r->name), "%s", m->name);
	r->weights_hash = m->weights_hash;
	r->n_layers = m->n_layers;
	r->hidden = m->hidden;
	int rc = dial(r, err, errlen);
	if (rc < 0) {
		free(r);
		errno = -rc;
		return NULL;
	}
	return r;
}

void lbw_redis_close(struct lbw_redis *r)
{
	if (!r)
		return;
	if (r->ctx)
		redisFree(r->ctx);
	free(r);
}

const struct lbw_redis_stats *lbw_redis_stats(const struct lbw_redis *r)
{
	return &r->st;
}

/* The input's key into key (KEY_MAX); its token hash into exact. @return the key's length. */
static int make_key(const struct lbw_redis *r, const int32_t *tokens, uint32_t n, char *key,
		    uint64_t exact[2])
{
	lb_token_hash(tokens, n, exact);
	return snprintf(key, KEY_MAX, "lbw1:%s:%016" PRIx64 ":%" PRIu32 ":%016" PRIx64 "%016" PRIx64,
			r->name, r->weights_hash, n, exact[1], exact[0]);
}

/* A reply that is no answer (or none): counted, and the connection dropped when it broke.
 * @return -EIO. */
static int failed(struct lbw_redis *r, redisReply *rep)
{
	r->st.errors++;
	if (rep)
		freeReplyObject(rep);
	if (r->ctx && r->ctx->err) {
		redisFree(r->ctx);
		r->ctx = NULL;
	}
	return -EIO;
}

/* argv as one command on a live connection (made again when it was dropped). @return the
 * reply; NULL when there is none (counted by failed). */
static redisReply *command(struct lbw_redis *r, int argc, const char **argv, const size_t *len)
{
	char err[256];
	if (!r->ctx && dial(r, err, sizeof(err)) < 0)
		return NULL;
	return redisCommandArgv(r->ctx, argc, argv, len);
}

/* The payload of val (len bytes) when its header is the one the input's value has, and the
 * payload's checksum its header's; else NULL. */
static const char *check(const struct lbw_redis *r, const char *val, size_t len,
			 const uint64_t exact[2], uint32_t n)
{
	struct lbw_redis_hdr hd;
	size_t payload = (size_t)n * r->hidden * sizeof(float);
	if (len != sizeof(hd) + payload)
		return NULL;
	memcpy(&hd, val, sizeof(hd));
	if (hd.magic != LBW_REDIS_MAGIC || hd.version != LBW_REDIS_VERSION ||
	    hd.model != r->weights_hash || hd.exact[0] != exact[0] || hd.exact[1] != exact[1] ||
	    hd.seq_len != n || hd.hidden != r->hidden || hd.layer != r->n_layers - 1 ||
	    hd.dtype != LB_DTYPE_F32 || hd.checksum != XXH64(val + sizeof(hd), payload, 0))
		return NULL;
	return val + sizeof(hd);
}

int lbw_redis_get(struct lbw_redis *r, const int32_t *tokens, uint32_t n, float *h)
{
	char key[KEY_MAX];
	uint64_t exact[2];
	int kl = make_key(r, tokens, n, key, exact);
	const char *argv[2] = { "GET", key };
	size_t len[2] = { 3, (size_t)kl };
	redisReply *rep = command(r, 2, argv, len);
	if (!rep || (rep->type != REDIS_REPLY_STRING && rep->type != REDIS_REPLY_NIL))
		return failed(r, rep);
	int hit = 0;
	if (rep->type == REDIS_REPLY_NIL) {
		r->st.misses++;
	} else {
		const char *p = check(r, rep->str, rep->len, exact, n);
		if (p) {
			memcpy(h, p, (size_t)n * r->hidden * sizeof(float));
			r->st.hits++;
			hit = 1;
		} else {
			r->st.refused++;
		}
	}
	freeReplyObject(rep);
	return hit;
}

int lbw_redis_put(struct lbw_redis *r, const int32_t *tokens, uint32_t n, const float *h)
{
	char key[KEY_MAX];
	struct lbw_redis_hdr hd = { .magic = LBW_REDIS_MAGIC, .version = LBW_REDIS_VERSION,
				    .model = r->weights_hash, .seq_len = n, .hidden = r->hidden,
				    .layer = r->n_layers - 1, .dtype = LB_DTYPE_F32 };
	int kl = make_key(r, tokens, n, key, hd.exact);
	size_t payload = (size_t)n * r->hidden * sizeof(float);
	char *val = malloc(sizeof(hd) + payload);
	if (!val)
		return -ENOMEM;
	hd.checksum = XXH64(h, payload, 0);
	memcpy(val, &hd, sizeof(hd));
	memcpy(val + sizeof(hd), h, payload);
	const char *argv[3] = { "SET", key, val };
	size_t len[3] = { 3, (size_t)kl, sizeof(hd) + payload };
	redisReply *rep = command(r, 3, argv, len);
	free(val);
	if (!rep || rep->type != REDIS_REPLY_STATUS)
		return failed(r, rep);
	r->st.stored++;
	freeReplyObject(rep);
	return 0;
}
