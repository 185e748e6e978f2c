/*
 * layerbank-bench e2e: a fleet of `layerbank-worker serve` processes scores one request stream
 * three ways — no cache, a private in-process bank each, layerbankd's shared bank — and reports
 * throughput, latency, reuse per layer and fidelity against the uncached run.
 */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "io.h"
#include "plot.h"
#include "size.h"
#include "workload.h"

#define MAX_WORKERS 64
#define MAX_LAYERS 64
#define READY_TIMEOUT_S 300    /* a worker generating BERT-base weights takes a few seconds */
#define REPLY_TIMEOUT_S 300
#define LINE_MAX_BYTES (1u << 20)

enum mode { NOCACHE = 0, PRIVATE = 1, SHARED = 2, N_MODES = 3 };
static const char *const mode_name[N_MODES] = { "nocache", "private", "shared" };

struct opts {
	int bert;               /* --model bert-base; else stories260k */
	int workers;
	struct lbw_workload_cfg wl;
	uint64_t budget;        /* the shared bank's bytes; private banks get budget / workers */
	int max_tokens;
	const char *tau;        /* NULL: the bank's default */
	int modes;              /* bit per enum mode */
	int tau_sweep, json, quiet;
	const char *plot;
	char data[512];
	uint32_t min_chars, max_chars;
};

/* One request's answer. */
struct answer {
	int ok;
	int tokens;
	double nll;
	int hit;                /* deepest reused layer, -1: none */
	unsigned computed;      /* layers the worker's forward pass ran */
	double lat_ms;          /* send to answer, seen by the dispatcher */
	int32_t *top1;          /* [tokens - 1] */
};

struct run {
	enum mode mode;
	const char *tau;
	struct answer *a;       /* [requests] */
	double wall_s, rps, p50_ms, p99_ms;
	double hit_by_layer[MAX_LAYERS]; /* share of requests that reused layer l's output */
	double hit_rate;        /* share of requests with any reuse */
	double mean_depth;      /* layers reused per request */
	uint64_t computed;      /* layers run by the workers' forward passes, all answers */
	double nll_per_token;
	double nll_rel, top1;   /* against nocache; NAN when there is none */
	unsigned errors;
};

/* ---- the fleet's processes; cleaned up at exit, also after a signal ---- */

struct worker {
	pid_t pid;
	int in, out;            /* its stdin (we write), its stdout (we read) */
	char *buf;              /* bytes read, not yet a whole line */
	size_t len;
	long req;               /* request in flight, -1: idle */
	double sent;
};

static struct {
	char dir[64];
	pid_t daemon;
	struct worker w[MAX_WORKERS];
	int n;
} fleet = { .daemon = -1 };

static double now_s(void)
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

static void cleanup(void)
{
	stop_workers();
	lbb_stop(&fleet.daemon);
	lbu_rmtree(fleet.dir);
	fleet.dir[0] = '\0';
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

/* ---- processes ---- */

static int start_daemon(const struct opts *o, const char *tau)
{
	char sock[128], log[128], budget[32], arena[32];
	snprintf(sock, sizeof(sock), "%s/lb.sock", fleet.dir);
	snprintf(log, sizeof(log), "%s/daemon.log", fleet.dir);
	snprintf(budget, sizeof(budget), "%llu", (unsigned long long)o->budget);
	/* Room for the allocator's rounding and entry headers on top of the entries' budget. */
	snprintf(arena, sizeof(arena), "%llu",
		 (unsigned long long)(o->budget + o->budget / 8 + (16u << 20)));
	const char *argv[20] = { LB_DAEMON_PATH, "--foreground", "--socket", sock, "--arena-size", arena,
				 "--budget", budget, "--hugepages", "try", "--threads", "1" };
	int n = 12;
	if (tau) {
		argv[n++] = "--tau";
		argv[n++] = tau;
	}
	argv[n] = NULL;
	fleet.daemon = lbb_spawn(argv, log);
	if (fleet.daemon < 0)
		return -errno;
	if (lbb_wait_socket(sock, &fleet.daemon, 30) == 0)
		return 0;
	fprintf(stderr, "layerbank-bench e2e: layerbankd did not start\n");
	show_log(log);
	return -EIO;
}

static int start_worker(const struct opts *o, enum mode m, const char *tau, int i)
{
	char model[600], tok[600], maxt[16], priv[32], sock[128], log[128];
	int in[2], out[2];
	snprintf(tok, sizeof(tok), "%s/tok512.bin", o->data);
	if (o->bert)
		snprintf(model, sizeof(model), "bert-base");
	else
		snprintf(model, sizeof(model), "%s/stories260K.bin", o->data);
	snprintf(maxt, sizeof(maxt), "%d", o->max_tokens);
	snprintf(priv, sizeof(priv), "%llu", (unsigned long long)(o->budget / (uint64_t)o->workers));
	snprintf(sock, sizeof(sock), "%s/lb.sock", fleet.dir);
	snprintf(log, sizeof(log), "%s/worker%d.log", fleet.dir, i);
	const char *argv[20] = { LB_WORKER_PATH, "serve", "--model", model, "--tokenizer", tok,
				 "--max-tokens", maxt };
	int n = 8;
	if (m == SHARED) {
		argv[n++] = "--cache";
		argv[n++] = sock;
	} else if (m == PRIVATE) {
		argv[n++] = "--private-cache";
		argv[n++] = priv;
	}
	if (m != NOCACHE && tau) {
		argv[n++] = "--tau";
		argv[n++] = tau;
	}
	argv[n] = NULL;
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
	fprintf(stderr, "layerbank-bench e2e: worker %d: %s\n", worker_index(w), why);
	show_log(log);
}

struct ready {
	int n;       /* workers ready */
	int layers;  /* as the first said */
};

/* "ready model=NAME layers=L ..." */
static int on_ready(struct worker *w, char *line, void *ctx)
{
	struct ready *r = ctx;
	const char *l = strstr(line, " layers=");
	int layers = l ? atoi(l + 8) : 0;
	if (strncmp(line, "ready ", 6) != 0 || layers < 1 || layers > MAX_LAYERS ||
	    (r->layers && layers != r->layers)) {
		fprintf(stderr, "layerbank-bench e2e: worker %d said '%.200s' before ready\n",
			worker_index(w), line);
		return -EPROTO;
	}
	r->layers = layers;
	w->req = -2; /* ready, idle */
	r->n++;
	return 0;
}

/* Parse "ID ok tokens=N nll=S hit=H computed=C inserted=I us=T top1=a,b,..." or "ID err ..." */
static int on_answer(struct worker *w, char *line, void *ctx)
{
	struct run *run = ctx;
	double t = now_s();
	char *end;
	errno = 0;
	unsigned long long id = strtoull(line, &end, 10);
	if (errno || end == line || (long)id != w->req) {
		fprintf(stderr, "layerbank-bench e2e: worker %d answered '%.120s' for request %ld\n",
			worker_index(w), line, w->req);
		return -EPROTO;
	}
	struct answer *a = &run->a[id];
	a->lat_ms = (t - w->sent) * 1e3;
	w->req = -2;
	if (strncmp(end, " ok ", 4) != 0) {
		run->errors++;
		if (run->errors <= 3)
			fprintf(stderr, "layerbank-bench e2e: request %llu:%s\n", id, end);
		return 0;
	}
	unsigned inserted, hamming;
	double us;
	int used = 0;
	if (sscanf(end, " ok tokens=%d nll=%lf hit=%d hamming=%u computed=%u inserted=%u us=%lf top1=%n",
		   &a->tokens, &a->nll, &a->hit, &hamming, &a->computed, &inserted, &us, &used) != 7 || !used ||
	    a->tokens < 2 || a->tokens > 1 << 20) {
		fprintf(stderr, "layerbank-bench e2e: bad answer '%.120s'\n", line);
		return -EPROTO;
	}
	a->top1 = malloc((size_t)(a->tokens - 1) * sizeof(int32_t));
	if (!a->top1)
		return -ENOMEM;
	const char *p = end + used;
	for (int i = 0; i < a->tokens - 1; i++) {
		char *e;
		long v = strtol(p, &e, 10);
		if (e == p || (*e != ',' && *e != '\0')) {
			fprintf(stderr, "layerbank-bench e2e: bad top1 list in answer %llu\n", id);
			return -EPROTO;
		}
		a->top1[i] = (int32_t)v;
		p = *e ? e + 1 : e;
	}
	a->ok = 1;
	return 0;
}

static int send_request(struct worker *w, const struct lbw_request *r)
{
	char head[24];
	int n = snprintf(head, sizeof(head), "%u\t", r->id);
	w->req = r->id;
	w->sent = now_s();
	int rc = lbu_write_all(w->in, head, (size_t)n);
	if (rc == 0)
		rc = lbu_write_all(w->in, r->text, strlen(r->text));
	if (rc == 0)
		rc = lbu_write_all(w->in, "\n", 1);
	return rc;
}

/* ---- progress ---- */

/* reused[l]: answers (of the first n) that reused layer l's output, directly or a deeper one's;
 * a request not answered, or answered with an error, has hit -1. */
static void count_reuse(const struct run *run, uint32_t n, int layers, long *reused)
{
	memset(reused, 0, (size_t)layers * sizeof(*reused));
	for (uint32_t i = 0; i < n; i++)
		for (int l = 0; l <= run->a[i].hit && l < layers; l++)
			reused[l]++;
}

static void progress(const struct opts *o, const struct run *run, long done, long total, double t0,
		     int layers, int final)
{
	if (o->quiet)
		return;
	int tty = isatty(2);
	static double last;
	double t = now_s();
	if (!final && t - last < (tty ? 0.5 : 5.0))
		return;
	last = t;
	long reused[MAX_LAYERS];
	count_reuse(run, (uint32_t)total, layers, reused);
	char bar[MAX_LAYERS * 4 + 1];
	int len = 0;
	for (int l = 0; l < layers; l++)
		len += snprintf(bar + len, sizeof(bar) - (size_t)len, "%s%ld", l ? " " : "",
				done ? reused[l] * 100 / done : 0);
	fprintf(stderr, "%s  %-7s %5ld/%-5ld %7.1f req/s  reused %% by layer: %s%s",
		tty ? "\r\033[K" : "", mode_name[run->mode], done, total,
		t > t0 ? (double)done / (t - t0) : 0.0, bar, tty && !final ? "" : "\n");
}

/* ---- one run of the fleet ---- */

static double pct(const double *sorted, size_t n, double p)
{
	return n ? sorted[(size_t)(p * (double)(n - 1) + 0.5)] : NAN;
}

/* Throughput, latency and reuse of a finished run. */
static void summarise(struct run *run, const struct lbw_workload *wl, int layers)
{
	double *lat = malloc(wl->n * sizeof(double));
	size_t n = 0;
	double nll = 0, pred = 0, depth = 0;
	uint64_t computed = 0;
	long reused[MAX_LAYERS];
	for (uint32_t i = 0; i < wl->n; i++) {
		const struct answer *a = &run->a[i];
		if (!a->ok)
			continue;
		if (lat)
			lat[n] = a->lat_ms;
		n++;
		nll += a->nll;
		pred += a->tokens - 1;
		depth += a->hit + 1;
		computed += a->computed;
	}
	count_reuse(run, wl->n, layers, reused);
	if (lat)
		qsort(lat, n, sizeof(double), lbb_cmp_double);
	run->p50_ms = lat ? pct(lat, n, 0.50) : NAN;
	run->p99_ms = lat ? pct(lat, n, 0.99) : NAN;
	free(lat);
	run->rps = run->wall_s > 0 ? (double)wl->n / run->wall_s : 0;
	run->nll_per_token = pred ? nll / pred : NAN;
	run->mean_depth = n ? depth / (double)n : 0;
	run->computed = computed;
	run->hit_rate = n ? (double)reused[0] / (double)n : 0; /* any reuse reuses layer 0 */
	for (int l = 0; l < layers; l++)
		run->hit_by_layer[l] = n ? (double)reused[l] / (double)n : 0;
	run->nll_rel = run->top1 = NAN;
}

/* Fidelity of run against the uncached answers base. */
static void fidelity(struct run *run, const struct run *base, uint32_t n)
{
	double nll = 0, nll0 = 0, same = 0, total = 0;
	for (uint32_t i = 0; i < n; i++) {
		const struct answer *a = &run->a[i], *b = &base->a[i];
		if (!a->ok || !b->ok || a->tokens != b->tokens)
			continue;
		nll += a->nll;
		nll0 += b->nll;
		for (int k = 0; k < a->tokens - 1; k++)
			same += a->top1[k] == b->top1[k];
		total += a->tokens - 1;
	}
	run->nll_rel = nll0 > 0 ? nll / nll0 - 1.0 : NAN;
	run->top1 = total > 0 ? same / total : NAN;
}

static int run_fleet(const struct opts *o, enum mode m, const char *tau,
		     const struct lbw_workload *wl, int *layers, struct run *run)
{
	int rc = 0;
	struct ready ready = { 0, 0 };
	memset(run, 0, sizeof(*run));
	run->mode = m;
	run->tau = tau;
	run->a = calloc(wl->n, sizeof(*run->a));
	if (!run->a)
		return -ENOMEM;
	for (uint32_t i = 0; i < wl->n; i++)
		run->a[i].hit = -1;
	if (m == SHARED && (rc = start_daemon(o, tau)) < 0)
		return rc;
	for (int i = 0; i < o->workers && rc == 0; i++)
		rc = start_worker(o, m, tau, i);
	if (rc < 0) {
		fprintf(stderr, "layerbank-bench e2e: cannot start the workers: %s\n", strerror(-rc));
		goto out;
	}

	struct pollfd pfd[MAX_WORKERS];
	double deadline = now_s() + READY_TIMEOUT_S;
	while (ready.n < fleet.n) {
		for (int i = 0; i < fleet.n; i++)
			pfd[i] = (struct pollfd){ .fd = fleet.w[i].out, .events = POLLIN };
		if (poll(pfd, (nfds_t)fleet.n, 1000) < 0 && errno != EINTR) {
			rc = -errno;
			goto out;
		}
		for (int i = 0; i < fleet.n && rc == 0; i++)
			if (pfd[i].revents)
				rc = drain(&fleet.w[i], on_ready, &ready);
		if (rc < 0 || now_s() > deadline) {
			for (int i = 0; i < fleet.n; i++)
				if (fleet.w[i].req != -2)
					worker_failed(&fleet.w[i], rc == -EPIPE ? "exited before ready"
										: "not ready");
			rc = rc < 0 ? rc : -ETIMEDOUT;
			goto out;
		}
	}
	*layers = ready.layers;

	double t0 = now_s();
	uint32_t next = 0, done = 0;
	while (done < wl->n) {
		for (int i = 0; i < fleet.n && next < wl->n; i++)
			if (fleet.w[i].req == -2) {
				rc = send_request(&fleet.w[i], &wl->r[next++]);
				if (rc < 0) {
					worker_failed(&fleet.w[i], strerror(-rc));
					goto out;
				}
			}
		for (int i = 0; i < fleet.n; i++)
			pfd[i] = (struct pollfd){ .fd = fleet.w[i].out, .events = POLLIN };
		int np = poll(pfd, (nfds_t)fleet.n, 1000);
		if (np < 0 && errno != EINTR) {
			rc = -errno;
			goto out;
		}
		for (int i = 0; i < fleet.n; i++) {
			struct worker *w = &fleet.w[i];
			if (!pfd[i].revents) {
				if (w->req >= 0 && now_s() - w->sent > REPLY_TIMEOUT_S) {
					worker_failed(w, "no answer in time");
					rc = -ETIMEDOUT;
					goto out;
				}
				continue;
			}
			long before = w->req;
			rc = drain(w, on_answer, run);
			if (rc < 0) {
				worker_failed(w, rc == -EPIPE ? "exited" : strerror(-rc));
				goto out;
			}
			if (before >= 0 && w->req == -2)
				done++;
		}
		progress(o, run, done, wl->n, t0, *layers, 0);
	}
	run->wall_s = now_s() - t0;
	progress(o, run, done, wl->n, t0, *layers, 1);
out:
	stop_workers();
	if (m == SHARED)
		lbb_stop(&fleet.daemon);
	return rc;
}

static void free_run(struct run *run, uint32_t n)
{
	for (uint32_t i = 0; run->a && i < n; i++)
		free(run->a[i].top1);
	free(run->a);
	run->a = NULL;
}

/* ---- reporting ---- */

static json_object *json_num(double v)
{
	return isfinite(v) ? json_object_new_double(v) : NULL;
}

static json_object *run_json(const struct run *r, int layers)
{
	json_object *o = json_object_new_object(), *h = json_object_new_array();
	for (int l = 0; l < layers; l++)
		json_object_array_add(h, json_object_new_double(r->hit_by_layer[l]));
	json_object_object_add(o, "rps", json_num(r->rps));
	json_object_object_add(o, "p50_ms", json_num(r->p50_ms));
	json_object_object_add(o, "p99_ms", json_num(r->p99_ms));
	json_object_object_add(o, "hit_rate_by_layer", h);
	json_object_object_add(o, "hit_rate", json_num(r->hit_rate));
	json_object_object_add(o, "mean_reused_depth", json_num(r->mean_depth));
	json_object_object_add(o, "layers_computed", json_object_new_int64((int64_t)r->computed));
	json_object_object_add(o, "nll_per_token", json_num(r->nll_per_token));
	json_object_object_add(o, "nll_rel_change", json_num(r->nll_rel));
	json_object_object_add(o, "top1_agreement", json_num(r->top1));
	json_object_object_add(o, "errors", json_object_new_int((int)r->errors));
	json_object_object_add(o, "wall_s", json_num(r->wall_s));
	return o;
}

static void print_table(const struct opts *o, const struct run *runs, int have, int layers,
			const struct lbw_workload *wl)
{
	printf("fleet: %d workers, %u requests (%u fresh, %u exact, %u near; zipf %.2f, seed %llu), "
	       "model %s, max %d tokens, budget %llu MiB (private: %llu MiB each)\n",
	       o->workers, wl->n, wl->count[LBW_REQ_FRESH], wl->count[LBW_REQ_EXACT],
	       wl->count[LBW_REQ_NEAR], o->wl.zipf_s, (unsigned long long)o->wl.seed,
	       o->bert ? "bert-base (generated)" : "stories260K", o->max_tokens,
	       (unsigned long long)(o->budget >> 20),
	       (unsigned long long)(o->budget / (uint64_t)o->workers >> 20));
	printf("  %-8s %9s %9s %9s %8s %10s %12s %10s %6s\n", "mode", "req/s", "p50 ms", "p99 ms",
	       "reuse", "depth", "nll change", "top-1", "errors");
	for (int m = 0; m < N_MODES; m++) {
		if (!(have & 1 << m))
			continue;
		const struct run *r = &runs[m];
		printf("  %-8s %9.2f %9.2f %9.2f %7.1f%% %7.2f/%-2d %+11.4f%% %9.3f%% %6u\n", mode_name[m],
		       r->rps, r->p50_ms, r->p99_ms, r->hit_rate * 100, r->mean_depth, layers,
		       isfinite(r->nll_rel) ? r->nll_rel * 100 : 0.0,
		       isfinite(r->top1) ? r->top1 * 100 : 100.0, r->errors);
	}
	for (int m = PRIVATE; m < N_MODES; m++) {
		if (!(have & 1 << m))
			continue;
		printf("  %-8s reused %% by layer:", mode_name[m]);
		for (int l = 0; l < layers; l++)
			printf(" %.0f", runs[m].hit_by_layer[l] * 100);
		printf("\n");
	}
	if ((have & 1 << SHARED) && (have & 1 << NOCACHE))
		printf("  speedup shared vs nocache: %.2fx\n", runs[SHARED].rps / runs[NOCACHE].rps);
	if ((have & 1 << SHARED) && (have & 1 << PRIVATE))
		printf("  speedup shared vs private: %.2fx\n", runs[SHARED].rps / runs[PRIVATE].rps);
}

#define N_TAU 7
static const char *const tau_values[N_TAU] = { "0.70", "0.75", "0.80", "0.85", "0.90", "0.95", "0.98" };

static int write_plot(const struct opts *o, const struct run *runs, int have, int layers,
		      const struct run *sweep, int n_sweep)
{
	double rps[N_MODES], p50[N_MODES], p99[N_MODES];
	const char *cats[N_MODES];
	int nc = 0;
	for (int m = 0; m < N_MODES; m++)
		if (have & 1 << m) {
			cats[nc] = mode_name[m];
			rps[nc] = runs[m].rps;
			p50[nc] = runs[m].p50_ms;
			p99[nc] = runs[m].p99_ms;
			nc++;
		}
	struct bplot_series s_rps[] = { { "requests/s", rps, NULL, nc } };
	struct bplot_series s_lat[] = { { "p50", p50, NULL, nc }, { "p99", p99, NULL, nc } };
	double lx[MAX_LAYERS], ly[N_MODES][MAX_LAYERS];
	struct bplot_series s_layer[N_MODES];
	int nl = 0;
	for (int l = 0; l < layers; l++)
		lx[l] = l;
	for (int m = PRIVATE; m < N_MODES; m++)
		if (have & 1 << m) {
			for (int l = 0; l < layers; l++)
				ly[m][l] = runs[m].hit_by_layer[l] * 100;
			s_layer[nl++] = (struct bplot_series){ mode_name[m], ly[m], lx, layers };
		}
	double tx[N_TAU], hit[N_TAU], agree[N_TAU], dnll[N_TAU];
	for (int i = 0; i < n_sweep; i++) {
		tx[i] = atof(tau_values[i]);
		hit[i] = sweep[i].hit_rate * 100;
		agree[i] = sweep[i].top1 * 100;
		dnll[i] = fabs(sweep[i].nll_rel) * 100 * 10;
	}
	struct bplot_series s_tau[] = { { "requests reusing a layer %", hit, tx, n_sweep },
					{ "top-1 agreement %", agree, tx, n_sweep },
					{ "|NLL change| x10 %", dnll, tx, n_sweep } };
	struct bplot_panel panels[4] = {
		{ .title = "Throughput", .ylabel = "requests/s", .kind = BPLOT_BARS, .series = s_rps,
		  .n_series = 1, .categories = cats },
		{ .title = "Latency", .ylabel = "ms", .kind = BPLOT_BARS, .series = s_lat,
		  .n_series = 2, .categories = cats },
		{ .title = "Requests reusing each layer", .xlabel = "layer", .ylabel = "%",
		  .kind = BPLOT_LINES, .series = s_layer, .n_series = nl, .ymin = 0, .ymax = 100 },
		{ .title = "tau sweep (shared)", .xlabel = "tau", .ylabel = "%", .kind = BPLOT_LINES,
		  .series = s_tau, .n_series = 3, .ymin = 0, .ymax = 100 },
	};
	char err[256];
	int rc = bplot_write_png(o->plot, panels, n_sweep ? 4 : 3, 2, 560, 380, err, sizeof(err));
	if (rc < 0)
		fprintf(stderr, "layerbank-bench e2e: --plot %s: %s\n", o->plot, err);
	else if (!o->quiet)
		fprintf(stderr, "plot written to %s\n", o->plot);
	return rc;
}

/* ---- options ---- */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: layerbank-bench e2e [--model stories260k|bert-base] [--workers N] [--requests N]\n"
		"         [--exact P] [--near P] [--zipf S] [--seed N] [--budget BYTES] [--max-tokens N]\n"
		"         [--tau X] [--modes nocache,private,shared] [--tau-sweep] [--json] [--plot FILE]\n"
		"         [--data DIR] [--quiet]\n"
		"A fleet of layerbank-worker serve processes scores the same request stream without a\n"
		"cache, with a private in-process bank each (budget / workers bytes), and with\n"
		"layerbankd's shared bank (budget bytes). Defaults: stories260k, 4 workers, exact 0.65,\n"
		"near 0.20 (fresh the rest), zipf 1.0, seed 1; stories260k: 2000 requests, budget 64M,\n"
		"512 tokens; bert-base: 400 requests, budget 256M, 128 tokens. --data: the folder with\n"
		"stories260K.bin, tok512.bin and tinystories_val.txt (default $LAYERBANK_DATA, then\n"
		"the source tree's ../shared/data).\n");
}

static int bad(const char *opt, const char *v, const char *want)
{
	fprintf(stderr, "layerbank-bench e2e: bad %s '%s' (%s)\n", opt, v, want);
	return -1;
}

static int num(const char *v, double lo, double hi, double *out)
{
	char *end;
	errno = 0;
	*out = strtod(v, &end);
	return errno || end == v || *end || !isfinite(*out) || *out < lo || *out > hi ? -1 : 0;
}

static int parse(int argc, char **argv, struct opts *o)
{
	double v;
	long requests = -1, max_tokens = -1;
	int have_budget = 0;
	memset(o, 0, sizeof(*o));
	o->workers = 4;
	o->wl = lbw_workload_defaults();
	o->modes = 7;
	o->min_chars = 100;
	o->max_chars = 600;
	const char *env = getenv("LAYERBANK_DATA");
	snprintf(o->data, sizeof(o->data), "%s", env && *env ? env : LB_DATA_DIR);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--json")) {
			o->json = 1;
			continue;
		}
		if (!strcmp(a, "--tau-sweep")) {
			o->tau_sweep = 1;
			continue;
		}
		if (!strcmp(a, "--quiet")) {
			o->quiet = 1;
			continue;
		}
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			usage(stdout);
			exit(0);
		}
		if (!val) {
			fprintf(stderr, "layerbank-bench e2e: %s needs a value (see --help)\n", a);
			return -1;
		}
		i++;
		if (!strcmp(a, "--model")) {
			if (strcmp(val, "stories260k") && strcmp(val, "bert-base"))
				return bad(a, val, "stories260k or bert-base");
			o->bert = !strcmp(val, "bert-base");
		} else if (!strcmp(a, "--workers")) {
			if (num(val, 1, MAX_WORKERS, &v) < 0 || v != floor(v))
				return bad(a, val, "1..64");
			o->workers = (int)v;
		} else if (!strcmp(a, "--requests")) {
			if (num(val, 1, 1e6, &v) < 0 || v != floor(v))
				return bad(a, val, "1..1000000");
			requests = (long)v;
		} else if (!strcmp(a, "--exact")) {
			if (num(val, 0, 1, &o->wl.p_exact) < 0)
				return bad(a, val, "0..1");
		} else if (!strcmp(a, "--near")) {
			if (num(val, 0, 1, &o->wl.p_near) < 0)
				return bad(a, val, "0..1");
		} else if (!strcmp(a, "--zipf")) {
			if (num(val, 0, LBW_MAX_ZIPF_S, &o->wl.zipf_s) < 0)
				return bad(a, val, "0..10");
		} else if (!strcmp(a, "--seed")) {
			if (num(val, 0, 9007199254740992.0, &v) < 0 || v != floor(v))
				return bad(a, val, "an integer >= 0");
			o->wl.seed = (uint64_t)v;
		} else if (!strcmp(a, "--budget")) {
			if (lbu_parse_size(val, &o->budget) < 0 || !o->budget || o->budget > 1ull << 40)
				return bad(a, val, "a size such as 64M, up to 1T");
			have_budget = 1;
		} else if (!strcmp(a, "--max-tokens")) {
			if (num(val, 2, 512, &v) < 0 || v != floor(v))
				return bad(a, val, "2..512");
			max_tokens = (long)v;
		} else if (!strcmp(a, "--tau")) {
			if (num(val, -1, 1, &v) < 0)
				return bad(a, val, "-1..1");
			o->tau = val;
		} else if (!strcmp(a, "--modes")) {
			o->modes = 0;
			char tmp[64];
			snprintf(tmp, sizeof(tmp), "%s", val);
			for (char *s = strtok(tmp, ","); s; s = strtok(NULL, ",")) {
				int m = !strcmp(s, "nocache") ? 0 : !strcmp(s, "private") ? 1 :
					!strcmp(s, "shared") ? 2 : -1;
				if (m < 0)
					return bad(a, val, "a comma list of nocache, private, shared");
				o->modes |= 1 << m;
			}
			if (!o->modes)
				return bad(a, val, "a comma list of nocache, private, shared");
		} else if (!strcmp(a, "--plot")) {
			o->plot = val;
		} else if (!strcmp(a, "--data")) {
			snprintf(o->data, sizeof(o->data), "%s", val);
		} else {
			fprintf(stderr, "layerbank-bench e2e: unknown option '%s' (see --help)\n", a);
			return -1;
		}
	}
	if (o->wl.p_exact + o->wl.p_near > 1 + 1e-9) {
		fprintf(stderr, "layerbank-bench e2e: --exact + --near must not exceed 1\n");
		return -1;
	}
	o->wl.n_requests = (uint32_t)(requests > 0 ? requests : o->bert ? 400 : 2000);
	o->max_tokens = (int)(max_tokens > 0 ? max_tokens : o->bert ? 128 : 512);
	if (!have_budget)
		o->budget = o->bert ? 256ull << 20 : 64ull << 20;
	if (o->budget / (uint64_t)o->workers < (64u << 10)) {
		fprintf(stderr, "layerbank-bench e2e: --budget too small for %d private banks\n",
			o->workers);
		return -1;
	}
	return 0;
}

int bench_e2e_main(int argc, char **argv)
{
	struct opts o;
	char err[256], path[600];
	if (parse(argc, argv, &o) < 0)
		return 2;
	const char *need[] = { "stories260K.bin", "tok512.bin", "tinystories_val.txt" };
	for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", o.data, need[i]);
		if (access(path, R_OK) < 0) {
			fprintf(stderr, "layerbank-bench e2e: %s: %s (set --data or LAYERBANK_DATA to the "
					"folder holding stories260K.bin, tok512.bin, tinystories_val.txt)\n",
				path, strerror(errno));
			return 1;
		}
	}
	struct lbw_paragraphs para;
	struct lbw_workload wl;
	snprintf(path, sizeof(path), "%s/tinystories_val.txt", o.data);
	int rc = lbw_paragraphs_load(path, o.min_chars, o.max_chars, &para, err, sizeof(err));
	if (rc == 0)
		rc = lbw_workload_make(&para, &o.wl, &wl, err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "layerbank-bench e2e: %s\n", err);
		lbw_paragraphs_free(&para);
		return 1;
	}

	lbb_tempdir(fleet.dir, sizeof(fleet.dir), NULL, "e2e", cleanup);
	signal(SIGPIPE, SIG_IGN);

	struct run runs[N_MODES], sweep[N_TAU];
	int have = 0, layers = 0, n_sweep = 0;
	memset(runs, 0, sizeof(runs));
	memset(sweep, 0, sizeof(sweep));
	/* nocache first: it is the reference of every fidelity figure. */
	int want = o.modes | (o.tau_sweep ? 1 << NOCACHE : 0);
	for (int m = 0; m < N_MODES && rc == 0; m++) {
		if (!(want & 1 << m))
			continue;
		rc = run_fleet(&o, (enum mode)m, o.tau, &wl, &layers, &runs[m]);
		if (rc == 0) {
			summarise(&runs[m], &wl, layers);
			if (m != NOCACHE && (have & 1 << NOCACHE))
				fidelity(&runs[m], &runs[NOCACHE], wl.n);
			have |= 1 << m;
		}
	}
	for (int i = 0; o.tau_sweep && rc == 0 && i < N_TAU; i++) {
		rc = run_fleet(&o, SHARED, tau_values[i], &wl, &layers, &sweep[i]);
		if (rc == 0) {
			summarise(&sweep[i], &wl, layers);
			fidelity(&sweep[i], &runs[NOCACHE], wl.n);
			n_sweep++;
		}
	}
	if (rc == 0) {
		if (o.json) {
			json_object *j = json_object_new_object();
			json_object_object_add(j, "workers", json_object_new_int(o.workers));
			json_object_object_add(j, "requests", json_object_new_int((int)wl.n));
			json_object_object_add(j, "model", json_object_new_string(o.bert ? "bert-base" : "stories260k"));
			json_object_object_add(j, "layers", json_object_new_int(layers));
			json_object_object_add(j, "max_tokens", json_object_new_int(o.max_tokens));
			json_object_object_add(j, "budget_bytes", json_object_new_int64((int64_t)o.budget));
			json_object_object_add(j, "tau", o.tau ? json_object_new_double(atof(o.tau)) : NULL);
			json_object *mix = json_object_new_object();
			json_object_object_add(mix, "fresh", json_object_new_int((int)wl.count[LBW_REQ_FRESH]));
			json_object_object_add(mix, "exact", json_object_new_int((int)wl.count[LBW_REQ_EXACT]));
			json_object_object_add(mix, "near", json_object_new_int((int)wl.count[LBW_REQ_NEAR]));
			json_object_object_add(mix, "zipf_s", json_object_new_double(o.wl.zipf_s));
			json_object_object_add(mix, "seed", json_object_new_int64((int64_t)o.wl.seed));
			json_object_object_add(j, "mix", mix);
			for (int m = 0; m < N_MODES; m++)
				json_object_object_add(j, mode_name[m], have & 1 << m ? run_json(&runs[m], layers) : NULL);
			int sn = (have & 5) == 5, sp = (have & 6) == 6;
			json_object_object_add(j, "speedup_shared_vs_nocache",
					       sn ? json_num(runs[SHARED].rps / runs[NOCACHE].rps) : NULL);
			json_object_object_add(j, "speedup_shared_vs_private",
					       sp ? json_num(runs[SHARED].rps / runs[PRIVATE].rps) : NULL);
			if (n_sweep) {
				json_object *a = json_object_new_array();
				for (int i = 0; i < n_sweep; i++) {
					json_object *e = run_json(&sweep[i], layers);
					json_object_object_add(e, "tau", json_object_new_double(atof(tau_values[i])));
					json_object_array_add(a, e);
				}
				json_object_object_add(j, "tau_sweep", a);
			}
			puts(json_object_to_json_string_ext(j, JSON_C_TO_STRING_PLAIN));
			json_object_put(j);
		} else {
			print_table(&o, runs, have, layers, &wl);
			if (n_sweep) {
				printf("  tau sweep (shared): %6s %8s %8s %12s %10s\n", "tau", "reuse", "depth",
				       "nll change", "top-1");
				for (int i = 0; i < n_sweep; i++)
					printf("  %19s %6s %7.1f%% %8.2f %+11.4f%% %9.3f%%\n", "", tau_values[i],
					       sweep[i].hit_rate * 100, sweep[i].mean_depth,
					       sweep[i].nll_rel * 100, sweep[i].top1 * 100);
			}
		}
		if (o.plot)
			rc = write_plot(&o, runs, have, layers, sweep, n_sweep);
	}
	for (int m = 0; m < N_MODES; m++)
		free_run(&runs[m], wl.n);
	for (int i = 0; i < N_TAU; i++)
		free_run(&sweep[i], wl.n);
	lbw_workload_free(&wl);
	lbw_paragraphs_free(&para);
	return rc < 0 ? 1 : 0;
}
