"""The daemon's ``continuous`` section: the leading agent runs the receiver (:mod:`etcdwarden.backup.receive`).

:meth:`Continuous.start` is called when this agent becomes the leader, :meth:`Continuous.stop` when it stops
leading (or the daemon stops): the receiver then writes its open segment and frees the repository's lease,
so the next leader resumes at the repository's last durable revision + 1 (the receiver's own resume; no
state in etcd is needed). A receiver that fails (etcd unreachable, the repository refusing writes, the
previous leader's lease not yet expired) is started again after a pause; a gap it reports is logged and
counted. While it runs, the window (:mod:`etcdwarden.repository.window`) is read once a minute for the
``etcdwarden_recoverable_window_*`` metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from etcdwarden.daemon.config import ContinuousSection
from etcdwarden.daemon.metrics import ReceiveFigures
from etcdwarden.daemon.spec import DaemonConfig
from etcdwarden.errors import EtcdwardenError
from etcdwarden.etcd.client import EtcdClient

log = logging.getLogger(__name__)
RESTART_PAUSE = 10.0
WINDOW_EVERY = 60.0


class Continuous:
    def __init__(self, client: EtcdClient) -> None:
        self.client = client
        self.figures: ReceiveFigures | None = None
        self._task: asyncio.Task[None] | None = None
        self._section: ContinuousSection | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self, config: DaemonConfig) -> None:
        """Start receiving (when the section is set and enabled, and not already running with it)."""
        sec = config.continuous
        if self.running and sec == self._section:
            return
        if sec is None or not sec.enabled:
            return
        repo = config.repositories[sec.repository]
        from etcdwarden.repository.base import RepositoryOptions

        options = RepositoryOptions.from_mapping(repo.backend_options())
        if self.figures is None or self.figures.repository != sec.repository:
            self.figures = ReceiveFigures(repository=sec.repository)
        self._section = sec
        self._task = asyncio.create_task(self._run(sec, repo.url, options), name="etcdwarden-continuous")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, EtcdwardenError):
            await task
        if self.figures is not None:
            self.figures.running = False

    async def restart_if_changed(self, config: DaemonConfig) -> None:
        """After a reload: stop a receiver whose section changed or went away, start the new one."""
        if self.running and config.continuous != self._section:
            await self.stop()
        self.start(config)

    async def _run(self, sec: ContinuousSection, url: str, options: Any) -> None:
        from etcdwarden.backup.receive import ReceiveOptions, ReceiveStats, lag_p99, receive

        figures = self.figures
        assert figures is not None
        opts = ReceiveOptions(repository=url, repository_options=options, segment_seconds=sec.segment_seconds,
                              segment_bytes=sec.segment_bytes, full_every=sec.full_every,
                              lease_seconds=sec.lease, compress=sec.compress, allow_plaintext=sec.allow_plaintext)

        def notify(message: str) -> None:
            if message.startswith("GAP"):
                figures.gaps += 1
                log.error("continuous backup: %s", message, extra={"event": "continuous-gap"})
            else:
                log.info("continuous backup: %s", message)

        window = asyncio.create_task(self._window(url, options, figures))
        try:
            while True:
                stats = ReceiveStats()
                figures.stats = stats
                figures.running = True
                try:
                    await receive(self.client, opts, notify, stats)
                except EtcdwardenError as e:
                    figures.failures += 1
                    log.warning("continuous backup stopped: %s; starting again in %gs", e, RESTART_PAUSE)
                except Exception:  # a bug must not end continuous backup for good: logged, counted, restarted
                    figures.failures += 1
                    log.exception("continuous backup crashed; starting again in %gs", RESTART_PAUSE)
                finally:
                    figures.running = False
                    figures.breaks += stats.breaks
                    figures.lag_p99 = lag_p99(stats.lags)
                await asyncio.sleep(RESTART_PAUSE)
        finally:
            window.cancel()
            with contextlib.suppress(BaseException):
                await window

    async def _window(self, url: str, options: Any, figures: ReceiveFigures) -> None:
        from etcdwarden.repository.base import open_repository
        from etcdwarden.repository.window import ManifestCache, read_window

        cache: ManifestCache = {}

        def read() -> None:
            with open_repository(url, options) as repo:
                w = read_window(repo, cache=cache)  # each segment manifest is read once
            first, last = w.earliest, w.latest
            figures.window_start = first.time.timestamp() if first and first.time else 0.0
            figures.window_end = last.time.timestamp() if last and last.time else 0.0
            figures.window_revision = last.revision if last else 0
            figures.window_gaps = len(w.gaps)
            figures.window_breaks = sum(1 for c in w.chains if c.broken is not None)
            figures.read_at = time.time()

        while True:
            try:
                await asyncio.to_thread(read)
            except EtcdwardenError as e:
                log.warning("cannot read the recoverable window: %s", e)
            await asyncio.sleep(WINDOW_EVERY)
