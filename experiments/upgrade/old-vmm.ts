/**
 * The old VMM of the live-upgrade experiment: a process of its own (build/experiments/upgrade/old-vmm.js),
 * started by the orchestrator (experiment.ts) with the handover socket as fd 3 and an IPC channel
 * to its parent. Its job (JSON {@link OldVmmConfig} in argv[2]):
 *
 * 1. creates a VM whose whole memory is one guest_memfd (MMAP|INIT_SHARED) bound at GPA 0 with
 *    its own mapping, and boots the `upgrade` guest in it (guest/upgrade.S): the guest
 *    fills its data region with the address pattern (or the host writes it first, for sizes where
 *    the guest would take too long) and counts, ticking every `period` steps;
 * 2. once it has seen `readyTicks` ticks, says `ready` to the orchestrator and keeps the guest
 *    running;
 * 3. on `pause`: kicks the vCPU out of KVM_RUN, reads its registers (KVM_GET_REGS, KVM_GET_SREGS,
 *    KVM_GET_FPU) and sends them, with the guest_memfd, the VM fd and the vCPU fd, over the
 *    socket (SCM_RIGHTS); says `sent`;
 * 4. waits for the new VMM's ack (sent once the guest runs there: until then this VMM could
 *    still resume its own), says `acked`, closes everything and exits 0.
 * @module
 */
import { Kvm } from 'kvm-gmem';
import { bootGuest, guestImage } from 'kvm-gmem/guest';
import { FdChannel } from 'kvm-gmem/ipc';
import {
  GMEM_FLAGS, GuestLoop, Layout, MiB, Tag, control, guestArgs, logLine, msBetween, now, readState,
  stateToJson, tell, VCPU_ID, vmmEntry, writePattern, type HandoverAck, type HandoverPayload, type OldVmmConfig,
} from './common.js';

const log = (text: string) => logLine('old', text);

async function main(): Promise<void> {
  const cfg = JSON.parse(process.argv[2] ?? '{}') as OldVmmConfig;
  const seed = BigInt(cfg.seed);
  using channel = FdChannel.fromFd(3);
  using kvm = Kvm.open();
  using vm = kvm.createVm();
  using gmem = vm.createGuestMemfd({ size: cfg.size, flags: GMEM_FLAGS });
  using mem = gmem.map();
  vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0, memorySize: cfg.size, userspaceAddr: mem, guestMemfd: gmem });
  using vcpu = vm.createVcpu(VCPU_ID);
  log(`${cfg.size / MiB} MiB of guest_memfd (fd ${gmem.fd}) at GPA 0, VM fd ${vm.fd}, vCPU fd ${vcpu.fd}`);

  const fillStart = now();
  if (!cfg.guestFills) writePattern(mem.bytes.subarray(Layout.DATA_BASE), Layout.DATA_BASE, seed);
  const hostFilled = now();
  bootGuest(vcpu, {
    image: guestImage('upgrade'), loadAt: Layout.IMAGE, stack: Layout.STACK_TOP, pageTables: Layout.PAGE_TABLES,
    identityMapSize: Math.ceil(cfg.size / (2 * MiB)) * 2 * MiB,
    args: guestArgs(cfg.size, seed, cfg.period, cfg.guestFills),
  });

  const loop = new GuestLoop(vcpu);
  let fillMs = cfg.guestFills ? 0 : msBetween(fillStart, hostFilled);
  let pagesFilled = 0;
  let ticks = 0;
  let firstTick = 0n;
  let pauseStart = 0n;
  const paused = control('pause', 24 * 3600 * 1000).then(() => {
    pauseStart = now();
    loop.pause();
  });
  const ended = await loop.run((uc) => {
    const [tag = 0n, a1 = 0n] = uc.args;
    if (tag === Tag.FILLED) {
      fillMs = msBetween(hostFilled, now());
      pagesFilled = Number(a1);
      log(`guest filled ${pagesFilled} pages in ${fillMs.toFixed(0)} ms`);
    } else if (tag === Tag.TICK) {
      ticks++;
      if (ticks === 1) firstTick = now();
      if (ticks === cfg.readyTicks) {
        const msPerTick = ticks > 1 ? msBetween(firstTick, now()) / (ticks - 1) : 0;
        log(`${ticks} ticks, counter ${a1}, ${msPerTick.toFixed(1)} ms a tick: ready`);
        void tell({
          type: 'ready', filledBy: cfg.guestFills ? 'guest' : 'host', fillMs, pagesFilled, ticks,
          counter: a1.toString(), msPerTick,
        });
      }
    }
    // No reply: the guest zeroed the reply slots, so it goes on counting.
  });
  if (ended !== 'paused') throw new Error('the guest said DONE before the pause');
  await paused;

  // The vCPU is out of KVM_RUN: its state, the counter, and the fds go to the new VMM.
  const state = readState(vcpu);
  const pausedAt = now();
  const counterAtPause = new DataView(mem.bytes.buffer).getBigUint64(Layout.COUNTER, true);
  const payload: HandoverPayload = {
    type: 'handover', size: cfg.size, flags: gmem.flags.toString(), seed: cfg.seed, period: cfg.period,
    counterAtPause: counterAtPause.toString(), state: stateToJson(state),
    pauseStart: pauseStart.toString(), paused: pausedAt.toString(),
  };
  channel.send(payload, [gmem, vm, vcpu]);
  const sent = now();
  await tell({
    type: 'sent', pauseStart: pauseStart.toString(), paused: pausedAt.toString(), sent: sent.toString(),
    counterAtPause: counterAtPause.toString(), rip: state.regs.rip.toString(16),
  });
  log(`paused at rip 0x${state.regs.rip.toString(16)}, counter ${counterAtPause}; sent guest_memfd, VM and vCPU fds with the state`);

  using ack = await channel.receive({ timeoutMs: cfg.ackTimeoutMs });
  if ((ack.payload as HandoverAck | undefined)?.type !== 'ack') {
    throw new Error(`expected the new VMM's ack, got ${JSON.stringify(ack.payload)}`);
  }
  await tell({ type: 'acked', at: now().toString() });
  log('the new VMM has the fds; exiting');
  // Everything above is closed at the end of this scope (using), then the process exits.
}

vmmEntry('old-vmm', main);
