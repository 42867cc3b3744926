"""Config documents carry a schema version; documents written before versions (tests/unit/fixtures/config, made by
main at 0d83b02) are migrated when read, and a running guest's context run says what changes at its next start."""
import json
import os
import shutil

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _common, _config, _mgr_context

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'config')
OLD = sorted(entry[:-5] for entry in os.listdir(FIXTURES) if entry.endswith('.json'))


@pytest.fixture
def paths(tmp_path):
    shutil.copytree(FIXTURES, str(tmp_path / 'etc'))
    return _common.Paths(config_dir=str(tmp_path / 'etc'), run_dir=str(tmp_path / 'run'),
                         tree_dir=str(tmp_path / 'trees'), log_dir=str(tmp_path / 'log'), cgroup_parent='vstest-x',
                         defaults_file=None)


def raw(paths, name):
    with open(paths.config_file(name)) as handle:
        return json.load(handle)


def test_the_fixtures_are_schema_0():
    assert OLD == ['db', 'web']
    for name in OLD:
        with open(os.path.join(FIXTURES, name + '.json')) as handle:
            assert 'schema' not in json.load(handle)


@pytest.mark.parametrize('name', OLD)
def test_an_old_document_reads_as_the_current_schema_with_every_section(paths, name):
    doc, steps = _config.load_migrated(paths, name, _config.SECTIONS)
    assert doc == dict(raw(paths, name), schema=_config.SCHEMA)
    assert [step.to for step in steps] == list(range(1, _config.SCHEMA + 1))
    assert _config.load(paths, name) == doc
    assert 'schema' not in raw(paths, name)  # a read never writes


def test_save_writes_the_schema_and_a_saved_document_needs_no_migration(paths):
    doc = _config.load(paths, 'web')
    _config.save(paths, dict(doc, hostname='renamed'))
    assert raw(paths, 'web')['schema'] == _config.SCHEMA
    again, steps = _config.load_migrated(paths, 'web')
    assert steps == [] and again['hostname'] == 'renamed'


def test_listings_and_xid_allocation_read_old_documents(paths):
    docs, broken = _config.scan(paths)
    assert sorted(docs) == OLD and not broken
    assert _config.xids_in_use(paths) == {2: 'web', 101: 'db'}


@pytest.mark.parametrize('schema,words,xid_readable', [
    (2, 'was written by a newer vserver.core (schema 2; this one reads up to 1)', True),
    ('1', 'schema must be a version number', True),
    (True, 'schema must be a version number', True),
    (-1, 'schema must be a version number', True),
])
def test_an_unknown_schema_is_a_broken_config_never_a_guess(paths, schema, words, xid_readable):
    doc = dict(raw(paths, 'db'), schema=schema)
    with open(paths.config_file('db'), 'w') as handle:
        json.dump(doc, handle)
    with pytest.raises(_config.BrokenConfig) as err:
        _config.load(paths, 'db')
    assert words in str(err.value)
    assert (err.value.xid == 101) is xid_readable
    docs, broken = _config.scan(paths)
    assert sorted(docs) == ['web'] and list(broken) == ['db']


def test_check_doc_accepts_the_schema_key_only_with_the_current_version():
    doc = dict(name='a', xid=2, root='/srv/a', init=['/sbin/init'])
    assert _config.check_doc(dict(doc, schema=_config.SCHEMA), 'a.json', 'a')
    with pytest.raises(_config.BrokenConfig, match='schema must be 1'):
        _config.check_doc(dict(doc, schema=0), 'a.json', 'a')


def test_migrations_run_in_order_from_the_stored_version(monkeypatch):
    def to_2(doc):
        return dict(doc, schema=2, marks=doc.get('marks', '') + '2')
    steps = _config.MIGRATIONS + (_config.Migration(2, to_2, 'a test step', 'the test changes', True),)
    monkeypatch.setattr(_config, 'MIGRATIONS', steps)
    monkeypatch.setattr(_config, 'SCHEMA', 2)
    doc, done = _config.migrate({'name': 'a'})
    assert doc == {'name': 'a', 'schema': 2, 'marks': '2'} and [s.to for s in done] == [1, 2]
    doc, done = _config.migrate({'name': 'a', 'schema': 1})
    assert doc['schema'] == 2 and [s.to for s in done] == [2]
    assert _config.migrate({'name': 'a', 'schema': 2}) == ({'name': 'a', 'schema': 2}, [])


# --- what the context manager makes of a migrated document (planner only: no guest runs here) ---------------

def facts(state, migrations, **kw):
    return _mgr_context.Facts(running_state=state, live_uts=['web.example.test', 'example.test'],
                              migrations=migrations, **kw)


def test_a_running_guest_with_a_migrated_config_is_told_what_changes_at_its_next_start(paths):
    current, steps = _config.load_migrated(paths, 'web')
    opts = _mgr_context.validate({'name': 'web', 'state': 'started'})
    doc = _mgr_context._desired(paths, opts, current)
    todo = _mgr_context.plan(opts, current, doc, facts('running', steps))
    assert todo.actions == ['update config'] and todo.config_changed  # the file is rewritten as schema 1
    assert not todo.restart_required
    assert todo.warnings == ['guest web runs with a config of schema 0 (an older vserver.core wrote it), now '
                             'rewritten as schema 1; at its next start: nothing changes']
    stopped = _mgr_context.plan(opts, current, doc, facts('stopped', steps))
    assert stopped.warnings == [] and stopped.actions == ['update config', 'start']
    settled = _mgr_context.plan(opts, current, doc, facts('running', []))
    assert settled.actions == [] and settled.warnings == []


def test_a_migration_that_changes_a_running_guest_reports_restart_required(paths):
    current, steps = _config.load_migrated(paths, 'web')
    step = _config.Migration(2, lambda d: d, 'a test step', 'its syscall filter gets keyctl', True)
    opts = _mgr_context.validate({'name': 'web', 'state': 'started'})
    doc = _mgr_context._desired(paths, opts, current)
    todo = _mgr_context.plan(opts, current, doc, facts('running', steps + [step]))
    assert todo.restart_required and 'at its next start: its syscall filter gets keyctl' in todo.warnings[0]
    restart = _mgr_context.plan(dict(opts, state='restarted'), current, doc, facts('running', steps + [step]))
    assert not restart.restart_required and restart.steps == ['stop', 'start']
