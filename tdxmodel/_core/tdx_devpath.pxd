# Declarations of csrc/tdx_devpath.h (layer 2): the served device's nogil ioctl path.
cdef extern from "tdx_devpath.h" nogil:
    ctypedef struct tdxf_fastpath:
        pass
    const char *TDXF_FASTPATH_CAPSULE

    unsigned long long TDXF_USER_BASE
    unsigned TDXF_MIRROR_PAGES
    unsigned long long TDXF_BUF_BASE
    ctypedef struct tdxf_core:
        pass
    tdxf_core *tdxf_core_new(unsigned max_files)
    void tdxf_core_free(tdxf_core *c)
    const tdxf_fastpath *tdxf_core_fastpath(tdxf_core *c)
    long tdxf_core_register(tdxf_core *c, void *p, int fd)
    void tdxf_core_unregister(tdxf_core *c, unsigned long long handle)
    unsigned tdxf_core_fail_nth_arm(tdxf_core *c)
    void tdxf_core_fail_nth_disarm(tdxf_core *c, unsigned left)
    void tdxf_core_fail_nth_set(tdxf_core *c, unsigned n)
    unsigned tdxf_core_fail_nth_get(tdxf_core *c)
