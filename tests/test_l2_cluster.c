/*
 * The second tier (daemon/l2*.c): the key slot of the specification's examples, the seed list,
 * and against a real cluster of three masters on loopback in a folder of the test's own
 * (util/redis_proc: redis-server --cluster-enabled yes, redis-cli --cluster create): the slot
 * map, keys spread over the nodes, a pipeline, a MOVED after a slot changed owner, an ASK while a
 * slot migrates, the tier's thread writing and reading checked records, a killed master whose
 * slots fail while the others serve on; then two daemons as two hosts: what one caches the
 * other hits (exact, near through the band sets, prefix blocks), garbage never served, a hung
 * master, a killed one, and the tier's counters.
 * SKIP (77) without redis-server and redis-cli.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "io.h"
#include "redis_proc.h"
#include "rng.h"
#include "layerbank/layerbank.h"
#include "l2.h"
#include "l2_cluster.h"
#include "testutil.h"

#define MASTERS 3

static struct {
	char dir[256];
	struct lbu_redis r;
	int port[MASTERS];
	char id[MASTERS][64];
} cl;

/* ---- without a cluster ---- */

static void test_slots_are_the_specifications(void **state)
{
	(void)state;
	assert_int_equal(lbd_cluster_slot("123456789", 9), 0x31c3); /* the spec's CRC16 check */
	assert_int_equal(lbd_cluster_slot("", 0), 0);
	/* hash tags: the bytes between the first { and the first } after it, when any */
	uint16_t u = lbd_cluster_slot("user1000", 8);
	assert_int_equal(lbd_cluster_slot("{user1000}.following", 20), u);
	assert_int_equal(lbd_cluster_slot("{user1000}.followers", 20), u);
	assert_int_equal(lbd_cluster_slot("foo{}{bar}", 10), lbd_cluster_slot("foo{}{bar}", 10));
	assert_int_not_equal(lbd_cluster_slot("foo{}{bar}", 10), lbd_cluster_slot("bar", 3));
	assert_int_equal(lbd_cluster_slot("foo{{bar}}zap", 13), lbd_cluster_slot("{bar", 4));
	assert_int_equal(lbd_cluster_slot("foo{bar}{zap}", 13), lbd_cluster_slot("bar", 3));
	assert_int_equal(lbd_cluster_slot("x{y", 3), lbd_cluster_slot("x{y", 3));
}

static void test_seed_lists(void **state)
{
	(void)state;
	static const char *const bad[] = { "", "host", "host:", ":7000", "h:0", "h:65536",
					   "h:7000x", "redis-cluster://", "h:1,,h:2" };
	char err[256];
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct lbd_cluster *c = lbd_cluster_new(bad[i], 100, err, sizeof(err));
		if (c)
			fail_msg("seeds '%s' taken", bad[i]);
		assert_true(err[0] != '\0');
	}
	struct lbd_cluster *c = lbd_cluster_new("redis-cluster://127.0.0.1:7000,[::1]:7001,h:7002",
						100, err, sizeof(err));
	assert_non_null(c);
	assert_string_equal(lbd_cluster_owner(c, 5), ""); /* not read yet */
	lbd_cluster_free(c);
}

/* ---- a real cluster ---- */

static int cluster_up(void **state)
{
	(void)state;
	char err[512], out[256];
	if (!lbu_redis_available()) {
		printf("SKIP: redis-server and redis-cli are needed (Debian: redis-server, "
		       "redis-tools; scripts/test installs them)\n");
		exit(77);
	}
	lbt_mkdtemp(cl.dir, sizeof(cl.dir));
	if (lbu_redis_start(&cl.r, cl.dir, MASTERS, true, 0, err, sizeof(err)) < 0)
		fail_msg("%s", err);
	const char *myid[] = { "CLUSTER", "MYID", NULL };
	for (int i = 0; i < MASTERS; i++) {
		cl.port[i] = cl.r.port[i];
		assert_int_equal(lbu_redis_cli(cl.port[i], out, sizeof(out), myid), 0);
		out[strcspn(out, "\r\n")] = '\0';
		snprintf(cl.id[i], sizeof(cl.id[i]), "%.63s", out);
	}
	return 0;
}

/* redis-cli -p port ARGS... (NULL-terminated), its output into out. @return its status. */
static int cli(int port, char *out, size_t n, ...)
{
	const char *args[24];
	int k = 0;
	va_list ap;
	va_start(ap, n);
	for (const char *a; k < 23 && (a = va_arg(ap, const char *));)
		args[k++] = a;
	va_end(ap);
	args[k] = NULL;
	return lbu_redis_cli(port, out, n, args);
}

static int cluster_down(void **state)
{
	(void)state;
	lbu_redis_stop(&cl.r);
	lbu_rmtree(cl.dir);
	return 0;
}

/* The master whose port owns addr ("127.0.0.1:port"). */
static int master_of(const char *addr)
{
	for (int i = 0; i < MASTERS; i++) {
		char a[32];
		snprintf(a, sizeof(a), "127.0.0.1:%d", cl.port[i]);
		if (!strcmp(a, addr))
			return i;
	}
	fail_msg("'%s' is none of the masters", addr);
	return -1;
}

static redisReply *cmd(struct lbd_cluster *c, const char *verb, const char *key, const char *val)
{
	const char *argv[3] = { verb, key, val };
	size_t len[3] = { strlen(verb), strlen(key), val ? strlen(val) : 0 };
	char err[256];
	redisReply *r = lbd_cluster_command(c, key, strlen(key), val ? 3 : 2, argv, len, err,
					    sizeof(err));
	if (!r)
		fail_msg("%s %s: %s", verb, key, err);
	return r;
}

/* A key of slot owned by master m, not used before (n counts up). */
static void key_on(struct lbd_cluster *c, int m, int *n, char *key, size_t size)
{
	for (;; (*n)++) {
		snprintf(key, size, "probe:%d", *n);
		if (master_of(lbd_cluster_owner(c, lbd_cluster_slot(key, strlen(key)))) == m) {
			(*n)++;
			return;
		}
	}
}

static void test_keys_spread_over_the_masters(void **state)
{
	(void)state;
	char err[256], key[32], val[32], out[256];
	struct lbd_cluster *c = lbd_cluster_new("127.0.0.1:1,", 500, err, sizeof(err));
	assert_null(c); /* a trailing comma names an empty seed */
	snprintf(key, sizeof(key), "127.0.0.1:%d", cl.port[1]);
	c = lbd_cluster_new(key, 500, err, sizeof(err));
	assert_non_null(c);
	assert_int_equal(lbd_cluster_refresh(c, err, sizeof(err)), 16384);
	for (int i = 0; i < 300; i++) {
		snprintf(key, sizeof(key), "k:%d", i);
		snprintf(val, sizeof(val), "v%d", i * 7);
		redisReply *r = cmd(c, "SET", key, val);
		assert_int_equal(r->type, REDIS_REPLY_STATUS);
		freeReplyObject(r);
	}
	for (int i = 0; i < 300; i++) {
		snprintf(key, sizeof(key), "k:%d", i);
		snprintf(val, sizeof(val), "v%d", i * 7);
		redisReply *r = cmd(c, "GET", key, NULL);
		assert_int_equal(r->type, REDIS_REPLY_STRING);
		assert_string_equal(r->str, val);
		freeReplyObject(r);
	}
	for (int i = 0; i < MASTERS; i++) {
		assert_int_equal(cli(cl.port[i], out, sizeof(out), "DBSIZE", NULL), 0);
		assert_true(atoi(out) > 50); /* about a third each */
	}
	/* the same keys read back in one pipeline, a missing one among them: replies in order */
	enum { P = 40 };
	char pk[P][32];
	const char *argv[P][2];
	size_t len[P][2];
	struct lbd_cluster_cmd pc[P];
	redisReply *rep[P];
	for (int i = 0; i < P; i++) {
		snprintf(pk[i], sizeof(pk[i]), i == 17 ? "none:%d" : "k:%d", i * 7);
		argv[i][0] = "GET";
		argv[i][1] = pk[i];
		len[i][0] = 3;
		len[i][1] = strlen(pk[i]);
		pc[i] = (struct lbd_cluster_cmd){ pk[i], len[i][1], 2, argv[i], len[i] };
	}
	lbd_cluster_pipeline(c, pc, P, rep);
	for (int i = 0; i < P; i++) {
		assert_non_null(rep[i]);
		if (i == 17) {
			assert_int_equal(rep[i]->type, REDIS_REPLY_NIL);
		} else {
			snprintf(val, sizeof(val), "v%d", i * 7 * 7);
			assert_int_equal(rep[i]->type, REDIS_REPLY_STRING);
			assert_string_equal(rep[i]->str, val);
		}
		freeReplyObject(rep[i]);
	}
	lbd_cluster_free(c);
}

static void set_slot(uint16_t slot, const char *how, int node, int on)
{
	char s[8], out[256];
	snprintf(s, sizeof(s), "%u", slot);
	if (cli(cl.port[on], out, sizeof(out), "CLUSTER", "SETSLOT", s, how, cl.id[node], NULL) ||
	    !strstr(out, "OK"))
		fail_msg("CLUSTER SETSLOT %s %s %s on %d: %s", s, how, cl.id[node], on, out);
}

static void test_moved_and_ask_are_followed(void **state)
{
	(void)state;
	char err[256], key[32], addr[32], out[256];
	int n = 0;
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", cl.port[0]);
	struct lbd_cluster *c = lbd_cluster_new(addr, 500, err, sizeof(err));
	assert_int_equal(lbd_cluster_refresh(c, err, sizeof(err)), 16384);

	/* MOVED: a key's (empty) slot given from master 0 to master 1 behind the map's back */
	key_on(c, 0, &n, key, sizeof(key));
	uint16_t slot = lbd_cluster_slot(key, strlen(key));
	for (int on = 0; on < MASTERS; on++)
		set_slot(slot, "NODE", 1, on == 0 ? 1 : on == 1 ? 0 : 2);
	redisReply *r = cmd(c, "SET", key, "moved");
	assert_int_equal(r->type, REDIS_REPLY_STATUS);
	freeReplyObject(r);
	assert_int_equal(master_of(lbd_cluster_owner(c, slot)), 1);
	assert_int_equal(cli(cl.port[1], out, sizeof(out), "GET", key, NULL), 0);
	assert_non_null(strstr(out, "moved"));

	/* ASK: a slot migrating from master 0 to master 2; a key master 0 lacks goes to 2 */
	key_on(c, 0, &n, key, sizeof(key));
	slot = lbd_cluster_slot(key, strlen(key));
	set_slot(slot, "IMPORTING", 0, 2);
	set_slot(slot, "MIGRATING", 2, 0);
	r = cmd(c, "SET", key, "asked");
	assert_int_equal(r->type, REDIS_REPLY_STATUS);
	freeReplyObject(r);
	assert_int_equal(master_of(lbd_cluster_owner(c, slot)), 0); /* ASK leaves the map */
	assert_int_equal(cli(cl.port[0], out, sizeof(out), "EXISTS", key, NULL), 0);
	assert_int_equal(atoi(out), 0);
	for (int on = 0; on < MASTERS; on++)
		set_slot(slot, "NODE", 2, on == 0 ? 2 : on == 2 ? 0 : 1);
	r = cmd(c, "GET", key, NULL); /* a MOVED now, to where the key is */
	assert_int_equal(r->type, REDIS_REPLY_STRING);
	assert_string_equal(r->str, "asked");
	freeReplyObject(r);
	lbd_cluster_free(c);
}

/* ---- the tier's thread over the cluster ---- */

struct got {
	int calls, hits;
	uint8_t data[256];
	size_t bytes;
};

static bool on_fetch(void *ctx, const struct lbd_l2_record *rec, bool last)
{
	struct got *g = ctx;
	assert_true(last);
	g->calls++;
	if (rec) {
		g->hits++;
		g->bytes = (size_t)rec->payload_bytes < sizeof(g->data) ? (size_t)rec->payload_bytes
								       : sizeof(g->data);
		memcpy(g->data, rec->payload, g->bytes);
	}
	return true;
}

/* Record i of model m: a layer entry of 4 tokens x 8 floats, under *key. */
static uint8_t *record_of(uint64_t m, int i, char *key, size_t *len, struct lbd_l2_want *w)
{
	struct lb_insert_hdr h = { .exact = { (uint64_t)i, 0x5eed }, .dtype = LB_DTYPE_F32, .ndim = 2,
				   .shape = { 4, 8 }, .bytes = 4 * 8 * 4 };
	float data[32];
	for (int k = 0; k < 32; k++)
		data[k] = (float)(i * 100 + k);
	lbd_l2_key_layer(key, m, h.exact, 3);
	*w = (struct lbd_l2_want){ m, LBD_L2_LAYER, { h.exact[0], h.exact[1] }, 3 };
	return lbd_l2_encode_layer(m, 3, 4, &h, data, NULL, len);
}

static void test_tier_writes_behind_and_reads_through(void **state)
{
	(void)state;
	char seeds[96], err[256], key[LBD_L2_KEY_MAX];
	snprintf(seeds, sizeof(seeds), "redis-cluster://127.0.0.1:%d", cl.port[0]);
	struct lbd_l2_cfg cfg = { .seeds = seeds, .timeout_ms = 500 };
	struct lbd_l2 *t = lbd_l2_start(&cfg, err, sizeof(err));
	assert_non_null(t);
	const uint64_t m = 0x6d6f64656cull;
	struct lbd_l2_want w;
	size_t len;
	for (int i = 0; i < 60; i++) {
		uint8_t *rec = record_of(m, i, key, &len, &w);
		assert_true(lbd_l2_put(t, key, rec, len));
	}
	assert_true(lbd_l2_drain(t, 10000));
	struct lbd_l2_stats st;
	lbd_l2_stats(t, &st);
	assert_int_equal(st.written, 60);
	assert_int_equal(st.queue_bytes, 0);
	assert_true(st.up);

	static struct got g[60];
	for (int i = 0; i < 60; i++) {
		uint8_t *r = record_of(m, i, key, &len, &w);
		free(r);
		assert_true(lbd_l2_fetch(t, key, &w, NULL, on_fetch, &g[i]));
	}
	assert_true(lbd_l2_drain(t, 10000));
	lbd_l2_stats(t, &st);
	if (st.fetched != 60)
		fail_msg("fetched %llu, misses %llu, rejected %llu, errors %llu",
			 (unsigned long long)st.fetched, (unsigned long long)st.fetch_misses,
			 (unsigned long long)st.rejected, (unsigned long long)st.fetch_errors);
	for (int i = 0; i < 60; i++) {
		assert_int_equal(g[i].hits, 1);
		assert_int_equal(g[i].bytes, 128);
		float first;
		memcpy(&first, g[i].data, 4);
		assert_true(first == (float)(i * 100));
	}
	/* missing, another model's, and garbage under a record's key: never believed */
	struct got miss = { 0 }, other = { 0 }, junk = { 0 };
	uint8_t *r = record_of(m, 999, key, &len, &w);
	free(r);
	assert_true(lbd_l2_fetch(t, key, &w, NULL, on_fetch, &miss));
	r = record_of(m + 1, 1000, key, &len, &w);
	assert_true(lbd_l2_put(t, key, r, len));
	assert_true(lbd_l2_drain(t, 10000)); /* reads go first: the write lands before the read */
	w.model = m;
	assert_true(lbd_l2_fetch(t, key, &w, NULL, on_fetch, &other));
	struct lbd_cluster *c = lbd_cluster_new(seeds, 500, err, sizeof(err));
	r = record_of(m, 1001, key, &len, &w);
	r[LBD_L2_PREAMBLE + 100] ^= 1; /* a bit of the data */
	const char *argv[3] = { "SET", key, (const char *)r };
	size_t alen[3] = { 3, strlen(key), len };
	redisReply *rep = lbd_cluster_command(c, key, strlen(key), 3, argv, alen, err, sizeof(err));
	assert_non_null(rep);
	freeReplyObject(rep);
	free(r);
	lbd_cluster_free(c);
	assert_true(lbd_l2_fetch(t, key, &w, NULL, on_fetch, &junk));
	assert_true(lbd_l2_drain(t, 10000));
	assert_int_equal(miss.calls + other.calls + junk.calls, 3);
	assert_int_equal(miss.hits + other.hits + junk.hits, 0);
	lbd_l2_stats(t, &st);
	assert_int_equal(st.fetched, 60);
	assert_int_equal(st.fetch_misses, 1);
	assert_int_equal(st.rejected, 2);
	lbd_l2_stop(t);

	/* a queue of 100 bytes takes no record of 184: dropped and counted, not grown */
	cfg.queue_bytes = 100;
	t = lbd_l2_start(&cfg, err, sizeof(err));
	r = record_of(m, 1, key, &len, &w);
	assert_false(lbd_l2_put(t, key, r, len));
	lbd_l2_stats(t, &st);
	assert_int_equal(st.dropped, 1);
	assert_int_equal(st.queue_records, 0);
	lbd_l2_stop(t);
}

/* ---- two daemons, two hosts' banks, one cluster ---- */

static pid_t daemon_with_l2(const char *sock, const char *log)
{
	char l2[128];
	snprintf(l2, sizeof(l2), "redis-cluster://127.0.0.1:%d,127.0.0.1:%d", cl.port[0], cl.port[1]);
	const char *argv[] = { LB_DAEMON_PATH, "-f", "-s", sock, "--arena-size", "32M", "--hugepages",
			       "off", "--threads", "1", "--l2", l2, NULL };
	pid_t pid = fork();
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		dup2(fd, 1);
		dup2(fd, 2);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	for (int i = 0; i < 500 && access(sock, F_OK); i++)
		usleep(10000);
	assert_int_equal(access(sock, F_OK), 0);
	return pid;
}

static void test_killed_master_fails_its_slots_only(void **state)
{
	(void)state;
	char err[256], key[32], other[32], addr[96];
	int n = 1000;
	snprintf(addr, sizeof(addr), "127.0.0.1:%d,127.0.0.1:%d", cl.port[2], cl.port[0]);
	struct lbd_cluster *c = lbd_cluster_new(addr, 300, err, sizeof(err));
	assert_int_equal(lbd_cluster_refresh(c, err, sizeof(err)), 16384);
	key_on(c, 2, &n, key, sizeof(key));
	key_on(c, 0, &n, other, sizeof(other));
	redisReply *r = cmd(c, "SET", key, "x");
	freeReplyObject(r);
	lbu_redis_kill(&cl.r, 2);
	const char *argv[] = { "GET", key };
	size_t len[] = { 3, strlen(key) };
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	r = lbd_cluster_command(c, key, strlen(key), 2, argv, len, err, sizeof(err));
	clock_gettime(CLOCK_MONOTONIC, &t1);
	assert_null(r);
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", cl.port[2]);
	assert_non_null(strstr(err, addr));
	assert_true((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000 < 2000);
	/* the first seed is the dead one: the map comes from the next */
	assert_int_equal(lbd_cluster_refresh(c, err, sizeof(err)), 16384);
	for (int i = 0; i < 20; i++) {
		r = cmd(c, "SET", other, "still");
		assert_int_equal(r->type, REDIS_REPLY_STATUS);
		freeReplyObject(r);
	}
	/* the tier: writes to the dead master's slots fail and are counted, the others land */
	char seeds[96], rkey[LBD_L2_KEY_MAX];
	snprintf(seeds, sizeof(seeds), "127.0.0.1:%d,127.0.0.1:%d", cl.port[2], cl.port[1]);
	struct lbd_l2_cfg cfg = { .seeds = seeds, .timeout_ms = 300 };
	struct lbd_l2 *t = lbd_l2_start(&cfg, err, sizeof(err));
	assert_non_null(t);
	int dead = 0;
	for (int i = 0; i < 40; i++) {
		struct lbd_l2_want w;
		size_t rlen;
		uint8_t *rec = record_of(7, 5000 + i, rkey, &rlen, &w);
		dead += master_of(lbd_cluster_owner(c, lbd_cluster_slot(rkey, strlen(rkey)))) == 2;
		assert_true(lbd_l2_put(t, rkey, rec, rlen));
	}
	assert_true(dead > 0 && dead < 40);
	assert_true(lbd_l2_drain(t, 30000));
	struct lbd_l2_stats st;
	lbd_l2_stats(t, &st);
	assert_int_equal(st.write_errors, dead);
	assert_int_equal(st.written, 40 - dead);
	lbd_l2_stop(t);
	lbd_cluster_free(c);
}

/* The two hosts' model: what a worker of each registers. */
static const struct lb_model_desc two_model = { .name = "two-hosts", .weights_hash = 77,
						.n_layers = 4, .hidden = 32, .dtype = LB_DTYPE_F32,
						.max_seq = 64 };

/* An input of 8 tokens (from *n on) whose deepest layer's key is on master mi, into key and tok;
 * its Redis key into rkey. */
static void input_on(struct lbd_cluster *c, uint64_t m, int mi, int *n, struct lb_key *key,
		     int32_t tok[8], char *rkey)
{
	for (;; (*n)++) {
		for (int t = 0; t < 8; t++)
			tok[t] = *n * 8 + t;
		/* fingerprints far apart: each input is a stranger to the others */
		*key = (struct lb_key){ .seq_len = 8 };
		for (int w = 0; w < 4; w++)
			key->fp[w] = lbu_mix64((uint64_t)*n * 4 + (uint64_t)w + 1);
		lb_token_hash(tok, 8, key->exact);
		lbd_l2_key_layer(rkey, m, key->exact, 3);
		if (master_of(lbd_cluster_owner(c, lbd_cluster_slot(rkey, strlen(rkey)))) == mi) {
			(*n)++;
			return;
		}
	}
}

/* Input i's deepest layer: 8 x 32 floats. */
static float value_of(int i, int k)
{
	return (float)i * 1000.0f + (float)k * 0.25f;
}

static void insert_input(struct lb_client *c, uint32_t model, const struct lb_key *key, int i)
{
	float *buf = lb_insert_reserve(c, 8 * 32 * 4);
	assert_non_null(buf);
	for (int k = 0; k < 8 * 32; k++)
		buf[k] = value_of(i, k);
	struct lb_shape shape = { LB_DTYPE_F32, 2, { 8, 32 } };
	assert_int_equal(lb_insert_commit(c, model, 3, key, &shape), 0);
}

/* A lookup that may wait 2 s for the tier. @return its status; on a hit the bytes checked
 * against input i's and the lease released; *ms how long it took. */
static int lookup_waiting(struct lb_client *c, uint32_t model, const struct lb_key *key, int i,
			  double *ms, uint32_t *flags)
{
	struct lb_hit hit;
	struct lb_sflight sf;
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	int rc = lb_lookup_sflight(c, model, key, NULL, 0, LB_SFLIGHT_WAIT | LB_SFLIGHT_TIER, 2000000, &hit, &sf);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	*ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
	if (flags)
		*flags = sf.flags;
	if (rc == 0) {
		assert_int_equal(hit.layer, 3);
		assert_int_equal(hit.hamming, 0);
		for (int k = 0; k < 8 * 32; k++)
			assert_true(((const float *)hit.data)[k] == value_of(i, k));
		assert_int_equal(lb_release(c, hit.lease), 0);
	}
	return rc;
}

/* Wait until c's tier has no read waiting and its read counters stood still for 50 ms; its
 * stats into *st. */
static void tier_idle(struct lb_client *c, struct lb_stats *st)
{
	uint64_t last = UINT64_MAX;
	for (int w = 0; w < 200; w++) {
		assert_int_equal(lb_stats(c, st, sizeof(*st)), 0);
		uint64_t reads = st->l2_fetched + st->l2_fetch_misses + st->l2_rejected +
				 st->l2_fetch_errors;
		if (st->l2_fetches_waiting == 0 && reads == last)
			return;
		last = reads;
		usleep(50000);
	}
	fail_msg("the tier never went idle");
}

/* SET key val (len bytes) straight into the cluster, as anyone with access could. */
static void set_raw(struct lbd_cluster *c, const char *key, const void *val, size_t len)
{
	char err[256];
	const char *argv[3] = { "SET", key, val };
	size_t alen[3] = { 3, strlen(key), len };
	redisReply *r = lbd_cluster_command(c, key, strlen(key), 3, argv, alen, err, sizeof(err));
	if (!r)
		fail_msg("SET %s: %s", key, err);
	freeReplyObject(r);
}

static bool in_cluster(struct lbd_cluster *c, const char *key)
{
	redisReply *r = cmd(c, "EXISTS", key, NULL);
	bool yes = r->type == REDIS_REPLY_INTEGER && r->integer == 1;
	freeReplyObject(r);
	return yes;
}

/*
 * Two daemons standing for two hosts (own arenas and sockets) on one cluster: what a client of
 * the first inserts, a client of the second hits on its first lookup, held while its daemon
 * fetches it, with identical bytes; garbage and a record of the wrong shape under an input's key
 * are never served; then a master is killed and both serve on: their local entries, writes and
 * reads of the live masters' slots, and misses (not errors) for the dead one's.
 */
static void test_two_hosts_share_through_the_tier(void **state)
{
	(void)state;
	char sa[320], sb[320], la[320], lb[320], err[256], seeds[96], rkey[LBD_L2_KEY_MAX];
	snprintf(sa, sizeof(sa), "%s/a.sock", cl.dir);
	snprintf(sb, sizeof(sb), "%s/b.sock", cl.dir);
	snprintf(la, sizeof(la), "%s/a.log", cl.dir);
	snprintf(lb, sizeof(lb), "%s/b.log", cl.dir);
	pid_t a = daemon_with_l2(sa, la), b = daemon_with_l2(sb, lb);
	struct lb_client *ca, *cb;
	assert_int_equal(lb_connect(sa, "host-a", &ca), 0);
	assert_int_equal(lb_connect(sb, "host-b", &cb), 0);
	lb_set_wait_us(ca, 3000000);
	lb_set_wait_us(cb, 3000000);
	uint32_t ma, mb;
	assert_int_equal(lb_register_model(ca, &two_model, &ma), 0);
	assert_int_equal(lb_register_model(cb, &two_model, &mb), 0);
	struct lbp_register_model reg;
	assert_int_equal(lbp_register_from_desc(&two_model, &reg), 0);
	uint64_t m = lbd_l2_model_hash(&reg);
	snprintf(seeds, sizeof(seeds), "127.0.0.1:%d,127.0.0.1:%d", cl.port[0], cl.port[1]);
	struct lbd_cluster *c = lbd_cluster_new(seeds, 500, err, sizeof(err));
	assert_non_null(c);
	assert_true(lbd_cluster_refresh(c, err, sizeof(err)) > 0);

	/* host a fills its bank: two inputs on each of masters 0 and 1 */
	enum { N = 4 };
	struct lb_key key[N];
	int32_t tok[8];
	int n = 0;
	for (int i = 0; i < N; i++) {
		input_on(c, m, i / 2, &n, &key[i], tok, rkey);
		insert_input(ca, ma, &key[i], i);
		for (int w = 0; w < 500 && !in_cluster(c, rkey); w++)
			usleep(10000); /* written behind */
		if (!in_cluster(c, rkey))
			fail_msg("input %d never reached the cluster (log %s)", i, la);
	}
	/* without LB_SFLIGHT_TIER a lookup is not held for the tier, even one that would wait for a
	 * client's claim: a miss at once, and the fetch it started serves the next lookup */
	{
		struct lb_hit hit;
		struct lb_sflight sf;
		assert_int_equal(lb_lookup_sflight(cb, mb, &key[0], NULL, 0, LB_SFLIGHT_WAIT, 2000000,
						   &hit, &sf), -ENOENT);
		assert_false(sf.flags & LB_SFLIGHT_WAITED);
		int rc = -ENOENT;
		for (int w = 0; w < 200 && rc == -ENOENT; w++) {
			rc = lb_lookup_deepest(cb, mb, &key[0], NULL, 0, &hit);
			if (rc == -ENOENT)
				usleep(10000);
		}
		assert_int_equal(rc, 0);
		assert_true(((const float *)hit.data)[7] == value_of(0, 7));
		assert_int_equal(lb_release(cb, hit.lease), 0);
	}
	/* with it, host b hits each on its first lookup, held while its daemon fetched it */
	for (int i = 1; i < N; i++) {
		double ms;
		uint32_t flags;
		assert_int_equal(lookup_waiting(cb, mb, &key[i], i, &ms, &flags), 0);
		assert_true(flags & LB_SFLIGHT_WAITED);
		printf("host b, input %d: a hit through the tier in %.2f ms\n", i, ms);
		assert_int_equal(lookup_waiting(cb, mb, &key[i], i, &ms, &flags), 0);
		assert_false(flags & LB_SFLIGHT_WAITED); /* now local */
	}

	/* a near input: host b looks up y, 3 fingerprint bits from x (other tokens), which host a
	 * inserted with its lower layers; x's deepest layer comes through the band sets and serves
	 * y at distance 3, x's other layers (what a partial reuse aligns with) already there */
	struct lb_key x, y;
	char band[LBD_L2_KEY_MAX];
	input_on(c, m, 0, &n, &x, tok, rkey);
	for (int l = 0; l < 3; l++) {
		float *lo = lb_insert_reserve(ca, 8 * 32 * 4);
		assert_non_null(lo);
		for (int k = 0; k < 8 * 32; k++)
			lo[k] = (float)(l * 10 + k);
		struct lb_shape shape = { LB_DTYPE_F32, 2, { 8, 32 } };
		assert_int_equal(lb_insert_commit(ca, ma, (uint32_t)l, &x, &shape), 0);
	}
	insert_input(ca, ma, &x, 50);
	/* the record, and its last band on a live master (master 2 is dead by now) */
	for (uint32_t k = LBD_L2_BANDS; k-- > 0;) {
		lbd_l2_key_band(band, m, k, lbd_l2_band(x.fp, k));
		if (master_of(lbd_cluster_owner(c, lbd_cluster_slot(band, strlen(band)))) != 2)
			break;
	}
	for (int w = 0; w < 500 && !(in_cluster(c, rkey) && in_cluster(c, band)); w++)
		usleep(10000);
	assert_true(in_cluster(c, rkey) && in_cluster(c, band));
	y = x;
	for (int t = 0; t < 8; t++)
		tok[t] = -1 - t;
	lb_token_hash(tok, 8, y.exact);
	y.fp[0] ^= 1ull << 3;
	y.fp[1] ^= 1ull << 6;
	y.fp[3] ^= 1ull << 63;
	struct lb_stats before, after;
	tier_idle(cb, &before); /* the reads of the inputs' other layers above have ended */
	{
		struct lb_hit hit;
		struct lb_sflight sf;
		assert_int_equal(lb_lookup_sflight(cb, mb, &y, NULL, 0, LB_SFLIGHT_WAIT | LB_SFLIGHT_TIER, 2000000,
						   &hit, &sf), 0);
		assert_true(sf.flags & LB_SFLIGHT_WAITED);
		assert_int_equal(hit.layer, 3);
		assert_int_equal(hit.hamming, 3);
		for (int k = 0; k < 8 * 32; k++)
			assert_true(((const float *)hit.data)[k] == value_of(50, k));
		assert_int_equal(lb_release(cb, hit.lease), 0);
	}
	for (int l = 0; l < 3; l++) {
		struct lb_hit hit;
		assert_int_equal(lb_lookup(cb, mb, (uint32_t)l, &x, NULL, 0, &hit), 0);
		assert_int_equal(hit.hamming, 0);
		assert_true(((const float *)hit.data)[5] == (float)(l * 10 + 5));
		assert_int_equal(lb_release(cb, hit.lease), 0);
	}
	do {
		usleep(10000);
		assert_int_equal(lb_stats(cb, &after, sizeof(after)), 0);
	} while (after.l2_fetched < before.l2_fetched + 4 && after.uptime_s < before.uptime_s + 10);
	assert_int_equal(after.l2_fetched, before.l2_fetched + 4); /* layer 3, then 0..2 */
	assert_int_equal(after.l2_fetch_misses, before.l2_fetch_misses + 0);

	/* a decoder's prefix blocks: host b's LOOKUP_PREFIX misses, the tier brings the chain in
	 * order, and the next lookup has every block, identical */
	{
		enum { NB = 3, BT = 4, KVD = 8 };
		struct lb_model_desc pd = { .name = "two-hosts-decoder", .weights_hash = 78,
					    .n_layers = 2, .hidden = 16, .dtype = LB_DTYPE_F32,
					    .max_seq = 64, .kv_dim = KVD, .block_tokens = BT };
		uint32_t pa, pb;
		assert_int_equal(lb_register_model(ca, &pd, &pa), 0);
		assert_int_equal(lb_register_model(cb, &pd, &pb), 0);
		struct lbp_register_model preg;
		assert_int_equal(lbp_register_from_desc(&pd, &preg), 0);
		uint64_t pm = lbd_l2_model_hash(&preg), bk[NB][2];
		int32_t pt[NB * BT];
		char bkey[NB][LBD_L2_KEY_MAX];
		for (int seed = 0;; seed++) { /* every block on a live master */
			for (int t = 0; t < NB * BT; t++)
				pt[t] = seed * 100 + t;
			assert_int_equal(lb_block_keys(pt, NB * BT, BT, bk, NB), NB);
			int live = 0;
			for (int i = 0; i < NB; i++) {
				lbd_l2_key_block(bkey[i], pm, bk[i]);
				live += master_of(lbd_cluster_owner(
						c, lbd_cluster_slot(bkey[i], strlen(bkey[i])))) != 2;
			}
			if (live == NB)
				break;
		}
		size_t floats = 2 * 2 * BT * KVD; /* [kv.layers 2][K, V][BT][kv_dim] */
		for (int i = 0; i < NB; i++) {
			float *buf = lb_insert_reserve(ca, floats * 4);
			assert_non_null(buf);
			for (size_t k = 0; k < floats; k++)
				buf[k] = (float)(i * 1000) + (float)k;
			assert_int_equal(lb_insert_block(ca, pa, bk[i], i ? bk[i - 1] : NULL,
							 (uint32_t)i), 0);
		}
		for (int w = 0; w < 500 && !in_cluster(c, bkey[NB - 1]); w++)
			usleep(10000);
		const void *blocks[NB];
		uint64_t lease;
		assert_int_equal(lb_lookup_prefix(cb, pb, (const uint64_t(*)[2])bk, NB, blocks, &lease),
				 -ENOENT);
		int got = -ENOENT;
		for (int w = 0; w < 200 && got != NB; w++) {
			got = lb_lookup_prefix(cb, pb, (const uint64_t(*)[2])bk, NB, blocks, &lease);
			if (got > 0 && got != NB)
				assert_int_equal(lb_release(cb, lease), 0);
			if (got != NB)
				usleep(10000);
		}
		assert_int_equal(got, NB);
		for (int i = 0; i < NB; i++)
			for (size_t k = 0; k < floats; k++)
				assert_true(((const float *)blocks[i])[k] == (float)(i * 1000) + (float)k);
		assert_int_equal(lb_release(cb, lease), 0);
	}

	/* garbage, and a well-formed record of a shape not the model's: misses, never served */
	struct lb_key bad[2];
	for (int g = 0; g < 2; g++) {
		input_on(c, m, 0, &n, &bad[g], tok, rkey);
		uint8_t junk[16 * 16 * 4]; /* garbage; the wrong shape's data */
		for (size_t k = 0; k < sizeof(junk); k++)
			junk[k] = (uint8_t)(k * 7 + 3);
		if (g == 0) {
			set_raw(c, rkey, junk, sizeof(junk));
		} else {
			struct lb_insert_hdr h = { .exact = { bad[g].exact[0], bad[g].exact[1] },
						   .dtype = LB_DTYPE_F32, .ndim = 2,
						   .shape = { 16, 16 }, .bytes = 16 * 16 * 4 };
			size_t len;
			uint8_t *rec = lbd_l2_encode_layer(m, 3, 8, &h, junk, NULL, &len);
			set_raw(c, rkey, rec, len);
			free(rec);
		}
		for (int again = 0; again < 2; again++) {
			double ms;
			struct lb_hit hit;
			struct lb_sflight sf;
			int rc = lb_lookup_sflight(cb, mb, &bad[g], NULL, 0, LB_SFLIGHT_WAIT | LB_SFLIGHT_TIER, 2000000,
						   &hit, &sf);
			if (rc == 0)
				fail_msg("garbage %d served: layer %d, shape %u x %u, hamming %u", g,
					 hit.layer, hit.shape[0],
					 hit.shape[1], hit.hamming);
			assert_int_equal(rc, -ENOENT);
			(void)ms;
		}
	}

	/* a master hangs (SIGSTOP) for a second: a lookup of an input on it waits no longer than
	 * the fetch's claim (twice the 200 ms node time-out) and misses; local hits go on; once
	 * the node answers again the daemon reconnects by itself and the input comes */
	{
		struct lb_key s;
		char skey[LBD_L2_KEY_MAX];
		input_on(c, m, 1, &n, &s, tok, skey);
		insert_input(ca, ma, &s, 60);
		for (int w = 0; w < 500 && !in_cluster(c, skey); w++)
			usleep(10000);
		assert_true(in_cluster(c, skey));
		kill(cl.r.pid[1], SIGSTOP);
		double ms;
		assert_int_equal(lookup_waiting(cb, mb, &s, 60, &ms, NULL), -ENOENT);
		printf("host b, an input on a hung master: a miss in %.1f ms\n", ms);
		assert_true(ms < 1500);
		assert_int_equal(lookup_waiting(cb, mb, &key[2], 2, &ms, NULL), 0);
		assert_true(ms < 100);
		usleep(600000);
		kill(cl.r.pid[1], SIGCONT);
		int rc = -ENOENT;
		for (int w = 0; w < 100 && rc == -ENOENT; w++) {
			rc = lookup_waiting(cb, mb, &s, 60, &ms, NULL);
			if (rc == -ENOENT)
				usleep(20000);
		}
		assert_int_equal(rc, 0);
	}

	/* a master goes */
	lbu_redis_kill(&cl.r, 1);
	for (int i = 0; i < N; i++) {
		double ms;
		assert_int_equal(lookup_waiting(ca, ma, &key[i], i, &ms, NULL), 0);
		assert_int_equal(lookup_waiting(cb, mb, &key[i], i, &ms, NULL), 0);
	}
	/* a inserts one input on the live master and one on the dead: both are a's at once; b
	 * gets the first through the tier, and misses the second without an error */
	struct lb_key live, dead;
	char live_key[LBD_L2_KEY_MAX];
	input_on(c, m, 0, &n, &live, tok, live_key);
	input_on(c, m, 1, &n, &dead, tok, rkey);
	insert_input(ca, ma, &live, 100);
	insert_input(ca, ma, &dead, 101);
	double ms;
	assert_int_equal(lookup_waiting(ca, ma, &live, 100, &ms, NULL), 0);
	assert_int_equal(lookup_waiting(ca, ma, &dead, 101, &ms, NULL), 0);
	int rc = -ENOENT;
	for (int w = 0; w < 200 && rc == -ENOENT; w++) {
		rc = lookup_waiting(cb, mb, &live, 100, &ms, NULL);
		if (rc == -ENOENT)
			usleep(20000);
	}
	if (rc)
		fail_msg("host b never got the input on the live master: %d (log %s)", rc, lb);
	for (int again = 0; again < 3; again++) {
		assert_int_equal(lookup_waiting(cb, mb, &dead, 101, &ms, NULL), -ENOENT);
		printf("host b, an input on the dead master: a miss in %.2f ms\n", ms);
	}
	/* what the operator sees: the tier's counters in STATS */
	struct lb_stats sta, stb;
	assert_int_equal(lb_stats(ca, &sta, sizeof(sta)), 0);
	for (int w = 0; w < 200 && sta.l2_write_errors == 0; w++) {
		usleep(10000);
		assert_int_equal(lb_stats(ca, &sta, sizeof(sta)), 0);
	}
	/* a read is counted once its callback returned, after the lookup it served may have */
	assert_int_equal(lb_stats(cb, &stb, sizeof(stb)), 0);
	for (int w = 0; w < 200 && stb.l2_fetch_errors < 3; w++) {
		usleep(10000);
		assert_int_equal(lb_stats(cb, &stb, sizeof(stb)), 0);
	}
	printf("host a: tier %s, %llu written, %llu write errors; host b: %llu fetched, %llu "
	       "missing, %llu rejected, %llu failed\n", sta.l2,
	       (unsigned long long)sta.l2_written, (unsigned long long)sta.l2_write_errors,
	       (unsigned long long)stb.l2_fetched, (unsigned long long)stb.l2_fetch_misses,
	       (unsigned long long)stb.l2_rejected, (unsigned long long)stb.l2_fetch_errors);
	assert_true(sta.l2_written >= N + 5); /* the inputs, x and its 3 lower layers, live */
	assert_true(sta.l2_write_errors >= 1);   /* the input on the dead master */
	assert_true(stb.l2_fetched >= N + 5);    /* N, x's 4 layers, the one on the live master */
	assert_int_equal(stb.l2_rejected, 4);    /* garbage, the wrong shape: two lookups each */
	assert_true(stb.l2_fetch_errors >= 3);   /* the dead master's, once per lookup */
	assert_int_equal(stb.l2_written, 0);     /* what it fetched is not written back */
	lbd_cluster_free(c);
	lb_close(ca);
	lb_close(cb);
	int st;
	kill(a, SIGTERM);
	kill(b, SIGTERM);
	assert_int_equal(waitpid(a, &st, 0), a);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	assert_int_equal(waitpid(b, &st, 0), b);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

int main(void)
{
	const struct CMUnitTest plain[] = {
		cmocka_unit_test(test_slots_are_the_specifications),
		cmocka_unit_test(test_seed_lists),
	};
	const struct CMUnitTest real[] = {
		cmocka_unit_test(test_keys_spread_over_the_masters),
		cmocka_unit_test(test_moved_and_ask_are_followed),
		cmocka_unit_test(test_tier_writes_behind_and_reads_through),
		cmocka_unit_test(test_killed_master_fails_its_slots_only),
		cmocka_unit_test(test_two_hosts_share_through_the_tier),
	};
	int rc = cmocka_run_group_tests(plain, NULL, NULL);
	return rc ? rc : cmocka_run_group_tests(real, cluster_up, cluster_down);
}
