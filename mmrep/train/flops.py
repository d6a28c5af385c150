"""Training FLOPs measured, not estimated: `torch.utils.flop_counter.FlopCounterMode` over one real step.

The first optimizer step a process runs (forward + backward of every micro-batch, whatever the model
and objective) is counted; ranks' counts are summed, so `per_step` is the global FLOPs of one step and
`per_step * steps` the run's training compute. FlopCounterMode counts matmuls / convolutions /
attention (the ops that dominate); element-wise ops and the optimizer update are not counted.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from mmrep.distributed import all_reduce_sum


class StepFlops:
    def __init__(self, world: int = 1):
        self.world = world
        self.per_step: int | None = None  # global FLOPs of one optimizer step, once measured

    @contextlib.contextmanager
    def count(self) -> Iterator[None]:
        """Wrap a training step: counts the first one, is a no-op afterwards."""
        if self.per_step is not None:
            yield
            return
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            yield
        total = torch.tensor([float(counter.get_total_flops())], dtype=torch.float64)
        all_reduce_sum(total)  # ranks can differ (a micro-batch lacking a view skips encoder calls)
        self.per_step = int(total.item())
