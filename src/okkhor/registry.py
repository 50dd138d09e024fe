"""Named choices of one config option: the names, their entries, and the one-line error for a name it lacks."""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Union

from okkhor.errors import OkkhorError


class Registry(dict):
    """name -> entry for the config key `key`; `check(name)` returns the entry or raises one clear OkkhorError.

    A new choice is one more entry; the config, the CLI and the builders all read the names from here.
    """

    def __init__(self, key: str, entries: Union[Mapping[str, Any], Iterable[tuple[str, Any]]] = ()):
        if not isinstance(key, str) or not key:
            raise TypeError(f"key must be a config key like 'train.schedule', got {key!r}")
        super().__init__(entries)
        self.key = key

    def check(self, name: Any) -> Any:
        """The entry of `name`; an unknown name is one line listing the valid ones."""
        if not isinstance(name, str) or name not in self:
            raise OkkhorError(f"config: bad value {name!r} for '{self.key}': expected one of {', '.join(self)}")
        return self[name]
