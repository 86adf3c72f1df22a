/*
 * tdx_usercopy.h - copies of a client's memory that fault byte for byte as copy_from_user /
 * copy_to_user do, without crashing: process_vm_readv/process_vm_writev stop at the first page they
 * cannot access and return the bytes before it. Used by the daemon on its clients (it runs as root)
 * and by the preload library on its own process (pid = getpid()).
 */
#ifndef TDX_USERCOPY_H
#define TDX_USERCOPY_H

#include <stdint.h>
#include <sys/types.h>

/* Bytes of [addr, addr+len) of process pid read into out, from addr on: a fault stops the count. */
uint32_t tdxu_vm_read(pid_t pid, uint64_t addr, uint8_t *out, uint32_t len);
/* Bytes of data written to [addr, addr+len) of process pid, from addr on. Writing back the bytes
 * just read tells how many are writable (the client is blocked in its call meanwhile). */
uint32_t tdxu_vm_write(pid_t pid, uint64_t addr, const uint8_t *data, uint32_t len);
/* The smallest range [*first, *first + *count) within [0, limit) outside which before == after. */
void tdxu_changed_range(const uint8_t *before, const uint8_t *after, uint32_t limit, uint32_t *first,
                        uint32_t *count);

#endif /* TDX_USERCOPY_H */
