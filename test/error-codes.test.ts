// One error module: every code the library's sources (lib/ and native/) can throw is in the
// exported KvmErrorCode union, whose non-errno members are these lists.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ARG_CODES, STATE_CODES } from '../lib/core/errors.js';
import type { KvmErrorCode } from '../lib/index.js';
import { ROOT } from './paths.js';

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && /\.(ts|cc|h)$/.test(e.name))
    .map((e) => join(e.parentPath, e.name));
}

describe('error codes', () => {
  it('every ERR_ code in lib/ and native/ is a KvmErrorCode', () => {
    const known = new Set<string>([...STATE_CODES, ...ARG_CODES, 'ERR_KVM_SIGBUS']);
    const found = new Set<string>();
    for (const f of [...sources(join(ROOT, 'lib')), ...sources(join(ROOT, 'native'))]) {
      for (const m of readFileSync(f, 'utf8').matchAll(/['"](ERR_[A-Z_]+)['"]/g)) found.add(m[1]!);
    }
    found.delete('ERR_PARSE_ARGS_'); // node:util's prefix, recognised by the CLI, never thrown by us
    expect(found.size).toBeGreaterThan(20);
    expect([...found].filter((c) => !known.has(c))).toEqual([]);
    const one: KvmErrorCode = 'ERR_KVM_CLOSED';
    const errno: KvmErrorCode = 'EINVAL';
    expect([one, errno]).toHaveLength(2);
  });
});
