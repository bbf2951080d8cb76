"""The PyTorch CPU baseline for `cargo xtask bench --device cpu --preset P --batch B`: the same
network built from the preset's layer list (data/P.toml), 1000 classes, random input and labels,
f32. Training step = forward + softmax cross-entropy + backward + SGD (momentum 0.9, weight
decay 5e-4); inference = forward in eval mode without autograd. Median of 7 timed steps after 2
warm-up steps, on 2 threads (the CI machine's cores).

    python3 docs/bench_torch_cpu.py small 128
    python3 docs/bench_torch_cpu.py paper 32 [--json]

`docs/compare_torch_cpu.py` alternates it with `cargo xtask bench` for a same-run ratio.
"""
import json
import statistics
import sys
import time
import tomllib

import torch
from torch import nn


def build(spec, classes):
    layers, c, s = [], spec["input"]["channels"], spec["input"]["crop"]
    for i, l in enumerate(spec["layers"]):
        t = l["type"]
        if t == "conv2d":
            k, st, p = l["kernel"], l.get("stride", 1), l.get("padding", 0)
            layers.append(nn.Conv2d(c, l["out_channels"], k, st, p, groups=l.get("groups", 1)))
            c, s = l["out_channels"], (s + 2 * p - k) // st + 1
        elif t == "relu":
            layers.append(nn.ReLU())
        elif t == "lrn":
            # Our alpha multiplies the plain sum of squares; PyTorch's is divided by size.
            layers.append(nn.LocalResponseNorm(l["size"], l["alpha"] * l["size"], l["beta"], l["k"]))
        elif t == "maxpool":
            layers.append(nn.MaxPool2d(l["kernel"], l["stride"]))
            s = (s - l["kernel"]) // l["stride"] + 1
        elif t == "flatten":
            layers.append(nn.Flatten())
            c = c * s * s
        elif t == "linear":
            last = i == len(spec["layers"]) - 1
            out = classes if last else l["out_features"]
            layers.append(nn.Linear(c, out))
            c = out
        elif t == "dropout":
            layers.append(nn.Dropout(l["p"]))
        else:
            raise SystemExit(f"unknown layer type {t}")
    return nn.Sequential(*layers)


def median_ms(fn, warmup=2, steps=7):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(preset, batch, threads=2):
    """(train img/s, inference img/s, torch version) for one preset and batch."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    with open(f"data/{preset}.toml", "rb") as f:
        spec = tomllib.load(f)
    net = build(spec, 1000)
    crop = spec["input"]["crop"]
    x = torch.randn(batch, spec["input"]["channels"], crop, crop)
    y = torch.randint(0, 1000, (batch,))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()

    def train():
        opt.zero_grad(set_to_none=False)
        loss_fn(net(x), y).backward()
        opt.step()

    net.train()
    t_train = median_ms(train)
    net.eval()
    with torch.no_grad():
        t_infer = median_ms(lambda: net(x))
    return batch / t_train, batch / t_infer


def main():
    args = [a for a in sys.argv[1:] if a != "--json"]
    preset = args[0] if len(args) > 0 else "small"
    batch = int(args[1]) if len(args) > 1 else 128
    train, infer = measure(preset, batch)
    if "--json" in sys.argv:
        print(
            json.dumps(
                {
                    "train_img_per_s": train,
                    "infer_img_per_s": infer,
                    "preset": preset,
                    "batch": batch,
                    "device": "cpu",
                    "threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                }
            )
        )
        return
    print(
        f"PyTorch {torch.__version__} CPU ({torch.get_num_threads()} threads): preset {preset} "
        f"batch {batch}: train {train:.1f} img/s, inference {infer:.1f} img/s"
    )


if __name__ == "__main__":
    main()
