/* liblayerbank prefix reuse: the chained keys of token blocks, and the helper that prefills a
 * sequence from its longest cached prefix and inserts the blocks it computed. Built on the
 * public calls only (lb_lookup_prefix, lb_insert_reserve, lb_insert_block, lb_release). */
#include <errno.h>
#include <string.h>
#include <xxhash.h>

#include "client_internal.h"

/* The seed of every block key (PROTOCOL.md, Ring protocol 14): the bytes "lbblock1". */
#define BLOCK_SEED 0x316b636f6c62626cull

/* Block key after prev (NULL for block 0) over block_tokens (<= LBP_MAX_BLOCK_TOKENS) tokens:
 * XXH3-128 of prev's two words (little-endian, as every machine layerbank runs on stores them)
 * and the tokens' int32 ids, seeded. */
static void block_key(const uint64_t prev[2], const int32_t *tokens, uint32_t block_tokens,
		      uint64_t out[2])
{
	uint8_t buf[2 * sizeof(uint64_t) + LBP_MAX_BLOCK_TOKENS * sizeof(int32_t)];
	size_t n = 0;

	if (prev) {
		memcpy(buf, prev, 2 * sizeof(uint64_t));
		n = 2 * sizeof(uint64_t);
	}
	memcpy(buf + n, tokens, (size_t)block_tokens * sizeof(*tokens));
	n += (size_t)block_tokens * sizeof(*tokens);
	XXH128_hash_t h = XXH3_128bits_withSeed(buf, n, BLOCK_SEED);
	out[0] = h.low64;
	out[1] = h.high64;
}

LB_EXPORT uint32_t lb_block_keys(const int32_t *tokens, uint32_t n_tokens, uint32_t block_tokens,
				 uint64_t (*keys)[2], uint32_t max)
{
	uint32_t full = block_tokens && block_tokens <= LBP_MAX_BLOCK_TOKENS ? n_tokens / block_tokens : 0;

	for (uint32_t i = 0; tokens && keys && i < full && i < max; i++)
		block_key(i ? keys[i - 1] : NULL, tokens + (size_t)i * block_tokens, block_tokens,
			  keys[i]);
	return full;
}

/* The geometry cfg and kv agree on, with the default block size filled in: the blocks hold
 * kv->n_layers of the cfg->n_layers layers computed. @return 0, -EINVAL. */
static int prefix_geometry(const struct lb_prefix_cfg *cfg, const struct lb_kv_view *kv,
			   uint32_t *block_tokens)
{
	*block_tokens = cfg->block_tokens ? cfg->block_tokens : LB_BLOCK_TOKENS_DEFAULT;
	if (!kv->block || !cfg->n_layers || !cfg->kv_dim || (cfg->flags & ~LB_PREFIX_DEFER_INSERT) ||
	    !kv->n_layers || kv->n_layers > cfg->n_layers ||
	    kv->kv_dim != cfg->kv_dim || kv->block_tokens != *block_tokens)
		return -EINVAL;
	return 0;
}

static uint64_t block_floats(const struct lb_kv_view *kv)
{
	return (uint64_t)kv->n_layers * 2 * kv->block_tokens * kv->kv_dim;
}

LB_EXPORT int lb_prefix_insert(struct lb_client *c, const struct lb_prefix_cfg *cfg,
			       const int32_t *tokens, uint32_t n, const struct lb_kv_view *kv,
			       uint32_t first)
{
	uint64_t key[2], prev[2] = { 0, 0 }, bytes;
	uint32_t B, inserted = 0;

	if (!c || !cfg || !tokens || !kv || prefix_geometry(cfg, kv, &B) < 0)
		return -EINVAL;
	bytes = block_floats(kv) * sizeof(float);
	/* Past LB_PREFIX_MAX_BLOCKS no lookup would find a block: the daemon refuses them. */
	uint32_t end = n / B < kv->n_blocks ? n / B : kv->n_blocks;
	end = end < LB_PREFIX_MAX_BLOCKS ? end : LB_PREFIX_MAX_BLOCKS;
	for (uint32_t i = 0; i < end; i++, memcpy(prev, key, sizeof(key))) {
		block_key(i ? prev : NULL, tokens + (size_t)i * B, B, key);
		if (i < first)
			continue;
		float *buf = lb_insert_reserve(c, bytes);
		if (!buf)
			return -errno;
		memcpy(buf, kv->block[i], bytes);
		int rc = lb_insert_block(c, cfg->model_id, key, prev, i);
		if (rc == 0)
			inserted++;
		else if (rc == -ENOSPC || rc == -EDQUOT || rc == -ENOENT)
			break; /* the blocks after it would have no parent */
		else if (rc != -EEXIST)
			return rc;
	}
	return (int)inserted;
}

LB_EXPORT void lb_prefix_done(struct lb_client *c, struct lb_prefix_result *res)
{
	if (c && res && res->lease)
		lb_release(c, res->lease);
	if (res)
		res->lease = 0;
}

/* What computing one block takes, for the least wait of a prefix call (lbi_prefix_wait_ns): a
 * moving average of 4 runs, at most LBI_PREFIX_WAIT_MAX_NS. */
static void learn_block_wait(struct lb_client *c, uint64_t ns)
{
	if (ns > LBI_PREFIX_WAIT_MAX_NS)
		ns = LBI_PREFIX_WAIT_MAX_NS;
	c->block_ns = c->block_ns ? (3 * c->block_ns + ns) / 4 : ns;
}

/* The longest cached prefix of tokens into kv (blocks [0, found) point into the arena): found,
 * or 0 with res->cache_error set for anything but a miss. */
static uint32_t prefix_lookup(struct lb_client *c, const struct lb_prefix_cfg *cfg,
			      const int32_t *tokens, uint32_t n, struct lb_kv_view *kv,
			      struct lb_prefix_result *res)
{
	uint64_t keys[LB_PREFIX_MAX_BLOCKS][2];
	const void *blocks[LB_PREFIX_MAX_BLOCKS];
	uint32_t full = lb_block_keys(tokens, n, kv->block_tokens, keys, LB_PREFIX_MAX_BLOCKS);

	if (full > LB_PREFIX_MAX_BLOCKS)
		full = LB_PREFIX_MAX_BLOCKS;
	if (!full)
		return 0;
	int got = lb_lookup_prefix(c, cfg->model_id, (const uint64_t(*)[2])keys, full, blocks,
				   &res->lease);
	if (got < 0) {
		res->cache_error = got == -ENOENT ? 0 : got;
		res->lease = 0;
		return 0;
	}
	for (int i = 0; i < got; i++)
		kv->block[i] = blocks[i];
	res->blocks_found = (uint32_t)got;
	return (uint32_t)got;
}

LB_EXPORT int lb_prefix_run(struct lb_client *c, const struct lb_prefix_cfg *cfg,
			    const int32_t *tokens, uint32_t n, float *own, struct lb_kv_view *kv,
			    lb_prefix_fn compute, void *ctx, struct lb_prefix_result *res)
{
	struct lb_prefix_result dummy;
	uint32_t B, found = 0, p;

	if (!res)
		res = &dummy;
	memset(res, 0, sizeof(*res));
	if (!cfg || !tokens || !own || !kv || !compute || !n || prefix_geometry(cfg, kv, &B) < 0 ||
	    n > (uint64_t)kv->n_blocks * B)
		return -EINVAL;
	for (uint32_t i = 0; i < kv->n_blocks; i++)
		kv->block[i] = own + i * block_floats(kv);
	if (c)
		found = prefix_lookup(c, cfg, tokens, n, kv, res);
	if (res->cache_error)
		c = NULL;
	p = found * B;
	if (p == n) {
		/* The last position is computed whatever is cached (its output is what the caller
		 * wants); it writes its K and V, so its block becomes the caller's own copy. */
		memcpy(own + (found - 1) * block_floats(kv), kv->block[found - 1],
		       block_floats(kv) * sizeof(float));
		kv->block[found - 1] = own + (found - 1) * block_floats(kv);
		p = n - 1;
	}
	res->reused_tokens = p;
	res->computed_tokens = n - p;
	uint64_t t0 = lb_now_ns();
	for (uint32_t l = 0; l < cfg->n_layers; l++) {
		int rc = compute(ctx, l, p, n, kv);
		if (rc < 0) {
			lb_prefix_done(c, res);
			return rc;
		}
	}
	if (c)
		learn_block_wait(c, (lb_now_ns() - t0) * B / (n - p));
	if (c && !(cfg->flags & LB_PREFIX_DEFER_INSERT)) {
		int ins = lb_prefix_insert(c, cfg, tokens, n, kv, found);
		if (ins >= 0)
			res->blocks_inserted = (uint32_t)ins;
		else
			res->cache_error = ins;
	}
	return 0;
}
