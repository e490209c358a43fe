# Keel API / worker image. Build: docker build -t keel .
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 KEEL_HOME=/data KEEL_MODEL_CACHE=/opt/keel-models
WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
RUN pip install --no-cache-dir -r requirements.lock
COPY agent ./agent
COPY memory ./memory
COPY tools ./tools
COPY server ./server
COPY docs ./docs
RUN pip install --no-cache-dir --no-deps . && useradd --create-home keel && mkdir -p /data && chown keel /data
# The int8 embedding graph (memory/quantized.py), built once into the image; read-only for the keel user.
RUN python -c "from memory.embeddings import LocalMiniLMEmbeddings as E; E(cache_dir='/opt/keel-models')"
USER keel
EXPOSE 8000
CMD ["keel", "serve", "--host", "0.0.0.0", "--port", "8000"]
