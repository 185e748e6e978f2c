/* layerbank-bench, workload module: prints the fleet benchmark's request streams or, with
 * --summary, their make-up. The scoring stream, one request a line: id, kind, doc, mutation,
 * text; the chat stream (--chat): id, conversation, turn, system prompt, depends-on, tokens to
 * generate, paragraph tokens, text; tab-separated. */
#include "bench.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"
#include "workload.h"

#define DATA_FILE "tinystories_val.txt"
#define TOK_FILE "tok512.bin"
#define USAGE                                                                                 \
	"usage: layerbank-bench workload [--requests N] [--exact P] [--near P] [--zipf S] "     \
	"[--seed N] [--data FILE] [--min-chars N] [--max-chars N] [--summary]; "                \
	"layerbank-bench workload --chat [--conversations N] [--systems N] "                    \
	"[--system-tokens MIN-MAX] [--turns MIN-MAX] [--gen MIN-MAX] [--open N] "               \
	"[--max-tokens N] [--zipf S] "                                                          \
	"[--seed N] [--data FILE] [--tokenizer FILE] [--vocab N] [--min-chars N] "              \
	"[--max-chars N] [--summary]"

/* The command line: both streams' settings, and which stream it asks for. */
struct wl_opts {
	struct lbw_workload_cfg score;
	struct lbw_chat_cfg chat;
	uint64_t min_chars, max_chars, vocab;
	const char *data, *tokenizer;
	const char *score_only; /* the first option given that only the scoring stream takes */
	const char *chat_only;  /* the first option given that only --chat takes */
	int chat_mode, summary;
};

/* One line on stderr and the exit status of a bad command line. */
static int bad_usage(const char *what, const char *arg)
{
	fprintf(stderr, "layerbank-bench workload: %s%s%s%s\n", what, arg ? " '" : "", arg ? arg : "",
		arg ? "'" : "");
	return 2;
}

/* Decimal in [lo, hi], the whole string. @return 0, or -EINVAL. */
static int parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *v)
{
	char *end;
	if (!*s || *s == '-' || *s == '+' || *s == ' ')
		return -EINVAL;
	errno = 0;
	unsigned long long x = strtoull(s, &end, 10);
	if (errno || *end || x < lo || x > hi)
		return -EINVAL;
	*v = x;
	return 0;
}

/* A finite number in [lo, hi], the whole string. @return 0, or -EINVAL. */
static int parse_double(const char *s, double lo, double hi, double *v)
{
	char *end;
	errno = 0;
	double x = strtod(s, &end);
	if (!*s || errno || *end || !(x >= lo && x <= hi))
		return -EINVAL;
	*v = x;
	return 0;
}

static int cmp_desc(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return (x < y) - (x > y);
}

static int print_summary(const struct lbw_workload *w, const struct lbw_paragraphs *p)
{
	uint32_t muts[LBW_MUT_COUNT] = { 0 };
	uint32_t *per_para = calloc(p->n, sizeof(uint32_t)); /* [p->n] requests per paragraph */
	uint32_t *per_doc = malloc(((size_t)w->docs + 1) * sizeof(uint32_t)); /* [docs] */
	if (!per_para || !per_doc) {
		free(per_para);
		free(per_doc);
		fprintf(stderr, "layerbank-bench workload: out of memory\n");
		return 1;
	}
	for (uint32_t i = 0; i < w->n; i++) {
		muts[w->r[i].mut]++;
		per_para[w->r[i].doc]++;
	}
	uint32_t d = 0;
	for (uint32_t i = 0; i < p->n; i++)
		if (per_para[i])
			per_doc[d++] = per_para[i];
	qsort(per_doc, d, sizeof(uint32_t), cmp_desc);
	uint32_t top = (d + 9) / 10;
	uint64_t top_req = 0;
	for (uint32_t i = 0; i < top; i++)
		top_req += per_doc[i];

	printf("requests %u\n", w->n);
	for (int k = 0; k < 3; k++)
		printf("  %-9s %7u  %5.1f%%\n", lbw_req_kind_name((enum lbw_req_kind)k), w->count[k],
		       100.0 * w->count[k] / w->n);
	printf("near-duplicates by mutation\n");
	for (int m = 1; m < LBW_MUT_COUNT; m++)
		printf("  %-9s %7u\n", lbw_mutation_name((enum lbw_mutation)m), muts[m]);
	printf("distinct docs %u\n", w->docs);
	printf("top 10%% of docs (%u of %u, by request count, fresh included): %.1f%% of requests\n",
	       top, d, 100.0 * (double)top_req / w->n);
	free(per_para);
	free(per_doc);
	return 0;
}


/* "MIN-MAX" (or "N" for N-N), both in [lo, hi] and MIN <= MAX. @return 0, or -EINVAL. */
static int parse_range(const char *s, uint32_t lo, uint32_t hi, uint32_t *a, uint32_t *b)
{
	char buf[64];
	uint64_t x, y;
	const char *dash = *s ? strchr(s + 1, '-') : NULL;
	if (strlen(s) >= sizeof(buf))
		return -EINVAL;
	memcpy(buf, s, strlen(s) + 1);
	if (dash)
		buf[dash - s] = '\0';
	const char *hi_s = dash ? buf + (dash - s) + 1 : buf;
	if (parse_u64(buf, lo, hi, &x) || parse_u64(hi_s, lo, hi, &y) || x > y)
		return -EINVAL;
	*a = (uint32_t)x;
	*b = (uint32_t)y;
	return 0;
}

/* An option only --chat takes. @return 0; 2 after a one-line error; 1 not such an option. */
static int opt_chat(struct wl_opts *o, int ch, const char *arg)
{
	struct lbw_chat_cfg *c = &o->chat;
	uint64_t v;
	switch (ch) {
	case 'C':
		if (parse_u64(arg, 1, LBW_CHAT_MAX_CONVS, &v))
			return bad_usage("--conversations wants an integer in 1..1000000, got",
					 arg);
		c->conversations = (uint32_t)v;
		return 0;
	case 'Y':
		if (parse_u64(arg, 1, LBW_CHAT_MAX_SYSTEMS, &v))
			return bad_usage("--systems wants an integer in 1..1024, got", arg);
		c->systems = (uint32_t)v;
		return 0;
	case 'T':
		if (parse_range(arg, 1, LBW_CHAT_MAX_SYS_TOKENS, &c->sys_tokens_min,
				&c->sys_tokens_max))
			return bad_usage("--system-tokens wants MIN-MAX within 1..4096, got", arg);
		return 0;
	case 'U':
		if (parse_range(arg, 1, LBW_CHAT_MAX_TURNS, &c->turns_min, &c->turns_max))
			return bad_usage("--turns wants MIN-MAX within 1..64, got", arg);
		return 0;
	case 'G':
		if (parse_range(arg, 1, LBW_CHAT_MAX_GEN, &c->gen_min, &c->gen_max))
			return bad_usage("--gen wants MIN-MAX within 1..4096, got", arg);
		return 0;
	case 'O':
		if (parse_u64(arg, 1, LBW_CHAT_MAX_OPEN, &v))
			return bad_usage("--open wants an integer in 1..4096, got", arg);
		c->open = (uint32_t)v;
		return 0;
	case 'M':
		if (parse_u64(arg, 0, LBW_CHAT_MAX_TOKENS, &v))
			return bad_usage("--max-tokens wants an integer in 0..1048576, got", arg);
		c->max_tokens = (uint32_t)v;
		return 0;
	case 'k':
		o->tokenizer = arg;
		return 0;
	case 'V':
		if (parse_u64(arg, LBW_TOK_BYTE0 + 256, 1u << 20, &o->vocab))
			return bad_usage("--vocab wants an integer in 259..1048576, got", arg);
		return 0;
	}
	return 1;
}

/* An option only the scoring stream takes. @return as opt_chat. */
static int opt_score(struct wl_opts *o, int ch, const char *arg)
{
	uint64_t v;
	switch (ch) {
	case 'n':
		if (parse_u64(arg, 1, LBW_MAX_REQUESTS, &v))
			return bad_usage("--requests wants an integer in 1..10000000, got", arg);
		o->score.n_requests = (uint32_t)v;
		return 0;
	case 'e':
		if (parse_double(arg, 0, 1, &o->score.p_exact))
			return bad_usage("--exact wants a probability in [0, 1], got", arg);
		return 0;
	case 'r':
		if (parse_double(arg, 0, 1, &o->score.p_near))
			return bad_usage("--near wants a probability in [0, 1], got", arg);
		return 0;
	}
	return 1;
}

/* An option both streams take. @return as opt_chat. */
static int opt_common(struct wl_opts *o, int ch, const char *arg)
{
	switch (ch) {
	case 'z':
		if (parse_double(arg, 0, LBW_MAX_ZIPF_S, &o->score.zipf_s))
			return bad_usage("--zipf wants an exponent in [0, 10], got", arg);
		o->chat.zipf_s = o->score.zipf_s;
		return 0;
	case 's':
		if (parse_u64(arg, 0, UINT64_MAX, &o->score.seed))
			return bad_usage("--seed wants an unsigned 64-bit integer, got", arg);
		o->chat.seed = o->score.seed;
		return 0;
	case 'd':
		o->data = arg;
		return 0;
	case 'a':
		if (parse_u64(arg, 0, UINT32_MAX, &o->min_chars))
			return bad_usage("--min-chars wants an integer in 0..4294967295, got", arg);
		return 0;
	case 'b':
		if (parse_u64(arg, 0, UINT32_MAX, &o->max_chars))
			return bad_usage("--max-chars wants an integer in 0..4294967295 "
					 "(0: no limit), got", arg);
		return 0;
	case 'S':
		o->summary = 1;
		return 0;
	case 'c':
		o->chat_mode = 1;
		return 0;
	}
	return 1;
}

/* One option of the table; name is its long name (static). @return 0, or 2 after a one-line
 * error. */
static int parse_opt(struct wl_opts *o, int ch, const char *arg, const char *name)
{
	int rc = opt_chat(o, ch, arg);
	if (rc == 0 && !o->chat_only)
		o->chat_only = name;
	if (rc != 1)
		return rc;
	rc = opt_score(o, ch, arg);
	if (rc == 0 && !o->score_only)
		o->score_only = name;
	if (rc != 1)
		return rc;
	rc = opt_common(o, ch, arg);
	return rc == 1 ? bad_usage("unhandled option", name) : rc;
}

/* The whole command line into *o. @return -1 go on; else the exit status (0 after --help). */
static int parse_args(int argc, char **argv, struct wl_opts *o)
{
	static const struct option opts[] = {
		{ "requests", required_argument, NULL, 'n' },
		{ "exact", required_argument, NULL, 'e' },
		{ "near", required_argument, NULL, 'r' },
		{ "zipf", required_argument, NULL, 'z' },
		{ "seed", required_argument, NULL, 's' },
		{ "data", required_argument, NULL, 'd' },
		{ "min-chars", required_argument, NULL, 'a' },
		{ "max-chars", required_argument, NULL, 'b' },
		{ "summary", no_argument, NULL, 'S' },
		{ "help", no_argument, NULL, 'h' },
		{ "chat", no_argument, NULL, 'c' },
		{ "conversations", required_argument, NULL, 'C' },
		{ "systems", required_argument, NULL, 'Y' },
		{ "system-tokens", required_argument, NULL, 'T' },
		{ "turns", required_argument, NULL, 'U' },
		{ "gen", required_argument, NULL, 'G' },
		{ "open", required_argument, NULL, 'O' },
		{ "max-tokens", required_argument, NULL, 'M' },
		{ "tokenizer", required_argument, NULL, 'k' },
		{ "vocab", required_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 }
	};
	int ch, idx = -1;
	*o = (struct wl_opts){ .score = lbw_workload_defaults(), .chat = lbw_chat_defaults(),
			       .min_chars = 100, .max_chars = 600, .vocab = 512 };
	optind = 1;
	opterr = 0;
	while ((ch = getopt_long(argc, argv, ":", opts, &idx)) != -1) {
		if (ch == ':')
			return bad_usage("missing value after", argv[optind - 1]);
		if (ch == '?' || idx < 0)
			return bad_usage("unknown option (" USAGE "):", argv[optind - 1]);
		if (ch == 'h') {
			printf("%s\n", USAGE);
			return 0;
		}
		int rc = parse_opt(o, ch, optarg, opts[idx].name);
		if (rc)
			return rc;
		idx = -1;
	}
	if (optind < argc)
		return bad_usage("unexpected argument (" USAGE "):", argv[optind]);
	if (o->chat_mode && o->score_only) {
		fprintf(stderr, "layerbank-bench workload: --%s is not an option of --chat\n",
			o->score_only);
		return 2;
	}
	if (!o->chat_mode && o->chat_only) {
		fprintf(stderr, "layerbank-bench workload: --%s needs --chat\n", o->chat_only);
		return 2;
	}
	if (o->score.p_exact + o->score.p_near > 1 + 1e-9)
		return bad_usage("--exact plus --near exceed 1", NULL);
	if (o->max_chars && o->min_chars > o->max_chars) {
		fprintf(stderr, "layerbank-bench workload: --min-chars %llu is above --max-chars %llu\n",
			(unsigned long long)o->min_chars, (unsigned long long)o->max_chars);
		return 2;
	}
	return -1;
}

/* $LAYERBANK_DATA/name, or LB_DATA_DIR/name, into buf. @return 0, or 2 after a one-line error. */
static int data_path(const char *name, char *buf, size_t n)
{
	const char *dir = getenv("LAYERBANK_DATA");
	if ((size_t)snprintf(buf, n, "%s/%s", dir && *dir ? dir : LB_DATA_DIR, name) >= n)
		return bad_usage("LAYERBANK_DATA is too long", NULL);
	return 0;
}

static void print_score(const struct lbw_workload *w)
{
	for (uint32_t i = 0; i < w->n; i++) {
		const struct lbw_request *r = &w->r[i];
		printf("%u\t%s\t%u\t%s\t%s\n", r->id, lbw_req_kind_name(r->kind), r->doc,
		       lbw_mutation_name(r->mut), r->text);
	}
}

static int run_score(const struct wl_opts *o, const struct lbw_paragraphs *p)
{
	char err[512];
	struct lbw_workload w;
	int rc = lbw_workload_make(p, &o->score, &w, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "layerbank-bench: %s\n", err);
		return rc == -EINVAL ? 2 : 1;
	}
	int status = 0;
	if (o->summary)
		status = print_summary(&w, p);
	else
		print_score(&w);
	lbw_workload_free(&w);
	return status;
}

/* ---- the chat stream ---- */

static void print_chat(const struct lbw_chat *c)
{
	for (uint32_t i = 0; i < c->n; i++) {
		const struct lbw_chat_req *r = &c->r[i];
		char dep[16] = "-";
		if (r->depends_on != LBW_CHAT_NONE)
			snprintf(dep, sizeof(dep), "%u", r->depends_on);
		printf("%u\t%u\t%u\t%u\t%s\t%u\t%u\t%s\n", r->id, r->conv, r->turn, r->sys, dep,
		       r->gen, r->n_tokens, r->text);
	}
}

/* Conversations by turn count, and the tokens to generate. */
static void chat_summary_convs(const struct lbw_chat *c, const struct lbw_chat_cfg *cfg)
{
	uint32_t by_turns[LBW_CHAT_MAX_TURNS + 1] = { 0 };
	uint64_t gen = 0, para = 0;
	uint32_t pmin = UINT32_MAX, pmax = 0;
	for (uint32_t i = 0; i < c->n; i++) {
		const struct lbw_chat_req *r = &c->r[i];
		by_turns[r->n_turns] += r->turn == 0;
		gen += r->gen;
		para += r->n_tokens;
		pmin = r->n_tokens < pmin ? r->n_tokens : pmin;
		pmax = r->n_tokens > pmax ? r->n_tokens : pmax;
	}
	printf("requests %u\n", c->n);
	printf("conversations %u, %u open at once; turns each (%u..%u drawn): mean %.2f\n",
	       c->n_convs, cfg->open, cfg->turns_min, cfg->turns_max, (double)c->n / c->n_convs);
	for (uint32_t t = cfg->turns_min; t <= cfg->turns_max; t++)
		printf("  %2u turns %6u\n", t, by_turns[t]);
	printf("tokens to generate a turn (%u..%u drawn): mean %.1f, %llu in all\n", cfg->gen_min,
	       cfg->gen_max, (double)gen / c->n, (unsigned long long)gen);
	printf("user paragraphs: %u, mean %.1f tokens (%u..%u)\n", c->n, (double)para / c->n, pmin,
	       pmax);
}

static void chat_summary_systems(const struct lbw_chat *c, const struct lbw_chat_cfg *cfg)
{
	printf("system prompts %u (%u..%u tokens, target drawn; popularity zipf %g)\n", c->n_sys,
	       cfg->sys_tokens_min, cfg->sys_tokens_max, cfg->zipf_s);
	for (uint32_t k = 0; k < c->n_sys; k++) {
		const struct lbw_chat_sys *s = &c->sys[k];
		double share = 100.0 * s->convs / c->n_convs;
		printf("  %3u  %4u tokens (target %u, %u paragraphs)  %6u conversations  %5.1f%%\n",
		       k, s->n_tokens, s->target, s->n_paras, s->convs, share);
	}
}

/*
 * Prompt tokens with every answer as long as its turn's gen, and the reusable prefix: for a
 * request, everything before its own user paragraph (BOS and the system prompt on turn 0;
 * the previous turn's prompt and answer after). cold: the same, except that the first turn 0
 * on each system prompt computes it. blocks: the reusable prefix cut to whole 16-token blocks.
 */
static int chat_summary_prompts(const struct lbw_chat *c)
{
	uint64_t total = 0, reuse = 0, cold = 0, blocks = 0;
	uint64_t *len = malloc((size_t)c->n * sizeof(*len)); /* [n] prompt + gen */
	uint8_t *seen = calloc(c->n_sys, 1);                  /* [n_sys] system prompt used */
	if (!len || !seen) {
		free(len);
		free(seen);
		fprintf(stderr, "layerbank-bench workload: out of memory\n");
		return 1;
	}
	for (uint32_t i = 0; i < c->n; i++) {
		const struct lbw_chat_req *r = &c->r[i];
		uint64_t n = (uint64_t)lbw_chat_prompt_len(c, i, NULL), pre = n - r->n_tokens;
		total += n;
		reuse += pre;
		blocks += pre / 16 * 16;
		cold += r->turn == 0 && !seen[r->sys] ? 0 : pre;
		seen[r->sys] |= r->turn == 0;
		len[i] = n + r->gen;
	}
	qsort(len, c->n, sizeof(*len), lbb_cmp_u64);
	printf("prompt tokens, every answer as long as drawn: %llu, mean %.1f a request\n",
	       (unsigned long long)total, (double)total / c->n);
	printf("prompt + generation: median %llu, p90 %llu, max %llu tokens\n",
	       (unsigned long long)len[c->n / 2], (unsigned long long)len[c->n * 9ull / 10],
	       (unsigned long long)len[c->n - 1]);
	printf("reusable by an exact prefix cache (everything before a turn's own paragraph):\n");
	printf("  every system prompt and earlier turn cached  %9llu  %5.1f%%\n",
	       (unsigned long long)reuse, 100.0 * reuse / total);
	printf("  each system prompt computed at first use     %9llu  %5.1f%%\n",
	       (unsigned long long)cold, 100.0 * cold / total);
	printf("  in whole 16-token blocks, all cached         %9llu  %5.1f%%\n",
	       (unsigned long long)blocks, 100.0 * blocks / total);
	free(len);
	free(seen);
	return 0;
}

static int run_chat(const struct wl_opts *o, const struct lbw_paragraphs *p)
{
	char path[4096], err[512];
	const char *tok = o->tokenizer;
	struct lbw_tokenizer t;
	struct lbw_chat c;
	if (!tok && data_path(TOK_FILE, path, sizeof(path)))
		return 2;
	tok = tok ? tok : path;
	if (lbw_tokenizer_load(&t, tok, (int32_t)o->vocab, err, sizeof(err)) < 0) {
		fprintf(stderr, "layerbank-bench: %s\n", err);
		return 1;
	}
	int rc = lbw_chat_make(p, &t, &o->chat, &c, err, sizeof(err));
	lbw_tokenizer_free(&t);
	if (rc) {
		fprintf(stderr, "layerbank-bench: %s\n", err);
		return rc == -EINVAL ? 2 : 1;
	}
	int status = 0;
	if (o->summary) {
		chat_summary_convs(&c, &o->chat);
		chat_summary_systems(&c, &o->chat);
		status = chat_summary_prompts(&c);
	} else {
		print_chat(&c);
	}
	lbw_chat_free(&c);
	return status;
}

int bench_workload_main(int argc, char **argv)
{
	struct wl_opts o;
	char path[4096], err[512];
	struct lbw_paragraphs p;
	int rc = parse_args(argc, argv, &o);
	if (rc >= 0)
		return rc;
	if (!o.data && data_path(DATA_FILE, path, sizeof(path)))
		return 2;
	rc = lbw_paragraphs_load(o.data ? o.data : path, (uint32_t)o.min_chars,
				 (uint32_t)o.max_chars, &p, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "layerbank-bench: %s\n", err);
		return 1;
	}
	int status = o.chat_mode ? run_chat(&o, &p) : run_score(&o, &p);
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, "layerbank-bench workload: writing the stream: %s\n", strerror(errno));
		status = status ? status : 1;
	}
	lbw_paragraphs_free(&p);
	return status;
}
