"""Peak of live tensor memory during one forward, and what is alive at the peak.

A ``TorchDispatchMode`` counts the bytes of every storage an operator creates and a
finaliser subtracts them when the storage dies, so the peak is the tensors' own (no
allocator caching, no page granularity). At the peak it lists the live outputs by the
operator and module that made them. Used to explain peak-memory differences between
sgm and diffusers networks that the resident-set benchmarks report.

    python benchmarks/live_tensors.py video_unet --frames 8 --height 16 --width 16
    python benchmarks/live_tensors.py unet --size 32
"""

from __future__ import annotations

# sgm must be imported before torchvision and diffusers.
# isort: skip_file

import argparse
import sys
import weakref
from collections import Counter

import sgm  # noqa: F401  (must precede diffusers)

# isort: split
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """Live bytes of tensors created inside the mode; peak and its composition."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.owners: dict[int, tuple[str, int]] = {}
        self.at_peak: Counter = Counter()
        self.seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self.owners.pop(key, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key in self.owners or key == 0:
                continue  # a view or in-place result of something counted already
            nbytes = storage.nbytes()
            self.owners[key] = (str(func.overloadpacket.__name__), nbytes)
            self.live += nbytes
            weakref.finalize(storage, self._free, key, nbytes)
        if self.live > self.peak:
            self.peak = self.live
            self.at_peak = Counter()
            for name, nbytes in self.owners.values():
                self.at_peak[name] += nbytes
        return out


def profile(fn) -> LiveBytes:
    with torch.inference_mode():
        fn()  # warm-up
        mode = LiveBytes()
        with mode:
            out = fn()
        del out
    return mode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("network", choices=["video_unet", "unet"])
    args, rest = parser.parse_known_args()
    sys.argv = [sys.argv[0], *rest]
    torch.set_num_threads(1)
    if args.network == "video_unet":
        import video_unet as bench

        sub = argparse.ArgumentParser()
        sub.add_argument("--model-channels", type=int, default=64)
        sub.add_argument("--frames", type=int, default=8)
        sub.add_argument("--height", type=int, default=16)
        sub.add_argument("--width", type=int, default=16)
        opts = sub.parse_args(rest)
        opts.dtype = torch.float32
        ours, theirs, params = bench.build(opts)
        runs = bench.make_inputs(opts, ours, theirs, params)
    else:
        import unet as bench

        sub = argparse.ArgumentParser()
        sub.add_argument("--model-channels", type=int, default=128)
        sub.add_argument("--size", type=int, default=32)
        opts = sub.parse_args(rest)
        opts.dtype, opts.batch = torch.float32, 1
        ours, theirs, params = bench.build(opts)
        run_ours, run_theirs = bench.make_inputs(opts, params)
        runs = {"sgm": lambda: run_ours(ours), "diffusers": lambda: run_theirs(theirs)}
    for name, fn in runs.items():
        mode = profile(fn)
        print(f"{name}: peak of live tensors {mode.peak / 2**20:.2f} MiB; at the peak:")
        for op, nbytes in mode.at_peak.most_common(8):
            print(f"    {op:<28} {nbytes / 2**20:8.2f} MiB")


if __name__ == "__main__":
    main()
