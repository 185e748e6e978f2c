/* Private to lbk: the vector helpers the AVX-512 and AVX2 variants share (tail masks, e^x,
 * GELU, horizontal sums), inline so that each lands inside its caller's target attribute. */
#ifndef LAYERBANK_KERNELS_SIMD_H
#define LAYERBANK_KERNELS_SIMD_H

#include <immintrin.h>
#include <stdint.h>

#include "kernels_internal.h"

/* Cephes' expf: x = n ln2 + r with |r| <= ln2/2 (ln2 split in two for an exact n ln2), then a
 * degree-6 polynomial for e^r. */
#define LBK_EXP_LOG2E 1.44269504088896341f
#define LBK_EXP_LN2_HI 0.693359375f
#define LBK_EXP_LN2_LO -2.12194440e-4f
#define LBK_EXP_P0 1.9875691500e-4f
#define LBK_EXP_P1 1.3981999507e-3f
#define LBK_EXP_P2 8.3334519073e-3f
#define LBK_EXP_P3 4.1665795894e-2f
#define LBK_EXP_P4 1.6666665459e-1f
#define LBK_EXP_P5 5.0000001201e-1f

/* ---- AVX-512: 16 lanes ---- */

/* Mask of the first `left` lanes (none for left <= 0, all for left >= 16). */
static inline __mmask16 lbk_mask16(int64_t left)
{
	return left >= 16 ? (__mmask16)0xffff : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1);
}

/*
 * e^x for 16 lanes, relative error within 2 ulp of expf. x is clamped to [-104, 89] first, so
 * the result is 0 below (denormal range included), +inf above, and never NaN for x not NaN
 * (-inf gives 0).
 */
static inline LBK_TARGET_AVX512 __m512 lbk_exp512(__m512 x)
{
	x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(89.0f));
	__m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(LBK_EXP_LOG2E)),
					_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	__m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LBK_EXP_LN2_HI), x);
	r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LBK_EXP_LN2_LO), r);
	__m512 p = _mm512_set1_ps(LBK_EXP_P0);
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(LBK_EXP_P1));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(LBK_EXP_P2));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(LBK_EXP_P3));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(LBK_EXP_P4));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(LBK_EXP_P5));
	p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
	return _mm512_scalef_ps(p, n);
}

/* GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
#define LBK_GELU_C 0.7978845608028654f /* sqrt(2/pi) */

/* tanh(u) = 1 - 2 / (e^(2u) + 1): exact limits +-1 where e^(2u) saturates to inf or 0. */
static inline LBK_TARGET_AVX512 __m512 lbk_gelu512(__m512 v)
{
	const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
	__m512 v3 = _mm512_mul_ps(_mm512_mul_ps(v, v), v);
	__m512 u = _mm512_mul_ps(_mm512_set1_ps(LBK_GELU_C),
				 _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), v3, v));
	__m512 e = lbk_exp512(_mm512_mul_ps(two, u));
	__m512 t = _mm512_sub_ps(one, _mm512_div_ps(two, _mm512_add_ps(e, one)));
	return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), v), _mm512_add_ps(one, t));
}

/* ---- AVX2: 8 lanes ---- */

/* Lane mask (all ones in the first `left` lanes) for maskload/maskstore; left clamped to 0..8. */
static inline LBK_TARGET_AVX2 __m256i lbk_mask8(int64_t left)
{
	int32_t l = left <= 0 ? 0 : left >= 8 ? 8 : (int32_t)left;
	return _mm256_cmpgt_epi32(_mm256_set1_epi32(l), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/*
 * e^x for 8 lanes, the same clamp and polynomial as lbk_exp512 (within 2 ulp of expf). AVX2 has
 * no scalef: 2^n (n in [-150, 128]) is applied as two factors 2^(n>>1) and 2^(n - (n>>1)), each
 * a normal float built in the exponent field, so the last product rounds into the denormals, 0
 * or +inf as scalef does. -inf gives 0; NaN is not handled.
 */
static inline LBK_TARGET_AVX2 __m256 lbk_exp256(__m256 x)
{
	x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-104.0f)), _mm256_set1_ps(89.0f));
	__m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LBK_EXP_LOG2E)),
				   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	__m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LBK_EXP_LN2_HI), x);
	r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LBK_EXP_LN2_LO), r);
	__m256 p = _mm256_set1_ps(LBK_EXP_P0);
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(LBK_EXP_P1));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(LBK_EXP_P2));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(LBK_EXP_P3));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(LBK_EXP_P4));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(LBK_EXP_P5));
	p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
	__m256i ni = _mm256_cvtps_epi32(n);
	__m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1); /* both in [-75, 64] */
	const __m256i bias = _mm256_set1_epi32(127);
	__m256 f1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
	__m256 f2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
	return _mm256_mul_ps(_mm256_mul_ps(p, f1), f2);
}

static inline LBK_TARGET_AVX2 __m256 lbk_gelu256(__m256 v)
{
	const __m256 one = _mm256_set1_ps(1.0f), two = _mm256_set1_ps(2.0f);
	__m256 v3 = _mm256_mul_ps(_mm256_mul_ps(v, v), v);
	__m256 u = _mm256_mul_ps(_mm256_set1_ps(LBK_GELU_C),
				 _mm256_fmadd_ps(_mm256_set1_ps(0.044715f), v3, v));
	__m256 e = lbk_exp256(_mm256_mul_ps(two, u));
	__m256 t = _mm256_sub_ps(one, _mm256_div_ps(two, _mm256_add_ps(e, one)));
	return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), v), _mm256_add_ps(one, t));
}

static inline LBK_TARGET_AVX2 float lbk_hsum256(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

static inline LBK_TARGET_AVX2 float lbk_hmax256(__m256 v)
{
	__m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_max_ps(s, _mm_movehl_ps(s, s));
	s = _mm_max_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

#endif
