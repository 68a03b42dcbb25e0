/**
 * Every error the library throws is built here, in TypeScript or by the addon through the
 * factories lib/core/native.ts installs.
 *
 * - {@link KvmError}: a system call failed; shaped like Node's own SystemError.
 * - {@link KvmStateError}: the object is in the wrong state for the call (used after close).
 * - {@link GuestMemoryFaultError}: a guarded access to mapped memory raised SIGBUS.
 * - Bad arguments throw the built-in `TypeError` / `RangeError` with a {@link KvmArgCode} as
 *   `code` (Node's own codes where one fits), naming the argument, before any system call.
 *
 * Every `code` is one of {@link KvmErrorCode}.
 * @module
 */
import { getSystemErrorMap, getSystemErrorName } from 'node:util';

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
    this.info = info;
  }

  /** The same error with advice for the user appended to the message. */
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

/** Every `code` an error thrown by this library can carry. */
export type KvmErrorCode = ErrnoCode | KvmStateCode | KvmArgCode | 'ERR_KVM_SIGBUS';

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
