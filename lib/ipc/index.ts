/**
 * kvm-gmem/ipc: passing guest_memfd, VM, vCPU and any other fd between processes over a Unix
 * SOCK_SEQPACKET socket with a JSON payload, the way a VMM hands its guest to its successor.
 *
 * ```ts
 * import { FdChannel } from 'kvm-gmem/ipc';
 * const [a, b] = FdChannel.pair();
 * ```
 * @module
 */
export { FdChannel } from './channel.js';
export type { SendItem, SendOptions, ReceiveOptions, ConnectOptions, FromFdOptions } from './channel.js';
export { FdListener } from './listener.js';
export type { ListenOptions, AcceptOptions } from './listener.js';
export type { ReceivedFd, ReceivedMessage } from './message.js';
export { MAX_FDS, MAX_PAYLOAD, MAX_PAYLOAD_DEPTH, DEFAULT_SEND_TIMEOUT_MS } from './wire.js';
