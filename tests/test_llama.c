/*
 * The llama reference path: greedy output against llama2.c's golden text, scores against an
 * independent fp64 forward pass, tokenizer round trips, hostile checkpoint and tokenizer files,
 * the generated decoders (lbw_llama_generate, llama-110m), the layerbank-worker command line, and
 * a layer for chosen positions against the whole layer (the model's and the scorer's).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kernels.h"
#include "layerbank/layerbank.h"
#include "model_llama.h"
#include "scorer.h"
#include "testutil.h"
#include "tokenizer.h"

#define MODEL LB_DATA_DIR "/stories260K.bin"
#define TOK LB_DATA_DIR "/tok512.bin"
#define GREEDY LB_DATA_DIR "/stories260K.greedy.txt"
#define VAL LB_DATA_DIR "/tinystories_val.txt"
/* Paragraphs of tinystories_val.txt scored (those of 50..300 tokens, in file order). */
#define N_PARA 32

static char worker_path[PATH_MAX];

/* Whole file as a NUL-terminated string; *len its size. Fails the test when unreadable. */
static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	assert_non_null(f);
	fseek(f, 0, SEEK_END);
	long sz = ftell(f);
	assert_true(sz >= 0);
	fseek(f, 0, SEEK_SET);
	char *buf = malloc((size_t)sz + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)sz, f), (size_t)sz);
	buf[sz] = '\0';
	fclose(f);
	if (len)
		*len = (size_t)sz;
	return buf;
}

static void spit(const char *path, const void *data, size_t len)
{
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(data, 1, len, f), len);
	assert_int_equal(fclose(f), 0);
}

/* Split text into paragraphs at blank lines; returns a NULL-terminated array of copies. */
static char **paragraphs(const char *text)
{
	size_t cap = 64, n = 0;
	char **out = malloc(cap * sizeof(char *));
	const char *p = text;
	while (*p) {
		while (*p == '\n')
			p++;
		if (!*p)
			break;
		const char *e = strstr(p, "\n\n");
		if (!e)
			e = p + strlen(p);
		size_t len = (size_t)(e - p);
		while (len && p[len - 1] == '\n')
			len--;
		if (n + 2 > cap) {
			cap *= 2;
			out = realloc(out, cap * sizeof(char *));
		}
		out[n] = strndup(p, len);
		n++;
		p = e;
	}
	out[n] = NULL;
	return out;
}

/* ---------- an independent fp64 forward pass of the same checkpoint ---------- */

struct ref {
	int dim, hid, nl, nh, nkv, vocab, seq, hs, kvd;
	int mode, ns; /* FusedKV (model_llama.h): 0 plain, 1 lite, 2 fused; storage layers */
	double *all;
	double *emb, *rms_att, *wq, *wk, *wv, *wo, *rms_ffn, *w1, *w2, *w3, *rms_final, *wcls;
	double *coef; /* fused: per reconstruction layer a, a' [kvd / 2], b, b' [kvd] */
};

static void ref_load(struct ref *r, const char *path)
{
	size_t len;
	char *raw = slurp(path, &len);
	int32_t h[7];
	memcpy(h, raw, sizeof(h));
	r->dim = h[0];
	r->hid = h[1];
	r->nl = h[2];
	r->nh = h[3];
	r->nkv = h[4];
	r->vocab = abs(h[5]);
	r->seq = h[6];
	r->hs = r->dim / r->nh;
	r->kvd = r->nkv * r->hs;
	r->mode = 0;
	r->ns = r->nl;
	if (len >= 44 && !memcmp(raw + len - 16, "LBFK", 4)) { /* read as the format says */
		uint32_t f[3];
		memcpy(f, raw + len - 12, sizeof(f));
		r->mode = (int)f[1];
		r->ns = (int)f[2];
		len -= 16;
	}
	size_t nf = (len - 28) / 4;
	r->all = malloc(nf * sizeof(double));
	assert_non_null(r->all);
	for (size_t i = 0; i < nf; i++) {
		float f;
		memcpy(&f, raw + 28 + 4 * i, 4);
		r->all[i] = f;
	}
	free(raw);
	size_t d = (size_t)r->dim, L = (size_t)r->nl, hd = (size_t)r->hid, kv = (size_t)r->kvd;
	double *p = r->all;
	r->emb = p; p += (size_t)r->vocab * d;
	r->rms_att = p; p += L * d;
	r->wq = p; p += L * d * d;
	r->wk = p; p += (size_t)r->ns * kv * d;
	r->wv = p; p += (size_t)r->ns * kv * d;
	r->wo = p; p += L * d * d;
	r->rms_ffn = p; p += L * d;
	r->w1 = p; p += L * hd * d;
	r->w2 = p; p += L * d * hd;
	r->w3 = p; p += L * hd * d;
	r->rms_final = p; p += d;
	p += (size_t)r->seq * (size_t)r->hs;
	r->wcls = h[5] > 0 ? r->emb : p;
	if (h[5] <= 0)
		p += (size_t)r->vocab * d;
	r->coef = r->mode == 2 ? p : NULL;
	if (r->mode == 2)
		p += (size_t)(r->nl - r->ns) * 3 * kv;
	assert_true(p == r->all + nf);
}

static void ref_mv(double *out, const double *w, const double *x, int rows, int cols)
{
	for (int i = 0; i < rows; i++) {
		double s = 0;
		for (int j = 0; j < cols; j++)
			s += w[(size_t)i * (size_t)cols + (size_t)j] * x[j];
		out[i] = s;
	}
}

static void ref_norm(double *out, const double *x, const double *w, int n)
{
	double ss = 0;
	for (int i = 0; i < n; i++)
		ss += x[i] * x[i];
	double sc = 1.0 / sqrt(ss / n + 1e-5);
	for (int i = 0; i < n; i++)
		out[i] = w[i] * x[i] * sc;
}

/* Summed NLL of toks[1..n-1] under the fp64 model. */
static double ref_nll(const struct ref *r, const int32_t *toks, int n)
{
	int d = r->dim, kvd = r->kvd, hs = r->hs;
	double *x = calloc((size_t)d, sizeof(double)), *xb = calloc((size_t)d, sizeof(double));
	double *q = calloc((size_t)d, sizeof(double)), *o = calloc((size_t)d, sizeof(double));
	double *h1 = calloc((size_t)r->hid, sizeof(double)), *h3 = calloc((size_t)r->hid, sizeof(double));
	double *att = calloc((size_t)n, sizeof(double)), *lg = calloc((size_t)r->vocab, sizeof(double));
	double *kc = calloc((size_t)r->nl * (size_t)n * (size_t)kvd, sizeof(double));
	double *vc = calloc((size_t)r->nl * (size_t)n * (size_t)kvd, sizeof(double));
	double total = 0;
	for (int pos = 0; pos < n; pos++) {
		memcpy(x, r->emb + (size_t)toks[pos] * (size_t)d, (size_t)d * sizeof(double));
		for (int l = 0; l < r->nl; l++) {
			double *kl = kc + (size_t)l * (size_t)n * (size_t)kvd;
			double *vl = vc + (size_t)l * (size_t)n * (size_t)kvd;
			double *k = kl + (size_t)pos * (size_t)kvd, *v = vl + (size_t)pos * (size_t)kvd;
			bool store = l < r->ns;
			ref_norm(xb, x, r->rms_att + (size_t)l * (size_t)d, d);
			ref_mv(q, r->wq + (size_t)l * (size_t)d * (size_t)d, xb, d, d);
			if (store) {
				ref_mv(k, r->wk + (size_t)l * (size_t)kvd * (size_t)d, xb, kvd, d);
				ref_mv(v, r->wv + (size_t)l * (size_t)kvd * (size_t)d, xb, kvd, d);
			} else { /* rebuilt from layers 0 and ns - 1, K after their rotation */
				size_t at = (size_t)pos * (size_t)kvd, ln = (size_t)(r->ns - 1) * (size_t)n * (size_t)kvd;
				const double *c = r->coef ? r->coef + (size_t)(l - r->ns) * 3 * (size_t)kvd : NULL;
				for (int i = 0; i < kvd; i++) {
					double k0 = kc[at + (size_t)i], kn = kc[ln + at + (size_t)i];
					double v0 = vc[at + (size_t)i], vn = vc[ln + at + (size_t)i];
					k[i] = c ? c[i / 2] * k0 + c[kvd / 2 + i / 2] * kn : kn;
					v[i] = c ? c[kvd + i] * v0 + c[2 * kvd + i] * vn : v0;
				}
			}
			/* rotate each (even, odd) pair of every head by pos * 10000^(-j/hs) */
			for (int vec = 0; vec < (store ? 2 : 1); vec++) {
				double *a = vec ? k : q;
				int len = vec ? kvd : d;
				for (int i = 0; i < len; i += 2) {
					double ang = pos * pow(10000.0, -(double)(i % hs) / hs);
					double a0 = a[i], a1 = a[i + 1];
					a[i] = a0 * cos(ang) - a1 * sin(ang);
					a[i + 1] = a0 * sin(ang) + a1 * cos(ang);
				}
			}
			for (int h = 0; h < r->nh; h++) {
				int g = h / (r->nh / r->nkv);
				double mx = -INFINITY, sum = 0;
				for (int t = 0; t <= pos; t++) {
					double s = 0;
					for (int i = 0; i < hs; i++)
						s += q[h * hs + i] * kl[(size_t)t * (size_t)kvd + (size_t)(g * hs + i)];
					att[t] = s / sqrt((double)hs);
					if (att[t] > mx)
						mx = att[t];
				}
				for (int t = 0; t <= pos; t++)
					sum += (att[t] = exp(att[t] - mx));
				for (int i = 0; i < hs; i++) {
					double acc = 0;
					for (int t = 0; t <= pos; t++)
						acc += att[t] / sum * vl[(size_t)t * (size_t)kvd + (size_t)(g * hs + i)];
					xb[h * hs + i] = acc;
				}
			}
			ref_mv(o, r->wo + (size_t)l * (size_t)d * (size_t)d, xb, d, d);
			for (int i = 0; i < d; i++)
				x[i] += o[i];
			ref_norm(xb, x, r->rms_ffn + (size_t)l * (size_t)d, d);
			ref_mv(h1, r->w1 + (size_t)l * (size_t)r->hid * (size_t)d, xb, r->hid, d);
			ref_mv(h3, r->w3 + (size_t)l * (size_t)r->hid * (size_t)d, xb, r->hid, d);
			for (int i = 0; i < r->hid; i++)
				h1[i] = h1[i] / (1.0 + exp(-h1[i])) * h3[i];
			ref_mv(o, r->w2 + (size_t)l * (size_t)d * (size_t)r->hid, h1, d, r->hid);
			for (int i = 0; i < d; i++)
				x[i] += o[i];
		}
		if (pos + 1 == n)
			break;
		ref_norm(xb, x, r->rms_final, d);
		ref_mv(lg, r->wcls, xb, r->vocab, d);
		double mx = lg[0], sum = 0;
		for (int i = 1; i < r->vocab; i++)
			if (lg[i] > mx)
				mx = lg[i];
		for (int i = 0; i < r->vocab; i++)
			sum += exp(lg[i] - mx);
		total += -(lg[toks[pos + 1]] - mx - log(sum));
	}
	free(x); free(xb); free(q); free(o); free(h1); free(h3); free(att); free(lg); free(kc); free(vc);
	return total;
}

/* ---------- helpers ---------- */

struct fixture {
	struct lbw_llama m;
	struct lbw_tokenizer t;
	struct lbw_llama big; /* llama-110m of seed 1, made by big_model on first use */
};

static int setup(void **state)
{
	struct fixture *fx = calloc(1, sizeof(*fx));
	char err[256];
	assert_non_null(fx);
	if (lbw_llama_load(&fx->m, MODEL, err, sizeof(err)) < 0) {
		fprintf(stderr, "%s\n", err);
		return -1;
	}
	if (lbw_tokenizer_load(&fx->t, TOK, fx->m.cfg.vocab_size, err, sizeof(err)) < 0) {
		fprintf(stderr, "%s\n", err);
		return -1;
	}
	*state = fx;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *fx = *state;
	lbw_tokenizer_free(&fx->t);
	lbw_llama_free(&fx->m);
	lbw_llama_free(&fx->big);
	free(fx);
	return 0;
}

/* Decode tokens (after the first) and join the pieces as raw bytes. */
static char *detok(const struct lbw_tokenizer *t, const int32_t *toks, int n)
{
	size_t cap = 16, len = 0;
	char *out = malloc(cap);
	for (int i = 1; i < n; i++) {
		const char *p = lbw_tokenizer_decode(t, toks[i - 1], toks[i]);
		assert_non_null(p);
		size_t pl = lbw_tokenizer_piece_len(t, p);
		while (len + pl + 1 > cap)
			out = realloc(out, cap *= 2);
		memcpy(out + len, p, pl);
		len += pl;
	}
	out[len] = '\0';
	return out;
}

static int run_worker(const char *const *args, char *out, size_t n)
{
	return lbt_run_args(LBT_ARGS(worker_path), args, out, n);
}

/* ---------- tests ---------- */

static void test_config_of_stories260k(void **state)
{
	struct fixture *fx = *state;
	const struct lbw_llama_config *c = &fx->m.cfg;
	assert_int_equal(c->dim, 64);
	assert_int_equal(c->hidden_dim, 172);
	assert_int_equal(c->n_layers, 5);
	assert_int_equal(c->n_heads, 8);
	assert_int_equal(c->n_kv_heads, 4);
	assert_int_equal(c->vocab_size, 512);
	assert_int_equal(c->seq_len, 512);
	assert_int_equal(c->head_size, 8);
	assert_int_equal(c->kv_dim, 32);
	assert_true(c->shared_classifier);
	assert_ptr_equal(fx->m.w.wcls, fx->m.w.token_embedding);
}

/* The library's greedy loop, as the CLI runs it, gives llama2.c's golden text. */
/* Both paths, the lbk_* kernels (the default) and the plain-C reference (the benchmark's
 * baseline), reproduce llama2.c's greedy output. */
static void greedy_matches(struct fixture *fx, int reference)
{
	struct lbw_llama_state s;
	char *want = slurp(GREEDY, NULL);
	char *got = calloc(1, 65536);
	size_t len = 0;
	lbw_llama_set_reference(&fx->m, reference);
	assert_int_equal(lbw_llama_state_init(&s, &fx->m.cfg), 0);
	int32_t tok = LBW_TOK_BOS;
	for (int32_t pos = 0; pos < 256; pos++) {
		/* one layer at a time, as a layer cache will drive it */
		lbw_llama_embed(&fx->m, &s, tok);
		for (int32_t l = 0; l < fx->m.cfg.n_layers; l++)
			lbw_llama_layer(&fx->m, &s, l, pos);
		int32_t next = lbw_llama_argmax(lbw_llama_head(&fx->m, &s), fx->m.cfg.vocab_size);
		if (next == LBW_TOK_BOS)
			break;
		const char *p = lbw_tokenizer_decode(&fx->t, tok, next);
		len += (size_t)snprintf(got + len, 65536 - len, "%s", p);
		tok = next;
	}
	got[len++] = '\n';
	lbw_llama_set_reference(&fx->m, 0);
	assert_string_equal(got, want);
	lbw_llama_state_free(&s);
	free(got);
	free(want);
}

static void test_greedy_matches_llama2c_library(void **state)
{
	greedy_matches(*state, 0);
	greedy_matches(*state, 1);
}

static void test_cli_generate_greedy_golden(void **state)
{
	(void)state;
	static char out[65536];
	char *want = slurp(GREEDY, NULL);
	const char *args[] = { "generate", "--model", MODEL, "--tokenizer", TOK, "--steps", "256",
			       "--temperature", "0", NULL };
	int st = run_worker(args, out, sizeof(out));
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	assert_string_equal(out, want);
	/* a cache that is away: one warning line, the same text, no cache line */
	const char *args2[] = { "generate", "--model", MODEL, "--tokenizer", TOK, "--cache",
				"/nonexistent.sock", NULL };
	st = run_worker(args2, out, sizeof(out));
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	const char *nl = strchr(out, '\n');
	assert_non_null(nl);
	assert_non_null(strstr(out, "unavailable"));
	assert_true(strstr(out, "unavailable") < nl);
	assert_string_equal(nl + 1, want);
	free(want);
}

/* generate's output for extra options (args ends with NULL), status checked. */
static void generate_with(const char *const *extra, char *out, size_t n)
{
	const char *args[20] = { "generate", "--model", MODEL, "--tokenizer", TOK, "--steps", "256" };
	int i = 7;
	for (; *extra; extra++)
		args[i++] = *extra;
	args[i] = NULL;
	int st = run_worker(args, out, n);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fail_msg("generate exited with status %d: %s", st, out);
}

/*
 * Sampling: one seed, one text; other seeds, other texts (256 steps of a 512-token model at
 * T = 1: two seeds giving the same text would be a broken generator, not chance); a tiny
 * temperature or top-p is greedy, byte for byte the golden text.
 */
static void test_cli_generate_sampling(void **state)
{
	(void)state;
	static char a[65536], b[65536], c[65536];
	char *want = slurp(GREEDY, NULL);
	const char *s42[] = { "--temperature", "1", "--seed", "42", NULL };
	const char *s43[] = { "--temperature", "1", "--seed", "43", NULL };
	generate_with(s42, a, sizeof(a));
	generate_with(s42, b, sizeof(b));
	generate_with(s43, c, sizeof(c));
	assert_string_equal(a, b);
	assert_string_not_equal(a, c);
	assert_string_not_equal(a, want);
	const char *p42[] = { "--temperature", "0.9", "--topp", "0.9", "--seed", "42", NULL };
	generate_with(p42, b, sizeof(b));
	generate_with(p42, c, sizeof(c));
	assert_string_equal(b, c);
	assert_string_not_equal(a, b);
	const char *tiny[] = { "--temperature", "1e-6", "--seed", "7", NULL };
	generate_with(tiny, a, sizeof(a));
	assert_string_equal(a, want);
	const char *nucleus[] = { "--temperature", "1.5", "--topp", "1e-6", "--seed", "7", NULL };
	generate_with(nucleus, a, sizeof(a));
	assert_string_equal(a, want);
	/* --seed and --topp change nothing at temperature 0 */
	const char *greedy[] = { "--temperature", "0", "--seed", "3", "--topp", "0.5", NULL };
	generate_with(greedy, a, sizeof(a));
	assert_string_equal(a, want);
	free(want);
}

/* $LBK_ISA caps the kernels' tier: greedy decoding gives the golden text on each; a value that
 * names no tier is reported on one line and ignored. */
static void test_cli_generate_each_tier(void **state)
{
	(void)state;
	static char out[65536];
	char *want = slurp(GREEDY, NULL);
	const char *none[] = { NULL };
	const char *tiers[] = { "avx512", "avx2", "scalar" };
	for (int i = 0; i < 3; i++) {
		assert_int_equal(setenv("LBK_ISA", tiers[i], 1), 0);
		generate_with(none, out, sizeof(out));
		if (strcmp(out, want) != 0)
			fail_msg("LBK_ISA=%s: not the golden text: %s", tiers[i], out);
	}
	assert_int_equal(setenv("LBK_ISA", "avx1024", 1), 0);
	generate_with(none, out, sizeof(out));
	unsetenv("LBK_ISA");
	const char *nl = strchr(out, '\n');
	assert_non_null(nl);
	assert_non_null(strstr(out, "LBK_ISA=avx1024 ignored"));
	assert_true(strstr(out, "LBK_ISA=avx1024 ignored") < nl);
	assert_string_equal(nl + 1, want);
	free(want);
}

static void test_score_matches_fp64_reference(void **state)
{
	struct fixture *fx = *state;
	struct lbw_llama_state s;
	struct ref r;
	char dir[256], path[300];
	static char out[4096];
	char *text = slurp(VAL, NULL);
	char **paras = paragraphs(text);
	int32_t *toks = malloc(65536 * sizeof(int32_t));
	double sum_ppt = 0, sum_nll = 0, max_diff = 0;
	long sum_pred = 0;
	int used = 0;

	ref_load(&r, MODEL);
	assert_int_equal(lbw_llama_state_init(&s, &fx->m.cfg), 0);
	lbt_mkdtemp(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/para.txt", dir);
	for (int i = 0; paras[i] && used < N_PARA; i++) {
		if (strlen(paras[i]) > 60000)
			continue;
		int n = lbw_tokenizer_encode(&fx->t, paras[i], 1, 0, toks);
		if (n < 50 || n > 300)
			continue;
		double lib = 0;
		assert_int_equal(lbw_llama_prompt(&fx->m, &s, toks, n, NULL, &lib), 0);
		double ref = ref_nll(&r, toks, n);
		double lib_ppt = lib / (n - 1), ref_ppt = ref / (n - 1);
		if (fabs(lib_ppt - ref_ppt) > 1e-4)
			fail_msg("paragraph %d: library nll %.6f, fp64 reference %.6f", i, lib_ppt, ref_ppt);

		/* the CLI, on the paragraph written with a trailing newline (it drops one) */
		size_t pl = strlen(paras[i]);
		char *withnl = malloc(pl + 2);
		memcpy(withnl, paras[i], pl);
		memcpy(withnl + pl, "\n", 2);
		spit(path, withnl, pl + 1);
		free(withnl);
		const char *args[] = { "score", "--model", MODEL, "--tokenizer", TOK, "--text-file",
				       path, NULL };
		int st = run_worker(args, out, sizeof(out));
		assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
		int cn, cp;
		double cx;
		char tail;
		if (sscanf(out, "tokens %d predicted %d nll_per_token %lf%c", &cn, &cp, &cx, &tail) != 4 ||
		    tail != '\n' || strchr(out, '\n')[1] != '\0')
			fail_msg("score printed: %s", out);
		assert_int_equal(cn, n);
		assert_int_equal(cp, n - 1);
		if (fabs(cx - ref_ppt) > 1e-4)
			fail_msg("paragraph %d: CLI nll %.6f, fp64 reference %.6f", i, cx, ref_ppt);
		if (fabs(lib_ppt - ref_ppt) > max_diff)
			max_diff = fabs(lib_ppt - ref_ppt);
		sum_ppt += cx;
		sum_nll += ref;
		sum_pred += n - 1;
		used++;
	}
	assert_int_equal(used, N_PARA);
	double avg = sum_ppt / used;
	printf("score over %d paragraphs (50..300 tokens): mean nll_per_token %.4f, "
	       "token-weighted %.4f nats (perplexity %.3f); fp32 vs fp64 max |diff| %.2e\n",
	       used, avg, sum_nll / (double)sum_pred, exp(sum_nll / (double)sum_pred), max_diff);
	assert_true(avg >= 1.3 && avg <= 1.45);

	lbu_rmtree(dir);
	lbw_llama_state_free(&s);
	free(r.all);
	for (int i = 0; paras[i]; i++)
		free(paras[i]);
	free(paras);
	free(toks);
	free(text);
}

static void test_tokenizer_round_trip(void **state)
{
	struct fixture *fx = *state;
	char *text = slurp(VAL, NULL);
	char **paras = paragraphs(text);
	int32_t *toks = malloc(65536 * sizeof(int32_t));
	int done = 0;
	for (int i = 0; paras[i] && done < 50; i++) {
		if (strlen(paras[i]) > 60000)
			continue;
		int n = lbw_tokenizer_encode(&fx->t, paras[i], 1, 0, toks);
		assert_true(n > 1);
		assert_int_equal(toks[0], LBW_TOK_BOS);
		assert_true((size_t)n < strlen(paras[i]) + 3);
		char *back = detok(&fx->t, toks, n);
		assert_string_equal(back, paras[i]);
		free(back);
		done++;
	}
	assert_int_equal(done, 50);

	/* with EOS */
	int n = lbw_tokenizer_encode(&fx->t, "Hi", 1, 1, toks);
	assert_true(n >= 3);
	assert_int_equal(toks[n - 1], LBW_TOK_EOS);

	/* non-ASCII: whatever is not in the vocabulary is spelt in byte tokens and comes back */
	const char *utf = "Zoë said: “¡Olé!” 日本語 — naïve café \xf0\x9f\x98\x80.";
	n = lbw_tokenizer_encode(&fx->t, utf, 1, 0, toks);
	int bytes = 0;
	for (int i = 0; i < n; i++)
		if (toks[i] >= LBW_TOK_BYTE0 && toks[i] < LBW_TOK_BYTE0 + 256)
			bytes++;
	assert_true(bytes >= 9); /* at least the three CJK characters */
	char *back = detok(&fx->t, toks, n);
	assert_string_equal(back, utf);
	free(back);
	/* "日" is E6 97 A5: spelt as three byte tokens */
	n = lbw_tokenizer_encode(&fx->t, "日", 0, 0, toks);
	int found = 0;
	for (int i = 0; i + 2 < n; i++)
		if (toks[i] == 0xE6 + 3 && toks[i + 1] == 0x97 + 3 && toks[i + 2] == 0xA5 + 3)
			found = 1;
	assert_true(found);

	/* empty string: BOS only (no dummy prefix), or nothing */
	n = lbw_tokenizer_encode(&fx->t, "", 1, 0, toks);
	assert_int_equal(n, 1);
	assert_int_equal(toks[0], LBW_TOK_BOS);
	assert_int_equal(lbw_tokenizer_encode(&fx->t, "", 0, 0, toks), 0);

	/* decode: leading space stripped after BOS only; range checked */
	assert_null(lbw_tokenizer_decode(&fx->t, 0, -1));
	assert_null(lbw_tokenizer_decode(&fx->t, 0, 512));
	assert_string_equal(lbw_tokenizer_decode(&fx->t, LBW_TOK_BOS, 259), "t");
	assert_string_equal(lbw_tokenizer_decode(&fx->t, 5, 259), " t");
	assert_string_equal(lbw_tokenizer_decode(&fx->t, 5, 'A' + 3), "A");

	for (int i = 0; paras[i]; i++)
		free(paras[i]);
	free(paras);
	free(toks);
	free(text);
}

static void test_bad_checkpoints(void **state)
{
	(void)state;
	char dir[256], path[300], err[512];
	struct lbw_llama m;
	size_t len;
	char *good = slurp(MODEL, &len);
	lbt_mkdtemp(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/bad.bin", dir);

	/* truncated: at many cuts, including inside the header and one float short */
	size_t cuts[] = { 0, 3, 27, 28, 1000, len / 2, len - 4 * 4096, len - 4, len - 1 };
	for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
		spit(path, good, cuts[i]);
		err[0] = '\0';
		assert_int_equal(lbw_llama_load(&m, path, err, sizeof(err)), -EINVAL);
		assert_true(strlen(err) > 10);
		assert_null(m.data);
	}
	/* one byte too many */
	char *longer = malloc(len + 1);
	memcpy(longer, good, len);
	longer[len] = 0;
	spit(path, longer, len + 1);
	assert_int_equal(lbw_llama_load(&m, path, err, sizeof(err)), -EINVAL);
	printf("e.g. %s\n", err);
	free(longer);

	/* wrong header values */
	struct {
		int field;
		int32_t value;
	} bad[] = {
		{ 0, 0 }, { 0, -64 }, { 0, 63 }, { 0, 1 << 30 }, { 1, 0 }, { 1, INT32_MAX },
		{ 2, 0 }, { 2, 6 }, { 2, 100000 }, { 3, 0 }, { 3, 7 }, { 3, 3 }, { 3, 32 },
		{ 4, 0 }, { 4, 3 }, { 4, 16 }, { 4, -4 }, { 5, 0 }, { 5, INT32_MIN }, { 5, 511 },
		{ 5, -512 }, { 6, 0 }, { 6, -1 }, { 6, INT32_MAX },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int32_t hdr[7];
		memcpy(hdr, good, sizeof(hdr));
		memcpy(good + 4 * bad[i].field, &bad[i].value, 4);
		spit(path, good, len);
		memcpy(good, hdr, sizeof(hdr));
		err[0] = '\0';
		int rc = lbw_llama_load(&m, path, err, sizeof(err));
		if (rc != -EINVAL)
			fail_msg("header field %d = %d: rc %d", bad[i].field, (int)bad[i].value, rc);
		assert_true(strlen(err) > 10);
		/* the same check without a file */
		struct lbw_llama_config c;
		memcpy(hdr + bad[i].field, &bad[i].value, 4);
		assert_int_equal(lbw_llama_check_header(hdr, NULL, len, &c, NULL, 0), -EINVAL);
	}
	/* an odd head size: dim 6, heads 2 -> head_size 3 */
	int32_t odd[7] = { 6, 8, 1, 2, 2, 300, 4 };
	struct lbw_llama_config c;
	assert_int_equal(lbw_llama_check_header(odd, NULL, 1 << 20, &c, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "odd"));
	/* the real header and size pass */
	assert_int_equal(lbw_llama_check_header((const int32_t *)good, NULL, len, &c, NULL, 0), 0);
	/* an unshared classifier needs vocab*dim more floats */
	int32_t uns[7];
	memcpy(uns, good, sizeof(uns));
	uns[5] = -512;
	assert_int_equal(lbw_llama_check_header(uns, NULL, len + 512 * 64 * 4, &c, NULL, 0), 0);
	assert_false(c.shared_classifier);

	/* missing file, directory */
	assert_int_equal(lbw_llama_load(&m, "/nonexistent/model.bin", err, sizeof(err)), -ENOENT);
	assert_int_equal(lbw_llama_load(&m, dir, err, sizeof(err)), -EINVAL);

	/* out-of-range forward arguments */
	assert_int_equal(lbw_llama_load(&m, MODEL, err, sizeof(err)), 0);
	struct lbw_llama_state s;
	assert_int_equal(lbw_llama_state_init(&s, &m.cfg), 0);
	assert_null(lbw_llama_forward(&m, &s, 512, 0));
	assert_null(lbw_llama_forward(&m, &s, -1, 0));
	assert_null(lbw_llama_forward(&m, &s, 1, 512));
	int32_t toks[2] = { 1, 600 };
	assert_int_equal(lbw_llama_prompt(&m, &s, toks, 2, NULL, NULL), -EINVAL);
	assert_int_equal(lbw_llama_prompt(&m, &s, toks, 0, NULL, NULL), -EINVAL);
	lbw_llama_state_free(&s);
	lbw_llama_free(&m);

	lbu_rmtree(dir);
	free(good);
}

static void test_bad_tokenizers(void **state)
{
	(void)state;
	char dir[256], path[300], err[512];
	struct lbw_tokenizer t;
	size_t len;
	char *good = slurp(TOK, &len);
	lbt_mkdtemp(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/tok.bin", dir);

	size_t cuts[] = { 0, 2, 4, 8, 11, 100, len / 2, len - 1 };
	for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
		spit(path, good, cuts[i]);
		err[0] = '\0';
		assert_int_equal(lbw_tokenizer_load(&t, path, 512, err, sizeof(err)), -EINVAL);
		assert_true(strlen(err) > 10);
		assert_null(t.vocab);
	}
	/* the real file with the wrong vocab size: trailing bytes, or truncated */
	assert_int_equal(lbw_tokenizer_load(&t, TOK, 500, err, sizeof(err)), -EINVAL);
	assert_int_equal(lbw_tokenizer_load(&t, TOK, 600, err, sizeof(err)), -EINVAL);
	assert_int_equal(lbw_tokenizer_load(&t, TOK, 100, err, sizeof(err)), -EINVAL);
	/* max_token_length 0 / huge; a token length beyond it; negative */
	int32_t v[] = { 0, -1, 1 << 30 };
	for (size_t i = 0; i < 3; i++) {
		char *c = malloc(len);
		memcpy(c, good, len);
		memcpy(c, &v[i], 4);
		spit(path, c, len);
		assert_int_equal(lbw_tokenizer_load(&t, path, 512, err, sizeof(err)), -EINVAL);
		memcpy(c, good, len);
		memcpy(c + 8, &v[i == 0 ? 1 : 2], 4); /* token 0's len */
		spit(path, c, len);
		assert_int_equal(lbw_tokenizer_load(&t, path, 512, err, sizeof(err)), -EINVAL);
		free(c);
	}
	/* a NUL byte inside a piece */
	char *c = malloc(len);
	memcpy(c, good, len);
	c[12] = '\0'; /* first byte of "<unk>" */
	spit(path, c, len);
	assert_int_equal(lbw_tokenizer_load(&t, path, 512, err, sizeof(err)), -EINVAL);
	free(c);
	assert_int_equal(lbw_tokenizer_load(&t, "/nonexistent/tok.bin", 512, err, sizeof(err)),
			 -ENOENT);
	assert_int_equal(lbw_tokenizer_load(&t, TOK, 512, err, sizeof(err)), 0);
	lbw_tokenizer_free(&t);

	lbu_rmtree(dir);
	free(good);
}

static int count_lines(const char *s)
{
	int n = 0;
	for (; *s; s++)
		n += *s == '\n';
	return n;
}

static void test_cli_errors(void **state)
{
	(void)state;
	static char out[8192];
	char dir[256], path[300];
	struct {
		const char *args[14];
		int code;
	} cases[] = {
		{ { NULL }, 2 },
		{ { "frobnicate", NULL }, 2 },
		{ { "generate", "--model", MODEL, "--tokenizer", TOK, "--bogus", NULL }, 2 },
		{ { "generate", "--model", MODEL, "--tokenizer", TOK, "--steps", "-1", NULL }, 2 },
		{ { "generate", "--model", MODEL, "--tokenizer", TOK, "--steps", "12x", NULL }, 2 },
		{ { "generate", "--model", MODEL, "--tokenizer", TOK, "--temperature", "-0.5", NULL }, 2 },
		{ { "generate", "--model", MODEL, "--tokenizer", TOK, "--temperature", "nan", NULL }, 2 },
		{ { "generate", "--model", MODEL, "--tokenizer", TOK, "--temperature", "inf", NULL }, 2 },
		{ { "generate", "--model", MODEL, "--tokenizer", TOK, "--temperature", "1e39", NULL }, 2 },
		{ { "generate", "--model", MODEL, "--tokenizer", TOK, "--temperature", "hot", NULL }, 2 },
		{ { "generate", "--model", MODEL, "--tokenizer", TOK, "--temperature", "", NULL }, 2 },
		{ { "generate", "--model", MODEL, "--tokenizer", TOK, "--topp", "0", NULL }, 2 },
		{ { "generate", "--model", MODEL, "--tokenizer", TOK, "--topp", "1.01", NULL }, 2 },
		{ { "generate", "--model", MODEL, "--tokenizer", TOK, "--topp", "-0.5", NULL }, 2 },
		{ { "generate", "--model", MODEL, "--tokenizer", TOK, "--topp", "nan", NULL }, 2 },
		{ { "generate", "--model", MODEL, "--tokenizer", TOK, "--seed", "-1", NULL }, 2 },
		{ { "generate", "--model", MODEL, "--tokenizer", TOK, "--seed", "1.5", NULL }, 2 },
		{ { "generate", "--model", MODEL, "--tokenizer", TOK, "--seed", "99999999999999999999", NULL }, 2 },
		{ { "generate", "--model", MODEL, "--tokenizer", TOK, "--temperature", "0.8", "--seed",
		    NULL }, 2 },
		{ { "generate", "--model", "llama-110m", "--tokenizer", TOK, "--seed", "-1", NULL },
		  2 },
		{ { "score", "--model", "llama-110m", "--tokenizer", TOK, "--text-file", VAL,
		    "--seed", "x", NULL }, 2 },
		{ { "generate", "--model", MODEL, "--tokenizer", NULL }, 2 },
		{ { "generate", "--tokenizer", TOK, NULL }, 2 },
		{ { "score", "--model", MODEL, "--tokenizer", TOK, NULL }, 2 },
		{ { "score", "--model", MODEL, "--tokenizer", TOK, "--prompt", "x", NULL }, 2 },
		{ { "generate", "--model", "/nonexistent/m.bin", "--tokenizer", TOK, NULL }, 1 },
		{ { "score", "--model", "/nonexistent/m.bin", "--tokenizer", TOK, "--text-file", VAL,
		    NULL }, 1 },
		{ { "generate", "--model", MODEL, "--tokenizer", "/nonexistent/t.bin", NULL }, 1 },
		{ { "generate", "--model", TOK, "--tokenizer", TOK, NULL }, 1 },
		{ { "score", "--model", MODEL, "--tokenizer", TOK, "--text-file", "/nonexistent", NULL }, 1 },
		{ { "score", "--model", MODEL, "--tokenizer", TOK, "--text-file", VAL, NULL }, 1 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int st = run_worker(cases[i].args, out, sizeof(out));
		if (!WIFEXITED(st) || WEXITSTATUS(st) != cases[i].code || count_lines(out) != 1)
			fail_msg("case %zu: status %d, want exit %d with one line; printed: %s", i, st,
				 cases[i].code, out);
	}
	/* an empty text file has nothing to score */
	lbt_mkdtemp(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/empty.txt", dir);
	spit(path, "", 0);
	const char *a[] = { "score", "--model", MODEL, "--tokenizer", TOK, "--text-file", path, NULL };
	int st = run_worker(a, out, sizeof(out));
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1 && count_lines(out) == 1);
	lbu_rmtree(dir);
	/* a prompt is forced, then generation continues; --steps counts positions */
	const char *g[] = { "generate", "--model", MODEL, "--tokenizer", TOK, "--prompt",
			    "Once upon a time", "--steps", "10", NULL };
	st = run_worker(g, out, sizeof(out));
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	assert_true(strncmp(out, "Once upon a time", 16) == 0);
	const char *h[] = { "--help", NULL };
	st = run_worker(h, out, sizeof(out));
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	assert_non_null(strstr(out, "temperature"));
}

/* ---------- generated decoders ---------- */

/* The parameters of a shared-classifier shape: embedding, then per layer two RMSNorm gains,
 * wq and wo, wk and wv, w1 w2 w3; the final gain. */
static int64_t n_params(const struct lbw_llama_config *c)
{
	int64_t d = c->dim, kv = c->kv_dim, h = c->hidden_dim;
	int64_t layer = 2 * d + 2 * d * d + 2 * kv * d + 3 * h * d;
	return (int64_t)c->vocab_size * d + c->n_layers * layer + d;
}

/* A small shape through the same generator, for what runs it several times. */
static struct lbw_llama_config small_shape(void)
{
	return (struct lbw_llama_config){ .dim = 96, .hidden_dim = 160, .n_layers = 3, .n_heads = 6,
					  .n_kv_heads = 2, .vocab_size = 512, .seq_len = 64 };
}

static void generate_ok(struct lbw_llama *m, const struct lbw_llama_config *c, uint64_t seed)
{
	char err[256];
	int rc = lbw_llama_generate(m, c, seed, err, sizeof(err));
	if (rc != 0)
		fail_msg("lbw_llama_generate: %d: %s", rc, err);
}

/* n greedy tokens after BOS, token by token on m's current path; logits (may be NULL):
 * [n][vocab_size], the logits each was chosen from. */
static void greedy_tokens(const struct lbw_llama *m, int n, int32_t *out, float *logits)
{
	struct lbw_llama_state s;
	size_t V = (size_t)m->cfg.vocab_size;
	assert_int_equal(lbw_llama_state_init(&s, &m->cfg), 0);
	int32_t tok = LBW_TOK_BOS;
	for (int pos = 0; pos < n; pos++) {
		const float *lg = lbw_llama_forward(m, &s, tok, pos);
		assert_non_null(lg);
		if (logits)
			memcpy(logits + (size_t)pos * V, lg, V * sizeof(float));
		out[pos] = tok = lbw_llama_argmax(lg, m->cfg.vocab_size);
	}
	lbw_llama_state_free(&s);
}

static double seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The fixture's llama-110m, generated on first use. */
static struct lbw_llama *big_model(struct fixture *fx)
{
	if (fx->big.data)
		return &fx->big;
	struct lbw_llama_config c = lbw_llama_config_110m();
	struct rusage ru;
	double t0 = seconds();
	generate_ok(&fx->big, &c, 1);
	double el = seconds() - t0;
	getrusage(RUSAGE_SELF, &ru);
	printf("llama-110m generated in %.2f s; this process's peak RSS %ld MB\n", el,
	       ru.ru_maxrss / 1024);
	return &fx->big;
}

/*
 * One seed, the same bytes, greedy tokens and logits; another seed, other bytes and logits (its
 * greedy tokens may agree: a small random model with a tied classifier tends to predict the
 * token it was fed, BOS after BOS). The bytes are a checkpoint: written to a file,
 * lbw_llama_load gives back the same model.
 */
static void test_generated_deterministic(void **state)
{
	(void)state;
	struct lbw_llama_config c = small_shape();
	struct lbw_llama a, b, d, f;
	int32_t ta[16], tb[16], td[16], tf[16];
	static float la[16 * 512], lb[16 * 512], ld[16 * 512], lf[16 * 512];
	char dir[256], path[300], err[256];
	generate_ok(&a, &c, 1);
	generate_ok(&b, &c, 1);
	generate_ok(&d, &c, 2);
	assert_int_equal(a.data_size, b.data_size);
	assert_memory_equal(a.data, b.data, a.data_size);
	assert_memory_not_equal(a.data, d.data, a.data_size);
	greedy_tokens(&a, 16, ta, la);
	greedy_tokens(&b, 16, tb, lb);
	greedy_tokens(&d, 16, td, ld);
	assert_memory_equal(ta, tb, sizeof(ta));
	assert_memory_equal(la, lb, sizeof(la));
	assert_memory_not_equal(la, ld, sizeof(la));

	lbt_mkdtemp(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/gen.bin", dir);
	spit(path, a.data, a.data_size);
	assert_int_equal(lbw_llama_load(&f, path, err, sizeof(err)), 0);
	assert_memory_equal(&f.cfg, &a.cfg, sizeof(f.cfg));
	assert_memory_equal(f.data, a.data, a.data_size);
	assert_non_null(a.packed);
	greedy_tokens(&f, 16, tf, lf);
	assert_memory_equal(ta, tf, sizeof(ta));
	assert_memory_equal(la, lf, sizeof(la));
	lbu_rmtree(dir);
	lbw_llama_free(&a);
	lbw_llama_free(&b);
	lbw_llama_free(&d);
	lbw_llama_free(&f);
}

/* Mean and standard deviation of p[0..n-1]. */
static void moments(const float *p, int64_t n, double *mean, double *sd)
{
	double s = 0, s2 = 0;
	for (int64_t i = 0; i < n; i++) {
		s += p[i];
		s2 += (double)p[i] * p[i];
	}
	*mean = s / (double)n;
	*sd = sqrt(s2 / (double)n - *mean * *mean);
}

/* What each tensor holds: matrices ~N(0, 0.02), gains 1, the classifier the embedding. */
static void test_generated_weights(void **state)
{
	(void)state;
	struct lbw_llama_config c = small_shape();
	struct lbw_llama m;
	generate_ok(&m, &c, 5);
	const struct lbw_llama_weights *w = &m.w;
	int64_t d = c.dim, L = c.n_layers, kv = c.n_kv_heads * (d / c.n_heads), h = c.hidden_dim;
	struct {
		const char *name;
		const float *p;
		int64_t n;
	} mat[] = {
		{ "token_embedding", w->token_embedding, 512 * d },
		{ "wq", w->wq, L * d * d },
		{ "wk", w->wk, L * kv * d },
		{ "wv", w->wv, L * kv * d },
		{ "wo", w->wo, L * d * d },
		{ "w1", w->w1, L * h * d },
		{ "w2", w->w2, L * d * h },
		{ "w3", w->w3, L * h * d },
	};
	for (size_t i = 0; i < sizeof(mat) / sizeof(mat[0]); i++) {
		double mean, sd;
		moments(mat[i].p, mat[i].n, &mean, &sd);
		if (fabs(mean) > 0.001 || fabs(sd - 0.02) > 0.001)
			fail_msg("%s: mean %.5f sd %.5f, want ~N(0, 0.02)", mat[i].name, mean, sd);
	}
	for (int64_t i = 0; i < L * d; i++)
		assert_true(w->rms_att[i] == 1.0f && w->rms_ffn[i] == 1.0f);
	for (int64_t i = 0; i < d; i++)
		assert_true(w->rms_final[i] == 1.0f);
	assert_ptr_equal(w->wcls, w->token_embedding);
	assert_true(m.cfg.shared_classifier);
	assert_int_equal(m.cfg.kv_dim, kv);
	lbw_llama_free(&m);
}

/* A shape lbw_llama_check_header refuses is refused, with one line, m left zeroed. */
static void test_generated_bad_shapes(void **state)
{
	(void)state;
	struct {
		const char *why;
		int field;
		int32_t value;
	} bad[] = {
		{ "dim 0", 0, 0 }, { "dim 100, 6 heads", 0, 100 }, { "hidden_dim -1", 1, -1 },
		{ "no layers", 2, 0 }, { "4 kv heads of 6", 4, 4 }, { "head_size 3", 0, 18 },
		{ "vocab -512", 5, -512 }, { "vocab 0", 5, 0 }, { "seq_len 0", 6, 0 },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct lbw_llama_config c = small_shape();
		int32_t *f[] = { &c.dim, &c.hidden_dim, &c.n_layers, &c.n_heads, &c.n_kv_heads,
				 &c.vocab_size, &c.seq_len };
		*f[bad[i].field] = bad[i].value;
		struct lbw_llama m;
		char err[256] = "";
		int rc = lbw_llama_generate(&m, &c, 1, err, sizeof(err));
		if (rc != -EINVAL || strlen(err) < 10 || strchr(err, '\n') || m.data || m.packed)
			fail_msg("%s: rc %d, err '%s'", bad[i].why, rc, err);
	}
}

/* Root mean square of x[0..n-1]. */
static double rms_of(const float *x, int32_t n)
{
	double s = 0;
	for (int32_t i = 0; i < n; i++)
		s += (double)x[i] * x[i];
	return sqrt(s / n);
}

/* toks (room for strlen + 3, as lbw_tokenizer_encode wants): the tokens of PROMPT_110M, then 4
 * greedy ones on the reference path, n in all; logits [n][vocab] after each; rms [n_layers] the
 * residual stream's after each layer at the last position. @return n. */
#define PROMPT_110M "Once upon a time"
#define MAX_110M 12 /* most positions run */
static int reference_run(struct fixture *fx, struct lbw_llama *m, int32_t *toks, float *logits,
			 double *rms)
{
	struct lbw_llama_state s;
	int32_t V = m->cfg.vocab_size;
	int n = lbw_tokenizer_encode(&fx->t, PROMPT_110M, 1, 0, toks);
	assert_true(n > 1 && n <= MAX_110M - 4);
	int total = n + 4;
	lbw_llama_set_reference(m, 1);
	assert_int_equal(lbw_llama_state_init(&s, &m->cfg), 0);
	for (int pos = 0; pos < total; pos++) {
		lbw_llama_embed(m, &s, toks[pos]);
		for (int32_t l = 0; l < m->cfg.n_layers; l++) {
			lbw_llama_layer(m, &s, l, pos);
			rms[l] = rms_of(s.x, m->cfg.dim);
		}
		const float *lg = lbw_llama_head(m, &s);
		memcpy(logits + (size_t)pos * (size_t)V, lg, (size_t)V * sizeof(float));
		if (pos + 1 >= n && pos + 1 < total)
			toks[pos + 1] = lbw_llama_argmax(lg, V);
	}
	lbw_llama_state_free(&s);
	lbw_llama_set_reference(m, 0);
	return total;
}

/* The shape and parameter count of llama-110m; the plain-C reference and the kernels agree on
 * the logits of a short prompt and the greedy tokens after it; the residual stream grows
 * without blowing up (so the output projections are drawn unscaled). */
#define TOL_110M 1e-4
static void test_llama_110m(void **state)
{
	struct fixture *fx = *state;
	struct lbw_llama *m = big_model(fx);
	const struct lbw_llama_config *c = &m->cfg;
	struct lbw_llama_config want = lbw_llama_config_110m();
	assert_memory_equal(c, &want, sizeof(want));
	int32_t got[] = { c->dim,        c->hidden_dim, c->n_layers,  c->n_heads,
			  c->n_kv_heads, c->vocab_size, c->seq_len,   c->head_size,
			  c->kv_dim,     c->shared_classifier };
	int32_t shape[] = { 768, 2048, 12, 12, 4, 512, 2048, 64, 256, 1 };
	assert_memory_equal(got, shape, sizeof(shape));
	/* the parameters run from the embedding to the final gain, the classifier shared */
	int64_t np = m->w.rms_final + c->dim - m->w.token_embedding;
	printf("llama-110m: %lld parameters (%.1f MB of fp32)\n", (long long)np, np * 4.0 / 1e6);
	assert_int_equal(np, 75909888);
	assert_int_equal(n_params(c), 75909888);
	assert_int_equal(m->data_size, LBW_LLAMA_HEADER_BYTES + 4 * (np + 2048 * 64));
	assert_non_null(m->packed);

	int32_t toks[sizeof(PROMPT_110M) + 3]; /* what lbw_tokenizer_encode may use */
	static float ref[MAX_110M * 512], lbk[MAX_110M * 512];
	double rms[12];
	double t0 = seconds();
	int n = reference_run(fx, m, toks, ref, rms);
	double t1 = seconds();
	struct lbw_llama_state s;
	assert_int_equal(lbw_llama_state_init(&s, c), 0);
	assert_int_equal(lbw_llama_prompt(m, &s, toks, n, lbk, NULL), 0);
	double t2 = seconds(), maxd = 0, maxl = 0;
	lbw_llama_state_free(&s);
	for (int i = 0; i < n * 512; i++) {
		maxd = fmax(maxd, fabs((double)ref[i] - lbk[i]));
		maxl = fmax(maxl, fabs((double)ref[i]));
	}
	printf("%d positions: reference %.2f s, kernels %.2f s; logits max |diff| %.2e (largest "
	       "|logit| %.2f), tolerance %.0e\n", n, t1 - t0, t2 - t1, maxd, maxl, TOL_110M);
	assert_true(maxd <= TOL_110M);
	for (int pos = 0; pos + 1 < n; pos++)
		assert_int_equal(lbw_llama_argmax(lbk + pos * 512, 512),
				 lbw_llama_argmax(ref + pos * 512, 512));
	printf("residual RMS after each layer at the last position:");
	for (int l = 0; l < 12; l++)
		printf(" %.2f", rms[l]);
	printf("\n");
	assert_true(rms[11] > rms[0] && rms[11] < 10.0);
}

/*
 * What `generate --steps steps` prints from an empty prompt, greedy, into out: llama2.c's loop
 * (a BOS ends it) and its safe_printf (a lone byte neither printable nor space is dropped).
 * @return the tokens generated.
 */
static int greedy_text(const struct lbw_llama *m, const struct lbw_tokenizer *t, int steps,
		       char *out, size_t cap)
{
	struct lbw_llama_state s;
	size_t len = 0;
	int pos = 0;
	assert_int_equal(lbw_llama_state_init(&s, &m->cfg), 0);
	for (int32_t tok = LBW_TOK_BOS; pos < steps; pos++) {
		const float *lg = lbw_llama_forward(m, &s, tok, pos);
		int32_t next = lbw_llama_argmax(lg, m->cfg.vocab_size);
		if (next == LBW_TOK_BOS)
			break;
		const char *p = lbw_tokenizer_decode(t, tok, next);
		unsigned char b = (unsigned char)p[0];
		if (!(b && !p[1] && !isprint(b) && !isspace(b)))
			len += (size_t)snprintf(out + len, cap - len, "%s", p);
		tok = next;
	}
	snprintf(out + len, cap - len, "\n");
	lbw_llama_state_free(&s);
	return pos;
}

/* generate --model llama-110m prints the library's greedy text of the model of --seed (1 by
 * default): the same text for the same seed, another for another. */
static void test_cli_llama_110m_generate(void **state)
{
	struct fixture *fx = *state;
	static char want[4096], out[4096];
	int n = greedy_text(big_model(fx), &fx->t, 8, want, sizeof(want));
	assert_int_equal(n, 8);
	const char *seed[] = { NULL, "1", "2" };
	for (int i = 0; i < 3; i++) {
		const char *args[] = { "generate", "--model", "llama-110m", "--tokenizer", TOK,
				       "--steps", "8", seed[i] ? "--seed" : NULL, seed[i], NULL };
		double t0 = seconds();
		int st = run_worker(args, out, sizeof(out));
		printf("generate --steps 8 --seed %s: %zu bytes of text in %.2f s\n",
		       seed[i] ? seed[i] : "(none)", strlen(out) - 1, seconds() - t0);
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
			fail_msg("generate exited with status %d: %s", st, out);
		if (i < 2)
			assert_string_equal(out, want);
		else
			assert_string_not_equal(out, want);
	}
}

/* layerbank-worker args (NULL-terminated) with stdin from in. */
static int run_worker_in(const char *const *args, const char *in, char *out, size_t n)
{
	char cmd[4096];
	size_t used = (size_t)snprintf(cmd, sizeof(cmd), "exec '%s'", worker_path);
	for (; *args; args++)
		used += (size_t)snprintf(cmd + used, sizeof(cmd) - used, " '%s'", *args);
	snprintf(cmd + used, sizeof(cmd) - used, " < '%s'", in);
	assert_true(used < sizeof(cmd) - 64);
	const char *argv[] = { "/bin/sh", "-c", cmd, NULL };
	return lbt_run(argv, out, n);
}

#define TEXT_110M "Once upon a time, there was a little girl named Lily. She liked to play outside."

/* score --model llama-110m prints the NLL the library computes (the layer-major prefill against
 * the token-by-token forward: float rounding apart, tolerance 1e-4 per token). */
static void test_cli_llama_110m_score(void **state)
{
	struct fixture *fx = *state;
	struct lbw_llama *m = big_model(fx);
	struct lbw_llama_state s;
	static char out[4096];
	char dir[256], path[300];
	int32_t toks[256];
	int n = lbw_tokenizer_encode(&fx->t, TEXT_110M, 1, 0, toks);
	double lib;
	assert_int_equal(lbw_llama_state_init(&s, &m->cfg), 0);
	assert_int_equal(lbw_llama_prompt(m, &s, toks, n, NULL, &lib), 0);
	lbw_llama_state_free(&s);
	lbt_mkdtemp(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/text.txt", dir);
	spit(path, TEXT_110M "\n", strlen(TEXT_110M) + 1);
	const char *args[] = { "score", "--model", "llama-110m", "--tokenizer", TOK, "--text-file",
			       path, NULL };
	int st = run_worker(args, out, sizeof(out));
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fail_msg("score exited with status %d: %s", st, out);
	int cn, cp;
	double cx;
	assert_int_equal(sscanf(out, "tokens %d predicted %d nll_per_token %lf", &cn, &cp, &cx), 3);
	printf("score: %d tokens, nll_per_token %.6f (ln 512 = %.3f), library %.6f\n", cn, cx,
	       log(512.0), lib / (n - 1));
	assert_int_equal(cn, n);
	assert_int_equal(cp, n - 1);
	assert_true(isfinite(cx) && cx > 0);
	assert_true(fabs(cx - lib / (n - 1)) <= 1e-4);
	lbu_rmtree(dir);
}

/* serve registers llama-110m under a name carrying the seed; with a private bank a repeat is
 * served from the top layer with the same NLL. */
static void test_cli_llama_110m_serve(void **state)
{
	(void)state;
	static char out[8192];
	char dir[256], req[300];
	lbt_mkdtemp(dir, sizeof(dir));
	snprintf(req, sizeof(req), "%s/requests", dir);
	spit(req, "1\t" TEXT_110M "\n2\t" TEXT_110M "\n", 2 * strlen(TEXT_110M) + 6);
	const char *a[] = { "serve", "--model", "llama-110m", "--tokenizer", TOK, "--private-cache",
			    "16M", NULL };
	int st = run_worker_in(a, req, out, sizeof(out));
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fail_msg("serve exited with status %d: %s", st, out);
	assert_non_null(strstr(out, "ready model=llama-110m-generated-0000000000000001 layers=12 "
				    "hidden=768 "));
	const char *r1 = strstr(out, "\n1 ok "), *r2 = strstr(out, "\n2 ok ");
	int t1, t2, hit1, hit2;
	double nll1, nll2;
	assert_non_null(r1);
	assert_non_null(r2);
	assert_int_equal(sscanf(r1, "\n1 ok tokens=%d nll=%lf hit=%d", &t1, &nll1, &hit1), 3);
	assert_int_equal(sscanf(r2, "\n2 ok tokens=%d nll=%lf hit=%d", &t2, &nll2, &hit2), 3);
	assert_int_equal(hit1, -1);
	assert_int_equal(hit2, 11);
	assert_true(t1 == t2 && nll1 == nll2);
	const char *b[] = { "serve", "--model", "llama-110m", "--tokenizer", TOK, "--seed", "2",
			    NULL };
	st = run_worker_in(b, "/dev/null", out, sizeof(out));
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	assert_non_null(strstr(out, "ready model=llama-110m-generated-0000000000000002 "));
	lbu_rmtree(dir);
}

/* ---------- a layer for chosen positions (lbw_llama_layer_rows, lbw_scorer_rows) ---------- */

/* BOS and the first tokens of tinystories_val.txt, n of them into toks [n]. */
static void text_tokens(const struct fixture *fx, int32_t n, int32_t *toks)
{
	char *text = slurp(VAL, NULL);
	size_t cut = strlen(text) < 2000 ? strlen(text) : 2000; /* encoding is quadratic */
	text[cut] = '\0';
	int32_t *all = malloc((cut + 3) * sizeof(int32_t));
	assert_non_null(all);
	int got = lbw_tokenizer_encode(&fx->t, text, 1, 0, all);
	assert_true(got >= n);
	memcpy(toks, all, (size_t)n * sizeof(int32_t));
	free(all);
	free(text);
}

/* Fails unless got [n_rows][dim] holds the rows rows[] of full [][dim], bit for bit. */
static void expect_rows(const float *got, const float *full, const uint32_t *rows,
			uint32_t n_rows, int64_t dim, const char *what)
{
	long long d = lbt_rows_diff(got, full, rows, n_rows, (size_t)dim);
	if (d >= 0) {
		uint32_t r = (uint32_t)(d / dim), col = (uint32_t)(d % dim);
		fail_msg("%s: row %u (position %u) column %u: %.9g, the whole layer's %.9g", what, r,
			 rows[r], col, (double)got[d], (double)full[(int64_t)rows[r] * dim + col]);
	}
}

/*
 * Layers 0..layers-1 from the embedding of toks [n], on m's current path and tier: on every
 * row set lbw_llama_layer_rows gives those rows of lbw_llama_layer_seq's output bit for bit, in
 * place too, and leaves the state's KV blocks as the whole layer wrote them.
 */
static void check_layer_rows(const struct lbw_llama *m, const int32_t *toks, int32_t n,
			     int32_t layers)
{
	struct lbw_llama_state s;
	const int64_t dim = m->cfg.dim;
	const size_t bytes = (size_t)n * (size_t)dim * sizeof(float);
	assert_int_equal(lbw_llama_state_init(&s, &m->cfg), 0);
	const size_t kvb = (size_t)s.n_blocks * s.block_floats * sizeof(float);
	float *in = malloc(bytes), *full = malloc(bytes), *got = malloc(bytes), *kv = malloc(kvb);
	uint32_t *rows = malloc((size_t)n * sizeof(uint32_t));
	assert_true(in && full && got && kv && rows);
	lbw_llama_embed_seq(m, toks, n, in);
	char what[160];
	for (int32_t l = 0; l < layers; l++) {
		lbw_llama_layer_seq(m, &s, l, n, in, full);
		memcpy(kv, s.kv, kvb);
		for (int which = 0; which < LBT_ROW_SETS; which++) {
			uint32_t nr = lbt_row_set(which, (uint32_t)n, (uint64_t)(11 * l + which), rows);
			snprintf(what, sizeof(what), "dim %d n %d layer %d, %u rows (set %d), %s",
				 (int)dim, (int)n, (int)l, nr, which,
				 m->reference ? "reference" : lbk_isa_name(lbk_isa()));
			assert_int_equal(lbw_llama_layer_rows(m, &s, l, n, in, rows, (int32_t)nr, got), 0);
			expect_rows(got, full, rows, nr, dim, what);
			memcpy(got, in, bytes);
			assert_int_equal(lbw_llama_layer_rows(m, &s, l, n, got, rows, (int32_t)nr, got), 0);
			expect_rows(got, full, rows, nr, dim, what);
			assert_memory_equal(s.kv, kv, kvb);
		}
		memcpy(in, full, bytes);
	}
	free(in);
	free(full);
	free(got);
	free(kv);
	free(rows);
	lbw_llama_state_free(&s);
}

/* stories260K on every tier and on the plain-C reference, n across the attention's query and
 * key blocks; a generated shape of head size 16 and three query heads a KV head. */
static void test_layer_rows(void **state)
{
	struct fixture *fx = *state;
	static const int32_t ns[] = { 1, 7, 33, 200 };
	int32_t toks[200];
	text_tokens(fx, 200, toks);
	lbk_force_isa(LBK_ISA_AVX512);
	for (int t = (int)lbk_isa(); t >= (int)LBK_ISA_SCALAR; t--) {
		lbk_force_isa((enum lbk_isa)t);
		for (int i = 0; i < 4; i++)
			check_layer_rows(&fx->m, toks, ns[i], fx->m.cfg.n_layers);
	}
	lbk_force_isa(LBK_ISA_AVX512);
	lbw_llama_set_reference(&fx->m, 1);
	check_layer_rows(&fx->m, toks, 33, fx->m.cfg.n_layers);
	lbw_llama_set_reference(&fx->m, 0);

	struct lbw_llama_config c = small_shape();
	struct lbw_llama g;
	generate_ok(&g, &c, 3);
	check_layer_rows(&g, toks, 1, c.n_layers);
	check_layer_rows(&g, toks, 64, c.n_layers);
	lbw_llama_free(&g);
}

/* llama-110m (head size 64, 12 query heads on 4 KV heads) at 256 tokens, two layers. */
static void test_layer_rows_llama_110m(void **state)
{
	struct fixture *fx = *state;
	int32_t toks[256];
	text_tokens(fx, 256, toks);
	check_layer_rows(big_model(fx), toks, 256, 2);
}

/*
 * The scorer on stories260K as the worker opens it: its lb_rows_fn on every position the same
 * bytes as its lb_layer_fn, on the row sets those rows, layer by layer; and its refusals.
 */
static void test_scorer_rows(void **state)
{
	struct fixture *fx = *state;
	const lb_rows_fn rows_fn = lbw_scorer_rows; /* it is one */
	struct lbw_scorer sc;
	char err[256];
	enum { N = 150 };
	int32_t toks[N];
	uint32_t rows[N];
	static float in[N * 64], full[N * 64], got[N * 64];
	text_tokens(fx, N, toks);
	if (lbw_scorer_open_llama(&sc, MODEL, err, sizeof(err)) != 0)
		fail_msg("%s", err);
	assert_true(sc.hidden == 64);
	lbw_scorer_embed(&sc, toks, N, in);
	for (int32_t l = 0; l < sc.n_layers; l++) {
		assert_int_equal(lbw_scorer_layer(&sc, (uint32_t)l, in, full), 0);
		for (int which = 0; which < LBT_ROW_SETS; which++) {
			uint32_t nr = lbt_row_set(which, N, (uint64_t)(l * 5 + which), rows);
			assert_int_equal(rows_fn(&sc, (uint32_t)l, in, N, rows, nr, got), 0);
			expect_rows(got, full, rows, nr, 64, "stories260K scorer");
			if (nr == N)
				assert_memory_equal(got, full, sizeof(full));
		}
		memcpy(in, full, sizeof(in));
	}
	const uint32_t L = (uint32_t)sc.n_layers, S = (uint32_t)sc.max_seq;
	static const uint32_t r1[] = { 0 };
	const struct {
		uint32_t l, n, rows[3], n_rows;
	} bad[] = {
		{ 0, 9, { 2, 1, 5 }, 3 }, { 0, 9, { 2, 2, 5 }, 3 }, { 0, 9, { 0, 3, 9 }, 3 },
		{ 0, 9, { 0, 1, 2 }, 0 }, { 0, 2, { 0, 1, 2 }, 3 }, { L, 9, { 0, 1, 2 }, 3 },
		{ 0, S + 1, { 0, 1, 2 }, 3 }, { 0, 0, { 0, 1, 2 }, 1 },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int rc = lbw_scorer_rows(&sc, bad[i].l, in, bad[i].n, bad[i].rows, bad[i].n_rows, got);
		if (rc != -EINVAL)
			fail_msg("refusal %zu: %d, want -EINVAL", i, rc);
	}
	assert_int_equal(lbw_scorer_rows(&sc, 0, NULL, 1, r1, 1, got), -EINVAL);
	assert_int_equal(lbw_scorer_rows(&sc, 0, in, 1, NULL, 1, got), -EINVAL);
	assert_int_equal(lbw_scorer_rows(&sc, 0, in, 1, r1, 1, NULL), -EINVAL);
	assert_int_equal(lbw_scorer_rows(NULL, 0, in, 1, r1, 1, got), -EINVAL);
	lbw_scorer_close(&sc);
}

/* An odd FusedKV shape: 5 layers, 2 of them storing K and V. */
static struct lbw_llama_config fusedkv_shape(int mode)
{
	return (struct lbw_llama_config){ .dim = 48, .hidden_dim = 70, .n_layers = 5, .n_heads = 6,
					  .n_kv_heads = 3, .vocab_size = 512, .seq_len = 64,
					  .kv_mode = mode, .kv_layers = 2 };
}

/* Loading path must fail with -EINVAL and a message holding want. */
static void expect_refused(const char *path, const char *want)
{
	struct lbw_llama m;
	char err[512] = "";
	assert_int_equal(lbw_llama_load(&m, path, err, sizeof(err)), -EINVAL);
	if (!strstr(err, want))
		fail_msg("%s: message '%s' lacks '%s'", path, err, want);
}

/*
 * FusedKV checkpoints (model_llama.h), lite and fused, on an odd shape: written and loaded back
 * byte for byte; every path (the plain-C reference, each kernel tier, the layer for chosen
 * rows) agrees with the fp64 reference forward, which rebuilds the reconstruction layers' K and V
 * from the format's definition; fused with a = 0, a' = 1, b = 1, b' = 0 is lite bit for bit; a
 * damaged footer or size is refused with a clear message; the worker scores one and refuses to
 * cache it.
 */
static void test_fusedkv_checkpoints(void **state)
{
	struct fixture *fx = *state;
	char dir[256], path[300], bad[320];
	static char out[4096];
	int32_t toks[64];
	text_tokens(fx, 64, toks);
	lbt_mkdtemp(dir, sizeof(dir));
	struct lbw_llama g[3];
	for (int mode = LBW_KV_LITE; mode <= LBW_KV_FUSED; mode++) {
		struct lbw_llama_config c = fusedkv_shape(mode);
		struct lbw_llama *m = &g[mode], back;
		char err[256];
		generate_ok(m, &c, 7);
		assert_int_equal(m->cfg.kv_mode, mode);
		assert_int_equal(m->cfg.kv_layers, 2);
		snprintf(path, sizeof(path), "%s/fkv%d.bin", dir, mode);
		spit(path, m->data, m->data_size);
		if (lbw_llama_load(&back, path, err, sizeof(err)) < 0)
			fail_msg("%s", err);
		assert_memory_equal(&back.cfg, &m->cfg, sizeof(m->cfg));
		assert_int_equal(back.data_size, m->data_size);
		assert_memory_equal(back.data, m->data, m->data_size);
		lbw_llama_free(&back);

		struct ref r;
		ref_load(&r, path);
		assert_int_equal(r.mode, mode);
		struct lbw_llama_state s;
		assert_int_equal(lbw_llama_state_init(&s, &m->cfg), 0);
		for (int n = 2; n <= 64; n += 31) {
			double want = ref_nll(&r, toks, n) / (n - 1);
			for (int t = (int)lbk_isa(); t >= (int)LBK_ISA_SCALAR - 1; t--) {
				double got = 0;
				if (t < (int)LBK_ISA_SCALAR)
					lbw_llama_set_reference(m, 1);
				else
					lbk_force_isa((enum lbk_isa)t);
				lbw_llama_state_reset(&s);
				assert_int_equal(lbw_llama_prompt(m, &s, toks, n, NULL, &got), 0);
				if (fabs(got / (n - 1) - want) > 1e-4)
					fail_msg("mode %d, %d tokens, %s: nll %.6f, fp64 reference %.6f",
						 mode, n, m->reference ? "reference" : lbk_isa_name(lbk_isa()),
						 got / (n - 1), want);
				lbw_llama_set_reference(m, 0);
			}
			lbk_force_isa(LBK_ISA_AVX512);
		}
		check_layer_rows(m, toks, 40, c.n_layers);
		lbw_llama_state_free(&s);
		free(r.all);
	}

	/* fused with the weights of lite's remap gives lite's logits, bit for bit, on each path */
	const struct lbw_llama *fz = &g[LBW_KV_FUSED];
	uint8_t *asl = malloc(fz->data_size);
	assert_non_null(asl);
	memcpy(asl, fz->data, fz->data_size);
	float *coef = (float *)(asl + ((const char *)fz->w.kv_coef - (const char *)fz->data));
	int64_t kv = fz->cfg.kv_dim;
	for (int64_t i = 0; i < 3; i++) {
		float *a = coef + i * 3 * kv;
		for (int64_t j = 0; j < kv / 2; j++)
			a[j] = 0, a[kv / 2 + j] = 1;
		for (int64_t j = 0; j < kv; j++)
			a[kv + j] = 1, a[2 * kv + j] = 0;
	}
	snprintf(bad, sizeof(bad), "%s/aslite.bin", dir);
	spit(bad, asl, fz->data_size);
	free(asl);
	struct lbw_llama al;
	assert_int_equal(lbw_llama_load(&al, bad, NULL, 0), 0);
	size_t lb = 24 * (size_t)g[1].cfg.vocab_size * sizeof(float);
	float *lg1 = malloc(lb), *lg2 = malloc(lb);
	int32_t t1[24], t2[24];
	assert_true(lg1 && lg2);
	for (int ref = 0; ref <= 1; ref++) {
		lbw_llama_set_reference(&g[LBW_KV_LITE], ref);
		lbw_llama_set_reference(&al, ref);
		greedy_tokens(&g[LBW_KV_LITE], 24, t1, lg1);
		greedy_tokens(&al, 24, t2, lg2);
		assert_memory_equal(lg1, lg2, lb);
		assert_memory_equal(t1, t2, sizeof(t1));
	}
	lbw_llama_set_reference(&g[LBW_KV_LITE], 0);
	lbw_llama_free(&al);
	free(lg1);
	free(lg2);

	/* damaged files: each refused with what is wrong */
	const struct lbw_llama *f = &g[LBW_KV_FUSED];
	snprintf(path, sizeof(path), "%s/fkv2.bin", dir);
	snprintf(bad, sizeof(bad), "%s/bad.bin", dir);
	uint8_t *img = malloc(f->data_size);
	assert_non_null(img);
	const struct {
		size_t at;
		uint32_t value;
		const char *want;
	} field[] = {
		{ 4, 2, "version 2" }, { 8, 3, "mode 3" }, { 12, 0, "0 storage layers" },
		{ 12, 5, "5 storage layers" },
	};
	for (size_t i = 0; i < sizeof(field) / sizeof(field[0]); i++) {
		memcpy(img, f->data, f->data_size);
		memcpy(img + f->data_size - 16 + field[i].at, &field[i].value, 4);
		spit(bad, img, f->data_size);
		expect_refused(bad, field[i].want);
	}
	/* a coefficient short, the footer kept: the section's size does not add up */
	memcpy(img, f->data, f->data_size);
	memmove(img + f->data_size - 20, img + f->data_size - 16, 16);
	spit(bad, img, f->data_size - 4);
	expect_refused(bad, "FusedKV checkpoint size");
	/* cut inside the footer: neither a FusedKV nor a legacy checkpoint */
	spit(bad, f->data, f->data_size - 4);
	expect_refused(bad, "truncated or not a llama2.c checkpoint");
	/* lite told fused: the coefficients it lacks */
	memcpy(img, g[LBW_KV_LITE].data, g[LBW_KV_LITE].data_size);
	uint32_t two = 2;
	memcpy(img + g[LBW_KV_LITE].data_size - 8, &two, 4);
	spit(bad, img, g[LBW_KV_LITE].data_size);
	expect_refused(bad, "FusedKV checkpoint size");
	free(img);

	/* The worker scores it; with a cache it scores the same and says that its hidden states
	 * are not cached (its reconstruction layers could not resume from them); reusing them for
	 * generation is refused. */
	char txt[320], plain[4096];
	snprintf(txt, sizeof(txt), "%s/t.txt", dir);
	spit(txt, "Once upon a time there was a cat.", 33);
	const char *score[] = { "score", "--model", path, "--tokenizer", TOK, "--text-file", txt,
				NULL };
	int st = run_worker(score, plain, sizeof(plain));
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	const char *at = strstr(plain, "nll_per_token");
	assert_non_null(at);
	char nll[80];
	snprintf(nll, sizeof(nll), "%.*s", (int)strcspn(at, "\n"), at);
	const char *cached[] = { "score", "--model", path, "--tokenizer", TOK, "--text-file", txt,
				 "--private-cache", "16M", NULL };
	st = run_worker(cached, out, sizeof(out));
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	assert_non_null(strstr(out, "hidden states are not cached"));
	assert_non_null(strstr(out, "cache hit_layer -1"));
	assert_non_null(strstr(out, nll)); /* the same figure */
	const char *near[] = { "generate", "--model", path, "--tokenizer", TOK, "--prompt", "Once",
			       "--private-cache", "16M", "--gen-recompute", "on", NULL };
	st = run_worker(near, out, sizeof(out));
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) != 0);
	assert_non_null(strstr(out, "--gen-recompute reuses hidden states"));

	lbw_llama_free(&g[LBW_KV_LITE]);
	lbw_llama_free(&g[LBW_KV_FUSED]);
	lbu_rmtree(dir);
}

int main(void)
{
	const char *need[] = { MODEL, TOK, GREEDY, VAL };
	for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++)
		if (access(need[i], R_OK) != 0)
			LBT_SKIP("data file %s is absent", need[i]);
	snprintf(worker_path, sizeof(worker_path), "%s", LB_WORKER_PATH);

	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_config_of_stories260k),
		cmocka_unit_test(test_greedy_matches_llama2c_library),
		cmocka_unit_test(test_cli_generate_greedy_golden),
		cmocka_unit_test(test_cli_generate_sampling),
		cmocka_unit_test(test_cli_generate_each_tier),
		cmocka_unit_test(test_score_matches_fp64_reference),
		cmocka_unit_test(test_tokenizer_round_trip),
		cmocka_unit_test(test_bad_checkpoints),
		cmocka_unit_test(test_bad_tokenizers),
		cmocka_unit_test(test_cli_errors),
		cmocka_unit_test(test_generated_deterministic),
		cmocka_unit_test(test_generated_weights),
		cmocka_unit_test(test_generated_bad_shapes),
		cmocka_unit_test(test_llama_110m),
		cmocka_unit_test(test_cli_llama_110m_generate),
		cmocka_unit_test(test_cli_llama_110m_score),
		cmocka_unit_test(test_cli_llama_110m_serve),
		cmocka_unit_test(test_layer_rows),
		cmocka_unit_test(test_layer_rows_llama_110m),
		cmocka_unit_test(test_scorer_rows),
		cmocka_unit_test(test_fusedkv_checkpoints),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
