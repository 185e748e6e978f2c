/*
 * The scoring stream: determinism, kind shares, Zipf popularity against its exact weights, the
 * shape of every mutation, bad configurations, corpus exhaustion, the corpus loader and its split
 * (no paragraph of the training part is ever a request).
 * The chat stream: determinism (also of layerbank-bench's output), system prompt lengths and
 * popularity, paragraphs used once, dependencies, exact token prefixes, bad configurations and
 * options.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"
#include "tokenizer.h"
#include "workload.h"

#define VAL LB_DATA_DIR "/tinystories_val.txt"
#define TOK LB_DATA_DIR "/tok512.bin"
#define MIN_CHARS 100
#define MAX_CHARS 600
/* Requests of the statistical tests; their fresh share (0.05: about 1,000 documents) stays well
 * inside the corpus's 1,623 paragraphs of MIN_CHARS..MAX_CHARS. */
#define N_STAT 20000u

static struct lbw_paragraphs corpus; /* VAL, paragraphs of MIN_CHARS..MAX_CHARS */
static struct lbw_tokenizer tok;     /* TOK */
/* SHORT_N generated paragraphs of about 12 tokens: large chat streams, cheap to tokenize */
#define SHORT_N 8000u
static struct lbw_paragraphs shorts;

static void short_corpus(uint32_t n, struct lbw_paragraphs *p);

static int setup(void **state)
{
	(void)state;
	char err[256];
	int rc = lbw_paragraphs_load(VAL, MIN_CHARS, MAX_CHARS, &corpus, err, sizeof(err));
	if (!rc)
		rc = lbw_tokenizer_load(&tok, TOK, 512, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "%s\n", err);
		return -1;
	}
	short_corpus(SHORT_N, &shorts);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	lbw_paragraphs_free(&corpus);
	lbw_tokenizer_free(&tok);
	lbw_paragraphs_free(&shorts);
	return 0;
}

static struct lbw_workload_cfg stat_cfg(double zipf_s, uint64_t seed)
{
	struct lbw_workload_cfg c = lbw_workload_defaults();
	c.n_requests = N_STAT;
	c.p_exact = 0.6;
	c.p_near = 0.35;
	c.zipf_s = zipf_s;
	c.seed = seed;
	return c;
}

static void make(const struct lbw_paragraphs *p, const struct lbw_workload_cfg *c,
		 struct lbw_workload *w)
{
	char err[256] = "";
	int rc = lbw_workload_make(p, c, w, err, sizeof(err));
	if (rc)
		fail_msg("lbw_workload_make: %d (%s)", rc, err);
}

static int is_letter(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int is_mark(char c)
{
	return c != '\0' && strchr(",.!?", c) != NULL;
}

static size_t word_count(const char *s)
{
	size_t n = 0;
	for (size_t i = 0; s[i]; i++)
		n += is_letter(s[i]) && (i == 0 || !is_letter(s[i - 1]));
	return n;
}

/* s with every word (letter run) replaced by one '#'. */
static char *skeleton(const char *s)
{
	char *o = malloc(strlen(s) + 1), *q = o;
	assert_non_null(o);
	for (size_t i = 0; s[i]; i++) {
		if (!is_letter(s[i]))
			*q++ = s[i];
		else if (i == 0 || !is_letter(s[i - 1]))
			*q++ = '#';
	}
	*q = '\0';
	return o;
}

/* The bytes in which a and b differ: *pre common prefix, *suf common suffix not overlapping. */
static void diff_window(const char *a, const char *b, size_t *pre, size_t *suf)
{
	size_t la = strlen(a), lb = strlen(b), p = 0, s = 0;
	while (p < la && p < lb && a[p] == b[p])
		p++;
	while (s < la - p && s < lb - p && a[la - 1 - s] == b[lb - 1 - s])
		s++;
	*pre = p;
	*suf = s;
}

/* t is base with one byte inserted, for which ok() holds; @return that byte or 0. */
static char inserted(const char *base, const char *t)
{
	size_t lb = strlen(base), lt = strlen(t), pre, suf;
	if (lt != lb + 1)
		return 0;
	diff_window(base, t, &pre, &suf);
	return pre + suf == lb ? t[pre] : 0;
}

/* Check that text is a near-duplicate of base made by mutation m, as workload.h describes. */
static void check_mutation(enum lbw_mutation m, const char *base, const char *t, uint32_t id)
{
	size_t lb = strlen(base), lt = strlen(t), pre, suf;
	diff_window(base, t, &pre, &suf);
	switch (m) {
	case LBW_MUT_WORD_SWAP: {
		char *sb = skeleton(base), *st = skeleton(t);
		int same = strcmp(sb, st) == 0;
		free(sb);
		free(st);
		if (!same)
			fail_msg("request %u: word_swap changed more than a word", id);
		/* the differing bytes lie inside one word of each */
		for (size_t i = pre; i < lt - suf; i++)
			assert_true(is_letter(t[i]));
		for (size_t i = pre; i < lb - suf; i++)
			assert_true(is_letter(base[i]));
		break;
	}
	case LBW_MUT_TYPO: {
		char c;
		if (lt == lb) { /* two adjacent letters swapped */
			assert_int_equal(lb - pre - suf, 2);
			assert_true(is_letter(t[pre]) && is_letter(t[pre + 1]));
			assert_true(t[pre] == base[pre + 1] && t[pre + 1] == base[pre]);
		} else if ((c = inserted(base, t)) != 0) { /* a letter doubled */
			assert_true(is_letter(c));
			assert_true(t[pre + 1] == c || (pre > 0 && t[pre - 1] == c));
		} else { /* a letter dropped */
			c = inserted(t, base);
			if (!c || !is_letter(c))
				fail_msg("request %u: typo is no swap, drop or double", id);
		}
		break;
	}
	case LBW_MUT_PUNCT: {
		char c = lt > lb ? inserted(base, t) : inserted(t, base);
		if (!is_mark(c))
			fail_msg("request %u: punct did not add or remove one of , . ! ?", id);
		break;
	}
	case LBW_MUT_CASE:
		assert_int_equal(lt, lb);
		assert_int_equal(lb - pre - suf, 1);
		assert_true(is_letter(base[pre]) && (base[pre] ^ 0x20) == t[pre]);
		assert_true(pre == 0 || !is_letter(base[pre - 1]));
		break;
	case LBW_MUT_APPEND: {
		assert_true(lt > lb && memcmp(t, base, lb) == 0);
		const char *q = t + lb;
		size_t words = 0;
		while (*q == ' ' && is_letter(q[1])) {
			q++;
			while (is_letter(*q))
				q++;
			words++;
		}
		if (*q || words < 1 || words > 4)
			fail_msg("request %u: append added no 1-4 words: '%s'", id, t + lb);
		break;
	}
	case LBW_MUT_REMOVE: {
		assert_true(lt < lb && memcmp(t, base, lt) == 0);
		assert_true(lt > 0 && is_letter(t[lt - 1]) && !is_letter(base[lt]));
		size_t wb = word_count(base), wt = word_count(t);
		if (wt < 3 || wb - wt < 1 || wb - wt > 4)
			fail_msg("request %u: remove kept %zu of %zu words", id, wt, wb);
		break;
	}
	default:
		fail_msg("request %u: near with mutation %d", id, (int)m);
	}
}

/* Every invariant of a stream that holds whatever the configuration. */
static void check_stream(const struct lbw_paragraphs *p, const struct lbw_workload_cfg *c,
			 const struct lbw_workload *w, uint32_t *mut_count)
{
	uint8_t *seen = calloc(p->n, 1);
	uint32_t count[3] = { 0 }, docs = 0;
	assert_non_null(seen);
	assert_int_equal(w->n, c->n_requests);
	assert_int_equal(w->r[0].kind, LBW_REQ_FRESH);
	for (uint32_t i = 0; i < w->n; i++) {
		const struct lbw_request *r = &w->r[i];
		assert_int_equal(r->id, i);
		assert_true((unsigned)r->kind < 3 && r->doc < p->n && r->text);
		assert_null(strpbrk(r->text, "\n\r\t"));
		const char *base = p->p[r->doc];
		count[r->kind]++;
		if (r->kind == LBW_REQ_FRESH) {
			if (seen[r->doc])
				fail_msg("request %u: fresh doc %u issued before", i, r->doc);
			seen[r->doc] = 1;
			docs++;
		} else if (!seen[r->doc]) {
			fail_msg("request %u: %s of doc %u never issued", i, lbw_req_kind_name(r->kind), r->doc);
		}
		if (r->kind != LBW_REQ_NEAR) {
			assert_int_equal(r->mut, LBW_MUT_NONE);
			assert_string_equal(r->text, base);
			continue;
		}
		if (strcmp(r->text, base) == 0)
			fail_msg("request %u: near (%s) equals its base", i, lbw_mutation_name(r->mut));
		check_mutation(r->mut, base, r->text, i);
		if (mut_count)
			mut_count[r->mut]++;
	}
	for (int k = 0; k < 3; k++)
		assert_int_equal(w->count[k], count[k]);
	assert_int_equal(w->docs, docs);
	assert_int_equal(w->docs, count[LBW_REQ_FRESH]);
	free(seen);
}

/* The paragraphs of VAL read independently of the loader, non-blank lines in file order: the
 * evaluation part (the first LBW_EVAL_PARAGRAPHS) into eval, the training part into train. */
struct split {
	char **eval, **train;
	uint32_t n_eval, n_train;
};

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void read_split(struct split *sp)
{
	FILE *f = fopen(VAL, "r");
	static char line[1 << 16];
	assert_non_null(f);
	memset(sp, 0, sizeof(*sp));
	sp->eval = calloc(LBW_EVAL_PARAGRAPHS, sizeof(char *));
	sp->train = calloc(1 << 16, sizeof(char *));
	assert_non_null(sp->eval);
	assert_non_null(sp->train);
	while (fgets(line, sizeof(line), f)) {
		size_t l = strcspn(line, "\r\n");
		line[l] = '\0';
		if (strspn(line, " ") == l) /* blank: not a paragraph */
			continue;
		assert_true(sp->n_train < 1 << 16);
		if (sp->n_eval < LBW_EVAL_PARAGRAPHS)
			sp->eval[sp->n_eval++] = strdup(line);
		else
			sp->train[sp->n_train++] = strdup(line);
	}
	fclose(f);
}

static void free_split(struct split *sp)
{
	for (uint32_t i = 0; i < sp->n_eval; i++)
		free(sp->eval[i]);
	for (uint32_t i = 0; i < sp->n_train; i++)
		free(sp->train[i]);
	free(sp->eval);
	free(sp->train);
}

/* The loader against an independent read of the same file: the corpus is the evaluation part's
 * paragraphs of MIN_CHARS..MAX_CHARS, in file order:
 * 1,623 of the first 2,000 of tinystories_val.txt's 4,356 paragraphs. */
static void test_corpus_matches_file(void **state)
{
	(void)state;
	struct split sp;
	read_split(&sp);
	assert_int_equal(sp.n_eval, LBW_EVAL_PARAGRAPHS);
	assert_int_equal(sp.n_eval + sp.n_train, 4356);
	uint32_t n = 0;
	for (uint32_t i = 0; i < sp.n_eval; i++) {
		size_t l = strlen(sp.eval[i]);
		if (l < MIN_CHARS || l > MAX_CHARS)
			continue;
		assert_true(n < corpus.n);
		assert_string_equal(corpus.p[n], sp.eval[i]);
		n++;
	}
	assert_int_equal(n, corpus.n);
	assert_int_equal(corpus.n, 1623);
	/* the whole evaluation part, without a length window */
	struct lbw_paragraphs all;
	char err[256];
	assert_int_equal(lbw_paragraphs_load(VAL, 0, 0, &all, err, sizeof(err)), 0);
	assert_int_equal(all.n, LBW_EVAL_PARAGRAPHS);
	for (uint32_t i = 0; i < all.n; i++)
		assert_string_equal(all.p[i], sp.eval[i]);
	lbw_paragraphs_free(&all);
	free_split(&sp);
}

/* texts[0..n) hold no paragraph of the training part (sorted train). */
static void assert_held_out(const struct split *sp, char *const *texts, uint32_t n,
			    const char *what)
{
	for (uint32_t i = 0; i < n; i++)
		if (bsearch(&texts[i], sp->train, sp->n_train, sizeof(char *), cmp_str))
			fail_msg("%s %u is a paragraph of the training part: %s", what, i, texts[i]);
}

/*
 * No paragraph of the training part is ever a request: the default scoring streams of the
 * benchmarks (e2e's 2,000 requests, with 25% and with 50% fresh, which fit in the evaluation
 * part) and the default chat stream are made of the evaluation part only.
 */
static void test_training_part_held_out(void **state)
{
	(void)state;
	struct split sp;
	read_split(&sp);
	qsort(sp.train, sp.n_train, sizeof(char *), cmp_str);
	assert_held_out(&sp, corpus.p, corpus.n, "corpus paragraph");
	static const double fresh[] = { 0.15, 0.25, 0.50 };
	for (size_t k = 0; k < sizeof(fresh) / sizeof(fresh[0]); k++) {
		struct lbw_workload_cfg c = lbw_workload_defaults();
		struct lbw_workload w;
		c.n_requests = 2000;
		c.p_near = 0.20;
		c.p_exact = 1.0 - 0.20 - fresh[k];
		make(&corpus, &c, &w);
		char **texts = malloc(w.n * sizeof(char *));
		assert_non_null(texts);
		for (uint32_t i = 0; i < w.n; i++) {
			assert_true(w.r[i].doc < corpus.n);
			texts[i] = w.r[i].text;
		}
		assert_held_out(&sp, texts, w.n, "request");
		free(texts);
		lbw_workload_free(&w);
	}
	struct lbw_chat_cfg cc = lbw_chat_defaults();
	struct lbw_chat ch;
	char err[256];
	assert_int_equal(lbw_chat_make(&corpus, &tok, &cc, &ch, err, sizeof(err)), 0);
	for (uint32_t i = 0; i < ch.n; i++)
		assert_held_out(&sp, &ch.r[i].text, 1, "chat turn");
	for (uint32_t s = 0; s < ch.n_sys; s++)
		for (uint32_t k = 0; k < ch.sys[s].n_paras; k++)
			assert_held_out(&sp, &corpus.p[ch.sys[s].paras[k]], 1, "system prompt paragraph");
	lbw_chat_free(&ch);
	free_split(&sp);
}

/* A corpus file of more than LBW_EVAL_PARAGRAPHS paragraphs keeps its first ones, counted
 * without its blank lines, whatever the length window. */
static void test_loader_split(void **state)
{
	(void)state;
	char dir[256], path[300], err[256];
	struct lbw_paragraphs p;
	lbt_mkdtemp(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/c.txt", dir);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	for (uint32_t i = 0; i < LBW_EVAL_PARAGRAPHS + 10; i++) {
		const char *what = i >= LBW_EVAL_PARAGRAPHS ? "a paragraph of the training part" :
				   i % 2 ? "a long paragraph" : "short";
		fprintf(f, "%s%s %u\n", i % 3 ? "" : "\n  \n", what, i);
	}
	assert_int_equal(fclose(f), 0);
	assert_int_equal(lbw_paragraphs_load(path, 0, 0, &p, err, sizeof(err)), 0);
	assert_int_equal(p.n, LBW_EVAL_PARAGRAPHS);
	assert_string_equal(p.p[p.n - 1], "a long paragraph 1999");
	lbw_paragraphs_free(&p);
	assert_int_equal(lbw_paragraphs_load(path, 18, 0, &p, err, sizeof(err)), 0);
	assert_int_equal(p.n, LBW_EVAL_PARAGRAPHS / 2);
	assert_string_equal(p.p[p.n - 1], "a long paragraph 1999");
	lbw_paragraphs_free(&p);
	/* the only lines of the window are in the training part */
	assert_int_equal(lbw_paragraphs_load(path, 22, 0, &p, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "among its first 2000 paragraphs"));
	lbu_rmtree(dir);
}

static void test_names(void **state)
{
	(void)state;
	struct lbw_workload_cfg c = lbw_workload_defaults();
	assert_int_equal(c.n_requests, 400);
	assert_true(c.p_exact == 0.30 && c.p_near == 0.45 && c.zipf_s == 1.0 && c.seed == 1);
	for (int k = 0; k < 3; k++)
		assert_int_equal(lbw_req_kind_parse(lbw_req_kind_name((enum lbw_req_kind)k)), k);
	assert_string_equal(lbw_req_kind_name(LBW_REQ_NEAR), "near");
	assert_string_equal(lbw_req_kind_name((enum lbw_req_kind)3), "?");
	assert_int_equal(lbw_req_kind_parse("Exact"), -EINVAL);
	assert_int_equal(lbw_req_kind_parse(""), -EINVAL);
	assert_int_equal(lbw_req_kind_parse(NULL), -EINVAL);
	const char *want[] = { "none", "word_swap", "typo", "punct", "case", "append", "remove" };
	for (int m = 0; m < LBW_MUT_COUNT; m++)
		assert_string_equal(lbw_mutation_name((enum lbw_mutation)m), want[m]);
	assert_string_equal(lbw_mutation_name(LBW_MUT_COUNT), "?");
}

static void test_same_seed_same_stream(void **state)
{
	(void)state;
	struct lbw_workload_cfg c = lbw_workload_defaults();
	struct lbw_workload a, b;
	c.n_requests = 3000;
	make(&corpus, &c, &a);
	make(&corpus, &c, &b);
	check_stream(&corpus, &c, &a, NULL);
	assert_int_equal(a.n, b.n);
	assert_memory_equal(a.count, b.count, sizeof(a.count));
	assert_int_equal(a.docs, b.docs);
	for (uint32_t i = 0; i < a.n; i++) {
		assert_int_equal(a.r[i].kind, b.r[i].kind);
		assert_int_equal(a.r[i].doc, b.r[i].doc);
		assert_int_equal(a.r[i].mut, b.r[i].mut);
		assert_string_equal(a.r[i].text, b.r[i].text);
	}
	/* another seed: another stream (its first fresh paragraph alone matches 1 time in n) */
	c.seed = 2;
	lbw_workload_free(&b);
	make(&corpus, &c, &b);
	uint32_t differ = 0;
	for (uint32_t i = 0; i < a.n; i++)
		differ += a.r[i].kind != b.r[i].kind || a.r[i].doc != b.r[i].doc ||
			  strcmp(a.r[i].text, b.r[i].text) != 0;
	assert_true(differ > a.n / 2);
	lbw_workload_free(&a);
	lbw_workload_free(&b);
	lbw_workload_free(&b); /* freeing twice is harmless */
}

/* Kind shares within 0.015 of the configuration (> 4 standard deviations at 20,000), every
 * request well formed, each mutation kind near 1/6 of the near-duplicates. */
static void test_shares_and_mutations(void **state)
{
	(void)state;
	struct lbw_workload_cfg c = stat_cfg(1.0, 11);
	struct lbw_workload w;
	uint32_t muts[LBW_MUT_COUNT] = { 0 };
	make(&corpus, &c, &w);
	check_stream(&corpus, &c, &w, muts);
	double want[3] = { 1 - c.p_exact - c.p_near, c.p_exact, c.p_near };
	for (int k = 0; k < 3; k++) {
		double got = (double)w.count[k] / w.n;
		if (fabs(got - want[k]) >= 0.015)
			fail_msg("%s share %.4f, want %.2f", lbw_req_kind_name((enum lbw_req_kind)k), got,
				 want[k]);
	}
	for (int m = 1; m < LBW_MUT_COUNT; m++) {
		double share = (double)muts[m] / w.count[LBW_REQ_NEAR];
		if (fabs(share - 1.0 / 6) >= 0.03)
			fail_msg("mutation %s: %.4f of near requests, want about 1/6",
				 lbw_mutation_name((enum lbw_mutation)m), share);
	}
	lbw_workload_free(&w);

	/* no fresh share: one document, then only repeats of it */
	c.p_exact = 0.5;
	c.p_near = 0.5;
	c.n_requests = 2000;
	make(&corpus, &c, &w);
	check_stream(&corpus, &c, &w, NULL);
	assert_int_equal(w.docs, 1);
	lbw_workload_free(&w);
}

/*
 * Zipf picks against their exact law: with D documents issued, rank k is picked with
 * P = (k+1)^-s / H(D). For ranks 0 and 1 the observed count must lie within 6 standard
 * deviations of the sum of P over the picks; the mean of (rank + 0.5) / D is within 0.02 of the
 * uniform law's 0.5 at s = 0 and below 0.25 at s >= 1; and at s = 1.2 the first document
 * outdraws the median one many times over.
 */
static void zipf_run(double s, uint64_t seed, uint32_t *pick_count, uint32_t *rank_of,
		     struct lbw_workload *w)
{
	struct lbw_workload_cfg c = stat_cfg(s, seed);
	make(&corpus, &c, w);
	double *cum = malloc((size_t)w->docs * sizeof(double));
	assert_non_null(cum);
	uint32_t d = 0;
	double exp_hits[2] = { 0 }, var_hits[2] = { 0 }, u_sum = 0;
	uint32_t hits[2] = { 0 }, picks = 0;
	for (uint32_t i = 0; i < w->n; i++) {
		const struct lbw_request *r = &w->r[i];
		if (r->kind == LBW_REQ_FRESH) {
			rank_of[r->doc] = d;
			cum[d] = (d ? cum[d - 1] : 0) + pow(d + 1.0, -s);
			d++;
			continue;
		}
		uint32_t k = rank_of[r->doc];
		assert_true(k < d);
		pick_count[k]++;
		picks++;
		for (uint32_t j = 0; j < 2 && j < d; j++) {
			double pj = pow(j + 1.0, -s) / cum[d - 1];
			exp_hits[j] += pj;
			var_hits[j] += pj * (1 - pj);
			hits[j] += k == j;
		}
		u_sum += (k + 0.5) / d; /* mean 0.5 exactly when every rank is equally likely */
	}
	for (int j = 0; j < 2; j++)
		if (fabs(hits[j] - exp_hits[j]) > 6 * sqrt(var_hits[j]) + 1)
			fail_msg("zipf_s %.1f: rank %d picked %u times, law says %.1f (sd %.1f)", s, j,
				 hits[j], exp_hits[j], sqrt(var_hits[j]));
	double mean_u = u_sum / picks;
	if (s == 0 && fabs(mean_u - 0.5) >= 0.02)
		fail_msg("zipf_s 0: mean normalised rank %.4f, want 0.5", mean_u);
	if (s >= 1 && mean_u >= 0.25)
		fail_msg("zipf_s %.1f: mean normalised rank %.4f, want popular ranks", s, mean_u);
	free(cum);
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return (x > y) - (x < y);
}

static void test_zipf_popularity(void **state)
{
	(void)state;
	uint32_t *rank_of = calloc(corpus.n, sizeof(uint32_t));
	uint32_t *picks = calloc(corpus.n, sizeof(uint32_t));
	struct lbw_workload w;
	assert_non_null(rank_of);
	assert_non_null(picks);

	zipf_run(1.2, 5, picks, rank_of, &w);
	uint32_t docs = w.docs, top = 0;
	for (uint32_t k = 1; k < docs; k++)
		if (picks[k] > picks[top])
			top = k;
	assert_int_equal(top, 0);
	uint32_t rank0 = picks[0];
	qsort(picks, docs, sizeof(uint32_t), cmp_u32);
	uint32_t median = picks[docs / 2];
	if (rank0 < 10 * (median + 1))
		fail_msg("zipf_s 1.2: top doc %u picks, median doc %u", rank0, median);
	lbw_workload_free(&w);

	memset(picks, 0, corpus.n * sizeof(uint32_t));
	zipf_run(0, 6, picks, rank_of, &w);
	lbw_workload_free(&w);
	free(rank_of);
	free(picks);
}

static void test_bad_configs(void **state)
{
	(void)state;
	struct lbw_workload_cfg good = lbw_workload_defaults(), c;
	struct lbw_workload w;
	char err[256];
	struct {
		const char *what;
		double pe, pn, s;
		uint32_t n;
	} bad[] = {
		{ "p_exact NaN", NAN, 0.2, 1, 10 },     { "p_exact -0.1", -0.1, 0.2, 1, 10 },
		{ "p_exact 1.5", 1.5, 0, 1, 10 },       { "p_near inf", 0.2, INFINITY, 1, 10 },
		{ "p_near -1", 0.2, -1, 1, 10 },        { "sum 1.2", 0.6, 0.6, 1, 10 },
		{ "zipf -0.5", 0.5, 0.2, -0.5, 10 },    { "zipf 10.5", 0.5, 0.2, 10.5, 10 },
		{ "zipf NaN", 0.5, 0.2, NAN, 10 },      { "zipf inf", 0.5, 0.2, INFINITY, 10 },
		{ "0 requests", 0.5, 0.2, 1, 0 },       { "10M+1 requests", 0.5, 0.2, 1, LBW_MAX_REQUESTS + 1 },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		c = good;
		c.p_exact = bad[i].pe;
		c.p_near = bad[i].pn;
		c.zipf_s = bad[i].s;
		c.n_requests = bad[i].n;
		err[0] = '\0';
		memset(&w, 0xa5, sizeof(w));
		int rc = lbw_workload_make(&corpus, &c, &w, err, sizeof(err));
		if (rc != -EINVAL)
			fail_msg("%s: %d, want -EINVAL", bad[i].what, rc);
		assert_true(strlen(err) > 0);
		assert_null(w.r);
		assert_int_equal(w.n, 0);
	}
	/* the edges are fine */
	c = good;
	c.p_exact = 1;
	c.p_near = 0;
	c.zipf_s = LBW_MAX_ZIPF_S;
	c.n_requests = 50;
	make(&corpus, &c, &w);
	check_stream(&corpus, &c, &w, NULL);
	lbw_workload_free(&w);

	assert_int_equal(lbw_workload_make(NULL, &good, &w, err, sizeof(err)), -EINVAL);
	assert_int_equal(lbw_workload_make(&corpus, NULL, &w, err, sizeof(err)), -EINVAL);
	assert_int_equal(lbw_workload_make(&corpus, &good, NULL, NULL, 0), -EINVAL);
	struct lbw_paragraphs empty = { 0 };
	assert_int_equal(lbw_workload_make(&empty, &good, &w, err, sizeof(err)), -EINVAL);
	lbw_workload_free(NULL);
	lbw_paragraphs_free(NULL);
}

static void spit(const char *path, const char *text)
{
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
	assert_int_equal(fclose(f), 0);
}

/* A corpus of 5 paragraphs gives 5 fresh documents, all of them, then -ENOSPC. */
static void test_corpus_exhaustion(void **state)
{
	(void)state;
	char dir[256], path[300], err[256];
	struct lbw_paragraphs p;
	struct lbw_workload w;
	lbt_mkdtemp(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/five.txt", dir);
	spit(path, "The cat sat on the mat today.\n\nA dog ran far away from home.\n"
		   "Birds sing songs in the tall green trees.\nFish swim in the deep blue sea.\n"
		   "\nThe sun is warm and bright in summer.\n");
	assert_int_equal(lbw_paragraphs_load(path, 1, 0, &p, err, sizeof(err)), 0);
	lbu_rmtree(dir);
	assert_int_equal(p.n, 5);

	struct lbw_workload_cfg c = lbw_workload_defaults();
	c.p_exact = 0;
	c.p_near = 0;
	c.n_requests = 5;
	make(&p, &c, &w);
	check_stream(&p, &c, &w, NULL);
	assert_int_equal(w.docs, 5);
	lbw_workload_free(&w);

	c.n_requests = 6;
	err[0] = '\0';
	memset(&w, 0xa5, sizeof(w));
	assert_int_equal(lbw_workload_make(&p, &c, &w, err, sizeof(err)), -ENOSPC);
	assert_non_null(strstr(err, "5 paragraphs"));
	assert_null(w.r);
	assert_int_equal(w.n, 0);

	/* small texts still give valid near-duplicates of every kind */
	uint32_t muts[LBW_MUT_COUNT] = { 0 };
	c.p_exact = 0.2;
	c.p_near = 0.8;
	c.n_requests = 3000;
	make(&p, &c, &w);
	check_stream(&p, &c, &w, muts);
	for (int m = 1; m < LBW_MUT_COUNT; m++)
		assert_true(muts[m] > 0);
	lbw_workload_free(&w);
	lbw_paragraphs_free(&p);
}

static void test_loader(void **state)
{
	(void)state;
	char dir[256], path[300], big[300], err[256];
	struct lbw_paragraphs p;
	const char *forty = "0123456789012345678901234567890123456789";
	char text[1024];
	lbt_mkdtemp(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/corpus.txt", dir);
	snprintf(text, sizeof(text),
		 "tiny\r\n"                     /* 4 chars: below the window */
		 "\r\n"                         /* empty */
		 " \t  \t  \t  \t \r\n"         /* blank, however long */
		 "Tab\there and a CR\r\n"       /* 17 chars, kept with a space for the tab */
		 "0123456789\n"                 /* 10: the window's lower edge */
		 "%s\r\n"                       /* 40: the upper edge */
		 "%sX\n"                        /* 41: above */
		 "A last line, no newline",     /* 23 */
		 forty, forty);
	spit(path, text);

	memset(&p, 0xa5, sizeof(p));
	assert_int_equal(lbw_paragraphs_load(path, 10, 40, &p, err, sizeof(err)), 0);
	assert_int_equal(p.n, 4);
	assert_string_equal(p.p[0], "Tab here and a CR");
	assert_string_equal(p.p[1], "0123456789");
	assert_string_equal(p.p[2], forty);
	assert_string_equal(p.p[3], "A last line, no newline");
	lbw_paragraphs_free(&p);
	assert_null(p.p);
	lbw_paragraphs_free(&p);

	/* max_chars 0: no upper bound; min_chars 0 still drops empty and blank lines */
	assert_int_equal(lbw_paragraphs_load(path, 0, 0, &p, err, sizeof(err)), 0);
	assert_int_equal(p.n, 6);
	assert_string_equal(p.p[0], "tiny");
	assert_int_equal(strlen(p.p[4]), 41);
	for (uint32_t i = 0; i < p.n; i++)
		assert_null(strpbrk(p.p[i], "\n\r\t"));
	lbw_paragraphs_free(&p);

	/* nothing in the window; an empty window; a missing file; NULL arguments */
	err[0] = '\0';
	assert_int_equal(lbw_paragraphs_load(path, 100, 0, &p, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "empty"));
	assert_null(p.p);
	assert_int_equal(lbw_paragraphs_load(path, 50, 40, &p, err, sizeof(err)), -EINVAL);
	snprintf(big, sizeof(big), "%s/absent.txt", dir);
	assert_int_equal(lbw_paragraphs_load(big, 0, 0, &p, err, sizeof(err)), -ENOENT);
	assert_int_equal(lbw_paragraphs_load(NULL, 0, 0, &p, err, sizeof(err)), -EINVAL);
	assert_int_equal(lbw_paragraphs_load(path, 0, 0, NULL, NULL, 0), -EINVAL);

	/* a file above the cap is refused before it is read (a sparse file costs nothing) */
	snprintf(big, sizeof(big), "%s/big.txt", dir);
	FILE *f = fopen(big, "wb");
	assert_non_null(f);
	assert_int_equal(ftruncate(fileno(f), (off_t)LBW_CORPUS_MAX_BYTES + 1), 0);
	fclose(f);
	err[0] = '\0';
	assert_int_equal(lbw_paragraphs_load(big, 0, 0, &p, err, sizeof(err)), -EFBIG);
	assert_true(strlen(err) > 0);
	lbu_rmtree(dir);
	assert_int_not_equal(access(dir, F_OK), 0);
}

/* ---- the chat stream ---- */

static void chat_make(const struct lbw_paragraphs *p, const struct lbw_chat_cfg *c,
		      struct lbw_chat *w)
{
	char err[256] = "";
	int rc = lbw_chat_make(p, &tok, c, w, err, sizeof(err));
	if (rc)
		fail_msg("lbw_chat_make: %d (%s)", rc, err);
}

/* a and b hold the same tokens (n each). */
static int same_tokens(const int32_t *a, const int32_t *b, uint32_t n)
{
	return n == 0 || memcmp(a, b, (size_t)n * sizeof(*a)) == 0;
}

/* Every field, text and token of two streams is equal. */
static void chat_assert_equal(const struct lbw_chat *a, const struct lbw_chat *b)
{
	assert_int_equal(a->n, b->n);
	assert_int_equal(a->n_sys, b->n_sys);
	assert_int_equal(a->n_convs, b->n_convs);
	for (uint32_t k = 0; k < a->n_sys; k++) {
		const struct lbw_chat_sys *x = &a->sys[k], *y = &b->sys[k];
		assert_string_equal(x->text, y->text);
		assert_int_equal(x->n_tokens, y->n_tokens);
		assert_true(same_tokens(x->tokens, y->tokens, x->n_tokens));
		assert_int_equal(x->n_paras, y->n_paras);
		assert_memory_equal(x->paras, y->paras, x->n_paras * sizeof(uint32_t));
		assert_int_equal(x->target, y->target);
		assert_int_equal(x->convs, y->convs);
	}
	for (uint32_t i = 0; i < a->n; i++) {
		const struct lbw_chat_req *x = &a->r[i], *y = &b->r[i];
		uint32_t fx[] = { x->id, x->conv, x->turn, x->n_turns, x->sys,
				  x->gen, x->para, x->n_tokens, x->depends_on };
		uint32_t fy[] = { y->id, y->conv, y->turn, y->n_turns, y->sys,
				  y->gen, y->para, y->n_tokens, y->depends_on };
		assert_memory_equal(fx, fy, sizeof(fx));
		assert_string_equal(x->text, y->text);
		assert_true(same_tokens(x->tokens, y->tokens, x->n_tokens));
	}
}

static void test_chat_same_seed_same_stream(void **state)
{
	(void)state;
	struct lbw_chat_cfg c = lbw_chat_defaults();
	struct lbw_chat a, b;
	assert_true(c.conversations == 114 && c.systems == 4 && c.sys_tokens_min == 100 &&
		    c.sys_tokens_max == 300 && c.turns_min == 1 && c.turns_max == 6 &&
		    c.gen_min == 8 && c.gen_max == 32 && c.open == 8 && c.zipf_s == 1.0 &&
		    c.seed == 1);
	chat_make(&corpus, &c, &a);
	chat_make(&corpus, &c, &b);
	chat_assert_equal(&a, &b);
	/* about 400 requests: 114 conversations of 3.5 turns on average (sd about 18) */
	if (a.n < 340 || a.n > 460)
		fail_msg("default stream: %u requests, want about 400", a.n);

	/* another seed: another stream (paragraphs drawn from thousands never all coincide) */
	c.seed = 2;
	lbw_chat_free(&b);
	chat_make(&corpus, &c, &b);
	uint32_t differ = 0, n = a.n < b.n ? a.n : b.n;
	for (uint32_t i = 0; i < n; i++)
		differ += a.r[i].para != b.r[i].para || a.r[i].conv != b.r[i].conv;
	assert_true(differ > n / 2);
	lbw_chat_free(&a);
	lbw_chat_free(&b);
	lbw_chat_free(&b); /* freeing twice is harmless */
}

/* layerbank-bench workload --chat (40 conversations): the same options print the same bytes,
 * another seed other bytes, and the lines are the library's stream in the documented format. */
static char out_a[1 << 20], out_b[1 << 20];

static int run_bench(const char *seed, char *out)
{
	const char *argv[] = { LB_BENCH_PATH, "workload", "--chat", "--data", VAL, "--tokenizer",
			       TOK, "--conversations", "40", "--seed", seed, NULL };
	int st = lbt_run(argv, out, sizeof(out_a));
	assert_true(strlen(out) < sizeof(out_a) - 1); /* not cut */
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The stream as the bench prints it, into buf. */
static void chat_format(const struct lbw_chat *w, char *buf, size_t n)
{
	size_t at = 0;
	for (uint32_t i = 0; i < w->n; i++) {
		const struct lbw_chat_req *r = &w->r[i];
		char dep[16] = "-";
		if (r->depends_on != LBW_CHAT_NONE)
			snprintf(dep, sizeof(dep), "%u", r->depends_on);
		at += (size_t)snprintf(buf + at, n - at, "%u\t%u\t%u\t%u\t%s\t%u\t%u\t%s\n", r->id,
				       r->conv, r->turn, r->sys, dep, r->gen, r->n_tokens, r->text);
		assert_true(at < n);
	}
}

static void test_chat_output_byte_identical(void **state)
{
	(void)state;
	assert_int_equal(run_bench("1", out_a), 0);
	assert_int_equal(run_bench("1", out_b), 0);
	assert_string_equal(out_a, out_b);
	assert_int_equal(run_bench("2", out_b), 0);
	assert_true(strcmp(out_a, out_b) != 0);

	struct lbw_chat_cfg c = lbw_chat_defaults();
	struct lbw_chat w;
	static char want[1 << 20];
	c.conversations = 40;
	chat_make(&corpus, &c, &w);
	chat_format(&w, want, sizeof(want));
	assert_string_equal(out_a, want);
	lbw_chat_free(&w);
}

/* tokens[0..n) start with text encoded as the stream encodes a piece: no BOS, no EOS.
 * @return the length of that encoding. */
static uint32_t assert_encoding(const char *text, const int32_t *tokens, uint32_t n)
{
	int32_t *t = malloc((strlen(text) + 3) * sizeof(int32_t));
	assert_non_null(t);
	int got = lbw_tokenizer_encode(&tok, text, 0, 0, t);
	assert_true(got > 0 && (uint32_t)got <= n);
	assert_true(same_tokens(t, tokens, (uint32_t)got));
	assert_int_not_equal(t[0], LBW_TOK_BOS);
	free(t);
	return (uint32_t)got;
}

/* Every system prompt: whole corpus paragraphs joined by one space, its tokens their
 * encodings one after the other, their count in the window; over 16 seeds the counts spread
 * over the window. */
static void test_chat_system_prompts(void **state)
{
	(void)state;
	struct lbw_chat_cfg c = lbw_chat_defaults();
	struct lbw_chat w;
	uint32_t lo = UINT32_MAX, hi = 0;
	c.conversations = 1;
	for (uint64_t seed = 1; seed <= 16; seed++) {
		c.seed = seed;
		chat_make(&corpus, &c, &w);
		assert_int_equal(w.n_sys, 4);
		for (uint32_t k = 0; k < w.n_sys; k++) {
			const struct lbw_chat_sys *s = &w.sys[k];
			if (s->n_tokens < 100 || s->n_tokens > 300)
				fail_msg("seed %llu: system prompt %u has %u tokens, want 100..300",
					 (unsigned long long)seed, k, s->n_tokens);
			assert_true(s->target >= 100 && s->target <= 300);
			char *joined = calloc(strlen(s->text) + 1, 1);
			assert_non_null(joined);
			uint32_t at = 0;
			for (uint32_t i = 0; i < s->n_paras; i++) {
				const char *para = corpus.p[s->paras[i]];
				assert_true(s->paras[i] < corpus.n);
				if (i)
					strcat(joined, " ");
				strcat(joined, para);
				at += assert_encoding(para, s->tokens + at, s->n_tokens - at);
			}
			assert_int_equal(at, s->n_tokens);
			assert_string_equal(joined, s->text);
			free(joined);
			lo = s->n_tokens < lo ? s->n_tokens : lo;
			hi = s->n_tokens > hi ? s->n_tokens : hi;
		}
		lbw_chat_free(&w);
	}
	if (lo > 160 || hi < 260)
		fail_msg("64 system prompts span %u..%u tokens only", lo, hi);

	/* another window; one no paragraph fits (each has more than 12 tokens) */
	c.sys_tokens_min = 150;
	c.sys_tokens_max = 250;
	chat_make(&corpus, &c, &w);
	for (uint32_t k = 0; k < w.n_sys; k++)
		assert_true(w.sys[k].n_tokens >= 150 && w.sys[k].n_tokens <= 250);
	lbw_chat_free(&w);
	char err[256] = "";
	c.sys_tokens_min = 10;
	c.sys_tokens_max = 12;
	memset(&w, 0xa5, sizeof(w));
	assert_int_equal(lbw_chat_make(&corpus, &tok, &c, &w, err, sizeof(err)), -ENOSPC);
	assert_non_null(strstr(err, "system prompt 0"));
	assert_null(w.r);
	assert_null(w.sys);
}

/* n short generated paragraphs (about 12 tokens each), made in memory as lbw_paragraphs_load
 * would have loaded them from a file: a corpus file keeps only its first LBW_EVAL_PARAGRAPHS. */
static void short_corpus(uint32_t n, struct lbw_paragraphs *p)
{
	static const char *const words[] = { "cat", "dog", "sun", "tree", "ball", "red",
					     "big", "ran", "saw", "home", "park", "bird" };
	const size_t per = 64; /* "Line %u:" and six words of at most 4 letters, ".", NUL */
	p->mem = malloc((size_t)n * per);
	p->p = malloc((size_t)n * sizeof(char *));
	assert_non_null(p->mem);
	assert_non_null(p->p);
	p->n = n;
	uint64_t x = 7;
	size_t off = 0;
	for (uint32_t i = 0; i < n; i++) {
		p->p[i] = p->mem + off;
		off += (size_t)sprintf(p->mem + off, "Line %u:", i);
		for (int k = 0; k < 6; k++) {
			x = x * 6364136223846793005ull + 1442695040888963407ull;
			off += (size_t)sprintf(p->mem + off, " %s", words[(x >> 33) % 12]);
		}
		off += (size_t)sprintf(p->mem + off, ".") + 1;
		assert_true(off <= (size_t)(i + 1) * per);
	}
}

/*
 * System prompt k is drawn with p_k = (k+1)^-s / sum_j (j+1)^-s. Over N conversations the
 * count n_k is binomial: the bound is |n_k - N p_k| <= 5 sqrt(N p_k (1 - p_k)) for every k
 * (a correct generator fails it about once in a million streams; an exponent off by 0.2, or
 * uniform picks, miss it by 6 to 40 standard deviations at N = 6000).
 */
static void chat_zipf_check(const struct lbw_paragraphs *p, double s, uint64_t seed)
{
	struct lbw_chat_cfg c = lbw_chat_defaults();
	struct lbw_chat w;
	uint32_t count[8] = { 0 };
	double h = 0;
	c.conversations = 6000;
	c.turns_min = c.turns_max = 1;
	c.systems = 8;
	c.zipf_s = s;
	c.seed = seed;
	chat_make(p, &c, &w);
	for (uint32_t i = 0; i < w.n; i++)
		count[w.r[i].sys] += w.r[i].turn == 0;
	for (int k = 0; k < 8; k++)
		h += pow(k + 1.0, -s);
	for (uint32_t k = 0; k < 8; k++) {
		double pk = pow(k + 1.0, -s) / h, mean = 6000 * pk, sd = sqrt(6000 * pk * (1 - pk));
		assert_int_equal(w.sys[k].convs, count[k]);
		if (fabs(count[k] - mean) > 5 * sd)
			fail_msg("zipf_s %.1f: system prompt %u chosen by %u conversations, "
				 "law says %.1f (sd %.1f)", s, k, count[k], mean, sd);
	}
	lbw_chat_free(&w);
}

static void test_chat_zipf_popularity(void **state)
{
	(void)state;
	chat_zipf_check(&shorts, 1.0, 3);
	chat_zipf_check(&shorts, 0.0, 4);
	chat_zipf_check(&shorts, 2.0, 5);
}

/* No paragraph serves twice: not two turns, not a turn and a system prompt, in a stream of
 * about 720 turns. Each turn's text is its corpus paragraph and its tokens that text's
 * encoding. */
static void test_chat_paragraphs_used_once(void **state)
{
	(void)state;
	struct lbw_chat_cfg c = lbw_chat_defaults();
	struct lbw_chat w;
	c.conversations = 120;
	c.turns_min = 4;
	c.turns_max = 8;
	c.systems = 12;
	chat_make(&corpus, &c, &w);
	uint32_t *user = calloc(corpus.n, sizeof(uint32_t)); /* [corpus.n] request id + 1 */
	uint8_t *sys = calloc(corpus.n, 1);                  /* [corpus.n] in a system prompt */
	assert_non_null(user);
	assert_non_null(sys);
	for (uint32_t k = 0; k < w.n_sys; k++)
		for (uint32_t i = 0; i < w.sys[k].n_paras; i++) {
			assert_int_equal(sys[w.sys[k].paras[i]], 0);
			sys[w.sys[k].paras[i]] = 1;
		}
	for (uint32_t i = 0; i < w.n; i++) {
		const struct lbw_chat_req *r = &w.r[i];
		assert_true(r->para < corpus.n);
		if (user[r->para] || sys[r->para])
			fail_msg("request %u: paragraph %u used before (request %d, system "
				 "prompt %d)", i, r->para, (int)user[r->para] - 1, sys[r->para]);
		user[r->para] = i + 1;
		assert_string_equal(r->text, corpus.p[r->para]);
		if (i % 4 != 0) /* tokenizing is slow: a quarter is enough */
			continue;
		assert_int_equal(assert_encoding(r->text, r->tokens, r->n_tokens), r->n_tokens);
	}
	free(user);
	free(sys);
	lbw_chat_free(&w);
}

/*
 * Turn k depends on turn k - 1 of its conversation (an earlier request), turn 0 on none; each
 * conversation has turns 0..n_turns-1 with one system prompt; draws in range. Conversations
 * 0..open-1 open first and each close opens the next id, so a request's conversation is below
 * open + the conversations closed before it; with open 1 they run one after the other.
 */
static void chat_check_links(const struct lbw_chat_cfg *c, const struct lbw_chat *w)
{
	uint32_t *seen = calloc(w->n_convs, sizeof(uint32_t)); /* [n_convs] turns issued */
	uint32_t closed = 0, under_way = 0, most = 0;
	assert_non_null(seen);
	assert_int_equal(w->n_convs, c->conversations);
	for (uint32_t i = 0; i < w->n; i++) {
		const struct lbw_chat_req *r = &w->r[i];
		assert_int_equal(r->id, i);
		assert_true(r->conv < w->n_convs && r->sys < w->n_sys);
		assert_true(r->n_turns >= c->turns_min && r->n_turns <= c->turns_max);
		assert_true(r->gen >= c->gen_min && r->gen <= c->gen_max);
		assert_int_equal(r->turn, seen[r->conv]);
		if (r->conv >= c->open + closed)
			fail_msg("request %u: conversation %u is not open yet (%u closed, "
				 "%u open)", i, r->conv, closed, c->open);
		if (r->turn == 0) {
			assert_int_equal(r->depends_on, LBW_CHAT_NONE);
			under_way++;
		} else {
			assert_true(r->depends_on < i);
			const struct lbw_chat_req *d = &w->r[r->depends_on];
			assert_true(d->conv == r->conv && d->turn == r->turn - 1);
			assert_true(d->sys == r->sys && d->n_turns == r->n_turns);
		}
		most = under_way > most ? under_way : most;
		if (++seen[r->conv] == r->n_turns) {
			closed++;
			under_way--;
		}
	}
	/* every conversation reached its last turn */
	assert_int_equal(closed, w->n_convs);
	for (uint32_t v = 0; v < w->n_convs; v++)
		assert_true(seen[v] >= c->turns_min && seen[v] <= c->turns_max);
	assert_true(most <= c->open);
	if (c->open > 1 && c->conversations > 1 && most < 2)
		fail_msg("open %u: conversations never interleave", c->open);
	free(seen);
}

static void test_chat_dependencies(void **state)
{
	(void)state;
	struct {
		uint32_t convs, open, turns_min, turns_max;
	} cases[] = {
		{ 114, 8, 1, 6 }, { 1500, 8, 1, 6 }, { 40, 1, 2, 5 }, { 30, 64, 1, 3 },
		{ 60, 5, 3, 3 },  { 1, 8, 6, 6 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct lbw_chat_cfg c = lbw_chat_defaults();
		struct lbw_chat w;
		c.conversations = cases[i].convs;
		c.open = cases[i].open;
		c.turns_min = cases[i].turns_min;
		c.turns_max = cases[i].turns_max;
		c.gen_min = 3;
		c.gen_max = 5;
		c.seed = 100 + i;
		chat_make(&shorts, &c, &w);
		chat_check_links(&c, &w);
		lbw_chat_free(&w);
	}
}


/* A context cap: every turn's prompt and generation fit in max_tokens (answers as long as
 * drawn); a conversation ends before a turn that would not, each of its requests counting the
 * turns it really has; a cap no first turn fits is refused. */
static void test_chat_max_tokens(void **state)
{
	(void)state;
	struct lbw_chat_cfg c = lbw_chat_defaults();
	struct lbw_chat w, all;
	char err[256];

	chat_make(&corpus, &c, &all);
	c.max_tokens = 512;
	chat_make(&corpus, &c, &w);
	assert_true(w.n < all.n);
	assert_int_equal(w.n_convs, c.conversations);
	uint32_t *turns = calloc(w.n_convs, sizeof(uint32_t)), ended = 0;
	assert_non_null(turns);
	for (uint32_t i = 0; i < w.n; i++) {
		const struct lbw_chat_req *r = &w.r[i];
		assert_true(lbw_chat_prompt_len(&w, i, NULL) + r->gen <= 512);
		assert_int_equal(r->turn, turns[r->conv]++);
		if (r->depends_on != LBW_CHAT_NONE)
			assert_int_equal(w.r[r->depends_on].n_turns, r->n_turns);
	}
	for (uint32_t i = 0; i < w.n; i++)
		assert_int_equal(w.r[i].n_turns, turns[w.r[i].conv]);
	for (uint32_t v = 0; v < w.n_convs; v++)
		ended += turns[v] < c.turns_max;
	assert_true(ended > 0);
	free(turns);
	lbw_chat_free(&w);
	lbw_chat_free(&all);
	c.max_tokens = 100; /* below every system prompt */
	assert_int_equal(lbw_chat_make(&corpus, &tok, &c, &w, err, sizeof(err)), -ENOSPC);
	assert_non_null(strstr(err, "100 tokens"));
	c.max_tokens = LBW_CHAT_MAX_TOKENS + 1;
	assert_int_equal(lbw_chat_make(&corpus, &tok, &c, &w, err, sizeof(err)), -EINVAL);
}

/* Answer of request id: len tokens in 3..511 from a seed, or none. */
static int32_t *fake_answer(uint32_t id, uint32_t len)
{
	int32_t *a = len ? malloc(len * sizeof(int32_t)) : NULL;
	uint64_t x = id + 1;
	for (uint32_t i = 0; i < len; i++) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		a[i] = 3 + (int32_t)((x >> 33) % 509);
	}
	return a;
}

/* The prompt of request id under the answers ans[]/alen[] (indexed by request id). */
static int32_t *prompt_of(const struct lbw_chat *w, uint32_t id, int32_t **ans, uint32_t *alen,
			  int *n)
{
	const int32_t *a[LBW_CHAT_MAX_TURNS];
	uint32_t l[LBW_CHAT_MAX_TURNS];
	for (uint32_t d = w->r[id].depends_on; d != LBW_CHAT_NONE; d = w->r[d].depends_on) {
		a[w->r[d].turn] = ans[d];
		l[w->r[d].turn] = alen[d];
	}
	*n = lbw_chat_prompt(w, id, a, l, NULL, 0);
	assert_true(*n > 0);
	assert_int_equal(lbw_chat_prompt_len(w, id, l), *n);
	int32_t *p = malloc((size_t)*n * sizeof(int32_t));
	assert_non_null(p);
	assert_int_equal(lbw_chat_prompt(w, id, a, l, p, (uint32_t)*n), *n);
	return p;
}

/*
 * The prompt of turn k followed by answer k is an exact prefix of the prompt of turn k + 1:
 * checked on every request of a stream whose answers have random tokens and lengths 0..gen;
 * every prompt is BOS, its system prompt, ..., its own paragraph's tokens; prompts of turn 0 on
 * one system prompt share BOS and that prompt.
 */
static void test_chat_prompt_prefixes(void **state)
{
	(void)state;
	struct lbw_chat_cfg c = lbw_chat_defaults();
	struct lbw_chat w;
	c.conversations = 60;
	chat_make(&corpus, &c, &w);
	int32_t **ans = calloc(w.n, sizeof(*ans)), **pr = calloc(w.n, sizeof(*pr));
	uint32_t *alen = calloc(w.n, sizeof(*alen));
	int *plen = calloc(w.n, sizeof(*plen));
	assert_true(ans && pr && alen && plen);
	for (uint32_t i = 0; i < w.n; i++) {
		const struct lbw_chat_req *r = &w.r[i];
		const struct lbw_chat_sys *s = &w.sys[r->sys];
		alen[i] = i % 7 == 3 ? 0 : r->gen - i % 3; /* some answers end early, some empty */
		ans[i] = fake_answer(i, alen[i]);
		pr[i] = prompt_of(&w, i, ans, alen, &plen[i]);
		assert_int_equal(pr[i][0], LBW_TOK_BOS);
		assert_true(same_tokens(pr[i] + 1, s->tokens, s->n_tokens));
		assert_true(same_tokens(pr[i] + plen[i] - r->n_tokens, r->tokens, r->n_tokens));
		if (r->turn == 0) {
			assert_int_equal(plen[i], 1 + s->n_tokens + r->n_tokens);
			continue;
		}
		uint32_t d = r->depends_on;
		if (plen[i] != plen[d] + (int)alen[d] + (int)r->n_tokens)
			fail_msg("request %u: %d tokens, turn before %d + answer %u + "
				 "paragraph %u", i, plen[i], plen[d], alen[d], r->n_tokens);
		assert_true(same_tokens(pr[i], pr[d], (uint32_t)plen[d]));
		assert_true(same_tokens(pr[i] + plen[d], ans[d], alen[d]));
	}
	/* answers as long as drawn: the count with answer_len NULL */
	for (uint32_t i = 0; i < w.n; i++) {
		int64_t want = 1 + w.sys[w.r[i].sys].n_tokens;
		for (uint32_t d = i; d != LBW_CHAT_NONE; d = w.r[d].depends_on)
			want += w.r[d].n_tokens + (d == i ? 0 : w.r[d].gen);
		assert_int_equal(lbw_chat_prompt_len(&w, i, NULL), want);
	}
	for (uint32_t i = 0; i < w.n; i++) {
		free(ans[i]);
		free(pr[i]);
	}
	free(ans);
	free(pr);
	free(alen);
	free(plen);
	lbw_chat_free(&w);
}

/* A later turn of w: its id. */
static uint32_t some_later_turn(const struct lbw_chat *w, uint32_t turn)
{
	for (uint32_t i = 0; i < w->n; i++)
		if (w->r[i].turn == turn)
			return i;
	fail_msg("no request of turn %u", turn);
	return 0;
}

static void test_chat_prompt_bad_args(void **state)
{
	(void)state;
	struct lbw_chat_cfg c = lbw_chat_defaults();
	struct lbw_chat w;
	c.conversations = 20;
	c.turns_min = 3;
	chat_make(&corpus, &c, &w);
	uint32_t id = some_later_turn(&w, 2), t0 = w.r[w.r[id].depends_on].depends_on;
	int32_t a0[2] = { 5, 6 }, out[4096];
	const int32_t *a[2] = { a0, a0 };
	uint32_t l[2] = { 2, 1 }, zero[2] = { 0, 0 };
	const int32_t *none[2] = { NULL, NULL };
	int n = lbw_chat_prompt(&w, id, a, l, NULL, 0);
	assert_true(n > 0 && n < 4096);

	/* too small: the count, and nothing written */
	out[0] = -7;
	assert_int_equal(lbw_chat_prompt(&w, id, a, l, out, (uint32_t)n - 1), n);
	assert_int_equal(out[0], -7);
	/* turn 0 needs no answers; empty answers may be NULL */
	assert_true(lbw_chat_prompt(&w, t0, NULL, NULL, out, 4096) > 0);
	assert_int_equal(lbw_chat_prompt(&w, id, none, zero, out, 4096), n - 3);

	struct lbw_chat broken = w;
	struct lbw_chat_req *r = malloc(w.n * sizeof(*r));
	assert_non_null(r);
	memcpy(r, w.r, w.n * sizeof(*r));
	broken.r = r;
	r[id].depends_on = t0; /* turn 2 on turn 0 */
	struct {
		const char *what;
		const struct lbw_chat *c;
		uint32_t id;
		const int32_t *const *a;
		const uint32_t *l;
		int32_t *out;
		uint32_t cap;
	} bad[] = {
		{ "NULL stream", NULL, id, a, l, out, 4096 },
		{ "id out of range", &w, w.n, a, l, out, 4096 },
		{ "answers NULL on turn 2", &w, id, NULL, l, out, 4096 },
		{ "lengths NULL on turn 2", &w, id, a, NULL, out, 4096 },
		{ "NULL answer of 2 tokens", &w, id, none, l, out, 4096 },
		{ "out NULL, cap 4096", &w, id, a, l, NULL, 4096 },
		{ "broken link", &broken, id, a, l, out, 4096 },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int rc = lbw_chat_prompt(bad[i].c, bad[i].id, bad[i].a, bad[i].l, bad[i].out,
					 bad[i].cap);
		if (rc != -EINVAL)
			fail_msg("%s: %d, want -EINVAL", bad[i].what, rc);
	}
	assert_int_equal(lbw_chat_prompt_len(&broken, id, NULL), -EINVAL);
	assert_int_equal(lbw_chat_prompt_len(NULL, 0, NULL), -EINVAL);
	assert_int_equal(lbw_chat_prompt_len(&w, w.n, NULL), -EINVAL);
	free(r);
	lbw_chat_free(&w);
}

#define ZIPF SIZE_MAX
#define OFF(field) offsetof(struct lbw_chat_cfg, field)

static void test_chat_bad_configs(void **state)
{
	(void)state;
	const struct lbw_chat_cfg good = lbw_chat_defaults();
	struct lbw_chat w;
	char err[256];
	struct {
		const char *field; /* named in the error */
		size_t off;        /* of the uint32_t field set to v; ZIPF: zipf_s set to s */
		uint32_t v;
		double s;
	} bad[] = {
		{ "conversations", OFF(conversations), 0, 1 },
		{ "conversations", OFF(conversations), LBW_CHAT_MAX_CONVS + 1, 1 },
		{ "systems", OFF(systems), 0, 1 },
		{ "systems", OFF(systems), LBW_CHAT_MAX_SYSTEMS + 1, 1 },
		{ "sys_tokens", OFF(sys_tokens_min), 0, 1 },
		{ "sys_tokens", OFF(sys_tokens_min), 301, 1 },
		{ "sys_tokens", OFF(sys_tokens_max), LBW_CHAT_MAX_SYS_TOKENS + 1, 1 },
		{ "turns", OFF(turns_min), 0, 1 },
		{ "turns", OFF(turns_min), 7, 1 },
		{ "turns", OFF(turns_max), LBW_CHAT_MAX_TURNS + 1, 1 },
		{ "gen", OFF(gen_min), 0, 1 },
		{ "gen", OFF(gen_min), 33, 1 },
		{ "gen", OFF(gen_max), LBW_CHAT_MAX_GEN + 1, 1 },
		{ "open", OFF(open), 0, 1 },
		{ "open", OFF(open), LBW_CHAT_MAX_OPEN + 1, 1 },
		{ "zipf_s", ZIPF, 0, -0.5 },
		{ "zipf_s", ZIPF, 0, 10.5 },
		{ "zipf_s", ZIPF, 0, NAN },
		{ "zipf_s", ZIPF, 0, INFINITY },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct lbw_chat_cfg c = good;
		if (bad[i].off != ZIPF)
			memcpy((char *)&c + bad[i].off, &bad[i].v, sizeof(uint32_t));
		else
			c.zipf_s = bad[i].s;
		err[0] = '\0';
		memset(&w, 0xa5, sizeof(w));
		int rc = lbw_chat_make(&corpus, &tok, &c, &w, err, sizeof(err));
		if (rc != -EINVAL || !strstr(err, bad[i].field))
			fail_msg("case %zu (%s): %d '%s', want -EINVAL naming it", i, bad[i].field,
				 rc, err);
		assert_null(w.r);
		assert_null(w.sys);
		assert_int_equal(w.n, 0);
	}
	struct lbw_tokenizer unloaded = { 0 };
	struct lbw_paragraphs empty = { 0 };
	assert_int_equal(lbw_chat_make(NULL, &tok, &good, &w, err, sizeof(err)), -EINVAL);
	assert_int_equal(lbw_chat_make(&corpus, NULL, &good, &w, err, sizeof(err)), -EINVAL);
	assert_int_equal(lbw_chat_make(&corpus, &tok, NULL, &w, err, sizeof(err)), -EINVAL);
	assert_int_equal(lbw_chat_make(&corpus, &tok, &good, NULL, NULL, 0), -EINVAL);
	assert_int_equal(lbw_chat_make(&empty, &tok, &good, &w, err, sizeof(err)), -EINVAL);
	assert_int_equal(lbw_chat_make(&corpus, &unloaded, &good, &w, err, sizeof(err)), -EINVAL);
	lbw_chat_free(NULL);

	/* the corpus runs out: -ENOSPC, nothing left allocated */
	struct lbw_chat_cfg c = good;
	c.conversations = SHORT_N / 4;
	c.turns_min = 5;
	err[0] = '\0';
	memset(&w, 0xa5, sizeof(w));
	assert_int_equal(lbw_chat_make(&shorts, &tok, &c, &w, err, sizeof(err)), -ENOSPC);
	assert_non_null(strstr(err, "used up"));
	assert_null(w.r);
}

/* layerbank-bench workload: each bad command line exits 2 with one line naming the option. */
static void test_chat_bad_options(void **state)
{
	(void)state;
	static char out[8192];
	const char *head[] = { LB_BENCH_PATH, "workload", NULL };
	struct {
		const char *args[4];
		const char *says;
	} bad[] = {
		{ { "--chat", "--conversations", "0" }, "--conversations" },
		{ { "--chat", "--conversations", "1000001" }, "--conversations" },
		{ { "--chat", "--systems", "0" }, "--systems" },
		{ { "--chat", "--systems", "x" }, "--systems" },
		{ { "--chat", "--turns", "0-3" }, "--turns" },
		{ { "--chat", "--turns", "4-2" }, "--turns" },
		{ { "--chat", "--turns", "1-65" }, "--turns" },
		{ { "--chat", "--turns", "2-" }, "--turns" },
		{ { "--chat", "--turns", "-3" }, "--turns" },
		{ { "--chat", "--gen", "8-4097" }, "--gen" },
		{ { "--chat", "--gen", "8 - 9" }, "--gen" },
		{ { "--chat", "--system-tokens", "300-100" }, "--system-tokens" },
		{ { "--chat", "--open", "0" }, "--open" },
		{ { "--chat", "--open", "-1" }, "--open" },
		{ { "--chat", "--zipf", "-1" }, "--zipf" },
		{ { "--chat", "--zipf", "nan" }, "--zipf" },
		{ { "--chat", "--seed", "18446744073709551616" }, "--seed" },
		{ { "--chat", "--vocab", "100" }, "--vocab" },
		{ { "--chat", "--requests", "10" }, "--requests" },
		{ { "--chat", "--exact", "0.5" }, "--exact" },
		{ { "--turns", "2-3" }, "--turns" },
		{ { "--open", "3" }, "--open" },
		{ { "--chat", "--turns" }, "--turns" },
		{ { "--chat", "--bogus" }, "--bogus" },
		{ { "--chat", "stray" }, "stray" },
		{ { "--requests", "0" }, "--requests" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int st = lbt_run_args(head, bad[i].args, out, sizeof(out));
		char *nl = strchr(out, '\n');
		int one_line = nl && nl[1] == '\0', two = WIFEXITED(st) && WEXITSTATUS(st) == 2;
		if (!two || !one_line || !strstr(out, bad[i].says))
			fail_msg("%s %s: status %d, said '%s'; want 2 and one line naming it",
				 bad[i].args[0], bad[i].args[1], st, out);
	}
	/* a missing tokenizer is a run-time failure: 1, one line */
	const char *tail[] = { "--chat", "--tokenizer", "/nonexistent/tok.bin", NULL };
	int st = lbt_run_args(head, tail, out, sizeof(out));
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
	assert_non_null(strstr(out, "/nonexistent/tok.bin"));
	assert_true(strchr(out, '\n')[1] == '\0');
}

int main(void)
{
	if (access(VAL, R_OK) != 0)
		LBT_SKIP("data file %s is absent", VAL);
	if (access(TOK, R_OK) != 0)
		LBT_SKIP("data file %s is absent", TOK);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_corpus_matches_file),
		cmocka_unit_test(test_training_part_held_out),
		cmocka_unit_test(test_loader_split),
		cmocka_unit_test(test_names),
		cmocka_unit_test(test_same_seed_same_stream),
		cmocka_unit_test(test_shares_and_mutations),
		cmocka_unit_test(test_zipf_popularity),
		cmocka_unit_test(test_bad_configs),
		cmocka_unit_test(test_corpus_exhaustion),
		cmocka_unit_test(test_loader),
		cmocka_unit_test(test_chat_same_seed_same_stream),
		cmocka_unit_test(test_chat_output_byte_identical),
		cmocka_unit_test(test_chat_system_prompts),
		cmocka_unit_test(test_chat_zipf_popularity),
		cmocka_unit_test(test_chat_paragraphs_used_once),
		cmocka_unit_test(test_chat_dependencies),
		cmocka_unit_test(test_chat_max_tokens),
		cmocka_unit_test(test_chat_prompt_prefixes),
		cmocka_unit_test(test_chat_prompt_bad_args),
		cmocka_unit_test(test_chat_bad_configs),
		cmocka_unit_test(test_chat_bad_options),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
