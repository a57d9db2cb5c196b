#!/usr/bin/env python3
"""Sums one callgrind dump (run with --separate-threads=yes: one file per thread) for
bench/s3/instr.sh and bench/nfs/instr.sh.

  cgsum.py OPS FILE...   (the per-thread files of ONE dump, e.g. cg.label.1.<pid>.2-*)

Prints "<Ir per op, all threads but the checkpointer> <checkpointer Ir per op> <checkpoints>".
The storage engine's checkpoint thread (`tm-storage-ckpt`, the function `checkpointer`) folds
the in-memory layer into redb when the redo log is due, which is at least every 250 ms of wall
time: how many checkpoints a run does depends on how fast it ran (under callgrind, on the load of
the machine), so its instructions are reported apart; the rest (the request path: network, HTTP
or RPC, authentication, the engine's commit and the redo log) does not depend on timing.
Checkpoints = calls of redb's WriteTransaction::commit in that thread (the thread is found by its
`checkpointer` frame or, when that is inlined, as the one that commits to redb).
"""
import re
import sys

ops = int(sys.argv[1])
req = ckpt = n_ckpt = 0
for path in sys.argv[2:]:
    total = 0
    names, calls, is_ckpt = {}, {}, False
    last_cfn = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(("summary:", "totals:")) and not total:
                total = int(line.split()[1])
            m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line)
            if m:
                if m.group(2):
                    names[m.group(1)] = m.group(2).strip()
                    if re.search(r"::checkpointer$", m.group(2).strip()):
                        is_ckpt = True
                last_cfn = m.group(1) if line.startswith("cfn=") else None
                continue
            if line.startswith("calls=") and last_cfn is not None:
                calls[last_cfn] = calls.get(last_cfn, 0) + int(line.split()[0][6:])
                last_cfn = None
    # Inlined (LTO builds), the thread has no `checkpointer` frame: it is then the thread that
    # commits to redb (request threads only append to the redo log).
    is_ckpt = is_ckpt or any(c for i, c in calls.items()
                             if names.get(i, "").endswith("WriteTransaction::commit"))
    if is_ckpt:
        ckpt += total
        n_ckpt += sum(c for i, c in calls.items()
                      if names.get(i, "").endswith("WriteTransaction::commit"))
    else:
        req += total
print(req // ops, ckpt // ops, n_ckpt)
