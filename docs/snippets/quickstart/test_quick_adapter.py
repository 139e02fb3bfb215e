"""The quickstart's adapter passes the suite, run as the page shows it (`taskbed conform`)."""

import os
import subprocess
import sysconfig
from pathlib import Path

HERE = Path(__file__).parent
TASKBED = Path(sysconfig.get_path("scripts")) / "taskbed"


def test_the_in_memory_adapter_conforms(tmp_path):
    report = tmp_path / "report.md"
    argv = [TASKBED, "conform", "--impl", "quick_adapter:make", "--format", "markdown"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the page sets none
    done = subprocess.run(
        [*argv, "-o", report], cwd=HERE, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr  # 1 when a MUST rule fails
    text = report.read_text()
    summary = text.splitlines()[2]
    assert summary.startswith("MUST: ")
    assert " 0 failed" in summary
    assert "| skipped | needs capabilities ['restart'] |" in text
