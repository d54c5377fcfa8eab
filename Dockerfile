# Baton's image for docker-compose: the CLI, the approval service and the Prefect worker.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml requirements.lock README.md ./
COPY baton ./baton
COPY tasks ./tasks
COPY flows ./flows
COPY runbooks ./runbooks
COPY deployments ./deployments
RUN pip install --no-cache-dir -c requirements.lock .
