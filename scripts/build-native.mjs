#!/usr/bin/env node
// Builds the addon with node-gyp. Plain Node, no dependencies beyond node-gyp-build and node-gyp,
// because it runs as the install script, before devDependencies exist on a user's machine.
//
//   node scripts/build-native.mjs               node-gyp rebuild (configure and build from scratch)
//   node scripts/build-native.mjs --unless-prebuilt
//                                               nothing when the package's prebuilt binary loads on
//                                               this machine (the install script: a user's install
//                                               compiles only where the prebuilt cannot serve, or
//                                               when asked with --build-from-source)
//   node scripts/build-native.mjs --if-changed  nothing when the addon and the guest images are newer
//                                               than every file they are built from; else an
//                                               incremental `node-gyp build` (make follows headers),
//                                               or a rebuild when binding.gyp or Node changed
//
// node-gyp downloads Node's headers unless told where they are. Node installed from a
// distribution package or a tarball carries them under <prefix>/include/node, so when no
// nodedir is configured we point node-gyp at the running Node's own prefix. This needs no
// network and no hand-made ~/.npmrc.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);

/** Whether the prebuilt binary under prebuilds/ loads here (node-gyp-build picks it as at run time). */
function prebuiltLoads() {
  process.env.PREBUILDS_ONLY = '1';
  try {
    require(require('node-gyp-build').resolve(root));
    return true;
  } catch {
    return false;
  }
}

/** node-gyp: ours in a checkout; in a user's project the one npm runs install scripts with. */
function nodeGypBin() {
  try {
    return join(dirname(require.resolve('node-gyp/package.json')), 'bin', 'node-gyp.js');
  } catch {
    if (process.env.npm_config_node_gyp) return process.env.npm_config_node_gyp;
    console.error('kvm-gmem: building the addon from source needs node-gyp: run `npm rebuild kvm-gmem` (npm brings its own) or install node-gyp');
    process.exit(1);
  }
}

const mtime = (p) => (existsSync(p) ? statSync(p).mtimeMs : 0);

/** The newest mtime of the files below `dir`. */
function newest(dir) {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? newest(p) : statSync(p).mtimeMs);
  }
  return t;
}

/** What --if-changed has to do: 'nothing', 'build' (incremental) or 'rebuild'. */
function needed() {
  const build = join(root, 'build');
  const makefile = join(build, 'Makefile');
  const config = join(build, 'config.gypi');
  if (!existsSync(makefile) || !existsSync(config) || mtime(join(root, 'binding.gyp')) > mtime(makefile)) return 'rebuild';
  // Configured for another Node (its headers and ABI): start over.
  const m = /"node_module_version":\s*(\d+)/.exec(readFileSync(config, 'utf8'));
  if (!m || m[1] !== process.versions.modules) return 'rebuild';
  // The addon is made from native/, the guest images from guest/ (make rebuilds only what is stale).
  const gyp = mtime(join(root, 'binding.gyp'));
  const addonStale = mtime(join(build, 'Release', 'kvm_gmem.node')) <= Math.max(newest(join(root, 'native')), gyp);
  const guestInputs = Math.max(newest(join(root, 'guest')), gyp);
  const imagesStale = readdirSync(join(root, 'guest'))
    .filter((f) => f.endsWith('.S'))
    .some((f) => mtime(join(build, 'Release', 'guest', f.replace(/\.S$/, '.bin'))) <= guestInputs);
  return addonStale || imagesStale ? 'build' : 'nothing';
}

if (process.argv.includes('--unless-prebuilt') && process.env.npm_config_build_from_source !== 'true' && prebuiltLoads()) {
  process.exit(0);
}
const what = process.argv.includes('--if-changed') ? needed() : 'rebuild';
if (what === 'nothing') process.exit(0);

const args = [nodeGypBin(), what];
const prefix = dirname(dirname(process.execPath));
if (!process.env.npm_config_nodedir && existsSync(join(prefix, 'include', 'node', 'node_api.h'))) {
  args.push(`--nodedir=${prefix}`);
}
const jobs = process.env.JOBS ?? 'max';
args.push(`--jobs=${jobs}`);

const r = spawnSync(process.execPath, args, { stdio: 'inherit', cwd: root });
process.exit(r.status ?? 1);
