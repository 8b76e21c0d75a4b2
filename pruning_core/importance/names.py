"""Names of the registered criteria, importable without torch (the API validates specs with it).

The registry in ``pruning_core.importance`` must register exactly these; a test checks it.
"""

from __future__ import annotations

# name -> (needs data?, one line of what it is)
CRITERIA: dict[str, tuple[bool, str]] = {
    "l1": (False, "L1 norm of the group's weights"),
    "l2": (False, "L2 norm of the group's weights"),
}
