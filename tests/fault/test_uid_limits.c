/* Limits per uid (tests/fault/ISOLATION.md, "Limits per uid"), as root with two uids: one uid
 * opens 1,000 connections against the default max-connections-per-uid while a client of
 * another uid connects and looks up and inserts, each call timed; and one uid's connections
 * share one insert quota and one staging cap while another uid has its own. Exits 77 when not
 * root (setuid is needed for a second uid). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "faultutil.h"
#include "layerbank/layerbank.h"
#include "layerbank/ring.h"
#include "lbp.h"
#include "testutil.h"

#define UID_A 4251u       /* the uid that opens too many connections */
#define N_CONNS 1000      /* uid A's connections */
#define DEFAULT_LIMIT 64  /* max-connections-per-uid's default (daemon/config.h) */
#define A_CLIENTS 4       /* of uid A's admitted connections, full liblayerbank clients */
#define B_IDS 200         /* the other uid's inputs: all fit the arena, none is evicted */
#define SILENT_WAIT 16    /* LBD_UID_REFUSING_MAX: refused connections that may wait for HELLO */
#define SILENT 20         /* uid A's connections past the limit that send no HELLO */

static struct lbt_env env; /* every test's fixture: daemon, clients, child processes */

/* In a child: fail with the line, saying what went wrong. */
#define KID_CHECK(cond)                                                                         \
	do {                                                                                    \
		if (!(cond)) {                                                                  \
			fprintf(stderr, "child uid %u: line %d: %s\n", (unsigned)getuid(),      \
				__LINE__, #cond);                                               \
			_exit(1);                                                               \
		}                                                                               \
	} while (0)

/* Start the daemon with args (NULL-ended) after the defaults below, its socket open to every
 * uid, and connect the test's monitor. */
static struct lb_client *start(const char *const *args)
{
	const char *argv[24] = { "--arena-size", "16M", "--hugepages", "off", "--socket-mode",
				 "0666", "--log-level", "info" };
	size_t n = 8;
	for (; args && *args && n < 23; args++)
		argv[n++] = *args;
	argv[n] = NULL;
	assert_int_equal(chmod(env.dir, 0711), 0); /* others may reach the socket's file */
	assert_true(lbt_daemon_start(&env, argv) > 0);
	struct lb_client *mon = NULL;
	assert_int_equal(lbt_connect(&env, "monitor", &mon), 0);
	return mon;
}

/* Fork a child that drops to uid (gid the same, no supplementary groups) and runs fn(arg). */
static pid_t spawn_as(uid_t uid, int (*fn)(void *), void *arg)
{
	pid_t pid = lbt_fork(&env);
	assert_true(pid >= 0);
	if (pid == 0) {
		if (setgroups(0, NULL) < 0 || setgid(uid) < 0 || setuid(uid) < 0) {
			perror("dropping privileges");
			_exit(2);
		}
		_exit(fn(arg));
	}
	return pid;
}

/* ---- raw control frames ---- */

static uint8_t raw_buf[LBP_MAX_FRAME + 1];

static int raw_open(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct timeval tv = { 5, 0 };
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	memcpy(sa.sun_path, env.sock, strlen(env.sock) + 1);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	return fd;
}

/* Send m, receive the answer into *back (fds that come with it are closed). @return 0, or
 * -errno of the send or receive (-ECONNRESET: end of file). */
static int raw_call(int fd, const struct lbp_msg *m, struct lbp_msg *back)
{
	struct lbp_fault fault;
	union {
		char buf[CMSG_SPACE(sizeof(int) * (LBP_MAX_ARENAS + 1))];
		struct cmsghdr align;
	} cmsg;
	struct iovec iov = { raw_buf, sizeof(raw_buf) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cmsg.buf,
			      .msg_controllen = sizeof(cmsg.buf) };
	int len = lbp_encode(m, raw_buf, sizeof(raw_buf));

	if (len <= 0)
		return -EINVAL;
	if (send(fd, raw_buf, (size_t)len, MSG_NOSIGNAL) != len)
		return -errno;
	ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
	if (n < 0)
		return -errno;
	if (n == 0)
		return -ECONNRESET;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		int *fds = (int *)(void *)CMSG_DATA(cm);
		for (size_t i = 0; i < (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++)
			close(fds[i]);
	}
	return lbp_decode(raw_buf, (size_t)n, back, &fault) == 0 ? 0 : -EBADMSG;
}

/* HELLO with the smallest rings and staging a wish can get. */
static int raw_hello(int fd, uint64_t staging, struct lbp_msg *back)
{
	struct lbp_msg m = { .type = LBP_HELLO };
	m.u.hello.shm_abi = LB_SHM_ABI_VERSION;
	m.u.hello.req_entries = LB_RING_MIN_ENTRIES;
	m.u.hello.cpl_entries = LB_RING_MIN_ENTRIES;
	m.u.hello.staging_bytes = staging;
	strcpy(m.u.hello.name, "raw");
	return raw_call(fd, &m, back);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* The q-quantile of v[n] (sorted here). */
static double quantile(double *v, size_t n, double q)
{
	if (!n)
		return 0;
	qsort(v, n, sizeof(*v), cmp_double);
	size_t i = (size_t)(q * (double)(n - 1) + 0.5);
	return v[i < n ? i : n - 1];
}

/* ---- 1,000 connections of one uid beside another uid ---- */

/* What uid A's child saw, sent to the test through a pipe. */
struct storm {
	int welcomed, refused, other;  /* HELLO answered WELCOME, ERROR EUSERS, anything else */
	int other_what;                /* the first other outcome: -errno, or the ERROR's code */
	int bad_text;                  /* refusals without the documented field and text */
	int served;                    /* admitted raw connections that answered STATS after */
	int lb_refused;                /* lb_connect past the limit: -EUSERS with the text */
	int silent_waited, silent_dropped; /* of SILENT connections without HELLO: refused at their
					    * late HELLO, refused at once (ERROR without HELLO) */
	int lb_refused_at_once;        /* lb_connect while SILENT_WAIT wait: -EUSERS with the text */
	char first_text[LBP_MAX_ERRMSG + 1];
	double refusal_p50_us, refusal_p99_us, refusal_max_us; /* connect to ERROR */
	double storm_ms;
};

struct storm_kid {
	int started_w; /* a byte as the storm begins */
	int result_w;  /* struct storm when it is over */
	int close_r;   /* a byte from the test: close everything and exit */
};

/* Uid A: N_CONNS connections, each kept open (refused ones too, as a careless client would),
 * the first A_CLIENTS through lb_connect (each registers, inserts and looks up), the others
 * raw HELLOs; then every admitted one is asked for STATS, and lb_connect tried once more. */
static int kid_storm(void *arg)
{
	const struct storm_kid *k = arg;
	static int fds[N_CONNS];
	static double refusal_us[N_CONNS];
	struct lb_client *cl[A_CLIENTS] = { 0 };
	struct storm r = { 0 };
	char want[128];
	size_t n_ref = 0;
	int n_fds = 0;

	snprintf(want, sizeof(want), "uid %u already holds %d connections", UID_A, DEFAULT_LIMIT);
	double t0 = lbf_now_us();
	for (int i = 0; i < N_CONNS; i++) {
		if (i == 0)
			KID_CHECK(write(k->started_w, "s", 1) == 1);
		if (i < A_CLIENTS) {
			uint32_t model;
			KID_CHECK(lb_connect(env.sock, "storm", &cl[i]) == 0);
			KID_CHECK(lb_register_model(cl[i], &lbf_model, &model) == 0);
			KID_CHECK(lbf_insert(cl[i], model, 900000 + (uint64_t)i, 1) == 0);
			r.welcomed++;
			continue;
		}
		struct lbp_msg back;
		double t = lbf_now_us();
		int fd = raw_open();
		int ret = fd < 0 ? fd : raw_hello(fd, 4096, &back);
		if (fd >= 0)
			fds[n_fds++] = fd;
		if (ret == 0 && back.type == LBP_WELCOME) {
			r.welcomed++;
			continue;
		}
		if (ret == 0 && back.type == LBP_ERROR && back.u.error.code == EUSERS) {
			refusal_us[n_ref++] = lbf_now_us() - t;
			if (!r.refused)
				snprintf(r.first_text, sizeof(r.first_text), "%s", back.u.error.message);
			r.refused++;
			r.bad_text += back.u.error.field[0] != '\0' ||
				      !strstr(back.u.error.message, want) ||
				      !strstr(back.u.error.message, "(max-connections-per-uid = 64)");
			continue;
		}
		if (!r.other++)
			r.other_what = ret < 0 ? ret : back.type == LBP_ERROR ? (int)back.u.error.code : 0;
	}
	r.storm_ms = (lbf_now_us() - t0) / 1000;
	/* Every admitted raw connection is served (the refused ones were closed by the daemon:
	 * their sockets read end of file). */
	for (int i = 0; i < n_fds; i++) {
		struct lbp_msg m = { .type = LBP_STATS }, back;
		if (raw_call(fds[i], &m, &back) == 0 && back.type == LBP_STATS_REPLY)
			r.served++;
	}
	struct lb_client *late = NULL;
	int ret = lb_connect(env.sock, "late", &late);
	r.lb_refused = ret == -EUSERS && !late && strstr(lb_last_error(NULL), want);
	if (!r.lb_refused)
		fprintf(stderr, "lb_connect past the limit: %d '%s'\n", ret, lb_last_error(NULL));
	/* SILENT more that say nothing: the first SILENT_WAIT wait for their HELLO to be refused,
	 * the others are refused at once (their ERROR comes unasked), and so is an lb_connect
	 * meanwhile, whose HELLO the daemon may leave unread. */
	static int silent[SILENT];
	for (int i = 0; i < SILENT; i++)
		KID_CHECK((silent[i] = raw_open()) >= 0);
	for (int i = SILENT_WAIT; i < SILENT; i++) {
		struct lbp_fault fault;
		struct lbp_msg back;
		ssize_t n = recv(silent[i], raw_buf, sizeof(raw_buf), 0);
		r.silent_dropped += n > 0 && lbp_decode(raw_buf, (size_t)n, &back, &fault) == 0 &&
				    back.type == LBP_ERROR && back.u.error.code == EUSERS &&
				    strstr(back.u.error.message, want);
	}
	ret = lb_connect(env.sock, "at-once", &late);
	r.lb_refused_at_once = ret == -EUSERS && !late && strstr(lb_last_error(NULL), want);
	if (!r.lb_refused_at_once)
		fprintf(stderr, "lb_connect refused at once: %d '%s'\n", ret, lb_last_error(NULL));
	for (int i = 0; i < SILENT_WAIT; i++) {
		struct lbp_msg back;
		r.silent_waited += raw_hello(silent[i], 4096, &back) == 0 &&
				   back.type == LBP_ERROR && back.u.error.code == EUSERS;
	}
	for (int i = 0; i < SILENT; i++)
		close(silent[i]);
	r.refusal_max_us = n_ref ? quantile(refusal_us, n_ref, 1.0) : 0;
	r.refusal_p50_us = quantile(refusal_us, n_ref, 0.5);
	r.refusal_p99_us = quantile(refusal_us, n_ref, 0.99);
	KID_CHECK(write(k->result_w, &r, sizeof(r)) == (ssize_t)sizeof(r));
	char go;
	KID_CHECK(read(k->close_r, &go, 1) == 1);
	for (int i = 0; i < A_CLIENTS; i++)
		lb_close(cl[i]);
	for (int i = 0; i < n_fds; i++)
		close(fds[i]);
	return 0;
}

/* The other uid's calls, timed one by one. */
struct timed {
	double *us;
	size_t n, cap;
};

static void timed_add(struct timed *t, double us)
{
	if (t->n < t->cap)
		t->us[t->n++] = us;
}

static void timed_print(const char *what, struct timed *t)
{
	double max = quantile(t->us, t->n, 1.0);
	printf("%-28s %6zu calls: p50 %7.1f us, p99 %7.1f us, max %8.1f us\n", what, t->n,
	       quantile(t->us, t->n, 0.5), quantile(t->us, t->n, 0.99), max);
}

/* Raise the open-file limit to 4096 where it is lower (root may): uid A's child holds its
 * 1,000 sockets, and the daemon (which inherits the limit) its admitted ones. */
static void room_for_descriptors(void)
{
	struct rlimit rl;
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
	if (rl.rlim_cur < 4096) {
		rl.rlim_cur = 4096;
		if (rl.rlim_max < 4096)
			rl.rlim_max = 4096;
		assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
	}
	printf("RLIMIT_NOFILE %llu (the daemon inherits it)\n", (unsigned long long)rl.rlim_cur);
}

static void wait_clients(struct lb_client *mon, uint32_t want)
{
	struct lb_stats st;
	for (int i = 0; i < 500; i++) {
		assert_int_equal(lb_stats(mon, &st, sizeof(st)), 0);
		if (st.clients == want)
			return;
		lbf_sleep_us(10000);
	}
	fail_msg("the daemon counts %u clients, not %u", st.clients, want);
}

static void wait_fds(int fds, int regions)
{
	for (int i = 0; i < 500; i++) {
		if (lbf_count_fds(env.pid) == fds && lbf_count_regions(env.pid) == regions)
			return;
		lbf_sleep_us(10000);
	}
	fail_msg("descriptors %d (want %d), client regions mapped %d (want %d)",
		 lbf_count_fds(env.pid), fds, lbf_count_regions(env.pid), regions);
}

/* The other uid's work, one call every 50 us: inserts of its B_IDS inputs, then lookups of
 * them (every hit checked), and a STATS every 16th call (the control thread's answer). */
struct other {
	struct lb_client *c;
	uint32_t model;
	uint64_t i, n_ins, hits;
	struct timed data, stats; /* the calls' times */
};

static void other_call(struct other *o)
{
	struct lb_key key;
	struct lb_hit h;
	struct lb_stats st;
	double t = lbf_now_us();

	if (o->i++ % 16 == 15) {
		assert_int_equal(lb_stats(o->c, &st, sizeof(st)), 0);
		timed_add(&o->stats, lbf_now_us() - t);
	} else if (o->i % 2 == 0 && o->n_ins < B_IDS) {
		assert_int_equal(lbf_insert(o->c, o->model, 500000 + o->n_ins, 2), 0);
		timed_add(&o->data, lbf_now_us() - t);
		o->n_ins++;
	} else if (o->n_ins) {
		uint64_t id = 500000 + lbf_mix64(o->i) % o->n_ins;
		lbf_key(&key, id);
		int ret = lb_lookup(o->c, o->model, 2, &key, NULL, 0, &h);
		timed_add(&o->data, lbf_now_us() - t);
		assert_int_equal(ret, 0);
		const char *bad = lbf_hit_check(&h, id);
		if (bad)
			fail_msg("input %llu: %s", (unsigned long long)id, bad);
		assert_int_equal(lb_release(o->c, h.lease), 0);
		o->hits++;
	}
	lbf_sleep_us(50);
}

/* Time on a CPU and runnable but waiting for one (schedstat), in ns, of the daemon's control
 * thread (its main thread), of its other threads together (service threads, reaper), and of
 * the test's own thread (the other uid's client): where a slow call's time went. */
struct sched_times {
	uint64_t run[3], wait[3];
};

static bool task_sched(pid_t pid, const char *tid, uint64_t *run, uint64_t *wait)
{
	char path[320]; /* a d_name is up to 255 bytes */
	unsigned long long r, w;
	snprintf(path, sizeof(path), "/proc/%d/task/%s/schedstat", (int)pid, tid);
	FILE *f = fopen(path, "r");
	if (!f)
		return false;
	int n = fscanf(f, "%llu %llu", &r, &w);
	fclose(f);
	*run += r;
	*wait += w;
	return n == 2;
}

static bool sched_times(struct sched_times *t)
{
	char path[64], main_tid[16], self[16];
	memset(t, 0, sizeof(*t));
	snprintf(main_tid, sizeof(main_tid), "%d", (int)env.pid);
	snprintf(self, sizeof(self), "%d", (int)gettid());
	snprintf(path, sizeof(path), "/proc/%d/task", (int)env.pid);
	DIR *d = opendir(path);
	if (!d)
		return false;
	for (struct dirent *e; (e = readdir(d));)
		if (e->d_name[0] != '.' && strcmp(e->d_name, main_tid) != 0)
			task_sched(env.pid, e->d_name, &t->run[1], &t->wait[1]);
	closedir(d);
	return task_sched(env.pid, main_tid, &t->run[0], &t->wait[0]) &&
	       task_sched(getpid(), self, &t->run[2], &t->wait[2]);
}

static void sched_print(const struct sched_times *a, const struct sched_times *b)
{
	static const char *const who[] = { "the daemon's control thread", "its other threads",
					   "the other uid's client" };
	printf("during it, on a CPU / runnable waiting for one:");
	for (int i = 0; i < 3; i++)
		printf("%s %s %.1f / %.1f ms", i ? ";" : "", who[i], (double)(b->run[i] - a->run[i]) / 1e6,
		       (double)(b->wait[i] - a->wait[i]) / 1e6);
	printf("\n");
}

static void timed_init(struct timed *t)
{
	t->cap = 1u << 20;
	t->n = 0;
	t->us = malloc(t->cap * sizeof(double));
	assert_non_null(t->us);
}

static void test_thousand_connections_of_one_uid(void **state)
{
	(void)state;
	room_for_descriptors();
	struct lb_client *mon = start(NULL); /* the default max-connections-per-uid */
	uint32_t model;
	assert_int_equal(lb_register_model(mon, &lbf_model, &model), 0);
	int fds0 = lbf_count_fds(env.pid), regions0 = lbf_count_regions(env.pid);
	printf("baseline: 1 client, %d descriptors, %d client region mapped\n", fds0, regions0);

	/* The other uid (the test's, root) works before and while uid A's child connects. */
	struct other o = { 0 }, quiet;
	timed_init(&o.data);
	timed_init(&o.stats);
	double t = lbf_now_us();
	assert_int_equal(lbt_connect(&env, "other-uid", &o.c), 0);
	double quiet_connect_ms = (lbf_now_us() - t) / 1000;
	assert_int_equal(lb_register_model(o.c, &lbf_model, &o.model), 0);
	while (o.data.n < 500)
		other_call(&o);
	quiet = o; /* the quiet part: its figures, printed below */
	o.data.us += o.data.n;
	o.data.cap -= o.data.n;
	o.data.n = 0;
	o.stats.us += o.stats.n;
	o.stats.cap -= o.stats.n;
	o.stats.n = 0;

	int started[2], result[2], go[2];
	assert_int_equal(pipe2(started, O_CLOEXEC), 0);
	assert_int_equal(pipe2(result, O_CLOEXEC), 0);
	assert_int_equal(pipe2(go, O_CLOEXEC), 0);
	struct storm_kid k = { started[1], result[1], go[0] };
	struct sched_times s0, s1;
	bool sched = sched_times(&s0);
	pid_t kid = spawn_as(UID_A, kid_storm, &k);
	char byte;
	assert_int_equal(read(started[0], &byte, 1), 1);

	/* Meanwhile: a new client of the other uid connects, and the first works on. */
	struct lb_client *b2 = NULL;
	t = lbf_now_us();
	assert_int_equal(lbt_connect(&env, "other-uid-2", &b2), 0);
	double connect_ms = (lbf_now_us() - t) / 1000;
	assert_int_equal(lb_ping(b2), 0);
	struct pollfd done = { .fd = result[0], .events = POLLIN };
	while (poll(&done, 1, 0) == 0)
		other_call(&o);
	struct storm r;
	assert_int_equal(read(result[0], &r, sizeof(r)), (ssize_t)sizeof(r));
	sched = sched && sched_times(&s1);
	struct lb_stats st;
	assert_int_equal(lb_stats(mon, &st, sizeof(st)), 0);
	/* Uid A holds its 1,000 sockets still; the daemon, only the admitted ones: a socket, a
	 * pidfd and a region each (the other uid's two clients too). */
	int fds_storm = lbf_count_fds(env.pid), fds_most = fds0 + 3 * (DEFAULT_LIMIT + 2);
	printf("daemon descriptors with uid A's %d sockets open: %d (baseline %d, at most %d)\n",
	       N_CONNS, fds_storm, fds0, fds_most);
	printf("uid %u: %d connections in %.0f ms: %d admitted (%d of them answered STATS "
	       "after), %d refused, %d other; the daemon counted %u clients then\n", UID_A,
	       N_CONNS, r.storm_ms, r.welcomed, r.served, r.refused, r.other, st.clients);
	printf("refusal: \"%s\"; connect to ERROR p50 %.1f us, p99 %.1f us, max %.1f us\n",
	       r.first_text, r.refusal_p50_us, r.refusal_p99_us, r.refusal_max_us);
	printf("other uid: lb_connect %.2f ms before, %.2f ms during it (8 MiB staging "
	       "prefaulted); %llu inserts and %llu hits in all, every hit checked\n",
	       quiet_connect_ms, connect_ms, (unsigned long long)o.n_ins,
	       (unsigned long long)o.hits);
	if (sched)
		sched_print(&s0, &s1);
	timed_print("other uid, quiet: data", &quiet.data);
	timed_print("other uid, quiet: STATS", &quiet.stats);
	timed_print("other uid, storm: data", &o.data);
	timed_print("other uid, storm: STATS", &o.stats);

	/* What is asserted: the counts, the text, the other uid's results (checked above). */
	if (r.other)
		fail_msg("%d connections neither admitted nor refused (first: %d)", r.other, r.other_what);
	assert_int_equal(r.welcomed, DEFAULT_LIMIT);
	assert_int_equal(r.refused, N_CONNS - DEFAULT_LIMIT);
	assert_int_equal(r.bad_text, 0);
	assert_int_equal(r.served, DEFAULT_LIMIT - A_CLIENTS);
	assert_true(r.lb_refused);
	printf("%d more without HELLO: %d refused at their late HELLO, %d at once; lb_connect then "
	       "%s\n", SILENT, r.silent_waited, r.silent_dropped,
	       r.lb_refused_at_once ? "-EUSERS with the text" : "not refused as it should");
	assert_int_equal(r.silent_waited, SILENT_WAIT);
	assert_int_equal(r.silent_dropped, SILENT - SILENT_WAIT);
	assert_true(r.lb_refused_at_once);
	assert_int_equal(st.clients, 1 + 2 + DEFAULT_LIMIT); /* the monitor, the other uid's, A's */
	assert_true(fds_storm <= fds_most);
	assert_true(o.n_ins > 0 && o.hits > 0);

	/* All close: the daemon is back to its baseline, and the entries stay. */
	assert_int_equal(write(go[1], "c", 1), 1);
	assert_int_equal(lbt_reap(&env, kid), 0);
	lbt_close(&env, o.c);
	lbt_close(&env, b2);
	wait_clients(mon, 1);
	wait_fds(fds0, regions0);
	static const struct {
		uint64_t first;
		uint32_t layer;
	} ranges[] = { { 500000, 2 }, { 900000, 1 } };
	uint64_t counts[] = { o.n_ins, A_CLIENTS };
	for (size_t i = 0; i < 2; i++)
		for (uint64_t id = ranges[i].first; id < ranges[i].first + counts[i]; id++) {
			struct lb_key key;
			struct lb_hit h;
			lbf_key(&key, id);
			assert_int_equal(lb_lookup(mon, model, ranges[i].layer, &key, NULL, 0, &h), 0);
			assert_null(lbf_hit_check(&h, id));
			assert_int_equal(lb_release(mon, h.lease), 0);
		}
	assert_int_equal(lb_stats(mon, &st, sizeof(st)), 0);
	printf("after: %u client, %d descriptors, %d client region, %llu entries (%llu inserted, "
	       "%llu evictions)\n", st.clients, lbf_count_fds(env.pid), lbf_count_regions(env.pid),
	       (unsigned long long)st.entries, (unsigned long long)o.n_ins + A_CLIENTS,
	       (unsigned long long)st.evictions);
	assert_int_equal(st.entries, o.n_ins + A_CLIENTS);
	assert_int_equal(st.evictions, 0);
	for (int i = 0; i < 2; i++) {
		close(started[i]);
		close(result[i]);
		close(go[i]);
	}
	free(quiet.data.us);
	free(quiet.stats.us);
	lbt_close(&env, mon);
	assert_true(lbt_daemon_stop(&env));
}

/* ---- one quota and one staging cap per uid ---- */

#define E_BYTES (LB_ENTRY_HDR_SIZE + LBF_MAX_SEQ * LBF_HIDDEN * 4) /* arena bytes of one entry */

/* The n-th input of LBF_MAX_SEQ tokens from first on: all its entries are E_BYTES. */
static uint64_t full_input(uint64_t first, int n)
{
	for (uint64_t id = first;; id++)
		if (lbf_seq_len(id) == LBF_MAX_SEQ && n-- == 0)
			return id;
}

/* Uid A: three connections at once against a staging cap of 16 MiB (two default wishes), then
 * two against a quota of 2.5 entries. */
static int kid_share(void *arg)
{
	(void)arg;
	struct lb_client *c1 = NULL, *c2 = NULL;
	uint32_t m1, m2;
	struct lbp_msg back;
	char want[160];

	/* Staging first: 12 MiB, then the 4 MiB left of the default wish (8 MiB), then none. */
	int s1 = raw_open(), s2 = raw_open(), s3 = raw_open();
	KID_CHECK(s1 >= 0 && s2 >= 0 && s3 >= 0);
	KID_CHECK(raw_hello(s1, 12u << 20, &back) == 0 && back.type == LBP_WELCOME &&
		  back.u.welcome.region.staging_bytes == 12u << 20);
	KID_CHECK(raw_hello(s2, 0, &back) == 0 && back.type == LBP_WELCOME &&
		  back.u.welcome.region.staging_bytes == 4u << 20);
	KID_CHECK(raw_hello(s3, 4096, &back) == 0 && back.type == LBP_ERROR &&
		  back.u.error.code == ENOBUFS);
	snprintf(want, sizeof(want), "uid %u's connections hold 16777216 of the 16777216 staging "
		 "bytes one uid may have (staging-per-uid); a connection needs 4096", UID_A);
	KID_CHECK(strcmp(back.u.error.message, want) == 0);
	KID_CHECK(lb_connect(env.sock, "a3", &c1) == -ENOBUFS && !c1);
	KID_CHECK(strstr(lb_last_error(NULL), want));
	close(s1);
	close(s2);
	close(s3);
	/* The daemon gives the staging back as it ends them: wait for it. Then two clients of the
	 * default wish, 8 MiB each. */
	for (int i = 0; lb_connect(env.sock, "a1", &c1) == -ENOBUFS; i++) {
		KID_CHECK(i < 500);
		lbf_sleep_us(10000);
	}
	for (int i = 0; lb_connect(env.sock, "a2", &c2) == -ENOBUFS; i++) {
		KID_CHECK(i < 500);
		lbf_sleep_us(10000);
	}
	KID_CHECK(lb_register_model(c1, &lbf_model, &m1) == 0);
	KID_CHECK(lb_register_model(c2, &lbf_model, &m2) == 0);
	/* The quota: c1 fills it; c2, which inserted nothing, is refused where alone it would
	 * not be. */
	KID_CHECK(lbf_insert(c1, m1, full_input(10, 0), 0) == 0);
	KID_CHECK(lbf_insert(c1, m1, full_input(10, 1), 0) == 0);
	KID_CHECK(lbf_insert(c1, m1, full_input(10, 2), 0) == -EDQUOT);
	KID_CHECK(lbf_insert(c2, m2, full_input(10, 3), 0) == -EDQUOT);
	lb_close(c1);
	KID_CHECK(lbf_insert(c2, m2, full_input(10, 3), 0) == -EDQUOT); /* still charged */
	lb_close(c2);
	return 0;
}

static void test_one_quota_and_staging_cap_per_uid(void **state)
{
	(void)state;
	char quota[32];
	snprintf(quota, sizeof(quota), "%u", 2 * E_BYTES + E_BYTES / 2);
	struct lb_client *mon = start(LBT_ARGS("--insert-bytes-per-uid", quota,
					       "--staging-per-uid", "16M"));
	assert_int_equal(lbt_reap(&env, spawn_as(UID_A, kid_share, NULL)), 0);

	/* The test's uid (root) has a quota and a staging cap of its own: the monitor's 8 MiB
	 * were granted whole meanwhile. */
	uint32_t model;
	struct lb_stats st;
	assert_int_equal(lb_register_model(mon, &lbf_model, &model), 0);
	assert_int_equal(lbf_insert(mon, model, full_input(10, 4), 0), 0);
	assert_int_equal(lbf_insert(mon, model, full_input(10, 5), 0), 0);
	assert_int_equal(lbf_insert(mon, model, full_input(10, 6), 0), -EDQUOT);
	assert_int_equal(lb_stats(mon, &st, sizeof(st)), 0);
	printf("quota of 2.5 entries per uid: uid %u's two connections 2 entries and 2 refusals, "
	       "root's own 2 entries and 1 refusal: entries %llu, quota_refusals %llu\n", UID_A,
	       (unsigned long long)st.entries, (unsigned long long)st.quota_refusals);
	assert_int_equal(st.entries, 4);
	assert_int_equal(st.quota_refusals, 4);
	lbt_close(&env, mon);
	assert_true(lbt_daemon_stop(&env));
}

#define TEST(f) cmocka_unit_test_prestate_setup_teardown(f, lbt_env_setup, lbt_env_teardown, &env)

int main(void)
{
	if (geteuid() != 0)
		LBT_SKIP("not root: a second uid (setuid in a forked child) is needed to see limits "
			 "per uid");
	const struct CMUnitTest tests[] = {
		TEST(test_thousand_connections_of_one_uid),
		TEST(test_one_quota_and_staging_cap_per_uid),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
