/* layerbank-ctl metrics: the daemon's figures in the Prometheus text exposition format,
 * version 0.0.4: every STATS figure (those of each NUMA node labelled node="N") and the
 * per-model, per-layer counters, each family with its # HELP and # TYPE lines, counters named
 * *_total. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "ctl.h"

/* A label value: \ " and newline escaped as the format says; bytes that are not UTF-8 (a
 * model name is any bytes but NUL) become U+FFFD, since a scraper must read UTF-8. */
static void put_label(FILE *out, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;

	while (*p) {
		unsigned n = *p < 0x80 ? 1 : (*p & 0xe0) == 0xc0 ? 2 : (*p & 0xf0) == 0xe0 ? 3
			   : (*p & 0xf8) == 0xf0 ? 4 : 0;
		unsigned i = 1;
		for (; n > 1 && i < n && (p[i] & 0xc0) == 0x80; i++)
			;
		/* Overlong and surrogate forms are not refused here: they are rare, and a
		 * scraper that takes them still gets one label per model. */
		if (n == 0 || (n > 1 && i < n) || (n == 2 && *p < 0xc2)) {
			fputs("\xef\xbf\xbd", out);
			p++;
			continue;
		}
		if (*p == '\\')
			fputs("\\\\", out);
		else if (*p == '"')
			fputs("\\\"", out);
		else if (*p == '\n')
			fputs("\\n", out);
		else
			fwrite(p, 1, n, out);
		p += n;
	}
}

static void family(FILE *out, const char *name, const char *type, const char *help)
{
	fprintf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void u64(FILE *out, const char *name, const char *type, const char *help, uint64_t v)
{
	family(out, name, type, help);
	fprintf(out, "%s %" PRIu64 "\n", name, v);
}

/* One per-layer family: a sample per layer of every model. */
enum lfield {
	L_HITS, L_MISSES, L_INSERTS, L_EVICTIONS, L_ENTRIES, L_BYTES, L_LEASES,
	L_REPORTS, L_REPORTS_OVER, L_TAU, L_DRIFT_SUM, /* the last two are not whole numbers */
};

static uint64_t layer_value(const struct ctl_model *m, uint32_t l, enum lfield f)
{
	const struct lb_layer_stats *x = &m->layer[l];
	switch (f) {
	case L_HITS: return x->hits;
	case L_MISSES: return x->misses;
	case L_INSERTS: return x->inserts;
	case L_EVICTIONS: return x->evictions;
	case L_ENTRIES: return x->entries;
	case L_BYTES: return x->bytes;
	case L_LEASES: return x->leases;
	case L_REPORTS: return m->tau[l].reports;
	case L_REPORTS_OVER: return m->tau[l].reports_over;
	case L_TAU:
	case L_DRIFT_SUM:
		break;
	}
	return 0;
}

static void per_layer(FILE *out, const struct ctl_view *v, const char *name, const char *type,
		      const char *help, enum lfield f)
{
	family(out, name, type, help);
	for (uint32_t i = 0; i < v->n_models; i++) {
		const struct ctl_model *m = &v->models[i];
		for (uint32_t l = 0; l < m->n_layers; l++) {
			fprintf(out, "%s{model=\"", name);
			put_label(out, m->name);
			fprintf(out, "\",layer=\"%u\"} ", l);
			if (f == L_TAU)
				fprintf(out, "%.9g\n", m->tau[l].tau);
			else if (f == L_DRIFT_SUM)
				fprintf(out, "%.9g\n", m->tau[l].drift_sum);
			else
				fprintf(out, "%" PRIu64 "\n", layer_value(m, l, f));
		}
	}
}

/* The second tier: every family whether or not there is one (0 without), so that a scraper's
 * series do not come and go; layerbank_l2_enabled tells "off" from "down". */
static void print_l2(FILE *out, const struct lb_stats *st)
{
	bool on = strcmp(st->l2, "off") != 0;

	u64(out, "layerbank_l2_enabled", "gauge",
	    "1 when the daemon has a second tier (--l2), else 0.", on);
	u64(out, "layerbank_l2_up", "gauge",
	    "1 when the second tier's last command reached its node; 0 when it did not or none "
	    "was sent yet, and without a tier.",
	    strcmp(st->l2, "up") == 0);
	u64(out, "layerbank_l2_queue_records", "gauge",
	    "Records queued to be written behind to the second tier.", st->l2_queue_records);
	u64(out, "layerbank_l2_queue_bytes", "gauge",
	    "Bytes of the records queued to be written behind to the second tier.",
	    st->l2_queue_bytes);
	u64(out, "layerbank_l2_fetches_waiting", "gauge",
	    "Reads of the second tier waiting for its thread.", st->l2_fetches_waiting);
	u64(out, "layerbank_l2_written_total", "counter",
	    "Records written to the second tier.", st->l2_written);
	u64(out, "layerbank_l2_dropped_total", "counter",
	    "Records not written because the queue was full.", st->l2_dropped);
	u64(out, "layerbank_l2_write_errors_total", "counter",
	    "Records whose write to the second tier failed.", st->l2_write_errors);
	u64(out, "layerbank_l2_fetched_total", "counter",
	    "Records read back from the second tier, checked and cached here.", st->l2_fetched);
	u64(out, "layerbank_l2_fetch_misses_total", "counter",
	    "Reads of keys the second tier did not hold.", st->l2_fetch_misses);
	u64(out, "layerbank_l2_rejected_total", "counter",
	    "Records read back and refused by their checks.", st->l2_rejected);
	u64(out, "layerbank_l2_fetch_errors_total", "counter",
	    "Reads of the second tier that failed, or found no room in its queue.",
	    st->l2_fetch_errors);
}

/* One per-node family: a sample per row, labelled node="N" (-1: arenas bound to no node);
 * the family's HELP and TYPE lines also without rows, as the per-layer ones without models. */
enum nfield { N_ARENA, N_USED, N_ENTRIES, N_HITS, N_INSERTS, N_REMOTE, N_CLIENTS };

static uint64_t node_value(const struct lb_node_stats *n, enum nfield f)
{
	switch (f) {
	case N_ARENA: return n->arena_bytes;
	case N_USED: return n->bytes_used;
	case N_ENTRIES: return n->entries;
	case N_HITS: return n->hits;
	case N_INSERTS: return n->inserts;
	case N_REMOTE: return n->remote_inserts;
	case N_CLIENTS: return n->clients;
	}
	return 0;
}

static void per_node(FILE *out, const struct lb_stats *st, const char *name, const char *type,
		     const char *help, enum nfield f)
{
	family(out, name, type, help);
	for (uint32_t i = 0; i < st->n_nodes && i < LB_MAX_NODES; i++)
		fprintf(out, "%s{node=\"%d\"} %" PRIu64 "\n", name, st->nodes[i].node,
			node_value(&st->nodes[i], f));
}

/* The tenants, and the figures of each NUMA node. */
static void print_nodes(FILE *out, const struct lb_stats *st)
{
	u64(out, "layerbank_tenants", "gauge",
	    "Tenants with arenas of their own, the shared one included.", st->tenants);
	per_node(out, st, "layerbank_node_arena_bytes", "gauge",
		 "Bytes of the arenas on this NUMA node, over all tenants.", N_ARENA);
	per_node(out, st, "layerbank_node_used_bytes", "gauge",
		 "Arena bytes on this node held by live entries and entries being inserted.", N_USED);
	per_node(out, st, "layerbank_node_entries", "gauge",
		 "Live entries on this node: layer entries and prefix blocks.", N_ENTRIES);
	per_node(out, st, "layerbank_node_hits_total", "counter",
		 "Lookups answered from entries on this node.", N_HITS);
	per_node(out, st, "layerbank_node_inserts_total", "counter",
		 "Entries placed on this node.", N_INSERTS);
	per_node(out, st, "layerbank_node_remote_inserts_total", "counter",
		 "Inserts by this node's clients placed on another node: this node's arenas had "
		 "no room.", N_REMOTE);
	per_node(out, st, "layerbank_node_clients", "gauge",
		 "Connected clients that said they run on this node.", N_CLIENTS);
}

void ctl_metrics_print(FILE *out, const struct ctl_view *v)
{
	const struct lb_stats *st = &v->st;

	u64(out, "layerbank_page_size_bytes", "gauge", "Smallest page size among the arenas.",
	    st->page_size);
	u64(out, "layerbank_arena_bytes", "gauge", "Shared memory of all arenas.", st->arena_bytes);
	u64(out, "layerbank_numa_nodes", "gauge", "Arenas in use, one per tenant and NUMA node.",
	    st->numa_nodes);
	u64(out, "layerbank_hugepages", "gauge",
	    "1 when every arena is on 2 MiB pages, 0 on the 4 KiB fallback.", st->hugepages);
	u64(out, "layerbank_clients", "gauge", "Connections that completed HELLO.", st->clients);
	u64(out, "layerbank_models", "gauge", "Registered models.", st->models);
	u64(out, "layerbank_uptime_seconds", "gauge", "Seconds since the daemon started.",
	    st->uptime_s);
	u64(out, "layerbank_threads", "gauge", "Service threads serving the rings.", st->threads);
	family(out, "layerbank_policy_info", "gauge", "The eviction policy, as a label; always 1.");
	fprintf(out, "layerbank_policy_info{policy=\"");
	put_label(out, st->policy);
	fprintf(out, "\"} 1\n");
	u64(out, "layerbank_hits_total", "counter", "Lookups answered with an entry.", st->hits);
	u64(out, "layerbank_misses_total", "counter", "Lookups that found no entry.", st->misses);
	u64(out, "layerbank_inserts_total", "counter", "Entries inserted.", st->inserts);
	u64(out, "layerbank_evictions_total", "counter",
	    "Entries dropped by the eviction policy to make room.", st->evictions);
	u64(out, "layerbank_expirations_total", "counter",
	    "Entries dropped because their TTL passed.", st->expirations);
	u64(out, "layerbank_invalidations_total", "counter",
	    "Entries dropped because a reported drift was above the limit, or replaced by a more exact insert.",
	    st->invalidations);
	u64(out, "layerbank_entries", "gauge", "Live entries, one per cached layer of an input.",
	    st->entries);
	u64(out, "layerbank_leases", "gauge", "Leases held now, over all clients.", st->leases);
	u64(out, "layerbank_used_bytes", "gauge",
	    "Arena bytes held by live entries and entries being inserted.", st->bytes_used);
	u64(out, "layerbank_budget_bytes", "gauge", "Bytes entries may use.", st->bytes_budget);
	family(out, "layerbank_fragmentation_ratio", "gauge",
	       "Of the free arena space, 1 - largest free block / free bytes.");
	fprintf(out, "layerbank_fragmentation_ratio %.6f\n", st->fragmentation);
	u64(out, "layerbank_quota_refusals_total", "counter",
	    "Inserts refused because their user's entries held its insert quota.", st->quota_refusals);
	u64(out, "layerbank_blocks", "gauge", "Live prefix blocks (not counted in entries).",
	    st->blocks);
	u64(out, "layerbank_prefix_hits_total", "counter",
	    "Prefix lookups that found at least the first block.", st->prefix_hits);
	u64(out, "layerbank_prefix_misses_total", "counter",
	    "Prefix lookups that found not even the first block.", st->prefix_misses);
	u64(out, "layerbank_blocks_served_total", "counter", "Blocks the prefix hits gave out.",
	    st->blocks_served);
	print_l2(out, st);
	print_nodes(out, st);

	family(out, "layerbank_model_layers", "gauge", "Layers of each registered model.");
	for (uint32_t i = 0; i < v->n_models; i++) {
		fprintf(out, "layerbank_model_layers{model=\"");
		put_label(out, v->models[i].name);
		fprintf(out, "\"} %u\n", v->models[i].n_layers);
	}
	per_layer(out, v, "layerbank_layer_hits_total", "counter",
		  "Lookups that reused this layer (a deepest hit at layer L counts for 0..L).", L_HITS);
	per_layer(out, v, "layerbank_layer_misses_total", "counter",
		  "Lookups that could not reuse this layer.", L_MISSES);
	per_layer(out, v, "layerbank_layer_inserts_total", "counter",
		  "Entries inserted for this layer.", L_INSERTS);
	per_layer(out, v, "layerbank_layer_evictions_total", "counter",
		  "Entries of this layer dropped by the eviction policy.", L_EVICTIONS);
	per_layer(out, v, "layerbank_layer_entries", "gauge", "Live entries of this layer.",
		  L_ENTRIES);
	per_layer(out, v, "layerbank_layer_bytes", "gauge", "Arena bytes of this layer's entries.",
		  L_BYTES);
	per_layer(out, v, "layerbank_layer_leases", "gauge",
		  "Leases held now on this layer's entries.", L_LEASES);
	per_layer(out, v, "layerbank_layer_tau", "gauge",
		  "The threshold lookups that bring none meet at this layer (adaptive with drift-target).",
		  L_TAU);
	per_layer(out, v, "layerbank_layer_drift_reports_total", "counter",
		  "REPORTed drifts of approximate reuses of this layer, its threshold controller's input.",
		  L_REPORTS);
	per_layer(out, v, "layerbank_layer_drift_reports_over_total", "counter",
		  "Of those, the ones past the drift target in force.", L_REPORTS_OVER);
	per_layer(out, v, "layerbank_layer_drift_total", "counter",
		  "The sum of those reported drifts (divided by the reports: their mean).", L_DRIFT_SUM);
}

int ctl_cmd_metrics(const char *sock, int argc, char **argv)
{
	struct ctl_view v = { 0 };
	struct lb_client *c;
	int ret;

	if (argc > 1)
		return ctl_usage_error("metrics", "unknown argument '%s'", argv[1]);
	if (ctl_connect(sock, &c))
		return CTL_FAIL;
	ret = ctl_view_read(c, &v);
	if (ret < 0) {
		ret = ctl_fail(c, "metrics", ret);
	} else {
		ctl_metrics_print(stdout, &v);
		ret = fflush(stdout) == 0 ? CTL_OK : ctl_fail(NULL, "metrics", -EIO);
	}
	ctl_view_free(&v);
	lb_close(c);
	return ret;
}
