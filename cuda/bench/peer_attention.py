#!/usr/bin/env python3
"""peer_attention.py — times PyTorch's scaled_dot_product_attention (causal, bf16, the backend PyTorch picks, and
each backend it can force) at the shapes of cuda/bench/bench_attention.cu (400M: B 2 and 8, 16 heads x 64; 7B: B 4,
24 x 64; T 4096), forward and forward + backward (of sum o.do), median of timed repeats after warm-up, CUDA events.
TFLOP/s counts the causal products as bench_attention does (forward 2 products of B H D T^2 / 2 multiply-adds,
backward 5). Prints "peer not installed" without torch or a GPU. Usage: peer_attention.py [reps]"""
import sys


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    try:
        import torch
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except Exception as e:  # noqa: BLE001
        print(f"peer_attention: peer not installed ({e!r})")
        return
    if not torch.cuda.is_available():
        print("peer_attention: no CUDA device")
        return
    print(f"# peer_attention: torch {torch.__version__} SDPA on {torch.cuda.get_device_name()}, causal, bf16, "
          f"{reps} timed repeats (median)")
    print("| layer | B | T | heads | backend | fwd ms | fwd+bwd ms | fwd TFLOP/s | fwd+bwd TFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    backends = [("default", None), ("flash", SDPBackend.FLASH_ATTENTION),
                ("cudnn", getattr(SDPBackend, "CUDNN_ATTENTION", None)),
                ("efficient", SDPBackend.EFFICIENT_ATTENTION)]
    for layer, B, T, H, D in [("400M", 2, 4096, 16, 64), ("400M", 8, 4096, 16, 64), ("7B", 4, 4096, 24, 64)]:
        g = torch.Generator(device="cuda").manual_seed(1)
        q, k, v, do = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4))
        q.requires_grad_(True), k.requires_grad_(True), v.requires_grad_(True)
        fl = 2.0 * B * H * D * T * T / 2 * 2  # two products, causal half, 2 flops a multiply-add

        def run(bwd):
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            if bwd:
                torch.autograd.grad(o, (q, k, v), do)

        for name, be in backends:
            if name != "default" and be is None:
                continue
            ms = []
            try:
                for bwd in (False, True):
                    ts = []
                    for i in range(reps + 2):
                        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        if be is None:
                            a.record(); run(bwd); b.record()
                        else:
                            with sdpa_kernel(be):
                                a.record(); run(bwd); b.record()
                        torch.cuda.synchronize()
                        if i >= 2:
                            ts.append(a.elapsed_time(b))
                    ts.sort()
                    ms.append(ts[len(ts) // 2])
            except Exception as e:  # noqa: BLE001 - a backend that cannot run this shape
                print(f"| {layer} | {B} | {T} | {H} x {D} | {name} | unavailable: {type(e).__name__} | | | |")
                continue
            print(f"| {layer} | {B} | {T} | {H} x {D} | {name} | {ms[0]:.3f} | {ms[1]:.3f} | "
                  f"{fl / ms[0] / 1e9:.1f} | {fl * 3.5 / ms[1] / 1e9:.1f} |")


if __name__ == "__main__":
    main()
