/* Small whole-file reads and whole-buffer writes: a /proc/meminfo field, all of a buffer to a
 * file descriptor through short writes and EINTR, a temporary folder removed with all in it. */
#ifndef LAYERBANK_UTIL_IO_H
#define LAYERBANK_UTIL_IO_H

#include <stddef.h>

/* A /proc/meminfo field ("HugePages_Free", "Hugepagesize": the number before any unit).
 * @return it, or -1 when the file or the field cannot be read. */
long lbu_meminfo(const char *key);

/* The first number in a file such as /proc/sys/vm/nr_hugepages. @return it, or -1. */
long lbu_read_long(const char *path);

/* Write all n bytes of p to fd, again after EINTR and short writes. @return 0, or -errno. */
int lbu_write_all(int fd, const void *p, size_t n);

/* Remove dir and everything below it, not following symbolic links; what cannot be removed
 * stays (a best effort, for temporary folders). Nothing for NULL or "". */
void lbu_rmtree(const char *dir);

#endif
