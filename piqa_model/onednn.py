"""Linear layers through oneDNN on x86-64 CPUs at inference (`use_onednn_linear`).

PyTorch runs an fp32 `nn.Linear` on a CPU through MKL's sgemm; on the Swin's shapes oneDNN's matmul (the kernel
that torch.compile's CPU backend uses for linears with frozen weights) reaches a good deal more of the core's
peak, and can apply the MLP's GELU as it writes its output. So the forward is faster this way, with the same
scores to float rounding (BENCHMARKS.md, "Network forward on a CPU"; `bench/model_forward.py`).

The switch changes classes, not parameters: an `nn.Linear` becomes a `OneDnnLinear` and a timm `Mlp` with an
exact GELU becomes a `OneDnnMlp`, with the same parameters, state-dict keys and training behaviour. The oneDNN
path runs only where it computes the same function: fp32 on a CPU, gradients off, no autocast, eager (training,
bf16 autocast, torch.compile and GPUs take the layers' usual forward).
"""

from __future__ import annotations

import platform
from functools import cache

import torch
from timm.layers import Mlp
from torch import nn


@cache
def onednn_available() -> bool:
    """oneDNN's fused linear is built in and this is an x86-64 CPU (the only kind it was measured on)."""
    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        return False
    return hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _runs_on_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        not torch.compiler.is_compiling()  # first: torch.compile picks its own kernels (oneDNN's among them)
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.numel() > 0
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and onednn_available()  # checked again: a module switched on one machine may run on another
    )


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False) -> torch.Tensor:
    if gelu:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], "none")  # "none": the exact erf GELU
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class OneDnnLinear(nn.Linear):
    """`nn.Linear` whose CPU inference runs on oneDNN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _runs_on_onednn(x, self.weight):
            return _linear(x, self.weight, self.bias)
        return super().forward(x)


class OneDnnMlp(Mlp):
    """timm's `Mlp` (fc1, exact GELU, fc2) whose CPU inference runs fc1 and the GELU as one oneDNN matmul, from
    fc1's parameters (its own forward and hooks are not called there)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and _runs_on_onednn(x, self.fc1.weight):
            return self.fc2(self.norm(_linear(x, self.fc1.weight, self.fc1.bias, gelu=True)))
        return super().forward(x)


_ONEDNN_CLASSES = {nn.Linear: OneDnnLinear, Mlp: OneDnnMlp}
_PYTORCH_CLASSES = {switched: plain for plain, switched in _ONEDNN_CLASSES.items()}


def _fusable(module: nn.Module) -> bool:
    """A linear, or an MLP whose fc1 is a linear followed by the exact GELU (what `OneDnnMlp` computes)."""
    if isinstance(module, Mlp):
        act = module.act
        return isinstance(module.fc1, nn.Linear) and type(act) is nn.GELU and act.approximate == "none"
    return True


def use_onednn_linear(model: nn.Module, enabled: bool = True) -> None:
    """Switch `model`'s plain linears and GELU MLPs to the oneDNN classes above, or back (`enabled=False`).

    A no-op where oneDNN's fused linear is not available (see `onednn_available`)."""
    if enabled and not onednn_available():
        return
    classes = _ONEDNN_CLASSES if enabled else _PYTORCH_CLASSES
    for module in model.modules():
        target = classes.get(type(module))
        if target is not None and _fusable(module):
            module.__class__ = target
