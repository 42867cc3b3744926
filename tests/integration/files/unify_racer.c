/* A hostile guest's root racing the host's unify / de-unify / purge (tests/integration/test_unify_hostile.py).
 *
 *   unify_racer rewrite SECONDS FILE...
 *       inotify on each FILE; every time a reader closes it (the host's comparison read it), rewrite it at once
 *       with other bytes of the same size and put its mtime back: the copy is no longer what was compared.
 *   unify_racer spin SECONDS FILE...
 *       open(O_WRONLY) each FILE in turn, as fast as possible; on success write "PWNED" over its first bytes.
 *
 * Runs as the guest's init (pid 1: no default signal action, so it ends by itself after SECONDS). Prints its
 * counts to stdout (the guest log) and writes them to /racer.out. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void report(const char *what, long tries, long wins) {
    char line[128];
    int n = snprintf(line, sizeof(line), "%s tries=%ld wins=%ld\n", what, tries, wins);
    int fd = open("/racer.out", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) { write(fd, line, n); close(fd); }
    write(1, line, n);
}

static int rewrite(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0 || st.st_size <= 0) return 0;
    int fd = open(path, O_WRONLY);
    if (fd < 0) return 0;
    char buf[4096];
    off_t off = 0;
    int ok = 1;
    memset(buf, 'E', sizeof(buf));
    while (off < st.st_size) {
        size_t n = st.st_size - off < (off_t)sizeof(buf) ? (size_t)(st.st_size - off) : sizeof(buf);
        if (pwrite(fd, buf, n, off) != (ssize_t)n) { ok = 0; break; }
        off += n;
    }
    struct timespec times[2] = {st.st_atim, st.st_mtim};
    futimens(fd, times);
    close(fd);
    return ok;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: %s rewrite|spin SECONDS FILE...\n", argv[0]); return 2; }
    double end = now() + atof(argv[2]);
    char **files = argv + 3;
    int nfiles = argc - 3;
    long tries = 0, wins = 0;
    if (strcmp(argv[1], "spin") == 0) {
        while (now() < end) {
            for (int i = 0; i < nfiles; i++) {
                tries++;
                int fd = open(files[i], O_WRONLY);
                if (fd < 0) continue;
                if (pwrite(fd, "PWNED", 5, 0) == 5) wins++;
                close(fd);
            }
            if ((tries & 0xfff) == 0) report("spin", tries, wins);
        }
        report("spin", tries, wins);
        return 0;
    }
    int in = inotify_init1(IN_NONBLOCK);
    for (int i = 0; i < nfiles; i++) inotify_add_watch(in, files[i], IN_CLOSE_NOWRITE);
    report("rewrite", 0, 0);
    char ev[4096];
    while (now() < end) {
        ssize_t n = read(in, ev, sizeof(ev));
        if (n <= 0) { usleep(200); continue; }
        for (char *p = ev; p < ev + n;) {
            struct inotify_event *e = (struct inotify_event *)p;
            for (int i = 0; i < nfiles; i++) {
                /* watch descriptors are given in order, from 1 */
                if (e->wd == i + 1) { tries++; wins += rewrite(files[i]); }
            }
            p += sizeof(*e) + e->len;
        }
        report("rewrite", tries, wins);
    }
    report("rewrite", tries, wins);
    return 0;
}
