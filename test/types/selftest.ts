// kvm-gmem/selftest through the published typings.
import { expectTypeOf } from 'vitest';
import {
  planSelftests, probeHost, runSelftests, type HostFacts, type RunReport, type SelftestCase,
} from 'kvm-gmem/selftest';

expectTypeOf(runSelftests).parameter(0).toEqualTypeOf<readonly SelftestCase[]>();
expectTypeOf(runSelftests).parameter(1).toEqualTypeOf<HostFacts>();
expectTypeOf(runSelftests).returns.toEqualTypeOf<Promise<RunReport>>();
expectTypeOf(planSelftests).returns.toExtend<readonly SelftestCase[]>();
expectTypeOf(probeHost).toBeFunction();
