/*
 * The llama2.c BPE tokenizer (tokenizer.bin / tok512.bin format): loading with validation,
 * encode() and decode() exactly as llama2.c's run.c does them.
 */
#ifndef LAYERBANK_WORKER_TOKENIZER_H
#define LAYERBANK_WORKER_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#define LBW_TOK_BOS 1
#define LBW_TOK_EOS 2
/* Byte fallback: byte b is token b + LBW_TOK_BYTE0 ("<0xXX>"). */
#define LBW_TOK_BYTE0 3
/* Cap on the file's max_token_length. */
#define LBW_TOK_MAX_LEN 4096

struct lbw_tok_index; /* sorted (piece, id) pairs, private */

/* A loaded tokenizer; immutable after lbw_tokenizer_load. */
struct lbw_tokenizer {
	char **vocab;          /* [vocab_size] NUL-terminated pieces (no NUL inside) */
	float *scores;         /* [vocab_size] merge scores */
	int32_t vocab_size;
	int32_t max_token_length;
	struct lbw_tok_index *sorted; /* [vocab_size] for lookups */
	unsigned char byte_pieces[512]; /* [256][2]: byte, NUL */
};

/*
 * Read a tokenizer file holding vocab_size tokens (the model's vocab size; at least 259 so
 * the byte fallback ids exist). The file must end right after the last token.
 * err (may be NULL) receives one line saying what is wrong.
 * @return 0; -errno from open; -EINVAL bad or truncated file, bad vocab_size; -ENOMEM.
 */
int lbw_tokenizer_load(struct lbw_tokenizer *t, const char *path, int32_t vocab_size, char *err,
		       size_t errlen);
void lbw_tokenizer_free(struct lbw_tokenizer *t);

/*
 * Encode text (NUL-terminated) as llama2.c's encode(): BOS if bos, the dummy-prefix " " for
 * non-empty text, characters (UTF-8 sequences) looked up or spelt as byte tokens, then greedy
 * merges by best score, then EOS if eos. tokens must hold strlen(text) + 3 entries.
 * @return the token count; -EINVAL when text is too long to count in int32; -ENOMEM.
 */
int lbw_tokenizer_encode(const struct lbw_tokenizer *t, const char *text, int bos, int eos,
			 int32_t *tokens);

/*
 * The text of token after prev_token, as llama2.c's decode(): one leading space dropped after
 * BOS, "<0xXX>" pieces turned into that raw byte. @return a NUL-terminated piece (for byte
 * 0x00 the empty string); NULL when token is out of range.
 */
const char *lbw_tokenizer_decode(const struct lbw_tokenizer *t, int32_t prev_token, int32_t token);

/* Length of the decoded piece; 1 for a byte token, also byte 0x00. 0 for NULL. */
size_t lbw_tokenizer_piece_len(const struct lbw_tokenizer *t, const char *piece);

#endif
