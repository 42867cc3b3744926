"""state=absent purge=true leaves nothing of the guest: besides its tree and config, its init log
(LOG_DIR/NAME.log) and its autostart mark (CONFIG_DIR/autostart/NAME) go too; another guest's are kept, and a
removal without purge keeps them (like the tree)."""
import os

from ansible_collections.vserver.core.plugins.module_utils import _config, _mgr_guests, _mgr_context


def spec(name, xid):
    return {'name': name, 'xid': xid, 'template': 'busybox', 'state': 'started', 'autostart': True,
            'stop_timeout': 2}


def leftovers(paths, name):
    return [f for f in (paths.log_file(name), os.path.join(_mgr_guests.autostart_dir(paths), name),
                        paths.default_root(name)) if os.path.lexists(f)]


def test_purge_removes_the_log_and_the_autostart_mark(host_paths):
    res = _mgr_guests.ensure(host_paths, {'guests': [spec('pl-a', 931), spec('pl-b', 932), spec('pl-c', 933)]})
    assert res['changed']
    for name in ('pl-a', 'pl-b', 'pl-c'):
        assert len(leftovers(host_paths, name)) == 3, leftovers(host_paths, name)
    # the mark lives where the supervisor looks for it
    assert host_paths.autostart_mark('pl-a') == os.path.join(_mgr_guests.autostart_dir(host_paths), 'pl-a')

    purge = {'name': 'pl-a', 'state': 'absent', 'purge': True}
    rotated = host_paths.log_file('pl-a') + '.1'  # the cap's copy of the log's tail goes with it
    with open(rotated, 'w') as handle:
        handle.write('old tail\n')
    check = _mgr_context.ensure_context(host_paths, purge, check_mode=True)
    assert 'remove log %s' % host_paths.log_file('pl-a') in check['actions'] and 'autostart off' in check['actions']
    assert 'remove log %s' % rotated in check['actions']
    assert len(leftovers(host_paths, 'pl-a')) == 3 and os.path.exists(rotated)  # check mode touched nothing
    done = _mgr_context.ensure_context(host_paths, purge)
    assert done['changed'] and done['actions'] == check['actions']
    assert leftovers(host_paths, 'pl-a') == [] and _config.load(host_paths, 'pl-a') is None
    assert not os.path.exists(rotated)
    assert _mgr_context.ensure_context(host_paths, purge)['changed'] is False
    # the other guests' files are theirs
    assert len(leftovers(host_paths, 'pl-b')) == 3 and len(leftovers(host_paths, 'pl-c')) == 3

    # through the guests module: the same, and check mode lists what the real run does (the mark once)
    gone = {'guests': [{'name': 'pl-b', 'state': 'absent', 'purge': True}]}
    check = _mgr_guests.ensure(host_paths, gone, check_mode=True)
    done = _mgr_guests.ensure(host_paths, gone)
    assert done['actions'] == check['actions'] and done['actions'].count('pl-b: autostart off') == 1, done
    assert leftovers(host_paths, 'pl-b') == []

    # without purge the log stays with the tree (the guest can be created again from both)
    _mgr_context.ensure_context(host_paths, {'name': 'pl-c', 'state': 'absent'})
    assert leftovers(host_paths, 'pl-c') == [host_paths.log_file('pl-c'), host_paths.autostart_mark('pl-c'),
                                             host_paths.default_root('pl-c')]
