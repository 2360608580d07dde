"""Bad-input suite, configs: hypothesis-generated pipeline YAML.

Every generated input ends in a valid plan or a :class:`~raypipe.exceptions.RaypipeError`
(``ConfigError`` mostly) whose message names the file (or the ``--set`` override) --
never another exception.  ``raypipe validate FILE`` answers the same input with exit 0
or 2 and no traceback.

Five classes of input: structurally random documents (random nested mappings, lists and
scalars under the schema's own keys and random ones), stage graphs (bad and duplicate
names, unknown dependencies, self-dependencies, cycles, dangling inputs), ``--set``
overrides of a good pipeline, field mutations (drop / replace / retype) of the shipped
``configs/*.yaml``, and text-level mutations of those files (raw YAML damage).

Examples are derandomized (the same ones every run, no example database); the counts are
CI's, `RAYPIPE_FUZZ_EXAMPLES=10000` runs a longer hunt (see tests/fuzzing.py).  The count per
class and outcome is printed by the last test (``pytest -s``).
"""

from __future__ import annotations

import copy
import glob
import os
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from typer.testing import CliRunner

from raypipe import api
from raypipe.cli import app as cli_app
from raypipe.config import PipelineConfig
from raypipe.exceptions import RaypipeError
from raypipe.runner.plan import Plan
from raypipe.stages.registry import get_stage_kind, stage_kind_names
from tests.fuzzing import FUZZ, examples

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(glob.glob(str(REPO / "configs" / "*.yaml")))
TRIED: Counter[tuple[str, str]] = Counter()
runner = CliRunner()
#: One example in CLI_EVERY of each class also goes through ``raypipe validate`` (the CLI
#: parses the file again: a third of the time of an example).
CLI_EVERY = 3


# ------------------------------------------------------------------ field names of the schema


def _field_names(model: type[BaseModel], seen: set[type[BaseModel]] | None = None) -> set[str]:
    """Every field name of ``model`` and of the models nested in it."""
    seen = seen if seen is not None else set()
    if model in seen:
        return set()
    seen.add(model)
    names = set(model.model_fields)
    for f in model.model_fields.values():
        stack = [f.annotation]
        while stack:
            tp = stack.pop()
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                names |= _field_names(tp, seen)
            stack.extend(getattr(tp, "__args__", ()) or ())
    return names


KINDS = stage_kind_names()
PARAM_KEYS = sorted(set().union(*(_field_names(get_stage_kind(k).Params) for k in KINDS)))
SCHEMA_KEYS = sorted(_field_names(PipelineConfig))
GOOD = textwrap.dedent(
    """\
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
)

# ------------------------------------------------------------------ strategies

names = st.one_of(
    st.sampled_from(["a", "b", "c", "train", "x-y", "_z", "A1"]),
    st.sampled_from(["", "1a", "a.b", "a b", "é", "-", "a" * 200, "stages", "name"]),
    st.text(max_size=12),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["python", "data.read", "tests.unit.funcs:make", "a.out", "PACK", "fifo", "1e400", ".nan"]),
)
keys = st.one_of(st.sampled_from(SCHEMA_KEYS + PARAM_KEYS), st.text(max_size=10), st.integers(-3, 3))


def _junk(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
        max_leaves=max_leaves,
    )


junk = _junk()


@st.composite
def random_stage(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(junk)  # not even a mapping
    stage: dict[Any, Any] = {}
    if draw(st.booleans()) or draw(st.booleans()):
        stage["name"] = draw(names)
    if draw(st.integers(0, 4)):
        stage["kind"] = draw(st.one_of(st.sampled_from(KINDS), names))
    fields = ["depends_on", "inputs", "outputs", "resources", "gang_size", "placement", "preemptible"]
    fields += ["preempt_grace_s", "retries", "timeout_s", "cache", "priority", "team", "params"]
    for f in draw(st.lists(st.sampled_from(fields), max_size=4, unique=True)):
        stage[f] = draw(junk)
    if draw(st.booleans()):
        params = draw(st.dictionaries(st.sampled_from(PARAM_KEYS), junk, max_size=4))
        stage["params"] = params
    if draw(st.integers(0, 5)) == 0:
        stage[draw(st.text(max_size=8))] = draw(junk)  # an unknown key
    return stage


@st.composite
def random_document(draw: st.DrawFn) -> Any:
    """A document shaped roughly like a pipeline, with random values everywhere."""
    if draw(st.integers(0, 14)) == 0:
        return draw(junk)  # not a mapping at all
    doc: dict[Any, Any] = {}
    if draw(st.integers(0, 5)):
        doc["name"] = draw(st.one_of(names, junk))
    for f in draw(st.lists(st.sampled_from(["description", "storage", "metadata", "ray", "scheduler"]), max_size=3)):
        doc[f] = draw(junk)
    if draw(st.booleans()):
        doc["scheduler"] = {
            "policy": draw(st.one_of(st.sampled_from(["fifo", "priority", "backfill", "fair_share", "las"]), names)),
            "policy_args": draw(
                st.dictionaries(
                    st.sampled_from(["aging_s", "preempt", "max_preemptions", "thresholds", "starve_factor", "x"]),
                    junk,
                    max_size=3,
                )
            ),
        }
    if draw(st.integers(0, 5)):
        doc["stages"] = draw(st.one_of(st.lists(random_stage(), max_size=4), junk))
    if draw(st.integers(0, 5)) == 0:
        doc[draw(keys)] = draw(junk)
    return doc


@st.composite
def stage_graph(draw: st.DrawFn) -> tuple[dict[str, Any], int]:
    """Python stages wired as a DAG (each reads or waits for earlier ones), then 0-3 faults:
    duplicate, bad or empty names, unknown stages, self-dependencies, back edges (cycles),
    inputs naming unknown stages, bad references or missing arguments, unknown functions."""
    n = draw(st.integers(1, 6))
    names_ = [f"s{i}" for i in range(n)]
    stages: list[dict[str, Any]] = []
    for i, name in enumerate(names_):
        stage: dict[str, Any] = {"name": name, "kind": "python"}
        if i and draw(st.booleans()):
            stage["params"] = {"function": "tests.unit.funcs:use"}
            stage["inputs"] = {"x": f"{names_[draw(st.integers(0, i - 1))]}.out"}
        else:
            stage["params"] = {"function": "tests.unit.funcs:make"}
        if i and draw(st.booleans()):
            stage["depends_on"] = draw(st.lists(st.sampled_from(names_[:i]), max_size=2, unique=True))
        stages.append(stage)
    faults = draw(st.sampled_from([0, 0, 1, 1, 2, 3]))
    for _ in range(faults):
        stage = stages[draw(st.integers(0, n - 1))]
        fault = draw(st.integers(0, 8))
        other = draw(st.sampled_from(names_))
        if not isinstance(stage.get("depends_on", []), list):  # junk from an earlier fault
            stage["depends_on"] = []
        if fault == 0:
            stage["name"] = other  # duplicate (or unchanged)
        elif fault == 1:
            stage["name"] = draw(st.sampled_from(["", "1a", "a.b", "a b", "é", "x" * 200]))
        elif fault == 2:
            stage.setdefault("depends_on", []).append(draw(st.sampled_from(["zz", stage["name"]])))
        elif fault == 3:
            stage.setdefault("depends_on", []).append(names_[-1])  # a back edge: often a cycle
        elif fault == 4:
            stage.setdefault("inputs", {})["x"] = draw(st.sampled_from(["zz.out", f"{stage['name']}.out", "bad", "a."]))
        elif fault == 5:
            stage["params"] = {"function": "tests.unit.funcs:use"}  # needs `x`
            stage.pop("inputs", None)
        elif fault == 6:
            stage["params"] = {"function": draw(st.sampled_from(["tests.unit.funcs:nope", "nope:f", "x"]))}
        elif fault == 7:
            stage["outputs"] = draw(st.lists(st.sampled_from(["out", "y", "bad name"]), max_size=2))
        else:
            stage["depends_on"] = draw(junk)
    return {"name": "graph", "stages": stages}, faults


def _override_path(draw: st.DrawFn) -> str:
    tokens = st.one_of(
        st.sampled_from(["stages", "a", "b", "zz", "params", "args", "k", "resources", "cpu", "name", "scheduler"]),
        st.sampled_from(["[0]", "[1]", "[7]", "[-1]", ".", "..", "[", "]"]),
        st.text(max_size=6),
    )
    parts = draw(st.lists(tokens, min_size=0, max_size=6))
    out = ""
    for p in parts:
        out += p if p.startswith("[") or not out else "." + p
    return out


VALID_SETS = [
    "stages.b.params.args.k=3",
    "stages[0].resources.cpu=0.5",
    "stages.a.retries.max=2",
    "stages.a.retries={max: 1, backoff_s: 0}",
    "scheduler.policy=priority",
    "scheduler={policy: priority, policy_args: {aging_s: 60}}",
    "description=a fuzzed override",
    "stages[1].priority=5",
    "stages.b.team=research",
    "ray.num_cpus=4",
]


@st.composite
def override(draw: st.DrawFn) -> str:
    choice = draw(st.integers(0, 10))
    if choice == 10:
        return draw(st.sampled_from(VALID_SETS))
    if choice == 0:
        return draw(st.text(max_size=30))  # anything at all
    path = _override_path(draw)
    if choice <= 2:
        value = draw(st.text(max_size=20))  # raw text (YAML-parsed)
    elif choice == 3:
        value = draw(st.sampled_from(["[1, 2", "{a: 1", "*x", "&a [*a]", "9" * 5000, "!!python/name:os.system", ""]))
    else:
        value = yaml.safe_dump(draw(junk), default_flow_style=True).strip().removesuffix("...").strip()
    return f"{path}={value}"


# ------------------------------------------------------------------ the oracle


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("fuzz_config")
    old = os.getcwd()
    os.chdir(REPO)  # configs name functions and data relative to the repository
    yield d
    os.chdir(old)


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=False)


def check_load(cls: str, path: Path, overrides: list[str] | None = None, via_validate: bool = False) -> Any:
    """``api.load`` (or ``api.validate``) gives a Plan or a RaypipeError naming the file or the override."""
    try:
        result = api.validate([path])[0] if via_validate else api.load(path, overrides=overrides or [])
    except RaypipeError as e:
        msg = str(e)
        assert msg.strip(), f"{cls}: empty error message"
        assert "Traceback" not in msg
        named = str(path) in msg or (overrides and "--set" in msg)
        assert named, f"{cls}: error names neither the file nor the override: {msg!r}"
        TRIED[(cls, "error")] += 1
        return e
    if isinstance(result, Plan):
        names_ = [s.name for s in result.config.stages]
        assert sorted(result.order) == sorted(names_) and len(set(names_)) == len(names_)
        pos = {n: i for i, n in enumerate(result.order)}
        for n, ps in result.stages.items():
            assert all(pos[u] < pos[n] for u in ps.upstream), f"{cls}: {n} planned before its upstream"
    TRIED[(cls, "valid")] += 1
    return result


def check_cli(cls: str, path: Path, outcome: Any) -> None:
    """``raypipe validate FILE``: exit 0 for a valid file, 2 for a bad one; never a traceback.
    Every ``CLI_EVERY``-th example of a class (and every valid one) goes through the CLI too."""
    seen = TRIED[(cls, "valid")] + TRIED[(cls, "error")]
    if seen % CLI_EVERY != 1 and not isinstance(outcome, Plan):
        return
    r = runner.invoke(cli_app, ["validate", str(path)], terminal_width=200)
    assert r.exception is None or isinstance(r.exception, SystemExit), f"{cls}: CLI raised {r.exception!r}"
    assert r.exit_code in (0, 2), (r.exit_code, r.output)
    assert "Traceback" not in r.output
    assert r.exit_code == (2 if isinstance(outcome, RaypipeError) else 0), (cls, r.output)
    TRIED[(cls, f"cli exit {r.exit_code}")] += 1


def _write(d: Path, text: str, name: str = "fuzz.yaml") -> Path:
    p = d / name
    p.write_text(text, encoding="utf-8")
    return p


# ------------------------------------------------------------------ the fuzz tests


@settings(FUZZ, max_examples=examples(160))
@given(doc=random_document())
def test_random_documents(fuzz_dir: Path, doc: Any) -> None:
    try:
        text = _dump(doc)
    except (ValueError, yaml.YAMLError):  # e.g. an int too long to print: nothing to load
        return
    p = _write(fuzz_dir, text)
    check_cli("random", p, check_load("random", p))


@settings(FUZZ, max_examples=examples(150))
@given(case=stage_graph())
def test_stage_graphs(fuzz_dir: Path, case: tuple[dict[str, Any], int]) -> None:
    doc, faults = case
    p = _write(fuzz_dir, _dump(doc))
    out = check_load("graph", p)
    check_cli("graph", p, out)
    if not faults:  # a DAG of well-formed stages plans
        assert isinstance(out, Plan), out
    if isinstance(out, Plan):  # a valid graph has no duplicate, unknown or cyclic reference
        names_ = [s["name"] for s in doc["stages"]]
        assert len(set(names_)) == len(names_)
        for s in doc["stages"]:
            assert all(d in names_ and d != s["name"] for d in s.get("depends_on", []))


@settings(FUZZ, max_examples=examples(250))
@given(
    overrides=st.one_of(
        st.lists(override(), min_size=1, max_size=3), st.lists(st.sampled_from(VALID_SETS), max_size=3)
    ),
    base=st.sampled_from(["good", "good"] + [p for p in SHIPPED if "canary" not in p]),
)
def test_set_overrides(fuzz_dir: Path, overrides: list[str], base: str) -> None:
    p = _write(fuzz_dir, GOOD) if base == "good" else Path(base)
    out = check_load("override", p, overrides)
    if base == "good" and all(o in VALID_SETS for o in overrides):
        assert isinstance(out, Plan), out


def _paths(node: Any, loc: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [loc] if loc else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, loc + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, loc + (i,))
    return out


def _retype(v: Any, how: int) -> Any:
    return [str(v), [v], {"value": v}, None, 1e308, -1, True, "", {}, []][how]


@st.composite
def mutated_config(draw: st.DrawFn) -> tuple[str, str]:
    base = draw(st.sampled_from(SHIPPED))
    doc = yaml.safe_load(Path(base).read_text(encoding="utf-8"))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        loc = draw(st.sampled_from(paths))
        parent: Any = doc
        for part in loc[:-1]:
            parent = parent[part]
        last = loc[-1]
        op = draw(st.sampled_from(["drop", "replace", "retype", "rename"]))
        if op == "drop":
            del parent[last]
        elif op == "replace":
            parent[last] = draw(junk)
        elif op == "retype":
            parent[last] = _retype(copy.deepcopy(parent[last]), draw(st.integers(0, 9)))
        elif isinstance(parent, dict):  # rename the key
            parent[draw(keys)] = parent.pop(last)
        else:  # duplicate a list item (duplicate stage, step...)
            parent.append(copy.deepcopy(parent[last]))
    return os.path.basename(base), _dump(doc)


@settings(FUZZ, max_examples=examples(100))
@given(case=mutated_config())
def test_mutated_shipped_configs(fuzz_dir: Path, case: tuple[str, str]) -> None:
    name, text = case
    p = _write(fuzz_dir, text, "mutated_" + name)
    check_cli("mutation", p, check_load("mutation", p, via_validate=True))


@st.composite
def damaged_text(draw: st.DrawFn) -> str:
    """Raw text damage of a shipped file: cut, insert, re-indent, duplicate lines, odd scalars."""
    lines = Path(draw(st.sampled_from(SHIPPED))).read_text(encoding="utf-8").splitlines()
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.integers(0, 6))
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[i])  # a duplicated line: duplicate keys, stages, steps
        elif op == 2:
            lines[i] = " " * draw(st.integers(0, 5)) + lines[i].lstrip()
        elif op == 3:
            j = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:j] + draw(st.text(max_size=5)) + lines[i][j:]
        elif op == 4:
            lines[i] = (
                lines[i].split(":")[0]
                + ": "
                + draw(
                    st.sampled_from(["9" * 5000, "&a [*a]", "!!binary AA==", "!!set {a}", "*nope", "[[[[", "'", "\t"])
                )
            )
        elif op == 5:
            lines.insert(i, draw(st.text(max_size=30)))
        else:
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
    return "\n".join(lines) + "\n"


@settings(FUZZ, max_examples=examples(100))
@given(text=damaged_text())
def test_damaged_yaml_text(fuzz_dir: Path, text: str) -> None:
    p = _write(fuzz_dir, text, "damaged.yaml")
    check_cli("text", p, check_load("text", p, via_validate=True))


# ------------------------------------------------------------------ regressions found by fuzzing

BOMB = (
    "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10))
    + "name: x\nstages: *a9\n"
)


@pytest.mark.parametrize(
    ("text", "overrides", "fragment"),
    [
        # a recursive alias (an anchor used inside itself): was a RecursionError
        ("name: x\nstages: &a [*a]\n", [], "recursive"),
        ("name: x\nstages:\n  - &s {name: a, kind: python, params: *s}\n", [], "recursive"),
        # an alias bomb (10 aliases of 10 aliases ... 9 deep): would expand to 10**9 values
        (BOMB, [], "aliases expand to more than"),
        # an integer literal longer than Python converts (4300 digits): was a ValueError
        ("name: x\nstages: [{name: a, kind: python, priority: " + "9" * 5000 + "}]\n", [], "invalid YAML"),
        # --set by stage name when `stages` is not a list: was a TypeError
        ("name: x\nstages: 5\n", ["stages.a.name=b"], "no stage named"),
        # a --set value that YAML cannot convert: was a ValueError
        (GOOD, ["stages.a.priority=" + "9" * 5000], "stages[0].priority"),
        # policy arguments of the wrong type: were TypeError / ValueError from the policy
        (GOOD + "scheduler: {policy: las, policy_args: {thresholds: 5}}\n", [], "scheduler.policy_args"),
        (GOOD + "scheduler: {policy: las, policy_args: {thresholds: [a]}}\n", [], "scheduler.policy_args"),
        (GOOD + "scheduler: {policy: priority, policy_args: {aging_s: abc}}\n", [], "scheduler.policy_args"),
    ],
)
def test_fuzz_regressions(tmp_path: Path, text: str, overrides: list[str], fragment: str) -> None:
    p = _write(tmp_path, text, "regression.yaml")
    with pytest.raises(RaypipeError) as info:
        api.load(p, overrides=overrides)
    assert fragment in str(info.value), str(info.value)
    if not overrides:
        r = runner.invoke(cli_app, ["validate", str(p)], terminal_width=200)
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output


def test_zz_report_counts(reliability: Any) -> None:
    """Prints how many generated configs were tried, by class and outcome (``pytest -s``)."""
    total = sum(n for (cls, what), n in TRIED.items() if not what.startswith("cli"))
    print(f"\nconfig fuzz: {total} generated configs loaded")
    reliability.generated("pipeline configs (hypothesis)", total)
    for (cls, what), n in sorted(TRIED.items()):
        print(f"  {cls:9s} {what:12s} {n}")
    if TRIED:  # the fuzz tests ran in this process (not deselected)
        assert total > 0
