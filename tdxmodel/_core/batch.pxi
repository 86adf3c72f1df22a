# The driver-path batch over csrc/tdx_batch.c. Included from _ext.pyx after kernel.pxi.
# Not part of PUBLIC_API: tdxmodel.client.ioctl_batch uses it when the process is a core one.

from tdxmodel._core.tdx_abi cimport TDXM_EFAULT
from tdxmodel._core.tdx_batch cimport tdb_request, tdb_ioctl_batch


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
