# K2's image: the worker (`faust -A k2.app worker`) and the `k2` commands, non-root (uid 10001),
# with what production needs only: the project's own dependencies, no extras (no test S3 server).
#
#   docker build -t k2:latest .      on python:3.11-slim, the packages from PyPI
#
# `make image` builds this same file. Where no image registry answers, it passes
# BASE=k2-base:bookworm-<hash> (Debian's own python3, from debootstrap) and PACKAGES=wheelhouse
# (pip installs only from var/image/wheels, made on the host): deploy/image/build.py.
ARG BASE=python:3.11-slim

# The dependencies, in a venv of their own: the image's big layer, rebuilt only when they change.
FROM ${BASE} AS deps
ARG PACKAGES=pypi
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends binutils && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# `var/image/wheel[s]` is the offline build's wheelhouse and matches nothing otherwise (a COPY
# needs one source that exists: pyproject.toml, which names the dependencies).
COPY pyproject.toml var/image/wheel[s] /src/wheels/
# Installed from PyPI or the wheelhouse alone; then what only builds or tests a package goes, and
# the shared objects lose the symbol tables nothing loads (the dynamic symbols stay): 144 MB,
# polars' and pyarrow's mostly. A library that no longer loads stripped (patchelf's layout, as
# numpy's OpenBLAS) keeps its original.
RUN set -eu; \
    python3 -m venv /opt/k2; \
    case "$PACKAGES" in \
      pypi) ;; \
      wheelhouse) printf '[global]\nno-index = true\nfind-links = /src/wheels\n' > /opt/k2/pip.conf ;; \
      *) echo "PACKAGES must be pypi or wheelhouse, not '$PACKAGES'" >&2; exit 2 ;; \
    esac; \
    python3 -c 'import tomllib; print("\n".join(tomllib.load(open("wheels/pyproject.toml", "rb"))["project"]["dependencies"]))' \
      > requirements.txt; \
    /opt/k2/bin/pip install -r requirements.txt; \
    cd /opt/k2/lib/python3*/site-packages; \
    rm -rf pyarrow/include pyarrow/src pyarrow/tests numpy/_core/include numpy/_core/tests numpy/f2py numpy/tests; \
    find . \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' -o -name '*.h' \) -delete; \
    find . -type f -name '*.so*' | while read -r lib; do \
      cp -p "$lib" /tmp/lib.so; \
      strip --strip-unneeded "$lib" && python3 -c 'import ctypes, sys; ctypes.CDLL(sys.argv[1])' "$lib" 2>/dev/null \
        || cp -p /tmp/lib.so "$lib"; \
    done; \
    rm -f /tmp/lib.so

# K2 itself, beside the venv: a small layer of its own. pip leaves the venv last.
FROM deps AS build
COPY pyproject.toml README.md /src/
COPY k2 /src/k2
RUN set -eu; \
    /opt/k2/bin/pip install --no-deps --target /opt/k2-app /src; \
    rm -f /opt/k2/pip.conf; \
    /opt/k2/bin/pip uninstall --yes --quiet pip setuptools

FROM ${BASE}
RUN groupadd --gid 10001 k2 \
 && useradd --uid 10001 --gid 10001 --home-dir /var/lib/k2 --no-create-home --shell /usr/sbin/nologin k2 \
 && install -d -o 10001 -g 10001 /var/lib/k2
COPY --from=build /opt/k2 /opt/k2
COPY --from=build /opt/k2-app /opt/k2-app
# faust keeps its data folder in the working directory; K2_VAR_DIR is K2's own. The Deployment
# mounts an emptyDir there and keeps the root read-only (deploy/k8s/deployment.yaml).
WORKDIR /var/lib/k2
USER 10001:10001
# Flat memory over weeks (README, Memory): Arrow's bundled jemalloc instead of its default mimalloc,
# whose pages freed across threads stay resident (+6.5 MiB/min at 4,000 ev/s), and two glibc arenas
# instead of 8 per core, which each keep freed memory of their own.
ENV PATH=/opt/k2-app/bin:/opt/k2/bin:$PATH \
    PYTHONPATH=/opt/k2-app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ARROW_DEFAULT_MEMORY_POOL=jemalloc \
    MALLOC_ARENA_MAX=2 \
    K2_WEB_HOST=0.0.0.0 \
    K2_VAR_DIR=/var/lib/k2
EXPOSE 6066
# /k2/health on the worker's own port (K2_WEB_PORT, 6066 when unset or empty), past any proxy setting.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request as r; r.build_opener(r.ProxyHandler({})).open('http://127.0.0.1:%s/k2/health' % (os.environ.get('K2_WEB_PORT') or '6066'), timeout=4)"]
# SIGTERM (docker stop, a pod's end) lands what is buffered within K2_SHUTDOWN_TIMEOUT_S (20 s):
# give the container more than that (docker run --stop-timeout 45, compose's stop_grace_period).
STOPSIGNAL SIGTERM
CMD ["faust", "-A", "k2.app", "worker", "-l", "info"]
