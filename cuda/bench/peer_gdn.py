#!/usr/bin/env python3
"""peer_gdn.py — times flash-linear-attention's chunk_gated_delta_rule (the public Triton peer) on the shapes of
cuda/bench/bench_gdn.cu and prints the same table rows (layer, B, T, H, K, V, forward, pass, ms, TFLOP/s, floor ms,
GFLOP, MB moved), so the two tables can be read side by side. Run on the GPU machine in the same call as bench_gdn
(cuda/bench/quick_gdn.sh); the peer's wheels are installed there, never vendored here. Nothing imports this file.

Inputs as bench_gdn: bf16, q and k L2-normalised, g uniform in (-0.3, -0.01), beta in (0.05, 0.95), scale 1/sqrt(K),
no initial state, layout (B, T, H, K). FLOPs and bytes are bench_gdn's counts (its header comment), so the TFLOP/s
columns compare time only. The peer refuses its gated backward on Hopper with Triton < 3.7.1 (wrong gradients there,
shared/GPU.md): the row then says so.
Usage: peer_gdn.py [reps]"""
import math
import sys


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    try:
        import torch
        import fla  # noqa: F401
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except Exception as e:  # no torch, no fla, or no GPU: say so and leave
        print(f"peer_gdn: flash-linear-attention not importable here ({type(e).__name__}: {e})")
        return 0
    if not torch.cuda.is_available():
        print("peer_gdn: no CUDA device")
        return 0
    p = torch.cuda.get_device_properties(0)
    print(f"# peer_gdn: fla {getattr(fla, '__version__', '?')} chunk_gated_delta_rule on {p.name} "
          f"(torch {torch.__version__}), bf16, {reps} timed repeats (median)")
    print("| layer | B | T | H | K | V | forward | pass | ms | TFLOP/s | floor ms | GFLOP | MB moved (min) | note |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    peak = 989e12
    # memory bandwidth is not in torch's properties: take bench_gdn's from the same card's name when known
    bw = 4.8e12 if "H200" in p.name else 3.35e12
    for layer, B, T, H, K, V in (("400M", 8, 4096, 2, 256, 512), ("7B", 4, 4096, 3, 256, 512)):
        gen = torch.Generator(device="cuda").manual_seed(7)
        dev, bf = "cuda", torch.bfloat16
        q = torch.nn.functional.normalize(torch.randn(B, T, H, K, device=dev, generator=gen), dim=-1).to(bf)
        k = torch.nn.functional.normalize(torch.randn(B, T, H, K, device=dev, generator=gen), dim=-1).to(bf)
        v = torch.randn(B, T, H, V, device=dev, generator=gen).to(bf)
        g = (-0.01 - 0.29 * torch.rand(B, T, H, device=dev, generator=gen)).to(bf)
        beta = (0.05 + 0.9 * torch.rand(B, T, H, device=dev, generator=gen)).to(bf)
        do = torch.randn(B, T, H, V, device=dev, generator=gen).to(bf)
        for t in (q, k, v, g, beta):
            t.requires_grad_(True)
        C, NS = 64, math.ceil(T / 64)
        flop = B * T * H * 2 * (3 * C * K + 3 * K * V + 2 * C * V)
        fbytes = 2 * B * T * H * (2 * K + 2 * V) + 4 * B * H * NS * K * V
        bbytes = 2 * B * T * H * (4 * K + 3 * V) + 4 * B * H * NS * K * V

        def run(bwd):
            o, _ = chunk_gated_delta_rule(q=q, k=k, v=v, g=g, beta=beta, scale=K ** -0.5,
                                          initial_state=None, output_final_state=False)
            if bwd:
                o.backward(do)

        def median_ms(bwd):
            run(bwd)  # warm-up (and Triton's autotuning)
            torch.cuda.synchronize()
            ts = []
            for _ in range(reps):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                run(bwd)
                b.record()
                b.synchronize()
                ts.append(a.elapsed_time(b))
            ts.sort()
            return ts[len(ts) // 2]

        for bwd in (False, True):
            fl, by = (3 * flop, fbytes + bbytes) if bwd else (flop, fbytes)
            floor_ms = 1e3 * max(fl / peak, by / bw)
            name = "fwd+bwd" if bwd else "fwd"
            try:
                ms = median_ms(bwd)
                print(f"| {layer} | {B} | {T} | {H} | {K} | {V} | fla chunk (Triton) | {name} | {ms:.3f} | "
                      f"{fl / ms * 1e-9:.1f} | {floor_ms:.3f} | {fl * 1e-9:.1f} | {by * 1e-6:.0f} | |")
            except Exception as e:  # the refused backward, or anything else the peer raises
                msg = str(e).replace("|", "/").replace("\n", " ")[:120]
                print(f"| {layer} | {B} | {T} | {H} | {K} | {V} | fla chunk (Triton) | {name} | - | - | "
                      f"{floor_ms:.3f} | {fl * 1e-9:.1f} | {by * 1e-6:.0f} | {type(e).__name__}: {msg} |")
            for t in (q, k, v, g, beta):
                t.grad = None
    return 0


if __name__ == "__main__":
    sys.exit(main())
