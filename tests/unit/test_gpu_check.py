"""`make gpu-check`'s time keeping, on CPU: a check that reaches its limit still reports what it finished."""

import os
import signal
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "benchmarks"))

import gpu_check  # noqa: E402

SLOW_BENCH = ("import time\n"
              "print('megagpt: step times 1.2 0.6 s, peak 41.3 GiB (40 s with start-up)', flush=True)\n"
              "try:\n    time.sleep(60)\n"
              "except KeyboardInterrupt:\n    print('interrupted', flush=True)\n    raise\n")


@pytest.mark.parametrize("sigint", ["default", "ignored by the shell that started make (a background job)"])
def test_a_check_at_its_limit_is_interrupted_and_keeps_its_output(sigint):
    before = signal.signal(signal.SIGINT, signal.SIG_IGN if sigint != "default" else signal.default_int_handler)
    try:
        output, status = gpu_check.run_check([sys.executable, "-c", SLOW_BENCH], dict(os.environ), limit_s=3)
    finally:
        signal.signal(signal.SIGINT, before)
    assert status == "TIMED OUT after 3 s"
    assert "interrupted" in output  # SIGINT first: pytest prints its failures so far
    assert gpu_check.table_lines("pretrain throughput", output) == [
        "megagpt: step times 1.2 0.6 s, peak 41.3 GiB (40 s with start-up)"]


def test_the_tests_row_names_each_failure_and_the_summary():
    output = ("....F.\nFAILED tests/gpu/test_a.py::test_x - AssertionError\n"
              "================ 1 failed, 5 passed in 12.0s ================\n")
    assert gpu_check.table_lines("tests/gpu", output) == [
        "FAILED tests/gpu/test_a.py::test_x - AssertionError",
        "================ 1 failed, 5 passed in 12.0s ================"]
