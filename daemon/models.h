/* layerbankd model registry: one entry per model name, refused when a second registration of a
 * name disagrees on weights or shape, so activations of different weights never mix. */
#ifndef LAYERBANK_DAEMON_MODELS_H
#define LAYERBANK_DAEMON_MODELS_H

#include <stddef.h>
#include <stdint.h>

#include "lbp.h"

#define LBD_MAX_MODELS 256u

/* Owned by the daemon's loop thread. Model ids are index + 1 and never reused. */
struct lbd_models {
	struct lbp_register_model desc[LBD_MAX_MODELS];
	uint32_t count;
};

/*
 * Register d or find its twin. @return 1 (created) or 0 (existing, equal) with *id set;
 * -EEXIST when the name is taken by another description, with *field naming the first field
 * that differs and why (whylen bytes) saying both values; -ENOSPC when the table is full.
 */
int lbd_models_register(struct lbd_models *m, const struct lbp_register_model *d, uint32_t *id,
			const char **field, char *why, size_t whylen);

#endif
