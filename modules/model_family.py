"""Tell a checkpoint's model family from its state-dict keys and shapes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from modules.errors import CheckpointError

UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
SD1_TEXT_KEYS = ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
                 "cond_stage_model.transformer.embeddings.token_embedding.weight")
SD2_TEXT_KEY = "cond_stage_model.model.token_embedding.weight"
SDXL_CLIP_L_KEY = "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"
SDXL_CLIP_G_KEY = "conditioner.embedders.1.model.token_embedding.weight"
SDXL_REFINER_KEY = "conditioner.embedders.0.model.token_embedding.weight"

FAMILIES = ("sd1", "sd2", "sd2-v", "sdxl")


@dataclass(frozen=True)
class ModelFamily:
    name: str  # one of FAMILIES; also the folder under configs/
    inpainting: bool = False

    @property
    def is_sdxl(self) -> bool:
        return self.name == "sdxl"

    @property
    def is_v_prediction(self) -> bool:
        return self.name == "sd2-v"

    @property
    def label(self) -> str:
        base = {"sd1": "SD1.x", "sd2": "SD2.x", "sd2-v": "SD2.x-v", "sdxl": "SDXL"}[self.name]
        return base + (" inpainting" if self.inpainting else "")


def detect_model_family(keys: Mapping[str, object] | set[str], shapes: Mapping[str, tuple] | None = None,
                        v_prediction: bool | None = None) -> ModelFamily:
    """Family from key names; `shapes` gives tensor shapes (for inpainting's 9 input channels).

    SD2 eps and SD2-v have identical keys: `v_prediction` decides, from a sibling config or from
    running the UNet once (see model_loading.probe_v_prediction). None means eps.
    """
    keyset = keys if isinstance(keys, set) else set(keys)
    if UNET_IN not in keyset:
        raise CheckpointError("not a Stable Diffusion checkpoint: it has no UNet (model.diffusion_model.*) weights")
    in_channels = (shapes or {}).get(UNET_IN, (0, 4))[1]
    if in_channels not in (4, 9):
        raise CheckpointError(f"unsupported UNet with {in_channels} input channels (4 = normal, 9 = inpainting)")
    inpainting = in_channels == 9
    if SDXL_REFINER_KEY in keyset:
        raise CheckpointError("SDXL refiner checkpoints are not supported yet; use an SDXL base checkpoint")
    if SDXL_CLIP_L_KEY in keyset and SDXL_CLIP_G_KEY in keyset:
        return ModelFamily("sdxl", inpainting)
    if SD2_TEXT_KEY in keyset:
        return ModelFamily("sd2-v" if v_prediction else "sd2", inpainting)
    if any(k in keyset for k in SD1_TEXT_KEYS):
        return ModelFamily("sd1", inpainting)
    raise CheckpointError("unknown model family: the text encoder keys match neither SD1.x, SD2.x nor SDXL")
