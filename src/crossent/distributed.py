"""Alias of :mod:`crossent.core.collectives` (the module's old path, kept for users):
the ``torch.distributed`` collectives, autograd conventions and agreement check that
every ``group=`` loss uses."""

from .core.collectives import *  # noqa: F401,F403
from .core.collectives import __all__  # noqa: F401
