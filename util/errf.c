/* One-line error messages into a caller's buffer. */
#include "errf.h"

#include <stdarg.h>
#include <stdio.h>

static void verrf(char *err, size_t errlen, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));

/* What goes in may come from outside (a model name read from a file can hold a newline):
 * control characters become '?', so that the message stays one line wherever it is printed. */
static void verrf(char *err, size_t errlen, const char *fmt, va_list ap)
{
	if (!err || !errlen)
		return;
	vsnprintf(err, errlen, fmt, ap);
	for (char *p = err; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
}

const char *lbu_printable(const char *in, char *out, size_t n)
{
	size_t i = 0;

	if (!n)
		return out;
	for (; in[i] && i + 1 < n; i++)
		out[i] = in[i] >= 0x20 && in[i] < 0x7f ? in[i] : '?';
	out[i] = '\0';
	return out;
}

void lbu_errf(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	verrf(err, errlen, fmt, ap);
	va_end(ap);
}

int lbu_fail(char *err, size_t errlen, int rc, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	verrf(err, errlen, fmt, ap);
	va_end(ap);
	return rc;
}
