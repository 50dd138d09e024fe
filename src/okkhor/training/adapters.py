"""The private parts of ignite and torch the trainer relies on, each pinned by a test that fails on a change."""
from __future__ import annotations

from typing import Any, Sequence

# The tests that pin these: tests/test_checkpoint.py (test_adapter_*).

# ---------------------------------------------------------------------------------------------- ignite

def checkpoint_items(checkpoint: Any) -> list[tuple[float, str]]:
    """The (priority, file name) pairs an ignite `Checkpoint` keeps, through its documented `state_dict()`.

    That dict has one entry, the list of pairs, whose key is the library's attribute name (`_saved` in ignite 0.5,
    `saved` on its main branch): read whatever it is called.
    """
    state = checkpoint.state_dict()
    if len(state) != 1:
        raise TypeError(f"ignite Checkpoint.state_dict() has {sorted(state)}, expected one list of saved files")
    (items,) = state.values()
    return [(float(priority), str(name)) for priority, name in items]


def set_checkpoint_items(checkpoint: Any, items: Sequence[Sequence[Any]]) -> None:
    """Make an ignite `Checkpoint` keep `items` ((priority, file name) pairs) through its documented
    `load_state_dict()`, under the key its `state_dict()` uses."""
    (key,) = checkpoint.state_dict().keys()
    checkpoint.load_state_dict({key: [(priority, name) for priority, name in items]})


# ---------------------------------------------------------------------------------------------- torch

def end_workers(loader: Any) -> None:
    """End a DataLoader's persistent worker processes now rather than when the loader is collected.

    torch has no public call for it: a persistent loader keeps its worker iterator in `_iterator`, and dropping
    that reference shuts the workers down (the iterator's `__del__`). A loader without workers has none.
    """
    if getattr(loader, "persistent_workers", False):
        loader._iterator = None
