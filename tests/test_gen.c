/*
 * Generation with exact prefix reuse on stories260K's real weights: for many prompts and prefix
 * lengths (on a block edge and not), prefixes written by a prefill or by decode steps, on the
 * kernels (each tier) and on the plain-C reference, the tokens and the logits with a cache are
 * those without it, bit for bit. Through the CLI and a real layerbankd: the same text, the cache
 * line, and a run whose daemon is killed half-way that still ends with the same text.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cache.h"
#include "gen.h"
#include "inproc.h"
#include "lbp.h" /* struct lbp_stats_reply */
#include "kernels.h"
#include "model_llama.h"
#include "scorer.h"
#include "testutil.h"
#include "tokenizer.h"
#include "serve.h"
#include "workload.h"

#define MODEL LB_DATA_DIR "/stories260K.bin"
#define TOK LB_DATA_DIR "/tok512.bin"
#define TEXT LB_DATA_DIR "/tinystories_val.txt"
#define MAX_TOK 512

struct fix {
	struct lbw_scorer sc;
	struct lbw_tokenizer t;
	struct lbw_paragraphs p;
	struct lbw_cache plain, bank;
};

static int setup(void **state)
{
	static struct fix f;
	char err[256];
	if (lbw_scorer_open_llama(&f.sc, MODEL, err, sizeof(err)) < 0 ||
	    lbw_tokenizer_load(&f.t, TOK, 512, err, sizeof(err)) < 0 ||
	    lbw_paragraphs_load(TEXT, 100, 600, &f.p, err, sizeof(err)) < 0)
		LBT_SKIP("stories260K and its data are needed (%s)", err);
	struct lbw_cache_opts o = { .private_bytes = 64u << 20 };
	memset(&f.plain, 0, sizeof(f.plain));
	if (lbw_cache_open(&f.bank, &o, &f.sc, "test_gen") < 0 || !f.bank.c)
		return -1;
	*state = &f;
	return 0;
}

static int teardown(void **state)
{
	struct fix *f = *state;
	lbw_cache_close(&f->bank);
	lbw_paragraphs_free(&f->p);
	lbw_tokenizer_free(&f->t);
	lbw_scorer_close(&f->sc);
	return 0;
}

/* What a run gave: its tokens and every position's logits it sampled from. */
struct run {
	int32_t out[MAX_TOK];
	int got;
	float logits[64][512];
	int n_logits;
	struct lbw_gen_result r;
};

static int32_t keep_logits(void *ctx, const float *logits)
{
	struct run *x = ctx;
	if (x->n_logits < 64)
		memcpy(x->logits[x->n_logits++], logits, sizeof(x->logits[0]));
	return lbw_llama_argmax(logits, 512);
}

static void gen(struct fix *f, struct lbw_cache *wc, const int32_t *prompt, int n, int max_new,
		struct run *x)
{
	memset(x, 0, sizeof(*x));
	x->got = lbw_generate(&f->sc, wc, prompt, n, max_new, keep_logits, x, x->out, &x->r);
	assert_true(x->got >= 0); /* 0: BOS came first, the stop */
	assert_int_equal(x->r.cache_error, 0);
}

/* With the bank as without it: the same tokens, the same logits to the bit. @return the
 * positions reused. */
static int same_with_bank(struct fix *f, const int32_t *prompt, int n, int max_new)
{
	static struct run a, b;
	gen(f, &f->plain, prompt, n, max_new, &a);
	gen(f, &f->bank, prompt, n, max_new, &b);
	assert_int_equal(a.got, b.got);
	assert_memory_equal(a.out, b.out, (size_t)a.got * sizeof(int32_t));
	assert_int_equal(a.n_logits, b.n_logits);
	assert_memory_equal(a.logits, b.logits, (size_t)a.n_logits * sizeof(a.logits[0]));
	assert_int_equal(a.r.reused_tokens, 0);
	assert_int_equal(b.r.reused_tokens + b.r.computed_tokens, n);
	return b.r.reused_tokens;
}

/* Tokens of paragraph i, BOS first, at most cap. */
static int para_tokens(struct fix *f, uint32_t i, int32_t *toks, int cap)
{
	int32_t tmp[2048];
	int n = lbw_tokenizer_encode(&f->t, f->p.p[i % f->p.n], 1, 0, tmp);
	assert_true(n > 1);
	n = n < cap ? n : cap;
	memcpy(toks, tmp, (size_t)n * sizeof(int32_t));
	return n;
}

/*
 * Prompts that share a prefix of L tokens with one generated before (L on a block edge and
 * not, short and long), then go on with another paragraph: reused, and nothing changes.
 */
static void check_prefixes(struct fix *f, uint32_t first, uint32_t count)
{
	const int lens[] = { 1, 15, 16, 17, 31, 32, 40, 47, 64, 99 };
	int32_t a[MAX_TOK], b[MAX_TOK];
	int reused = 0;

	for (uint32_t i = first; i < first + count; i++) {
		int na = para_tokens(f, i, a, 200);
		same_with_bank(f, a, na, 24);
		int L = lens[i % (sizeof(lens) / sizeof(lens[0]))];
		L = L < na ? L : na;
		memcpy(b, a, (size_t)L * sizeof(int32_t));
		int nb = L + para_tokens(f, i + 1000, b + L, 200) - 1; /* no second BOS */
		memmove(b + L, b + L + 1, (size_t)(nb - L) * sizeof(int32_t));
		int got = same_with_bank(f, b, nb, 24);
		/* more may be cached: stories often open alike ("Once upon a time, there was") */
		if (L >= 16)
			assert_true(got >= (L / 16) * 16 - (L == nb ? 1 : 0));
		reused += got;
	}
	assert_true(reused > 0);
}

static void test_prefixes_on_the_kernels(void **state)
{
	check_prefixes(*state, 0, 30);
}

/* Every tier the CPU has, and the plain-C reference: the same within each. */
static void test_prefixes_on_every_path(void **state)
{
	struct fix *f = *state;
	lbk_force_isa(LBK_ISA_AVX2);
	check_prefixes(f, 40, 6);
	lbk_force_isa(LBK_ISA_SCALAR);
	check_prefixes(f, 50, 4);
	lbk_force_isa(LBK_ISA_AVX512);
	lbw_llama_set_reference(f->sc.llama, 1);
	check_prefixes(f, 60, 4);
	lbw_llama_set_reference(f->sc.llama, 0);
}

/* A prompt whose prefix was written by decode steps (a generation's own blocks): the next turn
 * of a conversation finds it, and gets what a plain run gets. */
static void check_decoded(struct fix *f, uint32_t first_para, uint32_t count)
{
	static struct run first, plain, cached;
	int32_t p[MAX_TOK];

	for (uint32_t i = first_para; i < first_para + count; i++) {
		int n = para_tokens(f, i, p, 60);
		gen(f, &f->bank, p, n, 80, &first);
		/* the next turn: the prompt, the answer fed back, a new paragraph */
		int m = n;
		memcpy(p + m, first.out, (size_t)(first.got - 1) * sizeof(int32_t));
		m += first.got - 1;
		int extra = para_tokens(f, i + 2000, p + m, 60);
		memmove(p + m, p + m + 1, (size_t)(extra - 1) * sizeof(int32_t));
		m += extra - 1;
		gen(f, &f->plain, p, m, 24, &plain);
		gen(f, &f->bank, p, m, 24, &cached);
		assert_true(cached.r.reused_tokens >= ((n + first.got - 1) / 16) * 16 - 16);
		assert_true(cached.r.reused_tokens > n); /* past the prompt: decoded blocks */
		assert_int_equal(plain.got, cached.got);
		assert_memory_equal(plain.out, cached.out, (size_t)plain.got * sizeof(int32_t));
		assert_memory_equal(plain.logits, cached.logits,
				    (size_t)plain.n_logits * sizeof(plain.logits[0]));
	}
}

static void test_prefix_written_by_decoding(void **state)
{
	check_decoded(*state, 70, 6);
}

/*
 * The uptrained FusedKV checkpoints (models/, tools/train_fusedkv.py): Lite, whose
 * reconstruction layers read the storage layers' K and V through remapped pointers, and FusedKV,
 * whose attention kernel fuses them. Their blocks hold the storage layers alone, and generation
 * with the bank is generation without it, bit for bit: shared prefixes, and the next turn over
 * decoded blocks. Their hidden states are not cached, so --gen-recompute is refused.
 */
static void test_fusedkv_checkpoints(void **state)
{
	struct fix *f = *state;
	const char *names[] = { "lite", "fused" };
	static struct fix g;

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		char path[512], err[256];
		snprintf(path, sizeof(path), LB_SOURCE_DIR "/models/stories260K-%s.bin", names[i]);
		memset(&g, 0, sizeof(g));
		g.t = f->t; /* borrowed: not freed here */
		g.p = f->p;
		if (lbw_scorer_open_llama(&g.sc, path, err, sizeof(err)) < 0)
			fail_msg("%s: %s", path, err);
		const struct lbw_llama_config *c = &g.sc.llama->cfg;
		assert_true(c->kv_mode != LBW_KV_PLAIN && c->kv_layers < c->n_layers);
		struct lbw_cache_opts o = { .private_bytes = 64u << 20 };
		assert_int_equal(lbw_cache_open(&g.bank, &o, &g.sc, "test_gen"), 0);
		assert_true(g.bank.blocks_only && g.bank.c && !lbw_cache_states(&g.bank));

		check_prefixes(&g, 80, 8);
		check_decoded(&g, 90, 3);
		struct lbp_stats_reply st;
		lbip_bank_stats(g.bank.bank, &st);
		uint64_t stored = (uint64_t)c->kv_layers * 2 * LBW_LLAMA_BLOCK * c->kv_dim * 4;
		assert_true(st.blocks > 0 && st.entries == 0);
		if (st.bytes_used / st.blocks < stored ||
		    st.bytes_used / st.blocks >= stored * c->n_layers / c->kv_layers)
			fail_msg("%s: %llu bytes a block, its %d storage layers' K and V are %llu",
				 names[i], (unsigned long long)(st.bytes_used / st.blocks),
				 (int)c->kv_layers, (unsigned long long)stored);
		lbw_cache_close(&g.bank);

		struct lbw_cache near;
		struct lbw_cache_opts on = { .private_bytes = 1u << 20, .gen_recompute = "on" };
		assert_int_equal(lbw_cache_open(&near, &on, &g.sc, "test_gen"), -1);
		lbw_scorer_close(&g.sc);
	}
}

/* A near prompt of paragraph i: one token changed a third of the way in, and one added at
 * three quarters (its exact prefix covers a third: the near path's case). */
static int near_prompt(struct fix *f, uint32_t i, int32_t *a, int *na, int32_t *b)
{
	*na = para_tokens(f, i, a, 120);
	int n = *na, at = n / 3, add = 3 * n / 4;
	memcpy(b, a, (size_t)n * sizeof(int32_t));
	b[at] = a[at] == 100 ? 101 : 100;
	memmove(b + add + 1, b + add, (size_t)(n - add) * sizeof(int32_t));
	b[add] = 200;
	return n + 1;
}

/* A generation of n tokens after prompt on wc, forced onto plain's continuation `want`. */
static void forced_run(struct fix *f, struct lbw_cache *wc, const int32_t *prompt, int n,
		       const struct run *want, struct lbw_forced *x, struct lbw_gen_result *r)
{
	int32_t out[MAX_TOK];
	*x = (struct lbw_forced){ .want = want->out, .n = want->got, .vocab = 512 };
	int got = lbw_generate(&f->sc, wc, prompt, n, want->got, lbw_forced_next, x, out, r);
	assert_int_equal(r->cache_error, 0);
	assert_true(got >= 1);
}

/*
 * --gen-recompute: a prompt near a cached one (an edit before its half: the exact prefix
 * covers a third) is prefilled by partial reuse. With every position recomputed (1) the text
 * and logits are the plain ones, bit for bit, and its blocks go to the bank; with the default
 * share (LBW_GEN_RECOMPUTE_DEFAULT) a third of the prefill is reused, it says how far from exact
 * it is, no block of it is cached, and the continuation the plain run generates stays the
 * likely one: top-1 and NLL of the forced continuation, printed and held to the fidelity
 * budget.
 */
static void test_near_prompts(void **state)
{
	struct fix *f = *state;
	static struct run plain, exact, seed;
	struct lbw_cache one, part;
	char r1[] = "1", rd[16];
	snprintf(rd, sizeof(rd), "%g", LBW_GEN_RECOMPUTE_DEFAULT);
	struct lbw_cache_opts o1 = { .private_bytes = 64u << 20, .gen_recompute = r1 };
	struct lbw_cache_opts od = { .private_bytes = 64u << 20, .gen_recompute = rd };
	assert_int_equal(lbw_cache_open(&one, &o1, &f->sc, "test_gen"), 0);
	assert_int_equal(lbw_cache_open(&part, &od, &f->sc, "test_gen"), 0);
	int32_t a[MAX_TOK], b[MAX_TOK];
	double nll_plain = 0, nll_near = 0, reused = 0;
	int agree = 0, total = 0, prompts = 0;

	for (uint32_t i = 300; i < 340; i++) {
		int na, nb = near_prompt(f, i, a, &na, b);
		if (na < 24)
			continue;
		prompts++;
		gen(f, &one, a, na, 8, &seed); /* the near prompt's states, cached by the near path */
		assert_int_equal(seed.r.near_aligned, 0);
		gen(f, &part, a, na, 8, &seed);
		gen(f, &f->plain, b, nb, 32, &plain);
		gen(f, &one, b, nb, 32, &exact);
		assert_true(exact.r.near_aligned >= (uint32_t)na - 2);
		assert_int_equal(exact.r.near_approx, 0);
		assert_int_equal(exact.got, plain.got);
		assert_memory_equal(exact.out, plain.out, (size_t)plain.got * sizeof(int32_t));
		assert_memory_equal(exact.logits, plain.logits,
				    (size_t)plain.n_logits * sizeof(plain.logits[0]));
		assert_true(exact.r.blocks_inserted > 0);

		struct lbw_forced fp, fn;
		struct lbw_gen_result rp, rn;
		forced_run(f, &f->plain, b, nb, &plain, &fp, &rp);
		forced_run(f, &part, b, nb, &plain, &fn, &rn);
		assert_true(rn.near_aligned >= (uint32_t)na - 2);
		assert_true(rn.near_approx >= 1);
		assert_true(rn.near_reused > 0.2f);
		assert_int_equal(rn.blocks_inserted, 0);
		assert_int_equal(fp.agree, fp.fed); /* the plain run forced onto its own text */
		nll_plain += fp.nll;
		nll_near += fn.nll;
		agree += fn.agree;
		total += fn.fed;
		reused += rn.near_reused;
	}
	double dn = (nll_near - nll_plain) / nll_plain, top1 = (double)agree / total;
	printf("near prompts: %d, %d continuation tokens; reused %.1f%% of the prefill; NLL change "
	       "%+.3f%%, top-1 agreement %.2f%% (recompute %s)\n", prompts, total,
	       100 * reused / prompts, 100 * dn, 100 * top1, rd);
	assert_true(prompts >= 20);
	/* the fidelity budget of the e2e stream (bench/README.md): NLL within 0.5%, top-1 99% */
	assert_true(fabs(dn) <= 0.005);
	assert_true(top1 >= 0.99);
	lbw_cache_close(&one);
	lbw_cache_close(&part);
}

/* lbw_serve's answers to requests (one string, lines), malloc'd. */
static char *serve(struct fix *f, struct lbw_cache *wc, const char *requests)
{
	char *out = NULL;
	size_t len = 0;
	FILE *in = fmemopen((void *)requests, strlen(requests), "r");
	FILE *o = open_memstream(&out, &len);
	assert_non_null(in);
	assert_non_null(o);
	assert_int_equal(lbw_serve(&f->sc, &f->t, wc, 512, "test", in, o), 0);
	fclose(in);
	fclose(o);
	char *copy = strdup(out); /* gcc's -Wdangling-pointer takes the stream's buffer for ours */
	free(out);
	assert_non_null(copy);
	return copy;
}

/*
 * serve's generation requests: a text prompt, then the same as token ids with a new end, whose
 * prompt blocks come from the first; the answers' fields and tokens agree with lbw_generate's
 * run without a bank; bad requests are answered, not fatal.
 */
static void test_serve_gen(void **state)
{
	struct fix *f = *state;
	static struct run plain;
	int32_t p[MAX_TOK];
	char req[8192], ids[8];
	int n = lbw_tokenizer_encode(&f->t, f->p.p[11], 1, 0, p);
	assert_true(n > 40);
	/* "@ids": the text's tokens but the last, another one at its end */
	int k = snprintf(req, sizeof(req), "1\tgen:12\t%s\n2\tgen:12\t@", f->p.p[11]);
	p[n - 1] = 65;
	for (int i = 0; i < n; i++)
		k += snprintf(req + k, sizeof(req) - (size_t)k, i ? ",%d" : "%d", (int)p[i]);
	snprintf(req + k, sizeof(req) - (size_t)k,
		 "\n3\tgen:0\tx\n4\tgen:5\t@1,99999\n5\tgen:5\t@\n");
	char *out = serve(f, &f->bank, req);
	int prompt, reused, computed, used;
	unsigned inserted;
	char cache[16];
	const char *l2 = strstr(out, "\n2 ok gen ");
	assert_non_null(l2);
	assert_int_equal(sscanf(l2 + 1, "2 ok gen prompt=%d reused=%d computed=%d inserted=%u "
				"ttft_us=%*f us=%*f cache=%15s near=0.0000 approx=0 out=%n",
				&prompt, &reused, &computed, &inserted, cache, &used), 5);
	assert_int_equal(prompt, n);
	assert_int_equal(reused, ((n - 1) / 16) * 16);
	assert_int_equal(computed, n - reused);
	assert_string_equal(cache, "ok");
	gen(f, &f->plain, p, n, 12, &plain);
	snprintf(ids, sizeof(ids), "%d", (int)plain.out[0]);
	assert_memory_equal(l2 + 1 + used, ids, strlen(ids));
	assert_non_null(strstr(out, "\n3 err malformed gen"));
	assert_non_null(strstr(out, "\n4 err"));
	assert_non_null(strstr(out, "\n5 err bad token ids"));
	free(out);
	(void)inserted;
}

/* Run the worker with args (NULL-terminated), stdout and stderr to files in dir. @return pid. */
static pid_t worker_start(struct lbt_env *env, const char *const *args, const char *dir)
{
	char out[300], err[300];
	snprintf(out, sizeof(out), "%s/out", dir);
	snprintf(err, sizeof(err), "%s/err", dir);
	pid_t pid = lbt_fork(env);
	assert_true(pid >= 0);
	if (pid == 0) {
		if (!freopen(out, "w", stdout) || !freopen(err, "w", stderr))
			_exit(126);
		execv(LB_WORKER_PATH, (char *const *)args);
		_exit(127);
	}
	return pid;
}

static long file_size(const char *dir, const char *name)
{
	char path[300];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *fp = fopen(path, "r");
	if (!fp)
		return -1;
	fseek(fp, 0, SEEK_END);
	long n = ftell(fp);
	fclose(fp);
	return n;
}

/* The file dir/name, whole, malloc'd (the caller frees it). */
static char *slurp(const char *dir, const char *name)
{
	char path[300];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *fp = fopen(path, "r");
	assert_non_null(fp);
	char *b = calloc(1, 65536);
	assert_non_null(b);
	size_t n = fread(b, 1, 65535, fp);
	b[n] = '\0';
	fclose(fp);
	return b;
}

/*
 * Through the CLI and a real layerbankd, on llama-110m (slow enough to be caught half-way): a
 * first run fills the bank; a second reuses the prompt's blocks and is killed out from under:
 * the daemon dies while it decodes. It ends all the same, with the first run's text, one line
 * saying the cache went, and exit 0.
 */
static void test_cli_daemon_killed_mid_run(void **state)
{
	struct fix *f = *state;
	struct lbt_env env;
	char steps[16];
	int32_t tmp[2048];

	lbt_env_make(&env);
	assert_true(lbt_daemon_start(&env, LBT_ARGS("--arena-size", "64M", "--hugepages", "off")) > 0);
	const char *prompt = f->p.p[7];
	int n = lbw_tokenizer_encode(&f->t, prompt, 1, 0, tmp);
	snprintf(steps, sizeof(steps), "%d", n + 40);
	const char *args[] = { LB_WORKER_PATH, "generate", "--model", "llama-110m", "--tokenizer",
			       TOK, "--prompt", prompt, "--steps", steps, "--cache", env.sock, NULL };
	char d1[256], d2[256];
	snprintf(d1, sizeof(d1), "%s/run1", env.dir);
	snprintf(d2, sizeof(d2), "%s/run2", env.dir);
	assert_int_equal(mkdir(d1, 0700), 0);
	assert_int_equal(mkdir(d2, 0700), 0);
	assert_int_equal(lbt_reap(&env, worker_start(&env, args, d1)), 0);
	char *err1 = slurp(d1, "err"), *out1 = slurp(d1, "out");
	assert_non_null(strstr(err1, "reused_tokens=0 "));

	pid_t w = worker_start(&env, args, d2);
	/* the prompt is printed before its prefill; a few generated bytes mean decoding */
	long printed = 0, target = (long)strlen(prompt) + 4;
	for (int i = 0; i < 3000 && (printed = file_size(d2, "out")) < target; i++)
		usleep(10000);
	assert_true(printed >= target);
	assert_true(lbt_daemon_kill(&env));
	assert_int_equal(lbt_reap(&env, w), 0);
	char *err = slurp(d2, "err"), *out = slurp(d2, "out");
	assert_string_equal(out, out1);
	assert_null(strstr(err, "reused_tokens=0 "));
	assert_non_null(strstr(err, "reused_tokens="));
	assert_non_null(strstr(err, "prefix cache lost mid-run"));
	free(err1);
	free(out1);
	free(err);
	free(out);
	lbt_env_remove(&env);
}

/* The cache= fields of a generate run with --cache, LBK_ISA=isa, in dir: its reused tokens. */
static int tier_run(struct lbt_env *env, const char *isa, const char *prompt, const char *dir)
{
	const char *args[] = { LB_WORKER_PATH, "generate", "--model", MODEL, "--tokenizer", TOK,
			       "--prompt", prompt, "--steps", "120", "--cache", env->sock, NULL };
	assert_int_equal(mkdir(dir, 0700), 0);
	assert_int_equal(setenv("LBK_ISA", isa, 1), 0);
	pid_t w = worker_start(env, args, dir);
	unsetenv("LBK_ISA");
	assert_int_equal(lbt_reap(env, w), 0);
	char *err = slurp(dir, "err");
	const char *r = strstr(err, "reused_tokens=");
	assert_non_null(r);
	int reused = atoi(r + strlen("reused_tokens="));
	free(err);
	return reused;
}

/*
 * Blocks are exact only between forwards that give the same bits: a worker on another kernel
 * tier (the tiers round differently) registers apart and never reads them. Two tiers every
 * x86-64 with AVX2 has: scalar and avx2.
 */
static void test_cli_tiers_share_no_blocks(void **state)
{
	struct fix *f = *state;
	struct lbt_env env;
	char d[3][256];

	if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
		skip();
	lbt_env_make(&env);
	assert_true(lbt_daemon_start(&env, LBT_ARGS("--arena-size", "16M", "--hugepages", "off")) > 0);
	for (int i = 0; i < 3; i++)
		snprintf(d[i], sizeof(d[i]), "%s/run%d", env.dir, i);
	assert_int_equal(tier_run(&env, "scalar", f->p.p[9], d[0]), 0);
	assert_true(tier_run(&env, "scalar", f->p.p[9], d[1]) >= 16);
	assert_int_equal(tier_run(&env, "avx2", f->p.p[9], d[2]), 0);
	lbt_env_remove(&env);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_prefixes_on_the_kernels),
		cmocka_unit_test(test_prefixes_on_every_path),
		cmocka_unit_test(test_prefix_written_by_decoding),
		cmocka_unit_test(test_fusedkv_checkpoints),
		cmocka_unit_test(test_serve_gen),
		cmocka_unit_test(test_near_prompts),
		cmocka_unit_test(test_cli_daemon_killed_mid_run),
		cmocka_unit_test(test_cli_tiers_share_no_blocks),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
