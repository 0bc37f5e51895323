"""A module from another framework as fmmkit's velocity b_t(x): call convention, labels and guidance.

fmmkit calls the module as ``module(input_scale * z, m)`` for unlabelled data and
``module(input_scale * z, m, y)`` with labels (z: the process state, m: the model time; see
:mod:`fmmkit.conversion`), positionally, which fits diffusers' ``UNet2DModel`` / ``DiTTransformer2DModel``
(``sample, timestep, class_labels``), EDM's ``EDMPrecond`` (``x, sigma, class_labels``) and SiT/DiT
(``x, t, y``); a module with another signature is wrapped by a small factory. The output is the
tensor itself, its ``.sample`` (diffusers' outputs) or its first element (a tuple), times
``output_scale``. A model that learns its variance returns 2C channels for C (DiT with learn_sigma,
improved DDPM): ``learned_variance`` keeps the first C, its prediction.

Labels: fmmkit's classes are 0..K-1 and the null class K (or ``y = None``) asks for the unconditional
output. Those rows get the module's ``null_label`` (DiT: 1000) when it is set, else the module is
called without labels for them. Guidance w (Ho & Salimans 2022) gives
b = b(x | null) + w (b(x | y) - b(x | null)) through :func:`fmmkit.losses.guidance.guided_velocity`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fmmkit.conversion import Conversion
from fmmkit.external.modules import ModuleLoadError
from fmmkit.losses.guidance import guided_velocity


def module_output(out: Any) -> Tensor:
    """The tensor of a module's output: itself, ``.sample`` (diffusers) or the first element of a tuple."""
    if isinstance(out, Tensor):
        return out
    if hasattr(out, "sample") and isinstance(out.sample, Tensor):
        return out.sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(f"the module returned {type(out).__name__}; expected a tensor, an object with .sample or a tuple")


@dataclass(frozen=True)
class ModuleCall:
    """How to call a module (module docstring): scales, variance split, labels; ``where`` names the spec table."""

    where: str = "teacher"
    input_scale: float = 1.0
    output_scale: float = 1.0
    learned_variance: bool = False
    num_classes: int | None = None
    null_label: int | None = None
    #: False: the module takes no labels, y is ignored
    takes_labels: bool = True

    def _raw(self, module: nn.Module, inp: Tensor, time: Tensor, labels: Tensor | None, extra: dict[str, Any]) -> Tensor:
        args = (inp, time) if labels is None else (inp, time, labels)
        out = module_output(module(*args, **extra))
        if out.shape == inp.shape:
            return out
        c = inp.shape[1] if inp.ndim > 1 else 0
        if out.ndim == inp.ndim and out.shape[0] == inp.shape[0] and out.shape[2:] == inp.shape[2:] and out.shape[1] == 2 * c:
            if self.learned_variance:
                return out[:, :c]
            raise ModuleLoadError(
                f"{self.where}.prediction: the module returns {tuple(out.shape)} for inputs {tuple(inp.shape)}: {2 * c} "
                f"channels for {c} are a prediction and a learned variance (DiT with learn_sigma, improved DDPM); "
                "set learned_variance = true to use the first half")
        raise ModuleLoadError(f"{self.where}.prediction: the module returns {tuple(out.shape)} for inputs {tuple(inp.shape)}; "
                              "a prediction must be shaped like its input (check the factory and its kwargs)")

    def __call__(self, module: nn.Module, z: Tensor, time: Tensor, y: Tensor | None,
                 second_time: Tensor | None = None) -> Tensor:
        """output_scale * module(input_scale * z, time[, labels][, second_time=...]) as one prediction."""
        inp = z * self.input_scale if self.input_scale != 1 else z
        extra = {"second_time": second_time} if second_time is not None else {}
        y = y if self.takes_labels else None
        null = None if y is None or self.num_classes is None else y == self.num_classes
        if y is None or (null is not None and bool(null.all())):
            labels = None if self.null_label is None else torch.full((z.shape[0],), self.null_label, dtype=torch.long, device=z.device)
            out = self._raw(module, inp, time, labels, extra)
        elif null is None or not bool(null.any()):
            out = self._raw(module, inp, time, y, extra)
        elif self.null_label is not None:
            out = self._raw(module, inp, time, torch.where(null, torch.full_like(y, self.null_label), y), extra)
        else:  # some null rows and no null label: an unconditional pass for them
            conditional = self._raw(module, inp, time, torch.where(null, torch.zeros_like(y), y), extra)
            unconditional = self._raw(module, inp, time, None, extra)
            out = torch.where(null.reshape(-1, *([1] * (z.ndim - 1))), unconditional, conditional)
        return out * self.output_scale if self.output_scale != 1 else out


class _Unguided:
    def __init__(self, fn: Callable[[Tensor, Tensor, Tensor | None], Tensor]) -> None:
        self.velocity = fn


class ConvertedVelocity(nn.Module):
    """b_t(x) of ``module`` predicting ``conversion.prediction`` under ``conversion.process`` (a VelocityField).

    Args:
        module: the network (frozen for a teacher).
        conversion: its prediction type and process (:class:`fmmkit.conversion.Conversion`).
        call: how to call it (:class:`ModuleCall`).
        guidance: classifier-free guidance weight w (1 = none).

    Example:
        >>> import torch
        >>> from fmmkit.conversion import Conversion, LinearProcess
        >>> class TowardsZero(torch.nn.Module):  # data at 0: z = tau eps, so u = eps - x_data = z / tau
        ...     def forward(self, z, tau):
        ...         return z / tau[:, None]
        >>> b = ConvertedVelocity(TowardsZero(), Conversion(LinearProcess("noise_at_1"), "velocity"), ModuleCall())
        >>> b.velocity(torch.ones(1, 2), 0.5).tolist()  # b_t(x) = -u(x, 1 - t) = -x / (1 - t)
        [[-2.0, -2.0]]
    """

    def __init__(self, module: nn.Module, conversion: Conversion, call: ModuleCall, guidance: float = 1.0) -> None:
        super().__init__()
        self.module = module
        self.conversion = conversion
        self.call = call
        self.guidance = guidance

    @property
    def interpolant(self) -> Any:
        """The fmmkit interpolant of the module's process."""
        return self.conversion.interpolant

    def unguided_velocity(self, x: Tensor, t: Tensor | float, y: Tensor | None = None,
                          second_time: Tensor | None = None) -> Tensor:
        """b_t(x | y) (the null class for y = None); ``second_time`` is passed on to the module when given."""
        return self.conversion.velocity(lambda z, m: self.call(self.module, z, m, y, second_time), x, t)

    def velocity(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """The guided velocity b^w_t(x | y)."""
        return guided_velocity(_Unguided(self.unguided_velocity), x, t, y, self.guidance)  # type: ignore[arg-type]

    def check(self, data_shape: tuple[int, ...], num_classes: int | None) -> None:
        """One probe pass at t = 1/2 on zeros of the data's shape: a module that cannot be called on this data
        (signature, channels, size) or returns the wrong shape is a one-line ModuleLoadError."""
        device = next(iter(self.parameters()), torch.zeros(())).device
        x = torch.zeros((2, *data_shape), device=device)
        y = torch.zeros(2, dtype=torch.long, device=device) if num_classes else None
        try:
            with torch.no_grad():
                self.unguided_velocity(x, torch.full((2,), 0.5, device=device), y)
        except ModuleLoadError:
            raise
        except Exception as exc:
            labels = ", y" if y is not None else ""
            raise ModuleLoadError(
                f"{self.call.where}: calling the module as module(x, time{labels}) on data of shape {tuple(data_shape)} "
                f"failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); check that it was "
                "built for this data (channels, size, classes) and takes (x, time[, y]), or wrap it in a factory that does"
            ) from None
