#!/usr/bin/env python3
"""sass_stalls.py SASS [FIRST LAST] — decode `cuobjdump -sass` output: per instruction the compiler's stall count
(cycles the warp waits before its next instruction: bits 41-44 of the second 64-bit word on Volta-Hopper), the
write/read scoreboard it sets and the scoreboards it waits on. With FIRST LAST (line numbers of the decoded
listing), print the opcode histogram and the summed stall counts of that range (e.g. one unrolled step)."""
import collections, re, sys

def decode(path):
    lines = open(path).read().split('\n')
    out, i = [], 0
    while i < len(lines):
        if 'Function :' in lines[i]:
            out.append('#### ' + lines[i].split('Function :')[1].strip())
        m = re.match(r'\s+/\*([0-9a-f]{4,})\*/\s+(.*?);\s*/\* (0x[0-9a-f]+) \*/', lines[i])
        if m:
            m2 = re.search(r'/\* (0x[0-9a-f]+) \*/', lines[i + 1]) if i + 1 < len(lines) else None
            hi = int(m2.group(1), 16) if m2 else 0
            st, wb, rb, wm = (hi >> 41) & 0xf, (hi >> 46) & 7, (hi >> 49) & 7, (hi >> 52) & 0x3f
            out.append(f"{m.group(1)} s{st:2d} wb{wb} rb{rb} wm{wm:06b}  {m.group(2).strip()}")
            i += 2
        else:
            i += 1
    return out

def main():
    out = decode(sys.argv[1])
    if len(sys.argv) < 4:
        print('\n'.join(out))
        return
    a, b = int(sys.argv[2]), int(sys.argv[3])
    ops, st, n = collections.Counter(), 0, 0
    for l in out[a - 1:b - 1]:
        m = re.match(r'([0-9a-f]+) s\s*(\d+) wb\d rb\d wm\d+\s+(@!?U?P\w+\s+)?(\S+)', l)
        if m:
            n += 1; st += int(m.group(2)); ops[m.group(4).split('.')[0]] += 1
    print(f"{n} instructions, stall-count sum {st}")
    print(' '.join(f"{k}:{v}" for k, v in ops.most_common()))

if __name__ == '__main__':
    main()
