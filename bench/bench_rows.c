/* layerbank-bench rows: one layer computed for chosen positions only (lbw_scorer_rows, the
 * worker's lb_rows_fn) against the whole layer (lbw_scorer_layer) in the same run, on bert-base
 * at 128 tokens and llama-110m at 256, for 10, 25, 50 and 100% of the positions. */
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "kernels.h"
#include "model_bert.h"
#include "model_llama.h"
#include "scorer.h"

#define N_SHARES 4
static const double shares[N_SHARES] = { 0.10, 0.25, 0.50, 1.00 };

/* The models, as the worker opens them, and the input length each is timed at. */
struct rows_model {
	const char *name;
	int32_t tokens;
	double layer_ms;            /* median of the whole layer */
	double ms[N_SHARES];        /* median of the rows call at each share */
	uint32_t n_rows[N_SHARES];
	double flop_share[N_SHARES]; /* the rows call's FLOPs / the whole layer's (the model below) */
};

static int open_model(struct lbw_scorer *sc, const char *name, char *err, size_t errlen)
{
	if (strcmp(name, "bert-base") == 0)
		return lbw_scorer_open_bert(sc, 512, 1, err, errlen);
	return lbw_scorer_open_llama_110m(sc, 1, err, errlen);
}

/* k of n positions spread evenly, the first among them: i n / k for i < k. */
static void spread(uint32_t *rows, uint32_t k, uint32_t n)
{
	for (uint32_t i = 0; i < k; i++)
		rows[i] = (uint32_t)((uint64_t)i * n / k);
}

/*
 * FLOPs of the rows call (rows[0..k) of n): the K and V projections of every position the
 * attention reads (a causal model's up to the last row), then per row Q and the output
 * projection, the FFN and the attention's scores and P.V over the keys the row sees (2 x 2 x
 * keys x width). Norms, RoPE, softmax and activations are left out (a few percent).
 */
static double rows_flops(const struct lbw_scorer *sc, const uint32_t *rows, uint32_t k,
			 uint32_t n)
{
	double d = sc->hidden, kv, ffn;
	int causal;
	if (sc->llama) {
		const struct lbw_llama_config *c = &sc->llama->cfg;
		kv = 2.0 * 2.0 * d * c->kv_dim;
		ffn = 3.0 * 2.0 * d * c->hidden_dim;
		causal = 1;
	} else {
		kv = 2.0 * 2.0 * d * d;
		ffn = 2.0 * 2.0 * d * sc->bert->cfg.ffn;
		causal = sc->bert->cfg.style == LBW_STYLE_GPT2;
	}
	double keys_all = causal ? (double)rows[k - 1] + 1 : n, f = keys_all * kv;
	for (uint32_t i = 0; i < k; i++)
		f += 2.0 * 2.0 * d * d + ffn + 4.0 * (causal ? rows[i] + 1.0 : n) * d;
	return f;
}

/* Seconds of one call: the whole layer (rows NULL) or the rows call. */
static double time_call(struct lbw_scorer *sc, const float *in, float *out, uint32_t n,
			const uint32_t *rows, uint32_t k)
{
	double t0 = lbb_now_s();
	int rc = rows ? lbw_scorer_rows(sc, 0, in, n, rows, k, out) : lbw_scorer_layer(sc, 0, in, out);
	if (rc < 0)
		lbb_die("rows", rows ? "lbw_scorer_rows" : "lbw_scorer_layer", -rc);
	return lbb_now_s() - t0;
}

/* Layer 0 of m on a made-up input of m->tokens, the whole layer and each share interleaved,
 * reps times after a warm-up of each; medians into m. */
static void run_model(struct rows_model *m, int reps)
{
	struct lbw_scorer sc;
	char err[256];
	if (open_model(&sc, m->name, err, sizeof(err)) < 0) {
		fprintf(stderr, "layerbank-bench rows: %s: %s\n", m->name, err);
		exit(1);
	}
	const uint32_t n = (uint32_t)m->tokens;
	int32_t *tok = malloc(n * sizeof(int32_t));
	uint32_t *rows = malloc(N_SHARES * n * sizeof(uint32_t));
	float *in = malloc((size_t)n * (size_t)sc.hidden * sizeof(float));
	float *out = malloc((size_t)n * (size_t)sc.hidden * sizeof(float));
	double *t = malloc((size_t)reps * (N_SHARES + 1) * sizeof(double));
	if (!tok || !rows || !in || !out || !t)
		lbb_die("rows", "malloc", ENOMEM);
	for (uint32_t i = 0; i < n; i++)
		tok[i] = (int32_t)((i * 37 + 11) % 512);
	lbw_scorer_embed(&sc, tok, (int32_t)n, in);
	for (int s = 0; s < N_SHARES; s++) {
		uint32_t k = (uint32_t)(shares[s] * n + 0.5);
		m->n_rows[s] = k = k < 1 ? 1 : k;
		spread(rows + (size_t)s * n, k, n);
	}
	uint32_t *every = malloc(n * sizeof(uint32_t));
	if (!every)
		lbb_die("rows", "malloc", ENOMEM);
	spread(every, n, n);
	double whole = rows_flops(&sc, every, n, n);
	for (int s = 0; s < N_SHARES; s++)
		m->flop_share[s] = rows_flops(&sc, rows + (size_t)s * n, m->n_rows[s], n) / whole;
	for (int r = -1; r < reps; r++) { /* r = -1: the warm-up */
		double dt = time_call(&sc, in, out, n, NULL, 0);
		if (r >= 0)
			t[r] = dt;
		for (int s = 0; s < N_SHARES; s++) {
			dt = time_call(&sc, in, out, n, rows + (size_t)s * n, m->n_rows[s]);
			if (r >= 0)
				t[(size_t)(s + 1) * (size_t)reps + (size_t)r] = dt;
		}
	}
	m->layer_ms = lbb_median(t, (size_t)reps) * 1e3;
	for (int s = 0; s < N_SHARES; s++)
		m->ms[s] = lbb_median(t + (size_t)(s + 1) * (size_t)reps, (size_t)reps) * 1e3;
	free(every);
	free(tok);
	free(rows);
	free(in);
	free(out);
	free(t);
	lbw_scorer_close(&sc);
}

/* The 1-minute load average, -1 when /proc/loadavg cannot be read. */
static double load_1min(void)
{
	double l = -1;
	FILE *f = fopen("/proc/loadavg", "r");
	if (f) {
		if (fscanf(f, "%lf", &l) != 1)
			l = -1;
		fclose(f);
	}
	return l;
}

static void print_json(const struct rows_model *m, int n_models, int reps, double load0,
		       double load1)
{
	json_object *o = json_object_new_object(), *a = json_object_new_array();
	json_object_object_add(o, "isa", json_object_new_string(lbk_isa_name(lbk_isa())));
	json_object_object_add(o, "reps", json_object_new_int(reps));
	json_object_object_add(o, "layer", json_object_new_int(0));
	json_object_object_add(o, "load_before", lbb_json_num(load0));
	json_object_object_add(o, "load_after", lbb_json_num(load1));
	for (int i = 0; i < n_models; i++) {
		json_object *r = json_object_new_object(), *sa = json_object_new_array();
		json_object_object_add(r, "model", json_object_new_string(m[i].name));
		json_object_object_add(r, "tokens", json_object_new_int(m[i].tokens));
		json_object_object_add(r, "layer_ms", lbb_json_num(m[i].layer_ms));
		for (int s = 0; s < N_SHARES; s++) {
			json_object *e = json_object_new_object();
			json_object_object_add(e, "share", json_object_new_double(shares[s]));
			json_object_object_add(e, "rows", json_object_new_int((int)m[i].n_rows[s]));
			json_object_object_add(e, "ms", lbb_json_num(m[i].ms[s]));
			json_object_object_add(e, "ratio", lbb_json_num(m[i].ms[s] / m[i].layer_ms));
			json_object_object_add(e, "flop_share", lbb_json_num(m[i].flop_share[s]));
			json_object_array_add(sa, e);
		}
		json_object_object_add(r, "rows", sa);
		json_object_array_add(a, r);
	}
	json_object_object_add(o, "models", a);
	printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY));
	json_object_put(o);
}

static void print_table(const struct rows_model *m, int n_models, int reps, double load0,
			double load1)
{
	printf("one layer for chosen positions (lbw_scorer_rows) against the whole layer "
	       "(lbw_scorer_layer), layer 0, %s, medians of %d interleaved runs; load %.2f -> %.2f\n",
	       lbk_isa_name(lbk_isa()), reps, load0, load1);
	printf("%-11s %6s %6s %6s %10s %10s %11s\n", "model", "tokens", "share", "rows", "ms",
	       "vs layer", "FLOP share");
	for (int i = 0; i < n_models; i++) {
		printf("%-11s %6d %6s %6s %10.2f %10s %11s\n", m[i].name, m[i].tokens, "layer", "",
		       m[i].layer_ms, "1.00", "1.00");
		for (int s = 0; s < N_SHARES; s++)
			printf("%-11s %6d %5.0f%% %6u %10.2f %10.2f %11.2f\n", m[i].name, m[i].tokens,
			       shares[s] * 100, m[i].n_rows[s], m[i].ms[s], m[i].ms[s] / m[i].layer_ms,
			       m[i].flop_share[s]);
	}
}

int bench_rows_main(int argc, char **argv)
{
	int json = 0, reps = 15, want_bert = 1, want_llama = 1;
	for (int i = 1; i < argc; i++) {
		char *end;
		if (!strcmp(argv[i], "--json")) {
			json = 1;
		} else if (!strcmp(argv[i], "--reps") && i + 1 < argc) {
			long v = strtol(argv[++i], &end, 10);
			if (*end || v < 1 || v > 10000) {
				fprintf(stderr, "layerbank-bench rows: bad --reps '%s' (1..10000)\n", argv[i]);
				return 2;
			}
			reps = (int)v;
		} else if (!strcmp(argv[i], "--only") && i + 1 < argc) {
			i++;
			want_bert = !strcmp(argv[i], "bert-base");
			want_llama = !strcmp(argv[i], "llama-110m");
			if (!want_bert && !want_llama) {
				fprintf(stderr, "layerbank-bench rows: bad --only '%s' (bert-base or "
						"llama-110m)\n", argv[i]);
				return 2;
			}
		} else {
			fprintf(stderr, "usage: layerbank-bench rows [--json] [--reps N] "
					"[--only bert-base|llama-110m]\n");
			return 2;
		}
	}
	struct rows_model m[2];
	int n_models = 0;
	if (want_bert)
		m[n_models++] = (struct rows_model){ .name = "bert-base", .tokens = 128 };
	if (want_llama)
		m[n_models++] = (struct rows_model){ .name = LBW_LLAMA_110M_NAME, .tokens = 256 };
	double load0 = load_1min();
	for (int i = 0; i < n_models; i++)
		run_model(&m[i], reps);
	double load1 = load_1min();
	if (json)
		print_json(m, n_models, reps, load0, load1);
	else
		print_table(m, n_models, reps, load0, load1);
	return 0;
}
