/* layerbankd model registry: lookup by name, first-mismatch reporting, provisional models
 * from a snapshot. */
#include "models.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* The slot registered under d's name, or -1. Retired slots have an empty name: never found. */
static int find(const struct lbd_models *m, const char *name)
{
	for (uint32_t i = 0; i < m->count; i++)
		if (m->desc[i].name[0] && strcmp(m->desc[i].name, name) == 0)
			return (int)i;
	return -1;
}

/* The first field in which d differs from the registered e, named as on the wire, with both
 * values in why ("model 'NAME' <how> FIELD <e's>, not <d's>"). @return 1 when they differ,
 * 0 when equal. */
static int differs(const struct lbp_register_model *e, const struct lbp_register_model *d,
		   const char *how, const char **field, char *why, size_t whylen)
{
	const struct {
		const char *name;
		uint64_t have, want;
		int hex;
	} f[] = {
		{ "weights_hash", e->weights_hash, d->weights_hash, 1 },
		{ "n_layers", e->n_layers, d->n_layers, 0 },
		{ "hidden", e->hidden, d->hidden, 0 },
		{ "dtype", e->dtype, d->dtype, 0 },
		{ "max_seq", e->max_seq, d->max_seq, 0 },
		{ "fp.chunks", e->fp.chunks, d->fp.chunks, 0 },
		{ "fp.bits", e->fp.bits, d->fp.bits, 0 },
		{ "fp.seed", e->fp.seed, d->fp.seed, 1 },
		{ "kv.dim", e->kv.dim, d->kv.dim, 0 },
		{ "kv.block_tokens", e->kv.block_tokens, d->kv.block_tokens, 0 },
		{ "kv.layers", e->kv.layers, d->kv.layers, 0 },
	};
	for (size_t k = 0; k < sizeof(f) / sizeof(f[0]); k++) {
		if (f[k].have == f[k].want)
			continue;
		*field = f[k].name;
		snprintf(why, whylen,
			 f[k].hex ? "model '%s' %s %s 0x%" PRIx64 ", not 0x%" PRIx64
				  : "model '%s' %s %s %" PRIu64 ", not %" PRIu64,
			 d->name, how, f[k].name, f[k].have, f[k].want);
		return 1;
	}
	return 0;
}

int lbd_models_valid(const struct lbp_register_model *d, const char **field, char *why,
		     size_t whylen)
{
	bool blocks = d->kv.dim != 0;
	if ((d->kv.block_tokens != 0) != blocks) {
		*field = "kv.block_tokens";
		snprintf(why, whylen, "model '%s': kv.block_tokens %u with kv.dim %u (both 0: no "
			 "prefix blocks; else both at least 1)", d->name, d->kv.block_tokens, d->kv.dim);
		return -EINVAL;
	}
	if (blocks ? d->kv.layers < 1 || d->kv.layers > d->n_layers : d->kv.layers != 0) {
		*field = "kv.layers";
		snprintf(why, whylen, "model '%s': kv.layers %u with kv.dim %u and n_layers %u (0 "
			 "without prefix blocks; else 1..n_layers)", d->name, d->kv.layers, d->kv.dim,
			 d->n_layers);
		return -EINVAL;
	}
	return 0;
}

static int add(struct lbd_models *m, const struct lbp_register_model *d, uint8_t provisional,
	       uint32_t *id, const char **field, char *why, size_t whylen)
{
	int i = find(m, d->name);

	if (i >= 0) {
		if (differs(&m->desc[i], d, "is registered with", field, why, whylen))
			return -EEXIST;
		*id = (uint32_t)i + 1;
		return 0;
	}
	if (m->count == LBD_MAX_MODELS) {
		*field = "name";
		snprintf(why, whylen, "model table full (%u models)", LBD_MAX_MODELS);
		return -ENOSPC;
	}
	m->desc[m->count] = *d;
	m->provisional[m->count] = provisional;
	*id = ++m->count;
	return 1;
}

int lbd_models_register(struct lbd_models *m, const struct lbp_register_model *d, uint32_t *id,
			const char **field, char *why, size_t whylen)
{
	return add(m, d, 0, id, field, why, whylen);
}

int lbd_models_restore(struct lbd_models *m, const struct lbp_register_model *d, uint32_t *id,
		       const char **field, char *why, size_t whylen)
{
	return add(m, d, 1, id, field, why, whylen);
}

uint32_t lbd_models_settle(struct lbd_models *m, const struct lbp_register_model *d, char *why,
			   size_t whylen)
{
	const char *field;
	int i = find(m, d->name);

	if (i < 0 || !m->provisional[i])
		return 0;
	m->provisional[i] = 0;
	if (!differs(&m->desc[i], d, "was restored from the snapshot with", &field, why, whylen))
		return 0;
	m->desc[i].name[0] = '\0';
	return (uint32_t)i + 1;
}
