// The per-image heartbeat decisions, pure, shared by the daemon (src/p2p/service.ts), the simulator
// (test/sim/systems.ts) and the unit harness (test/unit/topology-harness.ts), so that all three run the same
// logic. One heartbeat is two steps around the admission exchange, which is I/O and stays with the caller:
//
//   plan   = planHeartbeat(input)          expire refusals, exclude refusers and banned peers (and the origin
//                                            while another seed may be asked), selectParents
//   (caller asks every plan.ask peer to admit us / renew our lease, and tells plan.leave peers we left)
//   result = settleHeartbeat(plan, replies)  refusers excluded for REFUSAL_EXCLUDE_HEARTBEATS, a kept parent that
//                                            did not answer is marked failed (and `again` asks for a re-run),
//                                            depth recomputed from the parents that are working
//
// Orphan hold: an agent with children that loses every parent (typically the seed's child when the seed
// dies) keeps advertising the depth it had, for at most ORPHAN_HOLD_HEARTBEATS, instead of going detached.
// Going detached would dissolve its whole subtree by cascade (each child drops a parent of unknown depth,
// then its own children drop it, ...) although every edge of that subtree is alive and still acyclic, and
// the tree would then be rebuilt level by level. Holding is loop-free: the held depth does not grow, and
// the orphan (like any attached agent) takes only parents shallower than it, i.e. it re-attaches at once
// when a shallower peer (the seed, back) has a slot. The hold ends when a peer that advertised a free slot
// refused it (the slot went to another agent: let the subtree rebuild around that one) or after the bound;
// then it detaches as before.
//
// One selection per heartbeat (SELECTIONS_PER_HEARTBEAT): a refused agent tries again at its next heartbeat
// or when the caller re-runs it early (a newly eligible advert, a failed parent). No I/O, no timers.

import { depthFromParents } from './depth.js'
import { isSilent } from './freshness.js'
import { selectParents } from './select.js'
import type { Candidate, ParentState, SelectionResult, TopologyParams } from './types.js'

/** A parent that refused us is not asked again for this many heartbeats. */
export const REFUSAL_EXCLUDE_HEARTBEATS = 5
/** A new parent whose admission exchange failed (timeout, stream error) is not asked again for this many. */
export const ADMIT_ERROR_EXCLUDE_HEARTBEATS = 1
/** Selections per heartbeat: the daemon's admission is a network exchange, so one per tick. */
export const SELECTIONS_PER_HEARTBEAT = 1
/** An orphan (children, no parent left) keeps its depth at most this many heartbeats (see the top). */
export const ORPHAN_HOLD_HEARTBEATS = 30

export interface HeartbeatInput {
  nowMs: number
  selfPeerId: string
  selfIsSeed: boolean
  candidates: readonly Candidate[]
  parents: readonly ParentState[]
  /** The depth this agent last advertised. */
  depth: number | null
  /** peerId → excluded until (ms), from earlier refusals. Not modified. */
  refusedUntil: ReadonlyMap<string, number>
  /** Peers never to choose (banned): checked for each candidate. */
  isBanned?: (peerId: string) => boolean
  params: TopologyParams
  childCount: number
  imageId?: string
  rootHex?: string
  /**
   * The image's origin (the agent that signed its manifest). It is not taken as a new parent while another seed
   * we may ask (fresh advert, a child slot free or already our parent, not refused or banned) exists: the origin
   * then sends each block about once. Otherwise its one child slot, freed when its first child became a seed and
   * left, went to the next agent, which striped its fetches over that seed and the origin (p2p-cluster test under
   * load: the origin sent 0.99-1.33x the 24 MiB image, once 2.1x in CI). A child that cannot use the other seeds (refused,
   * banned, gone) may take the origin as before.
   */
  originPeerId?: string
}

export interface HeartbeatPlan {
  selection: SelectionResult
  /** Refusals still in force (expired ones removed). */
  refusedUntil: Map<string, number>
  /** Peers to ask for admission, in selection order; `kept`: already our parent (a lease renewal). */
  ask: Array<{ peerId: string, kept: boolean }>
  /** Dropped parents to tell that we left (a failed one is not told: it is gone or broken). */
  leave: string[]
  /** The depth we advertised and our children when planned (the orphan hold needs both). */
  selfDepth: number | null
  childCount: number
}

/** A seed other than the origin that this agent may take as a parent (see HeartbeatInput.originPeerId). */
function otherSeedAvailable (input: HeartbeatInput, excluded: ReadonlySet<string>): boolean {
  const origin = input.originPeerId
  if (origin === undefined || input.parents.some(p => p.peerId === origin && p.failed !== true)) return false
  for (const c of input.candidates) {
    const a = c.advert
    if (a.peerId === origin || a.peerId === input.selfPeerId || excluded.has(a.peerId)) continue
    if (input.rootHex !== undefined && a.rootHex !== input.rootHex) continue
    if (isSilent(c, input.nowMs, input.params)) continue
    if (a.depth !== 0 || a.heldBlocks !== a.totalBlocks) continue
    const isParent = input.parents.some(p => p.peerId === a.peerId && p.failed !== true)
    if (isParent || a.childCount < a.childLimit) return true
  }
  return false
}

export function planHeartbeat (input: HeartbeatInput): HeartbeatPlan {
  const refusedUntil = new Map<string, number>()
  for (const [peer, until] of input.refusedUntil) if (until > input.nowMs) refusedUntil.set(peer, until)
  const excluded = new Set<string>(refusedUntil.keys())
  if (input.isBanned !== undefined) for (const c of input.candidates) if (input.isBanned(c.advert.peerId)) excluded.add(c.advert.peerId)
  if (input.originPeerId !== undefined && otherSeedAvailable(input, excluded)) excluded.add(input.originPeerId)
  const selection = selectParents({
    nowMs: input.nowMs,
    selfPeerId: input.selfPeerId,
    selfIsSeed: input.selfIsSeed,
    candidates: input.candidates,
    parents: input.parents,
    excluded,
    params: input.params,
    selfDepth: input.selfIsSeed ? 0 : input.depth,
    childCount: input.childCount,
    imageId: input.imageId,
    rootHex: input.rootHex
  })
  const current = new Set(input.parents.map(p => p.peerId))
  return {
    selection,
    refusedUntil,
    ask: selection.parents.map(peerId => ({ peerId, kept: current.has(peerId) })),
    leave: selection.dropped.filter(d => d.reason !== 'failed').map(d => d.peerId),
    selfDepth: input.selfIsSeed ? 0 : input.depth,
    childCount: input.childCount
  }
}

/**
 * What a peer answered to our admission request. 'late': no answer in time, but the peer was heard from (other
 * frames arrived) since we asked: it is alive and slow (a loaded host), not gone. A kept parent that is late
 * stays our parent; a new one counts as an error.
 */
export type AdmissionReply = 'accepted' | 'refused' | 'late' | 'error'

export interface SettleInput {
  /** Time the replies were in. */
  nowMs: number
  selfIsSeed: boolean
  /** Our parents before this heartbeat (their sinceMs is kept). */
  parents: readonly ParentState[]
  /** One reply per plan.ask entry, by peer id; a missing reply counts as 'error'. */
  replies: ReadonlyMap<string, AdmissionReply>
  /** Depth a peer last advertised (null: detached or unknown). */
  depthOf: (peerId: string) => number | null
  heartbeatMs: number
  /** Since when we hold our depth without a parent (the last result's orphanedSinceMs; null: not orphaned). */
  orphanedSinceMs: number | null
}

export interface HeartbeatResult {
  /** Parents to hold (failed ones included, marked). */
  parents: ParentState[]
  /** Depth to advertise. */
  depth: number | null
  /** Refusals in force after this heartbeat. */
  refusedUntil: Map<string, number>
  /** Peers that refused or failed admission now. */
  refused: string[]
  /** A kept parent failed to answer: run the heartbeat again now to replace it. */
  again: boolean
  /** The parent set differs from the one before. */
  changed: boolean
  /** Set while the orphan hold keeps our depth with no parent: pass it to the next settleHeartbeat. */
  orphanedSinceMs: number | null
}

export function settleHeartbeat (plan: HeartbeatPlan, input: SettleInput): HeartbeatResult {
  const refusedUntil = new Map(plan.refusedUntil)
  const previous = new Map(input.parents.map(p => [p.peerId, p]))
  const parents: ParentState[] = []
  const refused: string[] = []
  let slotRefused = false
  for (const { peerId } of plan.ask) {
    const reply = input.replies.get(peerId) ?? 'error'
    const existing = previous.get(peerId)
    if (reply === 'accepted') {
      parents.push({ peerId, sinceMs: existing?.sinceMs ?? input.nowMs, failed: false })
    } else if (reply === 'refused') {
      refusedUntil.set(peerId, input.nowMs + REFUSAL_EXCLUDE_HEARTBEATS * input.heartbeatMs)
      refused.push(peerId)
      // A seed asked regardless of its slots (fallbackToSeed) refusing says nothing new: it was full.
      if (plan.selection.fallbackToSeed !== true) slotRefused = true
    } else if (existing !== undefined && reply === 'late') {
      // Still delivering, only slow to renew: dropping it under load freed its slot for another agent and
      // started a cascade of re-attachments whose orphans read from the origin (cluster test, loaded host).
      parents.push(existing)
    } else if (existing !== undefined) {
      // A kept parent that did not answer is marked failed: the next selection replaces it at once.
      parents.push({ ...existing, failed: true })
    } else {
      refusedUntil.set(peerId, input.nowMs + ADMIT_ERROR_EXCLUDE_HEARTBEATS * input.heartbeatMs)
      refused.push(peerId)
    }
  }
  const working = parents.filter(p => !p.failed)
  let depth = input.selfIsSeed ? 0 : depthFromParents(working.map(p => input.depthOf(p.peerId)))
  let orphanedSinceMs: number | null = null
  if (!input.selfIsSeed && working.length === 0 && plan.selfDepth !== null && plan.childCount > 0 && !slotRefused) {
    const sinceMs = input.orphanedSinceMs ?? input.nowMs
    if (input.nowMs - sinceMs < ORPHAN_HOLD_HEARTBEATS * input.heartbeatMs) {
      depth = plan.selfDepth
      orphanedSinceMs = sinceMs
    }
  }
  const changed = parents.length !== previous.size || parents.some(p => !previous.has(p.peerId))
  return { parents, depth, refusedUntil, refused, again: parents.some(p => p.failed), changed, orphanedSinceMs }
}
