/* An out-of-tree liblayerbank user, built against an installed prefix by test_install:
 * connect to the socket in argv[1], register a model, look an input up (a miss: -ENOENT).
 * Exit 0 when all went as expected. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <layerbank/layerbank.h>

int main(int argc, char **argv)
{
	const struct lb_model_desc desc = {
		.name = "consumer-model",
		.weights_hash = 0x5eed,
		.n_layers = 4,
		.hidden = 64,
		.dtype = LB_DTYPE_F32,
		.max_seq = 128,
		.fp_seed = 7,
	};
	struct lb_key key;
	struct lb_hit hit;
	struct lb_client *c;
	uint32_t model;
	int ret;

	if (argc != 2) {
		fprintf(stderr, "usage: %s SOCKET\n", argv[0]);
		return 2;
	}
	ret = lb_connect(argv[1], "consumer", &c);
	if (ret < 0) {
		fprintf(stderr, "lb_connect %s: %s\n", argv[1], strerror(-ret));
		return 1;
	}
	ret = lb_register_model(c, &desc, &model);
	if (ret < 0) {
		fprintf(stderr, "lb_register_model: %s (%s)\n", strerror(-ret), lb_last_error(c));
		lb_close(c);
		return 1;
	}
	memset(&key, 0, sizeof(key));
	key.fp[0] = 0x1234;
	key.exact[0] = 42;
	key.seq_len = 16;
	ret = lb_lookup_deepest(c, model, &key, NULL, 0, &hit);
	lb_close(c);
	if (ret != -ENOENT) {
		fprintf(stderr, "lb_lookup_deepest: %d, expected -ENOENT (a miss)\n", ret);
		return 1;
	}
	printf("model %u registered, lookup missed as expected\n", (unsigned)model);
	return 0;
}
