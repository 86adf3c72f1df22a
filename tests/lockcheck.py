"""LockCheckedKernel: a kernel proxy that checks mr_lock right after every 6.16 error return, so an
error path that leaks the lock fails at once instead of hanging the next call that waits for it."""

from __future__ import annotations

from tdxmodel import profiles


class LockCheckedKernel:
    """A Kernel whose processes check, right after every 6.16 call that returns an error, that
    mr_lock is free (unless the test holds it from outside with mr_lock_try): an error path that
    leaks the lock fails there, instead of hanging the next call that waits for it. Only while one
    thread uses the kernel: another thread's call may hold the lock legitimately. A proxy, so only
    for tests that call the Process API themselves (tests/test_driver_v616.py), not for code that
    needs the backend's own Kernel type."""

    def __init__(self, kernel):
        self._k = kernel
        self.outside_holds = 0
        self.threads = set()

    def __getattr__(self, name):
        return getattr(self._k, name)

    def mr_lock_try(self):
        got = self._k.mr_lock_try()
        self.outside_holds += bool(got)
        return got

    def mr_lock_release(self):
        self._k.mr_lock_release()
        self.outside_holds -= 1

    def process(self):
        return _LockCheckedProcess(self, self._k.process())

    def after_call(self, what, ret):
        import threading
        self.threads.add(threading.get_ident())
        if ret < 0 and "mr_lock" in profiles.BY_NAME[self._k.driver].locks and len(self.threads) == 1:
            held = self._k.counters()["locks_held"]
            assert held == self.outside_holds, f"{what} returned {ret} with mr_lock still held"


class _LockCheckedProcess:
    def __init__(self, kernel, process):
        self._kernel = kernel
        self._p = process

    def __getattr__(self, name):
        return getattr(self._p, name)

    def __setattr__(self, name, value):
        if name in ("_kernel", "_p"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._p, name, value)

    def _checked(self, name, *args):
        ret = getattr(self._p, name)(*args)
        self._kernel.after_call(name, ret)
        return ret

    def ioctl(self, fd, cmd, arg):
        return self._checked("ioctl", fd, cmd, arg)

    def pread(self, fd, addr, count, offset):
        return self._checked("pread", fd, addr, count, offset)

    def pwrite(self, fd, addr, count, offset):
        return self._checked("pwrite", fd, addr, count, offset)
