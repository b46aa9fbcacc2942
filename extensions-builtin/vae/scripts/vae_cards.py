"""VAE files in models/VAE as cards in the extra-networks browser.

Choosing a VAE is core (the `sd_vae` setting, per job `override_settings.sd_vae`; infotexts carry
`VAE hash` and `VAE`, and pasting one selects it again). A VAE card inserts nothing into the prompt: its
metadata `{"sd_vae": name}` is the setting value a click selects.
"""
from __future__ import annotations

from modules import extension_api as api


def cards() -> list[api.ExtraNetworkCard]:
    return [api.card_for_file("vae", item.path, tag="", metadata={"sd_vae": item.name},
                              search_terms=[item.name])
            for item in api.vae_files(refresh=True)]


api.register_extra_network_cards("vae", cards)
