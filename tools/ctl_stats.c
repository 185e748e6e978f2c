/* layerbank-ctl stats: the daemon's figures as a table (the totals, the second tier, then per
 * model one line per layer) or as one JSON object. */
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

#include "ctl.h"
#include "errf.h"

static json_object *model_json(const struct ctl_model *m)
{
	json_object *o = json_object_new_object(), *layers = json_object_new_array();
	json_object_object_add(o, "id", json_object_new_uint64(m->id));
	json_object_object_add(o, "name", json_object_new_string(m->name));
	json_object_object_add(o, "n_layers", json_object_new_uint64(m->n_layers));
	for (uint32_t l = 0; l < m->n_layers; l++) {
		const struct lb_layer_stats *x = &m->layer[l];
		json_object *j = json_object_new_object();
		json_object_object_add(j, "hits", json_object_new_uint64(x->hits));
		json_object_object_add(j, "misses", json_object_new_uint64(x->misses));
		json_object_object_add(j, "inserts", json_object_new_uint64(x->inserts));
		json_object_object_add(j, "evictions", json_object_new_uint64(x->evictions));
		json_object_object_add(j, "entries", json_object_new_uint64(x->entries));
		json_object_object_add(j, "bytes", json_object_new_uint64(x->bytes));
		json_object_object_add(j, "leases", json_object_new_uint64(x->leases));
		const struct lb_layer_tau *t = &m->tau[l];
		json_object_object_add(j, "tau", json_object_new_double(t->tau));
		json_object_object_add(j, "max_hamming", json_object_new_uint64(t->max_hamming));
		json_object_object_add(j, "drift_reports", json_object_new_uint64(t->reports));
		json_object_object_add(j, "drift_reports_over", json_object_new_uint64(t->reports_over));
		json_object_object_add(j, "drift_mean", t->reports ? json_object_new_double(
					       t->drift_sum / (double)t->reports) : NULL);
		json_object_array_add(layers, j);
	}
	json_object_object_add(o, "layers", layers);
	return o;
}

static void model_table(FILE *out, const struct ctl_model *m)
{
	char name[LB_NAME_MAX + 1];

	/* A client chose the name: no escape sequence of its reaches the terminal. */
	fprintf(out, "\nmodel %u '%s', %u layers\n", m->id, lbu_printable(m->name, name, sizeof(name)),
	       m->n_layers);
	fprintf(out, "  %5s %10s %10s %6s %9s %9s %8s %9s %7s %6s %8s %9s\n", "layer", "hits", "misses",
	       "hit%", "inserts", "evicted", "entries", "MiB", "leases", "tau", "reports", "drift");
	for (uint32_t l = 0; l < m->n_layers; l++) {
		const struct lb_layer_stats *x = &m->layer[l];
		const struct lb_layer_tau *t = &m->tau[l];
		uint64_t n = x->hits + x->misses;
		fprintf(out, "  %5u %10" PRIu64 " %10" PRIu64 " %6.1f %9" PRIu64 " %9" PRIu64 " %8" PRIu64
		       " %9.1f %7" PRIu64 " %6.3f %8" PRIu64, l, x->hits, x->misses,
		       n ? 100.0 * (double)x->hits / (double)n : 0.0, x->inserts, x->evictions,
		       x->entries, (double)x->bytes / (1 << 20), x->leases, t->tau, t->reports);
		if (t->reports)
			fprintf(out, " %9.6f\n", t->drift_sum / (double)t->reports);
		else
			fprintf(out, " %9s\n", "-");
	}
}

/* The second tier's keys, as STATS_REPLY names them: "l2" its state, zeros when "off". */
static void add_l2_json(json_object *o, const struct lb_stats *st)
{
	const struct {
		const char *key;
		uint64_t v;
	} n[] = {
		{ "l2_queue_bytes", st->l2_queue_bytes },
		{ "l2_queue_records", st->l2_queue_records },
		{ "l2_fetches_waiting", st->l2_fetches_waiting },
		{ "l2_written", st->l2_written },
		{ "l2_dropped", st->l2_dropped },
		{ "l2_write_errors", st->l2_write_errors },
		{ "l2_fetched", st->l2_fetched },
		{ "l2_fetch_misses", st->l2_fetch_misses },
		{ "l2_rejected", st->l2_rejected },
		{ "l2_fetch_errors", st->l2_fetch_errors },
	};
	json_object_object_add(o, "l2", json_object_new_string(st->l2));
	for (size_t i = 0; i < sizeof(n) / sizeof(n[0]); i++)
		json_object_object_add(o, n[i].key, json_object_new_uint64(n[i].v));
}

/* The second tier in the table: one line when there is none, else its state and queue, what
 * it wrote behind and what it read back. */
static void print_l2_table(FILE *out, const struct lb_stats *st)
{
	char state[sizeof(st->l2)];

	/* A string from the daemon: no control byte of it reaches the terminal. */
	lbu_printable(st->l2, state, sizeof(state));
	if (strcmp(state, "off") == 0) {
		fprintf(out, "%-12s off\n", "second tier");
		return;
	}
	fprintf(out, "%-12s %s, %" PRIu64 " records (%.1f MiB) queued to write, %" PRIu64
	       " reads waiting\n", "second tier", state, st->l2_queue_records,
	       (double)st->l2_queue_bytes / (1 << 20), st->l2_fetches_waiting);
	fprintf(out, "%-12s %" PRIu64 " written, %" PRIu64 " dropped (queue full), %" PRIu64 " failed\n",
	       "tier writes", st->l2_written, st->l2_dropped, st->l2_write_errors);
	fprintf(out, "%-12s %" PRIu64 " fetched, %" PRIu64 " missed, %" PRIu64 " rejected, %" PRIu64
	       " failed\n", "tier reads", st->l2_fetched, st->l2_fetch_misses, st->l2_rejected,
	       st->l2_fetch_errors);
}

/* "tenants", and "nodes": one object per row, keys as STATS_REPLY names them. */
static void add_nodes_json(json_object *o, const struct lb_stats *st)
{
	json_object *nodes = json_object_new_array();

	for (uint32_t i = 0; i < st->n_nodes && i < LB_MAX_NODES; i++) {
		const struct lb_node_stats *n = &st->nodes[i];
		json_object *j = json_object_new_object();
		json_object_object_add(j, "node", json_object_new_int(n->node));
		json_object_object_add(j, "arena_bytes", json_object_new_uint64(n->arena_bytes));
		json_object_object_add(j, "bytes_used", json_object_new_uint64(n->bytes_used));
		json_object_object_add(j, "entries", json_object_new_uint64(n->entries));
		json_object_object_add(j, "hits", json_object_new_uint64(n->hits));
		json_object_object_add(j, "inserts", json_object_new_uint64(n->inserts));
		json_object_object_add(j, "remote_inserts", json_object_new_uint64(n->remote_inserts));
		json_object_object_add(j, "clients", json_object_new_uint64(n->clients));
		json_object_array_add(nodes, j);
	}
	json_object_object_add(o, "tenants", json_object_new_uint64(st->tenants));
	json_object_object_add(o, "nodes", nodes);
}

/* The rows per NUMA node below the totals, when the daemon sends any. */
static void print_nodes_table(FILE *out, const struct lb_stats *st)
{
	if (!st->n_nodes)
		return;
	fprintf(out, "\nper NUMA node (-1: arenas bound to no node)\n");
	fprintf(out, "  %5s %10s %10s %10s %12s %10s %8s %7s\n", "node", "arena MiB", "used MiB",
		"entries", "hits", "inserts", "remote", "clients");
	for (uint32_t i = 0; i < st->n_nodes && i < LB_MAX_NODES; i++) {
		const struct lb_node_stats *n = &st->nodes[i];
		fprintf(out, "  %5d %10.1f %10.1f %10" PRIu64 " %12" PRIu64 " %10" PRIu64 " %8" PRIu64
			" %7u\n", n->node, (double)n->arena_bytes / (1 << 20),
			(double)n->bytes_used / (1 << 20), n->entries, n->hits, n->inserts,
			n->remote_inserts, n->clients);
	}
}

static void print_stats_json(FILE *out, const struct ctl_view *v)
{
	const struct lb_stats *st = &v->st;
	json_object *o = json_object_new_object(), *models = json_object_new_array();
	for (uint32_t i = 0; i < v->n_models; i++)
		json_object_array_add(models, model_json(&v->models[i]));
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
	json_object_object_add(o, "blocks", json_object_new_uint64(st->blocks));
	json_object_object_add(o, "prefix_hits", json_object_new_uint64(st->prefix_hits));
	json_object_object_add(o, "prefix_misses", json_object_new_uint64(st->prefix_misses));
	json_object_object_add(o, "blocks_served", json_object_new_uint64(st->blocks_served));
	add_l2_json(o, st);
	add_nodes_json(o, st);
	json_object_object_add(o, "per_model", models);
	fprintf(out, "%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
	json_object_put(o);
}

static void print_stats_table(FILE *out, const struct lb_stats *st)
{
	fprintf(out, "%-12s %" PRIu64 " bytes (%s)\n", "page size", st->page_size,
	       st->hugepages ? "hugetlb" : "no hugepages: 4 KiB fallback");
	fprintf(out, "%-12s %" PRIu64 " MiB in %u arena(s)\n", "arena", st->arena_bytes >> 20, st->numa_nodes);
	/* numa_nodes counts arenas (one per tenant and node); a daemon of version 4 sends no rows. */
	fprintf(out, "%-12s %u\n", "numa nodes", st->n_nodes ? st->n_nodes : st->numa_nodes);
	fprintf(out, "%-12s %u\n", "clients", st->clients);
	fprintf(out, "%-12s %u\n", "models", st->models);
	fprintf(out, "%-12s %u\n", "tenants", st->tenants);
	fprintf(out, "%-12s %" PRIu64 " s\n", "uptime", st->uptime_s);
	fprintf(out, "%-12s %u, eviction policy %s\n", "threads", st->threads, st->policy);
	uint64_t looked = st->hits + st->misses;
	fprintf(out, "%-12s %" PRIu64 " hits, %" PRIu64 " misses (%.1f%% hit rate), %" PRIu64 " inserts\n",
	       "lookups", st->hits, st->misses, looked ? 100.0 * (double)st->hits / (double)looked : 0.0,
	       st->inserts);
	fprintf(out, "%-12s %" PRIu64 " entries, %" PRIu64 " of %" PRIu64 " MiB, %" PRIu64 " leases, "
	       "fragmentation %.1f%%\n", "cache", st->entries, st->bytes_used >> 20,
	       st->bytes_budget >> 20, st->leases, 100.0 * st->fragmentation);
	fprintf(out, "%-12s %" PRIu64 " evicted, %" PRIu64 " expired, %" PRIu64 " invalidated\n", "dropped",
	       st->evictions, st->expirations, st->invalidations);
	fprintf(out, "%-12s %" PRIu64 " inserts over their user's quota\n", "refused", st->quota_refusals);
	uint64_t asked = st->prefix_hits + st->prefix_misses;
	fprintf(out, "%-12s %" PRIu64 " blocks cached; %" PRIu64 " lookups, %.1f%% hit, %" PRIu64
	       " blocks served\n", "prefixes", st->blocks, asked,
	       asked ? 100.0 * (double)st->prefix_hits / (double)asked : 0.0, st->blocks_served);
	print_l2_table(out, st);
	print_nodes_table(out, st);
}

void ctl_stats_print(FILE *out, const struct ctl_view *v, bool json)
{
	if (json) {
		print_stats_json(out, v);
		return;
	}
	print_stats_table(out, &v->st);
	for (uint32_t i = 0; i < v->n_models; i++)
		model_table(out, &v->models[i]);
}

int ctl_cmd_stats(const char *sock, int argc, char **argv)
{
	struct ctl_view v = { 0 };
	struct lb_client *c;
	bool json = false;
	int ret;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--json") == 0)
			json = true;
		else
			return ctl_usage_error("stats", "unknown argument '%s'", argv[i]);
	}
	if (ctl_connect(sock, &c))
		return CTL_FAIL;
	ret = ctl_view_read(c, &v);
	if (ret < 0) {
		ret = ctl_fail(c, "stats", ret);
		ctl_view_free(&v);
		lb_close(c);
		return ret;
	}
	lb_close(c);
	ctl_stats_print(stdout, &v, json);
	ctl_view_free(&v);
	return CTL_OK;
}
