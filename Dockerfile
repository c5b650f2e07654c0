# engramd and its HTTP gateway in one image (see docs/deploy.md).
#   docker build -t engram .
#   docker run -d --name engram -p 127.0.0.1:8080:8080 -v engram-data:/data engram
#   docker exec engram engram agent token create ci     # a Bearer token for HTTP callers
# Arguments after the image name replace the gateway's (default: --auth token), e.g.
#   ... engram --auth jwt --jwt-jwks /config/jwks.json --jwt-audience engram
FROM python:3.11-slim
LABEL org.opencontainers.image.title="engram-journal" \
      org.opencontainers.image.description="engramd and its HTTP gateway (the engram-journal distribution with its http and cluster extras)"

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --home-dir /data --no-create-home engram \
    && install -d -o engram -g engram -m 0700 /data /run/engram

COPY . /src
WORKDIR /src
RUN sh deploy/install.sh /opt/engram && rm -rf /src /root/.cache

USER engram
WORKDIR /data
ENV PATH=/opt/engram/bin:$PATH \
    ENGRAM_DATA_DIR=/data \
    ENGRAM_SOCKET=/run/engram/engramd.sock \
    ENGRAM_AGENT=gateway
VOLUME /data
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2).status != 200)"]
ENTRYPOINT ["engram-container"]
