"""Shared test fixtures.

Real evaluation data lives in ../shared/data (never copied into the repository). Tests that need it
skip with a reason when it is absent, except under CI where its absence is an error.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("VEIL_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"evaluation data missing under CI: {SHARED_DATA}")
        pytest.skip(f"evaluation data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def detection_models() -> None:
    """Skip when the face/plate models (or the detector) are not available; fail under CI."""
    from veil.engine.errors import ModelsMissing

    try:
        from veil.engine.weights import model_path

        model_path("centerface"), model_path("plates")
        import veil.engine.detect  # noqa: F401
    except (ModelsMissing, ImportError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"detection models unavailable under CI: {exc}")
        pytest.skip(f"detection models unavailable: {exc}")
