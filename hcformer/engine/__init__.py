"""Training / evaluation plumbing shared by train_net.py and the tools.

``hcformer.engine.trainer.Trainer`` is imported from its module: it pulls in the data and
evaluation packages, which ``setup`` does not need.
"""
from .setup import setup

__all__ = ["setup"]
