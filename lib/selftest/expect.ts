/**
 * Expectation files: the cases known to fail on a kind of host, with the reason. A listed case
 * that fails is reported as an expected failure (XFAIL); one that passes is reported as XPASS
 * and fails the run, so a host that gains the behaviour is noticed and the file is updated.
 *
 * Format (UTF-8 text, one entry per line):
 *
 *     # a comment
 *     when paging=shadow
 *     guest_memfd_test.test_guest_memfd_guest -- why it fails on such hosts
 *
 * An entry is a case-name pattern (`*` matches any run of characters; otherwise the whole name
 * must match), ` -- `, and the reason. `when KEY=VALUE` makes the entries after it (until the
 * next `when`) apply only on hosts where that holds; `when any` applies to every host. Keys:
 * `paging` (tdp, shadow, unknown: see `kvm-gmem info`).
 * @module
 */
import { readFileSync } from 'node:fs';
import type { HostFacts } from './host.js';

/** One line of an expectation file. */
export interface Expectation {
  /** The case-name pattern. */
  pattern: string;
  /** Why the case fails. */
  reason: string;
  /** The `when` condition in force (`any` if none). */
  when: string;
  /** Whether the condition holds on this host. */
  applies: boolean;
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

const KEYS = ['paging'] as const;

/** Reads and parses an expectation file; throws an Error naming the line for bad syntax. */
export function loadExpectations(path: string, host: HostFacts): ExpectationFile {
  return parseExpectations(readFileSync(path, 'utf8'), path, host);
}

/** Parses expectation text (see the module comment). */
export function parseExpectations(text: string, path: string, host: HostFacts): ExpectationFile {
  const entries: Expectation[] = [];
  let when = 'any';
  let applies = true;
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    const where = `${path}:${i + 1}`;
    if (line === '' || line.startsWith('#')) return;
    const w = /^when\s+(.+)$/.exec(line);
    if (w) {
      when = w[1]!.trim();
      applies = conditionHolds(when, host, where);
      return;
    }
    const sep = line.indexOf(' -- ');
    if (sep <= 0) throw new Error(`${where}: expected "PATTERN -- REASON" or "when KEY=VALUE", got: ${line}`);
    const reason = line.slice(sep + 4).trim();
    if (reason === '') throw new Error(`${where}: the reason is empty`);
    entries.push({ pattern: line.slice(0, sep).trim(), reason, when, applies, line: i + 1 });
  });
  return { path, entries };
}

function conditionHolds(cond: string, host: HostFacts, where: string): boolean {
  if (cond === 'any') return true;
  const m = /^(\w+)=(\S+)$/.exec(cond);
  if (!m || !(KEYS as readonly string[]).includes(m[1]!)) {
    throw new Error(`${where}: unknown condition "${cond}" (known: any, ${KEYS.map((k) => `${k}=VALUE`).join(', ')})`);
  }
  return host.paging.mode === m[2];
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

/** The entry that applies to case `name` on this host, if any. */
export function expectationFor(file: ExpectationFile | undefined, name: string): Expectation | undefined {
  return file?.entries.find((e) => e.applies && matchesPattern(e.pattern, name));
}
