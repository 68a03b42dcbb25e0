/**
 * Runs a command on another kernel: boots it in a VM with virtme-ng (`vng`), the host's root file
 * system shared read-only (9p), loads KVM inside (`modprobe kvm_amd npt=0`...), runs the command
 * there and hands back its stdout and exit status as if it had run here. This is how
 * `kvm-gmem selftest --kernel IMAGE` qualifies a kernel that was never booted on the machine.
 *
 * Where /dev/kvm can run an ordinary guest (kvm_intel or kvm_amd with nested virtualization on),
 * vng uses it; elsewhere (no /dev/kvm, or kvm_pvm, which runs no QEMU guest) QEMU emulates the CPU
 * (TCG, `-cpu max`: an AMD CPU with SVM and nested paging, so kvm_amd loads inside).
 * @module
 */
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { hostPaging } from './info.js';

/** How the VM runs its CPU. */
export type VmAccel = 'auto' | 'kvm' | 'tcg';

/** What {@link runInKernelVm} needs. */
export interface KernelVmOptions {
  /** The kernel image (bzImage/vmlinuz) to boot. */
  kernel: string;
  /**
   * Where its modules are: a directory holding `lib/modules/<release>/` (or that release
   * directory itself). Default: the tree the image sits in (Debian's
   * `/usr/lib/modules/<release>/vmlinuz`), else the host's /lib/modules.
   */
  modules?: string;
  /** The KVM module to load inside: 'kvm_amd' (default) or 'kvm_intel'. */
  kvmModule?: string;
  /** Its parameters, e.g. ['npt=0']. */
  kvmParams?: readonly string[];
  /** 'auto' (default): KVM when it can run a nested guest here, else TCG. */
  accel?: VmAccel;
  /** Guest memory, in vng's syntax (default '4G'). */
  memory?: string;
  /** Guest CPUs (default 2). */
  cpus?: number;
  /**
   * NUMA nodes to split the memory and CPUs into (default 1): two let the NUMA cases (mbind,
   * allocation placement) run, which a one-node host skips.
   */
  numaNodes?: number;
  /** Give up after this many seconds (default 1800): the VM is killed and the run fails. */
  timeoutSec?: number;
  /** Environment variables to set inside, e.g. KVM_GMEM_REQUIRE_KVM. */
  env?: Readonly<Record<string, string>>;
  /** Where the command's stderr goes, as it comes. Default: this process's stderr. */
  console?: (chunk: Buffer) => void;
  /** Where the command's stdout goes, as it comes. Default: kept, and returned in the result. */
  stdout?: (chunk: Buffer) => void;
  /** Where vng's own output (its warnings, the guest console) goes. Default: dropped. */
  vngOutput?: (chunk: Buffer) => void;
}

/** What the command did inside. */
export interface KernelVmResult {
  /** Its exit status. */
  status: number;
  /** Everything it wrote to stdout (empty when `opts.stdout` took it as it came). */
  stdout: Buffer;
  /** The kernel release that ran it (uname -r inside). */
  release: string;
  /** How the VM ran: 'kvm' or 'tcg'. */
  accel: 'kvm' | 'tcg';
}

/** A run that could not reach the command's exit status: the reason is the message. */
export class KernelVmError extends Error {
  /** Builds it. */
  constructor(message: string) {
    super(message);
    this.name = 'KernelVmError';
  }
}

const INSTALL_HINT =
  'virtme-ng boots kernels for this: install it (Debian: `apt install virtme-ng qemu-system-x86 udev`; ' +
  'virtme-ng is in Debian\'s newest suite, and its .deb installs on Debian 12 with its dependencies ' +
  'python3-requests, kbd and udev), or see https://github.com/arighi/virtme-ng';

function which(cmd: string): string | undefined {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

/** The release string a bzImage carries (its setup header's kernel_version), if readable. */
export function kernelImageRelease(image: string): string | undefined {
  const fd = openSync(image, 'r');
  try {
    const head = Buffer.alloc(0x10000);
    const n = readSync(fd, head, 0, head.length, 0);
    if (n < 0x210 || head.readUInt32LE(0x202) !== 0x53726448) return undefined; // "HdrS"
    if (head.readUInt16LE(0x20e) === 0) return undefined; // no version string
    const at = head.readUInt16LE(0x20e) + 0x200;
    if (at >= n) return undefined;
    const end = head.indexOf(0, at);
    return head.subarray(at, end < 0 ? n : end).toString('latin1').split(' ')[0];
  } finally {
    closeSync(fd);
  }
}

/** The modules root (a directory with lib/modules/<release>) for a kernel, or undefined. */
export function modulesRoot(image: string, release: string | undefined, given?: string): string | undefined {
  const candidates: string[] = [];
  if (given !== undefined) {
    const dir = resolve(given);
    // Accept the release directory itself (…/lib/modules/<release>) as well as a root.
    candidates.push(basename(dirname(dir)) === 'modules' && basename(dirname(dirname(dir))) === 'lib' ? dirname(dirname(dirname(dir))) : dir);
  } else {
    // Debian: /usr/lib/modules/<release>/vmlinuz sits inside its own modules tree.
    const d = dirname(resolve(image));
    if (basename(dirname(d)) === 'modules' && basename(dirname(dirname(d))) === 'lib') candidates.push(dirname(dirname(dirname(d))));
    candidates.push('/');
  }
  for (const root of candidates) {
    if (release !== undefined && existsSync(join(root, 'lib/modules', release))) return root;
  }
  if (given !== undefined) throw new KernelVmError(`--modules ${given}: no lib/modules/${release ?? '<release>'} under it`);
  return undefined;
}

/** Whether this host's /dev/kvm can run a QEMU guest that itself runs KVM. */
export function canNestKvm(): boolean {
  const paging = hostPaging();
  if (paging.module === undefined || paging.module === 'kvm_pvm' || !existsSync('/dev/kvm')) return false;
  try {
    const v = readFileSync(`/sys/module/${paging.module}/parameters/nested`, 'utf8').trim();
    return v === 'Y' || v === '1';
  } catch {
    return false;
  }
}

/** vng's --numa options for `nodes` nodes of equal memory, the CPUs dealt out in turn. */
export function numaArgs(memory: string, cpus: number, nodes: number): string[] {
  if (nodes <= 1) return [];
  const m = /^(\d+)([MG])$/.exec(memory);
  if (!m) throw new KernelVmError(`--vm-numa needs --vm-memory as a whole number of M or G (got ${memory})`);
  const mib = Number(m[1]) * (m[2] === 'G' ? 1024 : 1);
  if (mib % nodes !== 0 || cpus < nodes) {
    throw new KernelVmError(`--vm-numa ${nodes}: ${memory} and ${cpus} CPUs do not split into ${nodes} nodes`);
  }
  const out: string[] = [];
  for (let n = 0; n < nodes; n++) {
    const mine = Array.from({ length: cpus }, (_, c) => c).filter((c) => c % nodes === n);
    out.push('--numa', `${mib / nodes}M,${mine.map((c) => `cpus=${c}`).join(',')}`);
  }
  return out;
}

/** Boolean module parameters read back as Y/N. */
function normalizeParam(v: string): string {
  return ({ '1': 'Y', y: 'Y', N: 'N', '0': 'N', n: 'N' } as Record<string, string>)[v] ?? v;
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * Boots `opts.kernel` with virtme-ng and runs `argv` (a command and its arguments) inside, in
 * the current directory (an overlay there takes the command's writes; the host's copy is
 * untouched).
 * @throws KernelVmError when vng or QEMU is missing, the kernel or its modules cannot be found,
 * KVM does not load inside, or the VM ends without the command's exit status (a guest oops, the
 * timeout)
 */
export async function runInKernelVm(argv: readonly string[], opts: KernelVmOptions): Promise<KernelVmResult> {
  const vng = which('vng');
  if (!vng) throw new KernelVmError(`vng not found on PATH. ${INSTALL_HINT}`);
  if (!which('qemu-system-x86_64')) throw new KernelVmError(`qemu-system-x86_64 not found on PATH. ${INSTALL_HINT}`);
  const kernel = resolve(opts.kernel);
  if (!existsSync(kernel)) throw new KernelVmError(`--kernel ${opts.kernel}: no such file`);
  const release = kernelImageRelease(kernel);
  const root = modulesRoot(kernel, release, opts.modules);
  if (root !== undefined && release !== undefined && !existsSync(join(root, 'lib/modules', release, 'modules.dep'))) {
    const r = spawnSync('depmod', ['-b', root, release], { encoding: 'utf8' });
    if (r.status !== 0) throw new KernelVmError(`depmod -b ${root} ${release} failed: ${r.stderr || (r.error?.message ?? 'no output')}`);
  }
  const accel = opts.accel === undefined || opts.accel === 'auto' ? (canNestKvm() ? 'kvm' : 'tcg') : opts.accel;
  // Under TCG the CPU is QEMU's AMD model; with KVM it is this host's, so its own vendor module.
  const hostModule = hostPaging().module;
  const kvmModule = opts.kvmModule ?? (accel === 'kvm' && hostModule !== undefined && hostModule !== 'kvm_pvm' ? hostModule : 'kvm_amd');
  if (!/^kvm_(amd|intel)$/.test(kvmModule)) throw new KernelVmError(`--kvm-module must be kvm_amd or kvm_intel (got ${kvmModule})`);
  // The last value given for a parameter wins, as it would on modprobe's command line.
  const params = new Map<string, string>();
  for (const p of opts.kvmParams ?? []) {
    if (!/^[a-z_]+=[\w,.-]+$/.test(p)) throw new KernelVmError(`--kvm-param takes NAME=VALUE (got ${p})`);
    params.set(p.slice(0, p.indexOf('=')), p.slice(p.indexOf('=') + 1));
  }
  for (const k of Object.keys(opts.env ?? {})) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new KernelVmError(`not an environment variable name: ${k}`);
  }

  // The command rides in a script file: vng passes --exec on the kernel command line, where
  // commands longer than about 1 KB hang the guest.
  const dir = mkdtempSync(join(tmpdir(), 'kvm-gmem-vm-'));
  const cwd = process.cwd();
  if (`${dir}/`.startsWith(`${cwd}/`) || cwd === '/') {
    rmSync(dir, { recursive: true, force: true });
    // The overlay over the working directory would hide the shared directory's results.
    throw new KernelVmError(`run it from a directory that does not contain ${tmpdir()} (the VM overlays the working directory)`);
  }
  try {
    const modprobe = ['modprobe', ...(root !== undefined && root !== '/' ? ['-d', root] : []), kvmModule,
      ...[...params].map(([k, v]) => `${k}=${v}`)];
    // Under emulation everything runs about ten times slower: tests stretch their hang bounds.
    const vars = { ...(accel === 'tcg' ? { KVM_GMEM_HANG_SCALE: '5' } : {}), ...opts.env };
    const env = Object.entries(vars).map(([k, v]) => `export ${k}=${shellQuote(v)}\n`).join('');
    writeFileSync(join(dir, 'run.sh'), `#!/bin/sh
uname -r > ${shellQuote(join(dir, 'release'))}
# udev may have loaded the module at boot, without the parameters asked for: load it afresh.
modprobe -r ${shellQuote(kvmModule)} 2>/dev/null
if ! ${modprobe.map(shellQuote).join(' ')}; then echo 'modprobe failed' > ${shellQuote(join(dir, 'failed'))}; exit 1; fi
if [ ! -c /dev/kvm ]; then echo 'no /dev/kvm after modprobe' > ${shellQuote(join(dir, 'failed'))}; exit 1; fi
${(opts.kvmParams ?? []).map((p) => `echo ${shellQuote(p.split('=')[0]!)}=$(cat /sys/module/${kvmModule}/parameters/${p.split('=')[0]!}) >> ${shellQuote(join(dir, 'params'))}
`).join('')}cd ${shellQuote(cwd)} || exit 1
${env}${argv.map(shellQuote).join(' ')} > ${shellQuote(join(dir, 'stdout'))} 2> ${shellQuote(join(dir, 'stderr'))}
echo $? > ${shellQuote(join(dir, 'status'))}
`, { mode: 0o755 });
    const args = [
      '--run', kernel, '--force-9p', '--cpus', String(opts.cpus ?? 2), '--memory', opts.memory ?? '4G',
      ...numaArgs(opts.memory ?? '4G', opts.cpus ?? 2, opts.numaNodes ?? 1),
      `--rwdir=${dir}`, `--overlay-rwdir=${cwd}`,
      ...(accel === 'tcg' ? ['--disable-kvm', '--qemu-opts=-accel tcg,thread=single'] : []),
      '--exec', join(dir, 'run.sh'),
    ];
    const out = opts.console ?? ((b: Buffer) => void process.stderr.write(b));
    // The command's stdout and stderr go to files in the shared directory, forwarded as they
    // grow: vng loses the guest's stderr when its own stdio is not a terminal.
    const tails = [
      { path: join(dir, 'stdout'), done: 0, to: opts.stdout },
      { path: join(dir, 'stderr'), done: 0, to: out },
    ];
    const forward = (): void => {
      for (const t of tails) {
        if (!t.to) continue;
        try {
          const fd = openSync(t.path, 'r');
          try {
            const chunk = Buffer.alloc(64 * 1024);
            for (let n; (n = readSync(fd, chunk, 0, chunk.length, t.done)) > 0; t.done += n) t.to(Buffer.from(chunk.subarray(0, n)));
          } finally {
            closeSync(fd);
          }
        } catch {
          // Not there yet, or gone: the next poll (or the final one) picks it up.
        }
      }
    };
    const poller = setInterval(forward, 250);
    let stopVm = (): void => {};
    // Ctrl-C or a cancelled job must not leave QEMU running: take the whole VM down first.
    const onSignal = (sig: NodeJS.Signals): void => {
      stopVm();
      rmSync(dir, { recursive: true, force: true });
      process.kill(process.pid, sig);
    };
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    const code = await new Promise<number | string>((resolveRun, reject) => {
      const child = spawn(vng, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
      stopVm = () => {
        try {
          process.kill(-child.pid!, 'SIGKILL');
        } catch {
          // already gone
        }
      };
      // vng's own output (boot messages, warnings) only when asked: the command's output is what counts.
      if (opts.vngOutput) {
        child.stdout.on('data', opts.vngOutput);
        child.stderr.on('data', opts.vngOutput);
      } else {
        child.stdout.resume();
        child.stderr.resume();
      }
      const timer = setTimeout(() => {
        stopVm();
        resolveRun(`timed out after ${opts.timeoutSec ?? 1800} s`);
      }, (opts.timeoutSec ?? 1800) * 1000);
      child.on('error', (e) => {
        clearTimeout(timer);
        reject(new KernelVmError(`vng could not start: ${e.message}`));
      });
      child.on('close', (c, sig) => {
        clearTimeout(timer);
        resolveRun(c ?? `killed by ${sig ?? 'a signal'}`);
      });
    }).finally(() => {
      clearInterval(poller);
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      forward();
    });
    const read = (f: string) => (existsSync(join(dir, f)) ? readFileSync(join(dir, f)) : undefined);
    const failed = read('failed')?.toString().trim();
    if (failed) throw new KernelVmError(`inside the VM: ${failed} (${modprobe.join(' ')})`);
    // A parameter the module took otherwise (or ignored) would make this a different host.
    for (const line of read('params')?.toString().trim().split('\n') ?? []) {
      const [name, actual] = line.split('=') as [string, string];
      const asked = params.get(name)!;
      if (normalizeParam(actual) !== normalizeParam(asked)) {
        throw new KernelVmError(`inside the VM: ${kvmModule} has ${name}=${actual}, not the ${asked} asked for`);
      }
    }
    const status = read('status')?.toString().trim();
    if (status === undefined || !/^\d+$/.test(status)) {
      throw new KernelVmError(`the VM ended (vng: ${code}) before the command reported its exit status (set KVM_GMEM_VM_CONSOLE=1 to see the VM's console)`);
    }
    const stdout = opts.stdout ? Buffer.alloc(0) : read('stdout') ?? Buffer.alloc(0);
    return { status: Number(status), stdout, release: read('release')?.toString().trim() ?? '', accel };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
