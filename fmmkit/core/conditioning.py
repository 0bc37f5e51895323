"""The conditioning a backbone receives as ``y``: class labels, or labels with a guidance input.

``y`` is either integer labels (B,) (the null label ``num_classes``, or ``y = None``, asks for the
unconditional output) or the *conditioning matrix* (B, 4) float32 = [label, w, start, end]: the label,
the classifier-free guidance scale w and the guidance interval [start, end] of variable guidance
(iMF, 2512.02012; :mod:`fmmkit.losses.guidance`). Every loss, sampler and derivative passes y through
unchanged; backbones built with ``BuildContext.guidance_input`` embed (1 - 1/w, start, end), the
others read only the labels.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: columns of the conditioning matrix
LABEL, SCALE, START, END = 0, 1, 2, 3
#: (w, start, end) of an input without guidance: w = 1 everywhere
NO_GUIDANCE = (1.0, 0.0, 1.0)

def condition(labels: Tensor, scale: Tensor | float, start: Tensor | float = 0.0, end: Tensor | float = 1.0) -> Tensor:
    """The conditioning matrix (B, 4) = [label, w, start, end] (float32) for labels (B,).

    Example:
        >>> import torch
        >>> condition(torch.tensor([3, 1]), 2.5).tolist()
        [[3.0, 2.5, 0.0, 1.0], [1.0, 2.5, 0.0, 1.0]]
    """
    n = labels.shape[0]
    col = lambda v: torch.as_tensor(v, dtype=torch.float32, device=labels.device).expand(n)  # noqa: E731
    return torch.stack([labels.to(torch.float32), col(scale), col(start), col(end)], dim=1)


def is_condition(y: Tensor | None) -> bool:
    """Whether y is a conditioning matrix (B, 4) rather than labels (B,)."""
    return y is not None and y.ndim == 2


def labels_of(y: Tensor | None) -> Tensor | None:
    """The integer labels (B,) of labels or a conditioning matrix."""
    if y is None:
        return None
    return y[:, LABEL].long() if y.ndim == 2 else y


def guidance_of(y: Tensor | None) -> Tensor | None:
    """(w, start, end) as a (B, 3) tensor of a conditioning matrix; None for labels."""
    return y[:, SCALE:] if is_condition(y) else None  # type: ignore[index]


def with_labels(y: Tensor, labels: Tensor) -> Tensor:
    """y with its labels replaced (labels, or the label column of a conditioning matrix)."""
    if y.ndim == 1:
        return labels.to(y.dtype)
    return torch.cat([labels.to(y.dtype)[:, None], y[:, SCALE:]], dim=1)


def null_condition(y: Tensor | None, null_label: int | None) -> Tensor | None:
    """The unconditional input for y: None for labels; for a conditioning matrix the null label with
    w = 1 (iMF's v_u), the interval kept."""
    if not is_condition(y) or null_label is None:
        return None
    assert y is not None
    null = torch.full_like(y[:, LABEL], float(null_label))
    return torch.stack([null, torch.ones_like(null), y[:, START], y[:, END]], dim=1)
