"""A Debian guest works normally under the default syscall filter and the /proc and /sys masks.

The guest is a copy of a Debian minbase tree of this host's release (tests/debian/build: mmdebstrap from the
host's configured mirror, cached in /var/cache/vserver-debian; about a minute on a fresh machine, reused after),
with the default capabilities (so the default filter) and a one-line perl init that reaps orphans. Inside it, through
`vserver exec`: apt and dpkg inspect the system, a local package (built here with dpkg-deb: a file, a postinst that
adds a system user, a postrm) is installed with dpkg and with apt and removed again, and a service is started with
start-stop-daemon under that user and answers on the guest's loopback. The guest has no network to any mirror and
needs none.
"""
import os
import shutil
import subprocess

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _config, _runtime, _procfs as P
from helpers import TOP, guest_sh

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not shutil.which('mmdebstrap'), reason='mmdebstrap missing (make apt)')]

PKG = 'vstest-pkg'
# init: a minimal one that reaps orphans (minbase has no init system; perl-base is essential), so that a stopped
# daemon is really gone (start-stop-daemon --stop waits for its pid to vanish, a zombie counts as alive)
REAPER = ['/usr/bin/perl', '-e', 'while (1) { sleep 1 if wait == -1 }']
CONTROL = """Package: %s
Version: 1.0
Architecture: all
Maintainer: vserver.core tests <root@localhost>
Description: tiny package of the Debian guest test
""" % PKG
POSTINST = """#!/bin/sh
set -e
if [ "$1" = configure ]; then
    getent passwd vstestd >/dev/null || useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin vstestd
    echo configured > /var/lib/vstest-postinst
fi
"""
POSTRM = """#!/bin/sh
set -e
rm -f /var/lib/vstest-postinst
"""


@pytest.fixture(scope='session')
def debian_tree():
    proc = subprocess.run([os.path.join(TOP, 'tests', 'debian', 'build')], capture_output=True, text=True,
                          timeout=900, check=False)
    if proc.returncode != 0:
        pytest.fail('tests/debian/build failed:\n%s' % proc.stderr[-3000:])
    return proc.stdout.strip().splitlines()[-1]


def build_deb(tmp_path):
    top = tmp_path / 'pkg'
    for sub in ('DEBIAN', 'usr/share/vstest'):
        (top / sub).mkdir(parents=True)
    (top / 'DEBIAN' / 'control').write_text(CONTROL)
    for name, text in (('postinst', POSTINST), ('postrm', POSTRM)):
        (top / 'DEBIAN' / name).write_text(text)
        (top / 'DEBIAN' / name).chmod(0o755)
    (top / 'usr/share/vstest/index.html').write_text('hello from the guest service\n')
    out = str(tmp_path / 'vstest.deb')
    subprocess.run(['dpkg-deb', '--root-owner-group', '--build', str(top), out], check=True, capture_output=True,
                   timeout=60)
    return out


def ok(host_paths, name, script, timeout=120):
    out = guest_sh(host_paths, name, 'exec 2>&1; set -e; ' + script, timeout=timeout)
    assert out.returncode == 0, '%s\n-> rc %d\n%s%s' % (script, out.returncode, out.stdout, out.stderr)
    return out.stdout


def test_debian_guest_apt_dpkg_and_a_service(host_paths, debian_tree, tmp_path):
    name = 'vst-deb'
    root = os.path.join(host_paths.tree_dir, name)
    os.makedirs(host_paths.tree_dir, exist_ok=True)
    subprocess.run(['cp', '-a', debian_tree, root], check=True, timeout=300)
    try:
        shutil.copy(build_deb(tmp_path), os.path.join(root, 'tmp', 'vstest.deb'))
        os.makedirs(os.path.join(root, 'usr/local/bin'), exist_ok=True)
        shutil.copy('/bin/busybox', os.path.join(root, 'usr/local/bin/busybox'))   # static: httpd and wget
        doc = {'name': name, 'xid': _config.free_xid(host_paths), 'root': root, 'init': REAPER,
               'stop_timeout': 2, 'stop_signal': 'SIGKILL'}
        _config.save(host_paths, doc)
        _runtime.start(host_paths, doc)
        init = _runtime.Runtime(host_paths, name).init_pid()
        assert P.read_status(init).get('Seccomp', '').strip() == '2'

        ok(host_paths, name, 'grep -qx "Seccomp:.2" /proc/self/status; test ! -s /proc/keys; '
                             'test "$(wc -c < /proc/timer_list)" = 0')
        ok(host_paths, name, 'apt-get check')
        assert 'Pinned packages' in ok(host_paths, name, 'apt-cache policy')
        count = int(ok(host_paths, name, 'dpkg -l | wc -l'))
        assert count > 50, count     # minbase: about 90 packages, each listed "ii"
        assert ok(host_paths, name, 'dpkg --audit') == ''

        # dpkg: install (postinst adds a user), remove (postrm)
        ok(host_paths, name, 'dpkg -i /tmp/vstest.deb; dpkg-query -W -f="\\${Status}" %s | grep -qx "install ok '
                             'installed"; test -f /usr/share/vstest/index.html; grep -qx configured '
                             '/var/lib/vstest-postinst; getent passwd vstestd' % PKG)
        ok(host_paths, name, 'dpkg -r %s; test ! -e /usr/share/vstest/index.html; test ! -e /var/lib/vstest-postinst'
           % PKG)
        # apt: the same package from a local file (no index, no network), then a service under its user
        ok(host_paths, name, 'apt-get install -y /tmp/vstest.deb; test -f /usr/share/vstest/index.html; '
                             'grep -qx configured /var/lib/vstest-postinst')
        ok(host_paths, name, 'start-stop-daemon --start --background --make-pidfile --pidfile /run/vstestd.pid '
                             '--chuid vstestd --exec /usr/local/bin/busybox -- httpd -f -p 127.0.0.1:8080 '
                             '-h /usr/share/vstest')
        page = ok(host_paths, name, 'for i in $(seq 100); do busybox wget -q -O - http://127.0.0.1:8080/index.html '
                                    '&& exit 0; sleep 0.2; done; exit 1')
        assert page == 'hello from the guest service\n'
        status = ok(host_paths, name, 'cat /proc/$(cat /run/vstestd.pid)/status; id -u vstestd')
        fields = dict(line.split(':', 1) for line in status.splitlines() if ':' in line)
        uid = status.splitlines()[-1]
        assert fields['Seccomp'].strip() == '2' and fields['Uid'].split()[0] == uid != '0', status
        ok(host_paths, name, 'start-stop-daemon --stop --pidfile /run/vstestd.pid --retry 10; rm /run/vstestd.pid; '
                             '! busybox wget -q -O - http://127.0.0.1:8080/index.html')
        ok(host_paths, name, 'apt-get remove -y %s; test ! -e /usr/share/vstest/index.html; test ! -e '
                             '/var/lib/vstest-postinst; ! dpkg-query -W -f="\\${Status}" %s | grep -q " installed"'
           % (PKG, PKG))
        ok(host_paths, name, 'apt-get check; test -z "$(dpkg --audit)"')
    finally:
        try:
            _runtime.cleanup(host_paths, name)
        except Exception:   # never started: nothing to stop
            pass
        subprocess.run(['rm', '-rf', '--one-file-system', root], check=False, timeout=300)
