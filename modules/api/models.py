"""Request and response bodies. The A1111 ones carry A1111's field names and API defaults (Euler, 50 steps,
512x512, ...), which differ from the UI's; every field is optional and `null` means "the default".
Unknown fields are ignored, as A1111 ignores them."""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

_IGNORE_EXTRA = ConfigDict(extra="ignore", protected_namespaces=())


class GenerationBody(BaseModel):
    """Fields common to A1111's txt2img and img2img (StableDiffusionProcessing plus the API's own)."""

    model_config = _IGNORE_EXTRA

    prompt: Optional[str] = ""
    negative_prompt: Optional[str] = ""
    styles: Optional[list[str]] = None
    seed: Optional[int] = -1
    subseed: Optional[int] = -1
    subseed_strength: Optional[float] = 0.0
    seed_resize_from_h: Optional[int] = -1
    seed_resize_from_w: Optional[int] = -1
    seed_enable_extras: Optional[bool] = True
    sampler_name: Optional[str] = None
    sampler_index: Optional[str] = Field("Euler", description="legacy; sampler_name wins")
    scheduler: Optional[str] = None
    batch_size: Optional[int] = 1
    n_iter: Optional[int] = 1
    steps: Optional[int] = 50
    cfg_scale: Optional[float] = 7.0
    width: Optional[int] = 512
    height: Optional[int] = 512
    restore_faces: Optional[bool] = None  # accepted; no face restorer exists yet
    tiling: Optional[bool] = None  # accepted; ignored
    do_not_save_samples: Optional[bool] = False
    do_not_save_grid: Optional[bool] = False
    eta: Optional[float] = None  # accepted; the samplers use A1111's defaults
    denoising_strength: Optional[float] = 0.75
    s_min_uncond: Optional[float] = None
    s_churn: Optional[float] = None
    s_tmax: Optional[float] = None
    s_tmin: Optional[float] = None
    s_noise: Optional[float] = None
    override_settings: Optional[dict[str, Any]] = None
    override_settings_restore_afterwards: Optional[bool] = True
    refiner_checkpoint: Optional[str] = None
    refiner_switch_at: Optional[float] = None
    disable_extra_networks: Optional[bool] = False
    firstpass_image: Optional[str] = None
    comments: Optional[dict[str, Any]] = None
    script_name: Optional[str] = None
    script_args: Optional[list[Any]] = Field(default_factory=list)
    send_images: Optional[bool] = True
    save_images: Optional[bool] = False
    alwayson_scripts: Optional[dict[str, Any]] = Field(default_factory=dict)
    force_task_id: Optional[str] = None
    infotext: Optional[str] = Field(None, description="A1111 infotext to start from; fields given here win")


class Txt2ImgBody(GenerationBody):
    enable_hr: Optional[bool] = False
    firstphase_width: Optional[int] = 0  # legacy; ignored as in A1111
    firstphase_height: Optional[int] = 0
    hr_scale: Optional[float] = 2.0
    hr_upscaler: Optional[str] = None
    hr_second_pass_steps: Optional[int] = 0
    hr_resize_x: Optional[int] = 0
    hr_resize_y: Optional[int] = 0
    hr_checkpoint_name: Optional[str] = None
    hr_sampler_name: Optional[str] = None
    hr_scheduler: Optional[str] = None
    hr_prompt: Optional[str] = ""
    hr_negative_prompt: Optional[str] = ""


class Img2ImgBody(GenerationBody):
    init_images: Optional[list[Any]] = None
    resize_mode: Optional[int] = 0
    image_cfg_scale: Optional[float] = None
    mask: Optional[str] = None
    mask_blur_x: Optional[int] = 4
    mask_blur_y: Optional[int] = 4
    mask_blur: Optional[int] = None
    mask_round: Optional[bool] = True
    inpainting_fill: Optional[int] = 0
    inpaint_full_res: Optional[bool] = True
    inpaint_full_res_padding: Optional[int] = 0
    inpainting_mask_invert: Optional[int] = 0
    initial_noise_multiplier: Optional[float] = None
    latent_mask: Optional[str] = None
    include_init_images: Optional[bool] = Field(False, description="echo init_images and mask in `parameters`")


class JobOptions(BaseModel):
    """What /atelier/v1 adds to a generation body."""

    webhook: Optional[str] = Field(None, description="URL that gets a POST with the job's summary when it ends")


class AtelierTxt2ImgBody(Txt2ImgBody, JobOptions):
    save_images: Optional[bool] = True  # batch work keeps its results on disk by default


class AtelierImg2ImgBody(Img2ImgBody, JobOptions):
    save_images: Optional[bool] = True


class BatchBody(BaseModel):
    model_config = _IGNORE_EXTRA

    type: Optional[Literal["txt2img", "img2img"]] = Field(None, description="default: img2img if base has "
                                                                             "init_images, else txt2img")
    base: dict[str, Any] = Field(default_factory=dict, description="a txt2img or img2img body")
    expand: dict[str, list[Any]] = Field(default_factory=dict,
                                         description="field -> values; one job per combination")
    webhook: Optional[str] = None


class GenerationResponse(BaseModel):
    images: Optional[list[str]] = Field(None, description="base64 images, the grid first when there is one")
    parameters: dict[str, Any]
    info: str = Field(description="JSON string: all_prompts, all_seeds, infotexts, ... as A1111 writes it")


class ExtrasBody(BaseModel):
    model_config = _IGNORE_EXTRA

    resize_mode: Literal[0, 1] = 0
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(0, ge=0, le=1, allow_inf_nan=False)  # accepted; no face restorers yet
    codeformer_visibility: float = Field(0, ge=0, le=1, allow_inf_nan=False)
    codeformer_weight: float = Field(0, ge=0, le=1, allow_inf_nan=False)
    upscaling_resize: float = Field(2, gt=0, le=16, allow_inf_nan=False)
    upscaling_resize_w: int = Field(512, ge=1)
    upscaling_resize_h: int = Field(512, ge=1)
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(0, ge=0, le=1, allow_inf_nan=False)
    upscale_first: bool = False


class ExtrasSingleImageBody(ExtrasBody):
    image: str = ""


class FileData(BaseModel):
    data: str
    name: str = ""


class ExtrasBatchImagesBody(ExtrasBody):
    imageList: list[FileData]


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: Optional[str] = None


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


class PNGInfoBody(BaseModel):
    image: str


class PNGInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: dict[str, Any]
    current_image: Optional[str] = None
    textinfo: Optional[str] = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: Optional[list[str]] = None
    default_rho: Optional[float] = None
    need_inner_model: Optional[bool] = None


class UpscalerItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    model_name: Optional[str] = None
    model_path: Optional[str] = None
    model_url: Optional[str] = None
    scale: Optional[float] = None


class SDModelItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    title: str
    model_name: str
    hash: Optional[str] = None
    sha256: Optional[str] = None
    filename: str
    config: Optional[str] = None


class SDVaeItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    filename: str


class ScriptsList(BaseModel):
    txt2img: list[str] = Field(default_factory=list)
    img2img: list[str] = Field(default_factory=list)


class MemoryResponse(BaseModel):
    ram: dict[str, Any]
    cuda: dict[str, Any]
