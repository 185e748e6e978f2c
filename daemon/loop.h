/* layerbankd event loop: a thin lbd_loop_* layer over liburing. Every submission carries an
 * lbd_op embedded in its owner; the completion calls op->fn with the CQE's res (>= 0 or -errno). */
#ifndef LAYERBANK_DAEMON_LOOP_H
#define LAYERBANK_DAEMON_LOOP_H

#include <liburing.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

struct lbd_op;
typedef void (*lbd_op_fn)(struct lbd_op *op, int res);

/* Owned by whoever embeds it; must stay alive until its completion has run (ops are one-shot,
 * so an owner with one op in flight frees itself from inside fn at the earliest). */
struct lbd_op {
	lbd_op_fn fn;
};

struct lbd_loop {
	struct io_uring ring;
	unsigned pending; /* ops submitted and not yet completed */
	bool stop;        /* set by a callback: lbd_loop_run returns after this batch */
};

/* @return 0 or -errno from io_uring_queue_init. */
int lbd_loop_init(struct lbd_loop *l, unsigned entries);
void lbd_loop_exit(struct lbd_loop *l);

/* Queue one operation; it is submitted by lbd_loop_run. @return 0, or -EBUSY when the
 * submission queue stays full even after flushing it. */
int lbd_loop_accept(struct lbd_loop *l, int fd, struct lbd_op *op);
int lbd_loop_recv(struct lbd_loop *l, int fd, void *buf, size_t len, struct lbd_op *op);
int lbd_loop_sendmsg(struct lbd_loop *l, int fd, const struct msghdr *msg, struct lbd_op *op);
int lbd_loop_read(struct lbd_loop *l, int fd, void *buf, size_t len, struct lbd_op *op);
/* Complete after ts (which must stay valid until then) with res -ETIME. */
int lbd_loop_timeout(struct lbd_loop *l, struct __kernel_timespec *ts, struct lbd_op *op);
/* Complete once fd has one of the poll(2) events (one shot) with res the events it has. */
int lbd_loop_poll(struct lbd_loop *l, int fd, unsigned events, struct lbd_op *op);
/* Cancel target, an op queued earlier: target then completes with -ECANCELED, or with its own
 * result if it was done already; either way it completes exactly once. op completes with
 * the cancel's own result (0, -ENOENT: nothing to cancel, -EALREADY: finishing anyway). */
int lbd_loop_cancel(struct lbd_loop *l, struct lbd_op *target, struct lbd_op *op);

/* Submit and dispatch completions, sleeping in the kernel while there are none, until a
 * callback sets l->stop. @return 0, or -errno when io_uring itself fails. */
int lbd_loop_run(struct lbd_loop *l);

#endif
