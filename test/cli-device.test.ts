// Why the KVM device cannot be opened, said precisely: no device (which modules, which CPU flag),
// a node no module answers, a node this user may not open (its owner, group and mode, and the
// fix), each on real nodes and files. The built CLI in a child process; the permission cases
// run as `nobody` (setpriv) when the tests run as root, who may open anything.
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it, type TestContext } from 'vitest';
import { Kvm, KvmError } from '../lib/index.js';
import { CLI } from './paths.js';
import { REQUIRE_TOOLS } from './kvm-host.js';

const env = { ...process.env };
delete env.KVM_GMEM_REQUIRE_KVM;
const root = process.geteuid?.() === 0;
const scratch = mkdtempSync(join(tmpdir(), 'kvm-gmem-device-'));
chmodSync(scratch, 0o755);

const entries = (file: string) => readFileSync(file, 'utf8').split('\n').filter((l) => l !== '').map((l) => l.split(':'));
const groupByName = (name: string) => entries('/etc/group').find((g) => g[0] === name);
const groupNames = new Set(entries('/etc/group').map((g) => Number(g[2])));
const NOBODY = Number(entries('/etc/passwd').find((p) => p[0] === 'nobody')?.[2] ?? 65534);
const hasSetpriv = spawnSync('setpriv', ['--version']).status === 0;

/** The user the permission cases run as: nobody when root (through setpriv), else this user. */
const who = root ? 'nobody' : (spawnSync('id', ['-un'], { encoding: 'utf8' }).stdout.trim() || `uid ${process.geteuid?.()}`);

/** Runs the CLI as {@link who}, with these supplementary groups (none by default). */
function asUser(ctx: TestContext, args: string[], groups: number[] = [], extraEnv: Record<string, string> = {}) {
  if (root && !hasSetpriv) {
    if (REQUIRE_TOOLS) throw new Error('setpriv (util-linux) is missing: the permission cases cannot drop root');
    ctx.skip('running as root and setpriv (util-linux) is missing: root opens any file, so no EACCES to see');
  }
  const drop = root ? ['setpriv', `--reuid=${NOBODY}`, `--regid=${NOBODY}`, groups.length ? `--groups=${groups.join(',')}` : '--clear-groups'] : [];
  const [cmd, ...rest] = [...drop, process.execPath, CLI, ...args];
  return spawnSync(cmd!, rest, { encoding: 'utf8', env: { ...env, ...extraEnv } });
}

/** A node made with mknod (root only), else a skip. */
function mknod(ctx: TestContext, name: string, major: number, minor: number, mode: number, gid = 0): string {
  if (!root) ctx.skip('mknod needs root');
  const p = join(scratch, name);
  const r = spawnSync('mknod', ['-m', mode.toString(8), p, 'c', String(major), String(minor)], { encoding: 'utf8' });
  if (r.status !== 0) ctx.skip(`mknod refused here: ${r.stderr.trim()}`);
  chownSync(p, 0, gid);
  chmodSync(p, mode);
  return p;
}

/** A plain file with this group and mode. */
function file(name: string, mode: number, gid?: number): string {
  const p = join(scratch, name);
  writeFileSync(p, '');
  if (gid !== undefined) chownSync(p, 0, gid);
  chmodSync(p, mode);
  return p;
}

const infoHint = (stdout: string) => /^hint {10}(.*)$/m.exec(stdout)?.[1];

/** What the tests expect of the host's modules, read here independently of the library. */
function moduleFacts() {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const vendor = /^vendor_id\s*:\s*(\S+)/m.exec(cpuinfo)?.[1];
  const module = vendor === 'GenuineIntel' ? 'kvm_intel' : vendor === 'AuthenticAMD' || vendor === 'HygonGenuine' ? 'kvm_amd' : undefined;
  const flag = module === 'kvm_intel' ? 'vmx' : 'svm';
  const flags = (/^flags\s*:(.*)$/m.exec(cpuinfo)?.[1] ?? '').trim().split(/\s+/);
  return { vendor, module, flag, hasFlag: flags.includes(flag), kvm: existsSync('/sys/module/kvm'), loaded: module !== undefined && existsSync(`/sys/module/${module}`) };
}

describe('a missing device', () => {
  it('/dev/kvm absent: names kvm and the vendor module for this CPU, whether each is loaded, the CPU flag, and the fix', (ctx) => {
    if (existsSync('/dev/kvm')) ctx.skip('this host has /dev/kvm (the next case covers a missing path there)');
    const f = moduleFacts();
    const r = spawnSync(process.execPath, [CLI, 'info'], { encoding: 'utf8', env });
    expect(r.status).toBe(1);
    const hint = infoHint(r.stdout)!;
    expect(hint).toContain(`kvm is ${f.kvm ? 'loaded (/sys/module/kvm exists)' : 'not loaded (/sys/module/kvm is absent)'}`);
    if (existsSync('/sys/class/misc/kvm/dev')) {
      expect(hint).toMatch(/^the kernel has a KVM device \(char 10:232\) but there is no \/dev\/kvm\. To fix: in a container, pass the device in/);
      return;
    }
    expect(hint).toMatch(/^\/dev\/kvm does not exist and this kernel has no KVM device: /);
    if (f.module === undefined) {
      expect(hint).toMatch(/has no kvm_intel or kvm_amd/);
      return;
    }
    expect(hint).toContain(`${f.module} (this CPU is ${f.vendor}) is ${f.loaded ? 'loaded' : 'not loaded'}`);
    if (!f.hasFlag) {
      expect(hint).toContain(`the CPU shows no ${f.flag} flag in /proc/cpuinfo`);
      expect(hint).toMatch(new RegExp(`To fix: enable (VT-x|AMD-V \\(SVM\\)) in the firmware setup .*then sudo modprobe ${f.module}$`));
    } else if (!f.loaded) {
      expect(hint).toMatch(new RegExp(`To fix: sudo modprobe ${f.module}$`));
    }
    // The same words in the JSON, with the facts they were made from.
    const j = JSON.parse(spawnSync(process.execPath, [CLI, 'info', '--json'], { encoding: 'utf8', env }).stdout) as {
      openError: { code: string; hint: string; device: { exists: boolean; kvmModule: boolean; vendorModule?: string; vendorModuleLoaded: boolean } };
    };
    expect(j.openError.code).toBe('ENOENT');
    expect(j.openError.hint).toBe(hint);
    expect(j.openError.device).toMatchObject({ exists: false, kvmModule: f.kvm, vendorModule: f.module, vendorModuleLoaded: f.loaded });
  });

  it('another path that does not exist, on a host with /dev/kvm: says where the device is', (ctx) => {
    if (!existsSync('/dev/kvm')) ctx.skip('this host has no /dev/kvm (the case above covers it)');
    const r = spawnSync(process.execPath, [CLI, 'info', '--device', '/nonexistent/kvm'], { encoding: 'utf8', env });
    expect(r.status).toBe(1);
    expect(infoHint(r.stdout)).toBe('there is no /nonexistent/kvm (the KVM device of this host is /dev/kvm)');
  });

  it('selftest: every case skips with that reason (exit 4); an error under KVM_GMEM_REQUIRE_KVM=1 (exit 1)', () => {
    const e = thrownBy(() => Kvm.open('/nonexistent/kvm'));
    const r = spawnSync(process.execPath, [CLI, 'selftest', '--device', '/nonexistent/kvm', '--filter', 'test_file_size'], { encoding: 'utf8', env });
    expect(r.status).toBe(4);
    const lines = r.stdout.split('\n').filter((l) => /^ok \d+ /.test(l));
    expect(lines.length).toBeGreaterThan(0);
    for (const l of lines) expect(l).toMatch(/ # SKIP \/nonexistent\/kvm cannot be opened \(ENOENT\): /);
    for (const l of lines) expect(l.endsWith(e.hint!)).toBe(true);
    expect(r.stdout).not.toMatch(/no usable KVM on this host/);
    const req = spawnSync(process.execPath, [CLI, 'selftest', '--device', '/nonexistent/kvm', '--filter', 'test_file_size'], {
      encoding: 'utf8', env: { ...env, KVM_GMEM_REQUIRE_KVM: '1' },
    });
    expect(req.status).toBe(1);
    const errored = req.stdout.split('\n').filter((x) => /^(not )?ok \d+ /.test(x));
    expect(errored.length).toBeGreaterThan(0);
    for (const l of errored) expect(l).toMatch(/^not ok \d+ [^#]*$/);
    const why = req.stdout.split('\n').filter((l) => l.startsWith('# ERROR: KVM_GMEM_REQUIRE_KVM=1 but /nonexistent/kvm cannot be opened (ENOENT): '));
    expect(why).toHaveLength(errored.length);
    for (const l of why) expect(l.endsWith(e.hint!)).toBe(true);
  });
});

describe('a device node that no module answers', () => {
  it('another device number is not KVM; char 10:232 without KVM loaded is ENXIO/ENODEV, with the module state', (ctx) => {
    // Major 240 is for local use (https://docs.kernel.org/admin-guide/devices.html), but a
    // kernel may hand it out dynamically: then the node opens and is refused by KVM_GET_API_VERSION.
    const other = mknod(ctx, 'not-kvm', 240, 0, 0o666);
    const r = spawnSync(process.execPath, [CLI, 'info', '--device', other], { encoding: 'utf8', env });
    expect(r.status).toBe(1);
    if (/open failed: (ENODEV|ENXIO)/.test(r.stdout)) {
      expect(infoHint(r.stdout)).toBe(`${other} is char device 240:0, not the KVM device (char 10:232, normally /dev/kvm)`);
    } else {
      expect(r.stdout).toMatch(/KVM_GET_API_VERSION failed: ENOTTY/);
      expect(infoHint(r.stdout)).toBe(`${other} is not the KVM device: it is a char device 240:0 (the KVM device is char 10:232, normally /dev/kvm)`);
    }

    const kvm = mknod(ctx, 'kvm-node', 10, 232, 0o666);
    const k = spawnSync(process.execPath, [CLI, 'info', '--device', kvm], { encoding: 'utf8', env });
    if (existsSync('/sys/class/misc/kvm/dev')) {
      // KVM is loaded here: the node opens, unless the directory is on a nodev mount.
      if (k.status === 0) {
        expect(k.stdout).toMatch(/^api version\s+12$/m);
        return;
      }
      expect(infoHint(k.stdout)).toMatch(/grants .* read-write access.*yet the open is refused\. To fix: look for a nodev mount/);
      return;
    }
    expect(k.status).toBe(1);
    expect(k.stdout).toMatch(/open failed: (ENODEV|ENXIO)/);
    expect(infoHint(k.stdout)).toMatch(new RegExp(`^${kvm} is the KVM device node but no KVM module answers it: kvm is (not )?loaded`));
  });
});

describe('a device this user may not open (EACCES)', () => {
  it('mode 0000, root:root: no group may open it; give it to a kvm group and put the user in it', (ctx) => {
    const p = file('mode-000', 0o000);
    const r = asUser(ctx, ['info', '--device', p]);
    expect(r.status, r.stderr).toBe(1);
    expect(r.stdout).toMatch(/open failed: EACCES/);
    if (!root) {
      expect(infoHint(r.stdout)).toBe(`${p} is ${who}:${groupName(p)}, mode 0000: its owner ${who} may not read and write it. To fix: chmod u+rw ${p}`);
      return;
    }
    const kvm = groupByName('kvm');
    expect(infoHint(r.stdout)).toBe(
      `${p} is root:root, mode 0000: its group may not read and write it, and nobody is not its owner. To fix: ` +
        `${kvm ? '' : 'sudo groupadd --system kvm && '}sudo chgrp kvm ${p} && sudo chmod 0660 ${p}, then add nobody to kvm ` +
        '(sudo usermod -aG kvm nobody) and log in again',
    );
  });

  it('a real KVM device node (char 10:232), root:root 0600: the same, with the udev rule that keeps it', (ctx) => {
    const p = mknod(ctx, 'kvm-0600', 10, 232, 0o600);
    const r = asUser(ctx, ['info', '--device', p]);
    expect(r.status, r.stderr).toBe(1);
    expect(r.stdout).toMatch(/open failed: EACCES/);
    expect(infoHint(r.stdout)).toMatch(new RegExp(
      `^${p} is root:root, mode 0600: its group may not read and write it, and nobody is not its owner\\. To fix: .*` +
        `sudo chgrp kvm ${p} && sudo chmod 0660 ${p}, then add nobody to kvm \\(sudo usermod -aG kvm nobody\\) and log in again; ` +
        'a udev rule keeps it so: KERNEL=="kvm", GROUP="kvm", MODE="0660"$',
    ));
  });

  it('group-readable and -writable, this user not in the group: names the group and the usermod that fixes it', (ctx) => {
    if (!root) ctx.skip('chgrp to another group needs root');
    const [name, , gid] = groupByName('kvm') ?? groupByName('daemon')!;
    const p = file('group-0660', 0o660, Number(gid));
    const r = asUser(ctx, ['info', '--device', p]);
    expect(r.status, r.stderr).toBe(1);
    expect(infoHint(r.stdout)).toBe(
      `${p} is root:${name}, mode 0660 and nobody is not in group ${name}. To fix: sudo usermod -aG ${name} nobody, then log in again (or newgrp ${name})`,
    );
  });

  it('a group without a name: named by its gid, which usermod takes too', (ctx) => {
    if (!root) ctx.skip('chgrp needs root');
    let gid = 4242;
    while (groupNames.has(gid)) gid++;
    const p = file('gid-only', 0o660, gid);
    const r = asUser(ctx, ['info', '--device', p]);
    expect(infoHint(r.stdout)).toBe(`${p} is root:${gid}, mode 0660 and nobody is not in group gid ${gid}. To fix: sudo usermod -aG ${gid} nobody, then log in again (or newgrp ${gid})`);
  });

  it('the user has the group but the group may not write: chmod, no usermod', (ctx) => {
    if (!root) ctx.skip('chgrp needs root');
    const [name, , gid] = groupByName('kvm') ?? groupByName('daemon')!;
    const p = file('group-0600', 0o600, Number(gid));
    const r = asUser(ctx, ['info', '--device', p], [Number(gid)]);
    expect(infoHint(r.stdout)).toBe(`${p} is root:${name}, mode 0600: its group may not read and write it, and nobody is not its owner. To fix: sudo chmod 0660 ${p}`);
  });

  it('a directory on the way that the user may not search: names it', (ctx) => {
    if (!root) ctx.skip('needs a directory this user may not search, which only root can make for it');
    const dir = join(scratch, 'closed');
    mkdirSync(dir, { mode: 0o700 });
    const r = asUser(ctx, ['info', '--device', join(dir, 'kvm')]);
    expect(r.status).toBe(1);
    expect(infoHint(r.stdout)).toBe(`nobody may not search the directory ${dir} (root:root, mode 0700) on the way to ${join(dir, 'kvm')}`);
  });

  it('selftest as that user: every case skips with the precise reason, not "no usable KVM" (exit 4); an error under KVM_GMEM_REQUIRE_KVM=1', (ctx) => {
    const p = root ? mknod(ctx, 'kvm-selftest', 10, 232, 0o600) : file('selftest-000', 0o000);
    const r = asUser(ctx, ['selftest', '--device', p, '--filter', 'test_file_size']);
    expect(r.status, r.stderr).toBe(4);
    const lines = r.stdout.split('\n').filter((l) => /^ok \d+ /.test(l));
    expect(lines.length).toBeGreaterThan(0);
    const reason = root
      ? `${p} cannot be opened (EACCES): ${p} is root:root, mode 0600: its group may not read and write it, and nobody is not its owner. To fix: `
      : `${p} cannot be opened (EACCES): ${p} is ${who}:`;
    for (const l of lines) expect(l).toContain(` # SKIP ${reason}`);
    expect(r.stdout).not.toMatch(/no usable KVM/);
    const req = asUser(ctx, ['selftest', '--device', p, '--filter', 'test_file_size'], [], { KVM_GMEM_REQUIRE_KVM: '1' });
    expect(req.status).toBe(1);
    const errored = req.stdout.split('\n').filter((x) => /^(not )?ok \d+ /.test(x));
    expect(errored.length).toBeGreaterThan(0);
    for (const l of errored) expect(l).toMatch(/^not ok \d+ [^#]*$/);
    expect(req.stdout.split('\n').filter((l) => l.startsWith(`# ERROR: KVM_GMEM_REQUIRE_KVM=1 but ${reason}`))).toHaveLength(errored.length);
  });
});

function groupName(p: string): string {
  const gid = Number(spawnSync('stat', ['-c', '%g', p], { encoding: 'utf8' }).stdout.trim());
  return entries('/etc/group').find((g) => Number(g[2]) === gid)?.[0] ?? String(gid);
}

function thrownBy(f: () => unknown): KvmError {
  try {
    f();
  } catch (e) {
    if (e instanceof KvmError) return e;
    throw e;
  }
  throw new Error('did not throw');
}
