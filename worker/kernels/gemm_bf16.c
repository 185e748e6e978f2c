/* The bf16 GEMM: W rounded to bfloat16 and packed once in k-pair-interleaved panels, x rounded
 * per call (vcvtne2ps2bf16), an AVX512_BF16 micro-kernel (vdpbf16ps) with fp32 accumulators,
 * its plain-C reference, and the plain-C loop the tiers without AVX512_BF16 run. */
#include <errno.h>
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "simd.h"

/*
 * Micro-kernel tile: LBK_BMR rows of x by LBK_BNR columns of W (LBK_BNV zmm vectors), 24 fp32
 * accumulators, 3 W vectors and a broadcast, as the fp32 kernel's tile; per k pair: 3 loads of
 * W (16 columns x 2 k each), 8 broadcasts of an x pair (32 bits), 24 vdpbf16ps.
 * LBK_BKC bounds the k slice (in k, even): the panel slice (LBK_BKC * LBK_BNR bf16, 144 KiB)
 * and the x slice (m * LBK_BKC bf16, 384 KiB at m = 128) stay in L2, the sizes the fp32
 * kernel's LBK_KC gives in fp32.
 */
#define LBK_BMR 8
#define LBK_BNV 3
#define LBK_BNR (LBK_BNV * 16)
#define LBK_BKC 1536
#define LBK_BPF_STEP 4 /* a prefetch of the next panel slice every this many k pairs */
_Static_assert(LBK_BKC % 2 == 0, "k slices hold whole pairs");

#if defined(__clang__)
#define LBK_UNROLL _Pragma("unroll")
#else
#define LBK_UNROLL _Pragma("GCC unroll 16")
#endif

struct lbk_packed_bf16 {
	int64_t n, k;
	int64_t kp;	/* k rounded up to even */
	int64_t panels; /* ceil(n / LBK_BNR) */
	uint16_t *w;	/* [panels][kp / 2][LBK_BNR][2] bf16: column j's k pair (2p, 2p+1) adjacent;
			 * columns n..panels*LBK_BNR and row k (k odd) zero */
};

uint16_t lbk_bf16_round(float f)
{
	uint32_t u;
	memcpy(&u, &f, sizeof(u));
	if ((u & 0x7f800000u) == 0) /* zero or denormal: the zero of its sign */
		return (uint16_t)((u >> 16) & 0x8000u);
	if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: kept, made quiet */
		return (uint16_t)((u >> 16) | 0x40u);
	return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16); /* nearest even; inf stays */
}

static inline float bf16_float(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;
	memcpy(&f, &u, sizeof(f));
	return f;
}

/* Element l of a row of k floats, rounded, or 0 past its end (the pad of an odd k). */
static inline float bf16_at(const float *row, int64_t l, int64_t k)
{
	return l < k ? bf16_float(lbk_bf16_round(row[l])) : 0.0f;
}

void lbk_gemm_bf16_ref(float *y, const float *x, const float *w, const float *bias, int64_t m,
		       int64_t n, int64_t k)
{
	for (int64_t i = 0; i < m; i++) {
		for (int64_t j = 0; j < n; j++) {
			float val = 0.0f;
			for (int64_t l = 0; l < k; l += 2) {
				/* vdpbf16ps's order: the odd element's product, then the even one's */
				val += bf16_at(x + i * k, l + 1, k) * bf16_at(w + j * k, l + 1, k);
				val += bf16_at(x + i * k, l, k) * bf16_at(w + j * k, l, k);
			}
			y[i * n + j] = bias ? val + bias[j] : val;
		}
	}
}

struct lbk_packed_bf16 *lbk_pack_bf16(const float *w, int64_t n, int64_t k)
{
	if (!w || n <= 0 || k <= 0) {
		errno = EINVAL;
		return NULL;
	}
	struct lbk_packed_bf16 *p = malloc(sizeof(*p));
	if (!p)
		return NULL;
	p->n = n;
	p->k = k;
	p->kp = (k + 1) & ~(int64_t)1;
	p->panels = (n + LBK_BNR - 1) / LBK_BNR;
	size_t bytes = (size_t)p->panels * (size_t)p->kp * LBK_BNR * sizeof(uint16_t);
	bytes = (bytes + 63) & ~(size_t)63;
	p->w = aligned_alloc(64, bytes);
	if (!p->w) {
		free(p);
		errno = ENOMEM;
		return NULL;
	}
	for (int64_t pi = 0; pi < p->panels; pi++) {
		uint16_t *dst = p->w + pi * p->kp * LBK_BNR; /* [kp / 2][LBK_BNR][2] */
		for (int64_t l = 0; l < p->kp; l++) {
			for (int64_t j = 0; j < LBK_BNR; j++) {
				int64_t col = pi * LBK_BNR + j;
				float v = col < n && l < k ? w[col * k + l] : 0.0f;
				dst[(l / 2) * LBK_BNR * 2 + j * 2 + (l & 1)] = lbk_bf16_round(v);
			}
		}
	}
	return p;
}

void lbk_packed_bf16_free(struct lbk_packed_bf16 *p)
{
	if (!p)
		return;
	free(p->w);
	free(p);
}

/* One bf16 GEMM, shared by every thread's share. */
struct gemm_bf16_op {
	float *y;		/* [m][n] */
	const float *x;		/* [m][k] */
	const uint16_t *xb;	/* [m][kp]: x rounded (the vdpbf16ps path); NULL: the plain-C loop */
	const struct lbk_packed_bf16 *pw;
	const float *bias;	/* [n] or NULL */
	int64_t m;
};

/* ---- the plain-C loop over the packed panels: the reference's sums, for tiers without BF16 ---- */

static void gemm_bf16_scalar(const struct gemm_bf16_op *g, int64_t p0, int64_t p1)
{
	const int64_t n = g->pw->n, k = g->pw->k, kp = g->pw->kp;
	for (int64_t i = 0; i < g->m; i++) {
		const float *xr = g->x + i * k;
		for (int64_t pi = p0; pi < p1; pi++) {
			const uint16_t *panel = g->pw->w + pi * kp * LBK_BNR; /* [kp / 2][LBK_BNR][2] */
			for (int64_t j = 0; j < LBK_BNR && pi * LBK_BNR + j < n; j++) {
				float val = 0.0f;
				for (int64_t l = 0; l < kp; l += 2) {
					const uint16_t *wp = panel + (l / 2) * LBK_BNR * 2 + j * 2;
					val += bf16_at(xr, l + 1, k) * bf16_float(wp[1]);
					val += bf16_at(xr, l, k) * bf16_float(wp[0]);
				}
				int64_t col = pi * LBK_BNR + j;
				g->y[i * n + col] = g->bias ? val + g->bias[col] : val;
			}
		}
	}
}

/* ---- AVX512_BF16 ---- */

/* x [m][k] rounded into xb [m][kp] (kp = k or k + 1, the pad zero), 32 floats an instruction. */
static LBK_TARGET_AVX512_BF16 void x_to_bf16(uint16_t *xb, const float *x, int64_t m, int64_t k,
					     int64_t kp)
{
	for (int64_t i = 0; i < m; i++) {
		const float *src = x + i * k;
		uint16_t *dst = xb + i * kp;
		for (int64_t l = 0; l < kp; l += 32) {
			__m512 lo = _mm512_maskz_loadu_ps(lbk_mask16(k - l), src + l);
			__m512 hi = _mm512_maskz_loadu_ps(lbk_mask16(k - l - 16), src + l + 16);
			__m512bh v = _mm512_cvtne2ps_pbh(hi, lo); /* lo's 16 bf16 first */
			int64_t left = kp - l;
			__mmask32 mk = left >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << left) - 1);
			_mm512_mask_storeu_epi16(dst + l, mk, (__m512i)v);
		}
	}
}

/*
 * C[mr][ncols] (+)= A[mr][2 kc2] . B[2 kc2][LBK_BNR] over kc2 k pairs; a is xb at (row i0,
 * column k0), lda = kp; b the panel slice [kc2][LBK_BNR][2]; c is y at (i0, panel column 0),
 * ldc = n. first: the accumulators start from 0 instead of C; last: bias (or NULL) is added
 * before the store, as the reference adds it. pf, npf: as micro() in gemm.c.
 */
static inline __attribute__((always_inline)) LBK_TARGET_AVX512_BF16 void
micro_bf16(int mr, int64_t kc2, const uint16_t *a, int64_t lda, const uint16_t *b, float *c,
	   int64_t ldc, const __mmask16 mask[LBK_BNV], const float *bias, int first,
	   const uint16_t *pf, int64_t npf)
{
	__m512 acc[LBK_BMR][LBK_BNV];
	LBK_UNROLL
	for (int r = 0; r < mr; r++)
		LBK_UNROLL
		for (int v = 0; v < LBK_BNV; v++)
			acc[r][v] = first ? _mm512_setzero_ps()
					  : _mm512_maskz_loadu_ps(mask[v], c + r * ldc + v * 16);
	for (int64_t l = 0; l < kc2; l++) {
		if (l % LBK_BPF_STEP == 0 && l / LBK_BPF_STEP < npf)
			_mm_prefetch((const char *)(pf + l / LBK_BPF_STEP * 32), _MM_HINT_T1);
		__m512i bv[LBK_BNV];
		LBK_UNROLL
		for (int v = 0; v < LBK_BNV; v++)
			bv[v] = _mm512_load_si512((const void *)(b + l * LBK_BNR * 2 + v * 32));
		LBK_UNROLL
		for (int r = 0; r < mr; r++) {
			int32_t pair;
			memcpy(&pair, a + r * lda + 2 * l, sizeof(pair));
			__m512i av = _mm512_set1_epi32(pair);
			LBK_UNROLL
			for (int v = 0; v < LBK_BNV; v++)
				acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)av, (__m512bh)bv[v]);
		}
	}
	if (bias) {
		LBK_UNROLL
		for (int r = 0; r < mr; r++)
			LBK_UNROLL
			for (int v = 0; v < LBK_BNV; v++)
				acc[r][v] = _mm512_add_ps(acc[r][v], _mm512_maskz_loadu_ps(mask[v], bias + v * 16));
	}
	LBK_UNROLL
	for (int r = 0; r < mr; r++)
		LBK_UNROLL
		for (int v = 0; v < LBK_BNV; v++)
			_mm512_mask_storeu_ps(c + r * ldc + v * 16, mask[v], acc[r][v]);
}

#define LBK_BTILE_CASE(R)                                                                  \
	case R:                                                                            \
		micro_bf16(R, kc2, a, lda, b, c, ldc, mask, bias, first, pf, npf);          \
		break

static LBK_TARGET_AVX512_BF16 void tile_bf16(int mr, int64_t kc2, const uint16_t *a, int64_t lda,
					     const uint16_t *b, float *c, int64_t ldc,
					     int64_t ncols, const float *bias, int first,
					     const uint16_t *pf, int64_t npf)
{
	__mmask16 mask[LBK_BNV];
	for (int v = 0; v < LBK_BNV; v++)
		mask[v] = lbk_mask16(ncols - v * 16);
	_Static_assert(LBK_BMR == 8, "tile_bf16() switch lists 1..LBK_BMR");
	switch (mr) {
		LBK_BTILE_CASE(8);
		LBK_BTILE_CASE(7);
		LBK_BTILE_CASE(6);
		LBK_BTILE_CASE(5);
		LBK_BTILE_CASE(4);
		LBK_BTILE_CASE(3);
		LBK_BTILE_CASE(2);
		LBK_BTILE_CASE(1);
	default:
		break;
	}
}

/* The panel slice visited after panel pi's at k0 (next panel, or the next k slice's first):
 * its start and length in cache lines (32 bf16 each), or NULL after the last. */
static const uint16_t *next_slice_bf16(const struct lbk_packed_bf16 *pw, int64_t p0, int64_t p1,
				       int64_t pi, int64_t k0, int64_t *lines)
{
	if (pi + 1 == p1) {
		k0 += LBK_BKC;
		pi = p0;
	} else {
		pi++;
	}
	if (k0 >= pw->kp)
		return NULL;
	int64_t kc = pw->kp - k0 < LBK_BKC ? pw->kp - k0 : LBK_BKC;
	*lines = kc * LBK_BNR / 32;
	return pw->w + pi * pw->kp * LBK_BNR + k0 * LBK_BNR;
}

/* Panels p0..p1 of g's product, all m rows, as gemm_avx512 in gemm.c walks them. */
static LBK_TARGET_AVX512_BF16 void gemm_bf16_avx512(const struct gemm_bf16_op *g, int64_t p0,
						    int64_t p1)
{
	const struct lbk_packed_bf16 *pw = g->pw;
	const int64_t n = pw->n, kp = pw->kp, m = g->m;
	const int64_t tiles = (m + LBK_BMR - 1) / LBK_BMR;
	for (int64_t k0 = 0; k0 < kp; k0 += LBK_BKC) {
		int64_t kc = kp - k0 < LBK_BKC ? kp - k0 : LBK_BKC;
		int last = k0 + kc == kp;
		for (int64_t pi = p0; pi < p1; pi++) {
			const uint16_t *b = pw->w + pi * kp * LBK_BNR + k0 * LBK_BNR; /* [kc/2][NR][2] */
			int64_t col0 = pi * LBK_BNR;
			int64_t ncols = n - col0 < LBK_BNR ? n - col0 : LBK_BNR;
			const float *bb = last && g->bias ? g->bias + col0 : NULL;
			int64_t lines = 0;
			const uint16_t *next = next_slice_bf16(pw, p0, p1, pi, k0, &lines);
			int64_t share = (lines + tiles - 1) / tiles;
			for (int64_t i0 = 0, t = 0; i0 < m; i0 += LBK_BMR, t++) {
				int mr = (int)(m - i0 < LBK_BMR ? m - i0 : LBK_BMR);
				int64_t from = t * share < lines ? t * share : lines;
				int64_t npf = lines - from < share ? lines - from : share;
				tile_bf16(mr, kc / 2, g->xb + i0 * kp + k0, kp, b, g->y + i0 * n + col0,
					  n, ncols, bb, k0 == 0, next ? next + from * 32 : NULL, npf);
			}
		}
	}
}

static void gemm_bf16_range(const void *op, int64_t p0, int64_t p1)
{
	const struct gemm_bf16_op *g = op;
	if (g->xb)
		gemm_bf16_avx512(g, p0, p1);
	else
		gemm_bf16_scalar(g, p0, p1);
}

void lbk_gemm_bf16(float *y, const float *x, const struct lbk_packed_bf16 *w, const float *bias,
		   int64_t m, int threads)
{
	if (m <= 0 || !w)
		return;
	struct gemm_bf16_op g = { y, x, NULL, w, bias, m };
	uint16_t *xb = NULL;
	if (lbk_has_bf16()) {
		size_t bytes = ((size_t)m * (size_t)w->kp * sizeof(uint16_t) + 63) & ~(size_t)63;
		xb = aligned_alloc(64, bytes);
		/* out of memory: the plain-C loop, which needs none (same bits) */
		if (xb) {
			x_to_bf16(xb, x, m, w->k, w->kp);
			g.xb = xb;
		}
	}
	lbk_run_panels(gemm_bf16_range, &g, w->panels, threads);
	free(xb);
}
