/* Redis servers of our own, for the tests and benchmarks that need a real one: started from
 * Debian's binaries in a folder given by the caller, on free loopback ports, and stopped with
 * everything they wrote. Standalone servers, or the masters of one Redis Cluster (its bus on
 * port + 10000). Never a network address but 127.0.0.1. */
#ifndef LAYERBANK_UTIL_REDIS_PROC_H
#define LAYERBANK_UTIL_REDIS_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define LBU_REDIS_SERVER "/usr/bin/redis-server"
#define LBU_REDIS_CLI "/usr/bin/redis-cli"
#define LBU_REDIS_MAX 8

struct lbu_redis {
	char dir[384];             /* the caller's folder: each server's files in dir/PORT */
	int n;
	bool cluster;
	int port[LBU_REDIS_MAX];
	pid_t pid[LBU_REDIS_MAX];  /* 0: not running (never started, or stopped) */
};

/* Whether Debian's redis-server and redis-cli are there (packages redis-server, redis-tools). */
bool lbu_redis_available(void);

/*
 * Start n (1..LBU_REDIS_MAX) servers with their files under dir (which exists): with cluster,
 * as the masters of one cluster (redis-cli --cluster create, full coverage not required, node
 * time-out 2 s) and wait for its state ok; else standalone, each with maxmemory (0: none, else
 * an allkeys-lru cache of that many bytes). Nothing is saved to disk.
 * @return 0; -1 with err (what failed, and the server's log when it has one), the servers
 * that started stopped again.
 */
int lbu_redis_start(struct lbu_redis *r, const char *dir, int n, bool cluster,
		    unsigned long long maxmemory, char *err, size_t errlen);

/* SIGKILL server i (a node that dies), and reap it. */
void lbu_redis_kill(struct lbu_redis *r, int i);

/* Stop every server still running (SIGKILL: nothing of theirs is worth keeping) and remove
 * their files; dir itself stays. */
void lbu_redis_stop(struct lbu_redis *r);

/* redis-cli -h 127.0.0.1 -p port with args (NULL-terminated), stdout and stderr into out (n
 * bytes, NUL-terminated). @return its exit status, -1 when it did not run. */
int lbu_redis_cli(int port, char *out, size_t n, const char *const *args);

#endif
