/*
 * layerbank-worker serve --redis, the plain peer, against a Redis server of the test's own on
 * loopback: an exact repeat skips the forward pass with the same NLL and predictions; a value
 * under the input's key that fails any check (its length, each header field, its payload's
 * checksum) is never used but counted as refused, and the worker's own SET replaces it; bad
 * addresses are refused in one line, an absent server is a warning. SKIP (77) without
 * Debian's redis-server and redis-cli (util/redis_proc.h starts the server).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "layerbank/layerbank.h"
#include "redis_cache.h"
#include "redis_proc.h"
#include "testutil.h"

#define MODEL LB_DATA_DIR "/stories260K.bin"
#define TOK LB_DATA_DIR "/tok512.bin"
#define TEXT "Once upon a time there was a cat who liked the sun."
#define LAYERS 5

static struct {
	char dir[200];
	struct lbu_redis r;
	char addr[32];
	redisContext *c;
} rs;

static char out[1 << 16];

static int server_up(void **state)
{
	(void)state;
	char err[512];
	lbt_mkdtemp(rs.dir, sizeof(rs.dir));
	if (lbu_redis_start(&rs.r, rs.dir, 1, false, 0, err, sizeof(err)) < 0)
		fail_msg("%s", err);
	snprintf(rs.addr, sizeof(rs.addr), "127.0.0.1:%d", rs.r.port[0]);
	struct timeval tv = { 2, 0 };
	rs.c = redisConnectWithTimeout("127.0.0.1", rs.r.port[0], tv);
	assert_non_null(rs.c);
	assert_int_equal(rs.c->err, 0);
	return 0;
}

static int server_down(void **state)
{
	(void)state;
	if (rs.c)
		redisFree(rs.c);
	rs.c = NULL;
	lbu_redis_stop(&rs.r);
	lbu_rmtree(rs.dir);
	return 0;
}

/* A command on the test's own connection, whose reply must be of type want. */
static redisReply *cmd(int want, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	redisReply *r = redisvCommand(rs.c, fmt, ap);
	va_end(ap);
	assert_non_null(r);
	if (r->type != want)
		fail_msg("reply of type %d (%s), want %d", r->type,
			 r->type == REDIS_REPLY_ERROR ? r->str : "", want);
	return r;
}

/* serve --redis rs.addr of the requests "1<TAB>TEXT" .. "n<TAB>TEXT" (one process), what it
 * printed into out. @return its exit status. */
static int serve_repeats(int n)
{
	char cmdline[1024], in[512] = "";
	for (int i = 1; i <= n; i++)
		snprintf(in + strlen(in), sizeof(in) - strlen(in), "%d\\t%s\\n", i, TEXT);
	snprintf(cmdline, sizeof(cmdline), "printf '%s' | %s serve --model %s --tokenizer %s "
		 "--redis %s", in, LB_WORKER_PATH, MODEL, TOK, rs.addr);
	const char *argv[] = { "/bin/sh", "-c", cmdline, NULL };
	int st = lbt_run(argv, out, sizeof(out));
	assert_true(WIFEXITED(st));
	return WEXITSTATUS(st);
}

struct answer {
	int hit, computed, inserted;
	char nll[64];
	char top1[4096];  /* top1=... */
};

/* Request id's answer in out. */
static struct answer answer_of(int id)
{
	char head[32];
	struct answer a;
	snprintf(head, sizeof(head), "\n%d ok ", id);
	const char *l = strstr(out, head);
	if (!l)
		fail_msg("no answer to %d in:\n%s", id, out);
	assert_int_equal(sscanf(l, " %*d ok tokens=%*d nll=%63s hit=%d hamming=%*u computed=%d "
				"inserted=%d", a.nll, &a.hit, &a.computed, &a.inserted), 4);
	const char *t = strstr(l, "top1=");
	assert_non_null(t);
	size_t n = strcspn(t, "\n");
	assert_true(n < sizeof(a.top1));
	memcpy(a.top1, t, n);
	a.top1[n] = '\0';
	return a;
}

static void assert_same_top1(const struct answer *a, const struct answer *b)
{
	assert_string_equal(a->top1, b->top1);
}

/* The worker's counters at its end. */
static void assert_stats(unsigned hits, unsigned misses, unsigned refused, unsigned stored)
{
	unsigned long long h, m, r, s, e;
	const char *l = strstr(out, "redis hits=");
	assert_non_null(l);
	assert_int_equal(sscanf(l, "redis hits=%llu misses=%llu refused=%llu stored=%llu "
				"errors=%llu", &h, &m, &r, &s, &e), 5);
	if (h != hits || m != misses || r != refused || s != stored || e != 0)
		fail_msg("redis hits=%llu misses=%llu refused=%llu stored=%llu errors=%llu, want "
			 "%u %u %u %u 0", h, m, r, s, e, hits, misses, refused, stored);
}

/* The one key the server holds, into key (n bytes). */
static void only_key(char *key, size_t n)
{
	redisReply *r = cmd(REDIS_REPLY_ARRAY, "KEYS *");
	assert_int_equal(r->elements, 1);
	snprintf(key, n, "%s", r->element[0]->str);
	freeReplyObject(r);
}

/* An exact repeat, and a process after it: the deepest layer's output taken whole from the
 * server (nothing computed), the same NLL and predictions as the run that computed it. */
static void test_repeat_hits(void **state)
{
	(void)state;
	freeReplyObject(cmd(REDIS_REPLY_STATUS, "FLUSHALL"));
	assert_int_equal(serve_repeats(2), 0);
	assert_non_null(strstr(out, "ready model=stories260K.bin layers=5 hidden=64 cache=redis"));
	struct answer a = answer_of(1), b = answer_of(2);
	assert_int_equal(a.hit, -1);
	assert_int_equal(a.computed, LAYERS);
	assert_int_equal(a.inserted, 1);
	assert_int_equal(b.hit, LAYERS - 1);
	assert_int_equal(b.computed, 0);
	assert_int_equal(b.inserted, 0);
	assert_string_equal(a.nll, b.nll);
	assert_same_top1(&a, &b);
	assert_stats(1, 1, 0, 1);
	/* the key names the model and the input's length; its value is the header and the
	 * last layer's [tokens][64] floats */
	char key[256];
	only_key(key, sizeof(key));
	assert_non_null(strstr(key, "lbw1:stories260K.bin@"));
	redisReply *v = cmd(REDIS_REPLY_STRING, "GET %s", key);
	int tokens;
	assert_int_equal(sscanf(strstr(out, "\n1 ok "), " 1 ok tokens=%d", &tokens), 1);
	assert_int_equal(v->len, sizeof(struct lbw_redis_hdr) + (size_t)tokens * 64 * sizeof(float));
	freeReplyObject(v);
	/* another process finds it too */
	assert_int_equal(serve_repeats(1), 0);
	struct answer c = answer_of(1);
	assert_int_equal(c.hit, LAYERS - 1);
	assert_string_equal(c.nll, a.nll);
	assert_stats(1, 0, 0, 0);
}

/* How a case spoils the good value v (len bytes, a header then its payload); *len may change. */
enum spoil { CUT, LONGER, EMPTY, MAGIC, VERSION, MODEL_HASH, EXACT, SEQ_LEN, HIDDEN, LAYER, DTYPE,
	     CHECKSUM, PAYLOAD_BIT, ALL_GARBAGE };

static void spoil(enum spoil how, char *v, size_t *len)
{
	struct lbw_redis_hdr *h = (struct lbw_redis_hdr *)(void *)v;
	switch (how) {
	case CUT: *len -= 1; break;
	case LONGER: v[(*len)++] = 0; break;
	case EMPTY: *len = 0; break;
	case MAGIC: h->magic ^= 1; break;
	case VERSION: h->version++; break;
	case MODEL_HASH: h->model ^= 1ull << 40; break;
	case EXACT: h->exact[1] ^= 1; break;
	case SEQ_LEN: h->seq_len--; break;
	case HIDDEN: h->hidden = 32; break;
	case LAYER: h->layer--; break;
	case DTYPE: h->dtype = LB_DTYPE_F16; break;
	case CHECKSUM: h->checksum ^= 1; break;
	case PAYLOAD_BIT: v[*len - 3] ^= 0x10; break;
	case ALL_GARBAGE:
		for (size_t i = 0; i < *len; i++)
			v[i] = (char)(i * 131 + 7);
		break;
	}
}

/*
 * A value under the input's key that fails a check is a miss: never used (the request computes
 * every layer, with the NLL of a plain run), counted as refused, and replaced by the worker's
 * SET, which the next request then hits.
 */
static void test_garbage_is_never_used(void **state)
{
	(void)state;
	static const struct {
		enum spoil how;
		const char *name;
	} cases[] = {
		{ CUT, "one byte short" }, { LONGER, "one byte long" }, { EMPTY, "empty" },
		{ MAGIC, "magic" }, { VERSION, "version" }, { MODEL_HASH, "another model" },
		{ EXACT, "another input's hash" }, { SEQ_LEN, "seq_len" }, { HIDDEN, "hidden" },
		{ LAYER, "another layer" }, { DTYPE, "dtype" }, { CHECKSUM, "checksum field" },
		{ PAYLOAD_BIT, "a flipped payload bit" }, { ALL_GARBAGE, "garbage of the length" },
	};
	freeReplyObject(cmd(REDIS_REPLY_STATUS, "FLUSHALL"));
	assert_int_equal(serve_repeats(1), 0);
	struct answer plain = answer_of(1);
	char key[256], *good, *v;
	only_key(key, sizeof(key));
	redisReply *g = cmd(REDIS_REPLY_STRING, "GET %s", key);
	size_t good_len = g->len;
	good = malloc(good_len + 1);
	v = malloc(good_len + 1);
	assert_non_null(good);
	assert_non_null(v);
	memcpy(good, g->str, good_len);
	freeReplyObject(g);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t len = good_len;
		memcpy(v, good, good_len);
		spoil(cases[i].how, v, &len);
		freeReplyObject(cmd(REDIS_REPLY_STATUS, "SET %s %b", key, v, len));
		assert_int_equal(serve_repeats(2), 0);
		struct answer a = answer_of(1), b = answer_of(2);
		if (a.hit != -1 || a.computed != LAYERS || strcmp(a.nll, plain.nll))
			fail_msg("%s: hit=%d computed=%d nll=%s, want a miss of nll %s", cases[i].name,
				 a.hit, a.computed, a.nll, plain.nll);
		assert_same_top1(&a, &plain);
		assert_int_equal(b.hit, LAYERS - 1);
		assert_string_equal(b.nll, plain.nll);
		assert_stats(1, 0, 1, 1);
		/* the worker's SET put the good bytes back */
		redisReply *r = cmd(REDIS_REPLY_STRING, "GET %s", key);
		assert_int_equal(r->len, good_len);
		assert_memory_equal(r->str, good, good_len);
		freeReplyObject(r);
	}
	free(good);
	free(v);
}

/* --redis: a bad address is one line and status 2; with --cache or --private-cache too, the
 * same; a server that does not answer, a warning and a run without cache. */
static void test_bad_addresses(void **state)
{
	(void)state;
	static const char *const bad[] = { "localhost", ":6379", "127.0.0.1:", "127.0.0.1:0",
					   "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:63x",
					   "::1:6379", "[::1", "[]:6379", "a b:6379" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		const char *argv[] = { LB_WORKER_PATH, "serve", "--model", MODEL, "--tokenizer", TOK,
				       "--redis", bad[i], NULL };
		int st = lbt_run(argv, out, sizeof(out));
		char want[128];
		snprintf(want, sizeof(want), "bad --redis '%s' (HOST:PORT", bad[i]);
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 2 || !strstr(out, want))
			fail_msg("--redis %s: status %d, said '%s'", bad[i], WEXITSTATUS(st), out);
	}
	const char *both[] = { LB_WORKER_PATH, "serve", "--model", MODEL, "--tokenizer", TOK,
			       "--redis", rs.addr, "--private-cache", "8M", NULL };
	int st = lbt_run(both, out, sizeof(out));
	assert_int_equal(WEXITSTATUS(st), 2);
	assert_non_null(strstr(out, "--cache, --private-cache and --redis exclude each other"));
	const char *tau[] = { LB_WORKER_PATH, "serve", "--model", MODEL, "--tokenizer", TOK,
			      "--redis", rs.addr, "--tau", "0.9", NULL };
	st = lbt_run(tau, out, sizeof(out));
	assert_int_equal(WEXITSTATUS(st), 2);
	assert_non_null(strstr(out, "need --cache or --private-cache"));
	const char *gen[] = { LB_WORKER_PATH, "generate", "--model", MODEL, "--tokenizer", TOK,
			      "--redis", rs.addr, NULL };
	st = lbt_run(gen, out, sizeof(out));
	assert_int_equal(WEXITSTATUS(st), 2);
	assert_non_null(strstr(out, "unknown option '--redis'"));
	const char *away = "127.0.0.1:1"; /* tcpmux: nothing listens there */
	const char *absent[] = { "/bin/sh", "-c", NULL, NULL };
	char cmdline[1024];
	snprintf(cmdline, sizeof(cmdline), "printf '1\\t%s\\n' | %s serve --model %s --tokenizer %s "
		 "--redis %s", TEXT, LB_WORKER_PATH, MODEL, TOK, away);
	absent[2] = cmdline;
	st = lbt_run(absent, out, sizeof(out));
	assert_int_equal(WEXITSTATUS(st), 0);
	assert_non_null(strstr(out, "warning: cannot reach Redis at"));
	assert_non_null(strstr(out, "running without cache"));
	assert_non_null(strstr(out, "cache=none"));
	assert_int_equal(answer_of(1).hit, -1);
}

int main(void)
{
	if (!lbu_redis_available())
		LBT_SKIP("%s and %s are needed (Debian: redis-server, redis-tools; scripts/test "
			 "installs them)", LBU_REDIS_SERVER, LBU_REDIS_CLI);
	if (access(MODEL, R_OK) || access(TOK, R_OK))
		LBT_SKIP("the shipped data is not at %s", LB_DATA_DIR);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_repeat_hits),
		cmocka_unit_test(test_garbage_is_never_used),
		cmocka_unit_test(test_bad_addresses),
	};
	return cmocka_run_group_tests(tests, server_up, server_down);
}
