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
import { cpSync, existsSync, readdirSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { arch, platform } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const prebuildify = join(dirname(require.resolve('prebuildify/package.json')), 'bin.js');
const nodeGyp = join(dirname(require.resolve('node-gyp/package.json')), 'bin', 'node-gyp.js');
const out = join(root, 'prebuilds', `${platform()}-${arch()}`);

rmSync(join(root, 'prebuilds'), { recursive: true, force: true });
const env = { ...process.env, PREBUILD_NODE_GYP: nodeGyp, JOBS: process.env.JOBS ?? 'max' };
// Node's own headers (a distribution's Node carries them) instead of a download: no network needed.
const prefix = dirname(dirname(process.execPath));
if (!env.npm_config_nodedir && existsSync(join(prefix, 'include', 'node', 'node_api.h'))) env.npm_config_nodedir = prefix;

const r = spawnSync(process.execPath, [prebuildify, '--napi', '--strip', '--target', process.versions.node], {
  cwd: root,
  env,
  stdio: 'inherit',
});
if (r.status !== 0) process.exit(r.status ?? 1);

cpSync(join(root, 'build', 'Release', 'guest'), join(out, 'guest'), { recursive: true, filter: (p) => !p.endsWith('.o') });
console.log(`prebuild: ${readdirSync(out).join(', ')} in ${out}`);
