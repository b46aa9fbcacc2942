"""sd-webui-controlnet's HTTP routes, with its shapes, so existing clients (webuiapi, Krita and Photoshop
plugins, scripts) work: /controlnet/version, model_list, module_list, control_types, settings, detect."""
from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

from controlnet_models import ControlNetLibrary
from controlnet_preprocessors import PREPROCESSORS, find_preprocessor, missing_files, module_detail, preprocess
from controlnet_apply import map_to_image
from controlnet_units import UnitError, decode_image

API_VERSION = 2  # sd-webui-controlnet's external_code.get_api_version()

# Control types as sd-webui-controlnet groups them: (tag, words that pick models by file name, default module).
CONTROL_TYPES = [
    ("All", (), "none"), ("Canny", ("canny",), "canny"), ("Depth", ("depth",), "depth_midas"),
    ("NormalMap", ("normal",), "normal_bae"), ("OpenPose", ("openpose", "pose"), "openpose_full"),
    ("MLSD", ("mlsd",), "mlsd"), ("Lineart", ("lineart",), "lineart_standard"),
    ("SoftEdge", ("softedge", "hed", "pidi"), "softedge_pidinet"),
    ("Scribble/Sketch", ("scribble", "sketch"), "scribble_xdog"), ("Shuffle", ("shuffle",), "shuffle"),
    ("Tile/Blur", ("tile", "blur"), "tile_resample"), ("Inpaint", ("inpaint",), "inpaint_only"),
]


def encode_png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def model_list(library: ControlNetLibrary) -> dict:
    return {"model_list": [f.title for f in library.files()]}


def module_list(alias_names: bool = False) -> dict:
    names = list(PREPROCESSORS)
    return {"module_list": names, "module_detail": {n: module_detail(PREPROCESSORS[n]) for n in names}}


def control_types(library: ControlNetLibrary) -> dict:
    titles = [f.title for f in library.files()]
    types = {}
    for tag, words, default in CONTROL_TYPES:
        modules = [n for n, p in PREPROCESSORS.items() if tag == "All" or p.tag == tag]
        models = ["None"] + [t for t in titles if tag == "All" or any(w in t.lower() for w in words)]
        types[tag] = {"module_list": modules if tag == "All" else ["none", *modules], "model_list": models,
                      "default_option": default, "default_model": models[1] if len(models) > 1 else "None"}
    return {"control_types": types}


def detect(body: dict[str, Any]) -> dict:
    """POST /controlnet/detect; raises ValueError for the 422 answer."""
    body = {str(k).lower(): v for k, v in (body or {}).items()}
    module = str(body.get("controlnet_module", "none"))
    preprocessor = find_preprocessor(module)
    if missing_files(preprocessor):
        raise ValueError(f"module '{module}' is unavailable: it needs {', '.join(missing_files(preprocessor))}")
    images = body.get("controlnet_input_images") or body.get("controlnet_images") or []
    if not images:
        raise ValueError("No image selected")
    masks = body.get("controlnet_masks") or []
    resolution = body.get("controlnet_processor_res", -1)
    a, b = body.get("controlnet_threshold_a", -1), body.get("controlnet_threshold_b", -1)
    results = []
    for i, data in enumerate(images):
        try:
            image = decode_image(data, f"controlnet_input_images.{i}")
            mask = decode_image(masks[i], f"controlnet_masks.{i}") if i < len(masks) and masks[i] else None
        except UnitError as e:
            raise ValueError(str(e)) from None
        if image is None:
            raise ValueError(f"controlnet_input_images[{i}] is empty")
        mask_array = np.asarray(mask.convert("L").resize(image.size)) if mask is not None else None
        control_map = preprocess(preprocessor.name, np.asarray(image.convert("RGB")), int(float(resolution)),
                                 float(a), float(b), mask_array)
        results.append(encode_png(map_to_image(control_map)))
    return {"images": results, "info": "Success"}


def add_routes(app: Any, library: ControlNetLibrary, unit_count: Any) -> None:
    from fastapi import Body, HTTPException

    @app.get("/controlnet/version")
    def version():
        return {"version": API_VERSION}

    @app.get("/controlnet/model_list")
    def models(update: bool = True):
        return model_list(library)

    @app.get("/controlnet/module_list")
    def modules(alias_names: bool = False):
        return module_list(alias_names)

    @app.get("/controlnet/control_types")
    def types():
        return control_types(library)

    @app.get("/controlnet/settings")
    def settings():
        return {"control_net_unit_count": unit_count()}

    @app.post("/controlnet/detect")
    def run_detect(body: dict = Body(...)):
        try:
            return detect(body)
        except ValueError as e:
            raise HTTPException(status_code=422, detail=str(e)) from None
