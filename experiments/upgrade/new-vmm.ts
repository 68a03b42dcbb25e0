/**
 * The new VMM of the live-upgrade experiment: a process of its own (build/experiments/upgrade/new-vmm.js),
 * started by the orchestrator (experiment.ts) with the handover socket as fd 3 and an IPC channel
 * to its parent. Its job (JSON {@link NewVmmConfig} in argv[2]):
 *
 * 1. prepares, before the old VMM pauses its guest: opens /dev/kvm, creates the VM it will run
 *    the guest in, and a guest_memfd for it of the same size (allocated with fallocate and
 *    faulted into its mapping with MADV_POPULATE_WRITE), and a second VM for the probes; says
 *    `ready`;
 * 2. receives the handover (the guest_memfd, the VM fd, the vCPU fd and the vCPU state);
 * 3. takes over, the blackout: maps the received guest_memfd and copies all of it into its own
 *    (copy), binds its own at GPA 0, creates vCPU 0 and writes the state into it (restore), and
 *    runs it (resume); then acks the handover on the socket (the old VMM exits on the ack) and
 *    says `resumed` with the timestamps;
 * 4. while the guest runs: adopts the received VM and vCPU fds (`Vm.adopt()`, `vm.adoptVcpu()`)
 *    and probes what the kernel allows with them (each answer recorded, nothing asserted here),
 *    checks the received memory and the copy host-side, and has the guest check its memory
 *    (every `verifyStride`-th page);
 * 5. once the orchestrator says the old VMM exited, lets the guest run `afterMs` longer, then
 *    asks it for DONE and reports the `result`.
 * @module
 */
import { Cap, GuestMemfd, Kvm, Madvise, MemslotFlag, PAGE_SIZE, Vm, type Mapping } from 'kvm-gmem';
import { replyUcall, type Ucall } from 'kvm-gmem/guest';
import { FdChannel, type ReceivedFd } from 'kvm-gmem/ipc';
import {
  GMEM_FLAGS, GuestLoop, REBIND_THREAD, UAPI_HEADER, Layout, MiB, Op, Tag, attempt, checkPattern, control, dataPages, logLine,
  msBetween, now, stateFromJson, tell, VCPU_ID, vmmEntry, writeState, type HandoverAck, type HandoverPayload,
  type NewVmmConfig, type Probes, type RebindSurvey,
  type NewResult,
} from './common.js';

const log = (text: string) => logLine('new', text);

/** What the uapi this library follows says about moving a guest_memfd to another VM. */
export const UAPI_REBIND_NOTE =
  `Linux 6.18's KVM uapi (${UAPI_HEADER}) has no ioctl to rebind, link or migrate a guest_memfd to ` +
  'another VM: KVM_CREATE_GUEST_MEMFD (a VM ioctl) is the only guest_memfd ioctl, and ' +
  'KVM_SET_USER_MEMORY_REGION2 binds a guest_memfd only into the VM that created it (option (a) ' +
  `of ${REBIND_THREAD}); its capabilities end at KVM_CAP_GUEST_MEMFD_FLAGS (244), whose bits are MMAP ` +
  'and INIT_SHARED. No unknown ioctl is called here.';

/** The highest KVM_CAP_* number in the uapi the library follows (Linux 6.18). */
export const LAST_KNOWN_CAP = Cap.GUEST_MEMFD_FLAGS;

/** Copies in chunks of this size (one TypedArray.set each). */
const COPY_CHUNK = 256 * MiB;

/** Copies `src` into `dst` (same length). */
function copyMemory(dst: Uint8Array, src: Uint8Array): void {
  for (let off = 0; off < src.length; off += COPY_CHUNK) {
    dst.set(src.subarray(off, Math.min(off + COPY_CHUNK, src.length)), off);
  }
}

/** memcmp of two views in chunks: 'equal', or the first chunk offset that differs. */
function compareMemory(a: Uint8Array, b: Uint8Array, base: number): string {
  const A = Buffer.from(a.buffer, a.byteOffset, a.byteLength);
  const B = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  for (let off = 0; off < A.length; off += COPY_CHUNK) {
    const end = Math.min(off + COPY_CHUNK, A.length);
    if (A.compare(B, off, end, off, end) === 0) continue;
    for (let i = off; i < end; i++) {
      if (A[i] !== B[i]) return `differs at guest address 0x${(base + i).toString(16)}`;
    }
  }
  return 'equal';
}

/** The one received fd of `kind`. */
function one(fds: readonly ReceivedFd[], kind: ReceivedFd['kind']): ReceivedFd {
  const found = fds.filter((f) => f.kind === kind);
  if (found.length !== 1) throw new Error(`expected one ${kind} fd in the handover, got ${found.length} (${fds.map((f) => f.kind).join(', ')})`);
  return found[0]!;
}

/** KVM_CHECK_EXTENSION for every capability number below `limit`, on /dev/kvm and on a VM. */
function rebindSurvey(kvm: Kvm, vm: Vm, limit: number): RebindSurvey {
  const nonzero = { system: [] as number[], vm: [] as number[] };
  const unknown = { system: [] as [number, number][], vm: [] as [number, number][] };
  for (let cap = 0; cap < limit; cap++) {
    for (const [side, obj] of [['system', kvm], ['vm', vm]] as const) {
      let v = 0;
      try {
        v = obj.checkExtension(cap);
      } catch {
        v = 0; // a capability this fd type refuses to be asked about counts as absent
      }
      if (v === 0) continue;
      nonzero[side].push(cap);
      if (cap > LAST_KNOWN_CAP) unknown[side].push([cap, v]);
    }
  }
  const sys = kvm.checkExtension(Cap.GUEST_MEMFD_FLAGS);
  const vmFlags = vm.checkExtension(Cap.GUEST_MEMFD_FLAGS);
  const extra = (BigInt(sys) | BigInt(vmFlags)) & ~GMEM_FLAGS;
  return {
    uapi: UAPI_REBIND_NOTE, capLimit: limit, lastKnownCap: LAST_KNOWN_CAP, nonzero, unknown,
    gmemFlags: { system: sys, vm: vmFlags, unknownBits: `0x${extra.toString(16)}` },
    anyWay: extra !== 0n || unknown.system.length > 0 || unknown.vm.length > 0,
  };
}

async function main(): Promise<void> {
  const cfg = JSON.parse(process.argv[2] ?? '{}') as NewVmmConfig;
  using channel = FdChannel.fromFd(3);

  // 1. Prepare: everything that needs neither the old VMM's memory nor its state.
  const prepStart = now();
  using kvm = Kvm.open();
  using vm = kvm.createVm();
  using probeVm = kvm.createVm();
  using gmem = vm.createGuestMemfd({ size: cfg.size, flags: GMEM_FLAGS });
  gmem.allocate(0, cfg.size);
  using mem = gmem.map();
  mem.advise(Madvise.POPULATE_WRITE);
  await tell({ type: 'ready', prepareMs: msBetween(prepStart, now()) });
  log(`ready: VM fd ${vm.fd}, ${cfg.size / MiB} MiB guest_memfd (fd ${gmem.fd}) allocated and mapped`);

  // 2. The handover: the old VMM has paused its guest.
  using msg = await channel.receive({ timeoutMs: cfg.receiveTimeoutMs, maxFds: 8 });
  const p = msg.payload as HandoverPayload | undefined;
  if (p?.type !== 'handover') throw new Error(`expected the handover, got ${JSON.stringify(p)}`);
  if (p.size !== cfg.size) throw new Error(`the handover is for ${p.size} bytes of guest memory, this VMM prepared ${cfg.size}`);
  using received = GuestMemfd.adopt(one(msg.fds, 'guest_memfd'), { size: p.size, flags: BigInt(p.flags) });
  const oldVmFd = one(msg.fds, 'vm');
  const oldVcpuFd = one(msg.fds, 'vcpu');
  const receivedAt = now();

  // 3. The takeover. Copy: one MADV_POPULATE_READ faults the received file in, not a fault per page.
  let src: Mapping | undefined;
  const mapReceived = attempt(() => (src = received.map()));
  if (src === undefined) throw new Error(`cannot map the received guest_memfd: ${mapReceived}`);
  using srcMap = src;
  srcMap.advise(Madvise.POPULATE_READ);
  copyMemory(mem.bytes, srcMap.bytes);
  const copied = now();
  // Restore: bind this VM's guest_memfd, create the vCPU, write the old vCPU's state into it.
  const bindOwnToNewVm = attempt(() =>
    vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0, memorySize: cfg.size, userspaceAddr: mem, guestMemfd: gmem }),
  );
  if (bindOwnToNewVm !== 'ok') throw new Error(`binding this VM's own guest_memfd failed: ${bindOwnToNewVm}`);
  const bound = now();
  using vcpu = vm.createVcpu(VCPU_ID);
  const vcpuCreated = now();
  writeState(vcpu, stateFromJson(p.state));
  const restored = now();
  // Resume.
  const loop = new GuestLoop(vcpu);
  const counterAtResume = new DataView(mem.bytes.buffer).getBigUint64(Layout.COUNTER, true);
  const resumed = now();
  const running = driveGuest(loop, cfg, dataPages(cfg.size));
  // The commit point: the guest runs here now, so the old VMM may go (until this ack it could
  // still resume its own guest).
  channel.send({ type: 'ack' } satisfies HandoverAck);
  await tell({
    type: 'resumed', received: receivedAt.toString(), copied: copied.toString(), restored: restored.toString(),
    resumed: resumed.toString(), bytesCopied: cfg.size, counterAtResume: counterAtResume.toString(),
    restoreParts: { bindMs: msBetween(copied, bound), vcpuMs: msBetween(bound, vcpuCreated), stateMs: msBetween(vcpuCreated, restored) },
  });
  log(`resumed: copy ${msBetween(receivedAt, copied).toFixed(1)} ms, restore ${msBetween(copied, restored).toFixed(2)} ms, ` +
    `blackout ${msBetween(p.pauseStart, resumed).toFixed(1)} ms`);

  // 4. While the guest runs: what the kernel allows with the received fds, adopted as a VMM would.
  using oldVm = Vm.adopt(oldVmFd, { kvm });
  using oldVcpu = oldVm.adoptVcpu(oldVcpuFd, VCPU_ID);
  const checkStart = now();
  const data = (m: Mapping) => m.bytes.subarray(Layout.DATA_BASE);
  const bad = checkPattern(data(srcMap), Layout.DATA_BASE, BigInt(p.seed));
  const receivedMemory = bad === undefined
    ? 'intact'
    : `differs at guest address 0x${bad.gpa.toString(16)}: 0x${bad.actual.toString(16)}, expected 0x${bad.expected.toString(16)}`;
  const copyCompare = compareMemory(data(srcMap), data(mem), Layout.DATA_BASE);
  const hostCheckMs = msBetween(checkStart, now());
  const probes: Probes = {
    receivedKinds: msg.fds.map((f) => f.kind),
    mapReceived,
    receivedMemory,
    copyCompare,
    vmCheckExtension: attempt(() => oldVm.checkExtension(Cap.GUEST_MEMFD)),
    vmCreateGuestMemfd: attempt(() => oldVm.createGuestMemfd({ size: PAGE_SIZE }).close()),
    vcpuGetRegs: attempt(() => oldVcpu.getRegs()),
    bindReceivedToNewVm: attempt(() =>
      probeVm.setUserMemoryRegion2({
        slot: 0, flags: MemslotFlag.GUEST_MEMFD, guestPhysAddr: 0, memorySize: cfg.size, userspaceAddr: srcMap, guestMemfd: received,
      }),
    ),
    bindOwnToNewVm,
  };
  const rebind = rebindSurvey(kvm, probeVm, cfg.capLimit);
  log(`probes: ${JSON.stringify(probes)}`);

  // 5. The old VMM exits; the guest goes on.
  const oldExited = await control('old-exited', cfg.oldExitTimeoutMs);
  running.oldExitedAt = BigInt(oldExited.at);
  const r = await running.done;
  await tell({ type: 'result', probes, rebind, hostCheckMs, ...r });
  log(`guest ran ${r.ranAfterOldExitMs.toFixed(0)} ms (${r.ticksAfterOldExit} ticks) after the old VMM exited; counter ${r.counterLast}`);
}

/** The guest after the takeover: check its memory at the first tick, then count. */
interface Driven {
  /** Set when the orchestrator says the old VMM exited (ns). */
  oldExitedAt: bigint | undefined;
  done: Promise<Pick<NewResult, 'guestVerify' | 'counterFirstTick' | 'counterLast' | 'ticks' | 'ticksAfterOldExit' | 'ranAfterOldExitMs' | 'done'>>;
}

/**
 * Runs the guest: at its first tick asks it to check its data region (every `verifyStride`-th
 * page), then lets it count; once `oldExitedAt` is set and `afterMs` have passed (and at least
 * two ticks came after it), asks it for DONE.
 */
function driveGuest(loop: GuestLoop, cfg: NewVmmConfig, pagesTotal: number): Driven {
  const d: Driven = { oldExitedAt: undefined, done: undefined as never };
  let ticks = 0;
  let ticksAfter = 0;
  let counterFirstTick = 0n;
  let counterLast = 0n;
  let lastTickAt = 0n;
  let verifyStart = 0n;
  const guestVerify = { stride: cfg.verifyStride, pages: -1, pagesTotal, ms: -1 };
  const reply = (uc: Ucall, op: number, arg = 0) => replyUcall(loop.vcpu, uc, [0, 0, 0, 0, arg, op]);
  d.done = loop.run((uc) => {
    const [tag = 0n, a1 = 0n, a2 = 0n] = uc.args;
    if (tag === Tag.VERIFIED) {
      guestVerify.pages = Number(a1);
      guestVerify.stride = Number(a2);
      guestVerify.ms = msBetween(verifyStart, now());
      log(`guest checked ${guestVerify.pages} of ${pagesTotal} pages (every ${guestVerify.stride}) in ${guestVerify.ms.toFixed(0)} ms`);
      return;
    }
    if (tag !== Tag.TICK) return;
    ticks++;
    counterLast = a1;
    lastTickAt = now();
    if (ticks === 1) {
      counterFirstTick = a1;
      verifyStart = now();
      reply(uc, Op.VERIFY, cfg.verifyStride);
      return;
    }
    if (d.oldExitedAt === undefined || lastTickAt < d.oldExitedAt) return;
    ticksAfter++;
    if (guestVerify.pages >= 0 && ticksAfter >= 2 && msBetween(d.oldExitedAt, lastTickAt) >= cfg.afterMs) reply(uc, Op.DONE);
  }).then((ended) => ({
    guestVerify,
    counterFirstTick: counterFirstTick.toString(),
    counterLast: counterLast.toString(),
    ticks,
    ticksAfterOldExit: ticksAfter,
    ranAfterOldExitMs: d.oldExitedAt === undefined ? 0 : msBetween(d.oldExitedAt, lastTickAt),
    done: ended === 'done',
  }));
  return d;
}

vmmEntry('new-vmm', main);
