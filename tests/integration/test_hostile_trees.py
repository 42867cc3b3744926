"""A hostile guest root against the host code that works on its tree, its log and its process names (issue 12):
clone from a running source, managed files, guest logs, terminal escapes. Racers are static C programs
(files/hostile.c) run inside the guests; bait files outside the trees are checked afterwards."""
import os
import shutil
import subprocess
import time

import pytest

from helpers import TOP, vserver

HOSTILE_C = os.path.join(TOP, 'tests', 'integration', 'files', 'hostile.c')


@pytest.fixture(scope='module')
def hostile_bin(tmp_path_factory):
    binary = str(tmp_path_factory.mktemp('hostile') / 'hostile')
    subprocess.run(['gcc', '-static', '-O1', '-o', binary, HOSTILE_C], check=True, capture_output=True, timeout=120)
    return binary


def install(doc, binary):
    shutil.copy2(binary, os.path.join(doc['root'], 'bin', 'hostile'))


def bait(path, data=b'host secret\n', mode=0o600):
    """A host file a hostile guest must not change: returns what to compare afterwards."""
    with open(path, 'wb') as handle:
        handle.write(data)
    os.chmod(path, mode)
    return snapshot(path)


def snapshot(path):
    st = os.lstat(path)
    with open(path, 'rb') as handle:
        data = handle.read()
    return (data, st.st_mode, st.st_uid, st.st_gid, st.st_ino, st.st_nlink)


def test_esc_named_guest_process_is_escaped_in_vserver_ps(host_paths, make_guest, hostile_bin):
    doc = make_guest('esc', start=True)
    install(doc, hostile_bin)
    proc = subprocess.Popen(['/usr/bin/python3', os.path.join(TOP, 'bin', 'vserver'), 'esc', 'exec',
                             '/bin/hostile', 'name', '60'], env=__import__('helpers').env_for(host_paths),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout.readline().strip() == b'named'
        out = vserver(host_paths, 'ps')
        assert out.returncode == 0, out.stderr
        assert '\x1b' not in out.stdout and '\x07' not in out.stdout
        lines = [line for line in out.stdout.splitlines() if ' esc ' in line]
        assert any(line.endswith('\\x1b]0;pwned\\x07\\x1b[2J\ufffd') for line in lines), lines
        stat = vserver(host_paths, 'stat')
        assert stat.returncode == 0 and '\x1b' not in stat.stdout
    finally:
        proc.kill()
        proc.wait(timeout=30)
