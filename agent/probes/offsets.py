"""Kernel struct offsets the probes need, from the running kernel's BTF (headers only as a fallback)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Final

from agent.btf import Btf, BtfError, resolve_offsets

VMLINUX_BTF: Final = "/sys/kernel/btf/vmlinux"

# Macro passed to the BPF compiler -> (struct, member). Every kernel struct access in bpf/ goes through these.
WANTED: Final[dict[str, tuple[str, str]]] = {
    "TASK_REAL_PARENT": ("task_struct", "real_parent"),
    "TASK_GROUP_LEADER": ("task_struct", "group_leader"),
    "TASK_TGID": ("task_struct", "tgid"),
    "TASK_PID": ("task_struct", "pid"),
    "TASK_START_BOOTTIME": ("task_struct", "start_boottime"),
    "TASK_FILES": ("task_struct", "files"),
    "TASK_MM": ("task_struct", "mm"),
    "TASK_EXIT_CODE": ("task_struct", "exit_code"),
    "MM_ARG_START": ("mm_struct", "arg_start"),
    "MM_ARG_END": ("mm_struct", "arg_end"),
    "MM_ENV_START": ("mm_struct", "env_start"),
    "MM_ENV_END": ("mm_struct", "env_end"),
    "FILES_FDT": ("files_struct", "fdt"),
    "FDT_MAX_FDS": ("fdtable", "max_fds"),
    "FDT_FD": ("fdtable", "fd"),
    "FILE_INODE": ("file", "f_inode"),
    "FILE_PRIVATE_DATA": ("file", "private_data"),
    "INODE_MODE": ("inode", "i_mode"),
    "SOCKET_TYPE": ("socket", "type"),
    "SOCKET_SK": ("socket", "sk"),
    "SOCK_SK_COMMON": ("sock", "__sk_common"),
    "SKC_FAMILY": ("sock_common", "skc_family"),
    "SKC_NUM": ("sock_common", "skc_num"),
    "SKC_DPORT": ("sock_common", "skc_dport"),
    "SKC_DADDR": ("sock_common", "skc_daddr"),
    "SKC_V6_DADDR": ("sock_common", "skc_v6_daddr"),
    "SKC_RCV_SADDR": ("sock_common", "skc_rcv_saddr"),
    "SKC_V6_RCV_SADDR": ("sock_common", "skc_v6_rcv_saddr"),
    # Identities for the stdio graph: inode, its filesystem, device numbers, open flags.
    "FILE_F_FLAGS": ("file", "f_flags"),
    "INODE_INO": ("inode", "i_ino"),
    "INODE_RDEV": ("inode", "i_rdev"),
    "INODE_SB": ("inode", "i_sb"),
    "INODE_NLINK": ("inode", "i_nlink"),
    "INODE_SIZE": ("inode", "i_size"),  # the executed file's size: the agent hashes only on a known size
    "SB_DEV": ("super_block", "s_dev"),
    # A unix socket's peer, back to its inode: unix_sock.peer -> sock.sk_socket -> socket.file.
    "UNIX_PEER": ("unix_sock", "peer"),
    "SK_SOCKET": ("sock", "sk_socket"),
    "SOCKET_FILE": ("socket", "file"),
    # A pty master's index: file.private_data is a tty_file_private whose tty has the index.
    "TTY_FILE_PRIVATE_TTY": ("tty_file_private", "tty"),
    "TTY_INDEX": ("tty_struct", "index"),
    "MM_EXE_FILE": ("mm_struct", "exe_file"),
    # Resolving the path of an opened file, or of the directory a new name is relative to (persistence.bpf.c).
    "FILE_F_PATH_MNT": ("file", "f_path.mnt"),
    "FILE_F_PATH_DENTRY": ("file", "f_path.dentry"),
    "FILE_F_MODE": ("file", "f_mode"),
    "DENTRY_D_PARENT": ("dentry", "d_parent"),
    "DENTRY_D_INODE": ("dentry", "d_inode"),  # a directory's inode number keys its cold verdict
    "DENTRY_D_NAME_LEN": ("dentry", "d_name.len"),
    "DENTRY_D_NAME_NAME": ("dentry", "d_name.name"),
    "VFSMOUNT_MNT_ROOT": ("vfsmount", "mnt_root"),
    "MOUNT_MNT": ("mount", "mnt"),  # struct mount embeds the vfsmount a path points to
    "MOUNT_MNT_PARENT": ("mount", "mnt_parent"),
    "MOUNT_MNT_MOUNTPOINT": ("mount", "mnt_mountpoint"),
    "TASK_FS": ("task_struct", "fs"),
    "FS_ROOT_MNT": ("fs_struct", "root.mnt"),
    "FS_ROOT_DENTRY": ("fs_struct", "root.dentry"),
    "FS_PWD_MNT": ("fs_struct", "pwd.mnt"),
    "FS_PWD_DENTRY": ("fs_struct", "pwd.dentry"),
}


# Offsets a feature needs, each the sum of (struct, member) offsets; the feature is off when any is missing
# (a kernel without io_uring has none of its structs). io_connect, io_open, io_rename and io_link sit in
# io_kiocb's cmd area.
OPTIONAL: Final[dict[str, dict[str, tuple[tuple[str, str], ...]]]] = {
    "io_uring": {
        "IO_KIOCB_OPCODE": (("io_kiocb", "opcode"),),
        "IO_KIOCB_CQE_FD": (("io_kiocb", "cqe.fd"),),
        "IO_CONNECT_ADDR": (("io_kiocb", "cmd"), ("io_connect", "addr")),
        "IO_OPEN_FILE_SLOT": (("io_kiocb", "cmd"), ("io_open", "file_slot")),
        "IO_RENAME_NEW_DFD": (("io_kiocb", "cmd"), ("io_rename", "new_dfd")),
        "IO_RENAME_NEWPATH": (("io_kiocb", "cmd"), ("io_rename", "newpath")),
        "IO_RENAME_OLDPATH": (("io_kiocb", "cmd"), ("io_rename", "oldpath")),
        "IO_LINK_NEW_DFD": (("io_kiocb", "cmd"), ("io_link", "new_dfd")),
        "IO_LINK_NEWPATH": (("io_kiocb", "cmd"), ("io_link", "newpath")),
        "IO_LINK_OLDPATH": (("io_kiocb", "cmd"), ("io_link", "oldpath")),
        "FILENAME_NAME": (("filename", "name"),),
    },
}


# Macro -> struct: BTF type ids, for bpf_rdonly_cast (common.h as_file). Only with BTF, like the kfunc itself.
TYPE_IDS: Final[dict[str, str]] = {"BTF_ID_FILE": "file", "BTF_ID_TASK": "task_struct"}
# Macro -> kfunc: its BTF id, when this kernel has it (bpf_rdonly_cast: 6.2+). The probes fall back without it.
KFUNCS: Final[dict[str, str]] = {"KFUNC_RDONLY_CAST": "bpf_rdonly_cast"}


BPF_JIT_ENABLE: Final = "/proc/sys/net/core/bpf_jit_enable"


def bpf_jit_enabled(path: str = BPF_JIT_ENABLE) -> bool:
    """Whether BPF programs are JIT-compiled: the kernel calls a kfunc only from JIT-compiled code."""
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip() not in ("", "0")
    except OSError:
        return False  # no sysctl: no JIT built in


def resolve_kfuncs(btf: Btf, jit: bool | None = None) -> tuple[dict[str, int], dict[str, int]]:
    """(TYPE_IDS, the KFUNCS this kernel has and can call): both empty unless every type id resolves, and no
    kfunc without the JIT (``jit`` None: ask the kernel)."""
    try:
        type_ids = {name: btf.find_struct(struct) for name, struct in TYPE_IDS.items()}
    except BtfError:
        return {}, {}
    if not (bpf_jit_enabled() if jit is None else jit):
        return type_ids, {}
    kfuncs = {name: type_id for name, func in KFUNCS.items() if (type_id := btf.find_func(func)) is not None}
    return type_ids, kfuncs


def resolve_optional(btf: Btf) -> dict[str, int]:
    """The OPTIONAL offsets of every feature whose structs this kernel has."""
    out: dict[str, int] = {}
    for group in OPTIONAL.values():
        try:
            values = {
                name: sum(btf.offsetof(struct, member) for struct, member in parts) for name, parts in group.items()
            }
        except BtfError:
            continue
        out.update(values)
    # The io_uring probe reads linkat and symlinkat requests with io_rename's offsets.
    if "IO_RENAME_NEWPATH" in out and any(
        out[f"IO_LINK_{f}"] != out[f"IO_RENAME_{f}"] for f in ("NEW_DFD", "NEWPATH", "OLDPATH")
    ):
        for name in OPTIONAL["io_uring"]:
            out.pop(name, None)
    return out


class OffsetsUnavailable(RuntimeError):
    """Neither BTF nor kernel headers can give the struct layout."""


@dataclass(frozen=True)
class KernelOffsets:
    """Offsets as -D values, and where they came from ("btf" or "headers")."""

    source: str
    values: dict[str, str]
    kfuncs: dict[str, int] = field(default_factory=dict)  # KFUNCS this kernel has -> BTF id (not -D flags)

    def has(self, feature: str) -> bool:
        """Whether the offsets of an OPTIONAL feature ("io_uring") were found."""
        return all(name in self.values for name in OPTIONAL[feature])

    def kfunc(self, name: str) -> int | None:
        """The BTF id of a KFUNCS entry ("KFUNC_RDONLY_CAST") when this kernel has it."""
        return self.kfuncs.get(name)

    def cflags(self) -> list[str]:
        """Compiler flags defining every offset macro."""
        return [f"-D{name}={value}" for name, value in sorted(self.values.items())]


def headers_dir() -> str:
    """Where bcc looks for kernel headers for the running kernel."""
    return f"/lib/modules/{os.uname().release}/build"


def kernel_offsets(btf_path: str = VMLINUX_BTF) -> KernelOffsets:
    """Offsets from BTF when the kernel has it; else offsetof() against the installed headers."""
    if os.path.exists(btf_path):
        btf = Btf.from_file(btf_path)
        type_ids, kfuncs = resolve_kfuncs(btf)
        found = {**resolve_offsets(btf, WANTED), **resolve_optional(btf), **type_ids}
        return KernelOffsets("btf", {k: str(v) for k, v in found.items()}, kfuncs)
    if os.path.isdir(headers_dir()):
        # The headers match the kernel only if they are its own; we cannot check that without BTF.
        return KernelOffsets(
            "headers", {name: f"offsetof(struct {struct}, {member})" for name, (struct, member) in WANTED.items()}
        )
    raise OffsetsUnavailable(
        f"this kernel has no BTF ({btf_path}) and no headers at {headers_dir()}; "
        "install the kernel headers for this kernel (make setup does it) "
        "or use a kernel built with CONFIG_DEBUG_INFO_BTF"
    )


__all__ = ["WANTED", "OPTIONAL", "KernelOffsets", "OffsetsUnavailable", "kernel_offsets", "BtfError"]
