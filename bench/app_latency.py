"""Request latency of the Gradio demo, end to end over HTTP: the toy model and a random-init ViT-B/16.

For each model a live server (`python app.py`, its own process, as on a Space) is started on a free loopback
port and called from this process with gradio_client exactly as a browser's "Segment" click is: the first
request (which loads the model), then sequential requests (p50 and p95), then one request from each of --users
clients at once (the bounded queue at work: how many were served, how many refused). The compute time the
server reports in each method's status line (the shared backbone pass its method was part of) is shown beside
the end-to-end time. --fetch browser fetches a response's files over parallel connections, as a page does.

    python bench/app_latency.py                       # toy and random ViT-B/16, 3 requests each
    python bench/app_latency.py --models toy --requests 20 --users 32 \
        --words "cat, wall, floor, sky, grass, dog, tree, road, water"
    python bench/app_latency.py --models toy --requests 10 --methods vanilla pacl sclip
    python bench/app_latency.py --json out/app_latency.json
    python bench/app_latency.py --models toy --toy-scene --shifts 2 --refine affinity --fetch browser
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {"toy": "toy", "vit-random": "ViT-B-16-quickgelu:none"}  # bench name -> the demo's --model
IMAGE = ROOT / "assets" / "examples" / "chelsea.jpg"
TOY_SCENE = ROOT / "assets" / "examples" / "toy_01.png"
USE_TOY_SCENE = False  # --toy-scene
WORDS = "cat, wall, floor"
BROWSER_CONNECTIONS = 6  # parallel connections per host of a browser over HTTP/1.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def method_seconds(outputs, n_methods: int) -> dict[str, float]:
    """The compute time each method's status line reports ('**PACL** · 0.12 s · ...')."""
    found = {}
    for status in outputs[: 3 * n_methods: 3]:
        m = re.match(r"\*\*(.+?)\*\* · ([0-9.]+) s", status or "")
        if m:
            found[m.group(1)] = float(m.group(2))
    return found


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between the sorted values."""
    return float(np.percentile(np.asarray(values, float), q))


def file_urls(value) -> list[str]:
    """Every output file's URL in a response fetched with download_files=False (FileData dicts, nested)."""
    if isinstance(value, dict):
        own = [value["url"]] if isinstance(value.get("url"), str) else []
        return own + [u for k, v in value.items() if k != "url" for u in file_urls(v)]
    if isinstance(value, (list, tuple)):
        return [u for v in value for u in file_urls(v)]
    return []


def image_for(name: str) -> Path:
    """The photo, or with --toy-scene and the toy model, the toy model's first example scene."""
    return TOY_SCENE if name == "toy" and USE_TOY_SCENE else IMAGE


def start_server(model: str, port: int, log) -> subprocess.Popen:
    """`python app.py --model MODEL` on 127.0.0.1:port in its own process (so the clients here do not share its
    interpreter lock), returned once it answers HTTP."""
    import httpx

    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--model", model, "--host", "127.0.0.1",
                             "--port", str(port)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, GRADIO_ANALYTICS_ENABLED="False"))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the demo server exited with status {proc.returncode}; see {log.name}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"the demo server did not answer within 180 s; see {log.name}")


def run_model(name: str, methods: list[str], requests: int, users: int, resolution: str, words: str = WORDS,
              fetch: str = "gradio", shifts: str = "1", refine: str = "none") -> dict:
    """fetch='gradio': gradio_client downloads every output file, one after another; 'browser': the response,
    then its files fetched over BROWSER_CONNECTIONS parallel connections, as a browser loads a page's images."""
    import httpx
    from gradio_client import Client, handle_file

    from demo.models import default_registry, pick_default
    from pacl_core.methods import METHODS

    registry = default_registry()
    label, _ = pick_default(registry, MODELS[name])  # the dropdown label the page starts with
    port = free_port()
    log = tempfile.NamedTemporaryFile("w", prefix="app_latency-", suffix=".log", delete=False)
    server = start_server(MODELS[name], port, log)
    try:
        options = {"download_files": False} if fetch == "browser" else {}
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, **options)
        args = (handle_file(str(image_for(name))), words, methods, label, 0.0, resolution, shifts, refine)

        errors = []

        def one(c=client):
            t = time.perf_counter()
            try:
                out = c.predict(*args, api_name="/segment")
                if fetch == "browser":
                    with httpx.Client() as http, ThreadPoolExecutor(BROWSER_CONNECTIONS) as pool:
                        for r in pool.map(http.get, dict.fromkeys(file_urls(out))):  # each file once, as cached
                            r.raise_for_status()
            except Exception as e:  # counted and reported, so one failure does not hide the others
                errors.append(f"{type(e).__name__}: {e}")
                return time.perf_counter() - t, None
            return time.perf_counter() - t, method_seconds(out, len(METHODS))  # served: a dict, maybe empty

        first, _ = one()
        seq = [one() for _ in range(requests)]
        clients = [Client(f"http://127.0.0.1:{port}/", verbose=False, **options) for _ in range(users)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=users) as pool:
            conc = list(pool.map(lambda c: one(c), clients))
        wall = time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    times, ctimes = [t for t, _ in seq], [t for t, s in conc if s is not None]  # concurrent: the served ones
    per_method = {m: statistics.median(s[m] for _, s in seq if s and m in s) for m in (seq[0][1] or {})}
    return {"model": name, "label": label, "methods": methods, "resolution": resolution, "shifts": shifts,
            "refine": refine,
            "first_request_s": round(first, 3), "p50_s": round(percentile(times, 50), 3),
            "p95_s": round(percentile(times, 95), 3), "method_compute_s": per_method, "concurrent_users": users,
            "concurrent_wall_s": round(wall, 3),
            "concurrent_p50_s": round(percentile(ctimes, 50), 3) if ctimes else None,
            "concurrent_p95_s": round(percentile(ctimes, 95), 3) if ctimes else None,
            "concurrent_served": sum(1 for _, s in conc if s is not None), "errors": errors, "words": words}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--methods", nargs="+", default=["vanilla", "pacl"])
    p.add_argument("--requests", type=int, default=3, help="sequential requests after the first (default: 3)")
    p.add_argument("--users", type=int, default=3, help="clients sending one request each at once (default: 3)")
    p.add_argument("--resolution", default="model default", help="the demo's input resolution choice")
    p.add_argument("--words", default=WORDS, help=f"the vocabulary (default: {WORDS!r})")
    p.add_argument("--fetch", default="gradio", choices=("gradio", "browser"),
                   help="gradio: gradio_client downloads each output file in turn (default); browser: the "
                        f"response, then its files over {BROWSER_CONNECTIONS} parallel connections")
    p.add_argument("--shifts", default="1", choices=("1", "2", "4"), help="shifted passes per axis (default: 1)")
    p.add_argument("--refine", default="none", choices=("none", "affinity", "pamr"), help="refinement (default: none)")
    p.add_argument("--toy-scene", action="store_true", help="send the toy model its first example scene, not the photo")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    global USE_TOY_SCENE
    USE_TOY_SCENE = args.toy_scene
    import torch

    results = []
    images = (f"{TOY_SCENE.name} (toy), " if USE_TOY_SCENE else "") + IMAGE.name
    print(f"CPU threads: {torch.get_num_threads()}  image: {images}  words: {args.words!r}  "
          f"methods: {args.methods}  sequential requests: {args.requests}  output files fetched: {args.fetch}  "
          f"shifts: {args.shifts}  refine: {args.refine}")
    print(f"{'model':<11} {'first (load)':>12} {'p50':>8} {'p95':>8} {args.users} users: {'wall':>7} "
          f"{'p50':>7} {'p95':>7} served errors  per-method compute (median)")
    from gradio_client.exceptions import AppError

    for name in args.models:
        try:
            r = run_model(name, args.methods, args.requests, args.users, args.resolution, args.words, args.fetch,
                          args.shifts, args.refine)
        except AppError as e:  # e.g. the toy model's weights are not there yet
            print(f"{name:<11} skipped: {e}", flush=True)
            continue
        results.append(r)
        compute = ", ".join(f"{k} {v:.2f} s" for k, v in r["method_compute_s"].items()) or "-"
        cp50, cp95 = (f"{v:>6.2f}s" if v is not None else f"{'-':>7}" for v in
                      (r["concurrent_p50_s"], r["concurrent_p95_s"]))
        print(f"{name:<11} {r['first_request_s']:>11.2f}s {r['p50_s']:>7.2f}s {r['p95_s']:>7.2f}s "
              f"{'':>8}{r['concurrent_wall_s']:>7.2f}s {cp50} {cp95} "
              f"{r['concurrent_served']:>3}/{args.users} {len(r['errors']):>6}  {compute}", flush=True)
        for err in r["errors"]:
            print(f"  error: {err}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
