"""Convolution weights packed once for oneDNN, for inference on the CPU.

Eager PyTorch hands oneDNN a plain weight on every call, and oneDNN reorders it into its blocked layout each
time: about a tenth of a UNet step at 256² in bf16 (bench/core.py). Packing each conv's weight once and
calling oneDNN's convolution with the packed copy gives the same numbers bit for bit, faster.

The module keeps its weight, names, state_dict and hooks, so LoRA patches, VAE swaps and merges still see
plain tensors. The packed copy is remade when the weight tensor is replaced or changed in place. It costs
memory: a second copy of every conv weight (about 1.2 GB for an SD1.5 UNet in bf16), which is why it is a
setting ("cpu_prepack").
"""
from __future__ import annotations

import logging
import types

import torch

log = logging.getLogger(__name__)

_PACKED = "_atelier_packed"  # in the module's __dict__: (source tensor, its version, packed weight)


def unavailable_reason(device: torch.device) -> str | None:
    if device.type != "cpu":
        return f"only for the CPU (the model runs on {device.type})"
    if not (torch.backends.mkldnn.enabled and torch.backends.mkldnn.is_available()):
        return "this torch has no oneDNN (mkldnn)"
    if not hasattr(torch.ops.mkldnn, "_convolution_pointwise"):
        return "this torch lacks mkldnn._convolution_pointwise"
    return None


def prepack(module: torch.nn.Module) -> int:
    """Give every plain Conv2d under `module` the packed forward. Returns how many convs were changed."""
    count = 0
    for conv in module.modules():
        if _packable(conv) and "forward" not in conv.__dict__:
            conv.forward = types.MethodType(_packed_forward, conv)
            count += 1
    return count


def sync(modules, enabled: bool) -> None:
    """Packed or plain, as `enabled` says (the `cpu_prepack` setting), for each module (a model's UNet and VAE,
    an extension's ControlNet); a module whose weights aren't where packing applies stays plain."""
    for module in modules:
        if enabled and not is_prepacked(module) and _on_packable_device(module):
            prepack(module)
        elif not enabled and is_prepacked(module):
            unpack(module)


def unpack(module: torch.nn.Module) -> None:
    for conv in module.modules():
        if conv.__dict__.get("forward") is not None and getattr(conv.forward, "__func__", None) is _packed_forward:
            del conv.__dict__["forward"]
        conv.__dict__.pop(_PACKED, None)


def _on_packable_device(module: torch.nn.Module) -> bool:
    param = next(module.parameters(), None)
    return param is not None and unavailable_reason(param.device) is None


def is_prepacked(module: torch.nn.Module) -> bool:
    return any(getattr(m.__dict__.get("forward"), "__func__", None) is _packed_forward for m in module.modules())


def _packable(conv: torch.nn.Module) -> bool:
    return (type(conv) is torch.nn.Conv2d and conv.padding_mode == "zeros"
            and isinstance(conv.padding, tuple))  # padding="same"/"valid" is a string: left to eager


def _packed_forward(self: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    weight = self.weight
    if (x.dim() != 4 or x.device.type != "cpu" or weight.device.type != "cpu" or x.dtype != weight.dtype
            or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
        return self._conv_forward(x, weight, self.bias)  # anything unusual: the plain path
    packed = _packed_weight(self, weight, x.shape)
    return torch.ops.mkldnn._convolution_pointwise(x, packed, self.bias, self.padding, self.stride, self.dilation,
                                                   self.groups, "none", [], "")


def _packed_weight(conv: torch.nn.Conv2d, weight: torch.Tensor, input_shape: torch.Size) -> torch.Tensor:
    cached = conv.__dict__.get(_PACKED)
    # The source is held, so its address can't be reused by another tensor while the cache names it.
    version = _version(weight)
    if cached is not None and cached[0].data_ptr() == weight.data_ptr() and cached[1] == version:
        return cached[2]
    source = weight.detach()
    with torch.no_grad():
        packed = torch._C._nn.mkldnn_reorder_conv2d_weight(source.to_mkldnn(), list(conv.padding), list(conv.stride),
                                                           list(conv.dilation), conv.groups, list(input_shape))
    conv.__dict__[_PACKED] = (source, version, packed)
    return packed


def _version(tensor: torch.Tensor) -> int:
    try:
        return tensor._version
    except RuntimeError:  # an inference-mode tensor keeps no version: only its replacement can be seen
        return -1
