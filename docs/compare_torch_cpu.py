"""Same-run comparison of our CPU path with PyTorch's on one preset: alternates
`cargo xtask bench --device cpu --json` with `docs/bench_torch_cpu.py --json` (each in its own
process, so only one runs at a time) for a number of rounds, then prints both medians and the
median of the per-round ratios. The machines here are shared and their speed swings within
minutes, so only ratios of neighbouring runs mean much.

    pip install torch==2.15.0   # the issue's reference version; any recent one runs
    python3 docs/compare_torch_cpu.py paper 32 --rounds 6 [--python PY] [-- EXTRA BENCH ARGS]

Run it from the repository root. `--python` picks the interpreter that has torch (default: this
one); arguments after `--` go to our bench (e.g. `-- --precision bf16x3`).
"""
import argparse
import json
import statistics
import subprocess
import sys


def run_json(cmd):
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        hint = ""
        if "torch" in last:
            hint = " (pip install torch==2.15.0, or --python PY for an interpreter that has it)"
        raise SystemExit(f"{' '.join(cmd)} failed: {last}{hint}")
    out = done.stdout
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"no JSON line from {' '.join(cmd)}; its output was:\n{out}")
    d = json.loads(lines[-1])
    return d["train_img_per_s"], d["infer_img_per_s"]


def main():
    argv = sys.argv[1:]
    extra = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preset", nargs="?", default="paper")
    ap.add_argument("batch", nargs="?", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--python", default=sys.executable)
    a = ap.parse_args(argv)
    shape = ["--preset", a.preset, "--batch", str(a.batch)]
    ours_cmd = ["cargo", "xtask", "bench", "--device", "cpu", *shape, "--json", *extra]
    torch_cmd = [a.python, "docs/bench_torch_cpu.py", a.preset, str(a.batch), "--json"]
    rows = []
    for i in range(a.rounds):
        ours = run_json(ours_cmd)
        theirs = run_json(torch_cmd)
        rows.append((ours, theirs))
        print(
            f"round {i + 1}: ours {ours[0]:.1f} / {ours[1]:.1f} img/s, "
            f"PyTorch {theirs[0]:.1f} / {theirs[1]:.1f} (train / inference)",
            flush=True,
        )

    def med(f):
        return statistics.median(f(o, t) for o, t in rows)

    print(
        f"preset {a.preset} batch {a.batch}, {a.rounds} rounds: "
        f"ours median {med(lambda o, t: o[0]):.1f} / {med(lambda o, t: o[1]):.1f} img/s, "
        f"PyTorch {med(lambda o, t: t[0]):.1f} / {med(lambda o, t: t[1]):.1f}; "
        f"median ratio {med(lambda o, t: o[0] / t[0]):.2f}x training / "
        f"{med(lambda o, t: o[1] / t[1]):.2f}x inference"
    )


if __name__ == "__main__":
    main()
