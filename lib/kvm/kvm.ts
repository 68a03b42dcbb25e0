/**
 * Kvm: the KVM system fd (/dev/kvm). Entry point of the library.
 * @module
 */
import { decodeCpuid, type CpuidEntry } from './cpuid.js';
import { argTypeError, explain } from '../core/errors.js';
import { Cap, VmType } from '../core/constants.js';
import { native } from '../core/native.js';
import { u32 } from '../core/numbers.js';
import { FdResource } from '../core/resource.js';
import { supportedCpuidOf, Vm } from './vm.js';

/** The default path of the KVM device. */
export const KVM_DEVICE = '/dev/kvm';

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
      throw explain(e, { call: 'api-version', path });
    }
  }

  /**
   * Opens the KVM device (open O_RDWR|O_CLOEXEC) and reads its API version.
   * @throws KvmError (syscall 'open') whose `hint` says what is wrong on this host and what to
   * do: ENOENT (no device: which KVM modules are loaded, whether the CPU offers VT-x/AMD-V),
   * EACCES (the device's owner, group and mode, and whether this user is in that group),
   * ENXIO/ENODEV (no module answers the device), EPERM (a policy refuses it); KvmError (ioctl
   * KVM_GET_API_VERSION) if the path is not a KVM device
   */
  static open(path: string = KVM_DEVICE): Kvm {
    if (typeof path !== 'string') throw argTypeError('The "path" argument must be a string');
    let fd: number;
    try {
      fd = native.open(path);
    } catch (e) {
      throw explain(e, { call: 'open-device', path });
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
   * @throws KvmError EINVAL for an unsupported type (the hint names the types this host offers),
   * ENOMEM/EMFILE when out of resources
   */
  createVm(type: number = VmType.DEFAULT): Vm {
    const t = u32(type, 'type');
    const fd = this.open();
    const runSize = native.getVcpuMmapSize(fd);
    let vmFd: number;
    try {
      vmFd = native.createVm(fd, t);
    } catch (e) {
      throw explain(e, { call: 'create-vm', type: t, vmTypes: () => native.checkExtension(fd, Cap.VM_TYPES) });
    }
    return Vm.fromCreated(vmFd, t, runSize, supportedCpuidOf(this));
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
