"""The determinism settings of the project, applied in one place (drivers, Ray actors, trainers).

Seed 42 everywhere, deterministic torch algorithms, PYTHONHASHSEED=42 and
CUBLAS_WORKSPACE_CONFIG=:4096:8 (cuBLAS needs it for deterministic GEMMs). Environment variables
only reach processes started after they are set, so Ray workers get them through
`DETERMINISM_ENV`, passed in the runtime environment.
"""

from __future__ import annotations

import os
import random

SEED = 42
DETERMINISM_ENV = {"PYTHONHASHSEED": str(SEED), "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}


def apply_determinism(seed: int = SEED) -> None:
    for name, value in DETERMINISM_ENV.items():
        os.environ.setdefault(name, value)
    random.seed(seed)
    import numpy as np
    import torch

    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    # warn_only: a kernel without a deterministic variant warns instead of aborting a long run;
    # every kernel that has one is switched to it.
    torch.use_deterministic_algorithms(True, warn_only=True)
