# The streaming job on CPUs: Keras on TensorFlow. Also runs `medimg topic-metrics` and the
# other operator commands. Build from the repository root:
#
#   docker build -f deploy/images/stream-cpu.Dockerfile -t medimg/stream-cpu:0.1.0 .
#
# BASE must be Debian bookworm with python3.11 and python3-venv (python:3.11-slim-bookworm
# has both); `make image-check` passes a base made locally with debootstrap. EXTRAS adds
# setup.py extras (image-check adds training,local to run `medimg demo` inside).
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
ARG EXTRAS=tensorflow
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python3 -m venv /opt/medimg
# Dependencies first, pinned by constraints.txt, so a code change reuses this layer.
COPY setup.py constraints.txt ./
COPY schemas ./schemas
RUN mkdir -p streaming batch_training && touch streaming/__init__.py batch_training/__init__.py \
 && /opt/medimg/bin/pip install -c constraints.txt ".[${EXTRAS}]" \
 && /opt/medimg/bin/pip uninstall -y medimg
COPY streaming ./streaming
COPY batch_training ./batch_training
RUN /opt/medimg/bin/pip install --no-deps -c constraints.txt . \
 && find /opt/medimg -name '__pycache__' -prune -exec rm -rf {} + \
 && /opt/medimg/bin/medimg --help >/dev/null

FROM ${BASE}
COPY --from=build /opt/medimg /opt/medimg
# Non-root, numeric so Kubernetes' runAsNonRoot can verify it. The root filesystem is
# read-only in the chart and Compose: HOME is /tmp, where Keras, matplotlib and the demo's
# embedded broker write their caches (make image-check found the broker needing it).
RUN useradd --system --uid 10001 --user-group --home-dir /nonexistent --no-create-home medimg
USER 10001:10001
ENV PATH=/opt/medimg/bin:$PATH \
    KERAS_BACKEND=tensorflow \
    KERAS_HOME=/tmp/keras \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
ENTRYPOINT ["medimg"]
CMD ["--help"]
