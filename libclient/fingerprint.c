/* Input fingerprints (LLMCache): chunk-pooled embeddings projected to a 256-bit SimHash, the exact
 * token hash, and hamming/similarity helpers. The algorithm is normative (proto/PROTOCOL.md,
 * "Fingerprint"): the AVX-512 kernels and the scalar reference must agree bit for bit. */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>
#if defined(__x86_64__)
#include <immintrin.h>
#define FP_HAVE_X86 1
#else
#define FP_HAVE_X86 0
#endif

#include "layerbank/layerbank.h"
#include "fingerprint_internal.h"
#include "lbp.h"
#include "rng.h"

#define LB_EXPORT __attribute__((visibility("default")))

/* The token hash is defined over little-endian int32s, which we hash in place. */
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "fingerprint.c assumes a little-endian machine"
#endif

#define FP_WORDS (LB_FP_BITS / 64)
#define FP_DEFAULT_CHUNKS 4u
#define FP_MAX_CHUNKS 64u
#define FP_MAX_DIM (1u << 20)
/* dim * chunks: keeps the projection <= 512 MiB and every dot product below 2^44. */
#define FP_MAX_ELEMS (1u << 24)
/* Quantised values lie in [-2^20, 2^20]. An int32 lane of project_avx512 gains at most
 * 8 * 2^20 per byte column, so it is folded into int64 every 128 columns (< 2^31). */
#define FP_QBITS 20
#define FP_LANE_COLS 128u
/* MXCSR at reset: round to nearest even, no flush-to-zero or denormals-are-zero, all
 * exceptions masked. */
#define FP_MXCSR_DEFAULT 0x1f80u
/* Scratch up to this many elements (48 KiB) lives on the stack; beyond it, on the heap. */
#define FP_STACK_ELEMS 4096u

struct lb_fp_proj {
	uint32_t dim;
	uint32_t chunks;
	uint32_t elems;     /* dim * chunks: length of the pooled vector, chunk-major */
	uint32_t row_words; /* 64-bit PRNG words per projection row: ceil(elems / 64) */
	double *center;     /* [dim], or NULL; the caller's floats widened once (exact) */
	/*
	 * [row_words * 8][256], the sign matrix by byte columns: bit e of cols[g * 256 + i] is set
	 * iff entry (i, 8 * g + e) is +1, i.e. byte g of row i's PRNG words (PROTOCOL.md) taken
	 * little-endian; bits past elems are zero. Column-major so that one 16-byte load gives
	 * 16 rows' signs for 8 elements (project_avx512). Read-only once built.
	 */
	uint8_t *cols;
};

LB_EXPORT struct lb_fp_proj *lb_fp_proj_new(uint32_t dim, uint32_t chunks, uint64_t seed,
					    const float *center)
{
	struct lb_fp_proj *p;
	uint64_t state = seed;

	if (chunks == 0)
		chunks = FP_DEFAULT_CHUNKS;
	if (dim == 0 || dim > FP_MAX_DIM || chunks > FP_MAX_CHUNKS ||
	    (uint64_t)dim * chunks > FP_MAX_ELEMS) {
		errno = EINVAL;
		return NULL;
	}
	p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->dim = dim;
	p->chunks = chunks;
	p->elems = dim * chunks;
	p->row_words = (p->elems + 63) / 64;
	/* A multiple of 256 bytes, as aligned_alloc wants. */
	p->cols = aligned_alloc(64, (size_t)p->row_words * 8 * LB_FP_BITS);
	if (!p->cols)
		goto nomem;
	if (center) {
		p->center = malloc((size_t)dim * sizeof(double));
		if (!p->center)
			goto nomem;
		for (uint32_t d = 0; d < dim; d++)
			p->center[d] = (double)center[d];
	}
	for (size_t i = 0; i < LB_FP_BITS; i++) {
		for (uint32_t w = 0; w < p->row_words; w++) {
			uint64_t x = lbu_splitmix64(&state);

			if (w == p->row_words - 1 && p->elems % 64)
				x &= (1ull << (p->elems % 64)) - 1;
			for (size_t b = 0; b < 8; b++)
				p->cols[((size_t)w * 8 + b) * LB_FP_BITS + i] = (uint8_t)(x >> (8 * b));
		}
	}
	return p;
nomem:
	lb_fp_proj_free(p);
	errno = ENOMEM;
	return NULL;
}

LB_EXPORT void lb_fp_proj_free(struct lb_fp_proj *p)
{
	if (!p)
		return;
	free(p->cols);
	free(p->center);
	free(p);
}

/* Tokens [lo, hi) of chunk c: floor(c * n / k) .. floor((c + 1) * n / k). */
static void chunk_bounds(const struct lb_fp_proj *p, uint32_t n, uint32_t c, uint64_t *lo,
			 uint64_t *hi)
{
	*lo = (uint64_t)c * n / p->chunks;
	*hi = (uint64_t)(c + 1) * n / p->chunks;
}

/* ---- scalar reference ---- */

/*
 * v [elems] = pooled, centred chunks. Each dimension is summed in double in token order, then
 * divided (not multiplied by a reciprocal) and centred: exactly the operations, lane by lane, of
 * pool_avx512. No product is ever added, so FMA contraction has nothing to fuse.
 */
static void pool_scalar(const struct lb_fp_proj *p, const float *emb, uint32_t n, double *v)
{
	const uint32_t dim = p->dim;

	for (uint32_t c = 0; c < p->chunks; c++) {
		double *vc = v + (size_t)c * dim;
		uint64_t lo, hi;
		double cnt;

		chunk_bounds(p, n, c, &lo, &hi);
		for (uint32_t d = 0; d < dim; d++)
			vc[d] = 0.0;
		if (lo == hi)
			continue; /* empty chunk: zeros, not centred */
		for (uint64_t t = lo; t < hi; t++) {
			const float *row = emb + t * dim;

			for (uint32_t d = 0; d < dim; d++)
				vc[d] += (double)row[d];
		}
		cnt = (double)(hi - lo);
		for (uint32_t d = 0; d < dim; d++) {
			vc[d] = vc[d] / cnt;
			if (p->center)
				vc[d] = vc[d] - p->center[d];
		}
	}
}

/* Largest |v| over the finite values (NaN and +-inf skipped), 0 if none. */
static double max_abs_scalar(const double *v, uint32_t elems)
{
	double m = 0.0;

	for (uint32_t j = 0; j < elems; j++) {
		double a = v[j] < 0 ? -v[j] : v[j];

		if (a < __builtin_inf() && a > m)
			m = a;
	}
	return m;
}

/*
 * 2^s with 2^19 <= m * 2^s < 2^20, or 1 when m is 0. m >= 2^-233 whenever it is not 0 (a
 * pooled float sum divided by at most 2^32, minus a float), and m < 2^130, so m is normal and
 * 2^s in range: both paths derive s from the exponent bits alone, no libm.
 */
static double quant_scale(double m)
{
	uint64_t bits;
	double scale;

	if (m == 0.0)
		return 1.0;
	memcpy(&bits, &m, sizeof(bits));
	/* m = f * 2^E with f in [0.5, 1) and E = biased exponent - 1022; s = 20 - E. */
	bits = (uint64_t)(1023 + FP_QBITS + 1022 - (int64_t)((bits >> 52) & 0x7ff)) << 52;
	memcpy(&scale, &bits, sizeof(scale));
	return scale;
}

/* Round x (finite, |x| <= 2^20) half to even, in integer steps: no dependence on the FPU's
 * rounding mode. x - t is exact (it is x's fractional part). */
static int32_t round_half_even(double x)
{
	int32_t t = (int32_t)x;
	double f = x - (double)t;

	if (f > 0.5 || (f == 0.5 && (t & 1)))
		t++;
	else if (f < -0.5 || (f == -0.5 && (t & 1)))
		t--;
	return t;
}

/* q [qlen] = quantised v; NaN -> 0, +-inf -> +-2^20, zeros past elems. @return sum of q. */
static int64_t quantise_scalar(const double *v, uint32_t elems, double scale, int32_t *q,
			       size_t qlen)
{
	int64_t all = 0;

	for (uint32_t j = 0; j < elems; j++) {
		double x = v[j];

		if (x != x)
			q[j] = 0;
		else if (x == __builtin_inf())
			q[j] = 1 << FP_QBITS;
		else if (x == -__builtin_inf())
			q[j] = -(1 << FP_QBITS);
		else
			q[j] = round_half_even(x * scale);
		all += q[j];
	}
	for (size_t j = elems; j < qlen; j++)
		q[j] = 0;
	return all;
}

/* t[m] = sum of q[e] over the set bits e of m, for the 16 subsets of 4 values. */
static void subset_sums4(const int32_t *q, int32_t t[16])
{
	t[0] = 0;
	for (unsigned m = 1; m < 16; m++)
		t[m] = t[m & (m - 1)] + q[__builtin_ctz(m)];
}

/*
 * Bit i = (sum_j sign(i, j) q_j > 0), with sign +1 for a set bit and -1 for a clear one. The
 * sum is 2 * (sum of q over row i's set bits) - all (the sum of q), exact in int64; the first part
 * is looked up 4 elements at a time in the table of their subset sums (the "four Russians").
 */
static void project_scalar(const struct lb_fp_proj *p, const int32_t *q, int64_t all,
			   uint64_t out[FP_WORDS])
{
	const size_t ncols = (size_t)p->row_words * 8;
	int64_t set[LB_FP_BITS] = { 0 };

	for (size_t g = 0; g < ncols; g++) {
		const uint8_t *col = p->cols + g * LB_FP_BITS;
		int32_t lo[16], hi[16];

		subset_sums4(q + 8 * g, lo);
		subset_sums4(q + 8 * g + 4, hi);
		for (size_t i = 0; i < LB_FP_BITS; i++)
			set[i] += lo[col[i] & 15] + hi[col[i] >> 4];
	}
	memset(out, 0, FP_WORDS * sizeof(uint64_t));
	for (size_t i = 0; i < LB_FP_BITS; i++)
		if (2 * set[i] - all > 0)
			out[i / 64] |= 1ull << (i % 64);
}

/* ---- AVX-512F kernels: the same operations as the scalar code, 8 dimensions at a time ---- */

#if FP_HAVE_X86
/* Lanes [0, n) of a vector of 8 (n may be <= 0 or > 8). */
__attribute__((target("avx512f"))) static __mmask8 lanes8(int64_t n)
{
	return n >= 8 ? 0xff : n <= 0 ? 0 : (__mmask8)((1u << n) - 1);
}

__attribute__((target("avx512f"))) static __mmask16 lanes16(int64_t n)
{
	return n >= 16 ? 0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
}

/*
 * As pool_scalar, 32 dimensions per pass over the chunk's tokens (four accumulators of 8
 * doubles; lanes past dim are masked off), and returns max_abs_scalar of the result. Each
 * lane adds its dimension's tokens in token order: vectorising across dimensions only.
 */
__attribute__((target("avx512f"))) static double pool_avx512(const struct lb_fp_proj *p,
							      const float *emb, uint32_t n, double *v)
{
	const uint32_t dim = p->dim;
	const __m512i absmask = _mm512_set1_epi64(0x7fffffffffffffffll);
	const __m512d inf = _mm512_set1_pd(__builtin_inf());
	__m512d maxv = _mm512_setzero_pd();

	for (uint32_t c = 0; c < p->chunks; c++) {
		double *vc = v + (size_t)c * dim;
		uint64_t lo, hi;

		chunk_bounds(p, n, c, &lo, &hi);
		if (lo == hi) {
			memset(vc, 0, (size_t)dim * sizeof(double));
			continue;
		}
		const __m512d cnt = _mm512_set1_pd((double)(hi - lo));
		for (uint32_t d0 = 0; d0 < dim; d0 += 32) {
			const int64_t left = (int64_t)dim - d0;
			const __mmask16 ma = lanes16(left), mb = lanes16(left - 16);
			__m512d acc[4] = { _mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(),
					   _mm512_setzero_pd() };

			if (left >= 32) {
				for (uint64_t t = lo; t < hi; t++) {
					const float *row = emb + t * dim + d0;

					/* Unrolled, so that the accumulators stay in registers. */
#pragma GCC unroll 4
					for (int g = 0; g < 4; g++)
						acc[g] = _mm512_add_pd(acc[g], _mm512_cvtps_pd(
								_mm256_loadu_ps(row + 8 * g)));
				}
			} else {
				/* The last dimensions: masked loads, which never touch memory past
				 * the row (nor fault there). */
				for (uint64_t t = lo; t < hi; t++) {
					const float *row = emb + t * dim + d0;
					__m512 xa = _mm512_maskz_loadu_ps(ma, row);
					__m512 xb = _mm512_maskz_loadu_ps(mb, row + 16);

					acc[0] = _mm512_add_pd(acc[0], _mm512_cvtps_pd(
							_mm512_castps512_ps256(xa)));
					acc[1] = _mm512_add_pd(acc[1], _mm512_cvtps_pd(_mm256_castpd_ps(
							_mm512_extractf64x4_pd(_mm512_castps_pd(xa), 1))));
					acc[2] = _mm512_add_pd(acc[2], _mm512_cvtps_pd(
							_mm512_castps512_ps256(xb)));
					acc[3] = _mm512_add_pd(acc[3], _mm512_cvtps_pd(_mm256_castpd_ps(
							_mm512_extractf64x4_pd(_mm512_castps_pd(xb), 1))));
				}
			}
			for (int g = 0; g < 4; g++) {
				const __mmask8 m = lanes8(left - 8 * g);
				__m512d x, a;

				if (!m)
					break;
				x = _mm512_div_pd(acc[g], cnt);
				if (p->center)
					x = _mm512_sub_pd(x, _mm512_maskz_loadu_pd(m, p->center + d0 + 8 * g));
				_mm512_mask_storeu_pd(vc + d0 + 8 * g, m, x);
				a = _mm512_castsi512_pd(_mm512_and_si512(_mm512_castpd_si512(x), absmask));
				maxv = _mm512_mask_max_pd(maxv, m & _mm512_cmp_pd_mask(a, inf, _CMP_LT_OQ),
							  maxv, a);
			}
		}
	}
	return _mm512_reduce_max_pd(maxv);
}

/* As quantise_scalar; qlen is a multiple of 64. */
__attribute__((target("avx512f"))) static int64_t quantise_avx512(const double *v, uint32_t elems,
								   double scale, int32_t *q, size_t qlen)
{
	__m512i all = _mm512_setzero_si512();
	const __m512i absmask = _mm512_set1_epi64(0x7fffffffffffffffll);
	const __m512i signmask = _mm512_set1_epi64((int64_t)0x8000000000000000ull);
	const __m512i limit = _mm512_castpd_si512(_mm512_set1_pd((double)(1 << FP_QBITS)));
	const __m512d inf = _mm512_set1_pd(__builtin_inf());
	const __m512d vscale = _mm512_set1_pd(scale);

	for (size_t j = 0; j < qlen; j += 8) {
		__m512d x = _mm512_maskz_loadu_pd(lanes8((int64_t)elems - (int64_t)j), v + j);
		__m512i xi = _mm512_castpd_si512(x);
		__m512d a = _mm512_castsi512_pd(_mm512_and_si512(xi, absmask));
		__mmask8 finite = _mm512_cmp_pd_mask(a, inf, _CMP_LT_OQ);
		__mmask8 isinf = _mm512_cmp_pd_mask(a, inf, _CMP_EQ_OQ);
		/* The rounding is in the instruction (nearest even), not taken from MXCSR. */
		__m512d r = _mm512_maskz_roundscale_pd(finite, _mm512_mul_pd(x, vscale),
						       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);

		r = _mm512_mask_mov_pd(r, isinf, _mm512_castsi512_pd(
			_mm512_or_si512(_mm512_and_si512(xi, signmask), limit)));
		const __m256i qi = _mm512_cvttpd_epi32(r);

		_mm256_storeu_si256((__m256i *)(q + j), qi);
		all = _mm512_add_epi64(all, _mm512_cvtepi32_epi64(qi));
	}
	return _mm512_reduce_add_epi64(all);
}

/* Lane m = sum of q[e] over the set bits e of m: subset_sums4 in one vector. */
__attribute__((target("avx512f"))) static __m512i subset_sums4_avx512(const int32_t *q)
{
	__m512i t = _mm512_maskz_set1_epi32(0xaaaa, q[0]);

	t = _mm512_add_epi32(t, _mm512_maskz_set1_epi32(0xcccc, q[1]));
	t = _mm512_add_epi32(t, _mm512_maskz_set1_epi32(0xf0f0, q[2]));
	return _mm512_add_epi32(t, _mm512_maskz_set1_epi32(0xff00, q[3]));
}

/* set[0..15] += the int32 lanes of a, widened. */
__attribute__((target("avx512f"))) static void fold_epi32(int64_t *set, __m512i a)
{
	__m512i lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(a));
	__m512i hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(a, 1));

	_mm512_storeu_si512(set, _mm512_add_epi64(_mm512_loadu_si512(set), lo));
	_mm512_storeu_si512(set + 8, _mm512_add_epi64(_mm512_loadu_si512(set + 8), hi));
}

/*
 * As project_scalar, all 256 rows at once in 16 vectors of int32 lanes: per byte column, the
 * subset-sum tables of its two nibbles are two vectors, and one permute looks up 16 rows.
 * (A masked add per 16 signs is 3x slower: it is bound by moves into mask registers.)
 * Integer sums are exact in any order, so only the quantised inputs have to match the
 * scalar path.
 */
__attribute__((target("avx512f"))) static void project_avx512(const struct lb_fp_proj *p,
							       const int32_t *q, int64_t all,
							       uint64_t out[FP_WORDS])
{
	const size_t ncols = (size_t)p->row_words * 8;
	_Alignas(64) int64_t set[LB_FP_BITS] = { 0 };

	for (size_t g0 = 0; g0 < ncols; g0 += FP_LANE_COLS) {
		const size_t g1 = ncols - g0 < FP_LANE_COLS ? ncols : g0 + FP_LANE_COLS;
		__m512i acc[16];

		for (int k = 0; k < 16; k++)
			acc[k] = _mm512_setzero_si512();
		for (size_t g = g0; g < g1; g++) {
			const __m512i lo = subset_sums4_avx512(q + 8 * g);
			const __m512i hi = subset_sums4_avx512(q + 8 * g + 4);
			const uint8_t *col = p->cols + g * LB_FP_BITS;

			/* Unrolled, so that the 16 accumulators stay in registers. */
#pragma GCC unroll 16
			for (int k = 0; k < 16; k++) {
				/* vpermd reads only the low 4 bits of each index. */
				__m512i idx = _mm512_cvtepu8_epi32(
					_mm_loadu_si128((const __m128i *)(col + 16 * k)));

				acc[k] = _mm512_add_epi32(acc[k], _mm512_permutexvar_epi32(idx, lo));
				acc[k] = _mm512_add_epi32(acc[k], _mm512_permutexvar_epi32(
						_mm512_srli_epi32(idx, 4), hi));
			}
		}
		for (int k = 0; k < 16; k++)
			fold_epi32(set + 16 * k, acc[k]);
	}
	memset(out, 0, FP_WORDS * sizeof(uint64_t));
	for (size_t i = 0; i < LB_FP_BITS; i++)
		if (2 * set[i] - all > 0)
			out[i / 64] |= 1ull << (i % 64);
}
#endif /* FP_HAVE_X86 */

int lbi_fp_have_avx512(void)
{
#if FP_HAVE_X86
	/* -1 until probed; racing probes store the same answer. */
	static atomic_int have = -1;
	int h = atomic_load_explicit(&have, memory_order_relaxed);

	if (h < 0) {
		/* libgcc's probe also checks that the OS saves the zmm state (XCR0). */
		__builtin_cpu_init();
		h = __builtin_cpu_supports("avx512f") ? 1 : 0;
		atomic_store_explicit(&have, h, memory_order_relaxed);
	}
	return h;
#else
	return 0;
#endif
}

/*
 * The fingerprint on one path, v [elems] and q [qlen] its scratch. Not inlined: it must run
 * wholly between the MXCSR switches in lbi_fingerprint_path, which a compiler that assumes
 * the default environment could otherwise move floating-point work across.
 */
__attribute__((noinline)) static void fp_compute(const struct lb_fp_proj *p, const float *emb,
						 uint32_t n_tokens, uint64_t out[FP_WORDS], int path,
						 double *v, int32_t *q, size_t qlen)
{
	double m;
	int64_t all;

#if FP_HAVE_X86
	if (path == LBI_FP_AVX512) {
		m = pool_avx512(p, emb, n_tokens, v);
		all = quantise_avx512(v, p->elems, quant_scale(m), q, qlen);
		project_avx512(p, q, all, out);
		return;
	}
#else
	(void)path;
#endif
	pool_scalar(p, emb, n_tokens, v);
	m = max_abs_scalar(v, p->elems);
	all = quantise_scalar(v, p->elems, quant_scale(m), q, qlen);
	project_scalar(p, q, all, out);
}

int lbi_fingerprint_path(const struct lb_fp_proj *p, const float *emb, uint32_t n_tokens,
			 uint64_t out[LB_FP_BITS / 64], int path)
{
	_Alignas(64) double v_stack[FP_STACK_ELEMS];
	_Alignas(64) int32_t q_stack[FP_STACK_ELEMS];
	double *v = v_stack;
	int32_t *q = q_stack;
	void *heap = NULL;
	size_t qlen;
#if FP_HAVE_X86
	unsigned int csr;
#endif

	if (!p || !emb || !out || n_tokens == 0)
		return -EINVAL;
	if (path == LBI_FP_AUTO)
		path = lbi_fp_have_avx512() ? LBI_FP_AVX512 : LBI_FP_SCALAR;
	else if (path == LBI_FP_AVX512 && !lbi_fp_have_avx512())
		return -EOPNOTSUPP;
	else if (path != LBI_FP_SCALAR && path != LBI_FP_AVX512)
		return -EINVAL;
	qlen = (size_t)p->row_words * 64;
	if (qlen > FP_STACK_ELEMS) {
		heap = malloc(qlen * (sizeof(double) + sizeof(int32_t)));
		if (!heap)
			return -ENOMEM;
		v = heap;
		q = (int32_t *)(v + qlen);
	}
#if FP_HAVE_X86
	/* The caller's MXCSR may flush subnormals (DAZ/FTZ, as -ffast-math binaries and some ML
	 * runtimes set) or round otherwise; the specification says IEEE defaults. Restoring it
	 * afterwards also drops the exception flags our NaN and inf handling raised. */
	csr = _mm_getcsr();
	_mm_setcsr(FP_MXCSR_DEFAULT);
#endif
	fp_compute(p, emb, n_tokens, out, path, v, q, qlen);
#if FP_HAVE_X86
	_mm_setcsr(csr);
#endif
	free(heap);
	return 0;
}

LB_EXPORT int lb_fingerprint(const struct lb_fp_proj *p, const float *emb, uint32_t n_tokens,
			     uint64_t out[LB_FP_BITS / 64])
{
	return lbi_fingerprint_path(p, emb, n_tokens, out, LBI_FP_AUTO);
}

LB_EXPORT uint64_t lb_hash64(const void *data, uint64_t bytes)
{
	return data || !bytes ? XXH3_64bits(data, (size_t)bytes) : 0;
}

LB_EXPORT void lb_token_hash(const int32_t *tokens, uint32_t n_tokens, uint64_t out[2])
{
	if (!out)
		return;
	if (!tokens && n_tokens) {
		/* No input to hash; zeros are not the hash of the empty sequence. */
		out[0] = out[1] = 0;
		return;
	}
	lbp_token_hash(tokens, n_tokens, out);
}

LB_EXPORT uint32_t lb_fp_hamming(const uint64_t a[LB_FP_BITS / 64],
				 const uint64_t b[LB_FP_BITS / 64])
{
	uint32_t h = 0;

	for (int i = 0; i < FP_WORDS; i++)
		h += (uint32_t)__builtin_popcountll(a[i] ^ b[i]);
	return h;
}

LB_EXPORT double lb_fp_similarity(uint32_t hamming)
{
	return lbp_fp_similarity(hamming);
}

LB_EXPORT uint32_t lb_fp_max_hamming(double tau)
{
	return lbp_fp_max_hamming(tau);
}
