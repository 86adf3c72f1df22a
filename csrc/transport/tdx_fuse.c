/*
 * tdx_fuse.c - the FUSE file system of `tdxmodel serve` (see tdx_fuse.h): the device file, the 6.16
 * measurement files and the fault-injection control files, over one tdxf_server.
 *
 * FUSE gives a regular file only "restricted" ioctls: the kernel copies in and out exactly the size
 * encoded in the command (ref §1, bits 29:16), before and after the request reaches us. Where that
 * size covers the driver's window (v6.2/v6.16: TDX_CMD_GET_REPORT0 encodes 1088, the driver uses
 * 1088, ref §2.4) we use FUSE's buffers. Where it does not (v4: TDX_CMD_GET_TDREPORT encodes 8 but
 * the driver reads 64 and writes 1024 in place, ref §2.2) we read and write the client's memory at
 * its raw `arg` (tdx_usercopy.h; the daemon runs as root), which faults byte for byte as
 * copy_from_user/copy_to_user do.
 */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 312

#include "tdx_fuse.h"
#include "tdx_abi.h"
#include "tdx_usercopy.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* x86-64 host pages are the TDX page size (ref §4.3) */
#define TDXF_PAGE ((uint32_t)TDX_PAGE_SIZE)
/* Largest control-file read we serve in one request (measurement files are 48 bytes). */
#define TDXF_MAX_CONTROL_IO (64u * 1024u)
/* Largest served-tree read in one request (a v7.0 outblob of 16 MiB takes many, at its offsets). */
#define TDXF_MAX_VFS_IO (1024u * 1024u)

/* ------------------------------------------------------------------------------------------ FUSE */

static tdxf_node *node_of(tdxf_server *s, fuse_ino_t ino)
{
    if (ino < 1 || ino > (fuse_ino_t)s->nnodes)
        return NULL;
    return &s->nodes[ino - 1];
}

/* ------------------------------------------------------------------------------ the served tree */

/* The mount-relative path of a static node ("tsm"), by its parents. */
static int static_path(tdxf_server *s, fuse_ino_t ino, char *out, size_t size)
{
    const char *parts[16];
    int depth = 0;
    while (ino > 1 && depth < 16) {
        tdxf_node *n = node_of(s, ino);
        if (!n)
            return -ENOENT;
        parts[depth++] = n->name;
        ino = n->parent;
    }
    size_t used = 0;
    out[0] = 0;
    for (int i = depth - 1; i >= 0; i--) {
        int w = snprintf(out + used, size - used, "%s%s", used ? "/" : "", parts[i]);
        if (w < 0 || (size_t)w >= size - used)
            return -ENAMETOOLONG;
        used += (size_t)w;
    }
    return 0;
}

/* The served-tree path of ino into out: 1 when ino is in the served tree, 0 when it is not, -errno. */
static int vfs_path(tdxf_server *s, fuse_ino_t ino, char *out, size_t size)
{
    if (ino >= TDXF_VINO_BASE) {
        int found = -ESTALE;
        pthread_mutex_lock(&s->vnode_lock);
        for (size_t i = 0; i < s->nvnodes; i++)
            if (s->vnodes[i].ino == ino) {
                found = snprintf(out, size, "%s", s->vnodes[i].path) < (int)size ? 1 : -ENAMETOOLONG;
                break;
            }
        pthread_mutex_unlock(&s->vnode_lock);
        return found;
    }
    tdxf_node *n = node_of(s, ino);
    if (!n || n->kind != TDXF_NODE_VFS)
        return 0;
    int r = static_path(s, ino, out, size);
    return r < 0 ? r : 1;
}

static int is_vfs(tdxf_server *s, fuse_ino_t ino)
{
    if (ino >= TDXF_VINO_BASE)
        return 1;
    tdxf_node *n = node_of(s, ino);
    return n && n->kind == TDXF_NODE_VFS;
}

/* The inode of a served-tree path, its lookup count raised by one (the kernel now holds it). */
static fuse_ino_t vnode_ref(tdxf_server *s, const char *path)
{
    fuse_ino_t ino = 0;
    pthread_mutex_lock(&s->vnode_lock);
    for (size_t i = 0; i < s->nvnodes; i++)
        if (strcmp(s->vnodes[i].path, path) == 0) {
            s->vnodes[i].nlookup++;
            ino = s->vnodes[i].ino;
            goto out;
        }
    if (s->nvnodes == s->vnode_cap) {
        size_t cap = s->vnode_cap ? 2 * s->vnode_cap : 64;
        tdxf_vnode *grown = realloc(s->vnodes, cap * sizeof(*grown));
        if (!grown)
            goto out;
        s->vnodes = grown;
        s->vnode_cap = cap;
    }
    char *copy = strdup(path);
    if (!copy)
        goto out;
    ino = TDXF_VINO_BASE + s->next_vino++;
    s->vnodes[s->nvnodes++] = (tdxf_vnode){ino, 1, copy};
out:
    pthread_mutex_unlock(&s->vnode_lock);
    return ino;
}

static void vnode_forget(tdxf_server *s, fuse_ino_t ino, uint64_t n)
{
    pthread_mutex_lock(&s->vnode_lock);
    for (size_t i = 0; i < s->nvnodes; i++)
        if (s->vnodes[i].ino == ino) {
            s->vnodes[i].nlookup = s->vnodes[i].nlookup > n ? s->vnodes[i].nlookup - n : 0;
            if (!s->vnodes[i].nlookup) {
                free(s->vnodes[i].path);
                s->vnodes[i] = s->vnodes[--s->nvnodes];
            }
            break;
        }
    pthread_mutex_unlock(&s->vnode_lock);
}

static void fill_vstat(tdxf_server *s, fuse_ino_t ino, const tdxf_vstat *v, struct stat *st)
{
    memset(st, 0, sizeof(*st));
    st->st_ino = ino;
    st->st_mode = (v->type == TDXF_VFS_DIR ? S_IFDIR : S_IFREG) | (v->mode & 07777);
    st->st_nlink = v->type == TDXF_VFS_DIR ? 2 : 1;
    st->st_size = (off_t)v->size;
    st->st_blksize = TDXF_PAGE;
    st->st_atim = st->st_mtim = st->st_ctim = s->started;
}

/* stat of a served-tree path: 0, or -errno (-ENOENT without a handler) */
static int vstat(tdxf_server *s, const char *path, tdxf_vstat *v)
{
    memset(v, 0, sizeof(*v));
    if (!s->handler.vfs_stat)
        return -ENOENT;
    int r = s->handler.vfs_stat(s->handler.ctx, path, v);
    if (r == 0 && v->type != TDXF_VFS_DIR && v->type != TDXF_VFS_FILE)
        return -EIO;
    return r;
}

/* parent's path + "/" + name into out */
static int child_path(tdxf_server *s, fuse_ino_t parent, const char *name, char *out, size_t size)
{
    char dir[TDXF_VPATH_MAX];
    int r = vfs_path(s, parent, dir, sizeof(dir));
    if (r <= 0)
        return r;
    if (snprintf(out, size, "%s/%s", dir, name) >= (int)size)
        return -ENAMETOOLONG;
    return 1;
}

/* The served tree changes under the kernel (mkdir, rmdir by anyone): nothing is cached. */
static void reply_ventry(fuse_req_t req, tdxf_server *s, const char *path)
{
    tdxf_vstat v;
    int r = vstat(s, path, &v);
    if (r < 0) {
        fuse_reply_err(req, -r);
        return;
    }
    struct fuse_entry_param e;
    memset(&e, 0, sizeof(e));
    e.ino = vnode_ref(s, path);
    if (!e.ino) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    fill_vstat(s, e.ino, &v, &e.attr);
    if (fuse_reply_entry(req, &e) == -ENOENT)
        vnode_forget(s, e.ino, 1); /* the request was interrupted: the kernel holds nothing */
}

static void fill_stat(tdxf_server *s, fuse_ino_t ino, const tdxf_node *n, struct stat *st)
{
    memset(st, 0, sizeof(*st));
    st->st_ino = ino;
    int dir = n->kind == TDXF_NODE_DIR || n->kind == TDXF_NODE_VFS;
    st->st_mode = (dir ? S_IFDIR : S_IFREG) | n->mode;
    st->st_nlink = dir ? 2 : 1;
    st->st_size = (off_t)n->size;
    st->st_uid = 0;
    st->st_gid = 0;
    st->st_blksize = TDXF_PAGE;
    st->st_atim = st->st_mtim = st->st_ctim = s->started;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    tdxf_server *s = fuse_req_userdata(req);
    char path[TDXF_VPATH_MAX];
    int v = child_path(s, parent, name, path, sizeof(path));
    if (v != 0) {
        if (v < 0)
            fuse_reply_err(req, -v);
        else
            reply_ventry(req, s, path);
        return;
    }
    for (int i = 1; i < s->nnodes; i++) {
        if (s->nodes[i].parent == parent && strcmp(s->nodes[i].name, name) == 0) {
            struct fuse_entry_param e;
            memset(&e, 0, sizeof(e));
            e.ino = (fuse_ino_t)i + 1;
            e.attr_timeout = 3600.0; /* the tree never changes while mounted */
            e.entry_timeout = 3600.0;
            fill_stat(s, e.ino, &s->nodes[i], &e.attr);
            fuse_reply_entry(req, &e);
            return;
        }
    }
    fuse_reply_err(req, ENOENT);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)fi;
    tdxf_server *s = fuse_req_userdata(req);
    char path[TDXF_VPATH_MAX];
    int v = vfs_path(s, ino, path, sizeof(path));
    if (v != 0) {
        tdxf_vstat vs;
        int r = v < 0 ? v : vstat(s, path, &vs);
        if (r < 0) {
            fuse_reply_err(req, -r);
            return;
        }
        struct stat st;
        fill_vstat(s, ino, &vs, &st);
        fuse_reply_attr(req, &st, 0.0);
        return;
    }
    tdxf_node *n = node_of(s, ino);
    if (!n) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    struct stat st;
    fill_stat(s, ino, n, &st);
    fuse_reply_attr(req, &st, 3600.0);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
    tdxf_server *s = fuse_req_userdata(req);
    if (ino >= TDXF_VINO_BASE)
        vnode_forget(s, ino, nlookup);
    fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
    tdxf_server *s = fuse_req_userdata(req);
    for (size_t i = 0; i < count; i++)
        if (forgets[i].ino >= TDXF_VINO_BASE)
            vnode_forget(s, forgets[i].ino, forgets[i].nlookup);
    fuse_reply_none(req);
}

/* configfs has no create, mknod, unlink or rename: the VFS answers as for any directory without
 * them (fs/namei.c: -EACCES for O_CREAT of a new name, -EPERM for the others). The mount's own
 * directories are fixed. */
static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
    tdxf_server *s = fuse_req_userdata(req);
    char path[TDXF_VPATH_MAX];
    int v = child_path(s, parent, name, path, sizeof(path));
    if (v <= 0 || !s->handler.vfs_mkdir) {
        fuse_reply_err(req, v < 0 ? -v : EPERM);
        return;
    }
    int r = s->handler.vfs_mkdir(s->handler.ctx, path, (unsigned)mode, (uint32_t)fuse_req_ctx(req)->pid);
    if (r < 0)
        fuse_reply_err(req, -r);
    else
        reply_ventry(req, s, path);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    tdxf_server *s = fuse_req_userdata(req);
    char path[TDXF_VPATH_MAX];
    int v = child_path(s, parent, name, path, sizeof(path));
    if (v <= 0 || !s->handler.vfs_rmdir) {
        fuse_reply_err(req, v < 0 ? -v : EPERM);
        return;
    }
    int r = s->handler.vfs_rmdir(s->handler.ctx, path, (uint32_t)fuse_req_ctx(req)->pid);
    fuse_reply_err(req, r < 0 ? -r : 0);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    (void)parent, (void)name;
    fuse_reply_err(req, EPERM);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
    (void)parent, (void)name, (void)mode, (void)rdev;
    fuse_reply_err(req, EPERM);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      struct fuse_file_info *fi)
{
    (void)parent, (void)name, (void)mode, (void)fi;
    fuse_reply_err(req, EACCES);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                      const char *newname, unsigned int flags)
{
    (void)parent, (void)name, (void)newparent, (void)newname, (void)flags;
    fuse_reply_err(req, EPERM);
}

/* A directory of the served tree is listed from one snapshot taken at opendir: entries
 * "<d|f><name>\0", as vfs_readdir gives them. */
typedef struct {
    size_t len;
    char names[];
} dir_snapshot;

#define TDXF_MAX_DIR_BYTES (1u << 20)

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    tdxf_server *s = fuse_req_userdata(req);
    char path[TDXF_VPATH_MAX];
    fi->fh = 0;
    int v = vfs_path(s, ino, path, sizeof(path));
    if (v < 0) {
        fuse_reply_err(req, -v);
        return;
    }
    if (v > 0) {
        if (!s->handler.vfs_readdir) {
            fuse_reply_err(req, ENOENT);
            return;
        }
        for (size_t size = 16384;; size *= 4) {
            dir_snapshot *d = malloc(sizeof(*d) + size);
            if (!d) {
                fuse_reply_err(req, ENOMEM);
                return;
            }
            long r = s->handler.vfs_readdir(s->handler.ctx, path, d->names, size);
            if (r == -ERANGE && size < TDXF_MAX_DIR_BYTES) {
                free(d);
                continue;
            }
            if (r < 0) {
                free(d);
                fuse_reply_err(req, (int)-r);
                return;
            }
            d->len = (size_t)r;
            fi->fh = (uint64_t)(uintptr_t)d;
            break;
        }
    }
    if (fuse_reply_open(req, fi) == -ENOENT && fi->fh) {
        free((void *)(uintptr_t)fi->fh);
    }
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    free((void *)(uintptr_t)fi->fh);
    fuse_reply_err(req, 0);
}

static void vfs_readdir_reply(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                              const dir_snapshot *d)
{
    char *buf = calloc(1, size);
    if (!buf) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    size_t used = 0, pos = 0;
    off_t index = 0;
    for (int i = -2;; i++) {
        const char *name;
        struct stat st;
        memset(&st, 0, sizeof(st));
        if (i < 0) {
            name = i == -2 ? "." : "..";
            st.st_ino = ino;
            st.st_mode = S_IFDIR;
        } else {
            if (pos >= d->len)
                break;
            const char *entry = d->names + pos;
            size_t n = strnlen(entry, d->len - pos);
            pos += n + 1;
            if (n < 2)
                continue;
            name = entry + 1;
            st.st_mode = entry[0] == 'd' ? S_IFDIR : S_IFREG;
            st.st_ino = TDXF_VINO_BASE - 1 - (ino_t)i; /* readdir's d_ino: ours to pick, never 0 */
        }
        index++;
        if (index <= off)
            continue;
        size_t need = fuse_add_direntry(req, buf + used, size - used, name, &st, index);
        if (need > size - used)
            break;
        used += need;
    }
    fuse_reply_buf(req, buf, used);
    free(buf);
}

/* O_TRUNC (a shell's `>`) arrives as a size change: sysfs ignores it, so do we. Ownership and mode
 * are fixed by the daemon's flags. */
static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                       struct fuse_file_info *fi)
{
    (void)attr, (void)fi;
    tdxf_server *s = fuse_req_userdata(req);
    char path[TDXF_VPATH_MAX];
    int v = vfs_path(s, ino, path, sizeof(path));
    if (v != 0) {
        tdxf_vstat vs;
        int r = v < 0 ? v : vstat(s, path, &vs);
        if (r == 0 && (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)))
            r = -EPERM;
        if (r < 0) {
            fuse_reply_err(req, -r);
            return;
        }
        struct stat st;
        fill_vstat(s, ino, &vs, &st);
        fuse_reply_attr(req, &st, 0.0);
        return;
    }
    tdxf_node *n = node_of(s, ino);
    if (!n) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
        fuse_reply_err(req, EPERM);
        return;
    }
    struct stat st;
    fill_stat(s, ino, n, &st);
    fuse_reply_attr(req, &st, 3600.0);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
    tdxf_server *s = fuse_req_userdata(req);
    if (fi->fh && is_vfs(s, ino)) {
        vfs_readdir_reply(req, ino, size, off, (const dir_snapshot *)(uintptr_t)fi->fh);
        return;
    }
    tdxf_node *dir = node_of(s, ino);
    if (!dir || (dir->kind != TDXF_NODE_DIR && dir->kind != TDXF_NODE_VFS)) {
        fuse_reply_err(req, ENOTDIR);
        return;
    }
    char *buf = calloc(1, size);
    if (!buf) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    size_t used = 0;
    /* entries: 0 ".", 1 "..", then children in node order; `off` is the next entry's index */
    int index = 0;
    for (int i = -2; i < s->nnodes; i++) {
        const char *name;
        struct stat st;
        memset(&st, 0, sizeof(st));
        if (i == -2) {
            name = ".";
            st.st_ino = ino;
            st.st_mode = S_IFDIR;
        } else if (i == -1) {
            name = "..";
            st.st_ino = dir->parent ? dir->parent : 1;
            st.st_mode = S_IFDIR;
        } else {
            if (i == 0 || s->nodes[i].parent != ino)
                continue;
            name = s->nodes[i].name;
            st.st_ino = (ino_t)i + 1;
            st.st_mode = s->nodes[i].kind == TDXF_NODE_DIR || s->nodes[i].kind == TDXF_NODE_VFS
                             ? S_IFDIR : S_IFREG;
        }
        index++;
        if (index <= off)
            continue;
        size_t need = fuse_add_direntry(req, buf + used, size - used, name, &st, index);
        if (need > size - used)
            break;
        used += need;
    }
    fuse_reply_buf(req, buf, used);
    free(buf);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    tdxf_server *s = fuse_req_userdata(req);
    char path[TDXF_VPATH_MAX];
    int v = vfs_path(s, ino, path, sizeof(path));
    if (v != 0) {
        /* one FUSE open = one open file of the emulated kernel; FUSE's RELEASE comes at the last
         * close of the client's file (dup'd and inherited fds included), as configfs's release */
        uint64_t handle = 0;
        int r = v < 0 ? v : s->handler.vfs_open ? s->handler.vfs_open(s->handler.ctx, path, fi->flags,
                                                    (uint32_t)fuse_req_ctx(req)->pid, &handle) : -ENOENT;
        if (r < 0) {
            fuse_reply_err(req, -r);
            return;
        }
        fi->direct_io = 1;
        fi->keep_cache = 0;
        fi->fh = handle;
        if (fuse_reply_open(req, fi) == -ENOENT)
            s->handler.vfs_release(s->handler.ctx, handle);
        return;
    }
    tdxf_node *n = node_of(s, ino);
    if (!n) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    if (n->kind == TDXF_NODE_DIR) {
        fuse_reply_err(req, EISDIR);
        return;
    }
    /* kernfs refuses to open a read-only attribute for writing, even for root (ref §2.5: 0444) */
    if (n->kind == TDXF_NODE_CONTROL && (fi->flags & O_ACCMODE) != O_RDONLY && !(n->mode & 0222)) {
        fuse_reply_err(req, EACCES);
        return;
    }
    fi->direct_io = 1;  /* every read and write reaches the handler, whatever st_size says */
    fi->keep_cache = 0;
    fi->nonseekable = 0;
    fi->fh = 0;
    if (n->kind == TDXF_NODE_DEVICE) {
        uint64_t handle = 0;
        const struct fuse_ctx *ctx = fuse_req_ctx(req);
        int r = s->handler.open(s->handler.ctx, fi->flags, (uint32_t)ctx->pid, &handle);
        if (r < 0) {
            fuse_reply_err(req, -r);
            return;
        }
        atomic_fetch_add(&s->c_opens, 1);
        fi->fh = handle;
    }
    if (fuse_reply_open(req, fi) == -ENOENT && n->kind == TDXF_NODE_DEVICE) {
        /* the client was interrupted before it got its fd: nobody will release it */
        s->handler.release(s->handler.ctx, fi->fh);
        atomic_fetch_add(&s->c_releases, 1);
    }
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    tdxf_server *s = fuse_req_userdata(req);
    if (is_vfs(s, ino)) {
        s->handler.vfs_release(s->handler.ctx, fi->fh);
        fuse_reply_err(req, 0);
        return;
    }
    tdxf_node *n = node_of(s, ino);
    if (n && n->kind == TDXF_NODE_DEVICE) {
        s->handler.release(s->handler.ctx, fi->fh);
        atomic_fetch_add(&s->c_releases, 1);
    }
    fuse_reply_err(req, 0);
}

/* FLUSH comes, synchronously, with every close(2) of a client's fd; RELEASE only after the last one,
 * and asynchronously (fs/fuse/file.c: fuse_file_put in the background), so the handler is told. */
static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    tdxf_server *s = fuse_req_userdata(req);
    if (is_vfs(s, ino) && s->handler.vfs_flush)
        s->handler.vfs_flush(s->handler.ctx, fi->fh);
    fuse_reply_err(req, 0);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
    tdxf_server *s = fuse_req_userdata(req);
    if (is_vfs(s, ino)) {
        if (size > TDXF_MAX_VFS_IO)
            size = TDXF_MAX_VFS_IO;
        char *vbuf = malloc(size ? size : 1);
        if (!vbuf) {
            fuse_reply_err(req, ENOMEM);
            return;
        }
        long r = s->handler.vfs_read(s->handler.ctx, fi->fh, vbuf, size, (int64_t)off);
        if (r < 0)
            fuse_reply_err(req, (int)-r);
        else
            fuse_reply_buf(req, vbuf, (size_t)r);
        free(vbuf);
        return;
    }
    tdxf_node *n = node_of(s, ino);
    if (!n || n->kind != TDXF_NODE_CONTROL) {
        /* the misc device has no read method (ref §2: ioctl only) */
        fuse_reply_err(req, n ? EINVAL : ENOENT);
        return;
    }
    if (size > TDXF_MAX_CONTROL_IO)
        size = TDXF_MAX_CONTROL_IO;
    char *buf = malloc(size ? size : 1);
    if (!buf) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    int r = s->handler.control_read(s->handler.ctx, n->node_id, (uint32_t)fuse_req_ctx(req)->pid, buf,
                                    size, off);
    if (r < 0)
        fuse_reply_err(req, -r);
    else
        fuse_reply_buf(req, buf, (size_t)r);
    free(buf);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
    tdxf_server *s = fuse_req_userdata(req);
    if (is_vfs(s, ino)) {
        long r = s->handler.vfs_write(s->handler.ctx, fi->fh, buf, size, (int64_t)off);
        if (r < 0)
            fuse_reply_err(req, (int)-r);
        else
            fuse_reply_write(req, (size_t)r);
        return;
    }
    tdxf_node *n = node_of(s, ino);
    if (!n || n->kind != TDXF_NODE_CONTROL) {
        fuse_reply_err(req, n ? EINVAL : ENOENT);
        return;
    }
    int r = s->handler.control_write(s->handler.ctx, n->node_id, (uint32_t)fuse_req_ctx(req)->pid, buf,
                                     size, off);
    if (r < 0)
        fuse_reply_err(req, -r);
    else
        fuse_reply_write(req, (size_t)r);
}

struct interrupt_arg {
    tdxf_server *s;
    uint64_t handle;
    int fired;
};

static void op_interrupted(fuse_req_t req, void *data)
{
    (void)req;
    struct interrupt_arg *a = data;
    a->fired = 1;
    a->s->handler.interrupt(a->s->handler.ctx, a->handle, 1);
}

static void op_ioctl(fuse_req_t req, fuse_ino_t ino, unsigned int cmd, void *arg,
                     struct fuse_file_info *fi, unsigned flags, const void *in_buf, size_t in_bufsz,
                     size_t out_bufsz)
{
    tdxf_server *s = fuse_req_userdata(req);
    tdxf_node *n = node_of(s, ino);
    if (!n || n->kind != TDXF_NODE_DEVICE) {
        fuse_reply_err(req, ENOTTY); /* sysfs attributes and directories have no ioctl */
        return;
    }
    if (flags & FUSE_IOCTL_COMPAT) {
        fuse_reply_err(req, ENOTTY); /* 32-bit clients: the drivers have no compat_ioctl */
        return;
    }
    atomic_fetch_add(&s->c_fuse_ioctls, 1);
    uint8_t image[TDXW_MAX_WINDOW], before[TDXW_MAX_WINDOW];
    uint32_t window = tdxf_window(s, cmd);
    pid_t pid = fuse_req_ctx(req)->pid;
    uint64_t uarg = (uint64_t)(uintptr_t)arg;
    tdxf_ioctl_call call = {fi->fh, (uint32_t)pid, cmd, uarg, image, window, 0, 0, 0, NULL, 0, 0, 0, 0};
    /* FUSE already copied `in_bufsz` bytes in; it copies `out_bufsz` out when we succeed. */
    int fuse_buffers = window > 0 && in_bufsz >= window && out_bufsz >= window;
    if (fuse_buffers) {
        memcpy(image, in_buf, window);
        call.readable = call.writable = window;
    } else if (window > 0) {
        call.readable = tdxu_vm_read(pid, uarg, image, window);
        call.writable = tdxu_vm_write(pid, uarg, image, call.readable);
        atomic_fetch_add(&s->c_vm_reads, 1);
    }
    memcpy(before, image, window);
    tdxf_buffer_begin(s, &call); /* a request's embedded buffer (the get_quote commands) */
    /* A signal to the waiting client arrives as a FUSE INTERRUPT: hand it to the emulated task for
     * the duration of the call. libfuse runs the function at once if the interrupt came first, and
     * unregistering waits for a callback in progress, so on = 0 always comes last. */
    struct interrupt_arg irq = {s, fi->fh, 0};
    if (s->handler.interrupt)
        fuse_req_interrupt_func(req, op_interrupted, &irq);
    long result = s->handler.ioctl(s->handler.ctx, &call);
    if (s->handler.interrupt) {
        fuse_req_interrupt_func(req, NULL, NULL);
        if (irq.fired)
            s->handler.interrupt(s->handler.ctx, fi->fh, 0);
    }
    tdxf_buffer_end(s, &call);
    uint32_t first = 0, count = 0;
    tdxu_changed_range(before, image, call.writable, &first, &count);
    if (count && (!fuse_buffers || result < 0)) {
        /* v4's in-place report, or user bytes written on an error path (v4's put_user of the status,
         * a partial copy_to_user): FUSE copies nothing out on an error reply, so write them here. */
        atomic_fetch_add(&s->c_vm_writes, 1);
        if (tdxu_vm_write(pid, uarg + first, image + first, count) == 0 && count)
            atomic_fetch_add(&s->c_client_gone, 1);
    }
    int r;
    if (result < 0) {
        r = fuse_reply_err(req, (int)-result);
    } else {
        size_t out = window < out_bufsz ? window : out_bufsz;
        r = fuse_reply_ioctl(req, (int)result, out ? image : NULL, out);
    }
    if (r == -ENOENT)
        atomic_fetch_add(&s->c_client_gone, 1); /* interrupted or killed mid-call: nothing to undo */
}

static const struct fuse_lowlevel_ops tdxf_ops = {
    .lookup = op_lookup,
    .forget = op_forget,
    .forget_multi = op_forget_multi,
    .getattr = op_getattr,
    .mkdir = op_mkdir,
    .rmdir = op_rmdir,
    .unlink = op_unlink,
    .mknod = op_mknod,
    .create = op_create,
    .rename = op_rename,
    .opendir = op_opendir,
    .releasedir = op_releasedir,
    .setattr = op_setattr,
    .readdir = op_readdir,
    .open = op_open,
    .release = op_release,
    .flush = op_flush,
    .read = op_read,
    .write = op_write,
    .ioctl = op_ioctl,
};

int tdxf_fuse_mount(tdxf_server *s, const char *mountpoint, const char *options, int max_threads)
{
    if (s->se)
        return -EBUSY;
    char *argv[4];
    int argc = 0;
    argv[argc++] = "tdxmodel";
    if (options && *options) {
        argv[argc++] = "-o";
        argv[argc++] = (char *)options;
    }
    argv[argc] = NULL;
    struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
    s->se = fuse_session_new(&args, &tdxf_ops, sizeof(tdxf_ops), s);
    if (!s->se)
        return -EINVAL;
    if (fuse_session_mount(s->se, mountpoint) != 0) {
        fuse_session_destroy(s->se);
        s->se = NULL;
        return -EIO;
    }
    s->max_threads = max_threads > 0 ? max_threads : 16;
    atomic_store(&s->fuse_stopping, 0);
    return 0;
}

/* The loop's own thread waits in sem_wait until a worker ends, and checks fuse_session_exited only
 * then (libfuse lib/fuse_loop_mt.c); workers end only when a read of /dev/fuse fails, which never
 * happens while a client keeps the detached mount's device open. A signal interrupts that sem_wait,
 * so stop sends TDXF_WAKE_SIGNAL to the loop thread; its handler does nothing. */
#define TDXF_WAKE_SIGNAL (SIGRTMIN + 5)

static void wake_handler(int sig) { (void)sig; }

static void install_wake_handler(void)
{
    struct sigaction old, sa;
    if (sigaction(TDXF_WAKE_SIGNAL, NULL, &old) == 0 && old.sa_handler != SIG_DFL)
        return; /* already ours (or someone's): any handler interrupts sem_wait */
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = wake_handler;
    sigemptyset(&sa.sa_mask);
    sigaction(TDXF_WAKE_SIGNAL, &sa, NULL);
}

int tdxf_fuse_run(tdxf_server *s)
{
    if (!s->se)
        return -EINVAL;
    install_wake_handler();
    /* Workers inherit this thread's mask: signals belong to the Python main thread, except the
     * wake signal, which only tdxf_fuse_stop sends, to this thread only. */
    sigset_t mask;
    sigfillset(&mask);
    sigdelset(&mask, TDXF_WAKE_SIGNAL);
    pthread_sigmask(SIG_SETMASK, &mask, NULL);
    struct fuse_loop_config *cfg = fuse_loop_cfg_create();
    if (!cfg)
        return -ENOMEM;
    fuse_loop_cfg_set_max_threads(cfg, (unsigned)s->max_threads);
    fuse_loop_cfg_set_idle_threads(cfg, 4);
    fuse_loop_cfg_set_clone_fd(cfg, 0);
    s->loop_thread = pthread_self();
    atomic_store(&s->loop_running, 1);
    int r = 0;
    if (!atomic_load(&s->fuse_stopping))
        r = fuse_session_loop_mt(s->se, cfg);
    atomic_store(&s->loop_running, 0);
    fuse_loop_cfg_destroy(cfg);
    pthread_mutex_lock(&s->stop_lock);
    struct fuse_session *se = s->se;
    s->se = NULL;
    if (se) {
        fuse_session_unmount(se);
        fuse_session_destroy(se); /* closes /dev/fuse: open files of the mount now fail */
    }
    pthread_mutex_unlock(&s->stop_lock);
    return r;
}

void tdxf_fuse_stop(tdxf_server *s)
{
    int wake = 0;
    pthread_mutex_lock(&s->stop_lock);
    if (s->se && !atomic_exchange(&s->fuse_stopping, 1)) {
        fuse_session_exit(s->se);
        /* A lazy unmount: the mount point is free at once, even while clients hold files open. */
        fuse_session_unmount(s->se);
        wake = 1;
    }
    pthread_mutex_unlock(&s->stop_lock);
    /* Kick the loop until it returns: a signal sent just before it enters sem_wait is lost. Give up
     * after about a second (a handler that never returns keeps its worker, and so the loop). */
    for (int i = 0; wake && i < 500; i++) {
        pthread_mutex_lock(&s->stop_lock); /* held, the loop thread cannot end: safe to signal */
        int running = atomic_load(&s->loop_running);
        if (running)
            pthread_kill(s->loop_thread, TDXF_WAKE_SIGNAL);
        pthread_mutex_unlock(&s->stop_lock);
        if (!running)
            break;
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
