"""How many samples of the user's data are held out for evaluation: pure arithmetic, no numpy, so
that the API checks a job's split against its dataset's header with the rule the library applies.

The held-out split is never seen by the criterion or by recovery; fidelity is measured on it
(``runtime.fidelity``). ``eval_fraction`` None (the default) holds out ``AUTO_FRACTION`` of data
with at least ``AUTO_MIN_SAMPLES`` samples and nothing of smaller data; 0 holds out nothing; a
separate evaluation set replaces the split."""

from __future__ import annotations

from pruning_core.errors import DataError

AUTO_FRACTION = 0.2
AUTO_MIN_SAMPLES = 10
MAX_EVAL_SAMPLES = 1024  # fidelity runs on at most this many samples (the report notes the count)


def holdout_count(n: int | None, fraction: float | None, separate_eval: bool = False) -> int:
    """Samples of ``n`` calibration samples (None: no data) held out for evaluation. Raises
    ``DataError`` (one sentence about the user's data) when the split cannot be made."""
    if fraction is not None and not 0.0 <= fraction < 1.0:
        raise DataError(f"eval_fraction {fraction} must be at least 0 and below 1")
    if separate_eval:
        if fraction:
            raise DataError("give either eval_fraction (a split of the calibration data) or a separate "
                            "evaluation dataset, not both")
        return 0
    if n is None:
        if fraction:
            raise DataError(f"eval_fraction {fraction} holds out part of the calibration data, "
                            "but no calibration data was given")
        return 0
    if fraction is None:
        return int(round(n * AUTO_FRACTION)) if n >= AUTO_MIN_SAMPLES else 0
    if fraction == 0.0:
        return 0
    k = max(1, int(round(n * fraction)))
    if k >= n:
        raise DataError(f"eval_fraction {fraction} of the {n} sample(s) of the calibration data holds out "
                        f"{k}, which leaves no sample for calibration; give more data or a smaller fraction")
    return k
