#!/usr/bin/env python3
"""Independent computation of the SSH ed25519 -> X25519 mapping used by tm-noise.

For a fixed ed25519 seed prints:
  - the ed25519 public key,
  - the X25519 private key clamp(SHA-512(seed)[:32]) and its public key (via X25519PrivateKey),
  - the Edwards->Montgomery u = (1 + y) / (1 - y) mod p of the ed25519 public key
    (must equal the X25519 public key),
  - an unencrypted OpenSSH private key file and the "ssh-ed25519 AAAA..." public line
    (written as fixtures next to this script with --write).
Also pins HMAC-BLAKE2s (RFC 2104, block size 64) for one key/message pair.

Usage: python3 ssh_x25519.py [--write]
Requires: cryptography (pyca).
"""
import base64
import hashlib
import hmac
import os
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

SEED = bytes(range(0x20, 0x40))  # fixed test seed: 20 21 .. 3f
COMMENT = b"tm-noise-vector"
P = 2**255 - 19


def clamp(b: bytes) -> bytes:
    a = bytearray(b)
    a[0] &= 248
    a[31] &= 127
    a[31] |= 64
    return bytes(a)


def main() -> None:
    ed = Ed25519PrivateKey.from_private_bytes(SEED)
    ed_pub = ed.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    x_priv = clamp(hashlib.sha512(SEED).digest()[:32])
    x_pub = (
        X25519PrivateKey.from_private_bytes(x_priv)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )

    y = int.from_bytes(ed_pub, "little") & ((1 << 255) - 1)
    u = (1 + y) * pow((1 - y) % P, P - 2, P) % P
    u_bytes = u.to_bytes(32, "little")
    assert u_bytes == x_pub, "Edwards->Montgomery map disagrees with X25519(clamp(SHA-512(seed)))"

    pem = ed.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption())
    line = ed.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH) + b" " + COMMENT

    hmac_key = bytes(range(32))
    hmac_msg = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
    hm = hmac.new(hmac_key, hmac_msg, hashlib.blake2s).digest()

    print("seed_hex", SEED.hex())
    print("ed25519_pub_hex", ed_pub.hex())
    print("x25519_priv_b64", base64.b64encode(x_priv).decode())
    print("x25519_pub_b64", base64.b64encode(x_pub).decode())
    print("montgomery_u_b64", base64.b64encode(u_bytes).decode())
    print("ssh_pub_line", line.decode())
    print("hmac_blake2s_hex", hm.hex())

    if "--write" in sys.argv:
        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, "id_ed25519"), "wb") as f:
            f.write(pem)
        with open(os.path.join(here, "id_ed25519.pub"), "wb") as f:
            f.write(line + b"\n")


if __name__ == "__main__":
    main()
