/* Test helpers: a test's fixture (its folder, layerbankd, clients and children), temporary
 * folders, running programs, hugepages, skipping with a reason. */
#ifndef LAYERBANK_TESTS_TESTUTIL_H
#define LAYERBANK_TESTS_TESTUTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>

#include "io.h"

/* Exit code CTest reads as SKIP (SKIP_RETURN_CODE 77). */
#define LBT_SKIP_CODE 77
#define LBT_SKIP(...)                                       \
	do {                                                \
		printf("SKIP: ");                           \
		printf(__VA_ARGS__);                        \
		printf("\n");                               \
		fflush(stdout);                             \
		exit(LBT_SKIP_CODE);                        \
	} while (0)

/*
 * A test's fixture: a folder of its own with a layerbankd's socket and log in it, the daemon
 * started there, the clients the test opened on it and its other child processes (workers,
 * victims). lbt_env_make and lbt_env_remove bracket a test (lbt_env_setup and
 * lbt_env_teardown as a test runner's setup and teardown); lbt_env_remove ends whatever still
 * runs, as when a test failed half-way.
 */
#define LBT_MAX_CLIENTS 16
#define LBT_MAX_KIDS 16
struct lb_client;
struct lbt_env {
	char dir[200];
	char sock[108]; /* sizeof(sun_path) */
	char log[256];
	pid_t pid;      /* the daemon, -1 when none runs */
	struct lb_client *clients[LBT_MAX_CLIENTS]; /* lbt_connect's; NULL: a free slot */
	pid_t kids[LBT_MAX_KIDS];                   /* lbt_fork's and lbt_adopt's; 0: free */
};
/* Make env's folder (aborts on failure), fill in its paths; no daemon, client or child yet. */
void lbt_env_make(struct lbt_env *env);
/* lb_close env's clients, SIGKILL and reap its children and its daemon, delete its folder. */
void lbt_env_remove(struct lbt_env *env);
/* lbt_env_make(*state) and lbt_env_remove(*state), as a test runner's setup and teardown
 * (int (*)(void **state), *state the test's struct lbt_env). @return 0. */
int lbt_env_setup(void **state);
int lbt_env_teardown(void **state);

/* What most tests start the daemon with: a 16 MiB arena of 4 KiB pages. */
#define LBT_SMALL "--arena-size", "16M", "--hugepages", "off"
/* A NULL-terminated list of arguments in place: LBT_ARGS(LBT_SMALL, "--threads", "1"). */
#define LBT_ARGS(...) ((const char *const[]){ __VA_ARGS__, NULL })

/* How to start env's layerbankd: `--foreground --socket env->sock` come first. */
struct lbt_daemon_opts {
	const char *const *args; /* then these, NULL-terminated; NULL: none */
	const char *const *vars; /* NAME=value, set in the daemon's process only; NULL-terminated */
	void (*in_child)(void);  /* run in the daemon's process just before the exec, after its
				  * output went to the log: for a test that takes something away
				  * from the daemon (a seccomp filter) or hands it something */
	bool no_socket;          /* leave out --socket env->sock (a socket handed over instead) */
};

/*
 * Start layerbankd for env with args (NULL-terminated; NULL: none) and the opts' rest, its
 * stdout and stderr into env->log, and wait up to 10 s until env->sock accepts connections
 * from it. @return its pid, also in env->pid; -1 when it exited or never listened (its log is
 * printed).
 */
pid_t lbt_daemon_start(struct lbt_env *env, const char *const *args);
pid_t lbt_daemon_start_opts(struct lbt_env *env, const struct lbt_daemon_opts *o);
/* The same without waiting, for a test that watches the start itself. @return the pid, also
 * in env->pid; -1 when fork failed. */
pid_t lbt_daemon_spawn(struct lbt_env *env, const struct lbt_daemon_opts *o);
/* SIGTERM, wait up to 10 s (then SIGKILL), env->pid = -1. @return true when it exited 0 (a
 * clean stop: under ASan that includes no leaks); otherwise its status and log are printed. */
bool lbt_daemon_stop(struct lbt_env *env);
/* SIGKILL the daemon if it still runs, reap it, env->pid = -1. @return true when it was there
 * to reap (running, or exited and not yet reaped). */
bool lbt_daemon_kill(struct lbt_env *env);

/* lb_connect to env's daemon as name, the client kept for lbt_env_remove to close.
 * @return lb_connect's result; -EMFILE when LBT_MAX_CLIENTS are open. */
int lbt_connect(struct lbt_env *env, const char *name, struct lb_client **c);
/* lb_close c (one of lbt_connect's; NULL: nothing) now; lbt_close_all: every one still open. */
void lbt_close(struct lbt_env *env, struct lb_client *c);
void lbt_close_all(struct lbt_env *env);

/* fork (stdout and stderr flushed first); the child is kept for lbt_env_remove to kill.
 * @return as fork's. */
pid_t lbt_fork(struct lbt_env *env);
/* Keep pid, a child forked otherwise (or handed to us as a subreaper), the same way.
 * @return false when LBT_MAX_KIDS are kept already. */
bool lbt_adopt(struct lbt_env *env, pid_t pid);
/* Forget pid: the test reaped it itself. */
void lbt_forget(struct lbt_env *env, pid_t pid);
/* Wait for the child pid to end, and forget it. @return its exit status, 128 + the signal that
 * ended it, or -1 (not a child). */
int lbt_reap(struct lbt_env *env, pid_t pid);
/* SIGKILL the child pid, reap it and forget it. */
void lbt_kill(struct lbt_env *env, pid_t pid);

/* Make a fresh folder under $TMPDIR (or /tmp) into out; aborts the test on failure. */
void lbt_mkdtemp(char *out, size_t n);
/* Remove it again, with everything in it: lbu_rmtree (util/io.h). */

/* HugePages_Free from /proc/meminfo, -1 when unreadable. */
long lbt_hugepages_free(void);
/* Free hugepages no mapping has reserved yet: what a new mapping can have; -1: no hugetlb. */
long lbt_hugepages_avail(void);

/* True while pid runs (not yet reaped and not a zombie). */
int lbt_alive(pid_t pid);

/*
 * Run argv (argv[0] a path), stdout and stderr captured into out (NUL-terminated, cut at n-1).
 * @return the wait status, -1 on error.
 */
int lbt_run(const char *const *argv, char *out, size_t n);
/* lbt_run of head's arguments (head[0] a path) followed by tail's (NULL: none), both
 * NULL-terminated, 63 at the most. */
int lbt_run_args(const char *const *head, const char *const *tail, char *out, size_t n);
/* The same with a variadic caller's arguments, up to a NULL, as the tail. */
int lbt_vrun(const char *const *head, char *out, size_t n, va_list ap);

/* The Python the torch tests run: Debian's, not a user's shim. */
#define LBT_PYTHON "/usr/bin/python3"
/* Exit with LBT_SKIP_CODE, saying why, unless LBT_PYTHON imports torch and numpy. */
void lbt_need_torch(void);

/* CPU time (user + system, in clock ticks) pid has used; -1 when unreadable. */
long lbt_cpu_ticks(pid_t pid);

/* n floats in [-0.5, 0.5) from a 64-bit LCG started at s: a toy model's input. */
void lbt_fill_uniform(float *h, size_t n, uint64_t s);

/*
 * The sets of positions a test of a layer for chosen positions (lb_rows_fn) runs, by which, 0 ..
 * LBT_ROW_SETS - 1: the first of n, the last, both, every one, about a third drawn from seed (at
 * least one), the middle one. rows [n], ascending. @return how many.
 */
#define LBT_ROW_SETS 6
uint32_t lbt_row_set(int which, uint32_t n, uint64_t seed, uint32_t *rows);
/* The first float of got [n_rows][width] whose bits differ from those of row rows[r] of full
 * [][width], as r * width + column; -1 when every one is the same. */
long long lbt_rows_diff(const float *got, const float *full, const uint32_t *rows,
			uint32_t n_rows, size_t width);

/* Print a file to stdout (a daemon log when a test fails). */
void lbt_cat(const char *path);

/*
 * Make sure n 2 MiB hugepages are available: as root, raise /proc/sys/vm/nr_hugepages (the old
 * value is put back by lbt_hugepages_restore, which also runs at exit). @return 1 when n are
 * available, 0 when not; *why then says so, with the counts and the command to run.
 */
int lbt_hugepages_ensure(long n, const char **why);
void lbt_hugepages_restore(void);
#endif
