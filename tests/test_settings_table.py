"""The README's configuration table is the one `scripts/settings_table.py` generates from the settings model:
a setting the code reads is documented under its real name and default (issue 19)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_table_is_generated_from_the_settings_model():
    spec = importlib.util.spec_from_file_location("settings_table", ROOT / "scripts" / "settings_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    generated = module.table()
    assert "`VEIL_X264_PRESET` | veryfast" in generated and "VEIL_X264X264" not in generated
    assert module.readme_table((ROOT / "README.md").read_text()) == generated, \
        "README.md's settings table is stale: run python scripts/settings_table.py --write"
