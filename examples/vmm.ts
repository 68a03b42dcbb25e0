// A small VMM in TypeScript: boots a 64-bit guest from guest_memfd memory, prints what the guest
// writes to its console port, answers its calls, and exits cleanly (Ctrl-C stops the guest too).
//
//   npm run vmm                      # boots the `hello` guest with 16 MiB of guest_memfd memory
//   npm run vmm -- --memory 64 --sync
//
// Guest-physical layout: page tables at 0x1000, the guest image at 0x10000, its stack below
// 0x90000, and a buffer at 1 MiB that the host fills and the guest reads (no copy in between: the
// memslot's userspace address is the guest_memfd's own mapping).
import { parseArgs } from 'node:util';
import { Cap, GuestMemfdFlag, Kvm } from 'kvm-gmem';
import { bootGuest, GuestAssertionError, guestImage, replyUcall, runUntilUcall } from 'kvm-gmem/guest';

const { values: opt } = parseArgs({
  options: {
    memory: { type: 'string', default: '16' },
    sync: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (opt.help) {
  console.log('usage: npm run vmm -- [--memory MiB] [--sync]');
  process.exit(0);
}
const memory = Number(opt.memory) * 1024 * 1024;
if (!Number.isInteger(memory) || memory < 4 * 1024 * 1024) {
  console.error('vmm: --memory must be a whole number of MiB, at least 4');
  process.exit(2);
}

const log = (s: string) => process.stderr.write(`[vmm] ${s}\n`);

using kvm = Kvm.open();
using vm = kvm.createVm();
const flags = GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED;
if ((BigInt(vm.checkExtension(Cap.GUEST_MEMFD_FLAGS)) & flags) !== flags) {
  console.error('vmm: this kernel cannot mmap guest_memfd (KVM_CAP_GUEST_MEMFD_FLAGS lacks MMAP|INIT_SHARED)');
  process.exit(1);
}
using gmem = vm.createGuestMemfd({ size: memory, flags });
using mem = gmem.map();
vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0, memorySize: memory, userspaceAddr: mem, guestMemfd: gmem });
log(`guest memory: ${memory >> 20} MiB of guest_memfd (fd ${gmem.fd}), bound at GPA 0 with its own mapping`);

// Data for the guest: it sums these bytes and reports the sum with a SYNC call.
const BUFFER = 1 << 20;
const text = Buffer.from('guest_memfd: memory the host can map, and the guest runs on');
mem.bytes.set(text, BUFFER);
const expected = text.reduce((a, b) => a + b, 0);

using vcpu = vm.createVcpu(0);
bootGuest(vcpu, { image: guestImage('hello'), loadAt: 0x10000, stack: 0x90000, pageTables: 0x1000, args: [BUFFER, text.length] });
log(`vCPU 0 in long mode at 0x10000, running with ${opt.sync ? 'run()' : 'runAsync()'}`);

const stop = new AbortController();
process.once('SIGINT', () => stop.abort());
const console_ = (t: string) => process.stdout.write(t);
const start = performance.now();
let status = 0;
try {
  for (;;) {
    const call = await runUntilUcall(vcpu, { console: console_, sync: opt.sync, signal: stop.signal });
    if (call.cmd === 'done') break;
    if (call.cmd === 'sync') {
      const sum = Number(call.args[0]);
      log(`guest SYNC: sum of the host's ${text.length} bytes = ${sum} (host: ${expected}) ${sum === expected ? 'ok' : 'MISMATCH'}`);
      if (sum !== expected) status = 1;
      replyUcall(vcpu, call, []);
    }
  }
  log(`guest DONE after ${(performance.now() - start).toFixed(1)} ms`);
} catch (e) {
  if (e instanceof GuestAssertionError) log(e.message);
  else if ((e as Error).name === 'AbortError') log('interrupted: the vCPU was kicked out of the guest');
  else throw e;
  status = 1;
}
process.exitCode = status;
