/* layerbank-ctl's administrative and monitoring commands against a live layerbankd: flush (all,
 * one model, one layer; entries under lease stay valid until released), config set and get
 * (round trips, effects on lookups, eviction and expiry, refusals, who may), metrics (the
 * Prometheus text format checked line by line, figures equal to stats --json), the second tier
 * shown "off" in each without one, the tenants and the rows per NUMA node alike in every view
 * (the daemon's, and a STATS_REPLY made up, drawn by the views' library), and top without a
 * terminal. `test_ctl top` drives top in tmux (SKIP without tmux). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <json-c/json.h>
#include <math.h>
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

#include "client_internal.h" /* lbi_stats_from_reply: a reply no daemon sends yet */
#include "ctl.h"
#include "layerbank/layerbank.h"
#include "lbp.h"
#include "testutil.h"

static struct lbt_env env; /* every test's fixture (lbt_env_setup, lbt_env_teardown) */

#define HIDDEN 32u
#define SEQ 8u
#define ENTRY_BYTES (SEQ * HIDDEN * 4u)
#define ENTRY_ALLOC 1152u /* 128-byte header + ENTRY_BYTES, rounded up to 64 */

static void start_daemon(void)
{
	assert_true(lbt_daemon_start(&env, LBT_ARGS(LBT_SMALL)) > 0);
}

static void stop_daemon(void)
{
	assert_true(lbt_daemon_stop(&env));
}

/* ---- the daemon as a worker sees it ---- */

static uint32_t add_model(struct lb_client *c, const char *name, uint32_t n_layers)
{
	struct lb_model_desc d = { .name = name, .weights_hash = 0x5eed, .n_layers = n_layers,
				   .hidden = HIDDEN, .dtype = LB_DTYPE_F32, .max_seq = 64,
				   .fp_seed = 9 };
	uint32_t id;
	assert_int_equal(lb_register_model(c, &d, &id), 0);
	return id;
}

static uint64_t mix(uint64_t x)
{
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* Input i: its own token hash and a fingerprint far from every other input's. */
static struct lb_key key_of(uint32_t i)
{
	struct lb_key k;
	memset(&k, 0, sizeof(k));
	for (unsigned w = 0; w < 4; w++)
		k.fp[w] = mix(0x1000 + i * 4 + w);
	k.exact[0] = i + 1;
	k.exact[1] = 0xc7c7;
	k.seq_len = SEQ;
	return k;
}

static float pattern(uint32_t model, uint32_t input, uint32_t layer, uint32_t k)
{
	return (float)(model * 100000 + input * 1000 + layer * 100) + (float)k * 0.25f;
}

static void insert(struct lb_client *c, uint32_t model, const struct lb_key *key, uint32_t input,
		   uint32_t layer)
{
	struct lb_shape sh = { LB_DTYPE_F32, 2, { SEQ, HIDDEN, 0, 0 } };
	float *out = lb_insert_reserve(c, ENTRY_BYTES);
	assert_non_null(out);
	for (uint32_t k = 0; k < SEQ * HIDDEN; k++)
		out[k] = pattern(model, input, layer, k);
	assert_int_equal(lb_insert_commit(c, model, layer, key, &sh), 0);
}

static void insert_inputs(struct lb_client *c, uint32_t model, uint32_t first, uint32_t n,
			  uint32_t n_layers)
{
	for (uint32_t i = first; i < first + n; i++) {
		struct lb_key k = key_of(i);
		for (uint32_t l = 0; l < n_layers; l++)
			insert(c, model, &k, i, l);
	}
}

/* The hit's data is what was inserted for (model, input, layer). */
static void assert_hit_data(const struct lb_hit *h, uint32_t model, uint32_t input, uint32_t layer)
{
	const float *d = h->data;
	assert_int_equal(h->bytes, ENTRY_BYTES);
	for (uint32_t k = 0; k < SEQ * HIDDEN; k++)
		if (d[k] != pattern(model, input, layer, k))
			fail_msg("entry data changed at %u: %g", k, (double)d[k]);
}

static struct lb_stats stats(struct lb_client *c)
{
	struct lb_stats st;
	assert_int_equal(lb_stats(c, &st, sizeof(st)), 0);
	return st;
}

static struct lb_layer_stats layer_stats(struct lb_client *c, uint32_t model, uint32_t layer)
{
	struct lb_layer_stats ls[16];
	int n = lb_model_stats(c, model, NULL, ls, 16);
	assert_true(n > (int)layer);
	return ls[layer];
}

/* ---- layerbank-ctl ---- */

/* Run layerbank-ctl --socket SOCK args... (NULL-terminated). @return its exit status. */
static int ctl(char *out, size_t n, ...)
{
	va_list ap;
	int st;

	va_start(ap, n);
	st = lbt_vrun(LBT_ARGS(LB_CTL_PATH, "--socket", env.sock), out, n, ap);
	va_end(ap);
	assert_true(WIFEXITED(st));
	return WEXITSTATUS(st);
}

/* An error is exactly one line. */
static void assert_one_line(const char *out)
{
	const char *nl = strchr(out, '\n');
	if (!nl || nl[1] != '\0')
		fail_msg("expected one line, got: '%s'", out);
}

#define assert_contains(hay, needle)                                                        \
	do {                                                                                \
		if (!strstr((hay), (needle)))                                               \
			fail_msg("'%s' not in: %s", (needle), (hay));                      \
	} while (0)

/* ---- a raw control connection, for what liblayerbank would refuse to send ---- */

static int raw_call(int fd, const struct lbp_msg *req, struct lbp_msg *rep)
{
	char buf[LBP_MAX_FRAME + 1];
	_Alignas(struct cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * 16)];
	struct iovec iov = { buf, sizeof(buf) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			      .msg_controllen = sizeof(cbuf) };
	int len = lbp_encode(req, buf, sizeof(buf));

	assert_true(len > 0);
	assert_int_equal(send(fd, buf, (size_t)len, MSG_NOSIGNAL), len);
	ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
	assert_true(n > 0);
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
		int fds[16];
		size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		memcpy(fds, CMSG_DATA(cm), k * sizeof(int));
		for (size_t i = 0; i < k; i++)
			close(fds[i]);
	}
	return lbp_decode(buf, (size_t)n, rep, NULL);
}

static int raw_connect(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct lbp_msg hello = { .type = LBP_HELLO }, rep;
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	strcpy(sa.sun_path, env.sock);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	hello.u.hello.shm_abi = LB_SHM_ABI_VERSION;
	strcpy(hello.u.hello.name, "raw");
	assert_int_equal(raw_call(fd, &hello, &rep), 0);
	assert_int_equal(rep.type, LBP_WELCOME);
	return fd;
}

/* ================= flush ================= */

static void test_flush_layer_model_all_and_leases_stay_valid(void **state)
{
	struct lb_client *c;
	struct lb_hit h;
	struct lb_key k;
	struct lb_stats st;
	char out[4096], id[16];

	(void)state;
	start_daemon();
	assert_int_equal(lb_connect(env.sock, "flush-test", &c), 0);
	uint32_t a = add_model(c, "alpha", 4), b = add_model(c, "beta", 2);
	insert_inputs(c, a, 0, 3, 4);
	insert_inputs(c, b, 0, 3, 2);
	st = stats(c);
	assert_int_equal(st.entries, 18);
	assert_int_equal(st.bytes_used, 18 * ENTRY_ALLOC);

	/* One layer of one model, with one of its entries under lease. */
	k = key_of(0);
	assert_int_equal(lb_lookup(c, a, 2, &k, NULL, 0, &h), 0);
	assert_int_equal(ctl(out, sizeof(out), "flush", "--model", "alpha", "--layer", "2", NULL), 0);
	assert_contains(out, "flushed 3 entries, 3456 bytes");
	assert_contains(out, "1 of them under lease");
	st = stats(c);
	assert_int_equal(st.entries, 15);
	assert_int_equal(st.leases, 1);
	assert_int_equal(st.bytes_used, 16 * ENTRY_ALLOC); /* the leased one until released */
	assert_int_equal(st.evictions, 0);                 /* a flush is not an eviction */
	assert_int_equal(layer_stats(c, a, 2).entries, 0);
	assert_int_equal(layer_stats(c, a, 2).bytes, 0);
	assert_int_equal(layer_stats(c, a, 2).leases, 0);
	for (uint32_t l = 0; l < 4; l++)
		if (l != 2)
			assert_int_equal(layer_stats(c, a, l).entries, 3);
	assert_int_equal(layer_stats(c, b, 0).entries, 3);
	assert_hit_data(&h, a, 0, 2); /* the holder still reads it, unchanged */
	struct lb_hit again;
	assert_int_equal(lb_lookup(c, a, 2, &k, NULL, 0, &again), -ENOENT); /* never hit again */
	assert_int_equal(lb_lookup(c, a, 1, &k, NULL, 0, &again), 0);       /* its neighbour is */
	assert_int_equal(lb_release(c, again.lease), 0);
	assert_int_equal(lb_release(c, h.lease), 0);
	st = stats(c);
	assert_int_equal(st.leases, 0);
	assert_int_equal(st.bytes_used, 15 * ENTRY_ALLOC); /* freed with the last lease */

	/* One model, named by its id. */
	k = key_of(1);
	assert_int_equal(lb_lookup(c, b, 1, &k, NULL, 0, &h), 0);
	snprintf(id, sizeof(id), "%u", b);
	assert_int_equal(ctl(out, sizeof(out), "flush", "--model", id, NULL), 0);
	assert_contains(out, "flushed 6 entries");
	assert_contains(out, "1 of them under lease");
	st = stats(c);
	assert_int_equal(st.entries, 9);
	assert_int_equal(layer_stats(c, b, 0).entries, 0);
	assert_int_equal(layer_stats(c, b, 1).entries, 0);
	assert_int_equal(layer_stats(c, a, 0).entries, 3);
	assert_hit_data(&h, b, 1, 1);
	assert_int_equal(lb_lookup_deepest(c, b, &k, NULL, 0, &again), -ENOENT);
	assert_int_equal(lb_release(c, h.lease), 0);

	/* Everything. */
	k = key_of(2);
	assert_int_equal(lb_lookup(c, a, 3, &k, NULL, 0, &h), 0);
	assert_int_equal(ctl(out, sizeof(out), "flush", NULL), 0);
	assert_contains(out, "flushed 9 entries");
	st = stats(c);
	assert_int_equal(st.entries, 0);
	assert_int_equal(st.leases, 1);
	assert_int_equal(st.bytes_used, ENTRY_ALLOC);
	assert_hit_data(&h, a, 2, 3);
	assert_int_equal(lb_release(c, h.lease), 0);
	assert_int_equal(stats(c).bytes_used, 0);
	/* The cache works as before: a flushed input can be inserted again. */
	k = key_of(0);
	insert(c, a, &k, 0, 2);
	assert_int_equal(lb_lookup(c, a, 2, &k, NULL, 0, &h), 0);
	assert_hit_data(&h, a, 0, 2);
	assert_int_equal(lb_release(c, h.lease), 0);

	/* Refusals: one line each; the daemon's are status 1, the command line's 2. */
	assert_int_equal(ctl(out, sizeof(out), "flush", "--model", "gamma", NULL), 1);
	assert_one_line(out);
	assert_contains(out, "no model named 'gamma'");
	assert_int_equal(ctl(out, sizeof(out), "flush", "--model", "alpha", "--layer", "4", NULL), 1);
	assert_one_line(out);
	assert_contains(out, "layers 0..3");
	assert_int_equal(ctl(out, sizeof(out), "flush", "--layer", "1", NULL), 2);
	assert_one_line(out);
	assert_int_equal(ctl(out, sizeof(out), "flush", "--model", "alpha", "--layer", "x", NULL), 2);
	assert_int_equal(ctl(out, sizeof(out), "flush", "--model", NULL), 2);
	assert_int_equal(ctl(out, sizeof(out), "flush", "--bogus", NULL), 2);
	struct lb_flush_result r;
	assert_int_equal(lb_flush(c, 99, -1, &r), -ESRCH);
	assert_int_equal(lb_flush(c, a, 4, &r), -EINVAL);
	assert_int_equal(lb_flush(c, a, -2, &r), -EINVAL);
	assert_int_equal(lb_flush(c, 0, 1, &r), -EINVAL);
	assert_int_equal(lb_flush(c, a, 2, &r), 0);
	assert_int_equal(r.entries, 1);
	assert_int_equal(r.bytes, ENTRY_ALLOC);
	assert_int_equal(r.leased, 0);

	/* What the library will not send, the daemon refuses too, and keeps the connection. */
	int fd = raw_connect();
	struct lbp_msg req = { .type = LBP_FLUSH }, rep;
	req.u.flush.model_id = 0;
	req.u.flush.layer = 3;
	assert_int_equal(raw_call(fd, &req, &rep), 0);
	assert_int_equal(rep.type, LBP_ERROR);
	assert_int_equal(rep.u.error.code, EINVAL);
	assert_string_equal(rep.u.error.field, "layer");
	req.u.flush.model_id = 77;
	req.u.flush.layer = -1;
	assert_int_equal(raw_call(fd, &req, &rep), 0);
	assert_int_equal(rep.u.error.code, ESRCH);
	assert_string_equal(rep.u.error.field, "model_id");
	struct lbp_msg sreq = { .type = LBP_STATS };
	assert_int_equal(raw_call(fd, &sreq, &rep), 0);
	assert_int_equal(rep.type, LBP_STATS_REPLY);
	/* A reply type sent as a request is a protocol violation, as for the older types. */
	struct lbp_msg bad = { .type = LBP_FLUSH_REPLY };
	assert_int_equal(raw_call(fd, &bad, &rep), 0);
	assert_int_equal(rep.type, LBP_ERROR);
	assert_int_equal(rep.u.error.code, EPROTO);
	close(fd);

	lb_close(c);
	stop_daemon();
}

/* ================= config ================= */

/* `config get KEY` prints exactly "KEY = VALUE\n". */
static void assert_setting(const char *key, const char *want)
{
	char out[4096], line[256];
	assert_int_equal(ctl(out, sizeof(out), "config", "get", key, NULL), 0);
	snprintf(line, sizeof(line), "%s = %s\n", key, want);
	assert_string_equal(out, line);
}

/* A fingerprint bits bits away from key_of(i)'s, with another token hash. */
static struct lb_key near_key(uint32_t i, unsigned bits)
{
	struct lb_key k = key_of(i);
	for (unsigned b = 0; b < bits; b++)
		k.fp[b / 64] ^= 1ull << (b % 64 * 3 % 64);
	k.exact[0] = 0xdead0000u + i;
	return k;
}

static void test_config_round_trips_and_effects(void **state)
{
	static const struct {
		const char *key, *value, *shown, *readback;
	} cases[] = {
		{ "tau", "0.9", "tau", "0.9" },
		{ "budget", "4M", "budget", "4M" },
		{ "budget", "2097152", "budget", "2M" },
		{ "policy", "decay", "policy", "decay" },
		{ "spin_us", "0", "spin-us", "0" },
		{ "spin-us", "25", "spin-us", "25" },
		{ "ttl", "60", "ttl", "60" },
		{ "half-life", "30", "half-life", "30" },
		{ "half_life", "45", "half-life", "45" },
		{ "drift-max", "0.25", "drift-max", "0.25" },
		{ "tau.alpha.2", "0.5", "tau.alpha.2", "0.5" },
		{ "tau.alpha.0", "-1", "tau.alpha.0", "-1" },
		{ "policy", "lru", "policy", "lru" },
	};
	struct lb_client *c;
	struct lb_hit h;
	char out[8192], line[256];

	(void)state;
	start_daemon();
	assert_int_equal(lb_connect(env.sock, "config-test", &c), 0);
	uint32_t a = add_model(c, "alpha", 4);

	/* Defaults, as layerbankd documents them. */
	assert_int_equal(ctl(out, sizeof(out), "config", "get", NULL), 0);
	assert_string_equal(out, "tau = 0.98\nbudget = 16380K\npolicy = lru\nspin-us = 50\n"
				 "ttl = 3600\nhalf-life = 300\ndrift-max = 0.05\ndrift-target = 0\n");

	/* A layer's own threshold applies to lookups that bring none. Input 0 is cached; a
	 * neighbour 20 bits away (similarity 0.97) is too far for 0.98 everywhere. */
	struct lb_key k0 = key_of(0), near = near_key(0, 20);
	insert_inputs(c, a, 0, 1, 4);
	assert_int_equal(lb_fp_hamming(k0.fp, near.fp), 20);
	assert_int_equal(lb_lookup(c, a, 3, &near, NULL, 0, &h), -ENOENT);
	assert_int_equal(lb_lookup_deepest(c, a, &near, NULL, 0, &h), -ENOENT);
	assert_int_equal(ctl(out, sizeof(out), "config", "set", "tau.alpha.3", "0.9", NULL), 0);
	assert_string_equal(out, "tau.alpha.3 = 0.9\n");
	assert_int_equal(lb_lookup(c, a, 3, &near, NULL, 0, &h), 0);
	assert_int_equal(h.hamming, 20);
	assert_int_equal(lb_release(c, h.lease), 0);
	assert_int_equal(lb_lookup(c, a, 2, &near, NULL, 0, &h), -ENOENT); /* still 0.98 */
	assert_int_equal(lb_lookup_deepest(c, a, &near, NULL, 0, &h), 0);
	assert_int_equal(h.layer, 3);
	assert_int_equal(lb_release(c, h.lease), 0);
	/* Thresholds a lookup brings still win over the daemon's. */
	float strict[4] = { 0.99f, 0.99f, 0.99f, 0.99f };
	assert_int_equal(lb_lookup(c, a, 3, &near, strict, 4, &h), -ENOENT);
	/* The global tau moves every layer without its own. */
	assert_int_equal(ctl(out, sizeof(out), "config", "set", "tau", "0.95", NULL), 0);
	assert_int_equal(lb_lookup(c, a, 2, &near, NULL, 0, &h), 0);
	assert_int_equal(lb_release(c, h.lease), 0);
	assert_int_equal(ctl(out, sizeof(out), "config", "set", "tau.alpha.3", "default", NULL), 0);
	assert_string_equal(out, "tau.alpha.3 = 0.95\n");
	assert_int_equal(ctl(out, sizeof(out), "config", "set", "tau", "0.98", NULL), 0);
	assert_int_equal(lb_lookup(c, a, 3, &near, NULL, 0, &h), -ENOENT);

	/* Round trips: set prints the setting as now in effect, get prints the same. */
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		assert_int_equal(ctl(out, sizeof(out), "config", "set", cases[i].key, cases[i].value,
				     NULL), 0);
		snprintf(line, sizeof(line), "%s = %s\n", cases[i].shown, cases[i].readback);
		assert_string_equal(out, line);
		assert_setting(cases[i].shown, cases[i].readback);
		assert_int_equal(ctl(out, sizeof(out), "config", "get", cases[i].key, NULL), 0);
		assert_string_equal(out, line); /* '_' for '-' reads too */
	}
	/* STATS sees the same. */
	struct lb_stats st = stats(c);
	assert_string_equal(st.policy, "lru");
	assert_int_equal(st.bytes_budget, 2u << 20);
	/* Every setting: the global ones, then the layers with their own threshold. */
	assert_int_equal(ctl(out, sizeof(out), "config", "get", NULL), 0);
	assert_string_equal(out, "tau = 0.9\nbudget = 2M\npolicy = lru\nspin-us = 25\nttl = 60\n"
				 "half-life = 45\ndrift-max = 0.25\ndrift-target = 0\n"
				 "tau.alpha.0 = -1\ntau.alpha.2 = 0.5\n");
	assert_int_equal(ctl(out, sizeof(out), "config", "get", "tau.alpha", NULL), 0);
	assert_string_equal(out, "tau.alpha.0 = -1\ntau.alpha.1 = 0.9\ntau.alpha.2 = 0.5\n"
				 "tau.alpha.3 = 0.9\n");
	assert_int_equal(ctl(out, sizeof(out), "config", "set", "tau.alpha.0", "default", NULL), 0);
	assert_int_equal(ctl(out, sizeof(out), "config", "set", "tau.alpha.2", "default", NULL), 0);
	assert_int_equal(ctl(out, sizeof(out), "config", "get", NULL), 0);
	assert_null(strstr(out, "tau.alpha"));
	/* Through the library, with its own limits. */
	struct lb_config_item items[3], now;
	assert_int_equal(lb_config_get(c, NULL, items, 3), 8);
	assert_string_equal(items[2].key, "policy");
	assert_int_equal(lb_config_get(c, "tau.alpha", NULL, 0), 4);
	assert_int_equal(lb_config_set(c, "drift_max", "1e-2", &now), 0);
	assert_string_equal(now.key, "drift-max");
	assert_string_equal(now.value, "0.01");

	/* A model with more layers than one reply holds pages through CONFIG_GET's first. */
	uint32_t big = add_model(c, "big", 100);
	(void)big;
	struct lb_config_item many[100];
	assert_int_equal(lb_config_get(c, "tau.big", many, 100), 100);
	assert_string_equal(many[0].key, "tau.big.0");
	assert_string_equal(many[31].key, "tau.big.31");
	assert_string_equal(many[32].key, "tau.big.32");
	assert_string_equal(many[99].key, "tau.big.99");
	assert_string_equal(many[99].value, "0.9");
	for (unsigned l = 0; l < 40; l++) {
		char k[32];
		snprintf(k, sizeof(k), "tau.big.%u", l);
		assert_int_equal(lb_config_set(c, k, "0.75", NULL), 0);
	}
	assert_int_equal(ctl(out, sizeof(out), "config", "get", NULL), 0);
	assert_contains(out, "tau.big.0 = 0.75\n");
	assert_contains(out, "tau.big.39 = 0.75\n");
	assert_null(strstr(out, "tau.big.40"));
	assert_int_equal(lb_config_get(c, "", NULL, 0), 8 + 40);

	/* Refusals: one line, status 1, nothing changed. */
	static const struct {
		const char *key, *value, *says;
	} bad[] = {
		{ "bogus", "1", "unknown setting 'bogus'" },
		{ "threads", "4", "unknown setting 'threads'" }, /* set at start only */
		{ "tau", "1.5", "tau: '1.5' is not a number -1..1" },
		{ "tau", "abc", "is not a number" },
		{ "tau", "nan", "is not a number" },
		{ "budget", "12Q", "budget: '12Q' is not a size" },
		{ "budget", "-1", "is not a size" },
		{ "policy", "fifo", "is not one of lru|decay|ttl" },
		{ "spin-us", "-1", "is not a whole number 0..1000000" },
		{ "spin-us", "1000001", "is not a whole number" },
		{ "ttl", "0", "is not a whole number 1.." },
		{ "drift-max", "-0.5", "is not a number" },
		{ "tau.alpha.4", "0.5", "model 'alpha' has layers 0..3" },
		{ "tau.alpha.x", "0.5", "is not a layer number" },
		{ "tau.gamma.0", "0.5", "no model named 'gamma'" },
		{ "tau.alpha", "0.5", "is not tau.MODEL.LAYER" },
		{ "tau.alpha.1", "1.01", "tau.alpha.1: '1.01' is not a number" },
		{ "tau", "", "its value 1..63" },
	};
	char before[8192];
	assert_int_equal(ctl(before, sizeof(before), "config", "get", NULL), 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int rc = ctl(out, sizeof(out), "config", "set", bad[i].key, bad[i].value, NULL);
		if (rc != 1)
			fail_msg("config set %s '%s': status %d: %s", bad[i].key, bad[i].value, rc, out);
		assert_one_line(out);
		assert_contains(out, "layerbank-ctl: config: ");
		assert_contains(out, bad[i].says);
	}
	assert_int_equal(ctl(out, sizeof(out), "config", "get", NULL), 0);
	assert_string_equal(out, before);
	assert_int_equal(ctl(out, sizeof(out), "config", "get", "nosuch", NULL), 1);
	assert_one_line(out);
	assert_contains(out, "unknown setting 'nosuch'");
	assert_int_equal(ctl(out, sizeof(out), "config", "get", "tau.gamma", NULL), 1);
	assert_int_equal(lb_config_set(c, "bogus", "1", NULL), -ENOENT);
	assert_int_equal(lb_config_set(c, "tau", "2", NULL), -EINVAL);
	assert_contains(lb_last_error(c), "is not a number");
	/* Bad command lines. */
	assert_int_equal(ctl(out, sizeof(out), "config", NULL), 2);
	assert_int_equal(ctl(out, sizeof(out), "config", "set", "tau", NULL), 2);
	assert_int_equal(ctl(out, sizeof(out), "config", "set", "tau", "0.5", "0.6", NULL), 2);
	assert_int_equal(ctl(out, sizeof(out), "config", "get", "a", "b", NULL), 2);
	assert_int_equal(ctl(out, sizeof(out), "config", "frob", NULL), 2);
	assert_one_line(out);

	lb_close(c);
	stop_daemon();
}

/* A lower budget evicts at once, by the policy, but never what a lease holds. */
static void test_config_budget_shrinks_honouring_leases(void **state)
{
	struct lb_client *c;
	struct lb_hit h;
	char out[4096];

	(void)state;
	start_daemon();
	assert_int_equal(lb_connect(env.sock, "budget-test", &c), 0);
	uint32_t a = add_model(c, "alpha", 4);
	insert_inputs(c, a, 0, 8, 4);
	assert_int_equal(stats(c).entries, 32);
	struct lb_key k = key_of(5);
	assert_int_equal(lb_lookup(c, a, 1, &k, NULL, 0, &h), 0);

	assert_int_equal(ctl(out, sizeof(out), "config", "set", "budget", "8K", NULL), 0);
	assert_string_equal(out, "budget = 8K\n");
	struct lb_stats st = stats(c);
	assert_int_equal(st.bytes_budget, 8192);
	assert_int_equal(st.entries, 7);
	assert_int_equal(st.bytes_used, 7 * ENTRY_ALLOC);
	assert_int_equal(st.evictions, 25);
	assert_int_equal(ctl(out, sizeof(out), "config", "set", "budget", "1K", NULL), 0);
	st = stats(c);
	assert_int_equal(st.entries, 1); /* the leased one, over the budget until released */
	assert_int_equal(st.bytes_used, ENTRY_ALLOC);
	assert_int_equal(layer_stats(c, a, 1).entries, 1);
	assert_hit_data(&h, a, 5, 1);
	assert_int_equal(lb_release(c, h.lease), 0);
	/* 0 is the whole data area again, and the cache fills as before. */
	assert_int_equal(ctl(out, sizeof(out), "config", "set", "budget", "0", NULL), 0);
	assert_string_equal(out, "budget = 16380K\n");
	insert_inputs(c, a, 10, 4, 4);
	assert_int_equal(stats(c).entries, 17);
	lb_close(c);
	stop_daemon();
}

/* Switching to ttl at run time starts the sweep: entries expire without any lookup. */
static void test_config_policy_ttl_starts_the_sweep(void **state)
{
	struct lb_client *c;
	char out[4096];

	(void)state;
	start_daemon();
	assert_int_equal(lb_connect(env.sock, "ttl-test", &c), 0);
	uint32_t a = add_model(c, "alpha", 2);
	insert_inputs(c, a, 0, 3, 2);
	assert_int_equal(ctl(out, sizeof(out), "config", "set", "ttl", "1", NULL), 0);
	assert_int_equal(ctl(out, sizeof(out), "config", "set", "policy", "ttl", NULL), 0);
	struct lb_stats st;
	for (int i = 0; i < 100; i++) { /* a sweep a second: 2 s at most, unless the machine crawls */
		st = stats(c);
		if (st.entries == 0)
			break;
		usleep(100 * 1000);
	}
	assert_int_equal(st.entries, 0);
	assert_int_equal(st.expirations, 6);
	assert_string_equal(st.policy, "ttl");
	/* Back to lru: new entries stay. */
	assert_int_equal(ctl(out, sizeof(out), "config", "set", "policy", "lru", NULL), 0);
	insert_inputs(c, a, 5, 1, 2);
	sleep(2);
	assert_int_equal(stats(c).entries, 2);
	lb_close(c);
	stop_daemon();
}

/* FLUSH and CONFIG_SET need root or the daemon's user; CONFIG_GET and STATS do not. */
static void test_admin_messages_need_root_or_the_daemons_user(void **state)
{
	char out[4096];

	(void)state;
	if (geteuid() != 0) {
		printf("(not root: cannot play another user; the refusal is checked as root in CI)\n");
		skip();
	}
	start_daemon();
	/* As if the other user were in the socket's group. */
	assert_int_equal(chmod(env.dir, 0755), 0);
	assert_int_equal(chmod(env.sock, 0666), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct lb_client *c;
		struct lb_flush_result r;
		int code = 0;
		if (setgid(65534) < 0 || setuid(65534) < 0)
			_exit(10);
		if (lb_connect(env.sock, "nobody", &c) < 0)
			_exit(11);
		if (lb_flush(c, 0, -1, &r) != -EPERM)
			code = 12;
		else if (!strstr(lb_last_error(c), "FLUSH needs root or the daemon's user"))
			code = 13;
		else if (lb_config_set(c, "tau", "0.5", NULL) != -EPERM)
			code = 14;
		else if (!strstr(lb_last_error(c), "this connection is uid 65534"))
			code = 15;
		else if (lb_config_get(c, "tau", NULL, 0) != 1)
			code = 16; /* reading is for everyone, and the connection stayed open */
		lb_close(c);
		_exit(code);
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	assert_setting("tau", "0.98");
	assert_int_equal(ctl(out, sizeof(out), "config", "set", "tau", "0.5", NULL), 0);
	stop_daemon();
	/* The daemon logged who was refused. */
	static char log[1 << 16];
	FILE *f = fopen(env.log, "r");
	assert_non_null(f);
	size_t n = fread(log, 1, sizeof(log) - 1, f);
	log[n] = '\0';
	fclose(f);
	assert_contains(log, "uid 65534): FLUSH refused");
}

/* ================= metrics ================= */

struct sample {
	char name[96];
	char model[256]; /* label values, unescaped; "" when absent */
	char layer[16];
	char policy[32];
	char node[16];
	int n_labels;
	double value;
};

struct family {
	char name[96];
	char type[16];
	bool help, typed, closed; /* closed: another family's samples came after its own */
};

struct exposition {
	struct sample s[512];
	unsigned n;
	struct family f[64];
	unsigned nf;
};

static bool metric_name_ok(const char *p, size_t n)
{
	if (n == 0 || !(p[0] == '_' || p[0] == ':' || ((p[0] | 0x20) >= 'a' && (p[0] | 0x20) <= 'z')))
		return false;
	for (size_t i = 1; i < n; i++)
		if (!(p[i] == '_' || p[i] == ':' || (p[i] >= '0' && p[i] <= '9') ||
		      ((p[i] | 0x20) >= 'a' && (p[i] | 0x20) <= 'z')))
			return false;
	return true;
}

static struct family *family_of(struct exposition *x, const char *name)
{
	for (unsigned i = 0; i < x->nf; i++)
		if (strcmp(x->f[i].name, name) == 0)
			return &x->f[i];
	return NULL;
}

/* A string into a field that must hold it. */
static void put(char *dst, size_t n, const char *src)
{
	size_t len = strlen(src);
	if (len >= n)
		fail_msg("'%s' longer than %zu bytes", src, n - 1);
	memcpy(dst, src, len + 1);
}

/* `name="value",...}`: the labels of a sample, unescaped (only \\, \" and \n are escapes).
 * @return what follows the '}'. */
static const char *parse_labels(const char *p, struct sample *s, unsigned lineno)
{
	while (*p != '}') {
		const char *eq = strchr(p, '=');
		char label[32], value[256];
		size_t n = 0;
		if (!eq || eq[1] != '"' || !metric_name_ok(p, (size_t)(eq - p)) || p[0] == ':' ||
		    (size_t)(eq - p) >= sizeof(label))
			fail_msg("line %u: bad label at '%s'", lineno, p);
		memcpy(label, p, (size_t)(eq - p));
		label[eq - p] = '\0';
		for (p = eq + 2; *p != '"'; p++) {
			if (!*p || *p == '\n')
				fail_msg("line %u: unterminated label value", lineno);
			if (*p == '\\') {
				p++;
				if (*p != '\\' && *p != '"' && *p != 'n')
					fail_msg("line %u: bad escape \\%c", lineno, *p);
				value[n++] = *p == 'n' ? '\n' : *p;
			} else {
				value[n++] = *p;
			}
			assert_true(n < sizeof(value));
		}
		value[n] = '\0';
		if (strcmp(label, "model") == 0)
			put(s->model, sizeof(s->model), value);
		else if (strcmp(label, "layer") == 0)
			put(s->layer, sizeof(s->layer), value);
		else if (strcmp(label, "policy") == 0)
			put(s->policy, sizeof(s->policy), value);
		else if (strcmp(label, "node") == 0)
			put(s->node, sizeof(s->node), value);
		else
			fail_msg("line %u: unexpected label %s", lineno, label);
		s->n_labels++;
		p++;
		if (*p == ',')
			p++;
		else if (*p != '}')
			fail_msg("line %u: expected , or } after a label", lineno);
	}
	return p + 1;
}

/* The text exposition format 0.0.4, line by line: # HELP and # TYPE (counter or gauge) once
 * per family and before its samples, a family's samples together, names and label names
 * valid, values that parse, counters and only counters named *_total, everything layerbank_. */
static void parse_exposition(char *text, struct exposition *x)
{
	unsigned lineno = 0;
	struct family *open = NULL;

	memset(x, 0, sizeof(*x));
	assert_true(*text && text[strlen(text) - 1] == '\n');
	for (char *line = text, *nl; *line; line = nl + 1) {
		nl = strchr(line, '\n');
		*nl = '\0';
		lineno++;
		if (line[0] == '#') {
			char kw[8], name[96], rest[256];
			int k = sscanf(line, "# %7s %95s %255[^\n]", kw, name, rest);
			if (k != 3 || !metric_name_ok(name, strlen(name)))
				fail_msg("line %u: bad comment line '%s'", lineno, line);
			if (strncmp(name, "layerbank_", 10) != 0)
				fail_msg("line %u: %s is not layerbank_", lineno, name);
			struct family *f = family_of(x, name);
			if (strcmp(kw, "HELP") == 0) {
				if (f)
					fail_msg("line %u: second HELP for %s", lineno, name);
				assert_true(x->nf < 64);
				f = &x->f[x->nf++];
				put(f->name, sizeof(f->name), name);
				f->help = true;
			} else if (strcmp(kw, "TYPE") == 0) {
				if (!f || f->typed)
					fail_msg("line %u: TYPE of %s without one HELP before", lineno, name);
				if (strcmp(rest, "counter") && strcmp(rest, "gauge"))
					fail_msg("line %u: type '%s'", lineno, rest);
				size_t len = strlen(name);
				bool total = len > 6 && strcmp(name + len - 6, "_total") == 0;
				if (total != (strcmp(rest, "counter") == 0))
					fail_msg("line %u: %s %s: counters and only counters end _total",
						 lineno, rest, name);
				put(f->type, sizeof(f->type), rest);
				f->typed = true;
			} else {
				fail_msg("line %u: unknown comment '%s'", lineno, kw);
			}
			if (open && open != f)
				open->closed = true;
			open = f;
			continue;
		}
		assert_true(x->n < 512);
		struct sample *s = &x->s[x->n++];
		memset(s, 0, sizeof(*s));
		size_t n = strcspn(line, "{ ");
		if (!metric_name_ok(line, n) || n >= sizeof(s->name))
			fail_msg("line %u: bad metric name in '%s'", lineno, line);
		memcpy(s->name, line, n);
		s->name[n] = '\0';
		const char *p = line + n;
		if (*p == '{')
			p = parse_labels(p + 1, s, lineno);
		if (*p != ' ')
			fail_msg("line %u: no value", lineno);
		char *end;
		s->value = strtod(p + 1, &end);
		if (end == p + 1 || *end)
			fail_msg("line %u: value '%s' does not parse", lineno, p + 1);
		struct family *f = family_of(x, s->name);
		if (!f || !f->typed)
			fail_msg("line %u: sample of %s before its HELP and TYPE", lineno, s->name);
		if (f->closed || (open && open != f))
			fail_msg("line %u: samples of %s are not together", lineno, s->name);
	}
	assert_true(x->n > 0);
}

static const struct sample *find_sample(const struct exposition *x, const char *name,
					const char *model, const char *layer)
{
	for (unsigned i = 0; i < x->n; i++)
		if (strcmp(x->s[i].name, name) == 0 && strcmp(x->s[i].model, model) == 0 &&
		    strcmp(x->s[i].layer, layer) == 0 && !x->s[i].node[0])
			return &x->s[i];
	fail_msg("no sample %s{model=\"%s\",layer=\"%s\"}", name, model, layer);
	abort(); /* fail_msg does not return; the compiler must know there is no NULL */
}

/* The samples of a per-node family: how many, and the one labelled node (NULL: not there). */
static const struct sample *find_node(const struct exposition *x, const char *name, int32_t node,
				      unsigned *n)
{
	const struct sample *found = NULL;
	char want[16];

	snprintf(want, sizeof(want), "%d", node);
	*n = 0;
	for (unsigned i = 0; i < x->n; i++) {
		if (strcmp(x->s[i].name, name) != 0)
			continue;
		if (x->s[i].n_labels != 1 || !x->s[i].node[0])
			fail_msg("%s without exactly its node label", name);
		(*n)++;
		if (strcmp(x->s[i].node, want) == 0)
			found = &x->s[i];
	}
	if (!family_of((struct exposition *)x, name))
		fail_msg("no family %s", name);
	return found;
}

static void wait_clients(struct lb_client *c, uint32_t n)
{
	for (int i = 0; i < 2000 && stats(c).clients != n; i++)
		usleep(10 * 1000);
	assert_int_equal(stats(c).clients, n);
}

static double jnum(json_object *o, const char *key)
{
	json_object *v;
	if (!json_object_object_get_ex(o, key, &v))
		fail_msg("no %s in stats --json", key);
	if (json_object_is_type(v, json_type_boolean))
		return json_object_get_boolean(v);
	return json_object_get_double(v);
}

/* REPORTs on approximate hits feed each layer's controller: counted always, its threshold moved
 * once a drift target is set (then in force, in stats, --json and the metrics); a report on an
 * exact hit (distance 0) is not its input. */
static void test_adaptive_thresholds(void **state)
{
	struct lb_client *c;
	struct lb_hit h;
	struct lb_layer_tau t[4];
	char out[16384];

	(void)state;
	start_daemon();
	assert_int_equal(lb_connect(env.sock, "adapt-test", &c), 0);
	uint32_t a = add_model(c, "alpha", 4);
	insert_inputs(c, a, 0, 1, 4);
	struct lb_key k0 = key_of(0), near = near_key(0, 10); /* similarity 0.99 */
	/* Fixed thresholds: the report is counted, the threshold stays tau's. */
	assert_int_equal(lb_lookup(c, a, 2, &near, NULL, 0, &h), 0);
	assert_int_equal(h.hamming, 10);
	assert_int_equal(lb_report(c, h.lease, 0.02f), 0);
	assert_int_equal(lb_release(c, h.lease), 0);
	assert_int_equal(lb_lookup(c, a, 2, &k0, NULL, 0, &h), 0);
	assert_int_equal(h.hamming, 0);
	assert_int_equal(lb_report(c, h.lease, 0.04f), 0); /* exact: not the controller's */
	assert_int_equal(lb_release(c, h.lease), 0);
	assert_int_equal(lb_model_taus(c, a, t, 4), 4);
	assert_true(t[2].reports == 1 && t[2].reports_over == 0 && t[1].reports == 0);
	assert_true(fabs(t[2].drift_sum - 0.02) < 1e-6);
	for (int l = 0; l < 4; l++) {
		assert_int_equal(t[l].max_hamming, lb_fp_max_hamming(0.98));
		assert_true(t[l].tau == lb_fp_similarity(t[l].max_hamming));
	}
	/* A target: every layer at its controller's start, then layer 2 tightened by a report
	 * 40 times the target (8 bits at most) and counted over it. Each drift stays below
	 * drift-max, which would invalidate the entry. */
	assert_int_equal(ctl(out, sizeof(out), "config", "set", "drift-target", "0.001", NULL), 0);
	assert_string_equal(out, "drift-target = 0.001\n");
	assert_int_equal(lb_model_taus(c, a, t, 4), 4);
	uint32_t start = lb_fp_max_hamming(0.90);
	for (int l = 0; l < 4; l++)
		assert_int_equal(t[l].max_hamming, start);
	assert_int_equal(lb_lookup(c, a, 2, &near, NULL, 0, &h), 0);
	assert_int_equal(lb_report(c, h.lease, 0.04f), 0);
	assert_int_equal(lb_release(c, h.lease), 0);
	assert_int_equal(lb_model_taus(c, a, t, 4), 4);
	assert_int_equal(t[2].max_hamming, start - 8);
	assert_true(t[2].tau == lb_fp_similarity(start - 8));
	assert_true(t[2].reports == 2 && t[2].reports_over == 1);
	assert_int_equal(t[3].max_hamming, start);
	/* What lookups meet: a neighbour 30 bits away reaches layer 3, no more layer 2. */
	struct lb_key far = near_key(0, start - 6);
	assert_int_equal(lb_lookup(c, a, 3, &far, NULL, 0, &h), 0);
	assert_int_equal(lb_release(c, h.lease), 0);
	assert_int_equal(lb_lookup(c, a, 2, &far, NULL, 0, &h), -ENOENT);
	/* config get tau.alpha shows the thresholds in force. */
	assert_int_equal(ctl(out, sizeof(out), "config", "get", "tau.alpha", NULL), 0);
	char line[128];
	snprintf(line, sizeof(line), "tau.alpha.2 = %.14g", lb_fp_similarity(start - 8));
	assert_contains(out, line);
	/* stats, --json and the metrics show them per layer. */
	assert_int_equal(ctl(out, sizeof(out), "stats", NULL), 0);
	assert_contains(out, "tau  reports     drift");
	assert_contains(out, "  0.030000\n"); /* layer 2: (0.02 + 0.04) / 2 */
	assert_int_equal(ctl(out, sizeof(out), "stats", "--json", NULL), 0);
	json_object *j = json_tokener_parse(out);
	assert_non_null(j);
	json_object *l2 = json_object_array_get_idx(
		json_object_object_get(json_object_array_get_idx(json_object_object_get(j, "per_model"),
								 0), "layers"), 2);
	assert_int_equal(json_object_get_int(json_object_object_get(l2, "drift_reports")), 2);
	assert_int_equal(json_object_get_int(json_object_object_get(l2, "drift_reports_over")), 1);
	assert_int_equal(json_object_get_int(json_object_object_get(l2, "max_hamming")), start - 8);
	json_object_put(j);
	assert_int_equal(ctl(out, sizeof(out), "metrics", NULL), 0);
	assert_contains(out, "layerbank_layer_drift_reports_total{model=\"alpha\",layer=\"2\"} 2\n");
	assert_contains(out, "layerbank_layer_drift_reports_over_total{model=\"alpha\",layer=\"2\"} 1\n");
	assert_contains(out, "layerbank_layer_drift_total{model=\"alpha\",layer=\"2\"} 0.06\n");
	snprintf(line, sizeof(line), "layerbank_layer_tau{model=\"alpha\",layer=\"3\"} %.9g\n",
		 lb_fp_similarity(start));
	assert_contains(out, line);
	/* A revalidated partial reuse reports the layers below its hit's on the hit's lease: each
	 * feeds its own layer's controller at the hit's distance, and invalidates nothing however
	 * far it drifted (drift-max 0.05); a layer above the entry's is refused. */
	struct lb_stats st0, st1;
	assert_int_equal(lb_stats(c, &st0, sizeof(st0)), 0);
	assert_int_equal(lb_lookup(c, a, 3, &near, NULL, 0, &h), 0);
	assert_int_equal(h.hamming, 10);
	for (int i = 0; i < 4; i++) /* 0.25 bit each */
		assert_int_equal(lb_report_layer(c, h.lease, 1, 0.0f), 0);
	assert_int_equal(lb_report_layer(c, h.lease, 0, 0.5f), 0);
	assert_int_equal(lb_report_layer(c, h.lease, 4, 0.0f), -EINVAL);
	assert_int_equal(lb_report_layer(c, h.lease, 1, -1.0f), -EINVAL);
	assert_int_equal(lb_release(c, h.lease), 0);
	assert_int_equal(lb_model_taus(c, a, t, 4), 4);
	assert_true(t[1].reports == 4 && t[1].reports_over == 0 && t[1].drift_sum == 0);
	assert_int_equal(t[1].max_hamming, start + 1);
	assert_true(t[0].reports == 1 && t[0].reports_over == 1);
	assert_int_equal(t[0].max_hamming, start - 8);
	assert_true(t[3].reports == 0 && t[3].max_hamming == start);
	assert_int_equal(lb_stats(c, &st1, sizeof(st1)), 0);
	assert_int_equal(st1.invalidations, st0.invalidations);
	assert_int_equal(lb_lookup(c, a, 3, &near, NULL, 0, &h), 0); /* still there */
	assert_int_equal(lb_release(c, h.lease), 0);
	lb_close(c);
}

/* The second tier's counts: metric family and stats --json key (STATS_REPLY's). */
static const struct {
	const char *metric, *key;
} l2_figures[] = {
	{ "layerbank_l2_queue_bytes", "l2_queue_bytes" },
	{ "layerbank_l2_queue_records", "l2_queue_records" },
	{ "layerbank_l2_fetches_waiting", "l2_fetches_waiting" },
	{ "layerbank_l2_written_total", "l2_written" },
	{ "layerbank_l2_dropped_total", "l2_dropped" },
	{ "layerbank_l2_write_errors_total", "l2_write_errors" },
	{ "layerbank_l2_fetched_total", "l2_fetched" },
	{ "layerbank_l2_fetch_misses_total", "l2_fetch_misses" },
	{ "layerbank_l2_rejected_total", "l2_rejected" },
	{ "layerbank_l2_fetch_errors_total", "l2_fetch_errors" },
};

static void test_metrics_exposition_format_and_figures(void **state)
{
	/* A name with every character that needs escaping, and one that is not UTF-8. */
	static const char weird[] = "we\"ird\\na\nme", latin1[] = "caf\xe9";
	static const struct {
		const char *metric, *key;
	} figures[] = {
		{ "layerbank_page_size_bytes", "page_size" },
		{ "layerbank_arena_bytes", "arena_bytes" },
		{ "layerbank_numa_nodes", "numa_nodes" },
		{ "layerbank_hugepages", "hugepages" },
		{ "layerbank_clients", "clients" },
		{ "layerbank_models", "models" },
		{ "layerbank_threads", "threads" },
		{ "layerbank_hits_total", "hits" },
		{ "layerbank_misses_total", "misses" },
		{ "layerbank_inserts_total", "inserts" },
		{ "layerbank_evictions_total", "evictions" },
		{ "layerbank_expirations_total", "expirations" },
		{ "layerbank_invalidations_total", "invalidations" },
		{ "layerbank_entries", "entries" },
		{ "layerbank_leases", "leases" },
		{ "layerbank_used_bytes", "bytes_used" },
		{ "layerbank_budget_bytes", "bytes_budget" },
		{ "layerbank_quota_refusals_total", "quota_refusals" },
		{ "layerbank_tenants", "tenants" },
	};
	static const struct {
		const char *metric, *key;
	} per_layer[] = {
		{ "layerbank_layer_hits_total", "hits" },
		{ "layerbank_layer_misses_total", "misses" },
		{ "layerbank_layer_inserts_total", "inserts" },
		{ "layerbank_layer_evictions_total", "evictions" },
		{ "layerbank_layer_entries", "entries" },
		{ "layerbank_layer_bytes", "bytes" },
		{ "layerbank_layer_leases", "leases" },
	};
	static char text[1 << 16], json[1 << 16], raw[1 << 16];
	static struct exposition x;
	struct lb_client *c;
	struct lb_hit h;

	(void)state;
	start_daemon();
	assert_int_equal(lb_connect(env.sock, "metrics-test", &c), 0);
	uint32_t a = add_model(c, "alpha", 3), w = add_model(c, weird, 2);
	add_model(c, latin1, 1);
	insert_inputs(c, a, 0, 4, 3);
	insert_inputs(c, w, 0, 2, 2);
	/* Hits, misses and leases held while the figures are read. */
	struct lb_key k = key_of(1), miss = key_of(99);
	struct lb_hit h2;
	assert_int_equal(lb_lookup_deepest(c, a, &k, NULL, 0, &h), 0);
	assert_int_equal(lb_lookup_deepest(c, a, &miss, NULL, 0, &h2), -ENOENT);
	assert_int_equal(lb_lookup(c, w, 1, &k, NULL, 0, &h2), 0);
	assert_int_equal(ctl(text, sizeof(text), "flush", "--model", "alpha", "--layer", "2", NULL), 0);

	/* Each ctl is a client while it runs: wait until the last one's BYE is in, so that both
	 * readings count the same clients. */
	wait_clients(c, 1);
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	assert_int_equal(ctl(json, sizeof(json), "stats", "--json", NULL), 0);
	wait_clients(c, 1);
	assert_int_equal(ctl(text, sizeof(text), "metrics", NULL), 0);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	json_object *o = json_tokener_parse(json);
	assert_non_null(o);
	memcpy(raw, text, sizeof(raw)); /* parse_exposition cuts text into lines */
	parse_exposition(text, &x);

	/* Every STATS figure, equal to stats --json's (the ctl's own connection is the one client
	 * besides this test's in both). */
	for (size_t i = 0; i < sizeof(figures) / sizeof(figures[0]); i++) {
		const struct sample *s = find_sample(&x, figures[i].metric, "", "");
		if (s->value != jnum(o, figures[i].key))
			fail_msg("%s = %g, stats --json %s = %g", figures[i].metric, s->value,
				 figures[i].key, jnum(o, figures[i].key));
	}
	for (size_t i = 0; i < sizeof(l2_figures) / sizeof(l2_figures[0]); i++)
		if (find_sample(&x, l2_figures[i].metric, "", "")->value != jnum(o, l2_figures[i].key))
			fail_msg("%s differs from stats --json %s", l2_figures[i].metric,
				 l2_figures[i].key);
	assert_true(find_sample(&x, "layerbank_leases", "", "")->value == 2);
	assert_true(find_sample(&x, "layerbank_clients", "", "")->value == 2);
	assert_true(find_sample(&x, "layerbank_hits_total", "", "")->value == 2);
	/* Uptime moves on between the two readings, by at most the time between them. */
	double up = find_sample(&x, "layerbank_uptime_seconds", "", "")->value;
	double apart = (double)(t1.tv_sec - t0.tv_sec) + 1.0;
	assert_true(up >= jnum(o, "uptime_s") && up <= jnum(o, "uptime_s") + apart);
	assert_true(fabs(find_sample(&x, "layerbank_fragmentation_ratio", "", "")->value -
			 jnum(o, "fragmentation")) < 1e-6);
	json_object *pol;
	assert_true(json_object_object_get_ex(o, "policy", &pol));
	unsigned n_policy = 0;
	for (unsigned i = 0; i < x.n; i++)
		if (strcmp(x.s[i].name, "layerbank_policy_info") == 0) {
			n_policy++;
			assert_string_equal(x.s[i].policy, json_object_get_string(pol));
			assert_true(x.s[i].value == 1);
		}
	assert_int_equal(n_policy, 1);

	/* Per model and per layer, labelled model="..." and layer="N". */
	json_object *models;
	assert_true(json_object_object_get_ex(o, "per_model", &models));
	assert_int_equal(json_object_array_length(models), 3);
	unsigned layers_seen = 0;
	for (size_t m = 0; m < json_object_array_length(models); m++) {
		json_object *jm = json_object_array_get_idx(models, m), *jn, *jl;
		assert_true(json_object_object_get_ex(jm, "name", &jn));
		assert_true(json_object_object_get_ex(jm, "layers", &jl));
		const char *name = json_object_get_string(jn);
		char label[256];
		/* Bytes that are not UTF-8 come out as U+FFFD. */
		if (strcmp(name, latin1) == 0)
			snprintf(label, sizeof(label), "caf\xef\xbf\xbd");
		else
			snprintf(label, sizeof(label), "%s", name);
		assert_true(find_sample(&x, "layerbank_model_layers", label, "")->value ==
			    jnum(jm, "n_layers"));
		for (size_t l = 0; l < json_object_array_length(jl); l++) {
			json_object *jx = json_object_array_get_idx(jl, l);
			char ls[24];
			snprintf(ls, sizeof(ls), "%zu", l);
			for (size_t f = 0; f < sizeof(per_layer) / sizeof(per_layer[0]); f++) {
				const struct sample *s = find_sample(&x, per_layer[f].metric, label, ls);
				if (s->value != jnum(jx, per_layer[f].key))
					fail_msg("%s{model=\"%s\",layer=\"%s\"} = %g, json %g",
						 per_layer[f].metric, label, ls, s->value,
						 jnum(jx, per_layer[f].key));
				assert_int_equal(s->n_labels, 2);
			}
			layers_seen++;
		}
	}
	assert_int_equal(layers_seen, 3 + 2 + 1);
	/* The escaped forms on the wire, as the format spells them. */
	assert_contains(raw, "{model=\"we\\\"ird\\\\na\\nme\",layer=\"1\"}");
	assert_contains(raw, "layerbank_layer_leases{model=\"we\\\"ird\\\\na\\nme\",layer=\"1\"} 1\n");
	assert_contains(raw, "layerbank_layer_entries{model=\"alpha\",layer=\"2\"} 0\n");
	assert_contains(raw, "layerbank_layer_entries{model=\"alpha\",layer=\"1\"} 4\n");
	json_object_put(o);

	assert_int_equal(ctl(text, sizeof(text), "metrics", "--bogus", NULL), 2);
	assert_int_equal(lb_release(c, h.lease), 0);
	assert_int_equal(lb_release(c, h2.lease), 0);
	lb_close(c);
	stop_daemon();
	/* No daemon: one line, status 1. */
	assert_int_equal(ctl(text, sizeof(text), "metrics", NULL), 1);
	assert_one_line(text);
	assert_contains(text, "is layerbankd running?");
}

/* top needs a terminal: a clear line and status 2 without one (here stdout is a pipe). */
static void test_top_without_a_terminal(void **state)
{
	char out[4096];

	(void)state;
	start_daemon();
	assert_int_equal(ctl(out, sizeof(out), "top", NULL), 2);
	assert_one_line(out);
	assert_contains(out, "needs a terminal");
	assert_int_equal(ctl(out, sizeof(out), "top", "--interval", "0.01", NULL), 2);
	assert_contains(out, "--interval '0.01'");
	assert_int_equal(ctl(out, sizeof(out), "top", "--interval", NULL), 2);
	assert_int_equal(ctl(out, sizeof(out), "top", "--frob", NULL), 2);
	stop_daemon();
}

/* A model name is the client's choice: stats shows it without letting an escape sequence or a
 * line break through to the terminal. */
static void test_stats_shows_a_hostile_name_harmlessly(void **state)
{
	char out[8192];
	struct lb_client *c;

	(void)state;
	start_daemon();
	assert_int_equal(lb_connect(env.sock, "name-test", &c), 0);
	add_model(c, "evil\033[2J\nname\177", 2);
	assert_int_equal(ctl(out, sizeof(out), "stats", NULL), 0);
	assert_contains(out, "'evil?[2J?name?'");
	assert_null(strchr(out, '\033'));
	assert_null(strchr(out, '\177'));
	lb_close(c);
	stop_daemon();
}

/* A daemon without a second tier says so in every view: one line of stats, "l2": "off" with
 * every l2_ count 0 in --json and lb_stats, the tier's gauges and counters 0 in the metrics. */
static void test_no_second_tier_is_off_everywhere(void **state)
{
	static char out[1 << 16];
	static struct exposition x;
	struct lb_client *c;

	(void)state;
	start_daemon();
	assert_int_equal(lb_connect(env.sock, "l2-test", &c), 0);
	struct lb_stats st = stats(c);
	assert_string_equal(st.l2, "off");
	/* The l2_ counts: from the first to tenants, which follows them (no longer the struct's
	 * end, and not 0 once the daemon counts tenants). */
	static const uint8_t zero[offsetof(struct lb_stats, tenants) -
				  offsetof(struct lb_stats, l2_queue_bytes)];
	assert_memory_equal(&st.l2_queue_bytes, zero, sizeof(zero));
	lb_close(c);

	assert_int_equal(ctl(out, sizeof(out), "stats", NULL), 0);
	const char *line = strstr(out, "second tier");
	if (!line || strncmp(line, "second tier  off\n", 17) != 0 || strstr(line + 17, "tier"))
		fail_msg("not one line 'second tier  off':\n%s", out);

	assert_int_equal(ctl(out, sizeof(out), "stats", "--json", NULL), 0);
	json_object *o = json_tokener_parse(out), *l2;
	assert_non_null(o);
	assert_true(json_object_object_get_ex(o, "l2", &l2));
	assert_string_equal(json_object_get_string(l2), "off");
	for (size_t i = 0; i < sizeof(l2_figures) / sizeof(l2_figures[0]); i++)
		if (jnum(o, l2_figures[i].key) != 0)
			fail_msg("stats --json %s is not 0 without a tier", l2_figures[i].key);
	json_object_put(o);

	assert_int_equal(ctl(out, sizeof(out), "metrics", NULL), 0);
	parse_exposition(out, &x);
	assert_true(find_sample(&x, "layerbank_l2_enabled", "", "")->value == 0);
	assert_true(find_sample(&x, "layerbank_l2_up", "", "")->value == 0);
	for (size_t i = 0; i < sizeof(l2_figures) / sizeof(l2_figures[0]); i++)
		if (find_sample(&x, l2_figures[i].metric, "", "")->value != 0)
			fail_msg("%s is not 0 without a tier", l2_figures[i].metric);
	stop_daemon();
}

/* ================= tenants and NUMA nodes ================= */

/* A row's figures: its metric family, its key in stats --json (STATS_REPLY's) and its field. */
static const struct {
	const char *metric, *key;
	size_t off, size; /* in struct lb_node_stats */
} node_figures[] = {
#define NF(metric, key, field) \
	{ metric, key, offsetof(struct lb_node_stats, field), sizeof(((struct lb_node_stats *)0)->field) }
	NF("layerbank_node_arena_bytes", "arena_bytes", arena_bytes),
	NF("layerbank_node_used_bytes", "bytes_used", bytes_used),
	NF("layerbank_node_entries", "entries", entries),
	NF("layerbank_node_hits_total", "hits", hits),
	NF("layerbank_node_inserts_total", "inserts", inserts),
	NF("layerbank_node_remote_inserts_total", "remote_inserts", remote_inserts),
	NF("layerbank_node_clients", "clients", clients),
#undef NF
};
#define N_NODE_FIGURES (sizeof(node_figures) / sizeof(node_figures[0]))

static uint64_t node_figure(const struct lb_node_stats *n, size_t f)
{
	uint32_t v32;
	uint64_t v64;

	if (node_figures[f].size == sizeof(v32)) {
		memcpy(&v32, (const char *)n + node_figures[f].off, sizeof(v32));
		return v32;
	}
	memcpy(&v64, (const char *)n + node_figures[f].off, sizeof(v64));
	return v64;
}

/* Whether figure f of a row may differ between two readings of a live daemon: its counts and
 * clients move (each layerbank-ctl is a client), its arenas do not. */
static bool moves(size_t f)
{
	return strcmp(node_figures[f].key, "arena_bytes") != 0;
}

/* stats' table: "tenants" among the totals, and the rows per node below them, none when the
 * reading has none. exact: every figure as in st (a reading made up), else tenants, the node
 * numbers and arena sizes only (a live daemon, read again by each command). */
static void check_nodes_table(const struct lb_stats *st, const char *table, bool exact)
{
	char want[64];

	snprintf(want, sizeof(want), "\ntenants      %u\n", st->tenants);
	assert_contains(table, want);
	const char *p = strstr(table, "\nper NUMA node");
	if (!st->n_nodes) {
		if (p || strstr(table, "arena MiB"))
			fail_msg("rows per node without any in the reading:\n%s", table);
		return;
	}
	if (!p || !(p = strstr(p, "\n  ")) || !(p = strchr(p + 1, '\n')))
		fail_msg("no table of nodes:\n%s", table);
	for (uint32_t i = 0; i < st->n_nodes; i++) {
		const struct lb_node_stats *n = &st->nodes[i];
		uint64_t entries, hits, inserts, remote;
		unsigned clients;
		double arena, used;
		int node;

		if (sscanf(p + 1, "%d %lf %lf %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %u", &node,
			   &arena, &used, &entries, &hits, &inserts, &remote, &clients) != 8)
			fail_msg("node row %u does not read: %.80s", i, p + 1);
		assert_int_equal(node, n->node);
		assert_true(fabs(arena - (double)n->arena_bytes / (1 << 20)) <= 0.05);
		if (exact)
			assert_true(fabs(used - (double)n->bytes_used / (1 << 20)) <= 0.05 &&
				    entries == n->entries && hits == n->hits && inserts == n->inserts &&
				    remote == n->remote_inserts && clients == n->clients);
		p = strchr(p + 1, '\n');
		assert_non_null(p);
	}
	if (strncmp(p, "\n  ", 3) == 0)
		fail_msg("more node rows than the reading's %u:\n%s", st->n_nodes, table);
}

/* stats --json: "tenants", and "nodes" with one object of STATS_REPLY's eight keys per row. */
static void check_nodes_json(const struct lb_stats *st, const char *json, bool exact)
{
	json_object *o = json_tokener_parse(json), *nodes, *v;

	assert_non_null(o);
	assert_true(jnum(o, "tenants") == st->tenants);
	assert_false(json_object_object_get_ex(o, "n_nodes", &v)); /* the array's length says it */
	assert_true(json_object_object_get_ex(o, "nodes", &nodes));
	assert_true(json_object_is_type(nodes, json_type_array));
	assert_int_equal(json_object_array_length(nodes), st->n_nodes);
	for (uint32_t i = 0; i < st->n_nodes; i++) {
		json_object *j = json_object_array_get_idx(nodes, i);
		assert_int_equal(json_object_object_length(j), 1 + N_NODE_FIGURES);
		assert_true(json_object_object_get_ex(j, "node", &v));
		assert_int_equal(json_object_get_int(v), st->nodes[i].node);
		for (size_t f = 0; f < N_NODE_FIGURES; f++) {
			if (!json_object_object_get_ex(j, node_figures[f].key, &v))
				fail_msg("nodes[%u] has no %s", i, node_figures[f].key);
			if ((exact || !moves(f)) &&
			    json_object_get_uint64(v) != node_figure(&st->nodes[i], f))
				fail_msg("nodes[%u].%s = %" PRIu64 ", want %" PRIu64, i,
					 node_figures[f].key, json_object_get_uint64(v),
					 node_figure(&st->nodes[i], f));
		}
	}
	json_object_put(o);
}

/* metrics: layerbank_tenants, and each per-node family with one sample per row, labelled
 * node="N", present (HELP and TYPE) without rows too. */
static void check_nodes_metrics(const struct lb_stats *st, char *text, bool exact)
{
	static struct exposition x;

	parse_exposition(text, &x);
	assert_true(find_sample(&x, "layerbank_tenants", "", "")->value == st->tenants);
	for (size_t f = 0; f < N_NODE_FIGURES; f++) {
		for (uint32_t i = 0; i < st->n_nodes; i++) {
			unsigned n;
			const struct sample *s = find_node(&x, node_figures[f].metric,
							   st->nodes[i].node, &n);
			if (!s || n != st->n_nodes)
				fail_msg("%s: %u samples, none for node %d", node_figures[f].metric, n,
					 st->nodes[i].node);
			if ((exact || !moves(f)) && s->value != (double)node_figure(&st->nodes[i], f))
				fail_msg("%s{node=\"%d\"} = %g", node_figures[f].metric,
					 st->nodes[i].node, s->value);
		}
		unsigned n;
		find_node(&x, node_figures[f].metric, INT32_MIN, &n);
		assert_int_equal(n, st->n_nodes);
	}
}

/* The views' library draws a STATS_REPLY with three rows, the largest figures among them, as
 * lb_stats gives it: the table, --json and the metrics show every row and figure, and tenants. */
static void test_views_show_every_node_row(void **state)
{
	struct lbp_stats_reply r;
	struct ctl_view v;
	char *out;
	size_t len;

	(void)state;
	memset(&r, 0, sizeof(r));
	r.page_size = 2097152;
	r.arena_bytes = (512ull + 1024 + 2) << 20;
	r.numa_nodes = 4; /* arenas: two tenants' on node 0 */
	strcpy(r.policy, "lru");
	strcpy(r.l2, "off");
	r.tenants = 3;
	r.n_nodes = 3;
	r.nodes[0] = (struct lbp_node_stats){ -1, 512ull << 20, 3u << 19, 10, UINT64_MAX, 20, 0, 0 };
	r.nodes[1] = (struct lbp_node_stats){ 0, 1ull << 30, 700ull << 20, 123456, 5000, 900, 3, 4 };
	r.nodes[2] = (struct lbp_node_stats){ 7, 2u << 20, 0, 0, 0, 0, UINT64_MAX, UINT32_MAX };
	memset(&v, 0, sizeof(v));
	lbi_stats_from_reply(&r, &v.st);
	assert_int_equal(v.st.tenants, 3);
	assert_int_equal(v.st.n_nodes, 3);
	for (uint32_t i = 0; i < 3; i++) {
		const struct lb_node_stats *n = &v.st.nodes[i];
		const struct lbp_node_stats *w = &r.nodes[i];
		assert_true(n->node == w->node && n->clients == w->clients &&
			    n->arena_bytes == w->arena_bytes && n->bytes_used == w->bytes_used &&
			    n->entries == w->entries && n->hits == w->hits && n->inserts == w->inserts &&
			    n->remote_inserts == w->remote_inserts);
	}
	static const struct lb_node_stats zero;
	assert_memory_equal(&v.st.nodes[3], &zero, sizeof(zero)); /* rows past n_nodes */

	for (int view = 0; view < 3; view++) {
		FILE *f = open_memstream(&out, &len);
		assert_non_null(f);
		if (view < 2)
			ctl_stats_print(f, &v, view == 1);
		else
			ctl_metrics_print(f, &v);
		assert_int_equal(fclose(f), 0);
		if (view == 0) {
			check_nodes_table(&v.st, out, true);
			printf("%s", strstr(out, "\ntenants"));
		} else if (view == 1) {
			check_nodes_json(&v.st, out, true);
		} else {
			check_nodes_metrics(&v.st, out, true);
		}
		free(out);
	}
	/* No rows: no table, an empty list, families without samples. */
	v.st.n_nodes = 0;
	for (int view = 0; view < 3; view++) {
		FILE *f = open_memstream(&out, &len);
		assert_non_null(f);
		if (view < 2)
			ctl_stats_print(f, &v, view == 1);
		else
			ctl_metrics_print(f, &v);
		assert_int_equal(fclose(f), 0);
		if (view == 0)
			check_nodes_table(&v.st, out, true);
		else if (view == 1)
			check_nodes_json(&v.st, out, true);
		else
			check_nodes_metrics(&v.st, out, true);
		free(out);
	}
}

/* The rows of a frame of top: "\033[N;1H" text "\033[K" each. @return how many. */
static unsigned frame_rows(const char *frame, char rows[][256], unsigned max)
{
	unsigned n = 0;
	int r, at;

	while (sscanf(frame, "\033[%d;1H%n", &r, &at) == 1) {
		const char *end = strstr(frame + at, "\033[K");
		assert_non_null(end);
		assert_true(n < max && r == (int)n + 1 && end - (frame + at) < 256);
		memcpy(rows[n], frame + at, (size_t)(end - (frame + at)));
		rows[n++][end - (frame + at)] = '\0';
		frame = end + 3;
	}
	assert_string_equal(frame, "\033[J");
	return n;
}

/* top: one row per node below the second tier's, hits and inserts per second against the
 * same node's row in the reading before (none for a node new since), none without rows. */
static void test_top_draws_a_row_per_node(void **state)
{
	static char rows[64][256];
	struct ctl_view cur, prev;
	unsigned n, at = 0;
	char *frame;

	(void)state;
	memset(&cur, 0, sizeof(cur));
	strcpy(cur.st.policy, "lru");
	strcpy(cur.st.l2, "off");
	cur.st.n_nodes = 3;
	cur.st.nodes[0] = (struct lb_node_stats){ .node = -1, .clients = 0, .arena_bytes = 512ull << 20,
						  .bytes_used = 3u << 19, .entries = 10, .hits = 100,
						  .inserts = 20 };
	cur.st.nodes[1] = (struct lb_node_stats){ .node = 0, .clients = 4, .arena_bytes = 1ull << 30,
						  .bytes_used = 700ull << 20, .entries = 123456,
						  .hits = 5000, .inserts = 900, .remote_inserts = 3 };
	cur.st.nodes[2] = (struct lb_node_stats){ .node = 7, .clients = 1, .arena_bytes = 2u << 20 };
	prev = cur;
	prev.st.n_nodes = 2; /* node 7 is new */
	prev.st.nodes[1].hits -= 50;
	prev.st.nodes[1].inserts -= 10;
	prev.models = cur.models = NULL;

	frame = ctl_top_frame("/run/test.sock", 1.0, &cur, &prev, 2.0, 40, 200);
	assert_non_null(frame);
	n = frame_rows(frame, rows, 64);
	free(frame);
	while (at < n && strncmp(rows[at], "second tier", 11) != 0)
		at++;
	assert_true(at + 4 < n);
	assert_string_equal(rows[at + 1], "node -1   1.5 of 512.0 MiB  entries 10  hits/s 0.0  "
					  "inserts/s 0.0  remote 0  clients 0");
	assert_string_equal(rows[at + 2], "node 0    700.0 of 1024.0 MiB  entries 123456  hits/s 25.0"
					  "  inserts/s 5.0  remote 3  clients 4");
	assert_string_equal(rows[at + 3], "node 7    0.0 of 2.0 MiB  entries 0  hits/s -  inserts/s -"
					  "  remote 0  clients 1");
	assert_string_equal(rows[at + 4], "");

	cur.st.n_nodes = 0;
	frame = ctl_top_frame("/run/test.sock", 1.0, &cur, NULL, 0, 40, 200);
	assert_non_null(frame);
	n = frame_rows(frame, rows, 64);
	free(frame);
	for (at = 0; at < n && strncmp(rows[at], "second tier", 11) != 0; at++)
		;
	assert_true(at + 1 < n);
	assert_string_equal(rows[at + 1], "");
	for (unsigned i = 0; i < n; i++)
		assert_true(strncmp(rows[i], "node ", 5) != 0);
}

/* A real daemon's rows and tenants, the same in lb_stats, stats, --json and the metrics: none
 * from a daemon that keeps no per-node figures (today's), one per node from one that does. */
static void test_live_daemon_nodes_agree_in_every_view(void **state)
{
	static char out[1 << 16];
	struct lb_client *c;

	(void)state;
	start_daemon();
	assert_int_equal(lb_connect(env.sock, "nodes-test", &c), 0);
	struct lb_stats st = stats(c);
	assert_true(st.n_nodes <= LB_MAX_NODES);
	assert_int_equal(ctl(out, sizeof(out), "stats", NULL), 0);
	check_nodes_table(&st, out, false);
	assert_int_equal(ctl(out, sizeof(out), "stats", "--json", NULL), 0);
	check_nodes_json(&st, out, false);
	assert_int_equal(ctl(out, sizeof(out), "metrics", NULL), 0);
	check_nodes_metrics(&st, out, false);
	lb_close(c);
	stop_daemon();
}

/* ================= top, in tmux ================= */

static char tmux_path[256];
static char tmux_sock[256];

/* tmux -S SOCK args... (NULL-terminated) into out. @return its exit status. */
static int tmux(char *out, size_t n, ...)
{
	char discard[4096];
	va_list ap;
	int st;

	va_start(ap, n);
	st = lbt_vrun(LBT_ARGS(tmux_path, "-S", tmux_sock), out ? out : discard,
		      out ? n : sizeof(discard), ap);
	va_end(ap);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int find_tmux(void)
{
	const char *path = getenv("PATH");
	char dirs[4096];

	snprintf(dirs, sizeof(dirs), "%s", path ? path : "/usr/bin:/bin");
	for (char *d = strtok(dirs, ":"); d; d = strtok(NULL, ":")) {
		snprintf(tmux_path, sizeof(tmux_path), "%s/tmux", d);
		if (access(tmux_path, X_OK) == 0)
			return 1;
	}
	return 0;
}

/* Run top in a new detached session of cols x rows; its pid, exit status and the terminal's
 * settings after it go to files in env.dir named after the session. */
static void top_session(const char *name, int cols, int rows)
{
	char cmd[2048], x[16], y[16];

	snprintf(x, sizeof(x), "%d", cols);
	snprintf(y, sizeof(y), "%d", rows);
	snprintf(cmd, sizeof(cmd),
		 "sh -c 'echo $$ > %s/%s.pid; exec %s --socket %s top --interval 0.2'; "
		 "echo $? > %s/%s.exit; stty -a > %s/%s.stty",
		 env.dir, name, LB_CTL_PATH, env.sock, env.dir, name, env.dir, name);
	char out[4096];
	if (tmux(out, sizeof(out), "new-session", "-d", "-s", name, "-x", x, "-y", y, cmd, NULL) != 0)
		fail_msg("tmux new-session %s: %s", name, out);
}

static void capture(const char *name, char *out, size_t n)
{
	if (tmux(out, n, "capture-pane", "-p", "-t", name, NULL) != 0)
		out[0] = '\0';
}

/* Wait up to 10 s for the screen to contain every one of the NULL-terminated strings. */
static void wait_screen(const char *name, char *out, size_t n, ...)
{
	for (int i = 0; i < 200; i++) {
		va_list ap;
		bool all = true;
		capture(name, out, n);
		va_start(ap, n);
		for (const char *s; (s = va_arg(ap, const char *)) != NULL;)
			all = all && strstr(out, s);
		va_end(ap);
		if (all)
			return;
		usleep(50 * 1000);
	}
	fail_msg("screen of %s never showed what was expected:\n%s", name, out);
}

/* The figures of the "  all" row of the first model: entries, and lookups/s (-1: "-"). */
static bool all_row(const char *screen, unsigned long *entries, double *rate)
{
	const char *p = strstr(screen, "\n  all ");
	char pct[16], now[16], r[32];
	if (!p || !(p = strchr(p, ']')))
		return false;
	if (sscanf(p + 1, "%15s %15s %31s %lu", pct, now, r, entries) != 4)
		return false;
	*rate = strcmp(r, "-") ? atof(r) : -1;
	return true;
}

/* The session's file (pid, exit, stty) once it exists and is complete, within 10 s. */
static void session_file(const char *name, const char *ext, char *out, size_t n)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s.%s", env.dir, name, ext);
	for (int i = 0; i < 200; i++) {
		FILE *f = fopen(path, "r");
		if (f) {
			size_t got = fread(out, 1, n - 1, f);
			fclose(f);
			out[got] = '\0';
			if (got && out[got - 1] == '\n')
				return;
		}
		usleep(50 * 1000);
	}
	fail_msg("%s never appeared", path);
}

/* The terminal is as the shell left it: canonical input and echo back on. */
static void assert_terminal_restored(const char *name)
{
	char stty[8192];
	session_file(name, "stty", stty, sizeof(stty));
	if (strstr(stty, "-icanon") || strstr(stty, "-echo ") || !strstr(stty, "icanon"))
		fail_msg("terminal not restored after top:\n%s", stty);
}

static void test_top_in_tmux(void **state)
{
	static char screen[65536];
	char buf[64];
	struct lb_client *c;
	struct lb_hit h;
	unsigned long entries = 0;
	double rate = -1;

	(void)state;
	snprintf(tmux_sock, sizeof(tmux_sock), "%s/tmux", env.dir);
	/* The server quits with its last session, racing the next new-session: one session
	 * lives all along (top_teardown kills the server). */
	assert_int_equal(tmux(NULL, 0, "new-session", "-d", "-s", "keep", "sleep 600", NULL), 0);
	start_daemon();
	assert_int_equal(lb_connect(env.sock, "top-test", &c), 0);
	uint32_t a = add_model(c, "topmodel", 4);
	insert_inputs(c, a, 0, 5, 4);
	for (uint32_t i = 0; i < 8; i++) {
		struct lb_key k = key_of(i);
		int ret = lb_lookup_deepest(c, a, &k, NULL, 0, &h);
		assert_int_equal(ret, i < 5 ? 0 : -ENOENT);
		if (ret == 0)
			assert_int_equal(lb_release(c, h.lease), 0);
	}

	/* 120 x 40: the model, its layers, and bars of their hit rates (5 of 8: 62.5%). */
	top_session("big", 120, 40);
	wait_screen("big", screen, sizeof(screen), "model topmodel (id 1, 4 layers)", "  L3 ",
		    "[###", "62.5%", "q quits", NULL);
	for (const char *line = screen; *line;) {
		size_t len = strcspn(line, "\n");
		if (len > 120)
			fail_msg("a line of %zu columns in 120:\n%s", len, screen);
		line += len + (line[len] == '\n');
	}
	assert_true(all_row(screen, &entries, &rate));
	assert_int_equal(entries, 20);
	/* It updates: more entries show, and lookups while it runs show as lookups/s. */
	insert_inputs(c, a, 10, 3, 4);
	for (int i = 0; i < 200; i++) {
		for (uint32_t j = 0; j < 20; j++) {
			struct lb_key k = key_of(j % 5);
			assert_int_equal(lb_lookup_deepest(c, a, &k, NULL, 0, &h), 0);
			assert_int_equal(lb_release(c, h.lease), 0);
		}
		capture("big", screen, sizeof(screen));
		if (all_row(screen, &entries, &rate) && entries == 32 && rate > 0)
			break;
		usleep(50 * 1000);
	}
	if (entries != 32 || !(rate > 0))
		fail_msg("top did not update (entries %lu, lookups/s %g):\n%s", entries, rate, screen);
	/* q quits with status 0 and gives the terminal back. */
	assert_int_equal(tmux(NULL, 0, "send-keys", "-t", "big", "q", NULL), 0);
	session_file("big", "exit", buf, sizeof(buf));
	assert_string_equal(buf, "0\n");
	assert_terminal_restored("big");

	/* SIGTERM (and SIGINT) quit the same way. */
	static const int sigs[] = { SIGTERM, SIGINT };
	for (size_t i = 0; i < 2; i++) {
		char name[16];
		snprintf(name, sizeof(name), "sig%zu", i);
		top_session(name, 100, 30);
		wait_screen(name, screen, sizeof(screen), "model topmodel", NULL);
		session_file(name, "pid", buf, sizeof(buf));
		assert_int_equal(kill((pid_t)atoi(buf), sigs[i]), 0);
		session_file(name, "exit", buf, sizeof(buf));
		assert_string_equal(buf, "0\n");
		assert_terminal_restored(name);
	}

	/* 40 x 8: no room for bars; rows that do not fit are counted on the last one. */
	top_session("small", 40, 8);
	wait_screen("small", screen, sizeof(screen), "model topmodel", "more rows", NULL);
	assert_null(strstr(screen, "[#"));
	unsigned lines = 0;
	for (const char *line = screen; *line; lines++) {
		size_t len = strcspn(line, "\n");
		if (len > 40)
			fail_msg("a line of %zu columns in 40:\n%s", len, screen);
		line += len + (line[len] == '\n');
	}
	assert_true(lines <= 8);
	/* Growing the window shows everything again (SIGWINCH). */
	assert_int_equal(tmux(NULL, 0, "resize-window", "-t", "small", "-x", "120", "-y", "40", NULL),
			 0);
	wait_screen("small", screen, sizeof(screen), "  L3 ", "[#", NULL);
	assert_null(strstr(screen, "more rows"));
	assert_int_equal(tmux(NULL, 0, "send-keys", "-t", "small", "q", NULL), 0);
	session_file("small", "exit", buf, sizeof(buf));
	assert_string_equal(buf, "0\n");

	/* A daemon that goes away is waited for, and a new one on the socket is shown. */
	top_session("gone", 100, 30);
	wait_screen("gone", screen, sizeof(screen), "model topmodel", NULL);
	lb_close(c);
	stop_daemon();
	wait_screen("gone", screen, sizeof(screen), "layerbankd went away", "waiting for it", NULL);
	char path[512];
	snprintf(path, sizeof(path), "%s/gone.exit", env.dir);
	assert_int_equal(access(path, F_OK), -1); /* still running */
	start_daemon();
	wait_screen("gone", screen, sizeof(screen), "clients 1  models 0", NULL);
	assert_null(strstr(screen, "went away"));
	assert_int_equal(tmux(NULL, 0, "send-keys", "-t", "gone", "q", NULL), 0);
	session_file("gone", "exit", buf, sizeof(buf));
	assert_string_equal(buf, "0\n");
	assert_terminal_restored("gone");
	stop_daemon();
}

static int top_teardown(void **state)
{
	if (tmux_sock[0])
		tmux(NULL, 0, "kill-server", NULL);
	tmux_sock[0] = '\0';
	return lbt_env_teardown(state);
}

#define TEST(f) cmocka_unit_test_prestate_setup_teardown(f, lbt_env_setup, lbt_env_teardown, &env)

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "top") == 0) {
		const struct CMUnitTest top[] = {
			cmocka_unit_test_prestate_setup_teardown(test_top_in_tmux, lbt_env_setup,
								 top_teardown, &env),
		};
		if (!find_tmux())
			LBT_SKIP("no tmux in PATH (apt-get install tmux): top is driven through it");
		return cmocka_run_group_tests_name("ctl_top", top, NULL, NULL);
	}
	const struct CMUnitTest tests[] = {
		TEST(test_flush_layer_model_all_and_leases_stay_valid),
		TEST(test_config_round_trips_and_effects),
		TEST(test_config_budget_shrinks_honouring_leases),
		TEST(test_config_policy_ttl_starts_the_sweep),
		TEST(test_admin_messages_need_root_or_the_daemons_user),
		TEST(test_metrics_exposition_format_and_figures),
		TEST(test_adaptive_thresholds),
		TEST(test_top_without_a_terminal),
		TEST(test_stats_shows_a_hostile_name_harmlessly),
		TEST(test_no_second_tier_is_off_everywhere),
		TEST(test_views_show_every_node_row),
		TEST(test_top_draws_a_row_per_node),
		TEST(test_live_daemon_nodes_agree_in_every_view),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
