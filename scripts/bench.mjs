#!/usr/bin/env zx
// npm run bench [-- --quick] [-- --json]
//
// Times the same kernel operations from a small C program (scripts/bench/bench.c) and from the
// library (dist/, in this process), and reports library / C ratios against targets. Absolute
// times on shared machines are noise; ratios within one run are not (see DESIGN.md, "How
// performance is judged"). This is a report, not a test: a missed target still exits 0; a real
// error (no compiler, no /dev/kvm, a failing call) exits 1.
//
// Noise control: every operation runs in several rounds; each round runs C then the library, or
// the library then C (alternating), so slow phases of the machine hit both sides. Each side does
// one untimed warm-up repetition per round. Per-call operations time a batch of calls and divide.
// The reported figure is the median of all samples of a side.
import { $, argv, fs, os, path } from 'zx';
import { fileURLToPath, pathToFileURL } from 'node:url';

const USAGE = 'usage: npm run bench [-- --quick] [-- --json]';
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

const unknown = Object.keys(argv).filter((k) => !['_', 'quick', 'json', 'help'].includes(k));
if (argv.help) {
  console.log(`${USAGE}\n  --quick  fewer rounds and smaller batches (a smoke run)\n  --json   machine-readable output on stdout`);
  process.exit(0);
}
if (unknown.length || argv._.length || [argv.quick, argv.json].some((v) => v !== undefined && typeof v !== 'boolean')) {
  console.error(`bench: unexpected arguments ${JSON.stringify(process.argv.slice(2))}\n${USAGE}`);
  process.exit(2);
}

const MiB = 1 << 20;
const GiB = 1 << 30;
const SMALL = 2 * MiB;
const BIG = GiB;

// Rounds per operation; per round and side: `reps` timed samples of `batch` calls each.
const plan = argv.quick
  ? { rounds: 2, perCallReps: 3, batch: { check_extension: 10000, vm: 20, gmem: 500, memslot: 200 }, fallocReps: 2, fillReps: 1 }
  : { rounds: 5, perCallReps: 7, batch: { check_extension: 50000, vm: 50, gmem: 2000, memslot: 1000 }, fallocReps: 4, fillReps: 2 };

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
];
const GROUPS = [...new Set(METRICS.map((m) => m.group))];

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
  const lib = path.join(root, 'lib');
  const newer = fs.readdirSync(lib, { recursive: true }).filter((f) => f.endsWith('.ts') && fs.statSync(path.join(lib, f)).mtimeMs > built);
  if (newer.length) console.error(`bench: warning: dist/ is older than lib/ (${newer.join(', ')}): run npm run build to bench the current sources`);
  return import(pathToFileURL(dist).href);
}

// The library side of each group: returns { metricKey: samples[] }, the same shape as bench.c.
function libraryRunner({ Kvm, Cap, GuestMemfdFlag }) {
  const SHARED = GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED;
  const now = () => Number(process.hrtime.bigint());

  // Per-call groups: `makeBatch` returns a function running n calls with the loop inlined, so the
  // benchmark harness adds no call of its own per operation (C calls through a pointer, ~1 ns).
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

  // Same fixture as bench.c: /dev/kvm, one VM, a 2 MiB MMAP|INIT_SHARED guest_memfd mapped.
  function runPerCall(group, reps, batch) {
    const kvm = Kvm.open();
    const vm = kvm.createVm();
    const gmem = vm.createGuestMemfd({ size: SMALL, flags: SHARED });
    const mapping = gmem.map();
    try {
      const run = perCall[group]({ kvm, vm, gmem, mapping });
      const samples = [];
      for (let rep = -1; rep < reps; rep++) { // rep -1 is the warm-up
        const t0 = now();
        run(batch);
        if (rep >= 0) samples.push((now() - t0) / batch);
      }
      return { [group]: samples };
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
      return fn(gmem);
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

  return (group, reps, batch) =>
    group === 'falloc' ? runFalloc(reps) : group === 'fill' ? runFill(reps) : runPerCall(group, reps, batch);
}

async function compileC(dir) {
  const src = path.join(root, 'scripts', 'bench', 'bench.c');
  const bin = path.join(dir, 'bench');
  try {
    await $`cc -O2 -Wall -o ${bin} ${src}`.quiet();
  } catch (e) {
    throw new Error(`cannot compile ${path.relative(root, src)} with cc -O2: ${(e.stderr || e.message).trim()}`);
  }
  return async (group, reps, batch) => {
    const out = await $`${bin} ${group} ${reps} ${batch}`.quiet();
    const parsed = JSON.parse(out.stdout);
    return Object.fromEntries(Object.entries(parsed).map(([k, v]) => [k, v.samples]));
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
    ['operation', 'C median', 'library median', 'lib/C', 'target', 'result'],
    ...results.map((r) => [
      r.operation, fmtValue(r.unit, r.c.median), fmtValue(r.unit, r.lib.median), r.ratio.toFixed(3),
      r.target.max !== undefined ? `<= ${r.target.max.toFixed(2)}` : `>= ${r.target.min.toFixed(2)}`,
      r.pass ? 'PASS' : 'MISS',
    ]),
  ];
  const widths = rows[0].map((_, i) => Math.max(...rows.map((row) => row[i].length)));
  const line = (row) => row.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]) : cell.padStart(widths[i]))).join('  ');
  console.log(line(rows[0]));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const row of rows.slice(1)) console.log(line(row));
  console.log(
    `\nlib/C: ratio of medians (times: library/C, lower is better; fills: library/C bandwidth, higher is better).` +
      `\n${plan.rounds} rounds, C and library alternating; per-call rows: ${plan.perCallReps} batches per round and side.`,
  );
}

async function main() {
  const library = await loadLibrary();
  const runLib = libraryRunner(library);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvm-gmem-bench-'));
  try {
    progress('bench: compiling scripts/bench/bench.c');
    const runC = await compileC(dir);
    const samples = { c: {}, lib: {} };
    for (const [gi, group] of GROUPS.entries()) {
      const reps = group === 'falloc' ? plan.fallocReps : group === 'fill' ? plan.fillReps : plan.perCallReps;
      const batch = plan.batch[group] ?? 1;
      for (let round = 0; round < plan.rounds; round++) {
        for (const side of round % 2 ? ['lib', 'c'] : ['c', 'lib']) {
          progress(`bench: [${gi + 1}/${GROUPS.length}] ${group}: round ${round + 1}/${plan.rounds}, ${side === 'c' ? 'C' : 'library'}`);
          const got = side === 'c' ? await runC(group, reps, batch) : runLib(group, reps, batch);
          for (const [k, xs] of Object.entries(got)) (samples[side][k] ??= []).push(...xs);
        }
      }
    }
    if (tty) process.stderr.write('\r\x1b[K');

    const results = METRICS.map((m) => {
      const c = median(samples.c[m.key]);
      const lib = median(samples.lib[m.key]);
      const ratio = lib / c;
      const target = m.max !== undefined ? { max: m.max } : { min: m.min };
      return {
        key: m.key, operation: m.name, unit: m.unit,
        c: { median: c, samples: samples.c[m.key] },
        lib: { median: lib, samples: samples.lib[m.key] },
        ratio, target, pass: m.max !== undefined ? ratio <= m.max : ratio >= m.min,
      };
    });
    if (argv.json) {
      console.log(JSON.stringify({ quick: !!argv.quick, plan, host: { kernel: os.release(), cpus: os.cpus().length }, results }, null, 2));
    } else {
      printTable(results);
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
