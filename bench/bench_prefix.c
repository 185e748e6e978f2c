/*
 * layerbank-bench prefix: the chat stream through a fleet of `layerbank-worker serve` decoders
 * three ways — no cache, a private bank each, layerbankd's shared bank — each turn sent once
 * the turn it continues is answered; time to first token, tokens/s, the prompt tokens reused, and
 * whether the cached runs generate the uncached run's tokens.
 */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench.h"
#include "layerbank/layerbank.h"
#include "model_llama.h"
#include "size.h"
#include "tokenizer.h"
#include "workload.h"

#define NOT_SENT 0
#define IN_FLIGHT 1
#define ANSWERED 2

struct opts {
	int llama;              /* --model llama-110m; else stories260k */
	const char *model_file; /* serve's --model: NULL for the --model's */
	int workers;
	struct lbw_chat_cfg chat;
	uint64_t budget;        /* the shared bank's bytes; private banks get budget / workers */
	int json, quiet;
	char data[512];
};

/* One request's answer. */
struct answer {
	int state;              /* NOT_SENT, IN_FLIGHT, ANSWERED */
	int ok;
	int32_t prompt;         /* tokens sent (BOS included) */
	int32_t reused;         /* of them, read from the bank */
	uint32_t reusable;      /* of them, what a bank that never evicts nor fails would have held
				 * when it was sent (lbb_blockset) */
	uint32_t inserted;      /* blocks the worker inserted */
	int cache_lost;         /* its cache calls ended in an error (cache= not ok nor none) */
	int worker;             /* the one it was sent to */
	double ttft_ms, gen_ms; /* the worker's: to the first token, the whole request */
	int32_t *out;           /* [n_out] the generated tokens */
	uint32_t n_out;
};

struct run {
	enum lbb_mode mode;
	struct answer *a;       /* [requests] */
	uint32_t first;         /* no request before it is still to be sent */
	uint32_t done;          /* answered */
	double wall_s, ttft_p50, ttft_p99, tokens_per_s, reused_share, reusable_share;
	double ttft_sum_s, gen_sum_s;
	double computed_p50;    /* prompt tokens computed, p50 over the requests */
	double same_worker;     /* share of later turns sent to the previous turn's worker */
	uint64_t prompt_tokens, reused_tokens, reusable_tokens, generated, inserted;
	unsigned errors;
	unsigned cache_lost;    /* requests whose cache calls ended in an error (a time-out) */
	struct lb_stats bank;   /* shared: the daemon's counters at the end */
	int have_bank;
};

/* What the dispatcher of one run needs. */
struct dispatch {
	const struct opts *o;
	const struct lbw_chat *c;
	const struct lbb_prefix_geom *g;
	struct run *run;
	struct lbb_blockset *bank[LBB_FLEET_MAX_WORKERS]; /* of each worker (private), of all
							   * ([0], shared), none (nocache) */
	int32_t *prompt;        /* [g->seq_len + LBW_CHAT_MAX_GEN] */
	char *line;             /* a request's body: [line_cap] */
	size_t line_cap;
	double t0;
};

/* ---- the model and the stream ---- */

/* The shape of the model the workers run: llama-110m's, or the checkpoint's header.
 * @return 0, or -1 after a one-line message. */
static int model_geom(const struct opts *o, struct lbb_prefix_geom *g)
{
	struct lbw_llama_config cfg = lbw_llama_config_110m();
	char path[600], err[256];
	int32_t hdr[7];
	struct stat st;
	snprintf(path, sizeof(path), "%s/stories260K.bin", o->data);
	if (!o->llama) {
		int fd = open(path, O_RDONLY | O_CLOEXEC), rc = -EIO;
		ssize_t n = fd >= 0 && fstat(fd, &st) == 0 ? read(fd, hdr, sizeof(hdr)) : -1;
		if (n == (ssize_t)sizeof(hdr))
			rc = lbw_llama_check_header(hdr, NULL, (uint64_t)st.st_size, &cfg, err,
						    sizeof(err));
		else
			snprintf(err, sizeof(err), "cannot read its header: %s",
				 n < 0 ? strerror(errno) : "the file is too short");
		if (fd >= 0)
			close(fd);
		if (rc < 0) {
			fprintf(stderr, "layerbank-bench prefix: %s: %s\n", path, err);
			return -1;
		}
	}
	*g = (struct lbb_prefix_geom){ (uint32_t)cfg.n_layers, (uint32_t)cfg.dim,
				       (uint32_t)cfg.kv_dim, (uint32_t)cfg.seq_len };
	return 0;
}

int lbb_prefix_chat(const char *data, const struct lbw_chat_cfg *chat, uint32_t seq_len,
		    struct lbw_paragraphs *para, struct lbw_chat *c)
{
	char path[600], err[512];
	struct lbw_tokenizer t;
	struct lbw_chat_cfg cfg = *chat;
	cfg.max_tokens = seq_len;
	snprintf(path, sizeof(path), "%s/tinystories_val.txt", data);
	int rc = lbw_paragraphs_load(path, 100, 600, para, err, sizeof(err));
	if (rc == 0) {
		snprintf(path, sizeof(path), "%s/tok512.bin", data);
		rc = lbw_tokenizer_load(&t, path, 512, err, sizeof(err));
	}
	if (rc == 0) {
		rc = lbw_chat_make(para, &t, &cfg, c, err, sizeof(err));
		lbw_tokenizer_free(&t);
	}
	if (rc < 0)
		fprintf(stderr, "layerbank-bench prefix: %s\n", err);
	return rc < 0 ? -1 : 0;
}

/* ---- prompts and the model of the bank ---- */

/* Request id's prompt into d->prompt, built from the answers of its conversation's earlier
 * turns (an error's answer counts as empty). @return its length, or -EOVERFLOW after a
 * message. */
static int prompt_of(struct dispatch *d, uint32_t id)
{
	const struct lbw_chat_req *r = &d->c->r[id];
	const int32_t *ans[LBW_CHAT_MAX_TURNS];
	uint32_t len[LBW_CHAT_MAX_TURNS];
	uint32_t dep = r->depends_on;
	for (uint32_t t = r->turn; t-- > 0; dep = d->c->r[dep].depends_on) {
		ans[t] = d->run->a[dep].out;
		len[t] = d->run->a[dep].n_out;
	}
	int n = lbw_chat_prompt(d->c, id, ans, len, d->prompt, d->g->seq_len);
	if (n < 1 || (uint32_t)n > d->g->seq_len) {
		fprintf(stderr, "layerbank-bench prefix: request %u: a prompt of %d tokens, "
				"outside the model's context of %u\n", id, n, d->g->seq_len);
		return -EOVERFLOW;
	}
	return n;
}

/* The bank worker w reads and writes: its own, the shared one, or none. */
static struct lbb_blockset *bank_of(const struct dispatch *d, int w)
{
	return d->bank[d->run->mode == LBB_PRIVATE ? w : 0];
}

/* What answered request id left in its worker's bank: the full blocks of its prompt and of
 * the tokens it fed back (all it generated but the last). @return 0, -errno. */
static int bank_add(struct dispatch *d, uint32_t id)
{
	const struct answer *a = &d->run->a[id];
	struct lbb_blockset *bank = bank_of(d, a->worker);
	if (!bank || !a->ok)
		return 0;
	int n = prompt_of(d, id);
	if (n < 0)
		return n;
	uint32_t fed = a->n_out > 1 ? a->n_out - 1 : 0;
	memcpy(d->prompt + n, a->out, fed * sizeof(int32_t));
	return lbb_blockset_add(bank, d->prompt, (uint32_t)n + fed);
}

/* ---- answers ---- */

/* "a,b,c" (or nothing) into a->out, at most max tokens. @return 0, -EPROTO, -ENOMEM. */
static int parse_out(const char *p, uint32_t max, struct answer *a)
{
	a->out = malloc((max ? max : 1) * sizeof(int32_t));
	if (!a->out)
		return -ENOMEM;
	while (*p) {
		char *e;
		errno = 0;
		long v = strtol(p, &e, 10);
		if (errno || e == p || v < 0 || v > INT32_MAX || (*e != ',' && *e) ||
		    a->n_out == max)
			return -EPROTO;
		a->out[a->n_out++] = (int32_t)v;
		p = *e ? e + 1 : e;
	}
	return 0;
}

/* The figures of an "ok gen" answer, after the id, into a. @return 0, -EPROTO, -ENOMEM. */
static int parse_ok(const char *rest, uint32_t gen, struct answer *a)
{
	int prompt, reused, computed, used = 0;
	double ttft_us, us, near;
	unsigned approx;
	char cache[32];
	if (sscanf(rest, " ok gen prompt=%d reused=%d computed=%d inserted=%u ttft_us=%lf "
		   "us=%lf cache=%31s near=%lf approx=%u out=%n", &prompt, &reused, &computed,
		   &a->inserted, &ttft_us, &us, cache, &near, &approx, &used) != 9 || !used)
		return -EPROTO;
	/* this benchmark's workers reuse exact prefixes only */
	if (near != 0 || approx)
		return -EPROTO;
	a->cache_lost = strcmp(cache, "ok") != 0 && strcmp(cache, "none") != 0;
	if (prompt != a->prompt || reused < 0 || reused >= prompt || computed != prompt - reused)
		return -EPROTO;
	a->reused = reused;
	a->ttft_ms = ttft_us / 1e3;
	a->gen_ms = us / 1e3;
	return parse_out(rest + used, gen, a);
}

/* lbb_answer_fn: "ok gen prompt=P reused=R computed=C inserted=I ttft_us=T us=U cache=S near=N
 * approx=A out=ids" or "err MESSAGE" after the id. */
static int on_answer(void *ctx, int w, uint64_t id, char *rest, double lat_ms)
{
	struct dispatch *d = ctx;
	struct run *run = d->run;
	struct answer *a = &run->a[id];
	(void)w;
	(void)lat_ms;
	a->state = ANSWERED;
	run->done++;
	if (strncmp(rest, " ok gen ", 8) != 0) {
		if (++run->errors <= 3)
			fprintf(stderr, "layerbank-bench prefix: request %llu:%s\n",
				(unsigned long long)id, rest);
		return 0;
	}
	int rc = parse_ok(rest, d->c->r[id].gen, a);
	if (rc == -EPROTO)
		fprintf(stderr, "layerbank-bench prefix: bad answer '%llu%.120s'\n",
			(unsigned long long)id, rest);
	a->ok = rc == 0;
	return rc < 0 ? rc : bank_add(d, (uint32_t)id);
}

/* ---- dispatch ---- */

/* The earliest request not sent whose previous turn has been answered; -1: none now. */
static long next_ready(struct run *run, const struct lbw_chat *c)
{
	while (run->first < c->n && run->a[run->first].state != NOT_SENT)
		run->first++;
	/* Those skipped here belong to conversations with a turn in flight: a few. */
	for (uint32_t i = run->first; i < c->n; i++) {
		uint32_t dep = c->r[i].depends_on;
		if (run->a[i].state == NOT_SENT &&
		    (dep == LBW_CHAT_NONE || run->a[dep].state == ANSWERED))
			return i;
	}
	return -1;
}

/* Request id's body "gen:N<TAB>@ids" into d->line, of its prompt in d->prompt[0..n).
 * @return its length. */
static size_t request_body(struct dispatch *d, uint32_t id, int n)
{
	size_t k = (size_t)snprintf(d->line, d->line_cap, "gen:%u\t@", d->c->r[id].gen);
	for (int i = 0; i < n; i++)
		k += (size_t)snprintf(d->line + k, d->line_cap - k, i ? ",%d" : "%d",
				      (int)d->prompt[i]);
	return k;
}

/* Send ready requests to idle workers while there are both. @return 0, -errno. */
static int send_ready(struct dispatch *d)
{
	int w;
	long id;
	while ((w = lbb_fleet_idle()) >= 0 && (id = next_ready(d->run, d->c)) >= 0) {
		struct answer *a = &d->run->a[id];
		const struct lbb_blockset *bank = bank_of(d, w);
		int n = prompt_of(d, (uint32_t)id);
		if (n < 0)
			return n;
		a->prompt = n;
		a->reusable = bank ? lbb_blockset_reusable(bank, d->prompt, (uint32_t)n) : 0;
		a->worker = w;
		a->state = IN_FLIGHT;
		int rc = lbb_fleet_send(w, (uint64_t)id, d->line, request_body(d, (uint32_t)id, n));
		if (rc < 0)
			return rc;
	}
	return 0;
}

static void progress(const struct dispatch *d, int final)
{
	static double last;
	const struct run *run = d->run;
	int tty = isatty(2);
	double t = lbb_now_s();
	if (d->o->quiet || (!final && t - last < (tty ? 0.5 : 5.0)))
		return;
	last = t;
	uint64_t prompt = 0, reused = 0;
	for (uint32_t i = 0; i < d->c->n; i++)
		if (run->a[i].ok) {
			prompt += (uint64_t)run->a[i].prompt;
			reused += (uint64_t)run->a[i].reused;
		}
	fprintf(stderr, "%s  %-7s %5u/%-5u %7.2f req/s  reused %5.1f%% of prompt tokens%s",
		tty ? "\r\033[K" : "", lbb_mode_name[run->mode], run->done, d->c->n,
		t > d->t0 ? run->done / (t - d->t0) : 0.0, prompt ? 100.0 * reused / prompt : 0.0,
		tty && !final ? "" : "\n");
}

/* ---- one run of the fleet ---- */

/* The shared daemon's counters, read as a client of its own; nothing when it cannot be. */
static void read_bank(struct run *run)
{
	struct lb_client *c;
	if (lb_connect(lbb_fleet_socket(), "layerbank-bench-prefix", &c) < 0)
		return;
	run->have_bank = lb_stats(c, &run->bank, sizeof(run->bank)) == 0;
	lb_close(c);
}

/* d's buffers, and a model of each bank of its run's mode. @return 0, -ENOMEM. */
static int dispatch_init(struct dispatch *d, int workers)
{
	enum lbb_mode m = d->run->mode;
	int banks = m == LBB_PRIVATE ? workers : m == LBB_SHARED ? 1 : 0;
	d->line_cap = (size_t)d->g->seq_len * 12 + 32;
	d->line = malloc(d->line_cap);
	d->prompt = malloc(((size_t)d->g->seq_len + LBW_CHAT_MAX_GEN) * sizeof(int32_t));
	d->run->a = calloc(d->c->n, sizeof(*d->run->a));
	for (int i = 0; i < banks; i++)
		if (!(d->bank[i] = lbb_blockset_new()))
			return -ENOMEM;
	return d->line && d->prompt && d->run->a ? 0 : -ENOMEM;
}

static void dispatch_free(struct dispatch *d)
{
	for (int i = 0; i < LBB_FLEET_MAX_WORKERS; i++)
		lbb_blockset_free(d->bank[i]);
	free(d->prompt);
	free(d->line);
}

static int run_mode(const struct opts *o, const struct lbw_chat *c,
		    const struct lbb_prefix_geom *g, enum lbb_mode m, struct run *run)
{
	char model[600], tok[600];
	snprintf(tok, sizeof(tok), "%s/tok512.bin", o->data);
	if (o->model_file)
		snprintf(model, sizeof(model), "%s", o->model_file);
	else
		snprintf(model, sizeof(model), "%s%s", o->llama ? "" : o->data,
			 o->llama ? LBW_LLAMA_110M_NAME : "/stories260K.bin");
	struct lbb_fleet_cfg cfg = { .model = model, .tokenizer = tok, .workers = o->workers,
				     .budget = o->budget };
	struct dispatch d = { .o = o, .c = c, .g = g, .run = run };
	int layers;
	memset(run, 0, sizeof(*run));
	run->mode = m;
	int rc = dispatch_init(&d, o->workers);
	if (rc == 0)
		rc = lbb_fleet_start(&cfg, m, &layers);
	d.t0 = lbb_now_s();
	while (rc == 0 && run->done < c->n) {
		rc = send_ready(&d);
		int got = rc < 0 ? rc : lbb_fleet_collect(on_answer, &d);
		rc = got < 0 ? got : 0;
		if (rc == 0)
			progress(&d, 0);
	}
	if (rc == 0) {
		run->wall_s = lbb_now_s() - d.t0;
		progress(&d, 1);
		if (m == LBB_SHARED)
			read_bank(run);
	}
	lbb_fleet_stop();
	dispatch_free(&d);
	return rc;
}

static void free_run(struct run *run, uint32_t n)
{
	for (uint32_t i = 0; run->a && i < n; i++)
		free(run->a[i].out);
	free(run->a);
	run->a = NULL;
}

/* The p50 and p99 of what of each answered request, into p[0], p[1]. */
static void quantiles(const struct run *run, uint32_t n, double (*what)(const struct answer *),
		      double *p)
{
	double *v = malloc((n ? n : 1) * sizeof(double));
	size_t k = 0;
	for (uint32_t i = 0; v && i < n; i++)
		if (run->a[i].ok)
			v[k++] = what(&run->a[i]);
	if (v)
		qsort(v, k, sizeof(double), lbb_cmp_double);
	p[0] = v ? lbb_pct(v, k, 0.50) : NAN;
	p[1] = v ? lbb_pct(v, k, 0.99) : NAN;
	free(v);
}

static double ttft_of(const struct answer *a)
{
	return a->ttft_ms;
}

static double computed_of(const struct answer *a)
{
	return a->prompt - a->reused;
}

/* Time to first token, throughput and reuse of a finished run. */
static void summarise(struct run *run, const struct lbw_chat *c)
{
	uint32_t later = 0, same = 0;
	double p[2];
	for (uint32_t i = 0; i < c->n; i++) {
		const struct answer *a = &run->a[i];
		uint32_t dep = c->r[i].depends_on;
		if (dep != LBW_CHAT_NONE) {
			later++;
			same += a->worker == run->a[dep].worker;
		}
		if (!a->ok)
			continue;
		run->prompt_tokens += (uint64_t)a->prompt;
		run->reused_tokens += (uint64_t)a->reused;
		run->reusable_tokens += a->reusable;
		run->generated += a->n_out;
		run->inserted += a->inserted;
		run->cache_lost += (unsigned)a->cache_lost;
		run->ttft_sum_s += a->ttft_ms / 1e3;
		run->gen_sum_s += a->gen_ms / 1e3;
	}
	quantiles(run, c->n, ttft_of, p);
	run->ttft_p50 = p[0];
	run->ttft_p99 = p[1];
	quantiles(run, c->n, computed_of, p);
	run->computed_p50 = p[0];
	run->same_worker = later ? (double)same / later : NAN;
	run->tokens_per_s = run->wall_s > 0 ? (double)run->generated / run->wall_s : NAN;
	double prompt = (double)run->prompt_tokens;
	run->reused_share = prompt > 0 ? (double)run->reused_tokens / prompt : NAN;
	run->reusable_share = prompt > 0 ? (double)run->reusable_tokens / prompt : NAN;
}

/* Whether every request of run generated the tokens base did; the first that did not is named
 * on stderr. */
static int same_outputs(const struct run *run, const struct run *base, const struct lbw_chat *c)
{
	for (uint32_t i = 0; i < c->n; i++) {
		const struct answer *a = &run->a[i], *b = &base->a[i];
		uint32_t k = 0;
		while (k < a->n_out && k < b->n_out && a->out[k] == b->out[k])
			k++;
		if (a->ok && b->ok && k == a->n_out && k == b->n_out)
			continue;
		const struct lbw_chat_req *r = &c->r[i];
		fprintf(stderr, "layerbank-bench prefix: request %u (conversation %u, turn %u): "
				"%s generated %s%u tokens, nocache %s%u; they differ from token "
				"%u\n",
			i, r->conv, r->turn, lbb_mode_name[run->mode], a->ok ? "" : "an error, ",
			a->n_out, b->ok ? "" : "an error, ", b->n_out, k);
		return 0;
	}
	return 1;
}

int lbb_prefix_stream(const struct lbb_stream_cfg *cfg, const struct lbw_chat *c,
		      enum lbb_mode m, struct lbb_stream_figs *out)
{
	struct opts o = { .model_file = cfg->model, .workers = cfg->workers,
			  .budget = cfg->budget, .quiet = cfg->quiet };
	struct lbb_prefix_geom g = { .seq_len = cfg->seq_len };
	struct run run;
	snprintf(o.data, sizeof(o.data), "%s", cfg->data);
	int rc = run_mode(&o, c, &g, m, &run);
	if (rc == 0) {
		summarise(&run, c);
		*out = (struct lbb_stream_figs){
			.reused_share = run.reused_share, .reusable_share = run.reusable_share,
			.ttft_p50_ms = run.ttft_p50, .tokens_per_s = run.tokens_per_s,
			.prompt_tokens = run.prompt_tokens, .reused_tokens = run.reused_tokens,
			.errors = run.errors, .cache_lost = run.cache_lost,
			.have_bank = run.have_bank, .bank = run.bank };
	}
	free_run(&run, c->n);
	return rc;
}

/* ---- reporting ---- */

/* Everything measured: the three runs and the ring's figure. */
struct report {
	const struct opts *o;
	const struct lbw_chat *c;
	struct lbb_prefix_geom g;
	struct run runs[LBB_N_MODES];
	struct lbb_prefix_figs ring;
	int identical;
};

static uint64_t kv_bytes_per_token(const struct lbb_prefix_geom *g)
{
	return (uint64_t)g->n_layers * 2 * g->kv_dim * sizeof(float);
}

static double ratio(double a, double b)
{
	return b > 0 ? a / b : NAN;
}

static json_object *bank_json(const struct lb_stats *b)
{
	json_object *o = json_object_new_object();
	json_object_object_add(o, "blocks", json_object_new_int64((int64_t)b->blocks));
	json_object_object_add(o, "bytes_used", json_object_new_int64((int64_t)b->bytes_used));
	json_object_object_add(o, "evictions", json_object_new_int64((int64_t)b->evictions));
	json_object_object_add(o, "prefix_hits", json_object_new_int64((int64_t)b->prefix_hits));
	json_object_object_add(o, "prefix_misses",
			       json_object_new_int64((int64_t)b->prefix_misses));
	json_object_object_add(o, "blocks_served",
			       json_object_new_int64((int64_t)b->blocks_served));
	return o;
}

static json_object *run_json(const struct run *r, uint32_t requests)
{
	json_object *o = json_object_new_object();
	json_object_object_add(o, "requests", json_object_new_int((int)requests));
	json_object_object_add(o, "errors", json_object_new_int((int)r->errors));
	json_object_object_add(o, "cache_lost", json_object_new_int((int)r->cache_lost));
	json_object_object_add(o, "ttft_p50_ms", lbb_json_num(r->ttft_p50));
	json_object_object_add(o, "ttft_p99_ms", lbb_json_num(r->ttft_p99));
	json_object_object_add(o, "tokens_per_s", lbb_json_num(r->tokens_per_s));
	json_object_object_add(o, "reused_token_share", lbb_json_num(r->reused_share));
	json_object_object_add(o, "prompt_tokens",
			       json_object_new_int64((int64_t)r->prompt_tokens));
	json_object_object_add(o, "reused_tokens",
			       json_object_new_int64((int64_t)r->reused_tokens));
	json_object_object_add(o, "reusable_tokens",
			       json_object_new_int64((int64_t)r->reusable_tokens));
	json_object_object_add(o, "reusable_token_share", lbb_json_num(r->reusable_share));
	json_object_object_add(o, "generated_tokens", json_object_new_int64((int64_t)r->generated));
	json_object_object_add(o, "blocks_inserted", json_object_new_int64((int64_t)r->inserted));
	json_object_object_add(o, "computed_tokens_p50", lbb_json_num(r->computed_p50));
	json_object_object_add(o, "same_worker_share", lbb_json_num(r->same_worker));
	json_object_object_add(o, "ttft_sum_s", lbb_json_num(r->ttft_sum_s));
	json_object_object_add(o, "busy_sum_s", lbb_json_num(r->gen_sum_s));
	json_object_object_add(o, "wall_s", lbb_json_num(r->wall_s));
	if (r->have_bank)
		json_object_object_add(o, "bank", bank_json(&r->bank));
	return o;
}

static void add_stream(json_object *j, const struct report *rp)
{
	const struct opts *o = rp->o;
	json_object_object_add(j, "model", json_object_new_string(o->llama ? LBW_LLAMA_110M_NAME
										: "stories260k"));
	json_object_object_add(j, "workers", json_object_new_int(o->workers));
	json_object_object_add(j, "requests", json_object_new_int((int)rp->c->n));
	json_object_object_add(j, "conversations", json_object_new_int((int)rp->c->n_convs));
	json_object_object_add(j, "systems", json_object_new_int((int)rp->c->n_sys));
	json_object_object_add(j, "seed", json_object_new_int64((int64_t)o->chat.seed));
	json_object_object_add(j, "max_tokens", json_object_new_int((int)rp->g.seq_len));
	json_object_object_add(j, "budget_bytes", json_object_new_int64((int64_t)o->budget));
	json_object_object_add(j, "kv_bytes_per_token",
			       json_object_new_int64((int64_t)kv_bytes_per_token(&rp->g)));
	json_object_object_add(j, "block_tokens", json_object_new_int(LBB_BLOCK_TOKENS));
}

static void print_json(const struct report *rp)
{
	const struct run *nc = &rp->runs[LBB_NOCACHE], *pv = &rp->runs[LBB_PRIVATE];
	const struct run *sh = &rp->runs[LBB_SHARED];
	json_object *j = json_object_new_object();
	add_stream(j, rp);
	for (int m = 0; m < LBB_N_MODES; m++)
		json_object_object_add(j, lbb_mode_name[m], run_json(&rp->runs[m], rp->c->n));
	json_object_object_add(j, "ttft_speedup_shared_vs_nocache",
			       lbb_json_num(ratio(nc->ttft_p50, sh->ttft_p50)));
	json_object_object_add(j, "ttft_speedup_shared_vs_private",
			       lbb_json_num(ratio(pv->ttft_p50, sh->ttft_p50)));
	json_object_object_add(j, "outputs_identical", json_object_new_boolean(rp->identical));
	json_object_object_add(j, "prefix_lookup_blocks", json_object_new_int(LBB_LOOKUP_BLOCKS));
	json_object_object_add(j, "prefix_lookup_us", lbb_json_num(rp->ring.hit.p50_us));
	json_object_object_add(j, "prefix_lookup_p99_us", lbb_json_num(rp->ring.hit.p99_us));
	json_object_object_add(j, "prefix_lookup_1block_us", lbb_json_num(rp->ring.hit1.p50_us));
	json_object_object_add(j, "prefix_lookup_1block_p99_us",
			       lbb_json_num(rp->ring.hit1.p99_us));
	json_object_object_add(j, "prefix_insert_us", lbb_json_num(rp->ring.insert.p50_us));
	json_object_object_add(j, "prefix_insert_p99_us", lbb_json_num(rp->ring.insert.p99_us));
	puts(json_object_to_json_string_ext(j, JSON_C_TO_STRING_PLAIN));
	json_object_put(j);
}

static void print_table(const struct report *rp)
{
	const struct opts *o = rp->o;
	const struct lbw_chat_cfg *cc = &o->chat;
	const struct run *nc = &rp->runs[LBB_NOCACHE], *pv = &rp->runs[LBB_PRIVATE];
	const struct run *sh = &rp->runs[LBB_SHARED];
	printf("chat stream: %u requests, %u conversations of %u-%u turns (%u open), %u system "
	       "prompts of %u-%u tokens, %u-%u tokens generated a turn, seed %llu\n",
	       rp->c->n, rp->c->n_convs, cc->turns_min, cc->turns_max, cc->open, rp->c->n_sys,
	       cc->sys_tokens_min, cc->sys_tokens_max, cc->gen_min, cc->gen_max,
	       (unsigned long long)cc->seed);
	printf("fleet: %d workers, model %s (context %u, %llu KV bytes a token), budget %llu MiB "
	       "(private: %llu MiB each)\n", o->workers, o->llama ? "llama-110m (generated)" :
	       "stories260K", rp->g.seq_len, (unsigned long long)kv_bytes_per_token(&rp->g),
	       (unsigned long long)(o->budget >> 20),
	       (unsigned long long)(o->budget / (uint64_t)o->workers >> 20));
	printf("  %-8s %12s %12s %9s %7s %9s %13s %13s %8s %6s\n", "mode", "ttft p50 ms",
	       "ttft p99 ms", "tokens/s", "reused", "reusable", "prompt tokens", "reused tokens",
	       "wall s", "errors");
	for (int m = 0; m < LBB_N_MODES; m++) {
		const struct run *r = &rp->runs[m];
		printf("  %-8s %12.2f %12.2f %9.1f %6.1f%% %8.1f%% %13llu %13llu %8.1f %6u\n",
		       lbb_mode_name[m], r->ttft_p50, r->ttft_p99, r->tokens_per_s,
		       r->reused_share * 100, r->reusable_share * 100,
		       (unsigned long long)r->prompt_tokens, (unsigned long long)r->reused_tokens,
		       r->wall_s, r->errors);
	}
	printf("  computed prompt tokens p50: %.0f, %.0f, %.0f; later turns on the previous turn's "
	       "worker: %.1f%%, %.1f%%, %.1f%%; requests that lost the cache: %u, %u\n",
	       nc->computed_p50, pv->computed_p50, sh->computed_p50, nc->same_worker * 100,
	       pv->same_worker * 100, sh->same_worker * 100, pv->cache_lost, sh->cache_lost);
	if (sh->have_bank)
		printf("  shared bank at the end: %llu blocks, %llu MiB, %llu evicted; %llu prefix "
		       "hits, %llu misses\n", (unsigned long long)sh->bank.blocks,
		       (unsigned long long)(sh->bank.bytes_used >> 20),
		       (unsigned long long)sh->bank.evictions,
		       (unsigned long long)sh->bank.prefix_hits,
		       (unsigned long long)sh->bank.prefix_misses);
	printf("  ttft p50 speedup shared vs nocache: %.2fx, shared vs private: %.2fx\n",
	       ratio(nc->ttft_p50, sh->ttft_p50), ratio(pv->ttft_p50, sh->ttft_p50));
	printf("  outputs of private and shared identical to nocache's: %s\n",
	       rp->identical ? "yes" : "NO");
	printf("  prefix hit on the ring (lb_lookup_prefix + lb_release): %d blocks p50 %.2f us, "
	       "p99 %.2f us; 1 block p50 %.2f us, p99 %.2f us\n", LBB_LOOKUP_BLOCKS,
	       rp->ring.hit.p50_us, rp->ring.hit.p99_us, rp->ring.hit1.p50_us,
	       rp->ring.hit1.p99_us);
	printf("  a block's insert (reserve, copy %llu KiB in, lb_insert_block): p50 %.1f us, "
	       "p99 %.1f us\n", (unsigned long long)(kv_bytes_per_token(&rp->g) *
						     LBB_BLOCK_TOKENS >> 10),
	       rp->ring.insert.p50_us, rp->ring.insert.p99_us);
}

/* ---- options ---- */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: layerbank-bench prefix [--model stories260k|llama-110m] [--workers N]\n"
		"         [--conversations N] [--seed N] [--budget BYTES] [--json] [--data DIR]\n"
		"         [--quiet]\n"
		"A fleet of layerbank-worker serve decoders generates the chat stream's\n"
		"turns without a cache, with a private in-process bank each (budget / workers\n"
		"bytes), and with layerbankd's shared bank (budget bytes); a turn is sent to an\n"
		"idle worker once the turn it continues is answered. Defaults: stories260k,\n"
		"4 workers, the chat stream's defaults (114 conversations, seed 1) fitted to\n"
		"the model's context; budget 64M (stories260k) or 1G (llama-110m). --data: the\n"
		"folder with stories260K.bin, tok512.bin and tinystories_val.txt (default\n"
		"$LAYERBANK_DATA, then the source tree's ../shared/data).\n");
}

static int bad(const char *opt, const char *v, const char *want)
{
	fprintf(stderr, "layerbank-bench prefix: bad %s '%s' (%s)\n", opt, v, want);
	return -1;
}

/* A decimal integer in lo..hi, the whole string. @return 0 or -1. */
static int integer(const char *v, double lo, double hi, double *out)
{
	char *end;
	errno = 0;
	*out = strtod(v, &end);
	return errno || end == v || *end || !isfinite(*out) || *out < lo || *out > hi ||
	       *out != floor(*out) ? -1 : 0;
}

/* Option a with its value val. @return 0 or -1 after a message. */
static int option(struct opts *o, const char *a, const char *val)
{
	double v;
	if (!strcmp(a, "--model")) {
		if (strcmp(val, "stories260k") && strcmp(val, LBW_LLAMA_110M_NAME))
			return bad(a, val, "stories260k or llama-110m");
		o->llama = !strcmp(val, LBW_LLAMA_110M_NAME);
	} else if (!strcmp(a, "--workers")) {
		if (integer(val, 1, LBB_FLEET_MAX_WORKERS, &v) < 0)
			return bad(a, val, "1..64");
		o->workers = (int)v;
	} else if (!strcmp(a, "--conversations")) {
		if (integer(val, 1, LBW_CHAT_MAX_CONVS, &v) < 0)
			return bad(a, val, "1..1000000");
		o->chat.conversations = (uint32_t)v;
	} else if (!strcmp(a, "--seed")) {
		if (integer(val, 0, 9007199254740992.0, &v) < 0)
			return bad(a, val, "an integer >= 0");
		o->chat.seed = (uint64_t)v;
	} else if (!strcmp(a, "--budget")) {
		if (lbu_parse_size(val, &o->budget) < 0 || !o->budget || o->budget > 1ull << 40)
			return bad(a, val, "a size such as 64M, up to 1T");
	} else if (!strcmp(a, "--data")) {
		snprintf(o->data, sizeof(o->data), "%s", val);
	} else {
		fprintf(stderr, "layerbank-bench prefix: unknown option '%s' (see --help)\n", a);
		return -1;
	}
	return 0;
}

static int parse(int argc, char **argv, struct opts *o)
{
	memset(o, 0, sizeof(*o));
	o->workers = 4;
	o->chat = lbw_chat_defaults();
	const char *env = getenv("LAYERBANK_DATA");
	snprintf(o->data, sizeof(o->data), "%s", env && *env ? env : LB_DATA_DIR);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--json")) {
			o->json = 1;
			continue;
		}
		if (!strcmp(a, "--quiet")) {
			o->quiet = 1;
			continue;
		}
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			usage(stdout);
			exit(0);
		}
		if (!val) {
			fprintf(stderr, "layerbank-bench prefix: %s needs a value (see --help)\n",
				a);
			return -1;
		}
		i++;
		if (option(o, a, val) < 0)
			return -1;
	}
	if (!o->budget)
		o->budget = o->llama ? 1ull << 30 : 64ull << 20;
	if (o->budget / (uint64_t)o->workers < (1u << 20)) {
		fprintf(stderr, "layerbank-bench prefix: --budget too small for %d private banks\n",
			o->workers);
		return -1;
	}
	return 0;
}

/* The files the benchmark reads. @return 0, or -1 after a message. */
static int check_data(const struct opts *o)
{
	const char *need[] = { "tok512.bin", "tinystories_val.txt", "stories260K.bin" };
	char path[600];
	for (size_t i = 0; i < (o->llama ? 2u : 3u); i++) {
		snprintf(path, sizeof(path), "%s/%s", o->data, need[i]);
		if (access(path, R_OK) < 0) {
			fprintf(stderr, "layerbank-bench prefix: %s: %s (set --data or "
					"LAYERBANK_DATA to the folder holding stories260K.bin, "
					"tok512.bin, tinystories_val.txt)\n",
				path, strerror(errno));
			return -1;
		}
	}
	return 0;
}

/* ---- the benchmark ---- */

/* The ring's figure, against a layerbankd of its own (the shared runs' settings). */
static int ring_figure(struct report *rp)
{
	struct lbb_fleet_cfg cfg = { .workers = rp->o->workers, .budget = rp->o->budget };
	int rc = lbb_fleet_daemon_start(&cfg);
	if (rc == 0)
		rc = lbb_prefix_lookup_time(lbb_fleet_socket(), &rp->g, &rp->ring);
	lbb_fleet_daemon_stop();
	return rc;
}

/* The ring's figure, then the stream through the fleet in each mode, nocache first. */
static int measure(struct report *rp)
{
	int rc = ring_figure(rp);
	for (int m = 0; m < LBB_N_MODES && rc == 0; m++) {
		rc = run_mode(rp->o, rp->c, &rp->g, (enum lbb_mode)m, &rp->runs[m]);
		if (rc == 0)
			summarise(&rp->runs[m], rp->c);
	}
	if (rc == 0) {
		const struct run *nc = &rp->runs[LBB_NOCACHE];
		int p = same_outputs(&rp->runs[LBB_PRIVATE], nc, rp->c);
		int s = same_outputs(&rp->runs[LBB_SHARED], nc, rp->c);
		rp->identical = p && s;
	}
	return rc;
}

int bench_prefix_main(int argc, char **argv)
{
	struct opts o;
	struct report rp = { .o = &o };
	struct lbw_paragraphs para = { 0 };
	struct lbw_chat c = { 0 };
	if (parse(argc, argv, &o) < 0)
		return 2;
	if (check_data(&o) < 0 || model_geom(&o, &rp.g) < 0 ||
	    lbb_prefix_chat(o.data, &o.chat, rp.g.seq_len, &para, &c) < 0) {
		lbw_paragraphs_free(&para);
		return 1;
	}
	rp.c = &c;
	lbb_fleet_init("prefix");
	int rc = measure(&rp);
	if (rc == 0 && o.json)
		print_json(&rp);
	else if (rc == 0)
		print_table(&rp);
	for (int m = 0; m < LBB_N_MODES; m++)
		free_run(&rp.runs[m], c.n);
	lbw_chat_free(&c);
	lbw_paragraphs_free(&para);
	return rc < 0 ? 1 : 0;
}
