/* Spin only while a CPU is spare: see spare.h. */
#include "spare.h"

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

int lbu_spare_parse(const char *text, unsigned cpus, bool *spare)
{
	double a, b, c;
	unsigned running, total;
	if (sscanf(text, "%lf %lf %lf %u/%u", &a, &b, &c, &running, &total) != 5 || !running ||
	    running > total)
		return -1;
	*spare = running <= cpus;
	return 0;
}

void lbu_spare_open(struct lbu_spare *s)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	s->cpus = n > 0 ? (unsigned)n : 1;
	s->fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
	s->open = s->fd >= 0;
	s->spare = true;
	s->next_ns = 0;
}

void lbu_spare_close(struct lbu_spare *s)
{
	if (s->open)
		close(s->fd);
	s->open = false;
}

uint64_t lbu_spare_spin(struct lbu_spare *s, uint64_t spin_ns, uint64_t now_ns)
{
	if (!spin_ns || !s->open)
		return spin_ns;
	if (now_ns >= s->next_ns) {
		char buf[128];
		ssize_t n = pread(s->fd, buf, sizeof(buf) - 1, 0);
		bool spare = true;
		if (n > 0) {
			buf[n] = '\0';
			if (lbu_spare_parse(buf, s->cpus, &spare) < 0)
				spare = true;
		}
		s->spare = spare;
		s->next_ns = now_ns + LBU_SPARE_PERIOD_NS;
	}
	uint64_t contended = LBU_SPIN_CONTENDED_NS; /* a variable: the constant may be 0 */
	return s->spare || spin_ns < contended ? spin_ns : contended;
}
