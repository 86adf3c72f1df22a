"""ABI constants of the boot event log and the CCEL ACPI table (layer 0, beside ``tdxmodel.abi``).

Neither the C core nor Cython uses these (the event log is built and parsed in Python only), so they
are not in ``abi.CONSTANTS`` and the header generator does not emit them. Every value names its
source; the sources are upstream headers that carry the specifications' numbers:

* [PFP]  TCG PC Client Platform Firmware Profile (the crypto-agile log), as carried by tianocore/edk2
  ``MdePkg/Include/IndustryStandard/UefiTcgPlatform.h`` (event types, TCG_PCR_EVENT, TCG_PCR_EVENT2,
  TCG_EfiSpecIDEventStruct and its "Spec ID Event03" signature and version fields);
* [TPM2] TPM 2.0 Library, Part 2 (TPM_ALG_ID), as in edk2 ``MdePkg/Include/IndustryStandard/Tpm20.h``
  and coreboot ``commonlib/bsd/include/commonlib/bsd/tpm_log_defs.h`` (TPM2_ALG_SHA384 0x000C);
* [CCM]  UEFI 2.10 §38.4.1 and edk2 ``MdePkg/Include/Protocol/CcMeasurement.h``: EFI_CC_TYPE_TDX 2,
  the MR index mapping (0 = MRTD, 1..4 = RTMR[0..3]), EFI_CC_EVENTLOG_ACPI_TABLE (signature "CCEL",
  revision 1) and CC_EVENT (TCG_PCR_EVENT2 with the PCR index read as an MR index);
* [ACPI] ACPI 6.5 §5.2.6 (the 36-byte system description header; the checksum makes all bytes of the
  table sum to 0) and torvalds/linux ``include/acpi/actbl2.h`` ``struct acpi_table_ccel``
  (u8 CCtype, u8 Ccsub_type, u16 reserved, u64 log_area_minimum_length, u64 log_area_start_address);
  Linux ``drivers/acpi/sysfs.c`` ``acpi_ccel_data_init`` exposes LAML bytes at LASA as
  ``/sys/firmware/acpi/tables/data/CCEL`` (and refuses a table with LASA or LAML zero);
* [TDVF] edk2 ``OvmfPkg/Tcg/TdTcg2Dxe/TdTcg2Dxe.c`` (what TDX firmware really writes): the Spec ID
  event with PCR index 1 ("PCRIndex 0 maps to MrIndex 1"), uintnSize 2, one algorithm (SHA-384),
  no vendor info; the log area filled with 0xFF first "so the OS can know the last entry"; the
  separator event hashes a 4-byte zero; an RTMR extend with MR index - 1;
* [LINUX-EFI] Linux ``drivers/firmware/efi/libstub/efistub.h``: INITRD_EVENT_TAG_ID 0x8F3B22EC and
  LOAD_OPTIONS_EVENT_TAG_ID 0x8F3B22ED (EV_EVENT_TAG events of the EFI stub, struct
  efi_tcg2_tagged_event {u32 tagged_event_id; u32 tagged_event_data_size; data});
* [UEFI] UEFI 2.10 §10.3.1: the end-of-device-path node (type 0x7F, sub-type 0xFF, length 4).

Clients (cc-api/cc-trusted-vmsdk, go-tdx-guest style readers, dstack) stop parsing at an MR index of
0xFFFFFFFF, treat the first EV_NO_ACTION record as the Spec ID header, and replay every other event
as RTMR[mr_index - 1] <- SHA-384(RTMR || digest) (ref §4.5).
"""

from __future__ import annotations

from typing import Dict

# --- event types [PFP] -------------------------------------------------------------------------
EV_PREBOOT_CERT = 0x00000000
EV_POST_CODE = 0x00000001
EV_NO_ACTION = 0x00000003
EV_SEPARATOR = 0x00000004
EV_ACTION = 0x00000005
EV_EVENT_TAG = 0x00000006
EV_S_CRTM_CONTENTS = 0x00000007
EV_S_CRTM_VERSION = 0x00000008
EV_CPU_MICROCODE = 0x00000009
EV_PLATFORM_CONFIG_FLAGS = 0x0000000A
EV_TABLE_OF_DEVICES = 0x0000000B
EV_COMPACT_HASH = 0x0000000C
EV_IPL = 0x0000000D
EV_IPL_PARTITION_DATA = 0x0000000E
EV_NONHOST_CODE = 0x0000000F
EV_NONHOST_CONFIG = 0x00000010
EV_NONHOST_INFO = 0x00000011
EV_OMIT_BOOT_DEVICE_EVENTS = 0x00000012
EV_EFI_EVENT_BASE = 0x80000000
EV_EFI_VARIABLE_DRIVER_CONFIG = EV_EFI_EVENT_BASE + 0x1
EV_EFI_VARIABLE_BOOT = EV_EFI_EVENT_BASE + 0x2
EV_EFI_BOOT_SERVICES_APPLICATION = EV_EFI_EVENT_BASE + 0x3
EV_EFI_BOOT_SERVICES_DRIVER = EV_EFI_EVENT_BASE + 0x4
EV_EFI_RUNTIME_SERVICES_DRIVER = EV_EFI_EVENT_BASE + 0x5
EV_EFI_GPT_EVENT = EV_EFI_EVENT_BASE + 0x6
EV_EFI_ACTION = EV_EFI_EVENT_BASE + 0x7
EV_EFI_PLATFORM_FIRMWARE_BLOB = EV_EFI_EVENT_BASE + 0x8
EV_EFI_HANDOFF_TABLES = EV_EFI_EVENT_BASE + 0x9
EV_EFI_PLATFORM_FIRMWARE_BLOB2 = EV_EFI_EVENT_BASE + 0xA
EV_EFI_HANDOFF_TABLES2 = EV_EFI_EVENT_BASE + 0xB
EV_EFI_VARIABLE_BOOT2 = EV_EFI_EVENT_BASE + 0xC
EV_EFI_HCRTM_EVENT = EV_EFI_EVENT_BASE + 0x10
EV_EFI_VARIABLE_AUTHORITY = EV_EFI_EVENT_BASE + 0xE0

#: name -> value of every event type above (the TOML config and the printout use the names).
EVENT_TYPES: Dict[str, int] = {k: v for k, v in dict(globals()).items()
                               if k.startswith("EV_") and k != "EV_EFI_EVENT_BASE" and isinstance(v, int)}
EVENT_TYPE_NAMES: Dict[int, str] = {v: k for k, v in EVENT_TYPES.items()}

# --- digests [TPM2] ------------------------------------------------------------------------------
TPM_ALG_SHA1 = 0x0004
TPM_ALG_SHA256 = 0x000B
TPM_ALG_SHA384 = 0x000C
TPM_ALG_SHA512 = 0x000D
DIGEST_SIZES: Dict[int, int] = {TPM_ALG_SHA1: 20, TPM_ALG_SHA256: 32, TPM_ALG_SHA384: 48,
                                TPM_ALG_SHA512: 64}
SHA1_DIGEST_LEN = 20  # TCG_PCR_EVENT's digest (the SHA1-format header event) [PFP]

# --- the Spec ID event [PFP], as TDVF writes it [TDVF] --------------------------------------------
SPEC_ID_SIGNATURE_03 = b"Spec ID Event03\x00"   # 16 bytes, NUL-terminated
SPEC_ID_PLATFORM_CLASS = 0                      # TDVF: PcdTpmPlatformClass, 0 (client) by default
SPEC_ID_VERSION_MINOR = 0                       # TCG_EfiSpecIDEventStruct_SPEC_VERSION_MINOR_TPM2
SPEC_ID_VERSION_MAJOR = 2                       # TCG_EfiSpecIDEventStruct_SPEC_VERSION_MAJOR_TPM2
SPEC_ID_ERRATA = 0                              # TCG_EfiSpecIDEventStruct_SPEC_ERRATA_TPM2
SPEC_ID_UINTN_SIZE = 2                          # 0x02: UINTN is UINT64 (sizeof(UINTN)/sizeof(UINT32))
SPEC_ID_MR_INDEX = 1                            # TDVF writes 1, not the PFP's 0 [TDVF]

# --- CC measurement registers [CCM] --------------------------------------------------------------
CC_MR_INDEX_MRTD = 0
CC_MR_INDEX_RTMR0 = 1        # RTMR[i] is MR index i + 1
CC_MR_INDEX_COUNT = 5        # 0..4; TDVF rejects >= 5 (CC_MR_INDEX_INVALID)
#: TPM PCR -> CC MR index (UEFI 2.10 §38.4.1, TdxMeasurementMapPcrToMrIndex)
PCR_TO_MR_INDEX: Dict[int, int] = {0: 1, 1: 1, 7: 1, **{p: 2 for p in range(2, 7)},
                                   **{p: 3 for p in range(8, 16)}}
LOG_END_MR_INDEX = 0xFFFFFFFF  # an unwritten (0xFF-filled) record: the end of the log [TDVF]
LOG_FILL_BYTE = 0xFF

# --- EV_EVENT_TAG ids of the Linux EFI stub [LINUX-EFI] ------------------------------------------
INITRD_EVENT_TAG_ID = 0x8F3B22EC
LOAD_OPTIONS_EVENT_TAG_ID = 0x8F3B22ED

# --- UEFI device path [UEFI] ---------------------------------------------------------------------
END_DEVICE_PATH = bytes([0x7F, 0xFF, 0x04, 0x00])

# --- the CCEL ACPI table [ACPI], [CCM] -----------------------------------------------------------
ACPI_HEADER_LEN = 36
CCEL_SIGNATURE = b"CCEL"
CCEL_REVISION = 1            # EFI_CC_EVENTLOG_ACPI_TABLE_REVISION
CCEL_LEN = 56                # 36-byte header + CcType, CcSubType, Rsvd, LAML, LASA
CC_TYPE_TDX = 2              # EFI_CC_TYPE_TDX
CC_SUBTYPE_TDX = 0
#: The OEM fields are ours (an emulated platform has no OEM); clients do not check them.
CCEL_OEM_ID = b"TDXMDL"          # 6 bytes
CCEL_OEM_TABLE_ID = b"TDXMODEL"  # 8 bytes
CCEL_OEM_REVISION = 1
CCEL_CREATOR_ID = b"TDXM"        # 4 bytes
CCEL_CREATOR_REVISION = 1
#: Log area size: 64 KiB, what TDVF allocates by default (PcdTcgLogAreaMinLen 0x10000); a longer
#: log grows the area in whole pages.
CCEL_DEFAULT_LAML = 0x10000
#: LASA: a guest-physical address of the emulated TD (there is no guest memory behind it; Linux
#: only requires it nonzero). Our pick, below 4 GiB as TDVF's ACPI NVS allocations are.
CCEL_DEFAULT_LASA = 0x7F000000

# --- where Linux shows them [ACPI] ---------------------------------------------------------------
ACPI_TABLES_DIR = "/sys/firmware/acpi/tables"
CCEL_TABLE_PATH = ACPI_TABLES_DIR + "/CCEL"
CCEL_DATA_PATH = ACPI_TABLES_DIR + "/data/CCEL"
