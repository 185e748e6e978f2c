/* layerbankd run-time settings (CONFIG_GET, CONFIG_SET): the settings that may change while
 * the daemon runs, read and written by name as text. Values go through the config file's
 * checkers (config.c), one rule per key; the store and the service threads own the values. */
#ifndef LAYERBANK_DAEMON_RUNTIME_H
#define LAYERBANK_DAEMON_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#include "lbp.h"
#include "models.h"
#include "service.h"
#include "store.h"

/* What the settings live in. Used by the daemon's loop thread only. */
struct lbd_runtime {
	struct lbd_store *store;
	struct lbd_service *service;
	const struct lbd_models *models;
};

/*
 * The settings key names, items first.. of them into out (at most LBP_MAX_CONFIG_ITEMS):
 * key "" every setting (the global ones, then every layer with a threshold of its own),
 * "tau.MODEL" the threshold of every layer of that model, else the one setting. Global names
 * are the config file's keys; '_' may stand for '-' ("spin_us").
 * @return 0; -ENOENT (no such setting; err names the settings there are).
 */
int lbd_runtime_get(const struct lbd_runtime *rt, const char *key, uint32_t first,
		    struct lbp_config_reply *out, char *err, size_t errlen);

/*
 * Set key to value (text, as in the config file; "default" for a layer's threshold removes
 * it) and put the setting as now in effect into *now. *evicted: entries a lower budget evicted.
 * @return 0; -ENOENT (no such setting: err says so); -EINVAL (value refused: err has the config
 *         file's message).
 */
int lbd_runtime_set(const struct lbd_runtime *rt, const char *key, const char *value,
		    struct lbp_config_item *now, uint64_t *evicted, char *err, size_t errlen);

#endif
