/* Clients SIGKILLed at chosen moments, each with what must hold after it: a lease shared with
 * a live client stays valid for that one; a client whose socket a child inherited is ended by
 * its pidfd; a client killed mid-insert or with both rings full leaves no entry, lease,
 * descriptor or mapping behind; and without pidfd_open the socket's hang-up still ends it
 * (`test_client_death nopidfd`, a CTest entry of its own: SKIP without seccomp or x86-64). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "faultutil.h"
#include "testutil.h"

static struct lbt_env env;    /* every test's fixture: daemon, clients, victims */
static struct lb_client *mon; /* the test's own client */

static int setup(void **state)
{
	lbt_env_setup(state);
	/* A victim's child is handed to us when the victim dies, for us to reap. */
	prctl(PR_SET_CHILD_SUBREAPER, 1UL);
	return 0;
}
#define TEST(f) cmocka_unit_test_prestate_setup_teardown(f, setup, lbt_env_teardown, &env)

static uint32_t start(void (*in_child)(void))
{
	const struct lbt_daemon_opts o = {
		.args = LBT_ARGS("--arena-size", "8M", "--hugepages", "off", "--threads", "1",
				 "--log-level", "info"),
		.in_child = in_child,
	};
	uint32_t model;
	assert_true(lbt_daemon_start_opts(&env, &o) > 0);
	assert_int_equal(lbt_connect(&env, "test", &mon), 0);
	assert_int_equal(lb_register_model(mon, &lbf_model, &model), 0);
	return model;
}

static void stop(void)
{
	lbt_close(&env, mon);
	mon = NULL;
	assert_true(lbt_daemon_stop(&env));
}

static void stats(struct lb_stats *st)
{
	assert_int_equal(lb_stats(mon, st, sizeof(*st)), 0);
}

/* Wait up to 3 s for the daemon to count clients clients and leases leases. */
static void wait_for(uint32_t clients, uint64_t leases)
{
	struct lb_stats st;
	for (int i = 0; i < 300; i++) {
		stats(&st);
		if (st.clients == clients && st.leases == leases)
			return;
		lbf_sleep_us(10000);
	}
	printf("clients %u (want %u), leases %llu (want %llu)\n", st.clients, clients,
	       (unsigned long long)st.leases, (unsigned long long)leases);
	lbt_cat(env.log);
	fail();
}

/* Wait up to 3 s for the daemon's descriptors and client-region mappings. */
static void wait_fds(int fds, int regions)
{
	for (int i = 0; i < 300; i++) {
		if (lbf_count_fds(env.pid) == fds && lbf_count_regions(env.pid) == regions)
			return;
		lbf_sleep_us(10000);
	}
	printf("descriptors %d (want %d), client regions mapped %d (want %d)\n",
	       lbf_count_fds(env.pid), fds, lbf_count_regions(env.pid), regions);
	fail();
}

/* Fork a victim running fn(ready_fd); @return its pid once it has written its int to the
 * pipe, the int into *said. */
static pid_t victim(void (*fn)(int ready, uint64_t arg), uint64_t arg, int *said)
{
	int p[2], v = 0;
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	pid_t pid = lbt_fork(&env);
	assert_true(pid >= 0);
	if (pid == 0) {
		close(p[0]);
		fn(p[1], arg);
		_exit(1);
	}
	close(p[1]);
	struct pollfd pf = { .fd = p[0], .events = POLLIN };
	assert_int_equal(poll(&pf, 1, 5000), 1);
	assert_int_equal(read(p[0], &v, sizeof(v)), (ssize_t)sizeof(v));
	close(p[0]);
	if (said)
		*said = v;
	return pid;
}

static void tell(int fd, int v)
{
	if (write(fd, &v, sizeof(v)) != (ssize_t)sizeof(v))
		_exit(2);
}

static _Noreturn void pause_forever(void)
{
	for (;;)
		pause();
}

/* In a victim: connect and register, or exit. */
static struct lb_client *victim_connect(uint32_t *model)
{
	struct lb_client *c;
	if (lb_connect(env.sock, "victim", &c) < 0 || lb_register_model(c, &lbf_model, model) < 0)
		_exit(3);
	return c;
}

/* ---- a lease shared with a live client ---- */

#define SHARED_ID 7u
#define SHARED_LAYER 2u

static void lease_twice(int ready, uint64_t arg)
{
	(void)arg;
	uint32_t model;
	struct lb_client *c = victim_connect(&model);
	struct lb_key k;
	struct lb_hit h;
	lbf_key(&k, SHARED_ID);
	for (int i = 0; i < 2; i++)
		if (lb_lookup(c, model, SHARED_LAYER, &k, NULL, 0, &h) != 0 || lbf_hit_check(&h, SHARED_ID))
			_exit(4);
	tell(ready, 0);
	pause_forever();
}

static void test_shared_lease_outlives_a_killed_holder(void **state)
{
	(void)state;
	uint32_t model = start(NULL);
	struct lb_key k;
	struct lb_hit h, again;
	struct lb_stats st;
	struct lb_layer_stats ls[LBF_LAYERS];

	assert_int_equal(lbf_insert(mon, model, SHARED_ID, SHARED_LAYER), 0);
	lbf_key(&k, SHARED_ID);
	assert_int_equal(lb_lookup(mon, model, SHARED_LAYER, &k, NULL, 0, &h), 0);
	assert_null(lbf_hit_check(&h, SHARED_ID));
	void *copy = malloc(h.bytes);
	assert_non_null(copy);
	memcpy(copy, h.data, h.bytes);

	pid_t v = victim(lease_twice, 0, NULL);
	stats(&st);
	assert_int_equal(st.clients, 2);
	assert_int_equal(st.leases, 3); /* ours and the victim's two, all on one entry */
	assert_int_equal(lb_model_stats(mon, model, NULL, ls, LBF_LAYERS), LBF_LAYERS);
	assert_int_equal(ls[SHARED_LAYER].leases, 3);

	lbt_kill(&env, v);
	wait_for(1, 1);
	printf("leases on the entry: 3 before the kill, 1 after\n");
	/* Ours holds: same bytes, same place, and the entry is still pinned by it. */
	assert_null(lbf_hit_check(&h, SHARED_ID));
	assert_memory_equal(h.data, copy, h.bytes);
	assert_int_equal(lb_model_stats(mon, model, NULL, ls, LBF_LAYERS), LBF_LAYERS);
	assert_int_equal(ls[SHARED_LAYER].leases, 1);
	/* Fill the arena twice over: everything else may go, not the entry we lease. */
	for (uint64_t id = 1000; id < 3000; id++)
		assert_int_equal(lbf_insert(mon, model, id, 0), 0);
	stats(&st);
	printf("2000 inserts while leased: %llu evictions, the leased entry byte-identical\n",
	       (unsigned long long)st.evictions);
	assert_true(st.evictions > 0);
	assert_int_equal(st.leases, 1);
	assert_null(lbf_hit_check(&h, SHARED_ID));
	assert_memory_equal(h.data, copy, h.bytes);
	assert_int_equal(lb_lookup(mon, model, SHARED_LAYER, &k, NULL, 0, &again), 0);
	assert_ptr_equal(again.data, h.data);
	assert_int_equal(lb_release(mon, again.lease), 0);
	/* Our lease is ours to end, once. */
	assert_int_equal(lb_release(mon, h.lease), 0);
	assert_int_equal(lb_release(mon, h.lease), -EINVAL);
	wait_for(1, 0);
	free(copy);
	stop();
}

/* ---- a socket inherited by a child ---- */

/* In the child of lease_and_fork, once its parent is dead: use the inherited connection until
 * the daemon ends it. Exit 0 on end of file, 6 on another error, 7 when it never comes. */
static _Noreturn void read_until_eof(struct lb_client *c, pid_t parent)
{
	struct lb_stats st;
	while (getppid() == parent)
		lbf_sleep_us(1000);
	/* The daemon may answer for a moment yet: it learns of the exit asynchronously. */
	for (int i = 0; i < 5000; i++) {
		int ret = lb_stats(c, &st, sizeof(st));
		if (ret == -ECONNRESET || ret == -EPIPE)
			_exit(0);
		if (ret < 0)
			_exit(6);
		lbf_sleep_us(1000);
	}
	_exit(7);
}

/* Take 3 leases, then fork a child that keeps the socket, the region and the leases' views:
 * with arg 1 it reads until the daemon ends the session, with arg 0 it just waits. */
static void lease_and_fork(int ready, uint64_t arg)
{
	uint32_t model;
	struct lb_client *c = victim_connect(&model);
	struct lb_key k;
	struct lb_hit h;
	for (uint64_t id = 1; id <= 3; id++) {
		lbf_key(&k, id);
		if (lb_lookup_deepest(c, model, &k, NULL, 0, &h) != 0)
			_exit(4);
	}
	pid_t parent = getpid(), kid = fork();
	if (kid < 0)
		_exit(5);
	if (kid == 0) {
		if (arg)
			read_until_eof(c, parent);
		pause_forever();
	}
	tell(ready, (int)kid);
	pause_forever();
}

/* Wait up to 5 s for a child to end by itself. @return its wait status, -1 on time-out. */
static int wait_kid(pid_t pid)
{
	int st;
	for (int i = 0; i < 500; i++) {
		if (waitpid(pid, &st, WNOHANG) == pid) {
			lbt_forget(&env, pid);
			return st;
		}
		lbf_sleep_us(10000);
	}
	return -1;
}

static bool log_has(const char *what, int *count)
{
	char line[1024];
	FILE *f = fopen(env.log, "r");
	int n = 0;
	assert_non_null(f);
	while (fgets(line, sizeof(line), f))
		n += strstr(line, what) != NULL;
	fclose(f);
	if (count)
		*count = n;
	return n > 0;
}

static void test_inherited_socket_is_reaped_by_pidfd(void **state)
{
	(void)state;
	uint32_t model = start(NULL);
	int kid;

	if (log_has("pidfd_open", NULL))
		skip(); /* the daemon said it cannot watch processes here; the next test covers that */
	for (uint64_t id = 1; id <= 3; id++)
		assert_int_equal(lbf_insert(mon, model, id, 1), 0);
	int fds = lbf_count_fds(env.pid), regions = lbf_count_regions(env.pid);
	pid_t v = victim(lease_and_fork, 1, &kid);
	assert_true(lbt_adopt(&env, kid));
	wait_for(2, 3);

	double t0 = lbf_now_us();
	lbt_kill(&env, v);
	/* Nobody can hang up (the child holds the socket and uses it until the daemon closes it):
	 * the victim's exit alone ends the session. */
	wait_for(1, 0);
	printf("ended by its pidfd %.1f ms after the kill, its child still running\n",
	       (lbf_now_us() - t0) / 1000);
	assert_true(log_has("exited: ending its session", NULL));
	wait_fds(fds, regions);
	/* And the child, which was served on that connection until then, got end of file. */
	int st = wait_kid(kid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	assert_int_equal(lb_ping(mon), 0);
	stop();
}

/* ---- mid-insert, and both rings full ---- */

static void reserve_and_stop(int ready, uint64_t id)
{
	uint32_t model;
	struct lb_client *c = victim_connect(&model);
	float *buf = lb_insert_reserve(c, lbf_entry_bytes(id));
	if (!buf)
		_exit(4);
	lbf_fill(buf, id, 0);
	tell(ready, 0);
	pause_forever(); /* lb_insert_commit never comes */
}

/* Push lookups that hit until the request ring is full and stays full: the daemon has filled
 * the completion ring (one lease per hit) and stopped taking requests. */
static void flood(int ready, uint64_t id)
{
	uint32_t model;
	struct lb_client *c = victim_connect(&model);
	struct lb_key k;
	int pushed = 0;
	lbf_key(&k, id);
	for (int round = 0; round < 3; round++) {
		while (lb_submit_lookup_deepest(c, model, &k, NULL, 0, (uint64_t)pushed) == 0)
			pushed++;
		lbf_sleep_us(20000);
	}
	tell(ready, pushed);
	pause_forever();
}

static void test_killed_mid_insert_or_flooding_leaves_nothing(void **state)
{
	(void)state;
	uint32_t model = start(NULL);
	struct lb_stats before, st;
	struct lb_hit h;
	struct lb_key k;
	int pushed;

	for (uint64_t id = 1; id <= 20; id++)
		assert_int_equal(lbf_insert(mon, model, id, 0), 0);
	stats(&before);
	int fds = lbf_count_fds(env.pid), regions = lbf_count_regions(env.pid);

	/* Between lb_insert_reserve and lb_insert_commit. */
	pid_t v = victim(reserve_and_stop, 500, NULL);
	wait_for(2, 0);
	lbt_kill(&env, v);
	wait_for(1, 0);
	wait_fds(fds, regions);
	stats(&st);
	printf("killed between reserve and commit: inserts %llu, entries %llu, bytes used %llu, as "
	       "before\n", (unsigned long long)st.inserts, (unsigned long long)st.entries,
	       (unsigned long long)st.bytes_used);
	assert_int_equal(st.inserts, before.inserts);
	assert_int_equal(st.entries, before.entries);
	assert_int_equal(st.bytes_used, before.bytes_used);
	lbf_key(&k, 500);
	assert_int_equal(lb_lookup_deepest(mon, model, &k, NULL, 0, &h), -ENOENT);

	/* Request ring full, completion ring full and unread, a lease in every completion. */
	v = victim(flood, 3, &pushed);
	wait_for(2, 256); /* the completion ring's default size, one hit in each */
	printf("flooding victim: %d lookups pushed, 256 leases held\n", pushed);
	assert_true(pushed > 256);
	/* The daemon serves others meanwhile. */
	assert_int_equal(lb_ping(mon), 0);
	lbf_key(&k, 3);
	assert_int_equal(lb_lookup_deepest(mon, model, &k, NULL, 0, &h), 0);
	assert_int_equal(lb_release(mon, h.lease), 0);
	lbt_kill(&env, v);
	wait_for(1, 0);
	wait_fds(fds, regions);
	stats(&st);
	assert_int_equal(st.entries, before.entries);
	assert_int_equal(st.bytes_used, before.bytes_used);
	/* The entry it leased 256 times is free to go: three arenas' worth of inserts evict it
	 * (each eviction picks the oldest of 16 entries drawn at random). */
	for (uint64_t id = 1000; id < 7000; id++)
		assert_int_equal(lbf_insert(mon, model, id, 0), 0);
	assert_int_equal(lb_lookup_deepest(mon, model, &k, NULL, 0, &h), -ENOENT);
	stop();
}

/* ---- without pidfd_open ---- */

#ifdef __x86_64__
/* In the daemon's process before exec: pidfd_open fails with ENOSYS, as on a kernel before 5.3
 * or under a seccomp policy that lacks it. */
static void no_pidfd_open(void)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_pidfd_open, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { (unsigned short)(sizeof(f) / sizeof(f[0])), f };
	if (prctl(PR_SET_NO_NEW_PRIVS, 1UL, 0UL, 0UL, 0UL) < 0 ||
	    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0)
		_exit(126);
}

static void hold_leases(int ready, uint64_t arg)
{
	(void)arg;
	uint32_t model;
	struct lb_client *c = victim_connect(&model);
	struct lb_key k;
	struct lb_hit h;
	lbf_key(&k, 1);
	if (lb_lookup_deepest(c, model, &k, NULL, 0, &h) != 0)
		_exit(4);
	tell(ready, 0);
	pause_forever();
}

static void test_without_pidfd_the_hangup_still_reaps(void **state)
{
	(void)state;
	int kid, lines;
	uint32_t model = start(no_pidfd_open);
	for (uint64_t id = 1; id <= 3; id++)
		assert_int_equal(lbf_insert(mon, model, id, 0), 0);
	int fds = lbf_count_fds(env.pid), regions = lbf_count_regions(env.pid);

	/* Killed: its socket hangs up, which is enough. */
	for (int i = 0; i < 3; i++) {
		pid_t v = victim(hold_leases, 0, NULL);
		wait_for(2, 1);
		lbt_kill(&env, v);
		wait_for(1, 0);
	}
	wait_fds(fds, regions);
	printf("without pidfd_open: 3 killed clients ended by their hang-up\n");
	/* One line says what is missing, however many clients came. */
	assert_true(log_has("pidfd_open", &lines));
	assert_int_equal(lines, 1);
	assert_false(log_has("exited: ending its session", NULL));

	/* The limit: a socket held by a child keeps the client until the child goes too. */
	pid_t v = victim(lease_and_fork, 0, &kid);
	assert_true(lbt_adopt(&env, kid));
	wait_for(2, 3);
	lbt_kill(&env, v);
	lbf_sleep_us(300000);
	wait_for(2, 3);
	printf("without pidfd_open: a socket held by a child keeps the client (3 leases) until the "
	       "child exits\n");
	lbt_kill(&env, kid);
	wait_for(1, 0);
	wait_fds(fds, regions);
	stop();
}

/* Whether this process can install the filter at all (a container may forbid seccomp): NULL
 * when it can, else why not. */
static const char *no_pidfd_unavailable(void)
{
	int st;
	pid_t probe = fork();

	if (probe < 0) {
		perror("fork");
		exit(1);
	}
	if (probe == 0) {
		no_pidfd_open();
		_exit(syscall(SYS_pidfd_open, getpid(), 0) < 0 && errno == ENOSYS ? 0 : 1);
	}
	if (waitpid(probe, &st, 0) != probe) {
		perror("waitpid");
		exit(1);
	}
	return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? NULL
						     : "seccomp filters cannot be installed here";
}

/* `test_client_death nopidfd`: the daemon without pidfd_open, a CTest entry of its own that
 * reports SKIP where the filter cannot be had. */
static int run_no_pidfd(void)
{
	const char *why = no_pidfd_unavailable();
	const struct CMUnitTest tests[] = {
		TEST(test_without_pidfd_the_hangup_still_reaps),
	};

	if (why)
		LBT_SKIP("%s", why);
	return cmocka_run_group_tests_name("client_death_nopidfd", tests, NULL, NULL);
}
#else
static int run_no_pidfd(void)
{
	LBT_SKIP("the seccomp filter of this test is written for x86-64");
}
#endif

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		TEST(test_shared_lease_outlives_a_killed_holder),
		TEST(test_inherited_socket_is_reaped_by_pidfd),
		TEST(test_killed_mid_insert_or_flooding_leaves_nothing),
	};

	if (argc > 1 && strcmp(argv[1], "nopidfd") == 0)
		return run_no_pidfd();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
