/* A hostile guest root's tools, built static and run inside a guest by tests/integration/test_hostile_trees.py.
 *
 *   hostile swap A B SECONDS     renameat2(RENAME_EXCHANGE) A <-> B in a loop for SECONDS (A a directory of the
 *                                tree, B a symlink to a host directory): a host walker that looks a path up twice
 *                                sees the directory once and the symlink the next time. Prints the swap count.
 *   hostile name SECONDS         set its own name to ESC sequences (+ a non-UTF-8 byte and a newline) and sleep
 *   hostile spin DIR SECONDS    open(O_WRONLY) every file of DIR round-robin for SECONDS; each open that succeeds
 *                                (an immutable shared file whose flag the host lifted for an instant) writes
 *                                PWNED at its start. Prints the number of wins.
 *   hostile flood PATH MIB       write MIB MiB of 'x' lines to PATH (e.g. /proc/1/fd/1: init's log), as fast as it
 *                                can; prints the bytes written
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

static volatile sig_atomic_t stop;  /* SIGTERM: finish the loop and print the counts */

static void on_term(int sig) { (void)sig; stop = 1; }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int swap(const char *a, const char *b, double seconds) {
    long count = 0;
    double end = now() + seconds;
    while (!stop && now() < end) {
        for (int i = 0; i < 1000; i++) {
            if (syscall(SYS_renameat2, AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) == 0)
                count++;
        }
    }
    /* leave the directory where it was (an even number of swaps) */
    if (count % 2 && syscall(SYS_renameat2, AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) == 0)
        count++;
    printf("swaps %ld\n", count);
    return 0;
}

static int name(double seconds) {
    prctl(PR_SET_NAME, "\033]0;pwned\007\033[2J\xff\n", 0, 0, 0);
    printf("named\n");
    fflush(stdout);
    struct timespec ts = {(time_t)seconds, 0};
    nanosleep(&ts, NULL);
    return 0;
}

static int flood(const char *path, long mib) {
    int fd = open(path, O_WRONLY | O_APPEND);
    if (fd < 0) { printf("open %s: %s\n", path, strerror(errno)); return 2; }
    static char buf[1 << 16];
    for (size_t i = 0; i < sizeof(buf); i++) buf[i] = (i % 64 == 63) ? '\n' : 'x';
    long long total = 0, want = mib << 20;
    while (total < want) {
        ssize_t n = write(fd, buf, sizeof(buf));
        if (n <= 0) { if (errno == EINTR) continue; break; }
        total += n;
    }
    printf("wrote %lld\n", total);
    return total == want ? 0 : 1;
}

static int spin(const char *dir, double seconds) {
    static char names[4096][256];
    int n = 0;
    DIR *d = opendir(dir);
    if (!d) { printf("opendir %s: %s\n", dir, strerror(errno)); return 2; }
    struct dirent *e;
    while ((e = readdir(d)) && n < 4096) {
        if (e->d_name[0] == '.') continue;
        snprintf(names[n++], 256, "%s/%s", dir, e->d_name);
    }
    closedir(d);
    long wins = 0, tries = 0;
    double end = now() + seconds;
    while (!stop && now() < end) {
        for (int i = 0; i < n; i++, tries++) {
            int fd = open(names[i], O_WRONLY | O_NONBLOCK);
            if (fd >= 0) { pwrite(fd, "PWNED", 5, 0); wins++; close(fd); }
        }
    }
    printf("spin files %d tries %ld wins %ld\n", n, tries, wins);
    return 0;
}

int main(int argc, char **argv) {
    signal(SIGTERM, on_term);
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* the racers yield the CPU to the host's work (nice 19) yet spin on every cycle it leaves: the race stays
     * meaningful (millions of swaps or opens per test) and the test stays quick on a loaded 2-core machine */
    if (argc == 4 && !strcmp(argv[1], "spin")) { (void)!nice(19); return spin(argv[2], atof(argv[3])); }
    if (argc == 5 && !strcmp(argv[1], "swap")) { (void)!nice(19); return swap(argv[2], argv[3], atof(argv[4])); }
    if (argc == 3 && !strcmp(argv[1], "name")) return name(atof(argv[2]));
    if (argc == 4 && !strcmp(argv[1], "flood")) return flood(argv[2], atol(argv[3]));
    fprintf(stderr, "usage: hostile swap A B SECONDS | name SECONDS | spin DIR SECONDS | flood PATH MIB\n");
    return 2;
}
