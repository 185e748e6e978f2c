/*
 * The request stream: determinism, kind shares, Zipf popularity against its exact weights, the
 * shape of every mutation, bad configurations, corpus exhaustion and the corpus loader.
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
#include <unistd.h>

#include "testutil.h"
#include "workload.h"

#define VAL LB_DATA_DIR "/tinystories_val.txt"
#define MIN_CHARS 100
#define MAX_CHARS 600
/* Requests of the statistical tests; their fresh share (0.10) stays well inside the corpus. */
#define N_STAT 20000u

static struct lbw_paragraphs corpus; /* VAL, paragraphs of MIN_CHARS..MAX_CHARS */

static int setup(void **state)
{
	(void)state;
	char err[256];
	int rc = lbw_paragraphs_load(VAL, MIN_CHARS, MAX_CHARS, &corpus, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "%s\n", err);
		return -1;
	}
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	lbw_paragraphs_free(&corpus);
	return 0;
}

static struct lbw_workload_cfg stat_cfg(double zipf_s, uint64_t seed)
{
	struct lbw_workload_cfg c = lbw_workload_defaults();
	c.n_requests = N_STAT;
	c.p_exact = 0.6;
	c.p_near = 0.3;
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

/* The loader against an independent read of the same file. */
static void test_corpus_matches_file(void **state)
{
	(void)state;
	FILE *f = fopen(VAL, "r");
	static char line[1 << 16];
	uint32_t n = 0;
	assert_non_null(f);
	while (fgets(line, sizeof(line), f)) {
		size_t l = strcspn(line, "\r\n");
		line[l] = '\0';
		if (l < MIN_CHARS || l > MAX_CHARS)
			continue;
		assert_true(n < corpus.n);
		assert_string_equal(corpus.p[n], line);
		n++;
	}
	fclose(f);
	assert_int_equal(n, corpus.n);
	assert_true(corpus.n > 1000);
}

static void test_names(void **state)
{
	(void)state;
	struct lbw_workload_cfg c = lbw_workload_defaults();
	assert_int_equal(c.n_requests, 400);
	assert_true(c.p_exact == 0.65 && c.p_near == 0.20 && c.zipf_s == 1.0 && c.seed == 1);
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

int main(void)
{
	if (access(VAL, R_OK) != 0)
		LBT_SKIP("data file %s is absent", VAL);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_corpus_matches_file),
		cmocka_unit_test(test_names),
		cmocka_unit_test(test_same_seed_same_stream),
		cmocka_unit_test(test_shares_and_mutations),
		cmocka_unit_test(test_zipf_popularity),
		cmocka_unit_test(test_bad_configs),
		cmocka_unit_test(test_corpus_exhaustion),
		cmocka_unit_test(test_loader),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
