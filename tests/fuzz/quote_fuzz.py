"""The quote-bytes fuzzer: seeded random and mutated bytes of the real quotes in shared/testdata
(read in place, never copied) through ``tdxmodel.quote``.

Mutations: bit flips, byte overwrites, truncation at any length, the length fields (signature data,
certification data, QE auth data, inner certification data, the v5 body size) set to boundary and
random 32-bit values, splices of two quotes, and random bytes. Checks, per case:

* ``parse_quote`` returns a Quote or raises ``QuoteFormatError``; nothing else (no IndexError,
  struct.error, OverflowError, MemoryError, RecursionError);
* a parsed quote is self-consistent: every field lies inside the quote's bytes at the length its
  size field states (the parser never reads past the buffer and never returns a short field);
* ``verify`` (only for the one quote whose collateral is in testdata) returns a VerifyResult or raises
  QuoteFormatError, and a quote with a flipped bit anywhere in what its signatures and hashes cover
  (header, body, signature, attestation key, QE report and its signature, QE auth data) never
  verifies.

``python -m tests.fuzz.quote_fuzz --cases N --seed S``; the CI-sized run is test_quote_fuzz.py.
"""

from __future__ import annotations

import pathlib
import random
import struct
import sys
from typing import Any, Dict, List, Optional

from tdxmodel import quote as Q
from tdxmodel import quote_abi as qa

TESTDATA = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "testdata"
QUOTES = ("tdx_prod_quote_SPR_E4.dat", "quote_v5_sample.dat", "cos-113-tdx-quote.dat",
          "dcap-qvl-sample-tdx-quote.bin")
VERIFIABLE = "dcap-qvl-sample-tdx-quote.bin"
COLLATERAL = "dcap-qvl-sample-tdx-collateral.json"
#: a time inside the sample collateral's validity (tests/test_quote_verify.py uses the same window)
INSIDE = "2025-07-01T00:00:00Z"
U32_VALUES = (0, 1, 2, 3, 5, 6, 0x7F, 0x80, 0xFF, 0x100, 0x1000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
              0xFFFFFFFE, 0xFFFFFFFF)


def load_quotes() -> Dict[str, bytes]:
    out = {}
    for name in QUOTES:
        path = TESTDATA / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the shared test data must sit beside the checkout")
        out[name] = path.read_bytes()
    return out


def _length_fields(raw: bytes) -> List[tuple]:
    """(offset, width) of each length field of a well-formed quote."""
    q = Q.parse_quote(raw)
    sd = q.signature_data_offset
    auth_end = sd + qa.SD_OFF_QE_AUTH_DATA + len(q.qe_auth_data)
    fields = [(sd - 4, 4), (sd + qa.SD_OFF_CERT_SIZE, 4), (sd + qa.SD_OFF_CERT_TYPE, 2),
              (sd + qa.SD_OFF_QE_AUTH_SIZE, 2), (auth_end, 2), (auth_end + 2, 4), (qa.HDR_OFF_VERSION, 2)]
    if q.version == qa.QUOTE_VERSION_5:
        fields += [(qa.V5_BODY_TYPE_OFF, 2), (qa.V5_BODY_SIZE_OFF, 4)]
    return fields


def _covered_end(raw: bytes) -> int:
    """The end of what a signature or hash covers: the QE auth data (quote.md §5); of the bytes before
    it only signature_data_len is covered by none."""
    q = Q.parse_quote(raw)
    return q.signature_data_offset + qa.SD_OFF_QE_AUTH_DATA + len(q.qe_auth_data)


def mutate(r: random.Random, quotes: Dict[str, bytes]) -> Dict[str, Any]:
    """One case: {"base", "how", "data"} (and "flipped" for a single covered bit flip)."""
    base = r.choice(QUOTES)
    b = bytearray(quotes[base])
    how = r.choice(("flip", "flip", "bytes", "truncate", "length", "length", "splice", "random", "covered_flip"))
    case: Dict[str, Any] = {"base": base, "how": how}
    if how == "flip":
        for _ in range(r.randint(1, 4)):
            i = r.randrange(len(b))
            b[i] ^= 1 << r.randrange(8)
    elif how == "bytes":
        for _ in range(r.randint(1, 8)):
            b[r.randrange(len(b))] = r.randrange(256)
    elif how == "truncate":
        b = b[:r.randrange(len(b))]
    elif how == "length":
        off, width = r.choice(_length_fields(bytes(b)))
        v = r.choice(U32_VALUES + (r.getrandbits(32), r.getrandbits(16),
                                   int.from_bytes(b[off:off + width], "little") + r.choice((-1, 1))))
        v &= (1 << (8 * width)) - 1
        b[off:off + width] = v.to_bytes(width, "little")
    elif how == "splice":
        other = quotes[r.choice(QUOTES)]
        cut = r.randrange(min(len(b), len(other)))
        b = b[:cut] + other[cut:]
    elif how == "random":
        b = bytearray(r.randbytes(r.choice((0, 1, 47, 48, 632, 636, 1000, 5000))))
        if r.random() < 0.5 and len(b) >= 2:
            b[0:2] = r.choice((4, 5)).to_bytes(2, "little")
    else:  # one bit of what the signatures and hashes cover, in the quote whose collateral we have
        case["base"] = base = VERIFIABLE
        b = bytearray(quotes[base])
        sd = Q.parse_quote(bytes(b)).signature_data_offset
        # signature_data_len (the 4 bytes before the signature data) is the one field in that range
        # no signature or hash covers (quote.md §5): a flip there may still verify
        i = r.randrange(_covered_end(bytes(b)) - 4)
        i += 4 if i >= sd - 4 else 0
        b[i] ^= 1 << r.randrange(8)
        case["flipped"] = i
    case["data"] = bytes(b)
    return case


def _check_parsed(q: "Q.Quote", data: bytes) -> List[str]:
    bad = []
    if len(q.raw) > len(data) or data[:len(q.raw)] != q.raw or q.trailing_len != len(data) - len(q.raw):
        bad.append("raw is not a prefix of the input")
    sd = q.signature_data_offset
    want = {"body": q.body_size, "signature": qa.SIG_LEN, "attestation_key": qa.ATT_KEY_LEN,
            "qe_report": qa.QE_REPORT_LEN, "qe_report_signature": qa.SIG_LEN,
            "inner_cert_data": struct.unpack_from("<I", q.raw, sd + qa.SD_OFF_QE_AUTH_DATA
                                                  + len(q.qe_auth_data) + 2)[0],
            "qe_auth_data": struct.unpack_from("<H", q.raw, sd + qa.SD_OFF_QE_AUTH_SIZE)[0]}
    for name, size in want.items():
        if len(getattr(q, name)) != size:
            bad.append(f"{name} is {len(getattr(q, name))} bytes, its size says {size}")
    if sd + q.signature_data_len != len(q.raw):
        bad.append("signature data does not end the quote")
    return bad


def run_case(case: Dict[str, Any], collateral: Optional["Q.Collateral"] = None, root: Any = None) -> List[str]:
    data = case["data"]
    try:
        q = Q.parse_quote(data)
    except Q.QuoteFormatError:
        q = None
    except Exception as e:  # noqa: BLE001 (the point: nothing but QuoteFormatError)
        return [f"parse_quote raised {type(e).__name__}: {str(e)[:120]}"]
    problems = _check_parsed(q, data) if q is not None else []
    if collateral is not None and (case["how"] == "covered_flip" or case["base"] == VERIFIABLE):
        try:
            result = Q.verify(data, collateral, root, INSIDE)
        except Q.QuoteFormatError:
            result = None
        except Exception as e:  # noqa: BLE001
            return problems + [f"verify raised {type(e).__name__}: {str(e)[:120]}"]
        if case["how"] == "covered_flip" and result is not None and result.ok:
            problems.append(f"verified with bit flipped at byte {case['flipped']}")
    return problems


def verifier_inputs():
    coll = Q.Collateral.from_dcap_qvl_json((TESTDATA / COLLATERAL).read_text())
    return coll, Q.root_from_chain(coll.tcb_info_issuer_chain)


def campaign(seed: int, n: int, verify_every: int = 20) -> List[Dict[str, Any]]:
    """``n`` cases of stream ``seed`` (every ``verify_every``-th also through ``verify``); the cases
    with problems (their data as hex, truncated)."""
    quotes = load_quotes()
    coll, root = verifier_inputs()
    r = random.Random(seed)
    bad = []
    for i in range(n):
        case = mutate(r, quotes)
        use = i % verify_every == 0 or case["how"] == "covered_flip" and i % 4 == 0
        problems = run_case(case, coll if use else None, root)
        if problems:
            bad.append({"index": i, "base": case["base"], "how": case["how"], "problems": problems,
                        "hex": case["data"].hex()[:200]})
    return bad


def main(argv: Optional[List[str]] = None) -> int:
    from tests.fuzz import seeded_cli
    return seeded_cli.main(argv, prog="python -m tests.fuzz.quote_fuzz", doc=__doc__, default_cases=20000,
                           campaign=campaign, what="quote fuzz")


if __name__ == "__main__":
    sys.exit(main())
