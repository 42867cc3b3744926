"""The vserver command's options are the host roots _common defines (one source: _common.DEFAULTS, ENV)."""
from ansible_collections.vserver.core.plugins.module_utils import _cli, _common, _enter


def test_the_command_options_are_the_host_roots():
    assert _cli.OPTIONS == tuple(_common.DEFAULTS) == tuple(_common.ENV)


def test_the_fast_path_reads_the_roots_common_reads():
    assert set(_enter.ROOT_KEYS) == set(_common.DEFAULTS)
    assert _enter.DEFAULTS_FILE == _common.DEFAULTS_FILE


def test_the_fast_path_parse_takes_what_argparse_takes():
    for argv in (['web', 'exec', 'true'], ['--run-dir', '/x', 'web', 'enter'], ['--config-dir=/c', 'w', 'exec', 'ls', '-l']):
        fast = _cli._entry_command(argv)
        assert fast is not None and fast == _cli.parse(argv), argv
    for argv in (['web', 'exec'], ['-x', 'web', 'exec', 'true'], ['web', 'start'], ['--run-dir'], ['web', 'enter', 'x']):
        assert _cli._entry_command(argv) is None, argv
