"""Stop a training cleanly on SIGTERM (a scheduler, ``kill``) and SIGINT (Ctrl-C).

Python's defaults differ for the two: SIGTERM ends the process at once, without running any
``finally`` (a save in progress leaves its temporary file of up to a checkpoint's size, and
nothing reaches log.txt); SIGINT raises KeyboardInterrupt. Within :func:`stop_on_signals` both
raise :class:`TrainingInterrupted` in the main thread, wherever it is: a save in progress removes
its temporary file on the way out (``atomic_files.write_atomically``), the trainer's hooks close
the metric writers, and the caller logs the signal and the last complete checkpoint and exits
with the conventional status 128 + signal number. A second signal ends the process at once.
"""
import contextlib
import signal
import threading
from typing import Iterator, Sequence

__all__ = ["TrainingInterrupted", "stop_on_signals"]


class TrainingInterrupted(KeyboardInterrupt):
    """A SIGTERM or SIGINT arrived. A KeyboardInterrupt, so that ``except Exception`` blocks
    (detectron2's training loop) let it through, as they let Ctrl-C through."""

    def __init__(self, signum: int):
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(self.signal_name)

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by this signal: 128 + its number."""
        return 128 + self.signum


@contextlib.contextmanager
def stop_on_signals(signums: Sequence[int] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """Within the block, the first of ``signums`` raises :class:`TrainingInterrupted` in the
    main thread and the next one gets the default action (the process ends at once). Outside
    the main thread, where Python cannot set handlers, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        for other in signums:
            signal.signal(other, signal.SIG_DFL)
        raise TrainingInterrupted(signum)

    previous = {signum: signal.signal(signum, interrupt) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if handler is not None:  # None: set outside Python, cannot be restored from here
                signal.signal(signum, handler)
