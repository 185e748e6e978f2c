/* Element-wise and row kernels: RMSNorm, LayerNorm, softmax, SiLU-gate, GELU, RoPE and the
 * embedding lookup, each an AVX-512 variant beside its plain-C reference. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels_internal.h"

/* Mask of the first `left` lanes (left in 0..16). */
static inline __mmask16 tail_mask(int64_t left)
{
	return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}

/*
 * e^x for 16 lanes: x = n ln2 + r, |r| <= ln2/2, Cephes' degree-6 polynomial for e^r, then
 * scalef by 2^n. Relative error about 2 ulp; x is clamped to [-104, 89] first, so the result
 * is 0 below (denormal range included) and +inf above, never NaN for finite x.
 */
static inline LBK_TARGET_AVX512 __m512 exp512(__m512 x)
{
	x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(89.0f));
	__m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
					_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	__m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
	r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
	__m512 p = _mm512_set1_ps(1.9875691500e-4f);
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
	p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
	return _mm512_scalef_ps(p, n);
}

/* ---- RMSNorm: o = weight * x / sqrt(mean(x^2) + eps) ---- */

void lbk_rmsnorm_ref(float *o, const float *x, const float *weight, int64_t n, float eps)
{
	float ss = 0.0f;
	for (int64_t j = 0; j < n; j++)
		ss += x[j] * x[j];
	ss /= (float)n;
	ss += eps;
	ss = 1.0f / sqrtf(ss);
	for (int64_t j = 0; j < n; j++)
		o[j] = weight[j] * (ss * x[j]);
}

static LBK_TARGET_AVX512 void rmsnorm_avx512(float *o, const float *x, const float *weight,
					     int64_t n, float eps)
{
	__m512 acc = _mm512_setzero_ps();
	for (int64_t j = 0; j < n; j += 16) {
		__m512 v = _mm512_maskz_loadu_ps(tail_mask(n - j), x + j);
		acc = _mm512_fmadd_ps(v, v, acc);
	}
	float ss = _mm512_reduce_add_ps(acc) / (float)n + eps;
	__m512 s = _mm512_set1_ps(1.0f / sqrtf(ss));
	for (int64_t j = 0; j < n; j += 16) {
		__mmask16 mk = tail_mask(n - j);
		__m512 v = _mm512_mul_ps(s, _mm512_maskz_loadu_ps(mk, x + j));
		_mm512_mask_storeu_ps(o + j, mk,
				      _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, weight + j), v));
	}
}

void lbk_rmsnorm(float *o, const float *x, const float *weight, int64_t n, float eps)
{
	if (n > 0 && lbk_use_avx512())
		rmsnorm_avx512(o, x, weight, n, eps);
	else
		lbk_rmsnorm_ref(o, x, weight, n, eps);
}

/* ---- LayerNorm: o = (x - mean) / sqrt(var + eps) * gamma + beta, two passes for var ---- */

void lbk_layernorm_ref(float *o, const float *x, const float *gamma, const float *beta,
		       int64_t n, float eps)
{
	float mean = 0.0f;
	for (int64_t j = 0; j < n; j++)
		mean += x[j];
	mean /= (float)n;
	float var = 0.0f;
	for (int64_t j = 0; j < n; j++)
		var += (x[j] - mean) * (x[j] - mean);
	var /= (float)n;
	float inv = 1.0f / sqrtf(var + eps);
	for (int64_t j = 0; j < n; j++)
		o[j] = (x[j] - mean) * inv * gamma[j] + beta[j];
}

static LBK_TARGET_AVX512 void layernorm_avx512(float *o, const float *x, const float *gamma,
					       const float *beta, int64_t n, float eps)
{
	__m512 acc = _mm512_setzero_ps();
	for (int64_t j = 0; j < n; j += 16)
		acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(tail_mask(n - j), x + j));
	float mean = _mm512_reduce_add_ps(acc) / (float)n;
	__m512 mv = _mm512_set1_ps(mean);
	acc = _mm512_setzero_ps();
	for (int64_t j = 0; j < n; j += 16) {
		__mmask16 mk = tail_mask(n - j);
		__m512 d = _mm512_maskz_sub_ps(mk, _mm512_maskz_loadu_ps(mk, x + j), mv);
		acc = _mm512_fmadd_ps(d, d, acc);
	}
	float var = _mm512_reduce_add_ps(acc) / (float)n;
	__m512 inv = _mm512_set1_ps(1.0f / sqrtf(var + eps));
	for (int64_t j = 0; j < n; j += 16) {
		__mmask16 mk = tail_mask(n - j);
		__m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, x + j), mv), inv);
		__m512 r = _mm512_fmadd_ps(d, _mm512_maskz_loadu_ps(mk, gamma + j),
					   _mm512_maskz_loadu_ps(mk, beta + j));
		_mm512_mask_storeu_ps(o + j, mk, r);
	}
}

void lbk_layernorm(float *o, const float *x, const float *gamma, const float *beta, int64_t n,
		   float eps)
{
	if (n > 0 && lbk_use_avx512())
		layernorm_avx512(o, x, gamma, beta, n, eps);
	else
		lbk_layernorm_ref(o, x, gamma, beta, n, eps);
}

/* ---- softmax, in place, max subtracted ---- */

void lbk_softmax_ref(float *x, int64_t n)
{
	if (n <= 0)
		return;
	float max_val = x[0];
	for (int64_t i = 1; i < n; i++)
		if (x[i] > max_val)
			max_val = x[i];
	float sum = 0.0f;
	for (int64_t i = 0; i < n; i++) {
		x[i] = expf(x[i] - max_val);
		sum += x[i];
	}
	for (int64_t i = 0; i < n; i++)
		x[i] /= sum;
}

static LBK_TARGET_AVX512 void softmax_avx512(float *x, int64_t n)
{
	__m512 mx = _mm512_set1_ps(-INFINITY);
	for (int64_t i = 0; i < n; i += 16)
		mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY),
							    tail_mask(n - i), x + i));
	__m512 mv = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
	__m512 sum = _mm512_setzero_ps();
	for (int64_t i = 0; i < n; i += 16) {
		__mmask16 mk = tail_mask(n - i);
		__m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, x + i), mv));
		sum = _mm512_mask_add_ps(sum, mk, sum, e);
		_mm512_mask_storeu_ps(x + i, mk, e);
	}
	__m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
	for (int64_t i = 0; i < n; i += 16) {
		__mmask16 mk = tail_mask(n - i);
		_mm512_mask_storeu_ps(x + i, mk, _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, x + i), inv));
	}
}

void lbk_softmax(float *x, int64_t n)
{
	if (n > 0 && lbk_use_avx512())
		softmax_avx512(x, n);
	else
		lbk_softmax_ref(x, n);
}

/* ---- SiLU gate: h = h * sigmoid(h) * g ---- */

void lbk_silu_mul_ref(float *h, const float *g, int64_t n)
{
	for (int64_t i = 0; i < n; i++) {
		float val = h[i];
		val *= (1.0f / (1.0f + expf(-val)));
		h[i] = val * g[i];
	}
}

static LBK_TARGET_AVX512 void silu_mul_avx512(float *h, const float *g, int64_t n)
{
	const __m512 one = _mm512_set1_ps(1.0f);
	for (int64_t i = 0; i < n; i += 16) {
		__mmask16 mk = tail_mask(n - i);
		__m512 v = _mm512_maskz_loadu_ps(mk, h + i);
		__m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), v));
		__m512 s = _mm512_div_ps(v, _mm512_add_ps(one, e));
		_mm512_mask_storeu_ps(h + i, mk, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(mk, g + i)));
	}
}

void lbk_silu_mul(float *h, const float *g, int64_t n)
{
	if (n > 0 && lbk_use_avx512())
		silu_mul_avx512(h, g, n);
	else
		lbk_silu_mul_ref(h, g, n);
}

/* ---- GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) ---- */

#define LBK_GELU_C 0.7978845608028654f /* sqrt(2/pi) */

void lbk_gelu_ref(float *x, int64_t n)
{
	for (int64_t i = 0; i < n; i++) {
		float v = x[i];
		x[i] = 0.5f * v * (1.0f + tanhf(LBK_GELU_C * (v + 0.044715f * v * v * v)));
	}
}

/* tanh(u) = 1 - 2 / (e^(2u) + 1): exact limits +-1 where e^(2u) saturates to inf or 0. */
static LBK_TARGET_AVX512 void gelu_avx512(float *x, int64_t n)
{
	const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
	for (int64_t i = 0; i < n; i += 16) {
		__mmask16 mk = tail_mask(n - i);
		__m512 v = _mm512_maskz_loadu_ps(mk, x + i);
		__m512 v3 = _mm512_mul_ps(_mm512_mul_ps(v, v), v);
		__m512 u = _mm512_mul_ps(_mm512_set1_ps(LBK_GELU_C),
					 _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), v3, v));
		__m512 e = exp512(_mm512_mul_ps(two, u));
		__m512 t = _mm512_sub_ps(one, _mm512_div_ps(two, _mm512_add_ps(e, one)));
		__m512 r = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), v), _mm512_add_ps(one, t));
		_mm512_mask_storeu_ps(x + i, mk, r);
	}
}

void lbk_gelu(float *x, int64_t n)
{
	if (n > 0 && lbk_use_avx512())
		gelu_avx512(x, n);
	else
		lbk_gelu_ref(x, n);
}

/* ---- RoPE, llama2.c's pairing: (2i, 2i+1) within each head, angle pos * theta^(-2i/hs) ---- */

void lbk_rope_ref(float *q, float *k, int64_t pos, int64_t n_heads, int64_t n_kv_heads,
		  int64_t head_size, float theta)
{
	/* llama2.c: kv_dim <= dim since n_heads is a multiple of n_kv_heads. */
	int64_t dim = n_heads * head_size, kv_dim = n_kv_heads * head_size;
	for (int64_t i = 0; i < dim; i += 2) {
		int64_t head_dim = i % head_size;
		float freq = 1.0f / powf(theta, (float)head_dim / (float)head_size);
		float val = (float)pos * freq;
		float fcr = cosf(val), fci = sinf(val);
		int rotn = i < kv_dim ? 2 : 1; /* 2: rotate q and k, 1: q only */
		for (int v = 0; v < rotn; v++) {
			float *vec = v == 0 ? q : k;
			float v0 = vec[i], v1 = vec[i + 1];
			vec[i] = v0 * fcr - v1 * fci;
			vec[i + 1] = v0 * fci + v1 * fcr;
		}
	}
}

/* The same angles computed once per pair index and applied to every head (no SIMD: RoPE is
 * O(dim) per token, cheap next to the matmuls; the saving is the sin/cos/pow per head). */
void lbk_rope(float *q, float *k, int64_t pos, int64_t n_heads, int64_t n_kv_heads,
	      int64_t head_size, float theta)
{
	for (int64_t hd = 0; hd + 1 < head_size; hd += 2) {
		float freq = 1.0f / powf(theta, (float)hd / (float)head_size);
		float val = (float)pos * freq;
		float fcr = cosf(val), fci = sinf(val);
		for (int64_t h = 0; h < n_heads; h++) {
			float *p = q + h * head_size + hd;
			float v0 = p[0], v1 = p[1];
			p[0] = v0 * fcr - v1 * fci;
			p[1] = v0 * fci + v1 * fcr;
		}
		for (int64_t h = 0; h < n_kv_heads; h++) {
			float *p = k + h * head_size + hd;
			float v0 = p[0], v1 = p[1];
			p[0] = v0 * fcr - v1 * fci;
			p[1] = v0 * fci + v1 * fcr;
		}
	}
}

void lbk_embed(float *o, const float *table, int64_t token, int64_t dim)
{
	memcpy(o, table + token * dim, (size_t)dim * sizeof(float));
}
