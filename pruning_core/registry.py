"""One registry type for every table of the library: op rules, twin ops and criteria.

A dict that refuses a second entry under a name it holds: two modules registering the same op or
criterion is a bug to hear about at import, not a silent overwrite (as in TensorRT Model Optimizer's
registries). ``defer`` lets a module that needs heavy imports (torch) register on the first lookup
of one of its names."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

V = TypeVar("V")


class Registry(dict[str, V]):
    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what  # "op rule", "twin op", "criterion": for the duplicate message
        self._deferred: dict[str, str] = {}

    def __setitem__(self, name: str, value: V) -> None:
        if dict.__contains__(self, name):
            raise ValueError(f"{self.what} {name!r} is registered twice")
        super().__setitem__(name, value)

    def update(self, *args: object, **kwargs: V) -> None:  # type: ignore[override]
        for name, value in dict(*args, **kwargs).items():  # type: ignore[arg-type]
            self[name] = value

    def register(self, *names: str) -> Callable[[V], V]:
        """Decorator: ``@REG.register("Relu", "Sigmoid")`` registers the decorated object."""

        def deco(value: V) -> V:
            for name in names:
                self[name] = value
            return value

        return deco

    def defer(self, module: str, names: Iterable[str]) -> None:
        self._deferred.update(dict.fromkeys(names, module))

    def deferred(self) -> set[str]:
        return set(self._deferred)

    def load_all(self) -> None:
        for module in set(self._deferred.values()):
            self._load(module)

    def _load(self, module: str) -> None:
        self._deferred = {n: m for n, m in self._deferred.items() if m != module}
        importlib.import_module(module)

    def __missing__(self, name: str) -> V:
        if name in self._deferred:
            self._load(self._deferred[name])
            return dict.__getitem__(self, name)
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, name) or name in self._deferred

    # Whole-table views load what is deferred: a listing must show every name.
    def get(self, name: str, default: V | None = None) -> V | None:  # type: ignore[override]
        return self[name] if name in self else default

    def __iter__(self) -> Iterator[str]:
        self.load_all()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self.load_all()
        return dict.__len__(self)

    def keys(self):  # type: ignore[no-untyped-def]
        self.load_all()
        return dict.keys(self)

    def values(self):  # type: ignore[no-untyped-def]
        self.load_all()
        return dict.values(self)

    def items(self):  # type: ignore[no-untyped-def]
        self.load_all()
        return dict.items(self)
