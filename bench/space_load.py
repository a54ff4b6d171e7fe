"""The demo as strangers share it on a Space: a hostile matrix, bursts of clients, heavy beside light, and RSS.

Starts `python app.py --model toy` in its own process (as a Space runs it) on a free loopback port and measures,
with gradio_client, exactly as visitors call it:

  hostile   every hostile input of issue 30 once (thin, tiny and oversized images, wrongly typed inputs, a path
            that was never uploaded, an over-budget request, the heaviest accepted one): each must end in a
            one-line message or a result
  burst N   N clients at once, each /segment then /download: served (a non-empty zip), told (Gradio's "queue is
            full" or another message), lost (neither); p50 / p95 seconds of segment + download
  lanes     the heaviest accepted request, and while it runs a normal toy request: the normal one's seconds

and prints the server's RSS before, after the hostile matrix and after the bursts, and the number of tracebacks
in its log (the target is 0).

    python bench/space_load.py                                 # hostile, 32 and 80 clients, lanes
    python bench/space_load.py --clients 32 --skip lanes       # a shorter run
    python bench/space_load.py --json out/space_load.json
    python bench/space_load.py --estimates ViT-B-16-quickgelu:none    # what the budget accepts on ViT-B/16
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LABEL = "Toy world (embedded, offline)"
SCENE = ROOT / "assets" / "examples" / "toy_01.png"
WORDS = "background, circle, ring, cross, star"
HEAVIEST = {"methods": ["vanilla", "pacl"], "resolution": "448", "shifts": "2", "refine": "none"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_server(log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--model", "toy", "--port", str(port)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    from gradio_client import Client

    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            Client(url, verbose=False)
            return proc, url
        except Exception:
            time.sleep(1)
    proc.kill()
    raise SystemExit(f"the server did not start; see {log_path}")


def segment(client, image, words=WORDS, methods=("vanilla", "pacl"), model=LABEL, threshold=0.0,
            resolution="model default", shifts="1", refine="none"):
    from gradio_client import handle_file

    image = handle_file(str(image)) if isinstance(image, (str, Path)) else image
    return client.predict(image, words, list(methods) if isinstance(methods, tuple) else methods, model, threshold,
                          resolution, shifts, refine, api_name="/segment")


def hostile_files(folder: Path) -> dict[str, Path]:
    """Every hostile upload of issue 30, written to `folder`."""
    from PIL import Image

    files = {}
    for w, h in ((1, 5000), (5000, 1), (1, 300), (5, 1024), (40, 1024), (16 * 40, 40)):
        files[f"{w}x{h}"] = folder / f"thin_{w}x{h}.png"
        Image.new("RGB", (w, h), (200, 40, 40)).save(files[f"{w}x{h}"])
    files["20000x20000"] = folder / "huge.png"
    Image.new("1", (20000, 20000)).save(files["20000x20000"])
    files["zero bytes"] = folder / "empty.png"
    files["zero bytes"].write_bytes(b"")
    files["text"] = folder / "notes.png"
    files["text"].write_text("not a picture")
    files["truncated"] = folder / "cut.png"
    files["truncated"].write_bytes(SCENE.read_bytes()[:300])
    return files


def hostile_cases(folder: Path) -> list[tuple[str, dict]]:
    """(name, segment keyword arguments) of every hostile request."""
    files = hostile_files(folder)
    cases = [(f"image {k}", {"image": v}) for k, v in files.items()]
    return cases + [
        ("words=12345", {"image": SCENE, "words": 12345}),
        ("model=[label]", {"image": SCENE, "model": [LABEL]}),
        ("methods=5", {"image": SCENE, "methods": 5}),
        ("threshold='x'", {"image": SCENE, "threshold": "x"}),
        ("resolution=[1]", {"image": SCENE, "resolution": [1]}),
        ("500 words", {"image": SCENE, "words": ", ".join(f"w{i}" for i in range(500))}),
        ("unknown head label", {"image": SCENE, "model": "Your PACL head 1 (10 steps, check mIoU 0.10, ab12cd34)"}),
        ("over budget", {"image": SCENE, "methods": ["vanilla", "pacl", "sclip", "naclip"], "resolution": "672",
                         "shifts": "4", "refine": "pamr"}),
        ("heaviest accepted", {"image": SCENE, **HEAVIEST}),
    ]


def run_hostile(url: str, folder: Path) -> list[dict]:
    from gradio_client import Client

    client, rows = Client(url, verbose=False), []
    for name, kwargs in hostile_cases(folder):
        start = time.perf_counter()
        try:
            out = segment(client, **kwargs)
            outcome = f"result ({len(out[-3]['data'])} table rows)"
        except Exception as e:  # the message the visitor sees
            outcome = f"{type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else '(no message)'}"
        rows.append({"case": name, "seconds": round(time.perf_counter() - start, 2), "outcome": outcome})
        print(f"  {name:<22} {rows[-1]['seconds']:>6.2f} s  {outcome}", flush=True)
    for name, path in (("path never uploaded", "/etc/hostname"), ("traversal path", "/tmp/gradio/../../etc/passwd")):
        rows.append({"case": name, "seconds": 0.0, "outcome": raw_call(url, {"path": path, "meta": FILE_META})})
        print(f"  {name:<22}          {rows[-1]['outcome']}", flush=True)
    return rows


FILE_META = {"_type": "gradio.FileData"}


def raw_call(url: str, image) -> str:
    """/segment called over plain HTTP with a hand-made image payload (gradio_client would upload a local file)."""
    import requests

    data = [image, WORDS, ["vanilla"], LABEL, 0.0, "model default", "1", "none"]
    answer = requests.post(f"{url}gradio_api/call/segment", json={"data": data}, timeout=60)
    if answer.status_code != 200:
        return f"HTTP {answer.status_code}: {answer.json().get('detail')}"
    events = requests.get(f"{url}gradio_api/call/segment/{answer.json()['event_id']}", timeout=120).text
    return events.replace("\n", " | ")[:150]


def one_client(url: str) -> tuple[str, float]:
    """One visitor: connect, /segment, /download -> ('served' | 'told: ...' | 'lost: ...', seconds)."""
    from gradio_client import Client

    start = time.perf_counter()
    try:
        client = Client(url, verbose=False)
        segment(client, SCENE)
        archive = client.predict(api_name="/download")
    except Exception as e:
        text = str(e).splitlines()[0] if str(e) else ""
        return ("told: " + text[:80] if text else f"lost: {type(e).__name__} without a message"), 0.0
    seconds = time.perf_counter() - start
    try:
        ok = archive is not None and len(zipfile.ZipFile(archive).namelist()) > 0
    except (OSError, zipfile.BadZipFile):
        ok = False
    return ("served" if ok else "lost: no archive"), seconds


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run_burst(url: str, n: int) -> dict:
    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(lambda _: one_client(url), range(n)))
    served = [s for outcome, s in results if outcome == "served"]
    told = [o for o, _ in results if o.startswith("told")]
    lost = [o for o, _ in results if o.startswith("lost")]
    row = {"clients": n, "served": len(served), "told": len(told), "lost": len(lost),
           "queue_full": sum("queue is full" in o.lower() for o in told),
           "p50_s": round(percentile(served, 50), 2), "p95_s": round(percentile(served, 95), 2),
           "messages": sorted(set(told + lost))[:5]}
    print(f"  {n} clients: served {row['served']}, told {row['told']} (queue full {row['queue_full']}), lost "
          f"{row['lost']}; p50 {row['p50_s']} s, p95 {row['p95_s']} s {row['messages'] or ''}", flush=True)
    return row


def run_lanes(url: str) -> dict:
    """The heaviest accepted request, and a normal one sent one second later."""
    from gradio_client import Client

    heavy_client, light_client = Client(url, verbose=False), Client(url, verbose=False)
    done = {}

    def heavy():
        start = time.perf_counter()
        try:
            segment(heavy_client, SCENE, **HEAVIEST)
            done["heavy"] = "ok"
        except Exception as e:
            done["heavy"] = str(e).splitlines()[0][:120]
        done["heavy_s"] = round(time.perf_counter() - start, 2)

    thread = threading.Thread(target=heavy)
    thread.start()
    time.sleep(1.0)
    start = time.perf_counter()
    segment(light_client, SCENE)
    light = round(time.perf_counter() - start, 2)
    thread.join()
    row = {"heavy_s": done["heavy_s"], "heavy": done["heavy"], "light_while_heavy_s": light}
    print(f"  heaviest accepted ({HEAVIEST}): {row['heavy_s']} s ({row['heavy']}); a normal request meanwhile: "
          f"{light} s", flush=True)
    return row


def run_estimates(model: str) -> list[dict]:
    """The budget's estimate for a grid of settings on `model` (its forward measured here), without a server."""
    from demo import budget
    from demo import handlers as h
    from demo.models import ModelChoice, ModelRegistry
    from pacl_core.methods import METHODS

    registry = ModelRegistry([ModelChoice(model, model)])
    h.load_model(registry, model)
    unit = budget.unit_for(registry, model)
    print(f"  {model}: one bare forward at its native size {unit[0] * 1000:.0f} ms; t(r) = {unit[1]:.2f} r + "
          f"{unit[2]:.3f} r² forwards", flush=True)
    rows = []
    for methods in (["vanilla", "pacl"], list(METHODS)):
        for size in (None, "448", "672"):
            for shifts in (1, 2, 4):
                for refine in (None, "pamr"):
                    settings = h.Settings(h.check_resolution(size), shifts, refine)
                    cost = h.request_cost(registry, model, methods, (480, 640), 9, settings)
                    verdict = "refused" if cost.seconds > budget.BUDGET_SECONDS else cost.lane
                    rows.append({"methods": len(methods), "size": size or "default", "shifts": shifts,
                                 "refine": refine or "none", "seconds": round(cost.seconds, 1), "verdict": verdict})
                    print(f"  {len(methods)} methods, {size or 'model default':>13}, {shifts}x{shifts}, "
                          f"{refine or 'none':>4}: about {cost.seconds:6.1f} s -> {verdict}", flush=True)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[32, 80], help="burst sizes (default: 32 80)")
    p.add_argument("--skip", nargs="*", default=[], choices=("hostile", "bursts", "lanes"), help="parts to skip")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    p.add_argument("--estimates", default=None, metavar="MODEL",
                   help="only print the budget's estimates for a grid of settings on MODEL (e.g. "
                        "ViT-B-16-quickgelu:none, random ViT-B/16 weights), no server")
    args = p.parse_args(argv)
    if args.estimates:
        rows = run_estimates(args.estimates)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
        return
    report = {"machine": f"{os.cpu_count()} CPUs", "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "server.log"
        proc, url = start_server(log_path)
        try:
            segment(__import__("gradio_client").Client(url, verbose=False), SCENE)  # the model is loaded
            report["rss_start_mb"] = round(rss_mb(proc.pid))
            print(f"server RSS after its first request: {report['rss_start_mb']} MB", flush=True)
            if "hostile" not in args.skip:
                print("hostile matrix:", flush=True)
                report["hostile"] = run_hostile(url, Path(tmp))
                report["rss_after_hostile_mb"] = round(rss_mb(proc.pid))
                print(f"server RSS after the hostile matrix: {report['rss_after_hostile_mb']} MB "
                      f"(+{report['rss_after_hostile_mb'] - report['rss_start_mb']} MB)", flush=True)
            if "bursts" not in args.skip:
                print("bursts (each client: /segment then /download):", flush=True)
                report["bursts"] = [run_burst(url, n) for n in args.clients]
                report["rss_after_bursts_mb"] = round(rss_mb(proc.pid))
                print(f"server RSS after the bursts: {report['rss_after_bursts_mb']} MB", flush=True)
            if "lanes" not in args.skip:
                print("lanes:", flush=True)
                report["lanes"] = run_lanes(url)
            report["rss_end_mb"] = round(rss_mb(proc.pid))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        log = log_path.read_text(errors="replace")
        report["tracebacks"] = log.count("Traceback")
        print(f"server RSS at the end: {report['rss_end_mb']} MB; tracebacks in the server log: "
              f"{report['tracebacks']}", flush=True)
        if report["tracebacks"]:
            first = log.index("Traceback")
            print(log[first:first + 1500])
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
