/*
 * layerbank-bench gen-near: generation after the prompts of the design's request stream, in one
 * process with an in-process bank, three times: without a cache (the reference text, greedy),
 * with exact prefixes only, and with --gen-recompute (near prompts prefilled by partial reuse).
 * The two cached runs are forced onto the reference text: their top-1 agreement and NLL against
 * it say what the approximation costs, their time to the first token what it gains.
 */
#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "cache.h"
#include "gen.h"
#include "model_llama.h"
#include "scorer.h"
#include "tokenizer.h"
#include "workload.h"

#define MAX_PROMPT 256

struct opts {
	int llama, json;
	uint32_t requests, gen;
	uint64_t seed;
	const char *recompute;
	char data[512];
};

/* One mode's run over the stream. */
struct mode_run {
	const char *name;
	double *ttft_ms;         /* [requests] */
	double ttft_p50, ttft_mean;
	double nll, top1;        /* of the reference text under this run (forced) */
	uint32_t near_runs;      /* requests prefilled by partial reuse */
	double near_reused;      /* their mean share of the prefill reused */
	uint32_t tokens;         /* continuation tokens scored */
};

struct ref {
	int32_t *out;  /* [requests][gen] the reference continuations */
	int32_t *got;  /* [requests] */
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: layerbank-bench gen-near [--model stories260k|llama-110m] [--requests N]\n"
		"         [--gen N] [--recompute R|on] [--seed N] [--data DIR] [--json]\n"
		"Generation after each prompt of the design's stream (30%% exact repeats, 45%%\n"
		"near-duplicates, 25%% fresh, Zipf 1.0), in one process with an in-process bank:\n"
		"without a cache (the reference), with exact prefixes only, and with\n"
		"--gen-recompute R (default on: %.2g). Prints the time to the first token of each,\n"
		"and the cached runs' top-1 agreement and NLL change on the reference continuations.\n"
		"Defaults: stories260k (real weights), 400 requests (llama-110m, generated weights:\n"
		"100, speed only), 16 tokens, seed 1.\n",
		LBW_GEN_RECOMPUTE_DEFAULT);
}

static int parse(int argc, char **argv, struct opts *o)
{
	memset(o, 0, sizeof(*o));
	o->gen = 16;
	o->seed = 1;
	o->recompute = "on";
	const char *env = getenv("LAYERBANK_DATA");
	snprintf(o->data, sizeof(o->data), "%s", env && *env ? env : LB_DATA_DIR);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		char *end = NULL;
		if (!strcmp(a, "--json")) {
			o->json = 1;
			continue;
		}
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			usage(stdout);
			exit(0);
		}
		if (!v) {
			fprintf(stderr, "layerbank-bench gen-near: %s needs a value (see --help)\n", a);
			return -1;
		}
		i++;
		unsigned long long n = strtoull(v, &end, 10);
		bool num = *v && !*end;
		if (!strcmp(a, "--model") && (!strcmp(v, "stories260k") || !strcmp(v, "llama-110m")))
			o->llama = !strcmp(v, "llama-110m");
		else if (!strcmp(a, "--requests") && num && n >= 1 && n <= 100000)
			o->requests = (uint32_t)n;
		else if (!strcmp(a, "--gen") && num && n >= 1 && n <= 256)
			o->gen = (uint32_t)n;
		else if (!strcmp(a, "--seed") && num)
			o->seed = n;
		else if (!strcmp(a, "--recompute"))
			o->recompute = v; /* checked by lbw_cache_open */
		else if (!strcmp(a, "--data"))
			snprintf(o->data, sizeof(o->data), "%s", v);
		else {
			fprintf(stderr, "layerbank-bench gen-near: bad option %s %s (see --help)\n", a, v);
			return -1;
		}
	}
	if (!o->requests)
		o->requests = o->llama ? 100 : 400;
	return 0;
}

/* The greedy reference: argmax, and the NLL of each pick (nll[i], i < cap), as a forced run
 * scores the tokens it is fed. */
struct greedy {
	int32_t vocab, cap, calls;
	double *nll;
};

static int32_t greedy_next(void *ctx, const float *logits)
{
	struct greedy *g = ctx;
	int32_t t = lbw_llama_argmax(logits, g->vocab);
	if (g->calls < g->cap)
		g->nll[g->calls] = lbw_llama_nll(logits, g->vocab, t);
	g->calls++;
	return t;
}

/* Prompts: each request's text, BOS first, at most MAX_PROMPT tokens. */
static int32_t *prompts(const struct lbw_tokenizer *t, const struct lbw_workload *w, int32_t *len)
{
	int32_t *p = malloc((size_t)w->n * MAX_PROMPT * sizeof(int32_t)), tmp[4096];
	if (!p)
		return NULL;
	for (uint32_t i = 0; i < w->n; i++) {
		size_t cap = (size_t)t->max_token_length * MAX_PROMPT;
		char *s = strndup(w->r[i].text, cap < 4000 ? cap : 4000);
		int n = s ? lbw_tokenizer_encode(t, s, 1, 0, tmp) : -ENOMEM;
		free(s);
		if (n < 2) {
			free(p);
			return NULL;
		}
		len[i] = n < MAX_PROMPT ? n : MAX_PROMPT;
		memcpy(p + (size_t)i * MAX_PROMPT, tmp, (size_t)len[i] * sizeof(int32_t));
	}
	return p;
}

static void summarise(struct mode_run *m, uint32_t n)
{
	double sum = 0;
	for (uint32_t i = 0; i < n; i++)
		sum += m->ttft_ms[i];
	m->ttft_mean = sum / n;
	m->ttft_p50 = lbb_median(m->ttft_ms, n); /* sorts: after the sum */
	if (m->near_runs)
		m->near_reused /= m->near_runs;
}

/* One mode over the stream: the reference (wc NULL: plain, greedy into ref) or a cached run
 * forced onto it. */
static int run_mode(struct lbw_scorer *sc, struct lbw_cache *wc, const int32_t *p,
		    const int32_t *len, uint32_t n, uint32_t gen, struct ref *ref,
		    struct mode_run *m)
{
	struct lbw_cache plain = { 0 };
	int32_t *out = malloc((size_t)gen * sizeof(int32_t));
	double *nll = malloc((size_t)gen * sizeof(double));
	if (!out || !nll) {
		free(out);
		free(nll);
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < n; i++) {
		const int32_t *pr = p + (size_t)i * MAX_PROMPT;
		int32_t *want = ref->out + (size_t)i * gen;
		struct lbw_gen_result r;
		int got;
		if (!wc) {
			struct greedy g = { sc->vocab, (int32_t)gen, 0, nll };
			got = lbw_generate(sc, &plain, pr, len[i], (int32_t)gen, greedy_next, &g, want,
					   &r);
			ref->got[i] = got;
			/* the tokens generated, not the stop (BOS) a forced run is never asked for */
			for (int32_t k = 0; k < got; k++)
				m->nll += nll[k];
		} else if (ref->got[i] > 0) {
			struct lbw_forced x = { .want = want, .n = ref->got[i], .vocab = sc->vocab };
			got = lbw_generate(sc, wc, pr, len[i], ref->got[i], lbw_forced_next, &x, out,
					   &r);
			m->nll += x.nll;
			m->top1 += x.agree;
			m->tokens += (uint32_t)x.fed;
		} else {
			got = lbw_generate(sc, wc, pr, len[i], 1, NULL, NULL, out, &r);
		}
		if (got < 0) {
			free(out);
			free(nll);
			return got;
		}
		m->ttft_ms[i] = r.ttft_us / 1e3;
		if (r.near_aligned) {
			m->near_runs++;
			m->near_reused += r.near_reused;
		}
	}
	free(out);
	free(nll);
	return 0;
}

static int cached_run(struct lbw_scorer *sc, const struct opts *o, const char *recompute,
		      const int32_t *p, const int32_t *len, uint32_t n, struct ref *ref,
		      struct mode_run *m)
{
	struct lbw_cache wc;
	struct lbw_cache_opts co = { .private_bytes = o->llama ? 1ull << 30 : 64ull << 20,
				     .gen_recompute = recompute };
	if (lbw_cache_open(&wc, &co, sc, "layerbank-bench gen-near") < 0)
		return -EINVAL;
	int rc = run_mode(sc, &wc, p, len, n, o->gen, ref, m);
	lbw_cache_close(&wc);
	return rc;
}

static void print(const struct opts *o, const struct lbw_workload *w, struct mode_run *m,
		  double nll_ref)
{
	printf("gen-near: %u requests (%u fresh, %u exact, %u near; zipf 1.00, seed %llu), model "
	       "%s, %u tokens each, in-process bank\n", w->n, w->count[LBW_REQ_FRESH],
	       w->count[LBW_REQ_EXACT], w->count[LBW_REQ_NEAR], (unsigned long long)o->seed,
	       o->llama ? "llama-110m (generated weights)" : "stories260K", o->gen);
	printf("  %-14s %10s %10s %8s %10s %12s %9s\n", "mode", "ttft p50", "mean ms", "vs plain",
	       "near runs", "nll change", "top-1");
	for (int i = 0; i < 3; i++) {
		double dn = i ? (m[i].nll - nll_ref) / nll_ref : 0;
		printf("  %-14s %10.3f %10.3f %7.2fx %5u %3.0f%% %+11.3f%% %8.2f%%\n", m[i].name,
		       m[i].ttft_p50, m[i].ttft_mean, m[0].ttft_mean / m[i].ttft_mean, m[i].near_runs,
		       100 * m[i].near_reused, 100 * dn,
		       i ? 100 * m[i].top1 / (m[i].tokens ? m[i].tokens : 1) : 100.0);
	}
	if (o->llama)
		printf("  (generated weights: the NLL and top-1 figures say nothing of fidelity)\n");
}

static void print_json(const struct opts *o, struct mode_run *m, double nll_ref)
{
	json_object *root = json_object_new_object(), *modes = json_object_new_object();
	json_object_object_add(root, "model",
			       json_object_new_string(o->llama ? "llama-110m" : "stories260k"));
	json_object_object_add(root, "gen_recompute", json_object_new_string(o->recompute));
	for (int i = 0; i < 3; i++) {
		json_object *x = json_object_new_object();
		json_object_object_add(x, "ttft_p50_ms", lbb_json_num(m[i].ttft_p50));
		json_object_object_add(x, "ttft_mean_ms", lbb_json_num(m[i].ttft_mean));
		json_object_object_add(x, "speedup_vs_plain",
				       lbb_json_num(m[0].ttft_mean / m[i].ttft_mean));
		json_object_object_add(x, "near_runs", json_object_new_int64(m[i].near_runs));
		json_object_object_add(x, "near_reused", lbb_json_num(m[i].near_reused));
		json_object_object_add(x, "nll_rel_change",
				       lbb_json_num(i ? (m[i].nll - nll_ref) / nll_ref : 0));
		json_object_object_add(x, "top1_agreement",
				       lbb_json_num(i ? m[i].top1 / m[i].tokens : 1));
		json_object_object_add(modes, m[i].name, x);
	}
	json_object_object_add(root, "modes", modes);
	printf("%s\n", json_object_to_json_string_ext(root, JSON_C_TO_STRING_PRETTY));
	json_object_put(root);
}

int bench_gen_near_main(int argc, char **argv)
{
	struct opts o;
	if (parse(argc, argv, &o) < 0)
		return 2;
	char err[256], path[600];
	struct lbw_scorer sc;
	struct lbw_tokenizer t;
	struct lbw_paragraphs para;
	struct lbw_workload w;
	struct lbw_workload_cfg wcfg = lbw_workload_defaults();
	wcfg.n_requests = o.requests;
	wcfg.seed = o.seed;
	snprintf(path, sizeof(path), "%s/stories260K.bin", o.data);
	int rc = o.llama ? lbw_scorer_open_llama_110m(&sc, 1, err, sizeof(err))
			 : lbw_scorer_open_llama(&sc, path, err, sizeof(err));
	if (rc < 0)
		lbb_die("gen-near", err, rc);
	snprintf(path, sizeof(path), "%s/tok512.bin", o.data);
	if ((rc = lbw_tokenizer_load(&t, path, 512, err, sizeof(err))) < 0)
		lbb_die("gen-near", err, rc);
	snprintf(path, sizeof(path), "%s/tinystories_val.txt", o.data);
	if ((rc = lbw_paragraphs_load(path, 100, 600, &para, err, sizeof(err))) < 0 ||
	    (rc = lbw_workload_make(&para, &wcfg, &w, err, sizeof(err))) < 0)
		lbb_die("gen-near", err, rc);
	int32_t *len = calloc(w.n, sizeof(*len)), *p = len ? prompts(&t, &w, len) : NULL;
	struct ref ref = { calloc((size_t)w.n * o.gen, sizeof(int32_t)),
			   calloc(w.n, sizeof(int32_t)) };
	struct mode_run m[3] = { { .name = "nocache" }, { .name = "exact" }, { .name = "near" } };
	for (int i = 0; i < 3; i++)
		m[i].ttft_ms = calloc(w.n, sizeof(double));
	if (!p || !ref.out || !ref.got || !m[0].ttft_ms || !m[1].ttft_ms || !m[2].ttft_ms)
		lbb_die("gen-near", "out of memory or an empty prompt", -ENOMEM);
	rc = run_mode(&sc, NULL, p, len, w.n, o.gen, &ref, &m[0]);
	if (rc == 0)
		rc = cached_run(&sc, &o, "off", p, len, w.n, &ref, &m[1]);
	if (rc == 0)
		rc = cached_run(&sc, &o, o.recompute, p, len, w.n, &ref, &m[2]);
	if (rc < 0)
		lbb_die("gen-near", "a generation failed", rc);
	for (int i = 0; i < 3; i++)
		summarise(&m[i], w.n);
	if (o.json)
		print_json(&o, m, m[0].nll);
	else
		print(&o, &w, m, m[0].nll);
	for (int i = 0; i < 3; i++)
		free(m[i].ttft_ms);
	free(ref.out);
	free(ref.got);
	free(p);
	free(len);
	lbw_workload_free(&w);
	lbw_paragraphs_free(&para);
	lbw_tokenizer_free(&t);
	lbw_scorer_close(&sc);
	return 0;
}
