/**
 * kvm-gmem/guest: running code in a VM. Long-mode setup and boot of a flat image, the guest
 * programs built with the addon, and the ucall protocol a guest uses to talk to its VMM.
 *
 * ```ts
 * import { Kvm } from 'kvm-gmem';
 * import { bootGuest, guestImage, runUntilUcall } from 'kvm-gmem/guest';
 * ```
 * @module
 */
export { X86, setupLongMode, loadImage, setEntry, bootGuest, pageTablesSize } from './boot.js';
export type { LongModeOptions, EntryOptions, BootOptions, ExtraMapping } from './boot.js';
export {
  guestImage, guestImageNames, guestImagePath, UCALL_PORT, CONSOLE_PORT, BENCH_PORT, UcallCmd,
  UCALL_STRUCT_SIZE, UcallOffset, UCALL_MAX_ARGS, UCALL_MSG_LEN,
} from './images.js';
export type { GuestImageName } from './images.js';
export { guestMemory } from './memory.js';
export {
  getUcall, replyUcall, runUntilUcall, runUntilUcallSync, GuestAssertionError, UnexpectedExitError,
} from './ucall.js';
export type { Ucall, UcallLoopOptions } from './ucall.js';
