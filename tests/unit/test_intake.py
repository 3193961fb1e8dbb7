"""The master's intake, shared with a forked worker as gunicorn shares it."""

import multiprocessing
import os
import random
import signal
import time

from messages_svc.consumer import POLL_TIMEOUT
from servicekit.gunicorn_hooks import INTAKE_CLOSE_TIMEOUT, Intake

FORK = multiprocessing.get_context("fork")


def hold_one_take(intake: Intake, taking, seconds: float) -> None:
    with intake.taking() as is_open:
        assert is_open
        taking.set()
        time.sleep(seconds)


def test_close_waits_for_a_take_in_progress_in_a_forked_worker():
    intake = Intake()
    taking = FORK.Event()
    worker = FORK.Process(target=hold_one_take, args=(intake, taking, 0.5))
    worker.start()
    try:
        assert taking.wait(10)
        started = time.monotonic()
        assert intake.close(timeout=5)
        assert time.monotonic() - started >= 0.3, "close returned while the worker was still taking"
    finally:
        worker.join(10)
    assert worker.exitcode == 0


def test_a_closed_intake_refuses_takes_in_every_process():
    intake = Intake()
    assert intake.close(timeout=1)
    with intake.taking() as is_open:
        assert not is_open
    child = FORK.Process(target=_expect_closed, args=(intake,))
    child.start()
    child.join(10)
    assert child.exitcode == 0


def _expect_closed(intake: Intake) -> None:
    with intake.taking() as is_open:
        if is_open:
            raise SystemExit(1)


def test_close_gives_up_after_its_timeout_and_says_so():
    intake = Intake()
    with intake.taking():
        assert intake.close(timeout=0.1) is False


def test_a_poll_in_progress_ends_before_the_master_stops_waiting():
    assert POLL_TIMEOUT < INTAKE_CLOSE_TIMEOUT


def _take_and_wait(intake: Intake, taking) -> None:
    with intake.taking() as is_open:
        assert is_open
        taking.set()
        time.sleep(60)


def test_a_worker_killed_inside_a_take_does_not_hold_the_intake_open():
    intake = Intake()
    taking = FORK.Event()
    worker = FORK.Process(target=_take_and_wait, args=(intake, taking))
    worker.start()
    try:
        assert taking.wait(10)
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(10)
        started = time.monotonic()
        assert intake.close(timeout=3), "the killed worker's take still counts"
        assert time.monotonic() - started < 1
    finally:
        worker.kill()


def _take_forever(intake: Intake, started) -> None:
    started.set()
    while True:
        with intake.taking():
            pass


def _take_once(intake: Intake) -> None:
    with intake.taking() as is_open:
        if not is_open:
            raise SystemExit(1)


def test_workers_killed_at_any_moment_of_a_take_never_leave_the_intake_stuck():
    # A worker killed while it held a lock shared with the others (the intake's multiprocessing Condition)
    # left it held for good: every later take, in every worker, waited on it forever.
    intake = Intake()
    rng = random.Random(18)
    for kill in range(20):
        started = FORK.Event()
        spinning = FORK.Process(target=_take_forever, args=(intake, started))
        spinning.start()
        assert started.wait(10)
        time.sleep(rng.uniform(0.001, 0.02))
        os.kill(spinning.pid, signal.SIGKILL)
        spinning.join(10)
        after = FORK.Process(target=_take_once, args=(intake,))
        after.start()
        after.join(5)
        stuck = after.exitcode is None
        after.kill()
        assert not stuck, f"a take after kill {kill + 1} waited more than 5 s"
        assert after.exitcode == 0
    started_closing = time.monotonic()
    assert intake.close(timeout=3)
    assert time.monotonic() - started_closing < 1
