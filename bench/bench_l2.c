/*
 * layerbank-bench l2: the second tier on a real Redis Cluster of three masters on loopback, and
 * layerbankd standing for two hosts (own arenas and sockets, one cluster).
 *
 * 1. One BERT-base entry (the deepest of 12 layers, 128 tokens x 768 floats): what a miss on
 *    host 2 costs when the cluster holds what host 1 inserted (a lookup that waits for the tier,
 *    as lb_lem_run sends it), with the tier idle and with the previous entries' lower layers
 *    still being read behind it; a local hit; recomputing it (12 layers, one thread).
 * 2. A two-host fleet on the design's mix, scoring in this process: the first half of the stream
 *    goes to host 1 (warm-up), the second half alternates between the hosts. Hit rates of each
 *    host in the second half, host 2's without a tier (the same run on two daemons without
 *    --l2), and host 2's time, NLL change and top-1 agreement against no cache on the same
 *    requests. stories260K (trained weights: the fidelity) and bert-base (generated weights, a
 *    forward that costs what a real one does: the time).
 */
#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "cache.h"
#include "io.h"
#include "layerbank/layerbank.h"
#include "redis_proc.h"
#include "rng.h"
#include "scorer.h"
#include "serve.h"
#include "tokenizer.h"
#include "workload.h"

#define NAME "l2"
#define BERT_TOKENS 128
#define BERT_LAYERS 12
#define BERT_HIDDEN 768

/* Hosts 1 and 2 with the tier (0, 1), and without (2, 3). */
#define HOSTS 4

static struct {
	char dir[160];
	struct lbu_redis redis;
	pid_t daemon[HOSTS];
	char sock[HOSTS][224];
} g = { .daemon = { -1, -1, -1, -1 } };

static void cleanup(void)
{
	for (int i = 0; i < HOSTS; i++)
		lbb_stop(&g.daemon[i]);
	lbu_redis_stop(&g.redis);
	lbu_rmtree(g.dir);
	g.dir[0] = '\0';
}

static void hosts_start(void)
{
	char l2[96], log[240];
	snprintf(l2, sizeof(l2), "redis-cluster://127.0.0.1:%d,127.0.0.1:%d", g.redis.port[0],
		 g.redis.port[1]);
	for (int i = 0; i < HOSTS; i++) {
		const char *name[HOSTS] = { "host1", "host2", "host1-alone", "host2-alone" };
		snprintf(g.sock[i], sizeof(g.sock[i]), "%s/%s.sock", g.dir, name[i]);
		snprintf(log, sizeof(log), "%s/%s.log", g.dir, name[i]);
		const char *argv[] = { LB_DAEMON_PATH, "--foreground", "--socket", g.sock[i],
				       "--arena-size", "1G", "--hugepages", "off", "--threads", "1",
				       "--l2", i < 2 ? l2 : "none", NULL };
		if ((g.daemon[i] = lbb_spawn(argv, log)) < 0)
			lbb_die(NAME, "fork", errno);
		if (lbb_wait_socket(g.sock[i], &g.daemon[i], 10) < 0)
			lbb_die(NAME, "layerbankd did not start (see its log)", ETIMEDOUT);
	}
}

static struct lb_client *connect_to(int host)
{
	struct lb_client *c;
	int rc = lb_connect(g.sock[host], "bench-l2", &c);
	if (rc < 0)
		lbb_die(NAME, "connecting to a host's layerbankd", -rc);
	lb_set_wait_us(c, 5000000);
	return c;
}

/* Wait until host's tier has written (or failed, or dropped) at least n records and holds none
 * queued. */
static void wait_written(struct lb_client *c, uint64_t n)
{
	struct lb_stats st;
	for (int t = 0; t < 30000; t++) {
		if (lb_stats(c, &st, sizeof(st)) == 0 && st.l2_written + st.l2_write_errors +
								st.l2_dropped >= n &&
		    st.l2_queue_records == 0)
			return;
		lbb_sleep_ms(1);
	}
	lbb_die(NAME, "host 1's tier did not write its entries within 30 s", ETIMEDOUT);
}

struct entry_figs {
	int n;
	double l2_hit_us, l2_hit_p90_us; /* the tier idle */
	double l2_busy_us;               /* back to back: behind the lower layers still read */
	double local_hit_us, recompute_us;
	double write_mb_s;               /* host 1's tier draining its queue: records written */
	uint64_t dropped;                /* records host 1's queue dropped (none, paced so) */
};

/* Host c's fetched records, once they reach at least n (or 10 s passed). */
static uint64_t fetched_reach(struct lb_client *c, uint64_t n)
{
	struct lb_stats st = { 0 };
	for (int t = 0; t < 1000; t++) {
		if (lb_stats(c, &st, sizeof(st)) == 0 && st.l2_fetched >= n)
			break;
		lbb_sleep_ms(10);
	}
	return st.l2_fetched;
}

/* A lookup of key on host c that waits for the tier: its time in us; the hit released. */
static double tier_lookup(struct lb_client *c, uint32_t model, const struct lb_key *key)
{
	struct lb_hit hit;
	struct lb_sflight sf;
	double t0 = lbb_now_s();
	int rc = lb_lookup_sflight(c, model, key, NULL, 0, LB_SFLIGHT_TIER, 1000000, &hit, &sf);
	double us = (lbb_now_s() - t0) * 1e6;
	if (rc < 0 || hit.layer != BERT_LAYERS - 1 || !(sf.flags & LB_SFLIGHT_WAITED))
		lbb_die(NAME, "host 2 did not hit the deepest layer through the tier",
			rc < 0 ? -rc : EPROTO);
	lb_release(c, hit.lease);
	return us;
}

/* Part 1: n BERT-base entries inserted on host 1, each then looked up on host 2 twice. */
static void entry_figures(int n, struct entry_figs *f)
{
	char err[256];
	struct lbw_scorer sc;
	int rc = lbw_scorer_open_bert(&sc, 512, 1, err, sizeof(err));
	if (rc < 0)
		lbb_die(NAME, err, -rc);
	size_t rows = (size_t)BERT_TOKENS * BERT_HIDDEN;
	float *a = malloc(rows * sizeof(float)), *b = malloc(rows * sizeof(float));
	int32_t tok[BERT_TOKENS];
	double *rec = calloc(3, sizeof(double)), *l2 = calloc((size_t)n, sizeof(double)),
	       *busy = calloc((size_t)n, sizeof(double)), *local = calloc((size_t)n, sizeof(double));
	if (!a || !b || !rec || !l2 || !busy || !local)
		lbb_die(NAME, "malloc", ENOMEM);
	for (int r = 0; r < 3; r++) { /* the forward a hit saves */
		for (int i = 0; i < BERT_TOKENS; i++)
			tok[i] = (int32_t)((i * 37 + r * 11 + 5) % 512);
		double t0 = lbb_now_s();
		lbw_scorer_embed(&sc, tok, BERT_TOKENS, a);
		for (int l = 0; l < BERT_LAYERS; l++) {
			if ((rc = lbw_scorer_layer(&sc, (uint32_t)l, a, b)) < 0)
				lbb_die(NAME, "the forward", -rc);
			float *t = a;
			a = b;
			b = t;
		}
		rec[r] = (lbb_now_s() - t0) * 1e6;
	}
	f->recompute_us = lbb_median(rec, 3);

	struct lb_client *c1 = connect_to(0), *c2 = connect_to(1);
	struct lb_model_desc d = { .name = "bert-base", .weights_hash = sc.weights_hash,
				   .n_layers = BERT_LAYERS, .hidden = BERT_HIDDEN,
				   .dtype = LB_DTYPE_F32, .max_seq = 512 };
	uint32_t m1, m2;
	if ((rc = lb_register_model(c1, &d, &m1)) < 0 || (rc = lb_register_model(c2, &d, &m2)) < 0)
		lbb_die(NAME, "registering bert-base", -rc);
	struct lb_key *key = calloc(2 * (size_t)n, sizeof(*key));
	if (!key)
		lbb_die(NAME, "malloc", ENOMEM);
	uint64_t s = 0x12;
	double t_write = lbb_now_s();
	for (int e = 0; e < 2 * n; e++) { /* every layer inserted, as a worker does */
		for (int i = 0; i < BERT_TOKENS; i++)
			tok[i] = (int32_t)(lbu_splitmix64(&s) % 512);
		key[e].seq_len = BERT_TOKENS;
		lb_token_hash(tok, BERT_TOKENS, key[e].exact);
		for (int w = 0; w < 4; w++)
			key[e].fp[w] = lbu_splitmix64(&s);
		for (int l = 0; l < BERT_LAYERS; l++) {
			float *buf = lb_insert_reserve(c1, rows * sizeof(float));
			if (!buf)
				lbb_die(NAME, "lb_insert_reserve", ENOMEM);
			for (size_t k = 0; k < rows; k++)
				buf[k] = (float)((k * 7 + (size_t)l + (size_t)e) % 1000) * 1e-3f;
			struct lb_shape shape = { LB_DTYPE_F32, 2, { BERT_TOKENS, BERT_HIDDEN } };
			if ((rc = lb_insert_commit(c1, m1, (uint32_t)l, &key[e], &shape)) < 0)
				lbb_die(NAME, "inserting on host 1", -rc);
		}
		/* in groups its queue holds (64 MiB: 10 inputs), each written before the next,
		 * so the time is the tier's writing: each layer's record, and the input in its
		 * band sets */
		if ((e + 1) % 10 == 0 || e + 1 == 2 * n)
			wait_written(c1, (uint64_t)(e + 1) * (BERT_LAYERS + 1));
	}
	struct lb_stats st1;
	f->dropped = lb_stats(c1, &st1, sizeof(st1)) == 0 ? st1.l2_dropped : 0;
	f->write_mb_s = 2.0 * n * BERT_LAYERS * (double)(rows * sizeof(float)) / 1048576.0 /
			(lbb_now_s() - t_write);
	uint64_t got = fetched_reach(c2, 0);
	for (int e = 0; e < n; e++) { /* each after the tier read the last one's other layers */
		l2[e] = tier_lookup(c2, m2, &key[e]);
		got = fetched_reach(c2, got + BERT_LAYERS);
	}
	for (int e = n; e < 2 * n; e++)
		busy[e - n] = tier_lookup(c2, m2, &key[e]);
	for (int e = 0; e < n; e++) {
		struct lb_hit hit;
		double t0 = lbb_now_s();
		rc = lb_lookup_deepest(c2, m2, &key[e], NULL, 0, &hit);
		local[e] = (lbb_now_s() - t0) * 1e6;
		if (rc < 0)
			lbb_die(NAME, "host 2's local hit", -rc);
		lb_release(c2, hit.lease);
	}
	f->n = n;
	f->l2_hit_us = lbb_median(l2, (size_t)n);
	qsort(l2, (size_t)n, sizeof(double), lbb_cmp_double);
	f->l2_hit_p90_us = lbb_pct(l2, (size_t)n, 0.9);
	f->local_hit_us = lbb_median(local, (size_t)n);
	f->l2_busy_us = lbb_median(busy, (size_t)n);
	lb_close(c1);
	lb_close(c2);
	free(key);
	free(rec);
	free(l2);
	free(busy);
	free(local);
	free(a);
	free(b);
	lbw_scorer_close(&sc);
}

/* One request's figures. */
struct ans {
	int hit;
	double nll, us;
	int32_t predicted;
	int32_t *top1;
};

struct fleet_figs {
	uint32_t n1, n2;                 /* second-half requests of host 1, of host 2 */
	double host1_hit_rate, host2_hit_rate;
	double host2_us, nocache_us;     /* host 2's requests, summed */
	double nll_change, top1_agree;   /* host 2 against no cache */
	struct lb_stats bank2;           /* host 2's daemon at the end */
	uint32_t kind_n[3], kind_hits[3]; /* host 2's second-half requests by kind, and hits */
};

static int score(struct lbw_scorer *sc, const struct lbw_tokenizer *t, struct lbw_cache *wc,
		 const char *text, struct ans *a)
{
	char err[256];
	struct lbw_score r;
	int rc = lbw_score_text(sc, t, wc, text, sc->max_seq, 1, &r, a->top1, err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "layerbank-bench l2: %s\n", err);
		return rc;
	}
	a->hit = r.lem.hit_layer >= 0;
	a->nll = r.nll;
	a->us = r.us;
	a->predicted = r.predicted;
	return 0;
}

/* Part 2 on the running hosts: the stream w, its reference answers ref (no cache). */
static void fleet(struct lbw_scorer *sc, const struct lbw_tokenizer *t,
		  const struct lbw_workload *w, const struct ans *ref, struct ans *got, int first,
		  struct fleet_figs *f)
{
	struct lbw_cache wc[2];
	for (int h = 0; h < 2; h++) {
		struct lbw_cache_opts co = { .socket = g.sock[first + h] };
		if (lbw_cache_open(&wc[h], &co, sc, "layerbank-bench l2") < 0 || !wc[h].c)
			lbb_die(NAME, "opening a host's cache", EIO);
	}
	uint32_t half = w->n / 2, hits[2] = { 0, 0 }, n[2] = { 0, 0 };
	memset(f, 0, sizeof(*f));
	double nll = 0, nll_ref = 0, us = 0, us_ref = 0, agree = 0, preds = 0;
	for (uint32_t i = 0; i < w->n; i++) {
		int h = i < half ? 0 : (int)((i - half) % 2);
		if (score(sc, t, &wc[h], w->r[i].text, &got[i]) < 0)
			lbb_die(NAME, "scoring a request", EIO);
		if (i < half)
			continue;
		n[h]++;
		hits[h] += (uint32_t)got[i].hit;
		if (h == 1) {
			f->kind_n[w->r[i].kind]++;
			f->kind_hits[w->r[i].kind] += (uint32_t)got[i].hit;
			nll += got[i].nll;
			nll_ref += ref[i].nll;
			us += got[i].us;
			us_ref += ref[i].us;
			for (int32_t k = 0; k < ref[i].predicted; k++)
				agree += got[i].top1[k] == ref[i].top1[k];
			preds += ref[i].predicted;
		}
	}
	struct fleet_figs by_kind = *f;
	*f = (struct fleet_figs){ .n1 = n[0], .n2 = n[1],
				  .host1_hit_rate = n[0] ? (double)hits[0] / n[0] : 0,
				  .host2_hit_rate = n[1] ? (double)hits[1] / n[1] : 0,
				  .host2_us = us, .nocache_us = us_ref,
				  .nll_change = nll_ref > 0 ? (nll - nll_ref) / nll_ref : 0,
				  .top1_agree = preds > 0 ? agree / preds : 1 };
	memcpy(f->kind_n, by_kind.kind_n, sizeof(f->kind_n));
	memcpy(f->kind_hits, by_kind.kind_hits, sizeof(f->kind_hits));
	if (lb_stats(wc[1].c, &f->bank2, sizeof(f->bank2)) < 0)
		memset(&f->bank2, 0, sizeof(f->bank2));
	for (int h = 0; h < 2; h++)
		lbw_cache_close(&wc[h]);
}

/* One model's fleet: with the tier, without, and the speedup of host 2 against no cache. */
struct model_run {
	const char *name;
	struct fleet_figs tier, alone;
	double speedup, ratio; /* host 2's time against no cache; its hit rate against host 1's */
};

static void model_run(struct model_run *r, int bert, const char *data,
		      const struct lbw_tokenizer *t, const struct lbw_workload *w)
{
	char err[512], path[600];
	struct lbw_scorer sc;
	int rc;
	snprintf(path, sizeof(path), "%s/stories260K.bin", data);
	rc = bert ? lbw_scorer_open_bert(&sc, 512, 1, err, sizeof(err))
		  : lbw_scorer_open_llama(&sc, path, err, sizeof(err));
	if (rc < 0)
		lbb_die(NAME, err, -rc);
	struct ans *ref = calloc(w->n, sizeof(*ref)), *got = calloc(w->n, sizeof(*got));
	if (!ref || !got)
		lbb_die(NAME, "malloc", ENOMEM);
	for (uint32_t i = 0; i < w->n; i++) {
		ref[i].top1 = calloc((size_t)sc.max_seq, sizeof(int32_t));
		got[i].top1 = calloc((size_t)sc.max_seq, sizeof(int32_t));
		if (!ref[i].top1 || !got[i].top1)
			lbb_die(NAME, "malloc", ENOMEM);
	}
	struct lbw_cache none;
	struct lbw_cache_opts plain = { 0 };
	if (lbw_cache_open(&none, &plain, &sc, "layerbank-bench l2") < 0)
		lbb_die(NAME, "the uncached scorer", EIO);
	fprintf(stderr, "layerbank-bench l2: %s, %u requests without cache\n", r->name, w->n);
	for (uint32_t i = 0; i < w->n; i++)
		if (score(&sc, t, &none, w->r[i].text, &ref[i]) < 0)
			lbb_die(NAME, "scoring a request without cache", EIO);
	lbw_cache_close(&none);
	fprintf(stderr, "layerbank-bench l2: %s, two hosts with the tier\n", r->name);
	fleet(&sc, t, w, ref, got, 0, &r->tier);
	fprintf(stderr, "layerbank-bench l2: %s, two hosts without it\n", r->name);
	fleet(&sc, t, w, ref, got, 2, &r->alone);
	r->speedup = r->tier.host2_us > 0 ? r->tier.nocache_us / r->tier.host2_us : 0;
	r->ratio = r->tier.host1_hit_rate > 0 ? r->tier.host2_hit_rate / r->tier.host1_hit_rate : 0;
	for (uint32_t i = 0; i < w->n; i++) {
		free(ref[i].top1);
		free(got[i].top1);
	}
	free(ref);
	free(got);
	lbw_scorer_close(&sc);
}

static struct json_object *run_json(const struct model_run *r)
{
	struct json_object *j = json_object_new_object();
	json_object_object_add(j, "host1_hit_rate", lbb_json_num(r->tier.host1_hit_rate));
	json_object_object_add(j, "host2_hit_rate", lbb_json_num(r->tier.host2_hit_rate));
	json_object_object_add(j, "ratio_host2_vs_host1", lbb_json_num(r->ratio));
	json_object_object_add(j, "host1_hit_rate_no_tier", lbb_json_num(r->alone.host1_hit_rate));
	json_object_object_add(j, "host2_hit_rate_no_tier", lbb_json_num(r->alone.host2_hit_rate));
	json_object_object_add(j, "speedup_host2_vs_nocache", lbb_json_num(r->speedup));
	json_object_object_add(j, "host2_nll_change", lbb_json_num(r->tier.nll_change));
	json_object_object_add(j, "host2_top1_agreement", lbb_json_num(r->tier.top1_agree));
	json_object_object_add(j, "host2_fetched", json_object_new_int64((int64_t)r->tier.bank2.l2_fetched));
	json_object_object_add(j, "host2_fetch_misses",
			       json_object_new_int64((int64_t)r->tier.bank2.l2_fetch_misses));
	return j;
}

static void run_print(const struct model_run *r)
{
	const struct fleet_figs *f = &r->tier, *a = &r->alone;
	printf("  %s%s:\n", r->name, strcmp(r->name, "bert-base") ? "" : " (generated weights)");
	printf("    host 1 hit rate %.1f%% (%u requests), host 2 %.1f%% (%u): %.2fx host 1's; "
	       "without the tier host 1 %.1f%%, host 2 %.1f%%\n", f->host1_hit_rate * 100, f->n1,
	       f->host2_hit_rate * 100, f->n2, r->ratio, a->host1_hit_rate * 100,
	       a->host2_hit_rate * 100);
	printf("    host 2 against no cache: %.2fx the throughput, NLL change %+.3f%%, top-1 "
	       "agreement %.2f%%\n", r->speedup, f->nll_change * 100, f->top1_agree * 100);
	for (int k = 0; k < 3; k++)
		printf("    host 2 %-6s requests: %3u, hit %5.1f%% (without the tier %5.1f%%)\n",
		       lbw_req_kind_name((enum lbw_req_kind)k), f->kind_n[k],
		       f->kind_n[k] ? 100.0 * f->kind_hits[k] / f->kind_n[k] : 0,
		       a->kind_n[k] ? 100.0 * a->kind_hits[k] / a->kind_n[k] : 0);
	printf("    host 2's tier: %llu records fetched, %llu keys not in the cluster, %llu "
	       "rejected, %llu failed\n", (unsigned long long)f->bank2.l2_fetched,
	       (unsigned long long)f->bank2.l2_fetch_misses,
	       (unsigned long long)f->bank2.l2_rejected,
	       (unsigned long long)f->bank2.l2_fetch_errors);
}

static void usage(FILE *to)
{
	fprintf(to, "usage: layerbank-bench l2 [--json] [--entries N] [--requests N] [--seed S]\n"
		    "                          [--fleet stories260k|bert-base|both] [--data DIR]\n"
		    "  the second tier on a Redis Cluster of three masters on loopback, layerbankd\n"
		    "  for two hosts: a BERT-base entry's miss served from the cluster against a local\n"
		    "  hit and recomputing it (--entries, default 20), then a two-host fleet on the\n"
		    "  design's mix (--requests, default 400; --seed, default 1) of each model\n"
		    "  (stories260K, its tokenizer and text from --data, default ../shared/data)\n");
}

int bench_l2_main(int argc, char **argv)
{
	static const struct option opts[] = { { "json", no_argument, NULL, 'j' },
					      { "entries", required_argument, NULL, 'e' },
					      { "requests", required_argument, NULL, 'r' },
					      { "seed", required_argument, NULL, 's' },
					      { "fleet", required_argument, NULL, 'f' },
					      { "data", required_argument, NULL, 'd' },
					      { "help", no_argument, NULL, 'h' },
					      { NULL, 0, NULL, 0 } };
	struct lbw_workload_cfg wcfg = lbw_workload_defaults();
	int json = 0, entries = 20, opt, fleets = 3; /* bit 0 stories260K, bit 1 bert-base */
	const char *data = LB_DATA_DIR;
	char *end, err[512], path[600];
	while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		long v = 0;
		if (opt == 'e' || opt == 'r' || opt == 's') {
			errno = 0;
			v = strtol(optarg, &end, 10);
			if (errno || *end || v < (opt == 's' ? 0 : 1) ||
			    v > (opt == 'e' ? 1000 : opt == 'r' ? LBW_MAX_REQUESTS : LONG_MAX)) {
				fprintf(stderr, "layerbank-bench l2: bad --%s '%s'\n",
					opt == 'e' ? "entries" : opt == 'r' ? "requests" : "seed",
					optarg);
				return 2;
			}
		}
		if (opt == 'd') {
			data = optarg;
		} else if (opt == 'f') {
			fleets = !strcmp(optarg, "stories260k") ? 1 : !strcmp(optarg, "bert-base") ? 2
				 : !strcmp(optarg, "both") ? 3 : 0;
			if (!fleets) {
				fprintf(stderr, "layerbank-bench l2: --fleet is stories260k, bert-base "
						"or both, not '%s'\n", optarg);
				return 2;
			}
		} else if (opt == 'j')
			json = 1;
		else if (opt == 'e')
			entries = (int)v;
		else if (opt == 'r')
			wcfg.n_requests = (uint32_t)v;
		else if (opt == 's')
			wcfg.seed = (uint64_t)v;
		else {
			usage(opt == 'h' ? stdout : stderr);
			return opt == 'h' ? 0 : 2;
		}
	}
	if (optind < argc) {
		usage(stderr);
		return 2;
	}
	if (!lbu_redis_available()) {
		fprintf(stderr, "layerbank-bench l2: %s and %s are needed (Debian: redis-server, "
				"redis-tools)\n", LBU_REDIS_SERVER, LBU_REDIS_CLI);
		return 1;
	}
	lbb_tempdir(g.dir, sizeof(g.dir), NULL, NAME, cleanup);
	if (lbu_redis_start(&g.redis, g.dir, 3, true, 0, err, sizeof(err)) < 0)
		lbb_die(NAME, err, EIO);

	struct entry_figs ef;
	hosts_start();
	fprintf(stderr, "layerbank-bench l2: %d BERT-base entries through the cluster\n", entries);
	entry_figures(entries, &ef);

	struct lbw_tokenizer t;
	struct lbw_paragraphs para;
	struct lbw_workload w;
	int rc;
	snprintf(path, sizeof(path), "%s/tok512.bin", data);
	if ((rc = lbw_tokenizer_load(&t, path, 512, err, sizeof(err))) < 0)
		lbb_die(NAME, err, -rc);
	snprintf(path, sizeof(path), "%s/tinystories_val.txt", data);
	if ((rc = lbw_paragraphs_load(path, 100, 600, &para, err, sizeof(err))) < 0 ||
	    (rc = lbw_workload_make(&para, &wcfg, &w, err, sizeof(err))) < 0)
		lbb_die(NAME, err, -rc);
	struct model_run runs[2] = { { .name = "stories260K" }, { .name = "bert-base" } };
	for (int m = 0; m < 2; m++)
		if (fleets & (1 << m))
			model_run(&runs[m], m == 1, data, &t, &w);

	if (json) {
		struct json_object *j = json_object_new_object();
		json_object_object_add(j, "entries", json_object_new_int(ef.n));
		json_object_object_add(j, "l2_hit_us", lbb_json_num(ef.l2_hit_us));
		json_object_object_add(j, "l2_hit_p90_us", lbb_json_num(ef.l2_hit_p90_us));
		json_object_object_add(j, "l2_hit_busy_us", lbb_json_num(ef.l2_busy_us));
		json_object_object_add(j, "local_hit_us", lbb_json_num(ef.local_hit_us));
		json_object_object_add(j, "recompute_us", lbb_json_num(ef.recompute_us));
		json_object_object_add(j, "write_mib_s", lbb_json_num(ef.write_mb_s));
		json_object_object_add(j, "write_dropped", json_object_new_int64((int64_t)ef.dropped));
		json_object_object_add(j, "ratio_l2_hit_vs_recompute",
				       lbb_json_num(ef.l2_hit_us / ef.recompute_us));
		json_object_object_add(j, "requests", json_object_new_int((int)w.n));
		struct json_object *fl = json_object_new_object();
		for (int m = 0; m < 2; m++)
			if (fleets & (1 << m))
				json_object_object_add(fl, runs[m].name, run_json(&runs[m]));
		json_object_object_add(j, "fleet", fl);
		/* the names at the top: bert-base's (whose lookups wait for the tier), else
		 * stories260K's */
		const struct model_run *r = &runs[fleets & 2 ? 1 : 0];
		json_object_object_add(j, "host1_hit_rate", lbb_json_num(r->tier.host1_hit_rate));
		json_object_object_add(j, "host2_hit_rate", lbb_json_num(r->tier.host2_hit_rate));
		json_object_object_add(j, "speedup_host2_vs_nocache", lbb_json_num(r->speedup));
		printf("%s\n", json_object_to_json_string_ext(j, JSON_C_TO_STRING_PLAIN));
		json_object_put(j);
	} else {
		printf("l2: a Redis Cluster of 3 masters on loopback, layerbankd as two hosts\n");
		printf("  BERT-base entry (layer 11 of 12, %d x %d f32), medians of %d:\n", BERT_TOKENS,
		       BERT_HIDDEN, ef.n);
		printf("    host 2 miss served from the cluster  %9.1f us (p90 %.1f), %.1f us behind "
		       "the last entry's lower layers\n", ef.l2_hit_us, ef.l2_hit_p90_us,
		       ef.l2_busy_us);
		printf("    local hit                            %9.1f us\n", ef.local_hit_us);
		printf("    recompute (12 layers, one thread)    %9.1f us\n", ef.recompute_us);
		printf("    tier hit / recompute                 %9.2f%%\n",
		       ef.l2_hit_us / ef.recompute_us * 100);
		printf("    host 1's tier writing behind         %9.1f MiB/s of entries (%llu dropped)\n",
		       ef.write_mb_s, (unsigned long long)ef.dropped);
		printf("  two hosts, %u requests of the design's mix (seed %llu): the first half on "
		       "host 1, then alternating\n", w.n, (unsigned long long)wcfg.seed);
		for (int m = 0; m < 2; m++)
			if (fleets & (1 << m))
				run_print(&runs[m]);
	}
	lbw_workload_free(&w);
	lbw_paragraphs_free(&para);
	lbw_tokenizer_free(&t);
	return 0;
}
