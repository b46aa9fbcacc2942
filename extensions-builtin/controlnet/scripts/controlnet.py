"""ControlNet as a built-in extension, compatible with sd-webui-controlnet's API and infotext.

An always-on script: `alwayson_scripts: {"controlnet": {"args": [unit, unit, ...]}}`, one object per unit (see
controlnet_units.py for the fields). For each job it loads the enabled units' ControlNets from
models/ControlNet, preprocesses their images, and adds a job-scoped `cfg_denoiser` hook that hands the loop one
residual provider per unit (controlnet_apply.py), so txt2img, img2img, inpaint and hires fix all get control.
A unit that can't run (unknown model, a ControlNet for another model family, no image) fails the job with a
message naming the unit, as in sd-webui-controlnet: silently generating without the control would waste it.
"""
from __future__ import annotations

from typing import Any

from controlnet_api import add_routes
from controlnet_apply import activate, detected_maps, infotext_params
from controlnet_models import ControlNetLibrary
from controlnet_ui import build_units  # imported now: the extension's folder is on sys.path only while loading
from controlnet_units import on_infotext_pasted, unit_from_args

from modules import extension_api as api

api.register_settings("ControlNet", {
    "control_net_unit_count": api.setting(3, "Number of ControlNet units (needs a restart)", minimum=1, maximum=10),
    "control_net_model_cache_size": api.setting(2, "ControlNet models kept in memory", minimum=1, maximum=10),
    "control_net_no_detectmap": api.setting(False, "Do not append the preprocessed maps to the output"),
})


def unit_count() -> int:
    try:
        return max(1, int(api.get_setting("control_net_unit_count") or 3))
    except Exception:  # settings not readable yet (no app): the default
        return 3


library = ControlNetLibrary()


class ControlNetScript(api.Script):
    # One argument per unit: sd-webui-controlnet's clients send a list of unit objects.
    api_args = [api.ScriptArg(label=f"ControlNet Unit {i}", value=None, name=f"unit_{i}", check=unit_from_args)
                for i in range(unit_count())]

    def title(self):
        return "ControlNet"

    def show(self, is_img2img):
        return api.AlwaysVisible

    def ui(self, is_img2img):
        states, self.infotext_fields = build_units(is_img2img, len(self.api_args), library)
        return states

    def process(self, p, *args):
        p.controlnet_detected_maps = []  # this job's, even if `p` ran before
        try:
            units = [unit_from_args(arg) for arg in args]
            if not any(unit.enabled for unit in units):
                return
            library.keep_loaded = int(api.get_setting("control_net_model_cache_size") or 2)
            active = activate(units, p, library)
        except ValueError as e:  # ControlNetError, UnitError, unknown preprocessor
            _fail_job(p, e)
            return
        if not active:
            return
        p.extra_generation_params.update(infotext_params(active))
        p.controlnet_detected_maps = detected_maps(active, int(p.height), int(p.width))
        hires = bool(getattr(p, "enable_hr", False))
        providers = [lambda call, unit=unit: unit.residuals(call, hires) for unit in active]
        p.add_denoise_hook("cfg_denoiser", lambda state: state.residual_providers.extend(providers))

    def postprocess(self, p, processed, *args):
        # As sd-webui-controlnet: the maps follow the generated images, which the app hands back and shows but
        # never saves (they have no infotext). A request's override_settings may turn them off too.
        overrides = p.override_settings if isinstance(p.override_settings, dict) else {}
        off = overrides.get("control_net_no_detectmap", api.get_setting("control_net_no_detectmap"))
        if not off:
            processed.images.extend(getattr(p, "controlnet_detected_maps", []))


def _fail_job(p: Any, error: Exception) -> None:
    """Make the job fail with `error`: hook failures are only noted, but a residual provider's error ends the
    job, which is what a unit that can't run deserves."""
    def provider(call):
        raise error

    p.add_denoise_hook("cfg_denoiser", lambda state: state.residual_providers.append(provider))


def _routes(demo, app):
    add_routes(app, library, unit_count)


api.on_app_started(_routes)
api.on_infotext_pasted(on_infotext_pasted)
