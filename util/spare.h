/*
 * Whether a thread about to wait may spin: only while no runnable thread waits for a CPU.
 * On a machine whose CPUs are all taken (four workers on two vCPUs), every microsecond a
 * waiter spins is taken from a thread that has work, often the very one it waits for; there a
 * wait spins at most LBU_SPIN_CONTENDED_NS, then sleeps. The count of runnable threads is the
 * fourth field of /proc/loadavg (instantaneous, the caller included), read at most once per
 * LBU_SPARE_PERIOD_NS. Without /proc the answer is always yes: spin as configured.
 */
#ifndef LBU_SPARE_H
#define LBU_SPARE_H

#include <stdbool.h>
#include <stdint.h>

#define LBU_SPARE_PERIOD_NS 1000000ull  /* a reading of the load serves 1 ms of waits */
#define LBU_SPIN_CONTENDED_NS 2000ull    /* enough for an answer already being written */

/* One per thread that waits (a service thread, a client); zeroed: spin as configured. */
struct lbu_spare {
	bool open;         /* fd is /proc/loadavg */
	int fd;
	unsigned cpus;     /* online CPUs */
	bool spare;        /* the last reading's verdict */
	uint64_t next_ns;  /* when to read again */
};

void lbu_spare_open(struct lbu_spare *s);
void lbu_spare_close(struct lbu_spare *s);

/* The spin a wait starting at now_ns may have, of at most spin_ns. */
uint64_t lbu_spare_spin(struct lbu_spare *s, uint64_t spin_ns, uint64_t now_ns);

/* One reading of /proc/loadavg ("0.50 0.40 0.30 3/120 4567"): whether its runnable count is
 * at most cpus. @return 0, or -1 when the text is not of that form. */
int lbu_spare_parse(const char *text, unsigned cpus, bool *spare);

#endif
