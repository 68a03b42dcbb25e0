/**
 * Expectation files: the cases known to fail on a kind of host, each with the one failure it
 * is known for. A listed case that fails that way is an expected failure (XFAIL); one that fails
 * any other way is `not ok`, as is one that passes (XPASS: the host gained the behaviour and the
 * entry must go). An error (a case that reached no verdict) is never expected.
 *
 * Format (UTF-8 text, one entry per line):
 *
 *     # a comment
 *     when module=kvm_pvm kernel>=6.18
 *     guest_memfd_test.test_guest_memfd_guest -- exit mmio -- why it fails on such hosts
 *
 * An entry is a case-name pattern (`*` matches any run of characters; otherwise the whole name
 * must match), the failure it expects, and the reason, separated by ` -- `. The failure is one of:
 * - `errno CODE`: a check that expected a kernel call to fail another way got CODE (a KvmError
 *   thrown anywhere else in the case is a plain failure: a setup call that regresses stays visible);
 * - `succeeds`: a kernel call that should have failed succeeded;
 * - `exit REASON`: the guest stopped with an exit nobody handled (mmio, shutdown, hlt...);
 * - `message /REGEX/`: the failure message matches REGEX.
 *
 * `when COND...` makes the entries after it (until the next `when`) apply only where every
 * condition holds; `when any` applies to every host. Conditions:
 * - `kernel<7.2`, `kernel>=6.18` (also `<=`, `>`, `=`): the running kernel's release;
 * - `paging=tdp|shadow|unknown`;
 * - `module=kvm_pvm|kvm_amd|kvm_intel`: the KVM vendor module loaded;
 * - `vm_type=DEFAULT|SW_PROTECTED|...`: the case's VM type (cases without one never match).
 * @module
 */
import { readFileSync } from 'node:fs';
import { UnexpectedExitError } from '../guest/ucall.js';
import { SelftestFailure, type CaseOutcome, type SelftestCase } from './harness.js';
import type { HostFacts } from './host.js';

/** The one failure an entry expects. */
export type ExpectedFailure =
  | { kind: 'errno'; code: string }
  | { kind: 'succeeds' }
  | { kind: 'exit'; reason: string }
  | { kind: 'message'; pattern: RegExp };

/** One condition of a `when` line. */
interface Condition {
  key: 'kernel' | 'paging' | 'module' | 'vm_type';
  op: '<' | '<=' | '=' | '>=' | '>';
  value: string;
}

/** One line of an expectation file. */
export interface Expectation {
  /** The case-name pattern. */
  pattern: string;
  /** The failure it expects. */
  failure: ExpectedFailure;
  /** The failure as written (`errno EINVAL`). */
  failureText: string;
  /** Why the case fails. */
  reason: string;
  /** The `when` line in force (`any` if none). */
  when: string;
  /** Whether the host conditions (all but vm_type) hold here. */
  applies: boolean;
  /** The vm_type condition, checked per case; undefined if none. */
  vmType?: string;
  /** The line number, for messages. */
  line: number;
}

/** A parsed file. */
export interface ExpectationFile {
  /** The path it was read from. */
  path: string;
  /** Every entry, applying here or not. */
  entries: Expectation[];
}

const KEYS = ['kernel', 'paging', 'module', 'vm_type'] as const;

/** Reads and parses an expectation file; throws an Error naming the line for bad syntax. */
export function loadExpectations(path: string, host: HostFacts): ExpectationFile {
  return parseExpectations(readFileSync(path, 'utf8'), path, host);
}

/** Parses expectation text (see the module comment). */
export function parseExpectations(text: string, path: string, host: HostFacts): ExpectationFile {
  const entries: Expectation[] = [];
  let when = 'any';
  let conds: Condition[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    const where = `${path}:${i + 1}`;
    if (line === '' || line.startsWith('#')) return;
    const w = /^when\s+(.+)$/.exec(line);
    if (w) {
      when = w[1]!.trim();
      conds = when === 'any' ? [] : when.split(/\s+/).map((c) => parseCondition(c, where));
      return;
    }
    const parts = line.split(' -- ');
    if (parts.length !== 3 || parts.some((p) => p.trim() === '')) {
      throw new Error(`${where}: expected "PATTERN -- FAILURE -- REASON" or "when CONDITION...", got: ${line}`);
    }
    const [pattern, failureText, reason] = parts.map((p) => p.trim()) as [string, string, string];
    const vm = conds.find((c) => c.key === 'vm_type');
    entries.push({
      pattern, failure: parseFailure(failureText, where), failureText, reason, when,
      applies: conds.every((c) => c.key === 'vm_type' || holds(c, host)),
      line: i + 1, ...(vm ? { vmType: vm.value } : {}),
    });
  });
  return { path, entries };
}

function parseCondition(text: string, where: string): Condition {
  const m = /^(\w+)(<=|>=|<|>|=)(\S+)$/.exec(text);
  const key = m?.[1] as Condition['key'] | undefined;
  if (!m || !key || !(KEYS as readonly string[]).includes(key)) {
    throw new Error(`${where}: unknown condition "${text}" (known: any, ${KEYS.map((k) => `${k}=VALUE`).join(', ')}; kernel also takes <, <=, >=, >)`);
  }
  const op = m[2] as Condition['op'];
  if (key !== 'kernel' && op !== '=') throw new Error(`${where}: "${key}" takes only "=" (got "${text}")`);
  if (key === 'kernel' && parseVersion(m[3]!) === undefined) throw new Error(`${where}: "${m[3]!}" is not a kernel version like 7.2`);
  return { key, op, value: m[3]! };
}

function parseFailure(text: string, where: string): ExpectedFailure {
  if (text === 'succeeds') return { kind: 'succeeds' };
  const m = /^(errno|exit|message)\s+(.+)$/.exec(text);
  if (m?.[1] === 'errno' && /^E[A-Z0-9]+$/.test(m[2]!)) return { kind: 'errno', code: m[2]! };
  if (m?.[1] === 'exit' && /^[a-z_]+$/.test(m[2]!)) return { kind: 'exit', reason: m[2]! };
  const re = m?.[1] === 'message' ? /^\/(.+)\/$/.exec(m[2]!) : null;
  if (re) return { kind: 'message', pattern: new RegExp(re[1]!) };
  throw new Error(`${where}: the failure must be "errno ECODE", "succeeds", "exit REASON" or "message /REGEX/" (got "${text}")`);
}

/** A kernel release's leading numbers ('7.2.13+deb14-amd64' -> [7, 2, 13]). */
function parseVersion(v: string): number[] | undefined {
  const m = /^(\d+)\.(\d+)(?:\.(\d+))?/.exec(v);
  return m ? [Number(m[1]), Number(m[2]), Number(m[3] ?? 0)] : undefined;
}

function compareVersions(a: number[], b: number[]): number {
  for (let i = 0; i < 3; i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
  return 0;
}

function holds(c: Condition, host: HostFacts): boolean {
  switch (c.key) {
    case 'paging': return host.paging.mode === c.value;
    case 'module': return host.paging.module === c.value;
    case 'vm_type': return false; // decided per case
    case 'kernel': {
      const have = parseVersion(host.release);
      if (!have) return false;
      const d = compareVersions(have, parseVersion(c.value)!);
      return { '<': d < 0, '<=': d <= 0, '=': d === 0, '>=': d >= 0, '>': d > 0 }[c.op];
    }
  }
}

/** Whether `name` matches `pattern` (`*` = any run of characters, otherwise exact). */
export function matchesPattern(pattern: string, name: string): boolean {
  if (!pattern.includes('*')) return pattern === name;
  const re = new RegExp(`^${pattern.split('*').map(escapeRegExp).join('.*')}$`);
  return re.test(name);
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** The case fields an expectation looks at. */
export type ExpectationTarget = Pick<SelftestCase, 'name'> & { vmType?: string };

/** The entry that applies to case `c` on this host, if any. */
export function expectationFor(file: ExpectationFile | undefined, c: ExpectationTarget): Expectation | undefined {
  return file?.entries.find((e) => e.applies && (e.vmType === undefined || e.vmType === c.vmType) && matchesPattern(e.pattern, c.name));
}

/** Whether a failed case failed the way `exp` expects. */
export function failureMatches(exp: Expectation, outcome: CaseOutcome): boolean {
  if (outcome.verdict !== 'fail') return false;
  const e = outcome.error;
  const f = exp.failure;
  switch (f.kind) {
    case 'errno':
      return e instanceof SelftestFailure && e.got === f.code;
    case 'succeeds':
      return e instanceof SelftestFailure && e.got === 'success';
    case 'exit':
      return e instanceof UnexpectedExitError && e.exit.reason === f.reason;
    case 'message':
      return f.pattern.test(outcome.reason ?? '');
  }
}
