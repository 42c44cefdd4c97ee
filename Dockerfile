# One image for the three services: `python -m services.<auth|chat|conversations>`.
FROM python:3.11-slim AS base
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml ./
COPY shared ./shared
COPY services ./services
COPY devtools ./devtools
COPY db ./db
COPY docs/openapi.json ./docs/openapi.json
RUN pip install . && useradd --system --uid 10001 wibot
USER wibot
EXPOSE 8001 8002 8003
CMD ["python", "-m", "services.auth", "--host", "0.0.0.0", "--port", "8001"]
