/* One text scored through the layer cache, and the serve loop: requests in, results out, one
 * line each. */
#include "serve.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache.h"
#include "gen.h"
#include "mlm.h"
#include "redis_cache.h"
#include "scorer.h"
#include "tokenizer.h"

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

/* The layer callback, timed: when the first computed layer started and the last one ended. */
struct timed {
	struct lbw_scorer *sc;
	double first_us, last_us;
};

static int timed_layer(void *ctx, uint32_t l, const float *in, float *out)
{
	struct timed *t = ctx;
	double start = now_us();
	int rc = lbw_scorer_layer(t->sc, l, in, out);
	if (!t->first_us)
		t->first_us = start;
	t->last_us = now_us();
	return rc;
}

static int timed_rows(void *ctx, uint32_t l, const float *in, uint32_t n, const uint32_t *rows,
		      uint32_t n_rows, float *out)
{
	struct timed *t = ctx;
	double start = now_us();
	int rc = lbw_scorer_rows(t->sc, l, in, n, rows, n_rows, out);
	if (!t->first_us)
		t->first_us = start;
	t->last_us = now_us();
	return rc;
}

/*
 * The layers of toks (n of them, embedded in h) through wc: a plain Redis peer's value of the
 * deepest layer, exact inputs only, the forward pass skipped on a hit and its result stored
 * after a miss; else lb_lem_run_rows on layerbank's cache (plain without one). @return as
 * lb_lem_run_rows.
 */
static int run_layers(struct lbw_scorer *sc, struct lbw_cache *wc, const int32_t *toks, int32_t n,
		      float *h, struct timed *tl, struct lb_lem_result *res)
{
	int got = wc->redis ? lbw_redis_get(wc->redis, toks, (uint32_t)n, h) : 0;
	if (got == 1) {
		*res = (struct lb_lem_result){ .hit_layer = sc->n_layers - 1, .reused = 1.0f };
		return 0;
	}
	int rc = lb_lem_run_rows(lbw_cache_states(wc), &wc->cfg, toks, (uint32_t)n, h, timed_layer,
				 wc->align ? timed_rows : NULL, wc->recompute, tl, res);
	if (rc == 0 && wc->redis) {
		int put = lbw_redis_put(wc->redis, toks, (uint32_t)n, h);
		res->layers_inserted = put == 0;
		res->cache_error = got < 0 ? got : put;
	}
	return rc;
}

/* --shadow: toks (masked as the run was) computed plainly, compared with the run's last-layer
 * states h and predictions top1 (may be NULL) into r. @return 0, -ENOMEM, a layer's error. */
static int shadow_check(struct lbw_scorer *sc, const int32_t *toks, int32_t n, const float *h,
			const int32_t *pos, const int32_t *labels, int32_t m, const int32_t *top1,
			struct lbw_score *r)
{
	size_t hid = (size_t)sc->hidden;
	float *p = malloc((size_t)n * hid * sizeof(float));
	int32_t *t1 = malloc(((size_t)r->predicted + 1) * sizeof(int32_t));
	int rc = p && t1 ? 0 : -ENOMEM;
	if (rc == 0)
		lbw_scorer_embed(sc, toks, n, p);
	for (int32_t l = 0; rc == 0 && l < sc->n_layers; l++)
		rc = lbw_scorer_layer(sc, (uint32_t)l, p, p);
	if (rc == 0) {
		r->shadow = 1;
		r->shadow_drift = 0;
		for (int32_t i = 0; i < n; i++) {
			double d = lb_drift(h + (size_t)i * hid, p + (size_t)i * hid, hid);
			r->shadow_drift = d > r->shadow_drift ? d : r->shadow_drift;
		}
		if (sc->mlm)
			(void)lbw_scorer_head_masked(sc, p, n, pos, labels, m, t1);
		else
			(void)lbw_scorer_head(sc, toks, n, p, t1);
		r->shadow_changed = 0;
		for (int32_t i = 0; top1 && i < r->predicted; i++)
			r->shadow_changed += t1[i] != top1[i];
	}
	free(p);
	free(t1);
	return rc;
}

int lbw_score_text(struct lbw_scorer *sc, const struct lbw_tokenizer *t, struct lbw_cache *wc,
		   const char *text, int32_t max_tokens, int cut, struct lbw_score *r, int32_t *top1,
		   char *err, size_t errlen)
{
	double start = now_us();
	memset(r, 0, sizeof(*r));
	r->lem.hit_layer = -1;
	if (max_tokens > sc->max_seq)
		max_tokens = sc->max_seq;
	/*
	 * A token spells at most max(max_token_length, 4) bytes, so a longer text cannot fit in
	 * max_tokens: cut it, or refuse it, before the quadratic merge loop of encode runs on it.
	 */
	size_t per = t->max_token_length > 4 ? (size_t)t->max_token_length : 4;
	size_t len = strlen(text), limit = per * (size_t)max_tokens;
	if (len > limit && !cut) {
		snprintf(err, errlen, "longer than the model's %d tokens can hold", (int)max_tokens);
		return -EINVAL;
	}
	char *owned = NULL;
	if (len > limit) {
		owned = strndup(text, limit);
		if (!owned)
			return -ENOMEM;
		text = owned;
		len = limit;
	}
	int32_t *toks = malloc((len + 3) * sizeof(int32_t));
	if (!toks) {
		free(owned);
		return -ENOMEM;
	}
	int n = lbw_tokenizer_encode(t, text, 1, 0, toks);
	free(owned);
	int rc = 0;
	if (n < 0) {
		rc = n;
		snprintf(err, errlen, "cannot encode: %s", strerror(-n));
	} else if (n < 2) {
		rc = -EINVAL;
		snprintf(err, errlen, "no text to score");
	} else if (n > max_tokens && !cut) {
		rc = -EINVAL;
		snprintf(err, errlen, "%d tokens, more than the model's %d", n, (int)max_tokens);
	}
	if (n > max_tokens)
		n = max_tokens;
	for (int32_t i = 0; rc == 0 && i < n; i++)
		if (toks[i] < 0 || toks[i] >= sc->vocab) {
			rc = -EINVAL;
			snprintf(err, errlen, "a token is out of the model's vocabulary");
		}
	float *h = rc ? NULL : malloc((size_t)n * (size_t)sc->hidden * sizeof(float));
	if (rc == 0 && !h)
		rc = -ENOMEM;
	/* pos [n], labels [n]: the masked positions and their tokens (bidirectional encoders) */
	int32_t *pos = rc || !sc->mlm ? NULL : malloc(2 * (size_t)n * sizeof(int32_t));
	int32_t m = 0, *labels = pos ? pos + n : NULL;
	if (rc == 0 && sc->mlm && (!pos || (m = lbw_mlm_select(toks, n, LBW_MLM_SEED, pos)) < 0))
		rc = -ENOMEM;
	for (int32_t i = 0; rc == 0 && i < m; i++) {
		labels[i] = toks[pos[i]];
		toks[pos[i]] = LBW_MLM_MASK_ID;
	}
	if (rc == 0) {
		struct timed tl = { sc, 0, 0 };
		lbw_scorer_embed(sc, toks, n, h);
		rc = run_layers(sc, wc, toks, n, h, &tl, &r->lem);
		r->compute_start_us = tl.first_us;
		r->compute_end_us = tl.last_us;
		if (rc < 0)
			snprintf(err, errlen, "layer computation: %s", strerror(-rc));
	}
	if (rc == 0) {
		r->nll = sc->mlm ? lbw_scorer_head_masked(sc, h, n, pos, labels, m, top1)
				 : lbw_scorer_head(sc, toks, n, h, top1);
		r->tokens = n;
		r->predicted = sc->mlm ? m : n - 1;
		r->us = now_us() - start;
		if (wc->shadow && r->lem.hit_layer >= 0)
			rc = shadow_check(sc, toks, n, h, pos, labels, m, top1, r);
	}
	free(pos);
	free(h);
	free(toks);
	return rc;
}

/* Request ID's text scored: its answer line. */
static void serve_score(struct lbw_scorer *sc, const struct lbw_tokenizer *t, struct lbw_cache *wc,
			int32_t max_tokens, uint64_t id, const char *text, int32_t *top1, FILE *out)
{
	char err[160];
	struct lbw_score r;
	int rc = lbw_score_text(sc, t, wc, text, max_tokens, 1, &r, top1, err, sizeof(err));
	if (rc == -ENOMEM)
		snprintf(err, sizeof(err), "out of memory");
	if (rc < 0) {
		fprintf(out, "%" PRIu64 " err %s\n", id, err);
		return;
	}
	char shadow[64] = "";
	if (r.shadow)
		snprintf(shadow, sizeof(shadow), " shadow_drift=%.6g shadow_changed=%d",
			 r.shadow_drift, (int)r.shadow_changed);
	fprintf(out, "%" PRIu64 " ok tokens=%d nll=%.17g hit=%d hamming=%u computed=%u "
		"inserted=%u us=%.0f sflight=%u waited=%u compute=%.0f-%.0f reused=%.4f%s "
		"predicted=%d top1=", id, (int)r.tokens, r.nll, (int)r.lem.hit_layer,
		r.lem.hit_hamming, r.lem.layers_computed, r.lem.layers_inserted, r.us, r.lem.sflight,
		r.lem.waited_us, r.compute_start_us, r.compute_end_us, (double)r.lem.reused, shadow,
		(int)r.predicted);
	for (int32_t i = 0; i < r.predicted; i++)
		fprintf(out, i ? ",%d" : "%d", (int)top1[i]);
	fputc('\n', out);
}

/* "@a,b,c": token ids into toks (cap of them). @return the count; -EINVAL. */
static int parse_ids(const char *s, int32_t *toks, int32_t cap)
{
	int32_t n = 0;
	const char *p = s + 1;
	for (;;) {
		char *end;
		errno = 0;
		long v = strtol(p, &end, 10);
		if (errno || end == p || v < 0 || v > INT32_MAX || n == cap || (*end && *end != ','))
			return -EINVAL;
		toks[n++] = (int32_t)v;
		if (!*end)
			return n;
		p = end + 1;
	}
}

/* A generation request's prompt: "@ids" as they are, else the text tokenized (BOS first). */
static int gen_prompt(const struct lbw_tokenizer *t, const char *prompt, int32_t *toks,
		      int32_t cap, char *err, size_t errlen)
{
	int n;
	if (prompt[0] == '@') {
		n = parse_ids(prompt, toks, cap);
		if (n < 0)
			snprintf(err, errlen, "bad token ids (want @ID,ID,... within the context)");
		return n;
	}
	size_t per = t->max_token_length > 4 ? (size_t)t->max_token_length : 4;
	if (strlen(prompt) > per * (size_t)cap) {
		snprintf(err, errlen, "prompt longer than the model's %d tokens", (int)cap);
		return -EINVAL;
	}
	n = lbw_tokenizer_encode(t, prompt, 1, 0, toks);
	if (n < 0 || n > cap) {
		snprintf(err, errlen, "prompt of %d tokens, more than the model's %d", n, (int)cap);
		return -EINVAL;
	}
	return n;
}

/* Request ID generates (greedy) up to max_new tokens after its prompt: its answer line. */
static void serve_gen(struct lbw_scorer *sc, const struct lbw_tokenizer *t, struct lbw_cache *wc,
		      uint64_t id, long max_new, const char *prompt, int32_t *buf, FILE *out)
{
	char err[160] = "";
	struct lbw_gen_result r;
	int32_t cap = sc->max_seq, *toks = buf, *gen = buf + cap;
	int n = sc->llama ? gen_prompt(t, prompt, toks, cap, err, sizeof(err)) : -EINVAL;
	if (!sc->llama)
		snprintf(err, sizeof(err), "gen needs a decoder");
	int got = n > 0 ? lbw_generate(sc, wc, toks, n, (int32_t)max_new, NULL, NULL, gen, &r) : n;
	if (got < 0) {
		if (!err[0])
			snprintf(err, sizeof(err), "%s", got == -ENOMEM ? "out of memory"
				 : "a prompt token is out of the model's vocabulary");
		fprintf(out, "%" PRIu64 " err %s\n", id, err);
		return;
	}
	const char *cache = !wc->c ? "none" : !r.cache_error ? "ok" : strerrorname_np(-r.cache_error);
	fprintf(out, "%" PRIu64 " ok gen prompt=%d reused=%d computed=%d inserted=%u ttft_us=%.0f "
		"us=%.0f cache=%s near=%.4f approx=%u out=", id, (int)r.prompt_tokens,
		(int)r.reused_tokens, (int)r.computed_tokens, r.blocks_inserted, r.ttft_us, r.us,
		cache ? cache : "error", (double)r.near_reused, r.near_approx);
	for (int32_t i = 0; i < got; i++)
		fprintf(out, i ? ",%d" : "%d", (int)gen[i]);
	fputc('\n', out);
}

/* One request line: "ID<TAB>TEXT" scores, "ID<TAB>gen:N<TAB>PROMPT" generates. */
static int serve_line(struct lbw_scorer *sc, const struct lbw_tokenizer *t, struct lbw_cache *wc,
		      int32_t max_tokens, char *line, int32_t *buf, FILE *out)
{
	char *tab = strchr(line, '\t'), *end;
	errno = 0;
	uint64_t id = tab ? strtoull(line, &end, 10) : 0;
	if (!tab || errno || end != tab || end == line || line[0] == '-' || line[0] == '+') {
		fprintf(out, "- err malformed request (want ID<TAB>TEXT or ID<TAB>gen:N<TAB>PROMPT, "
			     "ID a decimal integer)\n");
	} else if (!strncmp(tab + 1, "gen:", 4)) {
		char *tab2 = strchr(tab + 1, '\t');
		errno = 0;
		long n = strtol(tab + 5, &end, 10);
		if (!tab2 || errno || end != tab2 || end == tab + 5 || n < 1 || n > sc->max_seq)
			fprintf(out, "%" PRIu64 " err malformed gen (want gen:N<TAB>PROMPT, N 1..%d)\n",
				id, (int)sc->max_seq);
		else
			serve_gen(sc, t, wc, id, n, tab2 + 1, buf, out);
	} else {
		serve_score(sc, t, wc, max_tokens, id, tab + 1, buf, out);
	}
	return fflush(out) == 0 && !ferror(out) ? 0 : -EIO;
}

int lbw_serve(struct lbw_scorer *sc, const struct lbw_tokenizer *t, struct lbw_cache *wc,
	      int32_t max_tokens, const char *mode, FILE *in, FILE *out)
{
	if (max_tokens > sc->max_seq)
		max_tokens = sc->max_seq;
	/* top1 of a scored text, or a generation's prompt and tokens */
	int32_t *top1 = malloc(2 * (size_t)sc->max_seq * sizeof(int32_t));
	char *line = malloc(LBW_SERVE_MAX_LINE + 2);
	if (!top1 || !line) {
		free(top1);
		free(line);
		return -ENOMEM;
	}
	fprintf(out, "ready model=%s layers=%d hidden=%d cache=%s max_tokens=%d\n", sc->name,
		(int)sc->n_layers, (int)sc->hidden, mode, (int)max_tokens);
	int rc = fflush(out) == 0 ? 0 : -EIO;
	while (rc == 0 && fgets(line, LBW_SERVE_MAX_LINE + 2, in)) {
		size_t len = strlen(line);
		if (len && line[len - 1] == '\n') {
			line[--len] = '\0';
			if (len && line[len - 1] == '\r')
				line[--len] = '\0';
		} else if (!feof(in)) {
			/* Longer than a request may be: skip the rest of it. */
			int ch;
			while ((ch = fgetc(in)) != EOF && ch != '\n')
				;
			fprintf(out, "- err request longer than %u bytes\n", LBW_SERVE_MAX_LINE);
			rc = fflush(out) == 0 ? 0 : -EIO;
			continue;
		}
		if (len == 0)
			continue;
		rc = serve_line(sc, t, wc, max_tokens, line, top1, out);
	}
	free(top1);
	free(line);
	return rc;
}
