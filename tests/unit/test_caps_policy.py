"""capabilities: names, the default bounding set, ccaps, the section validator."""
import pytest

from ansible_collections.vserver.core.plugins.module_utils import _caps
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError


def test_default_set_is_util_vserver_minus_insecure_plus_vshelpers_sys_boot():
    for name in _caps.UTIL_VSERVER_INSECURE:
        assert name not in _caps.DEFAULT_BCAPS or name == 'sys_boot'   # reboot from inside (vshelper's job)
    assert set(_caps.DEFAULT_BCAPS) == {'chown', 'dac_override', 'fowner', 'fsetid', 'kill', 'setgid', 'setuid',
                                        'setpcap', 'net_bind_service', 'sys_chroot', 'sys_boot', 'audit_write',
                                        'setfcap'}
    assert set(_caps.DEFAULT_BCAPS) | set(_caps.DEFAULT_DROPPED) == set(_caps.CAPS)


@pytest.mark.parametrize('name,key', [('CAP_CHOWN', 'chown'), ('chown', 'chown'), ('Cap_Sys_Admin', 'sys_admin'),
                                      (' net_raw ', 'net_raw')])
def test_names(name, key):
    assert _caps.normalize(name) == key


@pytest.mark.parametrize('params,section', [
    ({}, {}),
    ({'bcaps': ['CAP_KILL', 'chown', 'kill']}, {'bcaps': ['chown', 'kill']}),
    ({'bcaps_add': ['CAP_SYS_NICE'], 'bcaps_drop': ['sys_ptrace']},
     {'bcaps_add': ['sys_nice'], 'bcaps_drop': ['sys_ptrace']}),
    ({'ccaps': ['ping', 'RAW_ICMP']}, {'ccaps': ['raw_icmp']}),
    ({'no_new_privs': True, 'bcaps_add': []}, {'no_new_privs': True}),
    ({'no_new_privs': False}, {}),
])
def test_validate(params, section):
    assert _caps.validate(params) == section


@pytest.mark.parametrize('params,field,words', [
    ({'bcaps': ['CAP_FLY']}, 'bcaps', 'CAP_CHOWN or chown'),
    ({'bcaps_add': ['sys_admin', 42]}, 'bcaps_add', 'strings'),
    ({'bcaps': 'chown'}, 'bcaps', 'list'),
    ({'bcaps': ['chown'], 'bcaps_drop': ['kill']}, 'bcaps', 'not both'),
    ({'bcaps_add': ['kill'], 'bcaps_drop': ['kill']}, 'bcaps_drop', 'kill'),
    ({'ccaps': ['secure_mount']}, 'ccaps', 'supported: raw_icmp'),
    ({'ccaps': ['set_utsname']}, 'ccaps', 'no mainline equivalent'),
    ({'ccaps': 'ping'}, 'ccaps', 'list'),
])
def test_validate_refuses(params, field, words):
    with pytest.raises(VServerError) as err:
        _caps.validate(params)
    assert err.value.field == field and words in str(err.value)


def test_resolve_and_sysctls():
    section = _caps.validate({'bcaps_add': ['sys_nice'], 'bcaps_drop': ['kill'], 'ccaps': ['ping']})
    bound = _caps.resolve(section)
    assert 'sys_nice' in bound and 'kill' not in bound and 'chown' in bound
    assert _caps.ccap_sysctls(section) == {'net/ipv4/ping_group_range': '0\t2147483647'}
    assert _caps.ccap_sysctls({}) == {'net/ipv4/ping_group_range': '1\t0'}


def test_observed_from_status():
    status = {'CapBnd': '%016x' % _caps.mask(['chown', 'kill', 'checkpoint_restore']), 'NoNewPrivs': '1'}
    assert _caps.observed(status, 39) == {'bcaps': ['chown', 'kill'], 'no_new_privs': True}
    assert _caps.observed({'CapBnd': '0'}, 40) == {'bcaps': [], 'no_new_privs': False}


def test_sysctl_files(tmp_path):
    (tmp_path / 'sys/net/ipv4').mkdir(parents=True)
    (tmp_path / 'sys/net/ipv4/ping_group_range').write_text('1\t0\n')
    _caps.write_sysctls(_caps.ccap_sysctls({'ccaps': ['raw_icmp']}), proc=str(tmp_path))
    assert (tmp_path / 'sys/net/ipv4/ping_group_range').read_text() == '0 2147483647'
    assert _caps.read_sysctls(['net/ipv4/ping_group_range'], proc=str(tmp_path)) == {
        'net/ipv4/ping_group_range': '0\t2147483647'}


@pytest.mark.parametrize('seccomp', [{'mode': 'unconfined'}, {'mode': 'log'}, {'allow': ['kexec_load']},
                                     {'allow': ['kexec_file_load']}])
def test_sys_boot_only_with_a_filter_that_denies_kexec(seccomp):
    # the default set loses sys_boot where kexec would get through
    assert 'sys_boot' not in _caps.resolve(_caps.validate({'seccomp': seccomp}))
    assert 'sys_boot' in _caps.resolve(_caps.validate({}))
    # asking for it there is refused, naming the field
    for params, field in (({'bcaps_add': ['sys_boot']}, 'bcaps_add'), ({'bcaps': ['chown', 'CAP_SYS_BOOT']}, 'bcaps')):
        with pytest.raises(VServerError) as err:
            _caps.validate(dict(params, seccomp=seccomp))
        assert err.value.field == field and 'kexec' in str(err.value)
    # today's refusal per guest
    assert 'sys_boot' not in _caps.resolve(_caps.validate({'bcaps_drop': ['sys_boot']}))
