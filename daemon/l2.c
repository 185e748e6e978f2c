/* The second tier's thread: l2.h says what it does. Three FIFOs under one mutex: reads a lookup
 * may be waiting for, reads of an input's other layers, and writes; the thread takes one job at
 * a time in that order of precedence, since a held lookup waits for the first while the others
 * only have to land some time. */
#include "l2.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "errf.h"
#include "fpindex.h"
#include "l2_cluster.h"

enum job_kind {
	J_GET,    /* a record, then (near) the nearest input's through the band sets */
	J_LAYERS, /* layers 0..n-1 of an input, one GET each */
	J_BLOCKS, /* blocks keys[0..n) of a prefix, one GET each, up to the first not had */
	J_PUT,    /* SET key record */
	J_INDEX,  /* SADD of a member to its bands' sets */
};

struct job {
	struct job *next;
	enum job_kind kind;
	char key[LBD_L2_KEY_MAX];
	uint8_t *record; /* J_PUT's record, J_INDEX's member */
	size_t len;      /* their bytes: what the write queue counts */
	struct lbd_l2_want want;
	struct lbd_l2_near near;
	bool has_near;
	uint32_t n;      /* J_LAYERS: the layers; J_BLOCKS: the keys */
	uint64_t (*keys)[2]; /* J_BLOCKS': keys[i] is the next */
	uint32_t i;
	lbd_l2_fetch_fn fn;
	void *ctx;
};

struct fifo {
	struct job *head, *tail;
};

struct lbd_l2 {
	struct lbd_cluster *cluster;
	uint32_t timeout_ms;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t work, idle;
	struct fifo reads, layers, writes;
	bool stop, busy;
	uint64_t queue_cap;
	uint32_t max_fetches;
	struct lbd_l2_stats st; /* under mu */
};

static void job_free(struct job *j)
{
	free(j->record);
	free(j->keys);
	free(j);
}

static void count(struct lbd_l2 *t, uint64_t *counter, uint64_t n)
{
	pthread_mutex_lock(&t->mu);
	*counter += n;
	pthread_mutex_unlock(&t->mu);
}

static redisReply *command(struct lbd_l2 *t, const char *key, int argc, const char **argv,
			   const size_t *len, bool *up)
{
	char err[256];
	redisReply *r = lbd_cluster_command(t->cluster, key, strlen(key), argc, argv, len, err,
					    sizeof(err));
	*up = r != NULL;
	return r;
}

/* Writes taken together, pipelined: one round trip a node rather than one a record, for small
 * records (prefix blocks, small models' layers). Not for large ones: redis-benchmark here SETs
 * 384 KiB values at 5,300/s one at a time, 8,200/s two at a time, 410/s sixteen at a time. */
#define PUT_BATCH 16
#define PUT_BATCH_BYTES (1u << 20)

/* The writes j[0..n): SET key record each, pipelined. */
static void do_puts(struct lbd_l2 *t, struct job **j, size_t n, bool *up)
{
	const char *argv[PUT_BATCH][3];
	size_t len[PUT_BATCH][3];
	struct lbd_cluster_cmd cmd[PUT_BATCH];
	redisReply *r[PUT_BATCH];
	uint64_t ok = 0;
	for (size_t i = 0; i < n; i++) {
		argv[i][0] = "SET";
		argv[i][1] = j[i]->key;
		argv[i][2] = (const char *)j[i]->record;
		len[i][0] = 3;
		len[i][1] = strlen(j[i]->key);
		len[i][2] = j[i]->len;
		cmd[i] = (struct lbd_cluster_cmd){ j[i]->key, len[i][1], 3, argv[i], len[i] };
	}
	lbd_cluster_pipeline(t->cluster, cmd, n, r);
	for (size_t i = 0; i < n; i++) {
		ok += r[i] && r[i]->type == REDIS_REPLY_STATUS;
		*up |= r[i] != NULL;
		if (r[i])
			freeReplyObject(r[i]);
	}
	pthread_mutex_lock(&t->mu);
	t->st.written += ok;
	t->st.write_errors += n - ok;
	pthread_mutex_unlock(&t->mu);
}

/* The band commands of fingerprint fp (verb, then the member for SADD), one a band, into cmd,
 * pipelined; the replies into r. */
static void bands(struct lbd_l2 *t, const char *verb, uint64_t model, const uint64_t fp[4],
		  const uint8_t *member, redisReply **r)
{
	char key[LBD_L2_BANDS][LBD_L2_KEY_MAX];
	const char *argv[LBD_L2_BANDS][3];
	size_t len[LBD_L2_BANDS][3];
	struct lbd_cluster_cmd cmd[LBD_L2_BANDS];
	for (uint32_t b = 0; b < LBD_L2_BANDS; b++) {
		size_t kl = lbd_l2_key_band(key[b], model, b, lbd_l2_band(fp, b));
		argv[b][0] = verb;
		argv[b][1] = key[b];
		argv[b][2] = (const char *)member;
		len[b][0] = strlen(verb);
		len[b][1] = kl;
		len[b][2] = LBD_L2_MEMBER;
		cmd[b] = (struct lbd_cluster_cmd){ key[b], kl, member ? 3 : 2, argv[b], len[b] };
	}
	lbd_cluster_pipeline(t->cluster, cmd, LBD_L2_BANDS, r);
}

/* An input into its bands' sets, each on its own slot: one that fails (its node down) costs
 * that band only. Counted as one record written when every band landed, else one write
 * error. */
static void do_index(struct lbd_l2 *t, struct job *j, bool *up)
{
	struct lbd_l2_member m;
	redisReply *r[LBD_L2_BANDS] = { NULL };
	uint32_t failed = lbd_l2_member_decode(j->record, j->len, &m) < 0 ? LBD_L2_BANDS : 0;
	if (!failed)
		bands(t, "SADD", j->want.model, m.fp, j->record, r);
	for (uint32_t b = 0; b < LBD_L2_BANDS; b++) {
		failed += !r[b] || r[b]->type != REDIS_REPLY_INTEGER;
		*up |= r[b] != NULL;
		if (r[b])
			freeReplyObject(r[b]);
	}
	count(t, failed ? &t->st.write_errors : &t->st.written, 1);
}

/* What a reply holding a record (or not) is: 0 failed, 1 missing, 2 refused, 3 believed. */
static int read_reply(const redisReply *r, const struct lbd_l2_want *want,
		      struct lbd_l2_record *rec)
{
	char why[128];
	if (!r)
		return 0;
	if (r->type == REDIS_REPLY_NIL)
		return 1;
	if (r->type != REDIS_REPLY_STRING)
		return 0;
	return lbd_l2_decode((const uint8_t *)r->str, r->len, want, rec, why, sizeof(why)) == 0 ? 3
												: 2;
}

/* GET j->key (len bytes), its record checked against j->want into *rec: *kind as read_reply
 * says. @return the reply, which rec points into (freeReplyObject once delivered); NULL. */
static redisReply *get(struct lbd_l2 *t, struct job *j, size_t len, struct lbd_l2_record *rec,
		       int *kind, bool *up)
{
	const char *argv[2] = { "GET", j->key };
	size_t lens[2] = { 3, len };
	redisReply *r = command(t, j->key, 2, argv, lens, up);
	*kind = read_reply(r, &j->want, rec);
	return r;
}

/* Hand rec (kind 3) or NULL to the callback and count what it was. @return whether the
 * callback took a record. */
static bool deliver(struct lbd_l2 *t, struct job *j, int kind, const struct lbd_l2_record *rec,
		    bool last)
{
	if (!j->fn(j->ctx, kind == 3 ? rec : NULL, last) && kind == 3)
		kind = 2;
	uint64_t *counter[] = { &t->st.fetch_errors, &t->st.fetch_misses, &t->st.rejected,
				&t->st.fetched };
	count(t, counter[kind], 1);
	return kind == 3;
}

/* The nearest input to j->near in the band sets, not j's own, into *best. @return whether
 * one was within the radius; *failed when a set could not be read. */
static bool nearest(struct lbd_l2 *t, const struct job *j, struct lbd_l2_member *best,
		    bool *failed, bool *up)
{
	redisReply *r[LBD_L2_BANDS];
	uint32_t best_d = UINT32_MAX;
	bands(t, "SMEMBERS", j->want.model, j->near.fp, NULL, r);
	for (uint32_t b = 0; b < LBD_L2_BANDS; b++) {
		*up |= r[b] != NULL;
		if (!r[b] || r[b]->type != REDIS_REPLY_ARRAY) {
			*failed = true;
			if (r[b])
				freeReplyObject(r[b]);
			continue;
		}
		for (size_t i = 0; i < r[b]->elements; i++) {
			const redisReply *e = r[b]->element[i];
			struct lbd_l2_member m;
			if (e->type != REDIS_REPLY_STRING ||
			    lbd_l2_member_decode((const uint8_t *)e->str, e->len, &m) < 0 ||
			    (m.exact[0] == j->want.key[0] && m.exact[1] == j->want.key[1]) ||
			    (!j->near.any_len && m.seq_len != j->near.seq_len))
				continue;
			uint32_t d = lbd_fp_hamming(m.fp, j->near.fp);
			if (d <= j->near.max_d && d < best_d) {
				best_d = d;
				*best = m;
			}
		}
		freeReplyObject(r[b]);
	}
	return best_d != UINT32_MAX;
}

/* A read: GET key, checked; when the cluster lacks it and the job has near terms, the nearest
 * input's record of the same layer. The callback is called once either way. */
static void do_get(struct lbd_l2 *t, struct job *j, bool *up)
{
	struct lbd_l2_record rec;
	int kind;
	redisReply *r = get(t, j, strlen(j->key), &rec, &kind, up);
	if (kind == 1 && j->has_near) {
		struct lbd_l2_member m;
		bool failed = false;
		freeReplyObject(r);
		r = NULL;
		if (nearest(t, j, &m, &failed, up)) {
			j->want.key[0] = m.exact[0];
			j->want.key[1] = m.exact[1];
			size_t len = lbd_l2_key_layer(j->key, j->want.model, m.exact, j->want.layer);
			r = get(t, j, len, &rec, &kind, up);
		} else {
			kind = failed ? 0 : 1;
		}
	}
	deliver(t, j, kind, &rec, true);
	if (r)
		freeReplyObject(r);
}

/* The next of an input's layers (j->want.layer, from 0 to j->n - 1), one GET at a time: a
 * read a lookup waits for never queues behind more than one layer. @return whether the job
 * has more to read (the caller queues it again). */
static bool do_layer(struct lbd_l2 *t, struct job *j, bool *up)
{
	struct lbd_l2_record rec;
	int kind;
	size_t len = lbd_l2_key_layer(j->key, j->want.model, j->want.key, j->want.layer);
	redisReply *r = get(t, j, len, &rec, &kind, up);
	bool last = j->want.layer + 1 >= j->n;
	deliver(t, j, kind, &rec, last);
	if (r)
		freeReplyObject(r);
	j->want.layer++;
	return !last;
}

/* The next block of a prefix (keys[j->i]); the chain stops at the first the cluster lacks or
 * the callback refuses (a block needs its parent). @return whether there is more. */
static bool do_block(struct lbd_l2 *t, struct job *j, bool *up)
{
	uint32_t i = j->i++;
	j->want.key[0] = j->keys[i][0];
	j->want.key[1] = j->keys[i][1];
	struct lbd_l2_record rec;
	int kind;
	redisReply *r = get(t, j, lbd_l2_key_block(j->key, j->want.model, j->keys[i]), &rec, &kind, up);
	bool last = i + 1 >= j->n || kind != 3;
	bool took = deliver(t, j, kind, &rec, last);
	if (r)
		freeReplyObject(r);
	if (!last && !took)
		j->fn(j->ctx, NULL, true); /* the chain broke: the callback's last call */
	return !last && took;
}

static void fifo_push(struct fifo *q, struct job *j)
{
	if (q->tail)
		q->tail->next = j;
	else
		q->head = j;
	q->tail = j;
}

static struct job *fifo_pop(struct fifo *q)
{
	struct job *j = q->head;
	if (j && !(q->head = j->next))
		q->tail = NULL;
	return j;
}

static bool queued(const struct lbd_l2 *t)
{
	return t->reads.head || t->layers.head || t->writes.head;
}

static void *tier_main(void *arg)
{
	struct lbd_l2 *t = arg;
	char err[256];
	/* The slot map read at once: the state says from the start whether the cluster answers. */
	bool up = lbd_cluster_refresh(t->cluster, err, sizeof(err)) > 0;
	pthread_mutex_lock(&t->mu);
	t->st.up = up;
	for (;;) {
		while (!queued(t) && !t->stop)
			pthread_cond_wait(&t->work, &t->mu);
		if (t->stop)
			break;
		struct job *j = fifo_pop(&t->reads), *puts[PUT_BATCH];
		size_t n_puts = 0;
		if (!j)
			j = fifo_pop(&t->layers);
		if (!j)
			j = fifo_pop(&t->writes); /* queued(t): there is one */
		if (!j)
			continue;
		if (j->kind == J_PUT || j->kind == J_INDEX) {
			t->st.queue_bytes -= j->len;
			t->st.queue_records--;
		} else {
			t->st.fetches_waiting--;
		}
		if (j->kind == J_PUT) { /* with the writes queued right behind it */
			size_t bytes = j->len;
			puts[n_puts++] = j;
			while (n_puts < PUT_BATCH && t->writes.head && t->writes.head->kind == J_PUT &&
			       bytes + t->writes.head->len <= PUT_BATCH_BYTES) {
				struct job *w = fifo_pop(&t->writes);
				bytes += w->len;
				t->st.queue_bytes -= w->len;
				t->st.queue_records--;
				puts[n_puts++] = w;
			}
		}
		t->busy = true;
		pthread_mutex_unlock(&t->mu);
		up = false;
		bool again = false;
		if (j->kind == J_GET)
			do_get(t, j, &up);
		else if (j->kind == J_LAYERS)
			again = do_layer(t, j, &up);
		else if (j->kind == J_BLOCKS)
			again = do_block(t, j, &up);
		else if (j->kind == J_PUT)
			do_puts(t, puts, n_puts, &up);
		else
			do_index(t, j, &up);
		for (size_t i = 1; i < n_puts; i++)
			job_free(puts[i]); /* puts[0] is j */
		pthread_mutex_lock(&t->mu);
		if (again) {
			j->next = NULL;
			fifo_push(&t->layers, j);
			t->st.fetches_waiting++;
		} else {
			job_free(j);
		}
		t->st.up = up;
		t->busy = false;
		if (!queued(t))
			pthread_cond_broadcast(&t->idle);
	}
	pthread_mutex_unlock(&t->mu);
	return NULL;
}

struct lbd_l2 *lbd_l2_start(const struct lbd_l2_cfg *cfg, char *err, size_t errlen)
{
	struct lbd_l2 *t = calloc(1, sizeof(*t));
	if (!t) {
		lbu_errf(err, errlen, "out of memory");
		return NULL;
	}
	t->cluster = lbd_cluster_new(cfg->seeds, cfg->timeout_ms ? cfg->timeout_ms : 200, err,
				     errlen);
	if (!t->cluster) {
		free(t);
		return NULL;
	}
	t->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : 200;
	t->queue_cap = cfg->queue_bytes ? cfg->queue_bytes : 64ull << 20;
	t->max_fetches = cfg->max_fetches ? cfg->max_fetches : 1024;
	pthread_mutex_init(&t->mu, NULL);
	pthread_cond_init(&t->work, NULL);
	pthread_cond_init(&t->idle, NULL);
	int rc = pthread_create(&t->thread, NULL, tier_main, t);
	if (rc) {
		lbu_errf(err, errlen, "the tier's thread: %s", strerror(rc));
		lbd_cluster_free(t->cluster);
		free(t);
		return NULL;
	}
	return t;
}

void lbd_l2_stop(struct lbd_l2 *t)
{
	if (!t)
		return;
	pthread_mutex_lock(&t->mu);
	t->stop = true;
	pthread_cond_signal(&t->work);
	pthread_mutex_unlock(&t->mu);
	pthread_join(t->thread, NULL);
	for (struct job *j; (j = fifo_pop(&t->reads)) || (j = fifo_pop(&t->layers)) ||
			    (j = fifo_pop(&t->writes));) {
		if (j->fn)
			j->fn(j->ctx, NULL, true);
		job_free(j);
	}
	lbd_cluster_free(t->cluster);
	pthread_cond_destroy(&t->work);
	pthread_cond_destroy(&t->idle);
	pthread_mutex_destroy(&t->mu);
	free(t);
}

/* Append j, unless its queue is full. @return whether it was. */
static bool enqueue(struct lbd_l2 *t, struct job *j)
{
	bool ok;
	pthread_mutex_lock(&t->mu);
	if (j->kind == J_PUT || j->kind == J_INDEX) {
		ok = t->st.queue_bytes + j->len <= t->queue_cap;
		if (ok) {
			t->st.queue_bytes += j->len;
			t->st.queue_records++;
		} else {
			t->st.dropped++;
		}
	} else {
		ok = t->st.fetches_waiting < t->max_fetches;
		if (ok)
			t->st.fetches_waiting++;
		else
			t->st.fetch_errors++;
	}
	if (ok) {
		fifo_push(j->kind == J_GET ? &t->reads
			  : j->kind == J_LAYERS || j->kind == J_BLOCKS ? &t->layers
								       : &t->writes,
			  j);
		pthread_cond_signal(&t->work);
	}
	pthread_mutex_unlock(&t->mu);
	return ok;
}

/* A job for key; NULL (no memory, a key too long) with *failed counted. */
static struct job *job_new(struct lbd_l2 *t, const char *key, uint64_t *failed)
{
	struct job *j = strlen(key) < sizeof(j->key) ? calloc(1, sizeof(*j)) : NULL;
	if (j) {
		strcpy(j->key, key);
		return j;
	}
	pthread_mutex_lock(&t->mu);
	(*failed)++;
	pthread_mutex_unlock(&t->mu);
	return NULL;
}

/* Queue a write job of kind with its bytes (malloc'd: owned from now). */
static bool queue_write(struct lbd_l2 *t, enum job_kind kind, const char *key, uint64_t model,
			uint8_t *bytes, size_t len)
{
	struct job *j = job_new(t, key, &t->st.dropped);
	if (!j) {
		free(bytes);
		return false;
	}
	j->kind = kind;
	j->record = bytes;
	j->len = len;
	j->want.model = model;
	if (enqueue(t, j))
		return true;
	job_free(j);
	return false;
}

bool lbd_l2_put(struct lbd_l2 *t, const char *key, uint8_t *record, size_t len)
{
	return queue_write(t, J_PUT, key, 0, record, len);
}

bool lbd_l2_index(struct lbd_l2 *t, uint64_t model, const struct lbd_l2_member *m)
{
	uint8_t *b = malloc(LBD_L2_MEMBER);
	if (b)
		lbd_l2_member_encode(b, m);
	else
		count(t, &t->st.dropped, 1);
	return b && queue_write(t, J_INDEX, "", model, b, LBD_L2_MEMBER);
}

/* Queue a read job. */
static bool queue_read(struct lbd_l2 *t, struct job *j, lbd_l2_fetch_fn fn, void *ctx)
{
	j->fn = fn;
	j->ctx = ctx;
	if (enqueue(t, j))
		return true;
	free(j);
	return false;
}

bool lbd_l2_fetch(struct lbd_l2 *t, const char *key, const struct lbd_l2_want *want,
		  const struct lbd_l2_near *near, lbd_l2_fetch_fn fn, void *ctx)
{
	struct job *j = job_new(t, key, &t->st.fetch_errors);
	if (!j)
		return false;
	j->kind = J_GET;
	j->want = *want;
	if (near) {
		j->near = *near;
		j->has_near = true;
	}
	return queue_read(t, j, fn, ctx);
}

bool lbd_l2_fetch_layers(struct lbd_l2 *t, uint64_t model, const uint64_t exact[2], uint32_t n,
			 lbd_l2_fetch_fn fn, void *ctx)
{
	struct job *j = n ? job_new(t, "", &t->st.fetch_errors) : NULL;
	if (!j)
		return false;
	j->kind = J_LAYERS;
	j->want = (struct lbd_l2_want){ model, LBD_L2_LAYER, { exact[0], exact[1] }, 0 };
	j->n = n;
	return queue_read(t, j, fn, ctx);
}

bool lbd_l2_fetch_blocks(struct lbd_l2 *t, uint64_t model, const uint64_t (*keys)[2], uint32_t n,
			 lbd_l2_fetch_fn fn, void *ctx)
{
	struct job *j = n ? job_new(t, "", &t->st.fetch_errors) : NULL;
	if (!j)
		return false;
	if (!(j->keys = malloc(sizeof(*j->keys) * n))) {
		count(t, &t->st.fetch_errors, 1);
		free(j);
		return false;
	}
	memcpy(j->keys, keys, sizeof(*j->keys) * n);
	j->kind = J_BLOCKS;
	j->want = (struct lbd_l2_want){ model, LBD_L2_BLOCK, { 0, 0 }, 0 };
	j->n = n;
	j->fn = fn;
	j->ctx = ctx;
	if (enqueue(t, j))
		return true;
	job_free(j);
	return false;
}

uint32_t lbd_l2_timeout_ms(const struct lbd_l2 *t)
{
	return t->timeout_ms;
}

void lbd_l2_stats(struct lbd_l2 *t, struct lbd_l2_stats *out)
{
	pthread_mutex_lock(&t->mu);
	*out = t->st;
	pthread_mutex_unlock(&t->mu);
}

bool lbd_l2_drain(struct lbd_l2 *t, uint32_t timeout_ms)
{
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += timeout_ms / 1000;
	until.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
	if (until.tv_nsec >= 1000000000) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&t->mu);
	int rc = 0;
	while ((queued(t) || t->busy) && rc == 0)
		rc = pthread_cond_timedwait(&t->idle, &t->mu, &until);
	bool done = !queued(t) && !t->busy;
	pthread_mutex_unlock(&t->mu);
	return done;
}
