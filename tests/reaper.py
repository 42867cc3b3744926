"""Run a command as a child subreaper: orphaned guest init processes are reaped here when they exit.

Guests are not supervised: once started, their init is reparented to the nearest subreaper or PID 1.
Some PID 1s (this CI VM's, many container entry points) never reap orphans, so tests run under this.
"""
import ctypes
import os
import sys


def main():
    argv = sys.argv[1:]
    if argv and argv[0] == '--':
        argv = argv[1:]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    child = os.fork()
    if child == 0:
        os.execvp(argv[0], argv)
    code = 1
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            break
    # reap whatever already died; live orphans (leaks) go to PID 1 and the leak check reports them
    while True:
        try:
            pid, dummy = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == '__main__':
    main()
