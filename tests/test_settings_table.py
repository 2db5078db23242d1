"""docs/configuration.md's settings table is the one `scripts/settings_table.py` generates from the settings
model: a setting the code reads is documented under its real name and default (issue 19)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("settings_table", ROOT / "scripts" / "settings_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_configuration_table_is_generated_from_the_settings_model():
    module = _module()
    generated = module.table()
    assert "`VEIL_X264_PRESET` | veryfast" in generated and "VEIL_X264X264" not in generated
    assert module.page_table((ROOT / "docs" / "configuration.md").read_text()) == generated, (
        "docs/configuration.md's settings table is stale: run python scripts/settings_table.py --write"
    )


def test_the_readme_links_the_configuration_page():
    assert "(docs/configuration.md)" in (ROOT / "README.md").read_text()
