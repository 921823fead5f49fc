# riskstream worker / sink image for docker-compose.yml (production-like stack).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY riskstream riskstream
COPY streams streams
COPY detectors detectors
COPY rules rules
COPY sinks sinks
COPY schemas schemas
COPY bench bench
RUN pip install --no-cache-dir .
ENTRYPOINT ["riskstream"]
