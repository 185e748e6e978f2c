/* layerbankd run-time settings: names to values and back. A setting is read from its owner
 * (store or service), put into a struct lbd_config, changed there by the config file's own
 * checker, and handed back; nothing here parses a value itself. */
#include "runtime.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "errf.h"
#include "size.h"

#define NS_PER_S 1000000000ull
#define TAU_PREFIX "tau."
#define TAU_DEFAULT "default" /* the value that gives a layer back to the global tau */

/* The global settings, by their config-file key, in the order CONFIG_GET "" lists them. */
enum gkey {
	G_TAU, G_BUDGET, G_POLICY, G_SPIN_US, G_TTL, G_HALF_LIFE, G_DRIFT_MAX, G_DRIFT_TARGET,
	N_GKEYS
};
static const char *const gnames[N_GKEYS] = { "tau", "budget", "policy", "spin-us", "ttl",
					     "half-life", "drift-max", "drift-target" };

/* The global key named by key ('_' for '-' accepted), or -1. */
static int gkey_find(const char *key)
{
	for (int g = 0; g < N_GKEYS; g++) {
		size_t i = 0;
		for (; key[i] && gnames[g][i]; i++)
			if (key[i] != gnames[g][i] && !(key[i] == '_' && gnames[g][i] == '-'))
				break;
		if (!key[i] && !gnames[g][i])
			return g;
	}
	return -1;
}

/* The shortest decimal that reads back as exactly d. */
static void fmt_real(char *buf, size_t n, double d)
{
	for (int prec = 1; prec <= 17; prec++) {
		snprintf(buf, n, "%.*g", prec, d);
		if (strtod(buf, NULL) == d)
			return;
	}
}

/* The current values in a struct lbd_config, where the config checkers can change them. */
static void current(const struct lbd_runtime *rt, struct lbd_config *c, struct lbd_store_cfg *sc)
{
	lbd_store_get_cfg(rt->store, sc);
	lbd_config_defaults(c);
	c->tau = sc->tau;
	c->budget = sc->budget;
	c->policy = sc->policy;
	c->spin_us = (unsigned)(lbd_service_spin(rt->service) / 1000);
	c->ttl_s = (unsigned)(sc->ttl_ns / NS_PER_S);
	c->half_life_s = (unsigned)(sc->half_life_ns / NS_PER_S);
	c->drift_max = sc->drift_max;
	c->drift_target = sc->drift_target;
}

static void gvalue(const struct lbd_runtime *rt, int g, char *buf, size_t n)
{
	struct lbd_store_cfg sc;
	struct lbd_config c;
	struct lbp_stats_reply st;

	current(rt, &c, &sc);
	switch ((enum gkey)g) {
	case G_TAU:
		fmt_real(buf, n, c.tau);
		return;
	case G_BUDGET:
		/* The budget in effect: 0 and sizes above the arenas' data areas read back as those. */
		memset(&st, 0, sizeof(st));
		lbd_store_stats(rt->store, &st);
		lbu_format_size(buf, n, st.bytes_budget);
		return;
	case G_POLICY:
		snprintf(buf, n, "%s", lbd_policy_name(c.policy));
		return;
	case G_SPIN_US:
		snprintf(buf, n, "%u", c.spin_us);
		return;
	case G_TTL:
		snprintf(buf, n, "%u", c.ttl_s);
		return;
	case G_HALF_LIFE:
		snprintf(buf, n, "%u", c.half_life_s);
		return;
	case G_DRIFT_MAX:
		fmt_real(buf, n, c.drift_max);
		return;
	case G_DRIFT_TARGET:
		fmt_real(buf, n, c.drift_target);
		return;
	case N_GKEYS:
		break;
	}
	snprintf(buf, n, "?");
}

/* ---- per-layer thresholds: tau.MODEL.LAYER ---- */

/* The id of the model named name (len bytes), or 0. */
static uint32_t model_by_name(const struct lbd_models *m, const char *name, size_t len)
{
	for (uint32_t i = 0; i < m->count; i++)
		if (strlen(m->desc[i].name) == len && memcmp(m->desc[i].name, name, len) == 0)
			return i + 1;
	return 0;
}

/* Split "tau.MODEL.LAYER" (MODEL may hold dots: the layer follows the last one). @return 0 with
 * *model_id and *layer set; -ENOENT with err set when it names no layer of a model. */
static int parse_layer_key(const struct lbd_runtime *rt, const char *key, uint32_t *model_id,
			   uint32_t *layer, char *err, size_t errlen)
{
	const char *name = key + strlen(TAU_PREFIX), *dot = strrchr(name, '.');
	uint32_t l = 0;

	if (!dot || dot == name || !dot[1])
		return lbu_fail(err, errlen, -ENOENT, "'%s' is not tau.MODEL.LAYER", key);
	for (const char *p = dot + 1; *p; p++) {
		if (*p < '0' || *p > '9' || l >= LBP_MAX_LAYERS)
			return lbu_fail(err, errlen, -ENOENT, "'%s': '%s' is not a layer number", key,
					dot + 1);
		l = l * 10 + (uint32_t)(*p - '0');
	}
	*model_id = model_by_name(rt->models, name, (size_t)(dot - name));
	if (!*model_id)
		return lbu_fail(err, errlen, -ENOENT, "'%s': no model named '%.*s'", key,
				(int)(dot - name), name);
	int n = lbd_store_layer_taus(rt->store, *model_id, NULL, NULL, NULL, 0);
	if (n < 0)
		return lbu_fail(err, errlen, -ENOENT, "'%s': model '%.*s' has no bank", key,
				(int)(dot - name), name);
	if (l >= (uint32_t)n)
		return lbu_fail(err, errlen, -ENOENT, "'%s': model '%.*s' has layers 0..%d", key,
				(int)(dot - name), name, n - 1);
	*layer = l;
	return 0;
}

/* ---- listing, a page at a time ---- */

struct lister {
	struct lbp_config_reply *out;
	uint32_t first;
};

static void emit(struct lister *ls, const char *key, const char *value)
{
	struct lbp_config_reply *r = ls->out;

	if (r->total >= ls->first && r->n < LBP_MAX_CONFIG_ITEMS) {
		snprintf(r->items[r->n].key, sizeof(r->items[r->n].key), "%s", key);
		snprintf(r->items[r->n].value, sizeof(r->items[r->n].value), "%s", value);
		r->n++;
	}
	r->total++;
}

/* The layers of one model: all of them (own_only false, their thresholds in effect), or only
 * those with a threshold of their own. */
static void emit_layers(const struct lbd_runtime *rt, struct lister *ls, uint32_t model_id,
			bool own_only)
{
	/* the loop thread's only: 16 KiB off the stack */
	static double own[LBP_MAX_LAYERS], in_force[LBP_MAX_LAYERS];
	const char *name = rt->models->desc[model_id - 1].name;
	char key[LBP_MAX_CONFIG_KEY + 1], value[32];
	int n = lbd_store_layer_taus(rt->store, model_id, own, in_force, NULL, LBP_MAX_LAYERS);

	for (int l = 0; l < n; l++) {
		if (own_only && isnan(own[l]))
			continue;
		snprintf(key, sizeof(key), TAU_PREFIX "%s.%d", name, l);
		fmt_real(value, sizeof(value), in_force[l]);
		emit(ls, key, value);
	}
}

static int unknown(const char *key, char *err, size_t errlen)
{
	return lbu_fail(err, errlen, -ENOENT,
			"unknown setting '%s' (settings: tau, tau.MODEL.LAYER, budget, policy, "
			"spin-us, ttl, half-life, drift-max, drift-target)", key);
}

int lbd_runtime_get(const struct lbd_runtime *rt, const char *key, uint32_t first,
		    struct lbp_config_reply *out, char *err, size_t errlen)
{
	struct lister ls = { out, first };
	char value[LBP_MAX_CONFIG_VALUE + 1];
	int g = gkey_find(key);

	memset(out, 0, sizeof(*out));
	out->first = first;
	if (*key == '\0') {
		for (int i = 0; i < N_GKEYS; i++) {
			gvalue(rt, i, value, sizeof(value));
			emit(&ls, gnames[i], value);
		}
		for (uint32_t id = 1; id <= rt->models->count; id++)
			emit_layers(rt, &ls, id, true);
		return 0;
	}
	if (g >= 0) {
		gvalue(rt, g, value, sizeof(value));
		emit(&ls, gnames[g], value);
		return 0;
	}
	if (strncmp(key, TAU_PREFIX, strlen(TAU_PREFIX)) != 0)
		return unknown(key, err, errlen);
	/* A whole model's name first: "tau.bert.3" lists model "bert.3" if there is one. */
	const char *name = key + strlen(TAU_PREFIX);
	uint32_t id = model_by_name(rt->models, name, strlen(name)), layer;
	if (id && lbd_store_layer_taus(rt->store, id, NULL, NULL, NULL, 0) >= 0) {
		emit_layers(rt, &ls, id, false);
		return 0;
	}
	int ret = parse_layer_key(rt, key, &id, &layer, err, errlen);
	if (ret < 0)
		return ret;
	static double in_force[LBP_MAX_LAYERS];
	lbd_store_layer_taus(rt->store, id, NULL, in_force, NULL, LBP_MAX_LAYERS);
	fmt_real(value, sizeof(value), in_force[layer]);
	emit(&ls, key, value);
	return 0;
}

int lbd_runtime_set(const struct lbd_runtime *rt, const char *key, const char *value,
		    struct lbp_config_item *now, uint64_t *evicted, char *err, size_t errlen)
{
	struct lbp_config_reply one;
	struct lbd_store_cfg sc;
	struct lbd_config c;
	int g = gkey_find(key), ret;

	*evicted = 0;
	if (g < 0) {
		uint32_t id, layer;
		if (strncmp(key, TAU_PREFIX, strlen(TAU_PREFIX)) != 0)
			return unknown(key, err, errlen);
		ret = parse_layer_key(rt, key, &id, &layer, err, errlen);
		if (ret < 0)
			return ret;
		double tau = NAN;
		if (strcmp(value, TAU_DEFAULT) != 0) {
			current(rt, &c, &sc);
			/* tau's own rule, with the layer's key in its message */
			ret = lbd_config_set(&c, "tau", value, key, err, errlen);
			if (ret < 0)
				return ret;
			tau = c.tau;
		}
		ret = lbd_store_set_layer_tau(rt->store, id, layer, tau);
		if (ret < 0)
			return lbu_fail(err, errlen, -ENOENT, "'%s': no such layer", key);
	} else {
		current(rt, &c, &sc);
		ret = lbd_config_set(&c, gnames[g], value, NULL, err, errlen);
		if (ret < 0)
			return ret;
		if (g == G_SPIN_US) {
			lbd_service_set_spin(rt->service, (uint64_t)c.spin_us * 1000);
		} else {
			lbd_config_store_cfg(&c, &sc);
			*evicted = lbd_store_configure(rt->store, &sc);
		}
		key = gnames[g];
	}
	ret = lbd_runtime_get(rt, key, 0, &one, err, errlen);
	if (ret < 0 || one.n != 1)
		return ret < 0 ? ret : lbu_fail(err, errlen, -ENOENT, "'%s' vanished", key);
	*now = one.items[0];
	return 0;
}
