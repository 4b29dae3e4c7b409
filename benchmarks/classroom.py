"""Class sizing: N lesson kernels at once on the class-room store, as N students opening the same lesson.

For each N, N kernels start together (the server's side of N browser tabs: the students' browsers run elsewhere),
each runs the app version of the lesson (`lessons.build.app_notebook`, default setting) with CLIPOOD_KIT_CACHE
at the store and CLIPOOD_KIT_NO_TRAINING=1, then moves the lesson's slider MOVES times, all kernels together
(the whole class moving the slider at once, the worst case). Reported per N: the time until every kernel has
opened the lesson (median and max), each kernel's own memory after it (USS: the pages no other process shares,
median and max, MiB), the memory left available with every kernel open, and the
slider callback latency in the kernel (median and max over every move of every kernel): the kernel's share of
what a student waits for; the browser adds its redraw (README: 0.1 to 0.6 s).

    .venv/bin/clipood-kit lessons prepare --cache /tmp/store
    python benchmarks/classroom.py --store /tmp/store --lesson 03_beta_moving_average.ipynb --kernels 1 5 10 20

One JSON line per N on stdout (and the table `docs/teaching.md` quotes).
"""
import argparse
import json
import os
import statistics
import threading
import time
from pathlib import Path

import psutil
from jupyter_client.manager import start_new_kernel

from clipood_kit.lessons.build import app_notebook, default_notebooks

# the slider variable of each lesson, moved over its options
SLIDERS = {"02_margins.ipynb": "slider", "03_beta_moving_average.ipynb": "alpha", "04_fine_tuning.ipynb": "mix"}
MOVES = 5
MOVE_CODE = """
import time as _time
_control = {name}
_lat = []
for _i in range({moves}):
    _others = [o for o in _control.options if o != _control.value]
    _t = _time.perf_counter()
    _control.value = _others[_i % len(_others)]
    _lat.append(_time.perf_counter() - _t)
print("LATENCIES", _lat)
"""


def _cells(lesson: str) -> str:
    nb = app_notebook(json.loads((default_notebooks() / lesson).read_text()))
    return "\n\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


def _run(kc, code: str, timeout: float) -> str:
    printed = []

    def hook(msg):
        if msg["msg_type"] == "stream":
            printed.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            printed.append("ERROR " + msg["content"]["ename"] + ": " + msg["content"]["evalue"])
    reply = kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    text = "".join(printed)
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"a kernel failed: {text[-500:]}")
    return text


def one_class(lesson: str, n: int, store: Path) -> dict:
    env = dict(os.environ, CLIPOOD_KIT_CACHE=str(store), CLIPOOD_KIT_NO_TRAINING="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    code = _cells(lesson)
    kernels = [start_new_kernel(kernel_name="python3", env=env) for _ in range(n)]
    opened, latencies, uss, errors = [None] * n, [], [None] * n, []
    go = threading.Barrier(n)

    def student(i):
        km, kc = kernels[i]
        try:
            go.wait()
            t = time.perf_counter()
            _run(kc, code, timeout=1800)
            opened[i] = time.perf_counter() - t
            uss[i] = psutil.Process(km.provisioner.pid).memory_full_info().uss / 2 ** 20
            if lesson in SLIDERS:
                go.wait()
                out = _run(kc, MOVE_CODE.format(name=SLIDERS[lesson], moves=MOVES), timeout=600)
                latencies.extend(json.loads(out.split("LATENCIES", 1)[1].strip()))
        except Exception as e:          # noqa: BLE001 (reported, and the barrier released for the others)
            errors.append(repr(e))
            go.abort()
    threads = [threading.Thread(target=student, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    available = psutil.virtual_memory().available / 2 ** 30       # every kernel still open
    for km, kc in kernels:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    if errors:
        raise RuntimeError(f"{len(errors)} kernel(s) failed: {errors[0]}")
    row = {"benchmark": "classroom", "lesson": lesson, "kernels": n, "cpus": os.cpu_count(),
           "open_s_median": round(statistics.median(opened), 1), "open_s_max": round(max(opened), 1),
           "uss_mib_median": round(statistics.median(uss)), "uss_mib_max": round(max(uss)),
           "memory_available_gib": round(available, 1), "memory_total_gib": round(psutil.virtual_memory().total / 2 ** 30, 1)}
    if latencies:
        row.update(slider_s_median=round(statistics.median(latencies), 3), slider_s_max=round(max(latencies), 3))
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True, help="a class-room store (clipood-kit lessons prepare)")
    parser.add_argument("--lesson", default="03_beta_moving_average.ipynb")
    parser.add_argument("--kernels", type=int, nargs="+", default=[1, 5, 10])
    args = parser.parse_args()
    if not args.store.is_dir():
        raise SystemExit(f"--store {args.store} is not a folder: run `clipood-kit lessons prepare --cache DIR` first")
    for n in args.kernels:
        print(json.dumps(one_class(args.lesson, n, args.store.resolve())), flush=True)


if __name__ == "__main__":
    main()
