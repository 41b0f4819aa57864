"""One settings schema: every app.properties key of ``Settings`` appears, and only those appear, in
the example app.properties, the README's settings table, the Ansible role's defaults and the
values the role writes. A key added in one place only fails here, naming the places that lack it."""

from __future__ import annotations

import re

import yaml
from support import ROOT

from conductor.config import Settings

KEYS = {name.upper() for name in Settings.model_fields}
ROLE = ROOT / "ansible" / "roles" / "conductor"


def test_the_example_app_properties_documents_every_key():
    text = (ROOT / "app.properties").read_text()
    found = set(re.findall(r"^#?([A-Z][A-Z0-9_]+)=", text, re.MULTILINE))
    assert found == KEYS, f"missing: {sorted(KEYS - found)}, unknown: {sorted(found - KEYS)}"


def test_the_readme_settings_table_has_a_row_for_every_key():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Configuration: `app.properties`", 1)[1].split("\n\n|", 1)[1].split("\n\n", 1)[0]
    found = set()
    for row in table.splitlines()[2:]:
        first = row.split("|")[1]
        found |= {key.strip() for key in re.split(r"[/,]", first)}
    assert found == KEYS, f"missing: {sorted(KEYS - found)}, unknown: {sorted(found - KEYS)}"


def test_the_role_has_a_default_and_writes_a_value_for_every_key():
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    missing = sorted(key for key in KEYS if f"conductor_{key.lower()}" not in defaults)
    assert not missing, f"ansible/roles/conductor/defaults/main.yml lacks conductor_<key> for {missing}"
    validate = yaml.safe_load((ROLE / "tasks" / "validate.yml").read_text())
    written = next(task["ansible.builtin.set_fact"]["conductor_properties"] for task in validate
                   if "conductor_properties" in task.get("ansible.builtin.set_fact", {}))
    assert set(written) == KEYS, f"the role writes {sorted(set(written) ^ KEYS)} wrongly"
    for key, value in written.items():  # each from its own variable
        assert f"conductor_{key.lower()}" in value, (key, value)
