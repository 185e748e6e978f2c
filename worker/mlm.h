/*
 * Masked-token scoring of bidirectional encoders: which positions of an input are masked, and
 * with which token. A BERT-style model sees the token after each position, so next-token
 * scoring measures nothing of it; it is scored as it was trained, on tokens it cannot see.
 */
#ifndef LAYERBANK_WORKER_MLM_H
#define LAYERBANK_WORKER_MLM_H

#include <stdint.h>

/* The mask token: tok512.bin's id 0, <unk>, which lbw_tokenizer_encode never gives (no piece
 * of the vocabulary or pair of pieces spells "<unk>", and unknown bytes fall back to 3..258). */
#define LBW_MLM_MASK_ID 0
/* Share of positions masked, in percent, and the seed of their keys. */
#define LBW_MLM_PERCENT 15
#define LBW_MLM_SEED 1

/*
 * The positions of tokens[0..n) to mask (tokens[0] is BOS and never masked): m =
 * (LBW_MLM_PERCENT * (n - 1) + 50) / 100 of positions 1..n-1, at least 1, those with the
 * smallest keys, ties to the earlier position. Position p's key is lbu_mix64(seed ^ (a | b << 21
 * | c << 42)) with a, b, c tokens[p - 1], tokens[p] and tokens[p + 1] (0x1fffff past the end):
 * a function of the text around p only, so an exact repeat is masked the same way and a
 * near-duplicate differently only near its edit, and the cache sees a stream's repeats as
 * repeats. Tokens must be in 0..2^21-1. pos gets the m positions in increasing order.
 * @return m (0 when n < 2); -ENOMEM.
 */
int32_t lbw_mlm_select(const int32_t *tokens, int32_t n, uint64_t seed, int32_t *pos);

#endif
