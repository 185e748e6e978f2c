/* What a fuzz target defines: libFuzzer's entry point, also called by replay.c's main. A target
 * keeps any set-up it needs in statics made on the first call (there is no other hook). */
#ifndef LAYERBANK_TESTS_FUZZ_H
#define LAYERBANK_TESTS_FUZZ_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* Run one input. Returns 0; a broken invariant is reported on stderr and aborts. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One line on stderr, "TARGET: what", for a broken invariant (the caller then aborts, which
 * libFuzzer reports with the input). */
__attribute__((format(printf, 2, 0)))
static inline void fuzz_vreport(const char *target, const char *fmt, va_list ap)
{
	fprintf(stderr, "%s: ", target);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

__attribute__((format(printf, 2, 3), noreturn))
static inline void fuzz_broken(const char *target, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fuzz_vreport(target, fmt, ap);
	va_end(ap);
	abort();
}

#endif
