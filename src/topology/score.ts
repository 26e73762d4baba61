// The parent score: how good a candidate is as a parent for one image, seen from this agent.
//
// Documented the way gossipsub documents its peer score: the parameters are plain data (ScoreParams) and
// the score is one pure function of them. Every component is a utility u in [0, 1] (1 is best); the score
// is their weighted mean, so it is itself in [0, 1] and the selection's `replaceMargin` is a plain
// fraction ("20 % better").
//
//   score = (w_rtt·u_rtt + w_load·u_load + w_hold·u_hold + w_depth·u_depth + w_slot·u_slot + w_tie·u_tie)
//           / (w_rtt + w_load + w_hold + w_depth + w_slot + w_tie)
//
//   u_rtt   = rttRefMs / (rttRefMs + rttMs)        measured smoothed RTT; unknownRttMs until measured.
//                                                  A close parent answers on-demand reads sooner.
//   u_load  = 1 - clamp(uploadLoad, 0, 1)          advertised upload in use: an idle uplink serves sooner.
//   u_hold  = heldBlocks / totalBlocks             what the candidate already has: fewer relayed misses.
//                                                  A seed has 1.
//   u_depth = 1 / (1 + depth)                      closer to a seed: fewer hops for a block nobody has yet.
//   u_slot  = (childLimit - childCount) / childLimit  room left: a parent with free slots is less contended
//                                                  (our own slot is not counted against a current parent).
//   u_tie   = hash(selfPeerId, peerId) in [0, 1)   stable per pair: agents that see the same candidates
//                                                  spread over them instead of all asking the same one.
//
// Seeds are preferred through u_hold = 1 and u_depth = 1. Small RTT noise (±10 %) moves u_rtt by at most
// ~5 %, i.e. the score by under 2 % with the default weights, far below the default replaceMargin (20 %).
// rttRefMs = 1 ms suits a data centre (0.1 ms in a rack scores 0.91, 0.5 ms across racks 0.67); a WAN
// deployment should raise it to its typical RTT, or every candidate scores near 0 on RTT.

import type { Candidate, ScoreParams } from './types.js'

export const DEFAULT_SCORE_PARAMS: Readonly<ScoreParams> = Object.freeze({
  rttWeight: 3,
  rttRefMs: 1,
  unknownRttMs: 2,
  loadWeight: 2,
  holdWeight: 2,
  depthWeight: 2,
  slotWeight: 1,
  tieBreakWeight: 0.3
})

/** FNV-1a over both ids, mapped to [0, 1): deterministic, cheap, no crypto needed. */
export function pairHash (a: string, b: string): number {
  let h = 0x811c9dc5
  for (let i = 0; i < a.length; i++) { h ^= a.charCodeAt(i); h = Math.imul(h, 0x01000193) }
  h ^= 0x1f; h = Math.imul(h, 0x01000193)
  for (let i = 0; i < b.length; i++) { h ^= b.charCodeAt(i); h = Math.imul(h, 0x01000193) }
  // final avalanche so that ids differing in the last character still spread
  h ^= h >>> 16; h = Math.imul(h, 0x85ebca6b); h ^= h >>> 13
  return (h >>> 0) / 4294967296
}

function clamp01 (x: number): number { return x < 0 ? 0 : x > 1 ? 1 : Number.isFinite(x) ? x : 0 }

export interface ScoreComponents {
  rtt: number
  load: number
  hold: number
  depth: number
  slot: number
  tie: number
}

/** The utilities of one candidate (each in [0, 1]); `isParent` frees our own slot from the count. */
export function scoreComponents (selfPeerId: string, c: Candidate, params: ScoreParams, isParent = false): ScoreComponents {
  const a = c.advert
  const rttMs = c.rttMs !== undefined && Number.isFinite(c.rttMs) && c.rttMs >= 0 ? c.rttMs : params.unknownRttMs
  const children = isParent ? Math.max(0, a.childCount - 1) : a.childCount
  return {
    rtt: params.rttRefMs / (params.rttRefMs + rttMs),
    load: 1 - clamp01(a.uploadLoad),
    hold: a.totalBlocks > 0 ? clamp01(a.heldBlocks / a.totalBlocks) : 0,
    depth: a.depth === null ? 0 : 1 / (1 + Math.max(0, a.depth)),
    slot: a.childLimit > 0 ? clamp01((a.childLimit - children) / a.childLimit) : 0,
    tie: pairHash(selfPeerId, a.peerId)
  }
}

/** The score in [0, 1] (higher is better). Pure: same inputs, same score. */
export function scoreCandidate (selfPeerId: string, c: Candidate, params: ScoreParams, isParent = false): number {
  const u = scoreComponents(selfPeerId, c, params, isParent)
  const total = params.rttWeight + params.loadWeight + params.holdWeight + params.depthWeight +
    params.slotWeight + params.tieBreakWeight
  return (params.rttWeight * u.rtt + params.loadWeight * u.load + params.holdWeight * u.hold +
    params.depthWeight * u.depth + params.slotWeight * u.slot + params.tieBreakWeight * u.tie) / total
}
