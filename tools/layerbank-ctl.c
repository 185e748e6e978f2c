/* layerbank-ctl: talk to a running layerbankd from the command line. This file: the command
 * line, what the commands share (ctl.h), and `stats`.
 * Exit status: 0 done, 1 the daemon could not be reached or refused, 2 bad usage. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "errf.h"

static void usage(FILE *out)
{
	fprintf(out,
		"usage: layerbank-ctl [--socket PATH] COMMAND [ARGS]\n"
		"\n"
		"commands:\n"
		"  stats [--json]                    the daemon's counters, as a table or one JSON object\n"
		"  top [--interval SECS]             a live view, refreshed every SECS (default 1); q quits\n"
		"  metrics                           the counters in Prometheus text format 0.0.4\n"
		"  flush [--model M [--layer L]]     drop cached entries: all, one model's (name or id),\n"
		"                                    or one layer's; leased ones when released\n"
		"  config get [KEY]                  run-time settings: every one, or KEY\n"
		"  config set KEY VALUE              change one: tau, tau.MODEL.LAYER, budget, policy,\n"
		"                                    spin-us, ttl, half-life, drift-max\n"
		"  snapshot                          write the snapshot file now (the daemon must run\n"
		"                                    with --snapshot FILE)\n"
		"\n"
		"flush, config set and snapshot need root or the daemon's user.\n"
		"\n"
		"options:\n"
		"  -s, --socket PATH  daemon socket (default: $" LB_SOCKET_ENV " or " LB_DEFAULT_SOCKET ")\n"
		"  -h, --help         this text\n"
		"\n"
		"exit status: 0 done, 1 the daemon could not be reached or refused, 2 bad usage\n");
}

/* ---- shared by the commands ---- */

const char *ctl_socket_path(const char *sock)
{
	const char *env = getenv(LB_SOCKET_ENV);

	if (sock)
		return sock;
	return env && *env ? env : LB_DEFAULT_SOCKET;
}

int ctl_connect(const char *sock, struct lb_client **c)
{
	int ret = lb_connect(sock, "layerbank-ctl", c);

	if (ret < 0) {
		const char *why = lb_last_error(NULL); /* the daemon's refusal, as EUSERS's */
		fprintf(stderr, "layerbank-ctl: cannot connect to %s: %s%s%s%s\n", ctl_socket_path(sock),
			strerror(-ret),
			ret == -ENOENT || ret == -ECONNREFUSED ? " (is layerbankd running?)" :
			ret == -EACCES ? " (join the socket's group, usually layerbank)" : "",
			*why ? ": " : "", why);
		return CTL_FAIL;
	}
	return CTL_OK;
}

int ctl_fail(struct lb_client *c, const char *cmd, int ret)
{
	const char *why = c ? lb_last_error(c) : "";

	/* liblayerbank would reconnect on the next call; a one-shot command has none. */
	if (ret == -ECONNRESET || ret == -ENOTCONN || ret == -EPIPE)
		why = "layerbankd went away";
	/* A FLUSH or a lower budget on a huge cache can outlast the library's wait for a reply;
	 * the daemon still finishes it. */
	if (ret == -ETIMEDOUT)
		why = "no answer within 5 s; the daemon may still be at it (its log says when done)";

	fprintf(stderr, "layerbank-ctl: %s: %s\n", cmd, *why ? why : strerror(-ret));
	return CTL_FAIL;
}

int ctl_usage_error(const char *cmd, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "layerbank-ctl: %s: ", cmd);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (see --help)\n");
	return CTL_USAGE;
}

void ctl_view_free(struct ctl_view *v)
{
	for (uint32_t i = 0; i < v->n_models; i++) {
		free(v->models[i].layer);
		free(v->models[i].tau);
	}
	free(v->models);
	memset(v, 0, sizeof(*v));
}

int ctl_view_read(struct lb_client *c, struct ctl_view *v)
{
	static struct lb_layer_stats scratch[1024]; /* LBP_MAX_LAYERS: the most a model has */
	static struct lb_layer_tau taus[1024];
	int ret;

	ctl_view_free(v);
	ret = lb_stats(c, &v->st, sizeof(v->st));
	if (ret < 0)
		return ret;
	v->models = calloc(v->st.models ? v->st.models : 1, sizeof(*v->models));
	if (!v->models)
		return -ENOMEM;
	/* Model ids are 1..models, never reused. */
	for (uint32_t id = 1; id <= v->st.models; id++) {
		struct ctl_model *m = &v->models[v->n_models];
		ret = lb_model_stats(c, id, m->name, scratch, 1024);
		if (ret == -ESRCH)
			continue; /* registered, but its bank could not be made */
		if (ret < 0)
			return ret;
		m->layer = malloc(sizeof(*m->layer) * (size_t)(ret ? ret : 1));
		m->tau = calloc((size_t)(ret ? ret : 1), sizeof(*m->tau));
		if (!m->layer || !m->tau) {
			free(m->layer);
			free(m->tau);
			return -ENOMEM;
		}
		m->id = id;
		m->n_layers = (uint32_t)ret;
		memcpy(m->layer, scratch, sizeof(*m->layer) * m->n_layers);
		v->n_models++;
		ret = lb_model_taus(c, id, taus, 1024);
		if (ret < 0 && ret != -ESRCH)
			return ret;
		if (ret == (int)m->n_layers)
			memcpy(m->tau, taus, sizeof(*m->tau) * m->n_layers);
	}
	return 0;
}

const struct ctl_model *ctl_view_model(const struct ctl_view *v, const char *name)
{
	char *end;
	unsigned long id;

	for (uint32_t i = 0; i < v->n_models; i++)
		if (strcmp(v->models[i].name, name) == 0)
			return &v->models[i];
	errno = 0;
	id = strtoul(name, &end, 10);
	if (*name < '0' || *name > '9' || *end || errno)
		return NULL;
	for (uint32_t i = 0; i < v->n_models; i++)
		if (v->models[i].id == id)
			return &v->models[i];
	return NULL;
}

/* ---- stats ---- */

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

static void model_table(const struct ctl_model *m)
{
	char name[LB_NAME_MAX + 1];

	/* A client chose the name: no escape sequence of its reaches the terminal. */
	printf("\nmodel %u '%s', %u layers\n", m->id, lbu_printable(m->name, name, sizeof(name)),
	       m->n_layers);
	printf("  %5s %10s %10s %6s %9s %9s %8s %9s %7s %6s %8s %9s\n", "layer", "hits", "misses",
	       "hit%", "inserts", "evicted", "entries", "MiB", "leases", "tau", "reports", "drift");
	for (uint32_t l = 0; l < m->n_layers; l++) {
		const struct lb_layer_stats *x = &m->layer[l];
		const struct lb_layer_tau *t = &m->tau[l];
		uint64_t n = x->hits + x->misses;
		printf("  %5u %10" PRIu64 " %10" PRIu64 " %6.1f %9" PRIu64 " %9" PRIu64 " %8" PRIu64
		       " %9.1f %7" PRIu64 " %6.3f %8" PRIu64, l, x->hits, x->misses,
		       n ? 100.0 * (double)x->hits / (double)n : 0.0, x->inserts, x->evictions,
		       x->entries, (double)x->bytes / (1 << 20), x->leases, t->tau, t->reports);
		if (t->reports)
			printf(" %9.6f\n", t->drift_sum / (double)t->reports);
		else
			printf(" %9s\n", "-");
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
static void print_l2_table(const struct lb_stats *st)
{
	char state[sizeof(st->l2)];

	/* A string from the daemon: no control byte of it reaches the terminal. */
	lbu_printable(st->l2, state, sizeof(state));
	if (strcmp(state, "off") == 0) {
		printf("%-12s off\n", "second tier");
		return;
	}
	printf("%-12s %s, %" PRIu64 " records (%.1f MiB) queued to write, %" PRIu64
	       " reads waiting\n", "second tier", state, st->l2_queue_records,
	       (double)st->l2_queue_bytes / (1 << 20), st->l2_fetches_waiting);
	printf("%-12s %" PRIu64 " written, %" PRIu64 " dropped (queue full), %" PRIu64 " failed\n",
	       "tier writes", st->l2_written, st->l2_dropped, st->l2_write_errors);
	printf("%-12s %" PRIu64 " fetched, %" PRIu64 " missed, %" PRIu64 " rejected, %" PRIu64
	       " failed\n", "tier reads", st->l2_fetched, st->l2_fetch_misses, st->l2_rejected,
	       st->l2_fetch_errors);
}

static void print_stats_json(const struct ctl_view *v)
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
	json_object_object_add(o, "per_model", models);
	puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
	json_object_put(o);
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
	printf("%-12s %" PRIu64 " inserts over their user's quota\n", "refused", st->quota_refusals);
	uint64_t asked = st->prefix_hits + st->prefix_misses;
	printf("%-12s %" PRIu64 " blocks cached; %" PRIu64 " lookups, %.1f%% hit, %" PRIu64
	       " blocks served\n", "prefixes", st->blocks, asked,
	       asked ? 100.0 * (double)st->prefix_hits / (double)asked : 0.0, st->blocks_served);
	print_l2_table(st);
}

int ctl_cmd_stats(const char *sock, int argc, char **argv)
{
	struct ctl_view v = { 0 };
	struct lb_client *c;
	int json = 0, ret;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--json") == 0)
			json = 1;
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
	if (json) {
		print_stats_json(&v);
	} else {
		print_stats_table(&v.st);
		for (uint32_t i = 0; i < v.n_models; i++)
			model_table(&v.models[i]);
	}
	ctl_view_free(&v);
	return CTL_OK;
}

/* ---- the command line ---- */

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	static const struct {
		const char *name;
		int (*run)(const char *sock, int argc, char **argv);
	} cmds[] = {
		{ "stats", ctl_cmd_stats },	{ "top", ctl_cmd_top },
		{ "metrics", ctl_cmd_metrics }, { "flush", ctl_cmd_flush },
		{ "config", ctl_cmd_config },	{ "snapshot", ctl_cmd_snapshot },
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
			return CTL_OK;
		default:
			fprintf(stderr, "layerbank-ctl: %s '%s'; see --help\n",
				ch == ':' ? "missing value for" : "unknown option", argv[optind - 1]);
			return CTL_USAGE;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return CTL_USAGE;
	}
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (strcmp(argv[optind], cmds[i].name) == 0)
			return cmds[i].run(sock, argc - optind, argv + optind);
	fprintf(stderr, "layerbank-ctl: unknown command '%s'; see --help\n", argv[optind]);
	return CTL_USAGE;
}
