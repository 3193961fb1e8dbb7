"""docs/DEPLOY.md is generated from conf/hosts/, the templates the simulated hosts run."""

from __future__ import annotations

from devstack import deploy_doc


def test_deploy_doc_is_up_to_date_with_the_templates():
    assert deploy_doc.DOC.exists(), "no docs/DEPLOY.md: run ./scripts/hosts deploy-docs"
    assert deploy_doc.DOC.read_text() == deploy_doc.markdown(), "run ./scripts/hosts deploy-docs"


def test_deploy_doc_shows_every_agent_configuration_it_validates():
    text = deploy_doc.markdown()
    for config in deploy_doc.agent_configs().values():
        assert config.strip() in text
    for needed in ("bootstrap_expect = 3", "encrypt", "auto_encrypt", "consul acl bootstrap", "8301/tcp+udp",
                   "ALLOWED_HOSTS", "421", "agent_prefix"):  # fmt: skip
        assert needed in text
