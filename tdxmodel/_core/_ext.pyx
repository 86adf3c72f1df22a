# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The Cython core: one extension module made of the .pxi files below (uvloop's layout).

Each .pxi owns one C object type; the .pxd files beside them declare the C world.
"""

BACKEND_NAME = "core"

include "module.pxi"
include "tdqe.pxi"
include "host.pxi"
include "kernel.pxi"
include "devpath.pxi"
include "batch.pxi"
