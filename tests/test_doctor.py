"""`veil doctor` against real parts: a working scaled-out configuration (SQLite, Azurite, Redis) passes
every check; a broken one names each broken part and exits 1."""

from __future__ import annotations

import os

from click.testing import CliRunner

from veil.cli import main
from veil.storage.testing import AZURITE_ACCOUNT, AZURITE_KEY, free_port

REDIS_URL = os.environ.get("VEIL_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")


def _doctor(tmp_path, monkeypatch, **env: str):
    for name, value in {
        "VEIL_DATA_DIR": str(tmp_path),
        "VEIL_WORKER": "celery",
        "VEIL_STORAGE_BACKEND": "azure",
        **env,
    }.items():
        monkeypatch.setenv(name, value)
    return CliRunner().invoke(main, ["doctor"])


def test_a_working_configuration_passes(tmp_path, monkeypatch, detection_models, azurite_connection_string):
    result = _doctor(
        tmp_path, monkeypatch, VEIL_AZURE_CONNECTION_STRING=azurite_connection_string, VEIL_CELERY_BROKER_URL=REDIS_URL
    )
    assert result.exit_code == 0, result.output
    for check in ("database", "store", "broker", "models", "scratch space"):
        assert f"ok    {check}" in result.output, result.output
    assert "signed URLs work" in result.output


def test_a_broken_configuration_names_each_broken_part(tmp_path, monkeypatch):
    dead = free_port()
    result = _doctor(
        tmp_path,
        monkeypatch,
        VEIL_DATABASE_URL=f"postgresql://veil@127.0.0.1:{dead}/veil",
        VEIL_CELERY_BROKER_URL=f"redis://127.0.0.1:{dead}/0",
        VEIL_AZURE_CONNECTION_STRING=f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
        f"AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{dead}/{AZURITE_ACCOUNT};",
    )
    assert result.exit_code == 1
    lines = {line.split()[1]: line for line in result.output.splitlines() if line.startswith(("ok", "FAIL"))}
    assert lines["database"].startswith("FAIL") and "Connection refused" in lines["database"]
    assert lines["broker"].startswith("FAIL") and lines["store"].startswith("FAIL")
    assert lines["scratch"].startswith("ok")
    assert "3 check(s) failed" in result.output
