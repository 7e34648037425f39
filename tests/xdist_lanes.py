"""`make test`'s scheduler: pytest-xdist's loadfile (a file's tests stay in one process), in lanes.

Measured on 2 cores: two of the whole-stack files at once each take 30-60 % longer than beside
light files (they compete for the CPU: JVMs, Dagster processes), and xdist's own order (files
with most tests first) ends with the longest files one after another in one process while
the other idles. So the first process is the heavy lane: it takes the heavy files, longest
first. The others take the light files, in order, and then what is left of the heavy ones,
longest first.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import pytest
from xdist.remote import Producer
from xdist.scheduler import LoadFileScheduling
from xdist.workermanage import WorkerController


class LanedFileScheduling(LoadFileScheduling):
    """loadfile, with the heavy files (scope -> seconds) in the first process's lane."""

    def __init__(
        self,
        config: pytest.Config,
        log: Producer | None,
        heavy: Mapping[str, float],
        light_first: Collection[str] = (),
    ) -> None:
        super().__init__(config, log)
        self.heavy = dict(heavy)
        self.light_first = tuple(light_first)

    def _next_scope(self, node: WorkerController) -> str:
        scopes = list(self.workqueue)
        heavy = sorted((s for s in scopes if s in self.heavy), key=lambda s: -self.heavy[s])
        light = [s for s in scopes if s not in self.heavy]
        first = {scope: n for n, scope in enumerate(self.light_first)}
        light.sort(key=lambda s: first.get(s, len(first)))  # stable: the rest keep xdist's order
        heavy_lane = len(self.nodes) > 1 and node is self.nodes[0]
        ordered = heavy + light if heavy_lane or not light else light
        return ordered[0]

    def _assign_work_unit(self, node: WorkerController) -> None:
        assert self.workqueue
        scope = self._next_scope(node)
        work_unit = self.workqueue.pop(scope)
        self.assigned_work.setdefault(node, {})[scope] = work_unit
        collection = self.registered_collections[node]
        node.send_runtest_some(
            [collection.index(nodeid) for nodeid, done in work_unit.items() if not done]
        )
