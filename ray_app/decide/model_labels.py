"""The names of the configurations compared, as their evaluation folders are named (`<track>/<label>/`).

The teacher, the base SLM and the SLM with its track's adapter, each SLM free or under constrained
decoding (`slm-swap eval --decoding constrained`, labels ending in `-constrained`). FINE_TUNE is decided
on `teacher` vs `slm` alone; every other label is a candidate beside it (compared with both, never an
input of the rule).
"""

from __future__ import annotations

from collections.abc import Iterable

TEACHER_LABEL = "teacher"
SLM_LABEL = "slm"
ADAPTER_LABEL = "slm-adapter"  # what `slm-swap train` and the main job evaluate a track's adapter as
CONSTRAINED_SUFFIX = "-constrained"
# The swap kit's configurations in the order the report shows them (other labels follow, sorted).
CONFIGURATIONS = (
    TEACHER_LABEL,
    SLM_LABEL,
    SLM_LABEL + CONSTRAINED_SUFFIX,
    ADAPTER_LABEL,
    ADAPTER_LABEL + CONSTRAINED_SUFFIX,
)


def slm_label(adapted: bool, constrained: bool) -> str:
    """`slm`, `slm-constrained`, `slm-adapter` or `slm-adapter-constrained`."""
    return (ADAPTER_LABEL if adapted else SLM_LABEL) + (CONSTRAINED_SUFFIX if constrained else "")


def is_constrained(label: str) -> bool:
    return label.endswith(CONSTRAINED_SUFFIX)


def configuration_order(labels: Iterable[str]) -> list[str]:
    """`labels` with the swap kit's configurations first, in `CONFIGURATIONS` order, then the rest sorted."""
    found = set(labels)
    return [label for label in CONFIGURATIONS if label in found] + sorted(found - set(CONFIGURATIONS))
