/* layerbankd control server: the listening socket, client connections and their messages,
 * driven by the io_uring loop. */
#ifndef LAYERBANK_DAEMON_SERVER_H
#define LAYERBANK_DAEMON_SERVER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/signalfd.h>
#include <time.h>

#include "arena.h"
#include "config.h"
#include "loop.h"
#include "models.h"
#include "runtime.h"
#include "service.h"
#include "store.h"
#include "uids.h"

#define LBD_MAX_CONNS 1024u
#define LBD_MAX_ARENAS LBP_MAX_ARENAS
#define LBD_STATUS_PERIOD_S 5
#define LBD_ACCEPT_PAUSE_MS 10 /* after an accept that failed for want of descriptors */

struct lbd_conn;
struct lbd_l2;
struct lbd_l2_stats;
/* lbd_l2_stats (l2.h), handed over by main: lbd_core does not link the tier, which builds on it. */
typedef void (*lbd_l2_stats_fn)(struct lbd_l2 *t, struct lbd_l2_stats *out);

/* Owned by the daemon's main thread, which runs the loop and every callback. */
struct lbd_server {
	const struct lbd_config *cfg;
	struct lbd_loop loop;
	bool loop_ready;
	int listen_fd;
	int signal_fd;
	bool socket_bound;      /* we created socket_path and must unlink it */
	bool socket_inherited;  /* listen_fd came from systemd, which owns the file */
	char listen_path[108];  /* what listen_fd is bound to, for the log */
	uint8_t boot_id[16];
	struct timespec started; /* CLOCK_MONOTONIC */
	struct lbd_arena arenas[LBD_MAX_ARENAS]; /* tenant-major: t * n_nodes + k on nodes[k] */
	unsigned n_arenas;
	int nodes[LBD_MAX_ARENAS]; /* the NUMA nodes with arenas; { -1 }: not bound */
	unsigned n_nodes;
	unsigned threads;          /* service threads: cfg->threads, or n_nodes for auto */
	struct lbd_models models;
	struct lbd_store *store;
	/* The second tier (--l2), for STATS only: lbd_server_set_tier. NULL: none. */
	struct lbd_l2 *l2;
	lbd_l2_stats_fn l2_stats;
	struct lbd_service service;
	bool service_running;
	struct lbd_region_limits limits;
	struct lbd_op sweep_op;    /* TTL sweeps, once a second, while the policy is ttl */
	struct __kernel_timespec sweep_ts;
	bool sweep_armed;
	uid_t uid;                 /* ours: its peers, and root's, may FLUSH and CONFIG_SET */
	struct lbd_op status_op;   /* STATUS= to systemd every LBD_STATUS_PERIOD_S, with $NOTIFY_SOCKET */
	struct __kernel_timespec status_ts;
	struct lbd_op watchdog_op; /* WATCHDOG=1 every half of $WATCHDOG_USEC, from the loop */
	struct __kernel_timespec watchdog_ts;
	uint64_t watchdog_ns;      /* 0: no watchdog asked for */
	struct lbd_conn *conns;  /* doubly linked list of connections, ended ones until freed */
	unsigned n_conns;
	unsigned n_clients;      /* connections past HELLO and not ended */
	struct lbd_uids uids;    /* connections and staging per uid (max-connections-per-uid...) */
	bool pidfd_ok;           /* pidfd_open works here: client processes are watched */
	struct lbd_op cancel_op; /* completions of cancels: the cancelled op reports itself */
	uint64_t next_client_id;
	struct lbd_op accept_op;
	struct lbd_op accept_pause_op; /* a pause before accepting again when descriptors ran out */
	struct __kernel_timespec accept_pause_ts;
	struct lbd_op signal_op;
	struct signalfd_siginfo siginfo; /* target of the pending signalfd read */
	bool stopping;           /* a signal said stop: a snapshot written now extends systemd's
				  * stop timeout as it goes */
	uint64_t snap_ping_ns;   /* when a snapshot being written last fed systemd */
};

/* Create the arenas and the listening socket, or take the one systemd passed (socket
 * activation). Errors go to err as one line (errlen bytes). @return 0 or -errno. */
int lbd_server_setup(struct lbd_server *s, const struct lbd_config *cfg, char *err, size_t errlen);

/* Start the loop (after any daemonising fork) and serve until SIGTERM/SIGINT. With
 * --snapshot it first restores the snapshot file (a bad one is one log line and an empty
 * start), and writes it again when the loop ends. Under systemd ($NOTIFY_SOCKET) it sends
 * READY=1 once the snapshot is restored, the socket listens and the service threads run, a
 * STATUS= line every LBD_STATUS_PERIOD_S, WATCHDOG=1 from the loop and STOPPING=1 on SIGTERM.
 * @return 0 on a clean stop, -errno when the loop failed. */
int lbd_server_run(struct lbd_server *s);

/* Report tier t in STATS through stats (lbd_l2_stats); NULL, NULL: no tier ("off"). STATS is
 * answered by the loop, on the thread that runs lbd_server_run: set the tier before run and
 * clear it after run returned and before the tier stops, from that thread, and no STATS can
 * meet a stopped tier (no lock needed). */
void lbd_server_set_tier(struct lbd_server *s, struct lbd_l2 *t, lbd_l2_stats_fn stats);

/* Close every connection, unlink the socket (unless systemd passed it), free the arenas.
 * Safe after a failed setup. */
void lbd_server_teardown(struct lbd_server *s);

#endif
