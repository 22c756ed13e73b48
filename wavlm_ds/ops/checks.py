"""Input checks that never make the training step wait on the device."""
from __future__ import annotations

from typing import Callable

import torch


def assert_on_device(ok: torch.Tensor, describe: Callable[[], str], short: str) -> None:
    """Require the 0-dim bool tensor `ok`.

    One `torch._assert_async`: on CUDA an asynchronous device assert with the message
    `short` (no host sync: a failure surfaces at the next synchronizing call); on CPU it
    fails at once and we raise ValueError(describe()), the detailed message, built only then.
    """
    try:
        torch._assert_async(ok, short)
    except RuntimeError:
        raise ValueError(describe()) from None
