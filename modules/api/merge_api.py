"""/atelier/v1/merge: the checkpoint merger (A1111 has it only in its UI), with A1111's argument names."""
from __future__ import annotations

from typing import Any, Optional

from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from modules import merging
from modules.errors import CheckpointError, ValidationError

from .errors import ApiError
from .routes import Routes


class MergeBody(BaseModel):
    primary_model_name: str = Field(..., description="model A (a checkpoint title, name or hash)")
    secondary_model_name: str = Field("", description="model B")
    tertiary_model_name: str = Field("", description="model C (add difference only)")
    interp_method: str = Field("Weighted sum", description="Weighted sum, Add difference or No interpolation")
    multiplier: float = Field(0.3, ge=0.0, le=1.0, description="M")
    precision: Optional[str] = Field("fp16", description="fp16, bf16, fp32 or keep")
    custom_name: str = ""
    bake_in_vae: str = "None"
    discard_weights: str = Field("", description="a regular expression; matching weights are left out")
    save_metadata: bool = True
    add_merge_recipe: bool = True


def check_custom_name(name: str) -> None:
    """The merged file's name: a plain name inside the checkpoint folder, on any platform."""
    name = name.strip()
    if not name:
        return
    if any(c in name for c in "/\\\x00:") or name.startswith(".") or len(name) > 200:
        raise ValidationError("custom_name", f"must be a plain file name (no /, \\, :, NUL or leading dot), "
                                             f"got {name!r}")


def register(app, engine) -> None:
    router = Routes(app, "/atelier/v1", ["merge"])

    @router.post("/merge")
    async def merge(body: MergeBody) -> dict[str, Any]:
        check_custom_name(body.custom_name)  # before minutes of merging, not after
        # Streams tensor by tensor; it doesn't touch the loaded model, so it runs beside the job queue.
        try:
            result = await run_in_threadpool(lambda: merging.merge_by_name(engine.models, **body.model_dump()))
        except CheckpointError as e:  # the models don't fit together: the request's fault, not the server's
            raise ApiError(422, str(e), field="secondary_model_name") from None
        return {"path": str(result.path), "name": result.path.name, "merged_keys": result.merged_keys,
                "copied_keys": result.copied_keys, "discarded_keys": result.discarded_keys,
                "is_inpainting": result.is_inpainting, "seconds": result.seconds, "notes": result.notes}
