/* Sizes with binary suffixes, parsed and printed. */
#include "size.h"

#include <errno.h>
#include <stdio.h>

/* Binary multiple for a suffix letter, as a shift; -1 when it is not one. */
static int suffix_shift(char ch)
{
	switch (ch) {
	case 'k': case 'K': return 10;
	case 'm': case 'M': return 20;
	case 'g': case 'G': return 30;
	case 't': case 'T': return 40;
	default: return -1;
	}
}

int lbu_parse_size(const char *s, uint64_t *out)
{
	const char *p = s;
	uint64_t v = 0;
	int shift = 0;

	/* Syntax first, so "99999999999999999999Q" is a bad size rather than an overflow. */
	while (*p >= '0' && *p <= '9')
		p++;
	if (p == s)
		return -EINVAL;
	const char *end = p;
	if (*p && suffix_shift(*p) >= 0) {
		shift = suffix_shift(*p);
		p++;
		if (*p == 'i' || *p == 'I')
			p++;
		if (*p == 'b' || *p == 'B')
			p++;
		else if (p[-1] == 'i' || p[-1] == 'I')
			return -EINVAL; /* "1Gi" */
	} else if (*p == 'b' || *p == 'B') {
		p++; /* "4096B" */
	}
	if (*p)
		return -EINVAL;

	for (const char *q = s; q < end; q++) {
		unsigned d = (unsigned)(*q - '0');
		if (v > (UINT64_MAX - d) / 10)
			return -ERANGE;
		v = v * 10 + d;
	}
	if (v > (UINT64_MAX >> shift))
		return -ERANGE;
	*out = v << shift;
	return 0;
}

void lbu_format_size(char *buf, size_t n, uint64_t v)
{
	static const char suffixes[] = "KMGT";
	int best = -1;

	for (int i = 0; i < 4; i++)
		if (v != 0 && (v & ((1ull << (10 * (i + 1))) - 1)) == 0)
			best = i;
	if (best < 0)
		snprintf(buf, n, "%llu", (unsigned long long)v);
	else
		snprintf(buf, n, "%llu%c", (unsigned long long)(v >> (10 * (best + 1))), suffixes[best]);
}
