/* Test helpers: a test's fixture (its folder, layerbankd, clients and children), temporary
 * folders, running programs, hugepages. */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "io.h"
#include "layerbank/layerbank.h"

void lbt_mkdtemp(char *out, size_t n)
{
	const char *base = getenv("TMPDIR");
	if (!base || !*base)
		base = "/tmp";
	snprintf(out, n, "%s/layerbank-test.XXXXXX", base);
	if (!mkdtemp(out)) {
		perror("mkdtemp");
		abort();
	}
}

void lbt_env_make(struct lbt_env *env)
{
	memset(env, 0, sizeof(*env));
	env->pid = -1;
	lbt_mkdtemp(env->dir, sizeof(env->dir));
	if ((size_t)snprintf(env->sock, sizeof(env->sock), "%s/lb.sock", env->dir) >= sizeof(env->sock)) {
		fprintf(stderr, "socket path under %s too long\n", env->dir);
		abort();
	}
	snprintf(env->log, sizeof(env->log), "%s/daemon.log", env->dir);
}

void lbt_env_remove(struct lbt_env *env)
{
	lbt_close_all(env);
	for (unsigned i = 0; i < LBT_MAX_KIDS; i++)
		if (env->kids[i] > 0)
			lbt_kill(env, env->kids[i]);
	lbt_daemon_kill(env);
	lbu_rmtree(env->dir);
}

int lbt_env_setup(void **state)
{
	lbt_env_make(*state);
	return 0;
}

int lbt_env_teardown(void **state)
{
	lbt_env_remove(*state);
	return 0;
}

long lbt_hugepages_free(void)
{
	return lbu_meminfo("HugePages_Free");
}

long lbt_hugepages_avail(void)
{
	long free_pages = lbt_hugepages_free(), rsvd = lbu_meminfo("HugePages_Rsvd");
	if (free_pages < 0)
		return -1;
	return rsvd > 0 ? free_pages - rsvd : free_pages;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

/* True when sock accepts connections from a listener created by pid: a killed daemon's
 * socket can accept for a moment after its death (io_uring tears down asynchronously). */
static int listens(const char *sock, pid_t pid)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct ucred cred;
	socklen_t len = sizeof(cred);
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	int ok;
	if (fd < 0 || strlen(sock) >= sizeof(sa.sun_path))
		return 0;
	memcpy(sa.sun_path, sock, strlen(sock) + 1);
	ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
	     getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && cred.pid == pid;
	close(fd);
	return ok;
}

int lbt_alive(pid_t pid)
{
	int st;
	return waitpid(pid, &st, WNOHANG) == 0;
}

void lbt_cat(const char *path)
{
	FILE *f = fopen(path, "r");
	char buf[4096];
	size_t n;
	if (!f)
		return;
	printf("---- %s ----\n", path);
	while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
		fwrite(buf, 1, n, stdout);
	printf("----\n");
	fclose(f);
}

/* Append list (NULL-terminated; NULL: nothing) to argv[*n..], up to 63 arguments in all. */
static void args_append(const char **argv, int *n, const char *const *list)
{
	for (int i = 0; list && list[i] && *n < 63; i++)
		argv[(*n)++] = list[i];
	argv[*n] = NULL;
}

pid_t lbt_daemon_spawn(struct lbt_env *env, const struct lbt_daemon_opts *o)
{
	const char *argv[64] = { LB_DAEMON_PATH, "--foreground", "--socket", env->sock };
	int n = o->no_socket ? 2 : 4;
	args_append(argv, &n, o->args);

	fflush(stdout);
	fflush(stderr);
	env->pid = fork();
	if (env->pid == 0) {
		int fd = open(env->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		for (int i = 0; o->vars && o->vars[i]; i++)
			putenv((char *)o->vars[i]);
		if (o->in_child)
			o->in_child();
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	return env->pid;
}

pid_t lbt_daemon_start_opts(struct lbt_env *env, const struct lbt_daemon_opts *o)
{
	pid_t pid = lbt_daemon_spawn(env, o);
	if (pid < 0)
		return -1;
	for (int i = 0; i < 1000; i++) {
		if (listens(env->sock, pid))
			return pid;
		if (!lbt_alive(pid)) {
			env->pid = -1;
			lbt_cat(env->log);
			return -1;
		}
		sleep_ms(10);
	}
	lbt_cat(env->log);
	lbt_daemon_kill(env);
	return -1;
}

pid_t lbt_daemon_start(struct lbt_env *env, const char *const *args)
{
	const struct lbt_daemon_opts o = { .args = args };
	return lbt_daemon_start_opts(env, &o);
}

bool lbt_daemon_stop(struct lbt_env *env)
{
	pid_t pid = env->pid, r = -1;
	int st = 0;
	env->pid = -1;
	if (pid > 0 && kill(pid, SIGTERM) == 0) {
		for (int i = 0; i < 1000 && (r = waitpid(pid, &st, WNOHANG)) == 0; i++)
			sleep_ms(10);
		if (r == 0) {
			kill(pid, SIGKILL);
			r = waitpid(pid, &st, 0);
		}
	}
	if (r == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0)
		return true;
	if (pid <= 0)
		printf("no layerbankd to stop\n");
	else if (r != pid)
		printf("layerbankd (pid %d) could not be stopped: %s\n", (int)pid, strerror(errno));
	else if (WIFEXITED(st))
		printf("layerbankd exited with status %d\n", WEXITSTATUS(st));
	else
		printf("layerbankd ended by signal %d\n", WIFSIGNALED(st) ? WTERMSIG(st) : 0);
	lbt_cat(env->log);
	return false;
}

bool lbt_daemon_kill(struct lbt_env *env)
{
	pid_t r = env->pid > 0 ? waitpid(env->pid, NULL, WNOHANG) : -1;
	if (r == 0) {
		kill(env->pid, SIGKILL);
		r = waitpid(env->pid, NULL, 0);
	}
	env->pid = -1;
	return r > 0;
}

int lbt_connect(struct lbt_env *env, const char *name, struct lb_client **c)
{
	for (unsigned i = 0; i < LBT_MAX_CLIENTS; i++)
		if (!env->clients[i]) {
			int ret = lb_connect(env->sock, name, c);
			if (ret == 0)
				env->clients[i] = *c;
			return ret;
		}
	*c = NULL;
	return -EMFILE;
}

void lbt_close(struct lbt_env *env, struct lb_client *c)
{
	for (unsigned i = 0; c && i < LBT_MAX_CLIENTS; i++)
		if (env->clients[i] == c)
			env->clients[i] = NULL;
	lb_close(c);
}

void lbt_close_all(struct lbt_env *env)
{
	for (unsigned i = 0; i < LBT_MAX_CLIENTS; i++)
		lbt_close(env, env->clients[i]);
}

bool lbt_adopt(struct lbt_env *env, pid_t pid)
{
	for (unsigned i = 0; i < LBT_MAX_KIDS; i++)
		if (env->kids[i] <= 0) {
			env->kids[i] = pid;
			return true;
		}
	return false;
}

void lbt_forget(struct lbt_env *env, pid_t pid)
{
	for (unsigned i = 0; i < LBT_MAX_KIDS; i++)
		if (env->kids[i] == pid)
			env->kids[i] = 0;
}

pid_t lbt_fork(struct lbt_env *env)
{
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid > 0 && !lbt_adopt(env, pid)) {
		fprintf(stderr, "more than %d children\n", LBT_MAX_KIDS);
		abort();
	}
	return pid;
}

int lbt_reap(struct lbt_env *env, pid_t pid)
{
	int st;
	pid_t r = waitpid(pid, &st, 0);
	lbt_forget(env, pid);
	if (r != pid)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

void lbt_kill(struct lbt_env *env, pid_t pid)
{
	/* A zombie is only reaped; one not (yet) ours, a victim's child, is killed all the same. */
	if (waitpid(pid, NULL, WNOHANG) != pid) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	lbt_forget(env, pid);
}

int lbt_run(const char *const *argv, char *out, size_t n)
{
	int p[2];
	int st;
	size_t used = 0;
	if (pipe2(p, O_CLOEXEC) < 0)
		return -1;
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		dup2(p[1], 1);
		dup2(p[1], 2);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	close(p[1]);
	for (;;) {
		char tmp[4096];
		ssize_t r = read(p[0], tmp, sizeof(tmp));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		size_t take = (size_t)r;
		if (n && take > n - 1 - used)
			take = n - 1 - used;
		memcpy(out + used, tmp, take);
		used += take;
	}
	if (n)
		out[used] = '\0';
	close(p[0]);
	if (waitpid(pid, &st, 0) < 0)
		return -1;
	return st;
}

int lbt_run_args(const char *const *head, const char *const *tail, char *out, size_t n)
{
	const char *argv[64];
	int k = 0;
	args_append(argv, &k, head);
	args_append(argv, &k, tail);
	return lbt_run(argv, out, n);
}

int lbt_vrun(const char *const *head, char *out, size_t n, va_list ap)
{
	const char *argv[64];
	int k = 0;
	args_append(argv, &k, head);
	for (const char *a; (a = va_arg(ap, const char *)) != NULL && k < 63;)
		argv[k++] = a;
	argv[k] = NULL;
	return lbt_run(argv, out, n);
}

#define NR_HUGEPAGES "/proc/sys/vm/nr_hugepages"

static long hp_orig = -1;

static long read_nr(void)
{
	return lbu_read_long(NR_HUGEPAGES);
}

static int write_nr(long v)
{
	FILE *f = fopen(NR_HUGEPAGES, "w");
	int rc;
	if (!f)
		return -1;
	rc = fprintf(f, "%ld\n", v) < 0;
	rc |= fclose(f) != 0;
	return rc ? -1 : 0;
}

void lbt_hugepages_restore(void)
{
	if (hp_orig < 0)
		return;
	if (write_nr(hp_orig) < 0)
		fprintf(stderr, "could not restore %s to %ld\n", NR_HUGEPAGES, hp_orig);
	hp_orig = -1;
}

int lbt_hugepages_ensure(long n, const char **why)
{
	static char text[256];
	static int registered;
	long avail = lbt_hugepages_avail(), nr = read_nr();

	if (avail < 0 || nr < 0) {
		*why = "this kernel has no 2 MiB hugetlb pages";
		return 0;
	}
	if (avail >= n)
		return 1;
	if (geteuid() == 0) {
		if (hp_orig < 0)
			hp_orig = nr;
		if (!registered++)
			atexit(lbt_hugepages_restore);
		if (write_nr(nr + n - avail) == 0 && (avail = lbt_hugepages_avail()) >= n)
			return 1;
	}
	snprintf(text, sizeof(text),
		 "needs %ld available 2 MiB hugepages, %ld available; reserve them with "
		 "'echo %ld > " NR_HUGEPAGES "' (as root)", n, avail, nr + n - avail);
	*why = text;
	return 0;
}

void lbt_fill_uniform(float *h, size_t n, uint64_t s)
{
	for (size_t i = 0; i < n; i++) {
		s = s * 6364136223846793005ull + 1442695040888963407ull;
		h[i] = (float)((double)(s >> 40) / (double)(1u << 24) - 0.5);
	}
}

uint32_t lbt_row_set(int which, uint32_t n, uint64_t seed, uint32_t *rows)
{
	uint32_t k = 0;
	for (uint32_t t = 0; t < n; t++) {
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		int take = which == 0 ? t == 0
			 : which == 1 ? t == n - 1
			 : which == 2 ? t == 0 || t == n - 1
			 : which == 3 ? 1
			 : which == 4 ? (seed >> 33) % 3 == 0
				      : t == n / 2;
		if (take)
			rows[k++] = t;
	}
	if (k == 0)
		rows[k++] = n / 2;
	return k;
}

long long lbt_rows_diff(const float *got, const float *full, const uint32_t *rows,
			uint32_t n_rows, size_t width)
{
	for (uint32_t r = 0; r < n_rows; r++)
		for (size_t i = 0; i < width; i++)
			if (memcmp(&got[(size_t)r * width + i], &full[(size_t)rows[r] * width + i],
				   sizeof(float)) != 0)
				return (long long)((size_t)r * width + i);
	return -1;
}

long lbt_cpu_ticks(pid_t pid)
{
	char path[64], buf[1024];
	unsigned long ut, stt;
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return -1;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* Fields after the ")" closing comm: state is field 3, utime 14, stime 15. */
	char *p = strrchr(buf, ')');
	if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &stt) != 2)
		return -1;
	return (long)(ut + stt);
}

void lbt_need_torch(void)
{
	static char out[4096];
	const char *argv[] = { LBT_PYTHON, "-c", "import numpy, torch", NULL };
	int st = access(LBT_PYTHON, X_OK) == 0 ? lbt_run(argv, out, sizeof(out)) : -1;
	if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		LBT_SKIP("%s cannot import torch and numpy (apt-get install python3-torch "
			 "python3-numpy): %s", LBT_PYTHON, st == -1 ? "no such program" : out);
}
