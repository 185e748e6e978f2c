/* layerbankd and systemd: the socket it may inherit (socket activation) and the notify
 * protocol (READY, STATUS, WATCHDOG, STOPPING), both through libsystemd. Without systemd
 * (no $LISTEN_FDS, no $NOTIFY_SOCKET) every function here is a no-op. */
#ifndef LAYERBANK_DAEMON_SD_H
#define LAYERBANK_DAEMON_SD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Take the listening socket systemd passed (LISTEN_FDS=1, LISTEN_PID ours), unsetting the
 * variables. It must be an AF_UNIX SOCK_SEQPACKET socket in the listening state.
 * @return its fd (3); -ENOENT when none was passed; -EINVAL with one line in err when more
 *         than one fd came or the one that came is of the wrong kind; -errno from libsystemd.
 */
int lbd_sd_listen_socket(char *err, size_t errlen);

/* True when $NOTIFY_SOCKET is set: there is someone to send READY and STATUS to. */
bool lbd_sd_notify_enabled(void);

/* The keep-alive interval systemd asked for ($WATCHDOG_USEC, for our pid), in ns; 0: none. */
uint64_t lbd_sd_watchdog_ns(void);

/* Send "KEY=value\n..." lines (sd_notify(3)); failures are logged at debug level only. */
void lbd_sd_notify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
