#!/usr/bin/env node
// The C/C++ format check: clang-format (the pinned npm package, .clang-format at the root) over
// native/ and test/fixtures/. Exits 1 and names the files that differ; with --fix, formats them.
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const clangFormat = require.resolve('clang-format'); // its index.js runs the binary for this platform
const fix = process.argv.includes('--fix');

/** The C and C++ files below `dir`. */
function sources(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    if (e.isDirectory()) return sources(p);
    return /\.(cc|h|c)$/.test(e.name) ? [p] : [];
  });
}

const files = [join(root, 'native'), join(root, 'test', 'fixtures')].flatMap(sources).sort();
const args = fix ? ['-i', ...files] : ['--dry-run', '--Werror', ...files];
const r = spawnSync(process.execPath, [clangFormat, ...args], { cwd: root, encoding: 'utf8' });
if (r.status !== 0) {
  const bad = [...new Set([...(r.stderr ?? '').matchAll(/^(\/[^:\n]+):\d+:\d+: error/gm)].map((m) => relative(root, m[1])))];
  process.stderr.write(bad.length ? '' : r.stderr ?? '');
  if (bad.length) console.error(`lint:cpp: not formatted (run npm run format:cpp):\n  ${bad.join('\n  ')}`);
  process.exit(1);
}
if (!fix) console.log(`lint:cpp: ${files.length} files formatted`);
