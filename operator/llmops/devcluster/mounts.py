"""Mounts left under a folder: what debootstrap leaves in an image root, what a node's kubelet and containerd leave."""

from __future__ import annotations

import subprocess
from pathlib import Path


def mounts_under(*folders: Path) -> list[str]:
    """Mount points strictly below any of `folders`, deepest first (the order to unmount them in)."""
    prefixes = [str(Path(folder).resolve()).rstrip("/") + "/" for folder in folders]
    with open("/proc/self/mountinfo") as info:
        # Field 5 is the mount point, with spaces escaped as \040.
        points = [line.split()[4].replace("\\040", " ") for line in info]
    return sorted((p for p in points if any(p.startswith(prefix) for prefix in prefixes)), key=len, reverse=True)


def unmount_under(*folders: Path, rounds: int = 3) -> None:
    """Lazily unmount everything below `folders`; a few rounds, for mounts that appear as others go."""
    for _ in range(rounds):
        points = mounts_under(*folders)
        if not points:
            return
        for point in points:
            subprocess.run(["umount", "-l", point], capture_output=True)
