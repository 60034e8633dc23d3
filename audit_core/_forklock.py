"""A fresh ``_lock`` for every registered object in a forked child, from one at-fork handler.

A fork while another thread holds an object's ``threading.Lock`` copies the lock held into a
child where no thread will ever release it: the child's next ``with obj._lock`` hangs (a hook
past any budget, a ledger append, a flush). Objects register once, weakly (instances come and
go; a handler registered with :func:`os.register_at_fork` stays for the process's life).

>>> import threading
>>> class Holder:
...     def __init__(self) -> None:
...         self._lock = threading.Lock()
...         renew_after_fork(self)
>>> holder = Holder()
>>> holder in _OWNERS
True
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

__all__ = ["renew_after_fork"]

_OWNERS: weakref.WeakSet[Any] = weakref.WeakSet()


def renew_after_fork(owner: object) -> None:
    """Give ``owner._lock`` a new, free ``threading.Lock`` in every child this process forks."""
    _OWNERS.add(owner)


def _renew() -> None:
    for owner in list(_OWNERS):
        owner._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew)
