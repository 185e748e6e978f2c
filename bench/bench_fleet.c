/*
 * The fleet the end-to-end benchmarks run: a temporary folder, layerbankd with a budget (or a
 * plain Redis server), `layerbank-worker serve` processes with a cache mode and their logs, the
 * ready handshake, requests out and answer lines in through poll, and everything stopped at
 * exit and on signals.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "io.h"
#include "redis_proc.h"

#define READY_TIMEOUT_S 300    /* a worker generating BERT-base weights takes a few seconds */
#define REPLY_TIMEOUT_S 300
#define LINE_MAX_BYTES (1u << 20)
#define IDLE (-2)              /* worker.req of a ready worker with nothing in flight */

const char *const lbb_mode_name[LBB_N_ALL_MODES] = { "nocache", "private", "shared", "redis" };
/* What a worker of each mode says in its ready line: cache=... */
static const char *const cache_said[LBB_N_ALL_MODES] = { "none", "private", "shared", "redis" };

struct worker {
	pid_t pid;
	int in, out;            /* its stdin (we write), its stdout (we read) */
	char *buf;              /* bytes read, not yet a whole line */
	size_t len;
	long req;               /* request in flight; IDLE; -1: not ready yet */
	double sent;
};

/* The fleet's processes; cleaned up at exit, also after a signal. */
static struct {
	const char *bench;
	char dir[64];
	pid_t daemon;
	struct lbu_redis redis; /* its files in dir/PORT; redis.n 0 when none runs */
	struct worker w[LBB_FLEET_MAX_WORKERS];
	int n;
} fleet = { .daemon = -1 };

double lbb_now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void stop_workers(void)
{
	/* End of input ends a worker; a worker that does not leave gets SIGTERM. */
	for (int i = 0; i < fleet.n; i++)
		if (fleet.w[i].in >= 0) {
			close(fleet.w[i].in);
			fleet.w[i].in = -1;
		}
	for (int i = 0; i < fleet.n; i++) {
		struct worker *w = &fleet.w[i];
		for (int t = 0; t < 500 && w->pid > 0; t++) {
			if (waitpid(w->pid, NULL, WNOHANG) == w->pid)
				w->pid = -1;
			else
				usleep(10000);
		}
		lbb_stop(&w->pid);
		if (w->out >= 0)
			close(w->out);
		free(w->buf);
		memset(w, 0, sizeof(*w));
	}
	fleet.n = 0;
}

void lbb_fleet_stop(void)
{
	stop_workers();
	lbb_stop(&fleet.daemon);
	lbu_redis_stop(&fleet.redis);
}

static void cleanup(void)
{
	lbb_fleet_stop();
	lbu_rmtree(fleet.dir);
	fleet.dir[0] = '\0';
}

void lbb_fleet_init(const char *bench)
{
	fleet.bench = bench;
	lbb_tempdir(fleet.dir, sizeof(fleet.dir), NULL, bench, cleanup);
	signal(SIGPIPE, SIG_IGN);
}

/* Print the last lines of a log file to stderr. */
static void show_log(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return;
	char buf[4096];
	fseek(f, 0, SEEK_END);
	long size = ftell(f);
	fseek(f, size > (long)sizeof(buf) - 1 ? size - (long)sizeof(buf) + 1 : 0, SEEK_SET);
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = '\0';
	fclose(f);
	fprintf(stderr, "--- %s ---\n%s\n", path, buf);
}

/* ---- the daemon ---- */

const char *lbb_fleet_dir(void)
{
	return fleet.dir;
}

const char *lbb_fleet_socket(void)
{
	static char sock[128];
	snprintf(sock, sizeof(sock), "%s/lb.sock", fleet.dir);
	return sock;
}

int lbb_fleet_daemon_start(const struct lbb_fleet_cfg *cfg)
{
	char log[128], budget[32], arena[32];
	const char *sock = lbb_fleet_socket();
	snprintf(log, sizeof(log), "%s/daemon.log", fleet.dir);
	snprintf(budget, sizeof(budget), "%llu", (unsigned long long)cfg->budget);
	/* Room for the allocator's rounding and entry headers on top of the entries' budget. */
	snprintf(arena, sizeof(arena), "%llu",
		 (unsigned long long)(cfg->budget + cfg->budget / 8 + (16u << 20)));
	const char *argv[24] = { LB_DAEMON_PATH, "--foreground", "--socket", sock,
				 "--arena-size", arena, "--budget", budget, "--hugepages", "try",
				 "--threads", "1" };
	int n = 12;
	if (cfg->tau) {
		argv[n++] = "--tau";
		argv[n++] = cfg->tau;
	}
	if (cfg->spin_us) {
		argv[n++] = "--spin-us";
		argv[n++] = cfg->spin_us;
	}
	if (cfg->drift_target) {
		argv[n++] = "--drift-target";
		argv[n++] = cfg->drift_target;
	}
	argv[n] = NULL;
	fleet.daemon = lbb_spawn(argv, log);
	if (fleet.daemon < 0)
		return -errno;
	if (lbb_wait_socket(sock, &fleet.daemon, 30) == 0)
		return 0;
	fprintf(stderr, "layerbank-bench %s: layerbankd did not start\n", fleet.bench);
	show_log(log);
	return -EIO;
}

void lbb_fleet_daemon_stop(void)
{
	lbb_stop(&fleet.daemon);
}

/* ---- the plain peer: a Redis server ---- */

/* Start the Redis server LBB_REDIS's workers share (util/redis_proc.h). @return 0; -EIO after a
 * one-line message. */
static int redis_start(const struct lbb_fleet_cfg *cfg)
{
	char err[512];
	if (lbu_redis_start(&fleet.redis, fleet.dir, 1, false, cfg->budget, err, sizeof(err)) == 0)
		return 0;
	fprintf(stderr, "layerbank-bench %s: %s\n", fleet.bench, err);
	return -EIO;
}

/* ---- the workers ---- */

/* serve's command line for mode m into argv (room for 24). */
static void worker_argv(const struct lbb_fleet_cfg *cfg, enum lbb_mode m, const char **argv,
			char *maxt, char *priv)
{
	snprintf(maxt, 16, "%d", cfg->max_tokens);
	if (m == LBB_REDIS)
		snprintf(priv, 32, "127.0.0.1:%d", fleet.redis.port[0]);
	else
		snprintf(priv, 32, "%llu", (unsigned long long)(cfg->budget / (uint64_t)cfg->workers));
	/* layerbank's caches take its options; the plain peer takes --shadow only */
	int lb = m == LBB_PRIVATE || m == LBB_SHARED;
	int n = 0;
	argv[n++] = LB_WORKER_PATH;
	argv[n++] = "serve";
	argv[n++] = "--model";
	argv[n++] = cfg->model;
	argv[n++] = "--tokenizer";
	argv[n++] = cfg->tokenizer;
	if (cfg->max_tokens > 0) {
		argv[n++] = "--max-tokens";
		argv[n++] = maxt;
	}
	if (m == LBB_SHARED) {
		argv[n++] = "--cache";
		argv[n++] = lbb_fleet_socket();
	} else if (m == LBB_PRIVATE) {
		argv[n++] = "--private-cache";
		argv[n++] = priv;
	} else if (m == LBB_REDIS) {
		argv[n++] = "--redis";
		argv[n++] = priv;
	}
	if (lb && cfg->tau) {
		argv[n++] = "--tau";
		argv[n++] = cfg->tau;
	}
	if (lb && cfg->no_sflight)
		argv[n++] = "--no-sflight";
	if (m != LBB_NOCACHE && cfg->shadow)
		argv[n++] = "--shadow";
	if (lb && cfg->fp_chunks) {
		argv[n++] = "--fp-chunks";
		argv[n++] = cfg->fp_chunks;
	}
	if (lb && cfg->recompute) {
		argv[n++] = "--recompute";
		argv[n++] = cfg->recompute;
	}
	if (lb && cfg->revalidate) {
		argv[n++] = "--revalidate";
		argv[n++] = cfg->revalidate;
	}
	argv[n] = NULL;
}

static int start_worker(const struct lbb_fleet_cfg *cfg, enum lbb_mode m, int i)
{
	char maxt[16], priv[32], log[128];
	const char *argv[24];
	int in[2], out[2];
	worker_argv(cfg, m, argv, maxt, priv);
	snprintf(log, sizeof(log), "%s/worker%d.log", fleet.dir, i);
	if (pipe2(in, O_CLOEXEC) < 0)
		return -errno;
	if (pipe2(out, O_CLOEXEC) < 0) {
		int e = errno;
		close(in[0]);
		close(in[1]);
		return -e;
	}
	pid_t pid = fork();
	if (pid < 0) {
		int e = errno;
		close(in[0]);
		close(in[1]);
		close(out[0]);
		close(out[1]);
		return -e;
	}
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		dup2(in[0], 0);
		dup2(out[1], 1);
		if (fd >= 0)
			dup2(fd, 2);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	struct worker *w = &fleet.w[fleet.n++];
	memset(w, 0, sizeof(*w));
	w->pid = pid;
	w->in = in[1];
	w->out = out[0];
	w->req = -1;
	return 0;
}

/* Read what worker w has; complete lines go to fn. @return 0; -EPIPE the worker is gone;
 * -EPROTO a line too long; what fn returns when negative. */
static int drain(struct worker *w, int (*fn)(struct worker *, char *, void *), void *ctx)
{
	if (!w->buf) {
		w->buf = malloc(LINE_MAX_BYTES);
		if (!w->buf)
			return -ENOMEM;
	}
	ssize_t r = read(w->out, w->buf + w->len, LINE_MAX_BYTES - w->len);
	if (r < 0)
		return errno == EINTR || errno == EAGAIN ? 0 : -errno;
	if (r == 0)
		return -EPIPE;
	w->len += (size_t)r;
	char *start = w->buf, *nl;
	while ((nl = memchr(start, '\n', w->len - (size_t)(start - w->buf)))) {
		*nl = '\0';
		int rc = fn(w, start, ctx);
		if (rc < 0)
			return rc;
		start = nl + 1;
	}
	w->len -= (size_t)(start - w->buf);
	memmove(w->buf, start, w->len);
	return w->len == LINE_MAX_BYTES ? -EPROTO : 0;
}

static int worker_index(const struct worker *w)
{
	return (int)(w - fleet.w);
}

static void worker_failed(const struct worker *w, const char *why)
{
	char log[128];
	snprintf(log, sizeof(log), "%s/worker%d.log", fleet.dir, worker_index(w));
	fprintf(stderr, "layerbank-bench %s: worker %d: %s\n", fleet.bench, worker_index(w), why);
	show_log(log);
}

struct ready {
	int n;       /* workers ready */
	int layers;  /* as the first said */
	enum lbb_mode mode;
};

/* "ready model=NAME layers=L ..." */
static int on_ready(struct worker *w, char *line, void *ctx)
{
	struct ready *r = ctx;
	const char *l = strstr(line, " layers=");
	int layers = l ? atoi(l + 8) : 0;
	if (strncmp(line, "ready ", 6) != 0 || layers < 1 || layers > LBB_FLEET_MAX_LAYERS ||
	    (r->layers && layers != r->layers)) {
		fprintf(stderr, "layerbank-bench %s: worker %d said '%.200s' before ready\n",
			fleet.bench, worker_index(w), line);
		return -EPROTO;
	}
	const char *c = strstr(line, " cache="), *want = cache_said[r->mode];
	size_t wl = strlen(want);
	if (!c || strncmp(c + 7, want, wl) != 0 || (c[7 + wl] != ' ' && c[7 + wl] != '\0')) {
		fprintf(stderr, "layerbank-bench %s: worker %d is ready with '%.40s', not cache=%s "
				"(its log says why)\n", fleet.bench, worker_index(w),
			c ? c + 1 : "no cache=", want);
		return -EPROTO;
	}
	r->layers = layers;
	w->req = IDLE;
	r->n++;
	return 0;
}

/* Wait for every worker's ready line. @return 0 and r filled; -errno (the logs shown). */
static int wait_ready(struct ready *r)
{
	struct pollfd pfd[LBB_FLEET_MAX_WORKERS];
	double deadline = lbb_now_s() + READY_TIMEOUT_S;
	int rc = 0;
	while (r->n < fleet.n) {
		for (int i = 0; i < fleet.n; i++)
			pfd[i] = (struct pollfd){ .fd = fleet.w[i].out, .events = POLLIN };
		if (poll(pfd, (nfds_t)fleet.n, 1000) < 0 && errno != EINTR)
			return -errno;
		for (int i = 0; i < fleet.n && rc == 0; i++)
			if (pfd[i].revents)
				rc = drain(&fleet.w[i], on_ready, r);
		if (rc < 0 || lbb_now_s() > deadline) {
			const char *why = rc == -EPIPE ? "exited before ready" : "not ready";
			for (int i = 0; i < fleet.n; i++)
				if (fleet.w[i].req != IDLE)
					worker_failed(&fleet.w[i], why);
			return rc < 0 ? rc : -ETIMEDOUT;
		}
	}
	return 0;
}

int lbb_fleet_start(const struct lbb_fleet_cfg *cfg, enum lbb_mode m, int *layers)
{
	struct ready ready = { 0, 0, m };
	int rc = 0;
	if (m == LBB_SHARED && (rc = lbb_fleet_daemon_start(cfg)) < 0)
		return rc;
	if (m == LBB_REDIS && (rc = redis_start(cfg)) < 0)
		return rc;
	for (int i = 0; i < cfg->workers && rc == 0; i++)
		rc = start_worker(cfg, m, i);
	if (rc < 0) {
		fprintf(stderr, "layerbank-bench %s: cannot start the workers: %s\n", fleet.bench,
			strerror(-rc));
		return rc;
	}
	rc = wait_ready(&ready);
	if (rc == 0)
		*layers = ready.layers;
	return rc;
}

int lbb_fleet_idle(void)
{
	for (int i = 0; i < fleet.n; i++)
		if (fleet.w[i].req == IDLE)
			return i;
	return -1;
}

int lbb_fleet_send(int i, uint64_t id, const char *body, size_t len)
{
	struct worker *w = &fleet.w[i];
	char head[24];
	int n = snprintf(head, sizeof(head), "%llu\t", (unsigned long long)id);
	w->req = (long)id;
	w->sent = lbb_now_s();
	int rc = lbu_write_all(w->in, head, (size_t)n);
	if (rc == 0)
		rc = lbu_write_all(w->in, body, len);
	if (rc == 0)
		rc = lbu_write_all(w->in, "\n", 1);
	if (rc < 0)
		worker_failed(w, strerror(-rc));
	return rc;
}

/* ---- answers ---- */

struct collect {
	lbb_answer_fn fn;
	void *ctx;
	int answers;
};

/* "ID ..." for the request in flight: to the caller's fn. */
static int on_answer(struct worker *w, char *line, void *ctx)
{
	struct collect *c = ctx;
	double t = lbb_now_s();
	char *end;
	errno = 0;
	unsigned long long id = strtoull(line, &end, 10);
	if (errno || end == line || (long)id != w->req) {
		fprintf(stderr, "layerbank-bench %s: worker %d answered '%.120s' for request %ld\n",
			fleet.bench, worker_index(w), line, w->req);
		return -EPROTO;
	}
	w->req = IDLE;
	c->answers++;
	return c->fn(c->ctx, worker_index(w), id, end, (t - w->sent) * 1e3);
}

int lbb_fleet_collect(lbb_answer_fn fn, void *ctx)
{
	struct pollfd pfd[LBB_FLEET_MAX_WORKERS];
	struct collect c = { fn, ctx, 0 };
	for (int i = 0; i < fleet.n; i++)
		pfd[i] = (struct pollfd){ .fd = fleet.w[i].out, .events = POLLIN };
	int np = poll(pfd, (nfds_t)fleet.n, 1000);
	if (np < 0 && errno != EINTR)
		return -errno;
	for (int i = 0; i < fleet.n; i++) {
		struct worker *w = &fleet.w[i];
		if (!pfd[i].revents) {
			if (w->req >= 0 && lbb_now_s() - w->sent > REPLY_TIMEOUT_S) {
				worker_failed(w, "no answer in time");
				return -ETIMEDOUT;
			}
			continue;
		}
		int rc = drain(w, on_answer, &c);
		if (rc < 0) {
			worker_failed(w, rc == -EPIPE ? "exited" : strerror(-rc));
			return rc;
		}
	}
	return c.answers;
}
