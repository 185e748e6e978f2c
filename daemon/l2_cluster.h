/* Redis Cluster routing for the second tier, over hiredis 0.14 (which has none of its own).
 *
 * What it follows, from the Redis Cluster specification:
 *  - a key's slot is CRC16-XMODEM (polynomial 0x1021, initial 0) of the key, or of its hash tag
 *    (the bytes between the first '{' and the first '}' after it, when there is at least one),
 *    modulo 16384;
 *  - the slot map comes from CLUSTER SLOTS of any reachable node: [start, end, [host, port, id],
 *    replicas...] per range; a slot no range names has no owner;
 *  - an error reply "MOVED slot host:port" says the slot lives there now: the map is read again
 *    and the command sent there; "ASK slot host:port" says this one command goes there, after
 *    ASKING, and the map stays; at most LBD_CLUSTER_REDIRECTS redirections a command;
 *  - a node that cannot be reached (refused, reset, timed out) is dropped from its connection,
 *    and connected again on its next command; its slots fail until then, the others do not.
 * One connection a node. Not thread-safe: the tier's thread owns a cluster.
 */
#ifndef LBD_L2_CLUSTER_H
#define LBD_L2_CLUSTER_H

#include <hiredis/hiredis.h>
#include <stddef.h>
#include <stdint.h>

#define LBD_CLUSTER_SLOTS 16384
#define LBD_CLUSTER_MAX_NODES 64
#define LBD_CLUSTER_REDIRECTS 5

struct lbd_cluster;

/* The slot of a key of len bytes (its hash tag's, when it has one). */
uint16_t lbd_cluster_slot(const void *key, size_t len);

/*
 * A cluster of the seeds "host:port[,host:port...]" (a redis-cluster:// prefix is skipped), each
 * command waiting at most timeout_ms for a node. The slot map is read on the first command, not
 * here. @return it; NULL with err (errlen bytes) naming a bad seed list, or no memory.
 */
struct lbd_cluster *lbd_cluster_new(const char *seeds, uint32_t timeout_ms, char *err,
				    size_t errlen);
void lbd_cluster_free(struct lbd_cluster *c);

/* Read the slot map again from the first node, seed or known, that answers CLUSTER SLOTS.
 * @return the slots owned (0..16384); -1 with err when no node answered. */
int lbd_cluster_refresh(struct lbd_cluster *c, char *err, size_t errlen);

/*
 * argv[0..argc) (argvlen bytes each) on the node that owns key, following MOVED and ASK.
 * @return the reply (freeReplyObject; an error reply other than a redirection is returned as
 * it is); NULL with err when the slot has no owner, its node cannot be reached, or the
 * redirections did not end.
 */
redisReply *lbd_cluster_command(struct lbd_cluster *c, const void *key, size_t keylen, int argc,
				const char **argv, const size_t *argvlen, char *err, size_t errlen);

/* One command of a pipeline: argv[0..argc) for the node that owns key. */
struct lbd_cluster_cmd {
	const void *key;
	size_t keylen;
	int argc;
	const char **argv;
	const size_t *argvlen;
};

/*
 * cmd[0..n) pipelined: each node's commands sent at once, then their replies read, one round trip
 * a node rather than one a command. A reply that redirects (MOVED, ASK) is sent again on its own
 * by lbd_cluster_command, which follows it. out[k]: cmd[k]'s reply (freeReplyObject), or NULL
 * when it failed (its slot without owner, its node down or its connection broken).
 */
void lbd_cluster_pipeline(struct lbd_cluster *c, const struct lbd_cluster_cmd *cmd, size_t n,
			  redisReply **out);

/* "host:port" of the node that owns slot now ("" when none), for tests and the tier's stats. */
const char *lbd_cluster_owner(const struct lbd_cluster *c, uint16_t slot);

#endif
