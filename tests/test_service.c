/* layerbankd under a service manager, played by the test: the notify protocol through
 * $NOTIFY_SOCKET (READY, STATUS, WATCHDOG, STOPPING), socket activation through
 * $LISTEN_FDS/$LISTEN_PID (serving, not unlinking; a wrong fd refused), and journald's <N>
 * prefixes when $JOURNAL_STREAM names stderr. No systemd runs. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "layerbank/layerbank.h"
#include "testutil.h"

static struct lbt_env env; /* every test's fixture (lbt_env_setup, lbt_env_teardown) */

static int unix_socket(int type, const char *path, int do_listen)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	assert_true(strlen(path) < sizeof(sa.sun_path));
	strcpy(sa.sun_path, path);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	if (do_listen)
		assert_int_equal(listen(fd, 16), 0);
	return fd;
}

/* The next notify datagram within timeout_ms into buf; 0 on time-out. */
static int notify_recv(int fd, char *buf, size_t n, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	if (poll(&p, 1, timeout_ms) <= 0)
		return 0;
	ssize_t r = recv(fd, buf, n - 1, 0);
	assert_true(r >= 0);
	buf[r] = '\0';
	return 1;
}

static long elapsed_ms(const struct timespec *t0)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

static const struct lb_model_desc model = {
	.name = "service-test",
	.weights_hash = 0xabcdef,
	.n_layers = 4,
	.hidden = 64,
	.dtype = LB_DTYPE_F32,
	.max_seq = 64,
	.fp_seed = 3,
};

/* One lookup that misses; returns the model id. */
static uint32_t register_and_miss(struct lb_client *c, struct lb_key *key)
{
	struct lb_hit hit;
	uint32_t id;
	assert_int_equal(lb_register_model(c, &model, &id), 0);
	memset(key, 0, sizeof(*key));
	key->fp[0] = 0x9e3779b97f4a7c15ull;
	key->exact[0] = 17;
	key->seq_len = 4;
	assert_int_equal(lb_lookup_deepest(c, id, key, NULL, 0, &hit), -ENOENT);
	return id;
}

/* READY=1 once serving, a STATUS= line with clients and hit rate (updated every 5 s),
 * WATCHDOG=1 again and again at half of $WATCHDOG_USEC, STOPPING=1 on SIGTERM. */
static void test_notify_ready_status_watchdog_stopping(void **state)
{
	(void)state;
	char path[256], var[300], msg[512];
	struct lb_client *c;
	struct lb_key key;
	snprintf(path, sizeof(path), "%s/notify", env.dir);
	snprintf(var, sizeof(var), "NOTIFY_SOCKET=%s", path);
	int nfd = unix_socket(SOCK_DGRAM, path, 0);

	/* 200 ms: a ping every 100 ms. No $WATCHDOG_PID: the watchdog is the daemon's. */
	const struct lbt_daemon_opts o = {
		.args = LBT_ARGS("--arena-size", "8M", "--hugepages", "off"),
		.vars = LBT_ARGS(var, "WATCHDOG_USEC=200000"),
	};
	assert_true(lbt_daemon_start_opts(&env, &o) > 0);

	int ready = 0, status = 0, pings = 0;
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	do {
		if (!notify_recv(nfd, msg, sizeof(msg), 1000))
			break;
		if (strstr(msg, "READY=1")) {
			assert_int_equal(pings, 0); /* READY comes first */
			ready++;
		}
		if (strncmp(msg, "STATUS=", 7) == 0 && ready) {
			printf("%s\n", msg);
			assert_non_null(strstr(msg, "clients 0,"));
			assert_non_null(strstr(msg, "hit rate"));
			status++;
		}
		pings += strcmp(msg, "WATCHDOG=1") == 0;
	} while (elapsed_ms(&t0) < 1000 || !status);
	printf("READY %d, STATUS %d, WATCHDOG pings in about 1 s: %d\n", ready, status, pings);
	assert_int_equal(ready, 1);
	assert_true(status >= 1);
	assert_true(pings >= 5);

	/* A client and one miss show in the next STATUS line (at most 5 s away). */
	assert_int_equal(lb_connect(env.sock, "notify-test", &c), 0);
	register_and_miss(c, &key);
	int seen = 0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (!seen && notify_recv(nfd, msg, sizeof(msg), 7000)) {
		if (strncmp(msg, "STATUS=", 7) == 0 && strstr(msg, "clients 1,")) {
			printf("%s\n", msg);
			assert_non_null(strstr(msg, "lookups 1, hit rate 0.0%"));
			seen = 1;
		}
		if (elapsed_ms(&t0) > 7000)
			break;
	}
	assert_true(seen);
	lb_close(c);

	assert_true(lbt_daemon_stop(&env));
	int stopping = 0;
	while (notify_recv(nfd, msg, sizeof(msg), 0))
		stopping += strstr(msg, "STOPPING=1") != NULL;
	assert_int_equal(stopping, 1);
	close(nfd);
}

/* Without $NOTIFY_SOCKET nothing is sent and nothing fails (the idle test in test_daemon
 * checks that no timer wakes it). */
static void test_no_notify_socket_is_a_noop(void **state)
{
	(void)state;
	const char *const args[] = { "--arena-size", "4M", "--hugepages", "off", NULL };
	assert_true(lbt_daemon_start(&env, args) > 0);
	assert_true(lbt_daemon_stop(&env));
}

/* The descriptors start_activated hands over, for hand_over in the daemon's process. */
static const int *handed_fds;
static int n_handed;

/* In the daemon's process before the exec, as systemd after socket activation: handed_fds
 * become 3, 4, ..., $LISTEN_FDS and $LISTEN_PID are set, and stderr (the log) is announced as
 * the journal through $JOURNAL_STREAM. */
static void hand_over(void)
{
	char num[32];
	struct stat st;
	int moved[8];
	if (n_handed > 8)
		_exit(126);
	/* Out of the way of 3.. first, then into place (dup2 clears FD_CLOEXEC). */
	for (int i = 0; i < n_handed; i++)
		moved[i] = fcntl(handed_fds[i], F_DUPFD_CLOEXEC, 20);
	for (int i = 0; i < n_handed; i++)
		if (dup2(moved[i], 3 + i) < 0)
			_exit(126);
	fstat(2, &st);
	snprintf(num, sizeof(num), "%llu:%llu", (unsigned long long)st.st_dev,
		 (unsigned long long)st.st_ino);
	setenv("JOURNAL_STREAM", num, 1);
	snprintf(num, sizeof(num), "%d", n_handed);
	setenv("LISTEN_FDS", num, 1);
	snprintf(num, sizeof(num), "%d", (int)getpid());
	setenv("LISTEN_PID", num, 1);
}

/* Start the daemon (no --socket of the test's: args say) with fds[] handed over, without
 * waiting. @return its pid. */
static pid_t start_activated(const int *fds, int n, const char *const *args)
{
	const struct lbt_daemon_opts o = { .args = args, .in_child = hand_over, .no_socket = true };
	handed_fds = fds;
	n_handed = n;
	return lbt_daemon_spawn(&env, &o);
}

static void read_log(char *buf, size_t n)
{
	FILE *f = fopen(env.log, "r");
	assert_non_null(f);
	size_t r = fread(buf, 1, n - 1, f);
	buf[r] = '\0';
	fclose(f);
}

/* The daemon serves on the socket it is given (a lookup, an insert, a hit), binds nothing
 * of its own, logs with <N> prefixes to the "journal", and leaves the socket file at exit. */
static void test_socket_activation_serves_and_keeps_socket(void **state)
{
	(void)state;
	char other[256], log[8192];
	struct lb_client *c = NULL;
	struct lb_key key;
	struct lb_hit hit;
	snprintf(other, sizeof(other), "%s/not-used.sock", env.dir);
	int lfd = unix_socket(SOCK_SEQPACKET, env.sock, 1);
	const char *const args[] = { "--socket", other, "--arena-size", "8M", "--hugepages", "off", NULL };
	pid_t pid = start_activated(&lfd, 1, args);
	assert_true(pid > 0);
	close(lfd); /* the daemon holds it now; a connect queues until it accepts */

	int ret = -1;
	for (int i = 0; i < 100 && ret < 0; i++) {
		ret = lb_connect(env.sock, "activated", &c);
		if (ret < 0) {
			assert_true(lbt_alive(pid));
			usleep(50 * 1000);
		}
	}
	if (ret < 0)
		lbt_cat(env.log);
	assert_int_equal(ret, 0);
	uint32_t id = register_and_miss(c, &key);

	/* Insert layer 0 of that input, then find it. */
	float *out = lb_insert_reserve(c, 4 * 64 * sizeof(float));
	assert_non_null(out);
	for (int i = 0; i < 4 * 64; i++)
		out[i] = (float)i;
	const struct lb_shape shape = { .dtype = LB_DTYPE_F32, .ndim = 2, .dims = { 4, 64 } };
	assert_int_equal(lb_insert_commit(c, id, 0, &key, &shape), 0);
	assert_int_equal(lb_lookup_deepest(c, id, &key, NULL, 0, &hit), 0);
	assert_int_equal(hit.layer, 0);
	assert_true(((const float *)hit.data)[5] == 5.0f);
	assert_int_equal(lb_release(c, hit.lease), 0);
	lb_close(c);

	assert_int_equal(access(other, F_OK), -1);
	assert_true(lbt_daemon_stop(&env));
	/* systemd owns the socket: still there. */
	struct stat st;
	assert_int_equal(stat(env.sock, &st), 0);
	assert_true(S_ISSOCK(st.st_mode));
	read_log(log, sizeof(log));
	printf("%s", log);
	assert_non_null(strstr(log, "<6>ready on "));
	assert_non_null(strstr(log, "(from systemd)"));
	assert_null(strstr(log, "layerbankd info:")); /* no plain lines */
}

/* A passed fd that is not a listening SEQPACKET unix socket, or two fds: one clear line,
 * exit status 1, and no arena taken first. */
static void test_socket_activation_wrong_fds_exit_1(void **state)
{
	(void)state;
	char path[256], log[4096];
	const char *const args[] = { "--arena-size", "4M", "--hugepages", "off", NULL };

	snprintf(path, sizeof(path), "%s/dgram.sock", env.dir);
	int dfd = unix_socket(SOCK_DGRAM, path, 0);
	int lfd = unix_socket(SOCK_SEQPACKET, env.sock, 1);
	struct {
		int fds[2];
		int n;
		const char *says;
	} cases[] = {
		{ { dfd }, 1, "is not a listening AF_UNIX SOCK_SEQPACKET socket" },
		{ { lfd, dfd }, 2, "passed 2 file descriptors" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int st;
		pid_t pid = start_activated(cases[i].fds, cases[i].n, args);
		assert_true(pid > 0);
		assert_int_equal(waitpid(pid, &st, 0), pid);
		env.pid = -1;
		read_log(log, sizeof(log));
		printf("%s", log);
		assert_true(WIFEXITED(st));
		assert_int_equal(WEXITSTATUS(st), 1);
		assert_non_null(strstr(log, cases[i].says));
		assert_non_null(strstr(log, "<3>socket activation: "));
		assert_null(strstr(log, "arena")); /* refused before any memory was taken */
	}
	close(dfd);
	close(lfd);
}

#define TEST(f) cmocka_unit_test_prestate_setup_teardown(f, lbt_env_setup, lbt_env_teardown, &env)

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST(test_notify_ready_status_watchdog_stopping),
		TEST(test_no_notify_socket_is_a_noop),
		TEST(test_socket_activation_serves_and_keeps_socket),
		TEST(test_socket_activation_wrong_fds_exit_1),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
