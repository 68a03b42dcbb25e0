// The library's kernel numbers against the kernel's own uapi headers as installed on this system
// (linux-libc-dev; the socket numbers from the C library's headers), read by the C compiler: a
// source the library's tables were not copied from here. A header older than a constant does not
// define it; such names are listed, not failed.
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import {
  ANON_INODE_FS_MAGIC, CPUID_ENTRY_SIZE, Cap, CpuidFlag, ExitReason, FallocMode, GUEST_MEMFD_MAGIC, GuestMemfdFlag,
  InternalErrorSuberror, Madvise, MemPolicy, MemoryFaultFlag, MemslotFlag, SystemEventType, VmType,
  MemoryAttribute, Hypercall, MapGpaRangeAttr, HypercallExitFlag, HypercallError,
} from '../lib/index.js';
import { native } from '../lib/core/native.js';
import { AF_UNIX, MSG_CTRUNC, MSG_TRUNC, SOCK_SEQPACKET } from '../lib/ipc/wire.js';
import { compileC } from './c-fixtures.js';
import { REQUIRE_TOOLS } from './kvm-host.js';

type Value = number | bigint;

/** A value the library has, and the C expression that gives the header's; `guard` is the macro it needs. */
interface Check {
  name: string;
  ours: Value;
  c: string;
  guard?: string;
}

/** Each table's entries under the header's macro names (`macro(key)`); every macro guards itself. */
function table(t: Record<string, Value>, macro: (key: string) => string): Check[] {
  return Object.entries(t).map(([k, v]) => ({ name: macro(k), ours: v, c: macro(k), guard: macro(k) }));
}

const CHECKS: Check[] = [
  ...table(Cap, (k) => `KVM_CAP_${k}`),
  ...table(ExitReason, (k) => `KVM_EXIT_${k}`),
  ...table(MemslotFlag, (k) => `KVM_MEM_${k}`),
  ...table(GuestMemfdFlag, (k) => `GUEST_MEMFD_FLAG_${k}`),
  ...table(VmType, (k) => `KVM_X86_${k}_VM`),
  ...table(MemoryFaultFlag, (k) => `KVM_MEMORY_EXIT_FLAG_${k}`),
  ...table(MemoryAttribute, (k) => `KVM_MEMORY_ATTRIBUTE_${k}`),
  ...table(Hypercall, (k) => `KVM_HC_${k}`),
  ...table(MapGpaRangeAttr, (k) => `KVM_MAP_GPA_RANGE_${k}`),
  ...table(HypercallExitFlag, (k) => `KVM_EXIT_HYPERCALL_${k}`),
  ...table(HypercallError, (k) => `KVM_${k}`),
  ...table(SystemEventType, (k) => `KVM_SYSTEM_EVENT_${k}`),
  ...table(InternalErrorSuberror, (k) => `KVM_INTERNAL_ERROR_${k}`),
  // The header's spelling (sic) since KVM_CPUID_FLAG_SIGNIFCANT_INDEX was added.
  ...table(CpuidFlag, (k) => `KVM_CPUID_FLAG_${k === 'SIGNIFICANT_INDEX' ? 'SIGNIFCANT_INDEX' : k}`),
  ...table(FallocMode, (k) => `FALLOC_FL_${k}`),
  ...table(Madvise, (k) => `MADV_${k}`),
  // Enumerators, not macros: in every header.
  ...Object.entries(MemPolicy).map(([k, v]) => ({ name: `MPOL_${k}`, ours: v, c: `MPOL_${k}` })),
  { name: 'ANON_INODE_FS_MAGIC', ours: ANON_INODE_FS_MAGIC, c: 'ANON_INODE_FS_MAGIC', guard: 'ANON_INODE_FS_MAGIC' },
  { name: 'GUEST_MEMFD_MAGIC', ours: GUEST_MEMFD_MAGIC, c: 'GUEST_MEMFD_MAGIC', guard: 'GUEST_MEMFD_MAGIC' },
  { name: 'sizeof(struct kvm_cpuid_entry2)', ours: CPUID_ENTRY_SIZE, c: 'sizeof(struct kvm_cpuid_entry2)' },
  // The socket numbers lib/ipc speaks (from the C library's sys/socket.h, itself the kernel's).
  { name: 'AF_UNIX', ours: AF_UNIX, c: 'AF_UNIX' },
  { name: 'SOCK_SEQPACKET', ours: SOCK_SEQPACKET, c: 'SOCK_SEQPACKET' },
  { name: 'MSG_CTRUNC', ours: MSG_CTRUNC, c: 'MSG_CTRUNC' },
  { name: 'MSG_TRUNC', ours: MSG_TRUNC, c: 'MSG_TRUNC' },
  // sun_path's bytes less its NUL: the longest socket path the addon takes.
  { name: 'UNIX_PATH_MAX - 1', ours: native.limits.maxSocketPathBytes, c: 'UNIX_PATH_MAX - 1' },
  // The struct layouts the addon reads and writes (vcpu.test.ts holds lib's offsets to these).
  ...Object.entries(native.uapiLayout()).flatMap(([struct, fields]) => Object.entries(fields).map(([f, v]) => {
    // 'exit' is where kvm_run's anonymous union of exit data starts: its first member, hw.
    const c = f === 'size' ? `sizeof(struct ${struct})` : `offsetof(struct ${struct}, ${f === 'exit' ? 'hw' : f})`;
    // Headers before the u64 flags (Linux 6.6) name that word `u32 longmode; u32 pad`: same offset.
    const guard = f.startsWith('memory_fault.') ? 'KVM_EXIT_MEMORY_FAULT' : f === 'hypercall.flags' ? 'KVM_EXIT_HYPERCALL_LONG_MODE' : undefined;
    return { name: c, ours: v, c, ...(guard ? { guard } : {}) };
  })),
];

/** A program that prints `name value` for each check the headers can answer. */
function program(checks: readonly Check[]): string {
  const lines = checks.map((c) => {
    const print = `  printf("%s %llu\\n", ${JSON.stringify(c.name)}, (unsigned long long)(${c.c}));`;
    return c.guard === undefined ? print : `#ifdef ${c.guard}\n${print}\n#endif`;
  });
  return [
    '#include <stddef.h>', '#include <stdio.h>', '#include <linux/falloc.h>', '#include <linux/kvm.h>',
    '#include <linux/magic.h>', '#include <linux/kvm_para.h>', '#include <linux/mempolicy.h>', '#include <linux/mman.h>', '#include <linux/un.h>',
    '#include <sys/socket.h>',
    'int main(void) {', ...lines, '  return 0;', '}', '',
  ].join('\n');
}

describe('kernel constants', () => {
  it("equal the values in this system's kernel uapi headers, wherever the headers define them", async (ctx) => {
    const missing = spawnSync('cc', ['-E', '-x', 'c', '-'], { input: '#include <linux/kvm.h>\n', encoding: 'utf8' });
    if (missing.error !== undefined || missing.status !== 0) {
      const reason = `the kernel uapi headers (linux-libc-dev) or cc are not installed: ${missing.error?.message ?? missing.stderr}`;
      if (REQUIRE_TOOLS) throw new Error(reason);
      ctx.skip(reason);
    }
    const r = spawnSync(compileC('uapi-constants', program(CHECKS)), { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const theirs = new Map<string, bigint>();
    for (const line of r.stdout.trim().split('\n')) {
      const at = line.lastIndexOf(' ');
      theirs.set(line.slice(0, at), BigInt(line.slice(at + 1)));
    }
    const checked = CHECKS.filter((c) => theirs.has(c.name));
    const differ = checked.filter((c) => theirs.get(c.name) !== BigInt(c.ours)).map((c) => `${c.name}: ours ${c.ours}, header ${theirs.get(c.name)}`);
    const unknown = CHECKS.filter((c) => !theirs.has(c.name)).map((c) => c.name);
    await ctx.annotate(`${checked.length} checked; not in these headers (newer): ${unknown.join(', ') || 'none'}`);
    expect(differ).toEqual([]);
    // Every unguarded check was answered, and most of the guarded ones.
    expect(CHECKS.filter((c) => c.guard === undefined && !theirs.has(c.name))).toEqual([]);
    expect(checked.length).toBeGreaterThan(CHECKS.length / 2);
  });
});
