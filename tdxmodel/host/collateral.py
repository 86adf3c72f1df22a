"""The emulated platform's collateral and TCB position, persisted in the state directory (host layer).

``Platform(store)`` owns ``<state>/pki/`` next to the TD's ``state.json``:

* ``*.key``: the P-256 private keys (root CA, PCK Platform CA, PCK, TCB signing, the QE's attestation
  key), PKCS#8 PEM, mode 0600; ``*.pem``: the certificates;
* ``platform.json``: FMSPC, PCE-ID, PPID, QE_ID, the TCB position (``level``, ``pck_revoked``,
  ``quote_version``), the pinned collateral window (or null) and the CRL numbers;
* ``collateral.json``: the issued collateral in dcap-qvl's QuoteCollateralV3 JSON (quote.md §6), plus
  nothing else, so it can be handed to dcap-qvl as is.

Everything is made on first use under the state directory's lock and written atomically (temp file,
fsync, rename; a planted symlink is replaced, never followed; files are opened with O_NOFOLLOW).
Collateral is issued anew when it has expired at the real time it is asked for, as Intel's PCS does
on its update cycle (keys stay), unless a window was pinned with ``set_validity``.

TCB Info v3 (id "TDX") lists ``LEVELS``: one level per TCB status, highest first. Moving the platform
to level N re-issues the PCK leaf (same key) with that level's SGX TCB and sets the TD's TEE_TCB_SVN
(and TEE_TCB_SVN2) to its TDX components, so quotes verify with that level's status.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import pathlib
import secrets
import stat
from typing import Any, Dict, List, Optional, Sequence, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tdxmodel import quote_abi as qa
from tdxmodel.host import pki as pkimod
from tdxmodel.quote import FILES, Collateral, format_time, parse_time
from tdxmodel.state import StateError, StateStore, atomic_write

PKI_DIR = "pki"
PLATFORM_FILE = "platform.json"
COLLATERAL_FILE = "collateral.json"
PLATFORM_FORMAT = 1
#: Default collateral lifetime: Intel's TCB Info, QE identity and PCK CRL run 30 days (the sample
#: collateral in shared/testdata: 2025-06-19 to 2025-07-19).
DEFAULT_VALIDITY_DAYS = 30

#: The SGX TCB of the highest level, from the real sample collateral's first level (shared/testdata),
#: component 0 raised per level below; PCESVN 11 as there.
_SGX_BASE = (2, 2, 2, 2, 3, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0)
_PCESVN = 11
_SGX_TYPE = qa.SGX_TYPE_SCALABLE
#: TEE_TCB_SVN: [TDX module ISVSVN, TDX module major version, late microcode SVN, ...] (dcap-qvl
#: reads bytes 0 and 1 as the module's SVN and version, quote.md §5.5 step 4).
_MODULE_ISVSVN = 3
_MODULE_VERSION = 1
_ADVISORIES = {  # ids from the real sample collateral's lists (shared/testdata)
    "UpToDate": [],
    "SWHardeningNeeded": ["INTEL-SA-00837"],
    "ConfigurationNeeded": ["INTEL-SA-00381"],
    "ConfigurationAndSWHardeningNeeded": ["INTEL-SA-00381", "INTEL-SA-00837"],
    "OutOfDate": ["INTEL-SA-00106", "INTEL-SA-00115"],
    "OutOfDateConfigurationNeeded": ["INTEL-SA-00106", "INTEL-SA-00115", "INTEL-SA-00381"],
    "Revoked": ["INTEL-SA-00106", "INTEL-SA-00115", "INTEL-SA-00135"],
}


def _level(i: int, status: str) -> Dict[str, Any]:
    top = len(qa.TCB_STATUSES) + 1
    sgx = list(_SGX_BASE)
    sgx[0] = top - i
    tdx = [0] * qa.TCB_COMPONENTS
    tdx[0], tdx[1], tdx[2] = _MODULE_ISVSVN, _MODULE_VERSION, top - i
    return {"sgx": sgx, "pcesvn": _PCESVN, "tdx": tdx, "status": status, "advisory_ids": _ADVISORIES[status],
            "date": f"{2024 - i}-03-13T00:00:00Z"}


#: One TCB level per status, highest first (index = ``tdxmodel tcb --level``).
LEVELS: Tuple[Dict[str, Any], ...] = tuple(_level(i, s) for i, s in enumerate(qa.TCB_STATUSES))


class PlatformError(ValueError):
    """A TCB or collateral request that cannot be met; one line."""


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)


def _read_nofollow(path: pathlib.Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise StateError(f"{path}: cannot read: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _rs(signature_der: bytes) -> bytes:
    r, s = decode_dss_signature(signature_der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _sign_json(key: ec.EllipticCurvePrivateKey, obj: Dict[str, Any]) -> Tuple[str, bytes]:
    text = json.dumps(obj, separators=(",", ":"))
    return text, _rs(key.sign(text.encode(), ec.ECDSA(hashes.SHA256())))


class Platform:
    """Platform(store: StateStore): the emulated platform's PKI, TCB position and collateral."""

    def __init__(self, store: Optional[StateStore] = None) -> None:
        self.store = store if store is not None else StateStore()
        self._pki: Optional[pkimod.Pki] = None

    @property
    def directory(self) -> pathlib.Path:
        return self.store.directory / PKI_DIR

    # ------------------------------------------------------------------ files
    def _ensure_dir(self) -> None:
        self.store._mkdir()
        d = self.directory
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise StateError(f"{d}: cannot create: {e.strerror}") from None
        st = os.lstat(d)
        if not stat.S_ISDIR(st.st_mode):
            raise StateError(f"{d}: not a directory (a symlink or file is in the way)")

    def _write(self, name: str, data: bytes, mode: int = 0o644) -> None:
        try:
            atomic_write(self.directory / name, data, mode=mode)
        except OSError as e:
            raise StateError(f"{self.directory / name}: cannot write: {e.strerror}") from None

    def _meta(self) -> Dict[str, Any]:
        raw = _read_nofollow(self.directory / PLATFORM_FILE)
        try:
            meta = json.loads(raw)
            if meta.get("format") != PLATFORM_FORMAT:
                raise ValueError
        except (ValueError, AttributeError):
            raise StateError(f"{self.directory / PLATFORM_FILE}: corrupt platform state; remove "
                             f"{self.directory} to start afresh") from None
        return meta

    def _put_meta(self, meta: Dict[str, Any]) -> None:
        self._write(PLATFORM_FILE, (json.dumps(meta, indent=1) + "\n").encode(), 0o600)

    def _exists(self) -> bool:
        return (self.directory / PLATFORM_FILE).is_file()

    # ------------------------------------------------------------------ the PKI
    def _pck_ext(self, meta: Dict[str, Any]) -> bytes:
        level = LEVELS[meta["level"]]
        return pkimod.sgx_extension_der(ppid=bytes.fromhex(meta["ppid"]), components=level["sgx"],
                                        pcesvn=level["pcesvn"], cpusvn=bytes(level["sgx"]),
                                        pceid=bytes.fromhex(meta["pceid"]), fmspc=bytes.fromhex(meta["fmspc"]),
                                        sgx_type=_SGX_TYPE)

    def _create(self) -> None:
        """First use, lock held: new keys and certificates, level 0, collateral issued."""
        self._ensure_dir()
        created = _now()
        meta = {"format": PLATFORM_FORMAT, "created": format_time(created),
                "fmspc": secrets.token_bytes(qa.FMSPC_LEN).hex().upper(), "pceid": "0000",
                "ppid": secrets.token_bytes(qa.PPID_LEN).hex(), "qe_id": secrets.token_bytes(qa.QE_ID_LEN).hex(),
                "level": 0, "pck_revoked": False, "quote_version": 4, "window": None, "crl_number": 0}
        p = pkimod.new_pki(pkimod.NOT_BEFORE, self._pck_ext(meta))
        for stem, attr in pkimod.Pki.KEYS:
            self._write(f"{stem}.key", pkimod.key_pem(getattr(p, attr)), 0o600)
        for stem, attr in pkimod.Pki.CERTS:
            self._write(f"{stem}.pem", pkimod.cert_pem(getattr(p, attr)))
        self._put_meta(meta)
        self._apply_position(meta)
        self._issue(meta, p)

    def _load_pki(self) -> pkimod.Pki:
        kw: Dict[str, Any] = {}
        items = [(f"{stem}.key", attr, pkimod.load_key) for stem, attr in pkimod.Pki.KEYS]
        items += [(f"{stem}.pem", attr, x509.load_pem_x509_certificate) for stem, attr in pkimod.Pki.CERTS]
        for fname, attr, load in items:
            data = _read_nofollow(self.directory / fname)
            try:
                kw[attr] = load(data)
            except ValueError:
                raise StateError(f"{self.directory / fname}: corrupt; remove {self.directory} to start "
                                 "afresh") from None
        return pkimod.Pki(**kw)

    def _ready(self) -> None:
        if not self._exists():
            with self.store._locked():
                if not self._exists():
                    self._create()

    def pki(self) -> pkimod.Pki:
        """The keys and certificates (made on first use, then loaded once per Platform)."""
        if self._pki is None:
            self._ready()
            self._pki = self._load_pki()
        return self._pki

    def meta(self) -> Dict[str, Any]:
        self._ready()
        return self._meta()

    # ------------------------------------------------------------------ TCB position
    def _apply_position(self, meta: Dict[str, Any]) -> None:
        """Set the TD's TEE_TCB_SVN (and SVN2) to the level's TDX components (lock held)."""
        level = LEVELS[meta["level"]]
        svn = bytes(level["tdx"])
        if meta["quote_version"] == 5:
            # v5 needs TEE_TCB_SVN2 != TEE_TCB_SVN with VALID 0x301FF (quote.md §5.2) and populated
            # (quote.md §6); both must reach the level, so SVN2 differs in a component no level uses.
            svn2 = bytearray(svn)
            svn2[3] = 1
            svn2 = bytes(svn2)
        else:
            svn2 = svn

        def change(cfg: Any) -> Any:
            if meta["quote_version"] == 5 and cfg.version != "1.5":
                raise PlatformError("v5 quotes need TDX module 1.5 (TEE_TCB_SVN2, quote.md §5.2)")
            cfg.tee_tcb_svn = svn
            if cfg.version == "1.5":
                cfg.tee_tcb_svn2 = svn2
            return cfg

        self._update_config_locked(change)

    def _update_config_locked(self, fn: Any) -> None:
        doc = self.store._read(locked=True)
        new = fn(self.store._config_of(doc))
        new.validate()
        self.store._write(new, doc["generation"] + 1, doc.get("config_source"))

    def position(self) -> Dict[str, Any]:
        meta = self.meta()
        return {"level": meta["level"], "status": LEVELS[meta["level"]]["status"],
                "pck_revoked": meta["pck_revoked"], "quote_version": meta["quote_version"],
                "fmspc": meta["fmspc"],
                "levels": [{"status": lv["status"], "advisory_ids": lv["advisory_ids"],
                            "tdx_svn": bytes(lv["tdx"]).hex(), "sgx_svn": bytes(lv["sgx"]).hex(),
                            "pcesvn": lv["pcesvn"]} for lv in LEVELS]}

    def set_tcb(self, *, level: Optional[int] = None, status: Optional[str] = None,
                revoked: Optional[bool] = None, quote_version: Optional[int] = None) -> Dict[str, Any]:
        """Move the platform to a TCB level (by index or status name), revoke or un-revoke the PCK
        certificate, choose v4 or v5 quotes. Re-issues what changes; returns ``position()``."""
        if level is not None and status is not None:
            raise PlatformError("give a level or a status, not both")
        if status is not None:
            if status not in qa.TCB_STATUSES:
                raise PlatformError(f"--status: {status!r} is not one of {', '.join(qa.TCB_STATUSES)}")
            level = qa.TCB_STATUSES.index(status)
        if level is not None and not 0 <= level < len(LEVELS):
            raise PlatformError(f"--level: {level} out of range 0..{len(LEVELS) - 1}")
        if quote_version not in (None, 4, 5):
            raise PlatformError(f"quote version {quote_version} is not 4 or 5")
        p = self.pki()
        with self.store._locked():
            meta = self._meta()
            if level is not None:
                meta["level"] = level
            if revoked is not None:
                meta["pck_revoked"] = bool(revoked)
            if quote_version is not None:
                meta["quote_version"] = quote_version
            if level is not None:
                ca_key, ca = p.pck_ca_key, p.pck_ca_cert
                p.pck_cert = pkimod.issue_pck(p.root_cert, ca_key, ca, p.pck_key.public_key(),
                                              p.pck_cert.not_valid_before_utc, self._pck_ext(meta))
                self._write("pck.pem", pkimod.cert_pem(p.pck_cert))
            self._apply_position(meta)
            self._put_meta(meta)
            self._issue(meta, p)
        return self.position()

    # ------------------------------------------------------------------ collateral
    def tcb_info_object(self, meta: Dict[str, Any], issue: _dt.datetime, nxt: _dt.datetime) -> Dict[str, Any]:
        zero48 = "00" * 48
        module = {"mrsigner": zero48, "attributes": "0000000000000000", "attributesMask": "FFFFFFFFFFFFFFFF"}
        return {
            "id": qa.TCB_INFO_ID_TDX, "version": qa.TCB_INFO_VERSION, "issueDate": format_time(issue),
            "nextUpdate": format_time(nxt), "fmspc": meta["fmspc"], "pceId": meta["pceid"], "tcbType": 0,
            "tcbEvaluationDataNumber": 17, "tdxModule": module,
            "tdxModuleIdentities": [dict(id=f"TDX_{_MODULE_VERSION:02X}", **module, tcbLevels=[
                {"tcb": {"isvsvn": _MODULE_ISVSVN}, "tcbDate": LEVELS[0]["date"], "tcbStatus": "UpToDate"}])],
            "tcbLevels": [dict({"tcb": {"sgxtcbcomponents": [{"svn": s} for s in lv["sgx"]], "pcesvn": lv["pcesvn"],
                                        "tdxtcbcomponents": [{"svn": s} for s in lv["tdx"]]},
                                "tcbDate": lv["date"], "tcbStatus": lv["status"]},
                               **({"advisoryIDs": lv["advisory_ids"]} if lv["advisory_ids"] else {}))
                          for lv in LEVELS],
        }

    def qe_identity_object(self, issue: _dt.datetime, nxt: _dt.datetime) -> Dict[str, Any]:
        # Intel's TD_QE identity values (quote.md §5.4: the sample collateral's attributes and mask).
        return {"id": qa.QE_IDENTITY_ID_TD_QE, "version": qa.QE_IDENTITY_VERSION, "issueDate": format_time(issue),
                "nextUpdate": format_time(nxt), "tcbEvaluationDataNumber": 17, "miscselect": "00000000",
                "miscselectMask": "FFFFFFFF", "attributes": "11000000000000000000000000000000",
                "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
                "mrsigner": qa.TD_QE_MRSIGNER.hex().upper(), "isvprodid": qa.TD_QE_ISVPRODID,
                "tcbLevels": [{"tcb": {"isvsvn": qa.EMULATED_QE_ISVSVN}, "tcbDate": LEVELS[0]["date"],
                               "tcbStatus": "UpToDate"}]}

    def _window(self, meta: Dict[str, Any]) -> Tuple[_dt.datetime, _dt.datetime]:
        if meta.get("window"):
            return parse_time(meta["window"][0]), parse_time(meta["window"][1])
        issue = _now()
        return issue, issue + _dt.timedelta(days=DEFAULT_VALIDITY_DAYS)

    def _issue(self, meta: Dict[str, Any], p: pkimod.Pki) -> Collateral:
        """Sign and store a fresh collateral set (lock held)."""
        issue, nxt = self._window(meta)
        meta["crl_number"] = int(meta.get("crl_number", 0)) + 1
        self._put_meta(meta)
        tcb_text, tcb_sig = _sign_json(p.tcb_key, self.tcb_info_object(meta, issue, nxt))
        qe_text, qe_sig = _sign_json(p.tcb_key, self.qe_identity_object(issue, nxt))
        revoked = [p.pck_cert.serial_number] if meta["pck_revoked"] else []
        c = Collateral(
            pck_crl_issuer_chain=p.pck_crl_chain_pem(),
            root_ca_crl=pkimod.make_crl(issuer=p.root_cert, issuer_key=p.root_key, number=meta["crl_number"],
                                        last_update=issue, next_update=nxt),
            pck_crl=pkimod.make_crl(issuer=p.pck_ca_cert, issuer_key=p.pck_ca_key, number=meta["crl_number"],
                                    last_update=issue, next_update=nxt, revoked_serials=revoked),
            tcb_info_issuer_chain=p.tcb_chain_pem(), tcb_info=tcb_text, tcb_info_signature=tcb_sig,
            qe_identity_issuer_chain=p.tcb_chain_pem(), qe_identity=qe_text, qe_identity_signature=qe_sig)
        self._write(COLLATERAL_FILE, c.to_dcap_qvl_json().encode())
        return c

    def set_validity(self, issue_date: Any = None, next_update: Any = None) -> Collateral:
        """Pin the collateral window (ISO 8601, epoch seconds or datetimes) and re-issue; with both
        None, unpin (back to issuing anew on expiry) and re-issue now."""
        p = self.pki()
        with self.store._locked():
            meta = self._meta()
            if issue_date is None and next_update is None:
                meta["window"] = None
            else:
                issue = parse_time(issue_date) if issue_date is not None else _now()
                nxt = (parse_time(next_update) if next_update is not None
                       else issue + _dt.timedelta(days=DEFAULT_VALIDITY_DAYS))
                if nxt <= issue:
                    raise PlatformError("next update must be after the issue date")
                meta["window"] = [format_time(issue), format_time(nxt)]
            return self._issue(meta, p)

    def collateral(self) -> Collateral:
        """The current collateral; issued anew first if it has expired (real time) and no window is
        pinned."""
        p = self.pki()
        c = self._stored()
        if c is not None and (self._meta().get("window") or not self._expired(c)):
            return c
        with self.store._locked():
            c = self._stored()
            meta = self._meta()
            if c is not None and (meta.get("window") or not self._expired(c)):
                return c
            return self._issue(meta, p)

    def _stored(self) -> Optional[Collateral]:
        path = self.directory / COLLATERAL_FILE
        if not path.exists():
            return None
        try:
            return Collateral.from_dcap_qvl_json(_read_nofollow(path).decode())
        except (ValueError, UnicodeDecodeError):
            return None  # re-issued: the keys, not the collateral, are the platform

    @staticmethod
    def _expired(c: Collateral) -> bool:
        now = _now()
        try:
            ends = [parse_time(json.loads(c.tcb_info)["nextUpdate"]),
                    parse_time(json.loads(c.qe_identity)["nextUpdate"]),
                    x509.load_der_x509_crl(c.pck_crl).next_update_utc,
                    x509.load_der_x509_crl(c.root_ca_crl).next_update_utc]
        except (ValueError, KeyError):
            return True
        return any(e is None or now >= e for e in ends)

    # ------------------------------------------------------------------ export and the QE
    def export(self, directory: Any, fmt: str = "files") -> List[pathlib.Path]:
        """Write the collateral to ``directory`` (made if absent): ``files`` writes quote.FILES,
        ``dcap-qvl`` writes collateral.json and root_ca.der. Returns the paths written."""
        c, p = self.collateral(), self.pki()
        d = pathlib.Path(directory)
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StateError(f"{d}: cannot create: {e.strerror}") from None
        if fmt == "dcap-qvl":
            out = {"collateral.json": c.to_dcap_qvl_json().encode(), "root_ca.der": p.root_der()}
        elif fmt == "files":
            tcb_body = '{"tcbInfo":%s,"signature":"%s"}' % (c.tcb_info, c.tcb_info_signature.hex())
            qe_body = '{"enclaveIdentity":%s,"signature":"%s"}' % (c.qe_identity, c.qe_identity_signature.hex())
            out = {FILES["root_ca"]: pkimod.cert_pem(p.root_cert), FILES["root_ca_der"]: p.root_der(),
                   FILES["root_ca_crl"]: c.root_ca_crl, FILES["pck_crl"]: c.pck_crl,
                   FILES["pck_crl_issuer_chain"]: c.pck_crl_issuer_chain.encode(),
                   FILES["tcb_info"]: tcb_body.encode(),
                   FILES["tcb_info_issuer_chain"]: c.tcb_info_issuer_chain.encode(),
                   FILES["qe_identity"]: qe_body.encode(),
                   FILES["qe_identity_issuer_chain"]: c.qe_identity_issuer_chain.encode()}
        else:
            raise PlatformError(f"--format: {fmt!r} is not files or dcap-qvl")
        written = []
        for fname, data in out.items():
            try:
                atomic_write(d / fname, data)
            except OSError as e:
                raise StateError(f"{d / fname}: cannot write: {e.strerror}") from None
            written.append(d / fname)
        return written

    def quoting_enclave(self, module: Any = None) -> Any:
        """The TDQE of this platform (``tdxmodel.host.qe.QuotingEnclave``); ``module`` verifies the
        TDREPORT MAC (default: a module model of the state's platform)."""
        from tdxmodel.host.qe import QuotingEnclave
        p, meta = self.pki(), self.meta()
        return QuotingEnclave(attestation_key=p.attestation_key, pck_key=p.pck_key, pck_chain_pem=p.pck_chain_pem(),
                              qe_id=bytes.fromhex(meta["qe_id"]), cpusvn=bytes(LEVELS[meta["level"]]["sgx"]),
                              module=module if module is not None else self.store.module())
