"""The master's intake, shared with a forked worker as gunicorn shares it."""

import multiprocessing
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
