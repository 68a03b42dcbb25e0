// The package as a user gets it: packed as npm publishes it, installed into a fresh project with
// install scripts off and no compiler on PATH, and README's commands run there. Needs the npm
// registry (the package's two dependencies) and a compiler where it is packed, so it runs on the
// host (`npm run test:package`), not in the nested VM; KVM cases run on this host's /dev/kvm, or
// where it has none, through `kvm-gmem exec` on Debian's newest kernel, as README tells users.
import { spawnSync, type SpawnSyncOptions } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REQUIRE_KVM, REQUIRE_TOOLS } from '../kvm-host.js';
import { ROOT } from '../paths.js';

const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { name: string; version: string };
const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');

/** The first fenced block of `lang` after the heading `heading`, as text. */
function block(heading: string, lang: string): string {
  const at = readme.indexOf(`\n${heading}\n`);
  if (at < 0) throw new Error(`README has no heading "${heading}"`);
  const m = new RegExp('```' + lang + '\\n([\\s\\S]*?)```').exec(readme.slice(at));
  if (!m) throw new Error(`README has no ${lang} block under "${heading}"`);
  return m[1]!;
}

/** README's quick-start commands, one per line, comments dropped. */
const commands = block('## Quick start', 'sh')
  .split('\n')
  .map((l) => l.replace(/#.*/, '').trim())
  .filter((l) => l !== '');

let work: string;
let app: string;
let tarball: string;
/** A PATH with node, npm, npx and sh only: no cc, g++, make, python3. */
let bareBin: string;
const times: string[] = [];

/** Runs a command in the user's project; its result with the time it took. */
function run(cmd: string, args: string[], opts: SpawnSyncOptions & { path?: string } = {}) {
  const started = process.hrtime.bigint();
  const r = spawnSync(cmd, args, {
    cwd: app,
    encoding: 'utf8',
    ...opts,
    env: { ...process.env, ...opts.env, PATH: opts.path ?? bareBin, npm_config_update_notifier: 'false', npm_config_fund: 'false', npm_config_audit: 'false' },
  });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return { status: r.status, stdout: String(r.stdout), stderr: String(r.stderr), seconds, error: r.error };
}

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'kvm-gmem-user-'));
  // `npm pack` runs prepare (the TypeScript build) and prepack (the prebuilt binary), as publish does.
  const pack = spawnSync('npm', ['pack', '--json', '--pack-destination', work], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, npm_config_loglevel: 'error' } });
  expect(pack.status, pack.stderr).toBe(0);
  const json = pack.stdout.slice(pack.stdout.indexOf('[')); // prepare's output comes first
  tarball = join(work, (JSON.parse(json) as { filename: string }[])[0]!.filename);

  app = join(work, 'app');
  // Inside the project: `kvm-gmem exec` shares the current directory with the VM, not all of /tmp.
  bareBin = join(app, '.bare-bin');
  mkdirSync(bareBin, { recursive: true });
  const npmCli = realpathSync(join(dirname(process.execPath), 'npm'));
  symlinkSync(process.execPath, join(bareBin, 'node'));
  symlinkSync(npmCli, join(bareBin, 'npm'));
  symlinkSync(join(dirname(npmCli), 'npx-cli.js'), join(bareBin, 'npx'));
  symlinkSync(realpathSync('/bin/sh'), join(bareBin, 'sh'));

  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true, type: 'module' }));
}, 600_000);

afterAll(() => {
  if (times.length) console.log(`user project timings: ${times.join('; ')}`);
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('kvm-gmem in a fresh project', () => {
  it("README's quick start is the install command and the selftest", () => {
    expect(commands).toEqual(['npm install kvm-gmem', 'npx kvm-gmem selftest']);
  });

  it('installs with install scripts off and no compiler on PATH, and loads its prebuilt binary', () => {
    const tools = run('sh', ['-c', 'command -v cc gcc g++ c++ make python3 objcopy']);
    expect(tools.stdout).toBe('');
    const r = run('npm', ['install', tarball, '--ignore-scripts']);
    expect(r.status, r.stderr).toBe(0);
    times.push(`npm install --ignore-scripts ${r.seconds.toFixed(1)} s`);
    const installed = join(app, 'node_modules', 'kvm-gmem');
    expect(existsSync(join(installed, 'build'))).toBe(false); // nothing was compiled
    const which = run('node', ['--input-type=module', '-e', "import('kvm-gmem').then(() => process.stdout.write('loaded'))"]);
    expect(which.stderr).toBe('');
    expect(which.stdout).toBe('loaded');
  }, 300_000);

  it('answers --version and --help from the installed bin', () => {
    const v = run('npx', ['kvm-gmem', '--version']);
    expect(v.status, v.stderr).toBe(0);
    expect(v.stdout.trim()).toBe(pkg.version);
    const h = run('npx', ['kvm-gmem', 'selftest', '--help']);
    expect(h.status, h.stderr).toBe(0);
    expect(h.stdout).toMatch(/selftest/);
  }, 60_000);

  it('ships LICENSE, the TypeScript its source maps name, and every file README links to', () => {
    const installed = join(app, 'node_modules', 'kvm-gmem');
    expect(readFileSync(join(installed, 'LICENSE'), 'utf8')).toMatch(/MIT License/);
    const maps: string[] = [];
    const walk = (dir: string): void => {
      for (const e of readdirSync(dir, { withFileTypes: true })) {
        const p = join(dir, e.name);
        if (e.isDirectory()) walk(p);
        else if (p.endsWith('.map')) maps.push(p);
      }
    };
    walk(join(installed, 'dist'));
    expect(maps.length).toBeGreaterThan(30);
    for (const map of maps) {
      for (const src of (JSON.parse(readFileSync(map, 'utf8')) as { sources: string[] }).sources) {
        expect(existsSync(resolve(dirname(map), src)), `${map} -> ${src}`).toBe(true);
      }
    }
    const links = [...readme.matchAll(/\]\(([^)#:]+)(#[^)]*)?\)/g)].map((m) => m[1]!);
    expect(links.length).toBeGreaterThan(5);
    for (const link of links) expect(existsSync(join(installed, link)), `README links to ${link}`).toBe(true);
  });

  it("runs README's selftest command on real KVM, and README's API example", (ctx) => {
    const example = block('## The API at a glance', 'js');
    expect(example).toBe(readFileSync(join(ROOT, 'examples', 'basics.mjs'), 'utf8'));
    writeFileSync(join(app, 'example.mjs'), example);
    // The commands as README gives them, with the bare PATH; each one's exit status marked.
    const script = `${commands[1]!}; echo "== selftest exit $?"; node example.mjs; echo "== example exit $?"`;
    let r;
    if (kvmHere()) {
      r = run('sh', ['-c', script]);
    } else {
      const kernel = process.env.KVM_GMEM_TEST_KERNEL ?? fetchKernel();
      if (!kernel) {
        if (REQUIRE_KVM || REQUIRE_TOOLS) throw new Error('no /dev/kvm and no kernel to boot (scripts/debian-kernel.mjs fetch failed)');
        ctx.skip('no /dev/kvm here and no kernel to boot for `kvm-gmem exec`');
        return;
      }
      // A host without KVM: README's way, `kvm-gmem exec --kernel` from the installed package.
      r = run('npx', ['kvm-gmem', 'exec', '--kernel', kernel, '--kvm-module', 'kvm_amd', '--kvm-param', 'npt=1', '--', 'env', `PATH=${bareBin}`, 'sh', '-c', script], {
        path: process.env.PATH ?? '',
        env: { KVM_GMEM_REQUIRE_KVM: '1' },
      });
    }
    expect(r.status, r.stderr.slice(-2000)).toBe(0);
    times.push(`selftest run ${r.seconds.toFixed(0)} s`);
    expect(r.stdout).toMatch(/^== selftest exit 0$/m);
    const totals = /^# Totals: pass:(\d+) fail:(\d+)/m.exec(r.stdout);
    expect(totals, r.stdout.slice(-2000)).not.toBeNull();
    expect(Number(totals![1])).toBeGreaterThan(30);
    expect(Number(totals![2])).toBe(0);
    expect(r.stdout).toMatch(/^== example exit 0$/m);
    expect(r.stdout).toMatch(/^after punch: byte 0 = 0x0, byte 4096 = 0xaa$/m);
    expect(r.stdout).toMatch(/^refused: EINVAL from KVM_CREATE_GUEST_MEMFD$/m);
  }, 1_800_000);

  it('says in a few lines how to fix a broken binary, and that fix builds one from source', () => {
    const prebuilt = join(app, 'node_modules', 'kvm-gmem', 'prebuilds', 'linux-x64', 'kvm-gmem.node');
    writeFileSync(prebuilt, 'not an ELF file');
    const broken = run('npx', ['kvm-gmem', 'info']);
    expect(broken.status).not.toBe(0);
    const lines = broken.stderr.trim().split('\n');
    expect(lines.length, broken.stderr).toBeLessThanOrEqual(3);
    expect(broken.stderr).toMatch(/Fix: npm rebuild kvm-gmem/);
    expect(broken.stderr).not.toMatch(/^\s+at /m);
    // The fix, with the compiler it needs on PATH: the install script finds the prebuilt unusable
    // and builds from source with npm's own node-gyp and the running Node's headers.
    const rebuild = run('npm', ['rebuild', 'kvm-gmem'], { path: process.env.PATH ?? '' });
    expect(rebuild.status, rebuild.stderr.slice(-2000)).toBe(0);
    times.push(`npm rebuild (source build) ${rebuild.seconds.toFixed(1)} s`);
    expect(existsSync(join(app, 'node_modules', 'kvm-gmem', 'build', 'Release', 'kvm_gmem.node'))).toBe(true);
    const fixed = run('npx', ['kvm-gmem', '--version']);
    expect(fixed.status, fixed.stderr).toBe(0);
    const loads = run('node', ['--input-type=module', '-e', "import('kvm-gmem').then((m) => process.stdout.write(typeof m.Kvm.open))"]);
    expect(loads.stdout, loads.stderr).toBe('function');
  }, 600_000);
});

/** Whether this process can open /dev/kvm read-write. */
function kvmHere(): boolean {
  return spawnSync('sh', ['-c', 'test -r /dev/kvm && test -w /dev/kvm']).status === 0;
}

/** Debian's newest kernel (scripts/debian-kernel.mjs, cached by version), or undefined. */
function fetchKernel(): string | undefined {
  const r = spawnSync('npx', ['zx', 'scripts/debian-kernel.mjs', 'fetch'], { cwd: ROOT, encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim().split('\n').pop() : undefined;
}
