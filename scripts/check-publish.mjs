#!/usr/bin/env node
// The publish check: packs the package as npm would publish it (its scripts not run: the dist/ of
// the last build is what is checked), then runs publint --strict and attw on that tarball. attw's
// esm-only profile: the package is ESM only, so require() and node10 resolution are not offered.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const bin = (name) => join(root, 'node_modules', '.bin', name);

/** Runs a command with its output shown; exits with its status if it fails. */
function run(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: ['ignore', 'inherit', 'inherit'] });
  if (r.error) throw r.error;
  if (r.status !== 0) process.exit(r.status ?? 1);
}

const out = mkdtempSync(join(tmpdir(), 'kvm-gmem-pack-'));
try {
  const pack = spawnSync('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', out], { cwd: root, encoding: 'utf8' });
  if (pack.status !== 0) {
    process.stderr.write(pack.stderr);
    process.exit(pack.status ?? 1);
  }
  const [info] = JSON.parse(pack.stdout);
  const tarball = join(out, info.filename);
  console.log(`check:publish: ${info.filename}, ${info.entryCount} files, ${info.size} bytes packed`);
  run(bin('publint'), ['run', tarball, '--strict']);
  run(bin('attw'), [tarball, '--profile', 'esm-only', '--no-emoji', '--no-color', '--format', 'table-flipped']);
} finally {
  rmSync(out, { recursive: true, force: true });
}
