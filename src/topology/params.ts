// Default topology parameters and their validation.

import { TopologyParamsError } from './errors.js'
import { DEFAULT_SCORE_PARAMS } from './score.js'
import type { ScoreParams, TopologyParams } from './types.js'

export const DEFAULT_MAX_DEPTH = 64

/**
 * Defaults, with the reasons:
 * - parentCount 3: enough parents to stripe reads and to hedge/fail over without a wait, few enough that a
 *   parent's child slots (8) still give a branching of 8/3 per level.
 * - heartbeatMs 1000: adverts and re-selection once a second; a lost parent is replaced in the next call.
 * - advertTimeoutMs 3000: three missed heartbeats before a silent peer counts as gone (gossip may delay one).
 * - replaceMargin 0.2: a candidate must score 20 % better; RTT noise of ±10 % moves the score by at most ~3 %.
 * - minParentHoldMs 5000: five heartbeats before a parent can be replaced for a better one (not for failure).
 * - childLimit 8: bounded fan-out; with 64 KiB blocks at 1 Gb/s a parent serves 8 children a block each in
 *   about 4 ms.
 * - soleChildLimit 2: at most two children that have this agent as their only parent (admit.ts). The child
 *   limit alone let the origin's only child take 4-6 such children, so at 100 Mb/s its one uplink carried 4-6
 *   copies of the boot and the wave waited on it (bench:testbed, 8 hosts: 15-28 s against 12-13 s with 2).
 */
export const DEFAULT_TOPOLOGY_PARAMS: Readonly<TopologyParams> = Object.freeze({
  parentCount: 3,
  heartbeatMs: 1000,
  advertTimeoutMs: 3000,
  replaceMargin: 0.2,
  minParentHoldMs: 5000,
  childLimit: 8,
  soleChildLimit: 2,
  maxDepth: DEFAULT_MAX_DEPTH,
  score: DEFAULT_SCORE_PARAMS
})

/**
 * The message is built only when the check fails: selectParents validates its params on every call (each
 * heartbeat of each image; every tick of every simulated agent), and building the messages was most of that.
 */
function check (ok: boolean, field: string, message: () => string): void {
  if (!ok) throw new TopologyParamsError(field, message())
}

function isInt (x: unknown): x is number { return typeof x === 'number' && Number.isInteger(x) }
function isNum (x: unknown): x is number { return typeof x === 'number' && Number.isFinite(x) }

export function validateScoreParams (s: ScoreParams, prefix = 'score'): ScoreParams {
  check(typeof s === 'object' && s !== null, prefix, () => 'must be an object')
  for (const f of ['rttWeight', 'loadWeight', 'holdWeight', 'depthWeight', 'slotWeight', 'tieBreakWeight'] as const) {
    if (!(isNum(s[f]) && s[f] >= 0)) throw new TopologyParamsError(`${prefix}.${f}`, `must be a finite number >= 0, got ${String(s[f])}`)
  }
  if (!(isNum(s.rttRefMs) && s.rttRefMs > 0)) throw new TopologyParamsError(`${prefix}.rttRefMs`, `must be > 0, got ${String(s.rttRefMs)}`)
  if (!(isNum(s.unknownRttMs) && s.unknownRttMs >= 0)) throw new TopologyParamsError(`${prefix}.unknownRttMs`, `must be >= 0, got ${String(s.unknownRttMs)}`)
  const total = s.rttWeight + s.loadWeight + s.holdWeight + s.depthWeight + s.slotWeight + s.tieBreakWeight
  check(total > 0, prefix, () => 'at least one weight must be > 0')
  return s
}

/** Returns the params (with defaults for the optional fields) or throws TopologyParamsError naming the field. */
export function validateTopologyParams (p: TopologyParams): Required<TopologyParams> {
  check(typeof p === 'object' && p !== null, 'params', () => 'must be an object')
  check(isInt(p.parentCount) && p.parentCount >= 1 && p.parentCount <= 64, 'parentCount', () => `must be an integer in 1..64, got ${String(p.parentCount)}`)
  check(isNum(p.heartbeatMs) && p.heartbeatMs > 0, 'heartbeatMs', () => `must be > 0, got ${String(p.heartbeatMs)}`)
  check(isNum(p.advertTimeoutMs) && p.advertTimeoutMs >= p.heartbeatMs, 'advertTimeoutMs', () => `must be >= heartbeatMs, got ${String(p.advertTimeoutMs)}`)
  check(isNum(p.replaceMargin) && p.replaceMargin >= 0 && p.replaceMargin <= 10, 'replaceMargin', () => `must be in 0..10, got ${String(p.replaceMargin)}`)
  check(isNum(p.minParentHoldMs) && p.minParentHoldMs >= 0, 'minParentHoldMs', () => `must be >= 0, got ${String(p.minParentHoldMs)}`)
  check(isInt(p.childLimit) && p.childLimit >= 0 && p.childLimit <= 4096, 'childLimit', () => `must be an integer in 0..4096, got ${String(p.childLimit)}`)
  check(p.soleChildLimit === undefined || (isInt(p.soleChildLimit) && p.soleChildLimit >= 0 && p.soleChildLimit <= 4096),
    'soleChildLimit', () => `must be an integer in 0..4096, got ${String(p.soleChildLimit)}`)
  const maxDepth = p.maxDepth ?? DEFAULT_MAX_DEPTH
  check(isInt(maxDepth) && maxDepth >= 1 && maxDepth <= 1024, 'maxDepth', () => `must be an integer in 1..1024, got ${String(maxDepth)}`)
  const score = validateScoreParams(p.score ?? DEFAULT_SCORE_PARAMS)
  return { ...p, soleChildLimit: p.soleChildLimit ?? 0, maxDepth, score }
}
