"""What A1111's module globals stand for in Atelier, behind the A1111 module paths extensions import.

The faces (`modules/shared.py`, `modules/scripts.py`, `modules/script_callbacks.py`, `modules/images.py`, and
the A1111 names `modules/processing.py` forwards) only re-export from here and from the extension API
(`modules/extension_api.py`). `host.bind(engine, args)` says which app they speak for; the extension loader
calls it before any extension is imported.
"""
