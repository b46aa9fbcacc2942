"""A1111's `modules.processing` names, which modules/processing.py serves through its module __getattr__."""
from __future__ import annotations

from typing import Any

from modules.processing_context import Img2ImgContext, ProcessingContext, Processed, Txt2ImgContext, fixed_seed
from modules.script_processing import process_images

StableDiffusionProcessing = ProcessingContext
StableDiffusionProcessingTxt2Img = Txt2ImgContext
StableDiffusionProcessingImg2Img = Img2ImgContext
get_fixed_seed = fixed_seed


def fix_seed(p: Any) -> None:
    p.seed, p.subseed = get_fixed_seed(p.seed), get_fixed_seed(p.subseed)


__all__ = ["StableDiffusionProcessing", "StableDiffusionProcessingTxt2Img", "StableDiffusionProcessingImg2Img",
           "Processed", "process_images", "fix_seed", "get_fixed_seed"]
