"""The context manager's decisions (_mgr_context.plan), without root and without a guest: what it builds, writes,
starts, stops, repairs and reports, from the stored config and what the host shows (Facts)."""
import pytest

from ansible_collections.vserver.core.plugins.module_utils import _mgr_context
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError

STORED = {'name': 'web', 'xid': 2, 'root': '/srv/web', 'init': ['/sbin/init'], 'stop_signal': 'SIGTERM',
          'stop_timeout': 10, 'schema': 1}
UTS = ['web', '(none)']


def decide(state='present', current=None, running='stopped', change=None, template='busybox', new=False, **facts):
    current = None if new else dict(current or STORED)
    opts = _mgr_context.validate(dict({'name': 'web', 'state': state, 'template': template}, **(change or {})))
    doc = dict(current or {'name': 'web', 'xid': 2, 'root': '/srv/web', 'init': ['/sbin/init'],
                           'stop_signal': 'SIGTERM', 'stop_timeout': 10})
    doc.update({k: opts[k] for k in change or {} if opts.get(k) is not None})  # as _desired puts them
    live = running in ('running', 'frozen')
    facts = dict(dict(live_uts=UTS if live else None), **facts)
    return _mgr_context.plan(opts, current, doc, _mgr_context.Facts(running_state=running, **facts))


@pytest.mark.parametrize('state,running,leftovers,steps', [
    ('present', 'stopped', False, []),
    ('present', 'running', False, []),
    ('present', 'broken', False, []),
    ('started', 'stopped', False, ['start']),
    ('started', 'running', False, []),
    ('started', 'frozen', False, ['thaw']),
    ('started', 'broken', True, ['kill untracked processes', 'start']),
    ('stopped', 'stopped', False, []),
    ('stopped', 'stopped', True, ['stop']),           # what a killed start or a dead init left behind
    ('stopped', 'running', True, ['stop']),
    ('stopped', 'broken', True, ['stop']),
    ('restarted', 'stopped', False, ['start']),
    ('restarted', 'running', True, ['stop', 'start']),
    ('restarted', 'frozen', True, ['stop', 'start']),
    ('frozen', 'stopped', False, ['start', 'freeze']),
    ('frozen', 'running', False, ['freeze']),
    ('frozen', 'frozen', False, []),
    ('frozen', 'broken', True, ['kill untracked processes', 'start', 'freeze']),
])
def test_runtime_steps_from_the_observed_state(state, running, leftovers, steps):
    todo = decide(state, running=running, leftovers=leftovers)
    assert todo.steps == steps and todo.actions == steps and not todo.config_changed


@pytest.mark.parametrize('state,running,after', [
    ('present', 'running', 'started'), ('present', 'stopped', 'stopped'), ('present', 'frozen', 'frozen'),
    ('restarted', 'running', 'started'), ('started', 'stopped', 'started'), ('stopped', 'running', 'stopped'),
])
def test_the_state_the_diff_shows_after(state, running, after):
    assert decide(state, running=running).after_state == after


def test_a_new_guest_on_an_empty_root_is_built_then_configured_then_started():
    todo = decide('started', new=True, tree_empty=True, builds=['/srv/.web.build-1'])
    assert todo.build and todo.create and todo.config_changed
    assert todo.actions == ['remove unfinished build /srv/.web.build-1', 'build tree /srv/web from template busybox',
                            'create config', 'start']


@pytest.mark.parametrize('facts,field,words', [
    (dict(tree_empty=True), 'root', 'template is none'),
    (dict(root_is_dir=False), 'root', 'exists and is not a directory'),
    (dict(init_exists=False), 'init', 'init /sbin/init does not exist in the guest tree /srv/web'),
])
def test_an_unusable_root_is_refused_before_anything_is_done(facts, field, words):
    with pytest.raises(VServerError) as err:
        decide('started', new=True, template='none', **facts)
    assert err.value.field == field and words in str(err.value)


def test_an_existing_tree_is_never_built_again():
    todo = decide('present', new=True, template='none')
    assert not todo.build and todo.actions == ['create config']


def test_a_host_name_change_applies_live_first_and_needs_no_restart():
    todo = decide('started', running='running', change={'hostname': 'renamed'})
    assert todo.actions == ['update config', 'set hostname'] and todo.steps[0] == 'set hostname'
    assert not todo.restart_required


def test_a_host_name_the_kernel_lost_is_set_again_without_a_config_change():
    """A run killed after the config was saved: the kernel, not the config, decides."""
    todo = decide('present', running='running', live_uts=['other', '(none)'])
    assert todo.actions == ['set hostname'] and not todo.config_changed


def test_a_restart_sets_the_host_name_by_starting_afresh():
    todo = decide('restarted', running='running', change={'hostname': 'renamed'})
    assert todo.steps == ['stop', 'start']


@pytest.mark.parametrize('change', [{'root': '/srv/other'}, {'init': '/sbin/other'}])
def test_root_or_init_of_a_running_guest_waits_for_a_restart(change):
    todo = decide('started', running='running', change=change)
    assert todo.restart_required and todo.actions == ['update config']
    assert not decide('restarted', running='running', change=change).restart_required
    assert not decide('started', running='stopped', change=change).restart_required


def test_xid_and_stop_settings_change_the_config_only():
    todo = decide('started', running='running', change={'xid': 7, 'stop_signal': 'pwr', 'stop_timeout': 3})
    assert todo.actions == ['update config'] and not todo.restart_required
    assert todo.doc['stop_signal'] == 'SIGPWR'


def test_repairs_come_before_the_runtime_steps():
    todo = decide('frozen', running='running', repairs=['repair netns handle'])
    assert todo.actions == ['repair netns handle', 'freeze']


def test_validate_keeps_its_order_of_checks():
    with pytest.raises(VServerError) as err:
        _mgr_context.validate({'name': 'web', 'state': 'gone', 'xid': 'x'})
    assert err.value.field == 'state'
    assert _mgr_context.validate({'name': 'web'})['template'] == 'busybox'


def test_the_module_spec_and_the_defaults_have_one_source():
    spec = _mgr_context.ARGUMENT_SPEC
    assert spec['state']['choices'] == list(_mgr_context.STATES) and spec['state']['default'] == 'present'
    assert _mgr_context.DEFAULTS == {k: v.get('default') for k, v in spec.items() if k != 'name'}
