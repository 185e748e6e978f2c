/* Tests for daemon/config.c: defaults, every option good and bad, the config file and its
 * FILE:LINE errors, the command line winning over the file, and lbu_parse_size. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "size.h"
#include "testutil.h"

#define MAX_ARGS 32

/* Copy args (NULL-terminated, after "layerbankd") into a writable argv, as main() gets one. */
static int parse_argv(struct lbd_config *c, char *err, size_t errlen, const char *const *args)
{
	char *argv[MAX_ARGS + 1];
	int argc = 0;
	int rc;

	argv[argc++] = strdup("layerbankd");
	for (; *args; args++) {
		assert_true(argc < MAX_ARGS);
		argv[argc++] = strdup(*args);
	}
	argv[argc] = NULL;
	rc = lbd_config_parse_args(c, argc, argv, err, errlen);
	for (int i = 0; i < argc; i++)
		free(argv[i]);
	return rc;
}

#define PARSE(c, err, ...) parse_argv((c), (err), sizeof(err), (const char *const[]){ __VA_ARGS__, NULL })
#define PARSE0(c, err) parse_argv((c), (err), sizeof(err), (const char *const[]){ NULL })

/* Bad input: -EINVAL, one line, no program-name prefix, mentions each of want (NULL-ended). */
static void check_err_line(const char *err, const char *const *want)
{
	assert_non_null(err);
	assert_true(err[0] != '\0');
	assert_null(strchr(err, '\n'));
	assert_true(strncmp(err, "layerbankd", 10) != 0);
	for (; *want; want++) {
		if (!strstr(err, *want))
			fail_msg("error '%s' lacks '%s'", err, *want);
	}
}

#define EXPECT_BAD(want, ...)                                                          \
	do {                                                                           \
		struct lbd_config c_;                                                  \
		char err_[512];                                                        \
		lbd_config_defaults(&c_);                                              \
		int rc_ = PARSE(&c_, err_, __VA_ARGS__);                               \
		assert_int_equal(rc_, -EINVAL);                                        \
		check_err_line(err_, (const char *const[]){ want, NULL });             \
	} while (0)

/* A fresh folder per test that writes files, removed in teardown. */
struct fixture {
	char dir[256];
	char path[512];
};

static int setup_dir(void **state)
{
	struct fixture *fx = calloc(1, sizeof(*fx));
	if (!fx)
		return -1;
	lbt_mkdtemp(fx->dir, sizeof(fx->dir));
	*state = fx;
	return 0;
}

static int teardown_dir(void **state)
{
	struct fixture *fx = *state;
	lbu_rmtree(fx->dir);
	free(fx);
	return 0;
}

/* Write text to DIR/name; returns fx->path. */
static const char *write_file(struct fixture *fx, const char *name, const char *text)
{
	snprintf(fx->path, sizeof(fx->path), "%s/%s", fx->dir, name);
	FILE *f = fopen(fx->path, "w");
	assert_non_null(f);
	assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
	assert_int_equal(fclose(f), 0);
	return fx->path;
}

/* Run parse on args with stdout sent into out (n bytes); returns parse's result. */
static int parse_capturing_stdout(const char *const *args, char *out, size_t n)
{
	struct lbd_config c;
	char err[256];
	char tmpl[] = "/tmp/layerbank-test-stdout.XXXXXX";
	int fd = mkstemp(tmpl);
	assert_true(fd >= 0);
	unlink(tmpl);

	fflush(stdout);
	int saved = dup(STDOUT_FILENO);
	assert_true(saved >= 0);
	assert_true(dup2(fd, STDOUT_FILENO) >= 0);
	lbd_config_defaults(&c);
	int rc = parse_argv(&c, err, sizeof(err), args);
	fflush(stdout);
	assert_true(dup2(saved, STDOUT_FILENO) >= 0);
	close(saved);

	ssize_t got = pread(fd, out, n - 1, 0);
	assert_true(got >= 0);
	out[got] = '\0';
	close(fd);
	return rc;
}

static void test_defaults(void **state)
{
	(void)state;
	struct lbd_config c, d;
	char err[256];

	memset(&c, 0x5a, sizeof(c));
	assert_int_equal(PARSE0(&c, err), 0);
	assert_string_equal(c.socket_path, LBD_DEFAULT_SOCKET);
	assert_int_equal(c.arena_size, LBD_DEFAULT_ARENA_SIZE);
	assert_int_equal(c.hugepages, LBD_HP_TRY);
	assert_int_equal(c.numa_node, LBD_NUMA_ALL);
	assert_false(c.foreground);
	assert_int_equal(c.log_level, LBD_LOG_INFO);

	lbd_config_defaults(&d);
	assert_string_equal(d.socket_path, LBD_DEFAULT_SOCKET);
	assert_int_equal(d.arena_size, 1ull << 30);
	assert_int_equal(d.hugepages, LBD_HP_TRY);
	assert_int_equal(d.numa_node, -1);
	assert_false(d.foreground);
	assert_int_equal(d.log_level, LBD_LOG_INFO);
}

static void test_socket_ok(void **state)
{
	(void)state;
	struct lbd_config c;
	char err[256];
	char path[108];

	assert_int_equal(PARSE(&c, err, "--socket", "/tmp/lb.sock"), 0);
	assert_string_equal(c.socket_path, "/tmp/lb.sock");
	assert_int_equal(PARSE(&c, err, "-s", "/tmp/a"), 0);
	assert_string_equal(c.socket_path, "/tmp/a");
	assert_int_equal(PARSE(&c, err, "--socket=/tmp/b"), 0);
	assert_string_equal(c.socket_path, "/tmp/b");
	assert_int_equal(PARSE(&c, err, "-s/tmp/c"), 0);
	assert_string_equal(c.socket_path, "/tmp/c");

	/* 107 bytes plus the NUL is exactly sun_path. */
	memset(path, 'a', 107);
	path[0] = '/';
	path[107] = '\0';
	assert_int_equal(PARSE(&c, err, "--socket", path), 0);
	assert_string_equal(c.socket_path, path);
}

static void test_socket_bad(void **state)
{
	(void)state;
	char path[201];

	EXPECT_BAD("--socket", "--socket", "");
	EXPECT_BAD("empty", "--socket", "");

	memset(path, 'a', 200);
	path[0] = '/';
	path[200] = '\0';
	EXPECT_BAD("--socket", "--socket", path);
	EXPECT_BAD("200 bytes", "--socket", path);
	EXPECT_BAD("107", "--socket", path);

	memset(path, 'b', 108);
	path[108] = '\0';
	EXPECT_BAD("108 bytes", "--socket", path);
}

static void test_arena_size_ok(void **state)
{
	(void)state;
	struct lbd_config c;
	char err[256];

	assert_int_equal(PARSE(&c, err, "--arena-size", "64M"), 0);
	assert_int_equal(c.arena_size, 64ull << 20);
	assert_int_equal(PARSE(&c, err, "--arena-size=4096"), 0);
	assert_int_equal(c.arena_size, 4096);
	assert_int_equal(PARSE(&c, err, "--arena-size", "1"), 0);
	assert_int_equal(c.arena_size, 1);
	assert_int_equal(PARSE(&c, err, "--arena-size", "1T"), 0);
	assert_int_equal(c.arena_size, LBD_MAX_ARENA_SIZE);
	assert_int_equal(PARSE(&c, err, "--arena-size", "2GiB"), 0);
	assert_int_equal(c.arena_size, 2ull << 30);
}

static void test_arena_size_bad(void **state)
{
	(void)state;

	EXPECT_BAD("--arena-size: '0' is out of range", "--arena-size", "0");
	EXPECT_BAD("--arena-size: '12Q' is not a size (examples: 4096, 512K, 64M, 1G)",
		   "--arena-size", "12Q");
	EXPECT_BAD("--arena-size: '-1' is not a size", "--arena-size", "-1");
	EXPECT_BAD("--arena-size: '99999999999T' is out of range", "--arena-size", "99999999999T");
	EXPECT_BAD("--arena-size: '' is not a size", "--arena-size", "");
	EXPECT_BAD("--arena-size: '' is not a size", "--arena-size=");
	/* One byte past the limit, and a huge but representable value. */
	EXPECT_BAD("1T", "--arena-size", "1099511627777");
	EXPECT_BAD("'2T' is out of range", "--arena-size", "2T");
}

static void test_hugepages(void **state)
{
	(void)state;
	struct lbd_config c;
	char err[256];

	assert_int_equal(PARSE(&c, err, "--hugepages", "require"), 0);
	assert_int_equal(c.hugepages, LBD_HP_REQUIRE);
	assert_int_equal(PARSE(&c, err, "--hugepages", "off"), 0);
	assert_int_equal(c.hugepages, LBD_HP_OFF);
	assert_int_equal(PARSE(&c, err, "--hugepages=try"), 0);
	assert_int_equal(c.hugepages, LBD_HP_TRY);

	EXPECT_BAD("--hugepages: 'sometimes' is not one of require|try|off", "--hugepages",
		   "sometimes");
	EXPECT_BAD("--hugepages: '' is not one of require|try|off", "--hugepages", "");
	EXPECT_BAD("'TRY' is not one of", "--hugepages", "TRY");
}

static void test_numa_node(void **state)
{
	(void)state;
	struct lbd_config c;
	char err[256];

	assert_int_equal(PARSE(&c, err, "--numa-node", "0"), 0);
	assert_int_equal(c.numa_node, 0);
	assert_int_equal(PARSE(&c, err, "--numa-node", "1023"), 0);
	assert_int_equal(c.numa_node, 1023);
	assert_int_equal(PARSE(&c, err, "--numa-node", "3", "--numa-node", "all"), 0);
	assert_int_equal(c.numa_node, LBD_NUMA_ALL);

	EXPECT_BAD("--numa-node: '-1' is not a node number 0..1023 or 'all'", "--numa-node", "-1");
	EXPECT_BAD("--numa-node: 'x' is not a node number", "--numa-node", "x");
	EXPECT_BAD("--numa-node: '1024' is not a node number", "--numa-node", "1024");
	EXPECT_BAD("--numa-node: '' is not", "--numa-node", "");
	EXPECT_BAD("'+1'", "--numa-node", "+1");
	EXPECT_BAD("'0x1'", "--numa-node", "0x1");
	EXPECT_BAD("' 1'", "--numa-node", " 1");
	EXPECT_BAD("'99999999999999999999'", "--numa-node", "99999999999999999999");
}

static void test_foreground_and_log_level(void **state)
{
	(void)state;
	struct lbd_config c;
	char err[256];
	static const struct {
		const char *name;
		enum lbd_log_level level;
	} levels[] = {
		{ "error", LBD_LOG_ERROR },
		{ "warn", LBD_LOG_WARN },
		{ "info", LBD_LOG_INFO },
		{ "debug", LBD_LOG_DEBUG },
	};

	assert_int_equal(PARSE(&c, err, "--foreground"), 0);
	assert_true(c.foreground);
	assert_int_equal(PARSE(&c, err, "-f"), 0);
	assert_true(c.foreground);

	for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++) {
		assert_int_equal(PARSE(&c, err, "--log-level", levels[i].name), 0);
		assert_int_equal(c.log_level, levels[i].level);
	}
	EXPECT_BAD("--log-level: 'loud' is not one of error|warn|info|debug", "--log-level", "loud");
	EXPECT_BAD("--foreground: takes no value, got 'yes'", "--foreground=yes");
}

/* The data-plane options: defaults, good values, and each bound. */
static void test_data_plane_options(void **state)
{
	(void)state;
	struct lbd_config c;
	char err[256];

	assert_int_equal(PARSE0(&c, err), 0);
	assert_int_equal(c.threads, LBD_DEFAULT_THREADS);
	assert_int_equal(c.spin_us, LBD_DEFAULT_SPIN_US);
	assert_int_equal(c.policy, LBD_POLICY_LRU);
	assert_true(c.tau == LBD_DEFAULT_TAU);
	assert_int_equal(c.budget, 0);

	assert_int_equal(PARSE(&c, err, "--threads", "4", "--spin-us", "0", "--policy", "decay",
			       "--half-life", "60", "--tau", "0.9", "--drift-max", "0.25", "--budget",
			       "512M"), 0);
	assert_int_equal(c.threads, 4);
	assert_int_equal(c.spin_us, 0);
	assert_int_equal(c.policy, LBD_POLICY_DECAY);
	assert_int_equal(c.half_life_s, 60);
	assert_true(c.tau == 0.9);
	assert_true(c.drift_max == 0.25);
	assert_int_equal(c.budget, 512ull << 20);
	assert_int_equal(PARSE(&c, err, "--policy", "ttl", "--ttl", "1"), 0);
	assert_int_equal(c.policy, LBD_POLICY_TTL);
	assert_int_equal(c.ttl_s, 1);
	assert_int_equal(PARSE(&c, err, "--tau", "-1"), 0);

	assert_int_equal(PARSE(&c, err, "--threads", "3", "--threads", "auto"), 0);
	assert_int_equal(c.threads, LBD_THREADS_AUTO);
	EXPECT_BAD("--threads: '0' is not a whole number 1..64, nor 'auto'", "--threads", "0");
	EXPECT_BAD("--threads: '65' is not a whole number 1..64, nor 'auto'", "--threads", "65");
	EXPECT_BAD("--threads: 'two'", "--threads", "two");
	EXPECT_BAD("--spin-us: '1000001'", "--spin-us", "1000001");
	EXPECT_BAD("--spin-us: '-5'", "--spin-us", "-5");
	EXPECT_BAD("--policy: 'fifo' is not one of lru|decay|ttl", "--policy", "fifo");
	EXPECT_BAD("--ttl: '0'", "--ttl", "0");
	EXPECT_BAD("--half-life: ''", "--half-life", "");
	EXPECT_BAD("--tau: '1.5' is not a number -1..1", "--tau", "1.5");
	EXPECT_BAD("--tau: 'nan'", "--tau", "nan");
	EXPECT_BAD("--tau: '0.9x'", "--tau", "0.9x");
	EXPECT_BAD("--drift-max: '-0.1'", "--drift-max", "-0.1");
	EXPECT_BAD("--drift-max: 'inf'", "--drift-max", "inf");
	EXPECT_BAD("--budget: '12Q'", "--budget", "12Q");
}

/* Socket access, model allow-lists and limits per uid: defaults, good values, each bound; the
 * old names of the staging and insert limits as synonyms of the new. */
static void test_isolation_options(void **state)
{
	(void)state;
	struct lbd_config c;
	char err[512];

	assert_int_equal(PARSE0(&c, err), 0);
	assert_int_equal(c.socket_mode, 0660);
	assert_int_equal(c.socket_gid, LBD_SOCKET_GROUP_OWN);
	assert_int_equal(c.n_allow, 0);
	assert_int_equal(c.staging_per_uid, 1ull << 30);
	assert_int_equal(c.insert_bytes_per_uid, 0);
	assert_int_equal(c.conns_per_uid, 64);
	assert_null(lbd_config_model_allow(&c, "any"));

	assert_int_equal(PARSE(&c, err, "--socket-mode", "600", "--socket-group", "0",
			       "--client-staging-max", "64M", "--client-insert-bytes", "1G"), 0);
	assert_int_equal(c.socket_mode, 0600);
	assert_int_equal(c.socket_gid, 0);
	assert_int_equal(c.staging_per_uid, 64ull << 20);
	assert_int_equal(c.insert_bytes_per_uid, 1ull << 30);
	assert_int_equal(PARSE(&c, err, "--staging-per-uid", "32M", "--insert-bytes-per-uid", "2G",
			       "--max-connections-per-uid", "1"), 0);
	assert_int_equal(c.staging_per_uid, 32ull << 20);
	assert_int_equal(c.insert_bytes_per_uid, 2ull << 30);
	assert_int_equal(c.conns_per_uid, 1);
	/* A synonym is the same key: the last one given wins. */
	assert_int_equal(PARSE(&c, err, "--staging-per-uid", "32M", "--client-staging-max", "16M",
			       "--max-connections-per-uid", "1024"), 0);
	assert_int_equal(c.staging_per_uid, 16ull << 20);
	assert_int_equal(c.conns_per_uid, 1024);
	assert_int_equal(PARSE(&c, err, "--socket-mode", "0777", "--socket-group", "root"), 0);
	assert_int_equal(c.socket_mode, 0777);
	assert_int_equal(c.socket_gid, 0);
	assert_int_equal(PARSE(&c, err, "--socket-group", "4294967294", "--socket-group", "none"), 0);
	assert_int_equal(c.socket_gid, LBD_SOCKET_GROUP_OWN);
	assert_int_equal(PARSE(&c, err, "--client-staging-max", "4096", "--client-staging-max", "4G"), 0);
	assert_int_equal(c.staging_per_uid, 4ull << 30);

	/* Users by name or uid; a model name may hold blanks (the users follow the last one). */
	assert_int_equal(PARSE(&c, err, "--model-allow", "secret root,4242", "--model-allow",
			       "my model  7", "--model-allow", "none"), 0);
	assert_int_equal(c.n_allow, 2);
	const struct lbd_model_allow *a = lbd_config_model_allow(&c, "secret");
	assert_non_null(a);
	assert_int_equal(a->n_uids, 2);
	assert_int_equal(a->uids[0], 0);
	assert_int_equal(a->uids[1], 4242);
	a = lbd_config_model_allow(&c, "my model");
	assert_non_null(a);
	assert_int_equal(a->n_uids, 1);
	assert_int_equal(a->uids[0], 7);
	assert_null(lbd_config_model_allow(&c, "my"));

	EXPECT_BAD("--socket-mode: '0400' leaves the owner without read and write", "--socket-mode", "0400");
	EXPECT_BAD("--socket-mode: '1777' is not an octal mode 0600..0777", "--socket-mode", "1777");
	EXPECT_BAD("--socket-mode: '0668'", "--socket-mode", "0668");
	EXPECT_BAD("--socket-mode: '00660'", "--socket-mode", "00660");
	EXPECT_BAD("--socket-mode: ''", "--socket-mode", "");
	EXPECT_BAD("--socket-group: 'no-such-group-here' is not a group name or gid", "--socket-group",
		   "no-such-group-here");
	EXPECT_BAD("--socket-group: '4294967295'", "--socket-group", "4294967295");
	EXPECT_BAD("--socket-group: '-1'", "--socket-group", "-1");
	EXPECT_BAD("--model-allow: 'secret' is not 'MODEL USER[,USER...]'", "--model-allow", "secret");
	EXPECT_BAD("--model-allow: ' root' is not 'MODEL USER", "--model-allow", " root");
	EXPECT_BAD("--model-allow: 'no-such-user-here' is not a user name or uid", "--model-allow",
		   "m root,no-such-user-here");
	EXPECT_BAD("--model-allow: '1,,2': an empty user", "--model-allow", "m 1,,2");
	EXPECT_BAD("--model-allow: '1,': an empty user", "--model-allow", "m 1,");
	EXPECT_BAD("--model-allow: ',1': an empty user", "--model-allow", "m ,1");
	EXPECT_BAD("--model-allow: model 'm' has an allow-list already", "--model-allow", "m 1",
		   "--model-allow", "m 2");
	EXPECT_BAD("model name of 64 bytes, at most 63",
		   "--model-allow", "0123456789012345678901234567890123456789012345678901234567890123 1");
	EXPECT_BAD("more than 32 users", "--model-allow",
		   "m 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33");
	EXPECT_BAD("--client-staging-max: '5000' is not a multiple of 4096", "--client-staging-max", "5000");
	EXPECT_BAD("--client-staging-max: '0'", "--client-staging-max", "0");
	EXPECT_BAD("--client-staging-max: '8G'", "--client-staging-max", "8G");
	EXPECT_BAD("--client-insert-bytes: '2T' is not a size up to 1T", "--client-insert-bytes", "2T");
	EXPECT_BAD("--client-insert-bytes: 'lots'", "--client-insert-bytes", "lots");
	/* Messages name the option as given, synonym or not. */
	EXPECT_BAD("--staging-per-uid: '5000' is not a multiple of 4096 from 4096 to 4G",
		   "--staging-per-uid", "5000");
	EXPECT_BAD("--insert-bytes-per-uid: '2T' is not a size up to 1T", "--insert-bytes-per-uid", "2T");
	EXPECT_BAD("--max-connections-per-uid: '0' is not a whole number 1..1024",
		   "--max-connections-per-uid", "0");
	EXPECT_BAD("--max-connections-per-uid: '1025' is not a whole number 1..1024",
		   "--max-connections-per-uid", "1025");
	EXPECT_BAD("--max-connections-per-uid: '-1'", "--max-connections-per-uid", "-1");
	EXPECT_BAD("--max-connections-per-uid: 'many'", "--max-connections-per-uid", "many");
	EXPECT_BAD("--client-staging-max: missing value (a size)", "--client-staging-max");
	EXPECT_BAD("--l2: 'redis://h:1' is not redis-cluster://HOST:PORT", "--l2", "redis://h:1");
	EXPECT_BAD("--l2: 'redis-cluster://' is not", "--l2", "redis-cluster://");
	EXPECT_BAD("--l2: 'redis-cluster://host' is not", "--l2", "redis-cluster://host");
}

static void expect_file_err(struct fixture *fx, const char *text, int line, const char *want);

/* model-allow is a list: one line per model in a file, and the command line's lines replace
 * the file's as a whole. */
static void test_file_model_allow(void **state)
{
	struct fixture *fx = *state;
	struct lbd_config c;
	char err[512];
	const char *path = write_file(fx, "allow.conf",
				      "model-allow = none\n"
				      "model-allow = alpha root,10\n"
				      "socket-mode = 0600\n"
				      "model-allow = beta 11   # a comment\n");

	assert_int_equal(PARSE(&c, err, "--config", path), 0);
	assert_int_equal(c.n_allow, 2);
	assert_int_equal(c.socket_mode, 0600);
	assert_int_equal(lbd_config_model_allow(&c, "alpha")->uids[1], 10);
	assert_int_equal(lbd_config_model_allow(&c, "beta")->uids[0], 11);

	assert_int_equal(PARSE(&c, err, "--config", path, "--model-allow", "gamma 12"), 0);
	assert_int_equal(c.n_allow, 1);
	assert_null(lbd_config_model_allow(&c, "alpha"));
	assert_int_equal(lbd_config_model_allow(&c, "gamma")->uids[0], 12);
	/* 'none' on the command line drops the file's lists and adds none. */
	assert_int_equal(PARSE(&c, err, "--model-allow", "none", "--config", path), 0);
	assert_int_equal(c.n_allow, 0);

	expect_file_err(fx, "model-allow = alpha 1\nmodel-allow = alpha 2\n", 2,
			"model-allow: model 'alpha' has an allow-list already (one line per model)");
	expect_file_err(fx, "socket-mode = 0660\nsocket-mode = 0600\n", 2,
			"socket-mode: set again (first on line 1)");
	expect_file_err(fx, "model-allow = alpha\n", 1, "model-allow: 'alpha' is not 'MODEL USER");
	/* A key's old name is the key: set once, under either name. */
	expect_file_err(fx, "staging-per-uid = 1G\nclient-staging-max = 2G\n", 2,
			"client-staging-max: set again (first on line 1)");
	expect_file_err(fx, "max-connections-per-uid = 0\n", 1,
			"max-connections-per-uid: '0' is not a whole number 1..1024");
	path = write_file(fx, "old.conf", "client-insert-bytes = 64M\nclient-staging-max = 8M\n"
			  "max-connections-per-uid = 8\n");
	assert_int_equal(PARSE(&c, err, "--config", path), 0);
	assert_int_equal(c.insert_bytes_per_uid, 64ull << 20);
	assert_int_equal(c.staging_per_uid, 8ull << 20);
	assert_int_equal(c.conns_per_uid, 8);
}

/* --snapshot: absolute as given, relative made absolute from the working folder (the daemon
 * leaves it when it detaches), 'none' for none; not empty, not a folder, room for ".tmp". */
static void test_snapshot_option(void **state)
{
	(void)state;
	struct lbd_config c;
	char err[256], cwd[PATH_MAX], want[PATH_MAX + 16], longp[PATH_MAX + 8];

	assert_int_equal(PARSE0(&c, err), 0);
	assert_string_equal(c.snapshot_path, "");
	assert_int_equal(PARSE(&c, err, "--snapshot", "/var/lib/layerbank/cache.snap"), 0);
	assert_string_equal(c.snapshot_path, "/var/lib/layerbank/cache.snap");
	assert_int_equal(PARSE(&c, err, "--snapshot", "/x", "--snapshot", "none"), 0);
	assert_string_equal(c.snapshot_path, "");
	assert_non_null(getcwd(cwd, sizeof(cwd)));
	assert_int_equal(PARSE(&c, err, "--snapshot", "sub/cache.snap"), 0);
	snprintf(want, sizeof(want), "%s/sub/cache.snap", strcmp(cwd, "/") ? cwd : "");
	assert_string_equal(c.snapshot_path, want);

	EXPECT_BAD("--snapshot: '' is not a file path (or 'none')", "--snapshot", "");
	EXPECT_BAD("--snapshot: '/var/lib/' is not a file path", "--snapshot", "/var/lib/");
	memset(longp, 'a', sizeof(longp) - 1);
	longp[0] = '/';
	longp[sizeof(longp) - 1] = '\0';
	EXPECT_BAD("--snapshot: path longer than", "--snapshot", longp);
	/* The longest that still leaves room for the writer's ".tmp". */
	longp[PATH_MAX - 5] = '\0';
	assert_int_equal(PARSE(&c, err, "--snapshot", longp), 0);
	longp[PATH_MAX - 5] = 'a';
	longp[PATH_MAX - 4] = '\0';
	EXPECT_BAD("--snapshot: path longer than", "--snapshot", longp);
}

static void test_all_options_together(void **state)
{
	(void)state;
	struct lbd_config c;
	char err[256];

	assert_int_equal(PARSE(&c, err, "-f", "--socket", "/tmp/x", "--arena-size", "512K",
			       "--hugepages", "off", "--numa-node", "7", "--log-level", "debug"),
			 0);
	assert_string_equal(c.socket_path, "/tmp/x");
	assert_int_equal(c.arena_size, 512 << 10);
	assert_int_equal(c.hugepages, LBD_HP_OFF);
	assert_int_equal(c.numa_node, 7);
	assert_true(c.foreground);
	assert_int_equal(c.log_level, LBD_LOG_DEBUG);
}

static void test_unknown_option(void **state)
{
	(void)state;
	struct lbd_config c;
	char err[256];

	EXPECT_BAD("unknown option '--bogus'", "--bogus");
	EXPECT_BAD("unknown option '--bogus'", "--bogus=1");
	EXPECT_BAD("unknown option '-z'", "-z");
	EXPECT_BAD("unknown option '-z'", "-fz");
	EXPECT_BAD("unknown option '--bogus'", "--socket", "/tmp/a", "--bogus");
	EXPECT_BAD("option '--h' is ambiguous: --hugepages or --half-life or --help", "--h");

	/* A unique prefix is accepted, as everywhere getopt_long is used. */
	assert_int_equal(PARSE(&c, err, "--fore", "--hug", "off"), 0);
	assert_true(c.foreground);
	assert_int_equal(c.hugepages, LBD_HP_OFF);
}

static void test_missing_argument(void **state)
{
	(void)state;

	EXPECT_BAD("--socket: missing value", "--socket");
	EXPECT_BAD("--socket: missing value", "-s");
	EXPECT_BAD("--arena-size: missing value", "--arena-size");
	EXPECT_BAD("--hugepages: missing value (require|try|off)", "--hugepages");
	EXPECT_BAD("--numa-node: missing value", "--numa-node");
	EXPECT_BAD("--log-level: missing value (error|warn|info|debug)", "--log-level");
	EXPECT_BAD("--config: missing value", "--config");
	EXPECT_BAD("--config: missing value", "-f", "-c");
}

static void test_positional_argument(void **state)
{
	(void)state;

	EXPECT_BAD("unexpected argument 'foo'", "foo");
	EXPECT_BAD("unexpected argument 'foo'", "--foreground", "foo");
	EXPECT_BAD("unexpected argument 'foo'", "foo", "--foreground");
	EXPECT_BAD("unexpected argument 'foo'", "--", "foo");
	EXPECT_BAD("unexpected argument '-'", "-");
}

static void test_help_and_version(void **state)
{
	(void)state;
	char out[8192];

	assert_int_equal(parse_capturing_stdout((const char *const[]){ "--version", NULL }, out,
						sizeof(out)),
			 1);
	assert_string_equal(out, "layerbankd " LBD_VERSION_STRING "\n");
	assert_true(strlen(LBD_VERSION_STRING) >= 5); /* x.y.z, not empty */

	assert_int_equal(parse_capturing_stdout((const char *const[]){ "--help", NULL }, out,
						sizeof(out)),
			 1);
	assert_non_null(strstr(out, "Usage: layerbankd"));
	assert_int_equal(parse_capturing_stdout((const char *const[]){ "-h", NULL }, out,
						sizeof(out)),
			 1);
	assert_non_null(strstr(out, "--socket"));
	/* Help must not depend on a config file that may be missing. */
	assert_int_equal(parse_capturing_stdout((const char *const[]){ "--config", "/nonexistent/x",
								       "--help", NULL },
						out, sizeof(out)),
			 1);
}

static void test_usage_lists_every_option(void **state)
{
	(void)state;
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	static const char *const want[] = {
		"--socket", "--arena-size", "--hugepages", "--numa-node", "--foreground",
		"--log-level", "--config", "--help", "--version", "--snapshot", LBD_DEFAULT_SOCKET,
		"--socket-mode", "--socket-group", "--model-allow", "--client-staging-max",
		"--client-insert-bytes", "--staging-per-uid", "--insert-bytes-per-uid",
		"--max-connections-per-uid", "(default 64)", "default 0660",
		"default 1G", "default try", "default all", "default info", "without dashes",
	};

	assert_non_null(f);
	lbd_config_usage(f);
	fclose(f);
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		if (!strstr(buf, want[i]))
			fail_msg("usage lacks '%s'", want[i]);
	free(buf);
}

static void test_error_leaves_config_untouched(void **state)
{
	(void)state;
	struct lbd_config c, before;
	char err[256];

	assert_int_equal(PARSE(&c, err, "--socket", "/tmp/keep", "-f"), 0);
	before = c;
	assert_int_equal(PARSE(&c, err, "--socket", "/tmp/other", "--hugepages", "bad"), -EINVAL);
	assert_memory_equal(&c, &before, sizeof(c));
	/* And the next call parses afresh (getopt state reset). */
	assert_int_equal(PARSE(&c, err, "--numa-node", "2"), 0);
	assert_int_equal(c.numa_node, 2);
	assert_string_equal(c.socket_path, LBD_DEFAULT_SOCKET);
}

static void test_config_twice_or_empty(void **state)
{
	(void)state;

	EXPECT_BAD("--config: given twice", "--config", "/a", "-c", "/b");
	EXPECT_BAD("--config: the file name is empty", "--config", "");
}

static void test_file_every_key(void **state)
{
	struct fixture *fx = *state;
	struct lbd_config c;
	char err[512];
	const char *path = write_file(fx, "all.conf",
				      "# layerbankd test config\n"
				      "\n"
				      "socket = /tmp/from-file.sock\n"
				      "arena-size = 256M\n"
				      "hugepages = require\n"
				      "numa-node = 1\n"
				      "foreground = yes\n"
				      "log-level = warn\n"
				      "snapshot = /var/lib/layerbank/layerbankd.snap\n");

	assert_int_equal(PARSE(&c, err, "--config", path), 0);
	assert_string_equal(c.socket_path, "/tmp/from-file.sock");
	assert_int_equal(c.arena_size, 256ull << 20);
	assert_int_equal(c.hugepages, LBD_HP_REQUIRE);
	assert_int_equal(c.numa_node, 1);
	assert_true(c.foreground);
	assert_int_equal(c.log_level, LBD_LOG_WARN);
	assert_string_equal(c.snapshot_path, "/var/lib/layerbank/layerbankd.snap");

	/* Direct load on top of existing values: only named keys change. */
	lbd_config_defaults(&c);
	path = write_file(fx, "one.conf", "log-level = debug\n");
	assert_int_equal(lbd_config_load_file(&c, path, err, sizeof(err)), 0);
	assert_int_equal(c.log_level, LBD_LOG_DEBUG);
	assert_string_equal(c.socket_path, LBD_DEFAULT_SOCKET);
}

static void test_file_foreground_values(void **state)
{
	struct fixture *fx = *state;
	static const struct {
		const char *text;
		bool want;
	} cases[] = {
		{ "foreground = true\n", true },  { "foreground = yes\n", true },
		{ "foreground = 1\n", true },     { "foreground = false\n", false },
		{ "foreground = no\n", false },   { "foreground = 0\n", false },
	};
	struct lbd_config c;
	char err[512];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		lbd_config_defaults(&c);
		c.foreground = !cases[i].want;
		const char *path = write_file(fx, "fg.conf", cases[i].text);
		assert_int_equal(lbd_config_load_file(&c, path, err, sizeof(err)), 0);
		assert_int_equal(c.foreground, cases[i].want);
	}
}

static void test_file_comments_and_whitespace(void **state)
{
	struct fixture *fx = *state;
	struct lbd_config c;
	char err[512];
	const char *path = write_file(fx, "ws.conf",
				      "   # indented comment\n"
				      "\t\n"
				      "   \n"
				      "socket=/tmp/has#hash\n"
				      "\tarena-size\t=\t8M   # trailing comment\n"
				      "hugepages    =off\t\n"
				      "numa-node= 12 \r\n"
				      "#foreground = true\n"
				      "log-level = error");

	lbd_config_defaults(&c);
	assert_int_equal(lbd_config_load_file(&c, path, err, sizeof(err)), 0);
	/* '#' inside a value (not after whitespace) is part of it. */
	assert_string_equal(c.socket_path, "/tmp/has#hash");
	assert_int_equal(c.arena_size, 8ull << 20);
	assert_int_equal(c.hugepages, LBD_HP_OFF);
	assert_int_equal(c.numa_node, 12);
	assert_false(c.foreground);
	assert_int_equal(c.log_level, LBD_LOG_ERROR);

	path = write_file(fx, "empty.conf", "");
	lbd_config_defaults(&c);
	assert_int_equal(lbd_config_load_file(&c, path, err, sizeof(err)), 0);
	assert_string_equal(c.socket_path, LBD_DEFAULT_SOCKET);
}

static void test_command_line_wins_over_file(void **state)
{
	struct fixture *fx = *state;
	struct lbd_config c;
	char err[512];
	const char *path = write_file(fx, "base.conf",
				      "socket = /tmp/file.sock\n"
				      "hugepages = require\n"
				      "log-level = debug\n"
				      "numa-node = 3\n");

	/* --config after the options: the options still win. */
	assert_int_equal(PARSE(&c, err, "--hugepages", "off", "--socket", "/tmp/cli.sock",
			       "--config", path),
			 0);
	assert_string_equal(c.socket_path, "/tmp/cli.sock");
	assert_int_equal(c.hugepages, LBD_HP_OFF);
	assert_int_equal(c.log_level, LBD_LOG_DEBUG);
	assert_int_equal(c.numa_node, 3);

	/* --config first, short and = forms. */
	assert_int_equal(PARSE(&c, err, "-c", path, "--log-level", "error"), 0);
	assert_int_equal(c.log_level, LBD_LOG_ERROR);
	assert_int_equal(c.hugepages, LBD_HP_REQUIRE);
	assert_int_equal(PARSE(&c, err, "--numa-node", "all", "--config=" "/dev/null"), 0);
	assert_int_equal(c.numa_node, LBD_NUMA_ALL);

	/* foreground = false in the file; -f on the command line turns it on. */
	path = write_file(fx, "fg.conf", "foreground = false\n");
	assert_int_equal(PARSE(&c, err, "-f", "--config", path), 0);
	assert_true(c.foreground);
}

/* Load text as a file; expect rc, and err starting "PATH:LINE: " and containing want. */
static void expect_file_err(struct fixture *fx, const char *text, int line, const char *want)
{
	struct lbd_config c, before;
	char err[2048], prefix[600];
	const char *path = write_file(fx, "bad.conf", text);

	lbd_config_defaults(&c);
	before = c;
	assert_int_equal(lbd_config_load_file(&c, path, err, sizeof(err)), -EINVAL);
	snprintf(prefix, sizeof(prefix), "%s:%d: ", path, line);
	if (strncmp(err, prefix, strlen(prefix)) != 0)
		fail_msg("error '%s' does not start with '%s'", err, prefix);
	check_err_line(err, (const char *const[]){ want, NULL });
	/* An error anywhere in the file leaves the config as it was. */
	assert_memory_equal(&c, &before, sizeof(c));

	/* Through the command line: -EINVAL and the same message. */
	char err2[2048];
	assert_int_equal(PARSE(&c, err2, "--config", path), -EINVAL);
	assert_string_equal(err2, err);
}

static void test_file_errors(void **state)
{
	struct fixture *fx = *state;
	char line[1100];

	expect_file_err(fx, "socket = /tmp/a\n\nbogus = 1\n", 3,
			"unknown key 'bogus' (keys: socket, arena-size, hugepages, numa-node, "
			"foreground, log-level, threads, spin-us, policy, ttl, half-life, drift-max, "
			"drift-target, tau, budget, snapshot, socket-mode, socket-group, model-allow, "
			"staging-per-uid, insert-bytes-per-uid, max-connections-per-uid, l2)");
	expect_file_err(fx, "# comment\nconfig = /etc/other.conf\n", 2, "unknown key 'config'");
	expect_file_err(fx, "--socket = /tmp/a\n", 1, "unknown key '--socket'");
	expect_file_err(fx, "hugepages = try\nforeground\n", 2, "'foreground' has no '='");
	expect_file_err(fx, "socket = /tmp/a\nlog-level = info\nsocket = /tmp/b\n", 3,
			"socket: set again (first on line 1)");
	expect_file_err(fx, "log-level =   \n", 1, "log-level: empty value");
	expect_file_err(fx, "log-level = # only a comment\n", 1, "log-level: empty value");
	expect_file_err(fx, " = info\n", 1, "unknown key ''");
	expect_file_err(fx, "\n\n\n\nhugepages = sometimes\n", 5,
			"hugepages: 'sometimes' is not one of require|try|off");
	expect_file_err(fx, "arena-size = 12Q\n", 1,
			"arena-size: '12Q' is not a size (examples: 4096, 512K, 64M, 1G)");
	expect_file_err(fx, "arena-size = 0\n", 1, "arena-size: '0' is out of range");
	expect_file_err(fx, "numa-node = 1024\n", 1, "numa-node: '1024' is not a node number");
	expect_file_err(fx, "foreground = maybe\n", 1,
			"foreground: 'maybe' is not one of true|false|yes|no|1|0");
	expect_file_err(fx, "log-level = loud\n", 1, "log-level: 'loud' is not one of");

	/* 1024 bytes is the longest line; 1025 is refused with its line number. */
	memset(line, ' ', sizeof(line));
	memcpy(line, "log-level = warn", 16);
	line[1024] = '\n';
	line[1025] = '\0';
	struct lbd_config c;
	char err[2048];
	const char *path = write_file(fx, "long.conf", line);
	lbd_config_defaults(&c);
	assert_int_equal(lbd_config_load_file(&c, path, err, sizeof(err)), 0);
	assert_int_equal(c.log_level, LBD_LOG_WARN);

	char text[1200];
	memset(line, ' ', sizeof(line));
	memcpy(line, "log-level = warn", 16);
	line[1025] = '\0';
	snprintf(text, sizeof(text), "# ok\n%s\n", line);
	expect_file_err(fx, text, 2, "line longer than 1024 bytes");
}

static void test_file_quotes_are_literal(void **state)
{
	struct fixture *fx = *state;
	struct lbd_config c;
	char err[512];
	const char *path = write_file(fx, "q.conf", "socket = \"/tmp/q\"\n");

	lbd_config_defaults(&c);
	assert_int_equal(lbd_config_load_file(&c, path, err, sizeof(err)), 0);
	assert_string_equal(c.socket_path, "\"/tmp/q\"");
}

static void test_file_nul_byte(void **state)
{
	struct fixture *fx = *state;
	struct lbd_config c;
	char err[512], prefix[600];

	snprintf(fx->path, sizeof(fx->path), "%s/nul.conf", fx->dir);
	FILE *f = fopen(fx->path, "w");
	assert_non_null(f);
	fwrite("log-level = info\nsocket = /a\0b\n", 1, 31, f);
	fclose(f);
	lbd_config_defaults(&c);
	assert_int_equal(lbd_config_load_file(&c, fx->path, err, sizeof(err)), -EINVAL);
	snprintf(prefix, sizeof(prefix), "%s:2: ", fx->path);
	assert_int_equal(strncmp(err, prefix, strlen(prefix)), 0);
}

static void test_file_missing_or_unreadable(void **state)
{
	struct fixture *fx = *state;
	struct lbd_config c;
	char err[512], want[600];

	snprintf(fx->path, sizeof(fx->path), "%s/nope.conf", fx->dir);
	lbd_config_defaults(&c);
	assert_int_equal(lbd_config_load_file(&c, fx->path, err, sizeof(err)), -ENOENT);
	snprintf(want, sizeof(want), "%s: %s", fx->path, strerror(ENOENT));
	assert_string_equal(err, want);

	/* The command line reports it as -EINVAL (exit 2) with the same line. */
	assert_int_equal(PARSE(&c, err, "--config", fx->path), -EINVAL);
	assert_string_equal(err, want);

	/* A folder opens but cannot be read. */
	assert_int_equal(lbd_config_load_file(&c, fx->dir, err, sizeof(err)), -EISDIR);
	snprintf(want, sizeof(want), "%s: %s", fx->dir, strerror(EISDIR));
	assert_string_equal(err, want);
}

static void test_parse_size_table(void **state)
{
	(void)state;
	static const struct {
		const char *s;
		int rc;
		uint64_t v;
	} cases[] = {
		{ "4096", 0, 4096 },
		{ "0", 0, 0 },
		{ "512K", 0, 512ull << 10 },
		{ "512k", 0, 512ull << 10 },
		{ "64M", 0, 64ull << 20 },
		{ "1G", 0, 1ull << 30 },
		{ "2GiB", 0, 2ull << 30 },
		{ "2gib", 0, 2ull << 30 },
		{ "3mb", 0, 3ull << 20 },
		{ "3MB", 0, 3ull << 20 },
		{ "1t", 0, 1ull << 40 },
		{ "4096B", 0, 4096 },
		{ "007K", 0, 7ull << 10 },
		{ "18446744073709551615", 0, UINT64_MAX },
		{ "16777215T", 0, 16777215ull << 40 },
		{ "", -EINVAL, 0 },
		{ "K", -EINVAL, 0 },
		{ "B", -EINVAL, 0 },
		{ "1.5G", -EINVAL, 0 },
		{ " 1G", -EINVAL, 0 },
		{ "1G ", -EINVAL, 0 },
		{ "1 G", -EINVAL, 0 },
		{ "0x10", -EINVAL, 0 },
		{ "-1", -EINVAL, 0 },
		{ "+1", -EINVAL, 0 },
		{ "1Gi", -EINVAL, 0 },
		{ "1GBB", -EINVAL, 0 },
		{ "1KM", -EINVAL, 0 },
		{ "1P", -EINVAL, 0 },
		{ "4096iB", -EINVAL, 0 },
		{ "18446744073709551616", -ERANGE, 0 },
		{ "99999999999999999999999", -ERANGE, 0 },
		{ "16777216T", -ERANGE, 0 },
		{ "17179869184G", -ERANGE, 0 },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint64_t v = 12345;
		int rc = lbu_parse_size(cases[i].s, &v);
		if (rc != cases[i].rc)
			fail_msg("lbu_parse_size(\"%s\") = %d, want %d", cases[i].s, rc, cases[i].rc);
		if (rc == 0 && v != cases[i].v)
			fail_msg("lbu_parse_size(\"%s\") gave %llu, want %llu", cases[i].s,
				 (unsigned long long)v, (unsigned long long)cases[i].v);
		if (rc != 0 && v != 12345)
			fail_msg("lbu_parse_size(\"%s\") wrote *out on failure", cases[i].s);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_socket_ok),
		cmocka_unit_test(test_socket_bad),
		cmocka_unit_test(test_arena_size_ok),
		cmocka_unit_test(test_arena_size_bad),
		cmocka_unit_test(test_hugepages),
		cmocka_unit_test(test_numa_node),
		cmocka_unit_test(test_foreground_and_log_level),
		cmocka_unit_test(test_data_plane_options),
		cmocka_unit_test(test_snapshot_option),
		cmocka_unit_test(test_isolation_options),
		cmocka_unit_test(test_all_options_together),
		cmocka_unit_test(test_unknown_option),
		cmocka_unit_test(test_missing_argument),
		cmocka_unit_test(test_positional_argument),
		cmocka_unit_test(test_help_and_version),
		cmocka_unit_test(test_usage_lists_every_option),
		cmocka_unit_test(test_error_leaves_config_untouched),
		cmocka_unit_test(test_config_twice_or_empty),
		cmocka_unit_test_setup_teardown(test_file_every_key, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_file_foreground_values, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_file_comments_and_whitespace, setup_dir,
						teardown_dir),
		cmocka_unit_test_setup_teardown(test_command_line_wins_over_file, setup_dir,
						teardown_dir),
		cmocka_unit_test_setup_teardown(test_file_errors, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_file_quotes_are_literal, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_file_model_allow, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_file_nul_byte, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_file_missing_or_unreadable, setup_dir,
						teardown_dir),
		cmocka_unit_test(test_parse_size_table),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
