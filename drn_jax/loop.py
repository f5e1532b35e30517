"""The training loop's parts, each with a name: the throughput meter, the one-step-late check of
the metrics, the stop signal, and saving on exit.

`drn_jax.training.train_and_evaluate` composes them; none of them touches the model or the data.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax

from drn_jax.errors import NonFiniteLossError
from drn_jax.reporting import format_duration

__all__ = ["StepChecker", "StopSignal", "Throughput", "check_finite", "saved_on_exit"]


class Throughput:
    """Images per second of the loop's steps, for the log lines and the summary.

    A step counts once its metrics are fetched (`completed`). The first one includes
    compilation, so the steady rate counts from its end. Time spent saving and validating
    (`paused`) counts in neither.

    Attributes:
      steady_step: the first completed step (``None`` before it).
      paused_seconds: the time spent inside `paused`.
    """

    def __init__(self, start_step: int, *, batch_size: int, total_steps: int):
        self.batch_size, self.total_steps = batch_size, total_steps
        self._window_step, self._window_start = start_step, time.perf_counter()
        self.steady_step: int | None = None
        self._steady_start: float | None = None
        self.paused_seconds = 0.0
        self._waited, self._waits = 0.0, 0

    def waited(self, seconds: float) -> None:
        """The loop waited `seconds` for one step's input."""
        self._waited += seconds
        self._waits += 1

    def completed(self, step: int) -> None:
        """Step `step`'s metrics have arrived."""
        if self.steady_step is None:
            self.steady_step, self._steady_start = step, time.perf_counter()

    def window(self, step: int) -> tuple[float, str, float]:
        """(images per second, ETA, milliseconds waited for input per step) since the last
        call or pause, ending at the completed step `step`; starts the next window."""
        now = time.perf_counter()
        rate = (step - self._window_step) * self.batch_size / max(now - self._window_start, 1e-9)
        eta = format_duration((self.total_steps - step) * self.batch_size / rate)
        # Near 0 when the input keeps up with the devices.
        wait_ms = 1000.0 * self._waited / max(self._waits, 1)
        self._waited, self._waits = 0.0, 0
        self._window_step, self._window_start = step, now
        return rate, eta, wait_ms

    @contextlib.contextmanager
    def paused(self, checked_step: int) -> Iterator[None]:
        """Time inside is not training time; the next window starts after it."""
        start = time.perf_counter()
        yield
        self._window_step, self._window_start = checked_step, time.perf_counter()
        self.paused_seconds += self._window_start - start

    def summary(self, checked_step: int) -> tuple[float | None, float]:
        """(steady images per second or ``None``, steady training seconds) up to now."""
        if self._steady_start is None:
            return None, 0.0
        seconds = time.perf_counter() - self._steady_start - self.paused_seconds
        images = (checked_step - self.steady_step) * self.batch_size
        return (images / seconds if images else None), seconds


def check_finite(step: int, metrics: Mapping[str, float]) -> None:
    """Raises `NonFiniteLossError` naming the non-finite metrics of `step`."""
    bad = [name for name, value in metrics.items() if not math.isfinite(value)]
    if bad:
        raise NonFiniteLossError(
            f"step {step}: non-finite {', '.join(bad)} ({', '.join(f'{n}={metrics[n]}' for n in bad)})")


class StepChecker:
    """The one-step-late check: the metrics of the step just dispatched are fetched after the
    next one is, so the host never waits for the devices to finish before dispatching.

    `check` waits for the pending step, stops on a non-finite metric, and logs every
    ``log_every`` steps through ``log(step, values, rate, eta)``. On several processes the
    pending step also carries the stop flag (`drn_jax.training.make_flag_reducer`): a
    signal any process received, which every process then learns at the same step.

    Attributes:
      checked_step: the last step whose metrics were checked (it may be saved).
      agreed_stop: the name of the signal some process received, once seen (several processes).
    """

    def __init__(self, start_step: int, meter: Throughput, *, log_every: int, total_steps: int,
                 log: Callable[[int, dict[str, float], float, str], None]):
        self.checked_step = start_step
        self.agreed_stop: str | None = None
        self._pending: tuple[int, Any, Any] | None = None
        self._meter, self._log_every, self._total, self._log = meter, log_every, total_steps, log

    def push(self, step: int, metrics: Any, flag: Any = None) -> None:
        """Step `step` was dispatched with these (device) metrics and stop flag."""
        self._pending = (step, metrics, flag)

    def check(self) -> None:
        """Checks and logs the pending step, if any."""
        if self._pending is None:
            return
        step, metrics, flag = self._pending
        fetched, flag = jax.device_get((metrics, flag))
        values = {name: float(value) for name, value in fetched.items()}
        if flag is not None and int(flag) and self.agreed_stop is None:
            self.agreed_stop = signal.Signals(int(flag)).name
        check_finite(step, values)
        self.checked_step, self._pending = step, None
        self._meter.completed(step)
        if step % self._log_every == 0 or step == self._total:
            rate, eta, wait_ms = self._meter.window(step)
            values["data_wait_ms"] = wait_ms
            self._log(step, values, rate, eta)


class StopSignal:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step (save, then exit)."""

    def __init__(self):
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. under some test runners)
                pass
        return self

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means now
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def saved_on_exit(checkpointer: Any, save: Callable[[], None], should_save: Callable[[], bool],
                  on_non_finite: Callable[[], None]) -> Iterator[None]:
    """Whatever ends the block (the last step, a signal, a crash), the last checked state is
    saved if `should_save` says it is new, and the checkpointer is closed.

    A non-finite loss saves nothing after the last good checkpoint: its `NonFiniteLossError`
    is re-raised with what was kept, after `on_non_finite` (which closes the logs).
    """
    try:
        try:
            yield
        finally:
            # A crash keeps the last good checkpoint: only checked states are saved.
            try:
                if should_save():
                    save()
            finally:
                checkpointer.close()
    except NonFiniteLossError as err:
        latest = checkpointer.latest_step()
        kept = (f"the last checkpoint, step {latest} in {checkpointer.directory}, is kept"
                if latest is not None else "no checkpoint was saved before it")
        on_non_finite()
        raise NonFiniteLossError(f"{err}; stopped without saving it: {kept}; lower learning_rate "
                                 "or check the data") from None
