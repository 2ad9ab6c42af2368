"""A dict that refuses changes, shared between events.

Its own module, kept out of the compiled core (:mod:`pipeline.native`): mypyc
compiles a dict subclass into a native class whose overrides the dict's C
slots bypass, so a compiled ReadOnlyDict would accept changes.
"""

from __future__ import annotations

from typing import Any


class ReadOnlyDict(dict[str, str]):
    """A dict that refuses changes, for maps shared between events: the empty
    default of the record's and the enrichment's name -> value maps (building a
    record then creates no dicts it does not fill), and memoised query args.
    Code that adds entries assigns a new dict instead."""

    __slots__ = ()

    def __hash__(self) -> int:  # type: ignore[override]  # consistent with ==; a dataclass default
        return len(self)

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a shared read-only dict: assign a new dict instead of changing it")

    def __reduce__(self) -> tuple[Any, ...]:
        # copy, deepcopy and pickle rebuild it whole (the default fills it item by item).
        return (ReadOnlyDict, (dict(self),))

    __setitem__ = __delitem__ = update = setdefault = pop = popitem = clear = _refuse  # type: ignore[assignment]
    __ior__ = _refuse  # type: ignore[assignment]
