"""The three images as users (and the Helm chart) rely on them, read from the Dockerfiles:
pinned bases, a non-root final stage without compilers, ``tuneship`` as the entry point,
writable paths under /tmp, the pinned torch and llama.cpp, and every pip install
constrained by requirements.lock."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
from tuneship.common.toolchain import BINDINGS, CONVERT_SCRIPT
from tuneship.testing.dockerfiles import Dockerfile, Stage, read_dockerfile

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]
ROOT = Path(__file__).resolve().parents[2]
IMAGES = {  # Dockerfile -> (image the chart pulls, extras installed)
    "Dockerfile": ("ghcr.io/tuneship/tuneship", {"controller", "serve", "console"}),
    "Dockerfile.train": ("ghcr.io/tuneship/tuneship-train", {"train"}),
    "Dockerfile.convert": ("ghcr.io/tuneship/tuneship-convert", {"convert", "train"}),
}
COMPILERS = re.compile(
    r"^(build-essential|gcc(-\d+)?|g\+\+(-\d+)?|cpp|clang(-\d+)?|cmake|ninja-build|make"
    r"|python3?(\.\d+)?-dev|libc6?-dev|gfortran|cargo|rustc)$"
)
VERSIONED_TAG = re.compile(r"\d+\.\d+\.\d+")
NON_ROOT_USER = "65532:65532"  # the chart's runAsUser/runAsGroup
SCRIPT = "scripts/build-llama-cpp.sh"
VERSION_FILE = "services/tuneship/common/llama-cpp-python.version"


def parsed(name: str) -> Dockerfile:
    return read_dockerfile(ROOT / name)


def apt_packages(command: str) -> list[str]:
    """The packages every ``apt-get install``/``apt install`` in one RUN names."""
    packages: list[str] = []
    for part in re.split(r"&&|;|\|\|", command):
        words = shlex.split(part)
        while words and "=" in words[0]:  # DEBIAN_FRONTEND=noninteractive apt-get ...
            words.pop(0)
        if len(words) > 1 and words[0] in ("apt-get", "apt") and "install" in words:
            after = words[words.index("install") + 1 :]
            packages += [w for w in after if not w.startswith("-")]
    return packages


def pip_installs(stage: Stage) -> list[str]:
    parts = [part for run in stage.runs() for part in re.split(r"&&|;", run)]
    return [part for part in parts if "pip install" in part]


def makefile_torch() -> str:
    found = re.findall(r"torch==([0-9][\w.+]*)", (ROOT / "Makefile").read_text())
    assert found, "the Makefile pins no torch version"
    assert len(set(found)) == 1, found
    return found[0]


@pytest.mark.parametrize("name", IMAGES)
def test_every_base_image_is_pinned(name: str) -> None:
    dockerfile = parsed(name)
    earlier: set[str] = set()
    for stage in dockerfile.stages:
        image = stage.image
        assert "$" not in image, f"{name}:{stage.line}: unresolved {image}"
        if image not in earlier:
            digest = re.search(r"@sha256:[0-9a-f]{64}$", image)
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert digest or (tag and tag != "latest" and VERSIONED_TAG.search(tag)), (
                f"{name}:{stage.line}: {image} is not pinned to a patch version or a digest"
            )
        earlier.add(stage.name)
    assert dockerfile.final.image not in earlier, "the final stage starts from a fresh base"


@pytest.mark.parametrize("name", IMAGES)
def test_final_stage_runs_tuneship_as_non_root_without_compilers(name: str) -> None:
    final = parsed(name).final
    assert final.user() == NON_ROOT_USER
    assert final.all("USER")[-1].line > max(i.line for i in final.all("RUN") or final.all("COPY"))
    assert final.exec_form("ENTRYPOINT") == ["tuneship"]
    installed = [p for run in final.runs() for p in apt_packages(run)]
    assert not [p for p in installed if COMPILERS.match(p)], installed
    assert not pip_installs(final), "the final stage only copies the venv built before it"
    sources = {(c.flags().get("from"), c.words()[0]) for c in final.all("COPY")}
    assert ("builder", "/opt/venv") in sources
    assert final.env()["PATH"].startswith("/opt/venv/bin:")


@pytest.mark.parametrize("name", IMAGES)
def test_writable_paths_are_under_tmp_and_labels_name_the_image(name: str) -> None:
    final = parsed(name).final
    env = final.env()
    # The chart runs a read-only root filesystem with emptyDirs on /tmp.
    for key in ("HOME", "XDG_CACHE_HOME", "HF_HOME", "TUNESHIP_DATA_DIR", "TUNESHIP_WORK_DIR"):
        assert env[key] == "/tmp" or env[key].startswith("/tmp/"), (key, env[key])
    assert final.all("WORKDIR")[-1].text == "/tmp"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    labels = final.labels()
    assert labels["org.opencontainers.image.licenses"] == project["license"]
    assert labels["org.opencontainers.image.version"] == "${TUNESHIP_VERSION}"
    assert labels["org.opencontainers.image.source"].startswith("https://github.com/tuneship/")


@pytest.mark.parametrize("name", IMAGES)
def test_every_pip_install_is_constrained_by_the_lock(name: str) -> None:
    for stage in parsed(name).stages:
        installs = pip_installs(stage)
        for command in installs:
            assert "-c requirements.lock" in command, f"{name}: {command}"
        if installs:
            copied = [c for c in stage.all("COPY") if "requirements.lock" in c.words()[:-1]]
            first_install = next(r.line for r in stage.all("RUN") if "pip install" in r.text)
            assert copied and copied[0].line < first_install, f"{name}: lock copied too late"


@pytest.mark.parametrize("name", IMAGES)
def test_the_package_is_installed_with_the_image_extras(name: str) -> None:
    extras = {
        extra
        for stage in parsed(name).stages
        for command in pip_installs(stage)
        for group in re.findall(r"'\.\[([\w,-]+)\]'", command)
        for extra in group.split(",")
    }
    assert extras == IMAGES[name][1]


@pytest.mark.parametrize(("name", "index"), [("Dockerfile.train", "cu128"),
                                             ("Dockerfile.convert", "cpu")])  # fmt: skip
def test_torch_is_the_makefile_version_from_its_index(name: str, index: str) -> None:
    commands = [c for s in parsed(name).stages for c in pip_installs(s) if "torch==" in c]
    assert len(commands) == 1, commands
    assert re.findall(r"torch==([0-9][\w.+]*)", commands[0]) == [makefile_torch()]
    assert f"--index-url https://download.pytorch.org/whl/{index}" in commands[0]


def test_train_image_adds_a_pinned_bitsandbytes() -> None:
    builder = parsed("Dockerfile.train").stage("builder")
    [command] = [c for c in pip_installs(builder) if "bitsandbytes" in c]
    pinned = re.search(r"bitsandbytes==(\S+?)\"?(\s|$)", command)
    assert pinned, command
    value = pinned.group(1)
    if value.startswith("${"):
        args = {k: v for a in builder.all("ARG") for k, _, v in [a.text.partition("=")]}
        value = args[value[2:-1]]
    assert VERSIONED_TAG.fullmatch(value), value


def test_convert_toolchain_is_built_by_the_make_toolchain_script() -> None:
    dockerfile = parsed("Dockerfile.convert")
    script_name = SCRIPT.rsplit("/", 1)[1]
    builders = [s for s in dockerfile.stages if any(script_name in r for r in s.runs())]
    assert len(builders) == 1, "exactly one stage builds llama.cpp"
    toolchain = builders[0]
    copies = {c.words()[0]: c.words()[-1] for c in toolchain.all("COPY")}
    # The script reads the pinned version from ../services/tuneship/common/ beside itself.
    script_dir = copies[SCRIPT].rstrip("/")
    assert script_dir.endswith("/scripts")
    base = script_dir[: -len("/scripts")]
    assert copies[VERSION_FILE].rstrip("/") == f"{base}/{Path(VERSION_FILE).parent}"
    [run] = [r for r in toolchain.runs() if script_name in r]
    words = shlex.split(run)
    assert words[0] == f"{base}/{SCRIPT}"
    assert "LLAMA_CPP_PYTHON_VERSION" not in (ROOT / "Dockerfile.convert").read_text()
    dest = words[1]

    final = dockerfile.final
    assert final.env()["TUNESHIP_TOOLCHAIN_DIR"] == dest
    taken = {c.words()[0] for c in final.all("COPY") if c.flags().get("from") == toolchain.name}
    wanted = {
        f"{dest}/bin",  # the binaries and the shared libraries beside them
        f"{dest}/{BINDINGS.split('/')[0]}",  # the ctypes bindings
        f"{dest}/src/{CONVERT_SCRIPT}",
        f"{dest}/src/gguf-py",
        f"{dest}/src/conversion",  # the convert script's model classes
        f"{dest}/toolchain.json",
    }
    assert taken == wanted, "only the runtime pieces of the toolchain, not its build tree"


def test_make_images_builds_the_three_images_the_chart_pulls() -> None:
    makefile = (ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:(.*)$", makefile, re.M)
    assert phony and "images" in phony.group(1).split()
    target = re.search(r"^images:.*## .+\n((?:\t.*\n)+)", makefile, re.M)
    assert target, "an images target with a ## help comment"
    recipe = target.group(1)
    assert "docker info" in recipe and "no Docker engine is available" in recipe
    for dockerfile, (image, _extras) in IMAGES.items():
        repo, name = image.rsplit("/", 1)
        assert f"{name}={dockerfile}" in recipe and f"{repo}/" in recipe
    assert "pyproject.toml" in recipe  # the tag is the package version
