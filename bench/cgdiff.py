#!/usr/bin/env python3
"""Per-function difference of two callgrind dumps (exclusive instructions, summed over the
per-thread files of each, the storage checkpoint thread left out), per operation.

  cgdiff.py OPS A_FILE... -- B_FILE...

e.g. after bench/s3/instr.sh:  cgdiff.py 2000 $(grep -l 'Trigger: .*put' $OUT/cg.before.1.*) --
$(grep -l 'Trigger: .*put' $OUT/cg.after.1.*). Module paths of tm_storage are stripped so a
function that moved between modules still matches; prints the 25 largest differences.
"""
import collections
import re
import sys

CKPT = ("::checkpointer", "WriteTransaction::commit")  # as in cgsum.py


def load(files):
    """Exclusive Ir per function name over `files`, skipping the checkpoint thread's file."""
    tot = collections.Counter()
    for path in files:
        names, cur, after_calls, is_ckpt = {}, None, False, False
        d = collections.Counter()
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                m = re.match(r"(c?)fn=\((\d+)\)(?: (.*))?", line)
                if m:
                    if m.group(3):
                        names[m.group(2)] = m.group(3).strip()
                    name = names.get(m.group(2), "?")
                    if not m.group(1):
                        cur = name
                    if name.endswith(CKPT):
                        is_ckpt = True
                    continue
                if line.startswith("calls="):
                    after_calls = True  # the next cost line is the call's inclusive cost
                    continue
                if line[:1].isdigit() or line[:1] in "+-*":
                    parts = line.split()
                    if len(parts) >= 2 and not after_calls and cur:
                        d[cur] += int(parts[1])
                    after_calls = False
        if not is_ckpt:
            tot.update(d)
    return tot


def norm(k):
    k = re.sub(r"0x[0-9a-f]+", "0x?", re.sub(r"'\d+", "", k))
    k = re.sub(r"tm_storage::([a-z_0-9]+::)*", "tm_storage::", k)
    return re.sub(r"<impl (tm_storage::[A-Za-z]+)>", r"\1", k)


def group(c):
    g = collections.Counter()
    for k, v in c.items():
        g[norm(k)] += v
    return g


n = float(sys.argv[1])
sep = sys.argv.index("--")
a, b = group(load(sys.argv[2:sep])), group(load(sys.argv[sep + 1:]))
sa, sb = sum(a.values()), sum(b.values())
print("request path per op: a %.0f  b %.0f  diff %+.0f" % (sa / n, sb / n, (sb - sa) / n))
for k in sorted(set(a) | set(b), key=lambda k: -abs(b[k] - a[k]))[:25]:
    print("%9.0f %9.0f %+8.0f  %s" % (a[k] / n, b[k] / n, (b[k] - a[k]) / n, k[:130]))
