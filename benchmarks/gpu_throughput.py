"""GPU variant: CLIPood training throughput of ViT-B/16 (random init, bf16 autocast, fp32 master weights).

Reports images/s and model FLOP utilisation (MFU): achieved FLOP/s over the GPU's dense bf16 peak, with
training FLOPs = 3 x forward FLOPs (forward + backward), forward FLOPs counted by torch's FlopCounterMode.
Run only where a GPU is available:

    python benchmarks/gpu_throughput.py [--batch-size 128] [--steps 30] [--peak-tflops 989]
"""
import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from clipood_kit import BetaMovingAverage, mms_loss
from clipood_kit.models import load_clip


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no GPU: this benchmark needs CUDA")
    torch.backends.cuda.matmul.allow_tf32 = True
    model, _, _ = load_clip(args.model, pretrained=None, device="cuda")
    encoder = model.visual.train()
    size = encoder.image_size[0]
    images = torch.randn(args.batch_size, 3, size, size, device="cuda")
    labels = torch.randint(50, (args.batch_size,), device="cuda")
    text = torch.nn.functional.normalize(torch.randn(50, encoder.output_dim, device="cuda"), dim=-1)
    opt = torch.optim.AdamW(encoder.parameters(), lr=1e-5, weight_decay=0.1, fused=True)
    bma = BetaMovingAverage(encoder, args.steps + 10, 0.5, 0.5)
    with FlopCounterMode(display=False) as counter:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            encoder(images[:1])
    fwd_flops_per_image = counter.get_total_flops()

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            feats = encoder(images)
        mms_loss(feats.float(), text, labels, 0.3, 100.0).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        bma.update(encoder)

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / args.steps
    ips = args.batch_size / dt
    mfu = 3 * fwd_flops_per_image * ips / (args.peak_tflops * 1e12)
    print(json.dumps({"benchmark": "gpu_throughput", "model": args.model, "device": torch.cuda.get_device_name(),
                      "batch_size": args.batch_size, "step_ms": round(dt * 1e3, 2), "images_per_s": round(ips, 1),
                      "forward_gflops_per_image": round(fwd_flops_per_image / 1e9, 2), "mfu": round(mfu, 4)}))


if __name__ == "__main__":
    main()
