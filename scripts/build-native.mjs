#!/usr/bin/env node
// Builds the addon with node-gyp (run by `npm install`). Plain Node, no dependencies beyond
// node-gyp, because it runs before devDependencies exist on a user's machine.
//
// node-gyp downloads Node's headers unless told where they are. Node installed from a
// distribution package or a tarball carries them under <prefix>/include/node, so when no
// nodedir is configured we point node-gyp at the running Node's own prefix. This needs no
// network and no hand-made ~/.npmrc.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const require = createRequire(import.meta.url);
const nodeGyp = join(dirname(require.resolve('node-gyp/package.json')), 'bin', 'node-gyp.js');
const args = [nodeGyp, 'rebuild'];

const prefix = dirname(dirname(process.execPath));
if (!process.env.npm_config_nodedir && existsSync(join(prefix, 'include', 'node', 'node_api.h'))) {
  args.push(`--nodedir=${prefix}`);
}
const jobs = process.env.JOBS ?? 'max';
args.push(`--jobs=${jobs}`);

const r = spawnSync(process.execPath, args, { stdio: 'inherit' });
process.exit(r.status ?? 1);
