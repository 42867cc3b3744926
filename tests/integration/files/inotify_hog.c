/* Run as root inside a guest: hold as many inotify instances as this guest's limits let it, in as many processes
 * as it can fork (each raises its soft RLIMIT_NOFILE to the hard limit, then calls inotify_init1 until it fails).
 * Prints "held N" (the total), "procs P", "stop user|nofile|ERRNO" (why the first process stopped: host root's
 * fs.inotify.max_user_instances, its own RLIMIT_NOFILE, another error), then "ready" and keeps
 * holding them until stdin closes (the test checks the host meanwhile). Usage: inotify_hog MAXPROCS */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static int hog(int *why) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    int n = 0;
    for (;;) {
        if (inotify_init1(IN_CLOEXEC) < 0) {
            /* EMFILE either way: a free descriptor left means the per-user instance limit stopped it */
            int fd = errno == EMFILE ? open("/dev/null", O_RDONLY) : -1;
            *why = fd >= 0 ? -1 : errno;
            if (fd >= 0) close(fd);
            return n;
        }
        n++;
    }
}

int main(int argc, char **argv) {
    const char *where = getenv("container");
    if (!where || strcmp(where, "vserver") != 0 || argc < 2) {  /* never on the host: it would starve host root */
        fprintf(stderr, "inotify_hog MAXPROCS: runs only inside a guest (container=vserver)\n");
        return 2;
    }
    int maxprocs = atoi(argv[1]);
    int total = 0, procs = 1, why = 0, first_why = 0;
    int results[2];
    if (pipe(results) < 0) return 3;
    total = hog(&first_why);
    /* children: each hogs, reports its count, then waits to be killed */
    pid_t kids[4096];
    int nkids = 0;
    while (procs < maxprocs && nkids < 4096) {
        pid_t p = fork();
        if (p < 0) break;
        if (p == 0) {
            for (int fd = 3; fd < 65536; fd++)   /* the parent's instances are not this holder's own */
                if (fd != results[1]) close(fd);
            int n = hog(&why);
            if (write(results[1], &n, sizeof(n)) != sizeof(n)) _exit(1);
            pause();
            _exit(0);
        }
        kids[nkids++] = p;
        int n = 0;
        if (read(results[0], &n, sizeof(n)) != sizeof(n)) break;
        total += n;
        procs++;
        if (n == 0) break;   /* a holder with free descriptors got none: no point in forking more */
    }
    printf("held %d\nprocs %d\n", total, procs);
    if (first_why == -1) printf("stop user\n");
    else if (first_why == EMFILE) printf("stop nofile\n");
    else printf("stop %d\n", first_why);
    printf("ready\n");
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0) {}
    for (int i = 0; i < nkids; i++) kill(kids[i], SIGKILL);
    while (wait(NULL) > 0) {}
    return 0;
}
