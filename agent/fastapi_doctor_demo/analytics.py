"""Product-page views sent to analytics: a task per view that waits for the next batch flush (the bug)
and a bounded queue drained by one worker started in the lifespan (the fix).

Views are flushed to the analytics store in batches every ``FLUSH_S``; the buggy sender starts one task
per view that waits for that flush, so every page view leaves a task pending for minutes.
"""

from __future__ import annotations

import asyncio

FLUSH_S = 600.0


class Analytics:
    def __init__(self) -> None:
        self.flushed = asyncio.Event()
        self.views: asyncio.Queue[int] = asyncio.Queue(maxsize=10_000)
        self.recorded = 0

    async def _send_when_flushed(self, product_id: int) -> None:
        await asyncio.wait_for(self.flushed.wait(), FLUSH_S)
        self.recorded += 1

    def track_view(self, product_id: int) -> None:
        """Fire and forget: nothing awaits the task, which lives until the next flush."""
        asyncio.create_task(self._send_when_flushed(product_id))

    def enqueue_view(self, product_id: int) -> None:
        """Hand the view to the worker; when the queue is full the view is dropped, not the process."""
        try:
            self.views.put_nowait(product_id)
        except asyncio.QueueFull:
            pass

    async def worker(self) -> None:
        while True:
            await self.views.get()
            self.recorded += 1
            self.views.task_done()
