/*
 * Daemon death, seen from the client library: a daemon SIGKILLed under load stalls no worker
 * call, every lookup becomes a miss, hits already handed out stay readable until released,
 * and once a daemon is back the clients reconnect by themselves and register their models
 * again, with the model ids the application holds still pointing at the right models.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "layerbank/layerbank.h"
#include "testutil.h"

#define HIDDEN 256u
#define N_TOK 4u
#define BYTES (HIDDEN * N_TOK * sizeof(float))

static struct lbt_env env; /* every test's fixture: its daemon, started by setup */

static const struct lb_model_desc model = { .name = "reconnect", .weights_hash = 11,
					    .n_layers = 2, .hidden = HIDDEN,
					    .dtype = LB_DTYPE_F32, .max_seq = 64 };
static const struct lb_model_desc other = { .name = "other", .weights_hash = 12, .n_layers = 2,
					    .hidden = HIDDEN, .dtype = LB_DTYPE_F32, .max_seq = 64 };

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void key_of(uint32_t i, struct lb_key *k)
{
	memset(k, 0, sizeof(*k));
	for (int w = 0; w < 4; w++)
		k->fp[w] = 0x9e3779b97f4a7c15ull * (i * 4 + (uint32_t)w + 1);
	k->exact[0] = i + 1;
	k->exact[1] = 0xabcdefull;
	k->seq_len = N_TOK;
}

static float value_of(uint32_t i, uint32_t layer, uint32_t j)
{
	return (float)(i * 1000 + layer * 100) + (float)j / 1024.0f;
}

/* Insert input i's layers; @return 0 or the first error. */
static int insert(struct lb_client *c, uint32_t model_id, uint32_t i)
{
	struct lb_key k;
	struct lb_shape shape = { .dtype = LB_DTYPE_F32, .ndim = 2, .dims = { N_TOK, HIDDEN } };
	key_of(i, &k);
	for (uint32_t l = 0; l < 2; l++) {
		float *p = lb_insert_reserve(c, BYTES);
		if (!p)
			return -errno;
		for (uint32_t j = 0; j < BYTES / sizeof(float); j++)
			p[j] = value_of(i, l, j);
		int ret = lb_insert_commit(c, model_id, l, &k, &shape);
		if (ret < 0 && ret != -EEXIST)
			return ret;
	}
	return 0;
}

static int hit_is_right(const struct lb_hit *h, uint32_t i)
{
	const float *p = h->data;
	if (h->bytes != BYTES)
		return 0;
	for (uint32_t j = 0; j < BYTES / sizeof(float); j++)
		if (p[j] != value_of(i, h->layer, j))
			return 0;
	return 1;
}

/* ---- the worker: lookups, inserts, releases in a loop, every call timed ---- */

struct worker {
	struct lb_client *c;
	uint32_t model_id;
	atomic_int stop, pause, paused;
	atomic_uint_fast64_t down_ns; /* set by the main thread: when the daemon was killed */
	atomic_uint_fast64_t up_ns;   /* when the new daemon listened, 0 before */
	uint64_t max_down_ns;         /* the longest call while no daemon ran */
	uint64_t max_back_ns;         /* the longest call once a daemon listened again */
	uint64_t first_ok_ns;         /* first successful hit after the kill, 0 none */
	unsigned hits, misses, gone, other_errors, bad_bytes;
};

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	for (uint32_t n = 0; !atomic_load(&w->stop); n++) {
		if (atomic_load(&w->pause)) {
			atomic_store(&w->paused, 1);
			usleep(1000);
			continue;
		}
		atomic_store(&w->paused, 0);
		uint32_t i = n % 16;
		struct lb_key k;
		struct lb_hit h = { 0 }; /* a miss leaves it as it is: no stale lease from the last hit */
		key_of(i, &k);
		uint64_t t0 = now_ns();
		int ret = lb_lookup_deepest(w->c, w->model_id, &k, NULL, 0, &h);
		if (ret == -ENOENT)
			ret = insert(w->c, w->model_id, i);
		uint64_t t1 = now_ns(), down = atomic_load(&w->down_ns), up = atomic_load(&w->up_ns);
		uint64_t *worst = up && t0 >= up ? &w->max_back_ns : &w->max_down_ns;
		if (down && t0 >= down && t1 - t0 > *worst)
			*worst = t1 - t0;
		if (ret == 0 && h.lease) {
			w->hits++;
			w->bad_bytes += !hit_is_right(&h, i);
			if (up && t0 >= up && !w->first_ok_ns)
				w->first_ok_ns = t1;
			ret = lb_release(w->c, h.lease);
			if (ret == -ECONNRESET || ret == -ENOTCONN || ret == -ETIMEDOUT)
				w->gone++;
			else if (ret != 0) {
				print_message("worker: release: unexpected %d (%s)\n", ret,
					      lb_last_error(w->c));
				w->other_errors++;
			}
		} else if (ret == 0 || ret == -ENOENT) {
			w->misses++;
		} else if (ret == -ECONNRESET || ret == -ENOTCONN || ret == -ETIMEDOUT) {
			w->gone++; /* the daemon is away: a miss */
		} else {
			print_message("worker: unexpected %d (%s)\n", ret, lb_last_error(w->c));
			w->other_errors++;
		}
		memset(&h, 0, sizeof(h));
		usleep(200);
	}
	return NULL;
}

static int setup(void **state)
{
	lbt_env_setup(state);
	return lbt_daemon_start(&env, LBT_ARGS(LBT_SMALL)) > 0 ? 0 : -1;
}

static uint64_t model_inserts(struct lb_client *c, uint32_t id)
{
	struct lb_layer_stats ls[2];
	char name[LB_NAME_MAX + 1];
	assert_int_equal(lb_model_stats(c, id, name, ls, 2), 2);
	return ls[0].inserts + ls[1].inserts;
}

static void test_daemon_killed_and_back(void **state)
{
	struct lb_client *holder, *c3;
	struct worker w = { 0 };
	struct lb_hit held;
	struct lb_key k;
	uint32_t id, id3;
	pthread_t t;
	uint8_t copy[BYTES];
	(void)state;

	/* A client that holds a hit across the daemon's death. */
	assert_int_equal(lb_connect(env.sock, "holder", &holder), 0);
	lb_set_wait_us(holder, 1000000); /* not the one measured: no time-outs on a slow machine */
	assert_int_equal(lb_register_model(holder, &model, &id), 0);
	assert_int_equal(insert(holder, id, 100), 0);
	key_of(100, &k);
	assert_int_equal(lb_lookup_deepest(holder, id, &k, NULL, 0, &held), 0);
	assert_true(hit_is_right(&held, 100));
	memcpy(copy, held.data, BYTES);

	/* A worker under load. */
	assert_int_equal(lb_connect(env.sock, "worker", &w.c), 0);
	lb_set_wait_us(w.c, 0); /* the library's default, whatever the test environment says */
	assert_int_equal(lb_register_model(w.c, &model, &w.model_id), 0);
	assert_int_equal(w.model_id, id);
	assert_int_equal(pthread_create(&t, NULL, worker_main, &w), 0);
	usleep(300 * 1000);
	unsigned hits_before = w.hits;

	atomic_store(&w.down_ns, now_ns());
	lbt_daemon_kill(&env);
	usleep(300 * 1000);
	unsigned gone_while_down = w.gone, hits_down = w.hits;

	/* The hit handed out before the death is still there, byte for byte, until released. */
	assert_memory_equal(held.data, copy, BYTES);
	struct lb_hit h2;
	int ret = lb_lookup_deepest(holder, id, &k, NULL, 0, &h2);
	assert_true(ret == -ECONNRESET || ret == -ENOTCONN);
	assert_false(lb_connected(holder));
	assert_memory_equal(held.data, copy, BYTES);
	assert_int_equal(lb_release(holder, held.lease), 0);

	/* A new daemon, where another model is registered first: ids move. */
	atomic_store(&w.pause, 1);
	while (!atomic_load(&w.paused))
		usleep(1000);
	assert_true(lbt_daemon_start(&env, LBT_ARGS(LBT_SMALL)) > 0);
	uint64_t up = now_ns();
	assert_int_equal(lb_connect(env.sock, "other", &c3), 0);
	lb_set_wait_us(c3, 1000000);
	assert_int_equal(lb_register_model(c3, &other, &id3), 0);
	assert_int_equal(id3, id); /* the first model of the new daemon gets the old id */
	atomic_store(&w.up_ns, now_ns());
	atomic_store(&w.pause, 0);
	for (int i = 0; i < 300 && !w.first_ok_ns; i++)
		usleep(10 * 1000);
	usleep(200 * 1000);
	atomic_store(&w.stop, 1);
	pthread_join(t, NULL);

	print_message("hits before the kill %u, while down %u, after %u; lookups answered "
		      "'gone' %u (%u while down)\n",
		      hits_before, hits_down - hits_before, w.hits - hits_down, w.gone,
		      gone_while_down);
	print_message("longest call with no daemon: %.3f ms, after it was back (reconnecting "
		      "included): %.3f ms; first hit %.1f ms after the new daemon listened; "
		      "reconnects %u\n",
		      (double)w.max_down_ns / 1e6, (double)w.max_back_ns / 1e6,
		      w.first_ok_ns ? (double)(w.first_ok_ns - up) / 1e6 : -1.0,
		      lb_reconnects(w.c));

	assert_true(hits_before > 0);
	assert_int_equal(w.other_errors, 0);
	assert_int_equal(w.bad_bytes, 0);
	assert_true(gone_while_down > 0);
	/* No call waited long: each gives up after its wait (5 ms by default). The figures
	 * against the 10 ms target are printed above and kept in tests/fault/README.md; the
	 * bound here only has to catch a hang on these shared machines. */
	assert_true(w.max_down_ns < 100ull * 1000 * 1000);
	assert_true(w.max_back_ns < 100ull * 1000 * 1000);
	/* Back by itself within a second of the daemon listening. */
	assert_true(w.first_ok_ns != 0);
	assert_true(w.first_ok_ns - up < 1000ull * 1000 * 1000);
	assert_int_equal(lb_reconnects(w.c), 1);
	assert_true(lb_connected(w.c));

	/* The worker's model id still means its model: its inserts went to "reconnect", which
	 * the new daemon numbers otherwise, and none to "other". */
	uint32_t now_id;
	assert_int_equal(lb_register_model(c3, &model, &now_id), 0);
	assert_int_not_equal(now_id, id);
	assert_true(model_inserts(c3, now_id) > 0);
	assert_int_equal(model_inserts(c3, id3), 0);

	/* The holder comes back too, on its own, at its next calls. */
	uint64_t t0 = now_ns();
	while (lb_ping(holder) != 0 && now_ns() - t0 < 2000ull * 1000 * 1000)
		usleep(10 * 1000);
	assert_true(lb_connected(holder));
	assert_int_equal(insert(holder, id, 100), 0); /* the new daemon started empty */
	assert_int_equal(lb_lookup_deepest(holder, id, &k, NULL, 0, &h2), 0);
	assert_true(hit_is_right(&h2, 100));
	assert_int_equal(lb_release(holder, h2.lease), 0);

	lb_close(c3);
	lb_close(w.c);
	lb_close(holder);
}

/* Killed with an insert reserved: the reservation stays writable, its commit fails cleanly. */
static void test_daemon_killed_mid_insert(void **state)
{
	struct lb_client *c;
	struct lb_key k;
	struct lb_shape shape = { .dtype = LB_DTYPE_F32, .ndim = 2, .dims = { N_TOK, HIDDEN } };
	uint32_t id;
	(void)state;

	assert_int_equal(lb_connect(env.sock, "mid-insert", &c), 0);
	lb_set_wait_us(c, 1000000);
	assert_int_equal(lb_register_model(c, &model, &id), 0);
	float *p = lb_insert_reserve(c, BYTES);
	assert_non_null(p);
	lbt_daemon_kill(&env);
	for (uint32_t j = 0; j < BYTES / sizeof(float); j++)
		p[j] = (float)j; /* still mapped */
	key_of(7, &k);
	/* The socket hangs up once the kernel has torn the daemon down, which may outlast the
	 * call's wait: then the commit is a time-out, and the loss is seen at a later call. */
	int ret = lb_insert_commit(c, id, 0, &k, &shape);
	assert_true(ret == -ECONNRESET || ret == -ENOTCONN || ret == -ETIMEDOUT);
	for (int i = 0; i < 200 && lb_connected(c); i++)
		(void)lb_ping(c);
	assert_false(lb_connected(c));
	assert_null(lb_insert_reserve(c, BYTES)); /* no daemon: at once, not after a time-out */
	assert_int_equal(errno, ENOTCONN);
	lb_close(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_prestate_setup_teardown(test_daemon_killed_and_back, setup,
							 lbt_env_teardown, &env),
		cmocka_unit_test_prestate_setup_teardown(test_daemon_killed_mid_insert, setup,
							 lbt_env_teardown, &env),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
