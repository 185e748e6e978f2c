/* Generation with exact prefix reuse: lb_prefix_run over the llama state's blocks, then decode
 * steps, then the new blocks inserted. */
#include "gen.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache.h"
#include "layerbank/layerbank.h"
#include "layerbank/ring.h" /* LB_PREFIX_MAX_BLOCKS */
#include "model_llama.h"
#include "scorer.h"
#include "tokenizer.h"

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

/* A prefill in progress: its rows, [n][dim] for positions p.. as lb_prefix_run says. */
struct prefill {
	const struct lbw_llama *m;
	struct lbw_llama_state *s;
	const int32_t *tokens;
	float *x;
};

/* lb_prefix_fn: layer l of positions [p, n); the state's table is kv's (its own array). */
static int prefill_layer(void *ctx, uint32_t l, uint32_t p, uint32_t n,
			 const struct lb_kv_view *kv)
{
	struct prefill *f = ctx;
	(void)kv;
	if (l == 0)
		lbw_llama_embed_seq(f->m, f->tokens + p, (int32_t)(n - p), f->x);
	return lbw_llama_rows(f->m, f->s, (int32_t)l, (int32_t)p, (int32_t)(n - p), f->x);
}

/* The view of the state's K and V that lb_prefix_run fills (the state's table). */
static struct lb_kv_view kv_of(const struct lbw_llama *m, struct lbw_llama_state *s)
{
	return (struct lb_kv_view){ .n_layers = (uint32_t)m->cfg.kv_layers,
				    .kv_dim = (uint32_t)m->cfg.kv_dim,
				    .block_tokens = LBW_LLAMA_BLOCK,
				    .n_blocks = (uint32_t)s->n_blocks, .block = s->table };
}

/* The full blocks [first, n / B) of tokens into the bank, counted in pr; unless the run has
 * lost the cache already. */
static void insert_blocks(struct lbw_cache *wc, const struct lb_prefix_cfg *pc,
			  const int32_t *tokens, int32_t n, const struct lb_kv_view *kv,
			  uint32_t first, struct lb_prefix_result *pr)
{
	if (!wc->c || pr->cache_error)
		return;
	int ins = lb_prefix_insert(wc->c, pc, tokens, (uint32_t)n, kv, first);
	if (ins > 0)
		pr->blocks_inserted += (uint32_t)ins;
	else if (ins < 0)
		pr->cache_error = ins;
}

int32_t lbw_forced_next(void *ctx, const float *logits)
{
	struct lbw_forced *x = ctx;
	int32_t t = x->want[x->fed < x->n ? x->fed : x->n - 1];
	x->agree += lbw_llama_argmax(logits, x->vocab) == t;
	x->nll += lbw_llama_nll(logits, x->vocab, t);
	x->fed++;
	return t;
}

static int32_t greedy(const float *logits, int32_t vocab)
{
	return lbw_llama_argmax(logits, vocab);
}

/* Decode after the prefill: first is the first token sampled, at position n. @return the
 * tokens generated. */
static int32_t decode(struct lbw_scorer *sc, int32_t n, int32_t max_new, int32_t first,
		      lbw_next_fn next, void *ctx, int32_t *out)
{
	const struct lbw_llama *m = sc->llama;
	int32_t got = 0, token = first;

	while (token != LBW_TOK_BOS) {
		out[got++] = token;
		/* out[got - 1] is fed at position n + got - 1, which the context must hold. */
		if (got == max_new || n + got - 1 >= m->cfg.seq_len)
			break;
		const float *lg = lbw_llama_forward(m, sc->state, token, n + got - 1);
		token = next ? next(ctx, lg) : greedy(lg, m->cfg.vocab_size);
	}
	return got;
}

/* Whether the bank holds an exact prefix of at least half of tokens[0..n): one LOOKUP_PREFIX,
 * its lease given back at once (lb_prefix_run looks again). */
static bool exact_half(struct lbw_cache *wc, const struct lb_prefix_cfg *pc,
		       const int32_t *tokens, int32_t n)
{
	uint64_t keys[LB_PREFIX_MAX_BLOCKS][2], lease = 0;
	const void *blocks[LB_PREFIX_MAX_BLOCKS];
	uint32_t nb = lb_block_keys(tokens, (uint32_t)n, pc->block_tokens, keys, LB_PREFIX_MAX_BLOCKS);
	if (nb > LB_PREFIX_MAX_BLOCKS)
		nb = LB_PREFIX_MAX_BLOCKS;
	if (2ull * nb * pc->block_tokens < (uint64_t)n)
		return false;
	int found = lb_lookup_prefix(wc->c, pc->model_id, (const uint64_t(*)[2])keys, nb, blocks,
				     &lease);
	if (found <= 0)
		return false;
	lb_release(wc->c, lease);
	return 2ull * (uint64_t)found * pc->block_tokens >= (uint64_t)n;
}

/*
 * Prefill f's prompt (n tokens): through lb_prefix_run, its exact cached prefix read and the
 * rest computed; or, with --gen-recompute and an exact prefix of under half the prompt, by
 * partial reuse of a near prompt's cached hidden states (lb_lem_run_rows with LB_LEM_CONTINUE:
 * every layer leaves K and V of every position in the state). f->x gets the last layer's rows
 * from position pr->reused_tokens on. @return as lb_prefix_run; *exact: the state is the plain
 * forward's, bit for bit (its blocks may go to the bank).
 */
static int prefill(struct lbw_scorer *sc, struct lbw_cache *wc, const struct lb_prefix_cfg *pc,
		   struct lb_kv_view *kv, struct prefill *f, int32_t n, struct lb_prefix_result *pr,
		   struct lbw_gen_result *res, bool *exact)
{
	*exact = true;
	if (!wc->c || !wc->gen_near || exact_half(wc, pc, f->tokens, n))
		return lb_prefix_run(wc->c, pc, f->tokens, (uint32_t)n, sc->state->kv, kv,
				     prefill_layer, f, pr);
	struct lb_lem_cfg cfg = wc->cfg;
	struct lb_lem_result lr;
	cfg.flags |= LB_LEM_CONTINUE;
	memset(pr, 0, sizeof(*pr));
	lbw_scorer_embed(sc, f->tokens, n, f->x);
	int rc = lb_lem_run_rows(wc->c, &cfg, f->tokens, (uint32_t)n, f->x, lbw_scorer_layer,
				 lbw_scorer_rows, wc->gen_recompute, sc, &lr);
	pr->computed_tokens = (uint32_t)n;
	pr->cache_error = lr.cache_error;
	*exact = lr.hit_layer < 0 || lr.hit_hamming == 0 || lr.rows_computed == (uint32_t)n;
	res->near_reused = lr.reused;
	res->near_aligned = lr.aligned;
	res->near_approx = *exact ? 0 : lr.hit_hamming;
	return rc;
}

int lbw_generate(struct lbw_scorer *sc, struct lbw_cache *wc, const int32_t *prompt, int32_t n,
		 int32_t max_new, lbw_next_fn next, void *ctx, int32_t *out,
		 struct lbw_gen_result *res)
{
	const struct lbw_llama *m = sc->llama;
	double t0 = now_us();

	memset(res, 0, sizeof(*res));
	if (!m || n < 1 || n > m->cfg.seq_len || max_new < 0)
		return -EINVAL;
	for (int32_t i = 0; i < n; i++)
		if (prompt[i] < 0 || prompt[i] >= m->cfg.vocab_size)
			return -EINVAL;
	struct prefill f = { m, sc->state, prompt, malloc((size_t)n * m->cfg.dim * sizeof(float)) };
	if (!f.x)
		return -ENOMEM;
	struct lb_kv_view kv = kv_of(m, sc->state);
	/* The prompt's blocks go to the bank after the first token, not in its time. Every layer
	 * is computed; the blocks hold the storage layers' K and V (kv's n_layers). */
	struct lb_prefix_cfg pc = { wc->cfg.model_id, (uint32_t)m->cfg.n_layers, kv.kv_dim,
				    kv.block_tokens, LB_PREFIX_DEFER_INSERT };
	struct lb_prefix_result pr;
	bool exact;
	int rc = prefill(sc, wc, &pc, &kv, &f, n, &pr, res, &exact);
	int32_t got = 0;
	if (rc == 0 && max_new > 0) {
		size_t last = (size_t)(n - 1 - (int32_t)pr.reused_tokens) * (size_t)m->cfg.dim;
		const float *lg = lbw_llama_head_row(m, sc->state, f.x + last);
		int32_t first = next ? next(ctx, lg) : greedy(lg, m->cfg.vocab_size);
		res->ttft_us = now_us() - t0;
		if (exact)
			insert_blocks(wc, &pc, prompt, n, &kv, pr.blocks_found, &pr);
		got = decode(sc, n, max_new, first, next, ctx, out);
	} else if (rc == 0 && exact) {
		insert_blocks(wc, &pc, prompt, n, &kv, pr.blocks_found, &pr);
	}
	free(f.x);
	/* The full blocks of what has K and V: the prompt and the tokens fed back (all but the
	 * last generated); none after an approximate prefill, since blocks are served as exact. */
	if (rc == 0 && wc->c && exact && got > 1) {
		int32_t fed = n + got - 1, *all = malloc((size_t)fed * sizeof(int32_t));
		if (all) {
			memcpy(all, prompt, (size_t)n * sizeof(int32_t));
			memcpy(all + n, out, (size_t)(got - 1) * sizeof(int32_t));
			insert_blocks(wc, &pc, all, fed, &kv, (uint32_t)n / LBW_LLAMA_BLOCK, &pr);
			free(all);
		}
	}
	lb_prefix_done(wc->c, &pr);
	lbw_llama_state_reset(sc->state);
	if (rc < 0)
		return rc;
	res->prompt_tokens = n;
	res->reused_tokens = (int32_t)pr.reused_tokens;
	res->computed_tokens = (int32_t)pr.computed_tokens;
	res->generated = got;
	res->blocks_inserted = pr.blocks_inserted;
	res->cache_error = pr.cache_error;
	res->us = now_us() - t0;
	return got;
}
