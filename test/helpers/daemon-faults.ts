// Preloaded into a real vmthunderd by hostile-peer tests, never imported by them:
//   NODE_OPTIONS="--import tsx --import <this file>"  VMTHUNDERD_TEST_FAULTS=1  VMTHUNDERD_TEST_FAULT_SPEC=<json>
// It registers a blockFaultLayer (fault-layers.ts) through the daemon's test-only seam
// (src/daemon/test-faults.ts), which serves peers through it only when VMTHUNDERD_TEST_FAULTS=1.
// The spec: { "fault": "flip" | "truncate" | "stall", "fraction"?: 0..1, "seed"?: number, "stallMs"?: ms }.

import { SERVED_STORE_LAYER_KEY, type ServedStoreLayer } from '../../src/daemon/test-faults.js'
import { mulberry32 } from '../../scripts/lib/trial-utils.js'
import { blockFaultLayer, everyBlock, fractionOfBlocks, type BlockFault } from './fault-layers.js'

export const FAULT_SPEC_ENV = 'VMTHUNDERD_TEST_FAULT_SPEC'

export interface DaemonFaultSpec {
  fault: BlockFault
  fraction?: number
  seed?: number
  stallMs?: number
}

const spec = JSON.parse(process.env[FAULT_SPEC_ENV] ?? '{"fault":"flip"}') as DaemonFaultSpec
const layer: ServedStoreLayer = next => blockFaultLayer({
  fault: spec.fault,
  stallMs: spec.stallMs,
  select: spec.fraction === undefined ? everyBlock : fractionOfBlocks(spec.fraction, mulberry32(spec.seed ?? 1))
})(next)
;(globalThis as Record<symbol, unknown>)[SERVED_STORE_LAYER_KEY] = layer
