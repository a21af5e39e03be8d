"""The Python system this project replaces, as its users run it today: a Sanic API with
prometheus_client in multiprocess mode, the request middleware and the `/metrics` endpoint
of the source documents (a fresh registry and `MultiProcessCollector` per scrape, the raw
request path as a label), with the routes the example servers have. For
`scripts/bench-server.sh`:

    PROMETHEUS_MULTIPROC_DIR=DIR sanic seed_sanic_app:app --workers 2 --port P
"""

from time import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from sanic import Sanic, response

HTTP_REQUESTS = Counter("http_requests_total", "Total HTTP requests", ["method", "path", "status"])
HTTP_LATENCY = Histogram("http_request_duration_seconds", "HTTP request latency", ["path"])

app = Sanic("seed_api")
app.config.ACCESS_LOG = False


@app.middleware("request")
async def start_timer(request):
    request.ctx.start = time()


@app.middleware("response")
async def record_metrics(request, resp):
    latency = time() - request.ctx.start
    HTTP_REQUESTS.labels(request.method, request.path, resp.status).inc()
    HTTP_LATENCY.labels(request.path).observe(latency)


@app.get("/health")
async def health(request):
    return response.text("ok")


@app.get("/users/<user_id>")
async def user(request, user_id):
    return response.json({"id": user_id, "name": f"user {user_id}"})


@app.get("/metrics")
async def metrics(request):
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return response.raw(generate_latest(registry), content_type="text/plain")
