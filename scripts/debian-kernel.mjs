#!/usr/bin/env zx
// Debian's newest kernel for the nested hosts, and the tools that boot it.
//
//   zx scripts/debian-kernel.mjs tools    install virtme-ng (from Debian's newest suite) and QEMU
//   zx scripts/debian-kernel.mjs fetch    download and unpack the kernel linux-image-amd64 of
//                                         Debian's newest suite depends on; prints its vmlinuz path
//   options: --suite NAME (default sid), --cache DIR (default ~/.cache/kvm-gmem/kernels), --json
//
// Debian's newest suite is read through a private apt configuration (its own sources list, lists
// and archive directories under the cache): the machine's own apt sources are never changed. The
// mirror is the one the machine's sources already use for Debian. Kernels are cached by version.
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { $, argv } from 'zx';
import { aptOptions as privateAptOptions, debianMirror } from './debian-apt.mjs';

const HELP = `usage: zx scripts/debian-kernel.mjs tools|fetch [--suite sid] [--cache DIR] [--json]`;
if (argv.help || argv.h) {
  console.log(HELP);
  process.exit(0);
}
const suite = argv.suite ?? 'sid';
const cache = argv.cache ?? process.env.KVM_GMEM_KERNEL_CACHE ?? join(homedir(), '.cache', 'kvm-gmem', 'kernels');
$.verbose = false;
$.quiet = true; // their output goes into the error messages below, not the console

function fail(message) {
  console.error(`debian-kernel: ${message}`);
  process.exit(1);
}

/** apt-get/apt-cache options for a private view of `suite` under the cache. */
function aptOptions() {
  const mirror = debianMirror();
  if (mirror === undefined) fail('no Debian archive with "main" in this machine\'s apt sources: cannot read Debian\'s newest suite');
  return privateAptOptions(cache, suite, mirror);
}

async function update(opts) {
  const r = await $`apt-get ${opts} -q update`.nothrow();
  if (r.exitCode !== 0) fail(`apt-get update of ${suite} failed:\n${r.stderr}`);
}

/** The value of `field` in `apt-cache show pkg` (the newest version's stanza). */
async function showField(opts, pkg, field) {
  const r = await $`apt-cache ${opts} show ${pkg}`.nothrow();
  if (r.exitCode !== 0) fail(`apt-cache show ${pkg} (${suite}) failed:\n${r.stderr}`);
  return new RegExp(`^${field}: (.+)$`, 'm').exec(r.stdout.split('\n\n')[0])?.[1];
}

async function tools() {
  const missing = [];
  for (const [cmd, pkg] of [['qemu-system-x86_64', 'qemu-system-x86'], ['udevadm', 'udev'], ['busybox', 'busybox-static']]) {
    if ((await $`command -v ${cmd}`.nothrow()).exitCode !== 0) missing.push(pkg);
  }
  if (missing.length > 0 || (await $`command -v vng`.nothrow()).exitCode !== 0) {
    // virtme-ng's dependencies come from the machine's own suite; virtme-ng itself from the newest.
    await $`apt-get -q update`.nothrow();
    const deps = ['qemu-system-x86', 'udev', 'busybox-static', 'file', 'iproute2', 'kbd', 'kmod', 'util-linux-extra',
      'python3-argcomplete', 'python3-requests'];
    const r = await $`DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ${deps}`.nothrow();
    if (r.exitCode !== 0) fail(`installing ${deps.join(' ')} failed:\n${r.stderr}`);
  }
  if ((await $`command -v vng`.nothrow()).exitCode !== 0) {
    const opts = aptOptions();
    await update(opts);
    const dir = join(cache, 'apt', suite, 'archives');
    const d = await $`cd ${dir} && apt-get ${opts} -q download virtme-ng`.nothrow();
    if (d.exitCode !== 0) fail(`downloading virtme-ng from ${suite} failed:\n${d.stderr}`);
    const deb = readdirSync(dir).filter((f) => f.startsWith('virtme-ng_')).sort().at(-1);
    const i = await $`dpkg -i ${join(dir, deb)}`.nothrow();
    if (i.exitCode !== 0) fail(`dpkg -i ${deb} failed:\n${i.stderr}`);
  }
  const v = (await $`vng --version`.nothrow()).stdout.trim();
  const q = (await $`qemu-system-x86_64 --version`.nothrow()).stdout.split('\n')[0];
  report({ vng: v, qemu: q }, `${v}; ${q}`);
}

async function fetch() {
  const opts = aptOptions();
  await update(opts);
  // linux-image-amd64 -> linux-image-RELEASE (= VERSION) -> linux-binary-RELEASE, linux-modules-RELEASE.
  const depends = await showField(opts, 'linux-image-amd64', 'Depends');
  const m = /linux-image-(\S+?)\s*\(= ([^)]+)\)/.exec(depends ?? '');
  if (!m) fail(`cannot read the kernel linux-image-amd64 depends on in ${suite}: "${depends}"`);
  const [, release, version] = m;
  const dir = join(cache, release);
  const root = join(dir, 'root');
  const done = join(dir, '.complete');
  // Cached by package version: a re-upload with the same release string is fetched again.
  if (!existsSync(done) || readFileSync(done, 'utf8').trim() !== version) {
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(join(dir, 'debs'), { recursive: true });
    const want = [`linux-image-${release}`];
    const imageDeps = await showField(opts, `linux-image-${release}`, 'Depends');
    for (const p of ['linux-binary', 'linux-modules']) if (imageDeps?.includes(`${p}-${release}`)) want.push(`${p}-${release}`);
    console.error(`debian-kernel: downloading ${want.join(' ')} (${version}) from ${suite}`);
    const d = await $`cd ${join(dir, 'debs')} && apt-get ${opts} -q download ${want}`.nothrow();
    if (d.exitCode !== 0) fail(`apt-get download ${want.join(' ')} failed:\n${d.stderr}`);
    for (const f of readdirSync(join(dir, 'debs'))) {
      const x = await $`dpkg-deb -x ${join(dir, 'debs', f)} ${root}`.nothrow();
      if (x.exitCode !== 0) fail(`dpkg-deb -x ${f} failed:\n${x.stderr}`);
    }
    rmSync(join(dir, 'debs'), { recursive: true, force: true });
    writeFileSync(done, `${version}\n`);
  }
  // Debian 13+ keeps the image in the modules tree; older releases in /boot.
  const candidates = [join(root, 'usr/lib/modules', release, 'vmlinuz'), join(root, 'boot', `vmlinuz-${release}`)];
  const image = candidates.find((p) => existsSync(p));
  if (!image) fail(`no vmlinuz in ${root} (looked for ${candidates.join(', ')})`);
  const modules = existsSync(join(root, 'usr/lib/modules', release)) ? join(root, 'usr') : root;
  if (!existsSync(join(modules, 'lib/modules', release, 'modules.dep'))) {
    const depmod = await $`depmod -b ${modules} ${release}`.nothrow();
    if (depmod.exitCode !== 0) fail(`depmod -b ${modules} ${release} failed:\n${depmod.stderr}`);
  }
  report({ suite, release, version, image, modules }, image);
}

function report(obj, line) {
  console.log(argv.json ? JSON.stringify(obj) : line);
}

const cmd = argv._[0];
if (cmd === 'tools') await tools();
else if (cmd === 'fetch') await fetch();
else fail(`unknown command '${cmd ?? ''}'\n${HELP}`);
