"""Time of the notebooks' widget callbacks on the tiny model (target: under 100 ms each).

    python benchmarks/widget_callbacks.py
"""
import json
import statistics
import time

import torch

from clipood_kit.evaluation import features as evaluation
from clipood_kit.data import world
from clipood_kit.models import load_clip
from clipood_kit.viz.widgets import beta_view, margin_view


def median_ms(fn, repeats=30):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(1e3 * statistics.median(times), 3)


def main():
    loaded = load_clip()
    classes = list(world.WorldConfig().classes)
    text = evaluation.text_classifier(loaded.model, loaded.tokenizer, classes, world.prompt_templates())
    feature = torch.nn.functional.normalize(torch.randn(text.shape[1]), dim=0)
    print(json.dumps({"benchmark": "widget_callbacks", "classes": len(classes),
                      "margin_view_ms": median_ms(lambda: margin_view(text, classes, 0.37, feature, 3, 17.0)),
                      "beta_view_ms_T120": median_ms(lambda: beta_view(120, 0.7, 0.4)),
                      "beta_view_ms_T5000": median_ms(lambda: beta_view(5000, 0.7, 0.4))}))


if __name__ == "__main__":
    main()
