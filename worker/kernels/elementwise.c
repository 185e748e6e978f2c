/* Element-wise and row kernels: RMSNorm, LayerNorm, softmax, SiLU-gate, GELU, RoPE and the
 * embedding lookup, each an AVX-512 and an AVX2 variant beside its plain-C reference (RoPE and
 * the lookup have one plain variant). */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "simd.h"

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
		__m512 v = _mm512_maskz_loadu_ps(lbk_mask16(n - j), x + j);
		acc = _mm512_fmadd_ps(v, v, acc);
	}
	float ss = _mm512_reduce_add_ps(acc) / (float)n + eps;
	__m512 s = _mm512_set1_ps(1.0f / sqrtf(ss));
	for (int64_t j = 0; j < n; j += 16) {
		__mmask16 mk = lbk_mask16(n - j);
		__m512 v = _mm512_mul_ps(s, _mm512_maskz_loadu_ps(mk, x + j));
		_mm512_mask_storeu_ps(o + j, mk,
				      _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, weight + j), v));
	}
}

static LBK_TARGET_AVX2 void rmsnorm_avx2(float *o, const float *x, const float *weight,
					 int64_t n, float eps)
{
	__m256 acc = _mm256_setzero_ps();
	for (int64_t j = 0; j < n; j += 8) {
		__m256 v = _mm256_maskload_ps(x + j, lbk_mask8(n - j));
		acc = _mm256_fmadd_ps(v, v, acc);
	}
	float ss = lbk_hsum256(acc) / (float)n + eps;
	__m256 s = _mm256_set1_ps(1.0f / sqrtf(ss));
	for (int64_t j = 0; j < n; j += 8) {
		__m256i mk = lbk_mask8(n - j);
		__m256 v = _mm256_mul_ps(s, _mm256_maskload_ps(x + j, mk));
		_mm256_maskstore_ps(o + j, mk, _mm256_mul_ps(_mm256_maskload_ps(weight + j, mk), v));
	}
}

void lbk_rmsnorm(float *o, const float *x, const float *weight, int64_t n, float eps)
{
	if (n <= 0)
		return;
	switch (lbk_isa()) {
	case LBK_ISA_AVX512:
		rmsnorm_avx512(o, x, weight, n, eps);
		break;
	case LBK_ISA_AVX2:
		rmsnorm_avx2(o, x, weight, n, eps);
		break;
	default:
		lbk_rmsnorm_ref(o, x, weight, n, eps);
	}
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
		acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(lbk_mask16(n - j), x + j));
	float mean = _mm512_reduce_add_ps(acc) / (float)n;
	__m512 mv = _mm512_set1_ps(mean);
	acc = _mm512_setzero_ps();
	for (int64_t j = 0; j < n; j += 16) {
		__mmask16 mk = lbk_mask16(n - j);
		__m512 d = _mm512_maskz_sub_ps(mk, _mm512_maskz_loadu_ps(mk, x + j), mv);
		acc = _mm512_fmadd_ps(d, d, acc);
	}
	float var = _mm512_reduce_add_ps(acc) / (float)n;
	__m512 inv = _mm512_set1_ps(1.0f / sqrtf(var + eps));
	for (int64_t j = 0; j < n; j += 16) {
		__mmask16 mk = lbk_mask16(n - j);
		__m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, x + j), mv), inv);
		__m512 r = _mm512_fmadd_ps(d, _mm512_maskz_loadu_ps(mk, gamma + j),
					   _mm512_maskz_loadu_ps(mk, beta + j));
		_mm512_mask_storeu_ps(o + j, mk, r);
	}
}

static LBK_TARGET_AVX2 void layernorm_avx2(float *o, const float *x, const float *gamma,
					   const float *beta, int64_t n, float eps)
{
	__m256 acc = _mm256_setzero_ps();
	for (int64_t j = 0; j < n; j += 8)
		acc = _mm256_add_ps(acc, _mm256_maskload_ps(x + j, lbk_mask8(n - j)));
	float mean = lbk_hsum256(acc) / (float)n;
	__m256 mv = _mm256_set1_ps(mean);
	acc = _mm256_setzero_ps();
	for (int64_t j = 0; j < n; j += 8) {
		__m256i mk = lbk_mask8(n - j);
		/* lanes past n: 0 - mean, masked off before they are squared in */
		__m256 d = _mm256_and_ps(_mm256_sub_ps(_mm256_maskload_ps(x + j, mk), mv),
					 _mm256_castsi256_ps(mk));
		acc = _mm256_fmadd_ps(d, d, acc);
	}
	float var = lbk_hsum256(acc) / (float)n;
	__m256 inv = _mm256_set1_ps(1.0f / sqrtf(var + eps));
	for (int64_t j = 0; j < n; j += 8) {
		__m256i mk = lbk_mask8(n - j);
		__m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_maskload_ps(x + j, mk), mv), inv);
		__m256 r = _mm256_fmadd_ps(d, _mm256_maskload_ps(gamma + j, mk),
					   _mm256_maskload_ps(beta + j, mk));
		_mm256_maskstore_ps(o + j, mk, r);
	}
}

void lbk_layernorm(float *o, const float *x, const float *gamma, const float *beta, int64_t n,
		   float eps)
{
	if (n <= 0)
		return;
	switch (lbk_isa()) {
	case LBK_ISA_AVX512:
		layernorm_avx512(o, x, gamma, beta, n, eps);
		break;
	case LBK_ISA_AVX2:
		layernorm_avx2(o, x, gamma, beta, n, eps);
		break;
	default:
		lbk_layernorm_ref(o, x, gamma, beta, n, eps);
	}
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
							    lbk_mask16(n - i), x + i));
	__m512 mv = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
	__m512 sum = _mm512_setzero_ps();
	for (int64_t i = 0; i < n; i += 16) {
		__mmask16 mk = lbk_mask16(n - i);
		__m512 e = lbk_exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, x + i), mv));
		sum = _mm512_mask_add_ps(sum, mk, sum, e);
		_mm512_mask_storeu_ps(x + i, mk, e);
	}
	__m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
	for (int64_t i = 0; i < n; i += 16) {
		__mmask16 mk = lbk_mask16(n - i);
		_mm512_mask_storeu_ps(x + i, mk, _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, x + i), inv));
	}
}

static LBK_TARGET_AVX2 void softmax_avx2(float *x, int64_t n)
{
	const __m256 ninf = _mm256_set1_ps(-INFINITY);
	__m256 mx = ninf;
	for (int64_t i = 0; i < n; i += 8) {
		__m256i mk = lbk_mask8(n - i);
		__m256 v = _mm256_blendv_ps(ninf, _mm256_maskload_ps(x + i, mk), _mm256_castsi256_ps(mk));
		mx = _mm256_max_ps(mx, v);
	}
	__m256 mv = _mm256_set1_ps(lbk_hmax256(mx));
	__m256 sum = _mm256_setzero_ps();
	for (int64_t i = 0; i < n; i += 8) {
		__m256i mk = lbk_mask8(n - i);
		__m256 e = lbk_exp256(_mm256_sub_ps(_mm256_maskload_ps(x + i, mk), mv));
		e = _mm256_and_ps(e, _mm256_castsi256_ps(mk));
		sum = _mm256_add_ps(sum, e);
		_mm256_maskstore_ps(x + i, mk, e);
	}
	__m256 inv = _mm256_set1_ps(1.0f / lbk_hsum256(sum));
	for (int64_t i = 0; i < n; i += 8) {
		__m256i mk = lbk_mask8(n - i);
		_mm256_maskstore_ps(x + i, mk, _mm256_mul_ps(_mm256_maskload_ps(x + i, mk), inv));
	}
}

void lbk_softmax(float *x, int64_t n)
{
	if (n <= 0)
		return;
	switch (lbk_isa()) {
	case LBK_ISA_AVX512:
		softmax_avx512(x, n);
		break;
	case LBK_ISA_AVX2:
		softmax_avx2(x, n);
		break;
	default:
		lbk_softmax_ref(x, n);
	}
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
		__mmask16 mk = lbk_mask16(n - i);
		__m512 v = _mm512_maskz_loadu_ps(mk, h + i);
		__m512 e = lbk_exp512(_mm512_sub_ps(_mm512_setzero_ps(), v));
		__m512 s = _mm512_div_ps(v, _mm512_add_ps(one, e));
		_mm512_mask_storeu_ps(h + i, mk, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(mk, g + i)));
	}
}

static LBK_TARGET_AVX2 void silu_mul_avx2(float *h, const float *g, int64_t n)
{
	const __m256 one = _mm256_set1_ps(1.0f);
	for (int64_t i = 0; i < n; i += 8) {
		__m256i mk = lbk_mask8(n - i);
		__m256 v = _mm256_maskload_ps(h + i, mk);
		__m256 e = lbk_exp256(_mm256_sub_ps(_mm256_setzero_ps(), v));
		__m256 s = _mm256_div_ps(v, _mm256_add_ps(one, e));
		_mm256_maskstore_ps(h + i, mk, _mm256_mul_ps(s, _mm256_maskload_ps(g + i, mk)));
	}
}

void lbk_silu_mul(float *h, const float *g, int64_t n)
{
	if (n <= 0)
		return;
	switch (lbk_isa()) {
	case LBK_ISA_AVX512:
		silu_mul_avx512(h, g, n);
		break;
	case LBK_ISA_AVX2:
		silu_mul_avx2(h, g, n);
		break;
	default:
		lbk_silu_mul_ref(h, g, n);
	}
}

/* ---- GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) ---- */

void lbk_gelu_ref(float *x, int64_t n)
{
	for (int64_t i = 0; i < n; i++) {
		float v = x[i];
		x[i] = 0.5f * v * (1.0f + tanhf(LBK_GELU_C * (v + 0.044715f * v * v * v)));
	}
}

static LBK_TARGET_AVX512 void gelu_avx512(float *x, int64_t n)
{
	for (int64_t i = 0; i < n; i += 16) {
		__mmask16 mk = lbk_mask16(n - i);
		_mm512_mask_storeu_ps(x + i, mk, lbk_gelu512(_mm512_maskz_loadu_ps(mk, x + i)));
	}
}

static LBK_TARGET_AVX2 void gelu_avx2(float *x, int64_t n)
{
	for (int64_t i = 0; i < n; i += 8) {
		__m256i mk = lbk_mask8(n - i);
		_mm256_maskstore_ps(x + i, mk, lbk_gelu256(_mm256_maskload_ps(x + i, mk)));
	}
}

void lbk_gelu(float *x, int64_t n)
{
	if (n <= 0)
		return;
	switch (lbk_isa()) {
	case LBK_ISA_AVX512:
		gelu_avx512(x, n);
		break;
	case LBK_ISA_AVX2:
		gelu_avx2(x, n);
		break;
	default:
		lbk_gelu_ref(x, n);
	}
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
