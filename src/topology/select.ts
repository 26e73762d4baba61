// Parent selection for one image: adverts, measured RTTs and our current parents in; the parent set to
// hold out. Pure: the driver (src/p2p, test/sim) passes the time and carries out the result (join the
// added parents, leave the dropped ones, publish the new depth).
//
// The rules, in order:
// 1. A seed has no parents and depth 0.
// 2. Current parents are dropped at once when failed (stream error, missed pings), excluded, silent (no
//    advert within its lifetime: freshness.ts), detached (depth null) or no longer shallower than us (their depth
//    reached our advertised depth: they moved deeper, maybe below us). Dropped parents are replaced in the
//    same call, so a lost parent is replaced within one heartbeat.
// 3. Layering: our depth is 1 + the lowest parent depth, and every parent must be shallower than our
//    depth, so all parents sit at that lowest depth ("level"). Edges always go to a strictly lower depth:
//    no cycles (given adverts at most one round stale; loop freedom with staleness comes from rule 4).
// 4. Feasibility: while attached, a candidate must be shallower than the depth we advertised, so our depth
//    never grows while attached. Only a detached agent (no parent left, it advertises null) may attach
//    deeper, and while it still has children only to a seed (they leave it first, on seeing null).
// 5. Candidates: fresh advert, same image/root, not us, not excluded, depth known and < maxDepth, a free
//    child slot (childCount < childLimit). Scored by score.ts. An agent attaching from nothing (detached, no
//    child) does not ask a candidate that advertises soleFull: it refuses such agents (admit.ts).
// 6. Within our level, empty slots are filled with the best candidates; a parent held at least
//    minParentHoldMs is replaced by a candidate scoring more than (1 + replaceMargin) times its score.
//    We move to a shallower level only when its best set is worth (1 + replaceMargin) times ours and every
//    current parent has been held minParentHoldMs. A set's worth is s1 + s2/2 + s3/4 ... (scores sorted
//    descending): the best parent counts fully, extra parents add redundancy. Such a move never takes a
//    seed's last free slot: that one is left to an agent with no working parent (an orphan reconnects its
//    whole subtree with it, e.g. when the only seed restarts).
// 7. With no candidate at all, the agent goes to the best seed regardless of its free slots
//    (fallbackToSeed; the seed may refuse, and the driver then excludes it for a while).

import { isSilent } from './freshness.js'
import { validateTopologyParams } from './params.js'
import { scoreCandidate } from './score.js'
import type { Candidate, SelectionInput, SelectionResult } from './types.js'

type DropReason = SelectionResult['dropped'][number]['reason']

interface Scored {
  peerId: string
  depth: number
  /** Child slots the candidate advertised free. */
  freeSlots: number
  score: number
  sinceMs: number
  isParent: boolean
  /** The candidate refuses agents attaching with it as their only parent (admit.ts). */
  soleFull: boolean
}

function worth (scores: readonly number[]): number {
  const sorted = [...scores].sort((a, b) => b - a)
  let w = 0
  for (let i = 0; i < sorted.length; i++) w += sorted[i] / (1 << i)
  return w
}

function byScore (a: Scored, b: Scored): number {
  return b.score - a.score || (a.peerId < b.peerId ? -1 : a.peerId > b.peerId ? 1 : 0)
}

export function selectParents (input: SelectionInput): SelectionResult {
  const params = validateTopologyParams(input.params)
  const { nowMs, selfPeerId } = input
  const k = params.parentCount
  const margin = 1 + params.replaceMargin
  const selfDepth = input.selfDepth ?? null

  const dropped: SelectionResult['dropped'] = []
  const seenParent = new Set<string>()
  const drop = (peerId: string, reason: DropReason): void => { dropped.push({ peerId, reason }) }

  if (input.selfIsSeed) {
    for (const p of input.parents) {
      if (seenParent.has(p.peerId)) continue
      seenParent.add(p.peerId)
      drop(p.peerId, 'seed')
    }
    return { parents: [], added: [], dropped, depth: 0, scores: [] }
  }

  // The freshest advert per peer that may concern us.
  const fresh = new Map<string, Candidate>()
  for (const c of input.candidates) {
    const a = c.advert
    if (a.peerId === selfPeerId) continue
    if (input.imageId !== undefined && a.imageId !== input.imageId) continue
    if (input.rootHex !== undefined && a.rootHex !== input.rootHex) continue
    if (isSilent(c, nowMs, params)) continue
    const prev = fresh.get(a.peerId)
    if (prev === undefined || a.seq > prev.advert.seq || (a.seq === prev.advert.seq && c.receivedAtMs > prev.receivedAtMs)) {
      fresh.set(a.peerId, c)
    }
  }
  const usableDepth = (d: number | null): d is number => d !== null && d >= 0 && d < params.maxDepth

  // Rule 2: keep only sound current parents.
  let kept: Scored[] = []
  for (const p of input.parents) {
    if (seenParent.has(p.peerId)) continue
    seenParent.add(p.peerId)
    if (p.peerId === selfPeerId) { drop(p.peerId, 'depth'); continue }
    if (p.failed) { drop(p.peerId, 'failed'); continue }
    if (input.excluded.has(p.peerId)) { drop(p.peerId, 'excluded'); continue }
    const c = fresh.get(p.peerId)
    if (c === undefined) { drop(p.peerId, 'silent'); continue }
    const d = c.advert.depth
    if (!usableDepth(d) || (selfDepth !== null && d >= selfDepth)) { drop(p.peerId, 'depth'); continue }
    kept.push({ peerId: p.peerId, depth: d, freeSlots: c.advert.childLimit - c.advert.childCount, score: scoreCandidate(selfPeerId, c, params.score, true), sinceMs: p.sinceMs, isParent: true, soleFull: false })
  }
  // Rule 3: all parents at the lowest depth among them.
  if (kept.length > 0) {
    const m = Math.min(...kept.map(p => p.depth))
    kept = kept.filter(p => {
      if (p.depth === m) return true
      drop(p.peerId, 'depth')
      return false
    })
  }
  kept.sort(byScore)
  // Never re-add in this call a parent we just dropped.
  const droppedIds = new Set(dropped.map(d => d.peerId))

  // Rules 4 and 5: feasible candidates, grouped by depth.
  const detachedWithChildren = kept.length === 0 && selfDepth === null && (input.childCount ?? 0) > 0
  const levels = new Map<number, Scored[]>()
  for (const c of fresh.values()) {
    const a = c.advert
    if (seenParent.has(a.peerId) || droppedIds.has(a.peerId) || input.excluded.has(a.peerId)) continue
    if (!usableDepth(a.depth)) continue
    if (selfDepth !== null && a.depth >= selfDepth) continue
    if (detachedWithChildren && a.depth !== 0) continue
    if (!(a.childCount < a.childLimit)) continue
    const s: Scored = { peerId: a.peerId, depth: a.depth, freeSlots: a.childLimit - a.childCount, score: scoreCandidate(selfPeerId, c, params.score), sinceMs: nowMs, isParent: false, soleFull: a.soleFull === true }
    const list = levels.get(a.depth)
    if (list === undefined) levels.set(a.depth, [s]); else list.push(s)
  }
  for (const list of levels.values()) list.sort(byScore)

  const finish = (chosen: Scored[], added: Scored[], fallbackToSeed = false): SelectionResult => {
    const parents = chosen.map(p => p.peerId)
    const depth = chosen.length === 0 ? null : 1 + Math.min(...chosen.map(p => p.depth))
    const result: SelectionResult = { parents, added: added.map(p => p.peerId), dropped, depth, scores: chosen.map(p => p.score) }
    if (fallbackToSeed) result.fallbackToSeed = true
    return result
  }

  // Rule 6 within one level: fill, then replace held parents that a candidate beats by the margin.
  const fillLevel = (base: Scored[], pool: readonly Scored[]): { set: Scored[], added: Scored[], replaced: Scored[] } => {
    const set = [...base]
    const added: Scored[] = []
    const replaced: Scored[] = []
    let next = 0
    while (set.length < k && next < pool.length) { const c = pool[next++]; set.push(c); added.push(c) }
    for (let i = 0; i < k && next < pool.length; i++) {
      let worstIdx = -1
      for (let j = 0; j < set.length; j++) {
        const p = set[j]
        if (!p.isParent || nowMs - p.sinceMs < params.minParentHoldMs) continue
        if (worstIdx === -1 || p.score < set[worstIdx].score) worstIdx = j
      }
      if (worstIdx === -1) break
      const best = pool[next]
      if (!(best.score > set[worstIdx].score * margin)) break
      replaced.push(set[worstIdx])
      set[worstIdx] = best
      added.push(best)
      next++
    }
    const existing = set.filter(p => p.isParent).sort(byScore)
    const fresh = set.filter(p => !p.isParent).sort(byScore)
    return { set: [...existing, ...fresh], added, replaced }
  }

  if (kept.length > 0) {
    const m = kept[0].depth
    const here = fillLevel(kept, levels.get(m) ?? [])
    const hereWorth = worth(here.set.map(p => p.score))
    const allHeld = kept.every(p => nowMs - p.sinceMs >= params.minParentHoldMs)
    let best: { set: Scored[], worth: number } | undefined
    if (allHeld) {
      for (const [d, pool] of levels) {
        if (d >= m) continue
        // A seed's last free slot is left to agents without a working parent (detached, or an orphan
        // holding its depth: it reconnects a whole subtree), not taken by one that already has a path.
        const set = pool.filter(c => !(c.depth === 0 && c.freeSlots === 1)).slice(0, k)
        if (set.length === 0) continue
        const w = worth(set.map(p => p.score))
        if (w > hereWorth * margin && (best === undefined || w > best.worth)) best = { set, worth: w }
      }
    }
    if (best !== undefined) {
      for (const p of kept) drop(p.peerId, 'replaced')
      return finish(best.set, best.set)
    }
    for (const p of here.replaced) drop(p.peerId, 'replaced')
    return finish(here.set, here.added)
  }

  // Detached (or every parent dropped): take the level whose best set is worth most; ties to shallower. Attaching
  // from nothing, a candidate at its bound of sole children (admit.ts) would refuse: not a choice.
  const attaching = selfDepth === null && (input.childCount ?? 0) === 0
  let bestSet: Scored[] | undefined
  let bestWorth = -1
  for (const d of [...levels.keys()].sort((a, b) => a - b)) {
    const level = levels.get(d) ?? []
    const set = (attaching ? level.filter(c => !c.soleFull) : level).slice(0, k)
    if (set.length === 0) continue
    const w = worth(set.map(p => p.score))
    if (w > bestWorth) { bestWorth = w; bestSet = set }
  }
  if (bestSet !== undefined && bestSet.length > 0) return finish(bestSet, bestSet)

  // Rule 7: no candidate at all: the best seed, whatever its free slots.
  let seed: Scored | undefined
  for (const c of fresh.values()) {
    const a = c.advert
    if (a.depth !== 0 || droppedIds.has(a.peerId) || input.excluded.has(a.peerId)) continue
    const s: Scored = { peerId: a.peerId, depth: 0, freeSlots: a.childLimit - a.childCount, score: scoreCandidate(selfPeerId, c, params.score), sinceMs: nowMs, isParent: false, soleFull: false }
    if (seed === undefined || byScore(s, seed) < 0) seed = s
  }
  if (seed !== undefined) return finish([seed], [seed], true)
  return finish([], [])
}
