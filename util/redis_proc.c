/* Redis servers of our own: redis_proc.h. */
#include "redis_proc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "errf.h"
#include "io.h"

bool lbu_redis_available(void)
{
	return access(LBU_REDIS_SERVER, X_OK) == 0 && access(LBU_REDIS_CLI, X_OK) == 0;
}

static bool port_free(int p)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)p),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	bool ok = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
	if (fd >= 0)
		close(fd);
	return ok;
}

/* A port p in 20000..39999 free on loopback, with p + 10000 (a cluster's bus) free too, and
 * none of r's. */
static int free_port(const struct lbu_redis *r, uint64_t *seed)
{
	for (;;) {
		*seed = *seed * 6364136223846793005ull + 1442695040888963407ull;
		int p = 20000 + (int)((*seed >> 33) % 20000), taken = 0;
		for (int i = 0; i < r->n; i++)
			taken |= r->port[i] == p;
		if (!taken && port_free(p) && (!r->cluster || port_free(p + 10000)))
			return p;
	}
}

int lbu_redis_cli(int port, char *out, size_t n, const char *const *args)
{
	const char *argv[32] = { LBU_REDIS_CLI, "-h", "127.0.0.1", "-p", NULL };
	char p[16];
	snprintf(p, sizeof(p), "%d", port);
	argv[4] = p;
	int k = 5;
	for (; k < 31 && *args; k++)
		argv[k] = *args++;
	argv[k] = NULL;
	int fd[2];
	if (pipe2(fd, O_CLOEXEC) < 0)
		return -1;
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0) {
		close(fd[0]);
		close(fd[1]);
		return -1;
	}
	if (pid == 0) {
		dup2(fd[1], 1);
		dup2(fd[1], 2);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	close(fd[1]);
	size_t used = 0;
	for (;;) {
		char tmp[4096];
		ssize_t got = read(fd[0], tmp, sizeof(tmp));
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			break;
		size_t take = n && (size_t)got > n - 1 - used ? n - 1 - used : (size_t)got;
		memcpy(out + used, tmp, take);
		used += take;
	}
	close(fd[0]);
	if (n)
		out[used] = '\0';
	int st;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Run server i (r->port[i] chosen) in dir/PORT. @return 0, -1 with err. */
static int spawn(struct lbu_redis *r, int i, unsigned long long maxmemory, char *err, size_t n)
{
	char port[16], dir[448], conf[480], log[480], mem[32];
	snprintf(port, sizeof(port), "%d", r->port[i]);
	snprintf(dir, sizeof(dir), "%s/%d", r->dir, r->port[i]);
	snprintf(conf, sizeof(conf), "%s/nodes.conf", dir);
	snprintf(log, sizeof(log), "%s/redis.log", dir);
	snprintf(mem, sizeof(mem), "%llu", maxmemory);
	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		lbu_errf(err, n, "%s: %s", dir, strerror(errno));
		return -1;
	}
	const char *argv[40] = { LBU_REDIS_SERVER, "--port", port, "--bind", "127.0.0.1", "--dir", dir,
				 "--save", "", "--appendonly", "no", "--logfile", log,
				 "--daemonize", "no" };
	int k = 15;
	if (r->cluster) {
		const char *c[] = { "--cluster-enabled", "yes", "--cluster-config-file", conf,
				    "--cluster-node-timeout", "2000",
				    "--cluster-require-full-coverage", "no" };
		for (size_t j = 0; j < sizeof(c) / sizeof(c[0]); j++)
			argv[k++] = c[j];
	}
	if (maxmemory) {
		argv[k++] = "--maxmemory";
		argv[k++] = mem;
		argv[k++] = "--maxmemory-policy";
		argv[k++] = "allkeys-lru";
	}
	argv[k] = NULL;
	pid_t pid = fork();
	if (pid < 0) {
		lbu_errf(err, n, "fork: %s", strerror(errno));
		return -1;
	}
	if (pid == 0) {
		int null = open("/dev/null", O_RDWR);
		dup2(null, 0);
		dup2(null, 1);
		dup2(null, 2);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	r->pid[i] = pid;
	const char *ping[] = { "PING", NULL };
	char out[256];
	for (int t = 0; t < 500; t++) {
		if (lbu_redis_cli(r->port[i], out, sizeof(out), ping) == 0 && strstr(out, "PONG"))
			return 0;
		if (waitpid(pid, NULL, WNOHANG) == pid) {
			r->pid[i] = 0;
			break;
		}
		usleep(10000);
	}
	lbu_errf(err, n, "redis-server on port %d did not answer (its log: %s)", r->port[i], log);
	return -1;
}

static int make_cluster(struct lbu_redis *r, char *err, size_t n)
{
	char addr[LBU_REDIS_MAX][32], out[4096];
	const char *args[LBU_REDIS_MAX + 8];
	int k = 0;
	args[k++] = "--cluster";
	args[k++] = "create";
	for (int i = 0; i < r->n; i++) {
		snprintf(addr[i], sizeof(addr[i]), "127.0.0.1:%d", r->port[i]);
		args[k++] = addr[i];
	}
	args[k++] = "--cluster-yes";
	args[k] = NULL;
	if (lbu_redis_cli(r->port[0], out, sizeof(out), args)) {
		lbu_errf(err, n, "redis-cli --cluster create: %.300s", out);
		return -1;
	}
	const char *info[] = { "CLUSTER", "INFO", NULL };
	for (int i = 0; i < r->n; i++) {
		int ok = 0;
		for (int t = 0; t < 500 && !ok; t++) {
			ok = lbu_redis_cli(r->port[i], out, sizeof(out), info) == 0 &&
			     strstr(out, "cluster_state:ok");
			if (!ok)
				usleep(20000);
		}
		if (!ok) {
			lbu_errf(err, n, "the cluster's node on port %d never said cluster_state:ok",
				 r->port[i]);
			return -1;
		}
	}
	return 0;
}

int lbu_redis_start(struct lbu_redis *r, const char *dir, int n, bool cluster,
		    unsigned long long maxmemory, char *err, size_t errlen)
{
	memset(r, 0, sizeof(*r));
	if (n < 1 || n > LBU_REDIS_MAX || (cluster && n < 3)) {
		lbu_errf(err, errlen, "%d servers: 1..%d, a cluster 3 at least", n, LBU_REDIS_MAX);
		return -1;
	}
	if (!lbu_redis_available()) {
		lbu_errf(err, errlen, "%s and %s are needed (Debian: redis-server, redis-tools)",
			 LBU_REDIS_SERVER, LBU_REDIS_CLI);
		return -1;
	}
	snprintf(r->dir, sizeof(r->dir), "%s", dir);
	r->cluster = cluster;
	uint64_t seed = (uint64_t)getpid() * 2654435761u ^ (uint64_t)time(NULL);
	for (int i = 0; i < n; i++) {
		r->port[i] = free_port(r, &seed);
		r->n = i + 1;
		if (spawn(r, i, maxmemory, err, errlen) < 0) {
			lbu_redis_stop(r);
			return -1;
		}
	}
	if (cluster && make_cluster(r, err, errlen) < 0) {
		lbu_redis_stop(r);
		return -1;
	}
	return 0;
}

void lbu_redis_kill(struct lbu_redis *r, int i)
{
	if (i < 0 || i >= r->n || r->pid[i] <= 0)
		return;
	kill(r->pid[i], SIGKILL);
	while (waitpid(r->pid[i], NULL, 0) < 0 && errno == EINTR)
		;
	r->pid[i] = 0;
}

void lbu_redis_stop(struct lbu_redis *r)
{
	for (int i = 0; i < r->n; i++) {
		char dir[448];
		lbu_redis_kill(r, i);
		snprintf(dir, sizeof(dir), "%s/%d", r->dir, r->port[i]);
		lbu_rmtree(dir);
	}
	r->n = 0;
}
