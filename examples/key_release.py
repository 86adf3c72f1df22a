"""A key-release relying party: the seed's encrypted-disk example, end to end without TDX hardware.

The key server hands out a fresh nonce; the TD puts it in REPORTDATA, gets a TDREPORT and a DCAP quote
(``tdxmodel quote --reportdata NONCE``); the server verifies the quote against its trusted root and
collateral, checks that REPORTDATA carries its nonce (once), that the TCB status is one it accepts and
that MRTD is the image it expects, and only then releases the disk key.

Run it against an emulated TD (a state directory) with::

    python3 examples/key_release.py --state /tmp/td        # prints "released: <key hex>" (exit 0)
    tdxmodel tcb --status OutOfDate --state /tmp/td
    python3 examples/key_release.py --state /tmp/td        # "refused: TCB status OutOfDate ..." (exit 1)
"""

from __future__ import annotations

import argparse
import hmac
import secrets
import subprocess
import sys
import tempfile
from typing import Iterable, Optional, Set

from tdxmodel import quote as Q


class Refused(Exception):
    """The key is not released; the message says why."""


class KeyServer:
    """KeyServer(key, root, collateral, *, accept=("UpToDate",), mrtd=None)

    ``collateral`` is a ``tdxmodel.quote.Collateral`` or a callable returning one (for example a PCCS
    fetch), ``root`` the trusted root CA (PEM, DER or a certificate)."""

    def __init__(self, key: bytes, root, collateral, *, accept: Iterable[str] = ("UpToDate",),
                 mrtd: Optional[bytes] = None) -> None:
        self._key = key
        self._root = root
        self._collateral = collateral
        self._accept = set(accept)
        self._mrtd = mrtd
        self._outstanding: Set[bytes] = set()

    def challenge(self) -> bytes:
        """A fresh 32-byte nonce the TD must put in REPORTDATA[0..32)."""
        nonce = secrets.token_bytes(32)
        self._outstanding.add(nonce)
        return nonce

    def release(self, quote: bytes, now=None) -> bytes:
        try:
            q = Q.parse_quote(quote)
        except Q.QuoteFormatError as e:
            raise Refused(f"not a quote: {e}") from None
        collateral = self._collateral() if callable(self._collateral) else self._collateral
        result = Q.verify(q, collateral, self._root, now)
        if not result.ok:
            raise Refused(f"quote does not verify: {result.reason}")
        if result.status not in self._accept:
            raise Refused(f"TCB status {result.status} {result.advisory_ids} is not accepted")
        nonce = q.reportdata[:32]
        if not any(hmac.compare_digest(nonce, n) for n in self._outstanding):
            raise Refused("REPORTDATA does not carry an outstanding nonce (stale or replayed quote)")
        self._outstanding.discard(nonce)
        if self._mrtd is not None and not hmac.compare_digest(q.fields["mrtd"], self._mrtd):
            raise Refused("MRTD is not the expected TD image")
        return self._key


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--state", help="the emulated TD's state directory (default: tdxmodel's default)")
    ap.add_argument("--accept", default="UpToDate", help="comma-separated TCB statuses to accept")
    args = ap.parse_args(argv)

    from tdxmodel.host.collateral import Platform
    from tdxmodel.state import StateStore

    platform = Platform(StateStore(args.state))
    server = KeyServer(secrets.token_bytes(32), platform.pki().root_cert, platform.collateral,
                       accept=args.accept.split(","), mrtd=platform.store.load().mrtd)
    nonce = server.challenge()
    # The TD's side, through the command line a guest would use.
    with tempfile.NamedTemporaryFile(suffix=".quote") as f:
        cmd = [sys.executable, "-m", "tdxmodel", "quote", "--reportdata", nonce.hex(), "--out", f.name]
        if args.state:
            cmd += ["--state", args.state]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        quote = open(f.name, "rb").read()
    try:
        key = server.release(quote)
    except Refused as e:
        print(f"refused: {e}")
        return 1
    print(f"released: {key.hex()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
