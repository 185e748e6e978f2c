/* Input fingerprints (LLMCache): chunk-pooled embeddings projected to a 256-bit SimHash, the exact
 * token hash, and hamming/similarity helpers. The algorithm is normative (proto/PROTOCOL.md,
 * "Fingerprint"): the AVX-512 kernels and the scalar reference must agree bit for bit. */
#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
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

#define LB_EXPORT __attribute__((visibility("default")))

/* Fingerprints and token hashes are defined over little-endian words; the projection rows are
 * stored as such and read as 16-bit AVX-512 masks. */
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "fingerprint.c assumes a little-endian machine"
#endif

#define FP_WORDS (LB_FP_BITS / 64)
#define FP_DEFAULT_CHUNKS 4u
#define FP_MAX_CHUNKS 64u
#define FP_MAX_DIM (1u << 20)
/* dim * chunks: keeps the projection <= 512 MiB and every dot product below 2^44. */
#define FP_MAX_ELEMS (1u << 24)
/* Quantised values lie in [-2^20, 2^20]: 1024 of them per int32 lane cannot overflow. */
#define FP_QBITS 20
#define FP_LANE_BLOCKS 1024u
/* Scratch up to this many elements (48 KiB) lives on the stack; beyond it, on the heap. */
#define FP_STACK_ELEMS 4096u

struct lb_fp_proj {
	uint32_t dim;
	uint32_t chunks;
	uint32_t elems;     /* dim * chunks: length of the pooled vector, chunk-major */
	uint32_t row_words; /* 64-bit words per projection row: ceil(elems / 64) */
	double *center;     /* [dim], or NULL; the caller's floats widened once (exact) */
	/* [256][row_words * 4]: bit j % 16 of row i's element j / 16 is set iff entry (i, j) is +1,
	 * i.e. the PRNG words of PROTOCOL.md stored little-endian; bits past elems are zero.
	 * uint16_t so that the AVX-512 path reads each as a 16-lane mask. Read-only once built. */
	uint16_t *rows;
};

/* Vigna's splitmix64: the PRNG named by PROTOCOL.md. */
static uint64_t splitmix64(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

LB_EXPORT struct lb_fp_proj *lb_fp_proj_new(uint32_t dim, uint32_t chunks, uint64_t seed,
					    const float *center)
{
	struct lb_fp_proj *p;
	uint64_t state = seed;
	size_t row_u16;

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
	row_u16 = (size_t)p->row_words * 4;
	/* 256 rows of whole 64-bit words: a multiple of 64 bytes, as aligned_alloc wants. */
	p->rows = aligned_alloc(64, LB_FP_BITS * row_u16 * sizeof(uint16_t));
	if (!p->rows)
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
			uint64_t x = splitmix64(&state);

			if (w == p->row_words - 1 && p->elems % 64)
				x &= (1ull << (p->elems % 64)) - 1;
			memcpy(p->rows + i * row_u16 + (size_t)w * 4, &x, sizeof(x));
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
	free(p->rows);
	free(p->center);
	free(p);
}

/* Tokens [lo, hi) of chunk c: floor(c * n / k) .. floor((c + 1) * n / k). */
static void chunk_bounds(const struct lb_fp_proj *p, uint32_t n, uint32_t c, uint64_t *lo, uint64_t *hi)
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

/* q [qlen] = quantised v; NaN -> 0, +-inf -> +-2^20, zeros past elems. */
static void quantise_scalar(const double *v, uint32_t elems, double scale, int32_t *q, size_t qlen)
{
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
	}
	for (size_t j = elems; j < qlen; j++)
		q[j] = 0;
}

/* Bit i = (sum_j sign(i, j) q_j > 0), with sign +1 for a set bit and -1 for a clear one; the
 * sum is 2 * (sum of q over set bits) - (sum of all q), exact in int64. */
static void project_scalar(const struct lb_fp_proj *p, const int32_t *q, uint64_t out[FP_WORDS])
{
	const size_t row_u16 = (size_t)p->row_words * 4;
	int64_t all = 0;

	for (uint32_t j = 0; j < p->elems; j++)
		all += q[j];
	memset(out, 0, FP_WORDS * sizeof(uint64_t));
	for (size_t i = 0; i < LB_FP_BITS; i++) {
		const uint16_t *row = p->rows + i * row_u16;
		int64_t set = 0;

		for (uint32_t w = 0; w < p->row_words; w++) {
			const int32_t *qw = q + (size_t)w * 64;
			uint64_t bits;

			memcpy(&bits, row + (size_t)w * 4, sizeof(bits));
			for (; bits; bits &= bits - 1)
				set += qw[__builtin_ctzll(bits)];
		}
		if (2 * set - all > 0)
			out[i / 64] |= 1ull << (i % 64);
	}
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

			for (uint64_t t = lo; t < hi; t++) {
				const float *row = emb + t * dim + d0;
				__m512 xa = _mm512_maskz_loadu_ps(ma, row);
				__m512 xb = _mm512_maskz_loadu_ps(mb, row + 16);

				acc[0] = _mm512_add_pd(acc[0], _mm512_cvtps_pd(_mm512_castps512_ps256(xa)));
				acc[1] = _mm512_add_pd(acc[1], _mm512_cvtps_pd(_mm256_castpd_ps(
						_mm512_extractf64x4_pd(_mm512_castps_pd(xa), 1))));
				acc[2] = _mm512_add_pd(acc[2], _mm512_cvtps_pd(_mm512_castps512_ps256(xb)));
				acc[3] = _mm512_add_pd(acc[3], _mm512_cvtps_pd(_mm256_castpd_ps(
						_mm512_extractf64x4_pd(_mm512_castps_pd(xb), 1))));
			}
			for (int g = 0; g < 4; g++) {
				const __mmask8 m = lanes8(left - 8 * g);
				__m512d x = _mm512_div_pd(acc[g], cnt);
				__m512d a;

				if (!m)
					break;
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
__attribute__((target("avx512f"))) static void quantise_avx512(const double *v, uint32_t elems,
								double scale, int32_t *q, size_t qlen)
{
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
		_mm256_storeu_si256((__m256i *)(q + j), _mm512_cvttpd_epi32(r));
	}
}

/* int64 sum of the 16 int32 lanes of a. */
__attribute__((target("avx512f"))) static int64_t hsum_epi32(__m512i a)
{
	__m512i lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(a));
	__m512i hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(a, 1));

	return _mm512_reduce_add_epi64(_mm512_add_epi64(lo, hi));
}

/*
 * As project_scalar, 8 rows at a time: each 16-element block of q is loaded once and added,
 * under each row's 16 sign bits as a mask, into that row's int32 lanes, which are folded into
 * int64 every FP_LANE_BLOCKS blocks. Integer sums are exact in any order, so only the
 * quantised inputs have to match the scalar path.
 */
__attribute__((target("avx512f"))) static void project_avx512(const struct lb_fp_proj *p,
							       const int32_t *q, uint64_t out[FP_WORDS])
{
	const size_t blocks = (size_t)p->row_words * 4; /* 16-element blocks per row */
	__m512i allv = _mm512_setzero_si512();
	int64_t all;

	for (size_t b = 0; b < blocks; b++) {
		__m512i qv = _mm512_loadu_si512(q + 16 * b);

		allv = _mm512_add_epi64(allv, _mm512_cvtepi32_epi64(_mm512_castsi512_si256(qv)));
		allv = _mm512_add_epi64(allv, _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(qv, 1)));
	}
	all = _mm512_reduce_add_epi64(allv);
	memset(out, 0, FP_WORDS * sizeof(uint64_t));
	for (size_t i0 = 0; i0 < LB_FP_BITS; i0 += 8) {
		const uint16_t *r = p->rows + i0 * blocks;
		int64_t set[8] = { 0 };

		for (size_t b0 = 0; b0 < blocks; b0 += FP_LANE_BLOCKS) {
			const size_t b1 = blocks - b0 < FP_LANE_BLOCKS ? blocks : b0 + FP_LANE_BLOCKS;
			__m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
			__m512i a4 = a0, a5 = a0, a6 = a0, a7 = a0;

			for (size_t b = b0; b < b1; b++) {
				const __m512i qv = _mm512_loadu_si512(q + 16 * b);

				a0 = _mm512_mask_add_epi32(a0, r[0 * blocks + b], a0, qv);
				a1 = _mm512_mask_add_epi32(a1, r[1 * blocks + b], a1, qv);
				a2 = _mm512_mask_add_epi32(a2, r[2 * blocks + b], a2, qv);
				a3 = _mm512_mask_add_epi32(a3, r[3 * blocks + b], a3, qv);
				a4 = _mm512_mask_add_epi32(a4, r[4 * blocks + b], a4, qv);
				a5 = _mm512_mask_add_epi32(a5, r[5 * blocks + b], a5, qv);
				a6 = _mm512_mask_add_epi32(a6, r[6 * blocks + b], a6, qv);
				a7 = _mm512_mask_add_epi32(a7, r[7 * blocks + b], a7, qv);
			}
			set[0] += hsum_epi32(a0);
			set[1] += hsum_epi32(a1);
			set[2] += hsum_epi32(a2);
			set[3] += hsum_epi32(a3);
			set[4] += hsum_epi32(a4);
			set[5] += hsum_epi32(a5);
			set[6] += hsum_epi32(a6);
			set[7] += hsum_epi32(a7);
		}
		for (size_t k = 0; k < 8; k++)
			if (2 * set[k] - all > 0)
				out[(i0 + k) / 64] |= 1ull << ((i0 + k) % 64);
	}
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

int lbi_fingerprint_path(const struct lb_fp_proj *p, const float *emb, uint32_t n_tokens,
			 uint64_t out[LB_FP_BITS / 64], int path)
{
	_Alignas(64) double v_stack[FP_STACK_ELEMS];
	_Alignas(64) int32_t q_stack[FP_STACK_ELEMS];
	double *v = v_stack, m;
	int32_t *q = q_stack;
	void *heap = NULL;
	size_t qlen;

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
	if (path == LBI_FP_AVX512) {
		m = pool_avx512(p, emb, n_tokens, v);
		quantise_avx512(v, p->elems, quant_scale(m), q, qlen);
		project_avx512(p, q, out);
	} else
#endif
	{
		pool_scalar(p, emb, n_tokens, v);
		m = max_abs_scalar(v, p->elems);
		quantise_scalar(v, p->elems, quant_scale(m), q, qlen);
		project_scalar(p, q, out);
	}
	free(heap);
	return 0;
}

LB_EXPORT int lb_fingerprint(const struct lb_fp_proj *p, const float *emb, uint32_t n_tokens,
			     uint64_t out[LB_FP_BITS / 64])
{
	return lbi_fingerprint_path(p, emb, n_tokens, out, LBI_FP_AUTO);
}

LB_EXPORT void lb_token_hash(const int32_t *tokens, uint32_t n_tokens, uint64_t out[2])
{
	XXH128_hash_t h;

	if (!out)
		return;
	if (!tokens && n_tokens) {
		/* No input to hash; zeros are not the hash of the empty sequence. */
		out[0] = out[1] = 0;
		return;
	}
	h = XXH3_128bits(tokens, (size_t)n_tokens * sizeof(*tokens));
	out[0] = h.low64;
	out[1] = h.high64;
}

LB_EXPORT uint32_t lb_fp_hamming(const uint64_t a[LB_FP_BITS / 64], const uint64_t b[LB_FP_BITS / 64])
{
	uint32_t h = 0;

	for (int i = 0; i < FP_WORDS; i++)
		h += (uint32_t)__builtin_popcountll(a[i] ^ b[i]);
	return h;
}

/*
 * cos(pi * h / 256) for h = 0..128, each the double nearest the exact value (computed with
 * 300-bit mpmath). A table rather than libm's cos: the library needs no libm, and the daemon,
 * clients and other implementations can agree on every threshold to the last bit.
 */
static const double fp_cos[129] = {
	0x1p+0, 0x1.fff62169b92dbp-1, 0x1.ffd886084cd0dp-1,
	0x1.ffa72effef75dp-1, 0x1.ff621e3796d7ep-1, 0x1.ff095658e71adp-1,
	0x1.fe9cdad01883ap-1, 0x1.fe1cafcbd5b09p-1, 0x1.fd88da3d12526p-1,
	0x1.fce15fd6da67bp-1, 0x1.fc26470e19fd3p-1, 0x1.fb5797195d741p-1,
	0x1.fa7557f08a517p-1, 0x1.f97f924c9099bp-1, 0x1.f8764fa714ba9p-1,
	0x1.f7599a3a12077p-1, 0x1.f6297cff75cb0p-1, 0x1.f4e603b0b2f2dp-1,
	0x1.f38f3ac64e589p-1, 0x1.f2252f7763adap-1, 0x1.f0a7efb9230d7p-1,
	0x1.ef178a3e473c2p-1, 0x1.ed740e7684963p-1, 0x1.ebbd8c8df0b74p-1,
	0x1.e9f4156c62ddap-1, 0x1.e817bab4cd10dp-1, 0x1.e6288ec48e112p-1,
	0x1.e426a4b2bc17ep-1, 0x1.e212104f686e5p-1, 0x1.dfeae622dbe2bp-1,
	0x1.ddb13b6ccc23cp-1, 0x1.db6526238a09bp-1, 0x1.d906bcf328d46p-1,
	0x1.d696173c9e68bp-1, 0x1.d4134d14dc93ap-1, 0x1.d17e7743e35dcp-1,
	0x1.ced7af43cc773p-1, 0x1.cc1f0f3fcfc5cp-1, 0x1.c954b213411f5p-1,
	0x1.c678b3488739bp-1, 0x1.c38b2f180bdb1p-1, 0x1.c08c426725549p-1,
	0x1.bd7c0ac6f952ap-1, 0x1.ba5aa673590d2p-1, 0x1.b728345196e3ep-1,
	0x1.b3e4d3ef55712p-1, 0x1.b090a58150200p-1, 0x1.ad2bc9e21d511p-1,
	0x1.a9b66290ea1a3p-1, 0x1.a63091b02fae2p-1, 0x1.a29a7a0462782p-1,
	0x1.9ef43ef29af94p-1, 0x1.9b3e047f38741p-1, 0x1.9777ef4c7d742p-1,
	0x1.93a22499263fbp-1, 0x1.8fbcca3ef940dp-1, 0x1.8bc806b151741p-1,
	0x1.87c400fba2ebfp-1, 0x1.83b0e0bff976ep-1, 0x1.7f8ece3571771p-1,
	0x1.7b5df226aafafp-1, 0x1.771e75f037261p-1, 0x1.72d0837efff96p-1,
	0x1.6e74454eaa8afp-1, 0x1.6a09e667f3bcdp-1, 0x1.6591925f0783dp-1,
	0x1.610b7551d2cdfp-1, 0x1.5c77bbe65018cp-1, 0x1.57d69348ceca0p-1,
	0x1.5328292a35596p-1, 0x1.4e6cabbe3e5e9p-1, 0x1.49a449b9b0939p-1,
	0x1.44cf325091dd6p-1, 0x1.3fed9534556d4p-1, 0x1.3affa292050b9p-1,
	0x1.36058b10659f3p-1, 0x1.30ff7fce17035p-1, 0x1.2bedb25faf3eap-1,
	0x1.26d054cdd12dfp-1, 0x1.21a799933eb59p-1, 0x1.1c73b39ae68c8p-1,
	0x1.1734d63dedb49p-1, 0x1.11eb3541b4b23p-1, 0x1.0c9704d5d898fp-1,
	0x1.073879922ffeep-1, 0x1.01cfc874c3eb7p-1, 0x1.f8ba4dbf89abap-2,
	0x1.edc1952ef78d6p-2, 0x1.e2b5d3806f63bp-2, 0x1.d79775b86e389p-2,
	0x1.cc66e9931c45ep-2, 0x1.c1249d8011ee7p-2, 0x1.b5d1009e15cc0p-2,
	0x1.aa6c82b6d3fcap-2, 0x1.9ef7943a8ed8ap-2, 0x1.9372a63bc93d7p-2,
	0x1.87de2a6aea963p-2, 0x1.7c3a9311dcce7p-2, 0x1.7088530fa459fp-2,
	0x1.64c7ddd3f27c6p-2, 0x1.58f9a75ab1fddp-2, 0x1.4d1e24278e76ap-2,
	0x1.4135c94176601p-2, 0x1.35410c2e18152p-2, 0x1.294062ed59f06p-2,
	0x1.1d3443f4cdb3ep-2, 0x1.111d262b1f677p-2, 0x1.04fb80e37fdaep-2,
	0x1.f19f97b215f1bp-3, 0x1.d934fe5454311p-3, 0x1.c0b826a7e4f63p-3,
	0x1.a82a025b00451p-3, 0x1.8f8b83c69a60bp-3, 0x1.76dd9de50bf31p-3,
	0x1.5e214448b3fc6p-3, 0x1.45576b1293e5ap-3, 0x1.2c8106e8e613ap-3,
	0x1.139f0cedaf577p-3, 0x1.f564e56a9730ep-4, 0x1.c3785c79ec2d5p-4,
	0x1.917a6bc29b42cp-4, 0x1.5f6d00a9aa419p-4, 0x1.2d52092ce19f6p-4,
	0x1.f656e79f820e0p-5, 0x1.91f65f10dd814p-5, 0x1.2d865759455cdp-5,
	0x1.92155f7a3667ep-6, 0x1.921d1fcdec784p-7, 0x0p+0,
};

LB_EXPORT double lb_fp_similarity(uint32_t hamming)
{
	if (hamming > LB_FP_BITS)
		hamming = LB_FP_BITS;
	/* cos(pi - x) = -cos(x), and rounding to nearest is symmetric. */
	return hamming <= 128 ? fp_cos[hamming] : -fp_cos[LB_FP_BITS - hamming];
}

LB_EXPORT uint32_t lb_fp_max_hamming(double tau)
{
	/* Walk the same values lb_fp_similarity returns, so that similarity(max_hamming(tau)) >= tau
	 * holds exactly; tau > 1 or NaN admits nothing but identical bits: 0. */
	for (uint32_t h = LB_FP_BITS; h > 0; h--)
		if (lb_fp_similarity(h) >= tau)
			return h;
	return 0;
}
