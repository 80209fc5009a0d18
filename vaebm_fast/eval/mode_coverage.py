"""StackedMNIST mode coverage and reverse KL, as the VAEBM paper reports them (Table 5).

A sample [3, 28, 28] is classified channel by channel by an MNIST digit classifier; its mode is
``100 r + 10 g + b`` for the predicted digits of channels 0, 1, 2 (the labels of
``vaebm_fast.data.load_stacked_mnist``). Of the 1000 modes:

- ``modes_covered``: the number of modes with at least one sample (PacGAN's count, which the
  VAEBM paper and its baselines use);
- ``reverse_kl``: KL(p || uniform) = sum_k p_k log(1000 p_k), with p the share of the samples in
  each mode and 0 log 0 = 0 (natural log). It is 0 for perfectly balanced modes and log(1000)
  = 6.91 when every sample falls in one mode.
"""

from __future__ import annotations

from typing import Any, Dict, Union

import numpy as np
import torch
from torch import nn

from .image_metrics import _device, _evaluating

__all__ = ["stacked_mnist_modes", "NUM_MODES"]

NUM_MODES = 1000


def stacked_mnist_modes(samples: Union[torch.Tensor, np.ndarray], classifier: nn.Module, *,
                        batch_size: int = 1000) -> Dict[str, Any]:
    """Modes covered and reverse KL of StackedMNIST ``samples`` [N, 3, 28, 28] in [0, 1].

    ``classifier`` maps MNIST digits [B, 1, 28, 28] to logits [B, 10] (e.g.
    :func:`vaebm_fast.eval.train_mnist_classifier`); it runs in eval mode on its own device,
    and its mode is restored afterwards.

    Returns:
        {"modes_covered": int, "reverse_kl": float, "mode_histogram": int64 ndarray [1000]}.
    """
    samples = torch.as_tensor(samples).detach()
    if samples.dim() != 4 or samples.shape[1] != 3 or len(samples) == 0:
        raise ValueError(f"samples must be StackedMNIST images [N, 3, 28, 28] (got "
                         f"{list(samples.shape)})")
    device = _device(classifier)
    modes = []
    with _evaluating(classifier):
        for batch in samples.split(batch_size):
            digits = batch.to(device, torch.float32).reshape(-1, 1, *batch.shape[2:])  # [3B, ...]
            predicted = classifier(digits).argmax(dim=1).reshape(-1, 3).cpu()      # [B, 3]
            modes.append(predicted @ torch.tensor([100, 10, 1]))
    histogram = np.bincount(torch.cat(modes).numpy(), minlength=NUM_MODES)
    p = histogram[histogram > 0] / histogram.sum()
    return {"modes_covered": int((histogram > 0).sum()),
            "reverse_kl": float(np.sum(p * np.log(p * NUM_MODES))),
            "mode_histogram": histogram}
