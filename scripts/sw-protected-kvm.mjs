#!/usr/bin/env zx
// KVM built with CONFIG_KVM_SW_PROTECTED_VM=y for Debian's newest kernel: the nested host where
// software-protected VMs (private memory without SEV/TDX hardware) exist.
//
//   zx scripts/sw-protected-kvm.mjs [--kernel IMAGE] [options]
//
// Rebuilds kvm.ko, kvm-amd.ko and kvm-intel.ko as external modules (M=arch/x86/kvm) from Debian's
// linux-source package of the kernel's version, with Debian's build .config (the option added) and
// Module.symvers from its linux-headers package, KERNELRELEASE set to Debian's release string.
// They go into a copy of the kernel's modules tree (hard links; depmod run on the copy), cached by
// version; stdout gets the directory for `kvm-gmem selftest --kernel IMAGE --modules DIR`.
// Debian's newest suite is read through a private apt configuration under the cache, as
// scripts/debian-kernel.mjs does: the machine's own apt sources are never changed.
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync, openSync, readSync, closeSync, statSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { availableParallelism, homedir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { $, argv } from 'zx';
import { aptOptions as privateAptOptions, debianMirror } from './debian-apt.mjs';

const HELP = `usage: zx scripts/sw-protected-kvm.mjs [--kernel IMAGE] [options]

Builds kvm.ko, kvm-amd.ko and kvm-intel.ko with CONFIG_KVM_SW_PROTECTED_VM=y for a Debian kernel
and prints a modules directory for: kvm-gmem selftest --kernel IMAGE --modules DIR

  --kernel IMAGE   the kernel scripts/debian-kernel.mjs fetch printed (read from its cache: no
                   network when the modules are already built). Default: run that fetch now.
  --suite NAME     Debian suite to read packages from (default sid)
  --cache DIR      default ~/.cache/kvm-gmem/sw-protected-kvm (or $KVM_GMEM_SWPROT_CACHE)
  --cc CMD         C compiler (default: Debian's own gcc when on PATH, else gcc)
  --jobs N         make -j (default: the CPUs available)
  --keep-build     keep the source tree and the downloaded packages after a build
  --json           print {release, version, image, modules, ...} instead of the path
  --help           this text

Steps: kernel, tools, download, unpack, configure, prepare, build, check, install. Each progress
line goes to stderr; a failing step names itself, its log and what to do. Cached by package version:
a second run for the same kernel prints the path without building.`;

if (argv.help || argv.h) {
  console.log(HELP);
  process.exit(0);
}
const suite = argv.suite ?? 'sid';
const cache = resolve(argv.cache ?? process.env.KVM_GMEM_SWPROT_CACHE ?? join(homedir(), '.cache', 'kvm-gmem', 'sw-protected-kvm'));
const jobs = Number(argv.jobs ?? availableParallelism());
if (!Number.isInteger(jobs) || jobs < 1) fail(`--jobs takes a positive whole number (got ${argv.jobs})`);
$.verbose = false;
$.quiet = true; // command output goes into the log and the error messages below, not the console

const started = Date.now();

function fail(message) {
  console.error(`sw-protected-kvm: ${message}`);
  process.exit(1);
}

function progress(message) {
  console.error(`sw-protected-kvm: [${((Date.now() - started) / 1000).toFixed(0)} s] ${message}`);
}

/** Fails naming the step, what ran, the tail of its log and what to do about it. */
function failStep(step, what, detail, hint) {
  fail([`step '${step}' failed: ${what}`, detail.trimEnd(), hint ? `what to do: ${hint}` : ''].filter(Boolean).join('\n'));
}

/** apt-get/apt-cache options for a private view of `suite` under the cache. */
function aptOptions() {
  const mirror = debianMirror();
  if (mirror === undefined) failStep('download', 'no Debian archive with "main" in this machine\'s apt sources', '', 'run it on Debian (the packages come from Debian\'s archive)');
  return privateAptOptions(cache, suite, mirror);
}

let aptUpdated = false;
async function aptView() {
  const opts = aptOptions();
  if (!aptUpdated) {
    const r = await $`apt-get ${opts} -q update`.nothrow();
    if (r.exitCode !== 0) failStep('download', `apt-get update of ${suite} failed`, r.stderr, `check the network, --suite ${suite}, and the Debian mirror in /etc/apt/sources.list*`);
    aptUpdated = true;
  }
  return opts;
}

/** The versions of `pkg` the private view offers. */
async function versionsOf(opts, pkg) {
  const r = await $`apt-cache ${opts} show ${pkg}`.nothrow();
  return r.exitCode === 0 ? [...r.stdout.matchAll(/^Version: (\S+)$/gm)].map((m) => m[1]) : [];
}

/** The release string a bzImage's setup header carries, or undefined. */
function imageRelease(image) {
  const fd = openSync(image, 'r');
  try {
    const head = Buffer.alloc(0x10000);
    const n = readSync(fd, head, 0, head.length, 0);
    if (n < 0x210 || head.readUInt32LE(0x202) !== 0x53726448 || head.readUInt16LE(0x20e) === 0) return undefined;
    const at = head.readUInt16LE(0x20e) + 0x200;
    const end = head.indexOf(0, at);
    return at < n ? head.subarray(at, end < 0 ? n : end).toString('latin1').split(' ')[0] : undefined;
  } finally {
    closeSync(fd);
  }
}

/** Release, package version, image and modules root of the kernel to build for. */
async function kernel() {
  if (argv.kernel === undefined || argv.kernel === true) {
    const script = join(dirname(fileURLToPath(import.meta.url)), 'debian-kernel.mjs');
    progress(`kernel: scripts/debian-kernel.mjs fetch --suite ${suite}`);
    // Its progress lines go straight to our stderr; its JSON comes back on stdout.
    const r = spawnSync(process.execPath, [process.argv[1], script, 'fetch', '--json', '--suite', suite], { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });
    if (r.status !== 0) failStep('kernel', 'scripts/debian-kernel.mjs fetch failed (its message is above)', '', 'run `npx zx scripts/debian-kernel.mjs fetch` and fix what it reports');
    const k = JSON.parse(r.stdout);
    return { release: k.release, version: k.version, image: k.image, root: k.modules };
  }
  const image = resolve(String(argv.kernel));
  if (!existsSync(image)) failStep('kernel', `--kernel ${argv.kernel}: no such file`, '', 'pass the path `npx zx scripts/debian-kernel.mjs fetch` prints');
  const release = imageRelease(image);
  if (!release) failStep('kernel', `--kernel ${argv.kernel}: not a bzImage with a release string`, '', 'pass the path `npx zx scripts/debian-kernel.mjs fetch` prints');
  // debian-kernel.mjs keeps <cache>/<release>/.complete (the package version) above root/.
  let version;
  let root;
  for (let d = dirname(image); d !== dirname(d); d = dirname(d)) {
    if (basename(d) === release && existsSync(join(d, '.complete'))) {
      version = readFileSync(join(d, '.complete'), 'utf8').trim();
      root = [join(d, 'root', 'usr'), join(d, 'root')].find((r) => existsSync(join(r, 'lib/modules', release)));
      break;
    }
  }
  if (root === undefined) {
    const up = dirname(dirname(dirname(dirname(image))));
    if (basename(dirname(image)) === release && existsSync(join(up, 'lib/modules', release))) root = up;
  }
  if (root === undefined) failStep('kernel', `no lib/modules/${release} around ${image}`, '', 'pass the vmlinuz inside the tree `npx zx scripts/debian-kernel.mjs fetch` unpacked');
  if (version === undefined) {
    const opts = await aptView();
    version = (await versionsOf(opts, `linux-image-${release}`))[0];
    if (!version) failStep('kernel', `${suite} has no linux-image-${release}`, '', 'use a kernel `npx zx scripts/debian-kernel.mjs fetch` gives');
  }
  return { release, version, image, root };
}

/** The commands and headers the build needs, with the Debian package that has each. */
const TOOLS = [
  ['make', 'make'], ['gcc', 'gcc'], ['flex', 'flex'], ['bison', 'bison'], ['bc', 'bc'], ['perl', 'perl'],
  ['xz', 'xz-utils'], ['depmod', 'kmod'], ['modinfo', 'kmod'], ['readelf', 'binutils'], ['strip', 'binutils'],
  // Without pahole the BTF options drop out of the config, struct module shrinks and the kernel
  // refuses the modules.
  ['pahole', 'dwarves'],
  ['/usr/include/gelf.h', 'libelf-dev'], ['/usr/include/openssl/opensslv.h', 'libssl-dev'],
];

async function tools() {
  const missing = new Set();
  for (const [what, pkg] of TOOLS) {
    const there = what.startsWith('/') ? existsSync(what) : (await $`command -v ${what}`.nothrow()).exitCode === 0;
    if (!there) missing.add(pkg);
  }
  if (argv.cc && (await $`command -v ${String(argv.cc)}`.nothrow()).exitCode !== 0) failStep('tools', `--cc ${argv.cc}: no such command`, '', 'pass a gcc the kernel supports, or leave --cc out');
  if (missing.size > 0) {
    const pkgs = [...missing];
    if (process.getuid?.() !== 0) failStep('tools', `missing ${pkgs.join(' ')}`, '', `sudo apt-get install ${pkgs.join(' ')}`);
    progress(`tools: installing ${pkgs.join(' ')} (this machine's own suite)`);
    await $`apt-get -q update`.nothrow();
    const r = await $`DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ${pkgs}`.nothrow();
    if (r.exitCode !== 0) failStep('tools', `apt-get install ${pkgs.join(' ')} failed`, r.stderr, `install ${pkgs.join(' ')} by hand`);
  }
}

/** The compiler: --cc, else the one Debian built with when it is here, else gcc. */
async function compiler(debianCc) {
  if (argv.cc) return String(argv.cc);
  const name = /^(\S+)/.exec(debianCc)?.[1];
  for (const c of [name, name?.replace(/^x86_64-linux-gnu-/, '')]) {
    if (c && (await $`command -v ${c}`.nothrow()).exitCode === 0) return c;
  }
  return 'gcc';
}

/** CONFIG_* values of a .config ('n' for "is not set"). */
function readConfig(path) {
  const map = new Map();
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    const set = /^(CONFIG_\w+)=(.*)$/.exec(line);
    const unset = /^# (CONFIG_\w+) is not set$/.exec(line);
    if (set) map.set(set[1], set[2]);
    else if (unset) map.set(unset[1], 'n');
  }
  return map;
}

/** Section `name`'s size in an ELF file, or undefined. */
async function sectionSize(file, name) {
  const r = await $`readelf -S --wide ${file}`.nothrow();
  for (const line of r.stdout.split('\n')) {
    const f = line.replace(/^\s*\[\s*\d+\]\s*/, '').split(/\s+/);
    if (f[0] === name) return parseInt(f[4], 16);
  }
  return undefined;
}

const { release, version, image, root } = await kernel();
const out = join(cache, release);
const modules = join(out, 'modules');
const done = join(out, '.complete');
const report = (extra) => {
  const info = { suite, release, version, image, modules, ...extra };
  console.log(argv.json ? JSON.stringify(info) : modules);
};

if (existsSync(done) && readFileSync(done, 'utf8').trim() === version && existsSync(join(modules, 'lib/modules', release, 'modules.dep'))) {
  report(JSON.parse(readFileSync(join(out, 'build.json'), 'utf8')));
  process.exit(0);
}

progress(`kernel ${release} (${version}); building into ${out}`);
// A build for another version (or an interrupted one) goes; downloaded packages of this version stay.
const debs = join(out, 'debs');
if (existsSync(out)) for (const f of readdirSync(out)) if (f !== 'debs') rmSync(join(out, f), { recursive: true, force: true });
mkdirSync(debs, { recursive: true });
for (const f of readdirSync(debs)) if (!f.includes(`_${version.replace(/:/g, '%3a')}_`)) rmSync(join(debs, f));
const log = join(out, 'build.log');
writeFileSync(log, '');

/** Runs a shell command for `step`, its output appended to the log; fails the step on error. */
async function sh(step, cmd, hint) {
  writeFileSync(log, `\n$ ${cmd}\n`, { flag: 'a' });
  const r = await $`bash -o pipefail -c ${`{ ${cmd}
} >> ${shq(log)} 2>&1`}`.nothrow();
  if (r.exitCode !== 0) {
    const tail = readFileSync(log, 'utf8').trimEnd().split('\n').slice(-30).join('\n');
    failStep(step, `\`${cmd}\` exited with ${r.exitCode}`, `--- last lines of ${log}:\n${tail}\n---`, hint);
  }
}
const shq = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;

await tools();

// download: Debian's source, and its config and Module.symvers, of exactly the kernel's version.
const series = release.split('.').slice(0, 2).join('.');
const want = [`linux-source-${series}`, `linux-headers-${release}`];
const opts = await aptView();
for (const pkg of want) {
  const have = await versionsOf(opts, pkg);
  if (!have.includes(version)) {
    failStep('download', `${suite} has no ${pkg} ${version} (it has ${have.join(', ') || 'none'})`, '',
      `Debian moved on: run \`npx zx scripts/debian-kernel.mjs fetch\` for its newest kernel and pass that (or fetch ${pkg}_${version} from snapshot.debian.org into ${debs})`);
  }
}
// A package an interrupted download left behind is fetched again.
for (const f of readdirSync(debs)) if ((await $`dpkg-deb --info ${join(debs, f)}`.nothrow()).exitCode !== 0) rmSync(join(debs, f));
const missingDebs = want.filter((p) => !readdirSync(debs).some((f) => f.startsWith(`${p}_`)));
if (missingDebs.length > 0) {
  progress(`download: ${missingDebs.map((p) => `${p}=${version}`).join(' ')} from ${suite}`);
  await sh('download', `cd ${shq(debs)} && apt-get ${opts.map(shq).join(' ')} -q download ${missingDebs.map((p) => shq(`${p}=${version}`)).join(' ')}`,
    'check the network; the packages are fetched again on the next run');
}
const debOf = (pkg) => join(debs, readdirSync(debs).find((f) => f.startsWith(`${pkg}_`)));
const sizes = Object.fromEntries(want.map((p) => [p, statSync(debOf(p)).size]));
progress(`download: ${want.map((p) => `${p} ${(sizes[p] / 1e6).toFixed(1)} MB`).join(', ')}`);

// unpack: the source tarball inside linux-source, and the headers package.
const build = join(out, 'build');
const src = join(build, `linux-source-${series}`);
mkdirSync(build, { recursive: true });
progress(`unpack: linux-source-${series}`);
await sh('unpack', `dpkg-deb --fsys-tarfile ${shq(debOf(want[0]))} | tar -xO ./usr/src/linux-source-${series}.tar.xz | tar -xJ -C ${shq(build)}`,
  `the package may be damaged: remove ${debs} and run again`);
await sh('unpack', `dpkg-deb -x ${shq(debOf(want[1]))} ${shq(join(build, 'headers'))}`, `remove ${debs} and run again`);
const headers = join(build, 'headers', 'usr', 'src', `linux-headers-${release}`);
for (const f of ['.config', 'Module.symvers']) {
  if (!existsSync(join(headers, f))) failStep('unpack', `linux-headers-${release} has no ${f}`, '', 'Debian changed its headers package: this script needs updating');
}
if (!existsSync(join(src, 'Makefile'))) failStep('unpack', `no linux-source-${series}/Makefile after unpacking`, '', 'Debian changed its source package layout: this script needs updating');

// configure: Debian's .config with the option, resolved by this machine's toolchain.
const debianConfig = readConfig(join(headers, '.config'));
const debianCc = (debianConfig.get('CONFIG_CC_VERSION_TEXT') ?? '""').slice(1, -1);
const cc = await compiler(debianCc);
const ccRun = await $`${cc} --version`.nothrow();
if (ccRun.exitCode !== 0) failStep('configure', `the compiler \`${cc} --version\` does not run`, ccRun.stderr, 'install gcc, or pass --cc with a gcc the kernel supports');
const ccText = ccRun.stdout.split('\n')[0];
progress(`configure: Debian built with "${debianCc}", building with "${ccText}"`);
copyFileSync(join(headers, '.config'), join(src, '.config'));
copyFileSync(join(headers, 'Module.symvers'), join(src, 'Module.symvers'));
const make = `make -C ${shq(src)} -j${jobs} CC=${shq(cc)} KERNELRELEASE=${shq(release)}`;
// Rust stays off: only C modules are built, and a partial Rust toolchain here must not decide.
await sh('configure', `${shq(join(src, 'scripts/config'))} --file ${shq(join(src, '.config'))} --enable KVM_SW_PROTECTED_VM --disable RUST && ${make} olddefconfig`,
  `read ${log}; --cc ${cc} must be a compiler this kernel supports`);
const config = readConfig(join(src, '.config'));
if (config.get('CONFIG_KVM_SW_PROTECTED_VM') !== 'y') failStep('configure', 'CONFIG_KVM_SW_PROTECTED_VM did not stay set', '', 'its dependencies (EXPERT, KVM_X86, X86_64) changed in Debian\'s config: check it');
const changed = [...new Set([...debianConfig.keys(), ...config.keys()])].filter((k) => (debianConfig.get(k) ?? 'n') !== (config.get(k) ?? 'n'));
writeFileSync(join(out, 'config.diff'), changed.map((k) => `${k} ${debianConfig.get(k) ?? 'n'} -> ${config.get(k) ?? 'n'}\n`).join(''));
progress(`configure: ${changed.length} options differ from Debian's (${join(out, 'config.diff')}): ${changed.map((k) => k.replace(/^CONFIG_/, '')).join(' ')}`);

const buildStart = Date.now();
progress(`prepare: make modules_prepare -j${jobs}`);
await sh('prepare', `${make} modules_prepare`, `read ${log}; missing headers or tools usually mean a package to install (libelf-dev, libssl-dev)`);
progress('build: make M=arch/x86/kvm modules');
await sh('build', `${make} M=arch/x86/kvm modules`, `read ${log}`);
const buildSeconds = Math.round((Date.now() - buildStart) / 1000);
progress(`build: done in ${buildSeconds} s`);

// check: the kernel refuses a module whose vermagic or struct module differs from its own.
const kvmDir = join(src, 'arch/x86/kvm');
const built = ['kvm', 'kvm-amd', 'kvm-intel'].map((m) => join(kvmDir, `${m}.ko`));
for (const ko of built) if (!existsSync(ko)) failStep('build', `${basename(ko)} was not built`, '', `read ${log}`);
const releaseDir = join(root, 'lib/modules', release);
const debianKvm = readdirSync(join(releaseDir, 'kernel/arch/x86/kvm')).find((f) => /^kvm\.ko(\.\w+)?$/.test(f));
if (!debianKvm) failStep('check', `no kvm.ko in ${join(releaseDir, 'kernel/arch/x86/kvm')}`, '', 'the kernel was unpacked incompletely: run scripts/debian-kernel.mjs fetch again');
const plain = join(out, 'debian-kvm.ko');
await sh('check', debianKvm.endsWith('.xz') ? `xz -dc ${shq(join(releaseDir, 'kernel/arch/x86/kvm', debianKvm))} > ${shq(plain)}`
  : `cp ${shq(join(releaseDir, 'kernel/arch/x86/kvm', debianKvm))} ${shq(plain)}`, `read ${log}`);
const vermagic = async (f) => (await $`modinfo -F vermagic ${f}`.nothrow()).stdout.trim();
const [ourMagic, theirMagic] = [await vermagic(built[0]), await vermagic(plain)];
if (ourMagic !== theirMagic) failStep('check', `vermagic "${ourMagic}" is not Debian's "${theirMagic}"`, '', 'the kernel would refuse the modules: compare the config differences listed above');
const [ourStruct, theirStruct] = [await sectionSize(built[0], '.gnu.linkonce.this_module'), await sectionSize(plain, '.gnu.linkonce.this_module')];
rmSync(plain);
if (ourStruct === undefined || ourStruct !== theirStruct) {
  failStep('check', `struct module is ${ourStruct} bytes in the built kvm.ko, ${theirStruct} in Debian's`, `options that differ: ${changed.join(' ')}`,
    'the kernel would refuse the modules ("module has bad layout"); a BTF option dropping out (pahole missing or too old) is the usual cause');
}
progress(`check: vermagic "${ourMagic}", struct module ${ourStruct} bytes, as Debian's`);

// install: a copy of Debian's tree (hard links) with ours in place of Debian's KVM modules.
const tmp = join(out, 'modules.tmp');
const copy = join(tmp, 'lib/modules', release);
mkdirSync(dirname(copy), { recursive: true });
await sh('install', `cp -al ${shq(releaseDir)} ${shq(copy)} || cp -a ${shq(releaseDir)} ${shq(copy)}`, `check the space under ${cache}`);
for (const f of readdirSync(copy)) if (f.startsWith('modules.') && !['modules.order', 'modules.builtin', 'modules.builtin.modinfo'].includes(f)) rmSync(join(copy, f));
const kvmCopy = join(copy, 'kernel/arch/x86/kvm');
for (const f of readdirSync(kvmCopy)) if (/^kvm(-amd|-intel)?\.ko/.test(f)) rmSync(join(kvmCopy, f));
// Stripped of debug info, as Debian installs its own.
for (const ko of built) await sh('install', `strip --strip-debug -o ${shq(join(kvmCopy, basename(ko)))} ${shq(ko)}`, `read ${log}`);
await sh('install', `depmod -b ${shq(tmp)} ${shq(release)}`, `read ${log}`);
renameSync(tmp, modules);
const info = {
  cc: ccText, debianCc, configChanged: changed, buildSeconds, downloadBytes: sizes,
  ko: built.map((k) => join(modules, 'lib/modules', release, 'kernel/arch/x86/kvm', basename(k))),
};
writeFileSync(join(out, 'build.json'), `${JSON.stringify(info, null, 2)}\n`);
if (!argv['keep-build']) {
  rmSync(build, { recursive: true, force: true });
  rmSync(debs, { recursive: true, force: true });
}
writeFileSync(done, `${version}\n`);
progress(`install: ${modules} (done in ${((Date.now() - started) / 1000).toFixed(0)} s)`);
report(info);
