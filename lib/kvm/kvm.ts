/**
 * Kvm: the KVM system fd (/dev/kvm). Entry point of the library.
 * @module
 */
import { decodeCpuid, type CpuidEntry } from './cpuid.js';
import { KvmError, argTypeError } from '../core/errors.js';
import { VmType } from '../core/constants.js';
import { native } from '../core/native.js';
import { u32 } from '../core/numbers.js';
import { FdResource } from '../core/resource.js';
import { supportedCpuidOf, Vm } from './vm.js';

/** The default path of the KVM device. */
export const KVM_DEVICE = '/dev/kvm';

const HINTS: Record<string, string> = {
  ENOENT:
    'No KVM device: load the KVM module (modprobe kvm_intel or kvm_amd), enable virtualization ' +
    'in the firmware, or pass the device through to this container',
  EACCES: 'Permission denied: add this user to the group that owns /dev/kvm (usually "kvm") or run as root',
  EPERM: 'Operation not permitted: a security policy (container, seccomp, LSM) blocks /dev/kvm',
  ENXIO: 'The KVM device exists but no KVM module is bound to it: load kvm_intel or kvm_amd',
  ENODEV: 'The KVM device exists but no KVM module is bound to it: load kvm_intel or kvm_amd',
};

/**
 * The KVM system fd. Open it with `Kvm.open()`; create VMs with `createVm()`.
 *
 * ```ts
 * using kvm = Kvm.open();
 * using vm = kvm.createVm();
 * ```
 */
export class Kvm extends FdResource {
  /** The device path this object opened. */
  readonly path: string;
  /** KVM_GET_API_VERSION, read at open (12 on every kernel since 2.6.22). */
  readonly apiVersion: number;
  #supportedCpuid: readonly CpuidEntry[] | undefined;

  private constructor(fd: number, path: string) {
    super(fd, 'Kvm');
    this.path = path;
    try {
      this.apiVersion = native.getApiVersion(fd);
    } catch (e) {
      this.close();
      throw e;
    }
  }

  /**
   * Opens the KVM device (open O_RDWR|O_CLOEXEC) and reads its API version.
   * @throws KvmError (syscall 'open') whose message says what to do: ENOENT (no module or
   * device), EACCES (permissions), ENXIO/ENODEV (module not loaded); KvmError (ioctl
   * KVM_GET_API_VERSION) if the path is not a KVM device
   */
  static open(path: string = KVM_DEVICE): Kvm {
    if (typeof path !== 'string') throw argTypeError('The "path" argument must be a string');
    let fd: number;
    try {
      fd = native.open(path);
    } catch (e) {
      const hint = e instanceof KvmError ? HINTS[e.code] : undefined;
      if (hint) throw (e as KvmError).withHint(`${hint} (path: ${path})`);
      throw e;
    }
    return new Kvm(fd, path);
  }

  /**
   * Asks KVM about a capability (ioctl KVM_CHECK_EXTENSION on the system fd).
   * @param cap a Cap value
   * @returns 0 if unsupported, else 1 or a capability-specific count or bitmask
   * @throws KvmError; ERR_KVM_CLOSED after close()
   */
  checkExtension(cap: number): number {
    return native.checkExtension(this.open(), u32(cap, 'cap'));
  }

  /**
   * Creates a VM (ioctl KVM_CREATE_VM). The VM fd is O_CLOEXEC. The VM lives on after this Kvm
   * is closed: it keeps the vCPU mapping size (ioctl KVM_GET_VCPU_MMAP_SIZE, asked here) for the
   * vCPUs it will create.
   * @param type a VmType value (default VmType.DEFAULT); supported types are bits of Cap.VM_TYPES
   * @throws KvmError EINVAL for an unsupported type, ENOMEM/EMFILE when out of resources
   */
  createVm(type: number = VmType.DEFAULT): Vm {
    const t = u32(type, 'type');
    const fd = this.open();
    const runSize = native.getVcpuMmapSize(fd);
    return Vm.fromCreated(native.createVm(fd, t), t, runSize, supportedCpuidOf(this));
  }

  /**
   * The CPUID leaves KVM can offer a guest on this host (ioctl KVM_GET_SUPPORTED_CPUID), asked
   * once per Kvm and kept: the answer is fixed while the KVM module is loaded. Give it (or a
   * subset) to `vcpu.setCpuid2()`; the x86 boot helpers do that before long mode.
   * @returns a fresh copy of the entries each call
   * @throws KvmError (e.g. E2BIG should KVM ever offer more than 256 entries); ERR_KVM_CLOSED
   */
  getSupportedCpuid(): CpuidEntry[] {
    this.#supportedCpuid ??= decodeCpuid(native.getSupportedCpuid(this.open()));
    return this.#supportedCpuid.map((e) => ({ ...e }));
  }

  /**
   * The size of a vCPU's kvm_run mapping (ioctl KVM_GET_VCPU_MMAP_SIZE).
   * @throws KvmError; ERR_KVM_CLOSED after close()
   */
  vcpuMmapSize(): number {
    return native.getVcpuMmapSize(this.open());
  }
}
