"""The CI skip hook of tests/conftest.py (`_no_skip_under_ci`, `CI_ALLOWED_SKIPS`), run for real: each case is a
pytest run (pytester, a subprocess) in a scratch directory whose tests/conftest.py is a verbatim copy of the
project's, so removing or breaking the hook there fails these tests. Also the one reading of the CI variable, in
conftest.py and in scripts/test.sh and scripts/test-services.sh: CI=false, 0 or empty is not CI."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def _real_conftest():
    spec = importlib.util.spec_from_file_location("_veil_real_conftest", TESTS / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CONFTEST = _real_conftest()
# One reviewed allow-list entry, rebuilt at its own node id in the scratch run.
ALLOWED = sorted(CONFTEST.CI_ALLOWED_SKIPS)[0]
ALLOWED_PATH, ALLOWED_TEST = ALLOWED.split("::")
ALLOWED_FUNC, ALLOWED_ID = re.fullmatch(r"(\w+)\[(.+)\]", ALLOWED_TEST).groups()

NOT_CI = [None, "", "0", "false", "False", "FALSE"]
CI = ["1", "true", "yes"]


@pytest.fixture
def scratch(pytester):
    """A scratch project: the real tests/conftest.py, a pytest.ini at its root (node ids as the real ones)."""
    pytester.makeini("[pytest]\n")
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "conftest.py").write_text((TESTS / "conftest.py").read_text())
    return pytester


def _write(pytester, relpath: str, source: str) -> None:
    path = pytester.path / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)


def _run(pytester, monkeypatch, ci: str | None):
    monkeypatch.delenv("VEIL_TEST_DATABASE_URL", raising=False)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", "-rA", "tests")


def _glob(text: str) -> str:
    """`text` as a literal in an fnmatch pattern (a node id's brackets)."""
    return re.sub(r"([\[\]*?])", r"[\1]", text)


SKIPPING = """
import pytest

def test_runs():
    pass

def test_needs_a_service():
    pytest.skip("no such service here")
"""


@pytest.mark.parametrize("ci", CI)
def test_under_ci_a_skip_fails_the_run(scratch, monkeypatch, ci):
    _write(scratch, "tests/test_skipping.py", SKIPPING)
    result = _run(scratch, monkeypatch, ci)
    result.assert_outcomes(passed=1, failed=1)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*skipped under CI*no such service here*"])


@pytest.mark.parametrize("ci", NOT_CI)
def test_without_ci_a_skip_is_a_skip(scratch, monkeypatch, ci):
    _write(scratch, "tests/test_skipping.py", SKIPPING)
    result = _run(scratch, monkeypatch, ci)
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == 0


def test_under_ci_only_the_allow_listed_skip_passes(scratch, monkeypatch):
    """The real allow-list entry, at its real node id, stays a skip; a sibling case of the same test does not."""
    _write(
        scratch,
        ALLOWED_PATH,
        f"""
import pytest

@pytest.mark.parametrize("case", [pytest.param(0, id={ALLOWED_ID!r}), pytest.param(1, id="not-reviewed")])
def {ALLOWED_FUNC}(case):
    pytest.skip("cannot run here")
""",
    )
    result = _run(scratch, monkeypatch, "1")
    result.assert_outcomes(skipped=1, failed=1)
    result.stdout.fnmatch_lines([f"{_glob(ALLOWED)} SKIPPED*"])
    result.stdout.fnmatch_lines([f"FAILED {_glob(ALLOWED_PATH)}::{ALLOWED_FUNC}[[]not-reviewed[]] - skipped under CI*"])


def test_under_ci_an_expected_failure_stays_one(scratch, monkeypatch):
    _write(scratch, "tests/test_xfail.py", "import pytest\n\n@pytest.mark.xfail\ndef test_known():\n    assert 0\n")
    result = _run(scratch, monkeypatch, "1")
    result.assert_outcomes(xfailed=1)
    assert result.ret == 0


MISSING_MODULE = """
import pytest

pytest.importorskip("veil_no_such_module_for_the_ci_hook")

def test_never_collected():
    pass
"""


def test_under_ci_a_module_level_importorskip_fails_the_run(scratch, monkeypatch):
    _write(scratch, "tests/test_missing_module.py", MISSING_MODULE)
    _write(scratch, "tests/test_other.py", "def test_runs():\n    pass\n")
    result = _run(scratch, monkeypatch, "true")
    assert result.ret != 0
    result.assert_outcomes(errors=1)  # a collection error: pytest runs nothing else
    result.stdout.fnmatch_lines(["*skipped under CI*veil_no_such_module_for_the_ci_hook*"])


def test_without_ci_a_module_level_importorskip_is_a_skip(scratch, monkeypatch):
    _write(scratch, "tests/test_missing_module.py", MISSING_MODULE)
    _write(scratch, "tests/test_other.py", "def test_runs():\n    pass\n")
    result = _run(scratch, monkeypatch, "false")
    assert result.ret == 0
    result.assert_outcomes(passed=1, skipped=1)


@pytest.mark.parametrize("ci", NOT_CI + CI)
def test_conftest_reads_ci(monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    assert CONFTEST.under_ci() is (ci in CI)


SCRIPTS = ["scripts/test.sh", "scripts/test-services.sh"]


def _shell_helper(script: str) -> str:
    text = (REPO / script).read_text()
    helpers = [line for line in text.splitlines() if line.startswith("under_ci() {")]
    assert len(helpers) == 1, f"{script} defines under_ci() once"
    # every CI check of the script goes through it: CI is read nowhere else
    assert text.count("${CI") == 1 and "$CI" not in text, f"{script} reads CI outside under_ci()"
    assert re.search(r"^\s*(if under_ci;|! under_ci \|\|)", text, re.M), f"{script} never calls under_ci"
    return helpers[0]


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("ci", NOT_CI + CI)
def test_scripts_read_ci_as_conftest_does(script, ci):
    env = {"PATH": "/usr/bin:/bin"} | ({} if ci is None else {"CI": ci})
    helper = _shell_helper(script)
    run = subprocess.run(["bash", "-c", f"set -euo pipefail\n{helper}\nunder_ci"], env=env, check=False)
    assert (run.returncode == 0) is (ci in CI)
