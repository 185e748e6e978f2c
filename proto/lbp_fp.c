/* layerbank fingerprint similarity (cos(pi * h / 256) to the last bit) and token hash, shared by
 * the daemon and the client library so that both judge every threshold and key alike
 * (PROTOCOL.md, Fingerprint). */
#include "lbp.h"

#include <xxhash.h>

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

double lbp_fp_similarity(uint32_t hamming)
{
	if (hamming > LBP_FP_BITS)
		hamming = LBP_FP_BITS;
	/* cos(pi - x) = -cos(x), and rounding to nearest is symmetric. */
	return hamming <= 128 ? fp_cos[hamming] : -fp_cos[LBP_FP_BITS - hamming];
}

uint32_t lbp_fp_max_hamming(double tau)
{
	/* Similarity falls as h grows: binary search over the same values lbp_fp_similarity
	 * returns, so that similarity(max_hamming(tau)) >= tau holds exactly. tau > 1 or NaN
	 * admits nothing but identical bits: 0. It runs per layer on every lookup, so no walk. */
	uint32_t lo = 0, hi = LBP_FP_BITS;
	if (lbp_fp_similarity(hi) >= tau)
		return hi;
	while (hi - lo > 1) { /* invariant: sim(lo) >= tau or lo == 0; sim(hi) < tau */
		uint32_t mid = lo + (hi - lo) / 2;
		if (lbp_fp_similarity(mid) >= tau)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

void lbp_token_hash(const int32_t *tokens, uint32_t n, uint64_t out[2])
{
	XXH128_hash_t h = XXH3_128bits(tokens, (size_t)n * sizeof(*tokens));

	out[0] = h.low64;
	out[1] = h.high64;
}
