"""Config errors name the file, the line and the field, and say what was expected."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import raypipe
from raypipe import ConfigError
from raypipe.config import apply_overrides, format_loc

GOOD = """\
name: demo
stages:
  - name: a
    kind: python
    params: {function: "tests.unit.funcs:make"}
  - name: b
    kind: python
    inputs: {x: a.out}
    params: {function: "tests.unit.funcs:use", args: {k: 2}}
"""


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_good_config_plans(tmp_path: Path) -> None:
    plan = raypipe.load(write(tmp_path, GOOD))
    assert plan.order == ("a", "b")
    assert plan.stages["b"].upstream == ("a",)
    assert plan.config.stages[0].resources.cpu == 1.0


# (yaml text, expected line, expected message fragment)
BROKEN = [
    pytest.param(
        GOOD.replace("    kind: python\n    inputs", "    kind: python\n    resources: {gpu: -1}\n    inputs"),
        8,
        "stages[1].resources.gpu: got -1; expected a number >= 0",
        id="negative-gpu",
    ),
    pytest.param(
        GOOD.replace("name: demo", "name: demo\ncolour: red"),
        2,
        "colour: unknown key 'colour'; expected one of: name, description",
        id="unknown-top-key",
    ),
    pytest.param(
        GOOD.replace(
            'kind: python\n    params: {function: "tests.unit.funcs:make"}',
            'kind: python\n    retrys: 3\n    params: {function: "tests.unit.funcs:make"}',
        ),
        5,
        "stages[0].retrys: unknown key 'retrys'; expected one of: name, kind, depends_on",
        id="unknown-stage-key",
    ),
    pytest.param(
        GOOD.replace("a.out", "zzz.out"),
        8,
        "stages[1].inputs.x: 'zzz.out' names unknown stage 'zzz'; stages are: a, b",
        id="missing-input-stage",
    ),
    pytest.param(
        GOOD.replace("    inputs: {x: a.out}", "    depends_on: [nope]\n    inputs: {x: a.out}"),
        8,
        "stages[1].depends_on[0]: unknown stage 'nope'; stages are: a, b",
        id="missing-dependency",
    ),
    pytest.param(
        GOOD.replace("name: b", "name: a"),
        6,
        "stages[1].name: duplicate stage name 'a' (also stages[0])",
        id="duplicate-name",
    ),
    pytest.param(
        GOOD.replace(
            'params: {function: "tests.unit.funcs:make"}',
            'depends_on: [b]\n    params: {function: "tests.unit.funcs:make"}',
        ),
        5,
        "dependency cycle: a -> b -> a",
        id="cycle",
    ),
    pytest.param(
        GOOD.replace("kind: python\n    inputs", "kind: pyton\n    inputs"),
        7,
        "stages[1].kind: got 'pyton'; expected one of: python",
        id="unknown-kind",
    ),
    pytest.param(
        GOOD.replace("timeout", "x") + "    timeout_s: soon\n",
        10,
        "stages[1].timeout_s: got 'soon'; expected a number",
        id="wrong-type",
    ),
    pytest.param(
        GOOD.replace("tests.unit.funcs:use", "tests.unit.funcs:nothere"),
        9,
        "stages[1].params.function: cannot import 'tests.unit.funcs:nothere'",
        id="missing-function",
    ),
    pytest.param(
        GOOD.replace("args: {k: 2}", "args: {k: 2, q: 1}"),
        9,
        "stages[1].params.args.q: tests.unit.funcs:use has no parameter 'q'",
        id="unknown-arg",
    ),
    pytest.param(
        GOOD.replace("{function", "{funcion"),
        5,
        "stages[0].params.funcion: unknown key 'funcion'; expected one of: function, args",
        id="unknown-param",
    ),
    pytest.param("name: demo\nstages: []\n", 2, "stages: got []; expected at least 1 item(s)", id="no-stages"),
    pytest.param(
        "name: demo\nname: again\nstages: []\n",
        2,
        "name: duplicate key 'name' (first at line 1)",
        id="duplicate-yaml-key",
    ),
    pytest.param("name: demo\nstages:\n  - name: a\n   kind: x\n", 4, "invalid YAML", id="bad-yaml"),
    pytest.param(
        "stages:\n  - {name: a, kind: python, params: {function: 'm:f'}}\n",
        1,
        "name: missing required field",
        id="missing-name",
    ),
    pytest.param(
        GOOD.replace("retries", "x").replace("name: b", "name: b\n    retries: {max: -2}"),
        7,
        "stages[1].retries.max: got -2; expected a number >= 0",
        id="negative-retries",
    ),
    pytest.param(GOOD.replace("a.out", "a"), 8, "stages[1].inputs.x: got 'a'; expected", id="input-not-dotted"),
]


@pytest.mark.parametrize(("text", "line", "message"), BROKEN)
def test_broken_configs_give_precise_errors(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        raypipe.load(path)
    text_ = str(exc.value)
    assert f"{path}:{line} " in text_ or f"{path}:{line}:" in text_, text_
    assert message in text_, text_


def test_several_errors_are_all_reported(tmp_path: Path) -> None:
    text = GOOD.replace("kind: python\n    inputs", "kind: python\n    resources: {gpu: -1, cpu: x}\n    inputs")
    with pytest.raises(ConfigError) as exc:
        raypipe.load(write(tmp_path, text))
    lines = str(exc.value).splitlines()
    assert any("resources.gpu" in ln for ln in lines) and any("resources.cpu" in ln for ln in lines)


def test_missing_file_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        raypipe.load(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="the file is empty"):
        raypipe.load(write(tmp_path, ""))


def test_overrides_by_stage_name_and_index(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    plan = raypipe.load(path, ["stages.b.params.args.k=5", "stages[0].resources.cpu=0.5", "storage=/tmp/x"])
    assert plan.config.stage("b").params["args"]["k"] == 5
    assert plan.config.stages[0].resources.cpu == 0.5
    assert plan.config.storage == "/tmp/x"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stages.zz.params.x=1", "no stage named 'zz'; stages are: a, b"),
        ("nonsense", "expected PATH=VALUE"),
        ("stages.a.resources.gpu=-3", "stages[0].resources.gpu: got -3; expected a number >= 0"),
    ],
)
def test_bad_overrides(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        raypipe.load(write(tmp_path, GOOD), [override])
    assert message in str(exc.value)


def test_apply_overrides_does_not_mutate() -> None:
    data = {"name": "x", "stages": [{"name": "a"}]}
    out = apply_overrides(data, ["stages.a.cache=false"])
    assert out["stages"][0]["cache"] is False and "cache" not in data["stages"][0]


def test_python_api_builds_the_same_pipeline(tmp_path: Path) -> None:
    cfg = raypipe.PipelineConfig(
        name="demo",
        stages=[
            raypipe.StageConfig(name="a", kind="python", params={"function": "tests.unit.funcs:make"}),
            raypipe.StageConfig(
                name="b",
                kind="python",
                inputs={"x": "a.out"},
                params={"function": "tests.unit.funcs:use", "args": {"k": 2}},
            ),
        ],
    )
    assert raypipe.load(cfg).order == raypipe.load(write(tmp_path, GOOD)).order
    bad = cfg.model_copy(update={"stages": [cfg.stages[1]]})
    with pytest.raises(ConfigError, match="unknown stage 'a'"):
        raypipe.load(bad)


def test_format_loc() -> None:
    assert format_loc(("stages", 2, "resources", "gpu")) == "stages[2].resources.gpu"
    assert format_loc(()) == "(top level)"


def test_every_shipped_config_validates() -> None:
    configs = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("*.yaml"))
    assert configs, "configs/ must hold at least the quickstart"
    plans = raypipe.validate(configs)
    assert len(plans) == len(configs)


DATA_BROKEN = [
    ("  - name: r\n    kind: data.read\n    params: {path: /nonexistent/x/*.csv}\n", 5, "path not found: no file matches"),
    (
        "  - name: s\n    kind: data.split\n    inputs: {data: r.data}\n    params: {fractions: {train: 0.8, test: 0.1}}\n",
        9,
        "stages[1].params: fractions: sum to 0.9; expected 1",
    ),
    (
        "  - name: v\n    kind: data.validate\n    inputs: {data: r.data}\n    params:\n      columns:\n"
        "        x: {type: string, min: 3}\n",
        11,
        "stages[1].params.columns.x: min/max need a numeric column",
    ),
    (
        "  - name: p\n    kind: data.profile\n    inputs: {data: r.nothing}\n",
        8,
        "stages[1].inputs.data: stage 'r' has no output 'nothing'; it outputs: data",
    ),
    (
        "  - name: t\n    kind: data.transform\n    params: {function: 'os.path:join'}\n",
        8,
        "stages[1].params: takes 1 input (a dataset); got 0",
    ),
    # found by the long config fuzz: an empty package name was a ValueError from importlib
    (
        "  - name: r\n    kind: data.read\n    params: {package: '', path: d.csv}\n",
        5,
        "stages[0].params.package: got ''; expected a dotted Python name such as pkg.module",
    ),
    (
        "  - name: r\n    kind: data.read\n    params: {package: os.path.nope, path: d.csv}\n",
        5,
        "stages[0].params.package: package 'os.path.nope' is not installed",
    ),
]


@pytest.mark.parametrize(("stage", "line", "message"), DATA_BROKEN)
def test_data_stage_mistakes_are_planning_errors(tmp_path: Path, stage: str, line: int, message: str) -> None:
    (tmp_path / "d.csv").write_text("a\n1\n")
    head = f"name: d\nstages:\n  - name: r\n    kind: data.read\n    params: {{path: {tmp_path / 'd.csv'}}}\n"
    text = head + stage if not stage.startswith("  - name: r\n") else "name: d\nstages:\n" + stage
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        raypipe.load(path)
    assert message in str(exc.value), str(exc.value)
    assert f"{path}:{line}" in str(exc.value), str(exc.value)
