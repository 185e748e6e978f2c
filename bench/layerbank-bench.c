/* layerbank-bench: benchmarks that measure their baselines in the same run and print ratios.
 *   layerbank-bench ring [--json] [--iters N]
 *   layerbank-bench kernels [--json]
 *   layerbank-bench workload ...   (bench_workload.c)
 *   layerbank-bench e2e ...        (bench_e2e.c)
 *   layerbank-bench snapshot ...   (bench_snapshot.c)
 * The ring benchmark starts its own layerbankd (and redis-server when installed) in a temporary
 * folder and stops them before it exits. */
#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "layerbank/layerbank.h"
#include "layerbank/ring.h"
#include "lbp.h"
#include "kernels.h"
#include "model_bert.h"
#include "model_llama.h"
#include "tokenizer.h"
#ifdef LB_HAVE_OPENBLAS
#include <cblas.h>
#endif

#define SEQ 128
#define HIDDEN 768
#define LAYERS 12
#define ACT_BYTES ((size_t)SEQ * HIDDEN * sizeof(float)) /* 384 KiB: one BERT-base layer */

static char dir[64], sock_path[100], redis_sock[100];
static pid_t daemon_pid = -1, redis_pid = -1;

static void die(const char *what, int err)
{
	fprintf(stderr, "layerbank-bench: %s: %s\n", what, strerror(err));
	exit(1);
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

/* ---- processes ---- */

static pid_t spawn(const char *const *argv, const char *log)
{
	pid_t pid = fork();
	if (pid == 0) {
		FILE *f = freopen(log, "w", stdout);
		(void)f;
		dup2(1, 2);
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	return pid;
}

void lbb_stop(pid_t *pid)
{
	if (*pid <= 0)
		return;
	kill(*pid, SIGTERM);
	for (int i = 0; i < 1000 && waitpid(*pid, NULL, WNOHANG) == 0; i++)
		sleep_ms(10);
	if (waitpid(*pid, NULL, WNOHANG) == 0) {
		kill(*pid, SIGKILL);
		waitpid(*pid, NULL, 0);
	}
	*pid = -1;
}

static void cleanup(void)
{
	char path[400];
	lbb_stop(&daemon_pid);
	lbb_stop(&redis_pid);
	if (!dir[0])
		return;
	const char *names[] = { "daemon.log", "redis.log", "lb.sock", "redis.sock" };
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		unlink(path);
	}
	rmdir(dir);
}

static void on_signal(int sig)
{
	(void)sig;
	exit(1); /* runs cleanup() */
}

static int wait_socket(const char *path, pid_t pid)
{
	struct stat st;
	for (int i = 0; i < 1000; i++) {
		if (stat(path, &st) == 0)
			return 0;
		if (waitpid(pid, NULL, WNOHANG) == pid)
			return -1;
		sleep_ms(10);
	}
	return -1;
}

/* ---- statistics ---- */

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static double pct_us(uint64_t *ns, size_t n, double p)
{
	size_t i = (size_t)(p * (double)(n - 1) + 0.5);
	return ns[i] / 1000.0;
}

/* ---- the ring ---- */

static void make_key(struct lb_key *k, uint64_t seed)
{
	memset(k, 0, sizeof(*k));
	for (int i = 0; i < 4; i++)
		k->fp[i] = seed * 0x9e3779b97f4a7c15ull + (uint64_t)i * 0xbf58476d1ce4e5b9ull;
	k->exact[0] = seed;
	k->exact[1] = ~seed;
	k->seq_len = SEQ;
}

static const struct lb_model_desc bench_model = { .name = "bench-bert-base", .weights_hash = 42,
						 .n_layers = LAYERS, .hidden = HIDDEN,
						 .dtype = LB_DTYPE_F32, .max_seq = 512 };

static struct lb_client *client(uint32_t *model)
{
	struct lb_client *c;
	struct lb_model_desc d = bench_model;
	int ret = lb_connect(sock_path, "layerbank-bench", &c);
	if (ret < 0)
		die("lb_connect", -ret);
	ret = lb_register_model(c, &d, model);
	if (ret < 0)
		die("lb_register_model", -ret);
	return c;
}

static void fill(struct lb_client *c, uint32_t model, const struct lb_key *k)
{
	for (uint32_t l = 0; l < LAYERS; l++) {
		float *p = lb_insert_reserve(c, ACT_BYTES);
		if (!p)
			die("lb_insert_reserve", errno);
		for (size_t i = 0; i < ACT_BYTES / sizeof(float); i++)
			p[i] = (float)(l * 1000 + i % 1000);
		struct lb_shape sh = { LB_DTYPE_F32, 2, { SEQ, HIDDEN } };
		int ret = lb_insert_commit(c, model, l, k, &sh);
		if (ret < 0 && ret != -EEXIST)
			die("lb_insert_commit", -ret);
	}
}

static void ring_latency(struct lb_client *c, uint32_t model, const struct lb_key *k, uint64_t *ns, size_t n)
{
	struct lb_hit h;
	for (size_t i = 0; i < n + 1000; i++) {
		uint64_t t0 = lb_now_ns();
		int ret = lb_lookup_deepest(c, model, k, NULL, 0, &h);
		uint64_t t1 = lb_now_ns();
		if (ret < 0)
			die("lb_lookup_deepest", -ret);
		if (i >= 1000) /* warm-up */
			ns[i - 1000] = t1 - t0;
		lb_release(c, h.lease);
	}
}

/* The same lookup as a control-socket request (LBP_LOOKUP), on a connection of our own. */
static void socket_latency(uint32_t model, const struct lb_key *k, uint64_t *ns, size_t n)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	static uint8_t buf[LBP_MAX_FRAME + 1];
	char cbuf[CMSG_SPACE(sizeof(int) * (LBP_MAX_ARENAS + 1))];
	struct lbp_msg m = { .type = LBP_HELLO }, rep;
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		die("connect", errno);
	m.u.hello.shm_abi = LB_SHM_ABI_VERSION;
	int len = lbp_encode(&m, buf, sizeof(buf));
	if (send(fd, buf, (size_t)len, 0) != len)
		die("send HELLO", errno);
	struct iovec iov = { buf, sizeof(buf) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
	if (recvmsg(fd, &msg, MSG_CMSG_CLOEXEC) <= 0)
		die("recv WELCOME", errno);
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
		int fds[LBP_MAX_ARENAS + 1];
		size_t nf = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		memcpy(fds, CMSG_DATA(cm), nf * sizeof(int));
		for (size_t i = 0; i < nf; i++)
			close(fds[i]);
	}
	/* A connection names only the models it registered itself. */
	m.type = LBP_REGISTER_MODEL;
	memset(&m.u.reg, 0, sizeof(m.u.reg));
	snprintf(m.u.reg.name, sizeof(m.u.reg.name), "%s", bench_model.name);
	m.u.reg.weights_hash = bench_model.weights_hash;
	m.u.reg.n_layers = bench_model.n_layers;
	m.u.reg.hidden = bench_model.hidden;
	m.u.reg.dtype = (uint32_t)bench_model.dtype;
	m.u.reg.max_seq = bench_model.max_seq;
	m.u.reg.fp = (struct lbp_fp_spec){ .chunks = 4, .bits = 256, .seed = bench_model.fp_seed };
	len = lbp_encode(&m, buf, sizeof(buf));
	if (len < 0 || send(fd, buf, (size_t)len, 0) != len)
		die("send REGISTER_MODEL", errno);
	ssize_t got = recv(fd, buf, sizeof(buf), 0);
	if (got <= 0 || lbp_decode(buf, (size_t)got, &rep, NULL) < 0 || rep.type != LBP_MODEL ||
	    rep.u.model.model_id != model)
		die("REGISTER_MODEL over the socket", EPROTO);
	m.type = LBP_LOOKUP;
	memset(&m.u.lookup, 0, sizeof(m.u.lookup));
	m.u.lookup.model_id = model;
	m.u.lookup.seq_len = k->seq_len;
	m.u.lookup.fp0 = k->fp[0];
	m.u.lookup.fp1 = k->fp[1];
	m.u.lookup.fp2 = k->fp[2];
	m.u.lookup.fp3 = k->fp[3];
	m.u.lookup.exact_lo = k->exact[0];
	m.u.lookup.exact_hi = k->exact[1];
	uint8_t req[256];
	len = lbp_encode(&m, req, sizeof(req));
	for (size_t i = 0; i < n + 100; i++) {
		uint64_t t0 = lb_now_ns();
		if (send(fd, req, (size_t)len, 0) != len)
			die("send LOOKUP", errno);
		ssize_t r = recv(fd, buf, sizeof(buf), 0);
		uint64_t t1 = lb_now_ns();
		if (r <= 0 || lbp_decode(buf, (size_t)r, &rep, NULL) < 0 || rep.type != LBP_LOOKUP_REPLY ||
		    rep.u.lookup_reply.status != 0)
			die("LOOKUP over the socket", EPROTO);
		if (i >= 100)
			ns[i - 100] = t1 - t0;
	}
	close(fd);
}

/* ---- redis baseline: GET of the same 384 KiB over a Unix socket ---- */

static int redis_dial(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", redis_sock);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return -1;
	return fd;
}

static int read_full(int fd, uint8_t *buf, size_t n)
{
	for (size_t got = 0; got < n;) {
		ssize_t r = read(fd, buf + got, n - got);
		if (r <= 0)
			return -1;
		got += (size_t)r;
	}
	return 0;
}

/* Read one RESP reply: "+OK\r\n" or "$len\r\n<len bytes>\r\n". @return payload bytes, -1. */
static long resp_read(int fd, uint8_t *buf, size_t cap)
{
	char head[64];
	size_t n = 0;
	while (n < sizeof(head) - 1) {
		if (read(fd, head + n, 1) != 1)
			return -1;
		if (head[n++] == '\n')
			break;
	}
	head[n] = '\0';
	if (head[0] == '+')
		return 0;
	if (head[0] != '$')
		return -1;
	long len = strtol(head + 1, NULL, 10);
	if (len < 0 || (size_t)len + 2 > cap || read_full(fd, buf, (size_t)len + 2) < 0)
		return -1;
	return len;
}

static int redis_latency(uint64_t *ns, size_t n)
{
	const char *argv[] = { "redis-server", "--port", "0", "--unixsocket", redis_sock, "--save", "",
			       "--appendonly", "no", "--daemonize", "no", NULL };
	char log[400];
	static uint8_t val[ACT_BYTES], buf[ACT_BYTES + 16];
	char hdr[64];

	snprintf(log, sizeof(log), "%s/redis.log", dir);
	redis_pid = spawn(argv, log);
	if (redis_pid < 0 || wait_socket(redis_sock, redis_pid) < 0) {
		redis_pid = -1;
		return -1;
	}
	int fd = -1;
	for (int i = 0; i < 100 && (fd = redis_dial()) < 0; i++)
		sleep_ms(10);
	if (fd < 0)
		return -1;
	for (size_t i = 0; i < sizeof(val); i++)
		val[i] = (uint8_t)i;
	int hl = snprintf(hdr, sizeof(hdr), "*3\r\n$3\r\nSET\r\n$3\r\nact\r\n$%zu\r\n", sizeof(val));
	if (write(fd, hdr, (size_t)hl) != hl || write(fd, val, sizeof(val)) != (ssize_t)sizeof(val) ||
	    write(fd, "\r\n", 2) != 2 || resp_read(fd, buf, sizeof(buf)) != 0)
		return -1;
	static const char get[] = "*2\r\n$3\r\nGET\r\n$3\r\nact\r\n";
	for (size_t i = 0; i < n + 100; i++) {
		uint64_t t0 = lb_now_ns();
		if (write(fd, get, sizeof(get) - 1) != (ssize_t)sizeof(get) - 1)
			return -1;
		long got = resp_read(fd, buf, sizeof(buf));
		uint64_t t1 = lb_now_ns();
		if (got != (long)sizeof(val))
			return -1;
		if (i >= 100)
			ns[i - 100] = t1 - t0;
	}
	close(fd);
	lbb_stop(&redis_pid);
	return 0;
}

/* ---- throughput: batches of lookups and their releases, pipelined ---- */

struct tp_arg {
	uint64_t lookups;
	double seconds;
	struct lb_key key;
};

static void *tp_thread(void *p)
{
	struct tp_arg *a = p;
	uint32_t model;
	struct lb_client *c = client(&model);
	struct lb_result res[32];
	uint64_t end = lb_now_ns() + (uint64_t)(a->seconds * 1e9);

	while (lb_now_ns() < end) {
		int sent = 0, got = 0;
		for (; sent < 16; sent++)
			if (lb_submit_lookup_deepest(c, model, &a->key, NULL, 0, (uint64_t)sent) < 0)
				break;
		while (got < sent) {
			int n = lb_poll(c, res + got, (unsigned)(sent - got), 1000000);
			if (n <= 0)
				die("lb_poll", n < 0 ? -n : ETIMEDOUT);
			got += n;
		}
		int rel = 0;
		for (int i = 0; i < got; i++)
			if (res[i].status == 0 && lb_submit_release(c, res[i].hit.lease, 0) == 0)
				rel++;
		for (int done = 0; done < rel;) {
			int n = lb_poll(c, res, 32, 1000000);
			if (n <= 0)
				die("lb_poll", n < 0 ? -n : ETIMEDOUT);
			done += n;
		}
		a->lookups += (uint64_t)got;
	}
	lb_close(c);
	return NULL;
}

static double throughput(unsigned n_clients, const struct lb_key *k)
{
	pthread_t t[2];
	struct tp_arg a[2];
	uint64_t total = 0;
	for (unsigned i = 0; i < n_clients; i++) {
		memset(&a[i], 0, sizeof(a[i]));
		a[i].seconds = 1.0;
		a[i].key = *k;
		pthread_create(&t[i], NULL, tp_thread, &a[i]);
	}
	for (unsigned i = 0; i < n_clients; i++) {
		pthread_join(t[i], NULL);
		total += a[i].lookups;
	}
	return (double)total / a[0].seconds;
}

static int cmd_ring(int argc, char **argv)
{
	static const struct option opts[] = { { "json", no_argument, NULL, 'j' },
					      { "iters", required_argument, NULL, 'n' },
					      { "no-index", no_argument, NULL, 'x' },
					      { NULL, 0, NULL, 0 } };
	int json = 0, index = 1, ch;
	size_t iters = 100000;

	optind = 1;
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (ch == 'j')
			json = 1;
		else if (ch == 'x')
			index = 0;
		else if (ch == 'n' && atol(optarg) >= 100)
			iters = (size_t)atol(optarg);
		else {
			fprintf(stderr, "usage: layerbank-bench ring [--json] [--iters N>=100] [--no-index]\n");
			return 2;
		}
	}

	const char *tmp = getenv("TMPDIR");
	if ((size_t)snprintf(dir, sizeof(dir), "%s/layerbank-bench.XXXXXX", tmp && *tmp ? tmp : "/tmp") >= sizeof(dir))
		snprintf(dir, sizeof(dir), "/tmp/layerbank-bench.XXXXXX");
	if (!mkdtemp(dir))
		die("mkdtemp", errno);
	atexit(cleanup);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	snprintf(sock_path, sizeof(sock_path), "%s/lb.sock", dir);
	snprintf(redis_sock, sizeof(redis_sock), "%s/redis.sock", dir);

	char log[400];
	snprintf(log, sizeof(log), "%s/daemon.log", dir);
	const char *dargv[] = { LB_DAEMON_PATH, "--foreground", "--socket", sock_path, "--arena-size",
				"256M", "--hugepages", "try", "--threads", "1", "--spin-us", "1000",
				"--log-level", "warn", NULL };
	daemon_pid = spawn(dargv, log);
	if (daemon_pid < 0 || wait_socket(sock_path, daemon_pid) < 0)
		die("starting layerbankd", ECHILD);

	uint32_t model;
	struct lb_client *c = client(&model);
	struct lb_key k;
	make_key(&k, 1);
	fill(c, model, &k);

	size_t n_sock = iters / 10, n_redis = iters / 10;
	uint64_t *ring = malloc(iters * sizeof(uint64_t));
	uint64_t *sock = malloc(n_sock * sizeof(uint64_t));
	uint64_t *redis = malloc(n_redis * sizeof(uint64_t));
	if (!ring || !sock || !redis)
		die("malloc", ENOMEM);
	lb_set_spin_us(c, 1000);
	ring_latency(c, model, &k, ring, iters);
	socket_latency(model, &k, sock, n_sock);
	int have_redis = redis_latency(redis, n_redis) == 0;
	qsort(ring, iters, sizeof(*ring), cmp_u64);
	qsort(sock, n_sock, sizeof(*sock), cmp_u64);
	if (have_redis)
		qsort(redis, n_redis, sizeof(*redis), cmp_u64);
	lb_close(c);

	double tp1 = throughput(1, &k), tp2 = throughput(2, &k);
	lbb_stop(&daemon_pid);
	/* With the daemon gone, so that its spinning service thread does not take a core. */
	double floor_us = lbb_core_round_trip_us();

	static const uint32_t sizes[] = { 10000, 100000, 1000000 };
	struct lbb_index_row rows[3];
	uint32_t max_d = lb_fp_max_hamming(0.85);
	if (index) {
		int ret = lbb_index_run(sizes, 3, max_d, 7, rows);
		if (ret < 0)
			die("index benchmark", -ret);
	}

	double r50 = pct_us(ring, iters, 0.5), s50 = pct_us(sock, n_sock, 0.5);
	double d50 = have_redis ? pct_us(redis, n_redis, 0.5) : NAN;
	if (json) {
		json_object *o = json_object_new_object(), *ix = json_object_new_array();
		json_object_object_add(o, "ring_p50_us", json_object_new_double(r50));
		json_object_object_add(o, "ring_p99_us", json_object_new_double(pct_us(ring, iters, 0.99)));
		json_object_object_add(o, "ring_p999_us", json_object_new_double(pct_us(ring, iters, 0.999)));
		json_object_object_add(o, "core_round_trip_us", json_object_new_double(floor_us));
		json_object_object_add(o, "socket_p50_us", json_object_new_double(s50));
		json_object_object_add(o, "redis_p50_us", have_redis ? json_object_new_double(d50) : NULL);
		json_object_object_add(o, "ratio_socket", json_object_new_double(s50 / r50));
		json_object_object_add(o, "ratio_redis", have_redis ? json_object_new_double(d50 / r50) : NULL);
		json_object_object_add(o, "throughput_1_client", json_object_new_double(tp1));
		json_object_object_add(o, "throughput_2_clients", json_object_new_double(tp2));
		for (unsigned i = 0; index && i < 3; i++) {
			json_object *r = json_object_new_object();
			json_object_object_add(r, "entries", json_object_new_int64(rows[i].entries));
			json_object_object_add(r, "lookup_us", json_object_new_double(rows[i].lookup_us));
			json_object_object_add(r, "miss_us", json_object_new_double(rows[i].miss_us));
			json_object_object_add(r, "brute_us", json_object_new_double(rows[i].brute_us));
			json_object_object_add(r, "recall", json_object_new_double(rows[i].recall));
			json_object_object_add(r, "exact_lookup_us", json_object_new_double(rows[i].exact_us));
			json_object_object_add(r, "exact_recall", json_object_new_double(rows[i].exact_recall));
			json_object_array_add(ix, r);
		}
		json_object_object_add(o, "index", ix);
		json_object_object_add(o, "iters", json_object_new_int64((int64_t)iters));
		json_object_object_add(o, "activation_bytes", json_object_new_int64((int64_t)ACT_BYTES));
		puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
		json_object_put(o);
	} else {
		printf("LOOKUP_DEEPEST hit of a %zu KiB activation, %zu lookups (baselines: %zu)\n",
		       ACT_BYTES >> 10, iters, n_sock);
		printf("  %-28s %9s %9s %9s %9s\n", "path", "p50 us", "p99 us", "p99.9 us", "vs ring");
		printf("  %-28s %9.2f %9.2f %9.2f %9s\n", "ring (shared memory)", r50,
		       pct_us(ring, iters, 0.99), pct_us(ring, iters, 0.999), "1.0x");
		printf("  %-28s %9.2f %9.2f %9.2f %8.1fx\n", "control socket", s50,
		       pct_us(sock, n_sock, 0.99), pct_us(sock, n_sock, 0.999), s50 / r50);
		if (have_redis)
			printf("  %-28s %9.2f %9.2f %9.2f %8.1fx\n", "redis GET (unix socket)", d50,
			       pct_us(redis, n_redis, 0.99), pct_us(redis, n_redis, 0.999), d50 / r50);
		else
			printf("  %-28s (redis-server not installed)\n", "redis GET");
		printf("  %-28s %9.2f   (two threads passing one cache line: the floor)\n",
		       "core-to-core round trip", floor_us);
		printf("throughput (lookup + release, batches of 16): 1 client %.0f/s, 2 clients %.0f/s\n",
		       tp1, tp2);
		if (index) {
			printf("fingerprint index (radius %u bits, tau 0.85)\n", max_d);
			printf("  %10s %9s %8s %9s %8s %9s %10s\n", "entries", "hit us", "recall",
			       "exact us", "recall", "miss us", "brute us");
			for (unsigned i = 0; i < 3; i++)
				printf("  %10u %9.2f %8.4f %9.2f %8.4f %9.2f %10.2f\n", rows[i].entries,
				       rows[i].lookup_us, rows[i].recall, rows[i].exact_us,
				       rows[i].exact_recall, rows[i].miss_us, rows[i].brute_us);
			printf("  hit cost at 10^6 / 10^4: %.2fx (exact: %.2fx)\n",
			       rows[2].lookup_us / rows[0].lookup_us, rows[2].exact_us / rows[0].exact_us);
		}
	}
	free(ring);
	free(sock);
	free(redis);
	return 0;
}

/* ---- kernels: packed GEMM against OpenBLAS, BERT-base forward against PyTorch ---- */

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* Median seconds of one call of fn(arg) over at least min_reps calls and min_s seconds. */
static double time_median(void (*fn)(void *), void *arg, int min_reps, double min_s)
{
	enum { MAX_REPS = 4096 };
	static double t[MAX_REPS];
	int n = 0;
	fn(arg); /* warm-up */
	double start = now_s();
	while (n < MAX_REPS && (n < min_reps || now_s() - start < min_s)) {
		double t0 = now_s();
		fn(arg);
		t[n++] = now_s() - t0;
	}
	qsort(t, (size_t)n, sizeof(double), cmp_double);
	return t[n / 2];
}

struct gemm_arg {
	float *y;
	const float *x, *w;
	const struct lbk_packed *p;
	int64_t m, n, k;
	int threads;
};

static void run_ours(void *a)
{
	struct gemm_arg *g = a;
	lbk_gemm(g->y, g->x, g->p, NULL, g->m, g->threads);
}

#ifdef LB_HAVE_OPENBLAS
static void run_openblas(void *a)
{
	struct gemm_arg *g = a;
	/* y[m][n] = x[m][k] . W[n][k]^T, the same product as lbk_gemm */
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)g->m, (blasint)g->n,
		    (blasint)g->k, 1.0f, g->x, (blasint)g->k, g->w, (blasint)g->k, 0.0f, g->y,
		    (blasint)g->n);
}
#endif

struct fwd_arg {
	const struct lbw_bert *m;
	const int32_t *tok;
	float *out;
	int threads;
};

static void run_forward(void *a)
{
	struct fwd_arg *f = a;
	if (lbw_bert_forward(f->m, SEQ, f->tok, f->out, f->threads) != 0)
		die("lbw_bert_forward", EINVAL);
}

/* BERT-base shaped, random weights, post-LN encoder layers as torch.nn builds them. */
static const char torch_script[] =
	"import sys, time, statistics, torch\n"
	"from torch import nn\n"
	"threads = int(sys.argv[1])\n"
	"torch.set_num_threads(threads)\n"
	"torch.manual_seed(0)\n"
	"class Bert(nn.Module):\n"
	"    def __init__(s):\n"
	"        super().__init__()\n"
	"        s.tok = nn.Embedding(30522, 768); s.pos = nn.Embedding(512, 768)\n"
	"        s.ln = nn.LayerNorm(768, eps=1e-12)\n"
	"        s.layers = nn.ModuleList([nn.TransformerEncoderLayer(768, 12, 3072, dropout=0.0,\n"
	"            activation='gelu', layer_norm_eps=1e-12, batch_first=True, norm_first=False)\n"
	"            for _ in range(12)])\n"
	"    def forward(s, ids):\n"
	"        x = s.ln(s.tok(ids) + s.pos(torch.arange(ids.shape[1]).unsqueeze(0)))\n"
	"        for l in s.layers:\n"
	"            x = l(x)\n"
	"        return x\n"
	"m = Bert().eval()\n"
	"ids = torch.randint(0, 30522, (1, 128))\n"
	"with torch.no_grad():\n"
	"    for _ in range(2): m(ids)\n"
	"    t = []\n"
	"    for _ in range(7):\n"
	"        t0 = time.perf_counter(); m(ids); t.append(time.perf_counter() - t0)\n"
	"print('%.3f' % (statistics.median(t) * 1e3))\n";

/* PyTorch's forward ms on threads threads with the BLAS it links (Debian's: OpenBLAS, a pthread
 * pool of its own) on blas_threads, or -1 when torch is missing or the run fails. */
static double torch_forward_ms(int threads, int blas_threads)
{
	char script[128], cmd[256];
	snprintf(script, sizeof(script), "%s/bert_torch.py", dir);
	FILE *f = fopen(script, "w");
	if (!f)
		return -1;
	fputs(torch_script, f);
	fclose(f);
	snprintf(cmd, sizeof(cmd), "OMP_NUM_THREADS=%d OPENBLAS_NUM_THREADS=%d /usr/bin/python3 %s %d 2>/dev/null",
		 threads, blas_threads, script, threads);
	FILE *p = popen(cmd, "r");
	if (!p)
		return -1;
	double ms = -1;
	if (fscanf(p, "%lf", &ms) != 1)
		ms = -1;
	if (pclose(p) != 0)
		ms = -1;
	unlink(script);
	return ms;
}

/* stories260K greedy generation: 256 steps from BOS (an empty prompt), stopping at BOS as
 * llama2.c does; tokens counts the steps run. */
struct gen_arg {
	const struct lbw_llama *m;
	struct lbw_llama_state *s;
	int tokens;
};

static void run_generate(void *a)
{
	struct gen_arg *g = a;
	int32_t tok = LBW_TOK_BOS;
	g->tokens = 0;
	for (int32_t pos = 0; pos < 256 && pos < g->m->cfg.seq_len; pos++) {
		int32_t next = lbw_llama_argmax(lbw_llama_forward(g->m, g->s, tok, pos),
						g->m->cfg.vocab_size);
		g->tokens++;
		if (next == LBW_TOK_BOS)
			break;
		tok = next;
	}
}

static int cmd_kernels(int argc, char **argv)
{
	int json = argc >= 2 && strcmp(argv[1], "--json") == 0;
	if (argc > 2 || (argc == 2 && !json)) {
		fprintf(stderr, "usage: layerbank-bench kernels [--json]\n");
		return 2;
	}
#ifdef LB_HAVE_OPENBLAS
	/* OpenBLAS 0.3.21 misdetects these EPYC vCPUs (and these machines' environment presets
	 * Haswell, the AVX2 kernels): it reads the variable when it loads, so set it and start
	 * again (argv - 1: main's argv, "kernels" at argv[0] here). LB_BENCH_REEXEC stops a loop. */
	const char *ct = getenv("OPENBLAS_CORETYPE");
	if ((!ct || strcmp(ct, "SkylakeX") != 0) && !getenv("LB_BENCH_REEXEC")) {
		if (ct)
			fprintf(stderr, "layerbank-bench: OPENBLAS_CORETYPE=%s replaced by SkylakeX\n", ct);
		setenv("OPENBLAS_CORETYPE", "SkylakeX", 1);
		setenv("LB_BENCH_REEXEC", "1", 1);
		execv("/proc/self/exe", argv - 1);
		die("re-exec with OPENBLAS_CORETYPE", errno);
	}
	const char *core = openblas_get_corename();
#else
	const char *core = NULL;
#endif
	static const int64_t shapes[3][2] = { { 768, 768 }, { 3072, 768 }, { 768, 3072 } };
	struct row {
		int64_t n, k;
		int threads;
		double ours, blas;
	} rows[6];
	const int64_t m = SEQ;
	int nr = 0;
	for (int s = 0; s < 3; s++) {
		int64_t n = shapes[s][0], k = shapes[s][1];
		float *x = malloc((size_t)(m * k) * sizeof(float)), *w = malloc((size_t)(n * k) * sizeof(float));
		float *y = malloc((size_t)(m * n) * sizeof(float)), *y2 = malloc((size_t)(m * n) * sizeof(float));
		if (!x || !w || !y || !y2)
			die("malloc", ENOMEM);
		uint64_t r = 1;
		for (int64_t i = 0; i < m * k; i++)
			x[i] = (float)((r = r * 6364136223846793005ull + 1) >> 40) / 8388608.0f - 1.0f;
		for (int64_t i = 0; i < n * k; i++)
			w[i] = (float)((r = r * 6364136223846793005ull + 1) >> 40) / 8388608.0f - 1.0f;
		struct lbk_packed *p = lbk_pack(w, n, k);
		if (!p)
			die("lbk_pack", errno);
		for (int threads = 1; threads <= 2; threads++) {
			struct gemm_arg g = { y, x, w, p, m, n, k, threads };
			double flop = 2.0 * (double)m * (double)n * (double)k;
			struct row *rw = &rows[nr++];
			*rw = (struct row){ n, k, threads, flop / time_median(run_ours, &g, 20, 0.5) * 1e-9, -1 };
#ifdef LB_HAVE_OPENBLAS
			openblas_set_num_threads(threads);
			g.y = y2;
			rw->blas = flop / time_median(run_openblas, &g, 20, 0.5) * 1e-9;
			double worst = 0;
			for (int64_t i = 0; i < m * n; i++)
				worst = fmax(worst, fabs(y[i] - y2[i]));
			if (worst > 1e-2)
				fprintf(stderr, "layerbank-bench: GEMM %lldx%lldx%lld differs from OpenBLAS by %g\n",
					(long long)m, (long long)n, (long long)k, worst);
#endif
		}
		lbk_packed_free(p);
		free(x);
		free(w);
		free(y);
		free(y2);
	}

	/* BERT-base forward at seq 128: ours (generated weights), then PyTorch's */
	struct lbw_bert_config cfg = lbw_bert_config_base();
	struct lbw_bert *model = lbw_bert_generate(&cfg, 1);
	if (!model)
		die("lbw_bert_generate", errno);
	int32_t tok[SEQ];
	for (int i = 0; i < SEQ; i++)
		tok[i] = (int32_t)((i * 7919 + 101) % cfg.vocab);
	float *out = malloc((size_t)SEQ * HIDDEN * sizeof(float));
	if (!out)
		die("malloc", ENOMEM);
	double ours_ms[2], torch_ms[2];
	for (int t = 0; t < 2; t++) {
		struct fwd_arg fa = { model, tok, out, t + 1 };
		ours_ms[t] = time_median(run_forward, &fa, 7, 1.0) * 1e3;
	}
	free(out);
	lbw_bert_free(model);
	int have_torch = system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") == 0;
	if (have_torch) {
		snprintf(dir, sizeof(dir), "/tmp/lbbench.XXXXXX");
		if (!mkdtemp(dir))
			die("mkdtemp", errno);
		/* Two threads: torch's OpenMP threads and OpenBLAS's own pool contend (2 + 2 threads
		 * on 2 vCPUs); torch's better figure of OpenBLAS on 2 threads and on 1 is kept. */
		torch_ms[0] = torch_forward_ms(1, 1);
		torch_ms[1] = torch_forward_ms(2, 2);
		double alt = torch_forward_ms(2, 1);
		if (alt > 0 && (torch_ms[1] < 0 || alt < torch_ms[1]))
			torch_ms[1] = alt;
		rmdir(dir);
		have_torch = torch_ms[0] > 0 && torch_ms[1] > 0;
	}

	/* stories260K greedy tok/s: the lbk_* forward, then the plain-C reference, same run */
	double stories_tok_s = -1, reference_tok_s = -1;
	{
		struct lbw_llama lm;
		struct lbw_llama_state ls;
		char err[256];
		if (access(LB_DATA_DIR "/stories260K.bin", R_OK) == 0 &&
		    access(LB_DATA_DIR "/tok512.bin", R_OK) == 0) {
			int rc = lbw_llama_load(&lm, LB_DATA_DIR "/stories260K.bin", err, sizeof(err));
			if (rc < 0) {
				fprintf(stderr, "layerbank-bench: %s\n", err);
				die("lbw_llama_load", -rc);
			}
			if (lbw_llama_state_init(&ls, &lm.cfg) < 0)
				die("lbw_llama_state_init", ENOMEM);
			struct gen_arg ga = { &lm, &ls, 0 };
			for (int ref = 0; ref <= 1; ref++) {
				lbw_llama_set_reference(&lm, ref);
				double sec = time_median(run_generate, &ga, 11, 1.0);
				*(ref ? &reference_tok_s : &stories_tok_s) = ga.tokens / sec;
			}
			lbw_llama_state_free(&ls);
			lbw_llama_free(&lm);
		}
	}

	if (json) {
		json_object *o = json_object_new_object(), *ga = json_object_new_array();
		for (int i = 0; i < nr; i++) {
			json_object *r = json_object_new_object();
			json_object_object_add(r, "m", json_object_new_int64(m));
			json_object_object_add(r, "n", json_object_new_int64(rows[i].n));
			json_object_object_add(r, "k", json_object_new_int64(rows[i].k));
			json_object_object_add(r, "threads", json_object_new_int(rows[i].threads));
			json_object_object_add(r, "ours_gflops", json_object_new_double(rows[i].ours));
			json_object_object_add(r, "openblas_gflops", rows[i].blas > 0 ? json_object_new_double(rows[i].blas) : NULL);
			json_object_object_add(r, "ratio", rows[i].blas > 0 ? json_object_new_double(rows[i].ours / rows[i].blas) : NULL);
			json_object_array_add(ga, r);
		}
		json_object_object_add(o, "gemm", ga);
		json_object_object_add(o, "openblas_coretype", core ? json_object_new_string(core) : NULL);
		json_object *bo = json_object_new_object(), *to = NULL, *ro = NULL;
		if (have_torch) {
			to = json_object_new_object();
			ro = json_object_new_object();
		}
		for (int t = 0; t < 2; t++) {
			char key[8];
			snprintf(key, sizeof(key), "%d", t + 1);
			json_object_object_add(bo, key, json_object_new_double(ours_ms[t]));
			if (have_torch) {
				json_object_object_add(to, key, json_object_new_double(torch_ms[t]));
				json_object_object_add(ro, key, json_object_new_double(torch_ms[t] / ours_ms[t]));
			}
		}
		json_object_object_add(o, "seq", json_object_new_int(SEQ));
		json_object_object_add(o, "bert_forward_ms", bo);
		json_object_object_add(o, "torch_forward_ms", to);
		json_object_object_add(o, "ratio_torch", ro);
		int have_st = stories_tok_s > 0 && reference_tok_s > 0;
		json_object_object_add(o, "stories_tok_s", have_st ? json_object_new_double(stories_tok_s) : NULL);
		json_object_object_add(o, "reference_tok_s", have_st ? json_object_new_double(reference_tok_s) : NULL);
		json_object_object_add(o, "ratio_stories", have_st ? json_object_new_double(stories_tok_s / reference_tok_s) : NULL);
		puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
		json_object_put(o);
		return 0;
	}
	printf("GEMM y[M][N] = x[M][K] . W^T, M = %lld (BERT-base at seq %d); OpenBLAS core: %s\n",
	       (long long)m, SEQ, core ? core : "(not built with OpenBLAS)");
	printf("  %6s %6s %7s %12s %16s %8s\n", "N", "K", "threads", "ours GF/s", "OpenBLAS GF/s", "ratio");
	for (int i = 0; i < nr; i++)
		printf("  %6lld %6lld %7d %12.1f %16.1f %7.2fx\n", (long long)rows[i].n,
		       (long long)rows[i].k, rows[i].threads, rows[i].ours, rows[i].blas,
		       rows[i].blas > 0 ? rows[i].ours / rows[i].blas : 0.0);
	printf("BERT-base forward, seq %d (median ms):\n", SEQ);
	for (int t = 0; t < 2; t++) {
		if (have_torch)
			printf("  %d thread(s): ours %8.1f   PyTorch %8.1f   PyTorch / ours %.2fx\n", t + 1,
			       ours_ms[t], torch_ms[t], torch_ms[t] / ours_ms[t]);
		else
			printf("  %d thread(s): ours %8.1f   PyTorch: not installed (/usr/bin/python3 cannot import torch)\n",
			       t + 1, ours_ms[t]);
	}
	printf("stories260K greedy generation (256 steps, empty prompt, 1 thread):\n");
	if (stories_tok_s > 0 && reference_tok_s > 0)
		printf("  lbk_* kernels %10.0f tok/s   plain-C reference %10.0f tok/s   ratio %.2fx\n",
		       stories_tok_s, reference_tok_s, stories_tok_s / reference_tok_s);
	else
		printf("  skipped: data absent (%s)\n", LB_DATA_DIR);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "ring") == 0)
		return cmd_ring(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "kernels") == 0)
		return cmd_kernels(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "workload") == 0)
		return bench_workload_main(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "e2e") == 0)
		return bench_e2e_main(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "snapshot") == 0)
		return bench_snapshot_main(argc - 1, argv + 1);
	fprintf(stderr, "usage: layerbank-bench ring [--json] [--iters N] [--no-index]\n"
			"       layerbank-bench kernels [--json]\n"
			"       layerbank-bench workload [--summary] [options: see --help]\n"
			"       layerbank-bench e2e [--json] [--plot FILE] [options: see --help]\n"
			"       layerbank-bench snapshot [--arena-size SIZE] [--dir DIR] [--json]\n");
	return 2;
}
