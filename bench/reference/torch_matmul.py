"""The native BLAS beside ulp's matmul (BENCHMARKS.md, "matmul on a CPU adapter").

f32 matmul of n x n by n x n with PyTorch on the CPU (its BLAS: MKL or OpenBLAS), on N threads,
median of several repetitions: the figure ulp's kernels on a CPU adapter (llvmpipe, on the same
cores) are compared with. Prints one JSON line per size. Not part of the project's tests: run
it by hand where PyTorch is installed (Debian: apt-get install python3-torch), with
OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset.

usage: python3 bench/reference/torch_matmul.py [--threads 2] [--reps 9] [--sizes 256,512,1024]
"""

import argparse
import json
import re
import time

import torch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--sizes", default="256,512,1024")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(1)
    # the BLAS torch was built against ("generic": the system's libblas.so.3, which Debian's
    # alternatives point at OpenBLAS or the reference BLAS)
    m = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    blas = "mkl" if torch.backends.mkl.is_available() else (m.group(1) if m else "unknown")
    for n in [int(s) for s in a.sizes.split(",")]:
        x = torch.rand(n, n, generator=g) * 2 - 1
        y = torch.rand(n, n, generator=g) * 2 - 1
        for _ in range(2):
            torch.mm(x, y)
        times = []
        for _ in range(a.reps):
            t0 = time.perf_counter()
            torch.mm(x, y)
            times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        ms = times[len(times) // 2]
        print(json.dumps({
            "case": f"matmul f32 {n}",
            "torch": torch.__version__,
            "threads": a.threads,
            "blas": blas,
            "ms": round(ms, 3),
            "gflops": round(2 * n ** 3 / ms / 1e6, 1),
            "samples_ms": [round(t, 2) for t in times],
        }))


if __name__ == "__main__":
    main()
