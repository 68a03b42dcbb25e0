/**
 * Every error the library throws is built here, in TypeScript or by the addon through the
 * factories lib/core/native.ts installs.
 *
 * - {@link KvmError}: a system call failed; shaped like Node's own SystemError. Where the cause
 *   is known, `hint` says it and what to do: {@link explain} is the one place that knows, and the
 *   call sites pass it what they know about the call (the device path, the memslot, the flags).
 * - {@link KvmStateError}: the object is in the wrong state for the call (used after close).
 * - {@link GuestMemoryFaultError}: a guarded access to mapped memory raised SIGBUS.
 * - Bad arguments throw the built-in `TypeError` / `RangeError` with a {@link KvmArgCode} as
 *   `code` (Node's own codes where one fits), naming the argument, before any system call.
 *
 * Every `code` is one of {@link KvmErrorCode}.
 * @module
 */
import { execFileSync } from 'node:child_process';
import { accessSync, constants as fsConstants, existsSync, readFileSync, statSync, type Stats } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { userInfo } from 'node:os';
import { getSystemErrorMap, getSystemErrorName } from 'node:util';
import { GuestMemfdFlag, MemoryAttribute, MemslotFlag, PAGE_SIZE, VmType, decodeBits } from './constants.js';

/** Everything a failed system call reports. */
export interface KvmErrorInfo {
  /** The negated errno, as Node's SystemError has it (-22 for EINVAL). */
  readonly errno: number;
  /** The libc call that failed: 'ioctl', 'fallocate', 'mmap', 'open', 'fstat', 'close'... */
  readonly syscall: string;
  /** The ioctl request name ('KVM_CREATE_GUEST_MEMFD'...), when the call was an ioctl. */
  readonly request?: string;
  /** The arguments of the call, in words (fd, sizes, flags). */
  readonly detail: string;
  /** The C library's text for errno ('Invalid argument'). */
  readonly description: string;
  /** What the user can do about it, when the library knows. */
  readonly hint?: string;
}

/**
 * A system call failed. Shaped like Node's SystemError: `code` is the errno name ('EINVAL'),
 * `errno` is negative as in Node, `syscall` names the libc call; `request` names the ioctl.
 */
export class KvmError extends Error {
  /** The errno name, e.g. 'EINVAL'. */
  readonly code: string;
  /** The negated errno, as Node's SystemError has it (e.g. -22 for EINVAL). */
  readonly errno: number;
  /** The libc call that failed. */
  readonly syscall: string;
  /** The ioctl request name, when the call was an ioctl. */
  readonly request?: string;
  /** The call's arguments, in words. */
  readonly detail: string;
  /**
   * What the user can do about it, when the library knows the cause (also the end of
   * `message`), e.g. "this guest_memfd was created without GuestMemfdFlag.MMAP: ...".
   */
  readonly hint?: string;
  /** Everything the error was built from. */
  readonly info: KvmErrorInfo;

  /** Builds the error from what a failed call reported; see also {@link errnoError}. */
  constructor(info: KvmErrorInfo) {
    const code = errnoName(info.errno);
    const op = info.request ?? info.syscall;
    const hint = info.hint ? `. ${info.hint}` : '';
    super(`${op} failed: ${code} (${info.description}); ${info.syscall}(${info.detail})${hint}`);
    this.name = 'KvmError';
    this.code = code;
    this.errno = info.errno;
    this.syscall = info.syscall;
    if (info.request !== undefined) this.request = info.request;
    this.detail = info.detail;
    if (info.hint !== undefined) this.hint = info.hint;
    this.info = info;
  }

  /** The same error with advice for the user as `hint`, also appended to the message. */
  withHint(hint: string): KvmError {
    return new KvmError({ ...this.info, hint });
  }
}

/** Every code a {@link KvmStateError} carries (not exported from the entry point: use the type). */
export const STATE_CODES = [
  'ERR_KVM_CLOSED', 'ERR_KVM_PRIVATE_MEMORY', 'ERR_KVM_PAST_EOF', 'ERR_KVM_VCPU_RUNNING', 'ERR_KVM_PEER_CLOSED',
  'ERR_KVM_TIMEOUT', 'ERR_KVM_CONTROL_TRUNCATED', 'ERR_KVM_PAYLOAD_TRUNCATED', 'ERR_KVM_BAD_MESSAGE',
  'ERR_KVM_FD_OWNED', 'ERR_KVM_MAPPING_LIMIT', 'ERR_KVM_VCPU_HAS_RUNNER', 'ERR_KVM_BUSY', 'ERR_KVM_THREAD_LIMIT',
  'ERR_KVM_ADDON_INIT',
] as const;

/** Codes carried by {@link KvmStateError}. */
export type KvmStateCode = (typeof STATE_CODES)[number];

/** A call on an object in the wrong state, e.g. a GuestMemfd used after close(). */
export class KvmStateError extends Error {
  /**
   * 'ERR_KVM_CLOSED' for use after close; 'ERR_KVM_PRIVATE_MEMORY' for host access to memory
   * the kernel keeps private to the guest; 'ERR_KVM_PAST_EOF' for an unguarded view of a mapping
   * that extends past the end of its file (`Mapping.bytes` of a `map(..., { beyondEnd: true })`
   * mapping); 'ERR_KVM_VCPU_RUNNING' for a call on a vCPU whose runAsync() has not settled yet.
   *
   * From an FdChannel / FdListener: 'ERR_KVM_PEER_CLOSED' when the other end of the socket is
   * gone (end of file, or ECONNRESET, kept as `cause`); 'ERR_KVM_TIMEOUT' when a receive, accept,
   * connect or send did not complete in its `timeoutMs`; 'ERR_KVM_CONTROL_TRUNCATED' when a
   * message carried more fds than the receiver allowed (`maxFds`; the kernel's MSG_CTRUNC);
   * 'ERR_KVM_PAYLOAD_TRUNCATED' when its payload was longer than MAX_PAYLOAD (MSG_TRUNC);
   * 'ERR_KVM_BAD_MESSAGE' when its payload is not UTF-8 JSON. In the last three cases every fd
   * the message carried has been closed.
   *
   * 'ERR_KVM_FD_OWNED' when an fd number given to be taken over (`GuestMemfd.adopt()`,
   * `FdChannel.fromFd()`) is owned by a live object of this library: adopt a duplicate
   * (`{ dup: true }`) instead.
   *
   * From the addon's own checks: 'ERR_KVM_VCPU_HAS_RUNNER' when a vCPU file already has a runner
   * in this process (two would block each other in KVM_RUN); 'ERR_KVM_BUSY' when a wait is
   * already in flight on an fd watch; 'ERR_KVM_THREAD_LIMIT' when more threads than the addon has
   * slots for are inside guarded accesses at once; 'ERR_KVM_ADDON_INIT' when the addon cannot set
   * itself up in an environment (the `cause` of the load error).
   */
  readonly code: KvmStateCode;
  /** Builds the error; `options.cause` is kept as `cause`, as for any Error. */
  constructor(code: KvmStateCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'KvmStateError';
    this.code = code;
  }
}

/** SIGBUS si_code values (include/uapi/asm-generic/siginfo.h), by name. */
const SIGBUS_CODES: Record<number, string> = {
  1: 'BUS_ADRALN',
  2: 'BUS_ADRERR',
  3: 'BUS_OBJERR',
  4: 'BUS_MCEERR_AR',
  5: 'BUS_MCEERR_AO',
};

/** The name of a SIGBUS si_code ('BUS_ADRERR'), or 'si_code N' for one without a name here. */
export function sigbusCodeName(code: number): string {
  return SIGBUS_CODES[code] ?? `si_code ${code}`;
}

/** Everything a guarded access reports when it faults. */
export interface GuestMemoryFaultInfo {
  /** The operation: 'read', 'write' or 'fill'. */
  readonly operation: string;
  /** Where the request started, as an offset within the mapping. */
  readonly requestOffset: number;
  /** The request's length in bytes. */
  readonly requestLength: number;
  /** The offset of the mapping in its file. */
  readonly mappingOffset: bigint;
  /** Bytes of the request done before the fault. */
  readonly bytesDone: number;
  /** si_addr: the host virtual address of the faulting access. */
  readonly address: bigint;
  /** si_code of the SIGBUS. */
  readonly sigCode: number;
  /**
   * Where the faulting byte was: 'mapping' (the default), or 'buffer' for the caller's own
   * memory, the `target` of a read or the `data` of a write.
   */
  readonly side?: 'mapping' | 'buffer';
}

/**
 * A guarded access to mapped memory (`Mapping.read`, `readInto`, `write`, `fill`) raised SIGBUS:
 * the kernel would not fault the page in for the host. For a guest_memfd that means a page past
 * the end of the file (BUS_ADRERR) or memory private to the guest (a guest_memfd created without
 * INIT_SHARED; also BUS_ADRERR). The bytes before the faulting one were transferred
 * (`bytesDone`), none after it; the process goes on.
 *
 * The faulting byte is normally in the mapping (`side` 'mapping'). When the caller's `target` or
 * `data` is itself memory that faults (a view of some other mapping), `side` is 'buffer':
 * `address` is in that buffer, and `offset`/`fileOffset` still say where in the mapping the copy
 * stopped.
 */
export class GuestMemoryFaultError extends Error {
  /** Always 'ERR_KVM_SIGBUS'. */
  readonly code = 'ERR_KVM_SIGBUS' as const;
  /** Always 'SIGBUS'. */
  readonly signal = 'SIGBUS' as const;
  /** si_code of the signal (2 = BUS_ADRERR). */
  readonly sigCode: number;
  /** The name of sigCode: 'BUS_ADRERR', 'BUS_ADRALN', 'BUS_OBJERR', 'BUS_MCEERR_AR', 'BUS_MCEERR_AO'. */
  readonly sigCodeName: string;
  /** The offset within the mapping of the faulting access. */
  readonly offset: number;
  /** The offset in the file of the faulting access (the mapping's offset + `offset`). */
  readonly fileOffset: bigint;
  /** si_addr: the host virtual address of the faulting access. */
  readonly address: bigint;
  /** How many bytes of the request were done before the fault. */
  readonly bytesDone: number;
  /** Where the faulting byte was: in the mapping, or in the caller's target/data buffer. */
  readonly side: 'mapping' | 'buffer';
  /** Everything the error was built from. */
  readonly info: GuestMemoryFaultInfo;

  /** Builds the error from what a guarded access reported. */
  constructor(info: GuestMemoryFaultInfo) {
    const offset = info.requestOffset + info.bytesDone;
    const fileOffset = info.mappingOffset + BigInt(offset);
    const codeName = sigbusCodeName(info.sigCode);
    const side = info.side ?? 'mapping';
    const hex = (v: number | bigint) => `0x${v.toString(16)}`;
    const request =
      `${info.operation} of ${info.requestLength} bytes at mapping offset ${hex(info.requestOffset)} ` +
      `(file offset ${hex(info.mappingOffset + BigInt(info.requestOffset))}) faulted: SIGBUS (${codeName}) `;
    super(
      side === 'mapping'
        ? request +
            `at mapping offset ${hex(offset)} (file offset ${hex(fileOffset)}, address ${hex(info.address)}) ` +
            `after ${info.bytesDone} bytes; the kernel will not fault this memory in for the host ` +
            '(past the end of the file, or private to the guest)'
        : request +
            `in the ${info.operation === 'read' ? 'target' : 'data'} buffer (address ${hex(info.address)}) ` +
            `after ${info.bytesDone} bytes, at mapping offset ${hex(offset)} (file offset ${hex(fileOffset)}); ` +
            "the kernel will not fault that buffer's memory in for the host",
    );
    this.name = 'GuestMemoryFaultError';
    this.sigCode = info.sigCode;
    this.sigCodeName = codeName;
    this.offset = offset;
    this.fileOffset = fileOffset;
    this.address = info.address;
    this.bytesDone = info.bytesDone;
    this.side = side;
    this.info = info;
  }
}

/**
 * The one builder of a KvmError from a positive errno (what native code and the kernel return).
 * @internal
 */
export function errnoError(
  errno: number, syscall: string, detail: string, request?: string, hint?: string, description = errnoText(errno),
): KvmError {
  return new KvmError({
    errno: -errno, syscall, detail, description, ...(request ? { request } : {}), ...(hint ? { hint } : {}),
  });
}

/** Every code an argument error carries (not exported from the entry point: use the type). */
export const ARG_CODES = [
  'ERR_INVALID_ARG_TYPE', 'ERR_INVALID_ARG_VALUE', 'ERR_OUT_OF_RANGE', 'ERR_MISSING_ARGS', 'ERR_KVM_NOT_GUEST_MEMFD',
  'ERR_KVM_NOT_VM', 'ERR_KVM_NOT_VCPU', 'ERR_KVM_VCPU_ID_MISMATCH', 'ERR_KVM_SIZE_MISMATCH', 'ERR_KVM_FLAGS_MISMATCH', 'ERR_KVM_NOT_SEQPACKET',
] as const;

/**
 * Codes of argument errors (TypeError, RangeError): Node's own where one fits, else the
 * library's for an fd or a value of the wrong kind.
 */
export type KvmArgCode = (typeof ARG_CODES)[number];

/** An errno name, the `code` of a {@link KvmError} ('EINVAL', 'EEXIST'...). */
export type ErrnoCode = `E${string}`;

/**
 * Every `code` an error thrown by this library can carry. 'ERR_KVM_ADDON_MISSING' is the Error
 * that importing the library throws when its native addon cannot be loaded (the message names
 * the command that fixes it).
 */
export type KvmErrorCode = ErrnoCode | KvmStateCode | KvmArgCode | 'ERR_KVM_SIGBUS' | 'ERR_KVM_ADDON_MISSING';

/** A TypeError or RangeError about an argument, with its code. */
export type KvmArgError = (TypeError | RangeError) & { readonly code: KvmArgCode };

/**
 * A TypeError with a code: the argument is of the wrong type or kind.
 * @internal
 */
export function argTypeError(message: string, code: KvmArgCode = 'ERR_INVALID_ARG_TYPE', options?: ErrorOptions): TypeError & { readonly code: KvmArgCode } {
  return Object.assign(new TypeError(message, options), { code });
}

/**
 * A RangeError with a code: the argument's value is out of range or does not match.
 * @internal
 */
export function argRangeError(message: string, code: KvmArgCode = 'ERR_OUT_OF_RANGE'): RangeError & { readonly code: KvmArgCode } {
  return Object.assign(new RangeError(message), { code });
}

/** Which argument error the addon asks for (native/util/errors.h ArgError). */
const NATIVE_ARG: Record<number, [KvmArgCode, boolean]> = {
  0: ['ERR_INVALID_ARG_TYPE', false],
  1: ['ERR_OUT_OF_RANGE', true],
  2: ['ERR_INVALID_ARG_VALUE', false],
  3: ['ERR_MISSING_ARGS', false],
};

/**
 * The argument error the addon asks for by kind (0 type, 1 range, 2 value, 3 missing).
 * @internal
 */
export function nativeArgError(kind: number, message: string): Error {
  const [code, range] = NATIVE_ARG[kind] ?? ['ERR_INVALID_ARG_VALUE', false];
  return range ? argRangeError(message, code) : argTypeError(message, code);
}

// Node builds a new map per getSystemErrorMap() call: read it once, an error path may be short of memory.
let systemErrors: Map<number, [string, string]> | undefined;

function errnoText(errno: number): string {
  systemErrors ??= getSystemErrorMap();
  return systemErrors.get(-errno)?.[1] ?? `errno ${errno}`;
}

function errnoName(errno: number): string {
  try {
    return getSystemErrorName(errno);
  } catch {
    return `E${-errno}`;
  }
}

// ---------------------------------------------------------------------------------------------
// Hints: the known causes of kernel errors, in one place. A call site catches the KvmError of a
// call and passes it here with what it knows about the call (a HintContext); explain() returns
// the error with `hint` set when the cause is one the typings document.

/** A memslot as far as a hint needs it (what `vm.memslots` records). @internal */
export interface SlotFacts {
  readonly slot: number;
  readonly flags: number;
  readonly guestPhysAddr: bigint;
  readonly memorySize: bigint;
  readonly userspaceAddr: bigint;
  readonly guestMemfd?: object | number;
  readonly guestMemfdOffset: bigint;
}

/**
 * What a call site knows about a failed kernel call. Functions are asked only when the error
 * needs them (they may make further ioctls, e.g. KVM_CHECK_EXTENSION).
 * @internal
 */
export type HintContext =
  | { readonly call: 'open-device'; readonly path: string }
  | { readonly call: 'api-version'; readonly path: string }
  | { readonly call: 'create-vm'; readonly type: number; readonly vmTypes: () => number }
  | { readonly call: 'create-vcpu'; readonly id: number; readonly maxVcpuId: () => number }
  | {
      readonly call: 'create-guest-memfd'; readonly size: bigint; readonly flags: bigint;
      readonly supportedFlags: () => bigint; readonly guestMemfdCap: () => number;
    }
  | { readonly call: 'map-guest-memfd'; readonly flags: bigint; readonly offset: bigint }
  | { readonly call: 'fallocate'; readonly punch: boolean; readonly offset: bigint; readonly length: bigint; readonly size: bigint }
  | {
      readonly call: 'set-memslot'; readonly via: 'region' | 'region2'; readonly region: SlotFacts;
      /** The guest_memfd's size, when it was given as a GuestMemfd. */
      readonly guestMemfdSize?: bigint;
      /** The memslots this Vm has set. */
      readonly slots: ReadonlyMap<number, SlotFacts>;
      /** KVM_CAP_NR_MEMSLOTS, KVM_CAP_MULTI_ADDRESS_SPACE and KVM_CAP_GUEST_MEMFD on this VM. */
      readonly caps: () => { memslots: number; addressSpaces: number; guestMemfd: number };
    }
  | { readonly call: 'delete-memslot'; readonly slot: number; readonly slots: ReadonlyMap<number, SlotFacts> }
  | { readonly call: 'madvise'; readonly offset: number; readonly length: number }
  | {
      readonly call: 'set-memory-attributes'; readonly gpa: bigint; readonly size: bigint; readonly attributes: bigint;
      /** KVM_CAP_MEMORY_ATTRIBUTES asked on this VM (the VM's answer, not /dev/kvm's). */
      readonly offered: () => bigint;
    }
  | {
      readonly call: 'enable-cap'; readonly cap: number; readonly capName: string | undefined;
      readonly flags: number; readonly args: readonly bigint[];
      /** KVM_CHECK_EXTENSION of the capability on the same fd. */
      readonly offered: () => number;
    }
  | { readonly call: 'pre-fault-memory'; readonly gpa: bigint; readonly size: bigint; readonly slots: ReadonlyMap<number, SlotFacts> };

/**
 * `e` with the hint for its cause when `e` is a KvmError whose cause is known from `ctx`;
 * anything else is returned unchanged. Never throws: a hint that cannot be worked out is left
 * out. Use as `catch (e) { throw explain(e, ctx) }`.
 * @internal
 */
export function explain(e: unknown, ctx: HintContext): unknown {
  if (!(e instanceof KvmError) || e.hint !== undefined) return e;
  let hint: string | undefined;
  try {
    hint = hintFor(e.code, ctx);
  } catch {
    hint = undefined;
  }
  return hint ? e.withHint(hint) : e;
}

/** The hint for errno `code` from the call `ctx`, if its cause is known. */
function hintFor(code: string, ctx: HintContext): string | undefined {
  // KVM binds a VM to the process (mm) that created it; any other process gets EIO.
  const otherProcess = 'a VM fd used by a process other than the one that created it (received over a socket, ' +
    'or inherited across fork) gets EIO from every VM ioctl: make VM calls in the creating process';
  switch (ctx.call) {
    case 'open-device':
      return deviceHint(diagnoseKvmDevice(ctx.path, code));
    case 'api-version':
      return ['ENOTTY', 'EINVAL', 'EBADF', 'ENODEV', 'ENXIO'].includes(code) ? notKvmDevice(ctx.path) : undefined;
    case 'create-vm': {
      if (code !== 'EINVAL') return undefined;
      const types = ctx.vmTypes();
      const names = types === 0 ? ['DEFAULT'] : decodeBits(types, Object.fromEntries(Object.entries(VmType).map(([n, t]) => [n, 1 << t])));
      return (types === 0 ? ctx.type !== VmType.DEFAULT : !(types & (1 << ctx.type)))
        ? `VM type ${vmTypeLabel(ctx.type)} is not one this host offers (KVM_CAP_VM_TYPES: ${names.join(', ')})`
        : undefined;
    }
    case 'create-vcpu':
      if (code === 'EIO') return otherProcess;
      if (code === 'EEXIST') return `vCPU ${ctx.id} exists in this VM already: each id can be created once`;
      if (code === 'EINVAL') {
        const max = ctx.maxVcpuId();
        return ctx.id >= max ? `vCPU id ${ctx.id} is not below KVM_CAP_MAX_VCPU_ID (${max})` : undefined;
      }
      return undefined;
    case 'create-guest-memfd':
      return createGmemHint(code, ctx, otherProcess);
    case 'map-guest-memfd':
      if (code === 'ENODEV' && !(ctx.flags & GuestMemfdFlag.MMAP)) {
        return 'this guest_memfd was created without GuestMemfdFlag.MMAP, and only such a guest_memfd can be ' +
          'mapped: create it with flags GuestMemfdFlag.MMAP (Linux 6.18+, when KVM_CAP_GUEST_MEMFD_FLAGS has it)';
      }
      return code === 'EINVAL' && !aligned(ctx.offset) ? `offset ${hex(ctx.offset)} is not a multiple of the page size (${PAGE_SIZE})` : undefined;
    case 'fallocate': {
      if (code !== 'EINVAL') return undefined;
      const why: string[] = [];
      if (!aligned(ctx.offset)) why.push(`offset ${hex(ctx.offset)} is not a multiple of the page size (${PAGE_SIZE})`);
      if (!aligned(ctx.length)) why.push(`length ${hex(ctx.length)} is not a multiple of the page size (${PAGE_SIZE})`);
      if (ctx.length === 0n) why.push('the length is 0');
      if (!ctx.punch && ctx.offset + ctx.length > ctx.size) {
        why.push(`[${hex(ctx.offset)}, ${hex(ctx.offset + ctx.length)}) goes past the end of the guest_memfd (size ${hex(ctx.size)})`);
      }
      return why.length ? why.join('; ') : undefined;
    }
    case 'set-memslot':
      if (code === 'EIO') return otherProcess;
      return code === 'EEXIST' ? overlapHint(ctx) : code === 'EINVAL' ? memslotHint(ctx) : undefined;
    case 'delete-memslot':
      if (code === 'EIO') return otherProcess;
      return code === 'EINVAL' && !ctx.slots.has(ctx.slot)
        ? `memslot ${ctx.slot} does not exist in this VM (${slotList(ctx.slots)})`
        : undefined;
    case 'madvise':
      return code === 'EINVAL' && !aligned(BigInt(ctx.offset))
        ? `offset ${hex(ctx.offset)} is not a multiple of the page size (${PAGE_SIZE})`
        : undefined;
    case 'set-memory-attributes':
      return attributesHint(code, ctx, otherProcess);
    case 'enable-cap':
      return enableCapHint(code, ctx, otherProcess);
    case 'pre-fault-memory':
      return preFaultHint(code, ctx);
  }
}

// KVM_SET_MEMORY_ATTRIBUTES refuses attribute bits the VM's own capability lacks, flags, and an
// unaligned, empty or wrapping range, all with EINVAL:
// https://docs.kernel.org/virt/kvm/api.html#kvm-set-memory-attributes
function attributesHint(code: string, ctx: Extract<HintContext, { call: 'set-memory-attributes' }>, otherProcess: string): string | undefined {
  if (code === 'EIO') return otherProcess;
  if (code === 'ENOTTY') return 'this kernel has no KVM_SET_MEMORY_ATTRIBUTES (it needs KVM_GENERIC_MEMORY_ATTRIBUTES, Linux 6.8+)';
  if (code !== 'EINVAL') return undefined;
  const why: string[] = [];
  if (ctx.size === 0n) why.push('the size is 0');
  if (!aligned(ctx.gpa)) why.push(`gpa ${hex(ctx.gpa)} is not a multiple of the page size (${PAGE_SIZE})`);
  if (!aligned(ctx.size)) why.push(`size ${hex(ctx.size)} is not a multiple of the page size (${PAGE_SIZE})`);
  if (ctx.gpa + ctx.size >= 1n << 64n) why.push('gpa + size overflows 64 bits');
  const offered = ctx.offered();
  const refused = ctx.attributes & ~offered;
  if (refused) {
    why.push(`attributes ${decodeBits(refused, MemoryAttribute).join(' | ')} are not offered by this VM ` +
      `(KVM_CAP_MEMORY_ATTRIBUTES on the VM = ${hex(offered)}; PRIVATE needs a VM type with private memory, ` +
      'e.g. VmType.SW_PROTECTED)');
  }
  return why.length ? why.join('; ') : undefined;
}

function enableCapHint(code: string, ctx: Extract<HintContext, { call: 'enable-cap' }>, otherProcess: string): string | undefined {
  if (code === 'EIO') return otherProcess;
  if (code !== 'EINVAL') return undefined;
  const name = ctx.capName ? `Cap.${ctx.capName}` : `capability ${ctx.cap}`;
  if (ctx.flags !== 0) return `flags ${hex(ctx.flags)} are not 0 (x86 takes no KVM_ENABLE_CAP flags)`;
  const offered = ctx.offered();
  if (offered === 0) return `${name} is not offered here (KVM_CHECK_EXTENSION says 0)`;
  const asked = ctx.args[0] ?? 0n;
  return `${name} offers ${hex(offered)} (KVM_CHECK_EXTENSION); asked ${hex(asked)}` +
    (asked & ~BigInt(offered) ? `, whose bits ${hex(asked & ~BigInt(offered))} it lacks` : '');
}

// The errnos api.rst documents for KVM_PRE_FAULT_MEMORY:
// https://docs.kernel.org/virt/kvm/api.html#kvm-pre-fault-memory
function preFaultHint(code: string, ctx: Extract<HintContext, { call: 'pre-fault-memory' }>): string | undefined {
  switch (code) {
    case 'ENOENT':
      return `gpa ${hex(ctx.gpa)} is not in any memslot (${slotList(ctx.slots)})`;
    case 'EOPNOTSUPP':
      return 'KVM maps guest memory with shadow paging here (or the vCPU is in a nested guest): pre-faulting needs ' +
        'two-dimensional paging (EPT/NPT; KVM_CAP_PRE_FAULT_MEMORY is 0 then)';
    case 'ENOTTY':
      return 'this kernel has no KVM_PRE_FAULT_MEMORY (Linux 6.11+)';
    case 'EFAULT':
      return `the range at ${hex(ctx.gpa)} is private (KVM_SET_MEMORY_ATTRIBUTES) but its memslot has no guest_memfd, ` +
        'or its guest_memfd page cannot be had';
    case 'EINVAL': {
      const why: string[] = [];
      if (ctx.size === 0n) why.push('the size is 0');
      if (!aligned(ctx.gpa)) why.push(`gpa ${hex(ctx.gpa)} is not a multiple of the page size (${PAGE_SIZE})`);
      if (!aligned(ctx.size)) why.push(`size ${hex(ctx.size)} is not a multiple of the page size (${PAGE_SIZE})`);
      if (ctx.gpa + ctx.size >= 1n << 64n) why.push('gpa + size overflows 64 bits');
      return why.length ? why.join('; ') : undefined;
    }
    default:
      return undefined;
  }
}

const hex = (v: number | bigint) => `0x${v.toString(16)}`;
const aligned = (v: bigint) => v % BigInt(PAGE_SIZE) === 0n;
const vmTypeLabel = (t: number) => Object.entries(VmType).find(([, v]) => v === t)?.[0] ?? String(t);
const range = (s: SlotFacts) => `[${hex(s.guestPhysAddr)}, ${hex(s.guestPhysAddr + s.memorySize)})`;
const slotList = (slots: ReadonlyMap<number, SlotFacts>) =>
  slots.size === 0 ? 'it has none' : `it has ${[...slots.keys()].sort((a, b) => a - b).join(', ')}`;

function createGmemHint(code: string, ctx: Extract<HintContext, { call: 'create-guest-memfd' }>, otherProcess: string): string | undefined {
  if (code === 'EIO') return otherProcess;
  if (code === 'ENOTTY') return 'this kernel has no KVM_CREATE_GUEST_MEMFD: guest_memfd needs Linux 6.8 or newer';
  if (code !== 'EINVAL') return undefined;
  const why: string[] = [];
  if (ctx.size === 0n) why.push('the size is 0');
  else if (!aligned(ctx.size)) why.push(`the size ${hex(ctx.size)} is not a multiple of the page size (${PAGE_SIZE})`);
  if (ctx.guestMemfdCap() === 0) why.push('this VM type does not support guest_memfd (KVM_CAP_GUEST_MEMFD is 0 on it)');
  else {
    const offered = ctx.supportedFlags();
    const refused = ctx.flags & ~offered;
    if (refused) {
      why.push(`flags ${decodeBits(refused, GuestMemfdFlag).join(' | ')} are not offered by this VM ` +
        `(KVM_CAP_GUEST_MEMFD_FLAGS = ${hex(offered)}${offered ? `: ${decodeBits(offered, GuestMemfdFlag).join(' | ')}` : ''})`);
    }
  }
  return why.length ? why.join('; ') : undefined;
}

function overlapHint(ctx: Extract<HintContext, { call: 'set-memslot' }>): string {
  const r = ctx.region;
  const as = r.slot >>> 16;
  for (const s of ctx.slots.values()) {
    if (s.slot === r.slot || s.slot >>> 16 !== as) continue;
    if (r.guestPhysAddr < s.guestPhysAddr + s.memorySize && s.guestPhysAddr < r.guestPhysAddr + r.memorySize) {
      return `guest range ${range(r)} overlaps memslot ${s.slot} ${range(s)}: delete that slot first, or choose another guestPhysAddr`;
    }
  }
  // Since Linux 7.2 a guest_memfd range bound twice is EEXIST too (EINVAL before).
  return boundTwice(ctx) ?? `guest range ${range(r)} overlaps another memslot of this VM (one this Vm object did not set)`;
}

/** Why a GUEST_MEMFD slot's file range is taken: another slot of this Vm binds part of it. */
function boundTwice(ctx: Extract<HintContext, { call: 'set-memslot' }>): string | undefined {
  const r = ctx.region;
  if (!(r.flags & MemslotFlag.GUEST_MEMFD) || r.guestMemfd === undefined) return undefined;
  for (const s of ctx.slots.values()) {
    if (s.slot === r.slot || s.guestMemfd !== r.guestMemfd) continue;
    if (r.guestMemfdOffset < s.guestMemfdOffset + s.memorySize && s.guestMemfdOffset < r.guestMemfdOffset + r.memorySize) {
      return `the guest_memfd range [${hex(r.guestMemfdOffset)}, ${hex(r.guestMemfdOffset + r.memorySize)}) is already ` +
        `bound to memslot ${s.slot} [${hex(s.guestMemfdOffset)}, ${hex(s.guestMemfdOffset + s.memorySize)}): a guest_memfd page backs at most one memslot`;
    }
  }
  return undefined;
}

function memslotHint(ctx: Extract<HintContext, { call: 'set-memslot' }>): string | undefined {
  const r = ctx.region;
  const G = MemslotFlag.GUEST_MEMFD;
  const gmem = (r.flags & G) !== 0;
  const why: string[] = [];
  if (ctx.via === 'region' && gmem) {
    why.push('the legacy KVM_SET_USER_MEMORY_REGION cannot carry a guest_memfd: use setUserMemoryRegion2()');
  }
  const unknown = r.flags & ~(MemslotFlag.LOG_DIRTY_PAGES | MemslotFlag.READONLY | G);
  if (unknown) why.push(`flags ${hex(unknown)} are not memslot flags KVM knows`);
  if (gmem && r.flags & MemslotFlag.READONLY) why.push('a GUEST_MEMFD memslot cannot be READONLY');
  if (gmem && r.flags & MemslotFlag.LOG_DIRTY_PAGES) why.push('a GUEST_MEMFD memslot cannot have LOG_DIRTY_PAGES');
  const fields: [string, bigint][] = [['guestPhysAddr', r.guestPhysAddr], ['memorySize', r.memorySize], ['userspaceAddr', r.userspaceAddr]];
  if (gmem) fields.push(['guestMemfdOffset', r.guestMemfdOffset]);
  for (const [name, v] of fields) if (!aligned(v)) why.push(`${name} ${hex(v)} is not a multiple of the page size (${PAGE_SIZE})`);
  if (gmem && ctx.guestMemfdSize !== undefined && r.guestMemfdOffset + r.memorySize > ctx.guestMemfdSize) {
    why.push(`the guest_memfd range [${hex(r.guestMemfdOffset)}, ${hex(r.guestMemfdOffset + r.memorySize)}) goes past ` +
      `the end of the file (size ${hex(ctx.guestMemfdSize)})`);
  }
  const old = ctx.slots.get(r.slot);
  if (old) {
    if (gmem || old.flags & G) why.push(`memslot ${r.slot} exists and is a guest_memfd slot: such a slot cannot be changed, only deleted`);
    else {
      if (old.memorySize !== r.memorySize) why.push(`memslot ${r.slot} exists with memorySize ${hex(old.memorySize)}: a slot's size cannot change (delete it first)`);
      if (old.userspaceAddr !== r.userspaceAddr) why.push(`memslot ${r.slot} exists with userspaceAddr ${hex(old.userspaceAddr)}: its host address cannot change (delete it first)`);
      if ((old.flags ^ r.flags) & MemslotFlag.READONLY) why.push(`memslot ${r.slot} exists: its READONLY flag cannot change (delete it first)`);
    }
  }
  const bound = boundTwice(ctx);
  if (bound) why.push(bound);
  if (why.length === 0) {
    const caps = ctx.caps();
    if ((r.slot & 0xffff) >= caps.memslots) why.push(`slot id ${r.slot & 0xffff} is not below KVM_CAP_NR_MEMSLOTS (${caps.memslots})`);
    if (r.slot >>> 16 >= Math.max(caps.addressSpaces, 1)) {
      why.push(`address space ${r.slot >>> 16} (slot bits 16+) is not below KVM_CAP_MULTI_ADDRESS_SPACE (${Math.max(caps.addressSpaces, 1)})`);
    }
    if (gmem && caps.guestMemfd === 0) {
      why.push('this VM type does not take GUEST_MEMFD memslots (KVM_CAP_GUEST_MEMFD is 0 on it; before Linux 6.18 only VM types with private memory did)');
    }
    if (r.memorySize === 0n) why.push('memorySize 0 deletes a slot, and this one does not exist (use deleteMemoryRegion())');
  }
  if (why.length === 0 && gmem && typeof r.guestMemfd === 'number') {
    why.push(`fd ${r.guestMemfd} may not be a guest_memfd of this VM (KVM refuses another VM's guest_memfd, and any other file)`);
  }
  return why.length ? why.join('; ') : undefined;
}

// --- The KVM device ---------------------------------------------------------------------------

/**
 * The device number of /dev/kvm: misc major 10, minor 232
 * (https://docs.kernel.org/admin-guide/devices.html).
 */
const KVM_DEVNO = '10:232';

/** What the host says about a KVM device path and the KVM modules. */
export interface KvmDeviceFacts {
  /** The path asked. */
  path: string;
  /** Whether something exists at the path (symlinks followed). */
  exists: boolean;
  /** What is at the path, when something is. */
  node?: {
    /** 'char device', 'file', 'directory' or 'other'. */
    kind: string;
    /** major:minor of a device node (10:232 for KVM). */
    rdev?: string;
    /** Owner uid and its name, if it has one. */
    uid: number;
    user?: string;
    /** Group gid and its name (from /etc/group, else getent), if it has one. */
    gid: number;
    group?: string;
    /** Permission bits, octal ('0660'). */
    mode: string;
  };
  /** /sys/class/misc/kvm/dev: the device number the kernel registered for KVM, if it did. */
  registered?: string;
  /** Whether /sys/module/kvm exists (KVM loaded, or built in). */
  kvmModule: boolean;
  /** vendor_id from /proc/cpuinfo ('GenuineIntel', 'AuthenticAMD', ...). */
  cpuVendor?: string;
  /** The KVM module for that vendor, if it has one. */
  vendorModule?: 'kvm_intel' | 'kvm_amd';
  /** Whether /sys/module/{vendorModule} exists. */
  vendorModuleLoaded: boolean;
  /** The vendor's virtualization flag in /proc/cpuinfo ('vmx', 'svm') and whether it is there. */
  cpuFlag?: { name: 'vmx' | 'svm'; present: boolean };
  /** Other KVM modules loaded (e.g. kvm_pvm). */
  otherModules: string[];
  /** This process: effective uid and user name, and its relation to the node's group. */
  process: {
    uid: number;
    user?: string;
    /** Whether the process has the node's group (effective or supplementary). */
    inGroup?: boolean;
    /** Whether /etc/group (or getent) lists the user in the node's group, or it is the user's primary group. */
    listedInGroup?: boolean;
  };
}

/** Why a KVM device path could not be opened, and what to do. */
export interface KvmDeviceDiagnosis {
  /** The errno name of the failed open. */
  code: string;
  /** What is wrong, in one sentence. */
  summary: string;
  /** The fix, when there is one to suggest. */
  fix?: string;
  /** The facts both were made from. */
  facts: KvmDeviceFacts;
}

/**
 * Explains a failed open of a KVM device path: reads the path's node (stat), the kernel's KVM
 * device registration (/sys/class/misc/kvm), the modules (/sys/module/kvm, kvm_intel, kvm_amd)
 * and the CPU's vendor and virtualization flag (/proc/cpuinfo), the node's owner and group
 * (/etc/passwd, /etc/group, getent) and this process's groups. Never throws.
 * @param code the errno name of the failed open ('ENOENT', 'EACCES', ...)
 */
export function diagnoseKvmDevice(path: string, code: string): KvmDeviceDiagnosis {
  const facts = deviceFacts(path);
  const d = (summary: string, fix?: string): KvmDeviceDiagnosis => ({ code, summary, facts, ...(fix ? { fix } : {}) });
  const n = facts.node;
  const who = facts.process.user ?? `uid ${facts.process.uid}`;
  const owner = n ? `${n.user ?? n.uid}:${n.group ?? n.gid}, mode ${n.mode}` : '';
  switch (code) {
    case 'ENOENT':
      if (path !== '/dev/kvm' && existsSync('/dev/kvm')) return d(`there is no ${path} (the KVM device of this host is /dev/kvm)`);
      if (facts.registered) {
        return d(`the kernel has a KVM device (char ${facts.registered}) but there is no ${path}`,
          `in a container, pass the device in (e.g. docker run --device /dev/kvm); on the host, create the node: ` +
          `sudo mknod -m 0660 ${path} c ${facts.registered.replace(':', ' ')}`);
      }
      return d(`${path} does not exist and this kernel has no KVM device: ${moduleState(facts)}`, moduleFix(facts));
    case 'ENXIO':
    case 'ENODEV':
      if (n?.rdev !== undefined && n.rdev !== KVM_DEVNO) {
        return d(`${path} is char device ${n.rdev}, not the KVM device (char ${KVM_DEVNO}, normally /dev/kvm)`);
      }
      return d(`${path} is the KVM device node but no KVM module answers it: ${moduleState(facts)}`, moduleFix(facts));
    case 'EPERM':
      return d(`a device cgroup, seccomp filter or security module (SELinux, AppArmor) refuses ${path} to this process`,
        'in a container, allow the device (e.g. docker run --device /dev/kvm)');
    case 'EACCES':
      return n ? accessDiagnosis(path, facts, owner, who, d) : searchDiagnosis(path, who, d);
    default:
      return d(n ? `${path} is a ${n.kind} (${owner}); the error is neither a missing device nor a permission problem`
        : `the error is neither a missing device nor a permission problem`);
  }
}

/** The hint text of a device diagnosis. */
function deviceHint(d: KvmDeviceDiagnosis): string {
  return d.fix ? `${d.summary}. To fix: ${d.fix}` : d.summary;
}

function notKvmDevice(path: string): string {
  const n = deviceFacts(path).node;
  const what = n ? `a ${n.kind}${n.rdev ? ` ${n.rdev}` : ''}` : 'something else';
  return `${path} is not the KVM device: it is ${what} (the KVM device is char ${KVM_DEVNO}, normally /dev/kvm)`;
}

function accessDiagnosis(
  path: string, f: KvmDeviceFacts, owner: string, who: string, d: (s: string, fix?: string) => KvmDeviceDiagnosis,
): KvmDeviceDiagnosis {
  const n = f.node!;
  const mode = parseInt(n.mode, 8);
  const group = n.group ?? `gid ${n.gid}`;
  const groupArg = n.group ?? String(n.gid);
  const uid = f.process.uid;
  const grants = uid === 0 || (uid === n.uid && (mode & 0o600) === 0o600) || (f.process.inGroup === true && (mode & 0o060) === 0o060) ||
    (mode & 0o006) === 0o006;
  if (grants) {
    return d(`${path} (${owner}) grants ${who} read-write access${uid === 0 ? ' (root)' : ''}, yet the open is refused`,
      `look for a nodev mount (findmnt -T ${path}), an ACL (getfacl ${path}) or a security module denial (the audit log)`);
  }
  if (uid === n.uid) {
    return d(`${path} is ${owner}: its owner ${who} may not read and write it`, `chmod u+rw ${path}`);
  }
  if ((mode & 0o060) !== 0o060) {
    // No group may read and write the node: give it to a group, then put the user in that group.
    const target = n.gid !== 0 ? groupArg : 'kvm';
    const steps: string[] = [];
    if (n.gid === 0 && groupEntry('kvm') === undefined) steps.push('sudo groupadd --system kvm');
    if (n.gid === 0) steps.push(`sudo chgrp kvm ${path}`);
    steps.push(`sudo chmod 0660 ${path}`);
    const targetGid = n.gid !== 0 ? n.gid : groupEntry('kvm')?.gid;
    const member = targetGid !== undefined && ((process.getgroups?.() ?? []).includes(targetGid) || process.getegid?.() === targetGid);
    const join = member ? '' : `, then add ${who} to ${target} (sudo usermod -aG ${target} ${f.process.user ?? uid}) and log in again`;
    return d(`${path} is ${owner}: its group may not read and write it, and ${who} is not its owner`,
      `${steps.join(' && ')}${join}${n.rdev === KVM_DEVNO ? `; a udev rule keeps it so: KERNEL=="kvm", GROUP="${target}", MODE="0660"` : ''}`);
  }
  if (f.process.listedInGroup) {
    return d(`${path} is ${owner}; ${who} is listed in group ${group} but this process does not have it (the login session predates the change)`,
      `log in again, or run the command under newgrp ${groupArg}`);
  }
  return d(`${path} is ${owner} and ${who} is not in group ${group}`,
    `sudo usermod -aG ${groupArg} ${f.process.user ?? uid}, then log in again (or newgrp ${groupArg})`);
}

/** EACCES with nothing to stat: a directory on the way that this process may not search. */
function searchDiagnosis(path: string, who: string, d: (s: string, fix?: string) => KvmDeviceDiagnosis): KvmDeviceDiagnosis {
  const dirs: string[] = [];
  for (let p = dirname(resolve(path)); ; p = dirname(p)) {
    dirs.unshift(p);
    if (p === dirname(p)) break;
  }
  for (const dir of dirs) {
    try {
      accessSync(dir, fsConstants.X_OK);
    } catch {
      let owner = '';
      try {
        const st = statSync(dir);
        owner = ` (${passwdName(st.uid) ?? st.uid}:${groupEntry(st.gid)?.name ?? st.gid}, mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')})`;
      } catch {
        owner = '';
      }
      return d(`${who} may not search the directory ${dir}${owner} on the way to ${path}`);
    }
  }
  return d(`permission denied on the way to ${path}`);
}

function moduleState(f: KvmDeviceFacts): string {
  const parts = [`kvm is ${f.kvmModule ? 'loaded' : 'not loaded'} (/sys/module/kvm ${f.kvmModule ? 'exists' : 'is absent'})`];
  if (f.vendorModule) parts.push(`${f.vendorModule} (this CPU is ${f.cpuVendor ?? 'of unknown vendor'}) is ${f.vendorModuleLoaded ? 'loaded' : 'not loaded'}`);
  else parts.push(`this CPU (${f.cpuVendor ?? 'vendor unknown'}) has no kvm_intel or kvm_amd`);
  if (f.cpuFlag && !f.cpuFlag.present) parts.push(`the CPU shows no ${f.cpuFlag.name} flag in /proc/cpuinfo`);
  if (f.otherModules.length) parts.push(`${f.otherModules.join(', ')} ${f.otherModules.length > 1 ? 'are' : 'is'} loaded`);
  return parts.join('; ');
}

function moduleFix(f: KvmDeviceFacts): string | undefined {
  if (!f.vendorModule) return undefined;
  const ext = f.vendorModule === 'kvm_intel' ? 'VT-x' : 'AMD-V (SVM)';
  if (f.cpuFlag && !f.cpuFlag.present) {
    return `enable ${ext} in the firmware setup (or nested virtualization, if this system is itself a VM), then sudo modprobe ${f.vendorModule}`;
  }
  if (!f.vendorModuleLoaded) return `sudo modprobe ${f.vendorModule}`;
  return `${f.vendorModule} is loaded but registered no device: see the kernel log (sudo dmesg | grep -i kvm)`;
}

function deviceFacts(path: string): KvmDeviceFacts {
  const read = (p: string) => {
    try {
      return readFileSync(p, 'utf8');
    } catch {
      return undefined;
    }
  };
  let st: Stats | undefined;
  try {
    st = statSync(path);
  } catch {
    st = undefined;
  }
  const cpuinfo = read('/proc/cpuinfo') ?? '';
  const cpuVendor = /^vendor_id\s*:\s*(\S+)/m.exec(cpuinfo)?.[1];
  const vendorModule = cpuVendor === 'GenuineIntel' ? 'kvm_intel' : cpuVendor === 'AuthenticAMD' || cpuVendor === 'HygonGenuine' ? 'kvm_amd' : undefined;
  const flags = new Set((/^flags\s*:(.*)$/m.exec(cpuinfo)?.[1] ?? '').trim().split(/\s+/));
  const flagName = vendorModule === 'kvm_intel' ? 'vmx' : vendorModule === 'kvm_amd' ? 'svm' : undefined;
  const uid = process.geteuid?.() ?? -1;
  let user: string | undefined;
  try {
    user = userInfo().username;
  } catch {
    user = undefined;
  }
  const facts: KvmDeviceFacts = {
    path, exists: st !== undefined, kvmModule: existsSync('/sys/module/kvm'), vendorModuleLoaded: vendorModule !== undefined && existsSync(`/sys/module/${vendorModule}`),
    otherModules: ['kvm_pvm'].filter((m) => existsSync(`/sys/module/${m}`)), process: { uid, ...(user !== undefined ? { user } : {}) },
  };
  const registered = read('/sys/class/misc/kvm/dev')?.trim();
  if (registered) facts.registered = registered;
  if (cpuVendor) facts.cpuVendor = cpuVendor;
  if (vendorModule) facts.vendorModule = vendorModule;
  if (flagName && cpuinfo) facts.cpuFlag = { name: flagName, present: flags.has(flagName) };
  if (st) {
    const kind = st.isCharacterDevice() ? 'char device' : st.isFile() ? 'file' : st.isDirectory() ? 'directory' : 'other';
    const ownerName = passwdName(st.uid);
    const g = groupEntry(st.gid);
    facts.node = {
      kind, uid: st.uid, gid: st.gid, mode: (st.mode & 0o7777).toString(8).padStart(4, '0'),
      ...(st.isCharacterDevice() ? { rdev: `${Math.floor(st.rdev / 256) & 0xfff}:${(st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00)}` } : {}),
      ...(ownerName !== undefined ? { user: ownerName } : {}), ...(g ? { group: g.name } : {}),
    };
    const groups = process.getgroups?.() ?? [];
    facts.process.inGroup = groups.includes(st.gid) || process.getegid?.() === st.gid;
    facts.process.listedInGroup = user !== undefined && ((g?.members.includes(user) ?? false) || passwdGid(user) === st.gid);
  }
  return facts;
}

/** A group by gid or name, from /etc/group, else from getent (NSS: LDAP, sssd, systemd). */
function groupEntry(key: number | string): { name: string; gid: number; members: string[] } | undefined {
  const parse = (line: string) => {
    const [name, , gid, members] = line.split(':');
    return name !== undefined && gid !== undefined ? { name, gid: Number(gid), members: (members ?? '').split(',').filter(Boolean) } : undefined;
  };
  const fromFile = entries('/etc/group').map(parse).find((g) => g !== undefined && (typeof key === 'number' ? g.gid === key : g.name === key));
  return fromFile ?? getent('group', String(key)).map(parse)[0];
}

function passwdName(uid: number): string | undefined {
  const line = entries('/etc/passwd').find((l) => l.split(':')[2] === String(uid)) ?? getent('passwd', String(uid))[0];
  return line?.split(':')[0];
}

function passwdGid(user: string): number | undefined {
  const line = entries('/etc/passwd').find((l) => l.split(':')[0] === user) ?? getent('passwd', user)[0];
  const gid = line?.split(':')[3];
  return gid !== undefined ? Number(gid) : undefined;
}

function entries(file: string): string[] {
  try {
    return readFileSync(file, 'utf8').split('\n').filter((l) => l !== '' && !l.startsWith('#'));
  } catch {
    return [];
  }
}

function getent(db: string, key: string): string[] {
  try {
    return execFileSync('getent', [db, key], { encoding: 'utf8', timeout: 5000, stdio: ['ignore', 'pipe', 'ignore'] })
      .split('\n').filter((l) => l !== '');
  } catch {
    return [];
  }
}

/**
 * The addon loader's error (lib/core/native.ts): a one-line message naming the command that fixes
 * it, code 'ERR_KVM_ADDON_MISSING', and the loader's own error as `cause`.
 * @internal
 */
export function addonError(message: string, cause: unknown): Error & { code: 'ERR_KVM_ADDON_MISSING' } {
  return Object.assign(new Error(message, { cause }), { code: 'ERR_KVM_ADDON_MISSING' as const });
}
