"""Sweeps: the lambda sweep's disk cache (a hit is identical and instant, any changed setting misses, a damaged
entry is recomputed), and the CLI sweep's JSON and report."""
import json
import time
from dataclasses import replace

import pytest

from clipood_kit.engine.experiment import ExperimentConfig
from clipood_kit.methods import compose
from clipood_kit.studies.sweeps import lambda_sweep
from clipood_kit.engine.training import TrainConfig
from cli_in_process import run_cli


def test_the_lambda_sweep_is_cached_by_every_setting(tmp_path):
    exp = ExperimentConfig(per_cell=2, train=TrainConfig(steps=3, batch_size=4, lr=1e-4))
    t = time.perf_counter()
    first = lambda_sweep(exp, [0.0, 0.3], compose("clipood"), cache=tmp_path)
    cold = time.perf_counter() - t
    entries = sorted(p.name for p in tmp_path.iterdir())
    assert len(entries) == 3                               # two points and the zero-shot scores
    t = time.perf_counter()
    again = lambda_sweep(exp, [0.0, 0.3], compose("clipood"), cache=tmp_path)
    assert again == first and time.perf_counter() - t < cold / 3
    assert first["points"][0]["models"]["last"] != first["points"][1]["models"]["last"]   # lambda changes training
    # any setting changes the key: the seed, the steps, the other part's config
    for changed, method in ((replace(exp, train=replace(exp.train, seed=1)), compose("clipood")),
                            (replace(exp, train=replace(exp.train, steps=4)), compose("clipood")),
                            (exp, compose("mms+ema"))):
        lambda_sweep(changed, [0.3], method, cache=tmp_path)
    assert len(list(tmp_path.iterdir())) == 3 + 3 + 2     # three new points, two new zero-shot entries
    victim = next(p for p in tmp_path.iterdir() if p.name.startswith("lambda-"))
    victim.write_text("{broken")
    assert lambda_sweep(exp, [0.0, 0.3], compose("clipood"), cache=tmp_path) == first
    with pytest.raises(ValueError, match="needs a method with the mms loss"):
        lambda_sweep(exp, [0.3], compose("ce"), cache=tmp_path)


@pytest.mark.parametrize("kind, extra", [("bma", ["--values", "0.1", "0.5", "--betas", "0.5"]),
                                         ("wise", ["--values", "0", "0.5", "1"]),
                                         ("lambda", ["--values", "0", "0.3"])])
def test_cli_sweep_writes_every_point_and_a_report(kind, extra, tmp_path, capsys):
    out = tmp_path / kind
    proc = run_cli(["sweep", kind, *extra, "--per-cell", "2", "--steps", "4", "--batch-size", "4", "--out",
                    str(out)], capsys)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads((out / "results.json").read_text())
    points = {"bma": lambda: [s for row in r["grid"] for s in row], "wise": lambda: r["points"],
              "lambda": lambda: [p["models"]["bma"] for p in r["points"]]}[kind]()
    assert len(points) == {"bma": 2, "wise": 3, "lambda": 2}[kind]
    assert all(0 <= p["accuracy"]["unseen"]["new"] <= 100 and "ood" in p for p in points)
    if kind == "wise":          # the mix's ends are the zero-shot and the fine-tuned models
        assert r["points"][0]["accuracy"] == r["zero_shot"]["accuracy"]
        for group, cells in r["last"]["accuracy"].items():
            assert r["points"][-1]["accuracy"][group] == pytest.approx(cells)
    assert 'class="plotly-graph-div"' in (out / "report.html").read_text()
