"""``python`` stage kind: call a user function given as ``module:function``.

The function receives its inputs and ``params.args`` as keyword arguments, plus
the :class:`StageContext` if it has a parameter named ``ctx``.  It returns a dict
``{output_name: value}``, a single value (stored as output ``output``) or ``None``.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from pydantic import Field

from raypipe.resources import Resources
from raypipe.stages.base import StageContext, StageKind, StageParams, module_fingerprint
from raypipe.stages.data.common import data_session

FUNC_RE = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$"


class PythonParams(StageParams):
    function: Annotated[str, Field(pattern=FUNC_RE)]
    args: dict[str, Any] = Field(default_factory=dict)


def import_function(target: str) -> Callable[..., Any]:
    """``pkg.mod:func`` (or ``pkg.mod:Class.method``) -> the callable; ``ImportError`` if absent."""
    module_name, _, qualname = target.partition(":")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise ImportError(f"module {module_name!r} has no attribute {qualname!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ImportError(f"{target} is not callable")
    return obj


def function_fingerprint(target: str) -> str:
    """A hash of a user function's module source and its name."""
    h = hashlib.sha256(module_fingerprint(target.partition(":")[0]).encode())
    h.update(target.encode())
    return h.hexdigest()


def import_check(target: str) -> str | None:
    """Why ``target`` cannot be imported (for planning-time errors), or None."""
    try:
        import_function(target)
    except ImportError as e:
        return f"cannot import {target!r}: {e}"
    except Exception as e:  # noqa: BLE001 - user module raised while importing
        return f"importing {target!r} raised {type(e).__name__}: {e}"
    return None


class PythonStage(StageKind):
    Params = PythonParams
    packages = ("numpy", "pandas", "pyarrow", "torch")

    params: PythonParams

    def check(self, input_names: list[str]) -> list[tuple[tuple[str | int, ...], str]]:
        problem = import_check(self.params.function)
        if problem:
            return [(("function",), problem)]
        fn = import_function(self.params.function)
        issues: list[tuple[tuple[str | int, ...], str]] = []
        for name in set(input_names) & set(self.params.args):
            issues.append((("args", name), f"{name!r} is both an input and an arg; rename one"))
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return issues
        accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        given = set(input_names) | set(self.params.args)
        if not accepts_any:
            for name in sorted(given - set(sig.parameters)):
                where = ("args", name) if name in self.params.args else ("function",)
                issues.append((where, f"{self.params.function} has no parameter {name!r}"))
        for name, p in sig.parameters.items():
            if name == "ctx" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            if p.default is p.empty and name not in given:
                issues.append(
                    (("function",), f"{self.params.function} needs {name!r}; give it in `inputs` or `params.args`")
                )
        return issues

    def handles_preemption(self) -> bool:
        """A function that takes ``ctx`` can watch for preemption."""
        try:
            return "ctx" in inspect.signature(import_function(self.params.function)).parameters
        except Exception:  # noqa: BLE001 - planning already reported an unimportable function
            return False

    def fingerprint(self) -> str:
        return function_fingerprint(self.params.function)

    def session(self, ctx: StageContext) -> Any:
        """Ray Data work the function starts (a dataset it makes or returns, and the
        writing of a returned dataset) is bounded by the stage's grant and kept on its
        nodes, as in data stages."""

        return data_session(ctx)

    def task_resources(self, resources: Resources, gang_size: int) -> Resources:
        """A one-bundle python stage's task keeps its GPUs and custom resources (so the
        function sees its devices) and leaves the CPUs and memory of its grant to the Ray
        Data work it starts: the task is pinned to the granted node and the grant stays
        booked in the scheduler's ledger.  A gang's tasks run in its placement group with
        every resource, their child tasks captured in it."""
        if gang_size > 1:
            return resources
        return Resources.of(gpu=resources.gpu, custom=resources.custom_dict)

    def run(self, ctx: StageContext, inputs: Mapping[str, Any]) -> Mapping[str, Any] | None:
        fn = import_function(self.params.function)
        kwargs = {**self.params.args, **inputs}
        try:
            wants_ctx = "ctx" in inspect.signature(fn).parameters
        except (TypeError, ValueError):
            wants_ctx = False
        if wants_ctx:
            kwargs["ctx"] = ctx
        result = fn(**kwargs)
        if result is None:
            return {}
        if isinstance(result, Mapping) and all(isinstance(k, str) for k in result):
            return result
        return {"output": result}
