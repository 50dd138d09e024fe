"""Named choices of one config option: the names, their entries, and the one-line error for a name it lacks."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Optional, Union

from okkhor.errors import OkkhorError


class Registry(dict):
    """name -> entry for the config key `key`; `check(name)` returns the entry or raises one clear OkkhorError.

    A new choice is one more entry; the config, the CLI and the builders all read the names from here. Names that
    a library owns (timm's optimizers, activations) come from `more`, a function called once, on the first look-up
    of a name the fixed entries lack, so that checking a fixed name loads no library.
    """

    def __init__(self, key: str, entries: Union[Mapping[str, Any], Iterable[tuple[str, Any]]] = (),
                 more: Optional[Callable[[], Iterable[str]]] = None):
        if not isinstance(key, str) or not key:
            raise TypeError(f"key must be a config key like 'train.schedule', got {key!r}")
        if more is not None and not callable(more):
            raise TypeError(f"more must be a function returning names, got {type(more).__name__}")
        super().__init__(entries)
        self.key = key
        self._more = more

    def load(self) -> "Registry":
        """Add the library's names (once); returns self."""
        if self._more is not None:
            more, self._more = self._more, None
            for name in more():
                self.setdefault(name, name)
        return self

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, name) or (self._more is not None and dict.__contains__(self.load(), name))

    def __iter__(self):
        return dict.__iter__(self.load())

    def check(self, name: Any) -> Any:
        """The entry of `name`; an unknown name is one line listing the valid ones."""
        if not isinstance(name, str) or name not in self:
            raise OkkhorError(f"config: bad value {name!r} for '{self.key}': expected one of {', '.join(self)}")
        return self[name]
