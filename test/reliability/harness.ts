/**
 * What the reliability suite's scenarios share: the seed and scale of a run, child Node processes
 * run with a hard timeout (a hang fails the test instead of hanging the run), the JavaScript every
 * child starts with (fd, mapping and thread snapshots of itself), and the one summary line per
 * scenario that says how many operations it made.
 *
 * KVM_GMEM_RELIABILITY_SEED: the seed (a u32; random when unset, printed either way).
 * KVM_GMEM_RELIABILITY_SCALE: multiplies every operation count (default 1; 0.5 halves, 4 quadruples).
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, type TestContext } from 'vitest';
import { hangBound, REQUIRE_TOOLS } from '../kvm-host.js';
import { ROOT } from '../paths.js';

/** The run's seed: every scenario derives its own from it, so one can be replayed alone. */
export const SEED: number = (() => {
  const s = process.env.KVM_GMEM_RELIABILITY_SEED;
  if (s !== undefined && s !== '') {
    const n = Number(s);
    if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new Error(`KVM_GMEM_RELIABILITY_SEED must be a u32; got ${s}`);
    return n;
  }
  return (Math.random() * 0x100000000) >>> 0;
})();

/** How many times the default operation counts to make (fixed counts, never a time budget). */
export const SCALE: number = (() => {
  const s = process.env.KVM_GMEM_RELIABILITY_SCALE;
  if (s === undefined || s === '') return 1;
  const n = Number(s);
  if (!(n > 0) || !Number.isFinite(n)) throw new Error(`KVM_GMEM_RELIABILITY_SCALE must be a positive number; got ${s}`);
  return n;
})();

/** `n` scaled by SCALE, at least 1. */
export function scaled(n: number): number {
  return Math.max(1, Math.round(n * SCALE));
}

/** The seed of one scenario: the run's seed mixed with the scenario's name (FNV-1a). */
export function seedOf(scenario: string): number {
  let h = 0x811c9dc5 ^ SEED;
  for (const c of scenario) h = Math.imul(h ^ c.charCodeAt(0), 0x01000193) >>> 0;
  return h >>> 0;
}

/** Prints the scenario's one summary line: what ran, how often, with which seed, in how long. */
export function summary(scenario: string, counts: Record<string, number>, ms: number): string {
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  const parts = Object.entries(counts).map(([k, v]) => `${k}=${v}`).join(' ');
  const line = `[reliability] ${scenario}: ${total} operations (${parts}) in ${(ms / 1000).toFixed(1)} s; ` +
    `KVM_GMEM_RELIABILITY_SEED=${SEED} KVM_GMEM_RELIABILITY_SCALE=${SCALE}`;
  console.log(line);
  return line;
}

/** A module of the built package (dist/), as a JSON string for an import in a child's source. */
export function dist(name: string): string {
  const path = join(ROOT, 'dist', `${name}.js`);
  if (!existsSync(path)) throw new Error(`${path} is missing: run \`npm run build\` first`);
  return JSON.stringify(path);
}

const dir = mkdtempSync(join(tmpdir(), 'kvm-gmem-reliability-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A scratch directory for this test file (removed after it). */
export function scratch(): string {
  return dir;
}

/** Writes `source` to a fresh module file in the scratch directory; returns its path. */
export function writeModule(name: string, source: string): string {
  const file = join(dir, `${name}-${Math.random().toString(36).slice(2)}.mjs`);
  writeFileSync(file, source);
  return file;
}

/**
 * What every child module starts with: a seeded PRNG, snapshots of its own fd table, mappings
 * and threads, and a description of a thrown value. `rand()` is seeded with `SEED_HERE`.
 */
export function prelude(seed: number): string {
  return `
import { readdirSync, readlinkSync, readFileSync } from 'node:fs';
const SEED_HERE = ${seed >>> 0};
function mulberry32(a) {
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rand = mulberry32(SEED_HERE);
const randInt = (lo, hi) => lo + Math.floor(rand() * (hi - lo + 1));
const pick = (xs) => xs[Math.floor(rand() * xs.length)];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const out = (v) => process.stdout.write(JSON.stringify(v) + '\\n');
/** fd number -> link, for this process. */
const links = () => {
  const m = new Map();
  for (const n of readdirSync('/proc/self/fd')) {
    try { m.set(Number(n), readlinkSync('/proc/self/fd/' + n)); } catch {}
  }
  return m;
};
/** A KVM object's link: /dev/kvm, anon_inode:kvm-vm, anon_inode:kvm-vcpu:N, [kvm-gmem] (any kernel). */
const isKvmLink = (l) => l === '/dev/kvm' || /\\[kvm-gmem\\]|^anon_inode:kvm-/.test(l);
/** A mapping of a guest_memfd or of a vCPU's kvm_run (the addon's own file is not one). */
const isKvmMap = (l) => /\\[kvm-gmem\\]|anon_inode:kvm-/.test(l);
const snap = () => {
  const l = [...links().values()];
  return {
    fds: l.length,
    links: l,
    kvm: l.filter(isKvmLink),
    maps: readFileSync('/proc/self/maps', 'utf8').split('\\n').filter(isKvmMap),
    threads: readdirSync('/proc/self/task').length,
  };
};
/** The links in \`now\` beyond those in \`before\` (as multisets; socket inode numbers dropped). */
const newLinks = (before, now) => {
  const strip = (x) => x.replace(/\\[\\d+\\]$/, '[]');
  const left = new Map();
  for (const x of before) left.set(strip(x), (left.get(strip(x)) ?? 0) + 1);
  const extra = [];
  for (const x of now) {
    const n = left.get(strip(x)) ?? 0;
    if (n > 0) left.set(strip(x), n - 1); else extra.push(x);
  }
  return extra;
};
const describeError = (e) => (e !== null && typeof e === 'object')
  ? { ctor: e.constructor?.name, name: e.name, code: e.code, syscall: e.syscall, message: String(e.message).slice(0, 300) }
  : { thrown: String(e) };
`;
}

/** How a child process ended, and what it printed. */
export interface ChildRun {
  status: number | null;
  signal: NodeJS.Signals | null;
  /** Killed by the harness after its timeout: it hung. */
  timedOut: boolean;
  stdout: string;
  stderr: string;
  ms: number;
}

export interface ChildOptions {
  /** Killed (SIGKILL, whole process group) after this long on real hardware (scaled by hangBound). */
  timeoutMs: number;
  /** Runs the child through a wrapper: e.g. ['prlimit', '--nofile=64:64', '--']. */
  wrapper?: readonly string[];
  env?: Record<string, string>;
  /** Extra fds for the child: they become its fds 3, 4... */
  extraFds?: readonly number[];
  /** node flags before the script. */
  nodeArgs?: readonly string[];
}

/** Runs `source` (an ES module) in a child Node process; kills it if it outlives its timeout. */
export function runNode(source: string, opts: ChildOptions): Promise<ChildRun> {
  const file = writeModule('child', source);
  const argv = [...(opts.wrapper ?? []), process.execPath, ...(opts.nodeArgs ?? []), file];
  const t0 = performance.now();
  const p = spawn(argv[0]!, argv.slice(1), {
    stdio: ['ignore', 'pipe', 'pipe', ...(opts.extraFds ?? [])],
    env: { ...process.env, ...opts.env },
    detached: true, // its own process group: a hung child's children die with it
  });
  let stdout = '';
  let stderr = '';
  p.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  p.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      process.kill(-p.pid!, 'SIGKILL');
    } catch {
      p.kill('SIGKILL');
    }
  }, hangBound(opts.timeoutMs));
  return new Promise((resolve, reject) => {
    p.on('error', reject);
    p.on('close', (status, signal) => {
      clearTimeout(timer);
      resolve({ status, signal, timedOut, stdout, stderr, ms: performance.now() - t0 });
    });
  });
}

/** The JSON lines a child printed, parsed (other lines are kept for messages). */
export function jsonLines(c: ChildRun): Record<string, unknown>[] {
  return c.stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** The last JSON line of kind `type` ({ type, ... }) the child printed; throws with its output if none. */
// eslint-disable-next-line @typescript-eslint/no-unnecessary-type-parameters -- the caller names the line's shape
export function result<T = Record<string, unknown>>(c: ChildRun, type = 'result'): T {
  const found = jsonLines(c).filter((l) => l.type === type);
  if (found.length === 0) throw new Error(`the child printed no ${type} line: ${describeRun(c)}`);
  return found[found.length - 1] as T;
}

/** A child's ending and output, for assertion messages. */
export function describeRun(c: ChildRun): string {
  return `status ${c.status}, signal ${c.signal}${c.timedOut ? ' (killed: it hung)' : ''}, ${Math.round(c.ms)} ms; ` +
    `stderr: ${c.stderr.slice(0, 2000) || '(none)'}; stdout tail: ${c.stdout.slice(-2000)}`;
}

/** Checks that a child ended by itself, with `status` and nothing on stderr; messages name the seed. */
export function expectEnded(c: ChildRun, seed: number | undefined, status = 0): void {
  const what = `${seed === undefined ? '' : `seed ${seed}: `}${describeRun(c)}`;
  expect(c.timedOut, `the child hung: ${what}`).toBe(false);
  expect(c.stderr, what).toBe('');
  expect(c.status, what).toBe(status);
}

/** An operation a scenario tried that failed, with the error the child described. */
export interface Refusal {
  op: string;
  error?: { ctor?: string; code?: string; syscall?: string } | undefined;
}

/** Prints one line: each distinct error the refused operations of a scenario met. */
export function printRefusals(scenario: string, refused: readonly Refusal[], note = ''): string {
  const codes = [...new Set(refused.map((t) => `${t.op}: ${t.error?.ctor} ${t.error?.code ?? '(no code)'} (${t.error?.syscall ?? '-'})`))].sort();
  const line = `[reliability] ${scenario}: ${refused.length} refused: ${codes.join('; ')}${note}`;
  console.log(line);
  return line;
}

/** The python3 that hostile peers run on, or undefined (its real path: pyenv shims cost a second each). */
export function python3(): Promise<string | undefined> {
  return new Promise((resolve) => {
    const p = spawn('python3', ['-c', 'import socket, sys; socket.send_fds; print(sys.executable)'], { stdio: ['ignore', 'pipe', 'ignore'] });
    let s = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => (s += d));
    p.on('error', () => resolve(undefined));
    p.on('close', (code) => resolve(code === 0 && s.trim() !== '' ? s.trim() : undefined));
  });
}

/**
 * python3 for a hostile peer (README lists it among the requirements). Its absence skips the test
 * on a developer's machine, and fails it in CI and under KVM_GMEM_REQUIRE_KVM=1: these are
 * security tests, and a skipped one passes silently.
 */
export async function needPython(ctx: TestContext): Promise<string> {
  const py = await python3();
  if (py === undefined) {
    const reason = 'python3 (3.9+, with socket.send_fds) is missing: the hostile peers need it';
    if (REQUIRE_TOOLS) throw new Error(`${reason} (a failure, not a skip, in CI and under KVM_GMEM_REQUIRE_KVM=1)`);
    ctx.skip(reason);
  }
  return py;
}
