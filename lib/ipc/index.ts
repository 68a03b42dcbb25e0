/**
 * kvm-gmem/ipc: passing guest_memfd, VM, vCPU and any other fd between processes over a Unix
 * SOCK_SEQPACKET socket with a JSON payload, the way a VMM hands its guest to its successor
 * (https://lore.kernel.org/kvm/ for the fd-passing discussion this grew from).
 *
 * ```ts
 * import { FdChannel } from 'kvm-gmem/ipc';
 * const [a, b] = FdChannel.pair();
 * ```
 * @module
 */
export { FdChannel, FdListener, MAX_FDS, MAX_PAYLOAD, MAX_PAYLOAD_DEPTH } from './channel.js';
export type {
  SendItem, SendOptions, ReceiveOptions, ConnectOptions, ListenOptions, AcceptOptions, FromFdOptions, ReceivedFd, ReceivedMessage,
} from './channel.js';
