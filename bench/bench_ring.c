/* layerbank-bench ring: a lookup's round trip through the rings against the same lookup over
 * the control socket, a Redis GET on loopback and two threads passing one cache line (the
 * floor), throughput with one and two clients, and the fingerprint index against the
 * brute-force scan. It starts its own layerbankd (and redis-server when installed) in a
 * temporary folder and stops them before it exits. */
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
#include "io.h"
#include "layerbank/layerbank.h"
#include "layerbank/ring.h"
#include "lbp.h"

#define SEQ 128
#define HIDDEN 768
#define LAYERS 12
#define ACT_BYTES ((size_t)SEQ * HIDDEN * sizeof(float)) /* 384 KiB: one BERT-base layer */

static char dir[64], sock_path[100], redis_sock[100];
static pid_t daemon_pid = -1, redis_pid = -1;

static void cleanup(void)
{
	lbb_stop(&daemon_pid);
	lbb_stop(&redis_pid);
	lbu_rmtree(dir);
}

/* ---- statistics ---- */

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
		lbb_die("ring", "lb_connect", -ret);
	ret = lb_register_model(c, &d, model);
	if (ret < 0)
		lbb_die("ring", "lb_register_model", -ret);
	return c;
}

static void fill(struct lb_client *c, uint32_t model, const struct lb_key *k)
{
	for (uint32_t l = 0; l < LAYERS; l++) {
		float *p = lb_insert_reserve(c, ACT_BYTES);
		if (!p)
			lbb_die("ring", "lb_insert_reserve", errno);
		for (size_t i = 0; i < ACT_BYTES / sizeof(float); i++)
			p[i] = (float)(l * 1000 + i % 1000);
		struct lb_shape sh = { LB_DTYPE_F32, 2, { SEQ, HIDDEN } };
		int ret = lb_insert_commit(c, model, l, k, &sh);
		if (ret < 0 && ret != -EEXIST)
			lbb_die("ring", "lb_insert_commit", -ret);
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
			lbb_die("ring", "lb_lookup_deepest", -ret);
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
		lbb_die("ring", "connect", errno);
	m.u.hello.shm_abi = LB_SHM_ABI_VERSION;
	int len = lbp_encode(&m, buf, sizeof(buf));
	if (send(fd, buf, (size_t)len, 0) != len)
		lbb_die("ring", "send HELLO", errno);
	struct iovec iov = { buf, sizeof(buf) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
	if (recvmsg(fd, &msg, MSG_CMSG_CLOEXEC) <= 0)
		lbb_die("ring", "recv WELCOME", errno);
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
		lbb_die("ring", "send REGISTER_MODEL", errno);
	ssize_t got = recv(fd, buf, sizeof(buf), 0);
	if (got <= 0 || lbp_decode(buf, (size_t)got, &rep, NULL) < 0 || rep.type != LBP_MODEL ||
	    rep.u.model.model_id != model)
		lbb_die("ring", "REGISTER_MODEL over the socket", EPROTO);
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
			lbb_die("ring", "send LOOKUP", errno);
		ssize_t r = recv(fd, buf, sizeof(buf), 0);
		uint64_t t1 = lb_now_ns();
		if (r <= 0 || lbp_decode(buf, (size_t)r, &rep, NULL) < 0 || rep.type != LBP_LOOKUP_REPLY ||
		    rep.u.lookup_reply.status != 0)
			lbb_die("ring", "LOOKUP over the socket", EPROTO);
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
	redis_pid = lbb_spawn(argv, log);
	if (redis_pid < 0 || lbb_wait_socket(redis_sock, &redis_pid, 10) < 0) {
		redis_pid = -1;
		return -1;
	}
	int fd = -1;
	for (int i = 0; i < 100 && (fd = redis_dial()) < 0; i++)
		lbb_sleep_ms(10);
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
				lbb_die("ring", "lb_poll", n < 0 ? -n : ETIMEDOUT);
			got += n;
		}
		int rel = 0;
		for (int i = 0; i < got; i++)
			if (res[i].status == 0 && lb_submit_release(c, res[i].hit.lease, 0) == 0)
				rel++;
		for (int done = 0; done < rel;) {
			int n = lb_poll(c, res, 32, 1000000);
			if (n <= 0)
				lbb_die("ring", "lb_poll", n < 0 ? -n : ETIMEDOUT);
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

int bench_ring_main(int argc, char **argv)
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

	lbb_tempdir(dir, sizeof(dir), NULL, "ring", cleanup);
	snprintf(sock_path, sizeof(sock_path), "%s/lb.sock", dir);
	snprintf(redis_sock, sizeof(redis_sock), "%s/redis.sock", dir);

	char log[400];
	snprintf(log, sizeof(log), "%s/daemon.log", dir);
	const char *dargv[] = { LB_DAEMON_PATH, "--foreground", "--socket", sock_path, "--arena-size",
				"256M", "--hugepages", "try", "--threads", "1", "--spin-us", "1000",
				"--log-level", "warn", NULL };
	daemon_pid = lbb_spawn(dargv, log);
	if (daemon_pid < 0 || lbb_wait_socket(sock_path, &daemon_pid, 10) < 0)
		lbb_die("ring", "starting layerbankd", ECHILD);

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
		lbb_die("ring", "malloc", ENOMEM);
	lb_set_spin_us(c, 1000);
	ring_latency(c, model, &k, ring, iters);
	socket_latency(model, &k, sock, n_sock);
	int have_redis = redis_latency(redis, n_redis) == 0;
	qsort(ring, iters, sizeof(*ring), lbb_cmp_u64);
	qsort(sock, n_sock, sizeof(*sock), lbb_cmp_u64);
	if (have_redis)
		qsort(redis, n_redis, sizeof(*redis), lbb_cmp_u64);
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
			lbb_die("ring", "index benchmark", -ret);
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

