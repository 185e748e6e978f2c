/* layerbank transformer kernels (lbk_*): fp32, AVX-512 and AVX2 variants with a plain-C
 * reference beside each, dispatched by CPUID at run time (AVX-512, then AVX2, then scalar),
 * and a bf16 GEMM on AVX512_BF16.
 * Shapes are given in comments as in llama2.c; index math is 64-bit. */
#ifndef LAYERBANK_KERNELS_H
#define LAYERBANK_KERNELS_H

#include <stddef.h>
#include <stdint.h>

enum lbk_isa { LBK_ISA_SCALAR = 0, LBK_ISA_AVX2 = 1, LBK_ISA_AVX512 = 2 };

/* The best ISA this CPU has, capped by the environment variable LBK_ISA (avx512, avx2 or
 * scalar) when it is set; lbk_force_isa lowers it further (tests compare the variants). */
enum lbk_isa lbk_isa(void);
void lbk_force_isa(enum lbk_isa isa);
/* "scalar", "avx2" or "avx512" (as $LBK_ISA spells them); "?" for another value. */
const char *lbk_isa_name(enum lbk_isa isa);

/* ---- matrix products. W is row-major [n][k] (a Linear layer's weight, llama2.c order). ---- */

/* y[m][n] = x[m][k] . W^T (+ bias[n] when bias is not NULL). */
void lbk_matmul(float *y, const float *x, const float *w, const float *bias, int64_t m, int64_t n,
		int64_t k);
void lbk_matmul_ref(float *y, const float *x, const float *w, const float *bias, int64_t m,
		    int64_t n, int64_t k);

/* W packed once into the micro-kernel's panel layout, for repeated GEMMs. */
struct lbk_packed;
struct lbk_packed *lbk_pack(const float *w, int64_t n, int64_t k);
void lbk_packed_free(struct lbk_packed *p);
/* y[m][n] = x[m][k] . W^T (+ bias), on up to threads threads (1: the caller's only). */
void lbk_gemm(float *y, const float *x, const struct lbk_packed *w, const float *bias, int64_t m,
	      int threads);

/*
 * ---- bf16 GEMM: W rounded to bfloat16 once when packed, x rounded per call, fp32 sums ----
 * Rounding is vcvtne2ps2bf16's: to nearest even, a zero or denormal to the zero of its sign, a
 * NaN quiet. Each output is the fp32 sum over k pairs (2p, 2p+1) in order, each pair added as
 * vdpbf16ps adds it: first the product of elements 2p+1, then that of 2p (bf16 products are
 * exact in fp32); the bias last. Products or sums in the fp32 denormal range may differ
 * (vdpbf16ps flushes them to zero). With normal values the fallback gives lbk_gemm_bf16_ref's
 * bits, and so does the vdpbf16ps kernel on a CPU that adds as the SDM specifies (Zen 5 does:
 * tests/test_kernels_bf16 counts it); the tests hold it to fp32 summation error of them.
 */

/* Nonzero when lbk_gemm_bf16 runs its vdpbf16ps kernel: the CPU has AVX512_BF16 (CPUID leaf 7
 * subleaf 1 EAX bit 5, with the zmm state enabled by the OS) and lbk_isa() is LBK_ISA_AVX512
 * ($LBK_ISA=avx2 or scalar, or lbk_force_isa below it, turn it off). Otherwise lbk_gemm_bf16 runs
 * a plain-C loop over the same packed panels (lbk_gemm_bf16_ref's sums, far slower). */
int lbk_has_bf16(void);
/* f rounded to bfloat16 (its upper 16 bits) as described above. */
uint16_t lbk_bf16_round(float f);

/* W [n][k] rounded to bf16 and packed once into the vdpbf16ps kernel's panels. NULL with errno
 * EINVAL (w NULL, n or k below 1) or ENOMEM. */
struct lbk_packed_bf16;
struct lbk_packed_bf16 *lbk_pack_bf16(const float *w, int64_t n, int64_t k);
void lbk_packed_bf16_free(struct lbk_packed_bf16 *p);
/* y[m][n] = bf16(x[m][k]) . bf16(W)^T (+ bias[n], fp32, when not NULL), on up to threads threads.
 * Every thread count gives the same bits. Nothing is done for m below 1 or w NULL. */
void lbk_gemm_bf16(float *y, const float *x, const struct lbk_packed_bf16 *w, const float *bias,
		   int64_t m, int threads);
/* The plain-C reference, from the unpacked fp32 W [n][k]. */
void lbk_gemm_bf16_ref(float *y, const float *x, const float *w, const float *bias, int64_t m,
		       int64_t n, int64_t k);

/* What lbk_gemm_ex applies to each output last. */
enum lbk_act {
	LBK_ACT_NONE = 0,
	LBK_ACT_GELU = 1, /* lbk_gelu's tanh approximation, the same vector code */
};
/*
 * y[m][n] = act(x[m][k] . W^T + bias + res): res [m][n] a residual added to the product (NULL:
 * none; it must not overlap y, which the kernel writes before it reads res), act applied after
 * it. Both happen on the tile in registers before its last store, so neither costs a pass over
 * y. Per element the result is that of lbk_gemm followed by adding res and lbk_gelu, bit for
 * bit, on every tier. An unknown act is taken as LBK_ACT_NONE.
 */
void lbk_gemm_ex(float *y, const float *x, const struct lbk_packed *w, const float *bias,
		 const float *res, int64_t m, int threads, enum lbk_act act);

/* ---- element-wise and row kernels ---- */

void lbk_rmsnorm(float *o, const float *x, const float *weight, int64_t n, float eps);
void lbk_rmsnorm_ref(float *o, const float *x, const float *weight, int64_t n, float eps);
void lbk_layernorm(float *o, const float *x, const float *gamma, const float *beta, int64_t n,
		   float eps);
void lbk_layernorm_ref(float *o, const float *x, const float *gamma, const float *beta,
		       int64_t n, float eps);
/* In place, numerically stable (max subtracted). */
void lbk_softmax(float *x, int64_t n);
void lbk_softmax_ref(float *x, int64_t n);
/* h[i] = silu(h[i]) * g[i] */
void lbk_silu_mul(float *h, const float *g, int64_t n);
void lbk_silu_mul_ref(float *h, const float *g, int64_t n);
/* In place, tanh approximation as in GPT-2/BERT implementations. */
void lbk_gelu(float *x, int64_t n);
void lbk_gelu_ref(float *x, int64_t n);
/* Rotate q [n_heads][head_size] and k [n_kv_heads][head_size] of position pos, pairs (2i, 2i+1),
 * theta^(-2i/head_size), as llama2.c. */
void lbk_rope(float *q, float *k, int64_t pos, int64_t n_heads, int64_t n_kv_heads,
	      int64_t head_size, float theta);
void lbk_rope_ref(float *q, float *k, int64_t pos, int64_t n_heads, int64_t n_kv_heads,
		  int64_t head_size, float theta);
/* o[d] = table[token][d] */
void lbk_embed(float *o, const float *table, int64_t token, int64_t dim);

/*
 * Multi-head attention over a sequence, grouped-query (n_heads a multiple of n_kv_heads).
 * q [seq][n_heads][hs], k and v [seq][n_kv_heads][hs], out [seq][n_heads][hs];
 * causal: position t attends to 0..t; otherwise to all. Scale 1/sqrt(hs). A causal row is,
 * bit for bit, lbk_attention_paged's row of the same position (below): the same code.
 */
void lbk_attention(float *out, const float *q, const float *k, const float *v, int64_t seq,
		   int64_t n_heads, int64_t n_kv_heads, int64_t hs, int causal);
void lbk_attention_ref(float *out, const float *q, const float *k, const float *v, int64_t seq,
		       int64_t n_heads, int64_t n_kv_heads, int64_t hs, int causal);
/*
 * The same with row strides in floats: head h of position t is q + t * ldq + h * hs, head g of
 * k and v at k + t * ldk + g * hs and v + t * ldv + g * hs, out's at out + t * ldo + h * hs.
 * Lets a caller read q, k and v straight out of a fused qkv [seq][3 * dim] buffer and run a
 * subset of the heads (a thread's share) by offsetting the pointers. lbk_attention is this with
 * ldq = ldo = n_heads * hs and ldk = ldv = n_kv_heads * hs. Nothing is done for seq, n_heads,
 * n_kv_heads or hs below 1, seq above 2^62, or n_heads not a multiple of n_kv_heads.
 */
void lbk_attention_strided(float *out, int64_t ldo, const float *q, int64_t ldq, const float *k,
			   int64_t ldk, const float *v, int64_t ldv, int64_t seq, int64_t n_heads,
			   int64_t n_kv_heads, int64_t hs, int causal);

/*
 * Causal attention of nq query rows at positions pos0 .. pos0+nq-1 over keys 0 .. pos0+nq-1 whose
 * K and V rows sit in blocks of 2^bshift positions, so that a decoder runs its new positions
 * against cached blocks in place. Position s's key row [n_kv_heads][hs] is
 *   kblk[s >> bshift] + (s & (2^bshift - 1)) * ldk
 * (kv head g at + g * hs), its value row likewise through vblk and ldv. Blocks are separate
 * allocations anywhere in memory; they are only read, and only the first n_kv_heads * hs floats
 * of the rows of keys 0 .. pos0+nq-1 (the rest of a block may hold anything, unwritten memory
 * included). Query row r, head h, is q + r * ldq + h * hs; it sees keys 0 .. pos0 + r, and its
 * output goes to out + r * ldo + h * hs. Grouped-query as lbk_attention, scale 1/sqrt(hs).
 * Nothing is done for nq, n_heads, n_kv_heads or hs below 1, pos0 below 0, n_heads not a multiple
 * of n_kv_heads, bshift outside 0..62, or pos0 + nq above 2^62.
 *
 * Batch invariance. With one build of lbk on one tier (lbk_isa() at the call), a row's output
 * depends, bit for bit, only on its query, its position and the K and V rows of keys 0 .. its
 * position:
 *   - not on the rest of the call: nq, pos0 and the other rows (a prefill of n rows is the same
 *     bits as n calls of one row each, and as the prefill split into calls at any points);
 *   - not on bshift, ldk, ldv nor on where the blocks are; not on whether the call had its
 *     scratch (lbk_attention_scratch_limit);
 *   - and it equals the row of that position of a causal lbk_attention / lbk_attention_strided
 *     over the same K and V stored contiguously (they run this code with one block).
 * Provided the V rows of keys pos0 .. pos0+nq-1 are finite: on the AVX-512 and AVX2 tiers a key
 * a row cannot see but a later row of its call can still enters the row as 0 * v, which an inf
 * or NaN there would turn NaN. Across tiers the bits differ: the scalar tier is
 * lbk_attention_paged_ref, and the SIMD tiers are within float rounding of it (the vector exp
 * and the summation order; the tests hold them to 2e-5 (1 + |ref|)).
 *
 * Cost: per kv head, a call first transposes the keys 0 .. pos0+nq-1 into its scratch (a one-row
 * call at position t: t + 1 rows of hs floats), then computes the scores from that copy.
 */
void lbk_attention_paged(float *out, int64_t ldo, const float *q, int64_t ldq, int64_t pos0,
			 int64_t nq, const float *const *kblk, const float *const *vblk,
			 int64_t ldk, int64_t ldv, int bshift, int64_t n_heads, int64_t n_kv_heads,
			 int64_t hs);
/* The plain-C reference, which the scalar tier runs: lbk_attention_paged's bits on that tier,
 * and lbk_attention_ref's causal rows; batch invariant in the same sense on every tier. */
void lbk_attention_paged_ref(float *out, int64_t ldo, const float *q, int64_t ldq, int64_t pos0,
			     int64_t nq, const float *const *kblk, const float *const *vblk,
			     int64_t ldk, int64_t ldv, int bshift, int64_t n_heads,
			     int64_t n_kv_heads, int64_t hs);

/*
 * A FusedKV reconstruction layer's operands (arXiv 2512.03870): keys a . K + a2 . K2 and values
 * b . V + b2 . V2, elementwise over a row's n_kv_heads * hs channels (a, a2, b, b2 of that many
 * floats), K2 and V2 read through their own block tables with the same bshift, ldk and ldv.
 */
struct lbk_fused {
	const float *const *k2blk, *const *v2blk;
	const float *a, *a2, *b, *b2;
};

/*
 * lbk_attention_paged over the keys and values f rebuilds, rebuilt inside the kernel as it reads
 * them (the keys once per kv head as it transposes them, the values as it sums them), never
 * stored. Same rules, batch invariance included. Each rebuilt element is rounded as C rounds
 * a * k + a2 * k2 without contraction (each product, then the sum), so the result is, bit for
 * bit on each tier, lbk_attention_paged's over K and V rebuilt that way beforehand; with a = 0,
 * a2 = 1, b = 1, b2 = 0, lbk_attention_paged's over K2 and V.
 */
void lbk_attention_paged_fused(float *out, int64_t ldo, const float *q, int64_t ldq, int64_t pos0,
			       int64_t nq, const float *const *kblk, const float *const *vblk,
			       int64_t ldk, int64_t ldv, int bshift, int64_t n_heads,
			       int64_t n_kv_heads, int64_t hs, const struct lbk_fused *f);
/* Its plain-C reference, which the scalar tier runs. */
void lbk_attention_paged_fused_ref(float *out, int64_t ldo, const float *q, int64_t ldq,
				   int64_t pos0, int64_t nq, const float *const *kblk,
				   const float *const *vblk, int64_t ldk, int64_t ldv, int bshift,
				   int64_t n_heads, int64_t n_kv_heads, int64_t hs,
				   const struct lbk_fused *f);

/*
 * Attention of chosen query rows of a sequence: nq rows at positions pos[0] < pos[1] < ... <
 * pos[nq-1] < nkeys, K and V the rows of keys 0..nkeys-1 as lbk_attention_strided takes them
 * (head g of key s at k + s * ldk + g * hs, v likewise). Causal: row r sees keys 0..pos[r];
 * otherwise all nkeys. Query row r, head h, is q + r * ldq + h * hs; its output out + r * ldo +
 * h * hs. Grouped-query as lbk_attention, scale 1/sqrt(hs). Nothing is done for nq, n_heads,
 * n_kv_heads or hs below 1, n_heads not a multiple of n_kv_heads, nkeys above 2^62, or pos not
 * strictly ascending within 0..nkeys-1.
 *
 * Batch invariance as lbk_attention_paged's, bidirectional rows included: on one tier, row r is
 * bit for bit row pos[r] of lbk_attention_strided over the same K and V (seq = nkeys, causal
 * alike) whose query row pos[r] is this q row, whatever the other rows (provided, causal, the V
 * rows of keys up to pos[nq-1] are finite). A layer can so compute some positions of a sequence
 * alone and get the bits of the whole layer's. Cost: the keys' transpose per kv head (keys
 * 0..pos[nq-1] causal, all nkeys otherwise), then nq rows of scores and P.V.
 */
void lbk_attention_rows(float *out, int64_t ldo, const float *q, int64_t ldq, const int64_t *pos,
			int64_t nq, const float *k, int64_t ldk, const float *v, int64_t ldv,
			int64_t nkeys, int64_t n_heads, int64_t n_kv_heads, int64_t hs, int causal);
/* The plain-C reference, which the scalar tier runs: lbk_attention_ref's rows pos[r]. */
void lbk_attention_rows_ref(float *out, int64_t ldo, const float *q, int64_t ldq,
			    const int64_t *pos, int64_t nq, const float *k, int64_t ldk,
			    const float *v, int64_t ldv, int64_t nkeys, int64_t n_heads,
			    int64_t n_kv_heads, int64_t hs, int causal);

/*
 * Scratch of the AVX-512 and AVX2 attention: one buffer per thread holding one kv head's K
 * transposed (hs x keys floats, keys rounded up to 32) and an 8-row output tile, about
 * 4 hs (keys + 8) bytes; kept from call to call (grown by half at least when a call needs more)
 * and freed when the thread exits: no allocation per call once a thread has seen its longest
 * sequence. When it cannot be allocated, or would pass this limit (bytes a thread may hold;
 * none by default), the call runs without it, from the stack: the same bits, a few times slower
 * (the scores are recomputed for each 32 (AVX2: 16) output columns). Nothing fails either way.
 * Tests use 0 to run that path; a worker may use it to cap its memory.
 */
void lbk_attention_scratch_limit(size_t bytes);

#endif
