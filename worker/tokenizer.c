/*
 * llama2.c tokenizer: file loading (every length checked), BPE encode by best merge score with
 * byte fallback, and decode. Behaviour follows llama2.c's run.c token for token.
 */
#include "tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errf.h"

struct lbw_tok_index {
	const char *str;
	int32_t id;
};

static int cmp_index(const void *a, const void *b)
{
	return strcmp(((const struct lbw_tok_index *)a)->str, ((const struct lbw_tok_index *)b)->str);
}

void lbw_tokenizer_free(struct lbw_tokenizer *t)
{
	if (t->vocab)
		for (int32_t i = 0; i < t->vocab_size; i++)
			free(t->vocab[i]);
	free(t->vocab);
	free(t->scores);
	free(t->sorted);
	memset(t, 0, sizeof(*t));
}

int lbw_tokenizer_load(struct lbw_tokenizer *t, const char *path, int32_t vocab_size, char *err,
		       size_t errlen)
{
	int rc = -EINVAL;
	int32_t n = 0;

	memset(t, 0, sizeof(*t));
	if (vocab_size < LBW_TOK_BYTE0 + 256) {
		lbu_errf(err, errlen, "tokenizer: vocab_size %d too small (byte fallback needs %d)",
			(int)vocab_size, LBW_TOK_BYTE0 + 256);
		return -EINVAL;
	}
	FILE *f = fopen(path, "rb");
	if (!f) {
		rc = -errno;
		lbu_errf(err, errlen, "cannot open tokenizer %s: %s", path, strerror(errno));
		return rc;
	}
	t->vocab_size = vocab_size;
	t->vocab = calloc((size_t)vocab_size, sizeof(char *));
	t->scores = calloc((size_t)vocab_size, sizeof(float));
	t->sorted = calloc((size_t)vocab_size, sizeof(*t->sorted));
	if (!t->vocab || !t->scores || !t->sorted) {
		lbu_errf(err, errlen, "tokenizer: out of memory");
		rc = -ENOMEM;
		goto fail;
	}
	for (int i = 0; i < 256; i++) {
		t->byte_pieces[i * 2] = (unsigned char)i;
		t->byte_pieces[i * 2 + 1] = '\0';
	}
	if (fread(&t->max_token_length, sizeof(int32_t), 1, f) != 1) {
		lbu_errf(err, errlen, "tokenizer %s: truncated header", path);
		goto fail;
	}
	if (t->max_token_length < 1 || t->max_token_length > LBW_TOK_MAX_LEN) {
		lbu_errf(err, errlen, "tokenizer %s: max_token_length %d not in 1..%d", path,
			(int)t->max_token_length, LBW_TOK_MAX_LEN);
		goto fail;
	}
	for (n = 0; n < vocab_size; n++) {
		int32_t len;
		if (fread(&t->scores[n], sizeof(float), 1, f) != 1 ||
		    fread(&len, sizeof(int32_t), 1, f) != 1) {
			lbu_errf(err, errlen, "tokenizer %s: truncated at token %d of %d", path, (int)n,
				(int)vocab_size);
			goto fail;
		}
		if (len < 0 || len > t->max_token_length) {
			lbu_errf(err, errlen, "tokenizer %s: token %d has length %d (max_token_length %d)",
				path, (int)n, (int)len, (int)t->max_token_length);
			goto fail;
		}
		t->vocab[n] = malloc((size_t)len + 1);
		if (!t->vocab[n]) {
			lbu_errf(err, errlen, "tokenizer: out of memory");
			rc = -ENOMEM;
			goto fail;
		}
		t->vocab[n][len] = '\0';
		if (len && fread(t->vocab[n], (size_t)len, 1, f) != 1) {
			lbu_errf(err, errlen, "tokenizer %s: truncated in token %d of %d", path, (int)n,
				(int)vocab_size);
			n++;
			goto fail;
		}
		if (strlen(t->vocab[n]) != (size_t)len) {
			lbu_errf(err, errlen, "tokenizer %s: token %d contains a NUL byte", path, (int)n);
			n++;
			goto fail;
		}
		t->sorted[n].str = t->vocab[n];
		t->sorted[n].id = n;
	}
	if (fgetc(f) != EOF) {
		lbu_errf(err, errlen, "tokenizer %s: trailing bytes after %d tokens (vocab size mismatch?)",
			path, (int)vocab_size);
		goto fail;
	}
	fclose(f);
	qsort(t->sorted, (size_t)vocab_size, sizeof(*t->sorted), cmp_index);
	return 0;
fail:
	fclose(f);
	/* only the first n pieces were allocated (calloc zeroed the rest) */
	lbw_tokenizer_free(t);
	return rc;
}

static int32_t lookup(const struct lbw_tokenizer *t, const char *str)
{
	struct lbw_tok_index key = { .str = str, .id = -1 };
	const struct lbw_tok_index *r =
		bsearch(&key, t->sorted, (size_t)t->vocab_size, sizeof(*t->sorted), cmp_index);
	return r ? r->id : -1;
}

/* The token that a followed by b spell, or -1; buf: room for both pieces. */
static int32_t merged(const struct lbw_tokenizer *t, int32_t a, int32_t b, char *buf)
{
	const char *sa = t->vocab[a], *sb = t->vocab[b];
	size_t la = strlen(sa), lb = strlen(sb);
	memcpy(buf, sa, la);
	memcpy(buf + la, sb, lb + 1);
	return lookup(t, buf);
}

int lbw_tokenizer_encode(const struct lbw_tokenizer *t, const char *text, int bos, int eos,
			 int32_t *tokens)
{
	size_t cap = (size_t)t->max_token_length * 2 + 3;
	if (cap < 8)
		cap = 8;
	if (strlen(text) > (size_t)INT32_MAX - 3)
		return -EINVAL;
	char *buf = malloc(cap);
	if (!buf)
		return -ENOMEM;
	int32_t n = 0;
	size_t len = 0;

	if (bos)
		tokens[n++] = LBW_TOK_BOS;
	if (text[0] != '\0') {
		/* llama2.c assumes " " is in the vocabulary; spell it as a byte when it is not */
		int32_t sp = lookup(t, " ");
		tokens[n++] = sp >= 0 ? sp : (int32_t)' ' + LBW_TOK_BYTE0;
	}
	/* one UTF-8 character (at most 4 bytes) at a time */
	for (const char *c = text; *c != '\0'; c++) {
		if ((*c & 0xC0) != 0x80)
			len = 0;
		buf[len++] = *c;
		buf[len] = '\0';
		if ((*(c + 1) & 0xC0) == 0x80 && len < 4)
			continue;
		int32_t id = lookup(t, buf);
		if (id != -1) {
			tokens[n++] = id;
		} else {
			for (size_t i = 0; i < len; i++)
				tokens[n++] = (int32_t)(unsigned char)buf[i] + LBW_TOK_BYTE0;
		}
		len = 0;
	}
	/* Merge the best-scoring adjacent pair (the leftmost of equals) until none is in the
	 * vocabulary. pair[i]: the token tokens[i] and tokens[i + 1] merge into, or -1; a merge
	 * changes only the pairs beside it, so each is looked up once, not once per merge (a
	 * paragraph of 500 characters took 1.8 million string compares). */
	int32_t *pair = n > 1 ? malloc((size_t)(n - 1) * sizeof(*pair)) : NULL;
	if (n > 1 && !pair) {
		free(buf);
		return -ENOMEM;
	}
	for (int32_t i = 0; i < n - 1; i++)
		pair[i] = merged(t, tokens[i], tokens[i + 1], buf);
	for (;;) {
		float best_score = -1e10f;
		int32_t best_idx = -1;
		for (int32_t i = 0; i < n - 1; i++) {
			if (pair[i] != -1 && t->scores[pair[i]] > best_score) {
				best_score = t->scores[pair[i]];
				best_idx = i;
			}
		}
		if (best_idx == -1)
			break;
		tokens[best_idx] = pair[best_idx];
		memmove(tokens + best_idx + 1, tokens + best_idx + 2,
			(size_t)(n - best_idx - 2) * sizeof(*tokens));
		memmove(pair + best_idx, pair + best_idx + 1,
			(size_t)(n - best_idx - 2) * sizeof(*pair));
		n--;
		if (best_idx > 0)
			pair[best_idx - 1] = merged(t, tokens[best_idx - 1], tokens[best_idx], buf);
		if (best_idx < n - 1)
			pair[best_idx] = merged(t, tokens[best_idx], tokens[best_idx + 1], buf);
	}
	free(pair);
	if (eos)
		tokens[n++] = LBW_TOK_EOS;
	free(buf);
	return n;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

const char *lbw_tokenizer_decode(const struct lbw_tokenizer *t, int32_t prev_token, int32_t token)
{
	if (token < 0 || token >= t->vocab_size)
		return NULL;
	const char *piece = t->vocab[token];
	if (prev_token == LBW_TOK_BOS && piece[0] == ' ')
		piece++;
	/* llama2.c: sscanf(piece, "<0x%02hhX>", &b) == 1, i.e. "<0x" and one or two hex digits */
	if (piece[0] == '<' && piece[1] == '0' && piece[2] == 'x') {
		int h = hexval(piece[3]);
		if (h >= 0) {
			int l = hexval(piece[4]);
			if (l >= 0)
				h = h * 16 + l;
			return (const char *)t->byte_pieces + h * 2;
		}
	}
	return piece;
}

size_t lbw_tokenizer_piece_len(const struct lbw_tokenizer *t, const char *piece)
{
	if (!piece)
		return 0;
	const unsigned char *p = (const unsigned char *)piece;
	if (p >= t->byte_pieces && p < t->byte_pieces + sizeof(t->byte_pieces))
		return 1;
	return strlen(piece);
}
