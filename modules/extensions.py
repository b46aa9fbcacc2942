"""Extensions: finding, loading, installing, updating and removing them.

An extension is a folder in `extensions/` (the user's, under the data dir) or `extensions-builtin/` (shipped),
laid out as A1111's: `scripts/*.py` are imported at start (Script subclasses in them become scripts; callbacks
they register are theirs), `install.py` runs once in a subprocess with the app's Python at install and update,
and `requirements.txt` is pip-installed into the same environment then. Extension code is trusted code: it runs
with the app's rights. Installing, updating, removing and switching extensions is refused while the server
listens on a non-loopback address, unless --enable-insecure-extension-access (A1111's rule).

Enabled state lives in config.json as A1111 keeps it: `disabled_extensions` (a list of names) and
`disable_all_extensions` ("none", "extra": only built-ins run, "all"); --disable-all-extensions and
--disable-extra-extensions do the same for one run.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

from modules import extension_callbacks as callbacks
from modules.errors import AtelierError
from modules.paths import REPO_ROOT, Paths
from modules.scripting import Script, ScriptClass
from modules.settings import OPTIONS, Option, Settings

if TYPE_CHECKING:
    from modules.engine import Engine

log = logging.getLogger(__name__)

BUILTIN_DIR = REPO_ROOT / "extensions-builtin"
GIT_TIMEOUT = 120  # seconds for clone / fetch / pull
INSTALL_TIMEOUT = 600  # seconds for pip and install.py
INDEX_MAX_BYTES = 16 * 1024 * 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")

# `disabled_extensions` (a list) is kept in config.json as A1111 keeps it, but isn't a Settings-tab option.
OPTIONS.setdefault("disable_all_extensions", Option(
    "none", "Disable all extensions (keeps the list of disabled extensions)", "Extensions",
    choices=("none", "extra", "all")))
OPTIONS.setdefault("extensions_index_url", Option(
    "", "URL of an extension index (JSON in A1111's index format; empty = none)", "Extensions"))


class ExtensionError(AtelierError):
    """An extension can't be installed, updated, removed or found; the message says why."""


class ExtensionAccessError(ExtensionError):
    """Changing extensions from the UI/API is refused while listening on a non-loopback address."""


class ExtensionNotFound(ExtensionError):
    """No installed extension has that name."""


@dataclass
class Extension:
    name: str
    path: Path
    builtin: bool = False
    enabled: bool = True
    remote: Optional[str] = None
    branch: Optional[str] = None
    commit_hash: Optional[str] = None
    commit_date: Optional[int] = None  # unix time of the commit
    status: str = "unknown"  # after check_for_updates: "latest", "behind", "unknown", or "error: ..."
    load_error: Optional[str] = None  # set when one of its scripts failed to import
    scripts: list[str] = field(default_factory=list)  # file names of its scripts/*.py

    @property
    def version(self) -> str:
        return (self.commit_hash or "")[:8]

    @property
    def is_git(self) -> bool:
        return self.commit_hash is not None

    def to_dict(self) -> dict[str, Any]:
        """A1111's /sdapi/v1/extensions entry, plus Atelier's builtin/status/load_error."""
        return {"name": self.name, "remote": self.remote or "", "branch": self.branch or "",
                "commit_hash": self.commit_hash or "", "version": self.version,
                "commit_date": self.commit_date or 0, "enabled": self.enabled, "builtin": self.builtin,
                "status": self.status, "load_error": self.load_error}


@dataclass
class IndexEntry:
    """One extension in an index (A1111's index.json: {"extensions": [{name, url, description, tags}]})."""

    name: str
    url: str
    description: str = ""
    tags: list[str] = field(default_factory=list)
    installed: bool = False


def installs_allowed(args: Optional[argparse.Namespace]) -> bool:
    """A1111's rule: no changes from the UI/API when listening on all interfaces, unless explicitly allowed."""
    if args is None:
        return True
    return not getattr(args, "listen", False) or bool(getattr(args, "enable_insecure_extension_access", False))


class ExtensionManager:
    """The installed extensions and what can be done to them. `args` are the server's flags (None: a local
    caller such as a test or a command-line tool, which is always allowed)."""

    def __init__(self, paths: Paths, settings: Settings, args: Optional[argparse.Namespace] = None,
                 builtin_dir: Path = BUILTIN_DIR, user_dir: Optional[Path] = None,
                 run: Callable[..., subprocess.CompletedProcess] = subprocess.run):
        self.user_dir = user_dir or paths.data_dir / "extensions"
        self.builtin_dir = builtin_dir
        self.settings, self.args = settings, args
        self._run = run
        self._known: dict[str, Extension] = {}  # last listing, keeps statuses and load errors

    # -- listing ----------------------------------------------------------------------------------------
    def list(self) -> list[Extension]:
        """Built-in extensions first, then the user's, each by name."""
        disabled = set(self.settings.get("disabled_extensions") or [])
        found = []
        for folder, builtin in ((self.builtin_dir, True), (self.user_dir, False)):
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir(), key=lambda p: p.name.lower()):
                if not path.is_dir() or path.name.startswith("."):
                    continue
                old = self._known.get(path.name)
                ext = Extension(path.name, path, builtin, path.name not in disabled)
                if old is not None:
                    ext.status, ext.load_error = old.status, old.load_error
                self._read_git(ext)
                ext.scripts = sorted(p.name for p in (path / "scripts").glob("*.py"))
                found.append(ext)
        self._known = {ext.name: ext for ext in found}
        return found

    def get(self, name: str) -> Extension:
        for ext in self.list():
            if ext.name == name:
                return ext
        raise ExtensionNotFound(f"no extension named '{name}' is installed")

    def active(self) -> list[Extension]:
        """The extensions that load this run, after the flags and `disable_all_extensions`."""
        mode = self.settings.get("disable_all_extensions") or "none"
        if getattr(self.args, "disable_all_extensions", False) or mode == "all":
            return []
        extra_off = getattr(self.args, "disable_extra_extensions", False) or mode == "extra"
        return [ext for ext in self.list() if ext.enabled and (ext.builtin or not extra_off)]

    # -- enabling ---------------------------------------------------------------------------------------
    def set_enabled(self, name: str, enabled: bool) -> None:
        """Persisted in config.json; takes effect at the next start (as A1111's "Apply and restart")."""
        self.check_access()
        self.get(name)
        disabled = [n for n in (self.settings.get("disabled_extensions") or []) if n != name]
        if not enabled:
            disabled.append(name)
        self.settings.set("disabled_extensions", disabled)

    # -- installing -------------------------------------------------------------------------------------
    def check_access(self) -> None:
        if not installs_allowed(self.args):
            raise ExtensionAccessError("changing extensions is disabled while listening on a non-loopback address "
                                       "(--listen); start with --enable-insecure-extension-access to allow it")

    def install(self, source: str, name: Optional[str] = None, branch: Optional[str] = None,
                run_installers: bool = True) -> Extension:
        """Install from a git URL (or a local git repository), a local folder, or a .zip file."""
        self.check_access()
        source = str(source).strip()
        local = Path(source).expanduser()
        if local.is_file() and local.suffix.lower() == ".zip":
            kind = "zip"
        elif local.is_dir() and not (local / ".git").exists():
            kind = "folder"
        elif local.is_dir() or re.match(r"^(https?|git|ssh|file)://|^[\w.-]+@[\w.-]+:", source):
            kind = "git"
        else:
            raise ExtensionError(f"can't install from {source!r}: not a git URL, a folder or a .zip file")
        name = name or _name_from_source(source, local if kind != "git" else None)
        if not _NAME.match(name):
            raise ExtensionError(f"'{name}' is not a usable extension folder name")
        target = self.user_dir / name
        if target.exists() or (self.builtin_dir / name).exists():
            raise ExtensionError(f"an extension named '{name}' is already installed")
        self.user_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".installing-{name}-", dir=self.user_dir))
        try:
            unpacked = staging / name
            if kind == "git":
                command = ["clone", *(["--branch", branch] if branch else []), "--", source, str(unpacked)]
                self._git(self.user_dir, *command)
            elif kind == "folder":
                shutil.copytree(local, unpacked, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                _extract_zip(local, unpacked)
            os.replace(unpacked, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("installed extension %s from %s", name, source)
        ext = self.get(name)
        if run_installers:
            self.run_installers(ext)
        return ext

    def run_installers(self, ext: Extension) -> None:
        """requirements.txt (pip, into this Python's environment), then install.py; either failing raises."""
        requirements = ext.path / "requirements.txt"
        if requirements.is_file() and _has_requirements(requirements):
            self._command([sys.executable, "-m", "pip", "install", "-r", str(requirements)], ext.path,
                          f"installing requirements of '{ext.name}'")
        installer = ext.path / "install.py"
        if installer.is_file():
            env = dict(os.environ)
            shim = Path(__file__).resolve().parent / "compat" / "installer"
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(shim), str(REPO_ROOT), env.get("PYTHONPATH")) if p)
            self._command([sys.executable, str(installer)], ext.path, f"install.py of '{ext.name}'", env)

    def uninstall(self, name: str) -> None:
        self.check_access()
        ext = self.get(name)
        if ext.builtin:
            raise ExtensionError(f"'{name}' is built in; disable it instead")
        if ext.path.resolve().parent != self.user_dir.resolve():
            raise ExtensionError(f"'{name}' is not inside {self.user_dir}")
        shutil.rmtree(ext.path)
        disabled = [n for n in (self.settings.get("disabled_extensions") or []) if n != name]
        self.settings.set("disabled_extensions", disabled)
        self._known.pop(name, None)
        log.info("uninstalled extension %s", name)

    # -- updates ----------------------------------------------------------------------------------------
    def check_for_updates(self, names: Optional[list[str]] = None) -> list[Extension]:
        """git fetch each (or the named) git extension and compare with its upstream branch."""
        self.check_access()
        checked = []
        for ext in self.list():
            if names is not None and ext.name not in names:
                continue
            if not ext.is_git:
                ext.status = "unknown"
            else:
                try:
                    self._git(ext.path, "fetch", "--quiet")
                    behind = int(self._git(ext.path, "rev-list", "--count", "HEAD..@{u}").strip() or 0)
                    ext.status = "behind" if behind else "latest"
                except ExtensionError as e:
                    ext.status = f"error: {e}"
            checked.append(ext)
        return checked

    def update(self, name: str) -> Extension:
        """git pull (fast-forward only); the installers run again when the commit changed."""
        self.check_access()
        ext = self.get(name)
        if not ext.is_git:
            raise ExtensionError(f"'{name}' was not installed from git, so it can't be updated")
        before = ext.commit_hash
        self._git(ext.path, "pull", "--ff-only", "--quiet")
        ext = self.get(name)
        ext.status = "latest"
        if ext.commit_hash != before:
            log.info("updated extension %s: %s -> %s", name, (before or "")[:8], ext.version)
            self.run_installers(ext)
        return ext

    # -- index ------------------------------------------------------------------------------------------
    def available(self, index_url: Optional[str] = None) -> list[IndexEntry]:
        """The extensions listed by the index at `index_url` (default: the `extensions_index_url` setting)."""
        url = index_url or self.settings.get("extensions_index_url")
        if not url:
            raise ExtensionError("no extension index is set (Settings → Extensions → URL of an extension index)")
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                data = json.loads(response.read(INDEX_MAX_BYTES + 1)[:INDEX_MAX_BYTES].decode("utf-8"))
        except (OSError, ValueError) as e:
            raise ExtensionError(f"can't read the extension index at {url}: {e}") from e
        entries = data.get("extensions") if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise ExtensionError(f"the extension index at {url} has no \"extensions\" list")
        installed = {ext.remote for ext in self.list() if ext.remote}
        result = []
        for item in entries:
            if isinstance(item, dict) and item.get("url"):
                url_ = str(item["url"])
                result.append(IndexEntry(str(item.get("name") or _name_from_source(url_, None)), url_,
                                         str(item.get("description") or ""), list(item.get("tags") or []),
                                         url_ in installed or url_.removesuffix(".git") in installed))
        return result

    def install_from_index(self, name: str, index_url: Optional[str] = None) -> Extension:
        for entry in self.available(index_url):
            if entry.name == name or entry.url == name:
                return self.install(entry.url)
        raise ExtensionError(f"the extension index has no entry named '{name}'")

    # -- helpers ----------------------------------------------------------------------------------------
    def _read_git(self, ext: Extension) -> None:
        if not (ext.path / ".git").exists():
            return
        try:
            ext.commit_hash = self._git(ext.path, "rev-parse", "HEAD").strip() or None
            ext.commit_date = int(self._git(ext.path, "log", "-1", "--format=%ct").strip() or 0)
            ext.branch = self._git(ext.path, "rev-parse", "--abbrev-ref", "HEAD").strip()
            ext.remote = self._git(ext.path, "config", "--get", "remote.origin.url", check=False).strip() or None
        except ExtensionError as e:
            log.warning("can't read git information of extension %s: %s", ext.name, e)

    def _git(self, cwd: Path, *args: str, check: bool = True) -> str:
        env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="echo")
        try:
            done = self._run(["git", *args], cwd=str(cwd), capture_output=True, text=True, timeout=GIT_TIMEOUT,
                             env=env)
        except FileNotFoundError as e:
            raise ExtensionError("git is not installed") from e
        except subprocess.TimeoutExpired as e:
            raise ExtensionError(f"git {args[0]} took longer than {GIT_TIMEOUT} s") from e
        if check and done.returncode != 0:
            raise ExtensionError(f"git {args[0]} failed: {(done.stderr or done.stdout).strip()[-500:]}")
        return done.stdout or ""

    def _command(self, command: list[str], cwd: Path, what: str, env: Optional[dict] = None) -> None:
        try:
            done = self._run(command, cwd=str(cwd), capture_output=True, text=True, timeout=INSTALL_TIMEOUT, env=env)
        except subprocess.TimeoutExpired as e:
            raise ExtensionError(f"{what} took longer than {INSTALL_TIMEOUT} s") from e
        if done.returncode != 0:
            raise ExtensionError(f"{what} failed: {(done.stderr or done.stdout or '').strip()[-2000:]}")
        if done.stdout and done.stdout.strip():
            log.info("%s:\n%s", what, done.stdout.strip()[-2000:])


def _name_from_source(source: str, local: Optional[Path]) -> str:
    if local is not None:
        return local.stem if local.suffix.lower() == ".zip" else local.resolve().name
    tail = source.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return tail[:-4] if tail.endswith(".git") else tail


def _has_requirements(path: Path) -> bool:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return any(line.strip() and not line.strip().startswith("#") for line in lines)


def _extract_zip(archive: Path, target: Path) -> None:
    """Extract safely (no absolute paths, no `..`); a zip holding one top folder (GitHub's) is unwrapped."""
    with zipfile.ZipFile(archive) as zf:
        names = [n for n in zf.namelist() if n and not n.startswith("__MACOSX/")]
        for member in names:
            parts = Path(member).parts
            if member.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                raise ExtensionError(f"{archive.name} has an unsafe path: {member!r}")
        tops = {Path(n).parts[0] for n in names}
        unwrap = len(tops) == 1 and all(len(Path(n).parts) > 1 or n.endswith("/") for n in names)
        target.mkdir(parents=True)
        for member in names:
            relative = Path(*Path(member).parts[1:]) if unwrap else Path(member)
            if not relative.parts:
                continue
            destination = target / relative
            if member.endswith("/"):
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, open(destination, "wb") as dst:
                shutil.copyfileobj(src, dst)


# -- loading --------------------------------------------------------------------------------------------

@dataclass
class LoadedExtensions:
    """What `load_extensions` did: the manager, the extensions it loaded, and what failed (by name)."""

    manager: ExtensionManager
    loaded: list[Extension] = field(default_factory=list)
    failures: list[callbacks.Failure] = field(default_factory=list)


_model_bridge_installed: set[int] = set()


def load_extensions(engine: "Engine", args: Optional[argparse.Namespace] = None,
                    manager: Optional[ExtensionManager] = None) -> LoadedExtensions:
    """Import every active extension's scripts, give the engine their Script classes, then let them declare
    settings (on_ui_settings). A failing extension is reported and skipped; the app goes on."""
    from modules.compat import host

    host.bind(engine, args)
    manager = manager or ExtensionManager(engine.paths, engine.settings, args)
    result = LoadedExtensions(manager)
    first_failure = len(callbacks.app_failures)
    classes: list[ScriptClass] = []
    for ext in manager.active():
        found, error = load_extension_scripts(ext)
        classes.extend(found)
        ext.load_error = error
        result.loaded.append(ext)
    engine.scripts.set_classes(classes)
    callbacks.run_ui_settings()
    if id(engine) not in _model_bridge_installed:  # on_model_loaded, with the read-only model stand-in
        _model_bridge_installed.add(id(engine))
        engine.models.on_loaded.append(lambda model: callbacks.run_model_loaded(host.model_info(engine)))
    result.failures = callbacks.app_failures[first_failure:]
    log.info("extensions: %d loaded (%s), %d script(s); %d failure(s)", len(result.loaded),
             ", ".join(e.name for e in result.loaded) or "none", len(classes), len(result.failures))
    return result


def unload_extensions(engine: "Engine") -> None:
    """on_script_unloaded, then forget every callback, script, card provider and extension setting (their
    saved values stay in config.json), before a reload or at exit."""
    from modules import extension_api, extra_network_cards
    from modules.compat import host

    callbacks.run_script_unloaded()
    callbacks.clear()
    engine.scripts.set_classes([])
    for name in list(extension_api.setting_owners):
        OPTIONS.pop(name, None)
        extension_api.setting_owners.pop(name)
    extra_network_cards.clear()
    host.bind(None, None)


def load_extension_scripts(ext: Extension) -> tuple[list[ScriptClass], Optional[str]]:
    """Import `scripts/*.py` of one extension (by file name, as A1111). Returns its Script classes and the
    first error, if any; a file that fails is reported and the others still load."""
    classes: list[ScriptClass] = []
    error = None
    folder = ext.path / "scripts"
    for path in sorted(folder.glob("*.py")) if folder.is_dir() else []:
        try:
            classes.extend(import_script_file(path, ext.name, ext.path))
        except Exception as e:  # anything the extension's code raises, SyntaxError included
            failure = callbacks.record_failure(ext.name, f"loading {path.relative_to(ext.path)}", e)
            error = error or failure.message
    return classes, error


def import_script_file(path: Path, extension: str = "", basedir: Optional[Path] = None) -> list[ScriptClass]:
    """Import one script file as its own module; return the Script subclasses it defines."""
    basedir = basedir or path.parent
    module_name = f"atelier_extensions.{_module_part(extension or 'scripts')}.{_module_part(path.stem)}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"can't import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        with callbacks.loading(callbacks.Owner(extension, basedir, path)), _on_sys_path(basedir):
            spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return [ScriptClass(obj, path, extension) for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, Script) and obj is not Script
            and obj.__module__ == module_name]


def _module_part(text: str) -> str:
    return re.sub(r"\W", "_", text) or "_"


@contextlib.contextmanager
def _on_sys_path(folder: Path) -> Iterator[None]:
    """As A1111: the extension's folder is importable while its scripts load (`from lib_x import ...`)."""
    saved = list(sys.path)
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path[:] = saved

