"""Container images for the local cluster's real node, built here without a registry.

There is no Docker daemon and no registry: images are built with buildah (daemonless,
`buildah bud` reads Dockerfiles) into its local store (/var/lib/containers/storage),
then copied into the node's containerd with `ctr images import`.

- the base image, ``localhost/llmops/python-base:bookworm``: Debian's own packages
  (`debootstrap --variant=minbase`, python3, python3-venv, ca-certificates), trimmed,
  committed with buildah; rebuilt only when its recipe changes (a label carries the
  recipe's hash). The Dockerfiles take it as ``--build-arg BASE_IMAGE=...``; their
  default, python:3.11-slim, is for Docker elsewhere.
- the sandbox image, ``localhost/llmops/pause:1.0``: pause/main.go, static, FROM scratch;
  containerd is configured to use it instead of registry.k8s.io/pause.
- ``IMAGES``: images/*.Dockerfile under the names the operator and chart use by default.

`load` keeps an OCI layout in the cache (``build.cache_root()/images/oci``), written by
`skopeo copy` with uncompressed layers (`buildah push`, which gzips every layer on every
push, when skopeo is missing) so that an unchanged layer is never copied twice, and streams
to `ctr images import -` a tar holding the manifests, the configs and only the layers
containerd lacks (`ctr content ls`); containerd 2.4 takes such a tar. A one-line change
in runners/ rebuilds in ~3 s and loads in under a second.

When egress goes through a TLS-inspecting proxy whose CA the host trusts, the host's CA
bundle is bind-mounted into RUN steps (not into the image): pods that reach the internet
through such a proxy need that CA mounted too.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..settings import Settings
from .build import cache_root
from .mounts import unmount_under

Log = Callable[[str], None]

BASE_IMAGE = "localhost/llmops/python-base:bookworm"
PAUSE_IMAGE = "localhost/llmops/pause:1.0"
RECIPE_LABEL = "dev.llmops.recipe"
PLATFORM = "linux/amd64"

# The operator's image: the chart's image.repository and appVersion (tests/test_images.py checks both).
OPERATOR_IMAGE = "ghcr.io/llmops-dev/operator:0.1.0"

# -- the base image's recipe (its hash is the image's RECIPE_LABEL) -------------
BASE_RECIPE_VERSION = 1  # bump when _build_base changes in a way the constants below do not show
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# Removed from the tree after installing (paths relative to the root, globbed).
BASE_TRIM = (
    "var/lib/apt/lists/*", "var/cache/apt/*", "var/cache/debconf/*-old", "var/lib/dpkg/*-old", "var/log/*",
    "usr/share/doc/*", "usr/share/man/*", "usr/share/info/*", "usr/share/locale/*", "usr/share/lintian",
    "usr/share/common-licenses", "dev/*", "tmp/*", "run/*",
)
# Kept out of later `apt-get install`s too (the finetune image's g++), as in the slim images.
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
)
PAUSE_DIR = Path(__file__).with_name("pause")
# The host's CA bundle is bind-mounted over the image's while RUN steps run (never committed):
# where egress goes through a TLS-inspecting proxy, the host trusts its CA and pip in the
# Debian base reads this very file. Docker builds elsewhere need nothing of the kind.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class ImageError(RuntimeError):
    pass


@dataclass(frozen=True)
class Image:
    """One image built from a Dockerfile of the repository."""

    key: str  # short name on the command line
    name: str  # full reference, as pods name it
    dockerfile: str  # relative to the repository root
    build_args: dict[str, str] = field(default_factory=dict)


IMAGES: dict[str, Image] = {
    "operator": Image("operator", OPERATOR_IMAGE, "images/operator.Dockerfile"),
    "finetune": Image("finetune", Settings().finetune_image, "images/runner.Dockerfile", {"EXTRAS": "finetune", "RUNNER": "finetune"}),
    "compress": Image("compress", Settings().compress_image, "images/runner.Dockerfile", {"EXTRAS": "compress", "RUNNER": "compress"}),
    "compress-onnx": Image("compress-onnx", Settings().compress_onnx_image, "images/runner.Dockerfile",
                           {"EXTRAS": "compress-onnx", "RUNNER": "compress"}),
    # The CPU serving engine (engine: transformers) loads safetensors models and ONNX exports alike.
    "serve": Image("serve", Settings().serve_image, "images/runner.Dockerfile", {"EXTRAS": "serve", "RUNNER": "serve"}),
}
# What `build()` and `load()` do without names: the node needs the pause image and the workloads' images.
DEFAULT_NAMES = ("pause", *IMAGES)


# -- helpers ----------------------------------------------------------------------


def images_dir() -> Path:
    return cache_root() / "images"


def oci_dir() -> Path:
    return images_dir() / "oci"


@contextmanager
def _locked(name: str) -> Iterator[None]:
    """Serialize builds (and loads) of two processes: buildah's store copes, our caches would race."""
    images_dir().mkdir(parents=True, exist_ok=True)
    with open(images_dir() / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run(cmd: list[str], log: Log | None = None, *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run cmd; stream its output lines to `log` (when given); return the output; raise ImageError on failure."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, errors="replace")
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if log is not None:
            log(line.rstrip("\n"))
    if proc.wait() != 0:
        tail = "".join(lines)[-4000:]
        raise ImageError(f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}):\n{tail}")
    return "".join(lines)


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ImageError(f"`{tool}` is not on PATH (Debian: apt-get install buildah debootstrap; Go from https://go.dev)")
    return path


def repo_root(context: Path | str | None = None) -> Path:
    """The build context: `context`, else the repository holding this package (editable install), else the cwd's."""
    if context is not None:
        root = Path(context).resolve()
        if not any((root / "images").glob("*.Dockerfile")):
            raise ImageError(f"{root} has no images/*.Dockerfile")
        return root
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for folder in start.parents if start.is_file() else (start, *start.parents):
            if (folder / "pyproject.toml").is_file() and any((folder / "images").glob("*.Dockerfile")):
                return folder
    raise ImageError("cannot find the repository (a folder with pyproject.toml and images/*.Dockerfile); pass its path as the context")


def resolve(names: Iterable[str] | None) -> list[str]:
    """Short names (base, pause, operator, finetune) or full references -> full references, in order."""
    known = {"base": BASE_IMAGE, "pause": PAUSE_IMAGE, **{key: image.name for key, image in IMAGES.items()}}
    full = set(known.values())
    out: list[str] = []
    for name in DEFAULT_NAMES if names is None else names:
        ref = known.get(name, name)
        if ref not in full:
            raise ImageError(f"unknown image {name!r}; known: {', '.join(known)}")
        if ref not in out:
            out.append(ref)
    return out


def _label(name: str) -> str | None:
    """The recipe label of a local image; None when the image is missing."""
    proc = subprocess.run(
        ["buildah", "inspect", "--type", "image", "--format", f'{{{{index .OCIv1.Config.Labels "{RECIPE_LABEL}"}}}}', name],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def built(name: str) -> bool:
    """Whether buildah's store holds `name`."""
    return subprocess.run(["buildah", "inspect", "--type", "image", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


# -- base image -------------------------------------------------------------------


def base_recipe() -> str:
    recipe = {
        "version": BASE_RECIPE_VERSION, "suite": DEBIAN_SUITE, "mirror": DEBIAN_MIRROR, "security": DEBIAN_SECURITY_MIRROR,
        "packages": BASE_PACKAGES, "trim": BASE_TRIM, "dpkg": DPKG_EXCLUDES, "platform": PLATFORM,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _sources_list() -> str:
    return (
        f"deb {DEBIAN_MIRROR} {DEBIAN_SUITE} main\n"
        f"deb {DEBIAN_MIRROR} {DEBIAN_SUITE}-updates main\n"
        f"deb {DEBIAN_SECURITY_MIRROR} {DEBIAN_SUITE}-security main\n"
    )


def _build_base(log: Log) -> None:
    _need("debootstrap")
    started = time.monotonic()
    log(f"building {BASE_IMAGE} with debootstrap ({DEBIAN_SUITE}, {', '.join(BASE_PACKAGES)}) from {DEBIAN_MIRROR}")
    container = _run(["buildah", "from", "--name", f"llmops-base-{os.getpid()}", "scratch"]).strip()
    root: Path | None = None
    try:
        root = Path(_run(["buildah", "mount", container]).strip())
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", DEBIAN_SUITE, str(root), DEBIAN_MIRROR], log)
        (root / "etc/apt/sources.list").write_text(_sources_list())
        (root / "etc/dpkg/dpkg.cfg.d/llmops-slim").write_text("# as in the slim images: no docs, man pages or translations\n" + "\n".join(DPKG_EXCLUDES) + "\n")
        (root / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")  # no service ever starts in an image
        (root / "usr/sbin/policy-rc.d").chmod(0o755)
        # Updates and security fixes released since the point release (the same mirror host serves both).
        subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
        try:
            env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8"}
            _run(["chroot", str(root), "apt-get", "-q", "update"], log, env=env)
            _run(["chroot", str(root), "apt-get", "-q", "-y", "--no-install-recommends", "upgrade"], log, env=env)
            _run(["chroot", str(root), "apt-get", "clean"], log, env=env)
        finally:
            unmount_under(root)
        for pattern in BASE_TRIM:
            for path in root.glob(pattern):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        for name in ("etc/resolv.conf", "etc/hostname"):  # the runtime provides these; do not ship the build host's
            (root / name).write_text("")
        config = [
            "--env", "LANG=C.UTF-8", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--cmd", "python3", "--os", "linux", "--arch", "amd64",
            "--label", f"{RECIPE_LABEL}={base_recipe()}",
            "--label", f"org.opencontainers.image.description=Debian {DEBIAN_SUITE} minbase with {' '.join(BASE_PACKAGES)}",
        ]
        _run(["buildah", "config", *config, container])
        _run(["buildah", "umount", container])
        root = None
        _run(["buildah", "commit", "--rm", container, BASE_IMAGE])
        container = ""
    finally:
        if root is not None:
            unmount_under(root)
        if container:
            subprocess.run(["buildah", "rm", container], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    log(f"built {BASE_IMAGE} in {time.monotonic() - started:.1f}s")


def ensure_base(log: Log = print) -> str:
    with _locked("base"):
        if _label(BASE_IMAGE) != base_recipe():
            _build_base(log)
    return BASE_IMAGE


# -- pause image -------------------------------------------------------------------


def pause_recipe() -> str:
    digest = hashlib.sha256()
    for name in ("go.mod", "main.go"):
        digest.update((PAUSE_DIR / name).read_bytes())
    digest.update(PLATFORM.encode())
    return digest.hexdigest()[:16]


def _build_pause(log: Log) -> None:
    _need("go")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llmops-pause-") as work:
        # The package folder may be read-only (site-packages): build from a copy.
        for name in ("go.mod", "main.go"):
            shutil.copy(PAUSE_DIR / name, Path(work) / name)
        env = {**os.environ, "CGO_ENABLED": "0", "GOOS": "linux", "GOARCH": "amd64", "GOFLAGS": ""}
        _run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", "pause", "."], log, cwd=Path(work), env=env)
        container = _run(["buildah", "from", "--name", f"llmops-pause-{os.getpid()}", "scratch"]).strip()
        try:
            _run(["buildah", "copy", "--chmod", "0755", container, str(Path(work) / "pause"), "/pause"])
            _run([
                "buildah", "config", "--entrypoint", '["/pause"]', "--user", "65535:65535", "--os", "linux", "--arch", "amd64",
                "--label", f"{RECIPE_LABEL}={pause_recipe()}", container,
            ])
            _run(["buildah", "commit", "--rm", container, PAUSE_IMAGE])
        except BaseException:
            subprocess.run(["buildah", "rm", container], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            raise
    log(f"built {PAUSE_IMAGE} in {time.monotonic() - started:.1f}s")


def ensure_pause(log: Log = print) -> str:
    with _locked("pause"):
        if _label(PAUSE_IMAGE) != pause_recipe():
            _build_pause(log)
    return PAUSE_IMAGE


# -- Dockerfile images --------------------------------------------------------------


def bud_command(image: Image, context: Path, base: str = BASE_IMAGE) -> list[str]:
    args = {"BASE_IMAGE": base, **image.build_args}
    cmd = ["buildah", "bud", "--layers", "--pull=false", "--network=host", "-f", str(context / image.dockerfile), "-t", image.name]
    if HOST_CA_BUNDLE.is_file():
        cmd += ["--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    for key, value in args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    return [*cmd, str(context)]


def build(names: Iterable[str] | None = None, log: Log = print, context: Path | str | None = None) -> list[str]:
    """Build the images named (short names or full references; default: pause and every IMAGES entry).

    The base image and the pause image are built first when missing or when their
    recipe changed; Dockerfile images go through `buildah bud --layers`, so an
    unchanged layer is reused. Returns the full names, in order.
    """
    _need("buildah")
    refs = resolve(names)
    dockerfile_images = [image for image in IMAGES.values() if image.name in refs]
    root = repo_root(context) if dockerfile_images else None
    if BASE_IMAGE in refs or dockerfile_images:
        ensure_base(log)
    if PAUSE_IMAGE in refs:
        ensure_pause(log)
    for image in dockerfile_images:
        assert root is not None
        started = time.monotonic()
        log(f"building {image.name} from {image.dockerfile}")
        with _locked("bud"):
            previous = _image_id(image.name)
            _run(bud_command(image, root), log)
            if previous and previous != _image_id(image.name):
                # The old build lost its name: drop it, or every code change leaves gigabytes behind
                # (its layers shared with the new build stay; one still in use is refused and kept).
                subprocess.run(["buildah", "rmi", previous], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log(f"built {image.name} in {time.monotonic() - started:.1f}s")
    return refs


def _image_id(name: str) -> str | None:
    proc = subprocess.run(["buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", name],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


# -- loading into containerd -----------------------------------------------------------


def _ctr(ctr: list[str], *args: str) -> str:
    proc = subprocess.run([*ctr, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise ImageError(f"{' '.join(args[:3])} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def containerd_images(ctr: list[str]) -> dict[str, str]:
    """Image name -> manifest (or index) digest, as containerd has them."""
    lines = _ctr(ctr, "images", "ls").splitlines()[1:]
    return {parts[0]: parts[2] for parts in (line.split() for line in lines) if len(parts) >= 3}


def images_present(ctr: list[str], names: Iterable[str] | None = None) -> bool:
    """Whether containerd (the `ctr` command prefix, namespace included) has every image named."""
    have = containerd_images(ctr)
    return all(ref in have for ref in resolve(names))


def _blob(layout: Path, digest: str) -> Path:
    algorithm, hex_digest = digest.split(":", 1)
    return layout / "blobs" / algorithm / hex_digest


def _layout_index(layout: Path) -> dict:
    path = layout / "index.json"
    return json.loads(path.read_text()) if path.is_file() else {"schemaVersion": 2, "manifests": []}


def _layout_manifests(layout: Path) -> dict[str, dict]:
    """Reference name -> manifest descriptor in the OCI layout."""
    found = {}
    for desc in _layout_index(layout).get("manifests", []):
        ref = desc.get("annotations", {}).get("org.opencontainers.image.ref.name")
        if ref:
            found[ref] = desc
    return found


def _referenced_blobs(layout: Path, desc: dict) -> list[dict]:
    """The descriptors under a manifest descriptor: itself, its config, its layers (children of an index too)."""
    out = [desc]
    body = json.loads(_blob(layout, desc["digest"]).read_text())
    for child in body.get("manifests", []):
        out += _referenced_blobs(layout, child)
    if "config" in body:
        out.append(body["config"])
    out += body.get("layers", [])
    return out


def _gc_layout(layout: Path) -> int:
    """Drop the images that lost their name to a newer push, then the blobs nothing references; returns the bytes freed."""
    index = _layout_index(layout)
    named = [desc for desc in index.get("manifests", []) if desc.get("annotations", {}).get("org.opencontainers.image.ref.name")]
    if len(named) != len(index.get("manifests", [])):
        index["manifests"] = named
        scratch = layout / "index.json.tmp"
        scratch.write_text(json.dumps(index))
        scratch.replace(layout / "index.json")
    keep = {d["digest"] for desc in named for d in _referenced_blobs(layout, desc)}
    freed = 0
    for path in (layout / "blobs").glob("*/*"):
        if f"{path.parent.name}:{path.name}" not in keep:
            freed += path.stat().st_size
            path.unlink()
    return freed


def _push_command(ref: str, layout: Path) -> list[str]:
    """Copy an image from buildah's store into the OCI layout, reusing the blobs already there.

    A blob is reused only when the layout has the very digest the layer would get. With
    skopeo, layers go in uncompressed, with their own digests: an unchanged 6 GB layer costs
    nothing, here or in the import. `buildah push` (1.28) always gzips into an OCI layout,
    so it recompresses every layer on every push (about a minute for the finetune image)
    though the result, deterministic, still imports incrementally.
    """
    if shutil.which("skopeo"):
        return ["skopeo", "copy", "--quiet", "--dest-oci-accept-uncompressed-layers", f"containers-storage:{ref}", f"oci:{layout}:{ref}"]
    return ["buildah", "push", "--quiet", ref, f"oci:{layout}:{ref}"]


def push_to_layout(names: Iterable[str], log: Log = print) -> dict[str, dict]:
    """Write the images into the cached OCI layout (blobs already there are reused); name -> manifest descriptor."""
    layout = oci_dir()
    layout.parent.mkdir(parents=True, exist_ok=True)
    for ref in names:
        if not built(ref):
            raise ImageError(f"{ref} is not built; run `llmops-devcluster images build` first")
        started = time.monotonic()
        _run(_push_command(ref, layout))
        log(f"pushed {ref} to {layout} in {time.monotonic() - started:.1f}s")
    freed = _gc_layout(layout)
    if freed:
        log(f"dropped {freed / 1e6:.0f} MB of stale blobs from {layout}")
    return _layout_manifests(layout)


def _tar_members(layout: Path, descriptors: dict[str, dict], have: set[str]) -> tuple[bytes, list[dict]]:
    """index.json naming the images for containerd, and the blobs to send: every manifest and
    config (small; containerd reads them to walk the image), and the layers it lacks."""
    entries, blobs, seen = [], [], set()
    for ref, desc in descriptors.items():
        manifest = json.loads(_blob(layout, desc["digest"]).read_text())
        entry = {key: desc[key] for key in ("mediaType", "digest", "size")}
        entry["annotations"] = {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": ref}
        always = {desc["digest"]}
        if "config" in manifest:
            always.add(manifest["config"]["digest"])
            config = json.loads(_blob(layout, manifest["config"]["digest"]).read_text())
            entry["platform"] = {"os": config.get("os", "linux"), "architecture": config.get("architecture", "amd64")}
        always.update(child["digest"] for child in manifest.get("manifests", []))
        entries.append(entry)
        for blob in _referenced_blobs(layout, desc):
            if blob["digest"] in seen or (blob["digest"] not in always and blob["digest"] in have):
                continue
            seen.add(blob["digest"])
            blobs.append(blob)
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries}
    return json.dumps(index).encode(), blobs


def _import(ctr: list[str], layout: Path, index: bytes, blobs: list[dict]) -> None:
    """Stream an OCI layout tar (index.json, oci-layout, the blobs given) into `ctr images import -`."""
    with tempfile.TemporaryFile() as output:
        proc = subprocess.Popen([*ctr, "images", "import", "--platform", PLATFORM, "-"], stdin=subprocess.PIPE, stdout=output, stderr=subprocess.STDOUT)
        assert proc.stdin is not None
        try:
            with tarfile.open(fileobj=proc.stdin, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for arcname, data in (("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index)):
                    info = tarfile.TarInfo(arcname)
                    info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
                    tar.addfile(info, _BytesReader(data))
                for blob in blobs:
                    algorithm, hex_digest = blob["digest"].split(":", 1)
                    tar.add(_blob(layout, blob["digest"]), arcname=f"blobs/{algorithm}/{hex_digest}", recursive=False)
        except BrokenPipeError:
            pass  # ctr gave up; its exit status and output say why
        finally:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
        if proc.wait() != 0:
            output.seek(0)
            text = output.read().decode(errors="replace")
            raise ImageError(f"ctr images import failed (exit {proc.returncode}):\n{text[-4000:]}")


class _BytesReader:
    def __init__(self, data: bytes):
        self._data, self._pos = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._pos + size
        chunk, self._pos = self._data[self._pos:end], min(end, len(self._data))
        return chunk


def load(ctr: list[str], names: Iterable[str] | None = None, log: Log = print) -> None:
    """Put the images (built already) into the containerd that `ctr` reaches.

    `ctr` is the command prefix, address and namespace included, e.g.
    ``[ctr_path, "--address", sock, "--namespace", "k8s.io"]``. Images containerd has
    at the same digest are skipped; for the others only the blobs containerd lacks
    are sent.
    """
    refs = resolve(names)
    with _locked("oci"):
        started = time.monotonic()
        descriptors = push_to_layout(refs, log)
        have_images = containerd_images(ctr)
        todo = {ref: descriptors[ref] for ref in refs if have_images.get(ref) != descriptors[ref]["digest"]}
        for ref in refs:
            if ref not in todo:
                log(f"{ref} is in containerd already ({descriptors[ref]['digest'][:19]})")
        if not todo:
            return
        layout = oci_dir()
        have_blobs = set(_ctr(ctr, "content", "ls", "-q").split())
        index, blobs = _tar_members(layout, todo, have_blobs)
        size = sum(blob["size"] for blob in blobs)
        total = sum({blob["digest"]: blob["size"] for ref in todo for blob in _referenced_blobs(layout, todo[ref])}.values())
        import_started = time.monotonic()
        try:
            _import(ctr, layout, index, blobs)
        except ImageError as error:
            # containerd may have dropped (garbage-collected) a blob since `content ls`: send everything.
            log(f"incremental import failed ({str(error).splitlines()[-1][:200]}); importing the whole images")
            index, blobs = _tar_members(layout, todo, set())
            size = sum(blob["size"] for blob in blobs)
            _import(ctr, layout, index, blobs)
        log(
            f"imported {', '.join(todo)} into containerd in {time.monotonic() - import_started:.1f}s "
            f"({size / 1e6:.0f} MB sent of {total / 1e6:.0f} MB; {time.monotonic() - started:.1f}s in all)"
        )
        missing = [ref for ref in todo if ref not in containerd_images(ctr)]
        if missing:
            raise ImageError(f"containerd does not list {', '.join(missing)} after the import")
