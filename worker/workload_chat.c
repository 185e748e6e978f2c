/*
 * The chat request stream: system prompts of whole paragraphs, conversations interleaved as a
 * fleet sees them, every text tokenized on its own, and the prompt builder.
 */
#include "workload.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "errf.h"
#include "tokenizer.h"
#include "xoshiro.h"

/* Paragraphs passed over in a row (each would take a system prompt past sys_tokens_max)
 * before the prompt ends as it is (see lbw_chat_make). */
#define SYS_PASSES 64

/* An open conversation. */
struct conv {
	uint32_t id, sys, turns;
	uint32_t next;      /* its next turn */
	uint32_t last_req;  /* id of its latest request; LBW_CHAT_NONE before turn 0 */
};

/* Generation state; out grows as requests are made. */
struct chat_gen {
	const struct lbw_paragraphs *p;
	const struct lbw_tokenizer *t;
	const struct lbw_chat_cfg *cfg;
	struct lbw_rng rng;
	uint32_t *perm;     /* [p->n] paragraph indices, shuffled lazily; perm[0..used) taken */
	uint32_t used;
	double *cum;        /* [systems] running sums of the system prompts' Zipf weights */
	struct conv *open;  /* [cfg->open] the open conversations, n_open of them */
	uint32_t n_open;
	uint32_t r_cap;     /* entries allocated in out->r */
	struct lbw_chat *out;
	char *err;
	size_t errlen;
};

struct lbw_chat_cfg lbw_chat_defaults(void)
{
	return (struct lbw_chat_cfg){
		.conversations = 114, .systems = 4, .sys_tokens_min = 100, .sys_tokens_max = 300,
		.turns_min = 1, .turns_max = 6, .gen_min = 8, .gen_max = 32, .open = 8,
		.max_tokens = 0, .zipf_s = 1.0, .seed = 1
	};
}

/* lo..hi within 1..cap, or one line in err naming the field. */
static int check_range(const char *what, uint32_t lo, uint32_t hi, uint32_t cap, char *err,
		       size_t errlen)
{
	if (lo < 1 || hi > cap || lo > hi)
		return lbu_fail(err, errlen, -EINVAL, "chat: %s %u..%u not a range within 1..%u",
				what, lo, hi, cap);
	return 0;
}

static int check_cfg(const struct lbw_chat_cfg *c, char *err, size_t errlen)
{
	const struct {
		const char *what;
		uint32_t lo, hi, cap;
	} ranges[] = {
		{ "conversations", c->conversations, c->conversations, LBW_CHAT_MAX_CONVS },
		{ "systems", c->systems, c->systems, LBW_CHAT_MAX_SYSTEMS },
		{ "sys_tokens", c->sys_tokens_min, c->sys_tokens_max, LBW_CHAT_MAX_SYS_TOKENS },
		{ "turns", c->turns_min, c->turns_max, LBW_CHAT_MAX_TURNS },
		{ "gen", c->gen_min, c->gen_max, LBW_CHAT_MAX_GEN },
		{ "open", c->open, c->open, LBW_CHAT_MAX_OPEN },
	};
	for (size_t i = 0; i < sizeof(ranges) / sizeof(ranges[0]); i++) {
		int rc = check_range(ranges[i].what, ranges[i].lo, ranges[i].hi, ranges[i].cap, err,
				     errlen);
		if (rc)
			return rc;
	}
	if (c->max_tokens > LBW_CHAT_MAX_TOKENS)
		return lbu_fail(err, errlen, -EINVAL, "chat: max_tokens %u above %u", c->max_tokens,
				LBW_CHAT_MAX_TOKENS);
	if (!isfinite(c->zipf_s) || c->zipf_s < 0 || c->zipf_s > LBW_MAX_ZIPF_S)
		return lbu_fail(err, errlen, -EINVAL, "chat: zipf_s %g not in [0, %g]", c->zipf_s,
				LBW_MAX_ZIPF_S);
	return 0;
}

/* Uniform in lo..hi (lo <= hi). */
static uint32_t draw_in(struct chat_gen *g, uint32_t lo, uint32_t hi)
{
	return lo + lbw_rng_below(&g->rng, hi - lo + 1);
}

/* The next paragraph of the shuffle into *idx, not yet taken: one Fisher-Yates step that
 * brings a uniform pick of the pool to perm[used]. @return 0; -ENOSPC the pool is empty. */
static int peek_para(struct chat_gen *g, uint32_t *idx)
{
	if (g->used == g->p->n)
		return -ENOSPC;
	uint32_t j = g->used + lbw_rng_below(&g->rng, g->p->n - g->used), x = g->perm[j];
	g->perm[j] = g->perm[g->used];
	g->perm[g->used] = x;
	*idx = x;
	return 0;
}

/* text encoded without BOS or EOS into a new array *tok of *n entries. @return 0 or -errno. */
static int encode(const struct lbw_tokenizer *t, const char *text, int32_t **tok, uint32_t *n)
{
	int32_t *b = malloc((strlen(text) + 3) * sizeof(*b));
	if (!b)
		return -ENOMEM;
	int rc = lbw_tokenizer_encode(t, text, 0, 0, b);
	if (rc < 0) {
		free(b);
		return rc;
	}
	int32_t *s = realloc(b, ((size_t)rc + 1) * sizeof(*b));
	*tok = s ? s : b;
	*n = (uint32_t)rc;
	return 0;
}

/* *dst + " " + src (just src when *dst is NULL) into *dst, reallocated. @return 0, -ENOMEM. */
static int text_append(char **dst, const char *src)
{
	size_t la = *dst ? strlen(*dst) + 1 : 0, lb = strlen(src);
	char *s = realloc(*dst, la + lb + 1);
	if (!s)
		return -ENOMEM;
	if (la)
		s[la - 1] = ' ';
	memcpy(s + la, src, lb + 1);
	*dst = s;
	return 0;
}

/* Append paragraph idx (text para) to s when its tokens keep s within max.
 * @return 1 appended, 0 passed over, -errno. */
static int sys_try(const struct lbw_tokenizer *t, struct lbw_chat_sys *s, uint32_t idx,
		   const char *para, uint32_t max)
{
	int32_t *tok = NULL;
	uint32_t n = 0;
	int rc = encode(t, para, &tok, &n);
	if (rc || n > max - s->n_tokens) {
		free(tok);
		return rc;
	}
	int32_t *all = realloc(s->tokens, ((size_t)s->n_tokens + n + 1) * sizeof(*all));
	uint32_t *paras = all ? realloc(s->paras, ((size_t)s->n_paras + 1) * sizeof(*paras)) : NULL;
	if (all)
		s->tokens = all;
	if (paras)
		s->paras = paras;
	if (!paras || text_append(&s->text, para)) {
		free(tok);
		return -ENOMEM;
	}
	memcpy(s->tokens + s->n_tokens, tok, (size_t)n * sizeof(*tok));
	s->n_tokens += n;
	s->paras[s->n_paras++] = idx;
	free(tok);
	return 1;
}

/* System prompt k (step 1 of lbw_chat_make). @return 0 or -errno, err set. */
static int sys_build(struct chat_gen *g, uint32_t k)
{
	const struct lbw_chat_cfg *c = g->cfg;
	struct lbw_chat_sys *s = &g->out->sys[k];
	uint32_t passes = 0, idx;
	s->target = draw_in(g, c->sys_tokens_min, c->sys_tokens_max);
	while (s->n_tokens < s->target && passes < SYS_PASSES) {
		int rc = peek_para(g, &idx);
		if (rc)
			return lbu_fail(g->err, g->errlen, rc,
					"chat: all %u paragraphs used up by system prompt %u",
					g->p->n, k);
		rc = sys_try(g->t, s, idx, g->p->p[idx], c->sys_tokens_max);
		if (rc < 0)
			return lbu_fail(g->err, g->errlen, rc, "chat: system prompt %u: %s", k,
					strerror(-rc));
		g->used += (uint32_t)rc;
		passes = rc ? 0 : passes + 1;
	}
	if (s->n_tokens < c->sys_tokens_min)
		return lbu_fail(g->err, g->errlen, -ENOSPC,
				"chat: system prompt %u: %u tokens and no paragraph fits in %u..%u",
				k, s->n_tokens, c->sys_tokens_min, c->sys_tokens_max);
	return 0;
}

/* Open the next conversation into *cv (step 2 of lbw_chat_make). */
static void conv_open(struct chat_gen *g, struct conv *cv)
{
	uint32_t n = g->cfg->systems;
	cv->id = g->out->n_convs++;
	cv->sys = lbw_cum_pick(g->cum, n, lbw_rng_unit(&g->rng) * g->cum[n - 1]);
	cv->turns = draw_in(g, g->cfg->turns_min, g->cfg->turns_max);
	cv->next = 0;
	cv->last_req = LBW_CHAT_NONE;
	g->out->sys[cv->sys].convs++;
}

/* A zeroed request appended to out->r. @return it; NULL when out of memory. */
static struct lbw_chat_req *req_add(struct chat_gen *g)
{
	struct lbw_chat *o = g->out;
	if (o->n == g->r_cap) {
		uint32_t cap = g->r_cap ? g->r_cap * 2 : 256;
		struct lbw_chat_req *r = realloc(o->r, (size_t)cap * sizeof(*r));
		if (!r)
			return NULL;
		o->r = r;
		g->r_cap = cap;
	}
	struct lbw_chat_req *r = &o->r[o->n++];
	memset(r, 0, sizeof(*r));
	return r;
}

/* Request r of *cv fits in cfg->max_tokens? If not it goes (its paragraph stays used): a first
 * turn is drawn again (-EAGAIN), a later one ends the conversation, its earlier requests
 * saying so (n_turns). @return 0, -EAGAIN. */
static int turn_fits(struct chat_gen *g, struct conv *cv, struct lbw_chat_req *r)
{
	uint32_t cap = g->cfg->max_tokens;

	if (!cap || lbw_chat_prompt_len(g->out, r->id, NULL) + r->gen <= (int64_t)cap)
		return 0;
	free(r->text);
	free(r->tokens);
	g->out->n--;
	if (cv->next == 0)
		return -EAGAIN;
	cv->turns = cv->next;
	for (uint32_t id = cv->last_req; id != LBW_CHAT_NONE; id = g->out->r[id].depends_on)
		g->out->r[id].n_turns = cv->turns;
	return 0;
}

/* A first turn that does not fit the context is drawn again this many times before the
 * stream is refused (the system prompts leave no room). */
#define FIRST_TURN_TRIES 16

/* The next turn of *cv (step 3 of lbw_chat_make). @return 0 or -errno, err set. */
static int turn_make(struct chat_gen *g, struct conv *cv)
{
	struct lbw_chat_req *r = req_add(g);
	if (!r)
		return lbu_fail(g->err, g->errlen, -ENOMEM, "chat: out of memory");
	*r = (struct lbw_chat_req){ .id = g->out->n - 1, .conv = cv->id, .turn = cv->next,
				    .n_turns = cv->turns, .sys = cv->sys,
				    .depends_on = cv->last_req };
	r->gen = draw_in(g, g->cfg->gen_min, g->cfg->gen_max);
	if (peek_para(g, &r->para))
		return lbu_fail(g->err, g->errlen, -ENOSPC,
				"chat: all %u paragraphs of the corpus used up by request %u "
				"(conversation %u of %u); ask for fewer conversations or turns",
				g->p->n, r->id, cv->id + 1, g->cfg->conversations);
	g->used++;
	r->text = strdup(g->p->p[r->para]);
	int rc = r->text ? encode(g->t, r->text, &r->tokens, &r->n_tokens) : -ENOMEM;
	if (rc)
		return lbu_fail(g->err, g->errlen, rc, "chat: request %u: %s", r->id,
				strerror(-rc));
	if (turn_fits(g, cv, r) < 0)
		return -EAGAIN;
	if (cv->next == cv->turns)
		return 0; /* it did not fit: the conversation ended before it */
	cv->last_req = r->id;
	cv->next++;
	return 0;
}

/* turn_make, a first turn drawn again while it does not fit the context. */
static int turn_make_fitting(struct chat_gen *g, struct conv *cv)
{
	for (int i = 0; i < FIRST_TURN_TRIES; i++) {
		int rc = turn_make(g, cv);
		if (rc != -EAGAIN)
			return rc;
	}
	return lbu_fail(g->err, g->errlen, -ENOSPC, "chat: conversation %u: no first turn fits in "
			"%u tokens after %d paragraphs (system prompt %u tokens); allow more tokens or "
			"shorter system prompts", cv->id, g->cfg->max_tokens, FIRST_TURN_TRIES,
			g->out->sys[cv->sys].n_tokens);
}

/* Steps 2 and 3 of lbw_chat_make. @return 0 or -errno, err set. */
static int convs_run(struct chat_gen *g)
{
	const struct lbw_chat_cfg *c = g->cfg;
	while (g->n_open < c->open && g->out->n_convs < c->conversations)
		conv_open(g, &g->open[g->n_open++]);
	while (g->n_open) {
		uint32_t k = lbw_rng_below(&g->rng, g->n_open);
		struct conv *cv = &g->open[k];
		int rc = turn_make_fitting(g, cv);
		if (rc)
			return rc;
		if (cv->next < cv->turns)
			continue;
		if (g->out->n_convs < c->conversations)
			conv_open(g, cv);
		else
			*cv = g->open[--g->n_open];
	}
	return 0;
}

void lbw_chat_free(struct lbw_chat *c)
{
	if (!c)
		return;
	for (uint32_t i = 0; c->r && i < c->n; i++) {
		free(c->r[i].text);
		free(c->r[i].tokens);
	}
	for (uint32_t i = 0; c->sys && i < c->n_sys; i++) {
		free(c->sys[i].text);
		free(c->sys[i].tokens);
		free(c->sys[i].paras);
	}
	free(c->r);
	free(c->sys);
	memset(c, 0, sizeof(*c));
}

/* The tables of g for cfg; @return 0 or -ENOMEM. */
static int gen_init(struct chat_gen *g)
{
	const struct lbw_chat_cfg *c = g->cfg;
	g->perm = malloc((size_t)g->p->n * sizeof(*g->perm));
	g->cum = malloc((size_t)c->systems * sizeof(*g->cum));
	g->open = malloc((size_t)c->open * sizeof(*g->open));
	g->out->sys = calloc(c->systems, sizeof(*g->out->sys));
	if (!g->perm || !g->cum || !g->open || !g->out->sys)
		return lbu_fail(g->err, g->errlen, -ENOMEM, "chat: out of memory");
	g->out->n_sys = c->systems;
	for (uint32_t i = 0; i < g->p->n; i++)
		g->perm[i] = i;
	for (uint32_t k = 0; k < c->systems; k++) {
		double wk = c->zipf_s == 0 ? 1.0 : pow(k + 1.0, -c->zipf_s);
		g->cum[k] = (k ? g->cum[k - 1] : 0) + wk;
	}
	lbw_rng_seed(&g->rng, c->seed);
	return 0;
}

int lbw_chat_make(const struct lbw_paragraphs *p, const struct lbw_tokenizer *t,
		  const struct lbw_chat_cfg *cfg, struct lbw_chat *out, char *err, size_t errlen)
{
	if (!out || !p || !t || !cfg) {
		if (out)
			memset(out, 0, sizeof(*out));
		return lbu_fail(err, errlen, -EINVAL, "lbw_chat_make: NULL argument");
	}
	memset(out, 0, sizeof(*out));
	if (!p->n || !p->p)
		return lbu_fail(err, errlen, -EINVAL, "chat: the corpus holds no paragraph");
	if (!t->vocab || !t->sorted)
		return lbu_fail(err, errlen, -EINVAL, "chat: the tokenizer is not loaded");
	int rc = check_cfg(cfg, err, errlen);
	if (rc)
		return rc;

	struct chat_gen g = { .p = p, .t = t, .cfg = cfg, .out = out, .err = err,
			      .errlen = errlen };
	rc = gen_init(&g);
	for (uint32_t k = 0; !rc && k < cfg->systems; k++)
		rc = sys_build(&g, k);
	if (!rc)
		rc = convs_run(&g);
	free(g.perm);
	free(g.cum);
	free(g.open);
	if (rc)
		lbw_chat_free(out);
	return rc;
}

/* ---- prompts ---- */

/* ids[0..turn] the requests of id's conversation up to id, in turn order.
 * @return turn + 1; -EINVAL when c's links are broken (c not made by lbw_chat_make). */
static int chain(const struct lbw_chat *c, uint32_t id, uint32_t *ids)
{
	const struct lbw_chat_req *r = &c->r[id];
	uint32_t turn = r->turn, conv = r->conv;
	if (turn >= LBW_CHAT_MAX_TURNS || r->sys >= c->n_sys)
		return -EINVAL;
	for (uint32_t k = turn + 1; k-- > 0;) {
		if (id >= c->n || c->r[id].turn != k || c->r[id].conv != conv)
			return -EINVAL;
		ids[k] = id;
		uint32_t dep = c->r[id].depends_on;
		if (k ? dep >= id : dep != LBW_CHAT_NONE)
			return -EINVAL;
		id = dep;
	}
	return (int)turn + 1;
}

/* The count of lbw_chat_prompt_len over the chain ids[0..k). */
static int64_t chain_len(const struct lbw_chat *c, const uint32_t *ids, int k,
			 const uint32_t *answer_len)
{
	int64_t n = 1 + (int64_t)c->sys[c->r[ids[k - 1]].sys].n_tokens;
	for (int i = 0; i < k; i++) {
		n += c->r[ids[i]].n_tokens;
		if (i < k - 1)
			n += answer_len ? answer_len[i] : c->r[ids[i]].gen;
	}
	return n;
}

int64_t lbw_chat_prompt_len(const struct lbw_chat *c, uint32_t id, const uint32_t *answer_len)
{
	uint32_t ids[LBW_CHAT_MAX_TURNS];
	if (!c || !c->r || id >= c->n)
		return -EINVAL;
	int k = chain(c, id, ids);
	if (k < 0)
		return k;
	return chain_len(c, ids, k, answer_len);
}

/* Append n tokens at *at. */
static void put(int32_t *out, int64_t *at, const int32_t *tok, uint32_t n)
{
	if (n)
		memcpy(out + *at, tok, (size_t)n * sizeof(*tok));
	*at += n;
}

int lbw_chat_prompt(const struct lbw_chat *c, uint32_t id, const int32_t *const *answers,
		    const uint32_t *answer_len, int32_t *out, uint32_t cap)
{
	uint32_t ids[LBW_CHAT_MAX_TURNS];
	if (!c || !c->r || id >= c->n || (cap && !out))
		return -EINVAL;
	int k = chain(c, id, ids);
	if (k < 0)
		return k;
	if (k > 1 && (!answers || !answer_len))
		return -EINVAL;
	for (int i = 0; i < k - 1; i++)
		if (answer_len[i] && !answers[i])
			return -EINVAL;
	int64_t n = chain_len(c, ids, k, answer_len), at = 0;
	if (n > INT32_MAX)
		return -EOVERFLOW;
	if (n > cap)
		return (int)n;
	const struct lbw_chat_sys *s = &c->sys[c->r[id].sys];
	const int32_t bos = LBW_TOK_BOS;
	put(out, &at, &bos, 1);
	put(out, &at, s->tokens, s->n_tokens);
	for (int i = 0; i < k; i++) {
		put(out, &at, c->r[ids[i]].tokens, c->r[ids[i]].n_tokens);
		if (i < k - 1)
			put(out, &at, answers[i], answer_len[i]);
	}
	return (int)n;
}
