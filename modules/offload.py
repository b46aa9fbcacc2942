"""GPU memory policy for small cards: `--medvram` and `--lowvram` (A1111's flags), and the UNet OOM retry.

medvram: only the component in use (text encoders, UNet or VAE) sits on the device; the others wait in RAM.
lowvram: as medvram, and the UNet's big blocks (down, mid, up) come to the device one at a time, each
         sent back as soon as its forward returns.

Moves are driven by forward pre-hooks on the components themselves, as A1111 does, rather than by calls
threaded through processing: whatever runs a component (txt2img, hires fix, a script, an extension's
extra UNet call) gets it on the device, and nothing else has to know. The hooks hold no model copies and
leave weights as ordinary tensors, so weight patches (LoRA) keep working — which accelerate's offload hooks
(weights on `meta`, a separate weights map) would not.
"""
from __future__ import annotations

import itertools
import logging
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch

from modules import devices
from modules.devices import OFFLOAD_MODES

log = logging.getLogger(__name__)

Mover = Callable[[torch.nn.Module, torch.device], None]
_BIG_UNET_BLOCKS = ("down_blocks", "mid_block", "up_blocks")


def _to(module: torch.nn.Module, device: torch.device) -> None:
    module.to(device)


def _is_on(tensor: torch.Tensor, device: torch.device) -> bool:
    """torch.device equality says a tensor on cuda:0 is not on `cuda`: compare the type, and the index only
    where the wanted device names one (CPU tensors never carry one)."""
    if tensor.device.type != device.type:
        return False
    return device.type == "cpu" or device.index is None or tensor.device.index == device.index


class Offloader:
    """Attached to one LoadedModel: moves its components between `device` and `storage` on first use.

    `move` does the moving (tests pass a recorder around `_to` to see which parts moved, in which order).
    """

    def __init__(self, model, mode: str, device: torch.device, storage: torch.device = torch.device("cpu"),
                 move: Mover = _to):
        if mode not in OFFLOAD_MODES or mode == "none":
            raise ValueError(f"offload mode must be medvram or lowvram, got {mode!r}")
        self.model, self.mode, self.device, self.storage, self.move = model, mode, device, storage, move
        self.active: Optional[str] = None  # the component now on the device
        self._handles: list = []
        self._components = {"text_encoder": list(model.text_encoders), "unet": [model.unet], "vae": [model.vae]}

    # -- hooks --------------------------------------------------------------------------------
    def attach(self) -> "Offloader":
        for name, modules in self._components.items():
            for module in modules:
                for target in self._entry_points(name, module):
                    self._handles.append(target.register_forward_pre_hook(self._pre_hook(name)))
        if self.mode == "lowvram":
            self._attach_block_swaps()
        for modules in self._components.values():
            for module in modules:
                self.move(module, self.storage)
        return self

    def detach(self, restore: bool = True) -> None:
        """Remove every hook; `restore` puts the whole model back on the device (leaving offload mode)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.active = None
        if restore:
            for modules in self._components.values():
                for module in modules:
                    self.move(module, self.device)

    @staticmethod
    def _entry_points(name: str, module: torch.nn.Module) -> list[torch.nn.Module]:
        # The VAE is entered through encode()/decode(), not forward(): hook the children those call first.
        if name == "vae":
            return [child for child in module.children() if sum(1 for _ in child.parameters())]
        return [module]

    def _pre_hook(self, name: str):
        def hook(_module, _args):
            self.use(name)
        return hook

    def use(self, name: str) -> None:
        """Put component `name` on the device and the one there before in storage. If it is there already,
        only stray weights move (and usually none)."""
        if self.active == name:
            self._bring_strays(name)
            return
        for other, modules in self._components.items():
            if other != self.active or other == name:
                continue
            for module in modules:
                self.move(module, self.storage)
        for module in self._components[name]:
            if name == "unet" and self.mode == "lowvram":
                for part in self._unet_stem(module):  # the big blocks come in one at a time
                    self.move(part, self.device)
            else:
                self.move(module, self.device)
        self.active = name
        devices.empty_device_cache()  # what went to RAM leaves the GPU allocator's cache too

    def _bring_strays(self, name: str) -> None:
        """A weight put back while its component sat elsewhere (weight_patching restores the very tensor it
        kept, wherever that was) would be left behind by the bookkeeping above: move any such stray over.
        Looking costs a pass over the parameters' devices, nothing next to a UNet call."""
        for module in self._components[name]:
            parts = self._unet_stem(module) if name == "unet" and self.mode == "lowvram" else [module]
            for part in parts:
                if any(not _is_on(t, self.device) for t in itertools.chain(part.parameters(), part.buffers())):
                    self.move(part, self.device)

    # -- lowvram ------------------------------------------------------------------------------
    @staticmethod
    def _big_blocks(unet: torch.nn.Module) -> list[torch.nn.Module]:
        blocks = []
        for name in _BIG_UNET_BLOCKS:
            found = getattr(unet, name, None)
            if isinstance(found, torch.nn.ModuleList):
                blocks.extend(found)
            elif found is not None:
                blocks.append(found)
        return blocks

    def _unet_stem(self, unet: torch.nn.Module) -> list[torch.nn.Module]:
        """Everything of the UNet except its big blocks: small, needed at every step, kept on the device."""
        return [child for name, child in unet.named_children() if name not in _BIG_UNET_BLOCKS]

    def _attach_block_swaps(self) -> None:
        for block in self._big_blocks(self.model.unet):
            self._handles.append(block.register_forward_pre_hook(lambda m, _a: self.move(m, self.device)))
            self._handles.append(block.register_forward_hook(lambda m, _a, _o: self.move(m, self.storage)))


def attach(model, mode: Optional[str] = None, move: Mover = _to) -> Optional[Offloader]:
    """Offload `model` as its policy (or `mode`) says; None when the policy keeps everything on the device."""
    mode = mode or model.policy.offload
    if mode == "none":
        return None
    offloader = Offloader(model, mode, model.policy.device, move=move).attach()
    model.offloader = offloader
    log.info("%s: components move to %s on use", mode, model.policy.device)
    return offloader


def detach(model, restore: bool = True) -> None:
    offloader = getattr(model, "offloader", None)
    if offloader is not None:
        offloader.detach(restore)
        model.offloader = None


@contextmanager
def temporarily(model, mode: str = "medvram", move: Mover = _to) -> Iterator[Optional[Offloader]]:
    """Offload for one run, then put the model back as its policy had it (used by the OOM retry)."""
    if getattr(model, "offloader", None) is not None:  # already offloading: nothing more to do
        yield model.offloader
        return
    offloader = attach(model, mode, move)
    try:
        yield offloader
    finally:
        detach(model, restore=True)


def retry_on_oom(model, run: Callable[[], object], notes: list[str], move: Mover = _to):
    """Run a job; if the device runs out of memory (in the UNet: the VAE has its own tiled retry), free what
    can be freed and run it once more with medvram offload, noting it on the job."""
    try:
        return run()
    except torch.OutOfMemoryError as first:
        if getattr(model, "offloader", None) is not None:
            raise  # offload is already on: a retry would fail the same way
        log.warning("out of memory (%s); retrying the job with medvram offload", str(first).splitlines()[0][:200])
    devices.free_memory()  # out here: inside `except`, the traceback still holds the failed call's tensors
    with temporarily(model, "medvram", move):
        result = run()
    notes.append("ran out of GPU memory; the job was run again with medvram offload "
                 "(start with --medvram if this keeps happening)")
    return result
