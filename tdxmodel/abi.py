"""The one source of truth for every ABI constant tdxmodel uses.

Layer 0. Everything else derives from the tables below:

* ``csrc/tdx_abi.h`` and ``tdxmodel/_core/tdx_abi.pxd`` are generated from them by
  ``python -m tdxmodel._gen_abi`` (``tests/test_abi_drift.py`` fails when they drift);
* the numpy dtype of a TDREPORT (``tdxmodel.report.TDREPORT_DTYPE``) is built from ``TDREPORT_FIELDS``;
* the z3 constants in ``proofs/`` are built from ``CONSTANTS`` at import.

Every entry cites the section of ``shared/reference/tdx-abi.md`` ("ref §N") it comes from. Where the
reference marks a fact uncertain, the entry says which reading we picked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple


@dataclass(frozen=True)
class Const:
    name: str
    value: int
    group: str
    ref: str
    doc: str


def _c(name: str, value: int, group: str, ref: str, doc: str) -> Const:
    return Const(name, value, group, ref, doc)


CONSTANTS: List[Const] = [
    # --- TDCALL leaves (RAX on entry) -------------------------------------------------------
    _c("TDG_VP_VMCALL", 0, "leaf", "ref §0", "TDCALL leaf TDG.VP.VMCALL"),
    _c("TDG_MR_RTMR_EXTEND", 2, "leaf", "ref §0, §4.6", "TDCALL leaf TDG.MR.RTMR.EXTEND"),
    _c("TDG_MR_REPORT", 4, "leaf", "ref §0, §4.3", "TDCALL leaf TDG.MR.REPORT"),
    _c("TDG_MR_VERIFYREPORT", 22, "leaf", "ref §0, §4.7", "TDCALL leaf TDG.MR.VERIFYREPORT (TDX 1.5+)"),
    # --- TDCALL RAX decoding on entry (ref §4.1) -----------------------------------------------
    _c("TDX_RAX_LEAF_MASK", 0xFFFF, "tdcall", "ref §4.1", "1.5: RAX bits 15:0 select the leaf (1.0 uses all 64 bits)"),
    _c("TDX_RAX_VERSION_SHIFT", 16, "tdcall", "ref §4.1", "1.5: RAX bits 23:16 are the leaf version"),
    _c("TDX_RAX_VERSION_MASK", 0xFF, "tdcall", "ref §4.1", "1.5: leaf version field width; only 0 is accepted by the MR leaves"),
    _c("TDX_RAX_RESERVED_MASK", 0xFFFFFFFFFF000000, "tdcall", "ref §4.1", "1.5: RAX bits 63:24 are reserved; nonzero gives OPERAND_INVALID(RAX)"),
    # --- 64-bit TDX module statuses (RAX on exit) -------------------------------------------
    _c("TDX_SUCCESS", 0x0000000000000000, "status", "ref §4.2", "success"),
    _c("TDX_OPERAND_INVALID", 0xC000010000000000, "status", "ref §4.2", "operand invalid; low 32 bits carry the operand id"),
    _c("TDX_OPERAND_ADDR_RANGE_ERROR", 0xC000010100000000, "status", "ref §4.2", "not returned by the MR leaves"),
    _c("TDX_OPERAND_BUSY", 0x8000020000000000, "status", "ref §4.2", "operand busy; low 32 bits carry the operand id"),
    _c("TDX_OPERAND_BUSY_HOST_PRIORITY", 0x8000020400000000, "status", "ref §4.2, §4.8",
       "1.5 host-priority busy; converted to OPERAND_BUSY before the guest sees it"),
    _c("TDX_INVALID_CPUSVN", 0xC000100000000000, "status", "ref §4.2, §4.7", "VERIFYREPORT: report CPUSVN newer than the platform's"),
    _c("TDX_INVALID_REPORTMACSTRUCT", 0xC000100100000000, "status", "ref §4.2, §4.7", "VERIFYREPORT: MAC does not verify"),
    _c("TDX_STATUS_CLASS_MASK", 0xFFFFFFFF00000000, "status", "ref §4.1", "bits 63:32: the status class"),
    _c("TDX_STATUS_OPERAND_MASK", 0x00000000FFFFFFFF, "status", "ref §4.1", "bits 31:0: operand id / details L2"),
    # --- operand ids -------------------------------------------------------------------------
    _c("TDX_OPERAND_ID_RAX", 0, "operand", "ref §4.2", "operand id RAX"),
    _c("TDX_OPERAND_ID_RCX", 1, "operand", "ref §4.2", "operand id RCX"),
    _c("TDX_OPERAND_ID_RDX", 2, "operand", "ref §4.2", "operand id RDX"),
    _c("TDX_OPERAND_ID_R8", 8, "operand", "ref §4.2", "operand id R8"),
    _c("TDX_OPERAND_ID_RTMR", 0xA8, "operand", "ref §4.2", "operand id of the RTMR lock (168)"),
    # --- the Linux spelling of the status classes (compared with status >> 32) ---------------
    _c("LINUX_TDCALL_INVALID_OPERAND", 0xC0000100, "linux", "ref §0, §2.4, §2.5", "status >> 32 of OPERAND_INVALID"),
    _c("LINUX_TDCALL_OPERAND_BUSY", 0x80000200, "linux", "ref §0, §2.5", "status >> 32 of OPERAND_BUSY"),
    _c("LINUX_V4_STATUS_MASK", 0xFFFFFFFF00000000, "linux", "ref §2.2",
       "v4 tdx_mcall_tdreport returns the status ANDed with this"),
    # --- sizes and alignments ---------------------------------------------------------------
    _c("TDX_PAGE_SIZE", 4096, "size", "ref §4.3", "guest page size"),
    _c("TDX_REPORT_LEN", 1024, "size", "ref §0, §4.4", "TDREPORT_STRUCT size"),
    _c("TDX_REPORT_ALIGN", 1024, "size", "ref §4.3", "TDG.MR.REPORT output (RCX) alignment"),
    _c("TDX_REPORTDATA_LEN", 64, "size", "ref §0, §4.4", "REPORTDATA size"),
    _c("TDX_REPORTDATA_ALIGN", 64, "size", "ref §4.3", "TDG.MR.REPORT REPORTDATA (RDX) alignment"),
    _c("TDX_EXTEND_DATA_LEN", 48, "size", "ref §0, §4.6", "RTMR extend data size"),
    _c("TDX_EXTEND_ALIGN", 64, "size", "ref §4.6", "TDG.MR.RTMR.EXTEND data (RCX) alignment"),
    _c("TDX_REPORTMACSTRUCT_LEN", 256, "size", "ref §4.4, §4.7", "REPORTMACSTRUCT size"),
    _c("TDX_VERIFY_ALIGN", 256, "size", "ref §4.7", "TDG.MR.VERIFYREPORT input (RCX) alignment"),
    _c("TDX_MAC_COVERED_LEN", 224, "size", "ref §4.5",
       "design choice (not ground truth): the MAC covers REPORTMACSTRUCT bytes 0..223"),
    _c("TDX_MAC_LEN", 32, "size", "ref §4.4, §4.5", "MAC size; HMAC-SHA-256 in tdxmodel (design choice)"),
    _c("TDX_MAC_KEY_LEN", 32, "size", "ref §4.5", "per-emulated-platform MAC key size (design choice)"),
    _c("TDX_TEE_TCB_INFO_LEN", 239, "size", "ref §4.4, §4.5",
       "TEE_TCB_INFO bytes covered by TEE_TCB_INFO_HASH: 239 (settled by the hardware report, testdata/README.md)"),
    _c("TDX_TDINFO_LEN", 512, "size", "ref §4.4", "TDINFO_STRUCT size"),
    _c("TDX_SHA384_LEN", 48, "size", "ref §4.5", "SHA-384 digest size (measurements, RTMRs, hashes)"),
    _c("TDX_CPUSVN_LEN", 16, "size", "ref §4.4", "CPUSVN size"),
    _c("TDX_NUM_RTMRS", 4, "size", "ref §4.6", "RTMR indices 0..3"),
    # --- guest physical addresses -----------------------------------------------------------
    _c("TDX_GPAW", 48, "gpa", "ref §4.3",
       "guest physical address width; the reference names GPAW 48 and 52, tdxmodel picks 48"),
    _c("TDX_GPA_SHARED_BIT", 1 << 47, "gpa", "ref §4.3",
       "the SHARED bit is the top GPA bit (GPAW-1 = 47 with our choice of GPAW 48)"),
    _c("TDX_GPA_INVALID_MASK", 0xFFFF000000000000, "gpa", "ref §4.3",
       "bits above MAX_PA (63:48 with GPAW 48): a GPA with any of them set is invalid"),
    # --- REPORTTYPE ---------------------------------------------------------------------------
    _c("TDX_REPORTTYPE_TYPE", 0x81, "report", "ref §4.3, §4.4", "REPORTTYPE.TYPE for TDX"),
    _c("TDX_REPORTTYPE_SUBTYPE", 0, "report", "ref §4.3", "REPORTTYPE.SUBTYPE"),
    _c("TDX_REPORTTYPE_VERSION_SERVTD_BOUND", 1, "report", "ref §4.3",
       "REPORTTYPE.VERSION on 1.5 when a service TD is bound (else 0)"),
    _c("TDX_ATTRIBUTES_SEPT_VE_DISABLE", 1 << 28, "report", "ref §4.3, §4.4",
       "TDINFO.ATTRIBUTES bit 28: a PENDING page gives an EPT-violation exit instead of #VE"),
    _c("TDX_TCB_VALID_1_0", 0x1FF, "report", "ref §4.4", "TEE_TCB_INFO.VALID without TEE_TCB_SVN2"),
    _c("TDX_TCB_VALID_1_5", 0x301FF, "report", "ref §4.4", "TEE_TCB_INFO.VALID with TEE_TCB_SVN2 (1.5)"),
    # TEE_TCB_SVN byte 1 names the module's major version: verifiers look the module identity up as
    # TDX_%02X of it (quote.md §5.5 step 4). Measured: 1.5 platforms carry 01 there, a 1.0 one 00
    # (quote.md §5.7 samples; ../testdata/dcap-tdreport-hw.bin, VALID 0x1FF).
    _c("TDX_TEE_TCB_SVN_MODULE_MAJOR_BYTE", 1, "report", "quote.md §5.5",
       "TEE_TCB_SVN byte holding the TDX module's major version"),
    _c("TDX_MODULE_MAJOR_1_0", 0, "report", "quote.md §5.7", "TEE_TCB_SVN[1] of a 1.0 module"),
    _c("TDX_MODULE_MAJOR_1_5", 1, "report", "quote.md §5.7", "TEE_TCB_SVN[1] of a 1.5 module"),
    # --- TDREPORT offsets (see also TDREPORT_FIELDS) -----------------------------------------
    _c("TDR_OFF_REPORTTYPE", 0, "offset", "ref §4.4", "REPORTTYPE"),
    _c("TDR_OFF_CPUSVN", 16, "offset", "ref §4.4", "CPUSVN"),
    _c("TDR_OFF_TEE_TCB_INFO_HASH", 32, "offset", "ref §4.4", "TEE_TCB_INFO_HASH"),
    _c("TDR_OFF_TEE_INFO_HASH", 80, "offset", "ref §4.4", "TEE_INFO_HASH"),
    _c("TDR_OFF_REPORTDATA", 128, "offset", "ref §4.4", "REPORTDATA"),
    _c("TDR_OFF_MAC", 224, "offset", "ref §4.4", "MAC"),
    _c("TDR_OFF_TEE_TCB_INFO", 256, "offset", "ref §4.4", "TEE_TCB_INFO"),
    _c("TDR_OFF_TCB_VALID", 256, "offset", "ref §4.4", "TEE_TCB_INFO.VALID"),
    _c("TDR_OFF_TEE_TCB_SVN", 264, "offset", "ref §4.4", "TEE_TCB_INFO.TEE_TCB_SVN"),
    _c("TDR_OFF_MRSEAM", 280, "offset", "ref §4.4", "TEE_TCB_INFO.MRSEAM"),
    _c("TDR_OFF_MRSIGNERSEAM", 328, "offset", "ref §4.4", "TEE_TCB_INFO.MRSIGNERSEAM"),
    _c("TDR_OFF_SEAM_ATTRIBUTES", 376, "offset", "ref §4.4", "TEE_TCB_INFO.ATTRIBUTES"),
    _c("TDR_OFF_TEE_TCB_SVN2", 384, "offset", "ref §4.4", "TEE_TCB_INFO.TEE_TCB_SVN2 (1.5)"),
    _c("TDR_OFF_TCB_RESERVED", 495, "offset", "ref §4.4", "17 reserved bytes covered by no hash and no MAC"),
    _c("TDR_OFF_TDINFO", 512, "offset", "ref §4.4", "TDINFO_STRUCT"),
    _c("TDR_OFF_ATTRIBUTES", 512, "offset", "ref §4.4", "TDINFO.ATTRIBUTES"),
    _c("TDR_OFF_XFAM", 520, "offset", "ref §4.4", "TDINFO.XFAM"),
    _c("TDR_OFF_MRTD", 528, "offset", "ref §4.4", "TDINFO.MRTD"),
    _c("TDR_OFF_MRCONFIGID", 576, "offset", "ref §4.4", "TDINFO.MRCONFIGID"),
    _c("TDR_OFF_MROWNER", 624, "offset", "ref §4.4", "TDINFO.MROWNER"),
    _c("TDR_OFF_MROWNERCONFIG", 672, "offset", "ref §4.4", "TDINFO.MROWNERCONFIG"),
    _c("TDR_OFF_RTMR0", 720, "offset", "ref §4.4", "TDINFO.RTMR0 (RTMRi at 720 + 48*i)"),
    _c("TDR_OFF_SERVTD_HASH", 912, "offset", "ref §4.4", "TDINFO.SERVTD_HASH (1.5)"),
    # --- x86-64 errno values ---------------------------------------------------------------
    _c("EPERM", 1, "errno", "ref §0", "errno"),
    _c("ENOENT", 2, "errno", "Linux asm-generic/errno-base.h", "errno: open() of a node the driver does not have"),
    _c("EINTR", 4, "errno", "ref §0", "errno"),
    _c("EIO", 5, "errno", "ref §0", "errno"),
    _c("ENXIO", 6, "errno", "ref §0", "errno"),
    _c("EBADF", 9, "errno", "Linux asm-generic/errno-base.h", "errno: fd not open"),
    _c("ENOMEM", 12, "errno", "ref §0", "errno"),
    _c("EACCES", 13, "errno", "Linux asm-generic/errno-base.h",
       "errno: opening a read-only (0444) sysfs measurement file for writing"),
    _c("EFAULT", 14, "errno", "ref §0", "errno"),
    _c("EEXIST", 17, "errno", "Linux asm-generic/errno-base.h", "errno: mkdir of a configfs item that exists"),
    _c("ENOTDIR", 20, "errno", "Linux asm-generic/errno-base.h", "errno: a configfs attribute used as a directory"),
    _c("EISDIR", 21, "errno", "Linux asm-generic/errno-base.h", "errno: a configfs directory opened as a file"),
    _c("EBUSY", 16, "errno", "ref §0", "errno"),
    _c("ENODEV", 19, "errno", "ref §0", "errno"),
    _c("EINVAL", 22, "errno", "ref §0", "errno"),
    _c("ENOTTY", 25, "errno", "ref §0", "errno"),
    _c("EMFILE", 24, "errno", "Linux asm-generic/errno-base.h",
       "errno: open() past the per-process descriptor limit (RLIMIT_NOFILE soft default 1024)"),
    _c("FD_LIMIT", 1024, "kernel", "Linux RLIMIT_NOFILE soft default",
       "descriptors per emulated process: fds 0..FD_LIMIT-1, so open() gives -EMFILE past it"),
    _c("ETXTBSY", 26, "errno", "quote.md §0", "errno: configfs fd used for both reading and writing"),
    _c("EFBIG", 27, "errno", "ref §0", "errno"),
    _c("ERANGE", 34, "errno", "quote.md §0", "errno"),
    _c("ENAMETOOLONG", 36, "errno", "Linux asm-generic/errno.h", "errno: a path component longer than NAME_MAX"),
    _c("ENOTEMPTY", 39, "errno", "Linux asm-generic/errno.h", "errno: rmdir of a configfs path ending in '..'"),
    _c("ETIMEDOUT", 110, "errno", "ref §0", "errno"),
    _c("EXDEV", 18, "errno", "Linux asm-generic/errno-base.h",
       "errno: FICLONE from a file of another file system (fs/remap_range.c vfs_clone_file_range)"),
    _c("EOPNOTSUPP", 95, "errno", "Linux asm-generic/errno.h",
       "errno: FIFREEZE / FS_IOC_FIEMAP on a file system without freeze_fs / fiemap (fs/ioctl.c)"),
    # --- ioctl numbers ---------------------------------------------------------------------
    _c("TDX_CMD_GET_TDREPORT", 0xC0085401, "ioctl", "ref §1, §2.2", "v4 (2022-04): _IOWR('T', 0x01, __u64)"),
    _c("TDX_CMD_GET_REPORT0", 0xC4405401, "ioctl", "ref §1, §2.4", "v6.2+: _IOWR('T', 1, struct tdx_report_req)"),
    _c("TDX_REPORT_REQ_LEN", 1088, "ioctl", "ref §2.4", "sizeof(struct tdx_report_req)"),
    _c("TDX_REPORT_REQ_OFF_REPORTDATA", 0, "ioctl", "ref §2.4", "tdx_report_req.reportdata"),
    _c("TDX_REPORT_REQ_OFF_TDREPORT", 64, "ioctl", "ref §2.4", "tdx_report_req.tdreport"),
    # Intel's out-of-tree tdx-guest driver (ref §1 table, quote.md §2.6; confirmed against
    # intel/td-partitioning include/uapi/linux/tdx-guest.h @074bb0ff and
    # drivers/virt/coco/tdx-guest/tdx-guest.c @1b3c1894)
    _c("TDX_CMD_VERIFY_REPORT", 0x81085402, "ioctl", "ref §1; quote.md §2.6",
       "Intel downstream: _IOR('T', 2, struct tdx_verify_report_req)"),
    _c("TDX_VERIFY_REPORT_REQ_LEN", 264, "ioctl", "ref §1",
       "sizeof(struct tdx_verify_report_req {u8 reportmac[256]; u64 err_code;})"),
    _c("TDX_VERIFY_REPORT_REQ_OFF_ERR_CODE", 256, "ioctl", "ref §1", "tdx_verify_report_req.err_code"),
    _c("TDX_CMD_EXTEND_RTMR", 0x80315403, "ioctl", "ref §1; quote.md §2.6",
       "Intel downstream: _IOR('T', 3, struct tdx_extend_rtmr_req); 'read' although the kernel reads"),
    _c("TDX_EXTEND_RTMR_REQ_LEN", 49, "ioctl", "ref §1",
       "sizeof(struct tdx_extend_rtmr_req {u8 data[48]; u8 index;}), no padding"),
    _c("TDX_EXTEND_RTMR_REQ_OFF_INDEX", 48, "ioctl", "ref §1", "tdx_extend_rtmr_req.index"),
    _c("TDX_DOWNSTREAM_MIN_RTMR", 2, "ioctl", "ref §2.5 CONFLICT; quote.md §2.6",
       "Intel downstream EXTEND_RTMR refuses index < 2 (BIOS and kernel RTMRs). The reference names "
       "-EPERM (libtdx_attest's driver) and -EINVAL (td-partitioning); we model td-partitioning "
       "tdx-guest.c @1b3c1894 tdx_extend_rtmr: -EINVAL"),
    # --- commands do_vfs_ioctl answers before any driver (ref §1 "Commands the VFS handles first";
    # torvalds/linux fs/ioctl.c @011da44b and @v6.16 do_vfs_ioctl; numbers: include/uapi/asm-generic/
    # ioctls.h (x86 uses the generic ones) and include/uapi/linux/fs.h). What each does on the device
    # node is in tdxmodel.profiles VFS_COMMANDS. FIONREAD (0x541B), FS_IOC_GETFLAGS/SETFLAGS/
    # FSGETXATTR/FSSETXATTR and FIBMAP/FS_IOC_RESVSP are NOT here: on a character device they reach
    # the driver (FIONREAD: !S_ISREG -> vfs_ioctl; the fileattr ones: the devtmpfs special inode has no
    # fileattr_get, -ENOIOCTLCMD -> vfs_ioctl; the file_ioctl ones: S_ISREG only).
    _c("FIONBIO", 0x5421, "vfs_ioctl", "fs/ioctl.c @011da44b ioctl_fionbio",
       "get_user(int) then set/clear O_NONBLOCK"),
    _c("FIONCLEX", 0x5450, "vfs_ioctl", "fs/ioctl.c @011da44b do_vfs_ioctl", "clear close-on-exec"),
    _c("FIOCLEX", 0x5451, "vfs_ioctl", "fs/ioctl.c @011da44b do_vfs_ioctl", "set close-on-exec"),
    _c("FIOASYNC", 0x5452, "vfs_ioctl", "fs/ioctl.c @011da44b ioctl_fioasync",
       "get_user(int); turning FASYNC on without f_op->fasync is -ENOTTY"),
    _c("FIOQSIZE", 0x5460, "vfs_ioctl", "fs/ioctl.c @011da44b do_vfs_ioctl",
       "dir/regular/symlink only: a character device gets -ENOTTY"),
    _c("FIGETBSZ", 0x2, "vfs_ioctl", "fs/ioctl.c @011da44b do_vfs_ioctl; include/uapi/linux/fs.h",
       "_IO(0x00, 2): put_user(int s_blocksize)"),
    _c("FIFREEZE", 0xC0045877, "vfs_ioctl", "fs/ioctl.c @011da44b ioctl_fsfreeze",
       "_IOWR('X', 119, int): CAP_SYS_ADMIN, then the superblock's freeze_fs"),
    _c("FITHAW", 0xC0045878, "vfs_ioctl", "fs/ioctl.c @011da44b ioctl_fsthaw",
       "_IOWR('X', 120, int): CAP_SYS_ADMIN, then thaw_super (-EINVAL if not frozen)"),
    _c("FS_IOC_FIEMAP", 0xC020660B, "vfs_ioctl", "fs/ioctl.c @011da44b ioctl_fiemap",
       "_IOWR('f', 11, struct fiemap, 32 B): -EOPNOTSUPP without i_op->fiemap, before any copy"),
    _c("FICLONE", 0x40049409, "vfs_ioctl", "fs/ioctl.c @011da44b ioctl_file_clone; fs/remap_range.c",
       "_IOW(0x94, 9, int): arg is the source fd"),
    _c("FICLONERANGE", 0x4020940D, "vfs_ioctl", "fs/ioctl.c @011da44b ioctl_file_clone_range",
       "_IOW(0x94, 13, struct file_clone_range, 32 B, src_fd first)"),
    _c("FIDEDUPERANGE", 0xC0189436, "vfs_ioctl", "fs/ioctl.c @011da44b ioctl_file_dedupe_range",
       "_IOWR(0x94, 54, struct file_dedupe_range, 24 B + 32 B per dest)"),
    _c("FS_IOC_GETFSUUID", 0x80111500, "vfs_ioctl", "fs/ioctl.c @v6.16 ioctl_getfsuuid (41bcbe59c3b3, 6.9)",
       "_IOR(0x15, 0, struct fsuuid2 {u8 len; u8 uuid[16];}): 6.9+"),
    _c("FS_IOC_GETFSSYSFSPATH", 0x80811501, "vfs_ioctl",
       "fs/ioctl.c @v6.16 ioctl_get_fs_sysfs_path (ae8c51175730, 6.10)",
       "_IOR(0x15, 1, struct fs_sysfs_path {u8 len; u8 name[128];}): 6.10+"),
    _c("FIOQSIZE_LEN", 8, "vfs_ioctl", "fs/ioctl.c do_vfs_ioctl", "FIOQSIZE writes a loff_t"),
    _c("FILE_CLONE_RANGE_LEN", 32, "vfs_ioctl", "include/uapi/linux/fs.h", "sizeof(struct file_clone_range)"),
    _c("FILE_DEDUPE_RANGE_LEN", 24, "vfs_ioctl", "include/uapi/linux/fs.h",
       "sizeof(struct file_dedupe_range) without its info[]"),
    _c("FILE_DEDUPE_RANGE_OFF_COUNT", 16, "vfs_ioctl", "include/uapi/linux/fs.h",
       "file_dedupe_range.dest_count (u16), read first with get_user"),
    _c("FILE_DEDUPE_RANGE_INFO_LEN", 32, "vfs_ioctl", "include/uapi/linux/fs.h",
       "sizeof(struct file_dedupe_range_info)"),
    _c("FSUUID2_LEN", 17, "vfs_ioctl", "include/uapi/linux/fs.h", "sizeof(struct fsuuid2)"),
    _c("DEVTMPFS_UUID_LEN", 16, "vfs_ioctl", "mm/shmem.c shmem_fill_super (super_set_uuid, 6.9+)",
       "tmpfs (so devtmpfs) has a 16-byte random uuid per mount; the model derives it from the seed"),
    # The ioctl quote paths (ref §1 table, quote.md §2.6). Intel downstream: confirmed against
    # intel/td-partitioning include/uapi/linux/tdx-guest.h @074bb0ff (struct tdx_quote_req {__u64 buf;
    # __u64 len;}) and drivers/virt/coco/tdx-guest/tdx-guest.c @1b3c1894 (tdx_get_quote).
    _c("TDX_CMD_GET_QUOTE", 0x80105404, "ioctl", "ref §1; quote.md §2.6",
       "Intel downstream: _IOR('T', 4, struct tdx_quote_req); the buffer holds the 24-B header and the payload"),
    _c("TDX_QUOTE_REQ_LEN", 16, "ioctl", "ref §1", "sizeof(struct tdx_quote_req {u64 buf; u64 len;})"),
    _c("TDX_QUOTE_REQ_OFF_BUF", 0, "ioctl", "ref §1", "tdx_quote_req.buf: user pointer to the quote buffer"),
    _c("TDX_QUOTE_REQ_OFF_LEN", 8, "ioctl", "ref §1", "tdx_quote_req.len: bytes copied in and back"),
    _c("TDX_DOWNSTREAM_NOTIFY_VECTOR", 0x40, "ioctl", "quote.md §2.6",
       "the vector the downstream kernel registers with SetupEventNotifyInterrupt at arch init. Linux "
       "allocates it dynamically from x86_vector_domain (td-partitioning arch/x86/coco/tdx/tdx.c "
       "@01e17622 tdx_arch_init); the model registers 0x40 (a choice)"),
    # v4 3/3 "x86/tdx: Add Quote generation support" as posted 22 Apr 2022 (ref §2.2, [2]; LKML
    # <20220422233418.1203092-4-sathyanarayanan.kuppuswamy@linux.intel.com>): arch/x86/include/uapi/asm/tdx.h
    _c("TDX_CMD_GEN_QUOTE", 0x80085402, "ioctl", "ref §1, §2.2",
       "v4 (2022-04): _IOR('T', 0x02, __u64), arg -> struct tdx_quote_req {u64 buf; u64 len; u32 timeout}"),
    _c("TDX_GEN_QUOTE_REQ_LEN", 24, "ioctl", "ref §2.2",
       "sizeof(struct tdx_quote_req) of v4: 8 + 8 + 4, padded to 24 (copy_from_user copies all 24)"),
    _c("TDX_GEN_QUOTE_REQ_OFF_TIMEOUT", 16, "ioctl", "ref §2.2", "v4 tdx_quote_req.timeout: u32 milliseconds"),
    _c("TDX_V4_EVENT_NOTIFY_VECTOR", 0xEC, "ioctl", "ref §2.2",
       "TDX_GUEST_EVENT_NOTIFY_VECTOR, the system vector v3/v4 2/3 reserve in irq_vectors.h (0xec, "
       "LOCAL_TIMER_VECTOR moved to 0xeb; the v3 posting of 15 Apr 2022 and the v6 posting show 0xec)"),
    _c("IOC_NRSHIFT", 0, "ioctl", "ref §1", "ioctl number bits 7:0"),
    _c("IOC_TYPESHIFT", 8, "ioctl", "ref §1", "ioctl type bits 15:8"),
    _c("IOC_SIZESHIFT", 16, "ioctl", "ref §1", "ioctl size bits 29:16"),
    _c("IOC_DIRSHIFT", 30, "ioctl", "ref §1", "ioctl direction bits 31:30"),
    _c("IOC_SIZEMASK", 0x3FFF, "ioctl", "ref §1", "14-bit size field"),
    _c("IOC_WRITE", 1, "ioctl", "ref §1", "direction: user -> kernel"),
    _c("IOC_READ", 2, "ioctl", "ref §1", "direction: kernel -> user"),
    # --- kernel model -------------------------------------------------------------------------
    # --- TDG.VP.VMCALL (TDCALL leaf 0): sub-functions in R11 (quote.md §3.1, ref §5.1) --------
    _c("TDVMCALL_GET_TD_VM_CALL_INFO", 0x10000, "tdvmcall", "quote.md §3.1", "GetTdVmCallInfo: R12 = leaf 0 or 1"),
    _c("TDVMCALL_MAP_GPA", 0x10001, "tdvmcall", "quote.md §3.1", "MapGPA (not modelled: SUBFUNC_UNSUPPORTED)"),
    _c("TDVMCALL_GET_QUOTE", 0x10002, "tdvmcall", "quote.md §3.1, ref §5.1", "GetQuote: R12 = shared GPA, R13 = size"),
    _c("TDVMCALL_REPORT_FATAL_ERROR", 0x10003, "tdvmcall", "quote.md §3.1", "ReportFatalError (not modelled)"),
    _c("TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT", 0x10004, "tdvmcall", "quote.md §3.1, §3.3",
       "SetupEventNotifyInterrupt: R12 = vector 32..255"),
    _c("TDVMCALL_INFO_SETUP_EVENT_NOTIFY", 1 << 1, "tdvmcall", "quote.md §3.1",
       "GetTdVmCallInfo leaf 1, R11 bit 1: SetupEventNotifyInterrupt supported (bit 0, GetQuote, is reserved)"),
    # --- TDVMCALL completion status in R10 (quote.md §3.1) ---------------------------------
    _c("TDVMCALL_STATUS_SUCCESS", 0x0, "tdvmcall_status", "quote.md §3.1", "R10 SUCCESS"),
    _c("TDVMCALL_STATUS_RETRY", 0x1, "tdvmcall_status", "quote.md §3.1", "R10 RETRY (QEMU: 16 requests in flight)"),
    _c("TDVMCALL_STATUS_INVALID_OPERAND", 0x8000000000000000, "tdvmcall_status", "quote.md §3.1", "R10 INVALID_OPERAND"),
    _c("TDVMCALL_STATUS_GPA_INUSE", 0x8000000000000001, "tdvmcall_status", "quote.md §3.1", "R10 GPA_INUSE (MapGPA only)"),
    _c("TDVMCALL_STATUS_ALIGN_ERROR", 0x8000000000000002, "tdvmcall_status", "quote.md §3.1", "R10 ALIGN_ERROR"),
    _c("TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED", 0x8000000000000003, "tdvmcall_status", "quote.md §3.1",
       "R10 SUBFUNC_UNSUPPORTED: KVM's answer to a TDVMCALL nobody handles"),
    # --- GetQuote shared buffer (quote.md §2.2, §3.2; ref §5.2) -----------------------------
    _c("GET_QUOTE_CMD_VER", 1, "quote_buf", "quote.md §2.2", "header version"),
    _c("QUOTE_HDR_OFF_VERSION", 0, "quote_buf", "quote.md §3.2", "u64 version"),
    _c("QUOTE_HDR_OFF_STATUS", 8, "quote_buf", "quote.md §3.2", "u64 status"),
    _c("QUOTE_HDR_OFF_IN_LEN", 16, "quote_buf", "quote.md §3.2", "u32 in_len"),
    _c("QUOTE_HDR_OFF_OUT_LEN", 20, "quote_buf", "quote.md §3.2", "u32 out_len"),
    _c("QUOTE_HDR_LEN", 24, "quote_buf", "quote.md §3.2", "data starts at 24"),
    _c("GET_QUOTE_SUCCESS", 0, "quote_status", "quote.md §3.2 (Table 3-11)", "buffer status SUCCESS"),
    _c("GET_QUOTE_IN_FLIGHT", 0xFFFFFFFFFFFFFFFF, "quote_status", "quote.md §3.2", "buffer status IN_FLIGHT: the VMM owns the buffer"),
    _c("GET_QUOTE_ERROR", 0x8000000000000000, "quote_status", "quote.md §3.2", "buffer status ERROR"),
    _c("GET_QUOTE_SERVICE_UNAVAILABLE", 0x8000000000000001, "quote_status", "quote.md §3.2",
       "buffer status SERVICE_UNAVAILABLE (QEMU: QGS_UNAVAILABLE)"),
    # --- host (QEMU) limits (quote.md §4.1) -------------------------------------------------
    _c("HOST_GET_QUOTE_MAX_BUF_LEN", 128 * 1024, "host", "quote.md §4.1 H4", "QEMU TDX_GET_QUOTE_MAX_BUF_LEN"),
    _c("HOST_MAX_GET_QUOTE_REQUESTS", 16, "host", "quote.md §4.1 H6", "QEMU TDX_MAX_GET_QUOTE_REQUEST"),
    _c("HOST_QGS_TIMEOUT_MS", 30000, "host", "quote.md §4.1", "QEMU TRANSACTION_TIMEOUT on the virtual clock: expiry gives ERROR"),
    _c("HOST_QUOTE_OVERHEAD", 52, "host", "quote.md §4.1 (Analysis)",
       "24-B buffer header + 4-B frame length + 24-B QGS response header: the quote is at most size - 52"),
    _c("HOST_SERVICE_TIME_US", 4676, "host", "quote.md §2.5",
       "default quote service time: the 0.004676 s measured inside wait_for_quote_completion (choice)"),
    _c("EVENT_NOTIFY_VECTOR_MIN", 32, "host", "quote.md §3.1, §3.3", "lowest valid notify vector"),
    _c("EVENT_NOTIFY_VECTOR_MAX", 255, "host", "quote.md §3.1, §3.3", "highest valid notify vector"),
    # --- the QGS wire protocol (quote.md §4.2): what a pass-through VMM hands QGS unchanged ---------
    _c("QGS_FRAME_LEN_SIZE", 4, "qgs", "quote.md §4.2", "a frame: 4-byte big-endian length of the message that follows"),
    _c("QGS_MSG_HDR_LEN", 16, "qgs", "quote.md §4.2",
       "qgs_msg_header_t: u16 major, u16 minor, u32 type, u32 size (whole message), u32 error_code"),
    _c("QGS_MSG_LIB_MAJOR_VER", 1, "qgs", "quote.md §4.2", "QGS_MSG_LIB_MAJOR_VER (the library checks the major only)"),
    _c("QGS_MSG_LIB_MINOR_VER", 1, "qgs", "quote.md §4.2", "QGS_MSG_LIB_MINOR_VER"),
    _c("QGS_MSG_GET_QUOTE_REQ", 0, "qgs", "quote.md §4.2", "message type GET_QUOTE_REQ"),
    _c("QGS_MSG_GET_QUOTE_RESP", 1, "qgs", "quote.md §4.2", "message type GET_QUOTE_RESP"),
    _c("QGS_GET_QUOTE_REQ_LEN", 24, "qgs", "quote.md §4.2",
       "qgs_msg_get_quote_req_t: header + u32 report_size + u32 id_list_size, then the report and the ids"),
    _c("QGS_GET_QUOTE_RESP_LEN", 24, "qgs", "quote.md §4.2",
       "qgs_msg_get_quote_resp_t: header + u32 selected_id_size + u32 quote_size, then the id and the quote"),
    # --- host fault menu: index of each name in HOST_FAULTS (a contract, also in campaign JSON) --
    _c("HOST_FAULT_NONE", 0, "host_fault", "quote.md §4.1", "QEMU's behaviour"),
    _c("HOST_FAULT_SERVICE_TIME", 1, "host_fault", "quote.md §4.1", "the quote takes `seconds`"),
    _c("HOST_FAULT_NEVER", 2, "host_fault", "quote.md §2.4", "never completes (no transaction timer either)"),
    _c("HOST_FAULT_ERROR", 3, "host_fault", "quote.md §4.1", "completes with status ERROR"),
    _c("HOST_FAULT_SERVICE_UNAVAILABLE", 4, "host_fault", "quote.md §4.1 H5", "no quote service: status SERVICE_UNAVAILABLE, R10 SUCCESS"),
    _c("HOST_FAULT_RETRY", 5, "host_fault", "quote.md §4.1 H6", "R10 RETRY"),
    _c("HOST_FAULT_OVERSIZE_OUT_LEN", 6, "host_fault", "quote.md §2.3 P9", "SUCCESS with out_len beyond the buffer"),
    _c("HOST_FAULT_OUT_LEN_CHANGES", 7, "host_fault", "quote.md §2.3 P9", "out_len rewritten after the guest's first read of it"),
    _c("HOST_FAULT_NO_IN_FLIGHT", 8, "host_fault", "quote.md §2.3 notes", "status not set to IN_FLIGHT before the call returns"),
    _c("HOST_FAULT_NO_INTERRUPT", 9, "host_fault", "quote.md §3.3", "completion without the notify vector"),
    _c("SLAB_POISON_INUSE", 0x5A, "kernel", "Linux include/linux/poison.h (POISON_INUSE)",
       "byte an unzeroed kmalloc object holds, so disclosure of uninitialised memory is visible"),
    _c("MEASUREMENT_LEN", 48, "kernel", "ref §2.5", "every 6.16 measurement file is 48 bytes"),
    # tsm_mr_create_attribute_group's two kzallocs (ref §2.5 "Init order" 1.3; tsm-mr.c @2fbe8203).
    # (Analysis) x86-64, no lock debugging, the 8 registers of ref §2.5: the attribute array is
    # 8 * (8 + 1) pointers + the "name:sha384" strings of the 5 hashed registers (12 + 4 * 13 = 64);
    # the context is 104 B (rwsem 40, attribute_group 48, tm 8, in_sync 8) + 8 bin_attributes of 88 B.
    _c("TSM_MR_ATTRS_SIZE", 136, "kernel", "ref §2.5; tsm-mr.c @2fbe8203 (Analysis)",
       "kzalloc of the bin_attribute pointer array and the names (kmalloc-192)"),
    _c("TSM_MR_CTX_SIZE", 808, "kernel", "ref §2.5; tsm-mr.c @2fbe8203 (Analysis)",
       "kzalloc of struct tm_context with its mrs[] (kmalloc-1024)"),
    _c("KMALLOC_8K", 8192, "kernel", "ref §2.5 'Write' #1; Linux mm/slab_common.c kmalloc caches",
       "the cache of kernfs' kmalloc(4096 + 1): failslab sees an 8 KiB object; the model's slab classes "
       "end at 4096, so an order-1 page allocation stands in for it"),
    _c("QUOTE_ENTRY_SIZE", 80, "kernel", "quote.md §2.6",
       "kmalloc(sizeof(struct quote_entry)) of the downstream driver: bool, buf, buf_len, handle, a "
       "struct completion (32) and a list_head (16) on x86-64 (a choice; only its slab class shows)"),

    # --- configfs-tsm and the TDX quote provider (quote.md §1-§2) ---------------------------------
    _c("TSM_INBLOB_MAX", 64, "tsm", "quote.md §1.1", "cb_max_size of inblob: a write past it is -EFBIG"),
    _c("TSM_NAME_MAX", 255, "tsm", "Linux NAME_MAX", "longest configfs item name"),
    # st_size of configfs attributes: not in the reference, picked from fs/configfs/inode.c
    # (configfs_init_file: PAGE_SIZE, configfs_init_bin_file: 0); what `serve` answers to stat
    _c("TSM_TEXT_ATTR_SIZE", 4096, "tsm", "fs/configfs/inode.c (picked, not in the reference)",
       "st_size of generation and provider"),
    _c("TSM_BIN_ATTR_SIZE", 0, "tsm", "fs/configfs/inode.c (picked, not in the reference)",
       "st_size of inblob and outblob"),
    _c("GETQUOTE_TIMEOUT", 30, "tsm", "quote.md §2.2, §2.4", "getquote_timeout: at most 30 polls"),
    _c("GETQUOTE_POLL_MS", 1000, "tsm", "quote.md §2.4", "each poll sleeps 1000 ms interruptibly"),
    # --- how the provider waits for the host (quote.md §2.4-§2.6, §3.3): a kernel option --------
    _c("QUOTE_WAIT_STOCK", 0, "tsm_wait", "quote.md §2.4", "the stock loop: 30 msleep_interruptible(1000) polls"),
    _c("QUOTE_WAIT_POLL", 1, "tsm_wait", "quote.md §2.5",
       "the proposed read_poll_timeout() variant: interval and cap, one more check after the cap"),
    _c("QUOTE_WAIT_INTERRUPT", 2, "tsm_wait", "quote.md §2.6, §3.3",
       "completion by the SetupEventNotifyInterrupt vector (downstream driver): no timeout"),
    _c("QUOTE_SLEEP_MSLEEP", 0, "tsm_wait", "quote.md §2.5",
       "the poll sleeps msleep(interval): the Feb 2026 patch as measured (jiffy-rounded)"),
    _c("QUOTE_SLEEP_USLEEP_RANGE", 1, "tsm_wait", "Linux include/linux/iopoll.h",
       "the poll sleeps usleep_range(interval/4 + 1, interval) as read_poll_timeout() does; the model "
       "wakes at the upper bound (the hrtimer's hard expiry with no other timer to coalesce with)"),
    _c("QUOTE_POLL_PROPOSED_MS", 5, "tsm_wait", "quote.md §2.5", "the proposed poll interval (Jun Miao, Feb 2026)"),
    _c("QUOTE_POLL_CAP_MS", 2000, "tsm_wait", "quote.md §2.5", "the maintainer's maximum wait (10 Mar 2026)"),
    _c("QUOTE_NOTIFY_VECTOR", 0x22, "tsm_wait", "quote.md §2.6, §3.1",
       "the vector the guest registers (x86_vector_domain picks one at boot; any of 32..255: choice)"),
    _c("KERNEL_HZ_MAX", 1000, "tsm_wait", "Linux kernel/Kconfig.hz",
       "largest CONFIG_HZ the jiffy model takes (100, 250, 300, 1000; 0: exact sleeps)"),
    _c("TIMER_LVL_CLK_SHIFT", 3, "tsm_wait", "Linux kernel/time/timer.c",
       "timer wheel: each level's granularity is 8x the previous one's"),
    _c("TIMER_LVL_BITS", 6, "tsm_wait", "Linux kernel/time/timer.c", "timer wheel: 64 buckets a level"),
    _c("TIMER_LVL_DEPTH", 9, "tsm_wait", "Linux kernel/time/timer.c", "timer wheel levels (HZ > 100)"),
    _c("KERNEL_FIRST_PAGE", 16, "kernel", "docs/CONTRACT.md \"Kernel\" (design choice)",
       "the kernel allocator owns guest pages KERNEL_FIRST_PAGE..: 0..3 the host's, 4..15 free for tests"),
]

#: kmalloc size classes (design choice after Linux's kmalloc caches: powers of two 8..4096 plus 96
#: and 192), so power-of-two objects are naturally aligned (ref §2.4 "Alignment").
SLAB_CLASSES: Tuple[int, ...] = (8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096)

#: name -> value, and the names as module attributes (``abi.TDX_SUCCESS``).
VALUES: Dict[str, int] = {c.name: c.value for c in CONSTANTS}
globals().update(VALUES)

#: TDREPORT fields: (name, offset, size, ref). Reserved runs are named ``reserved_<offset>``.
TDREPORT_FIELDS: List[Tuple[str, int, int, str]] = [
    ("report_type", 0, 4, "ref §4.4"),
    ("reserved_4", 4, 12, "ref §4.4"),
    ("cpusvn", 16, 16, "ref §4.4"),
    ("tee_tcb_info_hash", 32, 48, "ref §4.4, §4.5"),
    ("tee_info_hash", 80, 48, "ref §4.4, §4.5"),
    ("reportdata", 128, 64, "ref §4.4"),
    ("reserved_192", 192, 32, "ref §4.4"),
    ("mac", 224, 32, "ref §4.4, §4.5"),
    ("tcb_valid", 256, 8, "ref §4.4"),
    ("tee_tcb_svn", 264, 16, "ref §4.4"),
    ("mrseam", 280, 48, "ref §4.4"),
    ("mrsignerseam", 328, 48, "ref §4.4"),
    ("seam_attributes", 376, 8, "ref §4.4"),
    ("tee_tcb_svn2", 384, 16, "ref §4.4"),
    ("reserved_400", 400, 95, "ref §4.4"),
    ("reserved_495", 495, 17, "ref §4.4"),
    ("attributes", 512, 8, "ref §4.4"),
    ("xfam", 520, 8, "ref §4.4"),
    ("mrtd", 528, 48, "ref §4.4"),
    ("mrconfigid", 576, 48, "ref §4.4"),
    ("mrowner", 624, 48, "ref §4.4"),
    ("mrownerconfig", 672, 48, "ref §4.4"),
    ("rtmr0", 720, 48, "ref §4.4"),
    ("rtmr1", 768, 48, "ref §4.4"),
    ("rtmr2", 816, 48, "ref §4.4"),
    ("rtmr3", 864, 48, "ref §4.4"),
    ("servtd_hash", 912, 48, "ref §4.4"),
    ("reserved_960", 960, 64, "ref §4.4"),
]

#: The host fault menu (quote.md §4.1): names are a contract (campaign JSON, Host API); each name's
#: number is HOST_FAULT_<NAME> (0, HOST_FAULT_NONE, is QEMU's own behaviour: no fault).
HOST_FAULTS: Tuple[str, ...] = ("service_time", "never", "error", "service_unavailable", "retry",
                                "oversize_out_len", "out_len_changes", "no_in_flight", "no_interrupt")
assert all(VALUES["HOST_FAULT_" + n.upper()] == i + 1 for i, n in enumerate(HOST_FAULTS))


def __getattr__(name: str):
    """``DRIVERS``, ``DEVICE_PATHS``, ``MEASUREMENTS``, ``MEASUREMENT_DIRS``: views of the generation
    profiles (``tdxmodel.profiles``), which are the one place a generation is described."""
    from tdxmodel import profiles as _p
    if name == "DRIVERS":
        return _p.NAMES
    if name == "DEVICE_PATHS":
        return {q.name: q.device_path for q in _p.PROFILES}
    if name == "MEASUREMENT_DIRS":
        return next(q.measurement_dirs for q in _p.PROFILES if q.measurement_dirs)
    if name == "MEASUREMENTS":
        return {m.name: (m.tdr_offset, m.writable) for m in next(q.measurements for q in _p.PROFILES
                                                                  if q.measurements)}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: (major, minor) that stat answers for the device node where a transport emulates the node itself
#: (the LD_PRELOAD library). Every generation registers a misc character device with a dynamic minor
#: (ref §1): major 10 is Linux's MISC_MAJOR (include/uapi/linux/major.h). The dynamic minor is
#: whatever misc_register handed out at boot, so no value is "right": we pick 122, one from the range
#: 6.x kernels hand out downwards from 127, and clients must not rely on it.
DEVICE_RDEV: Tuple[int, int] = (10, 122)

#: Fault-injection capabilities and the kernel defaults of their knobs (ref §7).
FAULT_CAPABILITIES: Tuple[str, ...] = ("failslab", "fail_page_alloc", "fail_usercopy")
FAULT_DEFAULTS: Dict[str, int] = {
    "probability": 0,   # percent; 0: nothing fails
    "interval": 1,
    "times": 1,         # -1: unlimited
    "space": 0,
    "verbose": 2,
}
#: ignore-gfp-wait defaults to Y for failslab and fail_page_alloc (ref §7: all this driver's
#: allocations sleep, so they are never failed until it is set to N); fail_page_alloc min-order 1.
FAULT_IGNORE_GFP_WAIT_DEFAULT: Dict[str, bool] = {"failslab": True, "fail_page_alloc": True}
FAULT_PAGE_MIN_ORDER_DEFAULT = 1


def ioc(direction: int, type_: int, nr: int, size: int) -> int:
    """_IOC(dir, type, nr, size) as ref §1 lays the bits out."""
    if not 0 <= size <= VALUES["IOC_SIZEMASK"]:
        raise ValueError(f"ioctl size {size} does not fit in 14 bits")
    return ((direction << VALUES["IOC_DIRSHIFT"]) | (size << VALUES["IOC_SIZESHIFT"])
            | (type_ << VALUES["IOC_TYPESHIFT"]) | (nr << VALUES["IOC_NRSHIFT"]))


def ioc_size(cmd: int) -> int:
    """The 14-bit size encoded in an ioctl number (ref §1): nothing checks it against the buffer."""
    return (cmd >> VALUES["IOC_SIZESHIFT"]) & VALUES["IOC_SIZEMASK"]


def ioc_dir(cmd: int) -> int:
    return (cmd >> VALUES["IOC_DIRSHIFT"]) & 3


def status_class(status: int) -> int:
    """Bits 63:32 of a TDX status: what Linux compares after ``status >> 32`` (ref §2.4)."""
    return (status >> 32) & 0xFFFFFFFF


def status_operand(status: int) -> int:
    """Bits 31:0 of a TDX status: the operand id for OPERAND_INVALID / OPERAND_BUSY (ref §4.1)."""
    return status & 0xFFFFFFFF
