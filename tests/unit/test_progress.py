"""Progress events (``modpipe.progress``): log lines for jobs and CI, rich bars on a terminal, and the Ray Train /
Ray Tune callbacks that turn their real callback arguments into events."""

from __future__ import annotations

import io
import logging
import threading

import pytest
from rich.console import Console

from modpipe import progress


class Recorder:
    """A sink that keeps every event (thread-safe: relayed events arrive on the relay's thread)."""

    def __init__(self):
        self.events: list[progress.Event] = []
        self.lock = threading.Lock()

    def emit(self, event: progress.Event) -> None:
        with self.lock:
            self.events.append(event)

    def of(self, key: str) -> list[progress.Event]:
        return [e for e in self.events if e.key == key]


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "modpipe.progress"]


def test_logging_sink_rate_limits_each_key_and_always_logs_the_last(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="modpipe.progress")
    with progress.use(progress.LoggingSink(interval=5.0, clock=clock)):
        bar = progress.task("curate/normalize", 4, "curate normalize (shards)")  # the start: not logged
        other = progress.task("pretrain", 80, "pretrain (steps)")
        bar.advance()  # the first: logged
        clock.now += 1
        bar.advance()  # within 5 s of its last line: dropped
        other.update(completed=40, loss=2.5)  # another key keeps its own time
        clock.now += 1
        other.update(completed=50, loss=2.0)  # dropped
        clock.now += 4
        bar.advance()  # 6 s after its last line: logged
        clock.now += 1
        bar.advance()  # the last (4/4): always
        bar.done()  # the same as its last line: not repeated
        other.done()  # finished: always, with the last info it had
    assert _lines(caplog) == ["curate normalize (shards): 1/4 (25%)",
                              "pretrain (steps): 40/80 (50%) loss=2.5",
                              "curate normalize (shards): 3/4 (75%)",
                              "curate normalize (shards): 4/4 (100%)",
                              "pretrain (steps): 50/80 (62%) loss=2"]


def test_logging_sink_logs_finished_bar_once_and_without_control_characters(caplog):
    caplog.set_level(logging.INFO, logger="modpipe.progress")
    with progress.use(progress.LoggingSink(interval=60.0, clock=Clock())):
        bar = progress.task("tune/t", 3, "tune \x1b[31mevil\x1b[0m (trials)")
        bar.update(completed=1, best_val_macro_f1=0.5)
        bar.update(completed=2, best_val_macro_f1=0.75)  # within the interval: dropped
        bar.done()  # unfinished but done (a failed task, a sweep that ended): logged with its last info
    lines = _lines(caplog)
    assert lines == ["tune ?[31mevil?[0m (trials): 1/3 (33%) best_val_macro_f1=0.5",
                     "tune ?[31mevil?[0m (trials): 2/3 (67%) best_val_macro_f1=0.75"]
    assert all(c.isprintable() for line in lines for c in line)


def test_default_sink_is_logging_and_use_restores_it():
    before = progress.current()
    assert isinstance(before, progress.LoggingSink)
    rec = Recorder()
    with progress.use(rec):
        assert progress.current() is rec
        progress.task("k", 2, "d").advance(x=1.5)
    assert progress.current() is before
    assert [(e.completed, e.info) for e in rec.events] == [(0, {}), (1, {"x": 1.5})]


def test_rich_sink_renders_bars_on_a_terminal():
    console = Console(record=True, force_terminal=True, width=120, file=io.StringIO())
    with progress.terminal_bars(console, environ={}) as sink:
        assert isinstance(sink, progress.RichSink) and progress.current() is sink
        first = progress.task("adapt/doc_kind", 3, "adapt doc_kind (epochs)")
        second = progress.task("adapt/doc_module", 3, "adapt doc_module (epochs)")
        first.update(completed=3, train_loss=0.25, val_macro_f1=0.8125)
        second.update(completed=1)
    assert isinstance(progress.current(), progress.LoggingSink)  # removed after the run
    text = console.export_text()
    assert "adapt doc_kind (epochs)" in text and "3/3" in text and "val_macro_f1=0.8125" in text
    assert "adapt doc_module (epochs)" in text and "1/3" in text
    assert "━" in text  # a bar, not a log line


@pytest.mark.parametrize("terminal,environ", [(False, {}), (True, {"CI": "true"}), (True, {"CI": "1"})])
def test_no_bars_without_a_terminal_or_in_ci(terminal, environ, caplog):
    caplog.set_level(logging.INFO, logger="modpipe.progress")
    out = io.StringIO()
    console = Console(record=True, force_terminal=terminal, file=out)
    with progress.terminal_bars(console, environ=environ) as sink:
        assert sink is None and isinstance(progress.current(), progress.LoggingSink)
        bar = progress.task("pretrain", 2, "pretrain (steps)")
        bar.update(completed=2, loss=1.0)
    assert out.getvalue() == ""  # nothing drawn
    assert _lines(caplog) == ["pretrain (steps): 2/2 (100%) loss=1"]
    assert progress.shows_bars(Console(force_terminal=True, file=io.StringIO()), {"CI": "false"})


def test_train_callback_turns_reports_into_events():
    import ray.cloudpickle
    from ray.train import DataConfig, RunConfig, ScalingConfig, UserCallback
    from ray.train.torch import TorchConfig
    from ray.train.v2._internal.execution.context import TrainRunContext

    rec = Recorder()
    with progress.use(rec):
        bar = progress.task("adapt/doc_kind", 2, "adapt doc_kind (epochs)")
        callback = progress.train_callback(bar, "epoch", ("train_loss", "val_macro_f1"))
        assert isinstance(callback, UserCallback)
        RunConfig(name="x", callbacks=[callback])  # accepted where the trainer takes it
        # Ray ships the callback to the run's controller: it must survive Ray's pickling
        shipped = ray.cloudpickle.loads(ray.cloudpickle.dumps(callback))
        context = TrainRunContext(run_config=RunConfig(name="x"), train_loop_config=None,
                                  scaling_config=ScalingConfig(num_workers=2), backend_config=TorchConfig(),
                                  dataset_config=DataConfig())
        rank = {"epoch": 1, "train_loss": 0.5, "val_macro_f1": 0.625, "val_accuracy": 0.7}
        shipped.after_report(run_context=context, metrics=[rank, {**rank, "train_loss": 9.0}], checkpoint=None)
        shipped.after_report(run_context=context, metrics=[{"no_epoch": 1}], checkpoint=None)  # ignored
        shipped.after_report(run_context=context, metrics=[{**rank, "epoch": 2, "train_loss": 0.25}],
                             checkpoint=None)
    events = rec.of("adapt/doc_kind")
    assert [(e.completed, e.total) for e in events] == [(0, 2), (1, 2), (2, 2)]
    assert events[1].info == {"train_loss": 0.5, "val_macro_f1": 0.625}  # rank 0's, only the asked fields
    assert events[2].info["train_loss"] == 0.25 and events[2].last


def test_tune_callback_counts_finished_trials_with_the_best_metric():
    import ray.cloudpickle
    from ray.tune import Callback
    from ray.tune.experiment import Trial

    rec = Recorder()
    trials = [Trial("__fake", trial_id=f"t{i}", stub=True) for i in range(3)]
    with progress.use(rec):
        callback = progress.tune_callback(progress.task("tune/doc_kind", 3, "tune doc_kind (trials)"),
                                          "val_macro_f1")
        assert isinstance(callback, Callback)
        callback = ray.cloudpickle.loads(ray.cloudpickle.dumps(callback))  # Tune keeps it in tuner.pkl
        callback.on_trial_result(iteration=1, trials=trials, trial=trials[0], result={"val_macro_f1": 0.5})
        callback.on_trial_result(iteration=2, trials=trials, trial=trials[1], result={"val_macro_f1": 0.75})
        callback.on_trial_complete(iteration=3, trials=trials, trial=trials[1])
        callback.on_trial_result(iteration=4, trials=trials, trial=trials[0], result={"val_macro_f1": float("nan")})
        trials[1].set_status(Trial.TERMINATED)
        callback.on_trial_error(iteration=5, trials=trials, trial=trials[2])
        trials[2].set_status(Trial.ERROR)
        callback.on_trial_complete(iteration=6, trials=trials, trial=trials[0])
        callback.on_experiment_end(trials=trials)
    events = rec.of("tune/doc_kind")
    assert [e.completed for e in events] == [0, 0, 0, 1, 1, 2, 3, 3, 3]
    assert events[1].info == {"best_val_macro_f1": 0.5} and events[-1].info == {"best_val_macro_f1": 0.75}
    assert events[-1].finished and not any(e.finished for e in events[:-1])


def test_relay_brings_events_from_another_ray_process(ray_local):
    def post_epochs(bar: progress.Task, epochs: int) -> int:  # local: shipped by value (tests are no package)
        for epoch in range(1, epochs + 1):
            bar.update(completed=epoch, train_loss=1.0 / epoch)
        return epochs

    rec = Recorder()
    with progress.use(rec):
        with progress.Relay(poll_s=0.1) as relay:
            bar = relay.task("remote", 3, "remote (epochs)")
            assert ray_local.get(ray_local.remote(num_cpus=0)(post_epochs).remote(bar, 3)) == 3
    assert [(e.completed, e.info) for e in rec.of("remote")] == [
        (0, {}), (1, {"train_loss": 1.0}), (2, {"train_loss": 0.5}), (3, {"train_loss": 1 / 3})]


@pytest.mark.slow
def test_adapt_reports_every_epoch_of_every_task_from_the_driver(tmp_path, ray_local):
    """A real (tiny) adapt run: each task's Ray Train controller reports its epochs to this process's sink."""
    from test_adapt import adapt_cfg, make_backbone, make_tasks  # tests/unit is on sys.path

    from modpipe import adapt

    backbone = make_backbone(tmp_path / "model")
    make_tasks(tmp_path / "tasks")
    cfg = adapt_cfg(tmp_path / "run", ["doc_kind"], epochs=2)
    rec = Recorder()
    with progress.use(rec):
        out = adapt.train_tasks(cfg, str(backbone), str(tmp_path / "tasks"))
    assert set(out["modules"]) == {"doc_kind"}
    events = rec.of("adapt/doc_kind")
    assert [(e.completed, e.total) for e in events] == [(0, 2), (1, 2), (2, 2)]
    assert {"train_loss", "val_macro_f1"} <= set(events[-1].info) and events[-1].last
