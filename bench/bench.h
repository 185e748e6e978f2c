/* layerbank-bench: shared declarations of the benchmark modules. */
#ifndef LAYERBANK_BENCH_H
#define LAYERBANK_BENCH_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "layerbank/layerbank.h" /* struct lb_stats */

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
/* One core's vdpbf16ps peak in GFLOP/s (2 flops per bf16 multiply-add, 64 an instruction),
 * measured as lbb_fma_peak_gflops; -1 when lbk_has_bf16() says no. */
double lbb_bf16_peak_gflops(void);

/* ---- bench_dnnl.c (only with libdnnl-dev: LB_HAVE_DNNL) ---- */

/* A oneDNN matmul y[m][n] = x[m][k] . W^T (W [n][k] row-major): bf16 (bf16 nonzero) or f32 source
 * and weights, f32 destination. x is converted and W reordered into the layout oneDNN picks
 * once, here. @return NULL (errno EINVAL) when oneDNN refuses, or ENOMEM. */
struct lbb_dnnl_mm;
struct lbb_dnnl_mm *lbb_dnnl_mm_new(int64_t m, int64_t n, int64_t k, int bf16, const float *x,
				    const float *w);
/* One product on threads OpenMP threads. @return 0, or -EIO when oneDNN fails. */
int lbb_dnnl_mm_run(struct lbb_dnnl_mm *d, int threads);
/* The implementation oneDNN chose (dnnl_query_impl_info_str), e.g. "brg:avx512_core_bf16". */
const char *lbb_dnnl_mm_impl(const struct lbb_dnnl_mm *d);
/* Its output [m][n], valid after a run. */
const float *lbb_dnnl_mm_y(const struct lbb_dnnl_mm *d);
void lbb_dnnl_mm_free(struct lbb_dnnl_mm *d);

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

/* The p-quantile (0..1, nearest rank) of sorted[0..n); NAN when n is 0. */
double lbb_pct(const double *sorted, size_t n, double p);

struct json_object;
/* A JSON number, or NULL (JSON null) when v is not finite. */
struct json_object *lbb_json_num(double v);

/* SIGTERM *pid, wait up to 10 s (then SIGKILL), reap it and set *pid to -1; nothing for -1. */
void lbb_stop(pid_t *pid);

/* Seconds of CLOCK_MONOTONIC. */
double lbb_now_s(void);

/* ---- bench_fleet.c: a fleet of `layerbank-worker serve` processes, for e2e and prefix ---- */

#define LBB_FLEET_MAX_WORKERS 64
#define LBB_FLEET_MAX_LAYERS 64

/* How the fleet's workers cache: not at all, an in-process bank each (budget / workers bytes),
 * one layerbankd of the whole budget, or one plain Redis server of the whole budget (serve
 * --redis: exact inputs' deepest layer only, the peer a user without layerbank would pick;
 * e2e's, not prefix's: it serves no prefix blocks). */
enum lbb_mode { LBB_NOCACHE = 0, LBB_PRIVATE = 1, LBB_SHARED = 2, LBB_REDIS = 3 };
/* layerbank's own modes, LBB_NOCACHE..LBB_SHARED: those every fleet benchmark runs */
#define LBB_N_MODES 3
/* with the plain peer after them */
#define LBB_N_ALL_MODES 4
/* "nocache", "private", "shared", "redis" */
extern const char *const lbb_mode_name[LBB_N_ALL_MODES];

struct lbb_fleet_cfg {
	const char *model;     /* serve's --model */
	const char *tokenizer; /* serve's --tokenizer */
	int max_tokens;        /* serve's --max-tokens; 0: not given */
	int workers;           /* 1..LBB_FLEET_MAX_WORKERS */
	uint64_t budget;       /* the shared bank's bytes; a private bank's: budget / workers */
	const char *tau;       /* --tau of the daemon and of caching workers; NULL: the default */
	int no_sflight;        /* caching workers run with --no-sflight */
	const char *recompute; /* caching workers' --recompute (R or off); NULL: the default */
	const char *spin_us;   /* layerbankd's --spin-us; NULL: the default */
	int shadow;            /* caching workers run with --shadow */
	const char *fp_chunks; /* caching workers' --fp-chunks; NULL: the default */
	const char *drift_target; /* layerbankd's --drift-target (adaptive thresholds); NULL: none */
	const char *revalidate;   /* caching workers' --revalidate; NULL: none */
};

/*
 * The fleet's folder, made by lbb_tempdir for benchmark bench ("e2e": it names the folder and
 * starts every message), and its cleanup at exit, SIGINT and SIGTERM: the workers and the
 * daemon stopped, the folder removed. SIGPIPE is ignored from then on. Call once.
 */
void lbb_fleet_init(const char *bench);

/* Start layerbankd in the fleet's folder (budget cfg->budget, an arena with room for entry
 * headers on top, --hugepages try, --threads 1, cfg->tau) and wait for its socket.
 * @return 0; -errno, or -EIO after a one-line message and the daemon's log. */
int lbb_fleet_daemon_start(const struct lbb_fleet_cfg *cfg);
/* Stop the daemon; nothing when none runs. */
void lbb_fleet_daemon_stop(void);
/* The daemon's socket path (valid until the next call). */
const char *lbb_fleet_socket(void);
/* The fleet's folder, removed at exit with what the benchmark put in it. */
const char *lbb_fleet_dir(void);

/*
 * Start cfg->workers serve processes in mode m (for LBB_SHARED the daemon first; for LBB_REDIS
 * a Redis server, lbu_redis_start's: files in the fleet's folder, a free loopback port,
 * --maxmemory cfg->budget with allkeys-lru, nothing saved, answering PING), each with its log
 * in the folder, and wait up to 300 s for each one's "ready ... layers=L ... cache=MODE" line
 * (MODE what m asks for: a worker that found no cache ends the run).
 * @return 0 and *layers (what every worker said); -errno after a one-line message (the logs of
 * the workers that did not get ready shown). The caller stops the fleet either way.
 */
int lbb_fleet_start(const struct lbb_fleet_cfg *cfg, enum lbb_mode m, int *layers);
/* Stop the workers (end of input, then SIGTERM after 5 s), the daemon and the Redis server
 * (its folder removed). */
void lbb_fleet_stop(void);

/* A worker with no request in flight; -1 when every one is busy. */
int lbb_fleet_idle(void);
/* Send worker w the request line "ID<TAB>BODY" (body[0..len), no newline in it) and time it
 * from now. @return 0; -errno after a one-line message and the worker's log. */
int lbb_fleet_send(int w, uint64_t id, const char *body, size_t len);

/* An answer of worker w to request id: rest is the line after the id (" ok ..." or
 * " err ..."), writable; lat_ms the time from its send to its arrival.
 * @return 0, or a negative errno that ends the run. */
typedef int (*lbb_answer_fn)(void *ctx, int w, uint64_t id, char *rest, double lat_ms);
/*
 * Wait up to 1 s for answer lines and hand each to fn. A line that does not answer the
 * worker's request in flight, a worker gone, and a request unanswered after 300 s end the run.
 * @return the answers handed to fn (0 when none came); -errno after a one-line message and
 * the worker's log; what fn returned when negative.
 */
int lbb_fleet_collect(lbb_answer_fn fn, void *ctx);

/* ---- bench_prefix_lookup.c: the ring figure of layerbank-bench prefix ---- */

#define LBB_BLOCK_TOKENS 16  /* tokens of a prefix block, as the worker registers its decoder */
#define LBB_LOOKUP_BLOCKS 32 /* blocks of the timed long hit */

/* A decoder's shape, as a prefix block needs it. */
struct lbb_prefix_geom {
	uint32_t n_layers;
	uint32_t dim;      /* hidden size */
	uint32_t kv_dim;   /* one position's K (or V) row of a layer, floats */
	uint32_t seq_len;  /* context */
};

struct lbb_lookup_fig {
	double p50_us, p99_us;
};

struct lbb_prefix_figs {
	struct lbb_lookup_fig hit;    /* a hit of LBB_LOOKUP_BLOCKS blocks, with its release */
	struct lbb_lookup_fig hit1;   /* a hit of 1 block, with its release */
	struct lbb_lookup_fig insert; /* a block's insert: reserve, copy in, lb_insert_block */
};

/*
 * Through the layerbankd at socket (each call waiting up to 2 s): register a model of geometry
 * g; insert 4 chains of LBB_LOOKUP_BLOCKS blocks of random tokens with lb_insert_block, each
 * block copied into staging first, as a worker does, and timed (f->insert); then time
 * lb_lookup_prefix of the first chain's keys and lb_release of the lease: 1,000 hits of
 * warm-up, then 10 rounds of 2,000 hits of each length in turn, all its blocks (f->hit) and the
 * first alone (f->hit1).
 * @return 0; -errno after a one-line message (-ENOENT: a hit found fewer blocks).
 */
int lbb_prefix_lookup_time(const char *socket, const struct lbb_prefix_geom *g,
			   struct lbb_prefix_figs *f);

/* ---- bench_prefix.c, for layerbank-bench fusedkv: the chat stream through a fleet ---- */

struct lbw_chat;
struct lbw_chat_cfg;
struct lbw_paragraphs;

/* The chat stream of cfg (chat), fitted to a context of seq_len tokens, from data's
 * tinystories_val.txt and tok512.bin into *para (the paragraphs it refers to) and *c.
 * @return 0, or -1 after a one-line message. */
int lbb_prefix_chat(const char *data, const struct lbw_chat_cfg *chat, uint32_t seq_len,
		    struct lbw_paragraphs *para, struct lbw_chat *c);

struct lbb_stream_cfg {
	const char *model; /* the workers' --model: a checkpoint file or llama-110m */
	const char *data;  /* the folder of tok512.bin */
	int workers;       /* 1..LBB_FLEET_MAX_WORKERS */
	uint64_t budget;   /* the shared bank's bytes; a private bank's: budget / workers */
	uint32_t seq_len;  /* the model's context, which the stream was fitted to */
	int quiet;         /* no progress lines */
};

struct lbb_stream_figs {
	double reused_share, reusable_share; /* of the prompt tokens */
	double ttft_p50_ms, tokens_per_s;
	uint64_t prompt_tokens, reused_tokens;
	unsigned errors, cache_lost;
	int have_bank;
	struct lb_stats bank; /* shared: the daemon's counters at the end */
};

/* The chat stream c through a fleet of cfg's `layerbank-worker serve` decoders in mode m, as
 * layerbank-bench prefix runs each mode (each turn sent once the turn it continues is answered).
 * @return 0 and *out; -errno after a one-line message. */
int lbb_prefix_stream(const struct lbb_stream_cfg *cfg, const struct lbw_chat *c,
		      enum lbb_mode m, struct lbb_stream_figs *out);

/* ---- bench_blockset.c: the prefix blocks a bank that never evicts nor fails would hold ---- */

struct lbb_blockset;
/* An empty set. @return it; NULL with errno ENOMEM. */
struct lbb_blockset *lbb_blockset_new(void);
/* NULL is fine. */
void lbb_blockset_free(struct lbb_blockset *s);
/* Add the keys of the full blocks (LBB_BLOCK_TOKENS each) of tokens[0..n), as a worker inserts
 * what it prefilled and fed back. @return 0, -ENOMEM. */
int lbb_blockset_add(struct lbb_blockset *s, const int32_t *tokens, uint32_t n);
/* The tokens of tokens[0..n) a bank holding s would serve: its longest run of full blocks from
 * the start found in s, at most n - 1 (lb_prefix_run computes the last position always). */
uint32_t lbb_blockset_reusable(const struct lbb_blockset *s, const int32_t *tokens, uint32_t n);

/* ---- the benchmarks, one file each ---- */

/* layerbank-bench l2 (argv[0] "l2"): the second tier on a Redis Cluster, bench_l2.c.
 * @return the exit status: 0, 1 run-time failure, 2 bad options. */
int bench_l2_main(int argc, char **argv);

/* layerbank-bench ring (argv[0] "ring"): bench_ring.c. @return the exit status: 0, 1, 2. */
int bench_ring_main(int argc, char **argv);

/* layerbank-bench workload (argv[0] "workload"): print the fleet's scoring request stream, or
 * with --chat its chat stream, or with --summary the make-up of either.
 * @return the exit status: 0, 1 run-time failure, 2 bad options. */
int bench_workload_main(int argc, char **argv);

/* layerbank-bench e2e (argv[0] "e2e"): the fleet benchmark, bench_e2e.c.
 * @return the exit status: 0, 1 run-time failure, 2 bad options. */
int bench_e2e_main(int argc, char **argv);

/* layerbank-bench prefix (argv[0] "prefix"): the chat stream through a fleet of decoders without
 * cache, with a private bank each and with the shared bank, bench_prefix.c.
 * @return the exit status: 0, 1 run-time failure, 2 bad options. */
int bench_prefix_main(int argc, char **argv);

/* layerbank-bench fusedkv (argv[0] "fusedkv"): stories260K against its FusedKV checkpoints,
 * bench_fusedkv.c. @return the exit status: 0, 1 run-time failure, 2 bad options. */
int bench_fusedkv_main(int argc, char **argv);

/* layerbank-bench python (argv[0] "python"): a hit from Python against the same from C,
 * bench_python.c and bench/py_hit.py. @return the exit status: 0, 1, 2. */
int bench_python_main(int argc, char **argv);

/* layerbank-bench gen-near: generation after the design's stream, exact prefixes against
 * --gen-recompute (bench_gen_near.c). */
int bench_gen_near_main(int argc, char **argv);

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

/* layerbank-bench rows (argv[0] "rows"): one layer for chosen positions (lbw_scorer_rows)
 * against the whole layer, bert-base and llama-110m, bench_rows.c. @return 0, 1, 2. */
int bench_rows_main(int argc, char **argv);

/* layerbank-bench kernels (argv[0] "kernels", argv[-1] main's argv[0]: it may re-execute
 * itself), bench_kernels.c. @return the exit status: 0, 1 run-time failure, 2 bad options. */
int bench_kernels_main(int argc, char **argv);

#endif
