/* layerbank-bench: shared declarations of the benchmark modules. */
#ifndef LAYERBANK_BENCH_H
#define LAYERBANK_BENCH_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* One row of the index benchmark: an index of `entries` fingerprints. */
struct lbb_index_row {
	uint32_t entries;
	double lookup_us;   /* mean cost of a near-duplicate lookup (a hit), as the daemon asks:
			     * any entry within the radius will do (good_d = max_d) */
	double exact_us;    /* the same hits, proven nearest (good_d 0) */
	double miss_us;     /* mean cost of a lookup with nothing within the radius */
	double brute_us;    /* mean cost of the brute-force popcount scan, same queries */
	double recall;      /* hits where the index's distance is the scan's best / hits the
			     * scan found, for lookup_us's searches */
	double exact_recall; /* the same for exact_us's */
};

/*
 * Build indexes of sizes[i] random fingerprints and time lookups of near-duplicate queries
 * (hamming distances drawn as documented in bench/README.md) and of misses, against the
 * brute-force scan. max_d: the search radius. @return 0, or -errno.
 */
int lbb_index_run(const uint32_t *sizes, unsigned n, uint32_t max_d, uint64_t seed,
		  struct lbb_index_row *rows);

/* Median µs of a round trip of one cache line between two spinning threads: the floor under
 * any ring round trip on this machine (it moves with where the host places the vCPUs).
 * @return -1 when the thread cannot be started. */
double lbb_core_round_trip_us(void);

/* One core's fp32 FMA peak in GFLOP/s on the tier lbk_isa() picks (AVX-512 or AVX2): the best
 * of 15 runs of independent FMA chains, one thread. @return -1 on the scalar tier. */
double lbb_fma_peak_gflops(void);

/* ---- bench_util.c ---- */

/* Print "layerbank-bench BENCH: what: strerror(err)" and exit 1 (atexit handlers clean up). */
void lbb_die(const char *bench, const char *what, int err) __attribute__((noreturn));

void lbb_sleep_ms(long ms);

/*
 * A new folder base/layerbank-bench-NAME.XXXXXX into dir (n bytes; base NULL or "": $TMPDIR, else
 * /tmp), and cleanup to run at exit, SIGINT and SIGTERM (it stops what the benchmark started and
 * removes the folder). Dies when the folder cannot be made.
 */
void lbb_tempdir(char *dir, size_t n, const char *base, const char *bench, void (*cleanup)(void));

/* Start argv (argv[0] a path) with stdout and stderr going to the file log. @return its pid,
 * -1 with errno when fork failed. */
pid_t lbb_spawn(const char *const *argv, const char *log);

/* Wait up to seconds for the socket file at path to appear (a layerbankd or Redis listening).
 * @return 0; -1 on time-out, or when *pid exited (then reaped and set to -1). */
int lbb_wait_socket(const char *path, pid_t *pid, int seconds);

/* qsort's comparison for doubles, ascending. */
int lbb_cmp_double(const void *a, const void *b);

/* qsort's comparison for uint64_t, ascending. */
int lbb_cmp_u64(const void *a, const void *b);

/* The median of v[0..n) (n > 0), which it sorts. */
double lbb_median(double *v, size_t n);

/* SIGTERM *pid, wait up to 10 s (then SIGKILL), reap it and set *pid to -1; nothing for -1. */
void lbb_stop(pid_t *pid);

/* ---- the benchmarks, one file each ---- */

/* layerbank-bench ring (argv[0] "ring"): bench_ring.c. @return the exit status: 0, 1, 2. */
int bench_ring_main(int argc, char **argv);

/* layerbank-bench workload (argv[0] "workload"): print the fleet's scoring request stream, or
 * with --chat its chat stream, or with --summary the make-up of either.
 * @return the exit status: 0, 1 run-time failure, 2 bad options. */
int bench_workload_main(int argc, char **argv);

/* layerbank-bench e2e (argv[0] "e2e"): the fleet benchmark, bench_e2e.c.
 * @return the exit status: 0, 1 run-time failure, 2 bad options. */
int bench_e2e_main(int argc, char **argv);

/* layerbank-bench snapshot (argv[0] "snapshot"): SNAPSHOT and the restore at start of a full
 * arena against plain file I/O, bench_snapshot.c. @return the exit status: 0, 1, 2. */
int bench_snapshot_main(int argc, char **argv);

/* layerbank-bench flush (argv[0] "flush"): FLUSH of a full store, holding the lock for the
 * whole pass and in batches, with a thread looking up beside it, bench_flush.c.
 * @return the exit status: 0, 1 run-time failure, 2 bad options. */
int bench_flush_main(int argc, char **argv);

/* layerbank-bench churn (argv[0] "churn"): a steady client's lookups while another client
 * connects and disconnects, against quiet windows, bench_churn.c. @return 0, 1, 2. */
int bench_churn_main(int argc, char **argv);

/* layerbank-bench kernels (argv[0] "kernels", argv[-1] main's argv[0]: it may re-execute
 * itself), bench_kernels.c. @return the exit status: 0, 1 run-time failure, 2 bad options. */
int bench_kernels_main(int argc, char **argv);

#endif
