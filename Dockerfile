# soulgate: the gateway as a container. Build context: the repository root.
#   docker compose up            (with docker-compose.yml: Postgres + pgvector, config, soul)
#   docker run --rm soulgate check
FROM python:3.11-slim

# LITELLM_LOCAL_MODEL_COST_MAP: litellm must not fetch its cost map from the internet at
# import (air-gapped hosts wait on retries otherwise). SOULGATE_CONFIG: the baked-in
# defaults; docker-compose.yml points it at config/soulgate.docker.toml.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    SOULGATE_CONFIG=/app/config/soulgate.toml

WORKDIR /app

# Install with the pinned versions the tests ran against. The source is installed
# (not editable), so a mounted config or soul folder cannot shadow code.
COPY pyproject.toml README.md constraints.txt ./
COPY gateway ./gateway
COPY adapters ./adapters
COPY agents ./agents
COPY plugins ./plugins
COPY storage ./storage
RUN pip install -c constraints.txt . \
    && rm -rf build *.egg-info

# Defaults baked in; docker-compose.yml mounts the repository's folders over them.
COPY config ./config
COPY soul ./soul

# Never run as root. The home directory holds the embedded Postgres data when no
# database URL is configured (a plain `docker run`).
RUN useradd --create-home --uid 10001 --user-group soulgate
USER soulgate

VOLUME ["/app/config", "/app/soul"]
# admin endpoint, public webhook listener
EXPOSE 8765 8080

# `soulgate run` by default; other subcommands with `docker run IMAGE check` etc.
ENTRYPOINT ["soulgate"]
CMD ["run"]
