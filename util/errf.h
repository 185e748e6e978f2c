/* One-line error messages into a caller's buffer: the err/errlen convention of the daemon's,
 * the worker's and the benchmarks' loaders and parsers. */
#ifndef LAYERBANK_UTIL_ERRF_H
#define LAYERBANK_UTIL_ERRF_H

#include <stddef.h>

/* Format into err (errlen bytes, always NUL-terminated, control characters replaced by '?'
 * so that it is one line); nothing when err is NULL or errlen 0. */
void lbu_errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* lbu_errf, then @return rc: `return lbu_fail(err, errlen, -EINVAL, "...")`. */
int lbu_fail(char *err, size_t errlen, int rc, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* in for a screen or a log line: printable ASCII only (anything else becomes '?'), cut to fit
 * out (n bytes, NUL-terminated). Client-chosen strings such as model names go through it
 * before a terminal sees them. @return out. */
const char *lbu_printable(const char *in, char *out, size_t n);

#endif
