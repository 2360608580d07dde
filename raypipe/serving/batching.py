"""How the router calls a variant: requests for one variant sent as few handle calls as
possible without waiting (:class:`Batcher`), a call retried when its replica died."""

from __future__ import annotations

import asyncio
from typing import Any

#: Calls of a variant after its replica died under the first one.
ACTOR_RETRIES = 2
#: Handle calls in flight per replica of a variant (more requests join the next call).
INFLIGHT_PER_REPLICA = 2


class Batcher:
    """Requests for one variant, sent as few handle calls as possible without waiting:
    a request goes out at once while fewer than ``max_inflight`` calls are in flight;
    otherwise it joins the next call, sent as soon as one returns.  One connection sees
    no added delay (a request alone in the router is called in its own task: no batch task,
    no future); under load, one call carries many requests (one forward pass)."""

    def __init__(self, handle: Any, max_inflight: int, max_batch: int = 64) -> None:
        self.handle = handle
        self.max_inflight = max(1, max_inflight)
        self.max_batch = max_batch
        self.queue: list[tuple[str, list[list[Any]], asyncio.Future[dict[str, Any]]]] = []
        self.inflight = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def submit(self, request_id: str, rows: list[list[Any]], alone: bool = False) -> dict[str, Any]:
        """The variant's answer to one request.  ``alone``: the caller knows no other request
        is on its way to this variant (the router has no other request in hand): with no call
        in flight and none queued, the call is made here, in the caller's task (no task, no
        future, no extra turn of the event loop; what a batch of one would do, sooner)."""
        if alone and not self.inflight and not self.queue:
            self.inflight += 1
            try:
                return (await self._call([request_id], [rows]))[0]
            finally:
                self.inflight -= 1
                while self.queue and self.inflight < self.max_inflight:
                    self._dispatch()
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.queue.append((request_id, rows, fut))
        if self.inflight < self.max_inflight:
            self._dispatch()
        return await fut

    def _dispatch(self) -> None:
        batch, self.queue = self.queue[: self.max_batch], self.queue[self.max_batch :]
        if not batch:
            return
        self.inflight += 1
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _call(self, ids: list[str], rows: list[list[list[Any]]]) -> list[dict[str, Any]]:
        """One call of the variant, made again (up to ``ACTOR_RETRIES`` times) when its replica
        died under it."""
        from ray.exceptions import RayActorError

        attempt = 0
        while True:
            try:
                results: list[dict[str, Any]] = await self.handle.predict_many.remote(ids, rows)
                return results
            except RayActorError:  # the replica died under the call: Serve picks a live one
                if attempt == ACTOR_RETRIES:
                    raise
                attempt += 1
                await asyncio.sleep(0.05 * attempt)

    async def _run(self, batch: list[tuple[str, list[list[Any]], asyncio.Future[dict[str, Any]]]]) -> None:
        try:
            results = await self._call([b[0] for b in batch], [b[1] for b in batch])
            for (_, _, fut), res in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(res)
        except Exception as e:  # noqa: BLE001 - every request of the call gets the error
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
        finally:
            self.inflight -= 1
            while self.queue and self.inflight < self.max_inflight:
                self._dispatch()
