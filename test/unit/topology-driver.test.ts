// The shared heartbeat driver (src/topology/driver.ts): the daemon's constants and decisions.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import {
  ADMIT_ERROR_EXCLUDE_HEARTBEATS, DEFAULT_TOPOLOGY_PARAMS, ORPHAN_HOLD_HEARTBEATS, planHeartbeat, REFUSAL_EXCLUDE_HEARTBEATS, settleHeartbeat
} from '../../src/topology/index.js'
import type { AdmissionReply, Advert, Candidate, HeartbeatInput } from '../../src/topology/index.js'

const P = { ...DEFAULT_TOPOLOGY_PARAMS }
const NOW = 10_000

function cand (peerId: string, depth: number | null, receivedAtMs = NOW): Candidate {
  const advert: Advert = {
    peerId, imageId: 'img', rootHex: 'r', seq: 1, depth, heldBlocks: depth === 0 ? 100 : 50, totalBlocks: 100, childCount: 0, childLimit: 8, uploadLoad: 0
  }
  return { advert, receivedAtMs, rttMs: 1 }
}
function input (over: Partial<HeartbeatInput>): HeartbeatInput {
  return { nowMs: NOW, selfPeerId: 'me', selfIsSeed: false, candidates: [], parents: [], depth: null, refusedUntil: new Map(), params: P, childCount: 0, ...over }
}
const depths = new Map<string, number | null>([['s', 0], ['a', 1], ['b', 1], ['c', 1], ['d', 1]])
const depthOf = (id: string): number | null => depths.get(id) ?? null

test('a refuser is excluded for the daemon\'s 5 heartbeats, then asked again', { timeout: 5000 }, () => {
  const candidates = ['a', 'b', 'c'].map(id => cand(id, 1))
  const plan = planHeartbeat(input({ candidates }))
  assert.equal(plan.ask.length, 3)
  const refuser = plan.ask[0].peerId
  const replies = new Map<string, AdmissionReply>(plan.ask.map(a => [a.peerId, a.peerId === refuser ? 'refused' : 'accepted']))
  const r = settleHeartbeat(plan, { nowMs: NOW, selfIsSeed: false, parents: [], replies, depthOf, heartbeatMs: P.heartbeatMs, orphanedSinceMs: null })
  assert.deepEqual(r.refused, [refuser])
  assert.equal(r.refusedUntil.get(refuser), NOW + REFUSAL_EXCLUDE_HEARTBEATS * P.heartbeatMs)
  assert.equal(r.parents.length, 2)
  assert.equal(r.depth, 2)
  assert.equal(r.changed, true)
  assert.equal(r.again, false)
  // one heartbeat later the refuser is not a choice; after five it is again
  const later = planHeartbeat(input({ nowMs: NOW + P.heartbeatMs, candidates, parents: r.parents, depth: r.depth, refusedUntil: r.refusedUntil }))
  assert.ok(!later.ask.some(a => a.peerId === refuser))
  const afterMs = NOW + REFUSAL_EXCLUDE_HEARTBEATS * P.heartbeatMs
  const after = planHeartbeat(input({ nowMs: afterMs, candidates: ['a', 'b', 'c'].map(id => cand(id, 1, afterMs)), parents: r.parents, depth: r.depth, refusedUntil: r.refusedUntil }))
  assert.equal(after.refusedUntil.has(refuser), false, 'an expired refusal is forgotten')
  assert.ok(after.ask.some(a => a.peerId === refuser))
})

test('a kept parent that does not answer is marked failed and asks for a re-run; a new one that errs is excluded briefly', { timeout: 5000 }, () => {
  const candidates = ['a', 'b', 'c', 'd'].map(id => cand(id, 1))
  const parents = [{ peerId: 'a', sinceMs: 0, failed: false }]
  const plan = planHeartbeat(input({ candidates, parents, depth: 2 }))
  assert.deepEqual(plan.ask.find(x => x.peerId === 'a'), { peerId: 'a', kept: true })
  const fresh = plan.ask.find(x => !x.kept)?.peerId as string
  const replies = new Map<string, AdmissionReply>(plan.ask.map(x => [x.peerId, x.peerId === 'a' || x.peerId === fresh ? 'error' : 'accepted']))
  const r = settleHeartbeat(plan, { nowMs: NOW, selfIsSeed: false, parents, replies, depthOf, heartbeatMs: P.heartbeatMs, orphanedSinceMs: null })
  const a = r.parents.find(p => p.peerId === 'a')
  assert.deepEqual(a, { peerId: 'a', sinceMs: 0, failed: true })
  assert.equal(r.again, true)
  assert.equal(r.refusedUntil.get(fresh), NOW + ADMIT_ERROR_EXCLUDE_HEARTBEATS * P.heartbeatMs)
  // depth only from working parents
  assert.equal(r.parents.filter(p => !p.failed).length, plan.ask.length - 2)
  assert.equal(r.depth, 2)
  // the next plan drops the failed parent without telling it, and banned peers are never asked
  const next = planHeartbeat(input({ candidates, parents: r.parents, depth: r.depth, refusedUntil: r.refusedUntil, isBanned: id => id === 'd' }))
  assert.ok(next.selection.dropped.some(d => d.peerId === 'a' && d.reason === 'failed'))
  assert.ok(!next.leave.includes('a'))
  assert.ok(!next.ask.some(x => x.peerId === 'd' || x.peerId === 'a'))
})

test('a kept parent that is late but was heard from stays; a new one that is late counts as an error', { timeout: 5000 }, () => {
  const candidates = ['a', 'b', 'c', 'd'].map(id => cand(id, 1))
  const parents = [{ peerId: 'a', sinceMs: 0, failed: false }]
  const plan = planHeartbeat(input({ candidates, parents, depth: 2 }))
  const fresh = plan.ask.find(x => !x.kept)?.peerId as string
  const replies = new Map<string, AdmissionReply>(plan.ask.map(x => [x.peerId, x.peerId === 'a' || x.peerId === fresh ? 'late' : 'accepted']))
  const r = settleHeartbeat(plan, { nowMs: NOW, selfIsSeed: false, parents, replies, depthOf, heartbeatMs: P.heartbeatMs, orphanedSinceMs: null })
  assert.deepEqual(r.parents.find(p => p.peerId === 'a'), { peerId: 'a', sinceMs: 0, failed: false })
  assert.equal(r.again, false, 'nothing to replace')
  assert.equal(r.refusedUntil.get(fresh), NOW + ADMIT_ERROR_EXCLUDE_HEARTBEATS * P.heartbeatMs)
  assert.ok(!r.parents.some(p => p.peerId === fresh))
})

test('a seed keeps depth 0 and no parents; leaving parents are told', { timeout: 5000 }, () => {
  const parents = [{ peerId: 's', sinceMs: 0, failed: false }]
  const plan = planHeartbeat(input({ selfIsSeed: true, candidates: [cand('s', 0)], parents, depth: 1 }))
  assert.deepEqual(plan.ask, [])
  assert.deepEqual(plan.leave, ['s'])
  const r = settleHeartbeat(plan, { nowMs: NOW, selfIsSeed: true, parents, replies: new Map(), depthOf, heartbeatMs: P.heartbeatMs, orphanedSinceMs: null })
  assert.equal(r.depth, 0)
  assert.deepEqual(r.parents, [])
})

// The seed's only child loses it (the seed died): with children it keeps its depth (its subtree stays), asks
// only for shallower parents, and attaches as soon as the seed advertises a free slot again.
test('an orphan with children holds its depth until the seed is back; without children it detaches', { timeout: 5000 }, () => {
  const seedFull = { ...cand('s', 0), advert: { ...cand('s', 0).advert, childCount: 1, childLimit: 1 } }
  const parents = [{ peerId: 's', sinceMs: 0, failed: true }]
  const lost = planHeartbeat(input({ candidates: [seedFull, cand('x', 2)], parents, depth: 1, childCount: 3 }))
  assert.deepEqual(lost.ask, [], 'the failed seed is dropped and not asked again in the same heartbeat')
  const held = settleHeartbeat(lost, { nowMs: NOW, selfIsSeed: false, parents, replies: new Map(), depthOf, heartbeatMs: P.heartbeatMs, orphanedSinceMs: null })
  assert.deepEqual(held.parents, [])
  assert.equal(held.depth, 1, 'the orphan keeps the depth its children rely on')
  assert.equal(held.orphanedSinceMs, NOW)
  // while the seed is down: it is asked (the only shallower peer; the dial fails) and the hold goes on
  let nowMs = NOW + P.heartbeatMs
  const down = planHeartbeat(input({ nowMs, candidates: [seedFull, cand('x', 2)], parents: held.parents, depth: held.depth, childCount: 3 }))
  assert.deepEqual(down.ask, [{ peerId: 's', kept: false }], 'only a shallower peer: the seed, whatever its slots')
  const stillHeld = settleHeartbeat(down, { nowMs, selfIsSeed: false, parents: [], replies: new Map([['s', 'error']]), depthOf, heartbeatMs: P.heartbeatMs, orphanedSinceMs: held.orphanedSinceMs })
  assert.equal(stillHeld.depth, 1)
  assert.equal(stillHeld.orphanedSinceMs, NOW, 'the hold counts from the first heartbeat without a parent')
  // the seed is back with a free slot: asked and taken at once
  nowMs += P.heartbeatMs
  const back = planHeartbeat(input({ nowMs, candidates: [cand('s', 0, nowMs), cand('x', 2, nowMs)], parents: [], depth: 1, childCount: 3, refusedUntil: new Map() }))
  assert.deepEqual(back.ask, [{ peerId: 's', kept: false }])
  const attached = settleHeartbeat(back, { nowMs, selfIsSeed: false, parents: [], replies: new Map([['s', 'accepted']]), depthOf, heartbeatMs: P.heartbeatMs, orphanedSinceMs: stillHeld.orphanedSinceMs })
  assert.deepEqual(attached.parents.map(p => p.peerId), ['s'])
  assert.equal(attached.depth, 1)
  assert.equal(attached.orphanedSinceMs, null)
  // a leaf (no children) has nothing to keep: it detaches and may attach anywhere
  const leaf = settleHeartbeat(planHeartbeat(input({ candidates: [seedFull], parents, depth: 1, childCount: 0 })),
    { nowMs: NOW, selfIsSeed: false, parents, replies: new Map(), depthOf, heartbeatMs: P.heartbeatMs, orphanedSinceMs: null })
  assert.equal(leaf.depth, null)
  assert.equal(leaf.orphanedSinceMs, null)
})

test('the orphan hold ends when a peer with a free slot refuses it, and after ORPHAN_HOLD_HEARTBEATS', { timeout: 5000 }, () => {
  const seedFull = { ...cand('s', 0), advert: { ...cand('s', 0).advert, childCount: 1, childLimit: 1 } }
  const seedFree = { ...cand('s', 0), advert: { ...cand('s', 0).advert, childCount: 0, childLimit: 1 } }
  const settle = (plan: ReturnType<typeof planHeartbeat>, reply: AdmissionReply, orphanedSinceMs: number, nowMs = NOW) =>
    settleHeartbeat(plan, { nowMs, selfIsSeed: false, parents: [], replies: new Map([['s', reply]]), depthOf, heartbeatMs: P.heartbeatMs, orphanedSinceMs })
  // the seed advertised a free slot and refused: the slot went to another agent, our subtree rebuilds around it
  const free = planHeartbeat(input({ candidates: [seedFree], parents: [], depth: 1, childCount: 2 }))
  assert.deepEqual(free.ask, [{ peerId: 's', kept: false }])
  assert.notEqual(free.selection.fallbackToSeed, true)
  const refused = settle(free, 'refused', NOW - P.heartbeatMs)
  assert.equal(refused.depth, null)
  assert.equal(refused.orphanedSinceMs, null)
  // a full seed asked as the last resort refusing says nothing new: the hold goes on
  const full = planHeartbeat(input({ candidates: [seedFull], parents: [], depth: 1, childCount: 2 }))
  assert.equal(full.selection.fallbackToSeed, true)
  assert.equal(settle(full, 'refused', NOW - P.heartbeatMs).depth, 1)
  // bounded: the seed never answers
  const sinceMs = NOW - ORPHAN_HOLD_HEARTBEATS * P.heartbeatMs
  const expired = settle(full, 'error', sinceMs)
  assert.equal(expired.depth, null)
  assert.equal(expired.orphanedSinceMs, null)
  assert.equal(settle(full, 'error', sinceMs, NOW - 1).depth, 1)
})

test('an attached agent moving up does not take a seed\'s last free slot (left to an orphan or a detached agent)', { timeout: 5000 }, () => {
  const seedOneSlot = { ...cand('s', 0), advert: { ...cand('s', 0).advert, childCount: 0, childLimit: 1 } }
  const parents = [{ peerId: 'a', sinceMs: 0, failed: false }]
  const attached = planHeartbeat(input({ candidates: [seedOneSlot, cand('a', 1)], parents, depth: 2, childCount: 0 }))
  assert.deepEqual(attached.ask, [{ peerId: 'a', kept: true }])
  const seedTwoSlots = { ...seedOneSlot, advert: { ...seedOneSlot.advert, childLimit: 2 } }
  const moves = planHeartbeat(input({ candidates: [seedTwoSlots, cand('a', 1)], parents, depth: 2, childCount: 0 }))
  assert.deepEqual(moves.ask, [{ peerId: 's', kept: false }], 'with slots to spare it still moves up')
  const orphan = planHeartbeat(input({ candidates: [seedOneSlot, cand('a', 1)], parents: [], depth: 1, childCount: 3 }))
  assert.deepEqual(orphan.ask, [{ peerId: 's', kept: false }])
})

test('the origin is not taken as a new parent while another seed may be asked; it is when none may, and kept once a parent', { timeout: 5000 }, () => {
  const origin = cand('o', 0)
  const seed = cand('s', 0)
  const relay = cand('a', 1)
  const asksOrigin = (over: Partial<HeartbeatInput>): boolean => planHeartbeat(input({ originPeerId: 'o', ...over })).ask.some(a => a.peerId === 'o')
  // Another seed with a free slot: the origin is left out (and the seed asked).
  assert.equal(asksOrigin({ candidates: [origin, seed, relay] }), false)
  assert.ok(planHeartbeat(input({ originPeerId: 'o', candidates: [origin, seed, relay] })).ask.some(a => a.peerId === 's'))
  // Without the rule (no origin known) it is asked.
  assert.ok(planHeartbeat(input({ candidates: [origin, seed, relay] })).ask.some(a => a.peerId === 'o'))
  // The other seed is full and not our parent, refused us, is banned, or its advert is stale: the origin may be asked.
  const full = { ...seed, advert: { ...seed.advert, childCount: 8 } }
  assert.equal(asksOrigin({ candidates: [origin, full, relay] }), true)
  assert.equal(asksOrigin({ candidates: [origin, seed, relay], refusedUntil: new Map([['s', NOW + 1]]) }), true)
  assert.equal(asksOrigin({ candidates: [origin, seed, relay], isBanned: id => id === 's' }), true)
  assert.equal(asksOrigin({ candidates: [origin, cand('s', 0, NOW - P.advertTimeoutMs - 1), relay] }), true)
  // A full seed that is our parent still counts (we have it); the origin, once our parent, is kept.
  assert.equal(asksOrigin({ candidates: [origin, full, relay], parents: [{ peerId: 's', sinceMs: 0, failed: false }], depth: 1 }), false)
  assert.equal(asksOrigin({ candidates: [origin, seed, relay], parents: [{ peerId: 'o', sinceMs: 0, failed: false }], depth: 1 }), true)
})
