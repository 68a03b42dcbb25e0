/**
 * The other process of the `lifecycle.guest_memfd_bound_to_one_vm` selftest (lifecycle/guest-memfd-bound-to-one-vm.ts).
 *
 * Started by the case with a guest_memfd as fd 3 and the VM fd that created it as fd 4 (extra
 * stdio entries: the parent's FD_CLOEXEC does not carry over a dup2, so the numbers arrive open).
 * It does what a second VMM process handed these fds would try, each step on its own so one
 * refusal does not hide the next, and prints one JSON line ({@link ChildReport}) on stdout. It
 * asserts nothing: the parent decides what the answers mean.
 *
 * It uses the internal native layer directly, so that each kernel call is made exactly once and
 * its errno reported as it is (GuestMemfd.adopt() would add checks of its own).
 *
 * Argument: one JSON object ({@link ChildRequest}) in argv[2].
 * @module
 * @internal
 */
import { Cap, FallocMode, MemslotFlag, VmType } from '../core/constants.js';
import { KvmError } from '../core/errors.js';
import { fdFacts } from '../core/fd-identity.js';
import { native } from '../core/native.js';

/** What the parent asks for. Offsets and sizes are page-aligned, inside the file. */
export interface ChildRequest {
  /** The guest_memfd's size: the child maps all of it. */
  size: number;
  /** The byte the parent (its guest) wrote over [0, dataLength). */
  pattern: number;
  /** How much of the file holds `pattern`. */
  dataLength: number;
  /** Where the child writes `childByte` ([writeAt, writeAt + writeLength)). */
  writeAt: number;
  writeLength: number;
  childByte: number;
  /** Where the child punches a hole ([punchAt, punchAt + punchLength)). */
  punchAt: number;
  punchLength: number;
  /** The guest-physical address the child uses for its memslot attempts. */
  gpa: number;
}

/**
 * What the child saw. Each step is 'ok', the errno code of a KvmError ('EINVAL', 'EIO'...), or
 * 'error: <message>' for anything else; 'not run' when an earlier step it needs failed.
 */
export interface ChildReport {
  /** What fds 3 and 4 are (`fdKind()`: filesystem magic and kernel name), or 'error: <code>'. */
  fd3: string;
  fd4: string;
  /** readlink /proc/self/fd/3 and /proc/self/fd/4, for the diagnostics. */
  link3: string;
  link4: string;
  /** mmap(MAP_SHARED) of the whole guest_memfd (fd 3). */
  map: string;
  /** The first offset in [0, dataLength) not holding `pattern`, or -1 (all intact); -2 if not mapped. */
  firstMismatch: number;
  /** The byte found there (or -1). */
  mismatchValue: number;
  /** Writing `childByte` through the mapping. */
  write: string;
  /** fallocate(PUNCH_HOLE|KEEP_SIZE) on fd 3. */
  punch: string;
  /** Opening /dev/kvm and creating a VM of the child's own. */
  ownVm: string;
  /** Binding the inherited guest_memfd into the child's own VM (KVM_SET_USER_MEMORY_REGION2). */
  bindInheritedToOwnVm: string;
  /** Control: a guest_memfd the child's own VM created binds into that VM. */
  bindOwnToOwnVm: string;
  /** KVM_CHECK_EXTENSION(KVM_CAP_GUEST_MEMFD) on the inherited VM fd. */
  vmCheckExtension: string;
  /** KVM_CREATE_GUEST_MEMFD on the inherited VM fd. */
  vmCreateGuestMemfd: string;
  /** KVM_SET_USER_MEMORY_REGION2 on the inherited VM fd, binding the inherited guest_memfd. */
  vmSetUserMemoryRegion2: string;
}

const GMEM_FD = 3;
const VM_FD = 4;

function attempt(f: () => unknown): string {
  try {
    f();
    return 'ok';
  } catch (e) {
    if (e instanceof KvmError) return e.code;
    return `error: ${e instanceof Error ? e.message : String(e)}`;
  }
}

function kind(fd: number): { kind: string; link: string } {
  try {
    const f = fdFacts(fd);
    return { kind: f.kind, link: f.link };
  } catch (e) {
    const code = `error: ${(e as NodeJS.ErrnoException).code ?? String(e)}`;
    return { kind: code, link: code };
  }
}

function main(): ChildReport {
  const req = JSON.parse(process.argv[2] ?? '{}') as ChildRequest;
  const report: ChildReport = {
    fd3: kind(GMEM_FD).kind, fd4: kind(VM_FD).kind, link3: kind(GMEM_FD).link, link4: kind(VM_FD).link, map: 'not run', firstMismatch: -2, mismatchValue: -1,
    write: 'not run', punch: 'not run', ownVm: 'not run', bindInheritedToOwnVm: 'not run',
    bindOwnToOwnVm: 'not run', vmCheckExtension: 'not run', vmCreateGuestMemfd: 'not run',
    vmSetUserMemoryRegion2: 'not run',
  };

  // The guest_memfd is a file like any other once received: map it and look at the parent's data.
  let mapping: ReturnType<typeof native.mapShared> | undefined;
  report.map = attempt(() => {
    mapping = native.mapShared(GMEM_FD, 0, req.size);
  });
  if (mapping) {
    const bytes = new Uint8Array(mapping.buffer);
    const bad = bytes.subarray(0, req.dataLength).findIndex((b) => b !== req.pattern);
    report.firstMismatch = bad;
    report.mismatchValue = bad >= 0 ? bytes[bad]! : -1;
    report.write = attempt(() => bytes.fill(req.childByte, req.writeAt, req.writeAt + req.writeLength));
  }
  report.punch = attempt(() =>
    native.fallocate(GMEM_FD, FallocMode.PUNCH_HOLE | FallocMode.KEEP_SIZE, req.punchAt, req.punchLength),
  );

  // A VM of the child's own: the inherited guest_memfd belongs to the parent's VM.
  let kvmFd = -1;
  let ownVm = -1;
  report.ownVm = attempt(() => {
    kvmFd = native.open('/dev/kvm');
    ownVm = native.createVm(kvmFd, VmType.DEFAULT);
  });
  const uaddr = mapping ? mapping.address : 0n;
  if (ownVm >= 0) {
    report.bindInheritedToOwnVm = attempt(() =>
      native.setUserMemoryRegion2(ownVm, 1, MemslotFlag.GUEST_MEMFD, req.gpa, req.size, uaddr, 0, GMEM_FD),
    );
    // Control: the same call with a guest_memfd of the child's own VM succeeds, so a refusal
    // above is about whose file it is, not about the arguments.
    report.bindOwnToOwnVm = attempt(() => {
      const own = native.createGuestMemfd(ownVm, req.size, 0);
      native.setUserMemoryRegion2(ownVm, 2, MemslotFlag.GUEST_MEMFD, req.gpa, req.size, 0, 0, own);
    });
  }

  // The parent's VM fd: KVM ties a VM to the mm that created it.
  report.vmCheckExtension = attempt(() => native.checkExtension(VM_FD, Cap.GUEST_MEMFD));
  report.vmCreateGuestMemfd = attempt(() => native.createGuestMemfd(VM_FD, req.size, 0));
  report.vmSetUserMemoryRegion2 = attempt(() =>
    native.setUserMemoryRegion2(VM_FD, 7, MemslotFlag.GUEST_MEMFD, req.gpa, req.size, uaddr, 0, GMEM_FD),
  );

  if (mapping) attempt(() => native.unmap(mapping!.buffer));
  // Everything else (fds 3 and 4, the child's own VM and guest_memfd) goes with the process.
  return report;
}

process.stdout.write(JSON.stringify(main()) + '\n');
