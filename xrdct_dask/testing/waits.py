"""Waiting in tests for a condition, never for a time: what a loaded machine makes slower is
waited for until it holds, within a deadline that fails the test with what was awaited."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout_s: float = 60.0, what: str = "the condition",
               poll_s: float = 0.01) -> T:
    """``condition()``'s first true value, polled every ``poll_s``; AssertionError naming ``what``
    when it is still false after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g} s")
        time.sleep(poll_s)
    return value
