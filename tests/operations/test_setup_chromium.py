"""`make test` installs the browser the e2e tests need (issue 13 item 1): on a fresh machine the
README's two commands are all a user runs, so the Makefile (not only `.ci/run`) provides Debian's
chromium, or stops before the suite with the one command to run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "ensure-chromium"


def _run(env: dict[str, str], *prefix: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, "sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60
    )


def test_make_test_runs_the_browser_check_before_the_suite():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    lines = [line.strip() for line in recipe.splitlines()[1:]]
    assert lines[0] == "sh scripts/ensure-chromium"
    assert "pytest" in lines[1]
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith("make test")
    assert "apt-get" not in (ROOT / ".ci" / "run").read_text()


def test_present_browser_needs_nothing(tmp_path):
    browser = tmp_path / "chromium"
    browser.write_text("#!/bin/sh\n")
    browser.chmod(0o755)
    result = _run({"PATH": os.environ["PATH"], "CODING_PLANS_CHROMIUM": str(browser)})
    assert result.returncode == 0
    assert result.stderr == ""


def test_missing_browser_is_installed_with_apt_when_the_user_is_root(tmp_path):
    if os.geteuid() != 0:
        raise AssertionError("this test runs as root, as make test does on CI and fresh machines")
    browser = tmp_path / "chromium"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "apt-calls"
    # A stand-in for Debian's apt-get (an outside tool, not our code): records its arguments and
    # "installs" the browser where the script expects it.
    (bin_dir / "apt-get").write_text(
        f'#!/bin/sh\necho "$@" >> {calls}\n'
        f'case "$*" in *install*) printf "#!/bin/sh\\n" > {browser}; chmod 755 {browser};; esac\n'
    )
    (bin_dir / "apt-get").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CODING_PLANS_CHROMIUM": str(browser)}
    result = _run(env)
    assert result.returncode == 0, result.stderr
    assert calls.read_text().splitlines() == ["update -qq", "install -y -qq chromium"]
    assert browser.is_file()


def test_missing_browser_without_rights_stops_with_the_exact_command(tmp_path):
    tmp_path.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "CODING_PLANS_CHROMIUM": str(tmp_path / "absent")}
    result = _run(env, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "sudo apt-get install -y chromium" in lines[0]
    assert "make test" in lines[0]
