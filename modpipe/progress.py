"""Progress of long steps as events: the library reports them, whoever runs it chooses how they show.

    bar = progress.task("adapt/man_section", total=3, description="adapt man_section (epochs)")
    bar.advance(train_loss=0.41)           # one more done, with what to show beside the count
    bar.update(completed=120, loss=2.31)   # or where it is now
    bar.done()

Events go to the current sink. By default that is ``LoggingSink``: INFO lines on ``modpipe.progress`` (plain
text), at most one per key every ``interval`` seconds and always the last one, which is what Prefect, Ray job
and CI logs show. The CLI shows ``RichSink`` bars instead while it runs on an interactive terminal outside CI
(``terminal_bars``).

A Ray Train callback runs in the run's controller actor, another process: ``Relay`` hands out bars whose events
travel through a small actor that this process polls, so they reach this process's sink (``train_callback``).
Tune callbacks run in the process that calls ``Tuner.fit`` and use plain bars (``tune_callback``).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

log = logging.getLogger("modpipe.progress")


@dataclass(frozen=True)
class Event:
    """Where one piece of work stands: ``completed`` of ``total`` (None: unknown), shown as ``description``."""

    key: str
    description: str
    completed: float
    total: float | None
    info: dict[str, Any] = field(default_factory=dict)
    finished: bool = False
    started: bool = False
    """The bar's first event (a new bar under this key)."""

    @property
    def last(self) -> bool:
        return self.finished or (self.total is not None and self.completed >= self.total)


class Sink(Protocol):
    def emit(self, event: Event) -> None: ...


def _info_text(info: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())


def _count(x: float | None) -> str:
    return "?" if x is None else f"{x:g}"


class LoggingSink:
    """Plain INFO lines: each event, but at most one per key every ``interval`` seconds; the last one always. A
    bar's start is logged only when something is done already (a resumed pass): the steps log what they start."""

    def __init__(self, interval: float = 5.0, logger: logging.Logger = log,
                 clock: Callable[[], float] = time.monotonic):
        self.interval, self.logger, self.clock = interval, logger, clock
        self._lock = threading.Lock()
        self._logged: dict[str, tuple[float, tuple]] = {}  # key -> (when, what) of its last line

    def emit(self, event: Event) -> None:
        what = (event.completed, event.total, tuple(event.info.items()))
        with self._lock:
            if event.started:
                self._logged.pop(event.key, None)
                if not event.completed:
                    return
            when, before = self._logged.get(event.key, (-math.inf, None))
            now = self.clock()
            if (now - when < self.interval and not event.last) or (event.last and what == before):
                return
            self._logged[event.key] = (now, what)
        line = f"{event.description}: {_count(event.completed)}/{_count(event.total)}"
        if event.total:
            line += f" ({100 * event.completed / event.total:.0f}%)"
        if event.info:
            line += " " + _info_text(event.info)
        # the text comes from task names and metrics; a log line never carries control characters
        self.logger.info("%s", "".join(c if c.isprintable() else "?" for c in line))


class RichSink:
    """Live ``rich.progress`` bars on ``console``, one per key, while used as a context manager."""

    def __init__(self, console):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn)

        self.progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[info]}", markup=False),
                                 console=console)
        self._ids: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> RichSink:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def emit(self, event: Event) -> None:
        with self._lock:
            fields = {"completed": event.completed, "total": event.total, "info": _info_text(event.info)}
            if event.key not in self._ids:
                self._ids[event.key] = self.progress.add_task(event.description, **fields)
            elif event.started:  # a new bar under a used key (transfer adapts a task per method): start over
                self.progress.reset(self._ids[event.key], description=event.description, **fields)
            else:
                self.progress.update(self._ids[event.key], description=event.description, **fields)
            if event.finished:
                self.progress.stop_task(self._ids[event.key])


_current: Sink = LoggingSink()
"""The one sink events go to. A plain module variable, not a context variable: Prefect task threads and Ray's
callback threads must see the sink the CLI installed."""


def current() -> Sink:
    return _current


@contextmanager
def use(sink: Sink) -> Iterator[Sink]:
    """``sink`` receives the events while the block runs; the previous sink afterwards."""
    global _current
    before, _current = _current, sink
    try:
        yield sink
    finally:
        _current = before


def in_ci(environ=os.environ) -> bool:
    return environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def shows_bars(console, environ=os.environ) -> bool:
    """Bars only on an interactive terminal outside CI; anywhere else (a pipe, a log file, a job) plain lines."""
    return bool(console.is_terminal and console.is_interactive and not in_ci(environ))


@contextmanager
def terminal_bars(console, environ=os.environ) -> Iterator[Sink | None]:
    """Show progress as bars on ``console`` while the block runs when ``shows_bars``; otherwise change nothing."""
    if not shows_bars(console, environ):
        yield None
        return
    with RichSink(console) as sink, use(sink):
        yield sink


def _emit_here(event: Event) -> None:
    current().emit(event)


class Task:
    """A handle on one bar; its events go to ``send`` (default: this process's current sink). ``info`` given once
    stays until given again. Picklable, so a callback in another process can carry it."""

    def __init__(self, key: str, total: float | None, description: str, completed: float = 0,
                 send: Callable[[Event], None] = _emit_here):
        self.key, self.total, self.description, self.completed = key, total, description, completed
        self.send = send
        self.info: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._send(started=True)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _send(self, info: dict[str, Any] | None = None, finished: bool = False, started: bool = False) -> None:
        self.info = {**self.info, **(info or {})}
        self.send(Event(self.key, self.description, self.completed, self.total, dict(self.info), finished, started))

    def advance(self, n: float = 1, **info: Any) -> None:
        with self._lock:
            self.completed += n
            self._send(info)

    def update(self, completed: float | None = None, total: float | None = None, **info: Any) -> None:
        with self._lock:
            self.completed = self.completed if completed is None else completed
            self.total = self.total if total is None else total
            self._send(info)

    def done(self, **info: Any) -> None:
        with self._lock:
            self._send(info, finished=True)


def task(key: str, total: float | None, description: str, completed: float = 0) -> Task:
    return Task(key, total, description, completed)


# ---------------------------------------------------------------- events from other Ray processes


class _Mailbox:
    """A Ray actor (one call at a time, in the order each caller sent them): events waiting to be taken."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def put(self, event: Event) -> None:
        self.events.append(event)

    def take(self) -> list[Event]:
        out, self.events = self.events, []
        return out


class _PostTo:
    """``send`` of a relayed bar. It waits for the mailbox to hold the event (an append: milliseconds), so an
    event sent before a run ends is there when the relay closes; a mailbox gone or stuck is given up on."""

    TIMEOUT_S = 10.0

    def __init__(self, mailbox) -> None:
        self.mailbox = mailbox

    def __call__(self, event: Event) -> None:
        import ray

        try:
            ray.get(self.mailbox.put.remote(event), timeout=self.TIMEOUT_S)
        except Exception as err:  # noqa: BLE001 - progress must never fail the training it reports on
            log.debug("progress event %s not relayed: %s", event.key, err)


class Relay:
    """Bars for other Ray processes: their events come back to this process's current sink (polled every
    ``poll_s``; the rest when the relay closes). Needs Ray to be initialised."""

    def __init__(self, poll_s: float = 0.5) -> None:
        import ray

        self.poll_s = poll_s
        self._mailbox = ray.remote(num_cpus=0)(_Mailbox).remote()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="modpipe-progress-relay", daemon=True)
        self._thread.start()

    def task(self, key: str, total: float | None, description: str) -> Task:
        return Task(key, total, description, send=_PostTo(self._mailbox))

    def _deliver(self) -> None:
        import ray

        for event in ray.get(self._mailbox.take.remote()):
            _emit_here(event)

    def _pump(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._deliver()
            except Exception as err:  # noqa: BLE001 - Ray going away ends the progress, not the run
                log.debug("progress relay stopped: %s", err)
                return

    def close(self) -> None:
        import ray

        self._stop.set()
        self._thread.join()
        try:
            self._deliver()
            ray.kill(self._mailbox)
        except Exception as err:  # noqa: BLE001
            log.debug("progress relay: %s", err)

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- Ray callbacks (ray imported only when used)


class _TrainReports:
    """Ray Train ``UserCallback`` mixin: each ``ray.train.report`` (all workers reported) moves ``bar`` to rank
    0's ``counter`` metric (``epoch``, ``step``), with its ``fields`` beside it."""

    def __init__(self, bar: Task, counter: str, fields: tuple[str, ...] = ()) -> None:
        self.bar, self.counter, self.fields = bar, counter, tuple(fields)

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        first = metrics[0] if metrics else {}
        if self.counter in first:
            self.bar.update(completed=first[self.counter], **{f: first[f] for f in self.fields if f in first})


def train_callback(bar: Task, counter: str, fields: tuple[str, ...] = ()):
    """A Ray Train callback for ``RunConfig(callbacks=[...])`` (see ``_TrainReports``); it runs in the run's
    controller, so ``bar`` should come from a ``Relay``."""
    from ray.train import UserCallback

    cls = type("TrainReportProgress", (_TrainReports, UserCallback), {"__module__": __name__})
    return cls(bar, counter, fields)


class _TuneTrials:
    """Ray Tune ``Callback`` mixin: ``bar`` counts the trials that finished (completed, stopped or failed), with
    the best ``metric`` reported so far (the highest; the lowest for RMSE, MAE, ECE)."""

    FINISHED = ("TERMINATED", "ERROR")

    def __init__(self, bar: Task, metric: str) -> None:
        self.bar, self.metric = bar, metric
        self.finished: set[str] = set()
        self.best: float | None = None

    def _show(self, trials: list) -> None:
        self.finished |= {t.trial_id for t in trials if t.status in self.FINISHED}  # a restored sweep's too
        best = {} if self.best is None else {f"best_{self.metric}": self.best}
        self.bar.update(completed=len(self.finished), **best)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            from modpipe.evaluate.problems import higher_is_better

            pick = max if higher_is_better(self.metric) else min
            self.best = value if self.best is None else pick(self.best, value)
        self._show(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self.finished.add(trial.trial_id)  # its status changes after this call
        self._show(trials)

    on_trial_error = on_trial_complete

    def on_experiment_end(self, trials: list, **info) -> None:
        self._show(trials)
        self.bar.done()


def tune_callback(bar: Task, metric: str):
    """A Ray Tune callback for ``RunConfig(callbacks=[...])`` (see ``_TuneTrials``)."""
    from ray.tune import Callback

    return type("TuneTrialProgress", (_TuneTrials, Callback), {"__module__": __name__})(bar, metric)
