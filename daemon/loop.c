/* layerbankd event loop over liburing: queueing helpers and the dispatch loop. The loop sleeps
 * in io_uring_submit_and_wait while nothing completes, so an idle daemon uses no CPU. */
#include "loop.h"

#include <errno.h>
#include <string.h>

int lbd_loop_init(struct lbd_loop *l, unsigned entries)
{
	memset(l, 0, sizeof(*l));
	return io_uring_queue_init(entries, &l->ring, 0);
}

void lbd_loop_exit(struct lbd_loop *l)
{
	io_uring_queue_exit(&l->ring);
}

static struct io_uring_sqe *get_sqe(struct lbd_loop *l, struct lbd_op *op)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&l->ring);
	if (!sqe) {
		/* Full: hand what is queued to the kernel and try once more. */
		io_uring_submit(&l->ring);
		sqe = io_uring_get_sqe(&l->ring);
		if (!sqe)
			return NULL;
	}
	io_uring_sqe_set_data(sqe, op);
	l->pending++;
	return sqe;
}

int lbd_loop_accept(struct lbd_loop *l, int fd, struct lbd_op *op)
{
	struct io_uring_sqe *sqe = get_sqe(l, op);
	if (!sqe)
		return -EBUSY;
	io_uring_prep_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC);
	return 0;
}

int lbd_loop_recv(struct lbd_loop *l, int fd, void *buf, size_t len, struct lbd_op *op)
{
	struct io_uring_sqe *sqe = get_sqe(l, op);
	if (!sqe)
		return -EBUSY;
	io_uring_prep_recv(sqe, fd, buf, len, 0);
	return 0;
}

int lbd_loop_sendmsg(struct lbd_loop *l, int fd, const struct msghdr *msg, struct lbd_op *op)
{
	struct io_uring_sqe *sqe = get_sqe(l, op);
	if (!sqe)
		return -EBUSY;
	io_uring_prep_sendmsg(sqe, fd, msg, MSG_NOSIGNAL);
	return 0;
}

int lbd_loop_read(struct lbd_loop *l, int fd, void *buf, size_t len, struct lbd_op *op)
{
	struct io_uring_sqe *sqe = get_sqe(l, op);
	if (!sqe)
		return -EBUSY;
	io_uring_prep_read(sqe, fd, buf, (unsigned)len, (__u64)-1);
	return 0;
}

int lbd_loop_timeout(struct lbd_loop *l, struct __kernel_timespec *ts, struct lbd_op *op)
{
	struct io_uring_sqe *sqe = get_sqe(l, op);
	if (!sqe)
		return -EBUSY;
	io_uring_prep_timeout(sqe, ts, 0, 0);
	return 0;
}

int lbd_loop_poll(struct lbd_loop *l, int fd, unsigned events, struct lbd_op *op)
{
	struct io_uring_sqe *sqe = get_sqe(l, op);
	if (!sqe)
		return -EBUSY;
	io_uring_prep_poll_add(sqe, fd, events);
	return 0;
}

int lbd_loop_cancel(struct lbd_loop *l, struct lbd_op *target, struct lbd_op *op)
{
	struct io_uring_sqe *sqe = get_sqe(l, op);
	if (!sqe)
		return -EBUSY;
	/* Matched by user_data: every op's is the lbd_op that owns it. */
	io_uring_prep_cancel(sqe, target, 0);
	return 0;
}

int lbd_loop_run(struct lbd_loop *l)
{
	while (!l->stop) {
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		int ret = io_uring_submit_and_wait(&l->ring, 1);
		if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY)
			return ret;
		io_uring_for_each_cqe(&l->ring, head, cqe) {
			struct lbd_op *op = io_uring_cqe_get_data(cqe);
			int res = cqe->res;
			seen++;
			l->pending--;
			/* The callback may queue new ops (and so touch the SQ) but never the CQ. */
			op->fn(op, res);
		}
		io_uring_cq_advance(&l->ring, seen);
	}
	return 0;
}
