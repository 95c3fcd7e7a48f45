# Slim image running `persona serve`. Redis is a separate service: set PERSONA_REDIS_URL.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    PERSONA_EMBEDDED_REDIS=false

WORKDIR /app
COPY pyproject.toml README.md ./
COPY middleware ./middleware
COPY prompts ./prompts
COPY sdk ./sdk
# The server depends on its client distribution (sdk/), built from the same tree.
RUN pip install --no-cache-dir ./sdk . && useradd --system --uid 10001 persona
USER persona

EXPOSE 8080
CMD ["persona", "serve", "--host", "0.0.0.0", "--port", "8080"]
