/*
 * layerbank-bench fusedkv: stories260K against its FusedKV checkpoints, each figure of one run.
 * Five models: the original, the control (the plain model uptrained like the others), training-
 * free Lite (the original's weights, reconstruction by remap: lbw_llama_lite, written to the
 * benchmark's folder), uptrained Lite and uptrained FusedKV (models/, tools/train_fusedkv.py).
 * For each: the held-out NLL (the corpus's evaluation paragraphs, which no training run saw,
 * scored as `layerbank-worker score` scores a text), the K and V bytes a cached token takes,
 * decode tokens/s at the same positions (rounds interleaved across the models), and the chat
 * stream's reused token share through a shared fleet at fixed bank budgets.
 */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "io.h"
#include "cache.h"
#include "model_llama.h"
#include "scorer.h"
#include "serve.h"
#include "size.h"
#include "tokenizer.h"
#include "workload.h"

#define NAME "layerbank-bench fusedkv"
#define N_MODELS 5
#define MAX_BUDGETS 8
#define MAX_ROUNDS 64

struct opts {
	char data[512], models[512];
	uint32_t paragraphs;  /* held-out paragraphs scored */
	uint32_t sequences;   /* decode: sequences of the context's length, a round */
	uint32_t rounds;      /* decode rounds */
	int workers;
	struct lbw_chat_cfg chat;
	uint64_t budget[MAX_BUDGETS]; /* [0]: the figure's; the rest: the sweep */
	uint32_t n_budgets;
	int json, quiet;
};

struct model {
	const char *name;
	char path[600];
	struct lbw_scorer sc;
	int32_t kv_layers, n_layers;
	double nll, nll_sum;   /* per predicted token; summed */
	uint64_t predicted;
	uint32_t scored, refused;
	double decode_s[MAX_ROUNDS];
	double decode_tok_s;   /* the median round's */
	double decode_ratio;   /* the median of the rounds' ratios to the original's */
	struct lbb_stream_figs stream[MAX_BUDGETS];
};

static uint64_t kv_bytes(const struct model *m)
{
	return (uint64_t)m->kv_layers * 2 * (uint64_t)m->sc.kv_dim * sizeof(float);
}

/* ---- the models ---- */

/* The five files, the training-free Lite written into dir. @return 0, or -1 after a message. */
static int make_models(const struct opts *o, const char *dir, struct model *m)
{
	static const char *const names[N_MODELS] = { "original", "control", "lite_free", "lite",
						     "fused" };
	char err[256];
	for (int i = 0; i < N_MODELS; i++)
		m[i].name = names[i];
	snprintf(m[0].path, sizeof(m[0].path), "%s/stories260K.bin", o->data);
	snprintf(m[1].path, sizeof(m[1].path), "%s/stories260K-control.bin", o->models);
	snprintf(m[2].path, sizeof(m[2].path), "%s/stories260K-lite-free.bin", dir);
	snprintf(m[3].path, sizeof(m[3].path), "%s/stories260K-lite.bin", o->models);
	snprintf(m[4].path, sizeof(m[4].path), "%s/stories260K-fused.bin", o->models);

	struct lbw_llama plain, lite;
	if (lbw_llama_load(&plain, m[0].path, err, sizeof(err)) < 0) {
		fprintf(stderr, NAME ": %s: %s\n", m[0].path, err);
		return -1;
	}
	int rc = lbw_llama_lite(&lite, &plain, plain.cfg.n_layers / 2, err, sizeof(err));
	lbw_llama_free(&plain);
	if (rc == 0) {
		int fd = open(m[2].path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		rc = fd < 0 ? -errno : lbu_write_all(fd, lite.data, lite.data_size);
		if (fd >= 0 && close(fd) < 0 && rc == 0)
			rc = -errno;
		if (rc < 0)
			snprintf(err, sizeof(err), "%.180s: %s", m[2].path, strerror(-rc));
		lbw_llama_free(&lite);
	}
	if (rc < 0) {
		fprintf(stderr, NAME ": training-free Lite: %s\n", err);
		return -1;
	}
	for (int i = 0; i < N_MODELS; i++) {
		if (lbw_scorer_open_llama(&m[i].sc, m[i].path, err, sizeof(err)) < 0) {
			fprintf(stderr, NAME ": %s: %s%s\n", m[i].path, err,
				i == 1 || i >= 3 ? " (--models: the folder of the committed "
						   "checkpoints)" : "");
			return -1;
		}
		m[i].n_layers = m[i].sc.llama->cfg.n_layers;
		m[i].kv_layers = m[i].sc.llama->cfg.kv_layers;
	}
	return 0;
}

/* ---- held-out NLL ---- */

/* Each held-out paragraph scored as `layerbank-worker score` does, cut at the context as serve
 * cuts it (tools/train_fusedkv.py --eval scores the same). */
static int heldout(const struct opts *o, struct model *m, const struct lbw_paragraphs *p,
		   const struct lbw_tokenizer *t)
{
	struct lbw_cache none;
	struct lbw_cache_opts plain = { 0 };
	char err[256];
	if (lbw_cache_open(&none, &plain, &m->sc, NAME) < 0)
		return -1;
	for (uint32_t i = 0; i < p->n && i < o->paragraphs; i++) {
		struct lbw_score r;
		int rc = lbw_score_text(&m->sc, t, &none, p->p[i], m->sc.max_seq, 1, &r, NULL, err,
					sizeof(err));
		if (rc == -EINVAL) { /* no text to score */
			m->refused++;
			continue;
		}
		if (rc < 0) {
			fprintf(stderr, NAME ": %s: paragraph %u: %s\n", m->name, i, err);
			lbw_cache_close(&none);
			return -1;
		}
		m->nll_sum += r.nll;
		m->predicted += (uint64_t)r.predicted;
		m->scored++;
	}
	m->nll = m->predicted ? m->nll_sum / (double)m->predicted : NAN;
	lbw_cache_close(&none);
	return 0;
}

/* ---- decode speed ---- */

/* The decode tokens: held-out paragraphs' tokens one after another, cut into sequences of the
 * context's length. @return [n * seq] tokens, malloc'd; NULL after a message. */
static int32_t *decode_tokens(const struct lbw_paragraphs *p, const struct lbw_tokenizer *t,
			      uint32_t n, int32_t seq)
{
	size_t want = (size_t)n * (size_t)seq, have = 0;
	int32_t *out = malloc(want * sizeof(int32_t));
	for (uint32_t i = 0; out && have < want && i < p->n; i++) {
		int32_t *buf = malloc((strlen(p->p[i]) + 3) * sizeof(int32_t));
		int k = buf ? lbw_tokenizer_encode(t, p->p[i], 1, 0, buf) : -ENOMEM;
		for (int j = 0; j < k && have < want; j++)
			out[have++] = buf[j];
		free(buf);
	}
	if (out && have < want) {
		fprintf(stderr, NAME ": the held-out paragraphs hold %zu tokens, not %zu\n", have,
			want);
		free(out);
		return NULL;
	}
	return out;
}

/* One round of m: every sequence fed token by token (lbw_llama_forward, the decode step
 * generation takes). @return seconds. */
static double decode_round(struct model *m, const int32_t *tok, uint32_t n, int32_t seq)
{
	double t0 = lbb_now_s();
	for (uint32_t s = 0; s < n; s++) {
		lbw_llama_state_reset(m->sc.state);
		for (int32_t pos = 0; pos < seq; pos++)
			(void)lbw_llama_forward(m->sc.llama, m->sc.state, tok[(size_t)s * seq + pos],
						pos);
	}
	return lbb_now_s() - t0;
}

static double median(double *v, size_t n)
{
	qsort(v, n, sizeof(double), lbb_cmp_double);
	return lbb_pct(v, n, 0.5);
}

/* Rounds of every model in turn (the order rotated each round, one warm-up round first); each
 * model's median rate and the median of its per-round ratios to the original. */
static void decode_speed(const struct opts *o, struct model *m, const int32_t *tok, int32_t seq)
{
	double steps = (double)o->sequences * seq, r[MAX_ROUNDS];
	for (int i = 0; i < N_MODELS; i++)
		decode_round(&m[i], tok, 1, seq);
	for (uint32_t k = 0; k < o->rounds; k++)
		for (int j = 0; j < N_MODELS; j++) {
			struct model *x = &m[(j + (int)k) % N_MODELS];
			x->decode_s[k] = decode_round(x, tok, o->sequences, seq);
		}
	for (int i = 0; i < N_MODELS; i++) {
		for (uint32_t k = 0; k < o->rounds; k++)
			r[k] = m[0].decode_s[k] / m[i].decode_s[k];
		m[i].decode_ratio = median(r, o->rounds);
		for (uint32_t k = 0; k < o->rounds; k++)
			r[k] = steps / m[i].decode_s[k];
		m[i].decode_tok_s = median(r, o->rounds);
	}
}

/* ---- the chat stream ---- */

static int streams(const struct opts *o, struct model *m, const struct lbw_chat *c)
{
	for (uint32_t b = 0; b < o->n_budgets; b++)
		for (int i = 0; i < N_MODELS; i++) {
			struct lbb_stream_cfg cfg = { .model = m[i].path, .data = o->data,
						      .workers = o->workers,
						      .budget = o->budget[b],
						      .seq_len = (uint32_t)m[i].sc.max_seq,
						      .quiet = 1 };
			if (!o->quiet)
				fprintf(stderr, NAME ": chat stream, %s, bank of %llu MiB\n",
					m[i].name, (unsigned long long)(o->budget[b] >> 20));
			int rc = lbb_prefix_stream(&cfg, c, LBB_SHARED, &m[i].stream[b]);
			if (rc < 0)
				return rc;
			if (m[i].stream[b].errors || m[i].stream[b].cache_lost)
				fprintf(stderr, NAME ": %s: %u errors, %u requests lost the "
						"cache\n", m[i].name, m[i].stream[b].errors,
					m[i].stream[b].cache_lost);
		}
	return 0;
}

/* ---- reporting ---- */

static json_object *model_json(const struct opts *o, const struct model *m,
			       const struct model *base, const struct model *control)
{
	json_object *j = json_object_new_object(), *by = json_object_new_object();
	json_object_object_add(j, "name", json_object_new_string(m->name));
	json_object_object_add(j, "kv_layers", json_object_new_int(m->kv_layers));
	json_object_object_add(j, "n_layers", json_object_new_int(m->n_layers));
	json_object_object_add(j, "nll_heldout", lbb_json_num(m->nll));
	json_object_object_add(j, "nll_vs_control", lbb_json_num(m->nll / control->nll - 1));
	json_object_object_add(j, "predicted_tokens", json_object_new_int64((int64_t)m->predicted));
	json_object_object_add(j, "kv_bytes_per_token", json_object_new_int64((int64_t)kv_bytes(m)));
	json_object_object_add(j, "kv_bytes_ratio",
			       lbb_json_num((double)kv_bytes(m) / (double)kv_bytes(base)));
	json_object_object_add(j, "decode_tok_s", lbb_json_num(m->decode_tok_s));
	json_object_object_add(j, "decode_ratio", lbb_json_num(m->decode_ratio));
	json_object_object_add(j, "reused_token_share", lbb_json_num(m->stream[0].reused_share));
	json_object_object_add(j, "reusable_token_share",
			       lbb_json_num(m->stream[0].reusable_share));
	for (uint32_t b = 0; b < o->n_budgets; b++) {
		char key[32];
		snprintf(key, sizeof(key), "%llu", (unsigned long long)o->budget[b]);
		json_object_object_add(by, key, lbb_json_num(m->stream[b].reused_share));
	}
	json_object_object_add(j, "reused_token_share_by_budget", by);
	json_object_object_add(j, "bank_blocks",
			       json_object_new_int64((int64_t)m->stream[0].bank.blocks));
	json_object_object_add(j, "bank_evictions",
			       json_object_new_int64((int64_t)m->stream[0].bank.evictions));
	return j;
}

static void print_json(const struct opts *o, const struct model *m, const struct lbw_chat *c)
{
	json_object *j = json_object_new_object(), *arr = json_object_new_array();
	json_object_object_add(j, "heldout_paragraphs", json_object_new_int((int)m[0].scored));
	json_object_object_add(j, "decode_positions", json_object_new_int(m[0].sc.max_seq));
	json_object_object_add(j, "decode_sequences", json_object_new_int((int)o->sequences));
	json_object_object_add(j, "decode_rounds", json_object_new_int((int)o->rounds));
	json_object_object_add(j, "workers", json_object_new_int(o->workers));
	json_object_object_add(j, "requests", json_object_new_int((int)c->n));
	json_object_object_add(j, "seed", json_object_new_int64((int64_t)o->chat.seed));
	json_object_object_add(j, "budget_bytes", json_object_new_int64((int64_t)o->budget[0]));
	for (int i = 0; i < N_MODELS; i++)
		json_object_array_add(arr, model_json(o, &m[i], &m[0], &m[1]));
	json_object_object_add(j, "models", arr);
	puts(json_object_to_json_string_ext(j, JSON_C_TO_STRING_PLAIN));
	json_object_put(j);
}

static void print_table(const struct opts *o, const struct model *m, const struct lbw_chat *c)
{
	printf("stories260K and its FusedKV checkpoints: held-out NLL over %u paragraphs (%llu "
	       "predicted tokens), decode over %u x %d positions (median of %u rounds), chat "
	       "stream of %u requests through %d workers and a shared bank of %llu MiB\n",
	       m[0].scored, (unsigned long long)m[0].predicted, o->sequences, m[0].sc.max_seq,
	       o->rounds, c->n, o->workers, (unsigned long long)(o->budget[0] >> 20));
	printf("  %-10s %9s %13s %9s %12s %8s %11s %8s %8s\n", "model", "kv layers", "held-out NLL",
	       "vs ctrl", "KV B/token", "ratio", "decode t/s", "ratio", "reused");
	for (int i = 0; i < N_MODELS; i++)
		printf("  %-10s %6d/%-2d %13.4f %+8.1f%% %12llu %7.2fx %11.0f %7.2fx %7.1f%%\n",
		       m[i].name, m[i].kv_layers, m[i].n_layers, m[i].nll,
		       100 * (m[i].nll / m[1].nll - 1), (unsigned long long)kv_bytes(&m[i]),
		       (double)kv_bytes(&m[i]) / (double)kv_bytes(&m[0]), m[i].decode_tok_s,
		       m[i].decode_ratio, 100 * m[i].stream[0].reused_share);
	if (o->n_budgets > 1) {
		uint32_t order[MAX_BUDGETS]; /* the budgets, smallest first */
		for (uint32_t b = 0; b < o->n_budgets; b++) {
			uint32_t k = b;
			for (; k > 0 && o->budget[order[k - 1]] > o->budget[b]; k--)
				order[k] = order[k - 1];
			order[k] = b;
		}
		printf("  reused token share by bank budget:");
		for (uint32_t b = 0; b < o->n_budgets; b++)
			printf(" %8llu MiB", (unsigned long long)(o->budget[order[b]] >> 20));
		printf("\n");
		for (int i = 0; i < N_MODELS; i++) {
			printf("    %-10s                       ", m[i].name);
			for (uint32_t b = 0; b < o->n_budgets; b++)
				printf(" %11.1f%%", 100 * m[i].stream[order[b]].reused_share);
			printf("\n");
		}
	}
}

/* ---- options ---- */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: layerbank-bench fusedkv [--json] [--budget SIZE] [--sweep LIST|none]\n"
		"         [--paragraphs N] [--sequences N] [--rounds N] [--workers N]\n"
		"         [--conversations N] [--seed N] [--data DIR] [--models DIR] [--quiet]\n"
		"stories260K, the plain control, training-free Lite and the uptrained Lite and\n"
		"FusedKV checkpoints: held-out NLL (the first --paragraphs, default 2000: every\n"
		"evaluation paragraph), KV bytes a cached token takes, decode tokens/s over\n"
		"--sequences (8) of the context's 512 positions a round, --rounds (5) rounds\n"
		"interleaved, and the chat stream's reused token share through --workers (4)\n"
		"decoders sharing a layerbankd of --budget bytes (2M: under the stream's working\n"
		"set, where the bank's capacity decides what it keeps), then of each --sweep size\n"
		"(1M,4M,8M,64M; at 8M and above it holds every model's working set). --data: the folder\n"
		"with stories260K.bin, tok512.bin and tinystories_val.txt ($LAYERBANK_DATA, then\n"
		"the source tree's ../shared/data); --models: the committed checkpoints (the\n"
		"source tree's models/).\n");
}

static int bad(const char *opt, const char *v, const char *want)
{
	fprintf(stderr, NAME ": bad %s '%s' (%s)\n", opt, v, want);
	return -1;
}

static int count(const char *opt, const char *v, unsigned long lo, unsigned long hi,
		 uint32_t *out)
{
	char *end;
	errno = 0;
	unsigned long x = strtoul(v, &end, 10);
	if (errno || end == v || *end || *v == '-' || x < lo || x > hi) {
		char want[64];
		snprintf(want, sizeof(want), "%lu..%lu", lo, hi);
		return bad(opt, v, want);
	}
	*out = (uint32_t)x;
	return 0;
}

/* "8M,32M" into o->budget[1..]. @return 0 or -1 after a message. */
static int sweep(struct opts *o, const char *v)
{
	o->n_budgets = 1;
	if (!strcmp(v, "none"))
		return 0;
	char buf[256];
	snprintf(buf, sizeof(buf), "%s", v);
	for (char *save = NULL, *s = strtok_r(buf, ",", &save); s; s = strtok_r(NULL, ",", &save)) {
		uint64_t b;
		if (o->n_budgets == MAX_BUDGETS || lbu_parse_size(s, &b) < 0 || b < (1u << 20) ||
		    b > 1ull << 40)
			return bad("--sweep", v, "up to 7 sizes of 1M..1T separated by commas, or none");
		o->budget[o->n_budgets++] = b;
	}
	return 0;
}

static int option(struct opts *o, const char *a, const char *v)
{
	uint32_t x;
	if (!strcmp(a, "--budget")) {
		if (lbu_parse_size(v, &o->budget[0]) < 0 || o->budget[0] < (1u << 20) ||
		    o->budget[0] > 1ull << 40)
			return bad(a, v, "a size such as 16M, 1M..1T");
	} else if (!strcmp(a, "--sweep")) {
		return sweep(o, v);
	} else if (!strcmp(a, "--paragraphs")) {
		return count(a, v, 1, LBW_EVAL_PARAGRAPHS, &o->paragraphs);
	} else if (!strcmp(a, "--sequences")) {
		return count(a, v, 1, 1000, &o->sequences);
	} else if (!strcmp(a, "--rounds")) {
		return count(a, v, 1, MAX_ROUNDS, &o->rounds);
	} else if (!strcmp(a, "--workers")) {
		if (count(a, v, 1, LBB_FLEET_MAX_WORKERS, &x) < 0)
			return -1;
		o->workers = (int)x;
	} else if (!strcmp(a, "--conversations")) {
		return count(a, v, 1, LBW_CHAT_MAX_CONVS, &o->chat.conversations);
	} else if (!strcmp(a, "--seed")) {
		return count(a, v, 0, UINT32_MAX, &x) < 0 ? -1 : (o->chat.seed = x, 0);
	} else if (!strcmp(a, "--data")) {
		snprintf(o->data, sizeof(o->data), "%s", v);
	} else if (!strcmp(a, "--models")) {
		snprintf(o->models, sizeof(o->models), "%s", v);
	} else {
		fprintf(stderr, NAME ": unknown option '%s' (see --help)\n", a);
		return -1;
	}
	return 0;
}

static int parse(int argc, char **argv, struct opts *o)
{
	memset(o, 0, sizeof(*o));
	o->paragraphs = LBW_EVAL_PARAGRAPHS;
	o->sequences = 8;
	o->rounds = 5;
	o->workers = 4;
	o->chat = lbw_chat_defaults();
	o->budget[0] = 2ull << 20;
	const char *env = getenv("LAYERBANK_DATA");
	snprintf(o->data, sizeof(o->data), "%s", env && *env ? env : LB_DATA_DIR);
	snprintf(o->models, sizeof(o->models), "%s", LB_SOURCE_DIR "/models");
	if (sweep(o, "1M,4M,8M,64M") < 0)
		return -1;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--json") || !strcmp(a, "--quiet")) {
			*(strcmp(a, "--json") ? &o->quiet : &o->json) = 1;
			continue;
		}
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			usage(stdout);
			exit(0);
		}
		if (!v) {
			fprintf(stderr, NAME ": %s needs a value (see --help)\n", a);
			return -1;
		}
		i++;
		if (option(o, a, v) < 0)
			return -1;
	}
	return 0;
}

/* ---- the benchmark ---- */

static int measure(const struct opts *o, struct model *m, const struct lbw_chat *c)
{
	char path[600], err[256];
	struct lbw_paragraphs held = { 0 };
	struct lbw_tokenizer t;
	snprintf(path, sizeof(path), "%s/tinystories_val.txt", o->data);
	if (lbw_paragraphs_load(path, 0, 0, &held, err, sizeof(err)) < 0) {
		fprintf(stderr, NAME ": %s: %s\n", path, err);
		return -1;
	}
	snprintf(path, sizeof(path), "%s/tok512.bin", o->data);
	if (lbw_tokenizer_load(&t, path, 512, err, sizeof(err)) < 0) {
		fprintf(stderr, NAME ": %s: %s\n", path, err);
		lbw_paragraphs_free(&held);
		return -1;
	}
	int rc = 0;
	for (int i = 0; i < N_MODELS && rc == 0; i++) {
		if (!o->quiet)
			fprintf(stderr, NAME ": held-out NLL, %s\n", m[i].name);
		rc = heldout(o, &m[i], &held, &t);
	}
	int32_t seq = m[0].sc.max_seq;
	int32_t *tok = rc ? NULL : decode_tokens(&held, &t, o->sequences, seq);
	if (tok) {
		if (!o->quiet)
			fprintf(stderr, NAME ": decode speed\n");
		decode_speed(o, m, tok, seq);
		rc = streams(o, m, c);
	} else {
		rc = -1;
	}
	free(tok);
	lbw_tokenizer_free(&t);
	lbw_paragraphs_free(&held);
	return rc;
}

int bench_fusedkv_main(int argc, char **argv)
{
	struct opts o;
	static struct model m[N_MODELS];
	struct lbw_paragraphs para = { 0 };
	struct lbw_chat c = { 0 };
	if (parse(argc, argv, &o) < 0)
		return 2;
	lbb_fleet_init("fusedkv");
	int rc = make_models(&o, lbb_fleet_dir(), m);
	if (rc == 0)
		rc = lbb_prefix_chat(o.data, &o.chat, (uint32_t)m[0].sc.max_seq, &para, &c);
	if (rc == 0)
		rc = measure(&o, m, &c);
	if (rc == 0 && o.json)
		print_json(&o, m, &c);
	else if (rc == 0)
		print_table(&o, m, &c);
	for (int i = 0; i < N_MODELS; i++)
		lbw_scorer_close(&m[i].sc);
	lbw_chat_free(&c);
	lbw_paragraphs_free(&para);
	return rc < 0 ? 1 : 0;
}
