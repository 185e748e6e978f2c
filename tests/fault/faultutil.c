/* Shared by the fault tests: keys, contents and checks of the workload; /proc counts. */
#include "faultutil.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

const struct lb_model_desc lbf_model = {
	.name = "fault",
	.weights_hash = 0xfa17fa17fa17fa17ull,
	.n_layers = LBF_LAYERS,
	.hidden = LBF_HIDDEN,
	.dtype = LB_DTYPE_F32,
	.max_seq = LBF_MAX_SEQ,
	.fp_seed = 11,
};

uint64_t lbf_mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

uint32_t lbf_seq_len(uint64_t id)
{
	return 1 + (uint32_t)(lbf_mix64(id ^ 0x5e9ull) % LBF_MAX_SEQ);
}

void lbf_key(struct lb_key *k, uint64_t id)
{
	memset(k, 0, sizeof(*k));
	for (int i = 0; i < 4; i++)
		k->fp[i] = lbf_mix64(id * 8 + (uint64_t)i);
	k->exact[0] = lbf_mix64(id * 8 + 4);
	k->exact[1] = lbf_mix64(id * 8 + 5);
	k->seq_len = lbf_seq_len(id);
}

uint64_t lbf_entry_bytes(uint64_t id)
{
	return (uint64_t)lbf_seq_len(id) * LBF_HIDDEN * sizeof(float);
}

void lbf_fill(float *out, uint64_t id, uint32_t layer)
{
	uint64_t s = lbf_mix64(id * LBF_LAYERS + layer) | 1;
	size_t n = (size_t)lbf_seq_len(id) * LBF_HIDDEN;
	for (size_t i = 0; i < n; i++) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		out[i] = (float)(int32_t)(s >> 32) * (1.0f / 2147483648.0f);
	}
}

int lbf_insert(struct lb_client *c, uint32_t model_id, uint64_t id, uint32_t layer)
{
	struct lb_key k;
	float *buf = lb_insert_reserve(c, lbf_entry_bytes(id));
	if (!buf)
		return -errno;
	lbf_key(&k, id);
	lbf_fill(buf, id, layer);
	struct lb_shape sh = { .dtype = LB_DTYPE_F32, .ndim = 2, .dims = { k.seq_len, LBF_HIDDEN } };
	return lb_insert_commit(c, model_id, layer, &k, &sh);
}

const char *lbf_hit_check(const struct lb_hit *h, uint64_t id)
{
	float want[LBF_MAX_SEQ * LBF_HIDDEN];
	uint32_t seq = lbf_seq_len(id);

	if (!h->data || h->bytes != lbf_entry_bytes(id))
		return "wrong size";
	if (h->layer >= LBF_LAYERS || h->hamming != 0)
		return "not the exact entry asked for";
	if (h->dtype != LB_DTYPE_F32 || h->ndim != 2 || h->shape[0] != seq ||
	    h->shape[1] != LBF_HIDDEN || h->shape[2] || h->shape[3])
		return "wrong shape";
	if (XXH3_64bits(h->data, h->bytes) != h->checksum)
		return "checksum mismatch";
	lbf_fill(want, id, h->layer);
	if (memcmp(want, h->data, h->bytes) != 0)
		return "wrong bytes";
	return NULL;
}

int lbf_count_fds(pid_t pid)
{
	char path[64];
	struct dirent *d;
	int n = 0;
	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	DIR *dir = opendir(path);
	if (!dir)
		return -1;
	while ((d = readdir(dir)))
		if (d->d_name[0] != '.')
			n++;
	closedir(dir);
	return n;
}

int lbf_count_regions(pid_t pid)
{
	char path[64], line[512];
	int n = 0;
	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (strstr(line, "/memfd:layerbank-client-"))
			n++;
	fclose(f);
	return n;
}

double lbf_now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

void lbf_sleep_us(long us)
{
	struct timespec ts = { us / 1000000, (us % 1000000) * 1000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}
