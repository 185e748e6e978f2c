/*
 * The kill harness: survivor workers insert and look up for the whole run, every hit checked
 * byte for byte, while victim workers are forked one after another, do random work — hold
 * leases, stop between lb_insert_reserve and lb_insert_commit, insert flat out, flood their
 * request ring without reading completions, hand their socket to a child — and are SIGKILLed
 * at a random moment. Afterwards the daemon must be up with no lease held, only the survivors
 * connected, its arena bytes exactly those of its entries (and, once drained, the whole data
 * area allocatable in one piece), and no descriptor or mapping of a dead client left.
 *
 *   kill_harness [--kills N] [--survivors N] [--seed X] [--max-delay-us N] [--threads N]
 *                [--arena-size SIZE] [--policy lru|decay|ttl] [--verbose]
 *
 * Exit status: 0 every check passed, 1 a check failed, 2 bad usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "faultutil.h"
#include "layerbank/ring.h"
#include "layerbank/shm.h"
#include "testutil.h"

#define MAX_SURVIVORS 16
#define N_KEYS 3000u          /* inputs the workers share: hits, and eviction in a small arena */
#define SURVIVOR_HELD 8u      /* leases a survivor keeps for a while, checked again at release */
#define REAP_TIMEOUT_US 5000000.0
#define READY_TIMEOUT_MS 5000

/* ---- options ---- */

struct opts {
	unsigned kills, survivors, threads;
	long max_delay_us;
	uint64_t seed;
	const char *arena, *policy;
	bool verbose;
};

static void usage(void)
{
	fprintf(stderr, "usage: kill_harness [--kills N] [--survivors 1..%d] [--seed X] "
		"[--max-delay-us N] [--threads N] [--arena-size SIZE] [--policy lru|decay|ttl] "
		"[--verbose]\n", MAX_SURVIVORS);
	exit(2);
}

static uint64_t num_arg(const char *opt, const char *v, uint64_t min, uint64_t max)
{
	char *end;
	errno = 0;
	unsigned long long x = strtoull(v, &end, 0);
	if (errno || !*v || *end || v[0] == '-' || x < min || x > max) {
		fprintf(stderr, "kill_harness: %s: '%s' is not a number in %" PRIu64 "..%" PRIu64 "\n",
			opt, v, min, max);
		exit(2);
	}
	return x;
}

static void parse(int argc, char **argv, struct opts *o)
{
	*o = (struct opts){ .kills = 200, .survivors = 3, .threads = 2, .max_delay_us = 10000,
			    .arena = "8M", .policy = "lru" };
	o->seed = (uint64_t)lbf_now_us() ^ ((uint64_t)getpid() << 32);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--verbose")) {
			o->verbose = true;
			continue;
		}
		if (!v)
			usage();
		i++;
		if (!strcmp(a, "--kills"))
			o->kills = (unsigned)num_arg(a, v, 1, 10000000);
		else if (!strcmp(a, "--survivors"))
			o->survivors = (unsigned)num_arg(a, v, 1, MAX_SURVIVORS);
		else if (!strcmp(a, "--seed"))
			o->seed = num_arg(a, v, 0, UINT64_MAX);
		else if (!strcmp(a, "--max-delay-us"))
			o->max_delay_us = (long)num_arg(a, v, 0, 10000000);
		else if (!strcmp(a, "--threads"))
			o->threads = (unsigned)num_arg(a, v, 1, 64);
		else if (!strcmp(a, "--arena-size"))
			o->arena = v;
		else if (!strcmp(a, "--policy"))
			o->policy = v;
		else
			usage();
	}
}

/* ---- randomness: xorshift64*, one stream per process, replayable from --seed ---- */

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 0x2545f4914f6cdd1dull;
}

/* Popular inputs come up often (the product of two uniform draws leans to small ids). */
static uint64_t pick_key(uint64_t *s)
{
	uint64_t a = rng_next(s) % N_KEYS, b = rng_next(s) % N_KEYS;
	return a * b / N_KEYS;
}

/* ---- what the survivors report, in memory shared with the harness ---- */

enum { PH_RUN, PH_QUIET, PH_EXIT };

struct survivor_report {
	_Atomic int ready, done;
	uint64_t ops, lookups, hits, checked_bytes, rechecks, inserts, exists, nospc, errors;
	uint64_t op_us[32]; /* ops by time taken: bucket b holds those of < 2^b microseconds */
	uint64_t op_max_us;
	char first_error[200];
};

struct shared {
	_Atomic int phase;
	struct survivor_report sv[MAX_SURVIVORS];
};

static void sv_error(struct survivor_report *r, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void sv_error(struct survivor_report *r, const char *fmt, ...)
{
	if (r->errors++ == 0) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(r->first_error, sizeof(r->first_error), fmt, ap);
		va_end(ap);
	}
}

/* ---- survivors ---- */

struct held {
	struct lb_hit h;
	uint64_t id;
};

/* Check a held view again (its bytes must not have changed while leased), then release it. */
static void sv_release(struct lb_client *c, struct survivor_report *r, const struct held *x)
{
	const char *bad = lbf_hit_check(&x->h, x->id);
	int ret;
	r->rechecks++;
	if (bad)
		sv_error(r, "input %" PRIu64 " layer %u changed while leased: %s", x->id, x->h.layer, bad);
	ret = lb_release(c, x->h.lease);
	if (ret != 0)
		sv_error(r, "release of a held lease: %s", strerror(-ret));
}

static void sv_insert(struct lb_client *c, struct survivor_report *r, uint32_t model, uint64_t id,
		      uint32_t layer)
{
	int ret = lbf_insert(c, model, id, layer);
	if (ret == 0)
		r->inserts++;
	else if (ret == -EEXIST)
		r->exists++; /* another worker cached it first */
	else if (ret == -ENOSPC)
		r->nospc++; /* everything leased: a documented outcome, counted */
	else
		sv_error(r, "insert of input %" PRIu64 " layer %u: %s", id, layer, strerror(-ret));
}

static int survivor_main(const char *sock, unsigned idx, uint64_t seed, struct shared *sh)
{
	struct survivor_report *r = &sh->sv[idx];
	struct held held[SURVIVOR_HELD];
	unsigned n_held = 0;
	struct lb_client *c;
	uint32_t model;
	char name[32];
	int ret;

	snprintf(name, sizeof(name), "survivor-%u", idx);
	ret = lb_connect(sock, name, &c);
	if (ret == 0 && (ret = lb_register_model(c, &lbf_model, &model)) < 0)
		lb_close(c);
	if (ret < 0) {
		sv_error(r, "connect and register: %s", strerror(-ret));
		atomic_store(&r->ready, 1);
		atomic_store(&r->done, 1);
		return 1;
	}
	atomic_store(&r->ready, 1);
	double t_op = lbf_now_us();
	while (atomic_load(&sh->phase) == PH_RUN) {
		uint64_t id = pick_key(&seed), what = rng_next(&seed) % 10;
		uint32_t layer = (uint32_t)(rng_next(&seed) % LBF_LAYERS);
		struct lb_key k;
		struct lb_hit h;

		/* One op: a lookup (with the insert after a miss, the release after a hit) or an
		 * insert; timed from the end of the one before. */
		double now = lbf_now_us();
		uint64_t us = r->ops ? (uint64_t)(now - t_op) : 0;
		t_op = now;
		r->op_us[us ? 64 - __builtin_clzll(us) : 0]++;
		r->op_max_us = us > r->op_max_us ? us : r->op_max_us;
		r->ops++;
		if (what >= 8) {
			sv_insert(c, r, model, id, layer);
			continue;
		}
		lbf_key(&k, id);
		r->lookups++;
		ret = what < 6 ? lb_lookup_deepest(c, model, &k, NULL, 0, &h)
			       : lb_lookup(c, model, layer, &k, NULL, 0, &h);
		if (ret == -ENOENT) {
			sv_insert(c, r, model, id, layer);
			continue;
		}
		if (ret != 0) {
			sv_error(r, "lookup of input %" PRIu64 ": %s", id, strerror(-ret));
			continue;
		}
		r->hits++;
		const char *bad = lbf_hit_check(&h, id);
		if (bad)
			sv_error(r, "hit on input %" PRIu64 " layer %u: %s", id, h.layer, bad);
		r->checked_bytes += h.bytes;
		if (n_held < SURVIVOR_HELD && rng_next(&seed) % 3 == 0) {
			held[n_held++] = (struct held){ h, id };
		} else if ((ret = lb_release(c, h.lease)) != 0) {
			sv_error(r, "release: %s", strerror(-ret));
		}
		if (n_held && rng_next(&seed) % 8 == 0) {
			unsigned i = (unsigned)(rng_next(&seed) % n_held);
			sv_release(c, r, &held[i]);
			held[i] = held[--n_held];
		}
	}
	while (n_held)
		sv_release(c, r, &held[--n_held]);
	atomic_store(&r->done, 1);
	/* Stay connected while the harness checks the daemon: survivors are its baseline. */
	while (atomic_load(&sh->phase) != PH_EXIT)
		lbf_sleep_us(1000);
	lb_close(c);
	return r->errors ? 1 : 0;
}

/* ---- victims ---- */

enum vmode {
	V_EARLY,      /* killed 0..2 ms after fork: before, during or just after its HELLO */
	V_CONNECTED,  /* killed the moment lb_connect returned */
	V_LEASES,     /* holding 1..64 leases (a flooding victim holds 256) */
	V_MID_INSERT, /* between lb_insert_reserve and lb_insert_commit, writing staging */
	V_INSERTING,  /* inserting flat out: often inside lb_insert_commit */
	V_FLOOD,      /* request ring full, completion ring full and never read */
	V_MIXED,      /* lookups, inserts, releases at random */
	V_INHERIT,    /* holding leases, its socket and region inherited by a live child */
	N_VMODES
};
static const char *const vmode_name[N_VMODES] = { "early", "connected", "leases", "mid-insert",
						  "inserting", "flood", "mixed", "inherited" };

/* Victim exit codes: any of them means the victim stopped by itself, which fails the run. */
enum { VX_CONNECT = 3, VX_REGISTER = 4, VX_BAD_BYTES = 5, VX_ERROR = 6 };

static void tell(int fd, int32_t v)
{
	if (write(fd, &v, sizeof(v)) != (ssize_t)sizeof(v))
		_exit(VX_ERROR);
}

static _Noreturn void pause_forever(void)
{
	for (;;)
		pause();
}

/* A hit taken by a victim is checked like a survivor's: a dying neighbour must not make the
 * daemon hand out wrong bytes to anyone. */
static int victim_lookup(struct lb_client *c, uint32_t model, uint64_t id, struct lb_hit *h)
{
	struct lb_key k;
	lbf_key(&k, id);
	int ret = lb_lookup_deepest(c, model, &k, NULL, 0, h);
	if (ret == 0 && lbf_hit_check(h, id))
		_exit(VX_BAD_BYTES);
	if (ret != 0 && ret != -ENOENT && ret != -EBUSY)
		_exit(VX_ERROR);
	return ret;
}

/* Take up to n leases, inserting what misses so that later lookups hit. */
static void take_leases(struct lb_client *c, uint32_t model, unsigned n, uint64_t *seed)
{
	struct lb_hit h;
	for (unsigned got = 0, tries = 0; got < n && tries < 4 * n + 16; tries++) {
		uint64_t id = pick_key(seed);
		if (victim_lookup(c, model, id, &h) == 0)
			got++;
		else
			lbf_insert(c, model, id, 0);
	}
}

static void victim_main(const char *sock, enum vmode mode, uint64_t seed, int ready)
{
	struct lb_client *c;
	struct lb_key k;
	struct lb_hit h;
	uint32_t model;

	if (lb_connect(sock, vmode_name[mode], &c) < 0)
		_exit(VX_CONNECT);
	if (mode == V_CONNECTED)
		tell(ready, 0);
	if (lb_register_model(c, &lbf_model, &model) < 0)
		_exit(VX_REGISTER);
	switch (mode) {
	case V_LEASES:
		take_leases(c, model, 1 + (unsigned)(rng_next(&seed) % 64), &seed);
		tell(ready, 0);
		pause_forever();
		break;
	case V_MID_INSERT: {
		uint64_t id = pick_key(&seed);
		float *buf = lb_insert_reserve(c, lbf_entry_bytes(id));
		if (!buf)
			_exit(VX_ERROR);
		tell(ready, 0);
		for (;;) /* still computing the layer when the kill comes */
			lbf_fill(buf, id, (uint32_t)(rng_next(&seed) % LBF_LAYERS));
	}
	case V_INSERTING:
		tell(ready, 0);
		for (;;) {
			int ret = lbf_insert(c, model, pick_key(&seed), (uint32_t)(rng_next(&seed) % LBF_LAYERS));
			if (ret != 0 && ret != -EEXIST && ret != -ENOSPC)
				_exit(VX_ERROR);
		}
	case V_FLOOD: {
		unsigned pushed = 0;
		for (;;) {
			lbf_key(&k, pick_key(&seed));
			int ret = lb_submit_lookup_deepest(c, model, &k, NULL, 0, pushed);
			if (ret == -EAGAIN)
				break;
			if (ret < 0)
				_exit(VX_ERROR);
			pushed++;
		}
		tell(ready, (int32_t)pushed);
		for (;;) /* keeps knocking on the full ring, never reads a completion */
			lb_submit_lookup_deepest(c, model, &k, NULL, 0, pushed);
	}
	case V_INHERIT: {
		take_leases(c, model, 1 + (unsigned)(rng_next(&seed) % 8), &seed);
		pid_t kid = fork();
		if (kid < 0)
			_exit(VX_ERROR);
		if (kid == 0) /* holds the socket and every mapping, and does nothing with them */
			pause_forever();
		tell(ready, (int32_t)kid);
		pause_forever();
		break;
	}
	case V_EARLY:
	case V_CONNECTED:
	case V_MIXED:
	case N_VMODES:
		break;
	}
	if (mode == V_MIXED)
		tell(ready, 0);
	for (;;) {
		uint64_t id = pick_key(&seed), what = rng_next(&seed) % 4;
		if (what == 0) {
			int ret = lbf_insert(c, model, id, (uint32_t)(rng_next(&seed) % LBF_LAYERS));
			if (ret != 0 && ret != -EEXIST && ret != -ENOSPC)
				_exit(VX_ERROR);
		} else if (victim_lookup(c, model, id, &h) == 0 && what == 1) {
			lb_release(c, h.lease); /* others stay held: the kill ends them */
		}
	}
}

/* ---- the harness ---- */

static struct lbt_env env; /* the daemon's folder and the daemon (env.pid) */
static pid_t survivor_pid[MAX_SURVIVORS];
static pid_t victim_pid = -1, grandchild_pid = -1;
static struct lb_client *monitor;
static unsigned failures;

__attribute__((format(printf, 1, 0)))
static void say_fail(const char *fmt, va_list ap)
{
	printf("FAIL: ");
	vprintf(fmt, ap);
	printf("\n");
	fflush(stdout);
}

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	say_fail(fmt, ap);
	va_end(ap);
	failures++;
}

static void kill_wait(pid_t *pid)
{
	if (*pid > 0) {
		kill(*pid, SIGKILL);
		waitpid(*pid, NULL, 0);
	}
	*pid = -1;
}

/* Every process this run started ends here, whatever happened. */
static void cleanup(void)
{
	lb_close(monitor);
	monitor = NULL;
	kill_wait(&victim_pid);
	kill_wait(&grandchild_pid);
	for (unsigned i = 0; i < MAX_SURVIVORS; i++)
		kill_wait(&survivor_pid[i]);
	if (env.dir[0])
		lbt_env_remove(&env);
	env.dir[0] = '\0';
}

static _Noreturn void give_up(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static _Noreturn void give_up(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	say_fail(fmt, ap);
	va_end(ap);
	if (env.log[0] && env.pid > 0)
		lbt_cat(env.log);
	cleanup();
	exit(1);
}

static void stats(struct lb_stats *st)
{
	int ret = lb_stats(monitor, st, sizeof(*st));
	if (ret < 0)
		give_up("STATS: %s (daemon %s)", strerror(-ret),
			lbt_alive(env.pid) ? "up" : "gone");
}

/* Poll STATS until the daemon counts want clients. @return microseconds waited, or -1. */
static double wait_clients(uint32_t want, double timeout_us)
{
	double t0 = lbf_now_us();
	struct lb_stats st;
	for (;;) {
		stats(&st);
		double t = lbf_now_us() - t0;
		if (st.clients == want)
			return t;
		if (t > timeout_us)
			return -1;
		lbf_sleep_us(20);
	}
}

/* Wait (up to 5 s) until the daemon is quiet: leases, clients, descriptors and region mappings
 * at the values given. */
static bool wait_quiet(uint32_t clients, int fds, int regions, struct lb_stats *st)
{
	for (int i = 0; i < 500; i++) {
		stats(st);
		if (st->leases == 0 && st->clients == clients && lbf_count_fds(env.pid) == fds &&
		    lbf_count_regions(env.pid) == regions)
			return true;
		lbf_sleep_us(10000);
	}
	return false;
}

/* Times of the kills of one kind, in microseconds from the kill: until the victim had exited
 * (waitid, without reaping it), and until the daemon's client count had dropped. */
struct series {
	double *exit, *drop, *lag;
	unsigned n;
};

static void series_add(struct series *s, double t_exit, double t_drop)
{
	s->exit[s->n] = t_exit;
	s->drop[s->n] = t_drop;
	/* The daemon's part, at most: the count is read only once the exit is seen. */
	s->lag[s->n++] = t_drop - t_exit;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static void print_times(const char *what, double *t, unsigned n)
{
	qsort(t, n, sizeof(*t), cmp_double);
	printf("  %-44s p50 %6.2f ms, p99 %6.2f ms, max %6.2f ms\n", what, t[n / 2] / 1000,
	       t[(size_t)((n - 1) * 0.99)] / 1000, t[n - 1] / 1000);
}

static void print_series(const char *what, struct series *s)
{
	printf("%s, %u kills:\n", what, s->n);
	if (!s->n)
		return;
	print_times("kill -> the victim has exited (waitid)", s->exit, s->n);
	print_times("kill -> the daemon's client count drops", s->drop, s->n);
	print_times("the daemon's part (drop - exit)", s->lag, s->n);
}

/* The accounting after quiescence: the bytes the store counts as used are exactly those of
 * its entries, summed over every layer (a lost PENDING entry, or one held by a dead client's
 * lease, would be in the first and not in the second). */
static void check_accounting(uint32_t model, const struct lb_stats *st)
{
	struct lb_layer_stats ls[LBF_LAYERS];
	uint64_t bytes = 0, entries = 0, leases = 0;
	int n = lb_model_stats(monitor, model, NULL, ls, LBF_LAYERS);
	if (n != LBF_LAYERS)
		give_up("MODEL_STATS: %d", n);
	for (int l = 0; l < n; l++) {
		bytes += ls[l].bytes;
		entries += ls[l].entries;
		leases += ls[l].leases;
	}
	printf("arena: %" PRIu64 " entries, %" PRIu64 " bytes used, sum over the entries %" PRIu64
	       " bytes, %" PRIu64 " leases\n", st->entries, st->bytes_used, bytes, leases);
	if (st->bytes_used != bytes || st->entries != entries || leases)
		fail("the arena's accounting is not that of its entries");
}

/* Evict everything (each insert evicts up to 256 entries), then insert one entry as large as
 * each arena's whole data area: it fits only if not one byte of the allocator was lost. */
static void check_drain(uint32_t model)
{
	struct lb_stats st;
	uint64_t want = 0;
	unsigned n = lb_arena_count(monitor), done = 0;

	for (unsigned i = 0; i < n; i++) {
		size_t sz;
		const struct lb_arena_hdr *h = lb_arena_base(monitor, i, &sz);
		uint64_t bytes = h->data_bytes - LB_ENTRY_HDR_SIZE;
		for (int tries = 0; tries < 100; tries++) {
			float *buf = lb_insert_reserve(monitor, bytes);
			if (!buf) {
				printf("drain: skipped, the data area (%" PRIu64 " bytes) exceeds the "
				       "staging buffer\n", h->data_bytes);
				return;
			}
			struct lb_key k;
			lbf_key(&k, 1000000 + i);
			struct lb_shape sh = { .dtype = LB_DTYPE_F32, .ndim = 1, .dims = { (uint32_t)(bytes / 4) } };
			int ret = lb_insert_commit(monitor, model, 0, &k, &sh);
			if (ret == 0) {
				done++;
				break;
			}
			stats(&st);
			if (ret != -ENOSPC || st.entries == done) {
				fail("drain: the whole data area of arena %u does not fit with %" PRIu64
				     " entries and %" PRIu64 " bytes left: %s", i, st.entries,
				     st.bytes_used, strerror(-ret));
				return;
			}
		}
		want += h->data_bytes;
	}
	stats(&st);
	printf("drain: every entry evicted, then %u entr%s of the whole data area (%" PRIu64
	       " bytes) fit: bytes used %" PRIu64 ", budget %" PRIu64 "\n", done,
	       done == 1 ? "y" : "ies", want, st.bytes_used, st.bytes_budget);
	if (done != n || st.entries != n || st.bytes_used != want)
		fail("drain: the allocator did not give the whole arena back");
}

int main(int argc, char **argv)
{
	struct opts o;
	parse(argc, argv, &o);
	setvbuf(stdout, NULL, _IOLBF, 0);
	/* Every survivor call must succeed: on a loaded machine the library's 5 ms wait would
	 * turn some into time-outs (misses), which is not what this harness looks for. */
	setenv("LAYERBANK_WAIT_US", "1000000", 0);
	/* Sleeps of tens of microseconds, not the default 50 us of slack on top. */
	prctl(PR_SET_TIMERSLACK, 1UL);
	/* A victim's child (V_INHERIT) becomes ours when the victim dies, for us to reap. */
	prctl(PR_SET_CHILD_SUBREAPER, 1UL);
	for (unsigned i = 0; i < MAX_SURVIVORS; i++)
		survivor_pid[i] = -1;

	struct shared *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		give_up("mmap: %s", strerror(errno));
	lbt_env_make(&env);
	char threads[12];
	snprintf(threads, sizeof(threads), "%u", o.threads);
	const char *const dargs[] = { "--arena-size", o.arena, "--hugepages", "off", "--threads",
				      threads, "--policy", o.policy, "--log-level", "warn", NULL };
	if (lbt_daemon_start(&env, dargs) < 0)
		give_up("layerbankd did not start");
	printf("kill harness: seed %" PRIu64 ", %u kills, %u survivors, arena %s, policy %s, %u "
	       "service threads, kill delays up to %ld us\n", o.seed, o.kills, o.survivors, o.arena,
	       o.policy, o.threads, o.max_delay_us);

	uint32_t model;
	int ret = lb_connect(env.sock, "monitor", &monitor);
	if (ret < 0 || (ret = lb_register_model(monitor, &lbf_model, &model)) < 0)
		give_up("monitor: %s", strerror(-ret));
	/* The daemon says so at start when it cannot watch processes: then nothing reaps a
	 * client whose socket a child holds, and that mode is left out. */
	char logbuf[8192] = "";
	FILE *lf = fopen(env.log, "r");
	if (lf) {
		logbuf[fread(logbuf, 1, sizeof(logbuf) - 1, lf)] = '\0';
		fclose(lf);
	}
	bool pidfd = !strstr(logbuf, "pidfd_open");
	if (!pidfd)
		printf("the daemon has no pidfd_open: mode 'inherited' is left out\n");
	int fd0 = lbf_count_fds(env.pid);

	uint64_t seed = o.seed;
	for (unsigned i = 0; i < o.survivors; i++) {
		uint64_t s = rng_next(&seed);
		fflush(stdout);
		survivor_pid[i] = fork();
		if (survivor_pid[i] < 0)
			give_up("fork: %s", strerror(errno));
		if (survivor_pid[i] == 0) /* leaves the monitor alone: its BYE would end ours */
			_exit(survivor_main(env.sock, i, s, sh));
	}
	for (unsigned i = 0; i < o.survivors; i++)
		while (!atomic_load(&sh->sv[i].ready))
			lbf_sleep_us(1000);
	const uint32_t base_clients = o.survivors + 1;
	if (wait_clients(base_clients, REAP_TIMEOUT_US) < 0)
		give_up("the survivors did not all connect");
	lbf_sleep_us(300000); /* let them fill the arena */
	int fd1 = lbf_count_fds(env.pid), regions1 = lbf_count_regions(env.pid);
	printf("baseline: %u clients (survivors and this monitor), daemon descriptors %d, client "
	       "regions mapped %d\n", base_clients, fd1, regions1);

	/* ---- the kills ---- */
	struct series by_socket, by_pidfd;
	unsigned by_mode[N_VMODES] = { 0 };
	double *times = calloc(6 * (size_t)o.kills, sizeof(double));
	if (!times)
		give_up("out of memory");
	by_socket = (struct series){ times, times + o.kills, times + 2 * o.kills, 0 };
	by_pidfd = (struct series){ times + 3 * o.kills, times + 4 * o.kills, times + 5 * o.kills, 0 };
	double t_start = lbf_now_us();
	for (unsigned k = 0; k < o.kills; k++) {
		enum vmode mode = (enum vmode)(rng_next(&seed) % (pidfd ? N_VMODES : N_VMODES - 1));
		uint64_t vseed = rng_next(&seed);
		long delay = rng_next(&seed) % 4 == 0 ? 0 : (long)(rng_next(&seed) % ((uint64_t)o.max_delay_us + 1));
		int p[2];
		int32_t said = 0;
		bool ready = false;

		if (pipe2(p, O_CLOEXEC) < 0)
			give_up("pipe: %s", strerror(errno));
		fflush(stdout);
		victim_pid = fork();
		if (victim_pid < 0)
			give_up("fork: %s", strerror(errno));
		if (victim_pid == 0) {
			close(p[0]);
			victim_main(env.sock, mode, vseed, p[1]);
			_exit(VX_ERROR);
		}
		close(p[1]);
		if (mode == V_EARLY) {
			delay = (long)(rng_next(&seed) % 2000);
		} else {
			struct pollfd pf = { .fd = p[0], .events = POLLIN };
			if (poll(&pf, 1, READY_TIMEOUT_MS) == 1 && read(p[0], &said, sizeof(said)) == (ssize_t)sizeof(said))
				ready = true;
			if (mode == V_INHERIT && ready)
				grandchild_pid = said;
		}
		close(p[0]);
		if (delay)
			lbf_sleep_us(delay);
		kill(victim_pid, SIGKILL);
		double t_kill = lbf_now_us();
		by_mode[mode]++;
		/* Exited (a zombie), not reaped: its pid cannot be reused while the daemon looks. */
		siginfo_t si;
		waitid(P_PID, (id_t)victim_pid, &si, WEXITED | WNOWAIT);
		double t_exit = lbf_now_us() - t_kill;
		double t = wait_clients(base_clients, REAP_TIMEOUT_US);
		if (t >= 0)
			t = lbf_now_us() - t_kill;
		int st = 0;
		waitpid(victim_pid, &st, 0);
		victim_pid = -1;
		if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGKILL)
			give_up("victim %u (%s) stopped by itself with status %d (%s)", k, vmode_name[mode],
				WIFEXITED(st) ? WEXITSTATUS(st) : -1,
				WEXITSTATUS(st) == VX_BAD_BYTES ? "it read wrong bytes" :
				WEXITSTATUS(st) == VX_CONNECT ? "it could not connect" : "an unexpected error");
		if (mode != V_EARLY && !ready)
			give_up("victim %u (%s) never got ready", k, vmode_name[mode]);
		if (t < 0)
			give_up("victim %u (%s): the daemon still counts its client %.0f s after the kill",
				k, vmode_name[mode], REAP_TIMEOUT_US / 1e6);
		if (mode == V_INHERIT) {
			/* Reaped while its child still holds the socket: the pidfd did it. */
			if (kill(grandchild_pid, 0) != 0)
				give_up("victim %u: its child died before the reap", k);
			series_add(&by_pidfd, t_exit, t);
			kill_wait(&grandchild_pid);
		} else if (ready) {
			series_add(&by_socket, t_exit, t);
		}
		if (mode == V_EARLY) {
			/* Its HELLO may still sit in the daemon's queue: let that ghost come and go. */
			lbf_sleep_us(2000);
			if (wait_clients(base_clients, REAP_TIMEOUT_US) < 0)
				give_up("victim %u (early): its client was never reaped", k);
		}
		if (o.verbose)
			printf("kill %u: %s, delay %ld us, reaped after %.0f us\n", k, vmode_name[mode],
			       delay, t);
		if (!lbt_alive(env.pid))
			give_up("layerbankd died at kill %u", k);
	}
	double t_kills = lbf_now_us() - t_start;

	/* ---- quiet: the survivors stop, release their leases and stay connected ---- */
	atomic_store(&sh->phase, PH_QUIET);
	for (unsigned i = 0; i < o.survivors; i++)
		for (int w = 0; !atomic_load(&sh->sv[i].done); w++) {
			if (w > 10000)
				give_up("survivor %u does not stop", i);
			lbf_sleep_us(1000);
		}

	printf("kills by mode:");
	for (int m = 0; m < N_VMODES; m++)
		printf(" %s %u%s", vmode_name[m], by_mode[m], m + 1 < N_VMODES ? "," : "");
	printf(" (%u in %.1f s)\n", o.kills, t_kills / 1e6);
	print_series("time to reap a connected victim", &by_socket);
	if (pidfd)
		print_series("time to reap by pidfd alone (its socket held by a live child)", &by_pidfd);

	uint64_t ops = 0, hits = 0, bytes = 0, rechecks = 0, inserts = 0, exists = 0, nospc = 0, errors = 0;
	uint64_t op_us[32] = { 0 }, op_max = 0;
	for (unsigned i = 0; i < o.survivors; i++) {
		const struct survivor_report *r = &sh->sv[i];
		for (int b = 0; b < 32; b++)
			op_us[b] += r->op_us[b];
		op_max = r->op_max_us > op_max ? r->op_max_us : op_max;
		ops += r->ops;
		hits += r->hits;
		bytes += r->checked_bytes;
		rechecks += r->rechecks;
		inserts += r->inserts;
		exists += r->exists;
		nospc += r->nospc;
		errors += r->errors;
		if (r->errors)
			fail("survivor %u: %" PRIu64 " errors, the first: %s", i, r->errors, r->first_error);
		if (!r->ops || !r->hits)
			fail("survivor %u did no work (%" PRIu64 " ops, %" PRIu64 " hits)", i, r->ops, r->hits);
	}
	printf("survivors: %" PRIu64 " ops, %" PRIu64 " hits checked byte for byte (%.1f MiB), %"
	       PRIu64 " held views checked again at release, %" PRIu64 " inserts (%" PRIu64
	       " already cached, %" PRIu64 " no room), %" PRIu64 " errors\n", ops, hits,
	       (double)bytes / 1048576.0, rechecks, inserts, exists, nospc, errors);
	uint64_t seen = 0, p50 = 0, p99 = 0;
	for (int b = 0; b < 32; b++) {
		seen += op_us[b];
		if (!p50 && seen * 2 >= ops)
			p50 = (uint64_t)1 << b;
		if (!p99 && seen * 100 >= ops * 99)
			p99 = (uint64_t)1 << b;
	}
	printf("survivors' ops: p50 under %" PRIu64 " us, p99 under %" PRIu64 " us, the slowest %.1f "
	       "ms\n", p50, p99, (double)op_max / 1000);

	/* ---- the daemon after the storm ---- */
	struct lb_stats st;
	ret = lb_ping(monitor);
	if (ret < 0 || !lbt_alive(env.pid))
		give_up("layerbankd is not up: PING %s", strerror(-ret));
	bool quiet = wait_quiet(base_clients, fd1, regions1, &st);
	printf("daemon: up (PING ok), clients %u (want %u), leases %" PRIu64 ", descriptors %d (baseline "
	       "%d), client regions mapped %d (baseline %d); %" PRIu64 " hits, %" PRIu64 " inserts, %"
	       PRIu64 " evictions\n", st.clients, base_clients, st.leases, lbf_count_fds(env.pid),
	       fd1, lbf_count_regions(env.pid), regions1, st.hits, st.inserts, st.evictions);
	if (!quiet)
		fail("the daemon did not come back to its baseline");
	if (!st.evictions)
		fail("no eviction ran: the arena is too large for this test");
	check_accounting(model, &st);
	check_drain(model);

	/* ---- the survivors leave: down to the monitor alone ---- */
	atomic_store(&sh->phase, PH_EXIT);
	for (unsigned i = 0; i < o.survivors; i++) {
		int wst;
		waitpid(survivor_pid[i], &wst, 0);
		survivor_pid[i] = -1;
		if (!WIFEXITED(wst) || WEXITSTATUS(wst) != 0)
			fail("survivor %u ended with status 0x%x", i, wst);
	}
	quiet = wait_quiet(1, fd0, 1, &st);
	printf("after the survivors left: clients %u, leases %" PRIu64 ", descriptors %d (at start %d)\n",
	       st.clients, st.leases, lbf_count_fds(env.pid), fd0);
	if (!quiet)
		fail("the daemon kept something of the survivors");

	lb_close(monitor);
	monitor = NULL;
	if (!lbt_daemon_stop(&env)) /* it printed the status and the log */
		fail("layerbankd did not stop cleanly");
	free(times);
	cleanup();
	printf("%s\n", failures ? "FAILED" : "PASS");
	return failures ? 1 : 0;
}
