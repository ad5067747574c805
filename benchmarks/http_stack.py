"""python -m benchmarks.http_stack [--duration-s 3] [--repeats 2] [--no-h11] [--no-granian]

The HTTP stack for the KServe v2 front end, on the infer path minus the model: uvicorn (httptools) + Starlette,
uvicorn + a raw ASGI callable, aiohttp's own server, uvicorn (h11) + Starlette, and granian (a Rust HTTP server on
hyper and tokio) embedded in the process's event loop as the gRPC engine's server would have it, with the raw ASGI
callable and with its own RSGI interface (granian runs from its own venv under benchmarks/.work/venvs/, installed
on first use: it is not a dependency of the project). Each server is a subprocess on 127.0.0.1 under uvloop;
tritonclient.http.aio drives it in a closed loop, points interleaved and repeated; the server's CPU comes from
/proc/<pid>/stat. Writes benchmarks/results/http-stack.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson

RESULTS = Path(__file__).resolve().parent / "results"
ROUTE = "/v2/models/{model}/infer"
HEADER = "Inference-Header-Content-Length"
VARIANTS = {"starlette": "uvicorn (httptools) + Starlette", "asgi": "uvicorn (httptools) + raw ASGI",
            "aiohttp": "aiohttp AppRunner + TCPSite", "h11": "uvicorn (h11) + Starlette",
            "granian-asgi": "granian (embedded) + raw ASGI", "granian-rsgi": "granian (embedded) + RSGI"}
GRANIAN_VERSION = "2.8.7"
GRANIAN_PACKAGES = [f"granian=={GRANIAN_VERSION}", "numpy", "orjson", "uvloop"]
TICK = os.sysconf("SC_CLK_TCK")


# ---- the servers: each runs handle(), what the infer endpoint will do minus the model ----

def handle(body: bytes, header_length: str | None) -> tuple[bytes, int | None]:
    """Request body and its Inference-Header-Content-Length -> response body and its header length."""
    if header_length is None:  # plain JSON: data inline, answered inline
        request = orjson.loads(body)
        x = np.asarray(request["inputs"][0]["data"], dtype=np.float32).reshape(request["inputs"][0]["shape"])
    else:
        split = int(header_length)
        request = orjson.loads(body[:split])
        x = np.frombuffer(body, dtype=np.float32, count=64, offset=split).reshape(request["inputs"][0]["shape"])
    y = np.ascontiguousarray(x[:, :10])  # stands in for the model: [1, 64] -> [1, 10]
    output = {"name": "y", "datatype": "FP32", "shape": [1, 10]}
    if header_length is None:
        return orjson.dumps({"model_name": "m", "outputs": [{**output, "data": y.ravel().tolist()}]}), None
    head = orjson.dumps({"model_name": "m", "outputs": [{**output, "parameters": {"binary_data_size": y.nbytes}}]})
    return head + y.tobytes(), len(head)


def response_headers(length: int | None) -> dict[str, str]:
    binary = {"content-type": "application/octet-stream", HEADER.lower(): str(length)}
    return {"content-type": "application/json"} if length is None else binary


def starlette_app():
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def infer(request) -> Response:
        body, length = handle(await request.body(), request.headers.get(HEADER))
        return Response(body, headers=response_headers(length))

    return Starlette(routes=[Route(ROUTE, infer, methods=["POST"])])


async def asgi_app(scope, receive, send) -> None:
    path = scope["path"]
    if scope["method"] != "POST" or not path.startswith("/v2/models/") or not path.endswith("/infer"):
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
        return await send({"type": "http.response.body", "body": b""})
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    header = next((v.decode() for k, v in scope["headers"] if k == b"inference-header-content-length"), None)
    body, length = handle(b"".join(chunks), header)
    headers = [(k.encode(), v.encode()) for k, v in response_headers(length).items()]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def rsgi_app(scope, protocol) -> None:
    """handle() behind granian's RSGI interface: the body in one await, the answer as bytes."""
    path = scope.path
    if scope.method != "POST" or not path.startswith("/v2/models/") or not path.endswith("/infer"):
        return protocol.response_bytes(404, [], b"")
    body, length = handle(await protocol(), scope.headers.get("inference-header-content-length"))
    protocol.response_bytes(200, list(response_headers(length).items()), body)


async def serve(variant: str, port: int) -> None:
    if variant.startswith("granian-"):
        from granian.constants import Interfaces
        from granian.server.embed import Server

        rsgi = variant == "granian-rsgi"
        server = Server(rsgi_app if rsgi else asgi_app, address="127.0.0.1", port=port,
                        interface=Interfaces.RSGI if rsgi else Interfaces.ASGINL, log_level="warning")
        await server.serve()
        return
    if variant == "aiohttp":
        from aiohttp import web

        async def infer(request: web.Request) -> web.Response:
            body, length = handle(await request.read(), request.headers.get(HEADER))
            return web.Response(body=body, headers=response_headers(length))

        app = web.Application()
        app.router.add_post(ROUTE, infer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()
    import uvicorn
    config = uvicorn.Config(asgi_app if variant == "asgi" else starlette_app(), host="127.0.0.1", port=port,
                            http="h11" if variant == "h11" else "httptools", loop="none", lifespan="off",
                            access_log=False, log_level="warning")
    await uvicorn.Server(config).serve()


# ---- the driver ----

def start(variant: str) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    python = sys.executable
    if variant.startswith("granian-"):
        from benchmarks import venvs

        python = str(venvs.ensure("granian", GRANIAN_PACKAGES) / "bin" / "python")
    proc = subprocess.Popen([python, "-m", "benchmarks.http_stack", "--serve", variant, "--port", str(port)],
                            cwd=Path(__file__).resolve().parent.parent)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return proc, port
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{variant} server did not start (exit code {proc.poll()})")
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def cpu_s(pid: int) -> tuple[float, float, float]:
    """(user, system) CPU seconds of a process from /proc/<pid>/stat, and the whole machine's busy seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    machine = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return int(fields[11]) / TICK, int(fields[12]) / TICK, (sum(machine) - machine[3] - machine[4]) / TICK


def request_parts(binary: bool):
    import tritonclient.http.aio as httpclient
    x = np.random.default_rng(0).random((1, 64), dtype=np.float32)
    t = httpclient.InferInput("x", [1, 64], "FP32")
    t.set_data_from_numpy(x, binary_data=binary)
    return x, [t], [httpclient.InferRequestedOutput("y", binary_data=binary)]


async def point(port: int, pid: int, binary: bool, concurrency: int, args: argparse.Namespace) -> dict:
    """A closed loop like loadgen.closed_loop's, on tritonclient.http.aio (one client, a connection per worker)."""
    import tritonclient.http.aio as httpclient

    from clients.python.loadgen import LoadResult
    x, inputs, outputs = request_parts(binary)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", conn_limit=concurrency)
    check = await client.infer("m", inputs, outputs=outputs)  # the answer is right before it is timed
    assert np.array_equal(check.as_numpy("y"), x[:, :10]), "wrong answer"
    result = LoadResult("closed", concurrency, args.duration_s, 1)
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + args.warmup_s
    stop_at = measure_from + args.duration_s
    before: list = []

    async def worker() -> None:
        while (now := loop.time()) < stop_at:
            if now >= measure_from and not before:
                before.extend([cpu_s(pid), time.process_time(), time.perf_counter()])
            sent = time.perf_counter()
            try:
                await client.infer("m", inputs, outputs=outputs)
            except Exception as e:  # recorded, never raised
                result.record_error(e)
            else:
                if now >= measure_from:
                    result.latencies_s.append(time.perf_counter() - sent)

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await client.close()
    (user, system, busy), client = cpu_s(pid), time.process_time() - before[1]
    wall, (user0, system0, busy0) = time.perf_counter() - before[2], before[0]
    server, per_k = user + system - user0 - system0, 1000 / max(result.requests, 1)
    out = {k: v for k, v in result.summary().items() if k not in ("rows_per_s", "load_generator")}
    return {**out, "error_count": sum(result.errors.values()), "server_cpu_s_per_1k": round(server * per_k, 3),
            "server_sys_s_per_1k": round((system - system0) * per_k, 3), "server_cores": round(server / wall, 2),
            "client_cpu_s_per_1k": round(client * per_k, 3), "client_cores": round(client / wall, 2),
            "other_cores": round(max(0.0, busy - busy0 - server - client) / wall, 2)}


async def in_process_us(binary: bool, n: int = 4000) -> dict[str, float]:
    """µs a call with no sockets: handle() alone, and the raw ASGI and Starlette apps around it."""
    from tritonclient.http._utils import _get_inference_request
    _, inputs, outputs = request_parts(binary)
    body, length = _get_inference_request(inputs, "", outputs, 0, False, False, 0, None, None)
    headers = [(b"content-length", str(len(body)).encode())] + (
        [] if length is None else [(b"inference-header-content-length", str(length).encode())])
    scope = {"type": "http", "method": "POST", "path": "/v2/models/m/infer", "root_path": "", "query_string": b"",
             "headers": headers}

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def handle_only(*_) -> None:
        handle(body, None if length is None else str(length))

    async def no_send(_) -> None:
        pass

    out = {}
    for name, app in [("handle", handle_only), ("asgi", asgi_app), ("starlette", starlette_app())]:
        best = float("inf")
        for _ in range(3):  # the best of three, as other processes share the CPUs
            t = time.perf_counter()
            for _ in range(n):
                await app(dict(scope), receive, no_send)
            best = min(best, time.perf_counter() - t)
        out[name] = round(best / n * 1e6, 1)
    return out


def mean(points: list[dict], key: str) -> float:
    return statistics.fmean(p[key] for p in points)


def analyse(points: list[dict], in_process: dict) -> tuple[list[dict], list[str]]:
    """Ratios to uvicorn + Starlette within each repeat (measured side by side), and notes."""
    ratios, notes = [], []
    for body, c in sorted({(p["body"], p["concurrency"]) for p in points}):
        runs = {v: m for v in VARIANTS if (m := [p for p in points if (p["variant"], p["body"], p["concurrency"])
                                                 == (v, body, c)])}
        base = {p["repeat"]: p for p in runs["starlette"]}
        for v, mine in runs.items():
            ratios.append({"stack": VARIANTS[v], "body": body, "concurrency": c, **{
                key: " / ".join(f"{p[key] / base[p['repeat']][key]:.2f}" for p in mine)
                for key in ("infer_per_s", "p50_ms", "p99_ms", "server_cpu_s_per_1k")}})
        fastest = max(runs, key=lambda v: mean(runs[v], "infer_per_s"))
        speedup = mean(runs[fastest], "infer_per_s") / mean(runs["starlette"], "infer_per_s")
        cpu = ", ".join(f"{v} {mean(m, 'server_cpu_s_per_1k') * 1000:.0f}" for v, m in runs.items())
        every = [p for m in runs.values() for p in m]
        client = mean(every, "client_cores")
        bound = " (the client is near a core: infer/s is its limit, server CPU/request the comparison)" * (client > 0.8)
        notes.append(f"{body} c={c}: most infer/s {fastest}, {speedup:.2f}x Starlette's (mean of repeats); server "
                     f"CPU µs/request: {cpu}; on average the client used {client:.2f} cores{bound}, the server "
                     f"{mean(every, 'server_cores'):.2f}, other processes {mean(every, 'other_cores'):.2f}.")
    for body, us in in_process.items():
        notes.append(f"In process, no sockets ({body}): handle() {us['handle']} µs a call, the raw ASGI app around it "
                     f"{us['asgi']} µs, the Starlette app {us['starlette']} µs.")
    return ratios, notes


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"# http-stack: {result['title']}", "", f"{env['date']}, {env['cpus']} CPUs ({env['machine']}), Python "
             f"{env['python']}, " + ", ".join(f"{k} {v}" for k, v in env["packages"].items()) + f". "
             f"{result['duration_s']} s per point after {result['warmup_s']} s of warm-up, {result['repeats']} "
             f"interleaved repeats; server, client and other processes share the CPUs (load average "
             f"{env['loadavg_before']} before, {env['loadavg_after']} after): a point during which other processes "
             f"used more than {result['max_other_cores']} cores was redone, {result['retries']} times at most "
             f"(`tries`; `other cores` is what the kept try had).", ""]
    for table in result["tables"]:
        lines += [f"## {table['title']}", "", "| " + " | ".join(c[0] for c in table["columns"]) + " |",
                  "|" + "|".join("---" if c[2] == "s" else "---:" for c in table["columns"]) + "|"]
        lines += ["| " + " | ".join(format(row[key], fmt) for _, key, fmt in table["columns"]) + " |"
                  for row in table["rows"]] + [""]
    return "\n".join(lines + [f"- {note}" for note in result["notes"]]) + "\n"


async def run(args: argparse.Namespace) -> dict:
    variants = [v for v in VARIANTS if (v != "h11" or not args.no_h11) and
                (not v.startswith("granian-") or not args.no_granian)]
    plan = [("binary", 1, variants), ("binary", 32, variants), ("json", 32, ["starlette", "aiohttp"])]
    servers, points = {}, []
    try:
        for v in variants:
            servers[v] = start(v)
        for repeat in range(1, args.repeats + 1):
            for body, c, which in plan:
                for v in which if repeat % 2 else which[::-1]:  # the order alternates between repeats
                    sys.stderr.write(f"  repeat {repeat}: {body} c={c} {VARIANTS[v]}\n")
                    proc, port = servers[v]
                    for attempt in range(1, args.retries + 2):  # a point disturbed by other processes is redone
                        p = {"attempts": attempt, **await point(port, proc.pid, body == "binary", c, args)}
                        if p["other_cores"] <= args.max_other_cores:
                            break
                        sys.stderr.write(f"    other processes used {p['other_cores']} cores: again\n")
                    points.append({"variant": v, "stack": VARIANTS[v], "body": body, "repeat": repeat, **p})
    finally:
        for proc, _ in servers.values():
            proc.kill()
            proc.wait()
    in_process = {"binary": await in_process_us(True), "json": await in_process_us(False)}
    ratios, notes = analyse(points, in_process)
    head = [("stack", "stack", "s"), ("body", "body", "s"), ("concurrency", "concurrency", "d")]
    columns = head + [("repeat", "repeat", "d"), ("infer/s", "infer_per_s", ".0f"), ("p50 ms", "p50_ms", ".2f"),
                      ("p99 ms", "p99_ms", ".2f"), ("server CPU s/1k req", "server_cpu_s_per_1k", ".3f"),
                      ("of it system", "server_sys_s_per_1k", ".3f"), ("client CPU s/1k", "client_cpu_s_per_1k", ".3f"),
                      ("other cores", "other_cores", ".2f"), ("tries", "attempts", "d"),
                      ("errors", "error_count", "d")]
    ratio_columns = head + [(f"{name}, per repeat", key, "s") for name, key in [
        ("infer/s", "infer_per_s"), ("p50", "p50_ms"), ("p99", "p99_ms"), ("server CPU/req", "server_cpu_s_per_1k")]]
    return {"title": "HTTP stack on the infer path minus the model (tritonclient.http.aio, closed loop)",
            "points": points, "ratios": ratios, "in_process_us": in_process, "notes": notes,
            "tables": [{"title": "Points", "columns": columns, "rows": points},
                       {"title": "Ratios to uvicorn (httptools) + Starlette, same repeat", "columns": ratio_columns,
                        "rows": ratios}]}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http_stack",
                                     description="uvicorn + Starlette vs raw ASGI vs aiohttp on the infer path")
    parser.add_argument("--duration-s", type=float, default=3.0, help="measured seconds per point")
    parser.add_argument("--warmup-s", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-h11", action="store_true", help="leave out uvicorn with h11")
    parser.add_argument("--no-granian", action="store_true", help="leave out granian")
    parser.add_argument("--max-other-cores", type=float, default=0.25, help="redo a point if others used more")
    parser.add_argument("--retries", type=int, default=2, help="redos of a disturbed point at most")
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)  # in a server subprocess
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import uvloop
    if args.serve:  # in the server subprocess (granian's: its own venv)
        uvloop.run(serve(args.serve, args.port))
        return 0
    env = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(), "python": platform.python_version(),
           "machine": platform.machine(), "loadavg_before": round(os.getloadavg()[0], 2), "packages": {
               p: importlib.metadata.version(p) for p in
               ["uvicorn", "httptools", "h11", "starlette", "aiohttp", "uvloop", "orjson", "numpy", "tritonclient"]}
           | {"granian": GRANIAN_VERSION}}
    result = uvloop.run(run(args))
    env["loadavg_after"] = round(os.getloadavg()[0], 2)
    result.update(environment=env, **{k: getattr(args, k) for k in
                                      ("duration_s", "warmup_s", "repeats", "max_other_cores", "retries")})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "http-stack.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (RESULTS / "http-stack.md").write_text(table)
    print(table, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
