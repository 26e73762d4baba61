// The shared heartbeat driver (src/topology/driver.ts): the daemon's constants and decisions.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import {
  ADMIT_ERROR_EXCLUDE_HEARTBEATS, DEFAULT_TOPOLOGY_PARAMS, planHeartbeat, REFUSAL_EXCLUDE_HEARTBEATS, settleHeartbeat
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
  const r = settleHeartbeat(plan, { nowMs: NOW, selfIsSeed: false, parents: [], replies, depthOf, heartbeatMs: P.heartbeatMs })
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
  const r = settleHeartbeat(plan, { nowMs: NOW, selfIsSeed: false, parents, replies, depthOf, heartbeatMs: P.heartbeatMs })
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

test('a seed keeps depth 0 and no parents; leaving parents are told', { timeout: 5000 }, () => {
  const parents = [{ peerId: 's', sinceMs: 0, failed: false }]
  const plan = planHeartbeat(input({ selfIsSeed: true, candidates: [cand('s', 0)], parents, depth: 1 }))
  assert.deepEqual(plan.ask, [])
  assert.deepEqual(plan.leave, ['s'])
  const r = settleHeartbeat(plan, { nowMs: NOW, selfIsSeed: true, parents, replies: new Map(), depthOf, heartbeatMs: P.heartbeatMs })
  assert.equal(r.depth, 0)
  assert.deepEqual(r.parents, [])
})
