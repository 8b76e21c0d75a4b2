"""HTTP client and the `spa` command line. ``from client import SpaClient``."""

from typing import Any

from client.http import SpaClient, SpaError

__all__ = ["SpaClient", "SpaError", "apply_plan"]


def __getattr__(name: str) -> Any:  # lazy: apply_plan needs torch, the rest of the client must not
    if name == "apply_plan":
        from client.apply_plan import apply_plan

        # importing the submodule bound its name here; the function must win over the module
        globals()["apply_plan"] = apply_plan
        return apply_plan
    raise AttributeError(f"module 'client' has no attribute {name!r}")
