"""Run playbooks and modules of this collection with ansible-playbook against a test's private host roots."""
import json
import os
import subprocess
import sys

from helpers import TOP

# VSERVER_ANSIBLE_BIN: the bin/ of another venv whose ansible-playbook runs the playbooks (`make test-ansible-versions`
# points it at the oldest and the newest ansible-core the collection supports); default: this interpreter's venv.
VENV_BIN = os.environ.get('VSERVER_ANSIBLE_BIN') or os.path.dirname(sys.executable)


def ansible_env():
    env = dict(os.environ)
    env.update({
        'ANSIBLE_COLLECTIONS_PATH': os.path.join(TOP, '.build', 'collections'),
        'ANSIBLE_PYTHON_INTERPRETER': '/usr/bin/python3',
        'ANSIBLE_STDOUT_CALLBACK': 'json_results',
        'ANSIBLE_CALLBACK_PLUGINS': os.path.join(TOP, 'tests', 'integration', 'callback_plugins'),
        'ANSIBLE_NOCOLOR': '1', 'ANSIBLE_RETRY_FILES_ENABLED': '0', 'ANSIBLE_LOCALHOST_WARNING': '0',
        'ANSIBLE_INVENTORY_UNPARSED_WARNING': '0',
    })
    return env


def path_vars(paths):
    return {'config_dir': paths.config_dir, 'run_dir': paths.run_dir, 'tree_dir': paths.tree_dir,
            'log_dir': paths.log_dir, 'cgroup_parent': paths.cgroup_parent}


def run_playbook(playbook, extra_vars=None, check=False, diff=False, timeout=300):
    """Run a playbook file on localhost; returns (returncode, parsed json callback output)."""
    argv = [os.path.join(VENV_BIN, 'ansible-playbook'), '-i', 'localhost,', '-c', 'local', str(playbook)]
    if extra_vars:
        argv += ['-e', json.dumps(extra_vars)]
    if check:
        argv.append('--check')
    if diff:
        argv.append('--diff')
    proc = subprocess.run(argv, env=ansible_env(), capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError('ansible-playbook output is not JSON:\n%s\n%s' % (proc.stdout[-3000:], proc.stderr[-3000:]))
    return proc.returncode, data


def task_results(data, host='localhost'):
    """[(task name, result dict)] in order, loops expanded into their items."""
    out = []
    for play in data['plays']:
        for task in play['tasks']:
            res = task['hosts'].get(host)
            if res is None:
                continue
            if 'results' in res:
                for item in res['results']:
                    out.append((task['task']['name'], item))
            else:
                out.append((task['task']['name'], res))
    return out


def changed_count(data, host='localhost'):
    return data['stats'][host]['changed']
