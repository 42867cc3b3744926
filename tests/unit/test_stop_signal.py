"""stop_signal and stop_timeout: accepted forms, their canonical stored form, and what is refused."""
import signal

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _runtime, _mgr_context
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError

RTMIN, RTMAX = int(signal.SIGRTMIN), int(signal.SIGRTMAX)


@pytest.mark.parametrize('given, number, stored', [
    ('SIGTERM', 15, 'SIGTERM'),
    ('term', 15, 'SIGTERM'),
    ('SIGPWR', 30, 'SIGPWR'),
    ('SIGKILL', 9, 'SIGKILL'),
    ('SIGIOT', 6, 'SIGABRT'),  # an alias is stored under its own name
    ('SIGRTMIN+3', RTMIN + 3, 'SIGRTMIN+3'),  # systemd's "halt"
    ('rtmin+3', RTMIN + 3, 'SIGRTMIN+3'),
    (' SIGRTMIN+3 ', RTMIN + 3, 'SIGRTMIN+3'),
    ('SIGRTMIN', RTMIN, 'SIGRTMIN'),
    ('SIGRTMIN+0', RTMIN, 'SIGRTMIN'),
    ('SIGRTMAX', RTMAX, 'SIGRTMAX'),
    ('SIGRTMAX-0', RTMAX, 'SIGRTMAX'),
    ('SIGRTMAX-1', RTMAX - 1, 'SIGRTMIN+%d' % (RTMAX - 1 - RTMIN)),
    ('SIGRTMIN+%d' % (RTMAX - RTMIN), RTMAX, 'SIGRTMAX'),
    ('SIGRTMAX-%d' % (RTMAX - RTMIN), RTMIN, 'SIGRTMIN'),
    (15, 15, 'SIGTERM'),
    ('15', 15, 'SIGTERM'),
    (1, 1, 'SIGHUP'),
    (RTMIN + 3, RTMIN + 3, 'SIGRTMIN+3'),
    (str(RTMAX), RTMAX, 'SIGRTMAX'),
])
def test_accepted(given, number, stored):
    assert _runtime.parse_signal(given) == number
    assert _mgr_context.validate({'name': 'web', 'stop_signal': given})['stop_signal'] == stored
    assert _runtime.parse_signal(stored) == number  # the stored form reads back as the same signal


@pytest.mark.parametrize('given', [
    'SIGSTOP', 'SIGCONT', 'stop', 19, 18, 0, '0', -15, '-15', 65, RTMAX + 1, 32, 33, 'SIGFOO', '', 'SIG',
    'SIGRTMIN-1', 'SIGRTMAX+1', 'SIGRTMIN+%d' % (RTMAX - RTMIN + 1), 'SIGRTMAX-%d' % (RTMAX - RTMIN + 1),
    'SIGRTMIN+', 'SIGRTMIN+x', 'SIGTERM+1', True, None, 1.5, ['SIGTERM'],
])
def test_refused_naming_the_field(given):
    with pytest.raises(VServerError) as err:
        _mgr_context.validate({'name': 'web', 'stop_signal': given}) if given is not None else \
            _runtime.parse_signal(given)
    assert err.value.field == 'stop_signal' and 'stop_signal must be' in str(err.value)
    assert 'SIGRTMIN+3' in str(err.value)


@pytest.mark.parametrize('given, stored', [(0, 0), ('5', 5), (2.5, 2.5), ('3600', 3600)])
def test_timeout_accepted(given, stored):
    assert _runtime.parse_stop_timeout(given) == stored


@pytest.mark.parametrize('given', ['soon', -1, 3601, 'nan', True, None, [], 'inf'])
def test_timeout_refused(given):
    with pytest.raises(VServerError) as err:
        _runtime.parse_stop_timeout(given)
    assert err.value.field == 'stop_timeout' and 'stop_timeout must be a number of seconds' in str(err.value)


@pytest.mark.parametrize('doc, sig, timeout, warned', [
    ({}, signal.SIGTERM, 10, []),
    ({'stop_signal': 'SIGRTMIN+3', 'stop_timeout': 2}, RTMIN + 3, 2, []),
    ({'stop_signal': 'SIGBOGUS', 'stop_timeout': 2}, signal.SIGTERM, 2, ['stop_signal']),
    ({'stop_signal': 'SIGKILL', 'stop_timeout': 'soon'}, signal.SIGKILL, 10, ['stop_timeout']),
    ({'stop_signal': 'SIGSTOP', 'stop_timeout': 'soon'}, signal.SIGTERM, 10, ['stop_signal', 'stop_timeout']),
])
def test_stop_settings_fall_back_with_a_warning(doc, sig, timeout, warned):
    """A config with bad stop settings still stops (defaults), and each bad field is named in a warning."""
    got_sig, got_timeout, warnings = _runtime.stop_settings(dict(doc, name='web'))
    assert (got_sig, got_timeout) == (sig, timeout)
    assert len(warnings) == len(warned)
    for field, warning in zip(warned, warnings):
        assert warning.startswith(field + ' must be') and 'instead' in warning
