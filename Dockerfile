# One image for the services: compose runs each with its `modelwatch` subcommand.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG NODE_IMAGE=node:20.18.0-bookworm-slim

# The dashboard's chart library, from npm at the version its package-lock.json pins; only its
# built files go into the image (the page loads nothing from a CDN).
FROM ${NODE_IMAGE} AS dashboard-assets
WORKDIR /web
COPY services/dashboard/web/package.json services/dashboard/web/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error

FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    CONTRACTS_DIR=/app/contracts \
    MODEL_PATH=/app/models/model.json \
    DASHBOARD_ASSETS_DIR=/app/web/uplot

WORKDIR /app

# Dependencies first, pinned by the project's own constraints: this layer is rebuilt only when
# pyproject.toml or constraints.txt change, not on every code edit.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY README.md ./
COPY contracts ./contracts
COPY observability ./observability
COPY services ./services
COPY --from=dashboard-assets /web/node_modules/uplot/dist /app/web/uplot
# Install the code, train the model into the image (no model binary is committed), and drop the
# source copies so only the installed package runs.
RUN pip install --no-cache-dir --no-deps . \
    && modelwatch train \
    && rm -rf observability services build ./*.egg-info \
    && useradd --system --uid 10001 --no-create-home modelwatch \
    && mkdir -p /app/logs \
    && chown modelwatch /app/logs

USER 10001
CMD ["modelwatch", "up"]
