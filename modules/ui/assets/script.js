// Atelier: keyboard shortcuts (A1111's), tooltips for icon buttons, the settings search filter.
(function () {
  if (window.atelierLoaded) return;
  window.atelierLoaded = true;
  const TABS = ["txt2img", "img2img", "inpaint", "extras"];

  function visible(el) { return el && el.offsetParent !== null; }

  function visibleButton(suffix) {
    for (const tab of TABS) {
      const el = document.getElementById(tab + "_" + suffix);
      if (visible(el)) return el;
    }
    return null;
  }

  document.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      const button = visibleButton("generate");
      if (button) { e.preventDefault(); button.click(); }
    } else if (e.key === "Enter" && e.altKey) {
      const button = visibleButton("skip");
      if (button) { e.preventDefault(); button.click(); }
    } else if (e.key === "Escape") {
      const button = visibleButton("interrupt");
      if (button) { e.preventDefault(); button.click(); }
    }
  }, true);

  const TOOLTIPS = {
    "_random_seed": "Set seed to -1: a new random seed each time",
    "_reuse_seed": "Reuse the seed of the selected image",
    "_random_subseed": "Set variation seed to -1",
    "_reuse_subseed": "Reuse the variation seed of the selected image",
    "_res_switch_btn": "Swap width and height",
    "_style_apply": "Apply the selected styles to the prompt",
    "_style_edit": "Edit styles",
    "_open_folder": "Open the images output folder",
    "_save": "Save the selected image (and offer it for download)",
    "_send_to_img2img": "Send image and parameters to img2img",
    "_send_to_inpaint": "Send image and parameters to inpaint",
    "_send_to_extras": "Send image to upscale",
    "refresh_sd_model_checkpoint": "Refresh the list of checkpoints and VAEs",
  };

  function addTooltips() {
    document.querySelectorAll("button.tool[id]").forEach(function (el) {
      if (el.title) return;
      for (const [suffix, text] of Object.entries(TOOLTIPS)) {
        if (el.id.endsWith(suffix)) { el.title = text; el.setAttribute("aria-label", text); break; }
      }
    });
  }
  new MutationObserver(addTooltips).observe(document.documentElement, { childList: true, subtree: true });

  document.addEventListener("input", function (e) {
    if (e.target.closest && e.target.closest("#settings_search")) window.atelierFilterSettings(e.target.value);
  }, true);

  window.atelierFilterSettings = function (query) {
    const q = (query || "").trim().toLowerCase();
    document.querySelectorAll("#settings .settings-section").forEach(function (section) {
      let shown = 0;
      const title = (section.querySelector(".settings-section-title") || {}).textContent || "";
      const titleMatch = q && title.toLowerCase().includes(q);
      section.querySelectorAll(".setting-item").forEach(function (item) {
        const match = !q || titleMatch || item.textContent.toLowerCase().includes(q);
        item.classList.toggle("setting-hidden", !match);
        if (match) shown++;
      });
      section.classList.toggle("setting-hidden", shown === 0);
    });
  };
})();
