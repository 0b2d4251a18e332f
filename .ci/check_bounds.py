"""Every dependency in setup.cfg has a lower and an upper bound, and the oldest stack pins exactly its lower bounds.

python .ci/check_bounds.py setup.cfg .ci/constraints-oldest.txt     # the declared bounds and the pins agree
python .ci/check_bounds.py --installed .ci/constraints-oldest.txt   # this environment holds exactly the pins
"""

from __future__ import annotations

import configparser
import sys
from importlib.metadata import PackageNotFoundError, version

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version


def requirements(setup_cfg: str) -> list[Requirement]:
    config = configparser.ConfigParser()
    config.read(setup_cfg)
    lines = config["options"]["install_requires"].splitlines()
    for extra in config["options.extras_require"].values():
        lines += extra.splitlines()
    return [Requirement(line) for line in (line.split("#")[0].strip() for line in lines) if line]


def pins(constraints: str) -> dict[str, Version]:
    out = {}
    for line in open(constraints).read().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"{constraints}: {line!r} is not an exact pin"
            out[canonicalize_name(requirement.name)] = Version(spec.version)
    return out


def check_declared(setup_cfg: str, constraints: str) -> list[str]:
    problems, pinned, seen = [], pins(constraints), set()
    for requirement in requirements(setup_cfg):
        name = canonicalize_name(requirement.name)
        seen.add(name)
        lower = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==")]
        upper = [s for s in requirement.specifier if s.operator in ("<", "==")]
        if not lower or not upper:
            problems.append(f"{requirement}: needs a lower bound (>=) and an upper bound (<)")
            continue
        if name not in pinned:
            problems.append(f"{requirement}: its lower bound is not pinned in {constraints}")
        elif pinned[name] != lower[0]:
            problems.append(f"{requirement}: lower bound {lower[0]} but {constraints} pins {pinned[name]}")
    problems += [
        f"{name}=={pin} in {constraints} is no dependency of {setup_cfg}"
        for name, pin in pinned.items()
        if name not in seen
    ]
    return problems


def check_installed(constraints: str) -> list[str]:
    problems = []
    for name, pin in pins(constraints).items():
        try:
            installed = Version(version(name))
        except PackageNotFoundError:
            problems.append(f"{name}=={pin} is not installed")
            continue
        if Version(installed.base_version) != pin:  # torch's local tag (+cpu) is not part of the pin
            problems.append(f"{name}: {installed} installed, {pin} pinned")
    return problems


if __name__ == "__main__":
    if sys.argv[1] == "--installed":
        problems = check_installed(sys.argv[2])
    else:
        problems = check_declared(sys.argv[1], sys.argv[2])
    print("\n".join(problems) or "bounds: ok")
    sys.exit(1 if problems else 0)
