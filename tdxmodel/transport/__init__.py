"""Serve the emulated device to unmodified programs (layer 4): ``tdxmodel serve``.

* ``protocol``: the Unix-socket wire format shared with the LD_PRELOAD library;
* ``device``: the handler that runs every request on the emulated kernel (one emulated Process per
  open file, fault-injection and measurement control files, state-directory sync);
* ``daemon``: the FUSE mount, binds, the socket, signals and recovery.
"""
