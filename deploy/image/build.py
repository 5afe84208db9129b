#!/usr/bin/env python3
"""``make image``: build K2's image from ``Dockerfile``, with or without an image registry.

Usage::

    python3 deploy/image/build.py [--base auto|registry|debian] [--tag k2:latest] [--refresh-base] [--sizes]

Where the Dockerfile's base (``python:3.11-slim``) is on this machine or can be pulled, the
image is built as users build it, packages from PyPI. Where no registry answers (``auto``
finds out with one ``docker pull``), the same Dockerfile is built on a base made of
Debian's packages (``debootstrap`` of bookworm with python3, python3-venv and
ca-certificates, security updates applied, imported as ``k2-base:bookworm-<hash>``), and
pip installs only from a wheelhouse that pip makes on the host (``var/image/wheels``):
``--build-arg BASE=... --build-arg PACKAGES=wheelhouse``.

Each step is reused when its inputs did not change: the base image by its recipe, the
wheelhouse by the dependencies it holds, the image by a hash of everything that goes into
it (Dockerfile, .dockerignore, pyproject.toml, README.md, k2/, the base image's id and the
wheelhouse), tagged ``k2:<hash>`` and then ``--tag`` (the ``k2:<hash>`` of earlier trees are
untagged). A re-run with nothing changed takes a few seconds. Progress goes to stderr; the
last line of stdout is the image, ``k2:<hash>``.

A Docker engine must answer. When none does and this runs as root, it is started
(``dockerd``, log in ``var/image/dockerd.log``), and installed first from Debian's
``docker.io`` when missing (``debootstrap`` too, for a build without a registry). Otherwise
one message says what to run. Exit codes: 0 built or reused, 1 failure (the message says
what to do), 2 usage. Standard library only: this runs before the venv exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VAR = ROOT / "var" / "image"
WHEELS = VAR / "wheels"  # the Dockerfile copies var/image/wheel[s]: this path is part of its contract
DOCKERFILE = ROOT / "Dockerfile"
CONTEXT_FILES = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md")
IMAGE_REPO = "k2"

SUITE = "bookworm"
SUITE_PYTHON = (3, 11)  # bookworm's python3: the wheelhouse must be made for it
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
MIRROR = os.environ.get("K2_DEBIAN_MIRROR") or "http://deb.debian.org/debian"
SECURITY_MIRROR = os.environ.get("K2_DEBIAN_SECURITY_MIRROR") or "http://deb.debian.org/debian-security"
# What a slim base leaves out, as the official slim images do: docs, manuals, translations, apt's lists.
BASE_SLIM = (
    "var/lib/apt/lists",
    "var/cache/apt",
    "var/cache/debconf",
    "var/log",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "tmp",
)

PULL_TIMEOUT_S = 300
ENGINE_START_S = 60
BUILD_TIMEOUT_S = 3600


class ImageError(Exception):
    """A failure the user can act on: the message says what is wrong and what to do."""


def say(message: str) -> None:
    print(f"image: {message}", file=sys.stderr, flush=True)


def run(
    cmd: list[str], *, timeout: float, capture: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            cmd,
            capture_output=capture,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"`{' '.join(cmd[:4])} ...` did not finish within {timeout:.0f} s") from exc


def must(cmd: list[str], *, timeout: float, capture: bool = True, env: dict[str, str] | None = None) -> str:
    """Run ``cmd``; its stdout, or an ImageError with the end of what it printed."""
    done = run(cmd, timeout=timeout, capture=capture, env=env)
    if done.returncode != 0:
        tail = "\n".join(((done.stdout or "") + (done.stderr or "")).strip().splitlines()[-15:])
        raise ImageError(f"`{' '.join(cmd[:4])} ...` exited {done.returncode}" + (f":\n{tail}" if tail else ""))
    return done.stdout or ""


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------- the engine


def engine_answers() -> str | None:
    """None when the Docker engine answers, else why not."""
    done = run(["docker", "version", "--format", "{{.Server.Version}}"], timeout=30)
    return None if done.returncode == 0 else last_line(done.stderr) or f"docker version exited {done.returncode}"


def apt_install(*packages: str) -> None:
    say(f"installing Debian's {', '.join(packages)}")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    must(["apt-get", "update"], timeout=600, env=env)
    must(["apt-get", "install", "-y", "--no-install-recommends", *packages], timeout=1200, env=env)


def can_install() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def ensure_engine() -> None:
    """A Docker engine that answers: found, or (as root) installed and started."""
    why = engine_answers() if shutil.which("docker") else "the docker command is not installed"
    if why is None:
        return
    if "permission denied" in why:
        raise ImageError(
            f"the Docker engine refuses this user ({why}): add it to the docker group "
            "(`sudo usermod -aG docker $USER`, then log in again), or run `sudo make image`"
        )
    if shutil.which("dockerd") is None and can_install():
        apt_install("docker.io")
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        raise ImageError(
            f"no Docker engine answers ({why}). Start one: `sudo dockerd > /tmp/dockerd.log 2>&1 &` "
            "(or `sudo systemctl start docker`); Debian's is `sudo apt-get install docker.io`. "
            "Run as root, `make image` installs and starts it itself."
        )
    VAR.mkdir(parents=True, exist_ok=True)
    log = VAR / "dockerd.log"
    say(f"no Docker engine answers ({why}): starting dockerd, log {log.relative_to(ROOT)}")
    with log.open("ab") as out:
        proc = subprocess.Popen(
            ["dockerd"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    (VAR / "dockerd.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + ENGINE_START_S
    while (why := engine_answers()) is not None:
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise ImageError(f"dockerd did not come up ({why}); the end of {log}:\n{tail}")
        time.sleep(1)


def image_id(ref: str) -> str | None:
    done = run(["docker", "image", "inspect", "--format", "{{.Id}}", ref], timeout=60)
    return done.stdout.strip() if done.returncode == 0 else None


# --------------------------------------------------------------------------- the base


def dockerfile_base() -> str:
    """The Dockerfile's own base: ``ARG BASE=...``."""
    found = re.search(r"^ARG BASE=(\S+)", DOCKERFILE.read_text(), re.M)
    if not found:
        raise ImageError(f"{DOCKERFILE} declares no `ARG BASE=<image>`")
    return found.group(1)


def registry_base(base: str) -> str | None:
    """``base`` when it is here or can be pulled, else None (and why, said once)."""
    if image_id(base):
        return base
    say(f"pulling {base}")
    done = run(["docker", "pull", base], timeout=PULL_TIMEOUT_S)
    if done.returncode == 0:
        return base
    say(f"no image registry answers ({last_line(done.stderr)}): building on a base made of Debian's packages")
    return None


def debian_base(refresh: bool) -> str:
    """``k2-base:bookworm-<hash>``, made by debootstrap unless already here."""
    recipe = json.dumps([SUITE, BASE_PACKAGES, MIRROR, SECURITY_MIRROR, BASE_SLIM])
    tag = f"k2-base:{SUITE}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
    if image_id(tag) and not refresh:
        return tag
    if os.geteuid() != 0:
        raise ImageError(f"making the base {tag} takes debootstrap, which needs root: run `sudo make image`")
    if shutil.which("debootstrap") is None:
        if not can_install():
            raise ImageError("making the base takes debootstrap: `sudo apt-get install debootstrap`")
        apt_install("debootstrap")
    began = time.monotonic()
    rootfs = VAR / "base" / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    rootfs.mkdir(parents=True)
    say(f"making {tag}: debootstrap {SUITE} ({', '.join(BASE_PACKAGES)}) from {MIRROR}")
    must(
        ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(rootfs), MIRROR],
        timeout=1800,
    )
    (rootfs / "etc/apt/sources.list").write_text(
        f"deb {MIRROR} {SUITE} main\ndeb {MIRROR} {SUITE}-updates main\ndeb {SECURITY_MIRROR} {SUITE}-security main\n"
    )
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    say("applying Debian's updates and security fixes")
    must(["chroot", str(rootfs), "apt-get", "update"], timeout=600, env=env)
    must(["chroot", str(rootfs), "apt-get", "-y", "upgrade"], timeout=1200, env=env)
    must(["chroot", str(rootfs), "apt-get", "clean"], timeout=120, env=env)
    for part in BASE_SLIM:
        for child in (rootfs / part).glob("*"):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", "-", "."], stdout=subprocess.PIPE)
    imported = run_import(tar, tag)
    shutil.rmtree(rootfs.parent)
    say(f"{tag} made in {time.monotonic() - began:.0f} s ({imported})")
    return tag


def run_import(tar: subprocess.Popen[bytes], tag: str) -> str:
    changes = ["ENV LANG=C.UTF-8", 'CMD ["python3"]']
    cmd = ["docker", "import", *(a for c in changes for a in ("--change", c)), "-", tag]
    done = subprocess.run(cmd, stdin=tar.stdout, capture_output=True, text=True, timeout=900, check=False)
    if tar.wait() != 0 or done.returncode != 0:
        raise ImageError(f"docker import of the base failed: {done.stderr.strip() or 'tar failed'}")
    return done.stdout.strip()


# --------------------------------------------------------------------------- the wheelhouse


def dependencies() -> list[str]:
    """The project's dependencies (no extras: production's) and what building K2 itself takes."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [*project["project"]["dependencies"], *project["build-system"]["requires"]]


def wheelhouse(python: str) -> str:
    """``var/image/wheels``: a wheel of every dependency, made by ``python``'s pip; its key."""
    version = run([python, "-c", "import sys; print(sys.version_info[0], sys.version_info[1])"], timeout=60)
    if tuple(int(p) for p in version.stdout.split() or (0, 0)) != SUITE_PYTHON:
        want = ".".join(map(str, SUITE_PYTHON))
        raise ImageError(
            f"the wheelhouse is made for {SUITE}'s Python {want}, so by a Python {want}: "
            f"{python} is not one (set PYTHON3=/path/to/python{want})"
        )
    deps = dependencies()
    key = hashlib.sha256(json.dumps([SUITE_PYTHON, platform.machine(), deps]).encode()).hexdigest()[:16]
    stamp = WHEELS / ".key"
    if stamp.is_file() and stamp.read_text().strip() == key:
        return key
    began = time.monotonic()
    fresh = VAR / "wheels.new"
    shutil.rmtree(fresh, ignore_errors=True)
    say(f"making the wheelhouse {WHEELS.relative_to(ROOT)} with {python} -m pip wheel ({len(deps)} requirements)")
    must([python, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(fresh), *deps], timeout=3600)
    (fresh / ".key").write_text(f"{key}\n")
    shutil.rmtree(WHEELS, ignore_errors=True)
    fresh.rename(WHEELS)
    count = len(list(WHEELS.glob("*.whl")))
    say(f"wheelhouse made in {time.monotonic() - began:.0f} s: {count} wheels")
    return key


# --------------------------------------------------------------------------- the image


def content_hash(build_args: dict[str, str], base_id: str, wheels_key: str) -> str:
    """Everything that goes into the image, so that an unchanged tree reuses the image built from it."""
    digest = hashlib.sha256(json.dumps([build_args, base_id, wheels_key], sort_keys=True).encode())
    files = [ROOT / name for name in CONTEXT_FILES]
    files += sorted(p for p in (ROOT / "k2").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def build(base: str, *, refresh_base: bool, python: str) -> str:
    """The image's ``k2:<hash>``, built unless already here."""
    build_args: dict[str, str] = {}
    wheels_key = ""
    chosen = registry_base(dockerfile_base()) if base in ("auto", "registry") else None
    if chosen is None:
        if base == "registry":
            raise ImageError(f"--base registry: {dockerfile_base()} is not here and cannot be pulled")
        chosen = debian_base(refresh_base)
        wheels_key = wheelhouse(python)
        build_args = {"BASE": chosen, "PACKAGES": "wheelhouse"}
    base_id = image_id(chosen)
    if base_id is None:
        raise ImageError(f"the base {chosen} vanished while the build was being prepared")
    digest = content_hash(build_args, base_id, wheels_key)
    ref = f"{IMAGE_REPO}:{digest}"
    if image_id(ref):
        say(f"{ref} is already built from this tree")
        return ref
    began = time.monotonic()
    say(f"docker build on {chosen}" + (" (packages from the wheelhouse)" if wheels_key else " (packages from PyPI)"))
    cmd = ["docker", "build", "--file", str(DOCKERFILE), "--tag", ref, "--label", f"k2.content-hash={digest}"]
    for name, value in build_args.items():
        cmd += ["--build-arg", f"{name}={value}"]
    done = run([*cmd, str(ROOT)], timeout=BUILD_TIMEOUT_S)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-30:])
        raise ImageError(f"docker build exited {done.returncode}:\n{tail}")
    say(f"{ref} built in {time.monotonic() - began:.0f} s")
    return ref


def prune(ref: str) -> None:
    """Untag the images earlier trees built (``k2:<hash>``), so that their layers can go."""
    tags = must(["docker", "images", IMAGE_REPO, "--format", "{{.Tag}}"], timeout=60).split()
    for tag in tags:
        if re.fullmatch(r"[0-9a-f]{16}", tag) and f"{IMAGE_REPO}:{tag}" != ref:
            run(["docker", "rmi", f"{IMAGE_REPO}:{tag}"], timeout=120)


def size_mb(ref: str) -> float:
    return int(must(["docker", "image", "inspect", "--format", "{{.Size}}", ref], timeout=60)) / 1e6


_SITE_SIZES = """
import pathlib, sys
site = next(pathlib.Path('/opt/k2/lib').glob('python3*/site-packages'))
sizes = {}
for path in site.rglob('*'):
    if path.is_file() and not path.is_symlink():
        top = path.relative_to(site).parts[0].split('.')[0].split('-')[0]
        sizes[top] = sizes.get(top, 0) + path.stat().st_size
for name, size in sorted(sizes.items(), key=lambda kv: -kv[1])[:int(sys.argv[1])]:
    print(f'{size / 1e6:8.1f} MB  {name}')
print(f'{sum(sizes.values()) / 1e6:8.1f} MB  site-packages in all')
"""


def print_sizes(ref: str, top: int = 15) -> None:
    """The image, its layers and its biggest Python packages (to stderr)."""
    say(f"{ref}: {size_mb(ref):.0f} MB")
    layers = must(["docker", "history", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}", ref], timeout=60)
    for line in layers.splitlines():
        size, created = line.split("\t", 1)
        if size not in ("0B", "0"):
            print(f"  layer {size:>8}  {created[:110]}", file=sys.stderr)
    sizes = must(["docker", "run", "--rm", "--entrypoint", "python3", ref, "-c", _SITE_SIZES, str(top)], timeout=300)
    print(sizes.rstrip(), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy/image/build.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--base",
        choices=("auto", "registry", "debian"),
        default=os.environ.get("K2_IMAGE_BASE") or "auto",
        help="registry: the Dockerfile's base, pulled; debian: made by debootstrap; auto: registry if it answers",
    )
    parser.add_argument("--tag", default=f"{IMAGE_REPO}:latest", help="also tag the image so (default k2:latest)")
    parser.add_argument("--refresh-base", action="store_true", help="make the Debian base again (Debian's updates)")
    parser.add_argument("--python", default=sys.executable, help="the Python 3.11 whose pip makes the wheelhouse")
    parser.add_argument("--sizes", action="store_true", help="print the size of the image, its layers and packages")
    args = parser.parse_args(argv)
    began = time.monotonic()
    try:
        ensure_engine()
        ref = build(args.base, refresh_base=args.refresh_base, python=args.python)
        must(["docker", "tag", ref, args.tag], timeout=60)
        prune(ref)
        if args.sizes:
            print_sizes(ref)
        say(f"{args.tag} = {ref}, {size_mb(ref):.0f} MB ({time.monotonic() - began:.0f} s)")
    except ImageError as exc:
        print(f"make image: {exc}", file=sys.stderr)
        return 1
    print(ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
