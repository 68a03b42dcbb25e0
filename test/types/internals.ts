// What the published typings must not offer: the binding, the fd bookkeeping, the construction
// tokens and every other @internal name, by any entry point or by a path into dist/.

// @ts-expect-error the native binding is not exported
import { native } from 'kvm-gmem';
// @ts-expect-error the fd-owning base class is not exported
import { FdResource } from 'kvm-gmem';
// @ts-expect-error the Vcpu construction token is not exported
import { VCPU_TOKEN } from 'kvm-gmem';
// @ts-expect-error the exit decoder is internal (vcpu.run() decodes)
import { decodeExit } from 'kvm-gmem';
// @ts-expect-error errors are built inside the library
import { kvmErrorFromErrno } from 'kvm-gmem';
// @ts-expect-error mapping bookkeeping is internal
import { checkMappingRoom, rangeHolders, mappingRange } from 'kvm-gmem';
// @ts-expect-error the received-fd lookup is internal
import { receivedFdOf } from 'kvm-gmem/ipc';
// @ts-expect-error the binding is not in the ipc entry point either
import { native as ipcNative } from 'kvm-gmem/ipc';
// @ts-expect-error nor in the guest entry point
import { native as guestNative } from 'kvm-gmem/guest';
// @ts-expect-error the selftest child's protocol is internal
import { ChildRequest } from 'kvm-gmem/selftest';
// @ts-expect-error "exports" closes dist/ to deep imports
import { native as deep } from 'kvm-gmem/dist/core/native.js';
// @ts-expect-error the upgrade experiment is not part of the package
import { runExperiment } from 'kvm-gmem/upgrade';

export { native, FdResource, VCPU_TOKEN, decodeExit, kvmErrorFromErrno, checkMappingRoom, rangeHolders, mappingRange };
export { receivedFdOf, ipcNative, guestNative, ChildRequest, deep, runExperiment };
