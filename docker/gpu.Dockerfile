# Caption worker for NVIDIA GPUs: CUDA vLLM, the project, and (optionally) the model baked in.
#
#   docker build -f docker/gpu.Dockerfile -t captioner-gpu .                       # weights mounted at run time
#   docker build -f docker/gpu.Dockerfile -t captioner-gpu-baked \
#       --build-arg WEIGHTS=baked --build-context weights=/srv/captioner/models .   # weights inside the image
#
# With WEIGHTS=baked, the folder given as the `weights` build context must hold model/ and adapter/
# (the layout of the mounted /models volume); they are copied to /models in the image.
# The host needs the NVIDIA driver and the NVIDIA Container Toolkit; CUDA itself comes with vLLM's
# PyTorch wheels, so the base image is a plain Python of the version the project is tested on.
ARG WEIGHTS=mounted
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM busybox:1.37 AS weights-mounted
RUN mkdir -p /models

FROM busybox:1.37 AS weights-baked
COPY --from=weights . /models/

FROM weights-${WEIGHTS} AS chosen-weights

FROM ${PYTHON_IMAGE}
# gcc and the Python headers: Triton compiles its kernel launchers when vLLM first runs a kernel.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev python3-dev libgomp1 \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 captioner
WORKDIR /opt/captioner
# Dependencies first, in their own layer: rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN mkdir -p captioner workers && touch captioner/__init__.py workers/__init__.py \
 && pip install --no-cache-dir -e ".[gpu,flower]" \
 && rm -rf captioner workers
COPY captioner/ captioner/
COPY workers/ workers/
COPY prompts/ prompts/
# Editable, like development and the tests: prompts/ is found beside the package.
RUN pip install --no-cache-dir --no-deps -e . && python -c "import captioner.cli, workers.app"
COPY --from=chosen-weights --chown=captioner /models /models
ENV CAPTIONER_HOME=/var/cache/captioner \
    CAPTIONER_ALLOWED_ROOTS=/srv/captioner \
    CAPTIONER_METRICS_HOST=0.0.0.0 \
    CAPTIONER_METRICS_PORT=9808 \
    HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1
RUN mkdir -p /var/cache/captioner /srv/captioner && chown captioner /var/cache/captioner /srv/captioner
USER captioner
EXPOSE 9808
ENTRYPOINT ["captioner"]
CMD ["worker"]
