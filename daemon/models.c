/* layerbankd model registry: lookup by name, first-mismatch reporting. */
#include "models.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

int lbd_models_register(struct lbd_models *m, const struct lbp_register_model *d, uint32_t *id,
			const char **field, char *why, size_t whylen)
{
	for (uint32_t i = 0; i < m->count; i++) {
		const struct lbp_register_model *e = &m->desc[i];
		if (strcmp(e->name, d->name) != 0)
			continue;
		/* The first differing field, named as on the wire, with both values. */
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
		};
		for (size_t k = 0; k < sizeof(f) / sizeof(f[0]); k++) {
			if (f[k].have == f[k].want)
				continue;
			*field = f[k].name;
			snprintf(why, whylen,
				 f[k].hex ? "model '%s' is registered with %s 0x%" PRIx64 ", not 0x%" PRIx64
					  : "model '%s' is registered with %s %" PRIu64 ", not %" PRIu64,
				 d->name, f[k].name, f[k].have, f[k].want);
			return -EEXIST;
		}
		*id = i + 1;
		return 0;
	}
	if (m->count == LBD_MAX_MODELS) {
		*field = "name";
		snprintf(why, whylen, "model table full (%u models)", LBD_MAX_MODELS);
		return -ENOSPC;
	}
	m->desc[m->count] = *d;
	*id = ++m->count;
	return 1;
}
