#!/usr/bin/env python3
"""An independent verifier of a Gatehouse audit log export.

Written from docs/audit-log.md alone: the Python standard library plus the
`cryptography` package for Ed25519. It trusts nothing in the export but
the verifier keys given on the command line.

    python3 verify_audit.py EXPORT.jsonl --vkey VKEY [--vkey VKEY ...] [--held CHECKPOINT]

Prints `ok: N entries, root <base64>` and exits 0, or prints the first
problem as `<location>: <code>: <detail>` and exits 1 (2 for bad usage).
"""

import argparse
import base64
import binascii
import hashlib
import json
import re
import struct
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

INLINE_MAX = 16 * 1024
MAX_ENTRY = 64 * 1024
MAX_DEPTH = 64
HEX64 = re.compile(r"[0-9a-f]{64}")
KIND = re.compile(r"[a-z0-9._-]{1,64}")
# ASCII digits only (`\d` would take any Unicode digit).
TIME = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]{1,9})?Z")
DASH = "\u2014 "


class Problem(Exception):
    def __init__(self, location, code, detail):
        super().__init__(f"{location}: {code}: {detail}")
        self.location, self.code = location, code


# --- canonical JSON (spec: "Canonical JSON") ---------------------------------

def canonical(value, depth=0):
    if depth > MAX_DEPTH:
        raise ValueError("too deep")
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise ValueError("integer out of range")
        return str(value)
    if isinstance(value, float):
        raise ValueError("float")
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ",".join(canonical(v, depth + 1) for v in value) + "]"
    if isinstance(value, dict):
        items = sorted(value.items())
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + canonical(v, depth + 1) for k, v in items) + "}"
    raise ValueError("not JSON")


# --- entries (spec: "Entries") -------------------------------------------------

def valid_time(text):
    m = TIME.fullmatch(text)
    if not m:
        return False
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    days = {1: 31, 2: 29 if leap else 28, 3: 31, 4: 30, 5: 31, 6: 30,
            7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}.get(month)
    return year >= 1970 and days is not None and 1 <= day <= days and hour <= 23 and minute <= 59 and second <= 59


def is_uint(v):
    return type(v) is int and 0 <= v < 2**64


def text_ok(v, most):
    return isinstance(v, str) and 1 <= len(v.encode("utf-8")) <= most


def check_recorded(v):
    if v is None:
        return True
    if not isinstance(v, dict):
        return False
    if "value" in v:
        return set(v) == {"value"} and len(canonical(v["value"]).encode("utf-8")) <= INLINE_MAX
    return (set(v) == {"sha256", "size"} and isinstance(v["sha256"], str) and HEX64.fullmatch(v["sha256"])
            and is_uint(v["size"]) and v["size"] > INLINE_MAX)


def decode_entry(line):
    """The entry, or None when the line is not one in canonical form."""
    if len(line) > MAX_ENTRY:
        return None
    try:
        e = json.loads(line.decode("utf-8"))
        if not isinstance(e, dict) or set(e) != {"v", "seq", "time", "actor", "plugin", "change", "prev"}:
            return None
        c = e["change"]
        ok = (type(e["v"]) is int and e["v"] == 1 and is_uint(e["seq"])
              and isinstance(e["time"], str) and valid_time(e["time"])
              and text_ok(e["actor"], 256)
              and (e["plugin"] is None or text_ok(e["plugin"], 128))
              and isinstance(c, dict) and set(c) == {"kind", "item", "before", "after"}
              and isinstance(c["kind"], str) and KIND.fullmatch(c["kind"])
              and isinstance(c["item"], str) and len(c["item"].encode("utf-8")) <= 1024
              and check_recorded(c["before"]) and check_recorded(c["after"])
              and isinstance(e["prev"], str) and HEX64.fullmatch(e["prev"]))
        if not ok or canonical(e).encode("utf-8") != line:
            return None
        return e
    except (ValueError, UnicodeError, RecursionError):
        return None


# --- RFC 6962 (spec: "Tree") ---------------------------------------------------

def leaf_hash(data):
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


class Tree:
    """Roots of every prefix, from a stack of complete subtrees."""

    def __init__(self):
        self.stack = []  # (height, hash), heights decreasing
        self.roots = [hashlib.sha256(b"").digest()]

    def push(self, leaf):
        height, h = 0, leaf
        while self.stack and self.stack[-1][0] == height:
            h = node_hash(self.stack.pop()[1], h)
            height += 1
        self.stack.append((height, h))
        root = self.stack[-1][1]
        for _, left in reversed(self.stack[:-1]):
            root = node_hash(left, root)
        self.roots.append(root)


# --- signed notes and checkpoints (spec: "Checkpoints") ------------------------

def parse_vkey(vkey):
    name, key_id, key = vkey.strip().split("+", 2)
    raw = base64.b64decode(key, validate=True)
    if len(raw) != 33 or raw[0] != 1 or not re.fullmatch(r"[0-9a-f]{8}", key_id):
        raise ValueError("not an Ed25519 vkey")
    digest = hashlib.sha256(name.encode() + b"\n" + raw).digest()
    if digest[:4] != bytes.fromhex(key_id):
        raise ValueError("key ID does not match")
    return (name, int(key_id, 16)), Ed25519PublicKey.from_public_bytes(raw[1:])


def open_checkpoint(note, trusted, where):
    """Returns (origin, size, root); raises Problem at where(size)."""
    try:
        split = note.rindex("\n\n")
        text, sigs = note[: split + 1], note[split + 2:]
        lines = text.split("\n")
        origin, size_text, root_text = lines[0], lines[1], lines[2]
        if not origin or not re.fullmatch(r"0|[1-9][0-9]*", size_text):
            raise ValueError("bad checkpoint text")
        size, root = int(size_text), base64.b64decode(root_text, validate=True)
        if len(root) != 32 or not sigs.endswith("\n"):
            raise ValueError("bad checkpoint text")
    except (ValueError, IndexError, binascii.Error):
        raise Problem(where(None), "checkpoint-malformed", "not a signed checkpoint")
    signed = False
    for line in sigs[:-1].split("\n"):
        if not line.startswith(DASH):
            raise Problem(where(None), "checkpoint-malformed", "bad signature line")
        name, _, sig = line[len(DASH):].partition(" ")
        try:
            sig = base64.b64decode(sig, validate=True)
        except binascii.Error:
            raise Problem(where(None), "checkpoint-malformed", "bad signature")
        if len(sig) < 5:
            raise Problem(where(None), "checkpoint-malformed", "bad signature")
        key = trusted.get((name, struct.unpack(">I", sig[:4])[0]))
        if key is None:
            continue  # another party's signature
        try:
            key.verify(sig[4:], text.encode("utf-8"))
        except InvalidSignature:
            raise Problem(where(size), "bad-signature", f"the signature of {name} does not verify")
        signed = True
    if not signed:
        raise Problem(where(size), "untrusted", "no trusted key signed it")
    return origin, size, root


# --- verification (spec: "Verification") ---------------------------------------

def read_export(path):
    entries, checkpoints = [], []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    for line in lines:
        if line.startswith(b'{"checkpoint":'):
            try:
                obj = json.loads(line)
                if isinstance(obj, dict) and list(obj) == ["checkpoint"] and isinstance(obj["checkpoint"], str):
                    checkpoints.append(obj["checkpoint"])
                    continue
            except ValueError:
                pass
        entries.append(line)
    return entries, checkpoints


def verify(entries, notes, trusted, held_note=None):
    cps = []
    for index, note in enumerate(notes):
        cp = open_checkpoint(note, trusted, lambda s, i=index: f"checkpoint #{i}" if s is None else f"checkpoint {s}")
        if cps and cp[0] != cps[0][0]:
            raise Problem(f"checkpoint {cp[1]}", "origin", "another log's checkpoint")
        if cps and cps[-1][1] >= cp[1]:
            raise Problem(f"checkpoint {cp[1]}", "checkpoint-order", "not larger than the one before")
        cps.append(cp)
    held = None
    if held_note is not None:
        held = open_checkpoint(held_note, trusted, lambda s: "held checkpoint")
        if cps and held[0] != cps[0][0]:
            raise Problem("held checkpoint", "origin", "another log's checkpoint")

    n = len(entries)
    leaves = [leaf_hash(e) for e in entries]
    tree = Tree()
    for leaf in leaves:
        tree.push(leaf)

    def matches(cp):
        return cp[1] <= n and tree.roots[cp[1]] == cp[2]

    candidates = []  # (position, order, code)
    for i, line in enumerate(entries):
        e = decode_entry(line)
        if e is None:
            candidates.append((i, 0, "malformed"))
            break
        if e["seq"] != i:
            candidates.append((i, 0, "sequence"))
            break
        expected = bytes(32) if i == 0 else leaves[i - 1]
        if bytes.fromhex(e["prev"]) != expected:
            vouched = i > 0 and any(cp[1] == i and matches(cp) for cp in cps)
            nxt = decode_entry(entries[i + 1]) if i + 1 < n else None
            next_broken = nxt is not None and bytes.fromhex(nxt["prev"]) != leaves[i]
            if i == 0 or vouched or next_broken:
                candidates.append((i, 0, "prev-mismatch"))
            else:
                candidates.append((i - 1, 0, "hash-mismatch"))
            break
    before = 0
    for cp in cps:
        if cp[1] > n:
            continue
        if not matches(cp):
            candidates.append((before, 1, "root-mismatch"))
            break
        before = cp[1]
    if not cps and n > 0:
        candidates.append((0, 2, "unsigned"))
    elif cps and cps[-1][1] < n:
        candidates.append((cps[-1][1], 2, "unsigned"))
    elif cps and cps[-1][1] > n:
        candidates.append((n, 3, "truncated"))
    if held is not None and held[1] > n:
        candidates.append((n, 4, "truncated"))
    if candidates:
        pos, _, code = min(candidates)
        raise Problem(f"entry {pos}", code, "see docs/audit-log.md")
    if held is not None and tree.roots[held[1]] != held[2]:
        raise Problem("held checkpoint", "fork", "the log does not extend the held checkpoint")
    return n, tree.roots[n]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export")
    parser.add_argument("--vkey", action="append", required=True)
    parser.add_argument("--held")
    args = parser.parse_args()
    try:
        trusted = dict(parse_vkey(v) for v in args.vkey)
    except ValueError as e:
        print(f"bad vkey: {e}", file=sys.stderr)
        return 2
    # Bytes as written: text mode would turn CRLF into LF and accept a note
    # the signed-note format refuses.
    held = open(args.held, "rb").read().decode("utf-8") if args.held else None
    entries, notes = read_export(args.export)
    try:
        n, root = verify(entries, notes, trusted, held)
    except Problem as p:
        print(p)
        return 1
    print(f"ok: {n} entries, root {base64.b64encode(root).decode()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
