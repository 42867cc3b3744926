"""Validators and host paths."""
import pytest

from ansible_collections.vserver.core.plugins.module_utils._common import (
    Paths, VServerError, atomic_write, check_name, check_xid, remove_stale_temps, terminal_safe)


@pytest.mark.parametrize('name', ['web', 'a', 'mail-1', 'db_2', 'x.y', '0abc', 'a' * 63])
def test_good_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize('name', ['', 'Web', 'a/b', '..', 'a..b', '.hidden', 'with space', 'a' * 64, '/abs',
                                  'tab\tname', None, 7])
def test_bad_names_name_the_field(name):
    with pytest.raises(VServerError) as err:
        check_name(name)
    assert err.value.field == 'name'
    assert 'lowercase letters' in str(err.value)


@pytest.mark.parametrize('xid', [2, 100, 49151, '42'])
def test_good_xids(xid):
    assert check_xid(xid) == int(xid)


@pytest.mark.parametrize('xid', [0, 1, 49152, -5, 'x', None, 2.5, True])
def test_bad_xids(xid):
    with pytest.raises(VServerError) as err:
        check_xid(xid)
    assert err.value.field == 'xid' and '2 to 49151' in str(err.value)


def test_paths_defaults_env_and_overrides(monkeypatch):
    monkeypatch.delenv('VSERVER_CONFIG_DIR', raising=False)
    assert Paths(defaults_file=None).config_dir == '/etc/vservers'
    monkeypatch.setenv('VSERVER_CONFIG_DIR', '/srv/etc')
    assert Paths(defaults_file=None).config_dir == '/srv/etc'
    assert Paths(config_dir='/x/y/').config_dir == '/x/y'
    with pytest.raises(VServerError) as err:
        Paths(run_dir='relative')
    assert err.value.field == 'run_dir'
    with pytest.raises(VServerError) as err:
        Paths(cgroup_parent='../escape')
    assert err.value.field == 'cgroup_parent'
    with pytest.raises(VServerError) as err:
        Paths(cgroup_parent='hold/guests')      # the delegated unit's own leaf under systemd
    assert err.value.field == 'cgroup_parent' and 'hold' in str(err.value)
    assert Paths(cgroup_parent='holdings').cgroup_parent == 'holdings'


def test_paths_from_the_hosts_defaults_file(tmp_path, monkeypatch):
    for var in ('VSERVER_CONFIG_DIR', 'VSERVER_RUN_DIR', 'VSERVER_CGROUP_PARENT'):
        monkeypatch.delenv(var, raising=False)
    defaults = tmp_path / 'vserver'
    defaults.write_text('# written by the host role\nVSERVER_CONFIG_DIR=/srv/vs/etc\n'
                        'VSERVER_CGROUP_PARENT="fleet1"\nOTHER=ignored\n')
    paths = Paths(defaults_file=str(defaults))
    assert paths.config_dir == '/srv/vs/etc' and paths.cgroup_parent == 'fleet1'
    assert paths.run_dir == '/run/vservers'
    monkeypatch.setenv('VSERVER_CONFIG_DIR', '/from/env')
    assert Paths(defaults_file=str(defaults)).config_dir == '/from/env'
    assert Paths(config_dir='/given', defaults_file=str(defaults)).config_dir == '/given'
    assert Paths(defaults_file=str(tmp_path / 'missing')).config_dir == '/from/env'


@pytest.mark.parametrize('entry, stale', [
    ('.web.json.k2x9_q0a', True),      # atomic_write's temp file of web.json (mkstemp: 8 random characters)
    ('.a.b-c.json.abcdefgh', True),
    ('.web.json.abcdefghi', False),    # 9 characters: not ours
    ('.web.json.ABCDEFGH', False),
    ('.web.json.keep', False),
    ('web.json.abcdefgh', False),      # no leading dot
    ('web.json', False),
    ('.lock', False),
    ('.unify-index', False),
    ('..unify-index.abcdefgh', False),  # a temp file, but not of a config document
])
def test_only_config_temp_files_count_as_stale(tmp_path, entry, stale):
    (tmp_path / entry).write_text('x')
    assert remove_stale_temps(str(tmp_path)) == ([entry] if stale else [])
    assert (tmp_path / entry).exists() is not stale


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / 'g.json'
    target.write_text('old')
    atomic_write(str(target), 'new', 0o600)
    assert target.read_text() == 'new' and oct(target.stat().st_mode & 0o777) == '0o600'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['g.json']


def test_atomic_write_failure_names_the_file(tmp_path):
    with pytest.raises(VServerError) as err:
        atomic_write(str(tmp_path / 'missing-dir' / 'g.json'), 'x')
    assert str(err.value) == 'cannot write %s: No such file or directory' % (tmp_path / 'missing-dir' / 'g.json')


@pytest.mark.parametrize('raw, shown', [
    ('init', 'init'),
    ('\x1b]0;pwned\x07', '\\x1b]0;pwned\\x07'),
    ('a\nb\tc', 'a\\x0ab\\x09c'),
    ('back\\slash', 'back\\\\slash'),
    ('bad\udcffbyte', 'bad\\xffbyte'),
    ('caf\u00e9 \u200b', 'caf\u00e9 \\u200b'),
    ('\x9b31m', '\\x9b31m'),
])
def test_terminal_safe_escapes_what_a_guest_could_use_against_a_terminal(raw, shown):
    assert terminal_safe(raw) == shown


@pytest.mark.parametrize('raw, value', [(None, 16 << 20), ('1M', 1 << 20), ('2048k', 2 << 20), ('1', 64 << 10),
                                        ('3G', 3 << 30)])
def test_log_max_from_the_environment(monkeypatch, tmp_path, raw, value):
    from ansible_collections.vserver.core.plugins.module_utils import _logs
    monkeypatch.delenv('VSERVER_LOG_MAX', raising=False)
    if raw is not None:
        monkeypatch.setenv('VSERVER_LOG_MAX', raw)
    assert _logs.log_max(str(tmp_path / 'absent')) == value


def test_log_max_from_the_defaults_file_and_a_bad_value(monkeypatch, tmp_path):
    from ansible_collections.vserver.core.plugins.module_utils import _logs
    monkeypatch.delenv('VSERVER_LOG_MAX', raising=False)
    defaults = tmp_path / 'vserver'
    defaults.write_text('VSERVER_LOG_DIR=/var/log/x\nVSERVER_LOG_MAX=4M\n')
    assert _logs.log_max(str(defaults)) == 4 << 20
    monkeypatch.setenv('VSERVER_LOG_MAX', '4 MiB')
    with pytest.raises(VServerError) as err:
        _logs.log_max(str(defaults))
    assert err.value.field == 'VSERVER_LOG_MAX'


def test_cap_keeps_the_tail_and_truncates(tmp_path):
    from ansible_collections.vserver.core.plugins.module_utils import _logs
    log = tmp_path / 'g.log'
    log.write_bytes(b'a' * 1000 + b'b' * 100)
    assert _logs.cap(str(log), 2000) is False and log.stat().st_size == 1100
    assert _logs.cap(str(log), 100) is True
    assert log.stat().st_size == 0 and (tmp_path / 'g.log.1').read_bytes() == b'b' * 100
    log.write_bytes(b'c' * 300)
    assert _logs.cap(str(log), 100, keep=False) is True
    assert log.stat().st_size == 0 and (tmp_path / 'g.log.1').read_bytes() == b'b' * 100
