#!/usr/bin/env node
// Makes the prebuilt binary the package ships (run by `npm pack` and `npm publish` as prepack):
// prebuildify builds the addon once for Node-API 8 (one file serves every Node version) into
// prebuilds/linux-x64/, where node-gyp-build finds it at run time; the guest images the build
// assembles go beside it (prebuilds/linux-x64/guest/), where lib/guest/images.ts looks for them.
//
//   node scripts/prebuild.mjs
//
// Plain Node: it runs where the package is packed, with devDependencies installed.
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readdirSync, rmSync, symlinkSync } from 'node:fs';
import { createRequire } from 'node:module';
import { arch, platform, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const prebuildify = join(dirname(require.resolve('prebuildify/package.json')), 'bin.js');
const nodeGyp = join(dirname(require.resolve('node-gyp/package.json')), 'bin', 'node-gyp.js');
const out = join(root, 'prebuilds', `${platform()}-${arch()}`);

rmSync(join(root, 'prebuilds'), { recursive: true, force: true });
// Built in a copy of the sources: prebuildify's `node-gyp rebuild` would replace the checkout's
// own build/ (and move its addon away) under a developer's running tests.
const stage = mkdtempSync(join(tmpdir(), 'kvm-gmem-prebuild-'));
for (const f of ['package.json', 'binding.gyp', 'native', 'guest']) cpSync(join(root, f), join(stage, f), { recursive: true });
symlinkSync(join(root, 'node_modules'), join(stage, 'node_modules'));
const env = { ...process.env, PREBUILD_NODE_GYP: nodeGyp, JOBS: process.env.JOBS ?? 'max' };
// Node's own headers (a distribution's Node carries them) instead of a download: no network needed.
const prefix = dirname(dirname(process.execPath));
if (!env.npm_config_nodedir && existsSync(join(prefix, 'include', 'node', 'node_api.h'))) env.npm_config_nodedir = prefix;

const r = spawnSync(process.execPath, [prebuildify, '--napi', '--strip', '--target', process.versions.node], {
  cwd: stage,
  env,
  stdio: 'inherit',
});
if (r.status === 0) {
  cpSync(join(stage, 'prebuilds'), join(root, 'prebuilds'), { recursive: true });
  cpSync(join(stage, 'build', 'Release', 'guest'), join(out, 'guest'), { recursive: true });
}
rmSync(stage, { recursive: true, force: true });
if (r.status !== 0) process.exit(r.status ?? 1);
console.log(`prebuild: ${readdirSync(out).join(', ')} in ${out}`);
