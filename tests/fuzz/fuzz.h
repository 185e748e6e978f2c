/* What a fuzz target defines: libFuzzer's entry point, also called by replay.c's main. A target
 * keeps any set-up it needs in statics made on the first call (there is no other hook). */
#ifndef LAYERBANK_TESTS_FUZZ_H
#define LAYERBANK_TESTS_FUZZ_H

#include <stddef.h>
#include <stdint.h>

/* Run one input. Returns 0; a broken invariant is reported on stderr and aborts. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
