/* Redis Cluster routing for the second tier: l2_cluster.h says what it follows. */
#include "l2_cluster.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "errf.h"

struct node {
	char host[256];
	int port;
	char addr[272];   /* host:port, for messages */
	redisContext *ctx; /* NULL: not connected */
};

struct lbd_cluster {
	struct node node[LBD_CLUSTER_MAX_NODES];
	int n;           /* nodes known; the seeds first */
	bool mapped;     /* the slot map was read at least once */
	struct timeval tv;
	int16_t owner[LBD_CLUSTER_SLOTS]; /* node index, -1: none */
	int16_t next[LBD_CLUSTER_SLOTS];  /* the map being read */
};

uint16_t lbd_cluster_slot(const void *key, size_t len)
{
	const uint8_t *k = key;
	/* the hash tag: between the first '{' and the first '}' after it, when not empty */
	const uint8_t *open = memchr(k, '{', len);
	if (open) {
		size_t from = (size_t)(open - k) + 1;
		const uint8_t *close = memchr(k + from, '}', len - from);
		if (close && close > k + from) {
			len = (size_t)(close - (k + from));
			k += from;
		}
	}
	uint16_t crc = 0;
	for (size_t i = 0; i < len; i++) {
		crc ^= (uint16_t)(k[i] << 8);
		for (int b = 0; b < 8; b++)
			crc = crc & 0x8000 ? (uint16_t)(crc << 1 ^ 0x1021) : (uint16_t)(crc << 1);
	}
	return crc & (LBD_CLUSTER_SLOTS - 1);
}

/* The node at host:port (added when new). @return its index; -1 when the table is full. */
static int node_at(struct lbd_cluster *c, const char *host, size_t host_len, int port)
{
	for (int i = 0; i < c->n; i++)
		if (c->node[i].port == port && strlen(c->node[i].host) == host_len &&
		    !memcmp(c->node[i].host, host, host_len))
			return i;
	if (c->n == LBD_CLUSTER_MAX_NODES || host_len >= sizeof(c->node[0].host))
		return -1;
	struct node *nd = &c->node[c->n];
	memcpy(nd->host, host, host_len);
	nd->host[host_len] = '\0';
	nd->port = port;
	char addr[sizeof(nd->addr)];
	snprintf(addr, sizeof(addr), "%.*s:%d", (int)host_len, nd->host, port);
	memcpy(nd->addr, addr, sizeof(addr));
	return c->n++;
}

/* "host:port" (the last ':' splits it, for IPv6 hosts) of len bytes. @return its node; -1. */
static int node_of_addr(struct lbd_cluster *c, const char *s, size_t len)
{
	const char *colon = NULL;
	for (size_t i = 0; i < len; i++)
		if (s[i] == ':')
			colon = s + i;
	if (!colon || colon == s)
		return -1;
	char *end;
	char port[8];
	size_t pl = len - (size_t)(colon + 1 - s);
	if (pl == 0 || pl >= sizeof(port))
		return -1;
	memcpy(port, colon + 1, pl);
	port[pl] = '\0';
	long p = strtol(port, &end, 10);
	if (*end || p < 1 || p > 65535)
		return -1;
	return node_at(c, s, (size_t)(colon - s), (int)p);
}

static void node_drop(struct node *nd)
{
	if (nd->ctx)
		redisFree(nd->ctx);
	nd->ctx = NULL;
}

/* Node i's connection, made when it has none. @return it; NULL with err. */
static redisContext *node_ctx(struct lbd_cluster *c, int i, char *err, size_t errlen)
{
	struct node *nd = &c->node[i];
	if (nd->ctx)
		return nd->ctx;
	redisContext *x = redisConnectWithTimeout(nd->host, nd->port, c->tv);
	if (!x || x->err || redisSetTimeout(x, c->tv) != REDIS_OK) {
		lbu_errf(err, errlen, "node %s: %s", nd->addr, x ? x->errstr : "out of memory");
		if (x)
			redisFree(x);
		return NULL;
	}
	return nd->ctx = x;
}

struct lbd_cluster *lbd_cluster_new(const char *seeds, uint32_t timeout_ms, char *err,
				    size_t errlen)
{
	static const char scheme[] = "redis-cluster://";
	struct lbd_cluster *c = calloc(1, sizeof(*c));
	if (!c) {
		lbu_errf(err, errlen, "out of memory");
		return NULL;
	}
	c->tv.tv_sec = timeout_ms / 1000;
	c->tv.tv_usec = (timeout_ms % 1000) * 1000;
	memset(c->owner, 0xff, sizeof(c->owner));
	if (!strncmp(seeds, scheme, sizeof(scheme) - 1))
		seeds += sizeof(scheme) - 1;
	for (const char *s = seeds; *s;) {
		size_t len = strcspn(s, ",");
		if (node_of_addr(c, s, len) < 0 || (s[len] == ',' && !s[len + 1])) {
			lbu_errf(err, errlen, "bad seed '%.*s' (want host:port, port 1..65535, at "
				 "most %d)", (int)(len < 200 ? len : 200), s, LBD_CLUSTER_MAX_NODES);
			free(c);
			return NULL;
		}
		s += len + (s[len] == ',');
	}
	if (c->n == 0) {
		lbu_errf(err, errlen, "no seed node in '%s'", seeds);
		free(c);
		return NULL;
	}
	return c;
}

void lbd_cluster_free(struct lbd_cluster *c)
{
	if (!c)
		return;
	for (int i = 0; i < c->n; i++)
		node_drop(&c->node[i]);
	free(c);
}

static bool is_int(const redisReply *r, long long lo, long long hi)
{
	return r->type == REDIS_REPLY_INTEGER && r->integer >= lo && r->integer <= hi;
}

/* One range of CLUSTER SLOTS from node q (whose host stands in for an empty one) into owner.
 * @return its slots; -1 when it is not the shape the specification gives. */
static int slot_range(struct lbd_cluster *c, int q, const redisReply *r, int16_t *owner)
{
	if (r->type != REDIS_REPLY_ARRAY || r->elements < 3 || !is_int(r->element[0], 0, 16383) ||
	    !is_int(r->element[1], r->element[0]->integer, 16383))
		return -1;
	const redisReply *m = r->element[2];
	if (m->type != REDIS_REPLY_ARRAY || m->elements < 2 || m->element[0]->type != REDIS_REPLY_STRING ||
	    !is_int(m->element[1], 1, 65535))
		return -1;
	const char *host = m->element[0]->str;
	size_t host_len = m->element[0]->len;
	if (host_len == 0 || (host_len == 1 && host[0] == '?')) { /* "the node you asked" */
		host = c->node[q].host;
		host_len = strlen(host);
	}
	int i = node_at(c, host, host_len, (int)m->element[1]->integer);
	if (i < 0)
		return -1;
	for (long long s = r->element[0]->integer; s <= r->element[1]->integer; s++)
		owner[s] = (int16_t)i;
	return (int)(r->element[1]->integer - r->element[0]->integer + 1);
}

int lbd_cluster_refresh(struct lbd_cluster *c, char *err, size_t errlen)
{
	int16_t *owner = c->next;
	lbu_errf(err, errlen, "no node to ask");
	for (int q = 0; q < c->n; q++) {
		redisContext *x = node_ctx(c, q, err, errlen);
		redisReply *r = x ? redisCommand(x, "CLUSTER SLOTS") : NULL;
		if (x && !r) {
			lbu_errf(err, errlen, "node %s: %s", c->node[q].addr, x->errstr);
			node_drop(&c->node[q]);
		}
		if (!r)
			continue;
		int total = 0;
		memset(owner, 0xff, sizeof(c->next));
		for (size_t e = 0; r->type == REDIS_REPLY_ARRAY && e < r->elements && total >= 0; e++) {
			int n = slot_range(c, q, r->element[e], owner);
			total = n < 0 ? -1 : total + n;
		}
		if (r->type != REDIS_REPLY_ARRAY || total < 0) {
			lbu_errf(err, errlen, "node %s: CLUSTER SLOTS %s", c->node[q].addr,
				 r->type == REDIS_REPLY_ERROR ? r->str : "not of the specified shape");
			freeReplyObject(r);
			continue;
		}
		freeReplyObject(r);
		memcpy(c->owner, owner, sizeof(c->owner));
		c->mapped = true;
		return total;
	}
	return -1;
}

/* A redirection of reply r: MOVED (*ask false) or ASK to a node. @return the node; -1: none. */
static int redirection(struct lbd_cluster *c, const redisReply *r, bool *ask)
{
	if (r->type != REDIS_REPLY_ERROR)
		return -1;
	const char *s = r->str, *sp;
	*ask = !strncmp(s, "ASK ", 4);
	if (!*ask && strncmp(s, "MOVED ", 6))
		return -1;
	sp = strchr(s + (*ask ? 4 : 6), ' ');
	return sp ? node_of_addr(c, sp + 1, strlen(sp + 1)) : -1;
}

redisReply *lbd_cluster_command(struct lbd_cluster *c, const void *key, size_t keylen, int argc,
				const char **argv, const size_t *argvlen, char *err, size_t errlen)
{
	uint16_t slot = lbd_cluster_slot(key, keylen);
	int ask = -1; /* the node an ASK sent this command to */
	if (!c->mapped && lbd_cluster_refresh(c, err, errlen) < 0)
		return NULL;
	for (int tries = 0; tries <= LBD_CLUSTER_REDIRECTS; tries++) {
		int i = ask >= 0 ? ask : c->owner[slot];
		if (i < 0) {
			lbu_errf(err, errlen, "slot %u has no owner in the cluster's map", slot);
			return NULL;
		}
		redisContext *x = node_ctx(c, i, err, errlen);
		if (!x)
			return NULL;
		if (ask >= 0) {
			redisReply *a = redisCommand(x, "ASKING");
			if (a)
				freeReplyObject(a);
		}
		redisReply *r = redisCommandArgv(x, argc, argv, argvlen);
		if (!r) {
			lbu_errf(err, errlen, "node %s: %s", c->node[i].addr, x->errstr);
			node_drop(&c->node[i]);
			return NULL;
		}
		bool is_ask;
		int to = redirection(c, r, &is_ask);
		if (to < 0)
			return r;
		freeReplyObject(r);
		ask = is_ask ? to : -1;
		if (!is_ask) { /* the map is old: read it again, and the redirection is newer still */
			(void)lbd_cluster_refresh(c, err, errlen);
			c->owner[slot] = (int16_t)to;
		}
	}
	lbu_errf(err, errlen, "slot %u: more than %d redirections", slot, LBD_CLUSTER_REDIRECTS);
	return NULL;
}

void lbd_cluster_pipeline(struct lbd_cluster *c, const struct lbd_cluster_cmd *cmd, size_t n,
			  redisReply **out)
{
	char err[256];
	bool *again = calloc(n ? n : 1, sizeof(*again));
	memset(out, 0, n * sizeof(*out));
	if (!again || (!c->mapped && lbd_cluster_refresh(c, err, sizeof(err)) < 0)) {
		free(again);
		return;
	}
	for (int i = 0; i < c->n; i++) {
		size_t sent = 0;
		redisContext *x = NULL;
		for (size_t k = 0; k < n; k++) {
			if (c->owner[lbd_cluster_slot(cmd[k].key, cmd[k].keylen)] != i)
				continue;
			if (!x && !(x = node_ctx(c, i, err, sizeof(err))))
				break; /* the node is down: its commands fail */
			if (redisAppendCommandArgv(x, cmd[k].argc, cmd[k].argv, cmd[k].argvlen) != REDIS_OK)
				break;
			sent++;
		}
		/* the replies in the order sent; a broken connection fails the rest */
		for (size_t k = 0; k < n && sent; k++) {
			if (c->owner[lbd_cluster_slot(cmd[k].key, cmd[k].keylen)] != i)
				continue;
			sent--;
			void *r = NULL;
			if (redisGetReply(x, &r) != REDIS_OK || !r) {
				node_drop(&c->node[i]);
				break;
			}
			bool is_ask;
			if (redirection(c, r, &is_ask) >= 0) {
				freeReplyObject(r);
				again[k] = true;
			} else {
				out[k] = r;
			}
		}
	}
	/* what was redirected goes again on its own, which follows the redirection */
	for (size_t k = 0; k < n; k++)
		if (again[k])
			out[k] = lbd_cluster_command(c, cmd[k].key, cmd[k].keylen, cmd[k].argc,
						     cmd[k].argv, cmd[k].argvlen, err, sizeof(err));
	free(again);
}

const char *lbd_cluster_owner(const struct lbd_cluster *c, uint16_t slot)
{
	int i = slot < LBD_CLUSTER_SLOTS ? c->owner[slot] : -1;
	return i >= 0 ? c->node[i].addr : "";
}
