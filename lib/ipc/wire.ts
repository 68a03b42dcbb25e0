/**
 * The wire format of an FdChannel message: exactly the UTF-8 JSON text of the payload plus up to
 * {@link MAX_FDS} fds in one SCM_RIGHTS control message, on an AF_UNIX SOCK_SEQPACKET socket.
 * A C program can speak it too.
 * @module
 */
import { argRangeError, argTypeError, KvmStateError } from '../core/errors.js';
import { native } from '../core/native.js';
import { describe } from '../core/numbers.js';

/** The most fds one message may carry, on send and (by default) on receive. */
export const MAX_FDS = 64;

/** The largest payload, in bytes of UTF-8 JSON text (64 KiB; the addon enforces it too). */
export const MAX_PAYLOAD: number = native.limits.maxPayload;

/** How long `send()` waits, by default, for room in the peer's receive queue (milliseconds). */
export const DEFAULT_SEND_TIMEOUT_MS = 10_000;

/** The kernel's own limit on fds in one SCM_RIGHTS message (SCM_MAX_FD); `maxFds` may go up to it. */
export const SCM_MAX_FD = native.limits.maxFdsPerMessage;
export const AF_UNIX = 1;
export const SOCK_SEQPACKET = 5;
export const MSG_CTRUNC = 0x8;
export const MSG_TRUNC = 0x20;
/** The longest socket path (sun_path is 108 bytes with its NUL). */
export const MAX_PATH_BYTES = native.limits.maxSocketPathBytes;

/** How deep a received payload may nest: deeper ones would overflow the stack of code that walks them. */
export const MAX_PAYLOAD_DEPTH = 1000;

// Walks the parsed payload without recursion, so a hostile nesting cannot overflow this stack.
export function checkDepth(payload: unknown): void {
  const stack: [unknown, number][] = [[payload, 0]];
  while (stack.length > 0) {
    const [v, d] = stack.pop()!;
    if (typeof v !== 'object' || v === null) continue;
    if (d >= MAX_PAYLOAD_DEPTH) {
      throw new KvmStateError('ERR_KVM_BAD_MESSAGE', `FdChannel.receive: the payload nests deeper than MAX_PAYLOAD_DEPTH (${MAX_PAYLOAD_DEPTH}); the fds it carried were closed`);
    }
    for (const x of Object.values(v)) stack.push([x, d + 1]);
  }
}

const encoder = new TextEncoder();

export function encodePayload(payload: unknown): Uint8Array {
  let text: string | undefined;
  try {
    text = JSON.stringify(payload === undefined ? null : payload);
  } catch (e) {
    throw argTypeError(`The "payload" argument cannot be encoded as JSON: ${(e as Error).message}`, 'ERR_INVALID_ARG_VALUE', { cause: e });
  }
  if (text === undefined) throw argTypeError(`The "payload" argument cannot be encoded as JSON; received ${describe(payload)}`);
  const bytes = encoder.encode(text);
  if (bytes.length > MAX_PAYLOAD) {
    throw argRangeError(`The "payload" argument must encode to at most ${MAX_PAYLOAD} bytes of JSON (MAX_PAYLOAD); it takes ${bytes.length}`);
  }
  return bytes;
}

const decoder = new TextDecoder('utf-8', { fatal: true });

/** The payload of a received message; throws if it is not UTF-8 JSON or nests too deep. */
export function decodePayload(bytes: Uint8Array): unknown {
  const payload: unknown = JSON.parse(decoder.decode(bytes));
  checkDepth(payload);
  return payload;
}
