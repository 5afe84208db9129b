# K2 worker image: slim, non-root, runs `faust -A k2.app worker`.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY k2 ./k2
RUN pip install --no-cache-dir --prefix=/install ".[rest]"

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 k2
COPY --from=build /install /usr/local
WORKDIR /home/k2
USER k2
ENV PYTHONUNBUFFERED=1 \
    K2_WEB_HOST=0.0.0.0 \
    K2_VAR_DIR=/home/k2/var
EXPOSE 6066
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s \
  CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:6066/k2/health', timeout=2)" || exit 1
CMD ["faust", "-A", "k2.app", "worker", "-l", "info"]
