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

#include "model_llama.h"
#include "tokenizer.h"

#define EXIT_USAGE 2
#define EXIT_LOAD 1
/* Largest --text-file read for score. */
#define MAX_TEXT_BYTES (16u << 20)

static void usage(FILE *f)
{
	fprintf(f,
		"usage: layerbank-worker generate --model M --tokenizer T [--prompt S] [--steps N]\n"
		"                                 [--temperature 0] [--cache SOCKET] [--stats]\n"
		"       layerbank-worker score --model M --tokenizer T --text-file F [--cache SOCKET]\n"
		"\n"
		"generate  greedy decoding, printed as llama2.c's run.c prints it. --steps counts\n"
		"          positions including BOS and the prompt (default 256; 0 or more than the\n"
		"          model's seq_len means seq_len). Only --temperature 0 is implemented:\n"
		"          sampling with a temperature above 0 is rejected. --stats prints the\n"
		"          achieved tokens/s on stderr.\n"
		"score     prints 'tokens N predicted P nll_per_token X': N tokens with BOS, P = N-1,\n"
		"          X the mean negative log-likelihood (nats). The file is read whole; one\n"
		"          trailing newline is dropped.\n"
		"--cache   accepted; the layer cache is not used yet.\n");
}

struct opts {
	const char *cmd, *model, *tokenizer, *prompt, *text_file, *cache;
	long steps;
	double temperature;
	int stats;
};

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
	} else if (lbw_llama_prompt(m, s, toks, n, NULL, &nll) < 0) {
		fprintf(stderr, "layerbank-worker score: a token is out of the model's vocabulary\n");
	} else {
		printf("tokens %d predicted %d nll_per_token %.6f\n", n, n - 1, nll / (double)(n - 1));
		rc = 0;
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
