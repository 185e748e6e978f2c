/* The second tier's thread: l2.h says what it does. Two FIFOs under one mutex, reads and
 * writes; the thread takes one job at a time, a read before any write, since a lookup may be
 * waiting for it while a write only has to land some time. */
#include "l2.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "errf.h"
#include "l2_cluster.h"

struct job {
	struct job *next;
	char key[LBD_L2_KEY_MAX];
	uint8_t *record; /* a write's; NULL for a read */
	size_t len;
	struct lbd_l2_want want; /* a read's */
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
	struct fifo reads, writes;
	bool stop, busy;
	uint64_t queue_cap;
	uint32_t max_fetches;
	struct lbd_l2_stats st; /* under mu */
};

static void job_free(struct job *j)
{
	free(j->record);
	free(j);
}

/* A write: SET key record. */
static void do_put(struct lbd_l2 *t, struct job *j, bool *up)
{
	char err[256];
	const char *argv[3] = { "SET", j->key, (const char *)j->record };
	size_t len[3] = { 3, strlen(j->key), j->len };
	redisReply *r = lbd_cluster_command(t->cluster, j->key, len[1], 3, argv, len, err,
					    sizeof(err));
	bool ok = r && r->type == REDIS_REPLY_STATUS;
	*up = r != NULL;
	if (r)
		freeReplyObject(r);
	pthread_mutex_lock(&t->mu);
	if (ok)
		t->st.written++;
	else
		t->st.write_errors++;
	pthread_mutex_unlock(&t->mu);
}

/* A read: GET key, the record checked, the callback called either way. */
static void do_get(struct lbd_l2 *t, struct job *j, bool *up)
{
	char err[256];
	const char *argv[2] = { "GET", j->key };
	size_t len[2] = { 3, strlen(j->key) };
	redisReply *r = lbd_cluster_command(t->cluster, j->key, len[1], 2, argv, len, err,
					    sizeof(err));
	struct lbd_l2_record rec;
	int kind = !r ? 0 : r->type == REDIS_REPLY_NIL ? 1
			 : r->type != REDIS_REPLY_STRING ? 0
			 : lbd_l2_decode((const uint8_t *)r->str, r->len, &j->want, &rec, err,
					 sizeof(err)) == 0 ? 3 : 2;
	*up = r != NULL;
	if (!j->fn(j->ctx, kind == 3 ? &rec : NULL) && kind == 3)
		kind = 2;
	if (r)
		freeReplyObject(r);
	pthread_mutex_lock(&t->mu);
	uint64_t *count[] = { &t->st.fetch_errors, &t->st.fetch_misses, &t->st.rejected,
			      &t->st.fetched };
	(*count[kind])++;
	pthread_mutex_unlock(&t->mu);
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
	return t->reads.head || t->writes.head;
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
		struct job *j = fifo_pop(&t->reads);
		if (!j)
			j = fifo_pop(&t->writes); /* queued(t): there is one */
		if (!j)
			continue;
		if (j->record) {
			t->st.queue_bytes -= j->len;
			t->st.queue_records--;
		} else {
			t->st.fetches_waiting--;
		}
		t->busy = true;
		pthread_mutex_unlock(&t->mu);
		up = false;
		if (j->record)
			do_put(t, j, &up);
		else
			do_get(t, j, &up);
		job_free(j);
		pthread_mutex_lock(&t->mu);
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
	for (struct job *j; (j = fifo_pop(&t->reads)) || (j = fifo_pop(&t->writes));) {
		if (!j->record)
			j->fn(j->ctx, NULL);
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
	if (j->record) {
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
		fifo_push(j->record ? &t->writes : &t->reads, j);
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

bool lbd_l2_put(struct lbd_l2 *t, const char *key, uint8_t *record, size_t len)
{
	struct job *j = job_new(t, key, &t->st.dropped);
	if (!j) {
		free(record);
		return false;
	}
	j->record = record;
	j->len = len;
	if (enqueue(t, j))
		return true;
	job_free(j);
	return false;
}

bool lbd_l2_fetch(struct lbd_l2 *t, const char *key, const struct lbd_l2_want *want,
		  lbd_l2_fetch_fn fn, void *ctx)
{
	struct job *j = job_new(t, key, &t->st.fetch_errors);
	if (!j)
		return false;
	j->want = *want;
	j->fn = fn;
	j->ctx = ctx;
	if (enqueue(t, j))
		return true;
	free(j);
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
