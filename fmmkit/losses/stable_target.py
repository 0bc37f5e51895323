"""The stable velocity target: E[dI_t/dt | I_t] estimated from the whole batch (STF, arXiv 2302.00670).

Flow matching regresses v_{t,t}(I_t) on dI_t/dt, whose conditional variance given I_t is large where
many data points could have produced I_t (small t). Given a point x1 the interpolant
I_t = alpha x0 + beta x1 + gamma z is Gaussian, N(beta x1, (alpha^2 + gamma^2) I), and

    E[dI_t/dt | I_t = x, x1] = beta' x1 + c_t (x - beta x1),   c_t = (alpha alpha' + gamma gamma') / (alpha^2 + gamma^2).

Averaging over the batch's data points x1_j as a reference, with self-normalised posterior weights
w_ij proportional to N(x_i; beta_i x1_j, (alpha_i^2 + gamma_i^2) I), gives

    b^_i = c_i x_i + (beta'_i - c_i beta_i) m_i,   m_i = sum_j w_ij x1_j  (the estimate of E[x1 | I_t = x_i]),

the exact velocity of the batch's empirical data, a consistent estimate of b_t(x_i) (bias O(1/B)) whose
variance is far below that of dI_t/dt at small t; as t -> 1 the weight concentrates on the row's own
x1_i and b^_i -> dI_t/dt. With labels the reference is the rows of the same label (all rows for the
null label). The reference is the whole batch (the diagonal rows' own x1 among them) when a loss gives
its diagonal rows only part of it (the self-distillation losses). Cost, for R reference points: a (B, D + 1) x (D + 1, R)
product for the logits, their exponential in place and a (D + 1, R) x (R, B) product, in blocks of rows written
into one buffer (2.3x faster than fresh blocks and the (B, R) x (R, D + 1) product at 2048 x 4096 on one CPU thread).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fmmkit.core import Interpolant, InterpolantSample
from fmmkit.core.conditioning import labels_of

#: "conditional": dI_t/dt (flow matching's usual target); "stable": the batch estimate of E[dI_t/dt | I_t]
VELOCITY_TARGETS = ("conditional", "stable")
#: logits per block of rows (4 MiB of float32): a block stays in cache from its product to its exponential
_BLOCK_ELEMENTS = 2**20
#: logits below the row's largest by more than 80 count as -80: exp(-80) = 1.8e-35 is still a normal float32, and the
#: weights they stand for change by less than that against the largest (1), far below float32 rounding; a subnormal
#: result of exp costs ~10x on x86 (the exponential took 44 ms of the 292 ms batch-4096 LSD step, measured session 7)
_LOGIT_FLOOR = -80.0


def stable_velocity(interpolant: Interpolant, path: InterpolantSample, y: Tensor | None = None,
                    null_label: int | None = None, reference: Tensor | None = None,
                    reference_y: Tensor | None = None) -> Tensor:
    """b^_t(I_t) for every row of ``path`` (B, *shape) over the data points ``reference`` (R, *shape) with labels
    ``reference_y`` (default: the rows' own x1 and y; a larger batch that holds them lowers the estimate's bias
    and variance, module docstring)."""
    if reference is None:
        reference, reference_y = path.x1, y
    x, x1, t = path.x_t.flatten(1), reference.flatten(1), path.t  # (B, D), (R, D), (B,)
    assert x1.shape[1] == x.shape[1], f"reference points must have the rows' shape {tuple(path.x1.shape[1:])}"
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, x1, t = x.to(dtype), x1.to(dtype), t.to(dtype)
    alpha, beta, d_alpha, d_beta = interpolant.alpha(t), interpolant.beta(t), interpolant.d_alpha(t), interpolant.d_beta(t)
    var, d_half = alpha**2, alpha * d_alpha
    if interpolant.stochastic:
        var = var + interpolant.gamma(t) ** 2
        d_half = d_half + interpolant.gamma_d_gamma(t)
    var = var.clamp_min(torch.finfo(dtype).tiny ** 0.5)
    # logits_ij = -|x_i - beta_i x1_j|^2 / (2 var_i) + const_i = [x_i beta_i / var_i, -beta_i^2 / (2 var_i)] . [x1_j, |x1_j|^2]
    scale = (beta / var)[:, None]
    queries = torch.cat([x * scale, (-0.5 * beta * scale[:, 0])[:, None]], dim=1)  # (B, D + 1)
    keys = torch.cat([x1, (x1 * x1).sum(1, keepdim=True)], dim=1)  # (R, D + 1)
    values = torch.cat([x1, torch.ones_like(x1[:, :1])], dim=1)  # (R, D + 1): the weighted sum and the normaliser
    labels, reference_labels = labels_of(y), labels_of(reference_y)
    rows = min(x.shape[0], max(1, _BLOCK_ELEMENTS // max(1, x1.shape[0])))
    keys_t, values_t = keys.T.contiguous(), values.T.contiguous()  # (D + 1, R) each
    block = x.new_empty(rows, x1.shape[0])  # one buffer for every block: a fresh 4 MiB a block costs page faults
    summed = []
    for i in range(0, x.shape[0], rows):  # blocks of rows, so that each (rows, R) block of logits stays in cache
        logits = torch.mm(queries[i : i + rows], keys_t, out=block[: min(rows, x.shape[0] - i)])  # (rows, R)
        if labels is not None and reference_labels is not None:
            same = labels[i : i + rows, None] == reference_labels[None, :]
            if null_label is not None:
                same = same | (labels[i : i + rows, None] == null_label)
            logits.masked_fill_(~same, float("-inf"))
        # softmax's numerator, in place; the floor keeps exp out of subnormal results (10x slower on x86)
        weights = logits.sub_(logits.amax(dim=1, keepdim=True)).clamp_(min=_LOGIT_FLOOR).exp_()
        summed.append(torch.mm(values_t, weights.T).T)  # (rows, D + 1); 5x faster on a CPU than weights @ values
    total = torch.cat(summed)
    m = total[:, :-1] / total[:, -1:]  # (B, D): sum_j w_ij x1_j
    c = d_half / var
    b = c[:, None] * x + (d_beta - c * beta)[:, None] * m
    return b.reshape(path.dx_t.shape).to(path.dx_t.dtype)
