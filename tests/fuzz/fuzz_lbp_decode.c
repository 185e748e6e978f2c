/* libFuzzer target: the control-message decoder (proto/lbp.c lbp_decode) on arbitrary bytes.
 * EPROTO comes exactly for the frames that announce another version; a frame it rejects comes
 * with a documented code and a printable fault; a frame it accepts survives a round trip:
 * re-encoded, it decodes to the same message, the encoding is stable and no longer than the
 * input. */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "lbp.h"

#define broken(...) fuzz_broken("fuzz_lbp_decode", __VA_ARGS__)

/* NUL-terminated inside its array, and only printable ASCII: it goes into ERROR frames and
 * log lines. */
static bool printable(const char *s, size_t cap)
{
	size_t n = strnlen(s, cap);
	if (n == cap)
		return false;
	for (size_t i = 0; i < n; i++)
		if (s[i] < 0x20 || s[i] > 0x7e)
			return false;
	return true;
}

/*
 * PROTOCOL.md 2.4, written out again here: a frame that opens with a non-empty array header
 * and a complete integer >= 0 (any encoding) carries that integer as its version. @return
 * true with *v, else false.
 */
static bool leading_version(const uint8_t *p, size_t n, uint64_t *v)
{
	size_t at;
	uint64_t count = 0;

	if (n >= 1 && p[0] >= 0x91 && p[0] <= 0x9f)
		at = 1;
	else if (n >= 3 && p[0] == 0xdc && (count = (uint64_t)p[1] << 8 | p[2]))
		at = 3;
	else if (n >= 5 && p[0] == 0xdd &&
		 (count = (uint64_t)p[1] << 24 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 8 | p[4]))
		at = 5;
	else
		return false;
	if (at >= n)
		return false;
	uint8_t b = p[at++];
	if (b <= 0x7f) {
		*v = b;
		return true;
	}
	/* uint 8..64 (0xcc..0xcf), int 8..64 (0xd0..0xd3): 1, 2, 4 or 8 big-endian bytes */
	if (b < 0xcc || b > 0xd3)
		return false;
	size_t len = (size_t)1 << (b & 3);
	if (len > n - at)
		return false;
	if (b >= 0xd0 && (p[at] & 0x80))
		return false; /* negative */
	*v = 0;
	for (size_t i = 0; i < len; i++)
		*v = *v << 8 | p[at + i];
	return true;
}

static void check_fault(int rc, size_t size, const struct lbp_fault *f)
{
	if (rc != -EPROTO && rc != -EBADMSG && rc != -EMSGSIZE && rc != -ENOMEM)
		broken("lbp_decode returned %d, not a documented code", rc);
	if (!printable(f->field, sizeof(f->field)) || !printable(f->reason, sizeof(f->reason)))
		broken("fault not a printable string (rc %d)", rc);
	if (!f->field[0] || !f->reason[0])
		broken("empty fault: field '%s', reason '%s' (rc %d)", f->field, f->reason, rc);
	/* An unsupported version is reported as such and nothing else (PROTOCOL.md 2.4). */
	if (rc == -EPROTO && strcmp(f->field, "version") != 0)
		broken("EPROTO with field '%s'", f->field);
	if ((rc == -EMSGSIZE) != (size > LBP_MAX_FRAME))
		broken("EMSGSIZE is for frames over %u bytes only (rc %d, %zu bytes)", LBP_MAX_FRAME,
		       rc, size);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t f1[LBP_MAX_FRAME], f2[LBP_MAX_FRAME];
	struct lbp_msg a, b;
	struct lbp_fault fault;
	int rc, n1, n2;

	/* Different fillings: a byte lbp_decode fails to write shows up as a difference. */
	memset(&a, 0xa5, sizeof(a));
	memset(&b, 0x5a, sizeof(b));
	memset(&fault, 0xa5, sizeof(fault));
	rc = lbp_decode(data, size, &a, &fault);
	uint64_t version;
	bool other_version = size <= LBP_MAX_FRAME && leading_version(data, size, &version) &&
			     version != LBP_VERSION;
	if (other_version != (rc == -EPROTO))
		broken("rc %d for a frame %s version %u ('%s': %s)", rc,
		       other_version ? "announcing a version other than" : "not announcing a version other than",
		       LBP_VERSION, fault.field, fault.reason);
	if (rc < 0) {
		check_fault(rc, size, &fault);
		return 0;
	}
	if (rc != 0)
		broken("lbp_decode returned %d", rc);
	if (fault.field[0] || fault.reason[0])
		broken("fault left set on success: '%s': %s", fault.field, fault.reason);

	n1 = lbp_encode(&a, f1, sizeof(f1));
	if (n1 <= 0)
		broken("a decoded %s does not encode: %d", lbp_type_name(a.type), n1);
	/* Shortest integer and header encodings, the same keys and strings: never longer. */
	if ((size_t)n1 > size)
		broken("%s re-encoded in %d bytes, more than the %zu it came in",
		       lbp_type_name(a.type), n1, size);
	rc = lbp_decode(f1, (size_t)n1, &b, &fault);
	if (rc != 0)
		broken("the re-encoded %s does not decode: %d, '%s': %s", lbp_type_name(a.type), rc,
		       fault.field, fault.reason);
	if (memcmp(&a, &b, sizeof(a)) != 0)
		broken("%s changed in a round trip", lbp_type_name(a.type));
	n2 = lbp_encode(&b, f2, sizeof(f2));
	if (n2 != n1 || memcmp(f1, f2, (size_t)n1) != 0)
		broken("%s encodes differently the second time", lbp_type_name(a.type));
	return 0;
}
