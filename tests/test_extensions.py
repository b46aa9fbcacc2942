"""Extensions: installing (git, folder, zip), enabling, updating, removing; broken ones never stop the app."""
import argparse
import subprocess
import textwrap
import zipfile

import pytest

from modules import extension_callbacks
from modules.extensions import ExtensionAccessError, ExtensionError, ExtensionManager
from modules.jobs import JobState
from modules.paths import Paths
from modules.settings import Settings
from tests.extension_helpers import A1111_EXTENSIONS, close, load_from, make_engine, request

SCRIPT = ("from modules import scripts\n\n"
          "class Hello(scripts.Script):\n    def title(self):\n        return 'Hello {n}'\n")
INSTALLER = textwrap.dedent("""\
    import launch  # A1111's installer module
    from pathlib import Path
    assert launch.is_installed("torch")
    marker = Path(__file__).parent / "installed.txt"
    marker.write_text(marker.read_text() + "x" if marker.exists() else "x")
""")


def git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin", "HOME": str(cwd)})


def make_source(folder, version=1):
    (folder / "scripts").mkdir(parents=True, exist_ok=True)
    (folder / "scripts" / "hello.py").write_text(SCRIPT.format(n=version))
    (folder / "install.py").write_text(INSTALLER)
    return folder


@pytest.fixture()
def manager(tmp_path):
    paths = Paths.from_flags(data_dir=str(tmp_path / "data"))
    settings = Settings(file=tmp_path / "data" / "config.json")
    return ExtensionManager(paths, settings, builtin_dir=tmp_path / "builtin")


def test_git_install_enable_disable_update_uninstall(manager, tmp_path):
    origin = make_source(tmp_path / "sd-webui-hello")
    git(origin, "init", "-q", "-b", "main")
    git(origin, "add", ".")
    git(origin, "commit", "-q", "-m", "one")

    ext = manager.install(str(origin))
    assert ext.name == "sd-webui-hello" and ext.path == manager.user_dir / "sd-webui-hello"
    assert ext.enabled and ext.is_git and len(ext.commit_hash) == 40 and ext.branch == "main"
    assert ext.remote == str(origin) and ext.scripts == ["hello.py"]
    assert (ext.path / "installed.txt").read_text() == "x"  # install.py ran once, with `import launch`
    with pytest.raises(ExtensionError, match="already installed"):
        manager.install(str(origin))

    manager.set_enabled("sd-webui-hello", False)
    assert not manager.get("sd-webui-hello").enabled and manager.active() == []
    assert '"disabled_extensions": [\n        "sd-webui-hello"' in manager.settings.file.read_text()
    reloaded = ExtensionManager(Paths.from_flags(data_dir=str(tmp_path / "data")),
                                Settings.load(manager.settings.file), builtin_dir=manager.builtin_dir)
    assert not reloaded.get("sd-webui-hello").enabled
    manager.set_enabled("sd-webui-hello", True)
    assert [e.name for e in manager.active()] == ["sd-webui-hello"]

    [checked] = manager.check_for_updates()
    assert checked.status == "latest"
    make_source(origin, version=2)
    git(origin, "commit", "-q", "-am", "two")
    [checked] = manager.check_for_updates()
    assert checked.status == "behind"
    updated = manager.update("sd-webui-hello")
    assert updated.commit_hash != ext.commit_hash and updated.status == "latest"
    assert "Hello 2" in (updated.path / "scripts" / "hello.py").read_text()
    assert (updated.path / "installed.txt").read_text() == "xx"  # and again after the update

    manager.uninstall("sd-webui-hello")
    assert not ext.path.exists() and manager.list() == []


def test_install_from_folder_and_zip(manager, tmp_path):
    folder = make_source(tmp_path / "from-folder")
    (folder / "install.py").unlink()
    ext = manager.install(str(folder))
    assert ext.name == "from-folder" and not ext.is_git and (ext.path / "scripts" / "hello.py").is_file()
    with pytest.raises(ExtensionError, match="not installed from git"):
        manager.update("from-folder")

    archive = tmp_path / "zipped-ext.zip"
    with zipfile.ZipFile(archive, "w") as zf:  # GitHub's layout: one top folder
        zf.writestr("zipped-ext-main/scripts/hello.py", SCRIPT.format(n=3))
    ext = manager.install(str(archive))
    assert ext.name == "zipped-ext" and (ext.path / "scripts" / "hello.py").is_file()

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.py", "x")
    with pytest.raises(ExtensionError, match="unsafe path"):
        manager.install(str(evil))
    assert not (manager.user_dir.parent / "outside.py").exists()
    assert sorted(e.name for e in manager.list()) == ["from-folder", "zipped-ext"]
    assert not [p for p in manager.user_dir.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_requirements_are_pip_installed_with_the_apps_python(tmp_path):
    import sys

    calls = []

    def run(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    manager = ExtensionManager(Paths.from_flags(data_dir=str(tmp_path)), Settings(), builtin_dir=tmp_path / "b",
                               run=run)
    folder = make_source(tmp_path / "needs-deps")
    (folder / "requirements.txt").write_text("# comment\nsome-package>=1.0\n")
    manager.install(str(folder))
    assert calls[0][:5] == [sys.executable, "-m", "pip", "install", "-r"]
    assert calls[1] == [sys.executable, str(manager.user_dir / "needs-deps" / "install.py")]


def test_changes_are_refused_when_listening_without_the_flag(tmp_path):
    folder = make_source(tmp_path / "x")
    listen = argparse.Namespace(listen=True, enable_insecure_extension_access=False)
    manager = ExtensionManager(Paths.from_flags(data_dir=str(tmp_path)), Settings(), listen)
    with pytest.raises(ExtensionAccessError, match="--enable-insecure-extension-access"):
        manager.install(str(folder))
    allowed = argparse.Namespace(listen=True, enable_insecure_extension_access=True)
    manager = ExtensionManager(Paths.from_flags(data_dir=str(tmp_path)), Settings(), allowed,
                               builtin_dir=tmp_path / "b")
    (folder / "install.py").unlink()
    assert manager.install(str(folder)).name == "x"


def test_flags_and_setting_disable_extensions(tmp_path):
    builtin, user = tmp_path / "builtin", tmp_path / "data" / "extensions"
    (builtin / "core-ext").mkdir(parents=True)
    (user / "extra-ext").mkdir(parents=True)
    paths, settings = Paths.from_flags(data_dir=str(tmp_path / "data")), Settings()
    names = lambda args: [e.name for e in ExtensionManager(paths, settings, args, builtin).active()]  # noqa: E731
    assert names(None) == ["core-ext", "extra-ext"]
    assert names(argparse.Namespace(disable_extra_extensions=True)) == ["core-ext"]
    assert names(argparse.Namespace(disable_all_extensions=True)) == []
    settings.set("disable_all_extensions", "extra", save=False)
    assert names(None) == ["core-ext"]


def test_extensions_from_an_index(manager, tmp_path):
    folder = make_source(tmp_path / "indexed")
    (folder / "install.py").unlink()
    index = tmp_path / "index.json"
    index.write_text('{"extensions": [{"name": "Indexed", "url": "%s", "description": "d", "tags": ["t"]}]}'
                     % (folder.as_uri()))
    with pytest.raises(ExtensionError, match="no extension index"):
        manager.available()
    manager.settings.set("extensions_index_url", index.as_uri(), save=False)
    [entry] = manager.available()
    assert (entry.name, entry.installed) == ("Indexed", False)
    git(folder, "init", "-q")
    git(folder, "add", ".")
    git(folder, "commit", "-q", "-m", "one")
    assert manager.install_from_index("Indexed").name == "indexed"
    assert manager.available()[0].installed


BROKEN_IMPORT = "raise RuntimeError('broken on purpose at import')\n"
BROKEN_PROCESS = textwrap.dedent("""\
    import modules.scripts as scripts

    class Broken(scripts.Script):
        def title(self):
            return "Broken process"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def process(self, p, *args):
            raise ValueError("broken on purpose in process")

        def postprocess(self, p, processed, *args):
            raise AssertionError("a script that failed is off for the rest of the job")
""")


def test_broken_extensions_are_reported_by_name_and_the_job_goes_on(tiny_dir, policy, tmp_path):
    sources = tmp_path / "sources"
    for name, code in (("broken-import", BROKEN_IMPORT), ("broken-process", BROKEN_PROCESS)):
        (sources / name / "scripts").mkdir(parents=True)
        (sources / name / "scripts" / "main.py").write_text(code)
    engine = make_engine(tiny_dir, policy, tmp_path)
    try:
        loaded = load_from(engine, tmp_path, sources / "broken-import", sources / "broken-process",
                           A1111_EXTENSIONS / "prompt-suffix")
        [failure] = loaded.failures
        assert failure.extension == "broken-import" and "broken on purpose at import" in failure.message
        assert "Traceback" in failure.traceback
        assert loaded.manager.get("broken-import").enabled
        assert [e.load_error for e in loaded.loaded][0].startswith("RuntimeError")

        job = engine.generate(request(n_iter=2), timeout=120)
        assert job.state == JobState.done, job.error
        assert len(job.result.images) == 2
        assert job.result.infotexts[0].startswith("a lighthouse, masterpiece\n")  # the good one still ran
        [note] = [n for n in job.result.result.notes if "broken-process" in n]
        assert "extension 'broken-process' failed in process() of script 'Broken process'" in note
        assert "ValueError: broken on purpose in process" in note

        again = engine.generate(request(), timeout=120)  # the next job tries it again, and goes on again
        assert again.state == JobState.done and any("broken-process" in n for n in again.result.result.notes)
    finally:
        close(engine)


def test_unknown_alwayson_script_fails_the_job_naming_the_field(tiny_dir, policy, tmp_path):
    engine = make_engine(tiny_dir, policy, tmp_path)
    try:
        load_from(engine, tmp_path, A1111_EXTENSIONS / "prompt-suffix")
        job = engine.generate(request(alwayson_scripts={"no such script": {"args": []}}), timeout=120)
        assert job.state == JobState.failed and "alwayson_scripts.no such script" in job.error
        job = engine.generate(request(script_name="Nope"), timeout=120)
        assert job.state == JobState.failed and "script_name" in job.error
    finally:
        close(engine)


def test_cfg_callbacks_see_every_step_and_a_failing_one_is_turned_off(tiny_dir, policy, tmp_path):
    source = tmp_path / "sources" / "cfg-watch"
    (source / "scripts").mkdir(parents=True)
    (source / "scripts" / "watch.py").write_text(textwrap.dedent("""\
        from modules import script_callbacks
        steps, denoised = [], []

        def watch(params):
            steps.append((params.sampling_step, params.total_sampling_steps, tuple(params.x.shape)))

        def fail(params):
            raise RuntimeError("cfg boom")

        script_callbacks.on_cfg_denoiser(watch)
        script_callbacks.on_cfg_denoiser(fail)
        script_callbacks.on_cfg_denoised(lambda params: denoised.append(params.x.shape))
    """))
    engine = make_engine(tiny_dir, policy, tmp_path)
    try:
        load_from(engine, tmp_path, source)
        job = engine.generate(request(steps=3), timeout=120)
        assert job.state == JobState.done, job.error
        import sys

        module = sys.modules["atelier_extensions.cfg_watch.watch"]
        assert [s[:2] for s in module.steps] == [(0, 3), (1, 3), (2, 3)] and len(module.denoised) == 3
        assert sum("cfg boom" in n for n in job.result.result.notes) == 1  # reported once, then off
    finally:
        close(engine)
        assert extension_callbacks.callbacks("cfg_denoiser") == []


PER_IMAGE = textwrap.dedent("""\
    from modules import extension_api as api

    class PerImage(api.Script):
        def title(self):
            return "Per image"

        def show(self, is_img2img):
            return api.AlwaysVisible

        def process(self, p):
            p.all_prompts = [f"{prompt}, number {i}" for i, prompt in enumerate(p.all_prompts)]
            p.all_seeds = [100 + 10 * i for i in range(len(p.all_seeds))]

    class Twice(api.Script):
        api_args = [api.ScriptArg("Note", "twice")]

        def title(self):
            return "Twice"

        def run(self, p, note="twice"):
            first = api.process_images(p)
            p.all_prompts = p.all_seeds = None
            p.prompt, p.seed = "a second lighthouse", 5
            second = api.process_images(p)
            return api.Processed(p, [first.images[0], *first.images, *second.images],
                                 [first.infotexts[0], *first.infotexts, *second.infotexts], index_of_first_image=1)
""")


def test_per_image_prompts_and_seeds_from_a_script_make_what_single_requests_make(tiny_dir, policy, tmp_path):
    source = tmp_path / "sources" / "per-image"
    (source / "scripts").mkdir(parents=True)
    (source / "scripts" / "per_image.py").write_text(PER_IMAGE)
    engine = make_engine(tiny_dir, policy, tmp_path)
    try:
        load_from(engine, tmp_path, source)
        job = engine.generate(request(batch_size=2), timeout=120)
        assert job.state == JobState.done, job.error
        assert job.result.result.seeds == [100, 110]
        text = job.result.infotexts[1]
        assert text.startswith("a lighthouse, number 1\n") and "Seed: 110," in text

        engine.scripts.set_classes([])  # the same image without scripts, asked for directly
        single = engine.generate(request(prompt="a lighthouse, number 1", seed=110), timeout=120)
        assert list(single.result.images[0].getdata()) == list(job.result.images[1].getdata())
    finally:
        close(engine)


def test_selected_script_runs_process_images_itself(tiny_dir, policy, tmp_path):
    source = tmp_path / "sources" / "per-image"
    (source / "scripts").mkdir(parents=True)
    (source / "scripts" / "per_image.py").write_text(PER_IMAGE)
    engine = make_engine(tiny_dir, policy, tmp_path)
    try:
        load_from(engine, tmp_path, source)
        assert engine.scripts.txt2img.titles == ["Twice"]
        job = engine.generate(request(script_name="twice", script_args=["both"]), timeout=120)
        assert job.state == JobState.done, job.error
        out = job.result
        assert out.grid is not None and len(out.images) == 2 and len(out.paths) == 2
        assert out.infotexts[0].startswith("a lighthouse, number 0\n")
        assert out.infotexts[1].startswith("a second lighthouse, number 0\n") and "Seed: 100," in out.infotexts[1]
    finally:
        close(engine)
