/*
 * layerbank-bench e2e: a fleet of `layerbank-worker serve` processes scores one request stream
 * three ways — no cache, a private in-process bank each, layerbankd's shared bank — and a
 * fourth, the plain peer a user without layerbank would pick: one Redis server holding exact
 * inputs' last-layer outputs (serve --redis) — and reports
 * throughput, latency, reuse per layer and fidelity against the uncached run, in all and by
 * kind of request: of next-token predictions for causal models, of masked tokens for
 * bidirectional encoders (the workers mask every request the same way in every mode, mlm.h).
 */
#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adapt.h"
#include "bench.h"
#include "cache.h"
#include "layerbank/layerbank.h"
#include "mlm.h"
#include "plot.h"
#include "redis_proc.h"
#include "safetensors.h"
#include "size.h"
#include "workload.h"

#define MAX_WORKERS LBB_FLEET_MAX_WORKERS
#define MAX_LAYERS LBB_FLEET_MAX_LAYERS

enum model { M_STORIES, M_BERT_BASE, M_FILE };

/* --shadow's default drift target: layerbankd's default --drift-max, past which a REPORTed
 * drift invalidates an entry. */
#define DRIFT_TARGET 0.05
/* --adaptive's default share of reuses the caching workers check against the plain forward. */
#define REVALIDATE "0.1"

struct opts {
	enum model model;       /* --model stories260k, bert-base or a safetensors FILE */
	const char *file;       /* M_FILE: its path */
	char name[128];         /* what the report calls the model */
	int masked;             /* a bidirectional encoder: fidelity of masked tokens */
	int positions;          /* M_FILE: its position table's rows */
	int workers;
	struct lbw_workload_cfg wl;
	uint64_t budget;        /* the shared bank's bytes; private banks get budget / workers */
	int max_tokens;
	const char *tau;        /* NULL: the bank's default */
	int modes;              /* bit per enum lbb_mode */
	const char *redis_skipped; /* why the redis mode did not run, or NULL */
	int tau_sweep, json, quiet;
	int no_sflight;         /* the cached modes' workers without single-flight */
	const char *recompute;  /* the cached modes' workers' --recompute; NULL: their default */
	const char *spin_us;    /* layerbankd's --spin-us; NULL: its default */
	int shadow;             /* --shadow: every reuse checked against the plain computation */
	const char *fp_chunks;  /* the caching workers' --fp-chunks; NULL: their default, 4 */
	double drift_target;    /* a reuse drifting past it is a false hit (--drift-target) */
	int adaptive;           /* --adaptive: the shared bank's thresholds adapt to drift_target */
	const char *revalidate; /* the caching workers' --revalidate under --adaptive */
	const char *plot;
	char data[512];
	uint32_t min_chars, max_chars;
};

/* One request's answer. */
struct answer {
	int ok;
	int tokens;
	int predicted;          /* predictions scored: next tokens, or masked ones */
	double nll;
	int hit;                /* deepest reused layer, -1: none */
	unsigned computed;      /* layers the worker's forward pass ran */
	double lat_ms;          /* send to answer, seen by the dispatcher */
	int32_t *top1;          /* [predicted] */
	unsigned sflight;       /* LB_LEM_* bits */
	unsigned waited_us;     /* its lookup waited for another worker's claim */
	double cstart_us, cend_us; /* when its layers ran (CLOCK_MONOTONIC); 0, 0: none */
	double reused;          /* share of the work it did not compute, 0..1 (on_answer) */
	int shadowed;           /* --shadow's figures came with it: */
	double drift;           /* the largest drift of a last-layer state from the plain one */
	int changed;            /* predictions whose top-1 the reuse changed */
};

/* --shadow: reuses (requests that reused anything) and false hits among them. */
struct shadow_count {
	uint32_t hits, false_hits;
};

/*
 * The kinds of request by_kind reports, in its order: exact repeats, fresh texts, then the
 * near-duplicates of each mutation (KIND_NEAR + mut - 1, WORD_SWAP first).
 */
enum { KIND_EXACT, KIND_FRESH, KIND_NEAR, N_KINDS = KIND_NEAR + LBW_MUT_COUNT - 1 };
#define KIND_ALL (-1) /* every request: the run's own figures */

/* What the requests of one kind saw in a run. */
struct kind_stats {
	uint32_t requests;      /* of the kind in the stream */
	double hit_rate;        /* share of its answered requests with any reuse; NAN: none */
	double reused;          /* their mean answer.reused; NAN: none answered */
	double nll_rel, top1;   /* fidelity_of over them; NAN: no nocache run, or none */
};

struct run {
	enum lbb_mode mode;
	const char *tau;
	int layers;             /* the model's, as its workers said when ready */
	struct answer *a;       /* [requests] */
	double wall_s, rps, p50_ms, p99_ms;
	double hit_by_layer[MAX_LAYERS]; /* share of requests that reused layer l's output */
	double hit_rate;        /* share of requests with any reuse */
	double mean_depth;      /* layers reused per request */
	uint64_t computed;      /* layers run by the workers' forward passes, all answers */
	uint64_t predicted;     /* predictions scored, all answers */
	double nll_per_token;   /* per prediction */
	double nll_rel, top1;   /* against nocache; NAN when there is none */
	unsigned errors;
	uint32_t duplicates;    /* duplicate_computes (count_duplicates) */
	uint32_t sf_waited;     /* requests whose lookup waited for another worker's claim */
	uint32_t sf_busy;       /* requests computed alongside a claimant (the wait ran out) */
	double sf_wait_ms;      /* the mean wait of those that waited */
	struct kind_stats by_kind[N_KINDS];
	int have_tau;           /* tau_by_layer was read */
	double tau_by_layer[MAX_LAYERS]; /* the thresholds in force at the run's end */
	int shadow;             /* the caching workers ran with --shadow */
	double drift_target;
	struct shadow_count sh, sh_layer[MAX_LAYERS], sh_kind[N_KINDS]; /* by hit layer, kind */
	int adaptive;           /* the daemon adapted its thresholds (--adaptive) */
	/* What its controllers were fed by half of the stream, and by its end. */
	struct lb_layer_tau ctl_half[MAX_LAYERS], ctl_end[MAX_LAYERS];
};

/* r's kind (KIND_*); a NEAR request's mut is a mutation, never NONE (lbw_workload_make). */
static int kind_of(const struct lbw_request *r)
{
	if (r->kind == LBW_REQ_EXACT)
		return KIND_EXACT;
	if (r->kind == LBW_REQ_FRESH)
		return KIND_FRESH;
	return KIND_NEAR + (int)r->mut - 1;
}

/* by_kind's key of kind k: "exact", "fresh", then lbw_mutation_name's ("word_swap", ...). */
static const char *kind_name(int k)
{
	if (k == KIND_EXACT)
		return lbw_req_kind_name(LBW_REQ_EXACT);
	if (k == KIND_FRESH)
		return lbw_req_kind_name(LBW_REQ_FRESH);
	return lbw_mutation_name((enum lbw_mutation)(k - KIND_NEAR + 1));
}

/*
 * Take serve's optional field reused=F (the share of layer-rows the request did not compute,
 * 0..1) out of answer ans, wherever it stands, so that the other fields parse alike with and
 * without it. @return 1 and *reused; 0 absent; -EPROTO malformed, out of range or repeated.
 */
static int take_reused(char *ans, double *reused)
{
	char *f = strstr(ans, " reused="), *e;
	if (!f)
		return 0;
	errno = 0;
	*reused = strtod(f + 8, &e);
	if (errno || e == f + 8 || (*e != ' ' && *e != '\0') || !(*reused >= 0 && *reused <= 1))
		return -EPROTO;
	memmove(f, e, strlen(e) + 1);
	return strstr(ans, " reused=") ? -EPROTO : 1;
}

/* Request id answered with an error (what: the worker's " err ..." or ours): counted, the first
 * three shown; the run goes on. @return 0. */
static int error_answer(struct run *run, uint64_t id, const char *what)
{
	run->a[id].ok = 0;
	run->a[id].hit = -1;
	run->errors++;
	if (run->errors <= 3)
		fprintf(stderr, "layerbank-bench e2e: request %llu:%.160s\n",
			(unsigned long long)id, what);
	return 0;
}

/* lbb_answer_fn: "ok tokens=N nll=S hit=H hamming=D computed=C inserted=I us=T sflight=F
 * waited=W compute=A-B ... predicted=P top1=a,b,..." (and maybe reused=F: take_reused) or
 * "err ..." after the id. Without reused=, the share of the work reused is 1 - computed /
 * layers. */
static int on_answer(void *ctx, int w, uint64_t id, char *end, double lat_ms)
{
	struct run *run = ctx;
	struct answer *a = &run->a[id];
	(void)w;
	a->lat_ms = lat_ms;
	if (strncmp(end, " ok ", 4) != 0)
		return error_answer(run, id, end);
	int has_reused = take_reused(end, &a->reused);
	if (has_reused < 0)
		return error_answer(run, id, " ok, but with a malformed reused= (one, in 0..1)");
	unsigned inserted, hamming;
	double us;
	int used = 0;
	int got = sscanf(end, " ok tokens=%d nll=%lf hit=%d hamming=%u computed=%u inserted=%u "
			 "us=%lf sflight=%u waited=%u compute=%lf-%lf%n", &a->tokens, &a->nll,
			 &a->hit, &hamming, &a->computed, &inserted, &us, &a->sflight,
			 &a->waited_us, &a->cstart_us, &a->cend_us, &used);
	/* predicted= and top1= come last; fields between them and compute= are skipped */
	const char *pred = got == 11 && used ? strstr(end + used, " predicted=") : NULL;
	int pused = 0;
	if (pred && (sscanf(pred, " predicted=%d%n", &a->predicted, &pused) != 1 || !pused))
		pred = NULL;
	const char *list = pred ? strstr(pred + pused, " top1=") : NULL;
	const char *sh = pred ? strstr(end + used, " shadow_drift=") : NULL;
	a->shadowed = sh && sh < pred &&
		      sscanf(sh, " shadow_drift=%lf shadow_changed=%d", &a->drift, &a->changed) == 2 &&
		      a->drift >= 0 && a->drift <= 2 && a->changed >= 0;
	if (!list || a->tokens < 2 || a->tokens > 1 << 20 || a->predicted < 1 ||
	    a->predicted >= a->tokens) {
		fprintf(stderr, "layerbank-bench e2e: bad answer '%llu%.120s'\n",
			(unsigned long long)id, end);
		return -EPROTO;
	}
	if (a->computed > (unsigned)run->layers)
		return error_answer(run, id, " ok, but computed= passes the model's layers");
	if (!has_reused)
		a->reused = 1.0 - (double)a->computed / run->layers;
	a->top1 = malloc((size_t)a->predicted * sizeof(int32_t));
	if (!a->top1)
		return -ENOMEM;
	const char *p = list + 6;
	for (int i = 0; i < a->predicted; i++) {
		char *e;
		long v = strtol(p, &e, 10);
		if (e == p || (*e != ',' && *e != '\0')) {
			fprintf(stderr, "layerbank-bench e2e: bad top1 list in answer %llu\n",
				(unsigned long long)id);
			return -EPROTO;
		}
		a->top1[i] = (int32_t)v;
		p = *e ? e + 1 : e;
	}
	a->ok = 1;
	return 0;
}

/* ---- progress ---- */

/* reused[l]: answers (of the first n) that reused layer l's output, directly or a deeper one's;
 * a request not answered, or answered with an error, has hit -1. */
static void count_reuse(const struct run *run, uint32_t n, int layers, long *reused)
{
	memset(reused, 0, (size_t)layers * sizeof(*reused));
	for (uint32_t i = 0; i < n; i++)
		for (int l = 0; l <= run->a[i].hit && l < layers; l++)
			reused[l]++;
}

static void progress(const struct opts *o, const struct run *run, long done, long total, double t0,
		     int layers, int final)
{
	if (o->quiet)
		return;
	int tty = isatty(2);
	static double last;
	double t = lbb_now_s();
	if (!final && t - last < (tty ? 0.5 : 5.0))
		return;
	last = t;
	long reused[MAX_LAYERS];
	count_reuse(run, (uint32_t)total, layers, reused);
	char bar[MAX_LAYERS * 4 + 1];
	int len = 0;
	for (int l = 0; l < layers; l++)
		len += snprintf(bar + len, sizeof(bar) - (size_t)len, "%s%ld", l ? " " : "",
				done ? reused[l] * 100 / done : 0);
	fprintf(stderr, "%s  %-7s %5ld/%-5ld %7.1f req/s  reused %% by layer: %s%s",
		tty ? "\r\033[K" : "", lbb_mode_name[run->mode], done, total,
		t > t0 ? (double)done / (t - t0) : 0.0, bar, tty && !final ? "" : "\n");
}

/* ---- one run of the fleet ---- */

/* A request that computed layers: its input and when. */
struct computing {
	const char *text;
	double start, end;
};

static int cmp_computing(const void *pa, const void *pb)
{
	const struct computing *a = pa, *b = pb;
	int c = strcmp(a->text, b->text);
	return c ? c : (a->start > b->start) - (a->start < b->start);
}

/*
 * duplicate_computes: the requests that computed a layer of their input while another request
 * of the same input (the same text), which had started computing before, was computing it on
 * another worker — the work single-flight exists to save, counted from the workers' own times
 * (CLOCK_MONOTONIC, one host) the same way in every mode: in nocache and private it is what
 * single-flight would have avoided, in shared what it did not. A request that waited and then
 * reused its input's layers computed nothing and is no duplicate.
 */
static uint32_t count_duplicates(const struct run *run, const struct lbw_workload *wl)
{
	struct computing *c = malloc(wl->n * sizeof(*c));
	uint32_t n = 0, dup = 0;
	if (!c)
		return UINT32_MAX;
	for (uint32_t i = 0; i < wl->n; i++)
		if (run->a[i].ok && run->a[i].computed)
			c[n++] = (struct computing){ wl->r[i].text, run->a[i].cstart_us,
						     run->a[i].cend_us };
	qsort(c, n, sizeof(*c), cmp_computing);
	double end = 0; /* of the earlier computations of the input */
	for (uint32_t i = 0; i < n; i++) {
		if (i == 0 || strcmp(c[i].text, c[i - 1].text))
			end = 0;
		dup += c[i].start < end;
		end = c[i].end > end ? c[i].end : end;
	}
	free(c);
	return dup;
}

/* run->by_kind's requests, hit rates and reuse; their fidelity is fidelity()'s. */
static void summarise_kinds(struct run *run, const struct lbw_workload *wl)
{
	uint32_t answered[N_KINDS] = { 0 }, hits[N_KINDS] = { 0 };
	double reused[N_KINDS] = { 0 };
	for (uint32_t i = 0; i < wl->n; i++) {
		const struct answer *a = &run->a[i];
		int k = kind_of(&wl->r[i]);
		run->by_kind[k].requests++;
		if (!a->ok)
			continue;
		answered[k]++;
		hits[k] += a->hit >= 0;
		reused[k] += a->reused;
	}
	for (int k = 0; k < N_KINDS; k++) {
		struct kind_stats *s = &run->by_kind[k];
		s->hit_rate = answered[k] ? (double)hits[k] / answered[k] : NAN;
		s->reused = answered[k] ? reused[k] / answered[k] : NAN;
		s->nll_rel = s->top1 = NAN;
	}
}

/* --shadow's counts: every request that reused anything, and those whose reuse changed a top-1
 * prediction or drifted past the target, in all, by hit layer and by kind. A reuse the worker
 * sent no shadow figures for is an error of the run. */
static void summarise_shadow(struct run *run, const struct lbw_workload *wl)
{
	for (uint32_t i = 0; run->shadow && i < wl->n; i++) {
		const struct answer *a = &run->a[i];
		if (!a->ok || a->hit < 0)
			continue;
		if (!a->shadowed) {
			run->errors++;
			continue;
		}
		int bad = a->changed > 0 || a->drift > run->drift_target, k = kind_of(&wl->r[i]);
		struct shadow_count *c[3] = { &run->sh, &run->sh_layer[a->hit], &run->sh_kind[k] };
		for (int j = 0; j < 3; j++) {
			c[j]->hits++;
			c[j]->false_hits += (uint32_t)bad;
		}
	}
}

/* Throughput, latency and reuse of a finished run. */
static void summarise(struct run *run, const struct lbw_workload *wl, int layers)
{
	double *lat = malloc(wl->n * sizeof(double));
	size_t n = 0;
	double nll = 0, pred = 0, depth = 0, wait_ms = 0;
	uint64_t computed = 0;
	long reused[MAX_LAYERS];
	for (uint32_t i = 0; i < wl->n; i++) {
		const struct answer *a = &run->a[i];
		if (!a->ok)
			continue;
		if (lat)
			lat[n] = a->lat_ms;
		n++;
		nll += a->nll;
		pred += a->predicted;
		depth += a->hit + 1;
		computed += a->computed;
		if (a->sflight & LB_LEM_WAITED) {
			run->sf_waited++;
			wait_ms += a->waited_us / 1e3;
		}
		run->sf_busy += !!(a->sflight & LB_LEM_BUSY);
	}
	run->sf_wait_ms = run->sf_waited ? wait_ms / run->sf_waited : 0;
	run->duplicates = count_duplicates(run, wl);
	count_reuse(run, wl->n, layers, reused);
	if (lat)
		qsort(lat, n, sizeof(double), lbb_cmp_double);
	run->p50_ms = lat ? lbb_pct(lat, n, 0.50) : NAN;
	run->p99_ms = lat ? lbb_pct(lat, n, 0.99) : NAN;
	free(lat);
	run->rps = run->wall_s > 0 ? (double)wl->n / run->wall_s : 0;
	run->predicted = (uint64_t)pred;
	run->nll_per_token = pred ? nll / pred : NAN;
	run->mean_depth = n ? depth / (double)n : 0;
	run->computed = computed;
	run->hit_rate = n ? (double)reused[0] / (double)n : 0; /* any reuse reuses layer 0 */
	for (int l = 0; l < layers; l++)
		run->hit_by_layer[l] = n ? (double)reused[l] / (double)n : 0;
	run->nll_rel = run->top1 = NAN;
	summarise_kinds(run, wl);
	summarise_shadow(run, wl);
}

/*
 * Fidelity of run against the uncached answers base over the requests of kind (KIND_ALL:
 * all), those answered in both with as many tokens and predictions (the same positions of
 * the same input: masked encoders mask a request alike in every run): *nll_rel the relative
 * change of their summed NLL, *top1 the share of predictions whose argmax is base's. NAN: no
 * such request.
 */
static void fidelity_of(const struct run *run, const struct run *base,
			const struct lbw_workload *wl, int kind, double *nll_rel, double *top1)
{
	double nll = 0, nll0 = 0, same = 0, total = 0;
	for (uint32_t i = 0; i < wl->n; i++) {
		const struct answer *a = &run->a[i], *b = &base->a[i];
		if (!a->ok || !b->ok || a->tokens != b->tokens || a->predicted != b->predicted ||
		    (kind != KIND_ALL && kind_of(&wl->r[i]) != kind))
			continue;
		nll += a->nll;
		nll0 += b->nll;
		for (int k = 0; k < a->predicted; k++)
			same += a->top1[k] == b->top1[k];
		total += a->predicted;
	}
	*nll_rel = nll0 > 0 ? nll / nll0 - 1.0 : NAN;
	*top1 = total > 0 ? same / total : NAN;
}

/* Fidelity of run against the uncached answers base: over all its requests and by kind. */
static void fidelity(struct run *run, const struct run *base, const struct lbw_workload *wl)
{
	fidelity_of(run, base, wl, KIND_ALL, &run->nll_rel, &run->top1);
	for (int k = 0; k < N_KINDS; k++)
		fidelity_of(run, base, wl, k, &run->by_kind[k].nll_rel, &run->by_kind[k].top1);
}

/* Send the next requests of wl to the idle workers. @return 0, -errno. */
static int dispatch(const struct lbw_workload *wl, uint32_t *next)
{
	int w;
	while (*next < wl->n && (w = lbb_fleet_idle()) >= 0) {
		const struct lbw_request *r = &wl->r[(*next)++];
		int rc = lbb_fleet_send(w, r->id, r->text, strlen(r->text));
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* The daemon's per-layer thresholds and controllers (the fleet's one model, id 1) into out;
 * zeros when it cannot be asked. @return 0, or -1 then. */
static int read_controllers(struct lb_layer_tau *out, int layers)
{
	struct lb_client *c = NULL;
	int rc = -1;
	memset(out, 0, sizeof(*out) * (size_t)layers);
	if (lb_connect(lbb_fleet_socket(), "layerbank-bench e2e", &c) < 0)
		return -1;
	if (lb_model_taus(c, 1, out, (uint32_t)layers) == layers)
		rc = 0;
	else
		memset(out, 0, sizeof(*out) * (size_t)layers);
	lb_close(c);
	return rc;
}

/*
 * The thresholds in force at the end of a shared run, per layer, into run->tau_by_layer: the
 * workers' --tau when they had one (their lookups bring it), else the daemon's (its tau, a
 * layer's own, or its controller's). Nothing when the daemon cannot be asked.
 */
static void read_taus(struct run *run, const char *tau, int layers)
{
	struct lb_layer_tau t[MAX_LAYERS];
	if (tau) {
		for (int l = 0; l < layers; l++)
			run->tau_by_layer[l] = atof(tau);
		run->have_tau = 1;
		return;
	}
	if (read_controllers(t, layers) < 0)
		return;
	for (int l = 0; l < layers; l++)
		run->tau_by_layer[l] = t[l].tau;
	run->have_tau = 1;
}

static int run_fleet(const struct opts *o, enum lbb_mode m, const char *tau,
		     const struct lbw_workload *wl, int *layers, struct run *run)
{
	char model[600], tok[600];
	snprintf(tok, sizeof(tok), "%s/tok512.bin", o->data);
	if (o->model == M_BERT_BASE)
		snprintf(model, sizeof(model), "bert-base");
	else if (o->model == M_FILE)
		snprintf(model, sizeof(model), "%s", o->file);
	else
		snprintf(model, sizeof(model), "%s/stories260K.bin", o->data);
	struct lbb_fleet_cfg cfg = { .model = model, .tokenizer = tok, .max_tokens = o->max_tokens,
				     .workers = o->workers, .budget = o->budget, .tau = tau,
				     .no_sflight = o->no_sflight, .recompute = o->recompute,
				     .spin_us = o->spin_us, .shadow = o->shadow,
				     .fp_chunks = o->fp_chunks };
	/* --adaptive: the shared run at the drift target, its workers revalidating; a fixed
	 * tau (the sweep's) is the comparison, never adapted. */
	char target[32];
	snprintf(target, sizeof(target), "%.17g", o->drift_target);
	if (o->adaptive && m == LBB_SHARED && !tau) {
		cfg.drift_target = target;
		cfg.revalidate = o->revalidate;
	}
	memset(run, 0, sizeof(*run));
	run->mode = m;
	run->shadow = o->shadow && m != LBB_NOCACHE;
	run->drift_target = o->drift_target;
	run->adaptive = cfg.drift_target != NULL;
	run->tau = tau;
	run->a = calloc(wl->n, sizeof(*run->a));
	if (!run->a)
		return -ENOMEM;
	for (uint32_t i = 0; i < wl->n; i++)
		run->a[i].hit = -1;
	int rc = lbb_fleet_start(&cfg, m, layers);
	run->layers = *layers;
	double t0 = lbb_now_s();
	uint32_t next = 0, done = 0;
	while (rc == 0 && done < wl->n) {
		rc = dispatch(wl, &next);
		int got = rc < 0 ? rc : lbb_fleet_collect(on_answer, run);
		rc = got < 0 ? got : 0;
		uint32_t before = done;
		done += got > 0 ? (uint32_t)got : 0;
		if (rc == 0 && run->adaptive && before < wl->n / 2 && done >= wl->n / 2)
			read_controllers(run->ctl_half, *layers);
		if (rc == 0)
			progress(o, run, done, wl->n, t0, *layers, 0);
	}
	if (rc == 0) {
		run->wall_s = lbb_now_s() - t0;
		progress(o, run, done, wl->n, t0, *layers, 1);
		if (m == LBB_SHARED)
			read_taus(run, tau, *layers);
		if (run->adaptive)
			read_controllers(run->ctl_end, *layers);
	}
	lbb_fleet_stop();
	return rc;
}

static void free_run(struct run *run, uint32_t n)
{
	for (uint32_t i = 0; run->a && i < n; i++)
		free(run->a[i].top1);
	free(run->a);
	run->a = NULL;
}

/* ---- reporting ---- */

/* by_kind: an object per kind, in KIND_* order. */
static json_object *kinds_json(const struct run *r)
{
	json_object *o = json_object_new_object();
	for (int k = 0; k < N_KINDS; k++) {
		const struct kind_stats *s = &r->by_kind[k];
		json_object *e = json_object_new_object();
		json_object_object_add(e, "requests", json_object_new_int64(s->requests));
		json_object_object_add(e, "hit_rate", lbb_json_num(s->hit_rate));
		json_object_object_add(e, "reused", lbb_json_num(s->reused));
		json_object_object_add(e, "nll_rel_change", lbb_json_num(s->nll_rel));
		json_object_object_add(e, "top1_agreement", lbb_json_num(s->top1));
		json_object_object_add(o, kind_name(k), e);
	}
	return o;
}

static json_object *rate_json(const struct shadow_count *c)
{
	return lbb_json_num(c->hits ? (double)c->false_hits / c->hits : NAN);
}

/* false_hit_rate (--shadow): false hits among the reuses, in all, by hit layer and by kind. */
static json_object *shadow_json(const struct run *r, int layers)
{
	json_object *o = json_object_new_object(), *l = json_object_new_array();
	json_object *k = json_object_new_object();
	json_object_object_add(o, "drift_target", lbb_json_num(r->drift_target));
	json_object_object_add(o, "hits", json_object_new_int64(r->sh.hits));
	json_object_object_add(o, "false_hits", json_object_new_int64(r->sh.false_hits));
	json_object_object_add(o, "rate", rate_json(&r->sh));
	for (int i = 0; i < layers; i++)
		json_object_array_add(l, rate_json(&r->sh_layer[i]));
	for (int i = 0; i < N_KINDS; i++)
		json_object_object_add(k, kind_name(i), rate_json(&r->sh_kind[i]));
	json_object_object_add(o, "by_layer", l);
	json_object_object_add(o, "by_kind", k);
	return o;
}

/* The mean drift the controllers of layers saw between two readings (all layers together; a
 * NULL: from the start); *reports gets how many reports that is. NAN: none. */
static double drift_between(const struct lb_layer_tau *a, const struct lb_layer_tau *b, int layers,
			    uint64_t *reports)
{
	double sum = 0;
	*reports = 0;
	for (int l = 0; l < layers; l++) {
		*reports += b[l].reports - (a ? a[l].reports : 0);
		sum += b[l].drift_sum - (a ? a[l].drift_sum : 0);
	}
	return *reports ? sum / (double)*reports : NAN;
}

/* How far from its target a layer's controller held the second half's mean drift (the
 * issue's band: 20%). A controller whose radius ends at a bound cannot move the drift any
 * further that way: at the loosest with the drift below the target, or at the tightest above
 * it, it does all it can, and says so. */
#define HOLD_BAND 0.2

static const char *holds(const struct lb_layer_tau *half, const struct lb_layer_tau *end,
			 double target)
{
	uint64_t n;
	double d = drift_between(half, end, 1, &n);
	if (!n || !(target > 0))
		return "unfed";
	if (fabs(d / target - 1) <= HOLD_BAND)
		return "within";
	if (d < target && end->max_hamming >= (uint32_t)LBD_ADAPT_MAX_RADIUS)
		return "below_at_loosest";
	if (d > target && end->max_hamming == 0)
		return "above_at_tightest";
	return "outside";
}

/* adaptive (--adaptive): each layer's threshold at the end, and what its controller was fed,
 * in all and in the second half of the stream (after it converged). */
static json_object *adaptive_json(const struct run *r, const struct opts *o, int layers)
{
	json_object *a = json_object_new_object(), *arr = json_object_new_array();
	uint64_t n;
	json_object_object_add(a, "drift_target", lbb_json_num(r->drift_target));
	json_object_object_add(a, "revalidate", json_object_new_double(atof(o->revalidate)));
	for (int l = 0; l < layers; l++) {
		const struct lb_layer_tau *h = &r->ctl_half[l], *e = &r->ctl_end[l];
		json_object *x = json_object_new_object();
		json_object_object_add(x, "tau", lbb_json_num(e->tau));
		json_object_object_add(x, "max_hamming", json_object_new_int((int)e->max_hamming));
		json_object_object_add(x, "reports", json_object_new_int64((int64_t)e->reports));
		json_object_object_add(x, "reports_over", json_object_new_int64((int64_t)e->reports_over));
		json_object_object_add(x, "drift_mean", lbb_json_num(drift_between(NULL, e, 1, &n)));
		json_object_object_add(x, "drift_mean_second_half",
				       lbb_json_num(drift_between(h, e, 1, &n)));
		json_object_object_add(x, "reports_second_half", json_object_new_int64((int64_t)n));
		json_object_object_add(x, "holds",
				       json_object_new_string(holds(h, e, r->drift_target)));
		json_object_array_add(arr, x);
	}
	json_object_object_add(a, "layers", arr);
	json_object_object_add(a, "drift_mean_second_half",
			       lbb_json_num(drift_between(r->ctl_half, r->ctl_end, layers, &n)));
	json_object_object_add(a, "reports_second_half", json_object_new_int64((int64_t)n));
	return a;
}

static json_object *run_json(const struct run *r, int layers)
{
	json_object *o = json_object_new_object(), *h = json_object_new_array();
	for (int l = 0; l < layers; l++)
		json_object_array_add(h, json_object_new_double(r->hit_by_layer[l]));
	json_object_object_add(o, "rps", lbb_json_num(r->rps));
	json_object_object_add(o, "p50_ms", lbb_json_num(r->p50_ms));
	json_object_object_add(o, "p99_ms", lbb_json_num(r->p99_ms));
	json_object_object_add(o, "hit_rate_by_layer", h);
	json_object_object_add(o, "hit_rate", lbb_json_num(r->hit_rate));
	json_object_object_add(o, "mean_reused_depth", lbb_json_num(r->mean_depth));
	json_object_object_add(o, "layers_computed", json_object_new_int64((int64_t)r->computed));
	json_object_object_add(o, "predicted", json_object_new_int64((int64_t)r->predicted));
	json_object_object_add(o, "nll_per_token", lbb_json_num(r->nll_per_token));
	json_object_object_add(o, "nll_rel_change", lbb_json_num(r->nll_rel));
	json_object_object_add(o, "top1_agreement", lbb_json_num(r->top1));
	json_object_object_add(o, "errors", json_object_new_int((int)r->errors));
	json_object_object_add(o, "wall_s", lbb_json_num(r->wall_s));
	json_object_object_add(o, "duplicate_computes", json_object_new_int64(r->duplicates));
	json_object_object_add(o, "sflight_waited", json_object_new_int64(r->sf_waited));
	json_object_object_add(o, "sflight_busy", json_object_new_int64(r->sf_busy));
	json_object_object_add(o, "sflight_wait_ms_mean", lbb_json_num(r->sf_wait_ms));
	if (r->mode != LBB_NOCACHE)
		json_object_object_add(o, "by_kind", kinds_json(r));
	if (r->shadow)
		json_object_object_add(o, "false_hit_rate", shadow_json(r, layers));
	if (r->have_tau) {
		json_object *t = json_object_new_array();
		for (int l = 0; l < layers; l++)
			json_object_array_add(t, lbb_json_num(r->tau_by_layer[l]));
		json_object_object_add(o, "tau_by_layer", t);
	}
	return o;
}

#define N_TAU 7
static const char *const tau_values[N_TAU] = { "0.70", "0.75", "0.80", "0.85", "0.90", "0.95",
					       "0.98" };

static void print_modes(const struct run *runs, int have, int layers)
{
	printf("  %-8s %9s %9s %9s %8s %10s %12s %10s %6s %6s\n", "mode", "req/s", "p50 ms", "p99 ms",
	       "reuse", "depth", "nll change", "top-1", "errors", "dup");
	for (int m = 0; m < LBB_N_ALL_MODES; m++) {
		if (!(have & 1 << m))
			continue;
		const struct run *r = &runs[m];
		printf("  %-8s %9.2f %9.2f %9.2f %7.1f%% %7.2f/%-2d %+11.4f%% %9.3f%% %6u %6u\n",
		       lbb_mode_name[m], r->rps, r->p50_ms, r->p99_ms, r->hit_rate * 100,
		       r->mean_depth, layers, isfinite(r->nll_rel) ? r->nll_rel * 100 : 0.0,
		       isfinite(r->top1) ? r->top1 * 100 : 100.0, r->errors, r->duplicates);
	}
	if (have & 1 << LBB_SHARED)
		printf("  shared single-flight: %u requests waited (%.2f ms on average), %u computed "
		       "alongside a claimant\n", runs[LBB_SHARED].sf_waited,
		       runs[LBB_SHARED].sf_wait_ms, runs[LBB_SHARED].sf_busy);
	for (int m = LBB_PRIVATE; m < LBB_N_ALL_MODES; m++) {
		if (!(have & 1 << m))
			continue;
		printf("  %-8s reused %% by layer:", lbb_mode_name[m]);
		for (int l = 0; l < layers; l++)
			printf(" %.0f", runs[m].hit_by_layer[l] * 100);
		printf("\n");
	}
}

/* A cell of the by-kind table: v x 100 with prec decimals (and its sign when sign is set) and a
 * %, right in width columns; "-" for NAN. */
static void print_pct(double v, int prec, int sign, int width)
{
	char s[32];
	if (isfinite(v))
		snprintf(s, sizeof(s), sign ? "%+.*f%%" : "%.*f%%", prec, v * 100);
	else
		snprintf(s, sizeof(s), "-");
	printf(" %*s", width, s);
}

/* The cached modes by kind of request (by_kind): hit rate, work reused, NLL change and top-1
 * agreement against nocache; a row per kind, a group of columns per mode. */
static void print_kinds(const struct run *runs, int have)
{
	const struct run *first = NULL;
	for (int m = LBB_PRIVATE; m < LBB_N_ALL_MODES && !first; m++)
		first = have & 1 << m ? &runs[m] : NULL;
	if (!first)
		return;
	/* a group of 36 columns per mode after the 19 of kind and n; its name over its first */
	int col = printf("  by kind:"), g = 0;
	for (int m = LBB_PRIVATE; m < LBB_N_ALL_MODES; m++)
		if (have & 1 << m)
			col += printf("%*s%s", 21 + 36 * g++ - col, "", lbb_mode_name[m]);
	printf("\n  %-10s %6s", "kind", "n");
	for (int m = LBB_PRIVATE; m < LBB_N_ALL_MODES; m++)
		if (have & 1 << m)
			printf("  %7s %7s %9s %8s", "hit", "reused", "nll chg", "top-1");
	printf("\n");
	for (int k = 0; k < N_KINDS; k++) {
		printf("  %-10s %6u", kind_name(k), first->by_kind[k].requests);
		for (int m = LBB_PRIVATE; m < LBB_N_ALL_MODES; m++) {
			if (!(have & 1 << m))
				continue;
			const struct kind_stats *s = &runs[m].by_kind[k];
			printf(" ");
			print_pct(s->hit_rate, 1, 0, 7);
			print_pct(s->reused, 1, 0, 7);
			print_pct(s->nll_rel, 3, 1, 9);
			print_pct(s->top1, 2, 0, 8);
		}
		printf("\n");
	}
}

static void print_rate(const struct shadow_count *c)
{
	if (c->hits)
		printf(" %5.1f%% of %-4u", 100.0 * c->false_hits / c->hits, c->hits);
	else
		printf(" %5s    %-4s", "-", "");
}

/* --shadow: false hits among the reuses of each cached mode, by hit layer and by kind. */
static void print_shadow(const struct run *runs, int have, int layers)
{
	for (int m = LBB_PRIVATE; m < LBB_N_ALL_MODES; m++) {
		const struct run *r = &runs[m];
		if (!(have & 1 << m) || !r->shadow)
			continue;
		printf("  %s false hits (a top-1 changed or drift > %.3g):", lbb_mode_name[m],
		       r->drift_target);
		print_rate(&r->sh);
		printf("\n    by hit layer:");
		for (int l = 0; l < layers; l++) {
			printf("\n      %-8d", l);
			print_rate(&r->sh_layer[l]);
		}
		printf("\n    by kind:");
		for (int k = 0; k < N_KINDS; k++) {
			printf("\n      %-10s", kind_name(k));
			print_rate(&r->sh_kind[k]);
		}
		printf("\n");
	}
}

/*
 * The fixed thresholds' frontier at the adaptive run's fidelity: of the sweep's points (|NLL
 * change|, layers reused per request), those that reuse more than every more faithful one,
 * joined by straight lines (a threshold between two of them would land about there), read at
 * the adaptive run's |NLL change|; before the most faithful point, that point's depth; past the
 * last, the last's.
 */
static double frontier_depth(const struct run *ad, const struct run *sweep, int n_sweep)
{
	double x[N_TAU], y[N_TAU], at = fabs(ad->nll_rel);
	int n = 0, used[N_TAU] = { 0 };
	for (int k = 0; k < n_sweep; k++) { /* by |NLL change|, ascending */
		int best = -1;
		for (int i = 0; i < n_sweep; i++)
			if (!used[i] && (best < 0 || fabs(sweep[i].nll_rel) < fabs(sweep[best].nll_rel)))
				best = i;
		used[best] = 1;
		if (n == 0 || sweep[best].mean_depth > y[n - 1]) {
			x[n] = fabs(sweep[best].nll_rel);
			y[n++] = sweep[best].mean_depth;
		}
	}
	if (n == 0)
		return NAN;
	if (at <= x[0])
		return y[0];
	for (int i = 1; i < n; i++)
		if (at <= x[i])
			return y[i - 1] + (y[i] - y[i - 1]) * (at - x[i - 1]) / (x[i] - x[i - 1]);
	return y[n - 1];
}

/* Of the sweep's fixed thresholds, those at least as faithful as the adaptive run (|NLL
 * change| and top-1 agreement no worse): the one that reused the most layers per request.
 * @return its index; -1 when none is as faithful. */
static int best_fixed(const struct run *ad, const struct run *sweep, int n_sweep)
{
	int best = -1;
	for (int i = 0; i < n_sweep; i++)
		if (fabs(sweep[i].nll_rel) <= fabs(ad->nll_rel) && sweep[i].top1 >= ad->top1 &&
		    (best < 0 || sweep[i].mean_depth > sweep[best].mean_depth))
			best = i;
	return best;
}

static void print_adaptive(const struct run *sh, int layers)
{
	uint64_t n, n2;
	double all = drift_between(NULL, sh->ctl_end, layers, &n);
	double second = drift_between(sh->ctl_half, sh->ctl_end, layers, &n2);
	printf("  adaptive thresholds (drift target %.3g): mean drift %.4f over %llu reports, "
	       "%.4f over the %llu of the second half\n", sh->drift_target, all,
	       (unsigned long long)n, second, (unsigned long long)n2);
	printf("    %-6s %6s %8s %8s %7s %12s %8s  %s\n", "layer", "tau", "radius", "reports", "over",
	       "drift 2nd half", "reports", "holds");
	for (int l = 0; l < layers; l++) {
		const struct lb_layer_tau *e = &sh->ctl_end[l];
		double d = drift_between(&sh->ctl_half[l], e, 1, &n);
		printf("    %-6d %6.3f %8u %8llu %7llu %12.4f %8llu  %s\n", l, e->tau, e->max_hamming,
		       (unsigned long long)e->reports, (unsigned long long)e->reports_over, d,
		       (unsigned long long)n, holds(&sh->ctl_half[l], e, sh->drift_target));
	}
}

static void print_table(const struct opts *o, const struct run *runs, int have, int layers,
			const struct lbw_workload *wl, const struct run *sweep, int n_sweep)
{
	const struct run *nc = &runs[LBB_NOCACHE], *pv = &runs[LBB_PRIVATE];
	const struct run *sh = &runs[LBB_SHARED], *rd = &runs[LBB_REDIS];
	printf("fleet: %d workers, %u requests (%u fresh, %u exact, %u near; zipf %.2f, "
	       "seed %llu), model %s, max %d tokens, budget %llu MiB (private: %llu MiB each)\n",
	       o->workers, wl->n, wl->count[LBW_REQ_FRESH], wl->count[LBW_REQ_EXACT],
	       wl->count[LBW_REQ_NEAR], o->wl.zipf_s, (unsigned long long)o->wl.seed,
	       o->model == M_BERT_BASE ? "bert-base (generated)" : o->name, o->max_tokens,
	       (unsigned long long)(o->budget >> 20),
	       (unsigned long long)(o->budget / (uint64_t)o->workers >> 20));
	if (o->masked)
		printf("fidelity: masked tokens (%d%% of each request's positions after BOS, at least "
		       "one, masked with token %d alike in every run)\n", LBW_MLM_PERCENT,
		       LBW_MLM_MASK_ID);
	else
		printf("fidelity: next-token predictions at every position\n");
	print_modes(runs, have, layers);
	if ((have & 1 << LBB_SHARED) && (have & 1 << LBB_NOCACHE))
		printf("  speedup shared vs nocache: %.2fx\n", sh->rps / nc->rps);
	if ((have & 1 << LBB_SHARED) && (have & 1 << LBB_PRIVATE))
		printf("  speedup shared vs private: %.2fx\n", sh->rps / pv->rps);
	if ((have & 1 << LBB_SHARED) && (have & 1 << LBB_REDIS))
		printf("  shared vs redis: %.2fx throughput\n", sh->rps / rd->rps);
	if (o->redis_skipped)
		printf("  redis: skipped (%s)\n", o->redis_skipped);
	print_kinds(runs, have);
	print_shadow(runs, have, layers);
	int ad = (have & 1 << LBB_SHARED) && sh->adaptive;
	if (ad)
		print_adaptive(sh, layers);
	if (!n_sweep)
		return;
	printf("  tau sweep (shared): %6s %8s %8s %12s %10s\n", "tau", "reuse", "depth",
	       "nll change", "top-1");
	for (int i = 0; i < n_sweep; i++)
		printf("  %19s %6s %7.1f%% %8.2f %+11.4f%% %9.3f%%\n", "", tau_values[i],
		       sweep[i].hit_rate * 100, sweep[i].mean_depth, sweep[i].nll_rel * 100,
		       sweep[i].top1 * 100);
	if (ad) {
		int b = best_fixed(sh, sweep, n_sweep);
		printf("  adaptive: depth %.2f, nll change %+.4f%%, top-1 %.3f%%; ", sh->mean_depth,
		       sh->nll_rel * 100, sh->top1 * 100);
		if (b < 0)
			printf("no fixed tau of the sweep is as faithful; ");
		else
			printf("the most a fixed tau as faithful reused: depth %.2f (tau %s); ",
			       sweep[b].mean_depth, tau_values[b]);
		printf("%s; ", b < 0 || sh->mean_depth >= sweep[b].mean_depth
				       ? "on or above the fixed taus"
				       : "below the fixed taus");
		double f = frontier_depth(sh, sweep, n_sweep);
		printf("their NLL-only frontier there: depth %.3f: %s\n", f,
		       sh->mean_depth >= f ? "on or above it" : "below it");
	}
}

static void print_json(const struct opts *o, const struct lbw_workload *wl, const struct run *runs,
		       int have, int layers, const struct run *sweep, int n_sweep)
{
	json_object *j = json_object_new_object(), *mix = json_object_new_object();
	json_object_object_add(j, "workers", json_object_new_int(o->workers));
	json_object_object_add(j, "requests", json_object_new_int((int)wl->n));
	json_object_object_add(j, "model", json_object_new_string(o->name));
	/* How the caching workers find what to reuse: exact token hashes only (--recompute off,
	 * threshold 1), or a fingerprint of the embedding pooled whole (mean) or in chunks. */
	json_object *fp = json_object_new_object();
	int chunks = o->fp_chunks ? atoi(o->fp_chunks) : 4;
	int exact = o->recompute && !strcmp(o->recompute, "off") && !o->tau;
	json_object_object_add(fp, "method", json_object_new_string(exact ? "exact_hash" :
				chunks == 1 ? "mean_pooled" : "chunk_pooled"));
	json_object_object_add(fp, "chunks", json_object_new_int(chunks));
	json_object_object_add(j, "fingerprint", fp);
	json_object_object_add(j, "fidelity",
			       json_object_new_string(o->masked ? "masked_tokens" : "next_token"));
	json_object_object_add(j, "layers", json_object_new_int(layers));
	json_object_object_add(j, "max_tokens", json_object_new_int(o->max_tokens));
	json_object_object_add(j, "budget_bytes", json_object_new_int64((int64_t)o->budget));
	json_object_object_add(j, "tau", o->tau ? json_object_new_double(atof(o->tau)) : NULL);
	/* The workers': off, or the share. */
	json_object_object_add(j, "recompute",
			       o->recompute && !strcmp(o->recompute, "off")
				       ? json_object_new_string("off")
				       : json_object_new_double(o->recompute ? atof(o->recompute)
							 : o->masked ? LBW_RECOMPUTE_DEFAULT_BIDIR
								     : LBW_RECOMPUTE_DEFAULT));
	json_object_object_add(mix, "fresh", json_object_new_int((int)wl->count[LBW_REQ_FRESH]));
	json_object_object_add(mix, "exact", json_object_new_int((int)wl->count[LBW_REQ_EXACT]));
	json_object_object_add(mix, "near", json_object_new_int((int)wl->count[LBW_REQ_NEAR]));
	json_object_object_add(mix, "zipf_s", json_object_new_double(o->wl.zipf_s));
	json_object_object_add(mix, "seed", json_object_new_int64((int64_t)o->wl.seed));
	json_object_object_add(j, "mix", mix);
	for (int m = 0; m < LBB_N_ALL_MODES; m++)
		json_object_object_add(j, lbb_mode_name[m],
				       have & 1 << m ? run_json(&runs[m], layers) : NULL);
	json_object_object_add(j, "redis_skipped", o->redis_skipped ?
			       json_object_new_string(o->redis_skipped) : NULL);
	const struct run *nc = &runs[LBB_NOCACHE], *pv = &runs[LBB_PRIVATE];
	const struct run *sh = &runs[LBB_SHARED], *rd = &runs[LBB_REDIS];
	int sn = (have & 5) == 5, sp = (have & 6) == 6, sr = (have & 12) == 12;
	json_object_object_add(j, "speedup_shared_vs_nocache",
			       sn ? lbb_json_num(sh->rps / nc->rps) : NULL);
	json_object_object_add(j, "speedup_shared_vs_private",
			       sp ? lbb_json_num(sh->rps / pv->rps) : NULL);
	json_object_object_add(j, "ratio_shared_vs_redis",
			       sr ? lbb_json_num(sh->rps / rd->rps) : NULL);
	if (n_sweep) {
		json_object *a = json_object_new_array();
		for (int i = 0; i < n_sweep; i++) {
			json_object *e = run_json(&sweep[i], layers);
			json_object_object_add(e, "tau",
					       json_object_new_double(atof(tau_values[i])));
			json_object_array_add(a, e);
		}
		json_object_object_add(j, "tau_sweep", a);
	}
	int ad = (have & 1 << LBB_SHARED) && sh->adaptive;
	json_object_object_add(j, "adaptive", ad ? adaptive_json(sh, o, layers) : NULL);
	if (ad && n_sweep) {
		/* The adaptive point against the sweep: at its fidelity, the most a fixed threshold
		 * reused (layers per request). on_or_above: no fixed threshold at least as faithful
		 * on both measures reused more (none as faithful: nothing to be below); the
		 * stricter reading against NLL alone, joined between the points, beside it. */
		json_object *c = json_object_new_object();
		int b = best_fixed(sh, sweep, n_sweep);
		json_object_object_add(c, "best_fixed_tau",
				       b < 0 ? NULL : json_object_new_double(atof(tau_values[b])));
		json_object_object_add(c, "best_fixed_depth",
				       b < 0 ? NULL : lbb_json_num(sweep[b].mean_depth));
		json_object_object_add(c, "frontier_depth",
				       lbb_json_num(frontier_depth(sh, sweep, n_sweep)));
		json_object_object_add(c, "adaptive_depth", lbb_json_num(sh->mean_depth));
		json_object_object_add(c, "on_or_above", json_object_new_boolean(
					       b < 0 || sh->mean_depth >= sweep[b].mean_depth));
		json_object_object_add(c, "on_or_above_nll_frontier", json_object_new_boolean(
					       sh->mean_depth >= frontier_depth(sh, sweep, n_sweep)));
		json_object_object_add(j, "adaptive_vs_sweep", c);
	}
	puts(json_object_to_json_string_ext(j, JSON_C_TO_STRING_PLAIN));
	json_object_put(j);
}

static int write_plot(const struct opts *o, const struct run *runs, int have, int layers,
		      const struct run *sweep, int n_sweep)
{
	double rps[LBB_N_ALL_MODES], p50[LBB_N_ALL_MODES], p99[LBB_N_ALL_MODES];
	const char *cats[LBB_N_ALL_MODES];
	int nc = 0;
	for (int m = 0; m < LBB_N_ALL_MODES; m++)
		if (have & 1 << m) {
			cats[nc] = lbb_mode_name[m];
			rps[nc] = runs[m].rps;
			p50[nc] = runs[m].p50_ms;
			p99[nc] = runs[m].p99_ms;
			nc++;
		}
	struct bplot_series s_rps[] = { { "requests/s", rps, NULL, nc } };
	struct bplot_series s_lat[] = { { "p50", p50, NULL, nc }, { "p99", p99, NULL, nc } };
	double lx[MAX_LAYERS], ly[LBB_N_ALL_MODES][MAX_LAYERS];
	struct bplot_series s_layer[LBB_N_ALL_MODES];
	int nl = 0;
	for (int l = 0; l < layers; l++)
		lx[l] = l;
	for (int m = LBB_PRIVATE; m < LBB_N_ALL_MODES; m++)
		if (have & 1 << m) {
			for (int l = 0; l < layers; l++)
				ly[m][l] = runs[m].hit_by_layer[l] * 100;
			s_layer[nl++] =
				(struct bplot_series){ lbb_mode_name[m], ly[m], lx, layers };
		}
	double tx[N_TAU], hit[N_TAU], agree[N_TAU], dnll[N_TAU];
	for (int i = 0; i < n_sweep; i++) {
		tx[i] = atof(tau_values[i]);
		hit[i] = sweep[i].hit_rate * 100;
		agree[i] = sweep[i].top1 * 100;
		dnll[i] = fabs(sweep[i].nll_rel) * 100 * 10;
	}
	struct bplot_series s_tau[] = { { "requests reusing a layer %", hit, tx, n_sweep },
					{ "top-1 agreement %", agree, tx, n_sweep },
					{ "|NLL change| x10 %", dnll, tx, n_sweep } };
	/* Reuse against fidelity: each fixed threshold of the sweep, and the adaptive run. */
	const struct run *sh = &runs[LBB_SHARED];
	int ad = (have & 1 << LBB_SHARED) && sh->adaptive && n_sweep;
	double fx[N_TAU], fy[N_TAU], ax[1] = { fabs(sh->nll_rel) * 100 }, ay[1] = { sh->mean_depth };
	for (int i = 0; i < n_sweep; i++) {
		fx[i] = fabs(sweep[i].nll_rel) * 100;
		fy[i] = sweep[i].mean_depth;
	}
	struct bplot_series s_front[] = { { "fixed tau (0.70 .. 0.98)", fy, fx, n_sweep },
					  { "adaptive", ay, ax, 1 } };
	struct bplot_panel panels[5] = {
		{ .title = "Throughput", .ylabel = "requests/s", .kind = BPLOT_BARS,
		  .series = s_rps, .n_series = 1, .categories = cats },
		{ .title = "Latency", .ylabel = "ms", .kind = BPLOT_BARS, .series = s_lat,
		  .n_series = 2, .categories = cats },
		{ .title = "Requests reusing each layer", .xlabel = "layer", .ylabel = "%",
		  .kind = BPLOT_LINES, .series = s_layer, .n_series = nl, .ymin = 0, .ymax = 100 },
		{ .title = "tau sweep (shared)", .xlabel = "tau", .ylabel = "%",
		  .kind = BPLOT_LINES, .series = s_tau, .n_series = 3, .ymin = 0, .ymax = 100 },
		{ .title = "Reuse against fidelity (shared)", .xlabel = "|NLL change| %",
		  .ylabel = "layers reused per request", .kind = BPLOT_LINES, .series = s_front,
		  .n_series = 2 },
	};
	char err[256];
	int n_panels = n_sweep ? 4 + ad : 3;
	int rc = bplot_write_png(o->plot, panels, n_panels, 2, 560, 380, err, sizeof(err));
	if (rc < 0)
		fprintf(stderr, "layerbank-bench e2e: --plot %s: %s\n", o->plot, err);
	else if (!o->quiet)
		fprintf(stderr, "plot written to %s\n", o->plot);
	return rc;
}

/* ---- options ---- */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: layerbank-bench e2e [--model stories260k|bert-base|FILE] [--workers N] "
		"[--requests N]\n"
		"         [--exact P] [--near P] [--zipf S] [--seed N] [--budget BYTES] "
		"[--max-tokens N]\n"
		"         [--tau X] [--modes nocache,private,shared,redis] [--tau-sweep] [--json]\n"
		"         [--plot FILE]"
		" [--data DIR] [--no-sflight] [--recompute R|off] [--spin-us N] [--quiet]\n"
		"         [--shadow] [--drift-target X] [--fp-chunks N] [--adaptive] [--revalidate R]\n"
		"A fleet of layerbank-worker serve processes scores the same request stream "
		"without a\n"
		"cache, with a private in-process bank each (budget / workers bytes), and with\n"
		"layerbankd's shared bank (budget bytes); --modes redis: with one Redis server\n"
		"(budget bytes of maxmemory, allkeys-lru) holding exact inputs' last-layer outputs,\n"
		"as a user without layerbank would share them (layerbank-worker --redis; without\n"
		"/usr/bin/redis-server and redis-cli the mode is skipped, saying so); the report\n"
		"adds 'shared vs redis'. Defaults: --modes\n"
		"nocache,private,shared, stories260k, 4 workers, exact 0.30,\n"
		"near 0.45 (fresh the rest), zipf 1.0, seed 1; stories260k: 2000 requests, "
		"budget 64M,\n"
		"512 tokens; bert-base: 400 requests, budget 256M, 128 tokens; FILE (a GPT-2- or\n"
		"BERT-style safetensors checkpoint): 2000 requests, budget 256M, its positions (at\n"
		"most 512). Fidelity is of next tokens, or of masked tokens for a bidirectional\n"
		"encoder (bert-base, BERT-style files): 15%% of each request's positions after BOS\n"
		"masked alike in every run. --data: the folder with stories260K.bin, tok512.bin and\n"
		"tinystories_val.txt (default $LAYERBANK_DATA, then the source tree's\n"
		"../shared/data). --no-sflight: the caching workers compute an input another worker\n"
		"is computing rather than wait for it. --recompute: the caching workers' partial\n"
		"reuse of near inputs of any length (layerbank-worker --recompute; default %.2f, an\n"
		"encoder's %.2f).\n"
		"--spin-us: layerbankd's (default 50). --shadow: the caching workers compute every\n"
		"request that reused anything plainly too; a reuse that changed a top-1 prediction\n"
		"or drifted past --drift-target (1 - cosine of a last-layer state, default %.2g) is\n"
		"a false hit, reported in all, by hit layer and by kind (JSON: false_hit_rate);\n"
		"their throughput then includes that computation. --fp-chunks: the caching workers'\n"
		"fingerprint chunks (default 4; 1: plain mean pooling); with --recompute off only\n"
		"exact token hashes are reused (JSON: fingerprint). --adaptive: the shared bank's\n"
		"thresholds adapt (layerbankd --drift-target, the --drift-target here) to what its\n"
		"workers revalidate (a share R of their reuses checked against the plain forward,\n"
		"default %s); JSON: adaptive, each layer's controller by half of the stream and\n"
		"at its end; with --tau-sweep the plot shows the adaptive point among the fixed\n"
		"thresholds' reuse and fidelity.\n",
		LBW_RECOMPUTE_DEFAULT, LBW_RECOMPUTE_DEFAULT_BIDIR, DRIFT_TARGET, REVALIDATE);
}

static int bad(const char *opt, const char *v, const char *want)
{
	fprintf(stderr, "layerbank-bench e2e: bad %s '%s' (%s)\n", opt, v, want);
	return -1;
}

static int num(const char *v, double lo, double hi, double *out)
{
	char *end;
	errno = 0;
	*out = strtod(v, &end);
	return errno || end == v || *end || !isfinite(*out) || *out < lo || *out > hi ? -1 : 0;
}

#define MODES_WANT "a comma list of nocache, private, shared, redis"

static int parse(int argc, char **argv, struct opts *o)
{
	double v;
	long requests = -1, max_tokens = -1;
	int have_budget = 0;
	memset(o, 0, sizeof(*o));
	o->workers = 4;
	o->wl = lbw_workload_defaults();
	o->modes = 7;
	o->min_chars = 100;
	o->max_chars = 600;
	o->drift_target = DRIFT_TARGET;
	o->revalidate = REVALIDATE;
	const char *env = getenv("LAYERBANK_DATA");
	snprintf(o->data, sizeof(o->data), "%s", env && *env ? env : LB_DATA_DIR);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--json")) {
			o->json = 1;
			continue;
		}
		if (!strcmp(a, "--tau-sweep")) {
			o->tau_sweep = 1;
			continue;
		}
		if (!strcmp(a, "--quiet")) {
			o->quiet = 1;
			continue;
		}
		if (!strcmp(a, "--no-sflight")) {
			o->no_sflight = 1;
			continue;
		}
		if (!strcmp(a, "--shadow")) {
			o->shadow = 1;
			continue;
		}
		if (!strcmp(a, "--adaptive")) {
			o->adaptive = 1;
			continue;
		}
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			usage(stdout);
			exit(0);
		}
		if (!val) {
			fprintf(stderr, "layerbank-bench e2e: %s needs a value (see --help)\n", a);
			return -1;
		}
		i++;
		if (!strcmp(a, "--model")) {
			o->model = !strcmp(val, "stories260k") ? M_STORIES :
				   !strcmp(val, "bert-base") ? M_BERT_BASE : M_FILE;
			if (o->model == M_FILE && access(val, R_OK) < 0)
				return bad(a, val, "stories260k, bert-base or a safetensors file");
			o->file = val;
		} else if (!strcmp(a, "--workers")) {
			if (num(val, 1, MAX_WORKERS, &v) < 0 || v != floor(v))
				return bad(a, val, "1..64");
			o->workers = (int)v;
		} else if (!strcmp(a, "--requests")) {
			if (num(val, 1, 1e6, &v) < 0 || v != floor(v))
				return bad(a, val, "1..1000000");
			requests = (long)v;
		} else if (!strcmp(a, "--fp-chunks")) {
			if (num(val, 1, 64, &v) < 0 || v != floor(v))
				return bad(a, val, "1..64");
			o->fp_chunks = val;
		} else if (!strcmp(a, "--drift-target")) {
			if (num(val, 0, 1, &o->drift_target) < 0)
				return bad(a, val, "0..1");
		} else if (!strcmp(a, "--revalidate")) {
			if (num(val, 0, 1, &v) < 0)
				return bad(a, val, "0..1");
			o->revalidate = val;
		} else if (!strcmp(a, "--exact")) {
			if (num(val, 0, 1, &o->wl.p_exact) < 0)
				return bad(a, val, "0..1");
		} else if (!strcmp(a, "--near")) {
			if (num(val, 0, 1, &o->wl.p_near) < 0)
				return bad(a, val, "0..1");
		} else if (!strcmp(a, "--zipf")) {
			if (num(val, 0, LBW_MAX_ZIPF_S, &o->wl.zipf_s) < 0)
				return bad(a, val, "0..10");
		} else if (!strcmp(a, "--seed")) {
			if (num(val, 0, 9007199254740992.0, &v) < 0 || v != floor(v))
				return bad(a, val, "an integer >= 0");
			o->wl.seed = (uint64_t)v;
		} else if (!strcmp(a, "--budget")) {
			if (lbu_parse_size(val, &o->budget) < 0 || !o->budget ||
			    o->budget > 1ull << 40)
				return bad(a, val, "a size such as 64M, up to 1T");
			have_budget = 1;
		} else if (!strcmp(a, "--max-tokens")) {
			if (num(val, 2, 512, &v) < 0 || v != floor(v))
				return bad(a, val, "2..512");
			max_tokens = (long)v;
		} else if (!strcmp(a, "--recompute")) {
			if (strcmp(val, "off") && num(val, 0, 1, &v) < 0)
				return bad(a, val, "0..1 or off");
			o->recompute = val;
		} else if (!strcmp(a, "--spin-us")) {
			if (num(val, 0, 1e6, &v) < 0 || v != floor(v))
				return bad(a, val, "0..1000000");
			o->spin_us = val;
		} else if (!strcmp(a, "--tau")) {
			if (num(val, -1, 1, &v) < 0)
				return bad(a, val, "-1..1");
			o->tau = val;
		} else if (!strcmp(a, "--modes")) {
			o->modes = 0;
			char tmp[64];
			snprintf(tmp, sizeof(tmp), "%s", val);
			for (char *s = strtok(tmp, ","); s; s = strtok(NULL, ",")) {
				int m = LBB_N_ALL_MODES;
				while (--m >= 0 && strcmp(s, lbb_mode_name[m]))
					;
				if (m < 0)
					return bad(a, val, MODES_WANT);
				o->modes |= 1 << m;
			}
			if (!o->modes || strlen(val) >= sizeof(tmp))
				return bad(a, val, MODES_WANT);
		} else if (!strcmp(a, "--plot")) {
			o->plot = val;
		} else if (!strcmp(a, "--data")) {
			snprintf(o->data, sizeof(o->data), "%s", val);
		} else {
			fprintf(stderr, "layerbank-bench e2e: unknown option '%s' (see --help)\n",
				a);
			return -1;
		}
	}
	if (o->wl.p_exact + o->wl.p_near > 1 + 1e-9) {
		fprintf(stderr, "layerbank-bench e2e: --exact + --near must not exceed 1\n");
		return -1;
	}
	int bert = o->model == M_BERT_BASE;
	o->wl.n_requests = (uint32_t)(requests > 0 ? requests : bert ? 400 : 2000);
	if (max_tokens > 0)
		o->max_tokens = (int)max_tokens;
	else /* a file's default, its positions, is known once it is read (open_model) */
		o->max_tokens = bert ? 128 : o->model == M_FILE ? 0 : 512;
	if (!have_budget)
		o->budget = o->model != M_STORIES ? 256ull << 20 : 64ull << 20;
	if (o->budget / (uint64_t)o->workers < (64u << 10)) {
		fprintf(stderr, "layerbank-bench e2e: --budget too small for %d private banks\n",
			o->workers);
		return -1;
	}
	return 0;
}

/*
 * The model's name in the report and its kind of fidelity; a FILE read whole as the workers
 * will read it, so that a bad one is one line here, not four workers' logs.
 * @return 0, or -1 after saying why.
 */
static int open_model(struct opts *o)
{
	if (o->model == M_STORIES) {
		snprintf(o->name, sizeof(o->name), "stories260k");
		return 0;
	}
	if (o->model == M_BERT_BASE) {
		snprintf(o->name, sizeof(o->name), "bert-base");
		o->masked = 1;
		return 0;
	}
	char err[512];
	struct lbw_bert *m;
	if (lbw_st_sniff(o->file) != 1) {
		fprintf(stderr, "layerbank-bench e2e: --model %s: not a safetensors file (e2e takes "
				"stories260k, bert-base or a GPT-2- or BERT-style safetensors "
				"checkpoint)\n", o->file);
		return -1;
	}
	if (lbw_bert_load_safetensors(o->file, 0, &m, err, sizeof(err)) < 0) {
		fprintf(stderr, "layerbank-bench e2e: --model %s\n", err);
		return -1;
	}
	int vocab = m->cfg.vocab, positions = m->cfg.max_seq;
	o->masked = m->cfg.style == LBW_STYLE_BERT;
	lbw_bert_free(m);
	if (positions < 2) {
		fprintf(stderr, "layerbank-bench e2e: --model %s: %d positions, too few to score\n",
			o->file, positions);
		return -1;
	}
	if (vocab < 512) {
		fprintf(stderr, "layerbank-bench e2e: --model %s: a vocabulary of %d tokens; "
				"tok512.bin's ids reach 511\n", o->file, vocab);
		return -1;
	}
	const char *base = strrchr(o->file, '/');
	snprintf(o->name, sizeof(o->name), "%s", base ? base + 1 : o->file);
	if (!o->max_tokens)
		o->max_tokens = positions < 512 ? positions : 512;
	return 0;
}

/* The redis mode without its server: one line saying so, in o->redis_skipped for the report.
 * @return 1 then, 0 when it can run. */
static int redis_missing(struct opts *o)
{
	static const char why[] = LBU_REDIS_SERVER " and " LBU_REDIS_CLI " are needed (Debian: "
				  "redis-server, redis-tools)";
	if (lbu_redis_available())
		return 0;
	fprintf(stderr, "layerbank-bench e2e: mode redis skipped: %s\n", why);
	o->redis_skipped = why;
	return 1;
}

int bench_e2e_main(int argc, char **argv)
{
	struct opts o;
	char err[256], path[600];
	if (parse(argc, argv, &o) < 0)
		return 2;
	if (open_model(&o) < 0)
		return 1;
	const char *need[] = { "stories260K.bin", "tok512.bin", "tinystories_val.txt" };
	for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", o.data, need[i]);
		if (access(path, R_OK) < 0) {
			fprintf(stderr, "layerbank-bench e2e: %s: %s (set --data or LAYERBANK_DATA "
					"to the folder holding stories260K.bin, tok512.bin, "
					"tinystories_val.txt)\n", path, strerror(errno));
			return 1;
		}
	}
	struct lbw_paragraphs para;
	struct lbw_workload wl;
	snprintf(path, sizeof(path), "%s/tinystories_val.txt", o.data);
	int rc = lbw_paragraphs_load(path, o.min_chars, o.max_chars, &para, err, sizeof(err));
	if (rc == 0)
		rc = lbw_workload_make(&para, &o.wl, &wl, err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "layerbank-bench e2e: %s\n", err);
		lbw_paragraphs_free(&para);
		return 1;
	}

	lbb_fleet_init("e2e");

	struct run runs[LBB_N_ALL_MODES], sweep[N_TAU];
	int have = 0, layers = 0, n_sweep = 0;
	memset(runs, 0, sizeof(runs));
	memset(sweep, 0, sizeof(sweep));
	/* nocache first: it is the reference of every fidelity figure. */
	int want = o.modes | (o.tau_sweep ? 1 << LBB_NOCACHE : 0);
	for (int m = 0; m < LBB_N_ALL_MODES && rc == 0; m++) {
		if (!(want & 1 << m) || (m == LBB_REDIS && redis_missing(&o)))
			continue;
		rc = run_fleet(&o, (enum lbb_mode)m, o.tau, &wl, &layers, &runs[m]);
		if (rc == 0) {
			summarise(&runs[m], &wl, layers);
			if (m != LBB_NOCACHE && (have & 1 << LBB_NOCACHE))
				fidelity(&runs[m], &runs[LBB_NOCACHE], &wl);
			have |= 1 << m;
		}
	}
	for (int i = 0; o.tau_sweep && rc == 0 && i < N_TAU; i++) {
		rc = run_fleet(&o, LBB_SHARED, tau_values[i], &wl, &layers, &sweep[i]);
		if (rc == 0) {
			summarise(&sweep[i], &wl, layers);
			fidelity(&sweep[i], &runs[LBB_NOCACHE], &wl);
			n_sweep++;
		}
	}
	if (rc == 0) {
		if (o.json)
			print_json(&o, &wl, runs, have, layers, sweep, n_sweep);
		else
			print_table(&o, runs, have, layers, &wl, sweep, n_sweep);
		if (o.plot)
			rc = write_plot(&o, runs, have, layers, sweep, n_sweep);
	}
	for (int m = 0; m < LBB_N_ALL_MODES; m++)
		free_run(&runs[m], wl.n);
	for (int i = 0; i < N_TAU; i++)
		free_run(&sweep[i], wl.n);
	lbw_workload_free(&wl);
	lbw_paragraphs_free(&para);
	return rc < 0 ? 1 : 0;
}
