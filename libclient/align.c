/*
 * Token alignment for partial reuse (lb_lem_run_rows): which position of a cached input each
 * position of a new one stands for, as a diff of their token ids says.
 */
#include <errno.h>
#include <stdlib.h>

#include "client_internal.h"

/* Past this many cells of the middle's table, the middle stays unaligned: its time and memory
 * are bounded (8 MiB), and an input that different gains little from the rest. */
#define ALIGN_MAX_CELLS (1u << 22)

/*
 * A longest common subsequence of a[0..n) and b[0..m) (both below 65535 long, so that its
 * lengths fit 16 bits), by dynamic programming from the ends: map[i] = j for each matched pair.
 * @return the pairs matched; -ENOMEM.
 */
static int lcs(const int32_t *a, uint32_t n, const int32_t *b, uint32_t m, int32_t *map)
{
	uint32_t w = m + 1;
	uint16_t *t = calloc((size_t)(n + 1) * w, sizeof(*t));
	int matched = 0;

	if (!t)
		return -ENOMEM;
	/* t[i][j]: the LCS of a[i..n) and b[j..m). */
	for (uint32_t i = n; i-- > 0;)
		for (uint32_t j = m; j-- > 0;) {
			uint16_t down = t[(i + 1) * w + j], right = t[i * w + j + 1];
			t[i * w + j] = a[i] == b[j] ? (uint16_t)(t[(i + 1) * w + j + 1] + 1)
						    : down > right ? down : right;
		}
	for (uint32_t i = 0, j = 0; i < n && j < m;) {
		if (a[i] == b[j]) {
			map[i++] = (int32_t)j++;
			matched++;
		} else if (t[(i + 1) * w + j] >= t[i * w + j + 1]) {
			i++;
		} else {
			j++;
		}
	}
	free(t);
	return matched;
}

int lbi_align(const int32_t *a, uint32_t n, const int32_t *b, uint32_t m, int32_t *map)
{
	uint32_t pre = 0, suf = 0;
	int matched;

	for (uint32_t i = 0; i < n; i++)
		map[i] = -1;
	while (pre < n && pre < m && a[pre] == b[pre]) {
		map[pre] = (int32_t)pre;
		pre++;
	}
	while (suf < n - pre && suf < m - pre && a[n - 1 - suf] == b[m - 1 - suf]) {
		map[n - 1 - suf] = (int32_t)(m - 1 - suf);
		suf++;
	}
	uint32_t an = n - pre - suf, bm = m - pre - suf;
	if (!an || !bm || an >= UINT16_MAX || bm >= UINT16_MAX ||
	    (uint64_t)(an + 1) * (bm + 1) > ALIGN_MAX_CELLS)
		return (int)(pre + suf);
	matched = lcs(a + pre, an, b + pre, bm, map + pre);
	if (matched < 0)
		return matched;
	for (uint32_t i = pre; i < pre + an; i++)
		if (map[i] >= 0)
			map[i] += (int32_t)pre;
	return (int)(pre + suf) + matched;
}
