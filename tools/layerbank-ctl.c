/* layerbank-ctl: talk to a running layerbankd from the command line.
 * Exit status: 0 done, 1 the daemon could not be reached or refused, 2 bad usage. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layerbank/layerbank.h"

static void usage(FILE *out)
{
	fprintf(out, "usage: layerbank-ctl [--socket PATH] COMMAND [ARGS]\n"
		     "\n"
		     "commands:\n"
		     "  stats [--json]   the daemon's counters, as a table or one JSON object\n"
		     "  snapshot         have the daemon write its snapshot file now (root or the\n"
		     "                   daemon's user; the daemon must run with --snapshot FILE)\n"
		     "\n"
		     "options:\n"
		     "  -s, --socket PATH  daemon socket (default: $" LB_SOCKET_ENV " or " LB_DEFAULT_SOCKET ")\n"
		     "  -h, --help         this text\n");
}

#define MAX_LAYERS 1024

struct model_view {
	uint32_t id, n_layers;
	char name[LB_NAME_MAX + 1];
	struct lb_layer_stats layer[MAX_LAYERS];
};

static json_object *model_json(const struct model_view *m)
{
	json_object *o = json_object_new_object(), *layers = json_object_new_array();
	json_object_object_add(o, "id", json_object_new_uint64(m->id));
	json_object_object_add(o, "name", json_object_new_string(m->name));
	json_object_object_add(o, "n_layers", json_object_new_uint64(m->n_layers));
	for (uint32_t l = 0; l < m->n_layers && l < MAX_LAYERS; l++) {
		const struct lb_layer_stats *x = &m->layer[l];
		json_object *j = json_object_new_object();
		json_object_object_add(j, "hits", json_object_new_uint64(x->hits));
		json_object_object_add(j, "misses", json_object_new_uint64(x->misses));
		json_object_object_add(j, "inserts", json_object_new_uint64(x->inserts));
		json_object_object_add(j, "evictions", json_object_new_uint64(x->evictions));
		json_object_object_add(j, "entries", json_object_new_uint64(x->entries));
		json_object_object_add(j, "bytes", json_object_new_uint64(x->bytes));
		json_object_object_add(j, "leases", json_object_new_uint64(x->leases));
		json_object_array_add(layers, j);
	}
	json_object_object_add(o, "layers", layers);
	return o;
}

static void model_table(const struct model_view *m)
{
	printf("\nmodel %u '%s', %u layers\n", m->id, m->name, m->n_layers);
	printf("  %5s %10s %10s %6s %9s %9s %8s %9s %7s\n", "layer", "hits", "misses", "hit%",
	       "inserts", "evicted", "entries", "MiB", "leases");
	for (uint32_t l = 0; l < m->n_layers && l < MAX_LAYERS; l++) {
		const struct lb_layer_stats *x = &m->layer[l];
		uint64_t n = x->hits + x->misses;
		printf("  %5u %10" PRIu64 " %10" PRIu64 " %6.1f %9" PRIu64 " %9" PRIu64 " %8" PRIu64
		       " %9.1f %7" PRIu64 "\n", l, x->hits, x->misses,
		       n ? 100.0 * (double)x->hits / (double)n : 0.0, x->inserts, x->evictions,
		       x->entries, (double)x->bytes / (1 << 20), x->leases);
	}
}

static int print_stats_json(const struct lb_stats *st, const struct model_view *mv, uint32_t n_models)
{
	json_object *o = json_object_new_object(), *models = json_object_new_array();
	for (uint32_t i = 0; i < n_models; i++)
		json_object_array_add(models, model_json(&mv[i]));
	json_object_object_add(o, "page_size", json_object_new_uint64(st->page_size));
	json_object_object_add(o, "arena_bytes", json_object_new_uint64(st->arena_bytes));
	json_object_object_add(o, "numa_nodes", json_object_new_uint64(st->numa_nodes));
	json_object_object_add(o, "hugepages", json_object_new_boolean(st->hugepages));
	json_object_object_add(o, "clients", json_object_new_uint64(st->clients));
	json_object_object_add(o, "models", json_object_new_uint64(st->models));
	json_object_object_add(o, "uptime_s", json_object_new_uint64(st->uptime_s));
	json_object_object_add(o, "threads", json_object_new_uint64(st->threads));
	json_object_object_add(o, "policy", json_object_new_string(st->policy));
	json_object_object_add(o, "hits", json_object_new_uint64(st->hits));
	json_object_object_add(o, "misses", json_object_new_uint64(st->misses));
	json_object_object_add(o, "inserts", json_object_new_uint64(st->inserts));
	json_object_object_add(o, "evictions", json_object_new_uint64(st->evictions));
	json_object_object_add(o, "expirations", json_object_new_uint64(st->expirations));
	json_object_object_add(o, "invalidations", json_object_new_uint64(st->invalidations));
	json_object_object_add(o, "entries", json_object_new_uint64(st->entries));
	json_object_object_add(o, "leases", json_object_new_uint64(st->leases));
	json_object_object_add(o, "bytes_used", json_object_new_uint64(st->bytes_used));
	json_object_object_add(o, "bytes_budget", json_object_new_uint64(st->bytes_budget));
	json_object_object_add(o, "fragmentation", json_object_new_double(st->fragmentation));
	json_object_object_add(o, "quota_refusals", json_object_new_uint64(st->quota_refusals));
	json_object_object_add(o, "per_model", models);
	puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
	json_object_put(o);
	return 0;
}

static void print_stats_table(const struct lb_stats *st)
{
	printf("%-12s %" PRIu64 " bytes (%s)\n", "page size", st->page_size,
	       st->hugepages ? "hugetlb" : "no hugepages: 4 KiB fallback");
	printf("%-12s %" PRIu64 " MiB in %u arena(s)\n", "arena", st->arena_bytes >> 20, st->numa_nodes);
	printf("%-12s %u\n", "numa nodes", st->numa_nodes);
	printf("%-12s %u\n", "clients", st->clients);
	printf("%-12s %u\n", "models", st->models);
	printf("%-12s %" PRIu64 " s\n", "uptime", st->uptime_s);
	printf("%-12s %u, eviction policy %s\n", "threads", st->threads, st->policy);
	uint64_t looked = st->hits + st->misses;
	printf("%-12s %" PRIu64 " hits, %" PRIu64 " misses (%.1f%% hit rate), %" PRIu64 " inserts\n",
	       "lookups", st->hits, st->misses, looked ? 100.0 * (double)st->hits / (double)looked : 0.0,
	       st->inserts);
	printf("%-12s %" PRIu64 " entries, %" PRIu64 " of %" PRIu64 " MiB, %" PRIu64 " leases, "
	       "fragmentation %.1f%%\n", "cache", st->entries, st->bytes_used >> 20,
	       st->bytes_budget >> 20, st->leases, 100.0 * st->fragmentation);
	printf("%-12s %" PRIu64 " evicted, %" PRIu64 " expired, %" PRIu64 " invalidated\n", "dropped",
	       st->evictions, st->expirations, st->invalidations);
	printf("%-12s %" PRIu64 " inserts over a client's quota\n", "refused", st->quota_refusals);
}

static int connect_or_say(const char *sock, struct lb_client **c)
{
	int ret = lb_connect(sock, "layerbank-ctl", c);
	if (ret < 0)
		fprintf(stderr, "layerbank-ctl: cannot connect to %s: %s%s\n",
			sock ? sock : "the default socket", strerror(-ret),
			ret == -ENOENT || ret == -ECONNREFUSED ? " (is layerbankd running?)" : "");
	return ret;
}

static int cmd_snapshot(const char *sock, int argc, char **argv)
{
	struct lb_snapshot_info info;
	struct lb_client *c;
	int ret;

	if (argc > 1) {
		fprintf(stderr, "layerbank-ctl: snapshot: unknown argument '%s'\n", argv[1]);
		return 2;
	}
	if (connect_or_say(sock, &c) < 0)
		return 1;
	ret = lb_snapshot(c, &info);
	if (ret < 0) {
		fprintf(stderr, "layerbank-ctl: snapshot: %s\n",
			*lb_last_error(c) ? lb_last_error(c) : strerror(-ret));
		lb_close(c);
		return 1;
	}
	lb_close(c);
	printf("snapshot written: %" PRIu64 " entries, %" PRIu64 " bytes (%.1f MiB), %" PRIu64 " ms\n",
	       info.entries, info.bytes, (double)info.bytes / (1 << 20), info.ms);
	return 0;
}

static int cmd_stats(const char *sock, int argc, char **argv)
{
	struct lb_client *c;
	struct lb_stats st;
	int json = 0, ret;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--json") == 0) {
			json = 1;
		} else {
			fprintf(stderr, "layerbank-ctl: stats: unknown argument '%s'\n", argv[i]);
			return 2;
		}
	}
	if (connect_or_say(sock, &c) < 0)
		return 1;
	ret = lb_stats(c, &st, sizeof(st));
	if (ret < 0) {
		fprintf(stderr, "layerbank-ctl: stats: %s\n", *lb_last_error(c) ? lb_last_error(c) : strerror(-ret));
		lb_close(c);
		return 1;
	}
	/* Model ids are 1..models, never reused. */
	struct model_view *mv = calloc(st.models ? st.models : 1, sizeof(*mv));
	uint32_t n_models = 0;
	for (uint32_t id = 1; mv && id <= st.models; id++) {
		struct model_view *m = &mv[n_models];
		ret = lb_model_stats(c, id, m->name, m->layer, MAX_LAYERS);
		if (ret < 0)
			continue; /* registered, but its bank could not be made */
		m->id = id;
		m->n_layers = (uint32_t)ret;
		n_models++;
	}
	lb_close(c);
	if (json) {
		print_stats_json(&st, mv, n_models);
	} else {
		print_stats_table(&st);
		for (uint32_t i = 0; i < n_models; i++)
			model_table(&mv[i]);
	}
	free(mv);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *sock = NULL;
	int ch;

	opterr = 0;
	/* '+': stop at the command, whose own options follow it. */
	while ((ch = getopt_long(argc, argv, "+:s:h", opts, NULL)) != -1) {
		switch (ch) {
		case 's':
			sock = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			fprintf(stderr, "layerbank-ctl: %s '%s'; see --help\n",
				ch == ':' ? "missing value for" : "unknown option", argv[optind - 1]);
			return 2;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return 2;
	}
	if (strcmp(argv[optind], "stats") == 0)
		return cmd_stats(sock, argc - optind, argv + optind);
	if (strcmp(argv[optind], "snapshot") == 0)
		return cmd_snapshot(sock, argc - optind, argv + optind);
	fprintf(stderr, "layerbank-ctl: unknown command '%s'; see --help\n", argv[optind]);
	return 2;
}
