/* layerbankd as a user runs it: options and exit codes, hugepages require/try, stats through
 * layerbank-ctl, socket lifecycle, and an idle daemon (or one out of descriptors) that uses no
 * CPU. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <json-c/json.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "layerbank/layerbank.h"
#include "testutil.h"

static struct lbt_env env; /* every test's fixture (lbt_env_setup, lbt_env_teardown) */

static int run_daemon(const char *const *extra, char *out, size_t n)
{
	return lbt_run_args(LBT_ARGS(LB_DAEMON_PATH), extra, out, n);
}

/* A bad option or value: one line on stderr, exit status 2, no socket left behind. */
static void test_bad_options_exit_2(void **state)
{
	(void)state;
	static const char *const cases[][4] = {
		{ "--hugepages", "sometimes", NULL },
		{ "--arena-size", "12Q", NULL },
		{ "--arena-size", "0", NULL },
		{ "--numa-node", "x", NULL },
		{ "--log-level", "loud", NULL },
		{ "--no-such-option", NULL },
		{ "stray", NULL },
		{ "--config", "/nonexistent/layerbankd.conf", NULL },
	};
	char out[4096];
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int st = run_daemon(cases[i], out, sizeof(out));
		assert_true(WIFEXITED(st));
		assert_int_equal(WEXITSTATUS(st), 2);
		assert_non_null(strstr(out, "layerbankd: "));
		/* exactly one line */
		assert_non_null(strchr(out, '\n'));
		assert_int_equal(strchr(out, '\n')[1], '\0');
	}
	const char *const help[] = { "--help", NULL };
	int st = run_daemon(help, out, sizeof(out));
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	assert_non_null(strstr(out, "--arena-size"));
}

static int ctl_stats_json(const char *s, json_object **out)
{
	const char *argv[] = { LB_CTL_PATH, "--socket", s, "stats", "--json", NULL };
	char buf[4096];
	int st = lbt_run(argv, buf, sizeof(buf));
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		printf("layerbank-ctl: %s\n", buf);
		return -1;
	}
	*out = json_tokener_parse(buf);
	return *out ? 0 : -1;
}

static int64_t jint(json_object *o, const char *key)
{
	json_object *v;
	assert_true(json_object_object_get_ex(o, key, &v));
	return json_object_get_int64(v);
}

/* Acceptance 2, first half: with hugepages free, `require` starts and stats report 2 MiB pages. */
static void test_require_with_hugepages_reports_2m_pages(void **state)
{
	(void)state;
	const char *const args[] = { "--arena-size", "64M", "--hugepages", "require", NULL };
	assert_true(lbt_daemon_start(&env, args) > 0);
	json_object *o = NULL;
	assert_int_equal(ctl_stats_json(env.sock, &o), 0);
	assert_int_equal(jint(o, "page_size"), 2097152);
	assert_int_equal(jint(o, "arena_bytes"), 64 << 20);
	assert_true(jint(o, "numa_nodes") >= 1);
	assert_int_equal(jint(o, "clients"), 1); /* the ctl's own connection */
	assert_int_equal(jint(o, "models"), 0);
	assert_true(jint(o, "uptime_s") >= 0);
	json_object_put(o);
	assert_true(lbt_daemon_stop(&env));
	/* SIGTERM is a clean stop: the socket is gone. */
	assert_int_equal(access(env.sock, F_OK), -1);
}

/* Acceptance 2, second half: too few hugepages — require fails saying how to reserve them,
 * try falls back to 4096-byte pages and says so. The shortage is provoked with an arena larger
 * than what is free, so the test does not depend on the machine having none reserved. */
static void test_hugepage_shortage_require_fails_try_falls_back(void **state)
{
	(void)state;
	char size[32], out[8192];
	long free_pages = lbt_hugepages_avail();
	assert_true(free_pages >= 0);
	snprintf(size, sizeof(size), "%ldM", (free_pages + 8) * 2);

	const char *const req[] = { "--foreground", "--socket", env.sock, "--arena-size", size,
				    "--hugepages", "require", NULL };
	int st = run_daemon(req, out, sizeof(out));
	assert_true(WIFEXITED(st));
	assert_int_not_equal(WEXITSTATUS(st), 0);
	assert_non_null(strstr(out, "nr_hugepages"));
	assert_non_null(strstr(out, "hugepages"));
	assert_int_equal(access(env.sock, F_OK), -1);

	const char *const args[] = { "--arena-size", size, "--hugepages", "try", NULL };
	assert_true(lbt_daemon_start(&env, args) > 0);
	json_object *o = NULL;
	assert_int_equal(ctl_stats_json(env.sock, &o), 0);
	assert_int_equal(jint(o, "page_size"), 4096);
	json_object *hp;
	assert_true(json_object_object_get_ex(o, "hugepages", &hp));
	assert_false(json_object_get_boolean(hp));
	json_object_put(o);
	assert_true(lbt_daemon_stop(&env));
	/* ... and the log says it fell back. */
	FILE *f = fopen(env.log, "r");
	size_t n = fread(out, 1, sizeof(out) - 1, f);
	out[n] = '\0';
	fclose(f);
	assert_non_null(strstr(out, "4096"));
}

/* Acceptance 3: an idle daemon sleeps in io_uring: no CPU over a second. */
static void test_idle_daemon_uses_no_cpu(void **state)
{
	(void)state;
	const char *const args[] = { "--arena-size", "8M", "--hugepages", "off", NULL };
	pid_t pid = lbt_daemon_start(&env, args);
	assert_true(pid > 0);
	struct lb_client *c;
	assert_int_equal(lb_connect(env.sock, "idle-test", &c), 0);
	lb_close(c);
	usleep(200 * 1000);
	long before = lbt_cpu_ticks(pid);
	assert_true(before >= 0);
	sleep(1);
	long after = lbt_cpu_ticks(pid);
	printf("idle daemon CPU over 1 s: %ld ticks\n", after - before);
	assert_true(after - before <= 1);
	assert_true(lbt_daemon_stop(&env));
}

/* In the daemon's process: 40 descriptors at most, hard limit too (it raises the soft one). */
static void few_descriptors(void)
{
	struct rlimit rl = { 40, 40 };
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
		_exit(126);
}

/* Out of descriptors, the daemon pauses between accepts instead of retrying at once (it spun a
 * CPU at 100%, 198 ticks in 2 s, before); the connections wait in the backlog and are served
 * once descriptors are free again. */
static void test_accept_without_descriptors_does_not_spin(void **state)
{
	(void)state;
	const struct lbt_daemon_opts o = {
		.args = LBT_ARGS("--arena-size", "4M", "--hugepages", "off", "--threads", "1",
				 "--max-connections-per-uid", "1024"),
		.in_child = few_descriptors,
	};
	int fds[64];
	pid_t pid = lbt_daemon_start_opts(&env, &o);
	assert_true(pid > 0);
	for (int i = 0; i < 64; i++) {
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		fds[i] = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
		memcpy(sa.sun_path, env.sock, strlen(env.sock) + 1);
		assert_int_equal(connect(fds[i], (struct sockaddr *)&sa, sizeof(sa)), 0);
	}
	usleep(200 * 1000);
	long before = lbt_cpu_ticks(pid);
	sleep(1);
	long after = lbt_cpu_ticks(pid);
	printf("daemon out of descriptors, 64 connections waiting: %ld ticks of CPU in 1 s\n",
	       after - before);
	assert_true(after - before <= 10);
	for (int i = 0; i < 64; i++)
		close(fds[i]);
	/* Descriptors free again: a new client is served. */
	struct lb_client *c = NULL;
	for (int i = 0; lb_connect(env.sock, "after", &c) < 0; i++) {
		assert_true(i < 100);
		usleep(50 * 1000);
	}
	assert_int_equal(lb_ping(c), 0);
	lb_close(c);
	assert_true(lbt_daemon_stop(&env));
}

/* A second daemon on a live socket is refused; a stale socket file is reused. */
static void test_socket_in_use_refused_stale_reclaimed(void **state)
{
	(void)state;
	const char *const args[] = { "--arena-size", "4M", "--hugepages", "off", NULL };
	char out[4096];
	assert_true(lbt_daemon_start(&env, args) > 0);
	const char *const again[] = { "--foreground", "--socket", env.sock, "--arena-size", "4M",
				      "--hugepages", "off", NULL };
	int st = run_daemon(again, out, sizeof(out));
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
	assert_non_null(strstr(out, "another layerbankd"));
	/* Killed hard, the first leaves its socket file behind ... */
	lbt_daemon_kill(&env);
	assert_int_equal(access(env.sock, F_OK), 0);
	/* ... which the next start takes over. */
	assert_true(lbt_daemon_start(&env, args) > 0);
	struct stat sb;
	assert_int_equal(stat(env.sock, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0660);
	assert_true(lbt_daemon_stop(&env));
}

/* layerbank-ctl: a readable table, and a clear error when no daemon listens. */
static void test_ctl_table_and_no_daemon(void **state)
{
	(void)state;
	const char *const args[] = { "--arena-size", "4M", "--hugepages", "off", NULL };
	char out[4096];
	assert_true(lbt_daemon_start(&env, args) > 0);
	const char *const tab[] = { LB_CTL_PATH, "--socket", env.sock, "stats", NULL };
	int st = lbt_run(tab, out, sizeof(out));
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	assert_non_null(strstr(out, "page size"));
	assert_non_null(strstr(out, "4096"));
	assert_true(lbt_daemon_stop(&env));
	st = lbt_run(tab, out, sizeof(out));
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
	assert_non_null(strstr(out, "is layerbankd running?"));
	const char *const bad[] = { LB_CTL_PATH, "--socket", env.sock, "frobnicate", NULL };
	st = lbt_run(bad, out, sizeof(out));
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 2);
}

#define TEST(f) cmocka_unit_test_prestate_setup_teardown(f, lbt_env_setup, lbt_env_teardown, &env)

/* `test_daemon hugepages` runs the tests that need 2 MiB pages, a separate CTest entry so that
 * it alone reports SKIP on a machine without them. */
int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "hugepages") == 0) {
		const char *why;
		const struct CMUnitTest huge[] = {
			TEST(test_require_with_hugepages_reports_2m_pages),
		};
		if (!lbt_hugepages_ensure(32, &why))
			LBT_SKIP("%s", why);
		return cmocka_run_group_tests_name("daemon_hugepages", huge, NULL, NULL);
	}
	const struct CMUnitTest tests[] = {
		TEST(test_bad_options_exit_2),
		TEST(test_hugepage_shortage_require_fails_try_falls_back),
		TEST(test_idle_daemon_uses_no_cpu),
		TEST(test_accept_without_descriptors_does_not_spin),
		TEST(test_socket_in_use_refused_stale_reclaimed),
		TEST(test_ctl_table_and_no_daemon),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
