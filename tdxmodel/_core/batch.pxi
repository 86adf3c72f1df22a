# The driver-path batch over csrc/tdx_batch.c. Included from _ext.pyx after kernel.pxi.
# Not part of PUBLIC_API: tdxmodel.client.ioctl_batch and TdxGuest.get_quote use them when the process
# is a core one.

from tdxmodel._core.tdx_abi cimport TDXM_EFAULT
from libc.string cimport memcpy, memset
from tdxmodel._core.tdx_batch cimport *


def _ioctl_batch(process, int fd, cmd, arg, reportdata_off, tdreport_off, reportdata, fail_nth):
    """_ioctl_batch(process: Process, fd: int, cmd: int, arg: int, reportdata_off: int, tdreport_off: int, reportdata: uint8[N, 64], fail_nth: uint32[N] | None) -> (int64[N], uint8[N, 1024])

    One GET_REPORT ioctl per row of ``reportdata`` on ``process`` with the GIL released for the whole
    loop: the row's REPORTDATA is written at ``arg + reportdata_off``, ``fail_nth[i] > 0`` arms
    fail-nth for that row's call only (ref §7), and on success the TDREPORT is read back from
    ``arg + tdreport_off``. Rows that fail keep zeros. Raises the TD exit a row's ioctl ended in.
    """
    if not isinstance(process, Process):
        raise TypeError(f"process must be a core Process, not {type(process).__name__}")
    cdef td_process *p = (<Process>process)._live()
    cdef tdb_request req
    req.cmd = _int_arg("cmd", cmd, 0, 0xFFFFFFFF)
    req.arg = _u64_arg("arg", arg)
    req.reportdata_off = _int_arg("reportdata_off", reportdata_off, 0, 0xFFFF)
    req.tdreport_off = _int_arg("tdreport_off", tdreport_off, 0, 0xFFFF)
    if not isinstance(reportdata, _np.ndarray) or reportdata.dtype != _np.uint8 or reportdata.ndim != 2 \
            or reportdata.shape[1] != _abi.TDX_REPORTDATA_LEN or not reportdata.flags.c_contiguous:
        raise ValueError("reportdata must be a C-contiguous uint8 array of shape (N, 64)")
    cdef size_t n = reportdata.shape[0]
    schedule = None
    if fail_nth is not None:
        schedule = _np.ascontiguousarray(fail_nth, dtype=_np.uint32)
        if schedule.shape != (n,):
            raise ValueError(f"fail_nth must have shape ({n},)")
    rets = _np.zeros(n, dtype=_np.int64)
    reports = _np.zeros((n, _abi.TDX_REPORT_LEN), dtype=_np.uint8)
    if n == 0:
        return rets, reports
    cdef const uint8_t[:, ::1] rd_view = reportdata
    cdef int64_t[::1] ret_view = rets
    cdef uint8_t[:, ::1] out_view = reports
    cdef const uint32_t[::1] nth_view
    cdef const uint32_t *nth = NULL
    if schedule is not None:
        nth_view = schedule
        nth = &nth_view[0]
    cdef long done
    with nogil:
        done = tdb_ioctl_batch(p, fd, &req, &rd_view[0, 0], n, nth, <long *>&ret_view[0], &out_view[0, 0])
    if done == -TDXM_EFAULT:
        raise ValueError(f"the request buffer at 0x{arg:x} is not mapped in the process")
    if <size_t>done < n:
        if rets[done] == TD_RET_TD_EXIT:
            (<Process>process)._exit()
        raise ValueError(f"the request buffer at 0x{arg:x} was unmapped during the batch (row {done})")
    return rets, reports


_TSM_STEPS = {TDB_STEP_MKDIR: "mkdir", TDB_STEP_OPEN_IN: "open_in", TDB_STEP_WRITE: "write",
              TDB_STEP_OPEN_OUT: "open_out", TDB_STEP_READ: "read"}


def _tsm_quote(Process process, bytes dir, bytes inblob, bytes outblob, uint64_t addr, bytes reportdata,
               size_t chunk):
    """_tsm_quote(process, dir, inblob, outblob: bytes paths, addr: int, reportdata: bytes (<= 64, zero-padded), chunk: int) -> bytes | (str, int)

    ``TdxGuest.get_quote``'s configfs-tsm sequence (mkdir, open, poke, write, close, open, read and peek
    to EOF, close: csrc/tdx_batch.h) as one call with the GIL released once: the quote, or (the step
    that failed: "mkdir", "open_in", "write", "open_out", "read"; its result) for the caller's message.
    A TD exit or the provider oops raises as ``read``/``write`` do; the user buffer unmapped raises
    ValueError as ``poke``/``peek`` do."""
    cdef td_process *p = process._live()
    cdef const char *c_dir = dir
    cdef const char *c_in = inblob
    cdef const char *c_out = outblob
    cdef uint8_t rd[64]
    cdef uint8_t *buf = NULL
    cdef size_t cap = 0
    cdef int step = TDB_STEP_NONE
    cdef long ret
    cdef Py_ssize_t n = len(reportdata)
    if n > 64:
        raise ValueError(f"reportdata is {n} bytes; at most 64")
    memset(rd, 0, 64)
    memcpy(rd, <const char *>reportdata, n)
    try:
        with nogil:
            ret = tdb_tsm_quote(p, c_dir, c_in, c_out, addr, rd, chunk, &buf, &cap, &step)
        if step == TDB_STEP_NONE:
            return PyBytes_FromStringAndSize(<char *>buf, ret)
        if step == TDB_STEP_POKE:
            raise ValueError(f"addr: [0x{addr:x}, +{_abi.TDX_REPORTDATA_LEN}) is not wholly mapped")
        if step == TDB_STEP_PEEK:
            raise ValueError(f"addr: [0x{addr:x}, +{ret}) is not wholly mapped")
        if step == TDB_STEP_NOMEM:
            raise MemoryError()
        if step == TDB_STEP_READ or step == TDB_STEP_WRITE:
            process._check_ret(ret)  # a TD exit, or the <= 6.15 provider oops
        return _TSM_STEPS[step], ret
    finally:
        free(buf)
