#!/usr/bin/env python3
"""peer_ssd.py — times the public Mamba-2 SSD kernel (mamba_ssm's Triton mamba_chunk_scan_combined) at the layer
shapes of cuda/bench/bench_ssd.cu (400M: B 8, H 64, P 19, N 216; 7B: B 4, H 32, P 64, N 192; T 4096, G 1, chunk 256,
bf16, no D, no z), forward and forward + backward (of sum y.dy), median of timed repeats after warm-up, CUDA events.
Same op as m2lab's ssd: h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T, y_t = h_t C_t. Prints "peer not installed" when
the kernel cannot be imported. Not imported by anything; the peer's code stays out of the repository: install its
wheel on the GPU machine (pip install --no-index --no-deps), or point M2_PEER_PATH at an unpacked source tree (the
folder holding mamba_ssm/; mamba-ssm is published as a source archive whose CUDA extensions the Triton SSD does not
need). Usage: peer_ssd.py [reps]"""
import importlib
import importlib.util
import os
import sys
import types

if os.environ.get("M2_PEER_PATH"):
    sys.path.insert(0, os.environ["M2_PEER_PATH"])


def load_peer():
    """mamba_chunk_scan_combined, or (None, why). mamba_ssm's package __init__ imports its compiled selective-scan
    extension; the Triton SSD files need only triton (and einops), so when the package import fails the package is
    registered by path without running its __init__."""
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
        return mamba_chunk_scan_combined, "mamba_ssm"
    except Exception as e:  # noqa: BLE001 - any import failure means: try the files directly
        first = repr(e)
    spec = importlib.util.find_spec("mamba_ssm") if "mamba_ssm" not in sys.modules else None
    if spec is None or not spec.submodule_search_locations:
        return None, first
    for k in [k for k in sys.modules if k == "mamba_ssm" or k.startswith("mamba_ssm.")]:
        del sys.modules[k]
    pkg = types.ModuleType("mamba_ssm")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["mamba_ssm"] = pkg
    try:
        mod = importlib.import_module("mamba_ssm.ops.triton.ssd_combined")
        return mod.mamba_chunk_scan_combined, "mamba_ssm (Triton files, package __init__ skipped)"
    except Exception as e:  # noqa: BLE001
        return None, first + " / " + repr(e)


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    try:
        import torch
    except Exception:  # noqa: BLE001
        print("peer not installed (no torch)")
        return 0
    fn, how = load_peer()
    if fn is None or not torch.cuda.is_available():
        print("peer not installed (%s)" % (how if fn is None else "no CUDA device"))
        return 0
    dev = torch.device("cuda")
    print("# peer_ssd: %s on %s, bf16, G 1, chunk 256, %d timed repeats (median)" %
          (how, torch.cuda.get_device_name(0), reps))
    print("| layer | B | T | H | P | N | peer | fwd ms | fwd+bwd ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    shapes = [("400M", 8, 4096, 64, 19, 1, 216), ("7B", 4, 4096, 32, 64, 1, 192)]
    for name, B, T, H, P, G, N in shapes:
        g = torch.Generator(device=dev).manual_seed(1)
        x = torch.randn(B, T, H, P, device=dev, generator=g).bfloat16()
        dt = (0.01 + 0.09 * torch.rand(B, T, H, device=dev, generator=g)).bfloat16()
        A = (-1.5 + 1.4 * torch.rand(H, device=dev, generator=g)).float()
        Bm = (0.5 * torch.randn(B, T, G, N, device=dev, generator=g)).bfloat16()
        Cm = (0.5 * torch.randn(B, T, G, N, device=dev, generator=g)).bfloat16()
        dy = torch.randn(B, T, H, P, device=dev, generator=g).bfloat16()
        ins = [x, dt, A, Bm, Cm]

        def run(bwd):
            for t in ins:
                t.requires_grad_(bwd)
                t.grad = None
            y = fn(x, dt, A, Bm, Cm, 256)
            if bwd:
                y.backward(dy)

        def timed(bwd):
            run(bwd)  # warm-up (and autotune)
            ms = []
            for _ in range(reps):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                run(bwd)
                b.record()
                b.synchronize()
                ms.append(a.elapsed_time(b))
            ms.sort()
            return ms[len(ms) // 2]

        try:
            f, fb = timed(False), timed(True)
            print("| %s | %d | %d | %d | %d | %d | mamba_chunk_scan_combined | %.3f | %.3f |" %
                  (name, B, T, H, P, N, f, fb))
        except Exception as e:  # noqa: BLE001 - a shape the peer refuses is a result too
            print("| %s | %d | %d | %d | %d | %d | mamba_chunk_scan_combined | failed: %s | - |" %
                  (name, B, T, H, P, N, repr(e)[:120]))
        del x, dt, A, Bm, Cm, dy, ins
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
