/*
 * The request stream: corpus loading, Zipf picks over a growing cumulative table (xoshiro.h
 * draws every choice), and the six near-duplicate mutations.
 */
#include "workload.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "errf.h"
#include "xoshiro.h"

/* Tries of one mutation kind before the next kind takes over (see lbw_workload_make). */
#define MUT_TRIES 8
/* Paragraphs drawn in a row, looking for one with a word, before a corpus word is given up. */
#define WORD_TRIES 16
#define MAX_APPEND 4
#define MAX_REMOVE 4
#define PUNCT_MARKS ",.!?"

/* ---- corpus ---- */

void lbw_paragraphs_free(struct lbw_paragraphs *p)
{
	if (!p)
		return;
	free(p->p);
	free(p->mem);
	memset(p, 0, sizeof(*p));
}

/* Whole file into *buf (one spare byte after it); *len its size. @return 0 or -errno. */
static int read_all(const char *path, char **buf, size_t *len, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int rc = -errno;
		lbu_errf(err, errlen, "cannot open corpus %s: %s", path, strerror(errno));
		return rc;
	}
	struct stat st;
	if (fstat(fd, &st) != 0) {
		int rc = -errno;
		lbu_errf(err, errlen, "cannot stat corpus %s: %s", path, strerror(errno));
		close(fd);
		return rc;
	}
	if (S_ISREG(st.st_mode) && st.st_size > (off_t)LBW_CORPUS_MAX_BYTES) {
		lbu_errf(err, errlen, "corpus %s: %lld bytes, more than the %u MiB cap", path,
			(long long)st.st_size, LBW_CORPUS_MAX_BYTES >> 20);
		close(fd);
		return -EFBIG;
	}
	/* a regular file's size is a hint: it may still grow, and pipes have none */
	size_t cap = S_ISREG(st.st_mode) ? (size_t)st.st_size + 2 : 65536, n = 0;
	char *b = malloc(cap);
	int rc = 0;
	if (!b) {
		rc = -ENOMEM;
		goto out;
	}
	for (;;) {
		if (n + 1 >= cap) {
			if (cap > LBW_CORPUS_MAX_BYTES + 1) {
				lbu_errf(err, errlen, "corpus %s: more than the %u MiB cap", path,
					LBW_CORPUS_MAX_BYTES >> 20);
				rc = -EFBIG;
				goto out;
			}
			size_t ncap = cap * 2 > LBW_CORPUS_MAX_BYTES + 2 ? LBW_CORPUS_MAX_BYTES + 2 : cap * 2;
			char *nb = realloc(b, ncap);
			if (!nb) {
				rc = -ENOMEM;
				goto out;
			}
			b = nb;
			cap = ncap;
		}
		ssize_t r = read(fd, b + n, cap - 1 - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			rc = -errno;
			lbu_errf(err, errlen, "cannot read corpus %s: %s", path, strerror(errno));
			goto out;
		}
		if (r == 0)
			break;
		n += (size_t)r;
		if (n > LBW_CORPUS_MAX_BYTES) {
			lbu_errf(err, errlen, "corpus %s: more than the %u MiB cap", path,
				LBW_CORPUS_MAX_BYTES >> 20);
			rc = -EFBIG;
			goto out;
		}
	}
out:
	close(fd);
	if (rc == -ENOMEM)
		lbu_errf(err, errlen, "corpus %s: out of memory", path);
	if (rc) {
		free(b);
		return rc;
	}
	*buf = b;
	*len = n;
	return 0;
}

int lbw_paragraphs_load(const char *path, uint32_t min_chars, uint32_t max_chars,
			struct lbw_paragraphs *out, char *err, size_t errlen)
{
	if (!out || !path) {
		lbu_errf(err, errlen, "lbw_paragraphs_load: NULL argument");
		return -EINVAL;
	}
	memset(out, 0, sizeof(*out));
	if (max_chars && min_chars > max_chars) {
		lbu_errf(err, errlen, "corpus length window %u..%u chars is empty", min_chars, max_chars);
		return -EINVAL;
	}
	char *b = NULL;
	size_t len = 0;
	int rc = read_all(path, &b, &len, err, errlen);
	if (rc)
		return rc;

	/* Compact the kept lines, each NUL-terminated, to the front of b. A line written never
	 * outgrows the bytes read for it: its '\n' (or the spare byte) takes the NUL. The training
	 * part, from non-blank line LBW_EVAL_PARAGRAPHS on, is never read. */
	size_t w = 0, i = 0;
	uint32_t n = 0, numbered = 0;
	while (i < len && numbered < LBW_EVAL_PARAGRAPHS) {
		size_t start = w, nonblank = 0;
		for (; i < len && b[i] != '\n'; i++) {
			char c = b[i];
			if (c == '\r')
				continue;
			if (c == '\t' || c == '\0')
				c = ' ';
			nonblank |= c != ' ';
			b[w++] = c;
		}
		i++; /* the '\n' */
		size_t l = w - start;
		numbered += nonblank != 0;
		if (nonblank && l >= min_chars && (!max_chars || l <= max_chars)) {
			b[w++] = '\0';
			n++;
		} else {
			w = start;
		}
	}
	if (!n) {
		if (max_chars)
			lbu_errf(err, errlen, "corpus %s: no line of %u..%u chars among its first %u "
				"paragraphs, the selection is empty", path, min_chars, max_chars,
				LBW_EVAL_PARAGRAPHS);
		else
			lbu_errf(err, errlen, "corpus %s: no line of %u or more chars among its first %u "
				"paragraphs, the selection is empty", path, min_chars, LBW_EVAL_PARAGRAPHS);
		free(b);
		return -EINVAL;
	}
	char *mem = realloc(b, w);
	if (mem)
		b = mem;
	out->p = malloc((size_t)n * sizeof(char *));
	if (!out->p) {
		lbu_errf(err, errlen, "corpus %s: out of memory", path);
		free(b);
		return -ENOMEM;
	}
	out->mem = b;
	out->n = n;
	for (uint32_t k = 0, off = 0; k < n; k++) {
		out->p[k] = b + off;
		off += (uint32_t)strlen(b + off) + 1;
	}
	return 0;
}

/* ---- words and text ---- */

static int is_letter(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int is_upper(char c)
{
	return c >= 'A' && c <= 'Z';
}

/* The next word of >= minlen letters at or after *pos: *start, *len; *pos moves past it.
 * @return 1, or 0 when there is none. */
static int next_word(const char *s, size_t *pos, size_t minlen, size_t *start, size_t *len)
{
	size_t i = *pos;
	for (;;) {
		while (s[i] && !is_letter(s[i]))
			i++;
		if (!s[i]) {
			*pos = i;
			return 0;
		}
		size_t b = i;
		while (is_letter(s[i]))
			i++;
		if (i - b >= minlen) {
			*start = b;
			*len = i - b;
			*pos = i;
			return 1;
		}
	}
}

static uint32_t count_words(const char *s, size_t minlen)
{
	size_t pos = 0, st = 0, l = 0;
	uint32_t n = 0;
	while (next_word(s, &pos, minlen, &st, &l))
		n++;
	return n;
}

/* The k-th word (from 0) of >= minlen letters; k < count_words(s, minlen). */
static void nth_word(const char *s, size_t minlen, uint32_t k, size_t *start, size_t *len)
{
	size_t pos = 0;
	for (uint32_t i = 0; i <= k; i++)
		next_word(s, &pos, minlen, start, len);
}

/* A growing NUL-terminated string. */
struct sbuf {
	char *s;
	size_t len, cap;
};

static int sb_put(struct sbuf *b, const char *data, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *s = realloc(b->s, cap);
		if (!s)
			return -ENOMEM;
		b->s = s;
		b->cap = cap;
	}
	memcpy(b->s + b->len, data, n);
	b->len += n;
	b->s[b->len] = '\0';
	return 0;
}

/* s with [at, at + cut) replaced by ins[0..n). */
static int sb_splice(struct sbuf *b, const char *s, size_t at, size_t cut, const char *ins,
		     size_t n)
{
	b->len = 0;
	if (sb_put(b, s, at) || sb_put(b, ins, n) || sb_put(b, s + at + cut, strlen(s + at + cut)))
		return -ENOMEM;
	return 0;
}

/* ---- generation ---- */

struct gen {
	const struct lbw_paragraphs *p;
	struct lbw_rng rng;
	struct sbuf out;  /* the mutation being built */
};

/* A random word of a random paragraph. @return 1, or 0 after WORD_TRIES paragraphs without. */
static int corpus_word(struct gen *g, const char **w, size_t *len)
{
	for (int t = 0; t < WORD_TRIES; t++) {
		const char *s = g->p->p[lbw_rng_below(&g->rng, g->p->n)];
		uint32_t n = count_words(s, 1);
		if (!n)
			continue;
		size_t st = 0;
		nth_word(s, 1, lbw_rng_below(&g->rng, n), &st, len);
		*w = s + st;
		return 1;
	}
	return 0;
}

/* A word of >= minlen letters of s, drawn uniformly. @return 0 when s has none. */
static int random_word(struct gen *g, const char *s, size_t minlen, size_t *start, size_t *len)
{
	uint32_t n = count_words(s, minlen);
	if (!n)
		return 0;
	nth_word(s, minlen, lbw_rng_below(&g->rng, n), start, len);
	return 1;
}

/* Each mutation below builds g->out from base. @return 1 done, 0 cannot apply, -ENOMEM. */

static int mut_word_swap(struct gen *g, const char *base)
{
	size_t st = 0, l = 0, nl = 0;
	const char *w;
	if (!random_word(g, base, 1, &st, &l))
		return 0;
	if (!corpus_word(g, &w, &nl))
		return 0;
	if (sb_splice(&g->out, base, st, l, w, nl))
		return -ENOMEM;
	char *c = &g->out.s[st];
	if (is_upper(base[st]) != is_upper(*c))
		*c ^= 0x20;
	return 1;
}

static int mut_typo(struct gen *g, const char *base)
{
	size_t st = 0, l = 0;
	if (!random_word(g, base, 3, &st, &l))
		return 0;
	uint32_t op = lbw_rng_below(&g->rng, 3);
	if (op == 0) { /* swap letters i and i + 1 (no change when they are equal: retried) */
		size_t i = st + lbw_rng_below(&g->rng, (uint32_t)l - 1);
		char two[2] = { base[i + 1], base[i] };
		return sb_splice(&g->out, base, i, 2, two, 2) ? -ENOMEM : 1;
	}
	size_t i = st + lbw_rng_below(&g->rng, (uint32_t)l);
	if (op == 1) /* drop letter i */
		return sb_splice(&g->out, base, i, 1, "", 0) ? -ENOMEM : 1;
	return sb_splice(&g->out, base, i, 0, &base[i], 1) ? -ENOMEM : 1; /* double it */
}

/* Always applies, and always changes the text by one byte. */
static int mut_punct(struct gen *g, const char *base)
{
	uint32_t marks = 0;
	for (const char *c = base; *c; c++)
		marks += strchr(PUNCT_MARKS, *c) != NULL;
	if (marks && lbw_rng_below(&g->rng, 2) == 0) {
		uint32_t k = lbw_rng_below(&g->rng, marks);
		size_t i = 0;
		for (;; i++)
			if (strchr(PUNCT_MARKS, base[i]) && k-- == 0)
				break;
		return sb_splice(&g->out, base, i, 1, "", 0) ? -ENOMEM : 1;
	}
	size_t at = strlen(base), st = 0, l = 0;
	if (random_word(g, base, 1, &st, &l))
		at = st + l;
	const char *mark = &PUNCT_MARKS[lbw_rng_below(&g->rng, 4)];
	return sb_splice(&g->out, base, at, 0, mark, 1) ? -ENOMEM : 1;
}

static int mut_case(struct gen *g, const char *base)
{
	size_t st = 0, l = 0;
	if (!random_word(g, base, 1, &st, &l))
		return 0;
	char c = base[st] ^ 0x20; /* an ASCII letter: bit 5 is its case */
	return sb_splice(&g->out, base, st, 1, &c, 1) ? -ENOMEM : 1;
}

static int mut_append(struct gen *g, const char *base)
{
	uint32_t k = 1 + lbw_rng_below(&g->rng, MAX_APPEND);
	g->out.len = 0;
	if (sb_put(&g->out, base, strlen(base)))
		return -ENOMEM;
	for (uint32_t i = 0; i < k; i++) {
		const char *w;
		size_t l;
		if (!corpus_word(g, &w, &l))
			return 0;
		if (sb_put(&g->out, " ", 1) || sb_put(&g->out, w, l))
			return -ENOMEM;
	}
	return 1;
}

static int mut_remove(struct gen *g, const char *base)
{
	uint32_t n = count_words(base, 1);
	size_t st = 0, l = 0;
	if (n < 4)
		return 0;
	uint32_t most = n - 3 < MAX_REMOVE ? n - 3 : MAX_REMOVE;
	uint32_t k = 1 + lbw_rng_below(&g->rng, most);
	nth_word(base, 1, n - k - 1, &st, &l);
	g->out.len = 0;
	return sb_put(&g->out, base, st + l) ? -ENOMEM : 1;
}

static int mut_apply(struct gen *g, enum lbw_mutation m, const char *base)
{
	switch (m) {
	case LBW_MUT_WORD_SWAP:
		return mut_word_swap(g, base);
	case LBW_MUT_TYPO:
		return mut_typo(g, base);
	case LBW_MUT_PUNCT:
		return mut_punct(g, base);
	case LBW_MUT_CASE:
		return mut_case(g, base);
	case LBW_MUT_APPEND:
		return mut_append(g, base);
	case LBW_MUT_REMOVE:
		return mut_remove(g, base);
	default:
		return 0;
	}
}

/* A near-duplicate of base into *text (malloc'd), its kind into *mut. @return 0 or -ENOMEM. */
static int mutate(struct gen *g, const char *base, enum lbw_mutation *mut, char **text)
{
	enum lbw_mutation m = (enum lbw_mutation)(1 + lbw_rng_below(&g->rng, LBW_MUT_COUNT - 1));
	for (int k = 0; k < LBW_MUT_COUNT - 1; k++) {
		for (int t = 0; t < MUT_TRIES; t++) {
			int rc = mut_apply(g, m, base);
			if (rc < 0)
				return rc;
			if (rc == 0)
				break;
			if (strcmp(g->out.s, base) != 0) {
				*text = strdup(g->out.s);
				*mut = m;
				return *text ? 0 : -ENOMEM;
			}
		}
		m = m == LBW_MUT_REMOVE ? LBW_MUT_WORD_SWAP : m + 1;
	}
	abort(); /* broken invariant: PUNCT always applies and always changes the text */
}

struct lbw_workload_cfg lbw_workload_defaults(void)
{
	return (struct lbw_workload_cfg){
		.n_requests = 400, .p_exact = 0.30, .p_near = 0.45, .zipf_s = 1.0, .seed = 1
	};
}

static int check_cfg(const struct lbw_workload_cfg *c, char *err, size_t errlen)
{
	if (!isfinite(c->p_exact) || c->p_exact < 0 || c->p_exact > 1) {
		lbu_errf(err, errlen, "workload: p_exact %g not in [0, 1]", c->p_exact);
		return -EINVAL;
	}
	if (!isfinite(c->p_near) || c->p_near < 0 || c->p_near > 1) {
		lbu_errf(err, errlen, "workload: p_near %g not in [0, 1]", c->p_near);
		return -EINVAL;
	}
	if (c->p_exact + c->p_near > 1 + 1e-9) {
		lbu_errf(err, errlen, "workload: p_exact + p_near = %g exceeds 1", c->p_exact + c->p_near);
		return -EINVAL;
	}
	if (!isfinite(c->zipf_s) || c->zipf_s < 0 || c->zipf_s > LBW_MAX_ZIPF_S) {
		lbu_errf(err, errlen, "workload: zipf_s %g not in [0, %g]", c->zipf_s, LBW_MAX_ZIPF_S);
		return -EINVAL;
	}
	if (c->n_requests < 1 || c->n_requests > LBW_MAX_REQUESTS) {
		lbu_errf(err, errlen, "workload: n_requests %u not in 1..%u", c->n_requests,
			LBW_MAX_REQUESTS);
		return -EINVAL;
	}
	return 0;
}

void lbw_workload_free(struct lbw_workload *w)
{
	if (!w)
		return;
	if (w->r)
		for (uint32_t i = 0; i < w->n; i++)
			free(w->r[i].text);
	free(w->r);
	memset(w, 0, sizeof(*w));
}

int lbw_workload_make(const struct lbw_paragraphs *p, const struct lbw_workload_cfg *cfg,
		      struct lbw_workload *out, char *err, size_t errlen)
{
	if (!out || !p || !cfg) {
		lbu_errf(err, errlen, "lbw_workload_make: NULL argument");
		if (out)
			memset(out, 0, sizeof(*out));
		return -EINVAL;
	}
	memset(out, 0, sizeof(*out));
	if (!p->n || !p->p) {
		lbu_errf(err, errlen, "workload: the corpus holds no paragraph");
		return -EINVAL;
	}
	int rc = check_cfg(cfg, err, errlen);
	if (rc)
		return rc;

	uint32_t max_docs = p->n < cfg->n_requests ? p->n : cfg->n_requests, d = 0;
	/* perm: [p->n] paragraph indices, shuffled lazily; perm[0..d) the issue order.
	 * by_rank: [docs] paragraph of rank k. cum: [docs] sum of the weights of ranks 0..k. */
	uint32_t *perm = malloc((size_t)p->n * sizeof(*perm));
	uint32_t *by_rank = malloc((size_t)max_docs * sizeof(*by_rank));
	double *cum = malloc((size_t)max_docs * sizeof(*cum));
	struct gen g = { .p = p };
	out->r = calloc(cfg->n_requests, sizeof(*out->r));
	if (!perm || !by_rank || !cum || !out->r) {
		rc = -ENOMEM;
		goto fail;
	}
	for (uint32_t i = 0; i < p->n; i++)
		perm[i] = i;
	lbw_rng_seed(&g.rng, cfg->seed);

	for (uint32_t i = 0; i < cfg->n_requests; i++) {
		struct lbw_request *r = &out->r[i];
		double u = lbw_rng_unit(&g.rng);
		enum lbw_req_kind kind = u < cfg->p_exact ? LBW_REQ_EXACT
				       : u < cfg->p_exact + cfg->p_near ? LBW_REQ_NEAR
									: LBW_REQ_FRESH;
		if (d == 0)
			kind = LBW_REQ_FRESH;
		r->id = i;
		r->kind = kind;
		r->mut = LBW_MUT_NONE;
		out->n = i + 1;
		if (kind == LBW_REQ_FRESH) {
			if (d == p->n) {
				lbu_errf(err, errlen,
					"workload: all %u paragraphs of the corpus used up by request %u of %u; "
					"lower the fresh share, widen the length window or ask for fewer requests",
					p->n, i, cfg->n_requests);
				rc = -ENOSPC;
				goto fail;
			}
			/* one step of a Fisher-Yates shuffle: perm[0..d] is the issue order */
			uint32_t j = d + lbw_rng_below(&g.rng, p->n - d), t = perm[d];
			perm[d] = perm[j];
			perm[j] = t;
			by_rank[d] = perm[d];
			double wk = cfg->zipf_s == 0 ? 1.0 : pow((double)d + 1, -cfg->zipf_s);
			cum[d] = (d ? cum[d - 1] : 0) + wk;
			r->doc = perm[d++];
			r->text = strdup(p->p[r->doc]);
		} else {
			r->doc = by_rank[lbw_cum_pick(cum, d, lbw_rng_unit(&g.rng) * cum[d - 1])];
			if (kind == LBW_REQ_EXACT) {
				r->text = strdup(p->p[r->doc]);
			} else {
				rc = mutate(&g, p->p[r->doc], &r->mut, &r->text);
				if (rc)
					goto fail;
			}
		}
		if (!r->text) {
			rc = -ENOMEM;
			goto fail;
		}
		out->count[kind]++;
	}
	out->docs = d;
	free(perm);
	free(by_rank);
	free(cum);
	free(g.out.s);
	return 0;
fail:
	if (rc == -ENOMEM)
		lbu_errf(err, errlen, "workload: out of memory");
	free(perm);
	free(by_rank);
	free(cum);
	free(g.out.s);
	lbw_workload_free(out);
	return rc;
}

static const char *const kind_names[] = { "fresh", "exact", "near" };
static const char *const mut_names[] = { "none", "word_swap", "typo",  "punct",
					 "case", "append",    "remove" };
_Static_assert(sizeof(mut_names) / sizeof(mut_names[0]) == LBW_MUT_COUNT, "a name per mutation");

const char *lbw_req_kind_name(enum lbw_req_kind k)
{
	return (unsigned)k < 3 ? kind_names[k] : "?";
}

const char *lbw_mutation_name(enum lbw_mutation m)
{
	return (unsigned)m < LBW_MUT_COUNT ? mut_names[m] : "?";
}

int lbw_req_kind_parse(const char *s)
{
	for (int k = 0; s && k < 3; k++)
		if (strcmp(s, kind_names[k]) == 0)
			return k;
	return -EINVAL;
}
