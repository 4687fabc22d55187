"""Stop a training cleanly on SIGTERM (a scheduler, ``kill``) and SIGINT (Ctrl-C).

Python's defaults differ for the two: SIGTERM ends the process at once, without running any
``finally`` (a save in progress leaves its temporary file of up to a checkpoint's size, and
nothing reaches log.txt); SIGINT raises KeyboardInterrupt. Within :func:`stop_on_signals` both
raise :class:`TrainingInterrupted` in the main thread, wherever it is: a save in progress removes
its temporary file on the way out (``atomic_files.write_atomically``), the trainer's hooks close
the metric writers, and the caller logs the signal and the last complete checkpoint and exits
with the conventional status 128 + signal number. A second signal ends the process at once.
A signal sent to the whole process group (a scheduler's SIGTERM, Ctrl-C) reaches the DataLoader
workers too; once the first signal has arrived, their deaths are expected, and PyTorch's SIGCHLD
handler, which would raise each one as a RuntimeError in the main thread (replacing the
TrainingInterrupted on its way out, or as a traceback at exit), is reset for the rest of the
process.

A process forked within the block (a ``multiprocessing.Pool`` worker of panopticapi's PQ, a
DataLoader worker) acts on a signal as it would have before the block. Python runs a handler only
between bytecodes, so a signal that arrives just before a worker blocks on a lock is held until
the lock is released, which may be never: ``Pool.terminate`` stops its workers with SIGTERM and
then waits for them, and with the handler inherited it waited forever for one such worker (a
training's final panoptic evaluation hung on exit). The default action ends the worker wherever
it is, as ``multiprocessing`` expects.
"""
import contextlib
import os
import signal
import threading
from typing import Callable, Dict, Iterator, Sequence, Union

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


# signal number -> the handler it had before the active stop_on_signals block; empty outside one
_handlers_before_block: Dict[int, Union[Callable, int]] = {}


def _restore_handlers_before_block() -> None:
    """The handlers of before the block: at its end, and in a child forked within it."""
    for signum, handler in _handlers_before_block.items():
        signal.signal(signum, handler)


os.register_at_fork(after_in_child=_restore_handlers_before_block)


@contextlib.contextmanager
def stop_on_signals(signums: Sequence[int] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """Within the block, the first of ``signums`` raises :class:`TrainingInterrupted` in the
    main thread and the next one gets the default action (the process ends at once); SIGCHLD
    gets it from the first one on, for good. Processes forked within the block keep the
    handlers of before it. Outside the main thread, where Python cannot set handlers, nothing
    changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    block_process = os.getpid()

    def interrupt(signum, frame):
        if os.getpid() != block_process:  # a child forked a moment ago, before its fork hooks ran
            _restore_handlers_before_block()
            signal.raise_signal(signum)
            return
        for other in signums:
            signal.signal(other, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the workers may end by the same signal
        raise TrainingInterrupted(signum)

    previous = {signum: signal.signal(signum, interrupt) for signum in signums}
    # None: a handler set outside Python, which cannot be restored from here
    _handlers_before_block.update((signum, handler) for signum, handler in previous.items() if handler is not None)
    try:
        yield
    finally:
        _restore_handlers_before_block()
        _handlers_before_block.clear()
