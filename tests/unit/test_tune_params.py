"""Planning errors of the ``tune`` kind: every bad search space is reported with its place (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest

import raypipe
from raypipe.exceptions import ConfigError
from raypipe.stages.tune import TuneParams, optuna_missing

HEAD = """name: t
stages:
  - name: sweep
    kind: tune
    params:
      function: "tests.integration.tune_funcs:quality_curve"
      metric: loss
      mode: min
"""


def load(tmp_path: Path, extra: str) -> None:
    """The pipeline ``HEAD`` with the lines of ``extra`` (one replaces a line of the same key)."""
    lines = HEAD.splitlines(keepends=True)
    for line in extra.splitlines(keepends=True):
        key = line.partition(":")[0]
        same = [i for i, old in enumerate(lines) if old.partition(":")[0] == key]
        if same:
            lines[same[0]] = line
        else:
            lines.append(line)
    path = tmp_path / "p.yaml"
    path.write_text("".join(lines))
    raypipe.load(path)


BROKEN = [
    (
        "      space: {lr: {loguniform: [0, 0.1]}}\n",
        "params.space.lr",
        "loguniform: lo must be > 0",
    ),
    ("      space: {lr: {uniform: [0.5, 0.1]}}\n", "params.space.lr", "uniform: [lo, hi] needs lo < hi"),
    ("      space: {n: {randint: [3, 3]}}\n", "params.space.n", "randint: [lo, hi] needs lo < hi"),
    ("      space: {lr: {uniform: [0.1, 0.5], choice: [1]}}\n", "params.space.lr", "give exactly one of"),
    (
        "      space: {lr: {normal: [0, 1]}}\n",
        "params.space.lr.normal",
        "unknown key 'normal'; expected one of: choice, uniform, loguniform, randint, grid",
    ),
    ("      space: {h: {choice: []}}\n", "params.space.h.choice", "at least 1 item"),
    ("      space: {}\n", "params.space", "at least 1 item"),
    (
        "      search: grid\n      space: {lr: {loguniform: [0.001, 0.1]}, h: {choice: [1, 2]}}\n",
        "params.space.lr",
        "search: grid enumerates values, and loguniform is a range",
    ),
    (
        "      config: {lr: 0.1}\n      space: {lr: {uniform: [0.1, 0.5]}}\n",
        "params.space.lr",
        "'lr' is both searched (space) and fixed (config)",
    ),
    (
        "      space: {q: {grid: [1, 2]}}\n      scheduler: {asha: {max_t: 4, grace_period: 8}}\n",
        "params.scheduler.asha",
        "grace_period (8) must be <= max_t (4)",
    ),
    ("      space: {q: {grid: [1, 2]}}\n      mode: best\n", "params.mode", "'min' or 'max'"),
    (
        "      space: {q: {grid: [1, 2]}}\n      function: 'tests.integration.tune_funcs:nothing_here'\n",
        "params.function",
        "has no attribute 'nothing_here'",
    ),
]


@pytest.mark.parametrize(("extra", "where", "message"), BROKEN)
def test_bad_space_params_are_planning_errors(tmp_path: Path, extra: str, where: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, extra)
    text = str(exc.value)
    assert f"stages[0].{where}" in text and message in text, text


def test_optuna_search_needs_optuna_and_takes_no_grid(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, "      search: optuna\n      space: {q: {grid: [1, 2]}}\n")
    text = str(exc.value)
    assert "stages[0].params.space.q: search: optuna samples every parameter" in text, text
    if optuna_missing():
        assert "stages[0].params.search: search: optuna needs the 'optuna' package" in text, text


def test_an_input_named_like_a_config_key_is_an_error(tmp_path: Path) -> None:
    text = (
        "name: t\nstages:\n  - name: a\n    kind: python\n    params: {function: 'tests.unit.funcs:make'}\n"
        "  - name: sweep\n    kind: tune\n    inputs: {q: a.out}\n    params:\n"
        "      function: 'tests.integration.tune_funcs:quality_curve'\n      metric: loss\n      mode: min\n"
        "      space: {q: {grid: [1, 2]}}\n"
    )
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"stages\[1\]\.params\.space\.q: 'q' is both an input and a space key"):
        raypipe.load(path)


def test_defaults_and_a_valid_sweep_plan(tmp_path: Path) -> None:
    load(
        tmp_path,
        "      space:\n        lr: {loguniform: [1.0e-4, 1.0e-1]}\n        hidden: {choice: [64, 128]}\n"
        "        n: {randint: [1, 3]}\n      scheduler: {asha: {max_t: 10}}\n",
    )
    p = TuneParams.model_validate(
        {"function": "m:f", "metric": "loss", "mode": "min", "space": {"q": {"grid": [1, 2]}}}
    )
    assert p.samples == 10 and p.asha is None and p.keep_checkpoints is None
    assert p.model_copy(update={"search": "grid"}).samples == 1
    none = TuneParams.model_validate({**p.model_dump(), "scheduler": "none"})
    assert none.asha is None


BUILTIN = """name: t
stages:
  - name: data
    kind: python
    params: {function: "tests.unit.funcs:make"}
  - name: sweep
    kind: tune
    inputs: {train: data.out}
    params:
      model: {type: mlp, hidden: [64]}
      metric: val_loss
      mode: min
"""

BUILTIN_BROKEN = [
    ("      space: {optimizer.lrr: {uniform: [0.1, 0.5]}}\n", "'optimizer.lrr' is not a built-in training field"),
    ("      space: {hidden: {choice: [32, 64]}}\n", "'hidden' is not a built-in training field"),
    ("      space: {model.hidden: {choice: [32, 64]}}\n", "value 32: Input should be a valid list"),
    ("      space: {optimizer.lr: {uniform: [0, 0.1]}}\n", "value 0.0: Input should be greater than 0"),
    ("      space: {epochs: {randint: [2, 4]}}\n      config: {a: 1}\n", "`config` is for user trainables"),
    (
        "      space: {epochs: {randint: [2, 4]}}\n      function: 'tests.integration.tune_funcs:quality_curve'\n",
        "give either `function` (your Tune trainable) or `model`",
    ),
]


@pytest.mark.parametrize(("extra", "message"), BUILTIN_BROKEN)
def test_builtin_space_params_must_be_training_fields(tmp_path: Path, extra: str, message: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(BUILTIN + extra)
    with pytest.raises(ConfigError) as exc:
        raypipe.load(path)
    assert "stages[1].params" in str(exc.value) and message in str(exc.value), str(exc.value)


def test_builtin_sweep_plans(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        BUILTIN + "      space:\n        optimizer.lr: {loguniform: [1.0e-4, 1.0e-2]}\n"
        "        model.hidden: {choice: [[32], [64, 32]]}\n        epochs: {grid: [2, 4]}\n"
    )
    plan = raypipe.load(path)
    assert plan.stages["sweep"].kind.params.builtin().epochs == 10
