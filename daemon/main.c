/* layerbankd: parse the configuration, build arenas and socket, optionally detach, serve.
 * Exit status: 0 clean stop, 1 start-up or runtime failure, 2 bad option or config. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "l2.h"
#include "log.h"
#include "server.h"
#include "store.h"

/* Classic double fork; the start-up errors were already reported on the terminal. */
static int detach(void)
{
	pid_t pid = fork();
	int fd;

	if (pid < 0)
		return -errno;
	if (pid > 0)
		_exit(0);
	if (setsid() < 0)
		return -errno;
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid > 0)
		_exit(0);
	if (chdir("/") < 0)
		return -errno;
	fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	dup2(fd, 0);
	dup2(fd, 1);
	dup2(fd, 2);
	if (fd > 2)
		close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	static struct lbd_config cfg;
	static struct lbd_server server;
	char err[512];
	int ret;

	ret = lbd_config_parse_args(&cfg, argc, argv, err, sizeof(err));
	if (ret == 1)
		return 0;
	if (ret < 0) {
		fprintf(stderr, "layerbankd: %s\n", err);
		return 2;
	}
	if (cfg.check_only) {
		printf("layerbankd: configuration OK\n");
		return 0;
	}
	lbd_log_setup(cfg.log_level, 0);
	ret = lbd_server_setup(&server, &cfg, err, sizeof(err));
	if (ret < 0) {
		lbd_err("%s", err[0] ? err : strerror(-ret));
		lbd_server_teardown(&server);
		return 1;
	}
	if (!cfg.foreground) {
		ret = detach();
		if (ret < 0) {
			lbd_err("cannot detach: %s", strerror(-ret));
			lbd_server_teardown(&server);
			return 1;
		}
		lbd_log_setup(cfg.log_level, 1);
	}
	/* The second tier's thread, started after the fork of detach(), which keeps none. */
	struct lbd_l2 *l2 = NULL;
	if (cfg.l2[0]) {
		struct lbd_l2_cfg l2cfg = { .seeds = cfg.l2 };
		l2 = lbd_l2_start(&l2cfg, err, sizeof(err));
		if (!l2) {
			lbd_err("--l2 %s: %s", cfg.l2, err);
			lbd_server_teardown(&server);
			return 1;
		}
		lbd_l2_attach(l2, server.store);
		lbd_server_set_tier(&server, l2, lbd_l2_stats);
		lbd_info("second tier: %s", cfg.l2);
	}
	ret = lbd_server_run(&server);
	if (l2) {
		/* Run returned: no STATS is being answered, and none reads the tier from here on. */
		lbd_server_set_tier(&server, NULL, NULL);
		lbd_store_set_tier(server.store, NULL);
		lbd_l2_stop(l2);
	}
	lbd_server_teardown(&server);
	lbd_info("stopped");
	lbd_log_flush(1);
	return ret < 0 ? 1 : 0;
}
