/*
 * layerbank-worker: the reference inference worker's command line. `generate` prints text as
 * llama2.c's run.c does (greedy); `score` prints the per-token NLL of a text file.
 */
#include <errno.h>
#include <ctype.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "layerbank/layerbank.h"
#include "model_llama.h"
#include "tokenizer.h"

#define EXIT_USAGE 2
#define EXIT_LOAD 1
#define EXIT_VOCAB 3 /* internal to score: reported as EXIT_LOAD */
/* Largest --text-file read for score. */
#define MAX_TEXT_BYTES (16u << 20)

static void usage(FILE *f)
{
	fprintf(f,
		"usage: layerbank-worker generate --model M --tokenizer T [--prompt S] [--steps N]\n"
		"                                 [--temperature 0] [--cache SOCKET] [--stats]\n"
		"       layerbank-worker score --model M --tokenizer T --text-file F [--cache SOCKET]\n"
		"                              [--cache-layers all|L,L,...] [--revalidate P] [--tau X]\n"
		"\n"
		"generate  greedy decoding, printed as llama2.c's run.c prints it. --steps counts\n"
		"          positions including BOS and the prompt (default 256; 0 or more than the\n"
		"          model's seq_len means seq_len). Only --temperature 0 is implemented:\n"
		"          sampling with a temperature above 0 is rejected. --stats prints the\n"
		"          achieved tokens/s on stderr.\n"
		"score     prints 'tokens N predicted P nll_per_token X': N tokens with BOS, P = N-1,\n"
		"          X the mean negative log-likelihood (nats). The file is read whole; one\n"
		"          trailing newline is dropped.\n"
		"--cache   score: reuse and fill layerbankd's layer cache at SOCKET (a prefill resumes\n"
		"          from the deepest cached layer's hidden states; layers above it, and their\n"
		"          KV, are recomputed). Prints a second line 'cache hit_layer H computed C\n"
		"          inserted I' (H -1: a miss). Without a daemon there, one warning and a plain\n"
		"          run. generate decodes token by token, which needs every layer's KV, and\n"
		"          does not use the cache.\n"
		"--cache-layers  layers to insert: all (default) or a comma list of indices.\n"
		"--revalidate P  recompute the top layer of a share P (0..1) of hits and report the\n"
		"          drift (default 0).\n"
		"--tau X   similarity threshold of every layer's lookup (default: the daemon's).\n");
}

struct opts {
	const char *cmd, *model, *tokenizer, *prompt, *text_file, *cache;
	const char *cache_layers, *revalidate_s, *tau_s; /* score --cache options, checked later */
	long steps;
	double temperature;
	double revalidate, tau;
	int stats;
};

/* A finite number, whole string. @return 0 or -1. */
static int parse_real(const char *v, double *out)
{
	char *end;
	errno = 0;
	*out = strtod(v, &end);
	return errno || end == v || *end || !isfinite(*out) ? -1 : 0;
}

/* @return 0, or -1 after printing one line on stderr. */
static int parse(int argc, char **argv, struct opts *o)
{
	memset(o, 0, sizeof(*o));
	o->steps = 256;
	if (argc < 2) {
		fprintf(stderr, "layerbank-worker: missing command (generate or score); see --help\n");
		return -1;
	}
	o->cmd = argv[1];
	int gen = !strcmp(o->cmd, "generate"), score = !strcmp(o->cmd, "score");
	if (!gen && !score) {
		fprintf(stderr, "layerbank-worker: unknown command '%s' (generate or score)\n", o->cmd);
		return -1;
	}
	for (int i = 2; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--stats") && gen) {
			o->stats = 1;
			continue;
		}
		const char **slot = NULL;
		if (!strcmp(a, "--model"))
			slot = &o->model;
		else if (!strcmp(a, "--tokenizer"))
			slot = &o->tokenizer;
		else if (!strcmp(a, "--cache"))
			slot = &o->cache;
		else if (!strcmp(a, "--prompt") && gen)
			slot = &o->prompt;
		else if (!strcmp(a, "--text-file") && score)
			slot = &o->text_file;
		else if (!strcmp(a, "--cache-layers") && score)
			slot = &o->cache_layers;
		else if (!strcmp(a, "--revalidate") && score)
			slot = &o->revalidate_s;
		else if (!strcmp(a, "--tau") && score)
			slot = &o->tau_s;
		else if (strcmp(a, "--steps") || !gen) {
			if (strcmp(a, "--temperature") || !gen) {
				fprintf(stderr, "layerbank-worker %s: unknown option '%s'\n", o->cmd, a);
				return -1;
			}
		}
		if (!v) {
			fprintf(stderr, "layerbank-worker %s: option %s needs a value\n", o->cmd, a);
			return -1;
		}
		i++;
		if (slot) {
			*slot = v;
		} else if (!strcmp(a, "--steps")) {
			char *end;
			errno = 0;
			o->steps = strtol(v, &end, 10);
			if (errno || end == v || *end || o->steps < 0 || o->steps > INT32_MAX) {
				fprintf(stderr, "layerbank-worker generate: bad --steps '%s' (an integer >= 0)\n", v);
				return -1;
			}
		} else {
			char *end;
			errno = 0;
			o->temperature = strtod(v, &end);
			if (errno || end == v || *end || !isfinite(o->temperature) || o->temperature < 0) {
				fprintf(stderr, "layerbank-worker generate: bad --temperature '%s'\n", v);
				return -1;
			}
			if (o->temperature > 0) {
				fprintf(stderr, "layerbank-worker generate: --temperature %s: only greedy "
						"decoding (--temperature 0) is implemented\n", v);
				return -1;
			}
		}
	}
	if (!o->model || !o->tokenizer) {
		fprintf(stderr, "layerbank-worker %s: --model and --tokenizer are required\n", o->cmd);
		return -1;
	}
	if (score && !o->text_file) {
		fprintf(stderr, "layerbank-worker score: --text-file is required\n");
		return -1;
	}
	if (gen && o->cache)
		fprintf(stderr, "layerbank-worker generate: --cache ignored: token-by-token decoding "
				"needs every layer's KV, which the cache does not hold\n");
	if (score && (o->cache_layers || o->revalidate_s || o->tau_s) && !o->cache) {
		fprintf(stderr, "layerbank-worker score: --cache-layers, --revalidate and --tau need "
				"--cache\n");
		return -1;
	}
	if (o->revalidate_s && (parse_real(o->revalidate_s, &o->revalidate) < 0 ||
				o->revalidate < 0 || o->revalidate > 1)) {
		fprintf(stderr, "layerbank-worker score: bad --revalidate '%s' (0..1)\n", o->revalidate_s);
		return -1;
	}
	if (o->tau_s && (parse_real(o->tau_s, &o->tau) < 0 || o->tau < -1 || o->tau > 1)) {
		fprintf(stderr, "layerbank-worker score: bad --tau '%s' (-1..1)\n", o->tau_s);
		return -1;
	}
	return 0;
}

/* llama2.c's safe_printf: skip empty pieces and lone bytes that are neither printable nor space. */
static void safe_print(const char *piece)
{
	if (!piece || piece[0] == '\0')
		return;
	if (piece[1] == '\0') {
		unsigned char b = (unsigned char)piece[0];
		if (!(isprint(b) || isspace(b)))
			return;
	}
	fputs(piece, stdout);
}

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int generate(const struct opts *o, const struct lbw_llama *m, struct lbw_llama_state *s,
		    const struct lbw_tokenizer *t)
{
	const char *prompt = o->prompt ? o->prompt : "";
	int32_t *toks = malloc((strlen(prompt) + 3) * sizeof(int32_t));
	if (!toks) {
		fprintf(stderr, "layerbank-worker generate: out of memory\n");
		return EXIT_LOAD;
	}
	int n = lbw_tokenizer_encode(t, prompt, 1, 0, toks);
	if (n < 1) {
		fprintf(stderr, "layerbank-worker generate: cannot encode the prompt: %s\n", strerror(-n));
		free(toks);
		return EXIT_LOAD;
	}
	int32_t steps = (int32_t)o->steps;
	if (steps == 0 || steps > m->cfg.seq_len)
		steps = m->cfg.seq_len;

	double start = 0;
	int32_t token = toks[0], next, pos = 0;
	while (pos < steps) {
		const float *logits = lbw_llama_forward(m, s, token, pos);
		if (!logits) {
			fprintf(stderr, "layerbank-worker generate: token %d out of range\n", (int)token);
			free(toks);
			return EXIT_LOAD;
		}
		if (pos < n - 1)
			next = toks[pos + 1];
		else
			next = lbw_llama_argmax(logits, m->cfg.vocab_size);
		pos++;
		if (next == LBW_TOK_BOS)
			break;
		safe_print(lbw_tokenizer_decode(t, token, next));
		fflush(stdout);
		token = next;
		if (start == 0)
			start = now_ms();
	}
	printf("\n");
	fflush(stdout);
	if (o->stats && pos > 1) {
		double el = now_ms() - start;
		fprintf(stderr, "achieved tok/s: %f\n", el > 0 ? (pos - 1) / el * 1000.0 : 0.0);
	}
	free(toks);
	return 0;
}

/* Read path whole (at most MAX_TEXT_BYTES, no NUL inside) into a NUL-terminated string. */
static char *read_text(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		fprintf(stderr, "layerbank-worker score: cannot open %s: %s\n", path, strerror(errno));
		return NULL;
	}
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap);
	for (;;) {
		if (!buf) {
			fprintf(stderr, "layerbank-worker score: out of memory reading %s\n", path);
			fclose(f);
			return NULL;
		}
		size_t r = fread(buf + len, 1, cap - len - 1, f);
		len += r;
		if (r == 0)
			break;
		if (len + 1 == cap) {
			if (cap > MAX_TEXT_BYTES) {
				fprintf(stderr, "layerbank-worker score: %s is larger than %u bytes\n", path,
					MAX_TEXT_BYTES);
				free(buf);
				fclose(f);
				return NULL;
			}
			char *nb = realloc(buf, cap * 2);
			if (!nb)
				free(buf);
			buf = nb;
			cap *= 2;
		}
	}
	int bad = ferror(f);
	fclose(f);
	if (bad) {
		fprintf(stderr, "layerbank-worker score: read error on %s\n", path);
		free(buf);
		return NULL;
	}
	buf[len] = '\0';
	if (strlen(buf) != len) {
		fprintf(stderr, "layerbank-worker score: %s contains a NUL byte\n", path);
		free(buf);
		return NULL;
	}
	if (len && buf[len - 1] == '\n')
		buf[len - 1] = '\0';
	return buf;
}

/* lb_layer_fn over the llama prefill. */
struct llama_layers {
	const struct lbw_llama *m;
	struct lbw_llama_state *s;
	int32_t n;
};

static int llama_layer(void *ctx, uint32_t layer, const float *in, float *out)
{
	struct llama_layers *x = ctx;
	lbw_llama_layer_seq(x->m, x->s, (int32_t)layer, x->n, in, out);
	return 0;
}

/* The cache's side of score: client, model id, projection, options. */
struct score_cache {
	struct lb_client *c;
	struct lb_fp_proj *proj;
	struct lb_lem_cfg cfg;
	float *tau;
	uint8_t *layers;
};

#define FP_SEED 0x6c61796572ull /* "layer" */
#define FP_CHUNKS 4

/* Parse --cache-layers into flags[n_layers]. @return 0 or -1 after a message. */
static int parse_layers(const char *v, uint8_t *flags, int32_t n_layers)
{
	if (!strcmp(v, "all")) {
		memset(flags, 1, (size_t)n_layers);
		return 0;
	}
	memset(flags, 0, (size_t)n_layers);
	const char *p = v;
	for (;;) {
		char *end;
		errno = 0;
		long l = strtol(p, &end, 10);
		if (errno || end == p || l < 0 || l >= n_layers || (*end && *end != ',')) {
			fprintf(stderr, "layerbank-worker score: bad --cache-layers '%s' (all, or layer "
					"indices 0..%d separated by commas)\n", v, (int)n_layers - 1);
			return -1;
		}
		flags[l] = 1;
		if (!*end)
			return 0;
		p = end + 1;
	}
}

static void cache_close(struct score_cache *sc)
{
	lb_close(sc->c);
	lb_fp_proj_free(sc->proj);
	free(sc->tau);
	free(sc->layers);
	memset(sc, 0, sizeof(*sc));
}

/*
 * Connect, register the model and build its projection. @return 0 (sc->c NULL: the cache is
 * away, warned about, run plain), or -1 on a bad option.
 */
static int cache_open(const struct opts *o, const struct lbw_llama *m, struct score_cache *sc)
{
	int32_t L = m->cfg.n_layers, dim = m->cfg.dim;
	memset(sc, 0, sizeof(*sc));
	sc->layers = malloc((size_t)L);
	if (o->tau_s)
		sc->tau = malloc((size_t)L * sizeof(float));
	float *center = calloc((size_t)dim, sizeof(float));
	double *acc = calloc((size_t)dim, sizeof(double));
	if (!sc->layers || (o->tau_s && !sc->tau) || !center || !acc) {
		fprintf(stderr, "layerbank-worker score: out of memory\n");
		free(center);
		free(acc);
		cache_close(sc);
		return -1;
	}
	if (parse_layers(o->cache_layers ? o->cache_layers : "all", sc->layers, L) < 0) {
		free(center);
		free(acc);
		cache_close(sc);
		return -1;
	}
	for (int32_t l = 0; sc->tau && l < L; l++)
		sc->tau[l] = (float)o->tau;

	/* The projection is centred on the embedding table's mean row. */
	for (int32_t v = 0; v < m->cfg.vocab_size; v++)
		for (int32_t j = 0; j < dim; j++)
			acc[j] += m->w.token_embedding[(size_t)v * (size_t)dim + (size_t)j];
	for (int32_t j = 0; j < dim; j++)
		center[j] = (float)(acc[j] / (double)m->cfg.vocab_size);
	free(acc);
	sc->proj = lb_fp_proj_new((uint32_t)dim, FP_CHUNKS, FP_SEED, center);
	free(center);

	const char *why = NULL;
	char name[LB_NAME_MAX + 1];
	const char *base = strrchr(o->model, '/');
	snprintf(name, sizeof(name), "%s", base ? base + 1 : o->model);
	uint32_t model_id = 0;
	int rc = sc->proj ? 0 : -errno;
	if (rc == 0)
		rc = lb_connect(o->cache, "layerbank-worker", &sc->c);
	if (rc == 0) {
		struct lb_model_desc d = {
			.name = name,
			.weights_hash = XXH3_64bits(m->data, m->data_size),
			.n_layers = (uint32_t)L,
			.hidden = (uint32_t)dim,
			.dtype = LB_DTYPE_F32,
			.max_seq = (uint32_t)m->cfg.seq_len,
			.fp_chunks = FP_CHUNKS,
			.fp_seed = FP_SEED,
		};
		rc = lb_register_model(sc->c, &d, &model_id);
		if (rc < 0 && *lb_last_error(sc->c))
			why = lb_last_error(sc->c);
	}
	if (rc < 0) {
		fprintf(stderr, "layerbank-worker score: warning: layer cache %s unavailable (%s%s%s); "
				"scoring without it\n", o->cache, strerror(-rc), why ? ": " : "",
			why ? why : "");
		lb_close(sc->c);
		sc->c = NULL;
		return 0;
	}
	sc->cfg = (struct lb_lem_cfg){
		.model_id = model_id,
		.n_layers = (uint32_t)L,
		.hidden = (uint32_t)dim,
		.proj = sc->proj,
		.tau = sc->tau,
		.cache_layers = sc->layers,
		.revalidate = o->revalidate,
		.seed = FP_SEED,
	};
	return 0;
}

/*
 * The NLL of tokens[0..n-1] by the layer-major prefill, through the layer cache with --cache.
 * @return 0; EXIT_VOCAB (a token out of range); EXIT_LOAD (after a message); EXIT_USAGE.
 */
static int score_tokens(const struct opts *o, const struct lbw_llama *m, struct lbw_llama_state *s,
			const int32_t *toks, int32_t n, double *nll)
{
	for (int32_t i = 0; i < n; i++)
		if (toks[i] < 0 || toks[i] >= m->cfg.vocab_size)
			return EXIT_VOCAB;
	struct score_cache sc;
	memset(&sc, 0, sizeof(sc));
	if (o->cache && cache_open(o, m, &sc) < 0)
		return EXIT_USAGE;
	struct lb_lem_cfg plain = { .n_layers = (uint32_t)m->cfg.n_layers, .hidden = (uint32_t)m->cfg.dim };
	float *h = malloc((size_t)n * (size_t)m->cfg.dim * sizeof(float));
	if (!h) {
		fprintf(stderr, "layerbank-worker score: out of memory\n");
		cache_close(&sc);
		return EXIT_LOAD;
	}
	lbw_llama_embed_seq(m, toks, n, h);
	struct llama_layers ctx = { m, s, n };
	struct lb_lem_result res;
	int rc = lb_lem_run(sc.c, sc.c ? &sc.cfg : &plain, toks, (uint32_t)n, h, llama_layer, &ctx, &res);
	if (rc < 0) {
		fprintf(stderr, "layerbank-worker score: layer manager: %s\n", strerror(-rc));
		free(h);
		cache_close(&sc);
		return EXIT_LOAD;
	}
	*nll = lbw_llama_score_seq(m, s, toks, n, h);
	printf("tokens %d predicted %d nll_per_token %.6f\n", n, n - 1, *nll / (double)(n - 1));
	if (o->cache) {
		printf("cache hit_layer %d computed %u inserted %u\n", (int)res.hit_layer,
		       res.layers_computed, res.layers_inserted);
		if (res.cache_error)
			fprintf(stderr, "layerbank-worker score: warning: layer cache lost mid-run (%s); "
					"finished without it\n", strerror(-res.cache_error));
	}
	free(h);
	cache_close(&sc);
	return 0;
}

static int score(const struct opts *o, const struct lbw_llama *m, struct lbw_llama_state *s,
		 const struct lbw_tokenizer *t)
{
	char *text = read_text(o->text_file);
	if (!text)
		return EXIT_LOAD;
	/*
	 * Every token spells at most max(max_token_length, 4) bytes, so a longer text cannot fit
	 * in seq_len tokens: refuse it before the quadratic merge loop of encode runs on it.
	 */
	size_t per = t->max_token_length > 4 ? (size_t)t->max_token_length : 4;
	if (strlen(text) > per * (size_t)m->cfg.seq_len) {
		fprintf(stderr, "layerbank-worker score: %s is longer than the model's seq_len %d "
				"tokens can hold\n", o->text_file, (int)m->cfg.seq_len);
		free(text);
		return EXIT_LOAD;
	}
	int32_t *toks = malloc((strlen(text) + 3) * sizeof(int32_t));
	if (!toks) {
		fprintf(stderr, "layerbank-worker score: out of memory\n");
		free(text);
		return EXIT_LOAD;
	}
	int n = lbw_tokenizer_encode(t, text, 1, 0, toks);
	free(text);
	int rc = EXIT_LOAD;
	double nll = 0;
	if (n < 2) {
		fprintf(stderr, "layerbank-worker score: %s has no text to score\n", o->text_file);
	} else if (n > m->cfg.seq_len) {
		fprintf(stderr, "layerbank-worker score: %s is %d tokens, more than the model's "
				"seq_len %d\n", o->text_file, n, (int)m->cfg.seq_len);
	} else {
		rc = score_tokens(o, m, s, toks, n, &nll);
		if (rc == EXIT_VOCAB) {
			fprintf(stderr, "layerbank-worker score: a token is out of the model's vocabulary\n");
			rc = EXIT_LOAD;
		}
	}
	free(toks);
	return rc;
}

int main(int argc, char **argv)
{
	struct opts o;
	struct lbw_llama m;
	struct lbw_llama_state s;
	struct lbw_tokenizer t;
	char err[512];

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage(stdout);
			return 0;
		}
	}
	if (parse(argc, argv, &o) < 0)
		return EXIT_USAGE;
	if (lbw_llama_load(&m, o.model, err, sizeof(err)) < 0) {
		fprintf(stderr, "layerbank-worker: %s\n", err);
		return EXIT_LOAD;
	}
	if (lbw_tokenizer_load(&t, o.tokenizer, m.cfg.vocab_size, err, sizeof(err)) < 0) {
		fprintf(stderr, "layerbank-worker: %s\n", err);
		lbw_llama_free(&m);
		return EXIT_LOAD;
	}
	if (lbw_llama_state_init(&s, &m.cfg) < 0) {
		fprintf(stderr, "layerbank-worker: out of memory for the KV cache\n");
		lbw_tokenizer_free(&t);
		lbw_llama_free(&m);
		return EXIT_LOAD;
	}
	int rc = !strcmp(o.cmd, "generate") ? generate(&o, &m, &s, &t) : score(&o, &m, &s, &t);
	lbw_llama_state_free(&s);
	lbw_tokenizer_free(&t);
	lbw_llama_free(&m);
	return rc;
}
