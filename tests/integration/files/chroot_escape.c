/* The classic double-chroot escape, run as root inside a guest: chroot into a subdirectory while keeping
 * the cwd outside it, walk up with chdir(".."), chroot(".") there, then try to read a file that exists
 * only on the host. With pivot_root and the old root detached there is nothing above the guest's root. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *host_file = argc > 1 ? argv[1] : "/etc/host-only";
    mkdir("/tmp/escape", 0700);
    int fd = open("/", O_RDONLY | O_DIRECTORY);
    if (chroot("/tmp/escape") != 0) { printf("chroot1 failed: %s\n", strerror(errno)); return 2; }
    if (fchdir(fd) != 0) { printf("fchdir failed: %s\n", strerror(errno)); return 2; }
    for (int i = 0; i < 256; i++) chdir("..");
    if (chroot(".") != 0) { printf("chroot2 failed: %s\n", strerror(errno)); return 2; }
    int probe = open(host_file, O_RDONLY);
    if (probe >= 0) { printf("ESCAPED: read %s\n", host_file); return 1; }
    char buf[256] = {0};
    int h = open("/etc/hostname", O_RDONLY);
    if (h >= 0) { read(h, buf, sizeof(buf) - 1); }
    printf("contained: %s not reachable (%s); / is the guest's (hostname %s)\n", host_file, strerror(errno), buf);
    return 0;
}
