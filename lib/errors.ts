/**
 * The library's error types.
 *
 * - {@link KvmError}: a system call failed; shaped like Node's own SystemError.
 * - {@link KvmStateError}: the object is in the wrong state for the call (used after close).
 * - Bad arguments throw the built-in `TypeError` / `RangeError`, naming the argument, before any
 *   system call is made.
 * @module
 */
import { getSystemErrorMap, getSystemErrorName } from 'node:util';

/** Everything a failed system call reports. */
export interface KvmErrorInfo {
  /** The positive errno the kernel returned. */
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
  /** Everything the error was built from (errno positive). */
  readonly info: KvmErrorInfo;

  /** Builds the error from what native code reports; `info.errno` is positive. */
  constructor(info: KvmErrorInfo) {
    const code = errnoName(info.errno);
    const op = info.request ?? info.syscall;
    const hint = info.hint ? `. ${info.hint}` : '';
    super(`${op} failed: ${code} (${info.description}); ${info.syscall}(${info.detail})${hint}`);
    this.name = 'KvmError';
    this.code = code;
    this.errno = -info.errno;
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

/** Codes carried by {@link KvmStateError}. */
export type KvmStateCode = 'ERR_KVM_CLOSED' | 'ERR_KVM_PRIVATE_MEMORY' | 'ERR_KVM_VCPU_RUNNING';

/** A call on an object in the wrong state, e.g. a GuestMemfd used after close(). */
export class KvmStateError extends Error {
  /**
   * 'ERR_KVM_CLOSED' for use after close; 'ERR_KVM_PRIVATE_MEMORY' for host access to memory
   * the kernel keeps private to the guest; 'ERR_KVM_VCPU_RUNNING' for a call on a vCPU whose
   * runAsync() has not settled yet.
   */
  readonly code: KvmStateCode;
  /** Builds the error. */
  constructor(code: KvmStateCode, message: string) {
    super(message);
    this.name = 'KvmStateError';
    this.code = code;
  }
}

/**
 * A KvmError for an errno that native code returned instead of throwing (KVM_RUN).
 * @internal
 */
export function kvmErrorFromErrno(errno: number, syscall: string, request: string, detail: string): KvmError {
  const description = getSystemErrorMap().get(-errno)?.[1] ?? `errno ${errno}`;
  return new KvmError({ errno, syscall, request, detail, description });
}

function errnoName(errno: number): string {
  try {
    return getSystemErrorName(-errno);
  } catch {
    return `E${errno}`;
  }
}
