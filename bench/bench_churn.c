/* layerbank-bench churn: what clients that come and go cost a client that stays. It runs a
 * layerbankd of its own (one service thread, so that every client shares it); a steady client
 * sends lookups back to back and times each round trip, for one-second windows in turn quiet
 * and with a second thread connecting (8 MiB staging, the default), and disconnecting as fast
 * as it can, so that the daemon keeps creating and freeing regions. Printed per kind of window:
 * the steady client's p50, p99.9 and longest round trip, and churn / quiet. Everything it starts
 * it stops; its temporary folder goes too. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "io.h"
#include "layerbank/layerbank.h"
#include "layerbank/ring.h"

#define WINDOWS 3    /* of each kind, interleaved */
#define WINDOW_S 1.0
#define MAX_SAMPLES 4000000

static char cdir[128], csock[192], cdlog[192];
static pid_t cdaemon = -1;

static void ccleanup(void)
{
	lbb_stop(&cdaemon);
	lbu_rmtree(cdir);
	cdir[0] = '\0';
}

static void start_daemon(void)
{
	const char *argv[] = { LB_DAEMON_PATH, "--foreground", "--socket", csock, "--arena-size", "16M",
			       "--hugepages", "off", "--threads", "1", NULL };

	cdaemon = lbb_spawn(argv, cdlog);
	if (cdaemon < 0)
		lbb_die("churn", "fork", errno);
	if (lbb_wait_socket(csock, &cdaemon, 10) < 0)
		lbb_die("churn", "layerbankd did not start", cdaemon < 0 ? EIO : ETIMEDOUT);
}

struct churner {
	atomic_int on, stop;
	atomic_uint_fast64_t cycles;
};

static void *churn_main(void *p)
{
	struct churner *ch = p;
	struct timespec nap = { 0, 1000000 };

	while (!atomic_load(&ch->stop)) {
		struct lb_client *c;
		if (!atomic_load(&ch->on)) {
			nanosleep(&nap, NULL);
			continue;
		}
		if (lb_connect(csock, "bench-churn", &c) == 0) {
			lb_close(c);
			atomic_fetch_add(&ch->cycles, 1);
		}
	}
	return NULL;
}

struct figures {
	double p50_us, p999_us, max_us;
	uint64_t n;
};

static struct figures summarise(uint64_t *v, uint64_t n)
{
	struct figures f = { 0, 0, 0, n };
	if (!n)
		return f;
	qsort(v, n, sizeof(*v), lbb_cmp_u64);
	f.p50_us = (double)v[n / 2] / 1e3;
	f.p999_us = (double)v[n - 1 - n / 1000] / 1e3;
	f.max_us = (double)v[n - 1] / 1e3;
	return f;
}

int bench_churn_main(int argc, char **argv)
{
	static const struct option opts[] = { { "json", no_argument, NULL, 'j' }, { NULL, 0, NULL, 0 } };
	const struct lb_model_desc d = { .name = "churn", .weights_hash = 1, .n_layers = 1,
					 .hidden = 64, .dtype = LB_DTYPE_F32, .max_seq = 64,
					 .fp_seed = 1 };
	struct churner ch = { 0 };
	uint64_t *quiet = NULL, *busy = NULL, nq = 0, nb = 0;
	struct lb_client *c = NULL;
	bool json = false;
	uint32_t model;
	pthread_t t;
	int opt;

	while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (opt != 'j') {
			fprintf(stderr, "usage: layerbank-bench churn [--json]\n");
			return 2;
		}
		json = true;
	}
	lbb_tempdir(cdir, sizeof(cdir), NULL, "churn", ccleanup);
	snprintf(csock, sizeof(csock), "%s/lb.sock", cdir);
	snprintf(cdlog, sizeof(cdlog), "%s/daemon.log", cdir);
	start_daemon();

	quiet = malloc(MAX_SAMPLES * sizeof(*quiet));
	busy = malloc(MAX_SAMPLES * sizeof(*busy));
	if (!quiet || !busy)
		lbb_die("churn", "malloc", ENOMEM);
	int ret = lb_connect(csock, "bench-steady", &c);
	if (ret == 0)
		ret = lb_register_model(c, &d, &model);
	if (ret < 0)
		lbb_die("churn", "connecting the steady client", -ret);
	/* Wait as long as it takes: the stall is what is measured, not the library's give-up. */
	lb_set_wait_us(c, 2000000);
	if (pthread_create(&t, NULL, churn_main, &ch) != 0)
		lbb_die("churn", "pthread_create", EAGAIN);

	struct lb_key key = { .seq_len = 1 };
	for (int w = 0; w < 2 * WINDOWS; w++) {
		bool churn = w % 2;
		uint64_t *v = churn ? busy : quiet, *n = churn ? &nb : &nq;
		atomic_store(&ch.on, churn);
		uint64_t end = lb_now_ns() + (uint64_t)(WINDOW_S * 1e9);
		for (uint64_t now = lb_now_ns(); now < end && *n < MAX_SAMPLES;) {
			struct lb_hit hit;
			key.exact[0] = now; /* a miss every time: a round trip through the service thread */
			ret = lb_lookup(c, model, 0, &key, NULL, 0, &hit);
			uint64_t after = lb_now_ns();
			if (ret == 0)
				lb_release(c, hit.lease);
			else if (ret != -ENOENT)
				lbb_die("churn", "lookup", -ret);
			v[(*n)++] = after - now;
			now = after;
		}
	}
	atomic_store(&ch.stop, 1);
	pthread_join(t, NULL);
	lb_close(c);
	ccleanup();

	struct figures fq = summarise(quiet, nq), fb = summarise(busy, nb);
	uint64_t cycles = atomic_load(&ch.cycles);
	free(quiet);
	free(busy);
	if (json) {
		json_object *o = json_object_new_object();
		json_object_object_add(o, "connects", json_object_new_int64((int64_t)cycles));
		json_object_object_add(o, "quiet_p999_us", json_object_new_double(fq.p999_us));
		json_object_object_add(o, "quiet_max_us", json_object_new_double(fq.max_us));
		json_object_object_add(o, "churn_p999_us", json_object_new_double(fb.p999_us));
		json_object_object_add(o, "churn_max_us", json_object_new_double(fb.max_us));
		json_object_object_add(o, "max_ratio", json_object_new_double(fb.max_us / fq.max_us));
		printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
		json_object_put(o);
		return 0;
	}
	printf("a steady client's lookups, %d windows of %.0f s each way (%" PRIu64 " connects and "
	       "disconnects of another client in the churn windows)\n", WINDOWS, WINDOW_S, cycles);
	printf("  %-8s %10s %10s %10s %10s\n", "", "lookups", "p50 us", "p99.9 us", "max us");
	printf("  %-8s %10" PRIu64 " %10.1f %10.1f %10.0f\n", "quiet", fq.n, fq.p50_us, fq.p999_us, fq.max_us);
	printf("  %-8s %10" PRIu64 " %10.1f %10.1f %10.0f\n", "churn", fb.n, fb.p50_us, fb.p999_us, fb.max_us);
	printf("  churn / quiet: p99.9 %.1fx, max %.1fx\n", fb.p999_us / fq.p999_us, fb.max_us / fq.max_us);
	return 0;
}
