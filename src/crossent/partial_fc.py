"""Alias of :mod:`crossent.margin.partial_fc` (the module's old path, kept for users):
margin heads with their classes sharded across ranks (Partial FC)."""

from .margin.partial_fc import *  # noqa: F401,F403
from .margin.partial_fc import __all__  # noqa: F401
