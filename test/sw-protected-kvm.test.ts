// scripts/sw-protected-kvm.mjs: KVM modules with CONFIG_KVM_SW_PROTECTED_VM=y for Debian's newest
// kernel. The build itself runs in CI (minutes, a 164 MB download); here: its command line, its
// failures before any download, and, where a build is cached, that the kernel would accept it.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ROOT } from './paths.js';

const ZX = join(ROOT, 'node_modules/zx/build/cli.js');
const SCRIPT = join(ROOT, 'scripts/sw-protected-kvm.mjs');
const script = (args: string[]) => spawnSync(process.execPath, [ZX, SCRIPT, ...args], { cwd: ROOT, encoding: 'utf8' });

/** Cached builds: [release, modules root] for each, or the one KVM_GMEM_SWPROT_MODULES names. */
function cachedBuilds(): [string, string][] {
  const given = process.env.KVM_GMEM_SWPROT_MODULES;
  if (given) return readdirSync(join(given, 'lib/modules')).map((r) => [r, given]);
  const cache = process.env.KVM_GMEM_SWPROT_CACHE ?? join(homedir(), '.cache', 'kvm-gmem', 'sw-protected-kvm');
  if (!existsSync(cache)) return [];
  return readdirSync(cache)
    .filter((r) => existsSync(join(cache, r, '.complete')))
    .map((r) => [r, join(cache, r, 'modules')]);
}

const modinfo = (field: string, file: string) => spawnSync('modinfo', ['-F', field, file], { encoding: 'utf8' }).stdout.trim();

describe('scripts/sw-protected-kvm.mjs', () => {
  it('--help lists its options and steps', () => {
    const r = script(['--help']);
    expect(r.status).toBe(0);
    for (const word of ['--kernel IMAGE', '--suite', '--cache', '--cc', '--jobs', '--keep-build', '--json', 'kvm-gmem selftest --kernel IMAGE --modules DIR']) {
      expect(r.stdout).toContain(word);
    }
    expect(r.stdout).toMatch(/Steps: kernel, tools, download, unpack, configure, prepare, build, check, install/);
  });

  it('fails naming the step and what to do, before downloading anything', () => {
    const missing = script(['--kernel', join(ROOT, 'no-such-vmlinuz')]);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toMatch(/step 'kernel' failed: --kernel .*no-such-vmlinuz: no such file\nwhat to do: /);
    const notImage = script(['--kernel', join(ROOT, 'package.json')]);
    expect(notImage.status).toBe(1);
    expect(notImage.stderr).toMatch(/step 'kernel' failed: .*not a bzImage/);
    const jobs = script(['--jobs', '0']);
    expect(jobs.status).toBe(1);
    expect(jobs.stderr).toMatch(/--jobs takes a positive whole number/);
  });

  it('built modules carry the release the kernel checks, with the option on', (ctx) => {
    const builds = cachedBuilds();
    // .ci/run builds them before the tests: there, a missing build is a failure.
    if (builds.length === 0 && process.env.CI) throw new Error('CI: no SW_PROTECTED KVM build found (scripts/sw-protected-kvm.mjs did not run?)');
    if (builds.length === 0) ctx.skip('no cached build: run `npx zx scripts/sw-protected-kvm.mjs` first');
    if (spawnSync('modinfo', ['--version']).status !== 0) ctx.skip('modinfo (kmod) is not installed');
    for (const [release, modules] of builds) {
      const dir = join(modules, 'lib/modules', release);
      for (const m of ['kvm', 'kvm-amd', 'kvm-intel']) {
        const ko = join(dir, 'kernel/arch/x86/kvm', `${m}.ko`);
        expect(existsSync(ko), ko).toBe(true);
        // The kernel refuses a module whose vermagic does not start with its own release.
        expect(modinfo('vermagic', ko)).toMatch(new RegExp(`^${release.replace(/[.+]/g, '\\$&')} SMP `));
        expect(modinfo('name', ko)).toBe(m.replace('-', '_'));
      }
      // Debian's own kvm.ko, where scripts/debian-kernel.mjs unpacked it: the same vermagic exactly.
      const kernels = process.env.KVM_GMEM_KERNEL_CACHE ?? join(homedir(), '.cache', 'kvm-gmem', 'kernels');
      const debian = join(kernels, release, 'root/usr/lib/modules', release, 'kernel/arch/x86/kvm/kvm.ko.xz');
      if (existsSync(debian)) expect(modinfo('vermagic', join(dir, 'kernel/arch/x86/kvm/kvm.ko'))).toBe(modinfo('vermagic', debian));
      // depmod ran on the copy: modprobe there resolves kvm_amd to the rebuilt modules.
      const dep = readFileSync(join(dir, 'modules.dep'), 'utf8');
      expect(dep).toMatch(/^kernel\/arch\/x86\/kvm\/kvm-amd\.ko: .*kernel\/arch\/x86\/kvm\/kvm\.ko( |$)/m);
      const diff = join(modules, '..', 'config.diff');
      if (existsSync(diff)) expect(readFileSync(diff, 'utf8')).toMatch(/^CONFIG_KVM_SW_PROTECTED_VM n -> y$/m);
    }
  });
});
