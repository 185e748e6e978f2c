/* Sizes as people write them: "64M", "1G", "4096", "2GiB" (binary multiples), and back. The
 * daemon's options, the worker's --private-cache and the benchmarks' budgets read them alike. */
#ifndef LAYERBANK_UTIL_SIZE_H
#define LAYERBANK_UTIL_SIZE_H

#include <stddef.h>
#include <stdint.h>

/* Parse "64M", "1G", "4096", "512k", "2GiB", "4096B". *out is written only on success.
 * @return 0; -EINVAL (not a size); -ERANGE (above 2^64 - 1). */
int lbu_parse_size(const char *s, uint64_t *out);
/* The other way: "1G" for 1 << 30, "1536M", "4095": the largest suffix that divides exactly. */
void lbu_format_size(char *buf, size_t n, uint64_t v);

#endif
