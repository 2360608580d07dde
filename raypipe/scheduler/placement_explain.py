"""Why a request cannot be placed, for people (a mixin of
:class:`~raypipe.scheduler.placement.FreeLedger`): ``needs 4 GPU on one node; largest
free block is 2 GPU (node-3)``.
"""

from __future__ import annotations

from raypipe.scheduler import vec
from raypipe.scheduler.placement_choice import NodeChoiceMixin
from raypipe.scheduler.types import JobRequest, Labels
from raypipe.scheduler.vec import Vec


class ExplainMixin(NodeChoiceMixin):
    """``explain``: the reason a failed ``place`` gives."""

    __slots__ = ()

    def _largest(self, i: int, selector: Labels, custom_key: str = "") -> tuple[float, str]:
        best_v, best_n = -1.0, ""
        for (fv, labels, _), ids in self._groups.items():
            if not self._match(labels, selector):
                continue
            v = vec.component(fv, i, custom_key)
            if v > best_v or (v == best_v and ids[0] < best_n):
                best_v, best_n = v, ids[0]
        return best_v, best_n

    def explain(self, request: JobRequest, *, capacity_word: str = "free block") -> str:
        """Why ``request`` cannot be placed on this ledger (call only after ``place`` failed)."""
        sel = request.label_selector
        verb = "is" if capacity_word == "free block" else "has"
        where = f" on nodes with {request.describe_selector()}" if sel else ""
        if not any(self._match(labels, sel) for (_, labels, _) in self._groups):
            return f"no alive node has labels {request.describe_selector()}" if sel else "no alive node"
        n = len(request.bundles)
        if self.whole_nodes(request):
            nodes, held = self.whole_node_capacity(request)
            d = vec.dominant_index(request.demand_vec)
            what = "GPU" if d == vec.GPU else "CPU" if d == vec.CPU else "resource"
            have = (
                f"{nodes} matching node(s) have every {what} free, holding {held} of them"
                if capacity_word == "free block"
                else f"the matching nodes hold {held} of them"
            )
            return f"gang of {n} bundles needs {request.demand} on whole nodes (consolidation strict){where}; {have}"
        strict_pack = request.strategy == "STRICT_PACK" and n > 1
        strict = strict_pack or (n > 1 and self.one_node(request))
        needs = [request.demand_vec] if strict else sorted(request.bundle_vecs, key=lambda v: (-v[1], -v[0], -v[2]))
        for need in needs:
            if self._best_fit(need, sel, {}) is not None:
                continue
            what = "all bundles" if strict else str(vec.to_resources(need))
            suffix = " (STRICT_PACK)" if strict_pack else " (consolidation strict)" if strict else ""
            for i, dim_name, key in _dims(need):
                value, nid = self._largest(i, sel, key)
                if value + vec.EPS < vec.component(need, i, key):
                    name = dim_name
                    break
            else:
                i = vec.dominant_index(need)
                key = need[3][0][0] if i == 3 and need[3] else ""
                name = vec.component_name(i, need)
                value, nid = self._largest(i, sel, key)
            if strict:
                return (
                    f"needs {vec.to_resources(need)} on one node{suffix}{where}; "
                    f"largest {capacity_word} {verb} {max(value, 0.0):g} {name} ({nid})"
                )
            return f"needs {what} on one node{where}; largest {capacity_word} {verb} {max(value, 0.0):g} {name} ({nid})"
        d = vec.dominant_index(request.demand_vec)
        name = vec.component_name(d, request.demand_vec)
        total = 0.0
        for (fv, labels, _), ids in self._groups.items():
            if self._match(labels, sel):
                total += vec.component(fv, d) * len(ids)
        avail = "free" if capacity_word == "free block" else "in total"
        return (
            f"gang of {len(request.bundles)} bundles ({request.strategy}) needs {request.demand}{where}; "
            f"{total:g} {name} {avail} on matching nodes, not in blocks that hold every bundle"
        )


def _dims(need: Vec) -> list[tuple[int, str, str]]:
    """The requested dimensions of ``need``: (index, display name, custom key)."""
    out = [(i, vec.DIM_NAMES[i], "") for i in (vec.GPU, vec.CPU, vec.MEMORY) if vec.component(need, i) > vec.EPS]
    out += [(3, k, k) for k, x in need[3] if x > vec.EPS]
    return out
