"""Several tuning workers on one Optuna study (one machine or many, sharing a storage).

- Heartbeats: while a worker measures a trial, a thread writes the time into the trial
  (system attribute `scalelab_heartbeat`: [unix time, trial number]) every `heartbeat_s`. One mechanism for every
  storage: Optuna's own heartbeat (`heartbeat_interval` / `grace_period`) exists only in
  RDBStorage; Optuna 5's JournalStorage has none.
- A RUNNING trial whose last beat (or start) is older than `grace_s` belongs to a dead
  worker: it is failed and, with Optuna's `RetryHeartbeatStaleTrialCallback`, queued again
  (WAITING, same parameters) for any worker to pick up. A trial whose worker is alive beats
  and is never touched; `search.py` finishes a trial that another worker failed anyway
  (machine suspended past the grace period) without crashing.
- `in_flight`: the live RUNNING trials, which `--trials N` counts so that all workers
  together measure N trials.

The clocks of the workers' machines must agree to well within `grace_s` (NTP does).
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

HEARTBEAT_ATTR = "scalelab_heartbeat"


def last_beat(trial) -> float:
    """Unix time of a trial's last sign of life: its newest heartbeat, or its start before
    the first beat. A beat is [time, trial number]: a retried trial inherits the dead
    trial's attributes, and an inherited beat is not its own."""
    beat = trial.system_attrs.get(HEARTBEAT_ATTR)
    if isinstance(beat, list) and len(beat) == 2 and beat[1] == trial.number:
        return float(beat[0])
    return trial.datetime_start.timestamp() if trial.datetime_start else 0.0


def _running(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def stale_trials(study, grace_s: float, now: float | None = None) -> list:
    now = time.time() if now is None else now
    return [t for t in _running(study) if now - last_beat(t) > grace_s]


def in_flight(study, grace_s: float, exclude: int | None = None) -> list:
    """RUNNING trials of live workers (beat within grace_s), except trial number `exclude`."""
    now = time.time()
    return [t for t in _running(study) if now - last_beat(t) <= grace_s and t.number != exclude]


def fail_stale(study, grace_s: float, retries: int, log: Callable[[str], None] = lambda m: None) -> int:
    """Fail the trials of dead workers; queue each again unless retried `retries` times.
    Returns how many this call failed (another worker may have done it first)."""
    import warnings

    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage  # noqa: SLF001 - the storage this study object writes to
    n = 0
    for t in stale_trials(study, grace_s):
        age = time.time() - last_beat(t)
        try:
            if not storage.set_trial_state_values(t._trial_id, TrialState.FAIL):  # noqa: SLF001
                continue
        except UpdateFinishedTrialError:
            continue  # its worker finished it after all, or another worker failed it first
        n += 1
        frozen = storage.get_trial(t._trial_id)  # noqa: SLF001
        history = frozen.system_attrs.get("retry_history", [])
        again = retries > len(history)
        if again:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=retries)(study, frozen)
        log(f"note: trial #{t.number} had no heartbeat for {age:.0f} s (its worker stopped): failed"
            + (", queued again" if again else f", not retried again ({len(history)} retries)"))
    return n


class Heartbeat:
    """`with Heartbeat(study, trial, interval_s):` beats for `trial` while the block runs."""

    def __init__(self, study, trial, interval_s: float):
        self.storage = study._storage  # noqa: SLF001
        self.trial_id = trial._trial_id  # noqa: SLF001
        self.number = trial.number
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False  # another worker failed this trial (UpdateFinishedTrialError)

    def beat(self) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        try:
            self.storage.set_trial_system_attr(self.trial_id, HEARTBEAT_ATTR, [time.time(), self.number])
        except UpdateFinishedTrialError:
            self.lost = True
            self._stop.set()
        except Exception:  # noqa: BLE001 - a transient storage error: the next beat tries again
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()

    def __enter__(self) -> "Heartbeat":
        self.beat()
        self._thread = threading.Thread(target=self._run, name="tune-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
