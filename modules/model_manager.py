"""Which checkpoint and VAE are loaded: switching, a small RAM cache, and VAE swaps.

A failed load leaves the previous model loaded. Models dropped from the cache are released
completely, so switching back and forth doesn't grow memory.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Optional

import torch

from modules import cpu_prepack, devices, offload, optimizations
from modules.devices import DevicePolicy
from modules.errors import CheckpointError
from modules.model_files import HashCache, ModelFile, checkpoint_list, sibling_vae, vae_list
from modules.model_loading import LoadedModel, load_checkpoint, read_vae_state_dict
from modules.paths import Paths
from modules.settings import Settings

log = logging.getLogger(__name__)

VAE_AUTOMATIC, VAE_NONE = "Automatic", "None"


class ModelManager:
    def __init__(self, paths: Paths, policy: DevicePolicy, settings: Settings,
                 hashes: Optional[HashCache] = None):
        self.paths, self.policy, self.settings = paths, policy, settings
        self.hashes = hashes or HashCache(paths.hash_cache_file)
        self.checkpoints = checkpoint_list(paths.ckpt_dir, self.hashes)
        self.vaes = vae_list(paths.vae_dir, self.hashes)
        self.current: Optional[LoadedModel] = None
        self.current_file: Optional[ModelFile] = None
        self._cache: "OrderedDict[Path, tuple[ModelFile, LoadedModel]]" = OrderedDict()
        self._lock = threading.RLock()
        self.on_loaded: list[Callable[[LoadedModel], None]] = []

    def refresh(self) -> None:
        self.checkpoints.refresh()
        self.vaes.refresh()

    def default_checkpoint(self) -> Optional[ModelFile]:
        wanted = self.settings.get("sd_model_checkpoint")
        if wanted:
            found = self.checkpoints.find(wanted)
            if found:
                return found
            log.warning("checkpoint '%s' from settings not found; using the first one", wanted)
        return self.checkpoints.items[0] if self.checkpoints.items else None

    def get(self, checkpoint: Optional[str] = None, vae: Optional[str] = None) -> tuple[LoadedModel, ModelFile]:
        """The model for a request, loading or switching if needed."""
        with self._lock:
            if checkpoint:
                wanted = self.checkpoints.resolve(checkpoint)
            elif self.current_file is not None:
                wanted = self.current_file
            else:
                wanted = self.default_checkpoint()
                if wanted is None:
                    raise CheckpointError(f"no checkpoint found: put a .safetensors file in {self.paths.ckpt_dir}")
            if self.current_file is None or self.current_file.path != wanted.path:
                self._switch_to(wanted)
            self.apply_vae(vae if vae is not None else self.settings.get("sd_vae"))
            self._sync_prepack(self.current)
            return self.current, self.current_file

    def _sync_prepack(self, model: LoadedModel) -> None:
        """Packed conv weights on the CPU when the setting says so (off again when it doesn't); not with
        torch.compile, which does its own packing."""
        wanted = bool(self.settings.get("cpu_prepack")) and not self.settings.get("unet_compile")
        cpu_prepack.sync((model.unet, model.vae), wanted)

    def _switch_to(self, wanted: ModelFile) -> None:
        cached = self._cache.pop(wanted.path, None)
        if cached is not None:
            model = cached[1]
            _move(model, self.policy.weights_device)
        else:
            model = load_checkpoint(wanted.path, self.policy)  # raises before the current model is touched
            offload.attach(model)  # --medvram/--lowvram: parts come to the device on use
            if self.settings.get("unet_compile"):
                optimizations.compile_unet(model)
        if self.current is not None and self.current_file is not None:
            self._cache[self.current_file.path] = (self.current_file, self.current)
            if self.policy.device.type != "cpu":
                _move(self.current, torch.device("cpu"))
                if self.current.offloader is not None:
                    self.current.offloader.active = None  # everything is in RAM now; the hooks bring it back
        self.current, self.current_file = model, wanted
        limit = int(self.settings.get("sd_checkpoint_cache") or 0)
        while len(self._cache) > limit:
            self._cache.popitem(last=False)
        devices.free_memory()
        log.info("loaded %s (%s)", wanted.name, model.family.label)
        for callback in self.on_loaded:
            callback(model)

    def unload(self) -> None:
        with self._lock:
            self.current = self.current_file = None
            self._cache.clear()
            devices.free_memory()

    def reload(self) -> None:
        with self._lock:
            wanted = self.current_file
            self.unload()
            if wanted is not None:
                self.get(wanted.name)

    def vae_file_for(self, choice: Optional[str]) -> Optional[ModelFile]:
        """Resolve a VAE setting: Automatic (a `<checkpoint>.vae.*` beside it), None (the checkpoint's own) or a name."""
        if not choice or choice == VAE_NONE:
            return None
        if choice == VAE_AUTOMATIC:
            if self.current_file is None:
                return None
            found = sibling_vae(self.current_file.path)
            return self.vaes.add_file(found) if found else None
        return self.vaes.resolve(choice)

    def apply_vae(self, choice: Optional[str]) -> None:
        model = self.current
        if model is None:
            return
        wanted = self.vae_file_for(choice)
        wanted_path = wanted.path if wanted else None
        if model.vae_path == wanted_path:
            return
        vae = model.vae
        if wanted_path is None:
            vae.load_state_dict(model.base_vae_state, assign=True)
            model.base_vae_state = {}
        else:
            state = read_vae_state_dict(wanted_path, dict(vae.config))
            if not model.base_vae_state:
                model.base_vae_state = dict(vae.state_dict())
            param = next(vae.parameters())
            state = {k: v.to(param.device, param.dtype) for k, v in state.items()}
            missing = set(vae.state_dict()) - set(state)
            if missing:
                raise CheckpointError(f"{wanted.name}: not a VAE for this model ({len(missing)} weights missing)")
            vae.load_state_dict(state, assign=True)
        model.vae_path = wanted_path
        model.vae_file = wanted


def _move(model: LoadedModel, device: torch.device) -> None:
    for module in (model.unet, model.vae, *model.text_encoders):
        module.to(device)
