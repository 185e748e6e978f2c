/* layerbankd and systemd: socket activation and sd_notify, by libsystemd (not a
 * re-implementation of either protocol). */
#include "sd.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>

#include "log.h"

int lbd_sd_listen_socket(char *err, size_t errlen)
{
	/* unset_environment: nothing we might start inherits the variables. */
	int n = sd_listen_fds(1);
	int fd = SD_LISTEN_FDS_START;
	int ret;

	if (n < 0) {
		snprintf(err, errlen, "socket activation: bad $LISTEN_FDS/$LISTEN_PID: %s",
			 strerror(-n));
		return n;
	}
	if (n == 0)
		return -ENOENT;
	if (n > 1) {
		snprintf(err, errlen, "socket activation: systemd passed %d file descriptors; "
			 "layerbankd takes exactly one (ListenSequentialPacket= once in "
			 "layerbankd.socket)", n);
		return -EINVAL;
	}
	ret = sd_is_socket_unix(fd, SOCK_SEQPACKET, 1, NULL, 0);
	if (ret <= 0) {
		snprintf(err, errlen, "socket activation: fd %d is not a listening AF_UNIX "
			 "SOCK_SEQPACKET socket%s%s (layerbankd.socket needs ListenSequentialPacket=)",
			 fd, ret < 0 ? ": " : "", ret < 0 ? strerror(-ret) : "");
		return -EINVAL;
	}
	return fd;
}

bool lbd_sd_notify_enabled(void)
{
	const char *e = getenv("NOTIFY_SOCKET");
	return e && *e;
}

uint64_t lbd_sd_watchdog_ns(void)
{
	uint64_t usec = 0;

	/* > 0 only when $WATCHDOG_USEC is set and $WATCHDOG_PID, if set, is us. */
	if (sd_watchdog_enabled(0, &usec) <= 0)
		return 0;
	return usec * 1000u;
}

void lbd_sd_notify(const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	int ret;

	if (!lbd_sd_notify_enabled())
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	ret = sd_notify(0, msg);
	if (ret < 0)
		lbd_debug("sd_notify: %s", strerror(-ret));
}
