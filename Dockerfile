# postroom container image: the daemon from this source tree, with PostgreSQL support.
# Used by docker-compose.yml; the configuration is mounted at /etc/postroom/postroom.toml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    POSTROOM_CONFIG=/etc/postroom/postroom.toml

WORKDIR /src
COPY pyproject.toml ./
COPY daemon ./daemon
RUN pip install '.[postgres]' \
 && rm -rf /src

COPY docker/entrypoint.sh /usr/local/bin/postroom-entrypoint
# A dedicated unprivileged user; the state directory (capture outbox, SQLite if used) belongs to it
# and is a volume in docker-compose.yml (a new named volume takes this ownership).
RUN chmod 0755 /usr/local/bin/postroom-entrypoint \
 && useradd --system --user-group --uid 10001 --home-dir /var/lib/postroom --shell /usr/sbin/nologin postroom \
 && mkdir -p /var/lib/postroom /etc/postroom \
 && chown postroom:postroom /var/lib/postroom \
 && chmod 0750 /var/lib/postroom

USER postroom
WORKDIR /var/lib/postroom
VOLUME ["/var/lib/postroom"]
EXPOSE 25 587 8025

# `serve` (the default) migrates the database first; any other arguments run that postroom command,
# e.g. `docker compose exec postroom postroom apikeys create --name demo --role admin`.
ENTRYPOINT ["/usr/local/bin/postroom-entrypoint"]
CMD ["serve"]
