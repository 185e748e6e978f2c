/* Test helpers: temporary folders, spawning and stopping layerbankd. */
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

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(path);
}

void lbt_rmtree(const char *dir)
{
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

void lbt_env_make(struct lbt_env *env)
{
	lbt_mkdtemp(env->dir, sizeof(env->dir));
	if ((size_t)snprintf(env->sock, sizeof(env->sock), "%s/lb.sock", env->dir) >= sizeof(env->sock)) {
		fprintf(stderr, "socket path under %s too long\n", env->dir);
		abort();
	}
	snprintf(env->log, sizeof(env->log), "%s/daemon.log", env->dir);
}

void lbt_env_remove(struct lbt_env *env)
{
	lbt_rmtree(env->dir);
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

pid_t lbt_daemon_start(const char *sock, const char *log, const char *const *args)
{
	return lbt_daemon_start_hook(sock, log, args, NULL);
}

pid_t lbt_daemon_start_small(const char *sock, const char *log, const char *const *extra)
{
	const char *args[48] = { "--arena-size", "16M", "--hugepages", "off" };
	int n = 4;
	for (int i = 0; extra && extra[i] && n < 47; i++)
		args[n++] = extra[i];
	args[n] = NULL;
	return lbt_daemon_start(sock, log, args);
}

pid_t lbt_daemon_start_hook(const char *sock, const char *log, const char *const *args,
			    void (*in_child)(void))
{
	const char *argv[64];
	int n = 0;
	argv[n++] = LB_DAEMON_PATH;
	argv[n++] = "--foreground";
	argv[n++] = "--socket";
	argv[n++] = sock;
	for (int i = 0; args && args[i] && n < 62; i++)
		argv[n++] = args[i];
	argv[n] = NULL;

	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		if (in_child)
			in_child();
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	for (int i = 0; i < 1000; i++) {
		if (listens(sock, pid))
			return pid;
		if (!lbt_alive(pid)) {
			lbt_cat(log);
			return -1;
		}
		sleep_ms(10);
	}
	lbt_cat(log);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	return -1;
}

int lbt_daemon_stop(pid_t pid)
{
	int st;
	if (kill(pid, SIGTERM) < 0)
		return -1;
	for (int i = 0; i < 1000; i++) {
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid)
			return st;
		if (r < 0)
			return -1;
		sleep_ms(10);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	return st;
}

bool lbt_daemon_stop_clean(pid_t *pid, const char *log)
{
	int st = lbt_daemon_stop(*pid);
	bool clean = st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
	*pid = -1;
	if (!clean)
		lbt_cat(log);
	return clean;
}

void lbt_daemon_reap(pid_t *pid)
{
	if (*pid > 0 && lbt_alive(*pid)) {
		kill(*pid, SIGKILL);
		waitpid(*pid, NULL, 0);
	}
	*pid = -1;
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

#define NR_HUGEPAGES "/proc/sys/vm/nr_hugepages"

static long hp_orig = -1;

static long read_nr(void)
{
	FILE *f = fopen(NR_HUGEPAGES, "r");
	long v = -1;
	if (!f)
		return -1;
	if (fscanf(f, "%ld", &v) != 1)
		v = -1;
	fclose(f);
	return v;
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
