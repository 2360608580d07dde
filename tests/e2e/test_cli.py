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


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_failed_validation_prints_its_report_and_what_to_change(tmp_path: Path, ray_local: str) -> None:
    """On a real Ray: the console after the run shows the validation's report (no traceback,
    no colour codes) and what to change instead of `resume`; `show` shows the same text,
    `show --json` keeps the traceback apart; `resume` warns that it would fail the same way."""
    rows = ["user_id,age,country"] + [f"{i},{30 + i % 40},DE" for i in range(40)]
    rows[5], rows[9] = "4,-3,DE", "8,41,XX"
    (tmp_path / "users.csv").write_text("\n".join(rows) + "\n")
    p = tmp_path / "p.yaml"
    p.write_text(
        f"name: users\nstorage: {tmp_path / 'store'}\nstages:\n"
        f"  - {{name: read, kind: data.read, params: {{path: {tmp_path / 'users.csv'}}}}}\n"
        "  - name: check\n    kind: data.validate\n    inputs: {data: read.data}\n"
        "    params: {columns: {age: {type: int, min: 0}, country: {type: string, allowed: [DE, FR]}}}\n"
    )
    res = cli("run", str(p), "--address", ray_local)
    out = res.stdout
    assert res.returncode == 1, res.stdout + res.stderr
    assert "\x1b" not in out and 'File "' not in out and "Traceback" not in out
    assert "  check: DataError: input 'data' failed validation: " in out
    assert "age: min (1 rows)" in out and "country: allowed (1 rows)" in out
    assert "    validation failed: 2 rules broken in 40 rows (2 rows bad)" in out
    assert "      column 'age': rule min >= 0: 1 row, e.g." in out
    assert "→ fix the data, or set `on_error: quarantine` on stage check" in out
    assert f"resuming would fail the same way; after the change, run it again: raypipe run {p}" in out
    assert "raypipe resume" not in out
    db = str(tmp_path / "store" / "raypipe.db")
    run_id = json.loads(cli("runs", "--db", db, "--json").stdout)[0]["run_id"]
    shown = cli("show", run_id, "--db", db)
    assert "column 'age': rule min >= 0: 1 row" in shown.stdout and 'File "' not in shown.stdout
    doc = json.loads(cli("show", run_id, "--db", db, "--json").stdout)
    check = next(s for s in doc["stages"] if s["stage"] == "check")
    assert check["error_category"] == "validation" and check["error"].startswith("DataError: input 'data'")
    assert 'File "' in check["traceback"] and 'File "' not in check["error"]
    again = cli("resume", run_id, "--db", db, "--address", ray_local)
    assert again.returncode == 1
    assert "warning: these failures happen again on the same inputs and config" in again.stderr
