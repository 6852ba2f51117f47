#!/usr/bin/env python3
"""rechain.py - the audit chain as kmsd computes it (common/audit.c), written
again from its description, for the audit tests.

Reads the audit table as `sqlite3 -json DB "SELECT seq, time, uid, user,
role, cmd, target, outcome, request_id, detail, prev_hash, hash FROM audit
ORDER BY seq"` prints it on stdin.

  rechain.py check      exit 0 when every stored hash is what this script
                        computes (so that "rewrite" forges exactly), else 1
  rechain.py rewrite    print the SQL that stores the recomputed chain and
                        head, for rows whose content was changed

Row hash = SHA-256(prev_hash || canonical(row)) in lowercase hex, where
canonical(row) is each field as "<byte length>:<bytes>\\n" in the order
seq, time, uid, user, role, cmd, target, outcome, request_id, detail
(NULL as empty); the first row's prev_hash is 64 zeros; meta audit_head
is "<last seq>:<last hash>".
"""
import hashlib
import json
import sys

FIELDS = ("seq", "time", "uid", "user", "role", "cmd", "target", "outcome", "request_id", "detail")


def field(value):
    b = b"" if value is None else str(value).encode("utf-8")
    return str(len(b)).encode() + b":" + b + b"\n"


def row_hash(prev, row):
    h = hashlib.sha256()
    h.update(field(prev))
    for f in FIELDS:
        h.update(field(row[f]))
    return h.hexdigest()


def main():
    rows = json.load(sys.stdin) if not sys.stdin.isatty() else []
    prev = "0" * 64
    out = []
    for row in rows:
        h = row_hash(prev, row)
        if sys.argv[1] == "check" and (row["hash"] != h or row["prev_hash"] != prev):
            print("row %d: stored %s, computed %s" % (row["seq"], row["hash"], h), file=sys.stderr)
            return 1
        out.append("UPDATE audit SET prev_hash = '%s', hash = '%s' WHERE seq = %d;" % (prev, h, row["seq"]))
        prev = h
    if sys.argv[1] == "rewrite" and rows:
        print("BEGIN;")
        print("\n".join(out))
        print("UPDATE meta SET value = '%d:%s' WHERE key = 'audit_head';" % (rows[-1]["seq"], prev))
        print("COMMIT;")
    return 0


if __name__ == "__main__":
    sys.exit(main())
