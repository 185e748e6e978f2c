/* Test helpers: temporary folders, spawning and stopping layerbankd, skipping with a reason. */
#ifndef LAYERBANK_TESTS_TESTUTIL_H
#define LAYERBANK_TESTS_TESTUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>

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

/* A test's own folder with the daemon's socket and log paths in it. */
struct lbt_env {
	char dir[200];
	char sock[108]; /* sizeof(sun_path) */
	char log[256];
};
/* Make env's folder (aborts on failure) and fill in its paths; lbt_env_remove deletes it. */
void lbt_env_make(struct lbt_env *env);
void lbt_env_remove(struct lbt_env *env);

/* Make a fresh folder under $TMPDIR (or /tmp) into out; aborts the test on failure. */
void lbt_mkdtemp(char *out, size_t n);
/* Remove a folder made by lbt_mkdtemp and everything in it. */
void lbt_rmtree(const char *dir);

/* HugePages_Free from /proc/meminfo, -1 when unreadable. */
long lbt_hugepages_free(void);
/* Free hugepages no mapping has reserved yet: what a new mapping can have; -1: no hugetlb. */
long lbt_hugepages_avail(void);

/*
 * Start layerbankd --foreground --socket SOCK [args...] with stderr (and stdout) into log,
 * and wait up to 10 s until the socket accepts connections.
 * args: NULL-terminated extra arguments, may be NULL. @return the pid, or -1 (the daemon
 * exited or never listened; its log is printed).
 */
pid_t lbt_daemon_start(const char *sock, const char *log, const char *const *args);
/* The same, with in_child (NULL: nothing) run in the daemon's process just before the exec:
 * for a test that takes something away from the daemon (a seccomp filter, a limit). */
pid_t lbt_daemon_start_hook(const char *sock, const char *log, const char *const *args,
			    void (*in_child)(void));

/* lbt_daemon_start with what most tests want first: a 16 MiB arena of 4 KiB pages
 * ("--arena-size 16M --hugepages off"), then extra (NULL-terminated; NULL: nothing more). */
pid_t lbt_daemon_start_small(const char *sock, const char *log, const char *const *extra);

/* SIGTERM, wait up to 10 s (then SIGKILL). @return the wait status, -1 on error. */
int lbt_daemon_stop(pid_t pid);

/* lbt_daemon_stop(*pid), then *pid = -1; prints the daemon's log unless it exited 0.
 * @return true when it exited 0 (a clean stop: under ASan that includes no leaks). */
bool lbt_daemon_stop_clean(pid_t *pid, const char *log);

/* For teardowns: SIGKILL *pid and reap it if it still runs (a test failed half-way), then set
 * *pid to -1. */
void lbt_daemon_reap(pid_t *pid);

/* True while pid runs (not yet reaped and not a zombie). */
int lbt_alive(pid_t pid);

/*
 * Run argv (argv[0] a path), stdout and stderr captured into out (NUL-terminated, cut at n-1).
 * @return the wait status, -1 on error.
 */
int lbt_run(const char *const *argv, char *out, size_t n);

/* CPU time (user + system, in clock ticks) pid has used; -1 when unreadable. */
long lbt_cpu_ticks(pid_t pid);

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
