/*
 * Grouped-query multi-head attention, causal or bidirectional, with K and V read through a table
 * of blocks of positions (a contiguous sequence is one block): a two-pass plain-C reference, and
 * tiled AVX-512 and AVX2 variants (a block of query rows against blocks of keys held in vector
 * lanes, an online softmax, P.V with FMAs). lbk_attention, lbk_attention_strided and
 * lbk_attention_paged and lbk_attention_rows all run this one code.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "simd.h"

/* bshift of a contiguous sequence: one block holds every position an int64_t index reaches. */
#define ONE_BLOCK 62

/*
 * One call's operands. Query row r is position pos0 + r: its head h is q + r * ldq + h * hs, its
 * output out + r * ldo + h * hs. Key s of kv head g is kv_row(kblk, bshift, ldk, s) + g * hs,
 * its value likewise through vblk and ldv. Blocks are only read, and only the rows of keys
 * 0..nkeys-1, and in them only the n_kv_heads * hs floats of the heads.
 */
struct att {
	float *out;
	const float *q;
	const float *const *kblk, *const *vblk; /* block tables, [(nkeys - 1) >> bshift + 1] */
	int64_t ldo, ldq, ldk, ldv;
	int bshift;	  /* 2^bshift positions a block, 0..ONE_BLOCK */
	int64_t pos0, nq; /* query rows: positions pos0 .. pos0+nq-1 */
	const int64_t *qpos; /* [nq] or NULL: row r's position instead of pos0 + r, ascending */
	int64_t nkeys;	  /* keys 0..nkeys-1: past the last row's position when causal */
	int64_t n_heads, n_kv_heads, hs;
	int causal; /* row r sees keys 0..its position; otherwise all nkeys */
	const struct lbk_fused *f; /* NULL, or K and V rebuilt from two sources (kernels.h) */
};

/* Position s's row (every kv head, ld floats apart) in a block table. */
static inline const float *kv_row(const float *const *blk, int bshift, int64_t ld, int64_t s)
{
	return blk[s >> bshift] + (s & (((int64_t)1 << bshift) - 1)) * ld;
}

/* x y + z w, each product rounded, then the sum: the products are separate statements, which
 * no compiler contracts into an FMA (clang would within one expression), so that the scalar
 * path and the vector one (mul, mul, add) round alike. */
static inline float sum_of_products(float x, float y, float z, float w)
{
	float p = x * y;
	float r = z * w;
	return p + r;
}

/* Channel c (kv head * hs + i) of key s: K's, or a fused layer's a K + a2 K2. */
static inline float key_at(const struct att *a, int64_t s, int64_t c)
{
	float k = kv_row(a->kblk, a->bshift, a->ldk, s)[c];
	if (!a->f)
		return k;
	return sum_of_products(a->f->a[c], k, a->f->a2[c],
			       kv_row(a->f->k2blk, a->bshift, a->ldk, s)[c]);
}

/* Channel c of value s, likewise. */
static inline float value_at(const struct att *a, int64_t s, int64_t c)
{
	float v = kv_row(a->vblk, a->bshift, a->ldv, s)[c];
	if (!a->f)
		return v;
	return sum_of_products(a->f->b[c], v, a->f->b2[c],
			       kv_row(a->f->v2blk, a->bshift, a->ldv, s)[c]);
}

/* The first position of the block after position s's. */
static inline int64_t block_end(int bshift, int64_t s)
{
	return (s | (((int64_t)1 << bshift) - 1)) + 1;
}

/* Query row r (clamped to the last) may see keys 0..key_limit-1. */
static inline int64_t key_limit(const struct att *a, int64_t r)
{
	if (r > a->nq - 1)
		r = a->nq - 1;
	if (!a->causal)
		return a->nkeys;
	return (a->qpos ? a->qpos[r] : a->pos0 + r) + 1;
}

/*
 * Reference: for each query row, pass 1 finds the max score, pass 2 sums exp(score - max)
 * and accumulates exp(score - max) * v into out, which is then divided by the sum. A row reads
 * only its own keys, so its bits depend on nothing else in the call.
 */
static void attention_ref(const struct att *a)
{
	const int64_t hs = a->hs, group = a->n_heads / a->n_kv_heads;
	const float scale = 1.0f / sqrtf((float)hs);
	for (int64_t r = 0; r < a->nq; r++) {
		const int64_t end = key_limit(a, r); /* keys 0..end-1 */
		for (int64_t h = 0; h < a->n_heads; h++) {
			const float *qt = a->q + r * a->ldq + h * hs; /* [hs] */
			float *ot = a->out + r * a->ldo + h * hs;	/* [hs] */
			const int64_t kvh = h / group;
			float max_val = -INFINITY;
			for (int64_t s = 0; s < end; s++) {
				float score = 0.0f;
				for (int64_t i = 0; i < hs; i++)
					score += qt[i] * key_at(a, s, kvh * hs + i);
				score *= scale;
				if (score > max_val)
					max_val = score;
			}
			for (int64_t i = 0; i < hs; i++)
				ot[i] = 0.0f;
			float sum = 0.0f;
			for (int64_t s = 0; s < end; s++) {
				float score = 0.0f;
				for (int64_t i = 0; i < hs; i++)
					score += qt[i] * key_at(a, s, kvh * hs + i);
				float p = expf(score * scale - max_val);
				sum += p;
				for (int64_t i = 0; i < hs; i++)
					ot[i] += p * value_at(a, s, kvh * hs + i);
			}
			for (int64_t i = 0; i < hs; i++)
				ot[i] /= sum;
		}
	}
}

/*
 * The tiled variants. Per kv head, K is transposed once into kt [hs][ldkt] (ldkt: nkeys rounded
 * up to the key block, the padding zero) so that a block of BK keys is BK/lanes vectors per
 * dimension. Per head and block of BQ query rows:
 *   S[BQ][BK] = Q . K^T, a register tile (broadcast q[r][i], FMA with the kt row);
 *   per row: masked to the keys it may see, max m_new = max(m, max S), c = e^(m - m_new),
 *   P = e^(S * scale - m_new) (the vector exp, within 2 ulp), l = l c + sum P;
 *   O[BQ][hs] = O c + P . V, a register tile per HC columns (broadcast p[r][j], FMA with v[j]);
 * and finally out = O / l. O lives in ob [BQ][hsp] (hsp: hs rounded up to HC), so the tiles
 * load and store it unmasked. A block's last rows past nq repeat row nq-1 and are dropped.
 * Causal blocks stop at the key of the block's last row (rows ascend); each row masks the keys
 * after its own position.
 *
 * Batch invariance: key blocks start at key 0 and hold BK keys whatever the call, so a key sits
 * in the same lane of the same block for every row that sees it, and each row's scores, max,
 * sums and P.V run in an order fixed by its position alone. A block entirely past a row
 * (causal, reached for a later row of its query block) is masked whole for it: its max is -inf,
 * c = e^0 = 1 exactly, P = +0, so m, l and O are multiplied by 1 and added +0 and 0 * v: unchanged
 * for finite v, but for the sign of a zero:
 *
 * Signed zeros: a key a row may not see still passes through the P.V tile when another row of
 * its block sees it, as O + 0 * v, which is O itself unless O is -0 (a running sum a rescale c
 * rounded to zero) and 0 * v is +0. A row's O thus depends on its neighbours only in the sign
 * of a zero, and the output is written as inv O + 0, where either zero becomes +0: a causal row
 * is the same bits whatever rows share its call.
 *
 * Scratch: kt and ob live in a per-thread buffer kept from call to call (see scratch()). When it
 * cannot be had (allocation failure, or lbk_attention_scratch_limit), the same code runs from the
 * stack: each key block is transposed into a tile, KT_TILE dimensions at a time, and O is kept
 * HC columns at a time (the scores recomputed for each HC columns). Every output is then made by
 * the same operations on the same values in the same order: the same bits, only slower.
 */
#define A512_BQ 8  /* query rows a block: 8 x 2 score vectors, 16 of the 32 zmm */
#define A512_BK 32 /* keys a block: 2 zmm of scores a row */
#define A512_HC 32 /* V columns a P.V pass: 8 x 2 accumulators */
#define A256_BQ 6  /* AVX2: 6 x 2 ymm scores, 12 of the 16 ymm */
#define A256_BK 16
#define A256_HC 16
#define KT_TILE 64 /* dimensions of a key block the scratch-free path transposes at a time */

#if defined(__clang__)
#define LBK_UNROLL _Pragma("unroll")
#else
#define LBK_UNROLL _Pragma("GCC unroll 16")
#endif

static int64_t round_up(int64_t x, int64_t to)
{
	return (x + to - 1) / to * to;
}

/*
 * The calling thread's scratch of at least bytes (a multiple of 64), 64-byte aligned; NULL when
 * it cannot be had. Grown by half again at least, never shrunk; the pthread key's destructor
 * frees it when the thread exits (the main thread's stays reachable until the process ends).
 */
static _Thread_local struct {
	float *p;
	size_t cap;
} tl_scratch;
static pthread_key_t scratch_key;
static int scratch_key_ok;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static atomic_size_t g_scratch_limit = SIZE_MAX; /* lbk_attention_scratch_limit */

static void scratch_key_make(void)
{
	scratch_key_ok = pthread_key_create(&scratch_key, free) == 0;
}

static float *scratch(size_t bytes)
{
	const size_t limit = atomic_load_explicit(&g_scratch_limit, memory_order_relaxed);
	if (bytes > limit)
		return NULL;
	if (bytes <= tl_scratch.cap)
		return tl_scratch.p;
	pthread_once(&scratch_once, scratch_key_make);
	if (!scratch_key_ok) /* no destructor: a thread's buffer would leak at its exit */
		return NULL;
	size_t want = tl_scratch.cap + tl_scratch.cap / 2;
	want = want < bytes ? bytes : want > limit ? bytes : (want + 63) & ~(size_t)63;
	float *p = aligned_alloc(64, want);
	if (!p)
		return NULL;
	if (pthread_setspecific(scratch_key, p) != 0) { /* the key still holds the old buffer */
		free(p);
		return NULL;
	}
	free(tl_scratch.p);
	tl_scratch.p = p;
	tl_scratch.cap = want;
	return p;
}

void lbk_attention_scratch_limit(size_t bytes)
{
	atomic_store_explicit(&g_scratch_limit, bytes, memory_order_relaxed);
}

/*
 * kt[i][s] = k[s][kvh][i] for s < nkeys, 0 for nkeys <= s < ldkt. Sixteen keys a pass, so that
 * each pass writes whole cache lines of kt's rows (key by key, a kt row of ldkt floats apart
 * from the next, every store would miss).
 */
static void transpose_k(float *kt, int64_t ldkt, const struct att *a, int64_t kvh)
{
	enum { TS = 16 };
	const int64_t hs = a->hs;
	for (int64_t s0 = 0; s0 < a->nkeys; s0 += TS) {
		const int64_t n = a->nkeys - s0 < TS ? a->nkeys - s0 : TS;
		const float *ks[TS];
		if (a->f) { /* rebuilt as they are transposed */
			for (int64_t i = 0; i < hs; i++)
				for (int64_t j = 0; j < n; j++)
					kt[i * ldkt + s0 + j] = key_at(a, s0 + j, kvh * hs + i);
			continue;
		}
		for (int64_t j = 0; j < n; j++)
			ks[j] = kv_row(a->kblk, a->bshift, a->ldk, s0 + j) + kvh * hs;
		for (int64_t i = 0; i < hs; i++)
			for (int64_t j = 0; j < n; j++)
				kt[i * ldkt + s0 + j] = ks[j][i];
	}
	for (int64_t i = 0; i < hs; i++)
		for (int64_t s = a->nkeys; s < ldkt; s++)
			kt[i * ldkt + s] = 0.0f;
}

/* The scratch-free path's tile[i][j] = k[k0 + j][kvh][i0 + i] for i < ni and j < nk, 0 for
 * nk <= j < bk: dimensions i0..i0+ni-1 of a key block. */
static void tile_k(float *tile, int64_t bk, const struct att *a, int64_t kvh, int64_t k0,
		   int64_t nk, int64_t i0, int64_t ni)
{
	for (int64_t j = 0; j < nk; j++) {
		const float *ks = kv_row(a->kblk, a->bshift, a->ldk, k0 + j) + kvh * a->hs + i0;
		for (int64_t i = 0; i < ni; i++)
			tile[i * bk + j] = a->f ? key_at(a, k0 + j, kvh * a->hs + i0 + i) : ks[i];
	}
	for (int64_t i = 0; i < ni; i++)
		for (int64_t j = nk; j < bk; j++)
			tile[i * bk + j] = 0.0f;
}

/*
 * The head functions: head h, output columns cb..ce-1 (all of hs; or one HC-column slice, in the
 * scratch-free path). kt: the kv head's K transposed [hs][ldkt], or NULL: each key block is then
 * transposed into tile, KT_TILE dimensions at a time. ob [BQ][ldob]: O of columns cb..ce-1.
 */

/* ---- AVX-512 ---- */

static LBK_TARGET_AVX512 void head_avx512(const struct att *a, int64_t h, const float *kt,
					  int64_t ldkt, float *ob, int64_t ldob, int64_t cb, int64_t ce)
{
	enum { BQ = A512_BQ, BK = A512_BK, HC = A512_HC };
	const int64_t hs = a->hs, nq = a->nq;
	const int64_t kvh = h / (a->n_heads / a->n_kv_heads);
	const __m512 scale = _mm512_set1_ps(1.0f / sqrtf((float)hs));
	const __m512 ninf = _mm512_set1_ps(-INFINITY);
	float pb[BQ][BK] __attribute__((aligned(64))); /* P of the block */
	float tile[KT_TILE * BK] __attribute__((aligned(64)));
	float m[BQ], l[BQ], c[BQ];
	int64_t lim[BQ]; /* row r sees keys 0..lim[r]-1 */
	for (int64_t q0 = 0; q0 < nq; q0 += BQ) {
		const int64_t rows = nq - q0 < BQ ? nq - q0 : BQ;
		const int64_t kend = key_limit(a, q0 + rows - 1); /* rows ascend */
		const float *qr[BQ];
		for (int r = 0; r < BQ; r++) {
			qr[r] = a->q + (q0 + r < nq ? q0 + r : nq - 1) * a->ldq + h * hs;
			lim[r] = key_limit(a, q0 + r);
			m[r] = -INFINITY;
			l[r] = 0.0f;
		}
		memset(ob, 0, (size_t)(BQ * ldob) * sizeof(float));
		for (int64_t k0 = 0; k0 < kend; k0 += BK) {
			const int64_t nk = kend - k0 < BK ? kend - k0 : BK;
			__m512 s[BQ][2];
			LBK_UNROLL
			for (int r = 0; r < BQ; r++)
				s[r][0] = s[r][1] = _mm512_setzero_ps();
			for (int64_t i0 = 0, ni; i0 < hs; i0 += ni) {
				const float *b = kt ? kt + k0 : tile, *qi[BQ];
				const int64_t ld = kt ? ldkt : BK;
				ni = kt ? hs : hs - i0 < KT_TILE ? hs - i0 : KT_TILE;
				if (!kt)
					tile_k(tile, BK, a, kvh, k0, nk, i0, ni);
				for (int r = 0; r < BQ; r++)
					qi[r] = qr[r] + i0;
				for (int64_t i = 0; i < ni; i++) {
					__m512 b0 = _mm512_load_ps(b + i * ld), b1 = _mm512_load_ps(b + i * ld + 16);
					LBK_UNROLL
					for (int r = 0; r < BQ; r++) {
						__m512 qv = _mm512_set1_ps(qi[r][i]);
						s[r][0] = _mm512_fmadd_ps(qv, b0, s[r][0]);
						s[r][1] = _mm512_fmadd_ps(qv, b1, s[r][1]);
					}
				}
			}
			LBK_UNROLL
			for (int r = 0; r < BQ; r++) {
				/* scaled scores, -inf where row r may not look (causal, or past nkeys) */
				const int64_t nv = lim[r] - k0;
				const __mmask16 v0 = lbk_mask16(nv), v1 = lbk_mask16(nv - 16);
				__m512 x0 = _mm512_mask_mul_ps(ninf, v0, s[r][0], scale);
				__m512 x1 = _mm512_mask_mul_ps(ninf, v1, s[r][1], scale);
				float mx = _mm512_reduce_max_ps(_mm512_max_ps(x0, x1));
				float mn = mx > m[r] ? mx : m[r];
				/* mn is finite: key 0 is in every row's first block */
				c[r] = expf(m[r] - mn); /* 0 on the first block (m = -inf) */
				m[r] = mn;
				__m512 mv = _mm512_set1_ps(mn);
				__m512 p0 = _mm512_maskz_mov_ps(v0, lbk_exp512(_mm512_sub_ps(x0, mv)));
				__m512 p1 = _mm512_maskz_mov_ps(v1, lbk_exp512(_mm512_sub_ps(x1, mv)));
				l[r] = l[r] * c[r] + _mm512_reduce_add_ps(_mm512_add_ps(p0, p1));
				_mm512_store_ps(pb[r], p0);
				_mm512_store_ps(pb[r] + 16, p1);
			}
			for (int64_t c0 = cb; c0 < ce; c0 += HC) {
				const __mmask16 mk0 = lbk_mask16(ce - c0), mk1 = lbk_mask16(ce - c0 - 16);
				float *oc = ob + (c0 - cb);
				__m512 o[BQ][2];
				LBK_UNROLL
				for (int r = 0; r < BQ; r++) {
					__m512 cr = _mm512_set1_ps(c[r]);
					o[r][0] = _mm512_mul_ps(cr, _mm512_load_ps(oc + r * ldob));
					o[r][1] = _mm512_mul_ps(cr, _mm512_load_ps(oc + r * ldob + 16));
				}
				/* a fused layer's value weights of these columns (else unused) */
				const int64_t cc = kvh * hs + c0;
				__m512 b0 = _mm512_setzero_ps(), b1 = b0, c0v = b0, c1v = b0;
				if (a->f) {
					b0 = _mm512_maskz_loadu_ps(mk0, a->f->b + cc);
					b1 = _mm512_maskz_loadu_ps(mk1, a->f->b + cc + 16);
					c0v = _mm512_maskz_loadu_ps(mk0, a->f->b2 + cc);
					c1v = _mm512_maskz_loadu_ps(mk1, a->f->b2 + cc + 16);
				}
				/* keys k0+j0 .. k0+j1-1: a run of rows of one block */
				for (int64_t j0 = 0, j1; j0 < nk; j0 = j1) {
					const float *vj = kv_row(a->vblk, a->bshift, a->ldv, k0 + j0) + cc;
					const float *wj = a->f ? kv_row(a->f->v2blk, a->bshift, a->ldv, k0 + j0) + cc
							       : vj;
					j1 = block_end(a->bshift, k0 + j0) - k0;
					j1 = j1 < nk ? j1 : nk;
					for (int64_t j = j0; j < j1; j++, vj += a->ldv, wj += a->ldv) {
						__m512 v0 = _mm512_maskz_loadu_ps(mk0, vj);
						__m512 v1 = _mm512_maskz_loadu_ps(mk1, vj + 16);
						if (a->f) { /* b V + b2 V2 as value_at rounds it */
							v0 = _mm512_add_ps(_mm512_mul_ps(b0, v0),
									   _mm512_mul_ps(c0v, _mm512_maskz_loadu_ps(mk0, wj)));
							v1 = _mm512_add_ps(_mm512_mul_ps(b1, v1),
									   _mm512_mul_ps(c1v, _mm512_maskz_loadu_ps(mk1, wj + 16)));
						}
						LBK_UNROLL
						for (int r = 0; r < BQ; r++) {
							__m512 p = _mm512_set1_ps(pb[r][j]);
							o[r][0] = _mm512_fmadd_ps(p, v0, o[r][0]);
							o[r][1] = _mm512_fmadd_ps(p, v1, o[r][1]);
						}
					}
				}
				LBK_UNROLL
				for (int r = 0; r < BQ; r++) {
					_mm512_store_ps(oc + r * ldob, o[r][0]);
					_mm512_store_ps(oc + r * ldob + 16, o[r][1]);
				}
			}
		}
		for (int64_t r = 0; r < rows; r++) {
			float *ot = a->out + (q0 + r) * a->ldo + h * hs;
			__m512 inv = _mm512_set1_ps(1.0f / l[r]);
			/* inv O + 0: a zero leaves as +0 (see "signed zeros" above) */
			for (int64_t i = cb; i < ce; i += 16)
				_mm512_mask_storeu_ps(ot + i, lbk_mask16(ce - i),
						      _mm512_fmadd_ps(inv, _mm512_load_ps(ob + r * ldob + (i - cb)),
								      _mm512_setzero_ps()));
		}
	}
}

/* ---- AVX2 (the same algorithm in 8 lanes) ---- */

static LBK_TARGET_AVX2 void head_avx2(const struct att *a, int64_t h, const float *kt,
				      int64_t ldkt, float *ob, int64_t ldob, int64_t cb, int64_t ce)
{
	enum { BQ = A256_BQ, BK = A256_BK, HC = A256_HC };
	const int64_t hs = a->hs, nq = a->nq;
	const int64_t kvh = h / (a->n_heads / a->n_kv_heads);
	const __m256 scale = _mm256_set1_ps(1.0f / sqrtf((float)hs));
	const __m256 ninf = _mm256_set1_ps(-INFINITY);
	float pb[BQ][BK] __attribute__((aligned(32)));
	float tile[KT_TILE * BK] __attribute__((aligned(32)));
	float m[BQ], l[BQ], c[BQ];
	int64_t lim[BQ];
	for (int64_t q0 = 0; q0 < nq; q0 += BQ) {
		const int64_t rows = nq - q0 < BQ ? nq - q0 : BQ;
		const int64_t kend = key_limit(a, q0 + rows - 1); /* rows ascend */
		const float *qr[BQ];
		for (int r = 0; r < BQ; r++) {
			qr[r] = a->q + (q0 + r < nq ? q0 + r : nq - 1) * a->ldq + h * hs;
			lim[r] = key_limit(a, q0 + r);
			m[r] = -INFINITY;
			l[r] = 0.0f;
		}
		memset(ob, 0, (size_t)(BQ * ldob) * sizeof(float));
		for (int64_t k0 = 0; k0 < kend; k0 += BK) {
			const int64_t nk = kend - k0 < BK ? kend - k0 : BK;
			__m256 s[BQ][2];
			LBK_UNROLL
			for (int r = 0; r < BQ; r++)
				s[r][0] = s[r][1] = _mm256_setzero_ps();
			for (int64_t i0 = 0, ni; i0 < hs; i0 += ni) {
				const float *b = kt ? kt + k0 : tile, *qi[BQ];
				const int64_t ld = kt ? ldkt : BK;
				ni = kt ? hs : hs - i0 < KT_TILE ? hs - i0 : KT_TILE;
				if (!kt)
					tile_k(tile, BK, a, kvh, k0, nk, i0, ni);
				for (int r = 0; r < BQ; r++)
					qi[r] = qr[r] + i0;
				for (int64_t i = 0; i < ni; i++) {
					__m256 b0 = _mm256_load_ps(b + i * ld), b1 = _mm256_load_ps(b + i * ld + 8);
					LBK_UNROLL
					for (int r = 0; r < BQ; r++) {
						__m256 qv = _mm256_broadcast_ss(qi[r] + i);
						s[r][0] = _mm256_fmadd_ps(qv, b0, s[r][0]);
						s[r][1] = _mm256_fmadd_ps(qv, b1, s[r][1]);
					}
				}
			}
			for (int r = 0; r < BQ; r++) {
				const int64_t nv = lim[r] - k0;
				const __m256 v0 = _mm256_castsi256_ps(lbk_mask8(nv));
				const __m256 v1 = _mm256_castsi256_ps(lbk_mask8(nv - 8));
				__m256 x0 = _mm256_blendv_ps(ninf, _mm256_mul_ps(s[r][0], scale), v0);
				__m256 x1 = _mm256_blendv_ps(ninf, _mm256_mul_ps(s[r][1], scale), v1);
				float mx = lbk_hmax256(_mm256_max_ps(x0, x1));
				float mn = mx > m[r] ? mx : m[r];
				c[r] = expf(m[r] - mn);
				m[r] = mn;
				__m256 mv = _mm256_set1_ps(mn);
				__m256 p0 = _mm256_and_ps(v0, lbk_exp256(_mm256_sub_ps(x0, mv)));
				__m256 p1 = _mm256_and_ps(v1, lbk_exp256(_mm256_sub_ps(x1, mv)));
				l[r] = l[r] * c[r] + lbk_hsum256(_mm256_add_ps(p0, p1));
				_mm256_store_ps(pb[r], p0);
				_mm256_store_ps(pb[r] + 8, p1);
			}
			for (int64_t c0 = cb; c0 < ce; c0 += HC) {
				const __m256i mk0 = lbk_mask8(ce - c0), mk1 = lbk_mask8(ce - c0 - 8);
				float *oc = ob + (c0 - cb);
				__m256 o[BQ][2];
				LBK_UNROLL
				for (int r = 0; r < BQ; r++) {
					__m256 cr = _mm256_set1_ps(c[r]);
					o[r][0] = _mm256_mul_ps(cr, _mm256_load_ps(oc + r * ldob));
					o[r][1] = _mm256_mul_ps(cr, _mm256_load_ps(oc + r * ldob + 8));
				}
				/* a fused layer's value weights of these columns (else unused) */
				const int64_t cc = kvh * hs + c0;
				__m256 b0 = _mm256_setzero_ps(), b1 = b0, c0v = b0, c1v = b0;
				if (a->f) {
					b0 = _mm256_maskload_ps(a->f->b + cc, mk0);
					b1 = _mm256_maskload_ps(a->f->b + cc + 8, mk1);
					c0v = _mm256_maskload_ps(a->f->b2 + cc, mk0);
					c1v = _mm256_maskload_ps(a->f->b2 + cc + 8, mk1);
				}
				/* keys k0+j0 .. k0+j1-1: a run of rows of one block */
				for (int64_t j0 = 0, j1; j0 < nk; j0 = j1) {
					const float *vj = kv_row(a->vblk, a->bshift, a->ldv, k0 + j0) + cc;
					const float *wj = a->f ? kv_row(a->f->v2blk, a->bshift, a->ldv, k0 + j0) + cc
							       : vj;
					j1 = block_end(a->bshift, k0 + j0) - k0;
					j1 = j1 < nk ? j1 : nk;
					for (int64_t j = j0; j < j1; j++, vj += a->ldv, wj += a->ldv) {
						__m256 v0 = _mm256_maskload_ps(vj, mk0);
						__m256 v1 = _mm256_maskload_ps(vj + 8, mk1);
						if (a->f) { /* b V + b2 V2 as value_at rounds it */
							v0 = _mm256_add_ps(_mm256_mul_ps(b0, v0),
									   _mm256_mul_ps(c0v, _mm256_maskload_ps(wj, mk0)));
							v1 = _mm256_add_ps(_mm256_mul_ps(b1, v1),
									   _mm256_mul_ps(c1v, _mm256_maskload_ps(wj + 8, mk1)));
						}
						LBK_UNROLL
						for (int r = 0; r < BQ; r++) {
							__m256 p = _mm256_broadcast_ss(&pb[r][j]);
							o[r][0] = _mm256_fmadd_ps(p, v0, o[r][0]);
							o[r][1] = _mm256_fmadd_ps(p, v1, o[r][1]);
						}
					}
				}
				LBK_UNROLL
				for (int r = 0; r < BQ; r++) {
					_mm256_store_ps(oc + r * ldob, o[r][0]);
					_mm256_store_ps(oc + r * ldob + 8, o[r][1]);
				}
			}
		}
		for (int64_t r = 0; r < rows; r++) {
			float *ot = a->out + (q0 + r) * a->ldo + h * hs;
			__m256 inv = _mm256_set1_ps(1.0f / l[r]);
			for (int64_t i = cb; i < ce; i += 8)
				_mm256_maskstore_ps(ot + i, lbk_mask8(ce - i),
						    _mm256_fmadd_ps(inv, _mm256_load_ps(ob + r * ldob + (i - cb)),
								    _mm256_setzero_ps()));
		}
	}
}

static void head(enum lbk_isa isa, const struct att *a, int64_t h, const float *kt, int64_t ldkt,
		 float *ob, int64_t ldob, int64_t cb, int64_t ce)
{
	if (isa == LBK_ISA_AVX512)
		head_avx512(a, h, kt, ldkt, ob, ldob, cb, ce);
	else
		head_avx2(a, h, kt, ldkt, ob, ldob, cb, ce);
}

/*
 * A fused call's keys and values rebuilt once, as key_at and value_at round them, into kf and vf
 * [nkeys][n_kv_heads * hs]; *b is a's call on them as one block each, nothing left to fuse, so
 * that the heads read them as a plain layer's (rebuilt inside the heads, a kv head's keys were
 * made again for each head of its group and its values for each head and query block).
 */
/* out[c] = w[c] x[c] + w2[c] y[c] for c < n, each product rounded, then the sum
 * (sum_of_products), 16 lanes at a time. */
static LBK_TARGET_AVX512 void fuse_row_avx512(float *out, const float *w, const float *x,
					      const float *w2, const float *y, int64_t n)
{
	for (int64_t c = 0; c < n; c += 16) {
		const __mmask16 k = lbk_mask16(n - c);
		__m512 p = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, w + c), _mm512_maskz_loadu_ps(k, x + c));
		__m512 r = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, w2 + c),
					 _mm512_maskz_loadu_ps(k, y + c));
		_mm512_mask_storeu_ps(out + c, k, _mm512_add_ps(p, r));
	}
}

static void fuse_row(enum lbk_isa isa, float *out, const float *w, const float *x,
		     const float *w2, const float *y, int64_t n)
{
	if (isa == LBK_ISA_AVX512) {
		fuse_row_avx512(out, w, x, w2, y, n);
		return;
	}
	for (int64_t c = 0; c < n; c++)
		out[c] = sum_of_products(w[c], x[c], w2[c], y[c]);
}

static void rebuild(const struct att *a, enum lbk_isa isa, float *kf, float *vf,
		    const float **kb, const float **vb, struct att *b)
{
	const int64_t kvd = a->n_kv_heads * a->hs;
	const struct lbk_fused *f = a->f;
	for (int64_t s = 0; s < a->nkeys; s++) {
		fuse_row(isa, kf + s * kvd, f->a, kv_row(a->kblk, a->bshift, a->ldk, s), f->a2,
			 kv_row(f->k2blk, a->bshift, a->ldk, s), kvd);
		fuse_row(isa, vf + s * kvd, f->b, kv_row(a->vblk, a->bshift, a->ldv, s), f->b2,
			 kv_row(f->v2blk, a->bshift, a->ldv, s), kvd);
	}
	*kb = kf;
	*vb = vf;
	*b = *a;
	b->kblk = kb;
	b->vblk = vb;
	b->ldk = b->ldv = kvd;
	b->bshift = ONE_BLOCK;
	b->f = NULL;
}

/* The tiled variant of isa: from the thread's scratch, or without it (the same bits). */
static void attention_tiled(const struct att *a, enum lbk_isa isa)
{
	const int64_t bk = isa == LBK_ISA_AVX512 ? A512_BK : A256_BK;
	const int64_t bq = isa == LBK_ISA_AVX512 ? A512_BQ : A256_BQ;
	const int64_t hc = isa == LBK_ISA_AVX512 ? A512_HC : A256_HC;
	const int64_t hsp = round_up(a->hs, hc), hs = a->hs;
	/* kt's rows ldkt floats apart: keys rounded up to the key block, and one more block when
	 * that is a multiple of 1 KiB, whose rows would share the same few L1 sets */
	int64_t ldkt = round_up(a->nkeys, bk);
	if (ldkt % 256 == 0)
		ldkt += bk;
	const int64_t group = a->n_heads / a->n_kv_heads;
	/* kt [hs][ldkt], then ob [bq][hsp]: both multiples of 16 floats (64 bytes); a fused call's
	 * rebuilt keys and values after them */
	int64_t kt_floats, bytes, kv_floats = 0;
	float *kt = NULL;
	if (!__builtin_mul_overflow(hs, ldkt, &kt_floats) &&
	    !__builtin_add_overflow(kt_floats, bq * hsp, &bytes) &&
	    (!a->f || (!__builtin_mul_overflow(a->nkeys, a->n_kv_heads * hs, &kv_floats) &&
		       !__builtin_add_overflow(bytes, 2 * kv_floats, &bytes))) &&
	    !__builtin_mul_overflow(bytes, (int64_t)sizeof(float), &bytes))
		kt = scratch((size_t)bytes);
	if (kt) {
		struct att b;
		const float *kb, *vb;
		const struct att *p = a;
		if (a->f) {
			float *kf = kt + kt_floats + bq * hsp;
			rebuild(a, isa, kf, kf + kv_floats, &kb, &vb, &b);
			p = &b;
		}
		for (int64_t kvh = 0; kvh < p->n_kv_heads; kvh++) {
			transpose_k(kt, ldkt, p, kvh);
			for (int64_t h = kvh * group; h < (kvh + 1) * group; h++)
				head(isa, p, h, kt, ldkt, kt + kt_floats, hsp, 0, hs);
		}
		return;
	}
	/* no scratch: HC columns of O at a time, from the stack */
	_Static_assert(A512_BQ * A512_HC >= A256_BQ * A256_HC, "ob below holds either tier's");
	float ob[A512_BQ * A512_HC] __attribute__((aligned(64)));
	for (int64_t h = 0; h < a->n_heads; h++)
		for (int64_t cb = 0; cb < hs; cb += hc)
			head(isa, a, h, NULL, 0, ob, hc, cb, cb + hc < hs ? cb + hc : hs);
}

/* a on this call's tier: the reference on the scalar one. */
static void attention_run(const struct att *a)
{
	enum lbk_isa isa = lbk_isa();
	if (isa == LBK_ISA_SCALAR)
		attention_ref(a);
	else
		attention_tiled(a, isa);
}

/* Nonzero when a's sizes leave anything to do (the public entries' "nothing is done" rule);
 * nkeys up to 2^ONE_BLOCK: one block of a contiguous sequence holds them all. */
static int att_valid(const struct att *a)
{
	return a->nq > 0 && a->nkeys <= ((int64_t)1 << ONE_BLOCK) && a->n_heads > 0 &&
	       a->n_kv_heads > 0 && a->hs > 0 && a->n_heads % a->n_kv_heads == 0;
}

/* A contiguous sequence as a table of one block: *kb = k, *vb = v. */
static struct att att_contiguous(float *out, int64_t ldo, const float *q, int64_t ldq,
				 const float *const *kb, int64_t ldk, const float *const *vb,
				 int64_t ldv, int64_t seq, int64_t n_heads, int64_t n_kv_heads,
				 int64_t hs, int causal)
{
	return (struct att){ .out = out, .q = q, .kblk = kb, .vblk = vb, .ldo = ldo, .ldq = ldq,
			     .ldk = ldk, .ldv = ldv, .bshift = ONE_BLOCK, .pos0 = 0, .nq = seq,
			     .nkeys = seq, .n_heads = n_heads, .n_kv_heads = n_kv_heads, .hs = hs,
			     .causal = causal };
}

void lbk_attention_strided(float *out, int64_t ldo, const float *q, int64_t ldq, const float *k,
			   int64_t ldk, const float *v, int64_t ldv, int64_t seq, int64_t n_heads,
			   int64_t n_kv_heads, int64_t hs, int causal)
{
	const float *kb = k, *vb = v;
	struct att a = att_contiguous(out, ldo, q, ldq, &kb, ldk, &vb, ldv, seq, n_heads,
				      n_kv_heads, hs, causal);
	if (att_valid(&a))
		attention_run(&a);
}

void lbk_attention(float *out, const float *q, const float *k, const float *v, int64_t seq,
		   int64_t n_heads, int64_t n_kv_heads, int64_t hs, int causal)
{
	lbk_attention_strided(out, n_heads * hs, q, n_heads * hs, k, n_kv_heads * hs, v,
			      n_kv_heads * hs, seq, n_heads, n_kv_heads, hs, causal);
}

void lbk_attention_ref(float *out, const float *q, const float *k, const float *v, int64_t seq,
		       int64_t n_heads, int64_t n_kv_heads, int64_t hs, int causal)
{
	const float *kb = k, *vb = v;
	struct att a = att_contiguous(out, n_heads * hs, q, n_heads * hs, &kb, n_kv_heads * hs, &vb,
				      n_kv_heads * hs, seq, n_heads, n_kv_heads, hs, causal);
	if (att_valid(&a))
		attention_ref(&a);
}

/* The causal call lbk_attention_paged describes; 0 when its arguments leave nothing to do. */
static int att_paged(struct att *a, float *out, int64_t ldo, const float *q, int64_t ldq,
		     int64_t pos0, int64_t nq, const float *const *kblk, const float *const *vblk,
		     int64_t ldk, int64_t ldv, int bshift, int64_t n_heads, int64_t n_kv_heads,
		     int64_t hs)
{
	if (pos0 < 0 || nq < 1 || pos0 > INT64_MAX - nq || bshift < 0 || bshift > ONE_BLOCK)
		return 0;
	*a = (struct att){ .out = out, .q = q, .kblk = kblk, .vblk = vblk, .ldo = ldo, .ldq = ldq,
			   .ldk = ldk, .ldv = ldv, .bshift = bshift, .pos0 = pos0, .nq = nq,
			   .nkeys = pos0 + nq, .n_heads = n_heads, .n_kv_heads = n_kv_heads, .hs = hs,
			   .causal = 1 };
	return att_valid(a);
}

void lbk_attention_paged(float *out, int64_t ldo, const float *q, int64_t ldq, int64_t pos0,
			 int64_t nq, const float *const *kblk, const float *const *vblk,
			 int64_t ldk, int64_t ldv, int bshift, int64_t n_heads, int64_t n_kv_heads,
			 int64_t hs)
{
	struct att a;
	if (att_paged(&a, out, ldo, q, ldq, pos0, nq, kblk, vblk, ldk, ldv, bshift, n_heads,
		      n_kv_heads, hs))
		attention_run(&a);
}

void lbk_attention_paged_ref(float *out, int64_t ldo, const float *q, int64_t ldq, int64_t pos0,
			     int64_t nq, const float *const *kblk, const float *const *vblk,
			     int64_t ldk, int64_t ldv, int bshift, int64_t n_heads,
			     int64_t n_kv_heads, int64_t hs)
{
	struct att a;
	if (att_paged(&a, out, ldo, q, ldq, pos0, nq, kblk, vblk, ldk, ldv, bshift, n_heads,
		      n_kv_heads, hs))
		attention_ref(&a);
}

void lbk_attention_paged_fused(float *out, int64_t ldo, const float *q, int64_t ldq, int64_t pos0,
			       int64_t nq, const float *const *kblk, const float *const *vblk,
			       int64_t ldk, int64_t ldv, int bshift, int64_t n_heads,
			       int64_t n_kv_heads, int64_t hs, const struct lbk_fused *f)
{
	struct att a;
	if (f && att_paged(&a, out, ldo, q, ldq, pos0, nq, kblk, vblk, ldk, ldv, bshift, n_heads,
			   n_kv_heads, hs)) {
		a.f = f;
		attention_run(&a);
	}
}

void lbk_attention_paged_fused_ref(float *out, int64_t ldo, const float *q, int64_t ldq,
				   int64_t pos0, int64_t nq, const float *const *kblk,
				   const float *const *vblk, int64_t ldk, int64_t ldv, int bshift,
				   int64_t n_heads, int64_t n_kv_heads, int64_t hs,
				   const struct lbk_fused *f)
{
	struct att a;
	if (f && att_paged(&a, out, ldo, q, ldq, pos0, nq, kblk, vblk, ldk, ldv, bshift, n_heads,
			   n_kv_heads, hs)) {
		a.f = f;
		attention_ref(&a);
	}
}

/* The call lbk_attention_rows describes; 0 when its arguments leave nothing to do (pos not
 * strictly ascending within 0..nkeys-1 among them). */
static int att_rows(struct att *a, float *out, int64_t ldo, const float *q, int64_t ldq,
		    const int64_t *pos, int64_t nq, const float *const *kb, int64_t ldk,
		    const float *const *vb, int64_t ldv, int64_t nkeys, int64_t n_heads,
		    int64_t n_kv_heads, int64_t hs, int causal)
{
	if (nq < 1 || !pos || pos[0] < 0 || pos[nq - 1] >= nkeys)
		return 0;
	for (int64_t r = 1; r < nq; r++)
		if (pos[r] <= pos[r - 1])
			return 0;
	*a = att_contiguous(out, ldo, q, ldq, kb, ldk, vb, ldv, nq, n_heads, n_kv_heads, hs,
			    causal);
	a->qpos = pos;
	a->nkeys = causal ? pos[nq - 1] + 1 : nkeys; /* no causal row sees past the last one */
	return att_valid(a);
}

void lbk_attention_rows(float *out, int64_t ldo, const float *q, int64_t ldq, const int64_t *pos,
			int64_t nq, const float *k, int64_t ldk, const float *v, int64_t ldv,
			int64_t nkeys, int64_t n_heads, int64_t n_kv_heads, int64_t hs, int causal)
{
	const float *kb = k, *vb = v;
	struct att a;
	if (att_rows(&a, out, ldo, q, ldq, pos, nq, &kb, ldk, &vb, ldv, nkeys, n_heads, n_kv_heads,
		     hs, causal))
		attention_run(&a);
}

void lbk_attention_rows_ref(float *out, int64_t ldo, const float *q, int64_t ldq,
			    const int64_t *pos, int64_t nq, const float *k, int64_t ldk,
			    const float *v, int64_t ldv, int64_t nkeys, int64_t n_heads,
			    int64_t n_kv_heads, int64_t hs, int causal)
{
	const float *kb = k, *vb = v;
	struct att a;
	if (att_rows(&a, out, ldo, q, ldq, pos, nq, &kb, ldk, &vb, ldv, nkeys, n_heads, n_kv_heads,
		     hs, causal))
		attention_ref(&a);
}
