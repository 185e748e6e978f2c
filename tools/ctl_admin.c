/* layerbank-ctl flush and config: the administrative commands (FLUSH, CONFIG_GET, CONFIG_SET).
 * Values are checked by the daemon, with its config file's rules: one place for each key. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"

/* A whole number 0..max, digits only. @return 0, or -1. */
static int parse_uint(const char *s, unsigned long max, unsigned long *out)
{
	unsigned long v = 0;

	if (!*s)
		return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9' || v > (max - (unsigned long)(*s - '0')) / 10)
			return -1;
		v = v * 10 + (unsigned long)(*s - '0');
	}
	*out = v;
	return 0;
}

int ctl_cmd_flush(const char *sock, int argc, char **argv)
{
	const char *model = NULL, *layer_arg = NULL;
	struct lb_flush_result r;
	struct ctl_view v = { 0 };
	struct lb_client *c;
	uint32_t model_id = 0;
	int32_t layer = -1;
	int ret;

	for (int i = 1; i < argc; i++) {
		const char **dst = strcmp(argv[i], "--model") == 0 ? &model
				   : strcmp(argv[i], "--layer") == 0 ? &layer_arg : NULL;
		if (!dst)
			return ctl_usage_error("flush", "unknown argument '%s'", argv[i]);
		if (i + 1 >= argc)
			return ctl_usage_error("flush", "%s needs a value", argv[i]);
		if (*dst)
			return ctl_usage_error("flush", "%s given twice", argv[i]);
		*dst = argv[++i];
	}
	if (layer_arg) {
		unsigned long l;
		if (!model)
			return ctl_usage_error("flush", "--layer needs --model: a layer is one model's");
		if (parse_uint(layer_arg, 1023, &l) < 0)
			return ctl_usage_error("flush", "--layer '%s' is not a layer number 0..1023",
					       layer_arg);
		layer = (int32_t)l;
	}
	if (ctl_connect(sock, &c))
		return CTL_FAIL;
	if (model) {
		/* Names are what users know; FLUSH carries the id. */
		ret = ctl_view_read(c, &v);
		if (ret < 0)
			goto fail;
		const struct ctl_model *m = ctl_view_model(&v, model);
		if (!m) {
			fprintf(stderr, "layerbank-ctl: flush: no model named '%s'%s\n", model,
				v.n_models ? " (layerbank-ctl stats lists them)" : ": none is registered");
			ctl_view_free(&v);
			lb_close(c);
			return CTL_FAIL;
		}
		model_id = m->id;
	}
	ret = lb_flush(c, model_id, layer, &r);
	if (ret < 0)
		goto fail;
	printf("flushed %" PRIu64 " entries, %" PRIu64 " bytes (%.1f MiB)", r.entries, r.bytes,
	       (double)r.bytes / (1 << 20));
	if (r.leased)
		printf("; %" PRIu64 " of them under lease: freed when their holders release them",
		       r.leased);
	printf("\n");
	ctl_view_free(&v);
	lb_close(c);
	return CTL_OK;
fail:
	ret = ctl_fail(c, "flush", ret);
	ctl_view_free(&v);
	lb_close(c);
	return ret;
}

/* A refused setting: the daemon's message names the key and the rule ("budget: '12Q' is not a
 * size ..."); the field it blames ("key: ", "value: ") would only repeat it. */
static int config_fail(struct lb_client *c, int ret)
{
	const char *why = lb_last_error(c);

	if (!*why || ret == -ETIMEDOUT || ret == -ECONNRESET || ret == -ENOTCONN || ret == -EPIPE)
		return ctl_fail(c, "config", ret);
	if (strncmp(why, "key: ", 5) == 0 || strncmp(why, "value: ", 7) == 0)
		why = strchr(why, ' ') + 1;
	fprintf(stderr, "layerbank-ctl: config: %s\n", *why ? why : strerror(-ret));
	return CTL_FAIL;
}

static int config_get(struct lb_client *c, const char *key)
{
	struct lb_config_item *items = NULL;
	int n = lb_config_get(c, key, NULL, 0), got;

	/* Count first, then read them all: the list pages through the daemon's replies. */
	if (n < 0)
		return config_fail(c, n);
	items = calloc((size_t)(n ? n : 1), sizeof(*items));
	if (!items)
		return ctl_fail(NULL, "config", -ENOMEM);
	got = lb_config_get(c, key, items, (uint32_t)n);
	if (got < 0) {
		free(items);
		return config_fail(c, got);
	}
	for (int i = 0; i < n && i < got; i++)
		printf("%s = %s\n", items[i].key, items[i].value);
	free(items);
	return CTL_OK;
}

int ctl_cmd_config(const char *sock, int argc, char **argv)
{
	struct lb_config_item now;
	struct lb_client *c;
	int ret;

	if (argc < 2)
		return ctl_usage_error("config", "say get [KEY] or set KEY VALUE");
	if (strcmp(argv[1], "get") == 0) {
		if (argc > 3)
			return ctl_usage_error("config", "get takes one KEY at most");
	} else if (strcmp(argv[1], "set") == 0) {
		if (argc != 4)
			return ctl_usage_error("config", "set takes KEY VALUE");
	} else {
		return ctl_usage_error("config", "unknown subcommand '%s': get or set", argv[1]);
	}
	if (ctl_connect(sock, &c))
		return CTL_FAIL;
	if (argv[1][0] == 'g') {
		ret = config_get(c, argc == 3 ? argv[2] : "");
	} else {
		ret = lb_config_set(c, argv[2], argv[3], &now);
		if (ret < 0)
			ret = config_fail(c, ret);
		else
			printf("%s = %s\n", now.key, now.value);
	}
	lb_close(c);
	return ret;
}

int ctl_cmd_snapshot(const char *sock, int argc, char **argv)
{
	struct lb_snapshot_info info;
	struct lb_client *c;
	int ret;

	if (argc > 1)
		return ctl_usage_error("snapshot", "unknown argument '%s'", argv[1]);
	if (ctl_connect(sock, &c))
		return CTL_FAIL;
	ret = lb_snapshot(c, &info);
	if (ret < 0) {
		ret = ctl_fail(c, "snapshot", ret);
		lb_close(c);
		return ret;
	}
	lb_close(c);
	printf("snapshot written: %" PRIu64 " entries, %" PRIu64 " bytes (%.1f MiB), %" PRIu64 " ms\n",
	       info.entries, info.bytes, (double)info.bytes / (1 << 20), info.ms);
	return CTL_OK;
}
