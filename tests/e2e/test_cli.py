"""The CLI: user errors print one clean message and exit 2; read commands have --json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def cli(*args: str, cwd: str = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "raypipe.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        (
            "name: x\nstages:\n  - {name: a, kind: python, resources: {gpu: -1}, params: {function: 'm:f'}}\n",
            ":3 stages[0].resources.gpu: got -1; expected a number >= 0",
        ),
        ("name: x\nstages: [\n", "invalid YAML"),
    ],
)
def test_validate_errors_exit_2_without_traceback(tmp_path: Path, yaml_text: str, message: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(yaml_text)
    res = cli("validate", str(p))
    assert res.returncode == 2
    assert message in res.stderr
    assert "Traceback" not in res.stderr + res.stdout


def test_run_with_bad_config_never_starts_ray(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nstages:\n  - {name: a, kind: nope}\n")
    res = cli("run", str(p), "--address", "127.0.0.1:1")
    assert res.returncode == 2 and "stages[0].kind: got 'nope'; expected one of: python" in res.stderr


def test_unknown_run_and_missing_store(tmp_path: Path) -> None:
    res = cli("show", "nope", "--db", str(tmp_path / "absent.db"))
    assert res.returncode == 2 and "no metadata store" in res.stderr
    res = cli("resume", "nope", "--db", str(tmp_path / "absent.db"))
    assert res.returncode == 2


def test_validate_all_configs_and_runs_json(tmp_path: Path) -> None:
    configs = sorted(str(p) for p in (Path(REPO) / "configs").glob("*.yaml"))
    res = cli("validate", *configs)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("ok ") == len(configs)
    from raypipe.store.metadata import MetadataStore

    MetadataStore(str(tmp_path / "m.db")).create_run("r-1", "p", "{}", None, str(tmp_path))
    out = json.loads(cli("runs", "--db", str(tmp_path / "m.db"), "--json").stdout)
    assert out[0]["run_id"] == "r-1" and out[0]["status"] == "running"
