/* Shared by the fault tests: the workload's keys and contents (any process can regenerate and
 * check any entry), and a look at a daemon's descriptors and mappings through /proc. */
#ifndef LAYERBANK_TESTS_FAULTUTIL_H
#define LAYERBANK_TESTS_FAULTUTIL_H

#include <stdint.h>
#include <sys/types.h>

#include "layerbank/layerbank.h"

#define LBF_LAYERS 4
#define LBF_HIDDEN 64
#define LBF_MAX_SEQ 32 /* an entry is at most 32 x 64 floats, 8 KiB */

extern const struct lb_model_desc lbf_model;

uint64_t lbf_mix64(uint64_t x);

/* The input id stands for: its length (1..LBF_MAX_SEQ, fixed per id, as the daemon requires of
 * one token hash) and a key whose fingerprint is ~128 bits from any other id's, so that every
 * hit is an exact match. */
uint32_t lbf_seq_len(uint64_t id);
void lbf_key(struct lb_key *k, uint64_t id);

/* The output of layer for input id: [seq][LBF_HIDDEN] floats, a function of (id, layer). */
void lbf_fill(float *out, uint64_t id, uint32_t layer);
uint64_t lbf_entry_bytes(uint64_t id);

/* Reserve, fill and commit layer of id. @return lb_insert_commit's value, or -errno from
 * lb_insert_reserve. */
int lbf_insert(struct lb_client *c, uint32_t model_id, uint64_t id, uint32_t layer);

/* NULL when h is the entry of (id, h->layer) byte for byte, with the daemon's checksum right;
 * else what is wrong. */
const char *lbf_hit_check(const struct lb_hit *h, uint64_t id);

/* Open descriptors of pid, and its mappings of client regions (memfds named
 * layerbank-client-N); -1 when /proc cannot tell. */
int lbf_count_fds(pid_t pid);
int lbf_count_regions(pid_t pid);

/* CLOCK_MONOTONIC in microseconds. */
double lbf_now_us(void);
void lbf_sleep_us(long us);

#endif
