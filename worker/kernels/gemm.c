/* Matrix products: lbk_matmul (GEMV for small m, packed GEMM otherwise), the panel packing of
 * W and the register-blocked AVX-512 and AVX2 GEMMs, split over n across pthreads. */
#include <errno.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "simd.h"

/*
 * Micro-kernel tile: LBK_MR rows of x by LBK_NR columns of W (LBK_NV zmm vectors), i.e.
 * LBK_MR * LBK_NV = 24 accumulators, 3 W vectors and a broadcast: 28 of the 32 zmm registers.
 * Per k step: 3 loads + 8 broadcasts for 24 FMAs, which keeps both FMA pipes of a Zen 5 or
 * Skylake-X core busy (an L1-resident loop of this shape runs at ~95% of the FMA peak).
 * LBK_KC bounds the k slice: one panel slice (LBK_KC * LBK_NR floats = 144 KiB) and the x
 * slice (m * LBK_KC floats, 384 KiB at m = 128) stay in L2 (1 MiB on Zen 4/5 and Skylake-X)
 * while every m block reuses the panel slice. Fewer slices mean fewer passes over y, which
 * leaves L2 at n = 3072: with weights from DRAM, 768 measured better than 384 and 256.
 */
#define LBK_MR 8
#define LBK_NV 3
#define LBK_NR (LBK_NV * 16)
#define LBK_KC 768

/*
 * W comes from DRAM in a real forward (a BERT-base layer's weights are 27 MiB): the hardware
 * prefetcher alone leaves the first m block of each panel slice waiting on memory. So each
 * tile also prefetches (into L2) its share of the next panel slice, one cache line every
 * LBK_PF_STEP k steps, spreading the slice's fetch over the whole previous slice's work.
 */
#define LBK_PF_STEP 4

/* Full unrolling of the mr/NV loops keeps acc[][] in registers (GCC at -O2 would not;
 * clang reads "GCC unroll 16" as a partial count and then spills, so it gets its own). */
#if defined(__clang__)
#define LBK_UNROLL _Pragma("unroll")
#else
#define LBK_UNROLL _Pragma("GCC unroll 16")
#endif

struct lbk_packed {
	int64_t n, k;
	int64_t panels; /* ceil(n / LBK_NR) */
	float *w;	/* [panels][k][LBK_NR], columns n..panels*LBK_NR zero */
};

void lbk_matmul_ref(float *y, const float *x, const float *w, const float *bias, int64_t m,
		    int64_t n, int64_t k)
{
	for (int64_t i = 0; i < m; i++) {
		for (int64_t j = 0; j < n; j++) {
			float val = 0.0f;
			for (int64_t l = 0; l < k; l++)
				val += w[j * k + l] * x[i * k + l];
			/* no + 0.0f without a bias: keeps the sign of a zero, as llama2.c's matmul */
			y[i * n + j] = bias ? val + bias[j] : val;
		}
	}
}

struct lbk_packed *lbk_pack(const float *w, int64_t n, int64_t k)
{
	if (!w || n <= 0 || k <= 0) {
		errno = EINVAL;
		return NULL;
	}
	struct lbk_packed *p = malloc(sizeof(*p));
	if (!p)
		return NULL;
	p->n = n;
	p->k = k;
	p->panels = (n + LBK_NR - 1) / LBK_NR;
	size_t bytes = (size_t)p->panels * (size_t)k * LBK_NR * sizeof(float);
	bytes = (bytes + 63) & ~(size_t)63;
	p->w = aligned_alloc(64, bytes);
	if (!p->w) {
		free(p);
		errno = ENOMEM;
		return NULL;
	}
	for (int64_t pi = 0; pi < p->panels; pi++) {
		float *dst = p->w + pi * k * LBK_NR; /* [k][LBK_NR] */
		for (int64_t l = 0; l < k; l++) {
			for (int64_t j = 0; j < LBK_NR; j++) {
				int64_t col = pi * LBK_NR + j;
				dst[l * LBK_NR + j] = col < n ? w[col * k + l] : 0.0f;
			}
		}
	}
	return p;
}

void lbk_packed_free(struct lbk_packed *p)
{
	if (!p)
		return;
	free(p->w);
	free(p);
}

/* One GEMM: y [m][n] = act(x [m][k] . W^T + bias + res), shared by every thread's share. */
struct gemm_op {
	float *y;
	const float *x;
	const struct lbk_packed *pw;
	const float *bias; /* [n] or NULL */
	const float *res;  /* [m][n] or NULL; never y */
	int64_t m;
	enum lbk_act act;
};

/* ---- scalar GEMM on the packed layout (forced-scalar path; same sums as the reference) ---- */

static void gemm_scalar(const struct gemm_op *g, int64_t p0, int64_t p1)
{
	const int64_t n = g->pw->n, k = g->pw->k;
	for (int64_t i = 0; i < g->m; i++) {
		for (int64_t pi = p0; pi < p1; pi++) {
			const float *panel = g->pw->w + pi * k * LBK_NR; /* [k][LBK_NR] */
			for (int64_t j = 0; j < LBK_NR && pi * LBK_NR + j < n; j++) {
				float val = 0.0f;
				for (int64_t l = 0; l < k; l++)
					val += panel[l * LBK_NR + j] * g->x[i * k + l];
				int64_t col = pi * LBK_NR + j;
				val += g->bias ? g->bias[col] : 0.0f;
				if (g->res)
					val += g->res[i * n + col];
				if (g->act == LBK_ACT_GELU)
					lbk_gelu_ref(&val, 1);
				g->y[i * n + col] = val;
			}
		}
	}
}

/* ---- AVX-512 micro-kernel ---- */

/*
 * C[mr][ncols] (+)= A[mr][kc] . B[kc][LBK_NR]; a is x at (row i0, column k0), lda = k;
 * b the panel slice [kc][LBK_NR]; c is y at (i0, panel column 0), ldc = n. first: the
 * accumulators start from bias (or 0) instead of C. The epilogue, on the last slice only:
 * res (the residual at the tile, ldc apart, or NULL) is added and act applied before the store.
 * mr is a compile-time constant at every call site (the switch in tile()), so the loops over
 * r unroll and acc stays in registers. pf: npf cache lines (16 floats apart) to prefetch
 * into L2, one every LBK_PF_STEP k steps (npf 0: none).
 */
static inline __attribute__((always_inline)) LBK_TARGET_AVX512 void
micro(int mr, int64_t kc, const float *a, int64_t lda, const float *b, float *c, int64_t ldc,
      __mmask16 mask[LBK_NV], const float *bias, int first, const float *res, enum lbk_act act,
      const float *pf, int64_t npf)
{
	__m512 acc[LBK_MR][LBK_NV];
	LBK_UNROLL
	for (int r = 0; r < mr; r++)
		LBK_UNROLL
		for (int v = 0; v < LBK_NV; v++)
			acc[r][v] = first ? (bias ? _mm512_maskz_loadu_ps(mask[v], bias + v * 16)
						  : _mm512_setzero_ps())
					  : _mm512_maskz_loadu_ps(mask[v], c + r * ldc + v * 16);
	for (int64_t l = 0; l < kc; l++) {
		if (l % LBK_PF_STEP == 0 && l / LBK_PF_STEP < npf)
			_mm_prefetch((const char *)(pf + l / LBK_PF_STEP * 16), _MM_HINT_T1);
		__m512 bv[LBK_NV];
		LBK_UNROLL
		for (int v = 0; v < LBK_NV; v++)
			bv[v] = _mm512_load_ps(b + l * LBK_NR + v * 16);
		LBK_UNROLL
		for (int r = 0; r < mr; r++) {
			__m512 av = _mm512_set1_ps(a[r * lda + l]);
			LBK_UNROLL
			for (int v = 0; v < LBK_NV; v++)
				acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
		}
	}
	if (res) {
		LBK_UNROLL
		for (int r = 0; r < mr; r++)
			LBK_UNROLL
			for (int v = 0; v < LBK_NV; v++)
				acc[r][v] = _mm512_add_ps(acc[r][v], _mm512_maskz_loadu_ps(mask[v], res + r * ldc + v * 16));
	}
	if (act == LBK_ACT_GELU) {
		LBK_UNROLL
		for (int r = 0; r < mr; r++)
			LBK_UNROLL
			for (int v = 0; v < LBK_NV; v++)
				acc[r][v] = lbk_gelu512(acc[r][v]);
	}
	LBK_UNROLL
	for (int r = 0; r < mr; r++)
		LBK_UNROLL
		for (int v = 0; v < LBK_NV; v++)
			_mm512_mask_storeu_ps(c + r * ldc + v * 16, mask[v], acc[r][v]);
}

#define LBK_TILE_CASE(R)                                                                   \
	case R:                                                                            \
		micro(R, kc, a, lda, b, c, ldc, mask, bias, first, res, act, pf, npf);     \
		break

static LBK_TARGET_AVX512 void tile(int mr, int64_t kc, const float *a, int64_t lda,
				   const float *b, float *c, int64_t ldc, int64_t ncols,
				   const float *bias, int first, const float *res, enum lbk_act act,
				   const float *pf, int64_t npf)
{
	__mmask16 mask[LBK_NV];
	for (int v = 0; v < LBK_NV; v++) {
		int64_t left = ncols - v * 16;
		mask[v] = left >= 16 ? (__mmask16)0xffff
				     : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1);
	}
	_Static_assert(LBK_MR == 8, "tile() switch lists 1..LBK_MR");
	switch (mr) {
		LBK_TILE_CASE(8);
		LBK_TILE_CASE(7);
		LBK_TILE_CASE(6);
		LBK_TILE_CASE(5);
		LBK_TILE_CASE(4);
		LBK_TILE_CASE(3);
		LBK_TILE_CASE(2);
		LBK_TILE_CASE(1);
	default:
		break;
	}
}

/*
 * The panel slice the loops in gemm_avx512 visit after panel pi's slice at k0 (the next panel,
 * or at the last one the next k slice's first): its start and its length in cache lines, or
 * NULL when pi at k0 is the last.
 */
static const float *next_slice(const struct gemm_op *g, int64_t p0, int64_t p1, int64_t pi,
			       int64_t k0, int64_t *lines)
{
	const int64_t k = g->pw->k;
	if (pi + 1 == p1) {
		k0 += LBK_KC;
		pi = p0;
	} else {
		pi++;
	}
	if (k0 >= k)
		return NULL;
	int64_t kc = k - k0 < LBK_KC ? k - k0 : LBK_KC;
	*lines = kc * LBK_NR / 16;
	return g->pw->w + pi * k * LBK_NR + k0 * LBK_NR;
}

/* Panels p0..p1 of g's product, all m rows. */
static LBK_TARGET_AVX512 void gemm_avx512(const struct gemm_op *g, int64_t p0, int64_t p1)
{
	const int64_t n = g->pw->n, k = g->pw->k, m = g->m;
	const int64_t tiles = (m + LBK_MR - 1) / LBK_MR;
	for (int64_t k0 = 0; k0 < k; k0 += LBK_KC) {
		int64_t kc = k - k0 < LBK_KC ? k - k0 : LBK_KC;
		int last = k0 + kc == k;
		enum lbk_act act = last ? g->act : LBK_ACT_NONE;
		for (int64_t pi = p0; pi < p1; pi++) {
			const float *b = g->pw->w + pi * k * LBK_NR + k0 * LBK_NR; /* [kc][LBK_NR] */
			int64_t col0 = pi * LBK_NR;
			int64_t ncols = n - col0 < LBK_NR ? n - col0 : LBK_NR;
			const float *bb = g->bias ? g->bias + col0 : NULL;
			/* the next slice's lines, split evenly over this slice's m blocks (a tile
			 * prefetches at most kc / LBK_PF_STEP of them: with few m blocks the rest is
			 * left to the hardware prefetcher) */
			int64_t lines = 0;
			const float *next = next_slice(g, p0, p1, pi, k0, &lines);
			int64_t share = (lines + tiles - 1) / tiles;
			for (int64_t i0 = 0, t = 0; i0 < m; i0 += LBK_MR, t++) {
				int mr = (int)(m - i0 < LBK_MR ? m - i0 : LBK_MR);
				const float *res = last && g->res ? g->res + i0 * n + col0 : NULL;
				int64_t from = t * share < lines ? t * share : lines;
				int64_t npf = lines - from < share ? lines - from : share;
				tile(mr, kc, g->x + i0 * k + k0, k, b, g->y + i0 * n + col0, n, ncols,
				     bb, k0 == 0, res, act, next ? next + from * 16 : NULL, npf);
			}
		}
	}
}

/* ---- AVX2 micro-kernel: the same packed panels, a third of a panel (16 columns) at a time ---- */

/*
 * LBK_MR2 rows by 16 columns: 6 x 2 ymm accumulators, 2 W vectors and a broadcast, 15 of the
 * 16 ymm registers (the classic Haswell shape). b is the panel slice at the sub-panel's first
 * column, rows LBK_NR floats apart; the rest as micro().
 */
#define LBK_MR2 6

static inline __attribute__((always_inline)) LBK_TARGET_AVX2 void
micro2(int mr, int64_t kc, const float *a, int64_t lda, const float *b, float *c, int64_t ldc,
       __m256i mask[2], const float *bias, int first, const float *res, enum lbk_act act)
{
	__m256 acc[LBK_MR2][2];
	LBK_UNROLL
	for (int r = 0; r < mr; r++)
		LBK_UNROLL
		for (int v = 0; v < 2; v++)
			acc[r][v] = first ? (bias ? _mm256_maskload_ps(bias + v * 8, mask[v])
						  : _mm256_setzero_ps())
					  : _mm256_maskload_ps(c + r * ldc + v * 8, mask[v]);
	for (int64_t l = 0; l < kc; l++) {
		__m256 b0 = _mm256_load_ps(b + l * LBK_NR), b1 = _mm256_load_ps(b + l * LBK_NR + 8);
		LBK_UNROLL
		for (int r = 0; r < mr; r++) {
			__m256 av = _mm256_broadcast_ss(a + r * lda + l);
			acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
			acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
		}
	}
	if (res) {
		LBK_UNROLL
		for (int r = 0; r < mr; r++)
			LBK_UNROLL
			for (int v = 0; v < 2; v++)
				acc[r][v] = _mm256_add_ps(acc[r][v], _mm256_maskload_ps(res + r * ldc + v * 8, mask[v]));
	}
	if (act == LBK_ACT_GELU) {
		LBK_UNROLL
		for (int r = 0; r < mr; r++)
			LBK_UNROLL
			for (int v = 0; v < 2; v++)
				acc[r][v] = lbk_gelu256(acc[r][v]);
	}
	LBK_UNROLL
	for (int r = 0; r < mr; r++)
		LBK_UNROLL
		for (int v = 0; v < 2; v++)
			_mm256_maskstore_ps(c + r * ldc + v * 8, mask[v], acc[r][v]);
}

#define LBK_TILE2_CASE(R)                                                                  \
	case R:                                                                            \
		micro2(R, kc, a, lda, b, c, ldc, mask, bias, first, res, act);              \
		break

static LBK_TARGET_AVX2 void tile2(int mr, int64_t kc, const float *a, int64_t lda,
				  const float *b, float *c, int64_t ldc, int64_t ncols,
				  const float *bias, int first, const float *res, enum lbk_act act)
{
	__m256i mask[2] = { lbk_mask8(ncols), lbk_mask8(ncols - 8) };
	_Static_assert(LBK_MR2 == 6, "tile2() switch lists 1..LBK_MR2");
	switch (mr) {
		LBK_TILE2_CASE(6);
		LBK_TILE2_CASE(5);
		LBK_TILE2_CASE(4);
		LBK_TILE2_CASE(3);
		LBK_TILE2_CASE(2);
		LBK_TILE2_CASE(1);
	default:
		break;
	}
}

static LBK_TARGET_AVX2 void gemm_avx2(const struct gemm_op *g, int64_t p0, int64_t p1)
{
	const int64_t n = g->pw->n, k = g->pw->k, m = g->m;
	for (int64_t k0 = 0; k0 < k; k0 += LBK_KC) {
		int64_t kc = k - k0 < LBK_KC ? k - k0 : LBK_KC;
		int last = k0 + kc == k;
		enum lbk_act act = last ? g->act : LBK_ACT_NONE;
		for (int64_t pi = p0; pi < p1; pi++) {
			for (int64_t col0 = pi * LBK_NR; col0 < (pi + 1) * LBK_NR && col0 < n; col0 += 16) {
				const float *b = g->pw->w + pi * k * LBK_NR + k0 * LBK_NR + (col0 - pi * LBK_NR);
				int64_t ncols = n - col0 < 16 ? n - col0 : 16;
				const float *bb = g->bias ? g->bias + col0 : NULL;
				for (int64_t i0 = 0; i0 < m; i0 += LBK_MR2) {
					int mr = (int)(m - i0 < LBK_MR2 ? m - i0 : LBK_MR2);
					const float *res = last && g->res ? g->res + i0 * n + col0 : NULL;
					tile2(mr, kc, g->x + i0 * k + k0, k, b, g->y + i0 * n + col0, n,
					      ncols, bb, k0 == 0, res, act);
				}
			}
		}
	}
}

static void gemm_range(const void *op, int64_t p0, int64_t p1)
{
	const struct gemm_op *g = op;
	switch (lbk_isa()) {
	case LBK_ISA_AVX512:
		gemm_avx512(g, p0, p1);
		break;
	case LBK_ISA_AVX2:
		gemm_avx2(g, p0, p1);
		break;
	default:
		gemm_scalar(g, p0, p1);
	}
}

/* One thread's share: panels [p0, p1) of op, run by fn. Owned by the calling lbk_run_panels
 * until joined. */
struct gemm_job {
	lbk_panel_fn *fn;
	const void *op;
	int64_t p0, p1;
};

static void *gemm_thread(void *arg)
{
	struct gemm_job *j = arg;
	j->fn(j->op, j->p0, j->p1);
	return NULL;
}

#define LBK_MAX_THREADS 64

/*
 * Persistent pool: workers 1..LBK_MAX_THREADS-1, started on first need and parked on a
 * condition variable for the life of the process. One lbk_run_panels call at a time owns the pool
 * (pool_owner); a concurrent caller that finds it taken spawns threads for its call instead.
 */
static pthread_mutex_t pool_owner = PTHREAD_MUTEX_INITIALIZER;
static struct {
	pthread_mutex_t lock; /* guards every field below */
	pthread_cond_t work;  /* workers wait here for job[id] != NULL */
	pthread_cond_t done;  /* the owner waits here for pending == 0 */
	int started;	      /* workers 1..started exist */
	int pending;	      /* jobs handed out and not finished */
	/* Set by the owner, cleared by worker id when it has finished the job. */
	struct gemm_job *job[LBK_MAX_THREADS];
} pool = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0,
	   { NULL } };

static void *pool_worker(void *arg)
{
	int id = (int)(intptr_t)arg;
	pthread_mutex_lock(&pool.lock);
	for (;;) {
		while (!pool.job[id])
			pthread_cond_wait(&pool.work, &pool.lock);
		struct gemm_job *j = pool.job[id];
		pthread_mutex_unlock(&pool.lock);
		gemm_thread(j);
		pthread_mutex_lock(&pool.lock);
		pool.job[id] = NULL;
		if (--pool.pending == 0)
			pthread_cond_signal(&pool.done);
	}
	return NULL;
}

/* Runs jobs[0] on the caller and jobs[1..threads-1] on pool workers; 0, or -1 (nothing run)
 * when the pool is busy or no worker could be started. */
static int pool_run(struct gemm_job *jobs, int threads)
{
	if (pthread_mutex_trylock(&pool_owner) != 0)
		return -1;
	pthread_mutex_lock(&pool.lock);
	while (pool.started < threads - 1) {
		pthread_t tid;
		pthread_attr_t attr;
		pthread_attr_init(&attr);
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		int rc = pthread_create(&tid, &attr, pool_worker, (void *)(intptr_t)(pool.started + 1));
		pthread_attr_destroy(&attr);
		if (rc != 0)
			break;
		pool.started++;
	}
	int workers = pool.started < threads - 1 ? pool.started : threads - 1;
	if (workers < threads - 1) {
		pthread_mutex_unlock(&pool.lock);
		pthread_mutex_unlock(&pool_owner);
		return -1;
	}
	for (int t = 1; t <= workers; t++)
		pool.job[t] = &jobs[t];
	pool.pending = workers;
	pthread_cond_broadcast(&pool.work);
	pthread_mutex_unlock(&pool.lock);

	gemm_thread(&jobs[0]);

	pthread_mutex_lock(&pool.lock);
	while (pool.pending > 0)
		pthread_cond_wait(&pool.done, &pool.lock);
	pthread_mutex_unlock(&pool.lock);
	pthread_mutex_unlock(&pool_owner);
	return 0;
}

/* Fallback when the pool is busy: threads created for this call only. */
static void spawn_run(struct gemm_job *jobs, int threads)
{
	pthread_t tids[LBK_MAX_THREADS];
	int started[LBK_MAX_THREADS] = { 0 };
	for (int t = 1; t < threads; t++) {
		/* A thread that cannot start has its share run inline. */
		started[t] = pthread_create(&tids[t], NULL, gemm_thread, &jobs[t]) == 0;
		if (!started[t])
			gemm_thread(&jobs[t]);
	}
	gemm_thread(&jobs[0]);
	for (int t = 1; t < threads; t++)
		if (started[t])
			pthread_join(tids[t], NULL);
}

void lbk_gemm_ex(float *y, const float *x, const struct lbk_packed *w, const float *bias,
		 const float *res, int64_t m, int threads, enum lbk_act act)
{
	if (m <= 0 || !w)
		return;
	const struct gemm_op g = { y, x, w, bias, res, m, act == LBK_ACT_GELU ? act : LBK_ACT_NONE };
	lbk_run_panels(gemm_range, &g, w->panels, threads);
}

void lbk_run_panels(lbk_panel_fn *fn, const void *op, int64_t panels, int threads)
{
	if (threads > LBK_MAX_THREADS)
		threads = LBK_MAX_THREADS;
	if (threads > panels)
		threads = (int)panels;
	if (threads <= 1) {
		fn(op, 0, panels);
		return;
	}
	/* Contiguous panel ranges: thread t writes columns of its panels only. */
	struct gemm_job jobs[LBK_MAX_THREADS];
	for (int t = 0; t < threads; t++)
		jobs[t] = (struct gemm_job){ fn, op, panels * t / threads, panels * (t + 1) / threads };
	if (pool_run(jobs, threads) != 0)
		spawn_run(jobs, threads);
}

void lbk_gemm(float *y, const float *x, const struct lbk_packed *w, const float *bias, int64_t m,
	      int threads)
{
	lbk_gemm_ex(y, x, w, bias, NULL, m, threads, LBK_ACT_NONE);
}

/* ---- GEMV (m small): one dot product per output, four W rows share each x load ---- */

static LBK_TARGET_AVX512 void gemv_avx512(float *y, const float *x, const float *w,
					  const float *bias, int64_t n, int64_t k)
{
	int64_t kv = k & ~(int64_t)15;
	__mmask16 tail = (__mmask16)((1u << (k - kv)) - 1);
	int64_t j = 0;
	for (; j + 4 <= n; j += 4) {
		const float *w0 = w + j * k, *w1 = w0 + k, *w2 = w1 + k, *w3 = w2 + k;
		__m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
		int64_t l = 0;
		for (; l < kv; l += 16) {
			__m512 xv = _mm512_loadu_ps(x + l);
			s0 = _mm512_fmadd_ps(xv, _mm512_loadu_ps(w0 + l), s0);
			s1 = _mm512_fmadd_ps(xv, _mm512_loadu_ps(w1 + l), s1);
			s2 = _mm512_fmadd_ps(xv, _mm512_loadu_ps(w2 + l), s2);
			s3 = _mm512_fmadd_ps(xv, _mm512_loadu_ps(w3 + l), s3);
		}
		if (tail) {
			__m512 xv = _mm512_maskz_loadu_ps(tail, x + l);
			s0 = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(tail, w0 + l), s0);
			s1 = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(tail, w1 + l), s1);
			s2 = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(tail, w2 + l), s2);
			s3 = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(tail, w3 + l), s3);
		}
		y[j + 0] = _mm512_reduce_add_ps(s0) + (bias ? bias[j + 0] : 0.0f);
		y[j + 1] = _mm512_reduce_add_ps(s1) + (bias ? bias[j + 1] : 0.0f);
		y[j + 2] = _mm512_reduce_add_ps(s2) + (bias ? bias[j + 2] : 0.0f);
		y[j + 3] = _mm512_reduce_add_ps(s3) + (bias ? bias[j + 3] : 0.0f);
	}
	for (; j < n; j++) {
		const float *wr = w + j * k;
		__m512 s = _mm512_setzero_ps();
		int64_t l = 0;
		for (; l < kv; l += 16)
			s = _mm512_fmadd_ps(_mm512_loadu_ps(x + l), _mm512_loadu_ps(wr + l), s);
		if (tail)
			s = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, x + l),
					    _mm512_maskz_loadu_ps(tail, wr + l), s);
		y[j] = _mm512_reduce_add_ps(s) + (bias ? bias[j] : 0.0f);
	}
}

static LBK_TARGET_AVX2 void gemv_avx2(float *y, const float *x, const float *w,
				      const float *bias, int64_t n, int64_t k)
{
	int64_t kv = k & ~(int64_t)7;
	__m256i tail = lbk_mask8(k - kv);
	int has_tail = k > kv;
	int64_t j = 0;
	for (; j + 4 <= n; j += 4) {
		const float *w0 = w + j * k, *w1 = w0 + k, *w2 = w1 + k, *w3 = w2 + k;
		__m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
		int64_t l = 0;
		for (; l < kv; l += 8) {
			__m256 xv = _mm256_loadu_ps(x + l);
			s0 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w0 + l), s0);
			s1 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w1 + l), s1);
			s2 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w2 + l), s2);
			s3 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w3 + l), s3);
		}
		if (has_tail) {
			__m256 xv = _mm256_maskload_ps(x + l, tail);
			s0 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(w0 + l, tail), s0);
			s1 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(w1 + l, tail), s1);
			s2 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(w2 + l, tail), s2);
			s3 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(w3 + l, tail), s3);
		}
		y[j + 0] = lbk_hsum256(s0) + (bias ? bias[j + 0] : 0.0f);
		y[j + 1] = lbk_hsum256(s1) + (bias ? bias[j + 1] : 0.0f);
		y[j + 2] = lbk_hsum256(s2) + (bias ? bias[j + 2] : 0.0f);
		y[j + 3] = lbk_hsum256(s3) + (bias ? bias[j + 3] : 0.0f);
	}
	for (; j < n; j++) {
		const float *wr = w + j * k;
		__m256 s = _mm256_setzero_ps();
		int64_t l = 0;
		for (; l < kv; l += 8)
			s = _mm256_fmadd_ps(_mm256_loadu_ps(x + l), _mm256_loadu_ps(wr + l), s);
		if (has_tail)
			s = _mm256_fmadd_ps(_mm256_maskload_ps(x + l, tail),
					    _mm256_maskload_ps(wr + l, tail), s);
		y[j] = lbk_hsum256(s) + (bias ? bias[j] : 0.0f);
	}
}

/* Below this many rows, packing W costs more than it saves: one GEMV per row. */
#define LBK_GEMV_MAX_M 4

static void gemv_rows(enum lbk_isa isa, float *y, const float *x, const float *w,
		      const float *bias, int64_t m, int64_t n, int64_t k)
{
	for (int64_t i = 0; i < m; i++) {
		if (isa == LBK_ISA_AVX512)
			gemv_avx512(y + i * n, x + i * k, w, bias, n, k);
		else
			gemv_avx2(y + i * n, x + i * k, w, bias, n, k);
	}
}

void lbk_matmul(float *y, const float *x, const float *w, const float *bias, int64_t m, int64_t n,
		int64_t k)
{
	enum lbk_isa isa = lbk_isa();
	if (isa == LBK_ISA_SCALAR) {
		lbk_matmul_ref(y, x, w, bias, m, n, k);
		return;
	}
	if (m < LBK_GEMV_MAX_M) {
		gemv_rows(isa, y, x, w, bias, m, n, k);
		return;
	}
	struct lbk_packed *p = lbk_pack(w, n, k);
	if (!p) { /* out of memory: the GEMV path needs none */
		gemv_rows(isa, y, x, w, bias, m, n, k);
		return;
	}
	lbk_gemm(y, x, p, bias, m, 1);
	lbk_packed_free(p);
}
