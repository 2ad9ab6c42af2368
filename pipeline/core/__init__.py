"""The pure enrichment core: one Kafka message value in, a document and a span out.

Parsing (``formats``), extraction (``extract``), the enrichment chain
(``enrich``), documents (``document``), the batch stages (``process``), the
bulk request builder (``bulk``) and the OTLP span encoding (``span``,
``otlp``, ``otlp_wire``) are plain functions over plain data (``model``). They
import nothing outside this folder but the schemas: no Kafka, Faust, HTTP or
gRPC client, no clock, no environment.

This folder is exactly the compiled set: ``make native`` compiles every module
in it with mypyc (:mod:`pipeline.native` lists them from the folder). Package
``__init__`` files are never compiled, which is why the one class that must stay
interpreted lives here: ``ReadOnlyDict``. mypyc compiles a dict subclass into a
native class whose overrides the dict's C slots bypass, so a compiled
ReadOnlyDict would accept changes.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any


def wire_module() -> ModuleType | None:
    """The hand-written C writers (``_wire.c``: the usual span and document); None
    where they are not built, or where the plain-Python core is in use
    (``pipeline.native.prefer_sources``). ``otlp`` and ``document`` keep the Python
    paths that define what these write."""
    try:
        from pipeline.core import _wire
    except ImportError:
        return None
    return _wire


def read_module() -> ModuleType | None:
    """The hand-written C readers (``_read.c``: a flat JSON line, a client address);
    None as for ``wire_module``. ``formats.detect`` and ``formats.values`` keep the
    Python paths that define what these read."""
    try:
        from pipeline.core import _read
    except ImportError:
        return None
    return _read


def wire_function(name: str) -> Any:
    """``_wire.c``'s function ``name``, or None where ``wire_module`` is None. The caller
    keeps it in a typed ``Final`` and falls back to its Python definition on None."""
    wire = wire_module()
    return None if wire is None else getattr(wire, name)


def read_function(name: str) -> Any:
    """``_read.c``'s function ``name``, or None where ``read_module`` is None (as
    ``wire_function``)."""
    read = read_module()
    return None if read is None else getattr(read, name)


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
