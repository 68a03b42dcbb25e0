#!/usr/bin/env zx
// npx zx scripts/upgrade-experiment.mjs [--sizes 64,256,1024] [--runs N] [--json] [--chart FILE] ...
//
// The live VMM upgrade experiment (experiments/upgrade/, outside the package: it uses only the
// package's public entry points), run as a user runs it: builds what is missing or stale (the
// addon with its guest images, the package's dist/, then the experiment against dist/'s typings),
// then runs build/experiments/upgrade/main.js with this script's arguments, passed on unchanged.
// Everything else (the two VMM processes, the measurements, the table, the JSON and the chart) is
// the experiment's; see `npm run upgrade-experiment -- --help`.
import { $, fs, path } from 'zx';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(process.argv.findIndex((a) => a.endsWith('upgrade-experiment.mjs')) + 1);

$.verbose = false;
$.cwd = root;

// The newest modification time under `dir` (files whose name passes `keep`).
function newest(dir, keep) {
  let t = 0;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) t = Math.max(t, newest(p, keep));
    else if (keep(e.name)) t = Math.max(t, fs.statSync(p).mtimeMs);
  }
  return t;
}
const mtime = (p) => (fs.existsSync(p) ? fs.statSync(p).mtimeMs : 0);
const ts = (n) => n.endsWith('.ts');

const addon = path.join(root, 'build', 'Release', 'kvm_gmem.node');
const image = path.join(root, 'build', 'Release', 'guest', 'upgrade.bin');
if (!process.env.KVM_GMEM_ADDON && (mtime(image) === 0 || mtime(addon) < Math.max(newest(path.join(root, 'native'), () => true), newest(path.join(root, 'guest'), () => true)))) {
  console.error('upgrade-experiment: building the addon and the guest images (npm run build:native)');
  await $`npm run build:native`.pipe(process.stderr);
}

// dist/ is what the experiment imports (as `kvm-gmem`, through package.json "exports").
const dist = path.join(root, 'dist', 'index.js');
if (mtime(dist) < Math.max(newest(path.join(root, 'lib'), ts), mtime(path.join(root, 'tsconfig.json')))) {
  console.error('upgrade-experiment: compiling the package (npm run build)');
  await $`npm run build`.pipe(process.stderr);
}

const main = path.join(root, 'build', 'experiments', 'upgrade', 'main.js');
const experiments = path.join(root, 'experiments');
if (mtime(main) < Math.max(newest(experiments, ts), mtime(path.join(experiments, 'tsconfig.json')), mtime(dist))) {
  console.error('upgrade-experiment: compiling the experiment (tsc -p experiments/tsconfig.json)');
  await $`npx tsc -p experiments/tsconfig.json`.pipe(process.stderr);
}

const run = await $({ stdio: 'inherit', nothrow: true })`${process.execPath} ${main} ${args}`;
process.exitCode = run.exitCode ?? 1;
