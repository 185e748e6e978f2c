/*
 * layerbank-worker: the reference inference worker's command line. `generate` prints text as
 * llama2.c's run.c does (greedy, or sampled with a temperature); `score` prints the NLL of a text
 * file; `serve` scores a stream of requests from stdin, as a member of a fleet (serve.h).
 */
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <stddef.h>
#include <ctype.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache.h"
#include "gen.h"
#include "size.h"
#include "model_llama.h"
#include "redis_cache.h"
#include "safetensors.h"
#include "sampler.h"
#include "scorer.h"
#include "serve.h"
#include "tokenizer.h"

#define EXIT_USAGE 2
#define EXIT_LOAD 1
/* Largest --text-file read for score. */
#define MAX_TEXT_BYTES (16u << 20)
#define BERT_MODEL "bert-base"
#define LLAMA_GEN_MODEL LBW_LLAMA_110M_NAME
/* The seed of bert-base's and llama-110m's weights without --seed. */
#define GEN_SEED 1
/* A --model named so is read as safetensors even when its first bytes do not say so. */
#define ST_EXT ".safetensors"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: layerbank-worker generate --model M --tokenizer T [--prompt S] [--steps N]\n"
		"                                 [--temperature T [--seed N] [--topp P]] [--stats]\n"
		"                                 [--cache SOCKET | --private-cache SIZE]\n"
		"       layerbank-worker score --model M --tokenizer T --text-file F [CACHE OPTIONS]\n"
		"       layerbank-worker serve --model M --tokenizer T [--max-tokens N] [CACHE OPTIONS]\n"
		"\n"
		"--model   for every command: a llama2.c checkpoint (stories260K.bin; a\n"
		"          FusedKV one too, lite or fused: prefix blocks cached, hidden\n"
		"          states not), or\n"
		"          llama-110m     llama-shaped (12 layers, dim 768, 12/4 heads, FFN\n"
		"                         2048, 512 tokens, 2048 positions), weights generated\n"
		"                         from --seed (default 1; at a temperature above 0\n"
		"                         generate's sampler takes it too).\n"
		"          score and serve also take encoders, scored through their tied\n"
		"          embedding over the tokenizer's 512 tokens (generate refuses them);\n"
		"          a BERT-style (bidirectional) one on 15%% of the positions after\n"
		"          BOS (at least one), masked with token 0, at their own position:\n"
		"          F.safetensors  a GPT-2- or BERT-style checkpoint: F32 tensors with\n"
		"                         Hugging Face names (the style follows them), heads =\n"
		"                         hidden / 64, a vocabulary of 512 or more. Told by its\n"
		"                         header (or, when that is broken, by its name).\n"
		"          bert-base      BERT-base-shaped (12 x 768), weights generated from\n"
		"                         --seed (default 1; for generate it seeds the sampler).\n"
		"generate  decodes and prints as llama2.c's run.c. --steps counts positions\n"
		"          including BOS and the prompt (default 256; 0 or more than the model's\n"
		"          seq_len means seq_len). --temperature 0 (the default) is greedy; T > 0\n"
		"          samples from softmax(logits / T) with llama2.c's generator and draws:\n"
		"          --seed N (default: the clock, as llama2.c; 0 too) makes it repeatable,\n"
		"          --topp P in (0, 1] keeps the most likely tokens up to P (default 1:\n"
		"          all; llama2.c's run defaults to 0.9). Both are ignored at temperature 0.\n"
		"          --stats prints the achieved tokens/s (and the seed) on stderr. With\n"
		"          --cache or --private-cache the prompt's longest cached prefix (whole\n"
		"          blocks of 16 tokens: every layer's exact K and V) is read from the bank\n"
		"          and the full blocks of the prompt and of the tokens fed back are\n"
		"          inserted; the text is the same bit for bit (but with --gen-recompute:\n"
		"          below). stderr then gets 'cache\n"
		"          prompt_tokens=P reused_tokens=R computed_tokens=C ttft_ms=X near=S\n"
		"          approx=A'.\n"
		"score     prints 'tokens N predicted P nll_per_token X': N tokens with BOS, P = N-1\n"
		"          next tokens (the masked ones for a BERT-style encoder), X their mean\n"
		"          negative log-likelihood (nats). The file is read whole; one\n"
		"          trailing newline is dropped. With a cache, a second line\n"
		"          'cache hit_layer H computed C inserted I' (H -1: a miss).\n"
		"serve     reads requests 'ID<TAB>TEXT' from stdin, one per line, and answers each on\n"
		"          stdout: 'ID ok tokens=N nll=S hit=H hamming=D computed=C inserted=I us=T\n"
		"          sflight=F waited=W compute=A-B reused=R predicted=P top1=a,b,...' (S the\n"
		"          summed NLL of P predictions, as score makes them, H the reused layer or\n"
		"          -1, D its fingerprint distance, T microseconds of work, F single-flight:\n"
		"          1 claimed, 2 waited, 4 computed alongside another worker, W microseconds\n"
		"          waited, A-B when the layers ran (CLOCK_MONOTONIC microseconds; 0-0:\n"
		"          none), R the share of layer-positions reused, top1 the argmax of each\n"
		"          prediction) or 'ID err MESSAGE'. Prints 'ready ...' once the\n"
		"          model is loaded; ends at end of input. --max-tokens cuts longer inputs.\n"
		"          A decoder also takes 'ID<TAB>gen:N<TAB>PROMPT' (a text, or @ and token ids\n"
		"          separated by commas): it generates N tokens greedily, reusing and\n"
		"          inserting prefix blocks as generate does, and answers 'ID ok gen\n"
		"          prompt=P reused=R computed=C inserted=I ttft_us=F us=T cache=S near=N\n"
		"          approx=A out=a,b,...' (S: ok, none, or the error that ended its cache\n"
		"          calls; N, A: --gen-recompute's share reused and distance, 0 without).\n"
		"\n"
		"CACHE OPTIONS (score, serve): a prefill resumes from the deepest cached layer's hidden\n"
		"states (layers above it are recomputed); a near-duplicate's in part (--recompute).\n"
		"generate and serve's gen requests take --cache and --private-cache for prefix blocks,\n"
		"and --gen-recompute.\n"
		"--cache SOCKET       layerbankd's shared bank. Without a daemon there: one warning,\n"
		"                     and the work goes on without cache.\n"
		"--private-cache SIZE an in-process bank of SIZE bytes (K, M, G suffixes) run by this\n"
		"                     worker alone, with the daemon's code and defaults.\n"
		"--redis HOST:PORT    (score, serve) a plain Redis server instead, as a user without\n"
		"                     layerbank shares layer outputs: the deepest layer's output of\n"
		"                     an exact input (model, token hash, length) is GET before the\n"
		"                     forward pass, whole (hit=L-1) or not at all, and SET after one;\n"
		"                     no near-duplicate, no partial reuse. A value that fails its\n"
		"                     checks (length; magic, model, shape, xxh64 of the payload) is a\n"
		"                     miss. Without a server there: one warning, no cache. At the end\n"
		"                     stderr gets 'redis hits=H misses=M refused=R stored=S errors=E'.\n"
		"                     Of the options below it takes --shadow only.\n"
		"--cache-layers L     layers to insert: all (default) or a comma list of indices.\n"
		"--revalidate P       check a share P (0..1) of reuses against the plain forward pass\n"
		"                     (the layers up to the one reused) and report the drift, which\n"
		"                     the daemon's thresholds adapt to (layerbankd --drift-target;\n"
		"                     default 0).\n"
		"--no-sflight         no single-flight: an input another worker is computing is\n"
		"                     computed again rather than waited for.\n"
		"--shadow             a request that reused something is computed plainly too; serve\n"
		"                     answers shadow_drift=D shadow_changed=K after reused= (D the\n"
		"                     largest 1 - cosine of a last-layer state from the plain one, K\n"
		"                     the predictions whose top-1 differs).\n"
		"--recompute R|off    partial reuse of a near input of any length: its positions are\n"
		"                     aligned by token, the edited ones and the share R (0..1) of the\n"
		"                     others that deviate most are recomputed (default %.2g, a\n"
		"                     bidirectional encoder's %.2g; 1: exact).\n"
		"                     off: only exact repeats are reused (with --tau X, near inputs\n"
		"                     of the same length too, reused whole).\n"
		"--tau X              similarity threshold of every layer's lookup (default: the\n"
		"                     bank's).\n"
		"--fp-chunks N        the fingerprint pools the embedding in N chunks, 1..64 (default\n"
		"                     4; 1: plain mean pooling). Every worker of a bank must agree.\n"
		"--gen-recompute R|on|off  a decoder's prompt that no cached exact prefix covers by\n"
		"                     half is prefilled by partial reuse of a near prompt, as\n"
		"                     --recompute with share R (on: %.2g); its text may then differ\n"
		"                     from the plain one (the answer says near=SHARE approx=BITS) and\n"
		"                     none of its blocks is cached. off (default): exact prefixes\n"
		"                     only, the same text bit for bit.\n",
		LBW_RECOMPUTE_DEFAULT, LBW_RECOMPUTE_DEFAULT_BIDIR, LBW_GEN_RECOMPUTE_DEFAULT);
}

struct opts {
	const char *cmd, *model, *tokenizer, *prompt, *text_file;
	const char *private_s, *max_tokens_s, *seed_s, *steps_s, *temperature_s, *topp_s;
	struct lbw_cache_opts cache;
	int stats;
	/* generate's sampler, from the options above */
	float temperature, topp;
	uint64_t sample_seed; /* 0: take the clock */
};

/* A finite float in [lo, hi] (lo_open: lo itself excluded), whole string. @return 0 or -1. */
static int parse_float(const char *v, double lo, int lo_open, double hi, float *out)
{
	char *end;
	errno = 0;
	double d = strtod(v, &end);
	if (errno || end == v || *end || !isfinite(d) || d < lo || (lo_open && d == lo) || d > hi)
		return -1;
	*out = (float)d;
	return 0;
}

/* An integer in lo..hi, whole string. @return 0 or -1. */
static int parse_long(const char *v, long lo, long hi, long *out)
{
	char *end;
	errno = 0;
	*out = strtol(v, &end, 10);
	return errno || end == v || *end || *out < lo || *out > hi ? -1 : 0;
}

/* The option table: which command takes which option, and where its value goes. */
enum { GEN = 1, SCORE = 2, SERVE = 4 };

static const char **slot_of(struct opts *o, const char *a, int cmd)
{
	static const struct {
		const char *name;
		int cmds;
		size_t off;
	} tab[] = {
		{ "--model", GEN | SCORE | SERVE, offsetof(struct opts, model) },
		{ "--tokenizer", GEN | SCORE | SERVE, offsetof(struct opts, tokenizer) },
		{ "--prompt", GEN, offsetof(struct opts, prompt) },
		{ "--steps", GEN, offsetof(struct opts, steps_s) },
		{ "--temperature", GEN, offsetof(struct opts, temperature_s) },
		{ "--topp", GEN, offsetof(struct opts, topp_s) },
		{ "--text-file", SCORE, offsetof(struct opts, text_file) },
		{ "--max-tokens", SERVE, offsetof(struct opts, max_tokens_s) },
		{ "--seed", GEN | SCORE | SERVE, offsetof(struct opts, seed_s) },
		{ "--private-cache", GEN | SCORE | SERVE, offsetof(struct opts, private_s) },
		{ "--cache", GEN | SCORE | SERVE, offsetof(struct opts, cache.socket) },
		{ "--redis", SCORE | SERVE, offsetof(struct opts, cache.redis) },
		{ "--cache-layers", SCORE | SERVE, offsetof(struct opts, cache.layers) },
		{ "--revalidate", SCORE | SERVE, offsetof(struct opts, cache.revalidate) },
		{ "--tau", SCORE | SERVE, offsetof(struct opts, cache.tau) },
		{ "--recompute", SCORE | SERVE, offsetof(struct opts, cache.recompute) },
		{ "--gen-recompute", GEN | SERVE, offsetof(struct opts, cache.gen_recompute) },
		{ "--fp-chunks", GEN | SCORE | SERVE, offsetof(struct opts, cache.fp_chunks) },
	};
	for (size_t i = 0; i < sizeof(tab) / sizeof(tab[0]); i++)
		if (!strcmp(a, tab[i].name) && (tab[i].cmds & cmd))
			return (const char **)(void *)((char *)o + tab[i].off);
	return NULL;
}

/* @return 0, or -1 after printing one line on stderr. */
static int parse(int argc, char **argv, struct opts *o)
{
	memset(o, 0, sizeof(*o));
	if (argc < 2) {
		fprintf(stderr, "layerbank-worker: missing command (generate, score or serve); see --help\n");
		return -1;
	}
	o->cmd = argv[1];
	int cmd = !strcmp(o->cmd, "generate") ? GEN : !strcmp(o->cmd, "score") ? SCORE :
		  !strcmp(o->cmd, "serve") ? SERVE : 0;
	if (!cmd) {
		fprintf(stderr, "layerbank-worker: unknown command '%s' (generate, score or serve)\n",
			o->cmd);
		return -1;
	}
	for (int i = 2; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--stats") && cmd == GEN) {
			o->stats = 1;
			continue;
		}
		if (!strcmp(a, "--no-sflight") && (cmd & (SCORE | SERVE))) {
			o->cache.no_sflight = 1;
			continue;
		}
		if (!strcmp(a, "--shadow") && (cmd & (SCORE | SERVE))) {
			o->cache.shadow = 1;
			continue;
		}
		const char **slot = slot_of(o, a, cmd);
		if (!slot) {
			fprintf(stderr, "layerbank-worker %s: unknown option '%s'\n", o->cmd, a);
			return -1;
		}
		if (i + 1 >= argc) {
			fprintf(stderr, "layerbank-worker %s: option %s needs a value\n", o->cmd, a);
			return -1;
		}
		*slot = argv[++i];
	}
	if (!o->model || !o->tokenizer) {
		fprintf(stderr, "layerbank-worker %s: --model and --tokenizer are required\n", o->cmd);
		return -1;
	}
	if (cmd == SCORE && !o->text_file) {
		fprintf(stderr, "layerbank-worker score: --text-file is required\n");
		return -1;
	}
	if (cmd == GEN) {
		long steps;
		if (o->steps_s && parse_long(o->steps_s, 0, INT32_MAX, &steps) < 0) {
			fprintf(stderr, "layerbank-worker generate: bad --steps '%s' (an integer >= 0)\n",
				o->steps_s);
			return -1;
		}
		o->temperature = 0.0f;
		o->topp = 1.0f;
		if (o->temperature_s &&
		    parse_float(o->temperature_s, 0.0, 0, FLT_MAX, &o->temperature) < 0) {
			fprintf(stderr, "layerbank-worker generate: bad --temperature '%s' (0 for greedy, "
					"or a finite number above 0)\n", o->temperature_s);
			return -1;
		}
		if (o->topp_s && parse_float(o->topp_s, 0.0, 1, 1.0, &o->topp) < 0) {
			fprintf(stderr, "layerbank-worker generate: bad --topp '%s' (a number above 0 "
					"and at most 1)\n", o->topp_s);
			return -1;
		}
		long seed = 0;
		if (o->seed_s && parse_long(o->seed_s, 0, LONG_MAX, &seed) < 0) {
			fprintf(stderr, "layerbank-worker generate: bad --seed '%s' (an integer >= 0)\n",
				o->seed_s);
			return -1;
		}
		o->sample_seed = (uint64_t)seed;
	}
	if (!!o->cache.socket + !!o->private_s + !!o->cache.redis > 1) {
		fprintf(stderr, "layerbank-worker %s: --cache, --private-cache and --redis exclude "
				"each other\n", o->cmd);
		return -1;
	}
	if (o->private_s) {
		if (lbu_parse_size(o->private_s, &o->cache.private_bytes) < 0 || !o->cache.private_bytes) {
			fprintf(stderr, "layerbank-worker %s: bad --private-cache '%s' (a size such as "
					"64M)\n", o->cmd, o->private_s);
			return -1;
		}
	}
	if ((o->cache.layers || o->cache.revalidate || o->cache.tau || o->cache.recompute ||
	     o->cache.gen_recompute || o->cache.fp_chunks) && !o->cache.socket && !o->private_s) {
		fprintf(stderr, "layerbank-worker %s: --cache-layers, --revalidate, --tau, "
				"--recompute, --gen-recompute and --fp-chunks need --cache or "
				"--private-cache\n", o->cmd);
		return -1;
	}
	return 0;
}

enum model_kind { KIND_LLAMA, KIND_LLAMA_110M, KIND_BERT_BASE, KIND_SAFETENSORS };

/* What --model names: a generated model; a safetensors file, known by its first bytes or its
 * name (then lbw_st_open says what is wrong with it); else a llama2.c checkpoint. */
static enum model_kind model_kind(const char *model)
{
	size_t n = strlen(model), e = strlen(ST_EXT);
	if (!strcmp(model, BERT_MODEL))
		return KIND_BERT_BASE;
	if (!strcmp(model, LLAMA_GEN_MODEL))
		return KIND_LLAMA_110M;
	if (lbw_st_sniff(model) == 1 || (n > e && !strcmp(model + n - e, ST_EXT)))
		return KIND_SAFETENSORS;
	return KIND_LLAMA;
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

/* What generate's sampler needs to print as llama2.c's run does: the piece of each token after
 * the one before it. */
struct printer {
	const struct lbw_tokenizer *t;
	struct lbw_sampler *smp;
	int32_t prev;
	double first_ms; /* when the first sampled token came */
};

/* lbw_next_fn: sample the next token and print it (not the stop, BOS). */
static int32_t sample_print(void *ctx, const float *logits)
{
	struct printer *p = ctx;
	int32_t next = lbw_sampler_next(p->smp, logits);
	if (next != LBW_TOK_BOS) {
		safe_print(lbw_tokenizer_decode(p->t, p->prev, next));
		fflush(stdout);
		p->prev = next;
	}
	if (p->first_ms == 0)
		p->first_ms = now_ms();
	return next;
}

/* The stderr lines of a run: the cache's, and --stats. */
static void generate_report(const struct opts *o, const struct lbw_cache *wc,
			    const struct lbw_gen_result *r, const struct printer *p, uint64_t seed)
{
	if (wc->c) {
		fprintf(stderr, "cache prompt_tokens=%d reused_tokens=%d computed_tokens=%d "
				"ttft_ms=%.3f near=%.4f approx=%u\n", (int)r->prompt_tokens,
			(int)r->reused_tokens, (int)r->computed_tokens, r->ttft_us / 1e3,
			(double)r->near_reused, r->near_approx);
		if (r->cache_error)
			fprintf(stderr, "layerbank-worker generate: warning: prefix cache lost mid-run "
					"(%s); finished without it\n", strerror(-r->cache_error));
	}
	if (o->stats && r->generated > 1) {
		double el = now_ms() - p->first_ms;
		fprintf(stderr, "achieved tok/s: %f\n", el > 0 ? (r->generated - 1) / el * 1000.0 : 0.0);
	}
	if (o->stats && o->temperature > 0.0f)
		fprintf(stderr, "seed: %llu\n", (unsigned long long)seed);
}

/*
 * generate as llama2.c's run: --steps positions, BOS and the prompt among them, the prompt's
 * tokens printed as they come, then sampled ones. The prompt is prefilled at once (reusing the
 * cache's longest prefix of it); the text is the same as token by token, and with the cache as
 * without (lbw_generate).
 */
static int generate(const struct opts *o, struct lbw_scorer *sc, const struct lbw_tokenizer *t,
		    struct lbw_cache *wc)
{
	long steps_l = 256;
	struct lbw_sampler smp;
	struct lbw_gen_result r;
	int rc = EXIT_LOAD;

	if (o->steps_s)
		(void)parse_long(o->steps_s, 0, INT32_MAX, &steps_l); /* checked by parse */
	int32_t steps = steps_l == 0 || steps_l > sc->max_seq ? sc->max_seq : (int32_t)steps_l;
	const char *prompt = o->prompt ? o->prompt : "";
	/* llama2.c seeds from the clock when given none (or 0); the state must not be 0 */
	uint64_t seed = o->sample_seed ? o->sample_seed : (uint64_t)time(NULL);
	seed = seed ? seed : 1;
	int32_t *toks = malloc((strlen(prompt) + 3) * sizeof(int32_t));
	int32_t *out = malloc((size_t)sc->max_seq * sizeof(int32_t));
	if (!toks || !out || lbw_sampler_init(&smp, sc->vocab, o->temperature, o->topp, seed) < 0) {
		fprintf(stderr, "layerbank-worker generate: out of memory\n");
		goto out;
	}
	int n = lbw_tokenizer_encode(t, prompt, 1, 0, toks);
	if (n < 1) {
		fprintf(stderr, "layerbank-worker generate: cannot encode the prompt: %s\n", strerror(-n));
		goto out_smp;
	}
	/* llama2.c prints each position's next token: the prompt's up to position steps - 1. */
	for (int32_t i = 0; i + 1 < n && i < steps; i++)
		safe_print(lbw_tokenizer_decode(t, toks[i], toks[i + 1]));
	fflush(stdout);
	struct printer p = { t, &smp, toks[n - 1], 0 };
	int32_t max_new = steps >= n ? steps - n + 1 : 0;
	int got = max_new ? lbw_generate(sc, wc, toks, n, max_new, sample_print, &p, out, &r) : 0;
	printf("\n");
	fflush(stdout);
	if (got < 0) {
		fprintf(stderr, "layerbank-worker generate: %s\n", got == -ENOMEM ? "out of memory"
				: "a prompt token is out of the model's vocabulary");
		goto out_smp;
	}
	if (max_new)
		generate_report(o, wc, &r, &p, seed);
	rc = 0;
out_smp:
	lbw_sampler_free(&smp);
out:
	free(toks);
	free(out);
	return rc;
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

static int score(const struct opts *o, struct lbw_scorer *sc, const struct lbw_tokenizer *t,
		 struct lbw_cache *wc)
{
	char *text = read_text(o->text_file);
	if (!text)
		return EXIT_LOAD;
	struct lbw_score r;
	char err[256];
	int rc = lbw_score_text(sc, t, wc, text, sc->max_seq, 0, &r, NULL, err, sizeof(err));
	free(text);
	if (rc == -ENOMEM) {
		fprintf(stderr, "layerbank-worker score: out of memory\n");
		return EXIT_LOAD;
	}
	if (rc < 0) {
		fprintf(stderr, "layerbank-worker score: %s: %s\n", o->text_file, err);
		return EXIT_LOAD;
	}
	printf("tokens %d predicted %d nll_per_token %.6f\n", r.tokens, r.predicted,
	       r.nll / (double)r.predicted);
	if (wc->blocks_only && wc->c)
		fprintf(stderr, "layerbank-worker score: note: a FusedKV checkpoint's hidden states "
				"are not cached (generate reuses its prefix blocks)\n");
	if (o->cache.socket || o->cache.private_bytes || o->cache.redis) {
		printf("cache hit_layer %d computed %u inserted %u\n", (int)r.lem.hit_layer,
		       r.lem.layers_computed, r.lem.layers_inserted);
		if (r.lem.cache_error)
			fprintf(stderr, "layerbank-worker score: warning: layer cache lost mid-run (%s); "
					"finished without it\n", strerror(-r.lem.cache_error));
	}
	return 0;
}

/* A llama2.c checkpoint, or llama-110m of seed, and a tokenizer of its vocabulary. */
static int open_llama(const struct opts *o, enum model_kind kind, uint64_t seed,
		      struct lbw_scorer *sc, struct lbw_tokenizer *t)
{
	char err[512];
	int rc = kind == KIND_LLAMA_110M ? lbw_scorer_open_llama_110m(sc, seed, err, sizeof(err)) :
		 lbw_scorer_open_llama(sc, o->model, err, sizeof(err));
	if (rc == -EINVAL) {
		fprintf(stderr, "layerbank-worker: %s: not a safetensors file, nor a llama2.c "
				"checkpoint: %s\n", o->model, err);
		return EXIT_LOAD;
	}
	if (rc < 0) {
		fprintf(stderr, "layerbank-worker: %s\n", err);
		return EXIT_LOAD;
	}
	if (lbw_tokenizer_load(t, o->tokenizer, sc->vocab, err, sizeof(err)) < 0) {
		fprintf(stderr, "layerbank-worker: %s\n", err);
		lbw_scorer_close(sc);
		return EXIT_LOAD;
	}
	return 0;
}

/* An encoder, generated or loaded, and the tokenizer whose vocabulary its head scores:
 * shipped tokenizers hold 512 tokens. */
static int open_encoder(const struct opts *o, enum model_kind kind, uint64_t seed,
			struct lbw_scorer *sc, struct lbw_tokenizer *t)
{
	char err[512];
	int rc;
	if (lbw_tokenizer_load(t, o->tokenizer, LBW_SERVE_ENCODER_VOCAB, err, sizeof(err)) < 0) {
		fprintf(stderr, "layerbank-worker: %s\n", err);
		return EXIT_LOAD;
	}
	if (kind == KIND_BERT_BASE)
		rc = lbw_scorer_open_bert(sc, LBW_SERVE_ENCODER_VOCAB, seed, err, sizeof(err));
	else
		rc = lbw_scorer_open_safetensors(sc, o->model, LBW_SERVE_ENCODER_VOCAB, err,
						 sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "layerbank-worker: %s\n", err);
		lbw_tokenizer_free(t);
		return EXIT_LOAD;
	}
	return 0;
}

/* The model score and serve run: a llama2.c checkpoint, a generated model (llama-110m, the
 * BERT-base shape) of --seed, or a safetensors checkpoint. */
static int open_scorer(const struct opts *o, struct lbw_scorer *sc, struct lbw_tokenizer *t)
{
	enum model_kind kind = model_kind(o->model);
	long seed = GEN_SEED;
	if (o->seed_s && kind != KIND_BERT_BASE && kind != KIND_LLAMA_110M) {
		fprintf(stderr, "layerbank-worker %s: --seed is for --model %s and %s only\n",
			o->cmd, BERT_MODEL, LLAMA_GEN_MODEL);
		return EXIT_USAGE;
	}
	if (o->seed_s && parse_long(o->seed_s, 0, LONG_MAX, &seed) < 0) {
		fprintf(stderr, "layerbank-worker %s: bad --seed '%s'\n", o->cmd, o->seed_s);
		return EXIT_USAGE;
	}
	if (kind == KIND_LLAMA || kind == KIND_LLAMA_110M)
		return open_llama(o, kind, (uint64_t)seed, sc, t);
	return open_encoder(o, kind, (uint64_t)seed, sc, t);
}

int main(int argc, char **argv)
{
	struct opts o;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage(stdout);
			return 0;
		}
	}
	if (parse(argc, argv, &o) < 0)
		return EXIT_USAGE;
	int is_gen = !strcmp(o.cmd, "generate");
	enum model_kind kind = model_kind(o.model);
	if (is_gen && kind != KIND_LLAMA && kind != KIND_LLAMA_110M) {
		fprintf(stderr, "layerbank-worker generate: %s is an encoder: encoders are scored "
				"(score, serve), not sampled; generate takes a llama2.c "
				"checkpoint or " LLAMA_GEN_MODEL "\n", o.model);
		return EXIT_USAGE;
	}

	long max_tokens = 0;
	if (o.max_tokens_s && parse_long(o.max_tokens_s, 2, INT32_MAX, &max_tokens) < 0) {
		fprintf(stderr, "layerbank-worker serve: bad --max-tokens '%s' (an integer >= 2)\n",
			o.max_tokens_s);
		return EXIT_USAGE;
	}
	struct lbw_scorer sc;
	struct lbw_tokenizer t;
	/* generate's --seed is its sampler's, and llama-110m's weights' */
	int rc = is_gen ? open_llama(&o, kind, o.seed_s ? o.sample_seed : GEN_SEED, &sc, &t)
			: open_scorer(&o, &sc, &t);
	if (rc)
		return rc;
	struct lbw_cache wc;
	char who[64];
	snprintf(who, sizeof(who), "layerbank-worker %s", o.cmd);
	if (lbw_cache_open(&wc, &o.cache, &sc, who) < 0) {
		rc = EXIT_USAGE;
	} else {
		if (is_gen) {
			rc = generate(&o, &sc, &t, &wc);
		} else if (!strcmp(o.cmd, "score")) {
			rc = score(&o, &sc, &t, &wc);
		} else {
			const char *mode = wc.bank ? "private" : wc.c ? "shared" :
					   wc.redis ? "redis" : "none";
			int32_t cap = max_tokens && max_tokens < sc.max_seq ? (int32_t)max_tokens : sc.max_seq;
			rc = lbw_serve(&sc, &t, &wc, cap, mode, stdin, stdout) < 0 ? EXIT_LOAD : 0;
		}
		if (wc.redis) {
			const struct lbw_redis_stats *st = lbw_redis_stats(wc.redis);
			fprintf(stderr, "redis hits=%llu misses=%llu refused=%llu stored=%llu "
					"errors=%llu\n", (unsigned long long)st->hits,
				(unsigned long long)st->misses, (unsigned long long)st->refused,
				(unsigned long long)st->stored, (unsigned long long)st->errors);
		}
		lbw_cache_close(&wc);
	}
	lbw_tokenizer_free(&t);
	lbw_scorer_close(&sc);
	return rc;
}
