"""Host root's keys stay invisible to guests.

In this (privileged) mode a guest's root is host uid 0, whose user and user-session keyrings the kernel shares
with every process of that uid: without the default filter a guest reads a key the host stored (shown below, in a
guest with the filter off). The test stores a key in host root's user keyring (add_key(2) through ctypes: keyutils
is not needed), then a hostile static C program inside a default guest tries to read, describe, search, request,
revoke it and to add a key of its own: every call fails with EPERM, /proc/keys and /proc/key-users read empty, and
the host's key is unchanged afterwards. The key is revoked and unlinked on the host in any case.
"""
import ctypes
import errno
import os
import secrets
import shutil
import subprocess

import pytest

from helpers import TOP, vserver

pytestmark = [pytest.mark.skipif(os.uname().machine != 'x86_64', reason='syscall numbers below are x86_64')]

NR_ADD_KEY, NR_KEYCTL = 248, 250
KEY_SPEC_USER_KEYRING = -4
KEYCTL_REVOKE, KEYCTL_UNLINK, KEYCTL_READ = 3, 9, 11
EPERM = errno.EPERM

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _sys(*args):
    ret = _libc.syscall(*args)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def host_key_read(serial):
    buf = ctypes.create_string_buffer(256)
    n = _sys(NR_KEYCTL, KEYCTL_READ, ctypes.c_long(serial), buf, ctypes.c_long(255))
    return buf.raw[:n]


@pytest.fixture
def host_key():
    """(serial, description, secret) of a key in host root's user keyring, removed afterwards."""
    desc = 'vstest-%s' % secrets.token_hex(4)
    secret = secrets.token_hex(8).encode()
    serial = _sys(NR_ADD_KEY, b'user', desc.encode(), secret, ctypes.c_size_t(len(secret)),
                  ctypes.c_long(KEY_SPEC_USER_KEYRING))
    try:
        yield serial, desc, secret
    finally:
        for op in (KEYCTL_REVOKE, KEYCTL_UNLINK):
            try:
                _sys(NR_KEYCTL, op, ctypes.c_long(serial), ctypes.c_long(KEY_SPEC_USER_KEYRING))
            except OSError:
                pass


@pytest.fixture(scope='module')
def probe_binary(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('probe') / 'keyring_probe')
    subprocess.run(['gcc', '-static', '-O1', '-o', out, os.path.join(TOP, 'tests/integration/files/keyring_probe.c')],
                   check=True, capture_output=True, timeout=120)
    return out


def run_probe(host_paths, doc, binary, *args):
    shutil.copy(binary, os.path.join(doc['root'], 'bin', 'keyprobe'))
    out = vserver(host_paths, doc['name'], 'exec', '/bin/keyprobe', *args)
    assert out.returncode == 0, out.stdout + out.stderr
    return dict(line.split(None, 1) for line in out.stdout.splitlines())


def guest_reads(host_paths, name, path):
    out = vserver(host_paths, name, 'exec', '/bin/cat', path)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_host_keys_are_invisible_to_a_default_guest(host_paths, make_guest, probe_binary, host_key):
    serial, desc, secret = host_key
    assert host_key_read(serial) == secret
    assert desc in open('/proc/keys').read()          # the host sees its key (the masked file's real content)
    doc = make_guest('vst-keys', start=True)
    got = run_probe(host_paths, doc, probe_binary, str(serial), desc, 'all')
    assert set(got) == {'read', 'describe', 'user_keyring', 'user_session_keyring', 'search', 'request_key',
                        'revoke', 'add_key'}, got
    wrong = {name: value for name, value in got.items() if value != str(EPERM)}
    assert not wrong, 'not denied with EPERM: %s' % wrong
    assert guest_reads(host_paths, 'vst-keys', '/proc/keys') == ''
    assert guest_reads(host_paths, 'vst-keys', '/proc/key-users') == ''
    # unchanged on the host: not revoked, same payload, and no key added by the guest
    assert host_key_read(serial) == secret
    keys = open('/proc/keys').read()
    assert desc in keys and 'vstest-from-guest' not in keys


def test_without_the_filter_the_guest_sees_host_keys(host_paths, make_guest, probe_binary, host_key):
    """The contrast that makes the test above mean something: the same probe (only looking) in a guest with the
    filter off reads the host's secret; the masks still hide /proc/keys."""
    serial, desc, secret = host_key
    doc = make_guest('vst-keys-unc', capabilities={'seccomp': {'mode': 'unconfined'}}, start=True)
    got = run_probe(host_paths, doc, probe_binary, str(serial), desc, 'look')
    assert got['read'] == '0' and got['read_data'] == secret.decode(), got
    assert got['search'] == '0', got
    assert guest_reads(host_paths, 'vst-keys-unc', '/proc/keys') == ''
    assert host_key_read(serial) == secret
