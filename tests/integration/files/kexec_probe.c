/* Run as root inside a guest that holds CAP_SYS_BOOT: try to load a new kernel (kexec_load, kexec_file_load:
 * they check CAP_SYS_BOOT against the host, so the guest's filter must deny them) and to change the host's
 * Ctrl-Alt-Del setting through reboot(2) (a PID namespace's reboot takes only restart, halt and power-off).
 * Prints "NAME ERRNO" per attempt (0: the call succeeded). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

#define LINUX_REBOOT_MAGIC1 0xfee1dead
#define LINUX_REBOOT_MAGIC2 672274793
#define LINUX_REBOOT_CMD_CAD_ON 0x89ABCDEF

static void report(const char *name, long r) {
    printf("%s %d\n", name, r < 0 ? errno : 0);
}

int main(void) {
    /* unknown flag bits: a call that got past the filter and the capability check fails with EINVAL, and loads
     * or unloads nothing (nr_segments 0 alone would unload the host's crash kernel) */
    report("kexec_load", syscall(SYS_kexec_load, 0L, 0L, 0L, 1L << 15));
    report("kexec_file_load", syscall(SYS_kexec_file_load, -1L, -1L, 0L, "", 1L << 15));
    report("reboot_cad_on", syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2, LINUX_REBOOT_CMD_CAD_ON, 0L));
    return 0;
}
