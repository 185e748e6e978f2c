/* One-line error messages into a caller's buffer. */
#include "errf.h"

#include <stdarg.h>
#include <stdio.h>

static void verrf(char *err, size_t errlen, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));

static void verrf(char *err, size_t errlen, const char *fmt, va_list ap)
{
	if (err && errlen)
		vsnprintf(err, errlen, fmt, ap);
}

void lbp_errf(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	verrf(err, errlen, fmt, ap);
	va_end(ap);
}

int lbp_fail(char *err, size_t errlen, int rc, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	verrf(err, errlen, fmt, ap);
	va_end(ap);
	return rc;
}
