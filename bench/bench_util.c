/* What the benchmarks share: starting and stopping the processes they measure, medians and
 * sorting, JSON numbers, and the one way they give up. */
#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

void lbb_die(const char *bench, const char *what, int err)
{
	fprintf(stderr, "layerbank-bench %s: %s: %s\n", bench, what, strerror(err));
	exit(1);
}

void lbb_sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

static void exit_on_signal(int sig)
{
	(void)sig;
	exit(1); /* runs the atexit cleanup */
}

void lbb_tempdir(char *dir, size_t n, const char *base, const char *bench, void (*cleanup)(void))
{
	if (!base || !*base)
		base = getenv("TMPDIR");
	if (!base || !*base)
		base = "/tmp";
	if ((size_t)snprintf(dir, n, "%s/layerbank-bench-%s.XXXXXX", base, bench) >= n)
		lbb_die(bench, "the temporary folder's path is too long", ENAMETOOLONG);
	if (!mkdtemp(dir)) {
		int e = errno;
		dir[0] = '\0';
		lbb_die(bench, "mkdtemp", e);
	}
	atexit(cleanup);
	signal(SIGINT, exit_on_signal);
	signal(SIGTERM, exit_on_signal);
}

/* ---- processes ---- */

pid_t lbb_spawn(const char *const *argv, const char *log)
{
	pid_t pid = fork();
	if (pid == 0) {
		FILE *f = freopen(log, "w", stdout);
		(void)f;
		dup2(1, 2);
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	return pid;
}

int lbb_wait_socket(const char *path, pid_t *pid, int seconds)
{
	struct stat st;
	for (int i = 0; i < seconds * 100; i++) {
		if (stat(path, &st) == 0)
			return 0;
		if (waitpid(*pid, NULL, WNOHANG) == *pid) {
			*pid = -1;
			return -1;
		}
		lbb_sleep_ms(10);
	}
	return -1;
}

void lbb_stop(pid_t *pid)
{
	if (*pid <= 0)
		return;
	kill(*pid, SIGTERM);
	for (int i = 0; i < 1000 && waitpid(*pid, NULL, WNOHANG) == 0; i++)
		lbb_sleep_ms(10);
	if (waitpid(*pid, NULL, WNOHANG) == 0) {
		kill(*pid, SIGKILL);
		waitpid(*pid, NULL, 0);
	}
	*pid = -1;
}

/* ---- statistics ---- */

int lbb_cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

int lbb_cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

double lbb_median(double *v, size_t n)
{
	qsort(v, n, sizeof(*v), lbb_cmp_double);
	return v[n / 2];
}

double lbb_pct(const double *sorted, size_t n, double p)
{
	return n ? sorted[(size_t)(p * (double)(n - 1) + 0.5)] : NAN;
}

/* ---- reports ---- */

struct json_object *lbb_json_num(double v)
{
	return isfinite(v) ? json_object_new_double(v) : NULL;
}
