/**
 * Guest programs: small x86-64 programs for the library's vCPUs, with the guest -> host call
 * convention ("ucall") they use.
 *
 * The programs are GNU assembler sources in guest/<name>.S, assembled by the build
 * (node-gyp and cmake-js alike, through guest/mkimage.sh) into flat binary images beside
 * the addon: `<addonDir>/guest/<name>.bin`. An image is raw code and data: the entry point is at
 * offset 0, it is position-independent (it reaches its own data RIP-relative only) and it may be
 * loaded at any 16-byte-aligned guest address below 4 GiB.
 *
 * What every program expects from the host: 64-bit long mode with identity-mapped page tables
 * (guest virtual = guest physical), a 64-bit code segment and flat data segments, interrupts off,
 * no IDT, RIP at the image's load address, RSP at a usable stack (programs that make ucalls push
 * up to 32 bytes), the image's memory writable (programs write their ucall struct inside their own
 * image), and the arguments in RDI, RSI, RDX, RCX (the System V order). A program's struct ucall
 * is inside its image, so vCPUs running at once need one loaded copy each (rendezvous excepted).
 *
 * The ucall convention mirrors the kernel KVM selftests' ucall: the guest fills a struct ucall
 * ({@link UCALL_STRUCT_SIZE} bytes, layout in {@link UcallOffset}) in its own memory and executes
 * `out %eax, %dx` with DX = {@link UCALL_PORT} and EAX = the struct's guest address. The host
 * reads the struct, may write a reply into its args, and resumes the vCPU. The numbers here are
 * the ones in guest/ucall.h; a test checks that they agree.
 * @module
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { addonDir } from '../core/native.js';
import { argTypeError, errnoError } from '../core/errors.js';

/**
 * The guest programs built with the addon, one per guest/<name>.S. All arguments are
 * register values set by the host before the first KVM_RUN; "hlt forever" means the program
 * halts (a KVM_EXIT_HLT when the VM has no in-kernel irqchip) and halts again if resumed.
 *
 * - `'hello'`: RDI = address of a buffer, RSI = its length in bytes (0: no buffer). Writes
 *   "Hello from guest code on guest_memfd memory!\n" to {@link CONSOLE_PORT} one `outb` per
 *   byte; sums the RSI bytes at RDI (u64 sum of unsigned bytes) and makes a
 *   {@link UcallCmd.SYNC} with args[0] = the sum; writes "bye\n" to the console; then
 *   {@link UcallCmd.DONE} and hlt forever.
 * - `'port_loop'`: RDI = N. N times `outb %al, $0x10` ({@link BENCH_PORT}, AL = low byte of the
 *   count still to go: N, N-1, ..., 1), then hlt forever; N = 0 halts at once. No ucall, no stack:
 *   the exit benchmark, run by the library and by the C baseline alike.
 * - `'memtest'`: RDI = start address, RSI = length in bytes, RDX = expected byte, RCX = fill
 *   byte (low 8 bits of each used). Checks that every byte of [start, start + length) equals the
 *   expected byte; on the first that does not, a {@link UcallCmd.ABORT} with msg
 *   "memtest: byte mismatch", args = (address, actual byte, expected byte), then hlt forever.
 *   Otherwise fills the range with the fill byte and makes a {@link UcallCmd.SYNC} with nargs 4,
 *   args = (start, length, expected, fill) (bytes reduced to 8 bits). Then reads the reply: if
 *   the host set args[4] != 0, {@link UcallCmd.DONE} and hlt forever; else args[0..3] are the
 *   next job (start, length, expected, fill) and it starts over. Length 0 is a valid job. The
 *   range must not overlap the image or the stack.
 * - `'spin'`: RDI = address of a u64 counter. Forever `incq (%rdi)`; `pause`. Never exits by
 *   itself (stop it with a signal); no stack.
 * - `'rendezvous'`: RDI = address of my u64 flag, RSI = address of the peer's. Stores 1 to my
 *   flag, spins (with `pause`) until the peer's flag is non-zero, then {@link UcallCmd.DONE} and
 *   hlt forever. Two vCPUs running it with swapped flags both finish only if they run at once.
 *   They may share one loaded copy (both write the same DONE into its struct ucall).
 * - `'devices'`: RDI = an address no memslot covers (MMIO). (a) `inl %dx, %eax` with DX = 0x11
 *   (port IN, 4 bytes), then a {@link UcallCmd.SYNC} with args[0] = EAX zero-extended; (b) an
 *   8-byte MMIO read at RDI, then a SYNC with args[0] = the value read; (c) a 1-byte MMIO write
 *   of 0x5a at RDI, then a 4-byte MMIO write of 0x12345678 at RDI + 8; (d) {@link UcallCmd.DONE}
 *   and hlt forever.
 * - `'fault'`: no arguments. `ud2`: with no IDT the #UD escalates to a triple fault, which the
 *   host sees as KVM_EXIT_SHUTDOWN.
 * - `'halt'`: no arguments. `hlt`, and `hlt` again if resumed.
 * - `'upgrade'`: the live-upgrade experiment's guest (experiments/upgrade/). RDI = data base (4 KiB
 *   aligned), RSI = data length (a multiple of 4096), RDX = seed, RCX = address of a u64
 *   counter, R8 = period, R9 = fill. The pattern: every u64 of the page at guest address P holds
 *   P XOR seed. If R9 != 0 it fills the region with it, then {@link UcallCmd.SYNC} (2, pages,
 *   base, length). Then counts forever: each step increments the counter in memory and a copy in
 *   RBP and compares them (an {@link UcallCmd.ABORT} "upgrade: counter lost" if they differ);
 *   every R8 steps a SYNC (1, counter, period). Before each SYNC it zeroes args[4] and args[5];
 *   the host's reply there: args[5] = 1 checks every args[4]-th page of the region against the
 *   pattern (`repe scasq`; ABORT "upgrade: pattern mismatch" with the address, value and
 *   expected value of the first bad u64), then SYNC (3, pages checked, stride, base); 2 is
 *   {@link UcallCmd.DONE} and hlt forever; anything else goes on counting. Its whole state is in
 *   its registers and its memory, so it resumes in another VM from KVM_GET_REGS/KVM_GET_SREGS
 *   and a copy of its memory.
 * - `'readpages'`: reads only (the guest of the kernel's pre_fault_memory_test, and
 *   private_mem_kvm_exits_test's guest_repeatedly_read). RDI = guest address, RSI = page count.
 *   RSI > 0: loads the u64 at RDI + i * 4096 for each i < RSI, then {@link UcallCmd.DONE} and hlt
 *   forever. RSI = 0: loads the u64 at RDI forever, with no stack use and no ucall; only a fault
 *   on the access (a `memory_fault` exit, a triple fault) or a signal ends the run.
 * - `'private_mem_conversions'`: the guest of the kernel's x86/private_mem_conversions_test
 *   (guest_code), ported step for step. RDI = base_gpa, the vCPU's data range
 *   [base_gpa, base_gpa + 0x201000) (2 MiB + 4 KiB, mapped and in a guest_memfd memslot);
 *   RSI = 1 to make hypercalls with `vmmcall` (AMD, Hygon), 0 with `vmcall` (Intel). It runs the
 *   explicit-conversion test without and with fallocate, then the PUNCH_HOLE test imprecise and
 *   precise, then {@link UcallCmd.DONE} and hlt forever. Conversions are KVM_HC_MAP_GPA_RANGE
 *   hypercalls (RAX = 12, RBX = gpa, RCX = pages, RDX = flags, RSI = 0; a `hypercall` exit once
 *   the VM enables KVM_CAP_EXIT_HYPERCALL for it) with the test's own flag bits: 1 set
 *   attributes, 2 shared (else private), 4 fallocate (punch for shared, allocate for private).
 *   The host answers 0; any other result is an {@link UcallCmd.ABORT} "private_mem_conversions:
 *   map_gpa_range failed" with args = (result, gpa, size in bytes, flags): without the
 *   capability KVM itself answers -1000 (-KVM_ENOSYS). Sync points are {@link UcallCmd.SYNC}s
 *   (0 = SYNC_SHARED, gpa, size, current pattern, new pattern): the host checks its shared view
 *   holds the current pattern and writes the new one; (1 = SYNC_PRIVATE, gpa, size, pattern): the
 *   host checks its shared view still holds the pattern. A byte the guest reads back wrong is an
 *   {@link UcallCmd.ABORT} "private_mem_conversions: byte mismatch" with args = (address,
 *   actual byte, expected byte).
 */
export type GuestImageName =
  | 'hello'
  | 'port_loop'
  | 'memtest'
  | 'spin'
  | 'rendezvous'
  | 'devices'
  | 'fault'
  | 'halt'
  | 'upgrade'
  | 'readpages'
  | 'private_mem_conversions';

/** Every {@link GuestImageName}, in the order above. */
export const guestImageNames: readonly GuestImageName[] = Object.freeze([
  'hello',
  'port_loop',
  'memtest',
  'spin',
  'rendezvous',
  'devices',
  'fault',
  'halt',
  'upgrade',
  'readpages',
  'private_mem_conversions',
] as const);

const cache = new Map<GuestImageName, Uint8Array>();

/**
 * Where the build puts the image of one program: `<addonDir>/guest/<name>.bin`, beside the addon
 * this process loads (build/Release/ for node-gyp, or the directory of $KVM_GMEM_ADDON). The
 * name is not checked; {@link guestImage} checks it.
 */
export function guestImagePath(name: GuestImageName): string {
  return join(addonDir, 'guest', `${name}.bin`);
}

/**
 * The flat binary image of a guest program, ready to copy into guest memory at any 16-byte
 * aligned guest address below 4 GiB and run from its first byte. Each call returns a fresh copy
 * (the file is read once per name and cached), so the caller may modify it freely.
 *
 * Makes no kernel call; reads the file with readFileSync.
 * @throws TypeError if `name` is not a {@link GuestImageName}.
 * @throws Error (with the read's `code`) if the image file cannot be read: for ENOENT (the addon
 *   was built without the guest images, or not built) the message says how to rebuild; for
 *   anything else (EMFILE, EACCES) it says the file is there.
 */
export function guestImage(name: GuestImageName): Uint8Array {
  if (typeof name !== 'string' || !(guestImageNames as readonly string[]).includes(name)) {
    throw argTypeError(
      `kvm-gmem: unknown guest image ${JSON.stringify(name)}; expected one of ${guestImageNames.join(', ')}`,
    );
  }
  let image = cache.get(name);
  if (image === undefined) {
    const path = guestImagePath(name);
    let bytes: Buffer;
    try {
      bytes = readFileSync(path);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      // Only a missing file means a build without images; EMFILE, EACCES... are this process's.
      const hint = code === 'ENOENT'
        ? 'The guest images are built with the addon: rebuild with `npm install` (node-gyp) or `npm run build:cmake` (cmake-js).'
        : 'The file is there; the read failed in this process.';
      const errno = (e as NodeJS.ErrnoException).errno;
      if (errno === undefined) throw e;
      throw errnoError(-errno, 'open', `${path}, O_RDONLY (the guest image)`, undefined, hint);
    }
    image = new Uint8Array(bytes); // a copy: the cache owns its own ArrayBuffer
    cache.set(name, image);
  }
  return image.slice();
}

/**
 * The ucall port: the guest executes `out %eax, %dx` with DX = 0x1000 and EAX = the guest
 * address of its struct ucall (a 4-byte port OUT exit). ucall.h: UCALL_PORT.
 */
export const UCALL_PORT = 0x1000;

/** The console port: the guest writes text one byte per `outb` (1-byte port OUT). ucall.h: CONSOLE_PORT. */
export const CONSOLE_PORT = 0xe9;

/** The benchmark port: port_loop's `outb %al, $0x10` (1-byte port OUT). ucall.h: BENCH_PORT. */
export const BENCH_PORT = 0x10;

/**
 * struct ucall's cmd values (ucall.h: UCALL_NONE...UCALL_DONE, as in the kernel selftests).
 * - NONE: not a call (a zeroed struct).
 * - SYNC: a checkpoint; args[0..nargs) carry values; the host may write a reply into args.
 * - ABORT: a guest assertion failed; msg says what, args carry the values involved.
 * - PRINTF: msg is text to print.
 * - DONE: the guest program finished.
 */
export const UcallCmd = Object.freeze({
  NONE: 0,
  SYNC: 1,
  ABORT: 2,
  PRINTF: 3,
  DONE: 4,
} as const);

/** One of the {@link UcallCmd} values. */
export type UcallCmd = (typeof UcallCmd)[keyof typeof UcallCmd];

/** Size of struct ucall in bytes (8-byte aligned, little endian). ucall.h: UCALL_STRUCT_SIZE. */
export const UCALL_STRUCT_SIZE = 192;

/**
 * Byte offsets of struct ucall's fields (ucall.h: UCALL_OFF_*):
 * cmd (u64) at 0, nargs (u64) at 8, args (u64[{@link UCALL_MAX_ARGS}]) at 16,
 * msg (char[{@link UCALL_MSG_LEN}], NUL-terminated) at 64.
 */
export const UcallOffset = Object.freeze({
  CMD: 0,
  NARGS: 8,
  ARGS: 16,
  MSG: 64,
} as const);

/** Number of u64 slots in struct ucall's args. ucall.h: UCALL_MAX_ARGS. */
export const UCALL_MAX_ARGS = 6;

/** Size of struct ucall's msg in bytes, the terminating NUL included. ucall.h: UCALL_MSG_LEN. */
export const UCALL_MSG_LEN = 128;
