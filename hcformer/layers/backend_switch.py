"""A process-wide choice among the implementations ("backends") of one computation.

The clustering primitive (``local_clustering``) and DCNv2 (``deform_conv``) each have a readable
definition and a faster implementation of the same values; benchmarks, exporters and tests pick
one by name, never by patching a function::

    switch = BackendSwitch("local clustering", ("auto", "reference", "blocked", "unfold"), default="auto")
    switch.selected            # "auto"
    with switch.use("reference"):
        ...                    # computed with the reference definition
"""
import contextlib
from typing import Iterator, Sequence

__all__ = ["BackendSwitch"]


class BackendSwitch:
    """The selected one of ``names`` (``default`` at first), for the computation ``what``."""

    def __init__(self, what: str, names: Sequence[str], default: str):
        self.what, self.names = what, tuple(names)
        self.selected = default
        self.set(default)  # the default must be one of the names too

    def set(self, name: str) -> str:
        """Select ``name`` from now on; returns the previous selection."""
        if name not in self.names:
            raise ValueError(f"unknown {self.what} backend {name!r}; choose from {list(self.names)}")
        previous, self.selected = self.selected, name
        return previous

    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[None]:
        """Select ``name`` for the ``with`` block, then restore the previous selection."""
        previous = self.set(name)
        try:
            yield
        finally:
            self.set(previous)
