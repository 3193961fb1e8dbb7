"""The version an instance registers (its Consul tag and meta) is the project's, as pyproject.toml states it
and the installed package's metadata carries it: one number, written once."""

import tomllib
from pathlib import Path

from servicekit.registration import service_definition
from servicekit.settings import Settings

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())


def test_an_instance_registers_the_version_pyproject_states_as_its_tag_and_meta():
    version = PYPROJECT["project"]["version"]
    settings = Settings.from_env("logging-service", 8081, env={})
    assert settings.version == version
    definition = service_definition(settings)
    assert definition["tags"] == [f"v{version}"]
    assert definition["meta"]["version"] == version


def test_the_api_description_states_the_same_version():
    openapi = (Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml").read_text()
    assert f"\n  version: {PYPROJECT['project']['version']}\n" in openapi
