/* Grouped-query multi-head attention over a whole sequence, causal or bidirectional: a
 * two-pass plain-C reference and an AVX-512 single pass with an online (running-max) softmax.
 * Neither allocates: out itself holds the running weighted sum. */
#include <immintrin.h>
#include <math.h>

#include "kernels_internal.h"

/*
 * Reference: for each query row, pass 1 finds the max score, pass 2 sums exp(score - max)
 * and accumulates exp(score - max) * v into out, which is then divided by the sum.
 */
void lbk_attention_ref(float *out, const float *q, const float *k, const float *v, int64_t seq,
		       int64_t n_heads, int64_t n_kv_heads, int64_t hs, int causal)
{
	const int64_t group = n_heads / n_kv_heads;
	const float scale = 1.0f / sqrtf((float)hs);
	for (int64_t t = 0; t < seq; t++) {
		int64_t end = causal ? t + 1 : seq; /* keys 0..end-1 */
		for (int64_t h = 0; h < n_heads; h++) {
			const float *qt = q + (t * n_heads + h) * hs; /* [hs] */
			float *ot = out + (t * n_heads + h) * hs;	/* [hs] */
			int64_t kvh = h / group;
			float max_val = -INFINITY;
			for (int64_t s = 0; s < end; s++) {
				const float *ks = k + (s * n_kv_heads + kvh) * hs;
				float score = 0.0f;
				for (int64_t i = 0; i < hs; i++)
					score += qt[i] * ks[i];
				score *= scale;
				if (score > max_val)
					max_val = score;
			}
			for (int64_t i = 0; i < hs; i++)
				ot[i] = 0.0f;
			float sum = 0.0f;
			for (int64_t s = 0; s < end; s++) {
				const float *ks = k + (s * n_kv_heads + kvh) * hs;
				const float *vs = v + (s * n_kv_heads + kvh) * hs;
				float score = 0.0f;
				for (int64_t i = 0; i < hs; i++)
					score += qt[i] * ks[i];
				float p = expf(score * scale - max_val);
				sum += p;
				for (int64_t i = 0; i < hs; i++)
					ot[i] += p * vs[i];
			}
			for (int64_t i = 0; i < hs; i++)
				ot[i] /= sum;
		}
	}
}

static inline __mmask16 tail_mask(int64_t left)
{
	return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}

static LBK_TARGET_AVX512 void attention_avx512(float *out, const float *q, const float *k,
					       const float *v, int64_t seq, int64_t n_heads,
					       int64_t n_kv_heads, int64_t hs, int causal)
{
	const int64_t group = n_heads / n_kv_heads;
	const float scale = 1.0f / sqrtf((float)hs);
	for (int64_t t = 0; t < seq; t++) {
		int64_t end = causal ? t + 1 : seq;
		for (int64_t h = 0; h < n_heads; h++) {
			const float *qt = q + (t * n_heads + h) * hs; /* [hs] */
			float *ot = out + (t * n_heads + h) * hs;	/* [hs], running sum */
			int64_t kvh = h / group;
			for (int64_t i = 0; i < hs; i += 16)
				_mm512_mask_storeu_ps(ot + i, tail_mask(hs - i), _mm512_setzero_ps());
			float max_val = -INFINITY, sum = 0.0f;
			for (int64_t s = 0; s < end; s++) {
				const float *ks = k + (s * n_kv_heads + kvh) * hs;
				const float *vs = v + (s * n_kv_heads + kvh) * hs;
				__m512 acc = _mm512_setzero_ps();
				for (int64_t i = 0; i < hs; i += 16) {
					__mmask16 mk = tail_mask(hs - i);
					acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, qt + i),
							      _mm512_maskz_loadu_ps(mk, ks + i), acc);
				}
				float score = _mm512_reduce_add_ps(acc) * scale;
				if (score > max_val) {
					/* Rescale what was summed under the old max (0 on the first key). */
					float c = expf(max_val - score);
					max_val = score;
					sum *= c;
					__m512 cv = _mm512_set1_ps(c);
					for (int64_t i = 0; i < hs; i += 16) {
						__mmask16 mk = tail_mask(hs - i);
						_mm512_mask_storeu_ps(
							ot + i, mk,
							_mm512_mul_ps(cv, _mm512_maskz_loadu_ps(mk, ot + i)));
					}
				}
				float p = expf(score - max_val);
				sum += p;
				__m512 pv = _mm512_set1_ps(p);
				for (int64_t i = 0; i < hs; i += 16) {
					__mmask16 mk = tail_mask(hs - i);
					__m512 o = _mm512_fmadd_ps(pv, _mm512_maskz_loadu_ps(mk, vs + i),
								   _mm512_maskz_loadu_ps(mk, ot + i));
					_mm512_mask_storeu_ps(ot + i, mk, o);
				}
			}
			__m512 inv = _mm512_set1_ps(1.0f / sum);
			for (int64_t i = 0; i < hs; i += 16) {
				__mmask16 mk = tail_mask(hs - i);
				_mm512_mask_storeu_ps(ot + i, mk,
						      _mm512_mul_ps(inv, _mm512_maskz_loadu_ps(mk, ot + i)));
			}
		}
	}
}

void lbk_attention(float *out, const float *q, const float *k, const float *v, int64_t seq,
		   int64_t n_heads, int64_t n_kv_heads, int64_t hs, int causal)
{
	if (seq <= 0 || n_heads <= 0 || n_kv_heads <= 0 || hs <= 0)
		return;
	if (lbk_use_avx512())
		attention_avx512(out, q, k, v, seq, n_heads, n_kv_heads, hs, causal);
	else
		lbk_attention_ref(out, q, k, v, seq, n_heads, n_kv_heads, hs, causal);
}
