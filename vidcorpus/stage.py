"""The stage interface: a class that processes a batch of rows and declares its resources.

``setup`` runs once per worker (load models, open clients); ``__call__`` takes an Arrow table of
``ROW_SCHEMA`` and returns one. A stage never raises for one bad row: the row comes back with
``error_class``/``error``/``error_stage`` set, and later stages pass it through untouched.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from typing import ClassVar

import pyarrow as pa
from pydantic import BaseModel

from vidcorpus import events, gpu_busy, stage_clock
from vidcorpus.config import Config
from vidcorpus.errors import classify_error, storage_full
from vidcorpus.schemas import is_clipless, rows_to_table


class Resources(BaseModel):
    """What one worker of a stage needs. The runner maps this onto Ray's num_cpus/num_gpus."""

    cpus: float = 0.5
    gpus: float = 0.0
    memory_mb: int | None = None
    actor: bool = False  # stateful (holds a model): runs in an actor pool instead of tasks


class Stage:
    name: ClassVar[str] = "stage"
    resources: ClassVar[Resources] = Resources()
    kept_only: ClassVar[bool] = False  # True: rows a recipe dropped pass through untouched (captioning)
    undecided_too: ClassVar[bool] = False  # with kept_only: rows no recipe decided yet are processed too
    # Rows per call; None: the runner's default (vidcorpus/stage_settings.py). stages.<name>.batch_rows overrides.
    batch_rows: ClassVar[int | None] = None
    # True: each call takes whole Ray Data blocks (the splitter emits a source's clips in one block,
    # so a stage that decodes the source does it once per source); stages.<name>.batch_rows overrides.
    whole_blocks: ClassVar[bool] = False

    def __init__(self, config: Config):
        self.config = config
        self._ready = False

    @classmethod
    def resources_for(cls, config: Config) -> Resources:
        """What one worker needs under this config; the runner plans from this (default: the class's
        declaration). A stage whose needs follow a setting (a GPU only when a model runs) overrides it."""
        return cls.resources

    def setup(self) -> None:
        """Load models and open clients; called once per worker before the first batch."""

    def process_row(self, row: dict) -> dict | list[dict]:
        """Process one good row; return it (updated) or the rows it becomes."""
        raise NotImplementedError(f"{type(self).__name__} implements neither process_row nor process_rows")

    def process_rows(self, rows: list[dict]) -> list[dict]:
        """Process good rows together (model stages override this to batch). A row that becomes
        several (a source split into clips) stamps each with their number, ``source_rows``: the
        driver knows a source is whole when that many of its rows are committed."""
        out: list[dict] = []
        for row in rows:
            got = self.safe_call(self.process_row, row)
            if len(got) > 1:
                if row.get("source_rows"):
                    raise RuntimeError(f"{self.name}: a row of a source already split ({row.get('source_id')}) "
                                       "cannot become several rows: the driver could not tell when it is whole")
                got = [dict(g, source_rows=len(got)) for g in got]
            out.extend(got)
        return out

    def safe_call(self, fn, row: dict) -> list[dict]:
        """Run fn on one row; an exception marks that row failed instead of stopping the batch."""
        try:
            result = fn(row)
        except Exception as exc:  # noqa: BLE001 - one bad input must not stop the run
            if (full := storage_full(exc)) is not None:  # not the row's fault: stop the job, clearly
                raise full from exc
            return [self.fail(row, exc)]
        return result if isinstance(result, list) else [result]

    def fail(self, row: dict, exc: BaseException) -> dict:
        if (full := storage_full(exc)) is not None:
            raise full from exc
        failed = dict(row)
        failed["error_class"] = classify_error(exc)
        tb = traceback.format_exception_only(type(exc), exc)
        failed["error"] = "".join(tb).strip()[:2000]
        failed["error_stage"] = self.name
        return failed

    def wants(self, row: dict) -> bool:
        """Whether ``process_rows`` gets this row (else it passes through untouched)."""
        return (not row.get("error_class")
                and (not self.kept_only or bool(row.get("kept")) or (self.undecided_too and row.get("kept") is None))
                and not is_clipless(row))  # a split source without clips: nothing to process

    def __call__(self, batch: pa.Table | dict, before: dict | None = None) -> pa.Table:
        """``before``: the stamp of work a caller did for this batch first (a caption actor's
        read-ahead, ``vidcorpus/jobs/curate/caption_pool.py``): it goes on the rows ahead of this
        stage's own."""
        started = time.time()
        table = batch if isinstance(batch, pa.Table) else pa.table(batch)
        every = table.to_pylist()
        timed = stage_clock.take_carried(every)  # stamps of earlier batches that left no row
        rows, carried = events.split(every)  # earlier stages' warnings, kept whatever this stage does
        setup_s, gpu, gpu_busy_s = 0.0, None, None
        raised_setup: list = []
        with events.captured(self.name) as raised:  # this stage's warnings reach the driver with the rows
            if not self._ready:
                self.setup()
                self._ready = True
                setup_s = time.time() - started
                if self.resources.actor:
                    raised_setup = [events.setup_event(self.name)]
            todo, skip = [], []
            for r in rows:
                (todo if self.wants(r) else skip).append(r)
            device = gpu_busy.current_device() if todo and self.resources.gpus > 0 else None
            meter = gpu_busy.GpuBusyMeter(device[0]) if device else contextlib.nullcontext()
            with meter:
                out = self.process_rows(todo) if todo else []
            if device:
                gpu, gpu_busy_s = device[1], meter.busy_s
        out = out + skip
        this = stage_clock.stamp(self.name, started, time.time(), len(rows), len(out), setup_s, gpu, gpu_busy_s)
        return rows_to_table(events.attach(stage_clock.stamp_rows(out, this, timed, before), carried + raised + raised_setup))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.resources}>"
