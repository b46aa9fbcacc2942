"""A1111's `modules.script_callbacks`, as extensions import it: a public face over
modules/extension_callbacks.py, holding no logic. Callbacks Atelier has no place for (on_list_optimizers,
on_before_ui, ...) are accepted and never called."""
from modules.extension_callbacks import (AfterCFGCallbackParams, CFGDenoisedParams, CFGDenoiserParams,
                                         ImageSaveParams, on_after_component, on_app_started,
                                         on_before_component, on_before_image_saved, on_cfg_after_cfg,
                                         on_cfg_denoised, on_cfg_denoiser, on_image_saved, on_infotext_pasted,
                                         on_model_loaded, on_script_unloaded, on_ui_settings, on_ui_tabs)
from modules.extension_callbacks import accepted_only as _accepted_only

on_before_ui = _accepted_only("before_ui")
on_ui_train_tabs = _accepted_only("ui_train_tabs")
on_image_grid = _accepted_only("image_grid")
on_before_reload = _accepted_only("before_reload")
on_list_optimizers = _accepted_only("list_optimizers")
on_list_unets = _accepted_only("list_unets")
on_extra_noise = _accepted_only("extra_noise")
on_before_token_counter = _accepted_only("before_token_counter")
on_cfg_after_cfg = on_cfg_after_cfg

__all__ = ["AfterCFGCallbackParams", "CFGDenoisedParams", "CFGDenoiserParams", "ImageSaveParams", "on_app_started",
           "on_before_image_saved", "on_cfg_after_cfg", "on_cfg_denoised", "on_cfg_denoiser", "on_image_saved",
           "on_infotext_pasted", "on_model_loaded", "on_script_unloaded", "on_ui_settings", "on_ui_tabs",
           "on_before_ui", "on_before_component", "on_after_component", "on_ui_train_tabs", "on_image_grid",
           "on_before_reload", "on_list_optimizers", "on_list_unets", "on_extra_noise", "on_before_token_counter"]
