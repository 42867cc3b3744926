# Appended by `make docs` to the conf.py that `antsibull-docs sphinx-init` writes in .build/docs/ (offline build).
# Intersphinx cannot fetch the Ansible docs' inventory offline, so the few labels of docs.ansible.com the generated
# pages use resolve here to their pages; any other unresolved reference still fails the build (-W).
from docutils import nodes as _nodes

intersphinx_mapping = {}
ANSIBLE_DOCS = 'https://docs.ansible.com/projects/ansible/devel/'
ANSIBLE_DOCS_LABELS = {
    'common_return_values': 'reference_appendices/common_return_values.html',
    'ansible_configuration_settings': 'reference_appendices/config.html',
}


def _ansible_docs_reference(app, env, node, contnode):  # pylint: disable=unused-argument
    page = ANSIBLE_DOCS_LABELS.get(node.get('reftarget')) if node.get('reftype') == 'ref' else None
    if page is None:
        return None
    ref = _nodes.reference('', '', internal=False, refuri=ANSIBLE_DOCS + page)
    ref += contnode
    return ref


def setup(app):
    app.connect('missing-reference', _ansible_docs_reference)
