"""The test harness's forking server (tests/zygote.py) answers as subprocess does, however fast a command ends."""

import json
import os
import time

from tests.zygote import Zygote


def test_a_command_that_ends_before_its_pid_is_read_is_still_answered(tmp_path):
    """The {"pid"} and {"code"} lines can reach the pipe together (the reading thread descheduled while the command runs):
    both must be answered, none held in a reader's buffer where select does not see it (146 rows of
    tests/test_mistakes.py once timed out so, with ProcessLookupError)."""
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(tmp_path)}
    (tmp_path / "quick.py").write_text("import sys\nsys.exit(3)\n")
    zygote = Zygote(preload=())
    try:
        assert zygote.run("quick", [], tmp_path, env, 60, env).returncode == 3  # the zygote is up
        out = zygote.streams / "late"
        request = {"module": "quick", "argv": [], "cwd": str(tmp_path), "env": env, "out": str(out), "err": str(out)}
        zygote.process.stdin.write(json.dumps(request) + "\n")
        zygote.process.stdin.flush()
        time.sleep(2)  # the command has ended and both lines wait in the pipe
        assert "pid" in zygote._answer(10)
        assert zygote._answer(10)["code"] == 3
        assert zygote.run("quick", [], tmp_path, env, 60, env).returncode == 3  # and it goes on answering in step
    finally:
        zygote.close()
