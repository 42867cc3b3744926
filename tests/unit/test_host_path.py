"""vserver.core.host_path: the roles' host roots come from module_utils' DEFAULTS, the one place they are declared."""
import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.vserver.core.plugins.filter.host_path import FilterModule
from ansible_collections.vserver.core.plugins.module_utils._common import DEFAULTS, DEFAULTS_FILE, ENV, Paths

FILTER = FilterModule().filters()['host_path']


@pytest.mark.parametrize('key', sorted(DEFAULTS))
def test_unset_gives_what_the_modules_use(key, monkeypatch):
    monkeypatch.delenv(ENV[key], raising=False)
    builtin = getattr(Paths(defaults_file=None), key)
    assert FILTER(None, key) == FILTER('', key) == builtin


def test_set_values_pass_and_the_env_file():
    assert FILTER('/srv/vs/etc', 'config_dir') == '/srv/vs/etc'
    assert FILTER(None, 'env_file') == DEFAULTS_FILE


def test_unknown_key():
    with pytest.raises(AnsibleFilterError, match='config_dir, run_dir'):
        FILTER(None, 'trees')
