#!/usr/bin/env zx
// npm run bench -- [--quick] [--json]
//
// Times the same kernel operations from a small C program (scripts/bench/bench.c) and from the
// library (dist/, in this process), and reports library / C ratios against targets. Absolute
// times on shared machines are noise; ratios within one run are not (see DESIGN.md, "How
// performance is judged"). This is a report, not a test: a missed target still exits 0; a real
// error (no compiler, no /dev/kvm, a failing call) exits 1.
//
// Noise control: every operation runs in several rounds; each round runs C then the library, or
// the library then C (alternating), so slow phases of the machine hit both sides. Each side warms
// up first in every round: per-call operations run untimed batches for `warmupMs` (the JIT needs
// a few thousand calls before a loop reaches steady state), bulk ones one untimed repetition.
// Per-call operations time a batch of calls and divide. The reported figure is the median of all
// samples of a side. Both sides run pinned to the same CPU (see below).
import { $, argv, fs, os, path } from 'zx';
import { execFileSync } from 'node:child_process';
import { fileURLToPath, pathToFileURL } from 'node:url';

const USAGE = 'usage: npm run bench -- [--quick] [--json] [--only GROUP,...]';
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

if (argv.help === true) {
  console.log(`${USAGE}\n  --quick  fewer rounds and smaller batches (a smoke run)\n  --json   machine-readable output on stdout\n  --only   run only these groups (the names bench.c takes, e.g. mem_attributes,convert,prefault)`);
  process.exit(0);
}
const bad = [
  ...argv._,
  ...Object.entries(argv)
    .filter(([k, v]) => k !== '_' && !(['quick', 'json'].includes(k) && typeof v === 'boolean') && !(k === 'only' && typeof v === 'string'))
    .map(([k, v]) => (v === true ? `--${k}` : `--${k}=${v}`)),
];
if (bad.length) {
  console.error(`bench: unexpected argument(s): ${bad.join(' ')}\n${USAGE}`);
  process.exit(2);
}

// Pinning: the whole process (every thread), and so the C program it spawns, runs on one CPU, the
// first one allowed. On small shared VMs the vCPUs can differ a lot for KVM calls that wait on
// other CPUs (memslot changes wait for SRCU; VM create/destroy) and for KVM_RUN's exits (vcpu_load
// reads MSRs, slow on a nested host): on the 2-vCPU host this was written on, memslot add+delete
// took 9 us on CPU 0 and 150 us on CPU 1. Unpinned, a side's median depends on where the scheduler
// put it. The pin is set with taskset after the library is loaded, not at exec: the library sizes
// its runAsync() hand-back from the CPUs it may use when it loads (it polls only with a second
// CPU), and it must see the CPUs a VMM using it would. The runAsync() row then spreads the
// process over two CPUs: the vCPU's own thread, which makes the KVM_RUN calls, on the pinned CPU
// (where the C program's KVM_RUN runs), the main thread and Node's other threads on the second
// allowed CPU (the next one in Cpus_allowed_list); on a single CPU it runs there whole.
const cpuList = (text) =>
  text.split(',').flatMap((part) => {
    const [a, b = a] = part.split('-').map(Number);
    return Array.from({ length: b - a + 1 }, (_, i) => a + i);
  });
const affinityOf = (tid) => /Cpus_allowed_list:\s*(\S+)/.exec(fs.readFileSync(`/proc/self/task/${tid}/status`, 'utf8'))?.[1];
const allowedCpus = cpuList(affinityOf(process.pid) ?? '0');

// sched_setaffinity through taskset: the thread `tid` of this process, or with `all` every thread.
function setAffinity(tid, cpu, all = false) {
  try {
    execFileSync('taskset', [...(all ? ['-a'] : []), '-p', '-c', String(cpu), String(tid)], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (e) {
    throw new Error(`taskset -p -c ${cpu} ${tid}${all ? ' (all threads)' : ''} failed: ${(e.stderr?.toString() || e.message).trim()}`);
  }
  const got = affinityOf(tid);
  if (got !== String(cpu)) throw new Error(`thread ${tid} is allowed CPUs ${got} after pinning it to CPU ${cpu}`);
}

// { cpu, second } once pinned (second: null with one CPU allowed), else null.
let pin = null;
function pinProcess() {
  const cpu = allowedCpus[0];
  try {
    setAffinity(process.pid, cpu, true);
  } catch (e) {
    console.error(`bench: warning: cannot pin to one CPU (${e.message}); expect more noise`);
    return;
  }
  pin = { cpu, second: allowedCpus.find((c) => c !== cpu) ?? null };
}

const MiB = 1 << 20;
const GiB = 1 << 30;
const SMALL = 2 * MiB;
const BIG = GiB;

// Rounds per operation; per round and side: `reps` timed samples of `batch` calls each.
// For the vCPU groups, `batch` is the number of port-write exits the guest makes per sample.
const plan = argv.quick
  ? {
      rounds: 2, warmupMs: 50, perCallReps: 3, fallocReps: 2, fillReps: 1,
      batch: {
        check_extension: 10000, vm: 20, gmem: 500, memslot: 200, vcpu_exit: 2000, vcpu_exit_async: 2000,
        mem_attributes: 500, convert: 10, prefault: 10,
      },
    }
  : {
      rounds: 5, warmupMs: 100, perCallReps: 7, fallocReps: 4, fillReps: 2,
      batch: {
        check_extension: 50000, vm: 50, gmem: 2000, memslot: 1000, vcpu_exit: 20000, vcpu_exit_async: 20000,
        mem_attributes: 2000, convert: 50, prefault: 50,
      },
    };

// The table's rows, in order. `group` is what one C run / library run measures (two metrics for
// the bulk groups, which set up each other's precondition: allocate then punch, punch then fill).
const METRICS = [
  { key: 'check_extension', group: 'check_extension', name: 'KVM_CHECK_EXTENSION (USER_MEMORY2)', unit: 'ns', max: 1.15 },
  { key: 'vm', group: 'vm', name: 'VM create+close', unit: 'ns', max: 1.15 },
  { key: 'gmem', group: 'gmem', name: 'guest_memfd create+close (2 MiB)', unit: 'ns', max: 1.15 },
  { key: 'fallocate', group: 'falloc', name: 'fallocate 1 GiB', unit: 'ns', max: 1.05 },
  { key: 'punch_hole', group: 'falloc', name: 'punch-hole 1 GiB', unit: 'ns', max: 1.05 },
  { key: 'fill_first', group: 'fill', name: 'first-touch fill 1 GiB', unit: 'B/s', min: 0.9 },
  { key: 'fill_warm', group: 'fill', name: 'warm fill 1 GiB', unit: 'B/s', min: 0.9 },
  { key: 'memslot', group: 'memslot', name: 'memslot add+delete (2 MiB)', unit: 'ns', max: 1.15 },
  { key: 'vcpu_exit', group: 'vcpu_exit', name: 'vCPU port exit, run()', unit: 'ns', max: 1.1 },
  { key: 'vcpu_exit_async', group: 'vcpu_exit_async', name: 'vCPU port exit, runAsync()', unit: 'ns', max: 1.5 },
  // Private memory (SW_PROTECTED VM): a few syscalls on 2 MiB each, microseconds, so per-call
  // targets like memslot add+delete (2 MiB), not the bulk rows' 1.05.
  { key: 'mem_attributes', group: 'mem_attributes', name: 'KVM_SET_MEMORY_ATTRIBUTES 2 MiB (private <-> shared)', unit: 'ns', max: 1.15 },
  { key: 'convert', group: 'convert', name: 'convertMemory 2 MiB private<->shared (attributes + discard)', unit: 'ns', max: 1.15 },
  { key: 'prefault', group: 'prefault', name: 'KVM_PRE_FAULT_MEMORY 2 MiB', unit: 'ns', max: 1.15 },
];
const ONLY = typeof argv.only === 'string' ? new Set(argv.only.split(',')) : null;
const unknownGroups = ONLY ? [...ONLY].filter((g) => !METRICS.some((m) => m.group === g)) : [];
if (unknownGroups.length) {
  console.error(`bench: unknown group(s) for --only: ${unknownGroups.join(', ')}\n${USAGE}`);
  process.exit(2);
}
const ROWS = ONLY ? METRICS.filter((m) => ONLY.has(m.group)) : METRICS;
const GROUPS = [...new Set(ROWS.map((m) => m.group))];
// Groups also timed through the raw addon. Not runAsync(): the library's hand-back (polling when
// it has a second CPU) is its own code, which a bare `await runner.runAsync()` would not match.
const ADDON_GROUPS = new Set(['check_extension', 'vm', 'gmem', 'memslot', 'vcpu_exit', 'mem_attributes', 'convert', 'prefault']);
// Groups on a SW_PROTECTED VM: skipped (both sides) on a host without that VM type, the PRIVATE
// attribute, or (prefault) KVM_PRE_FAULT_MEMORY, which needs two-dimensional paging.
const PRIVATE_GROUPS = new Set(['mem_attributes', 'convert', 'prefault']);
// The C program's group for each library group: C has one KVM_RUN loop, the baseline for both rows.
const C_GROUP = { vcpu_exit_async: 'vcpu_exit' };
const VCPU_GROUPS = new Set(['vcpu_exit', 'vcpu_exit_async']);

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
}

const tty = process.stderr.isTTY;
function progress(text) {
  // One line per step; on a terminal the line is rewritten in place.
  process.stderr.write(tty ? `\r\x1b[K${text}` : `${text}\n`);
}

// The library, from dist/ (the build output), checked first so a missing build says what to do.
async function loadLibrary() {
  const dist = path.join(root, 'dist', 'index.js');
  if (!fs.existsSync(dist)) throw new Error(`${path.relative(process.cwd(), dist)} is missing: run npm run build`);
  const built = fs.statSync(dist).mtimeMs;
  const libDir = path.join(root, 'lib');
  const newer = fs.readdirSync(libDir, { recursive: true }).filter((f) => f.endsWith('.ts') && fs.statSync(path.join(libDir, f)).mtimeMs > built);
  if (newer.length) console.error(`bench: warning: dist/ is older than lib/ (${newer.join(', ')}): run npm run build to bench the current sources`);
  const lib = await import(pathToFileURL(dist).href);
  // The guest helpers (bootGuest, guestImage...) are the kvm-gmem/guest entry point's.
  const guest = await import(pathToFileURL(path.join(root, 'dist', 'guest', 'index.js')).href);
  const { native } = await import(pathToFileURL(path.join(root, 'dist', 'core', 'native.js')).href);
  return { ...lib, ...guest, native };
}

// This process's VMA count (lines of /proc/self/maps): KVM_CREATE_VM walks every VMA of the
// caller (mmu_notifier_register -> mm_take_all_locks), so a Node process pays for its larger
// address space there. Reported next to bench.c's count to explain the VM row.
const countVmas = () => fs.readFileSync('/proc/self/maps', 'utf8').split('\n').length - 1;

// The library side of each group: returns { vmas, samples: { metricKey: samples[] } }, the same
// content as bench.c prints.
function libraryRunner({
  Kvm, Cap, GuestMemfdFlag, MemslotFlag, VmType, MemoryAttribute, Madvise, Mapping, native, bootGuest, setEntry, guestImage,
}) {
  const SHARED = GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED;
  const now = () => Number(process.hrtime.bigint());

  // Per-call groups: each entry takes the fixture and returns a function running n calls with the
  // loop inside, so the harness adds no call of its own per operation (C calls through a pointer).
  const perCall = {
    check_extension: ({ kvm }) => (n) => {
      let sink = 0;
      for (let i = 0; i < n; i++) sink += kvm.checkExtension(Cap.USER_MEMORY2);
      return sink;
    },
    vm: ({ kvm }) => (n) => {
      for (let i = 0; i < n; i++) kvm.createVm().close();
    },
    gmem: ({ vm }) => (n) => {
      for (let i = 0; i < n; i++) vm.createGuestMemfd({ size: SMALL }).close();
    },
    memslot: ({ vm, gmem, mapping }) => (n) => {
      for (let i = 0; i < n; i++) {
        vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0, memorySize: SMALL, userspaceAddr: mapping, guestMemfd: gmem });
        vm.deleteMemoryRegion(0);
      }
    },
  };

  // The same per-call operations through the raw addon (lib/native.ts, no TypeScript layer):
  // the 'addon' column separates what the library's own code costs from the cost of crossing
  // Node-API and of running in a multi-threaded Node process.
  const perCallAddon = {
    check_extension: ({ kvm }) => {
      const fd = kvm.fd;
      return (n) => {
        let sink = 0;
        for (let i = 0; i < n; i++) sink += native.checkExtension(fd, Cap.USER_MEMORY2);
        return sink;
      };
    },
    vm: ({ kvm }) => {
      const fd = kvm.fd;
      return (n) => {
        for (let i = 0; i < n; i++) native.close(native.createVm(fd, 0));
      };
    },
    gmem: ({ vm }) => {
      const fd = vm.fd;
      return (n) => {
        for (let i = 0; i < n; i++) native.close(native.createGuestMemfd(fd, SMALL, 0));
      };
    },
    memslot: ({ vm, gmem, mapping }) => {
      const [fd, gfd, addr] = [vm.fd, gmem.fd, mapping.address];
      return (n) => {
        for (let i = 0; i < n; i++) {
          native.setUserMemoryRegion2(fd, 0, MemslotFlag.GUEST_MEMFD, 0, SMALL, addr, 0, gfd);
          native.setUserMemoryRegion2(fd, 0, 0, 0, 0, 0, 0, 0);
        }
      };
    },
  };

  // Same fixture as bench.c: /dev/kvm, one VM, a 2 MiB MMAP|INIT_SHARED guest_memfd mapped.
  function runPerCall(group, reps, batch, warmupMs, side) {
    const kvm = Kvm.open();
    const vm = kvm.createVm();
    const gmem = vm.createGuestMemfd({ size: SMALL, flags: SHARED });
    const mapping = gmem.map();
    try {
      const run = (side === 'addon' ? perCallAddon : perCall)[group]({ kvm, vm, gmem, mapping });
      const vmas = countVmas();
      const warmEnd = now() + warmupMs * 1e6;
      do run(batch);
      while (now() < warmEnd);
      const samples = [];
      for (let rep = 0; rep < reps; rep++) {
        const t0 = now();
        run(batch);
        samples.push((now() - t0) / batch);
      }
      return { vmas, samples: { [group]: samples } };
    } finally {
      mapping.close();
      gmem.close();
      vm.close();
      kvm.close();
    }
  }

  // A 1 GiB MMAP|INIT_SHARED guest_memfd for fn(gmem); closing everything frees its memory.
  function withBig(fn) {
    const kvm = Kvm.open();
    const vm = kvm.createVm();
    const gmem = vm.createGuestMemfd({ size: BIG, flags: SHARED });
    try {
      return { vmas: countVmas(), samples: fn(gmem) };
    } finally {
      gmem.close();
      vm.close();
      kvm.close();
    }
  }

  const runFalloc = (reps) => withBig((gmem) => {
    const out = { fallocate: [], punch_hole: [] };
    for (let rep = -1; rep < reps; rep++) {
      const t0 = now();
      gmem.allocate(0, BIG);
      const t1 = now();
      gmem.punchHole(0, BIG);
      const t2 = now();
      if (rep >= 0) out.fallocate.push(t1 - t0), out.punch_hole.push(t2 - t1);
    }
    return out;
  });

  const runFill = (reps) => withBig((gmem) => {
    const out = { fill_first: [], fill_warm: [] };
    const mapping = gmem.map();
    try {
      for (let rep = -1; rep < reps; rep++) {
        gmem.punchHole(0, BIG); // every page faults in again on the first fill
        const t0 = now();
        mapping.bytes.fill(0xaa);
        const t1 = now();
        mapping.bytes.fill(0xaa);
        const t2 = now();
        if (rep >= 0) out.fill_first.push((BIG / (t1 - t0)) * 1e9), out.fill_warm.push((BIG / (t2 - t1)) * 1e9);
      }
      return out;
    } finally {
      mapping.close();
    }
  });

  // vCPU exits: the same VM as bench.c's vcpu_exit (a 4 MiB MMAP|INIT_SHARED guest_memfd, mapped
  // and used as the memslot's userspace_addr; port_loop booted in long mode with RDI = batch). A
  // sample is one run of the guest from its first instruction to the hlt after the last of its
  // `batch` port writes, divided by `batch`; between samples only the registers are reset, as
  // bench.c does. The loops are what a VMM's would be: run, look at the exit, count it.
  const check = (reason, port, exits, batch) => {
    if (reason !== 'hlt' || exits !== batch) {
      throw new Error(`port_loop: ${exits} port-write exits then '${reason}' (port 0x${port.toString(16)}), expected ${batch} then 'hlt'`);
    }
  };
  const BENCH_PORT = 0x10;
  const vcpuLoops = {
    lib: (vcpu, batch) => () => {
      let exits = 0;
      let e;
      for (;;) {
        e = vcpu.run();
        if (e.reason === 'io' && e.port === BENCH_PORT) exits++;
        else if (e.reason !== 'intr') break; // EINTR: a signal for this thread, run again as C does
      }
      check(e.reason, e.port ?? 0, exits, batch);
    },
    lib_async: (vcpu, batch) => async () => {
      let exits = 0;
      let e;
      for (;;) {
        e = await vcpu.runAsync();
        if (e.reason === 'io' && e.port === BENCH_PORT) exits++;
        else if (e.reason !== 'intr') break;
      }
      check(e.reason, e.port ?? 0, exits, batch);
    },
    // The raw runner (its own dup of the vCPU fd and kvm_run mapping): KVM_RUN, then exit_reason
    // (offset 8) and io.port (offset 34) read from kvm_run, as bench.c does.
    addon: (vcpu, batch, runner) => {
      const run = new DataView(runner.buffer);
      return () => {
        let exits = 0;
        let reason;
        for (;;) {
          const err = runner.run();
          if (err === 4) continue; // EINTR
          if (err !== 0) throw new Error(`KVM_RUN failed: errno ${err}`);
          reason = run.getUint32(8, true);
          if (reason === 2 && run.getUint16(34, true) === BENCH_PORT) exits++; // 2: KVM_EXIT_IO
          else break;
        }
        check(reason === 5 ? 'hlt' : `exit reason ${reason}`, run.getUint16(34, true), exits, batch); // 5: KVM_EXIT_HLT
      };
    },
  };

  // struct kvm_regs and kvm_sregs sizes, from the addon's own layout.
  const RAW_REGS_SIZE = native.uapiLayout().kvm_regs.size;
  const RAW_SREGS_SIZE = native.uapiLayout().kvm_sregs.size;
  const VM_SIZE = 4 * MiB;
  const boot = { loadAt: 0x10000, stack: 0x90000, pageTables: 0x1000 };
  async function runVcpuExit(group, reps, batch, warmupMs, side) {
    const image = guestImage('port_loop');
    const kvm = Kvm.open();
    const vm = kvm.createVm();
    const gmem = vm.createGuestMemfd({ size: VM_SIZE, flags: SHARED });
    const mapping = gmem.map();
    let vcpu, runner, rawFd, spread = false;
    try {
      vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0, memorySize: VM_SIZE, userspaceAddr: mapping, guestMemfd: gmem });
      vcpu = vm.createVcpu(0);
      bootGuest(vcpu, { ...boot, image, args: [batch] });
      const restart = (n) => setEntry(vcpu, { entry: boot.loadAt, stack: boot.stack, args: [n] });
      const async = group === 'vcpu_exit_async';
      if (async && pin?.second != null) {
        // Start the vCPU's thread (a guest with nothing to do: one hlt exit), then spread.
        restart(0);
        await vcpu.runAsync();
        spread = true;
        setAffinity(process.pid, pin.second, true);
        setAffinity(vcpu.threadId, pin.cpu);
      }
      // The raw runner needs a vCPU no library Vcpu owns (one runner per vCPU): vCPU 1, made by
      // the addon and given vCPU 0's CPUID, special and general registers.
      const regs = new Uint8Array(RAW_REGS_SIZE);
      const restartRaw = (n) => {
        restart(n);
        native.getRegs(vcpu.fd, regs);
        native.setRegs(rawFd, regs);
      };
      if (side === 'addon') {
        rawFd = native.createVcpu(vm.fd, 1);
        native.setCpuid2(rawFd, native.getCpuid2(vcpu.fd));
        const sregs = new Uint8Array(RAW_SREGS_SIZE);
        native.getSregs(vcpu.fd, sregs);
        native.setSregs(rawFd, sregs);
        runner = new native.VcpuRunner(rawFd, kvm.vcpuMmapSize());
      }
      const start = side === 'addon' ? restartRaw : restart;
      const loop = vcpuLoops[side === 'addon' ? 'addon' : async ? 'lib_async' : 'lib'](vcpu, batch, runner);
      const vmas = countVmas();
      const warmEnd = now() + warmupMs * 1e6;
      do {
        start(batch);
        await loop();
      } while (now() < warmEnd);
      const samples = [];
      for (let rep = 0; rep < reps; rep++) {
        start(batch);
        const t0 = now();
        await loop();
        samples.push((now() - t0) / batch);
      }
      return { vmas, samples: { [group]: samples } };
    } finally {
      if (spread) setAffinity(process.pid, pin.cpu, true);
      runner?.close();
      if (rawFd !== undefined) native.close(rawFd);
      vcpu?.close();
      vm.close();
      mapping.close();
      gmem.close();
      kvm.close();
    }
  }

  // Private memory: the same fixture as bench.c's private groups, a SW_PROTECTED VM, a 2 MiB
  // guest_memfd (flags 0) and 2 MiB of anonymous memory (Mapping.anonymous) in memslot 0 at gpa 0.
  // Each loop returns the nanoseconds it timed: all of it for mem_attributes; only the
  // conversions for convert (before each pair, untimed, the shared pages are written and the
  // guest_memfd allocated, so each discard frees 2 MiB); only the pre-fault for prefault (the
  // memslot is added before and deleted after each call, untimed, so each call maps all of it).
  const PRIVATE = MemoryAttribute.PRIVATE;
  const PUNCH = 3; // FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
  const slot = (p) => ({ slot: 0, guestPhysAddr: 0, memorySize: SMALL, userspaceAddr: p.shared, guestMemfd: p.gmem });
  const privateLoops = {
    lib: {
      mem_attributes: ({ vm }) => (n) => {
        const t0 = now();
        for (let i = 0; i < n; i++) vm.setMemoryAttributes(0, SMALL, i & 1 ? 0n : PRIVATE);
        return now() - t0;
      },
      convert: ({ vm, gmem, shared }) => (n) => {
        let timed = 0;
        for (let i = 0; i < n; i++) {
          shared.bytes.fill(1);
          gmem.allocate(0, SMALL);
          const t0 = now();
          vm.convertMemory(0, SMALL, 'private');
          vm.convertMemory(0, SMALL, 'shared');
          timed += now() - t0;
        }
        return timed;
      },
      prefault: (p) => (n) => {
        let timed = 0;
        for (let i = 0; i < n; i++) {
          p.vm.setUserMemoryRegion2(slot(p));
          const t0 = now();
          p.vcpu.preFaultMemory(0, SMALL);
          timed += now() - t0;
          p.vm.deleteMemoryRegion(0);
        }
        return timed;
      },
    },
    addon: {
      mem_attributes: ({ vm }) => {
        const fd = vm.fd;
        return (n) => {
          const t0 = now();
          for (let i = 0; i < n; i++) native.setMemoryAttributes(fd, 0, SMALL, i & 1 ? 0n : PRIVATE, 0);
          return now() - t0;
        };
      },
      convert: ({ vm, gmem, shared }) => {
        const [fd, gfd, buffer, bytes] = [vm.fd, gmem.fd, shared.bytes.buffer, shared.bytes];
        return (n) => {
          let timed = 0;
          for (let i = 0; i < n; i++) {
            bytes.fill(1);
            gmem.allocate(0, SMALL);
            const t0 = now();
            native.setMemoryAttributes(fd, 0, SMALL, PRIVATE, 0);
            native.madvise(buffer, 0, SMALL, Madvise.DONTNEED);
            native.setMemoryAttributes(fd, 0, SMALL, 0n, 0);
            native.fallocate(gfd, PUNCH, 0, SMALL);
            timed += now() - t0;
          }
          return timed;
        };
      },
      prefault: ({ vm, gmem, shared, vcpu }) => {
        const [fd, gfd, addr, vfd] = [vm.fd, gmem.fd, shared.address, vcpu.fd];
        const out = new BigUint64Array(2);
        return (n) => {
          let timed = 0;
          for (let i = 0; i < n; i++) {
            native.setUserMemoryRegion2(fd, 0, MemslotFlag.GUEST_MEMFD, 0, SMALL, addr, 0, gfd);
            const t0 = now();
            let [gpa, size] = [0n, BigInt(SMALL)];
            for (let retries = 0; size > 0n;) {
              const err = native.preFaultMemory(vfd, gpa, size, 0, out);
              if (err !== 0 && !((err === 4 || err === 11) && ++retries <= 100)) throw new Error(`KVM_PRE_FAULT_MEMORY failed: errno ${err}`);
              if (err === 0) retries = 0;
              [gpa, size] = [out[0], out[1]];
            }
            timed += now() - t0;
            native.setUserMemoryRegion2(fd, 0, 0, 0, 0, 0, 0, 0);
          }
          return timed;
        };
      },
    },
  };

  // Why this host cannot run `group` (the same checks as bench.c), or undefined.
  function privateSkip(kvm, vm, group) {
    const types = kvm.checkExtension(Cap.VM_TYPES);
    if (!(types & (1 << VmType.SW_PROTECTED))) return `no SW_PROTECTED VM type (KVM_CAP_VM_TYPES 0x${types.toString(16)})`;
    if (vm === undefined) return undefined;
    const attrs = vm.checkExtension(Cap.MEMORY_ATTRIBUTES);
    if (!(BigInt(attrs) & PRIVATE)) return `no PRIVATE attribute on a SW_PROTECTED VM (KVM_CAP_MEMORY_ATTRIBUTES 0x${attrs.toString(16)})`;
    if (group === 'prefault' && vm.checkExtension(Cap.PRE_FAULT_MEMORY) <= 0) return 'KVM_CAP_PRE_FAULT_MEMORY 0 (no TDP)';
    return undefined;
  }

  function runPrivate(group, reps, batch, warmupMs, side) {
    const kvm = Kvm.open();
    const p = { kvm };
    try {
      const early = privateSkip(kvm, undefined, group);
      if (early !== undefined) return { vmas: countVmas(), skipped: early };
      p.vm = kvm.createVm(VmType.SW_PROTECTED);
      const skipped = privateSkip(kvm, p.vm, group);
      if (skipped !== undefined) return { vmas: countVmas(), skipped };
      p.gmem = p.vm.createGuestMemfd({ size: SMALL });
      p.shared = Mapping.anonymous(SMALL);
      p.vm.setUserMemoryRegion2(slot(p));
      if (group === 'prefault') {
        p.vcpu = p.vm.createVcpu(0);
        p.vm.setMemoryAttributes(0, SMALL, PRIVATE);
        p.gmem.allocate(0, SMALL); // allocated once: the calls map, not allocate
        p.vm.deleteMemoryRegion(0);
      }
      const run = privateLoops[side === 'addon' ? 'addon' : 'lib'][group](p);
      const vmas = countVmas();
      const warmEnd = now() + warmupMs * 1e6;
      do run(batch);
      while (now() < warmEnd);
      const samples = [];
      for (let rep = 0; rep < reps; rep++) samples.push(run(batch) / batch);
      return { vmas, samples: { [group]: samples } };
    } finally {
      p.vcpu?.close();
      if (p.vm?.memslots.has(0)) p.vm.deleteMemoryRegion(0);
      p.shared?.close();
      p.gmem?.close();
      p.vm?.close();
      kvm.close();
    }
  }

  return (group, reps, batch, warmupMs, side) =>
    PRIVATE_GROUPS.has(group) ? runPrivate(group, reps, batch, warmupMs, side)
    : group === 'falloc' ? runFalloc(reps)
    : group === 'fill' ? runFill(reps)
    : VCPU_GROUPS.has(group) ? runVcpuExit(group, reps, batch, warmupMs, side)
    : runPerCall(group, reps, batch, warmupMs, side);
}

async function compileC(dir) {
  const src = path.join(root, 'scripts', 'bench', 'bench.c');
  const bin = path.join(dir, 'bench');
  try {
    await $`cc -O2 -Wall -o ${bin} ${src}`.quiet();
  } catch (e) {
    throw new Error(`cannot compile ${path.relative(root, src)} with cc -O2: ${(e.stderr || e.message).trim()}`);
  }
  // The C program inherits this (main) thread's CPU affinity: the pinned CPU.
  return async (group, reps, batch, warmupMs, image) => {
    const cGroup = C_GROUP[group] ?? group;
    const extra = VCPU_GROUPS.has(group) ? [image] : [];
    const out = await $`${bin} ${cGroup} ${reps} ${batch} ${warmupMs} ${extra}`.quiet().nothrow();
    if (out.exitCode !== 0) throw new Error(`the C baseline failed (${cGroup}, exit ${out.exitCode ?? out.signal}): ${out.stderr.trim()}`);
    const { vmas, skipped, ...metrics } = JSON.parse(out.stdout);
    if (skipped !== undefined) return { vmas, skipped };
    // Samples under the library group's metric names (vcpu_exit_async: C's vcpu_exit loop).
    return { vmas, samples: Object.fromEntries(Object.entries(metrics).map(([k, v]) => [cGroup === group ? k : group, v.samples])) };
  };
}

function fmtValue(unit, v) {
  if (unit === 'B/s') return `${(v / GiB).toFixed(2)} GiB/s`;
  if (v < 1e3) return `${v.toFixed(1)} ns`;
  if (v < 1e6) return `${(v / 1e3).toFixed(2)} µs`;
  return `${(v / 1e6).toFixed(2)} ms`;
}

function printTable(results) {
  const rows = [
    ['operation', 'C median', 'library median', 'lib/C', 'target', 'result', 'addon median', 'addon/C'],
    ...results.map((r) => r.skipped !== undefined ? [
      r.operation, 'skipped', 'skipped', '-',
      r.target.max !== undefined ? `<= ${r.target.max.toFixed(2)}` : `>= ${r.target.min.toFixed(2)}`,
      'SKIP', '-', '-',
    ] : [
      r.operation, fmtValue(r.unit, r.c.median), fmtValue(r.unit, r.lib.median), r.ratio.toFixed(3),
      r.target.max !== undefined ? `<= ${r.target.max.toFixed(2)}` : `>= ${r.target.min.toFixed(2)}`,
      r.pass ? 'PASS' : 'MISS',
      r.addon ? fmtValue(r.unit, r.addon.median) : '-', r.addon ? r.addon.ratio.toFixed(3) : '-',
    ]),
  ];
  const widths = rows[0].map((_, i) => Math.max(...rows.map((row) => row[i].length)));
  const line = (row) => row.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]) : cell.padStart(widths[i]))).join('  ');
  console.log(line(rows[0]));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const row of rows.slice(1)) console.log(line(row));
  console.log(
    `\nlib/C: ratio of medians (times: library/C, lower is better; fills: library/C bandwidth, higher is better).` +
      `\naddon: the same calls through the raw addon without the TypeScript layer (the floor of Node-API` +
      ` plus a multi-threaded process); library - addon is what the library's own code costs.` +
      `\n${plan.rounds} rounds, C and library alternating; per-call rows: ${plan.perCallReps} batches per round and side;` +
      ` ${pin === null ? 'not pinned' : `both pinned to CPU ${pin.cpu}`}.`,
  );
  // Each group's notes only when its rows ran (--only may leave them out).
  const ran = (g) => GROUPS.includes(g);
  if (ran('vcpu_exit') || ran('vcpu_exit_async')) console.log(
      `vCPU port exit rows: the port_loop guest makes ${plan.batch.vcpu_exit} port-write exits per batch` +
      ` (${plan.perCallReps} batches per round and side), time per exit; C runs KVM_RUN in a loop on its main thread.` +
      `\n  run(): the library's main thread runs KVM_RUN${pin === null ? '' : ` (CPU ${pin.cpu})`}; addon: the raw runner's run().` +
      `\n  runAsync(): ${asyncPlacement()}; no addon column (the library's hand-back is its own code).`,
  );
  if ([...PRIVATE_GROUPS].some(ran)) console.log(
      `Private-memory rows: a SW_PROTECTED VM, a 2 MiB guest_memfd (flags 0) and 2 MiB of anonymous memory in memslot 0.` +
      `\n  KVM_SET_MEMORY_ATTRIBUTES: one call sets PRIVATE or 0 on the 2 MiB in turn (library: vm.setMemoryAttributes(), which also keeps its record).` +
      `\n  convertMemory: time per private -> shared pair (library: vm.convertMemory(); C: attributes + MADV_DONTNEED of the shared side,` +
      ` attributes + PUNCH_HOLE of the guest_memfd); untimed before each pair, the shared pages are written and the guest_memfd allocated.` +
      `\n  KVM_PRE_FAULT_MEMORY: only the pre-fault of the private 2 MiB (allocated) from vCPU 0 is timed; the memslot is added before` +
      ` and deleted after each one (untimed), so every call maps all of it again.`,
  );
  for (const r of results.filter((x) => x.skipped !== undefined)) console.log(`skipped: ${r.operation}: ${r.skipped}`);
}

// Where the runAsync() row ran, for the report.
function asyncPlacement() {
  if (pin === null) return 'not pinned';
  if (pin.second === null) return `one CPU allowed: the vCPU thread and the main thread share CPU ${pin.cpu}`;
  return `the vCPU's thread (KVM_RUN) pinned to CPU ${pin.cpu} like C, the main thread and Node's other threads to CPU ${pin.second}`;
}

async function main() {
  const library = await loadLibrary();
  pinProcess(); // after loading the library: see "Pinning" above
  const runLib = libraryRunner(library);
  const image = library.guestImagePath('port_loop');
  if (!fs.existsSync(image)) throw new Error(`the guest image ${path.relative(process.cwd(), image)} is missing: run npm run build:native`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvm-gmem-bench-'));
  try {
    progress('bench: compiling scripts/bench/bench.c');
    const runC = await compileC(dir);
    const samples = { c: {}, lib: {}, addon: {} };
    const vmas = { c: {}, lib: {}, addon: {} }; // per group, the largest count seen
    const skipped = {}; // group -> why (the first side that could not run it says)
    for (const [gi, group] of GROUPS.entries()) {
      const reps = group === 'falloc' ? plan.fallocReps : group === 'fill' ? plan.fillReps : plan.perCallReps;
      const batch = plan.batch[group] ?? 1;
      for (let round = 0; round < plan.rounds && skipped[group] === undefined; round++) {
        const sides = ADDON_GROUPS.has(group) ? ['c', 'lib', 'addon'] : ['c', 'lib'];
        for (const side of round % 2 ? sides.reverse() : sides) {
          progress(`bench: [${gi + 1}/${GROUPS.length}] ${group}: round ${round + 1}/${plan.rounds}, ${side === 'c' ? 'C' : side === 'lib' ? 'library' : 'addon'}`);
          const got = side === 'c' ? await runC(group, reps, batch, plan.warmupMs, image) : await runLib(group, reps, batch, plan.warmupMs, side);
          if (got.skipped !== undefined) {
            skipped[group] = `${side === 'c' ? 'C' : side === 'lib' ? 'library' : 'addon'}: ${got.skipped}`;
            break;
          }
          for (const [k, xs] of Object.entries(got.samples)) (samples[side][k] ??= []).push(...xs);
          vmas[side][group] = Math.max(vmas[side][group] ?? 0, got.vmas);
        }
      }
    }
    if (tty) process.stderr.write('\r\x1b[K');

    const results = ROWS.map((m) => {
      const target = m.max !== undefined ? { max: m.max } : { min: m.min };
      if (skipped[m.group] !== undefined) return { key: m.key, operation: m.name, unit: m.unit, target, skipped: skipped[m.group] };
      const c = median(samples.c[m.key]);
      const lib = median(samples.lib[m.key]);
      const ratio = lib / c;
      const addon = samples.addon[m.key] ? median(samples.addon[m.key]) : undefined;
      return {
        key: m.key, operation: m.name, unit: m.unit,
        c: { median: c, samples: samples.c[m.key] },
        lib: { median: lib, samples: samples.lib[m.key] },
        ratio, target, pass: m.max !== undefined ? ratio <= m.max : ratio >= m.min,
        ...(addon !== undefined ? { addon: { median: addon, ratio: addon / c, samples: samples.addon[m.key] } } : {}),
      };
    });
    if (argv.json) {
      const host = {
        kernel: os.release(), cpus: os.cpus().length, allowedCpus, pinnedCpu: pin?.cpu ?? null,
        runAsyncPinning: pin === null ? null : pin.second === null ? { vcpuThread: pin.cpu, mainThread: pin.cpu } : { vcpuThread: pin.cpu, mainThread: pin.second, otherThreads: pin.second },
      };
      console.log(JSON.stringify({ quick: !!argv.quick, plan, host, vmas, results }, null, 2));
    } else {
      printTable(results);
      if (vmas.lib.vm !== undefined) console.log(
        `VM create+close walks every VMA of the calling process (mmu_notifier_register -> mm_take_all_locks):` +
          ` ${vmas.lib.vm} VMAs in this process, ${vmas.c.vm} in bench.c.`,
      );
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

try {
  await main();
} catch (e) {
  if (tty) process.stderr.write('\r\x1b[K');
  console.error(`bench: error: ${e.message}`);
  process.exit(1);
}
