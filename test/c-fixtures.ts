/**
 * Small C programs the tests build with the system's cc at test time (as the build assembles the
 * guest images): senders and probes that are not the library, so that what they see or do does
 * not depend on the code under test.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';
import { ROOT } from './paths.js';

let dir: string | undefined;
afterAll(() => {
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
});

/** Compiles `source` (C) as `name` once per test file; returns the executable's path. */
export function compileC(name: string, source: string): string {
  dir ??= mkdtempSync(join(tmpdir(), 'kvm-gmem-c-'));
  const bin = join(dir, name);
  if (existsSync(bin)) return bin;
  const src = `${bin}.c`;
  writeFileSync(src, source);
  const cc = spawnSync('cc', ['-O1', '-Wall', '-Werror', '-o', bin, src], { encoding: 'utf8' });
  if (cc.error !== undefined) throw new Error(`cc is needed to build the test program ${name} (the addon's build needs it too): ${cc.error.message}`);
  if (cc.status !== 0) throw new Error(`cc ${name}.c failed (${cc.status}): ${cc.stderr}`);
  return bin;
}

/** Builds test/fixtures/`name`.c once per test file; returns the executable's path. */
export function fixture(name: string): string {
  return compileC(name, readFileSync(join(ROOT, 'test', 'fixtures', `${name}.c`), 'utf8'));
}

/** How test/fixtures/raw-send.c ended, and whether each fd it sent was close-on-exec in it. */
export interface RawSend {
  status: number | null;
  stderr: string;
  cloexec: boolean[];
}

/**
 * Sends one message over the socket `sock` from test/fixtures/raw-send.c, a sender that is not the
 * library (which never sends more than MAX_PAYLOAD bytes or more than its fd limit): `length` bytes
 * of `fill`, and `fds`: fds of this process (each passed down to the sender once), or
 * 'memfd:NAME' for a memfd the sender makes without MFD_CLOEXEC.
 */
export function rawSend(sock: number, length: number, fill: number, fds: readonly (number | string)[]): RawSend {
  const passed: number[] = [];
  const args = fds.map((f) => {
    if (typeof f === 'string') return f;
    const i = passed.indexOf(f);
    return String(4 + (i >= 0 ? i : passed.push(f) - 1)); // the sender's fds 4, 5...
  });
  const r = spawnSync(fixture('raw-send'), [String(length), String(fill), ...args], {
    stdio: ['ignore', 'pipe', 'pipe', sock, ...passed], encoding: 'utf8',
  });
  const line = r.stdout.split('\n').find((l) => l.startsWith('{'));
  return { status: r.status, stderr: r.stderr, cloexec: line === undefined ? [] : (JSON.parse(line) as { cloexec: boolean[] }).cloexec };
}
