/* layerbankd model registry: one entry per model name, refused when a second registration of a
 * name disagrees on weights or shape, so activations of different weights never mix. */
#ifndef LAYERBANK_DAEMON_MODELS_H
#define LAYERBANK_DAEMON_MODELS_H

#include <stddef.h>
#include <stdint.h>

#include "lbp.h"

#define LBD_MAX_MODELS 256u

/* Owned by the daemon's loop thread. Model ids are index + 1 and never reused. A retired
 * model (lbd_models_settle) keeps its id with an empty name, which no registration matches. */
struct lbd_models {
	struct lbp_register_model desc[LBD_MAX_MODELS];
	uint8_t provisional[LBD_MAX_MODELS]; /* 1: restored from a snapshot, no client vouched yet */
	uint32_t count;
};

/* What the codec's ranges cannot say: kv.dim, kv.block_tokens and kv.layers all 0 (no prefix
 * blocks), or all at least 1 and kv.layers at most n_layers. @return 0; -EINVAL with *field and
 * why set. */
int lbd_models_valid(const struct lbp_register_model *d, const char **field, char *why,
		     size_t whylen);

/*
 * Register d or find its twin. @return 1 (created) or 0 (existing, equal) with *id set;
 * -EEXIST when the name is taken by another description, with *field naming the first field
 * that differs and why (whylen bytes) saying both values; -ENOSPC when the table is full.
 */
int lbd_models_register(struct lbd_models *m, const struct lbp_register_model *d, uint32_t *id,
			const char **field, char *why, size_t whylen);

/* A model read from a snapshot: registered as lbd_models_register does (same returns), but
 * provisionally, until a client registers it (lbd_models_settle). */
int lbd_models_restore(struct lbd_models *m, const struct lbp_register_model *d, uint32_t *id,
		       const char **field, char *why, size_t whylen);

/*
 * Call before lbd_models_register(d) for a client: settle a provisional model of d's name.
 * The same description confirms it (it becomes an ordinary registration). Another one retires
 * it, because the clients running now know better than a snapshot what the model is (new
 * weights, say): its name is freed so that d registers under a new id, and why (whylen bytes)
 * says what differed.
 * @return the retired model's id, whose entries the caller drops; 0 when none was retired.
 */
uint32_t lbd_models_settle(struct lbd_models *m, const struct lbp_register_model *d, char *why,
			   size_t whylen);

#endif
