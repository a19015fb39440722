"""The keeper restarts a component that exits on its own and stops with it on SIGTERM (real processes)."""

import signal
import subprocess
import sys
import time

import psutil


def test_a_command_that_exits_is_started_again_and_sigterm_ends_both(tmp_path):
    starts = tmp_path / "starts"
    # a component that runs 1 s and exits with an error, as the scheduler does without its database
    component = f"import time; open({str(starts)!r}, 'a').write('x'); time.sleep(1); raise SystemExit(3)"
    keeper = subprocess.Popen(
        [sys.executable, "-m", "mmsearch.stack.keeper", "demo", "--", sys.executable, "-c", component],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while (not starts.exists() or len(starts.read_text()) < 2) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(starts.read_text()) >= 2  # started again after it exited
    child = psutil.Process(keeper.pid).children()
    keeper.send_signal(signal.SIGTERM)
    assert keeper.wait(timeout=15) is not None
    psutil.wait_procs(child, timeout=10)
    assert not [p for p in child if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert "keeper: demo exited with 3; starting it again in 2 s" in keeper.stderr.read()
