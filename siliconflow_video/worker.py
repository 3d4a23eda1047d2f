"""Run workers that share a PostgreSQL journal (the ``worker`` extra: procrastinate).

::

    from siliconflow_video.worker import Worker

    code = await Worker("postgresql://sfv@db:5432/sfv", concurrency=16, burst=True).run()

or ``siliconflow-video worker --journal postgresql://...``. Ids get in with
``siliconflow-video enqueue ID... -o DEST --journal postgresql://...`` (or
``Journal.accept``); every worker takes its share, and a dead worker's jobs are taken over
within :attr:`WorkerSettings.takeover_bound` seconds. See ``docs/deployment.md``.
"""

from __future__ import annotations

from ._worker import Worker, WorkerSettings, enqueue_polls, run_worker

__all__ = ["Worker", "WorkerSettings", "enqueue_polls", "run_worker"]
