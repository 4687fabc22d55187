"""Run by tests/test_output_dir.py in a subprocess (not a test module): ``train_net.py`` that
stops itself (SIGSTOP) in the middle of saving the checkpoint of one iteration, once its data
is in the temporary file and before the rename.

    python tests/pausing_train_net.py --pause-at-iteration 3 <train_net.py arguments>

The test waits until the process is stopped (``os.waitpid(pid, os.WUNTRACED)``), does what it
tests while the temporary file is there (another run in the same directory, a signal), and
lets the process go on with SIGCONT: a deterministic stand-in for a save that is slow or
caught at the wrong moment.
"""
import os
import signal
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import hcformer  # noqa: E402,F401
from hcformer.engine.command_line import run  # noqa: E402


def pause_in_the_save_of(iteration: int) -> None:
    """Make the first ``torch.save`` of a checkpoint of ``iteration`` stop this process after
    writing."""
    save = torch.save
    paused = False

    def save_then_stop(obj, f, *args, **kwargs):
        nonlocal paused
        save(obj, f, *args, **kwargs)
        if not paused and isinstance(obj, dict) and obj.get("iteration") == iteration:
            paused = True
            f.flush()
            os.kill(os.getpid(), signal.SIGSTOP)

    torch.save = save_then_stop


if __name__ == "__main__":
    argv = sys.argv[1:]
    position = argv.index("--pause-at-iteration")
    pause_in_the_save_of(int(argv[position + 1]))
    run(argv[:position] + argv[position + 2:])
