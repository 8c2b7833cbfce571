"""Print the requirements an image installs, read from pyproject.toml (stdlib only).

    python3 images/requirements.py pyproject.toml [EXTRA[,EXTRA...]]

Prints, one per line and sorted: the project's build requirements (the code layer
installs the project with --no-build-isolation, offline), its dependencies, and those
of the extras named, following the project's references to itself
(`llmops[finetune]` inside `finetune-gpu`). The Dockerfiles run it in a stage of its
own, so the dependency layer's cache key is this list, not the whole pyproject.toml.
"""

from __future__ import annotations

import re
import sys
import tomllib

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?(.*)$")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    project = pyproject["project"]
    own_name = _canonical(project["name"])
    optional = {_canonical(key): value for key, value in project.get("optional-dependencies", {}).items()}
    found: set[str] = set(pyproject.get("build-system", {}).get("requires", []))
    seen: set[str] = set()

    def add(items: list[str]) -> None:
        for item in items:
            match = _REQUIREMENT.match(item)
            if match and _canonical(match.group(1)) == own_name:
                add_extras([extra.strip() for extra in (match.group(2) or "").split(",") if extra.strip()])
            else:
                found.add(item.strip())

    def add_extras(names: list[str]) -> None:
        for name in map(_canonical, names):
            if name in seen:
                continue
            if name not in optional:
                raise SystemExit(f"unknown extra {name!r}; known: {', '.join(sorted(optional))}")
            seen.add(name)
            add(optional[name])

    add(project.get("dependencies", []))
    add_extras(extras)
    return sorted(found, key=str.lower)


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0], "rb") as handle:
        pyproject = tomllib.load(handle)
    extras = [extra for extra in (argv[1] if len(argv) > 1 else "").split(",") if extra.strip()]
    print("\n".join(requirements(pyproject, extras)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
