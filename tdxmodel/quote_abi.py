"""Constants of the DCAP TD quote, its certification data, the PCK certificate and the collateral
(layer 0, beside ``tdxmodel.abi``).

Every value cites the section of ``shared/reference/quote.md`` it comes from ("quote.md §N"), or the
test data README (``shared/testdata/README.md``) where it was measured on real quotes. Nothing here is
used by C, so nothing is generated from it; offsets are Python ints, byte strings are ``bytes``.
Integers in a quote are little-endian unless said otherwise (quote.md "How to read it").
"""

from __future__ import annotations

from typing import Dict, Tuple

# --- header (quote.md §5.1) ---------------------------------------------------------------------
QUOTE_VERSION_4 = 4                     # quote.md §5.1: QE_QUOTE_VERSION
QUOTE_VERSION_5 = 5                     # quote.md §5.1, §5.2
ATT_KEY_TYPE_ECDSA_P256 = 2             # quote.md §5.1: SGX_QL_ALG_ECDSA_P256
TEE_TYPE_TDX = 0x00000081               # quote.md §5.1
INTEL_QE_VENDOR_ID = bytes.fromhex("939A7233F79C4CA9940A0DB3957F0607")  # quote.md §5.1, §0
HEADER_LEN = 48                         # quote.md §0, §5.1
HDR_OFF_VERSION = 0
HDR_OFF_ATT_KEY_TYPE = 2
HDR_OFF_TEE_TYPE = 4
HDR_OFF_RESERVED = 8                    # 4 bytes, zero (quote.md §5.1: measured on real quotes)
HDR_RESERVED_LEN = 4
HDR_OFF_VENDOR_ID = 12
HDR_VENDOR_ID_LEN = 16
HDR_OFF_USER_DATA = 28                  # QE_ID (16) + 4 zero bytes
HDR_USER_DATA_LEN = 20
QE_ID_LEN = 16

# --- body (quote.md §5.2) -----------------------------------------------------------------------
BODY_TYPE_SGX = 1                       # quote.md §5.2: v5 body type 1, 384 B
BODY_TYPE_TD10 = 2                      # v5 body type 2, TDX 1.0, 584 B
BODY_TYPE_TD15 = 3                      # v5 body type 3, TDX 1.5, 648 B
BODY_SIZES: Dict[int, int] = {BODY_TYPE_SGX: 384, BODY_TYPE_TD10: 584, BODY_TYPE_TD15: 648}
TD10_BODY_LEN = 584                     # quote.md §5.2: sgx_report2_body_t
TD15_BODY_LEN = 648
V4_BODY_OFF = 48                        # quote.md §5.2
V4_SIG_LEN_OFF = 632                    # quote.md §0: u32 signature_data_len
V4_SIG_DATA_OFF = 636
V5_BODY_TYPE_OFF = 48                   # quote.md §5.2: u16 type, u32 size, body @54
V5_BODY_SIZE_OFF = 50
V5_BODY_OFF = 54
V5_TD15_SIG_LEN_OFF = 702               # 54 + 648 (quote.md §0)

#: Body fields: (name, body offset, size) (quote.md §5.2 field map).
BODY_FIELDS: Tuple[Tuple[str, int, int], ...] = (
    ("tee_tcb_svn", 0, 16),
    ("mrseam", 16, 48),
    ("mrsignerseam", 64, 48),
    ("seam_attributes", 112, 8),
    ("td_attributes", 120, 8),
    ("xfam", 128, 8),
    ("mrtd", 136, 48),
    ("mrconfigid", 184, 48),
    ("mrowner", 232, 48),
    ("mrownerconfig", 280, 48),
    ("rtmr0", 328, 48),
    ("rtmr1", 376, 48),
    ("rtmr2", 424, 48),
    ("rtmr3", 472, 48),
    ("reportdata", 520, 64),
)
#: Type-3 (TDX 1.5) body only (quote.md §5.2).
BODY_FIELDS_TD15: Tuple[Tuple[str, int, int], ...] = (
    ("tee_tcb_svn2", 584, 16),
    ("mrservicetd", 600, 48),
)
#: body field <- TDREPORT offset, as the TDQE copies them (quote.md §5.2). MRSIGNERSEAM and
#: SEAMATTRIBUTES are absent on purpose: the TDQE leaves them zero.
BODY_FROM_TDREPORT: Tuple[Tuple[str, int], ...] = (
    ("tee_tcb_svn", 264), ("mrseam", 280), ("td_attributes", 512), ("xfam", 520), ("mrtd", 528),
    ("mrconfigid", 576), ("mrowner", 624), ("mrownerconfig", 672), ("rtmr0", 720), ("rtmr1", 768),
    ("rtmr2", 816), ("rtmr3", 864), ("reportdata", 128),
)

# --- TDQE version choice (quote.md §5.2, determine_quote_version) -------------------------------
TDINFO_RESERVED_OFF_V0 = 512 + 400      # TDINFO reserved[112] at TDINFO 400..511 (VERSION 0)
TDINFO_RESERVED_LEN_V0 = 112
TDINFO_RESERVED_OFF_V1 = 512 + 448      # TDINFO reserved[64] at TDINFO 448..511 (VERSION 1)
TDINFO_RESERVED_LEN_V1 = 64
TDREPORT_OFF_SERVTD_HASH = 912          # quote.md §5.2: MRSERVICETD <- SERVTD_HASH
TDREPORT_OFF_TEE_TCB_SVN2 = 384
TDREPORT_OFF_VALID = 256
TDREPORT_OFF_VERSION = 2                # REPORTTYPE.VERSION (byte 2 of REPORTTYPE, ref §4.4)
#: TDQE error names (quote.md §5.2; Intel's TDQE, whose numeric values the reference does not give).
TDQE_REPORT_FORMAT_NOT_SUPPORTED = "TDQE_REPORT_FORMAT_NOT_SUPPORTED"
TDQE_ERROR_INVALID_REPORT = "TDQE_ERROR_INVALID_REPORT"  # sgx_verify_report2 (the MAC) failed
TDQE_ERROR_INVALID_HASH = "TDQE_ERROR_INVALID_HASH"

# --- signature data (quote.md §5.3, §5.4); offsets relative to the start of signature data ------
SIG_LEN = 64                            # r||s, big-endian
ATT_KEY_LEN = 64                        # x||y, big-endian
SD_OFF_SIGNATURE = 0
SD_OFF_ATT_KEY = 64
SD_OFF_CERT_TYPE = 128                  # u16 outer certification data type
SD_OFF_CERT_SIZE = 130                  # u32
SD_OFF_QE_REPORT = 134
QE_REPORT_LEN = 384
SD_OFF_QE_REPORT_SIG = 518
SD_OFF_QE_AUTH_SIZE = 582               # u16
SD_OFF_QE_AUTH_DATA = 584
QE_AUTH_DATA_LEN = 32                   # quote.md §5.4: 32 in every real quote
#: QE auth data the emulated TDQE uses: bytes 0x00..0x1f, as in three of the four real quotes in
#: shared/testdata (measured; the fourth, cos-113, carries 32 zero bytes).
EMULATED_QE_AUTH_DATA = bytes(range(32))

CERT_TYPE_PPID_CLEARTEXT = 1            # quote.md §5.4 (sgx_quote_3.h)
CERT_TYPE_PPID_RSA2048_ENCRYPTED = 2
CERT_TYPE_PPID_RSA3072_ENCRYPTED = 3
CERT_TYPE_PCK_CLEARTEXT = 4
CERT_TYPE_PCK_CERT_CHAIN = 5
CERT_TYPE_QE_REPORT = 6                 # ECDSA_SIG_AUX_DATA
CERT_TYPE_MAX = 16

# --- the QE report: an SGX REPORTBODY (quote.md §5.4) ------------------------------------------
QER_OFF_CPUSVN = 0
QER_OFF_MISCSELECT = 16
QER_OFF_ATTRIBUTES = 48
QER_OFF_MRENCLAVE = 64
QER_OFF_MRSIGNER = 128
QER_OFF_ISVPRODID = 256
QER_OFF_ISVSVN = 258
QER_OFF_REPORTDATA = 320
#: The real TD QE's identity (quote.md §5.4, measured on real quotes).
TD_QE_MRSIGNER = bytes.fromhex("DC9E2A7C6F948F17474E34A7FC43ED030F7C1563F1BABDDF6340C82E0E54A8C5")
TD_QE_ISVPRODID = 2
TD_QE_ATTRIBUTES = bytes.fromhex("1500000000000000E700000000000000")
#: ISVSVN the emulated TDQE reports: 4, the lowest real one (quote.md §5.4: 4, 6 and 7 occur).
EMULATED_QE_ISVSVN = 4
SGX_ATTRIBUTES_DEBUG = 0x02             # SGX ATTRIBUTES byte 0 bit 1 (dcap-qvl rejects a debug QE)

# --- TD attributes checked by verifiers (quote.md §5.5 step 10) --------------------------------
TD_ATTRIBUTES_DEBUG = 1 << 0
TD_ATTRIBUTES_SEPT_VE_DISABLE = 1 << 28

# --- the PCK certificate (quote.md §5.6) -------------------------------------------------------
SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
OID_PPID = SGX_EXTENSION_OID + ".1"
OID_TCB = SGX_EXTENSION_OID + ".2"      # .2.1 .. .2.16 components, .2.17 PCESVN, .2.18 CPUSVN
OID_PCESVN = OID_TCB + ".17"
OID_CPUSVN = OID_TCB + ".18"
OID_PCEID = SGX_EXTENSION_OID + ".3"
OID_FMSPC = SGX_EXTENSION_OID + ".4"
OID_SGX_TYPE = SGX_EXTENSION_OID + ".5"
PPID_LEN = 16
PCEID_LEN = 2
FMSPC_LEN = 6
TCB_COMPONENTS = 16
SGX_TYPE_STANDARD = 0
SGX_TYPE_SCALABLE = 1

#: Intel's common names (quote.md §5.6, §6: verifiers look for them); the organisation names the
#: emulator instead (quote.md §6: both measured verifiers accept it).
CN_ROOT_CA = "Intel SGX Root CA"
CN_PCK_PLATFORM_CA = "Intel SGX PCK Platform CA"
CN_PCK_CERT = "Intel SGX PCK Certificate"
CN_TCB_SIGNING = "Intel SGX TCB Signing"
EMULATED_ORGANIZATION = "tdxmodel EMULATED - not Intel"
#: Substrings QVL checks in the chain's CNs (quote.md §5.5 step 1).
CN_PART_LEAF = "SGX PCK Certificate"
CN_PART_INTERMEDIATE = "CA"
CN_PART_ROOT = "SGX Root CA"
CN_PART_TCB_SIGNING = "SGX TCB Signing"

# --- collateral (quote.md §5.5, §6) -------------------------------------------------------------
TCB_INFO_ID_TDX = "TDX"
TCB_INFO_VERSION = 3
QE_IDENTITY_ID_TD_QE = "TD_QE"
QE_IDENTITY_VERSION = 2
QE_IDENTITY_VERSIONS_ACCEPTED = (2, 3)  # quote.md §5.5 step 7: dcap-qvl also accepts 3
#: TCB statuses, in the order of increasing severity a merge of two statuses takes the worse of
#: (dcap-qvl TcbStatus; quote.md §5.5 step 9 merges platform, QE and module statuses).
TCB_STATUSES: Tuple[str, ...] = (
    "UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
    "OutOfDate", "OutOfDateConfigurationNeeded", "Revoked",
)
TCB_STATUS_REVOKED = "Revoked"
#: dcap-qvl's collateral JSON keys (quote.md §6, QuoteCollateralV3).
DCAP_QVL_COLLATERAL_KEYS: Tuple[str, ...] = (
    "pck_crl_issuer_chain", "root_ca_crl", "pck_crl", "tcb_info_issuer_chain", "tcb_info",
    "tcb_info_signature", "qe_identity_issuer_chain", "qe_identity", "qe_identity_signature",
)
#: PCS v4 paths and issuer-chain headers (quote.md §6, the go-tdx-guest row).
PCS_TDX_TCB_PATH = "/tdx/certification/v4/tcb"
PCS_TDX_QE_IDENTITY_PATH = "/tdx/certification/v4/qe/identity"
PCS_PCK_CRL_PATH = "/sgx/certification/v4/pckcrl"
PCS_ROOT_CA_CRL_PATH = "/sgx/certification/v4/rootcacrl"
HDR_TCB_INFO_ISSUER_CHAIN = "TCB-Info-Issuer-Chain"
HDR_QE_IDENTITY_ISSUER_CHAIN = "SGX-Enclave-Identity-Issuer-Chain"
HDR_PCK_CRL_ISSUER_CHAIN = "SGX-PCK-CRL-Issuer-Chain"

# --- the QGS wire protocol (quote.md §4.2; qgs_msg_lib.h/.cpp [35], qgs_server.cpp [37]) ------------
#: A frame is a 4-byte big-endian length of the message that follows, then the message.
QGS_FRAME_LEN_BYTES = 4
QGS_MSG_MAJOR_VER = 1                    # QGS_MSG_LIB_MAJOR_VER; the library checks only the major
QGS_MSG_MINOR_VER = 1                    # QGS_MSG_LIB_MINOR_VER; QEMU also checks the minor (quote.md §4.1)
#: qgs_msg_header_t: u16 major, u16 minor, u32 type, u32 size (whole message), u32 error_code
QGS_HEADER_FMT = "<HHIII"
QGS_HEADER_LEN = 16
#: get_quote_req / get_quote_resp: the header, then two u32 (report_size + id_list_size, or
#: selected_id_size + quote_size), then the bytes
QGS_QUOTE_MSG_LEN = 24
QGS_GET_QUOTE_REQ = 0
QGS_GET_QUOTE_RESP = 1
QGS_GET_COLLATERAL_REQ = 2
QGS_GET_COLLATERAL_RESP = 3
QGS_GET_PLATFORM_INFO_REQ = 4
QGS_GET_PLATFORM_INFO_RESP = 5
QGS_MSG_TYPE_MAX = 6
#: The zero-filled error response of each request type is the fixed part of its response struct
#: (qgs_msg_gen_error_resp): get_quote_resp 24, get_collateral_resp 16 + 2 + 2 + 7 * 4 = 48,
#: get_platform_info_resp 16 + 2 + 2 + 4 + 4 = 28 bytes.
QGS_ERROR_RESP_LEN = {QGS_GET_QUOTE_RESP: 24, QGS_GET_COLLATERAL_RESP: 48, QGS_GET_PLATFORM_INFO_RESP: 28}
QGS_MSG_SUCCESS = 0
QGS_MSG_ERROR_UNEXPECTED = 0x00012001    # QGS_MSG_MK_ERROR(x) = 0x00012000 | x
QGS_MSG_ERROR_OUT_OF_MEMORY = 0x00012002
QGS_MSG_ERROR_INVALID_PARAMETER = 0x00012003
QGS_MSG_ERROR_INVALID_VERSION = 0x00012004
QGS_MSG_ERROR_INVALID_TYPE = 0x00012005
QGS_MSG_ERROR_INVALID_SIZE = 0x00012006
QGS_MSG_ERROR_INVALID_CODE = 0x00012007
QGS_MSG_ERROR_MAX = 0x00012008          # one past the last; a response code at or above it is INVALID_CODE
#: The server answers a raw 1024-byte TDREPORT (no framing) with the raw quote (handle_raw_request).
QGS_RAW_REPORT_LEN = 1024
#: The server's first read is transfer_at_least(4 + 16) into a 4096-byte buffer (qgs_server.cpp).
QGS_FIRST_READ_MIN = 20
QGS_READ_BUFFER = 4096
QGS_TIMEOUT_S = 30                       # QGS_TIMEOUT: per connection, then the socket is closed
QGS_UNIX_SOCKET_PATH = "/var/run/tdx-qgs/qgs.socket"   # QGS_UNIX_SOCKET_FILE (server_main.cpp)
QGS_VSOCK_PORT = 4050                    # qgs.conf "port = 4050"; guests: /etc/tdx-attest.conf port=4050
VMADDR_CID_HOST = 2                      # the host's vsock CID libtdx_attest connects to (quote.md §2.7)
#: The raw mode's "legitimate TD report" checks (get_raw_resp in qgs_ql_logic.cpp @a46ee8ab, over
#: the SGX SDK's sgx_report2_t): REPORTTYPE type 0x81, subtype 0, version 0 or 1, its reserved byte,
#: REPORTMACSTRUCT reserved1 (12 B @4) and reserved2 (32 B @192), and the report's reserved (17 B
#: @495) all zero; anything else is closed without an answer.
QGS_RAW_REPORT_TYPE = 0x81
QGS_RAW_REPORT_SUBTYPE = 0
QGS_RAW_REPORT_VERSIONS = (0, 1)
QGS_RAW_ZERO_RANGES = ((3, 1), (4, 12), (192, 32), (495, 17))   # (offset, length)
