"""Serve the emulated device to unmodified programs (layer 4): ``tdxmodel serve``.

* ``protocol``: the Unix-socket wire format shared with the LD_PRELOAD library;
* ``device``: the handler that runs every request on the emulated kernel (one emulated Process per
  open file, fault-injection and measurement control files, state-directory sync);
* ``daemon``: the FUSE mount, binds, the socket, signals and recovery;
* ``_server``: the compiled transports (csrc/transport/: FUSE, the socket server), an extension of
  their own: the only one that links libfuse3, and one that needs no C core (the core lends its
  nogil ioctl path through ``tdxmodel._core._ext.DevicePath.fastpath()``).
"""
